//! `walwitness doctor`: checks every prerequisite of a capture, read-only, and says how to fix each.
//!
//! Each check prints one line: `ok`, `warn` (capture works, but something is worth knowing) or
//! `FAIL` (capture would refuse), followed by the fix. The exit status is 0 when a capture can
//! start and 6 when it cannot (or the connection's own exit code when there is no connection).
use std::fmt::Write as _;

use tokio_postgres::Client;

use crate::error::{from_pg, Exit, Failure};
use crate::pg::catalog::Table;
use crate::pg::config::ConnSpec;
use crate::pg::names::{parse_table, quote_ident};

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

/// Roles through which managed PostgreSQL services grant replication (the REPLICATION attribute is
/// reserved to them there), with the service's name.
const MANAGED_REPLICATION_ROLES: &[(&str, &str)] = &[("rds_replication", "Amazon RDS / Aurora")];

pub async fn run(args: DoctorArgs) -> Result<Exit, Failure> {
    let spec = ConnSpec::parse(&args.dsn).map_err(|e| from_pg("invalid --dsn", e))?;
    let target = spec.describe();
    let c = crate::pg::connect_sql(&spec).await.map_err(|e| from_pg(&format!("cannot connect to {target}"), e))?;
    let mut r = Report { lines: Vec::new() };
    r.add(Level::Ok, format!("connected to {target}"));

    let version_num: i32 = one::<String>(&c, "SHOW server_version_num").await?.parse().unwrap_or(0);
    let version: String = one(&c, "SHOW server_version").await?;
    if version_num < 140000 {
        r.add(Level::Fail, format!("PostgreSQL {version} is too old → walwitness needs PostgreSQL 14 or later"));
    } else {
        let proto = match version_num {
            v if v >= 160000 => 4,
            v if v >= 150000 => 3,
            _ => 2,
        };
        r.add(Level::Ok, format!("PostgreSQL {version}: pgoutput protocol version {proto} will be used"));
    }

    let wal_level: String = one(&c, "SHOW wal_level").await?;
    if wal_level == "logical" {
        r.add(Level::Ok, "wal_level = logical");
    } else {
        r.add(
            Level::Fail,
            format!("wal_level = {wal_level} → ALTER SYSTEM SET wal_level = logical; then restart the server (a reload is not enough)"),
        );
    }

    let slots_max: i32 = one::<String>(&c, "SHOW max_replication_slots").await?.parse().unwrap_or(0);
    let slots_used: i64 = one(&c, "SELECT count(*) FROM pg_replication_slots").await?;
    let level = if slots_used < i64::from(slots_max) { Level::Ok } else { Level::Fail };
    r.add(
        level,
        format!(
            "replication slots: {slots_used} of max_replication_slots = {slots_max} in use{}",
            if level == Level::Fail {
                " → raise max_replication_slots (restart needed) or drop unused slots"
            } else {
                ""
            }
        ),
    );
    let senders_max: i32 = one::<String>(&c, "SHOW max_wal_senders").await?.parse().unwrap_or(0);
    let senders_used: i64 = one(&c, "SELECT count(*) FROM pg_stat_replication").await?;
    let level = if senders_used < i64::from(senders_max) { Level::Ok } else { Level::Fail };
    r.add(
        level,
        format!(
            "WAL senders: {senders_used} of max_wal_senders = {senders_max} in use{}",
            if level == Level::Fail { " → raise max_wal_senders (restart needed)" } else { "" }
        ),
    );

    let user: String = one(&c, "SELECT current_user::text").await?;
    let (repl, superuser): (bool, bool) = c
        .query_one("SELECT rolreplication, rolsuper FROM pg_roles WHERE rolname = current_user", &[])
        .await
        .map(|row| (row.get(0), row.get(1)))
        .map_err(|e| Failure::new(Exit::Internal, e.to_string()))?;
    // Managed services grant replication through a role of their own instead of the attribute.
    let managed: Vec<(String, bool)> = c
        .query(
            "SELECT rolname::text, pg_has_role(current_user, oid, 'MEMBER') FROM pg_roles WHERE rolname = ANY($1) ORDER BY 1",
            &[&MANAGED_REPLICATION_ROLES.iter().map(|(r, _)| *r).collect::<Vec<_>>()],
        )
        .await
        .map(|rows| rows.iter().map(|row| (row.get(0), row.get(1))).collect())
        .map_err(|e| Failure::new(Exit::Internal, e.to_string()))?;
    let service = |role: &str| MANAGED_REPLICATION_ROLES.iter().find(|(r, _)| *r == role).map_or("", |(_, s)| *s);
    if repl || superuser {
        r.add(Level::Ok, format!("role {user} may open replication connections"));
    } else if let Some((role, _)) = managed.iter().find(|(_, member)| *member) {
        r.add(Level::Ok, format!("role {user} may open replication connections (member of {role}, {})", service(role)));
    } else if let Some((role, _)) = managed.first() {
        r.add(
            Level::Fail,
            format!(
                "role {user} lacks replication rights → GRANT {role} TO {}; (as an administrator of {})",
                quote_ident(&user),
                service(role)
            ),
        );
    } else {
        r.add(Level::Fail, format!("role {user} lacks REPLICATION → ALTER ROLE {} REPLICATION;", quote_ident(&user)));
    }
    let can_create: bool = one(&c, "SELECT has_database_privilege(current_database(), 'CREATE')").await?;

    let mut tables = Vec::new();
    for t in &args.tables {
        if let Some(t) = check_table(&c, &mut r, t, can_create, superuser, args.publication.is_none()).await? {
            tables.push(t);
        }
    }
    if let Some(p) = &args.publication {
        check_publication(&c, &mut r, p, &tables, version_num as u32).await?;
    }
    if args.attribution.trigger {
        let names: Vec<String> = tables.iter().map(crate::pg::catalog::Table::sql_name).collect();
        let problems = crate::attribution::trigger::removal_problems(&c, &names).await?;
        if problems.is_empty() {
            let on = if tables.is_empty() {
                String::new()
            } else {
                format!(" on {}", tables.iter().map(|t| t.qualified()).collect::<Vec<_>>().join(", "))
            };
            r.add(
                Level::Ok,
                format!(
                    "trigger attribution: role {user} can install the triggers{on} and remove them again (schema {}: CREATE on the database or its owner; each table: TRIGGER and the privileges of its owner)",
                    crate::attribution::trigger::SCHEMA
                ),
            );
        }
        for p in problems {
            r.add(Level::Fail, format!("trigger attribution: {p}"));
        }
    }

    let stats: bool = one(&c, "SELECT pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')").await?;
    if !args.attribution.activity {
        // Not used: nothing to say.
    } else if stats || superuser {
        r.add(Level::Ok, "activity attribution sees every session (pg_read_all_stats)");
    } else {
        r.add(
            Level::Warn,
            format!(
                "activity attribution sees only pid, user and application of other roles' sessions → GRANT pg_read_all_stats TO {};",
                quote_ident(&user)
            ),
        );
    }

    let keep: String = one(&c, "SHOW max_slot_wal_keep_size").await?;
    if keep == "-1" {
        r.add(
            Level::Warn,
            "max_slot_wal_keep_size = -1: a slot left behind keeps WAL without limit → set it (ALTER SYSTEM SET max_slot_wal_keep_size = '50GB'; SELECT pg_reload_conf();) or use capture --max-retained-wal",
        );
    } else {
        r.add(
            Level::Ok,
            format!("max_slot_wal_keep_size = {keep}: a forgotten slot is invalidated before it fills the disk"),
        );
    }

    let rows = c
        .query(
            "SELECT slot_name::text, active_pid, coalesce(wal_status, ''), \
             (pg_current_wal_lsn() - restart_lsn)::bigint, (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint \
             FROM pg_replication_slots WHERE slot_name LIKE 'walwitness%' ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| Failure::new(Exit::Internal, e.to_string()))?;
    if rows.is_empty() {
        r.add(Level::Ok, "no walwitness slots exist yet");
    }
    for row in rows {
        let name: String = row.get(0);
        let pid: Option<i32> = row.get(1);
        let status: String = row.get(2);
        let retained: Option<i64> = row.get(3);
        let lag: Option<i64> = row.get(4);
        let mut msg = format!(
            "slot {name}: {}, retains {}, {} behind",
            pid.map_or("inactive".to_owned(), |p| format!("in use by PID {p}")),
            crate::term::human_bytes(retained.unwrap_or(0).max(0) as u64),
            crate::term::human_bytes(lag.unwrap_or(0).max(0) as u64)
        );
        let level = if status == "lost" {
            let _ = write!(msg, "; INVALIDATED (wal_status = lost): the next capture records a gap and recreates it");
            Level::Warn
        } else if pid.is_none() {
            let _ = write!(msg, " → resume it with the same capture command, or remove it with walwitness cleanup");
            Level::Warn
        } else {
            Level::Ok
        };
        r.add(level, msg);
    }

    let exit = if r.ready() { Exit::Ok } else { Exit::ServerSetup };
    if args.json {
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
        return Ok(exit);
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
        Ok(Exit::Ok)
    } else {
        println!("\nnot ready: fix the FAIL lines above, then run walwitness doctor again");
        Ok(Exit::ServerSetup)
    }
}

/// Checks one table; returns it when it exists. `publication_needed`: no --publication was given, so the
/// capture would create one.
async fn check_table(
    c: &Client,
    r: &mut Report,
    arg: &str,
    can_create: bool,
    superuser: bool,
    publication_needed: bool,
) -> Result<Option<Table>, Failure> {
    let parsed = match parse_table(arg) {
        Ok(p) => p,
        Err(e) => {
            r.add(Level::Fail, e);
            return Ok(None);
        }
    };
    let table = match crate::pg::catalog::resolve_table(c, &parsed).await {
        Ok(t) => t,
        Err(f) => {
            r.add(Level::Fail, f.message);
            return Ok(None);
        }
    };
    let q = table.qualified();
    let meaning = match (table.replica_identity, &table.primary_key) {
        ('f', Some(pk)) => format!(
            "REPLICA IDENTITY FULL: `key` = primary key ({}) from the old row, `old` = the whole deleted row",
            pk.join(", ")
        ),
        ('f', None) => "REPLICA IDENTITY FULL without a primary key: `key` is null, `old` = the whole deleted row".to_owned(),
        ('i', _) => "REPLICA IDENTITY USING INDEX: `key` = the index's columns, `old` = null (ALTER TABLE … REPLICA IDENTITY FULL to keep whole rows)".to_owned(),
        (_, Some(pk)) => format!(
            "REPLICA IDENTITY DEFAULT: `key` = primary key ({}), `old` = null (ALTER TABLE {} REPLICA IDENTITY FULL to log whole deleted rows, at the cost of more WAL)",
            pk.join(", "),
            table.sql_name()
        ),
        (_, None) => "no usable key".to_owned(),
    };
    r.add(Level::Ok, format!("table {q}: {meaning}"));
    match crate::pg::catalog::members(c, &table).await {
        Ok((partitions, children)) => {
            if !partitions.is_empty() {
                r.add(
                    Level::Ok,
                    format!(
                        "table {q}: {} partition{}, logged as {q}'s rows (with the partition named)",
                        partitions.len(),
                        if partitions.len() == 1 { "" } else { "s" }
                    ),
                );
            }
            if !children.is_empty() {
                r.add(
                    Level::Warn,
                    format!(
                        "table {q}: inheritance children ({}) are not logged, also when DELETE FROM {} removes their rows → watch them with their own --table",
                        children.join(", "),
                        table.sql_name()
                    ),
                );
            }
        }
        Err(f) => r.add(Level::Fail, f.message),
    }
    let owner: bool = c
        .query_one("SELECT pg_has_role(relowner, 'USAGE') FROM pg_class WHERE oid = $1", &[&table.oid])
        .await
        .map(|row| row.get(0))
        .map_err(|e| Failure::new(Exit::Internal, e.to_string()))?;
    if !publication_needed {
        // Given with --publication: checked by `check_publication`.
    } else if superuser || (owner && can_create) {
        r.add(Level::Ok, format!("table {q}: this role can create its publication"));
    } else {
        r.add(
            Level::Fail,
            format!(
                "table {q}: creating the publication needs ownership of the table and CREATE on the database → have the owner run CREATE PUBLICATION walwitness_pub FOR TABLE ONLY {} WITH (publish = 'delete, truncate'); then check it with walwitness doctor --publication walwitness_pub and capture with --publication walwitness_pub",
                table.sql_name()
            ),
        );
    }
    Ok(Some(table))
}

/// A publication given with --publication: it must exist, publish deletes (truncates: a warning), include
/// every table and filter none of their rows — what the capture checks at start.
async fn check_publication(
    c: &Client,
    r: &mut Report,
    publication: &str,
    tables: &[Table],
    version_num: u32,
) -> Result<(), Failure> {
    use crate::pg::coverage;
    let expect = coverage::Expect {
        publication: publication.to_owned(),
        tables: tables.iter().map(|t| coverage::Watched { oid: t.oid, name: t.qualified() }).collect(),
        truncates: true,
    };
    // Without tables the query has no row to carry the publication's options: ask for them directly.
    let options = c
        .query_opt("SELECT pubdelete, pubtruncate, pubviaroot FROM pg_publication WHERE pubname = $1", &[&publication])
        .await
        .map_err(|e| Failure::new(Exit::Internal, format!("cannot read pg_publication: {e}")))?;
    let Some(options) = options else {
        r.add(
            Level::Fail,
            format!(
                "publication {publication} does not exist → have the tables' owner run CREATE PUBLICATION {} FOR TABLE ONLY {} WITH (publish = 'delete, truncate');",
                quote_ident(publication),
                if tables.is_empty() { "<table>".to_owned() } else { tables.iter().map(|t| t.sql_name()).collect::<Vec<_>>().join(", ONLY ") }
            ),
        );
        return Ok(());
    };
    let (delete, truncate, viaroot): (bool, bool, bool) = (options.get(0), options.get(1), options.get(2));
    let name = quote_ident(publication);
    if delete {
        r.add(Level::Ok, format!("publication {publication} publishes deletes"));
    } else {
        r.add(
            Level::Fail,
            format!("publication {publication} does not publish deletes → ALTER PUBLICATION {name} SET (publish = 'delete, truncate');"),
        );
    }
    if !truncate {
        r.add(
            Level::Warn,
            format!("publication {publication} does not publish TRUNCATE: truncates will not be logged → ALTER PUBLICATION {name} SET (publish = 'delete, truncate');"),
        );
    }
    if viaroot && truncate && tables.iter().any(|t| t.partitioned) {
        r.add(
            Level::Warn,
            format!("publication {publication} has publish_via_partition_root = true: PostgreSQL then does not publish a TRUNCATE of single partitions, so those will not be logged"),
        );
    }
    if tables.is_empty() {
        return Ok(());
    }
    let (_, _, rows) = coverage::query(c, &expect, version_num).await.map_err(|e| {
        Failure::new(Exit::Internal, format!("cannot check what publication {publication} covers: {e}"))
    })?;
    for t in tables {
        let q = t.qualified();
        let Some(row) = rows.iter().find(|row| row.oid == t.oid) else { continue };
        if !row.published {
            r.add(
                Level::Fail,
                format!(
                    "publication {publication} does not include {q} → ALTER PUBLICATION {name} ADD TABLE ONLY {};",
                    t.sql_name()
                ),
            );
        } else if let Some(f) = &row.row_filter {
            r.add(
                Level::Fail,
                format!(
                    "publication {publication} publishes only the rows of {q} matching WHERE {f}: deletes of other rows would not be sent → ALTER PUBLICATION {name} DROP TABLE {t}; ALTER PUBLICATION {name} ADD TABLE ONLY {t}; (or use another publication)",
                    t = t.sql_name()
                ),
            );
        } else {
            r.add(Level::Ok, format!("publication {publication} includes {q}, all rows"));
        }
    }
    Ok(())
}
