//! Who ran the transaction: the `session` of delete, truncate and commit records.
//!
//! Two sources of evidence, both tied to the transaction id, never guessed:
//! * `trigger` — a statement-level BEFORE DELETE / BEFORE TRUNCATE trigger emits a *transactional*
//!   logical decoding message that travels inside the transaction itself, signed with an HMAC key only
//!   the trigger function's owner can read (`trigger`). Exact, per statement.
//! * `activity` — a sampler reads `pg_stat_activity` for backends holding an xid (`activity`). No DDL,
//!   but it only sees transactions that were open while a sample ran.
//!
//! Sessions are carried as pre-serialised JSON (`SessionJson`) because each one is written into every
//! row record of its transaction.
pub mod activity;
pub mod infer;
pub mod session;
pub mod trigger;

use std::sync::Arc;

pub use session::{Session, SessionJson};

/// Which sources a capture uses.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Sources {
    pub trigger: bool,
    pub activity: bool,
}

/// What the assembler consults while it decodes: the activity map and the trigger key.
#[derive(Clone, Default)]
pub struct Attributor {
    pub activity: Option<Arc<activity::ActivityMap>>,
    pub verifier: Option<Arc<trigger::Verifier>>,
}

/// `walwitness attribution install|remove`.
pub async fn run_command(cmd: crate::cli::AttributionCommand) -> Result<(), crate::error::Failure> {
    use crate::cli::AttributionCommand;
    use crate::error::{from_pg, Exit, Failure};
    let (args, install) = match cmd {
        AttributionCommand::Install(a) => (a, true),
        AttributionCommand::Remove(a) => (a, false),
    };
    let spec = crate::pg::config::ConnSpec::parse(&args.conn.resolve()?).map_err(|e| from_pg("invalid --dsn", e))?;
    let sql = crate::pg::connect_sql(&spec)
        .await
        .map_err(|e| from_pg(&format!("cannot connect to {}", spec.describe()), e))?;
    let mut names = Vec::new();
    for t in &args.tables {
        let arg = crate::pg::names::parse_table(t).map_err(|e| Failure::new(Exit::Usage, e))?;
        let table = crate::pg::catalog::resolve_table(&sql, &arg).await?;
        names.push(table.sql_name());
    }
    if install {
        trigger::check_removable(&sql, &names).await?;
        trigger::install(&sql, &names).await?;
        crate::term::eprint_line(&format!("walwitness: attribution trigger installed on {}", names.join(", ")));
    } else {
        trigger::remove(&sql, &names).await?;
        crate::term::eprint_line(&format!("walwitness: attribution trigger removed from {}", names.join(", ")));
    }
    Ok(())
}
