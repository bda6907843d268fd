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
