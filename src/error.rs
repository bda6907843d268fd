//! Failures the user sees: one clear line, and an exit status that says which kind.
//!
//! Scripts branch on the exit status, so the numbers are a contract (README, "Exit status").
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Ok = 0,
    /// An unexpected internal failure.
    Internal = 1,
    /// Bad command line (clap uses 2 as well).
    Usage = 2,
    /// The DSN could not be parsed.
    Config = 3,
    /// The server could not be reached.
    Connect = 4,
    /// Authentication failed.
    Auth = 5,
    /// The server is not set up for logical decoding (wal_level, slots, senders) or is too old.
    ServerSetup = 6,
    /// A privilege is missing (REPLICATION, table ownership for the publication, …).
    Privilege = 7,
    /// A watched table does not exist.
    TableNotFound = 8,
    /// A watched table's replica identity does not allow logging deletes.
    ReplicaIdentity = 9,
    /// The replication slot is in use by another session.
    SlotInUse = 10,
    /// The output could not be written (unwritable path, disk full).
    Output = 11,
    /// The replication stream failed (lost connection, protocol error) and could not be resumed.
    Stream = 12,
    /// A publication or slot exists but does not fit (wrong plugin, wrong tables, wrong database).
    Conflict = 13,
    /// A log file breaks the format (unreadable line, rows without their commit, LSNs out of order).
    DamagedLog = 14,
    /// The capture gave up its slot because it retained more WAL than --max-retained-wal (--on-lag drop).
    LagLimit = 15,
    /// A deliberate end (or `attribution remove`) could not remove everything it set up: what is left
    /// is in `capture_stopped.left_behind` and on stderr, with the statements that remove it.
    CleanupIncomplete = 16,
    /// `replay --verify`: the log's chain shows it was changed after it was written (a line edited,
    /// inserted, removed or moved; the expected head missing).
    Tampered = 17,
    /// `replay --verify`: no tamper evidence, but not all of the log is covered by the chain (a log or
    /// runs written before the chain existed, a run that restarted it).
    Unverifiable = 18,
    Sigint = 130,
    Sigterm = 143,
}

#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
    /// The connection was lost or the server is restarting: reconnecting may succeed.
    pub transient: bool,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Into<String>) -> Self {
        Failure { exit, message: message.into(), transient: false }
    }
}

impl fmt::Display for Failure {
    /// One line, with control characters escaped: messages carry server text (errors, names) and
    /// file names, which must not drive the terminal (`crate::term`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&crate::term::clean(&self.message))
    }
}

impl std::error::Error for Failure {}

/// Maps an error of an ordinary SQL statement (tokio-postgres): a missing privilege is `Privilege`,
/// anything else `Internal`; the server's message and hint are kept.
pub fn from_sql(context: &str, e: tokio_postgres::Error) -> Failure {
    let exit = match e.code().map(|c| c.code()) {
        Some("42501") => Exit::Privilege,
        _ => Exit::Internal,
    };
    let detail = match e.as_db_error() {
        Some(db) => match db.hint() {
            Some(h) => format!("{} (hint: {h})", db.message()),
            None => db.message().to_owned(),
        },
        None => e.to_string(),
    };
    Failure::new(exit, format!("{context}: {detail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 13: an error carrying server text (a publication or gid a culprit named, an error message)
    /// prints on one line, without escape sequences.
    #[test]
    fn failures_print_on_one_line_without_escapes() {
        let f = Failure::new(Exit::Stream, "server said: \x1b[2J\x1b]0;t\x07bad\nwalwitness: stopped (endpos)");
        assert_eq!(f.to_string(), "server said: \\x1b[2J\\x1b]0;t\\x07bad\\nwalwitness: stopped (endpos)");
    }
}
