//! The attribution sources asked for: the trigger (can this role install it and remove it again) and
//! the activity sampler (what it can see).
use tokio_postgres::Client;

use crate::error::Failure;
use crate::pg::catalog::Table;
use crate::pg::names::quote_ident;

use super::{one, Level, Report};

pub(super) async fn trigger(c: &Client, r: &mut Report, tables: &[Table], user: &str) -> Result<(), Failure> {
    let names: Vec<String> = tables.iter().map(crate::pg::catalog::Table::sql_name).collect();
    let problems = crate::attribution::trigger::removal_problems(c, &names).await?;
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
    Ok(())
}

/// Asks the server whatever `used` says, so a failing query fails doctor the same either way.
pub(super) async fn activity(
    c: &Client,
    r: &mut Report,
    used: bool,
    user: &str,
    superuser: bool,
) -> Result<(), Failure> {
    let stats: bool = one(c, "SELECT pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')").await?;
    if !used {
        // Not used: nothing to say.
    } else if stats || superuser {
        r.add(Level::Ok, "activity attribution sees every session (pg_read_all_stats)");
    } else {
        r.add(
            Level::Warn,
            format!(
                "activity attribution sees only pid, user and application of other roles' sessions → GRANT pg_read_all_stats TO {};",
                quote_ident(user)
            ),
        );
    }
    Ok(())
}
