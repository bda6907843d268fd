//! `walwitness cleanup`: lists what walwitness created in a database and removes it.
//!
//! Found by their marks: slots named `walwitness…` (the default names), publications whose comment
//! says walwitness created them, and the attribution schema with its triggers. A slot in use is left
//! alone (its capture is running). Asks before dropping unless `--yes`; without a terminal to ask on,
//! it refuses rather than guess.
use crate::term::clean;
use std::io::{BufRead, IsTerminal, Write};

use crate::attribution::trigger;
use crate::error::{Exit, Failure};
use crate::pg::catalog::OWNER_COMMENT;
use crate::pg::config::ConnSpec;
use crate::pg::error::from_pg;
use crate::pg::names::quote_ident;

pub struct CleanupArgs {
    pub dsn: String,
    pub yes: bool,
}

fn q(e: tokio_postgres::Error) -> Failure {
    Failure::new(Exit::Internal, e.to_string())
}

/// What walwitness left in this database, found by its marks.
struct Found {
    /// Slot names, with the PID of the capture using each.
    slots: Vec<(String, Option<i32>)>,
    publications: Vec<String>,
    /// Tables with attribution triggers (`schema.table`, quoted).
    triggers: Vec<String>,
    schema: bool,
    /// walwitness slots of other databases (not removed from here).
    others: i64,
}

impl Found {
    fn is_empty(&self) -> bool {
        self.slots.is_empty() && self.publications.is_empty() && self.triggers.is_empty() && !self.schema
    }
}

pub async fn run(args: CleanupArgs) -> Result<(), Failure> {
    let spec = ConnSpec::parse(&args.dsn).map_err(|e| from_pg("invalid --dsn", e))?;
    let c = crate::pg::connect_sql(&spec)
        .await
        .map_err(|e| from_pg(&format!("cannot connect to {}", spec.describe()), e))?;
    let found = find(&c).await?;
    let others = found.others;
    if found.is_empty() {
        println!("nothing to clean up in this database");
        if others > 0 {
            println!("({others} walwitness slot(s) belong to other databases: run cleanup with a --dsn for each)");
        }
        return Ok(());
    }
    list(&found);
    if !args.yes && !confirmed()? {
        println!("nothing dropped");
        return Ok(());
    }
    remove(&c, &found).await
}

async fn find(c: &tokio_postgres::Client) -> Result<Found, Failure> {
    let slots: Vec<(String, Option<i32>)> = c
        .query(
            "SELECT slot_name::text, active_pid FROM pg_replication_slots \
             WHERE slot_name LIKE 'walwitness%' AND database = current_database() ORDER BY 1",
            &[],
        )
        .await
        .map_err(q)?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let publications: Vec<String> = c
        .query(
            "SELECT pubname::text FROM pg_publication WHERE obj_description(oid, 'pg_publication') LIKE $1 ORDER BY 1",
            &[&format!("{OWNER_COMMENT}%")],
        )
        .await
        .map_err(q)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let triggers: Vec<String> = c
        .query(
            "SELECT DISTINCT format('%I.%I', n.nspname, cl.relname) FROM pg_trigger t JOIN pg_class cl ON cl.oid = t.tgrelid \
             JOIN pg_namespace n ON n.oid = cl.relnamespace WHERE t.tgname IN ($1, $2, $3, $4) ORDER BY 1",
            &[&trigger::DELETE_TRIGGER, &trigger::TRUNCATE_TRIGGER, &trigger::DELETE_END_TRIGGER, &trigger::TRUNCATE_END_TRIGGER],
        )
        .await
        .map_err(q)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let schema: bool = c
        .query_one("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", &[&trigger::SCHEMA])
        .await
        .map_err(q)?
        .get(0);
    let others: i64 = c
        .query_one(
            "SELECT count(*) FROM pg_replication_slots WHERE slot_name LIKE 'walwitness%' AND database <> current_database()",
            &[],
        )
        .await
        .map_err(q)?
        .get(0);
    Ok(Found { slots, publications, triggers, schema, others })
}

fn list(found: &Found) {
    println!("walwitness objects in this database:");
    for (s, pid) in &found.slots {
        match pid {
            Some(p) => println!("  slot {} (IN USE by PID {p}: left alone; stop that capture first)", clean(s)),
            None => println!("  slot {}", clean(s)),
        }
    }
    for p in &found.publications {
        println!("  publication {}", clean(p));
    }
    for t in &found.triggers {
        println!("  attribution triggers on {}", clean(t));
    }
    if found.schema {
        println!("  schema {} (attribution key and function)", trigger::SCHEMA);
    }
    let others = found.others;
    if others > 0 {
        println!("({others} walwitness slot(s) belong to other databases: run cleanup with a --dsn for each)");
    }
}

/// Asks on the terminal; without one, refuses rather than guess.
fn confirmed() -> Result<bool, Failure> {
    if !std::io::stdin().is_terminal() {
        return Err(Failure::new(Exit::Usage, "not dropping anything without confirmation: run again with --yes"));
    }
    print!("Drop them? [y/N] ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    let _ = std::io::stdin().lock().read_line(&mut answer);
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// Drops what was found, except slots in use.
async fn remove(c: &tokio_postgres::Client, found: &Found) -> Result<(), Failure> {
    for (s, pid) in &found.slots {
        if pid.is_none() {
            c.execute("SELECT pg_drop_replication_slot($1)", &[s]).await.map_err(q)?;
            println!("dropped slot {}", clean(s));
        }
    }
    for p in &found.publications {
        c.batch_execute(&format!("DROP PUBLICATION IF EXISTS {}", quote_ident(p))).await.map_err(q)?;
        println!("dropped publication {}", clean(p));
    }
    if !found.triggers.is_empty() || found.schema {
        trigger::remove(c, &found.triggers).await?;
        if found.schema {
            // remove() keeps the schema while any trigger uses it; none is left now.
            c.batch_execute(&format!("DROP SCHEMA IF EXISTS {} CASCADE", trigger::SCHEMA)).await.map_err(q)?;
        }
        println!("removed the attribution triggers and schema");
    }
    Ok(())
}
