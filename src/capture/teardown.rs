//! The end of a deliberate capture: every cleanup step is tried, whatever the others did, and what could
//! not be removed is said exactly — in `capture_stopped` (`slot_kept`, `left_behind`) and on stderr with
//! the statements that remove it and the role that may run them.
//!
//! Order: attribution triggers (and the schema when nothing else uses it), then the slot, then the
//! publication. None of them waits for another to succeed: a trigger that stays must not keep a slot
//! holding WAL, nor a slot that stays a publication.
use tokio_postgres::Client;

use crate::attribution::trigger;
use crate::pg::catalog as setup;
use crate::pg::leftover::Leftover;

/// What the end of a capture removes (`None`: kept, or never set up by this run).
pub struct Plan<'a> {
    /// SQL names of the tables whose attribution triggers go.
    pub triggers: Option<&'a [String]>,
    pub slot: Option<&'a str>,
    pub publication: Option<&'a str>,
}

/// Tries every step of `plan` and returns what is left. `c` is `None` when no connection could be had:
/// then everything is left, each with `unreachable` as its error.
pub async fn run(c: Option<&Client>, plan: &Plan<'_>, unreachable: &str) -> Vec<Leftover> {
    let Some(c) = c else {
        let mut left = Vec::new();
        if let Some(tables) = plan.triggers {
            left.extend(trigger::unremoved(tables, unreachable));
        }
        if let Some(s) = plan.slot {
            left.push(Leftover::slot(s, unreachable));
        }
        if let Some(p) = plan.publication {
            left.push(Leftover::publication(p, None, unreachable));
        }
        return left;
    };
    let mut left = Vec::new();
    if let Some(tables) = plan.triggers {
        left.extend(trigger::remove_leaving(c, tables).await);
    }
    if let Some(slot) = plan.slot {
        if let Err(f) = setup::drop_slot(c, slot).await {
            // Said to be left unless the catalog shows it gone.
            let gone = c
                .query_opt("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
                .await
                .is_ok_and(|r| r.is_none());
            if !gone {
                let privilege = f.exit == crate::error::Exit::Privilege;
                left.push(Leftover { privilege, ..Leftover::slot(slot, f.message) });
            }
        }
    }
    if let Some(p) = plan.publication {
        if let Err(f) = setup::drop_publication(c, p).await {
            let owner: Option<String> = c
                .query_opt("SELECT pubowner::regrole::text FROM pg_publication WHERE pubname = $1", &[&p])
                .await
                .ok()
                .flatten()
                .map(|r| r.get(0));
            let gone =
                c.query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&p]).await.is_ok_and(|r| r.is_none());
            if !gone {
                let privilege = f.exit == crate::error::Exit::Privilege;
                left.push(Leftover { privilege, ..Leftover::publication(p, owner.as_deref(), f.message) });
            }
        }
    }
    left
}
