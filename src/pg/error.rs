//! Errors of the network layer.
//!
//! The variants are coarse on purpose: the CLI maps each one to an exit code
//! (bad DSN, unreachable host, TLS, authentication, server error, ...), so a
//! new failure mode should land in an existing variant unless it needs a
//! distinct exit code. No message built here ever contains a password: DSNs
//! are passed through [`crate::pg::config::redact_dsn`] before they are
//! quoted, and server messages never echo the password.

use std::fmt;
use std::io;

use crate::error::{Exit, Failure};

/// A server-side error (or notice) as sent in an ErrorResponse/NoticeResponse.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DbError {
    /// `ERROR`, `FATAL`, `PANIC`, `WARNING`, ... (the non-localized `V`
    /// field when present, so it can be matched on).
    pub severity: String,
    /// SQLSTATE, e.g. `28P01`.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl DbError {
    /// Parses the body of an ErrorResponse or NoticeResponse: a list of
    /// (type byte, C string) fields ended by a zero byte.
    ///
    /// Malformed bodies yield an error rather than a panic: the bytes come
    /// straight from the network.
    pub fn parse(mut body: &[u8]) -> Result<DbError, PgError> {
        let mut e = DbError::default();
        let mut localized_severity = None;
        loop {
            let (&ty, rest) = body.split_first().ok_or_else(|| PgError::protocol("truncated error message"))?;
            if ty == 0 {
                break;
            }
            let nul = rest
                .iter()
                .position(|&b| b == 0)
                .ok_or_else(|| PgError::protocol("unterminated error message field"))?;
            let value = String::from_utf8_lossy(&rest[..nul]).into_owned();
            body = &rest[nul + 1..];
            match ty {
                b'V' => e.severity = value,
                b'S' => localized_severity = Some(value),
                b'C' => e.code = value,
                b'M' => e.message = value,
                b'D' => e.detail = Some(value),
                b'H' => e.hint = Some(value),
                _ => {}
            }
        }
        if e.severity.is_empty() {
            // Servers before 9.6 only send the localized severity.
            e.severity = localized_severity.unwrap_or_else(|| "ERROR".to_owned());
        }
        Ok(e)
    }

    /// True for SQLSTATE class 28 (invalid authorization specification),
    /// which is what the server uses for every authentication refusal.
    pub fn is_auth_failure(&self) -> bool {
        self.code.starts_with("28")
    }
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.severity, self.message)?;
        if !self.code.is_empty() {
            write!(f, " (SQLSTATE {})", self.code)?;
        }
        if let Some(d) = &self.detail {
            write!(f, "; DETAIL: {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "; HINT: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DbError {}

/// Why authentication did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthError {
    /// The server refused (wrong password, no pg_hba.conf entry, ...).
    Server(DbError),
    /// We could not even try: no password available, unsupported method,
    /// SCRAM verification of the server failed, ...
    Client(String),
}

impl fmt::Display for AuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuthError::Server(e) => e.fmt(f),
            AuthError::Client(m) => f.write_str(m),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The DSN or the environment is unusable.
    #[error("invalid connection settings: {0}")]
    Config(String),
    /// TCP/Unix-socket connection could not be established (or timed out).
    #[error("could not connect to {target}: {source}")]
    Connect {
        target: String,
        #[source]
        source: io::Error,
    },
    #[error("TLS error: {0}")]
    Tls(String),
    #[error("authentication failed: {0}")]
    Auth(AuthError),
    #[error("server error: {0}")]
    Db(DbError),
    /// The server sent something we did not expect or could not parse.
    #[error("protocol error: {0}")]
    Protocol(String),
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("connection closed by the server")]
    Closed,
}

impl PgError {
    /// The SQLSTATE of a server-reported error, if this is one.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            PgError::Db(e) | PgError::Auth(AuthError::Server(e)) => Some(e.code.as_str()),
            _ => None,
        }
    }

    /// The server error, if this is one.
    pub fn db_error(&self) -> Option<&DbError> {
        match self {
            PgError::Db(e) | PgError::Auth(AuthError::Server(e)) => Some(e),
            _ => None,
        }
    }

    /// Classifies a server error received during startup: class 28 means the
    /// credentials or pg_hba.conf refused us, which the CLI reports as an
    /// authentication failure rather than a generic server error.
    pub(crate) fn from_startup_error(e: DbError) -> PgError {
        if e.is_auth_failure() {
            PgError::Auth(AuthError::Server(e))
        } else {
            PgError::Db(e)
        }
    }

    pub(crate) fn protocol(msg: impl Into<String>) -> PgError {
        PgError::Protocol(msg.into())
    }
}

