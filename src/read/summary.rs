//! What `report` computes, as data: the JSON report's schema (add fields, never rename), which the text
//! and HTML renderings read.
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub format: u32,
    pub files: Vec<String>,
    pub lines: u64,
    pub skipped_lines: u64,
    pub transactions: u64,
    pub rows: u64,
    pub truncates: u64,
    pub first_time: Option<String>,
    pub last_time: Option<String>,
    pub sessions: Vec<SessionOut>,
    pub unattributed: Unattributed,
    pub minutes: Vec<MinuteOut>,
    pub median_rows_per_minute: u64,
    pub burst_threshold: u64,
    pub statements: Vec<ShapeOut>,
    pub statements_other: ShapesOther,
    pub key_prefixes: Vec<PrefixOut>,
    pub key_prefixes_other: PrefixesOther,
    pub tables: Vec<TableOut>,
    /// Stretches of WAL the log could not cover (`gap` records): deletes there may be missing.
    #[serde(default)]
    pub gaps: Vec<GapOut>,
    /// Rolled-back streamed or prepared transactions logged with `--include-aborted` (`abort` records),
    /// and their `aborted_delete` rows: attempts, not deletions.
    #[serde(default)]
    pub aborted_attempts: u64,
    #[serde(default)]
    pub aborted_rows: u64,
    /// The answer first: who deleted the most rows, their share, how regularly (see [`Headline`]).
    #[serde(default)]
    pub headline: Option<Headline>,
    /// Rows attributed by inference (`inferred` with one candidate), not evidence: part of `rows`.
    #[serde(default)]
    pub inferred_rows: u64,
    /// Roll-ups over sessions: by application_name, user, client host (address without port), and by
    /// who (application + user + host): pids churn with short connections, these do not.
    #[serde(default)]
    pub by_application: Vec<GroupOut>,
    #[serde(default)]
    pub by_user: Vec<GroupOut>,
    #[serde(default)]
    pub by_client_host: Vec<GroupOut>,
    #[serde(default)]
    pub principals: Vec<PrincipalOut>,
    /// Time bins as wide as the span of the commits calls for (`bin_seconds`: 1 for a one-minute
    /// capture, minutes for hours); non-empty bins in order. `minutes` stays as it was.
    #[serde(default)]
    pub bin_seconds: u64,
    #[serde(default)]
    pub bins: Vec<BinOut>,
    #[serde(default)]
    pub median_rows_per_bin: u64,
    /// A bin is a burst above max(3 × the median of non-empty bins, 10).
    #[serde(default)]
    pub bin_burst_threshold: u64,
}

/// The report's first sentence and what it is made of.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Headline {
    /// E.g. "ww-forgotten-job (ww_bgjob@10.0.0.5) deleted 70 % of the rows, every ~1.0 s".
    pub text: String,
    /// The principal named (`principals[0]`), or null when no row is attributed.
    pub application_name: Option<String>,
    pub user: Option<String>,
    pub client_host: Option<String>,
    /// Its main statement shape, named instead of the application when that is unset.
    pub shape: Option<String>,
    pub rows: u64,
    pub truncates: u64,
    pub row_share_pct: f64,
    /// How many of its rows were attributed by inference rather than evidence.
    pub rows_inferred: u64,
    /// "evidence", "inferred" (all of its rows), "mixed", or "none" (nothing attributed).
    pub basis: String,
    /// The typical interval between its transactions, when regular (see `rollup::Period`).
    pub period_s: Option<f64>,
}

/// One entry of a roll-up (`by_application`, `by_user`, `by_client_host`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GroupOut {
    /// null: not known (not reported by the server, or hidden).
    pub name: Option<String>,
    pub rows: u64,
    /// Of `rows`, attributed by inference.
    pub rows_inferred: u64,
    pub truncates: u64,
    pub transactions: u64,
    pub sessions: u64,
    pub row_share_pct: f64,
    pub period_s: Option<f64>,
}

/// Who, across their sessions: application_name + user + client host.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PrincipalOut {
    pub application_name: Option<String>,
    pub user: Option<String>,
    pub client_host: String,
    pub rows: u64,
    pub rows_inferred: u64,
    pub truncates: u64,
    pub transactions: u64,
    pub sessions: u64,
    pub row_share_pct: f64,
    pub period_s: Option<f64>,
    /// Its statement shape with the most rows.
    pub top_shape: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct BinOut {
    /// Start of the bin, `2026-11-26T15:21:05Z`.
    pub start: String,
    pub rows: u64,
    pub truncates: u64,
    pub burst: bool,
    pub sessions: Vec<MinuteSession>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ReasonOut {
    pub reason: String,
    pub rows: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct GapOut {
    pub time: String,
    pub from_lsn: String,
    /// Empty while the gap is open.
    pub to_lsn: String,
    pub reason: String,
    /// Coverage ended at `from_lsn` and no later record says where it resumed.
    #[serde(default)]
    pub open: bool,
    /// The watched table concerned, if not all of them.
    #[serde(default)]
    pub table: Option<String>,
    #[serde(default)]
    pub detail: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionOut {
    pub id: usize,
    pub pid: i64,
    pub backend_start: Option<String>,
    pub user: Option<String>,
    pub application_name: Option<String>,
    pub client: String,
    pub attributed_by: Option<String>,
    pub transactions: u64,
    pub rows: u64,
    pub truncates: u64,
    pub first_time: String,
    pub last_time: String,
    pub distinct_statements: u64,
    pub statements: Vec<StatementOut>,
    pub statements_other: StatementsOther,
    /// The session comes from `inferred` (one candidate), not from evidence (`session`). The same
    /// backend can appear twice, once from each.
    #[serde(default)]
    pub inferred: bool,
    /// `client` without the port (`local socket` for Unix-socket clients).
    #[serde(default)]
    pub client_host: String,
    #[serde(default)]
    pub period_s: Option<f64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatementOut {
    pub statement: String,
    pub rows: u64,
    pub transactions: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct StatementsOther {
    pub statements: u64,
    pub rows: u64,
    pub transactions: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Unattributed {
    pub rows: u64,
    pub truncates: u64,
    pub transactions: u64,
    pub row_share_pct: f64,
    pub transaction_share_pct: f64,
    /// Of `rows`, those with several candidate sessions (`inferred.candidates` > 1): never guessed.
    #[serde(default)]
    pub ambiguous_rows: u64,
    /// `unattributed_reason` of the rows, as the capture gave it ("" when it gave none), by rows.
    #[serde(default)]
    pub reasons: Vec<ReasonOut>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MinuteOut {
    pub minute: String,
    pub rows: u64,
    pub truncates: u64,
    pub burst: bool,
    pub sessions: Vec<MinuteSession>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MinuteSession {
    pub session: Option<usize>,
    pub rows: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ShapeOut {
    pub shape: String,
    pub rows: u64,
    pub transactions: u64,
    pub sessions: u64,
    #[serde(default)]
    pub rows_inferred: u64,
    #[serde(default)]
    pub period_s: Option<f64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ShapesOther {
    pub shapes: u64,
    pub rows: u64,
    pub transactions: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PrefixOut {
    pub prefix: String,
    pub rows: u64,
    /// A Django cache key (`KEY_PREFIX:VERSION:key`): `prefix` is `KEY_PREFIX:VERSION:` and the key's
    /// own prefix (see `rollup::own_prefix`).
    #[serde(default)]
    pub django: bool,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PrefixesOther {
    pub prefixes: u64,
    pub rows: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TableOut {
    pub table: String,
    pub rows: u64,
    pub truncates: u64,
}
