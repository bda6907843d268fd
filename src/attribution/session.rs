//! The session object written into records.
use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A client session as the log records it. Optional fields are omitted when the source cannot know them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Session {
    /// `"trigger"` or `"activity"`.
    pub attributed_by: String,
    pub pid: i32,
    /// With `pid`, identifies the session even after the PID is reused.
    pub backend_start: Option<String>,
    /// The session (login) user.
    pub user: Option<String>,
    /// The role in effect through SET ROLE, when it differs from `user` (trigger only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub current_user: Option<String>,
    pub application_name: Option<String>,
    /// Client address and port; null for Unix-socket clients.
    pub client_addr: Option<String>,
    pub client_port: Option<i32>,
    /// The top-level statement text the client sent (trigger), or the backend's current query when
    /// sampled (activity). Bounded in size; `query_truncated` says when it was cut.
    pub query: Option<String>,
    pub query_truncated: bool,
    pub xact_start: Option<String>,
    /// When the statement started (trigger) — the exact statement that deleted the rows.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub statement_start: Option<String>,
    /// Nesting depth of the firing statement inside other triggers (0: issued by the client or a function).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub trigger_depth: Option<i32>,
    /// When pg_stat_activity was sampled (activity only).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub sampled_at: Option<String>,
    /// The sampling role may not see this session's details (query, client, start times): they are null
    /// here, not absent from the server. Grant pg_read_all_stats to see them.
    #[serde(skip_serializing_if = "std::ops::Not::not", default)]
    pub details_hidden: bool,
    /// Set when both sources named a session and they disagree: the activity source's view.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub conflict: Option<Box<Session>>,
}

/// A session serialised once, written into many records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionJson {
    pub pid: i32,
    pub backend_start: Option<String>,
    pub by_trigger: bool,
    pub json: Bytes,
}

impl SessionJson {
    pub fn new(s: &Session) -> SessionJson {
        let json = serde_json::to_vec(s).unwrap_or_else(|_| b"null".to_vec());
        SessionJson {
            pid: s.pid,
            backend_start: s.backend_start.clone(),
            by_trigger: s.attributed_by == "trigger",
            json: Bytes::from(json),
        }
    }

    /// Same backend (PID reuse is told apart by backend_start when both sides know it).
    pub fn same_backend(&self, other: &SessionJson) -> bool {
        self.pid == other.pid
            && match (&self.backend_start, &other.backend_start) {
                (Some(a), Some(b)) => a == b,
                _ => true,
            }
    }
}

/// The identity a row record carries in format version 2: what tells sessions apart and filters need,
/// plus the number of the `statement` record (same transaction) that holds the statement text and times.
#[derive(Serialize)]
struct Small<'a> {
    attributed_by: &'a str,
    pid: i32,
    backend_start: &'a Option<String>,
    user: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    current_user: &'a Option<String>,
    application_name: &'a Option<String>,
    client_addr: &'a Option<String>,
    client_port: Option<i32>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    details_hidden: bool,
    statement: u32,
}

impl Session {
    /// The row-level form of this session, pointing at statement record `statement`.
    pub fn small_json(&self, statement: u32) -> Bytes {
        let s = Small {
            attributed_by: &self.attributed_by,
            pid: self.pid,
            backend_start: &self.backend_start,
            user: &self.user,
            current_user: &self.current_user,
            application_name: &self.application_name,
            client_addr: &self.client_addr,
            client_port: self.client_port,
            details_hidden: self.details_hidden,
            statement,
        };
        Bytes::from(serde_json::to_vec(&s).unwrap_or_else(|_| b"null".to_vec()))
    }
}