/// libpq's words for a server asking for a password nobody gave, and where one can be given.
pub const NO_PASSWORD: &str =
    "fe_sendauth: no password supplied (the server asks for one: set it in the connection string, PGPASSWORD or ~/.pgpass)";

/// Maps an error from tokio-postgres (used by `connect_sql`) onto our kinds.
///
/// tokio-postgres keeps its error kind private; the public surface is the
/// server error (if any), the source chain and the Display prefix.
pub(crate) fn from_tokio_postgres(e: tokio_postgres::Error, target: &str) -> PgError {
    if let Some(db) = e.as_db_error() {
        let d = DbError {
            severity: db.parsed_severity().map(|s| s.to_string()).unwrap_or_else(|| db.severity().to_owned()),
            code: db.code().code().to_owned(),
            message: db.message().to_owned(),
            detail: db.detail().map(str::to_owned),
            hint: db.hint().map(str::to_owned),
        };
        return PgError::from_startup_error(d);
    }
    // tokio-postgres' Display stops at the kind ("error performing TLS
    // handshake"); the useful part (which certificate check failed, which
    // address refused) is in the source chain.
    let mut text = e.to_string();
    let mut src = std::error::Error::source(&e);
    while let Some(s) = src {
        let part = s.to_string();
        if !text.ends_with(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        src = s.source();
    }
    if e.is_closed() {
        return PgError::Closed;
    }
    if text.starts_with("error performing TLS handshake") {
        return PgError::Tls(text);
    }
    // tokio-postgres finds out only when the server asks for a password: an authentication failure.
    if text == "invalid configuration: password missing" {
        return PgError::Auth(AuthError::Client(NO_PASSWORD.into()));
    }
    if text.starts_with("authentication error") {
        return PgError::Auth(AuthError::Client(text));
    }
    if text.starts_with("invalid configuration") || text.starts_with("invalid connection string") {
        return PgError::Config(text);
    }
    if text.starts_with("error connecting to server") || text.starts_with("timeout waiting") {
        let kind = if text.starts_with("timeout") {
            io::ErrorKind::TimedOut
        } else {
            std::error::Error::source(&e)
                .and_then(|s| s.downcast_ref::<io::Error>())
                .map(io::Error::kind)
                .unwrap_or(io::ErrorKind::Other)
        };
        return PgError::Connect { target: target.to_owned(), source: io::Error::new(kind, text) };
    }
    if text.starts_with("error communicating") {
        return PgError::Io(io::Error::other(text));
    }
    PgError::Protocol(text)
}

/// Whether an error from the server connection is worth a reconnection attempt.
pub fn is_transient(e: &PgError) -> bool {
    match e {
        PgError::Io(_) | PgError::Closed | PgError::Connect { .. } => true,
        // 57P01-03: administrator/crash shutdown, cannot connect now; 08: connection exceptions;
        // 55006: the slot is still held by the walsender of the connection we lost.
        PgError::Db(db) => db.code.starts_with("57P") || db.code.starts_with("08") || db.code == "55006",
        _ => false,
    }
}

/// Maps a connection-level error to what the user should know, with the server's words kept.
pub fn from_pg(context: &str, e: PgError) -> Failure {
    let exit = match &e {
        PgError::Config(_) => Exit::Config,
        PgError::Connect { .. } => Exit::Connect,
        PgError::Tls(_) => Exit::Connect,
        PgError::Auth(_) => Exit::Auth,
        PgError::Db(db) => match db.code.as_str() {
            "28P01" | "28000" => Exit::Auth,
            "42501" => Exit::Privilege,
            "55006" => Exit::SlotInUse,
            "3D000" => Exit::Config,
            "53300" => Exit::ServerSetup,
            _ => Exit::Stream,
        },
        _ => Exit::Stream,
    };
    let mut msg = format!("{context}: {e}");
    if let PgError::Db(db) = &e {
        if db.code == "42501" && db.message.contains("WAL sender") {
            msg.push_str(" (grant it with: ALTER ROLE <user> REPLICATION)");
        }
    }
    let transient = is_transient(&e);
    Failure { exit, message: msg, transient }
}
