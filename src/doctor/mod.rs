//! `walwitness doctor`: checks every prerequisite of a capture, read-only, and says how to fix each.
//!
//! Each check prints one line: `ok`, `warn` (capture works, but something is worth knowing) or
//! `FAIL` (capture would refuse), followed by the fix. The exit status is 0 when a capture can
//! start and 6 when it cannot (or the connection's own exit code when there is no connection).
//!
//! The checks, in the order they print: the server (`server`), the tables and a given publication
//! (`tables`), attribution (`attribution`), then retained WAL and existing slots (`server`).
mod attribution;
mod server;
mod tables;

use tokio_postgres::Client;

use crate::error::{Exit, Failure};
use crate::pg::config::ConnSpec;
use crate::pg::error::from_pg;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Level {
    Ok,
    Warn,
    Fail,
}

struct Report {
    lines: Vec<(Level, String)>,
}

impl Report {
    fn add(&mut self, level: Level, msg: impl Into<String>) {
        self.lines.push((level, msg.into()));
    }
    fn ready(&self) -> bool {
        self.lines.iter().all(|(l, _)| *l != Level::Fail)
    }
}

pub struct DoctorArgs {
    pub dsn: String,
    pub tables: Vec<String>,
    /// Check this publication (capture --publication) instead of the right to create one.
    pub publication: Option<String>,
    pub attribution: crate::attribution::Sources,
    /// `--format json`: one JSON object instead of lines.
    pub json: bool,
}

async fn one<T>(c: &Client, sql: &str) -> Result<T, Failure>
where
    T: for<'a> tokio_postgres::types::FromSql<'a>,
{
    c.query_one(sql, &[]).await.map(|r| r.get(0)).map_err(|e| Failure::new(Exit::Internal, format!("{sql}: {e}")))
}

pub async fn run(args: DoctorArgs) -> Result<Exit, Failure> {
    let spec = ConnSpec::parse(&args.dsn).map_err(|e| from_pg("invalid --dsn", e))?;
    let target = spec.describe();
    let c = crate::pg::connect_sql(&spec).await.map_err(|e| from_pg(&format!("cannot connect to {target}"), e))?;
    let mut r = Report { lines: Vec::new() };
    r.add(Level::Ok, format!("connected to {target}"));

    let version_num = server::version(&c, &mut r).await?;
    server::wal_level(&c, &mut r).await?;
    server::capacity(&c, &mut r).await?;
    let role = server::role(&c, &mut r).await?;
    let can_create: bool = one(&c, "SELECT has_database_privilege(current_database(), 'CREATE')").await?;

    let mut tables = Vec::new();
    for t in &args.tables {
        let publication_needed = args.publication.is_none();
        if let Some(t) = tables::check_table(&c, &mut r, t, can_create, role.superuser, publication_needed).await? {
            tables.push(t);
        }
    }
    if let Some(p) = &args.publication {
        tables::check_publication(&c, &mut r, p, &tables, version_num as u32).await?;
    }
    if args.attribution.trigger {
        attribution::trigger(&c, &mut r, &tables, &role.user).await?;
    }
    attribution::activity(&c, &mut r, args.attribution.activity, &role.user, role.superuser).await?;

    server::wal_keep(&c, &mut r).await?;
    server::slots(&c, &mut r).await?;
    Ok(print(&r, args.json))
}

/// Prints the report (lines, or one JSON object) and returns the exit status it means.
fn print(r: &Report, json: bool) -> Exit {
    let exit = if r.ready() { Exit::Ok } else { Exit::ServerSetup };
    if json {
        let checks: Vec<serde_json::Value> = r
            .lines
            .iter()
            .map(|(level, msg)| {
                let level = match level {
                    Level::Ok => "ok",
                    Level::Warn => "warn",
                    Level::Fail => "fail",
                };
                serde_json::json!({"level": level, "message": msg})
            })
            .collect();
        let doc = serde_json::json!({"ready": r.ready(), "exit": exit as i32, "checks": checks});
        println!("{}", serde_json::to_string_pretty(&doc).unwrap_or_default());
        return exit;
    }
    for (level, msg) in &r.lines {
        let tag = match level {
            Level::Ok => "ok  ",
            Level::Warn => "warn",
            Level::Fail => "FAIL",
        };
        println!("{tag}  {}", crate::term::clean(msg));
    }
    if r.ready() {
        println!("\nready: walwitness capture can start");
        Exit::Ok
    } else {
        println!("\nnot ready: fix the FAIL lines above, then run walwitness doctor again");
        Exit::ServerSetup
    }
}
