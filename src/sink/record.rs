//! The forensic log format: JSON lines, one object per line. This comment is the format specification.
//!
//! Every line is a JSON object with a `"type"` field. Timestamps are RFC 3339 in UTC with microseconds
//! (`2026-11-26T15:04:05.123456Z`), LSNs are written as PostgreSQL prints them (`16/B374D848`), and
//! transaction ids are integers (the 32-bit xid pgoutput sends). Fields are only ever added, never
//! renamed; `format_version` in `capture_started` says which version of this specification a run
//! wrote: 1 before the tamper-evident chain, 2 with it (readers read both).
//!
//! | type | written | fields |
//! |---|---|---|
//! | `capture_started` | once per run, before anything else of that run | `time`, `slot`, `publication`, `tables` (array), `relations` (array of `{oid, schema, name}`, format 2), `start_lsn`, `server_version`, `system_identifier`, `database`, `walwitness_version`, `format_version`, `proto_version`; `timeline` (the server's timeline at start) and `resume_after` (transactions ending at or below it were already in the log for this server, database and slot, and are not written again; `0/0`: none) — these two are absent from logs of earlier versions; format 2: `chain_prev`, `repaired_tail`, `chain`; since issue 12: `attribution_sources` (array of `"trigger"`, `"activity"`) and `activity_interval_ms` (null without the activity source) |
//! | `statement` | format 3: before the first row record that names it, once per distinct statement of a transaction | `xid`, `statement` (its number in the transaction, from 1), `lsn` (of the trigger's opening message, or of the first row for the activity source), `commit_lsn`, `commit_time`, `origin`, `session` (the full session: query, times, depth) |
//! | `delete` | one per deleted row of a watched table | `table`, `schema`, `name` (format 2), `partition` (format 2, only for a row of a partition), `xid`, `lsn` (of the change), `commit_lsn`, `commit_time`, `origin`, `key`, `old`, `session` (format 3: the small session, with `statement` naming its statement record); with trigger attribution (format 3), `trigger_evidence` and `trigger_evidence_reason` when no valid statement bracket covers the row |
//! | `truncate` | one per TRUNCATE statement touching watched tables | `tables` (watched tables it truncated), `relations` (format 2: one `{table, schema, name[, partition]}` per watched relation truncated), `xid`, `lsn`, `commit_lsn`, `commit_time`, `origin`, `cascade`, `restart_identity`, `session`; `trigger_evidence`, `trigger_evidence_reason` as for `delete` |
//! | `relation_renamed` | format 2: in a transaction's records, before the first record that shows a watched table under another name than the log last showed | `oid`, `table`, `schema`, `name` (the new name), `previous_table`, `previous_schema`, `previous_name`, `xid`, `lsn` (of that first record), `commit_lsn`, `commit_time`, `origin` |
//! | `commit` | after the rows of every transaction that touched a watched table | `xid`, `commit_lsn`, `end_lsn`, `commit_time`, `origin`, `deletes`, `truncates`, `session`, `attribution`; `gid` for a prepared transaction (`--two-phase`); `attribution_conflict`, `rejected_attribution_messages`, `trigger_evidence_missing` (rows flagged), `trigger_evidence_problems` (what the trigger evidence showed: statements without their opening or closing trigger, brackets never closed) when they apply (format 3); with the activity source, when records lack a session: `inferred` (`{candidates: 1, session, statement, statement_start, statement_end}` or `{candidates: N, possible: [...]}`; never evidence), `set_aside_by_keys`, or `unattributed_reason` (string; see `attribution::infer`) |
//! | `trigger_error` | format 3, between transactions: the attribution trigger failed and swallowed the error | `lsn`, `xid` (`null` when the transaction had none yet), `pid`, `table`, `oid`, `op`, `trigger` (`BEFORE`), `error` (SQLSTATE and message), `signed` (whether it carries the key's signature; an unsigned one may be forged) |
//! | `aborted_delete` | `--include-aborted` only: one per row a streamed or prepared transaction deleted and then rolled back | the fields of `delete`, with `commit_lsn` and `commit_time` `null`, plus `abort_lsn` and `abort_time` (`null` when unknown) |
//! | `aborted_truncate` | likewise for a rolled-back TRUNCATE | the fields of `truncate`, changed like `aborted_delete`'s |
//! | `aborted_statement` | likewise for the `statement` records of those rows | the fields of `statement`, changed like `aborted_delete`'s |
//! | `abort` | after the `aborted_*` records of one rollback | `xid` (top level), `subxid` (= `xid` for the whole transaction, else the rolled-back subtransaction), `abort_lsn`, `abort_time`, `origin`, `deletes`, `truncates`, `session`, `attribution`; `gid` for ROLLBACK PREPARED |
//! | `capture_stopped` | at a deliberate end, after its cleanup | `time`, `reason` (`endpos`, `duration`, `sigint`, `sigterm`, `max_retained_wal`), `last_lsn`, `slot_kept` (the slot still exists: kept with `--keep-slot`, or dropping it failed), `left_behind` (array of `{object, name, table, sql, run_as, error}`: what the end meant to remove and could not — `object` `trigger`, `schema`, `slot` or `publication` — with the statements that remove it and who may run them; empty when nothing is left; absent from logs of earlier versions) |
//! | `gap` | when coverage was lost, and again when an open gap closes | `time`, `slot`, `from_lsn`, `to_lsn` (`null` while `open`), `reason` (see below), `open`, `closes`, `table`, `detail` (the last four absent from logs of earlier versions) |
//!
//! * `gap`: deletes committed between `from_lsn` and `to_lsn` may be missing from the log. `reason`:
//!   `slot_missing`, `slot_invalidated` (the slot the log resumes from is gone or unusable);
//!   `max_retained_wal` (given up, `--on-lag drop`); `other_cluster`, `other_database`, `other_slot` (the log's
//!   last run captured another server, database or slot: its positions say nothing about this one);
//!   `rewound` (the server's history is behind the log: point-in-time recovery, a restored backup,
//!   `pg_rewind`); while a capture runs, `table_dropped`, `table_unpublished` (`ALTER PUBLICATION … DROP
//!   TABLE`), `table_row_filter` (the publication filters the table's rows, 15+), `deletes_unpublished`,
//!   `truncates_unpublished` (its `publish` option changed), `publication_dropped`. `open: true` (with
//!   `to_lsn` `null`): coverage ended at `from_lsn` and the end is not known yet; a later `gap` with
//!   `closes: true` and the same `reason`, `table` and `from_lsn` gives it (`to_lsn`: where coverage
//!   resumed). A gap still open at the end of a run is closed at the start of the next run on the same
//!   server and database. `table`: the watched table concerned, or `null` for all of them. `detail`: what was
//!   found, in words. Positions are the server's (for `other_cluster`/`other_database` the log holds nothing
//!   of this server's before `to_lsn`, so `from_lsn` is `0/0`).
//! * Format version 2 (this one) added `schema`/`name`, `partition`, `relations`, `relation_renamed`,
//!   open gaps (`to_lsn` `null`) and the tamper-evident chain (below);
//!   version 1 logs have only `table`/`tables`. Readers accept both.
//! * Watched tables are identified by their OID, resolved from the names given at start: a rename or
//!   `SET SCHEMA` (even undone in the same transaction) does not hide deletes, and another table given a
//!   watched table's name is not logged. Names are those the table had at the change (the stream
//!   describes a relation again after it changed), so the same table can appear under several names:
//!   each change of name is announced by a `relation_renamed` record carrying the table's `oid` (listed in
//!   `capture_started`'s `relations`).
//! * `table` is the raw schema and table name joined by a dot, unquoted: `Sales.Order Lines`. It is
//!   ambiguous when a name contains a dot (`"a.b"."c"` and `"a"."b.c"` are both `a.b.c`); `schema` and
//!   `name` are the two parts, exact.
//! * Partitions: the rows of a partitioned table's partitions (at any depth, including partitions
//!   attached while the capture runs) are the watched table's rows: `table`/`schema`/`name` name the
//!   watched table and `partition` (`{"schema","name"}`) the partition the row was in. A partitioned
//!   table is not described by the stream (it has no rows of its own), so its name is the one known at
//!   start. A TRUNCATE of the table lists every partition in `relations`; a TRUNCATE of one partition is
//!   logged too, naming just it. Inheritance children (`INHERITS`) are tables of their own and are not
//!   logged unless watched themselves.
//! * Format 2, the tamper-evident chain (`crate::sink::chain`): every record that is not a row
//!   (`capture_started`, `commit`, `abort`, `gap`, `capture_stopped`) ends with the field
//!   `"chain":"<64 lower-case hex digits>"`, SHA-256 of the run's exact bytes from the first byte of its
//!   `capture_started` line up to and including the `"chain":"` of that line; rows are covered by the
//!   value of the record that closes their transaction. `capture_started` has `chain_prev`, the
//!   log's head before this run (the chain value of the last line kept; `null` for a new log, for
//!   standard output, or after a format 1 log), and `repaired_tail`: `null`, or what the log-tail
//!   repair cut before this run — `{"cut_bytes","cut_lines","sha256"}`, the size and SHA-256 of the
//!   cut bytes (an unfinished transaction or torn write after the last chain value, which no chain
//!   value covered; its rows are received again). `walwitness replay --verify` checks all of it.
//! * `key` maps the replica-identity key columns to their values. With REPLICA IDENTITY FULL it holds the
//!   primary-key columns taken from the old row, or is `null` when the table has no primary key.
//! * `old` is the whole old row (column → value) with REPLICA IDENTITY FULL, otherwise `null`.
//! * Values are the text forms PostgreSQL sends, or `null` for SQL NULL. A TOASTed value the server did not
//!   send is written as `{"unchanged_toast":true}` (pgoutput never does this for a deleted row, but the
//!   marker keeps the log honest if it ever does). A value sent in binary form is `{"binary_hex":"…"}`.
//! * Text that is not valid UTF-8 — possible only in a SQL_ASCII database, where the server stores and
//!   sends any bytes — is written `{"text_hex":"…"}`: its exact bytes as lower-case hex, two digits per
//!   byte (`caf\xe9` → `{"text_hex":"636166e9"}`). Valid UTF-8 is always a plain JSON string, so no two
//!   different values print the same, and nothing is replaced by U+FFFD.
//! * Names from the stream (tables, columns, `origin`, `gid`) are UTF-8 in every database but a SQL_ASCII
//!   one. There, a name that is not valid UTF-8 is written `\x` followed by the hex of its bytes
//!   (PostgreSQL's bytea notation: `"\\x636166e9"` in JSON); a valid name that itself has that form
//!   (`\x` then only `0-9a-f`) is escaped the same way, so the form is unambiguous. Every other name is
//!   written as it is.
//! * `origin` is the replication origin name of the transaction, or `null`.
//! * `session` is the client session the record is attributed to, or `null` when it is not attributed;
//!   the commit record's `attribution` then says why (`"none"`: attribution was not requested or no evidence).
//!   Format 2 (`format_version` 2): a row's (and the commit's) `session` is the small form —
//!   `attributed_by`, `pid`, `backend_start`, `user`, `current_user` (when SET ROLE differs), `application_name`,
//!   `client_addr`, `client_port`, `details_hidden` (when true) and `statement`, the number of the `statement`
//!   record of the same transaction that holds the rest (`query`, `query_truncated`, `xact_start`,
//!   `statement_start`, `trigger_depth`, `sampled_at`, `conflict`). The statement text is thus written once per
//!   statement, not once per row. Format 1 logs carry the full session on every row and have no `statement`
//!   records; readers read both.
//! * `trigger_evidence: "missing"` (trigger attribution only): no valid bracket of the statement triggers covers
//!   the row, so it is not attributed by the trigger (the activity session, if any, is used). The reason:
//!   `no_trigger_fired` (trigger disabled or dropped, `session_replication_role = replica`, a DELETE through
//!   an inheritance parent, …), `table_altered` (the table's definition changed inside the transaction, e.g.
//!   ALTER TABLE … DISABLE TRIGGER), `trigger_error` (the trigger failed: see the `trigger_error` record),
//!   `closing_trigger_disabled` (the statement's closing trigger was disabled, dropped or replaced),
//!   `rejected_evidence` (a message with walwitness's prefix failed verification in the transaction),
//!   `after_nested_statement` (after a nested statement on the same table ended, inside the outer one),
//!   `before_its_statement`, `replicated` (a replication origin applied it).
//! * A transaction's records are contiguous and end with its `commit` record; `delete`/`truncate` lines not
//!   followed by their `commit` are an incomplete transaction (a crash mid-write) and are cut on the next start.
//! * Only committed changes are logged as `delete`/`truncate`: a rolled-back transaction or savepoint leaves
//!   nothing, except with `--include-aborted` (below).
//! * A transaction the server streamed before it committed (`--logical-decoding-work-mem`,
//!   `--stream-every-change`) or decoded at PREPARE (`--two-phase`) is written only when it commits, and its
//!   records are exactly those of any other transaction (the commit of a prepared one adds `gid`).
//! * Aborted attempts (`--include-aborted`): what a rolled-back streamed or prepared transaction (or a
//!   savepoint inside a streamed one) had deleted, as `aborted_delete`/`aborted_truncate` records closed by
//!   one `abort` record, contiguous and never inside another transaction's records. Only what the server had
//!   already streamed can appear (it discards the rest without sending it). `abort_lsn`/`abort_time` are
//!   known on PostgreSQL 16+ (and for ROLLBACK PREPARED). Unlike commits they are at-least-once: after a
//!   restart the same attempt may be written again, with the same `xid` and `lsn`s. Readers that count
//!   deletions ignore them.
use bytes::BytesMut;
use serde::Serialize;

use crate::protocol::pgoutput::Value;
use crate::protocol::Lsn;

mod encode;

pub use encode::*;

/// The record types (the table above), by their `"type"`. Writers start a record with `open`, readers
/// of the log may `parse` the type they found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    CaptureStarted,
    Statement,
    Delete,
    Truncate,
    RelationRenamed,
    Commit,
    TriggerError,
    AbortedDelete,
    AbortedTruncate,
    AbortedStatement,
    Abort,
    CaptureStopped,
    Gap,
}

impl Kind {
    pub const ALL: [Kind; 13] = [
        Kind::CaptureStarted,
        Kind::Statement,
        Kind::Delete,
        Kind::Truncate,
        Kind::RelationRenamed,
        Kind::Commit,
        Kind::TriggerError,
        Kind::AbortedDelete,
        Kind::AbortedTruncate,
        Kind::AbortedStatement,
        Kind::Abort,
        Kind::CaptureStopped,
        Kind::Gap,
    ];

    /// The `"type"` value.
    pub const fn name(self) -> &'static str {
        match self {
            Kind::CaptureStarted => "capture_started",
            Kind::Statement => "statement",
            Kind::Delete => "delete",
            Kind::Truncate => "truncate",
            Kind::RelationRenamed => "relation_renamed",
            Kind::Commit => "commit",
            Kind::TriggerError => "trigger_error",
            Kind::AbortedDelete => "aborted_delete",
            Kind::AbortedTruncate => "aborted_truncate",
            Kind::AbortedStatement => "aborted_statement",
            Kind::Abort => "abort",
            Kind::CaptureStopped => "capture_stopped",
            Kind::Gap => "gap",
        }
    }

    /// `{"type":"<name>",`: how every record of the kind begins (each has more fields after it).
    pub const fn open(self) -> &'static [u8] {
        match self {
            Kind::CaptureStarted => b"{\"type\":\"capture_started\",",
            Kind::Statement => b"{\"type\":\"statement\",",
            Kind::Delete => b"{\"type\":\"delete\",",
            Kind::Truncate => b"{\"type\":\"truncate\",",
            Kind::RelationRenamed => b"{\"type\":\"relation_renamed\",",
            Kind::Commit => b"{\"type\":\"commit\",",
            Kind::TriggerError => b"{\"type\":\"trigger_error\",",
            Kind::AbortedDelete => b"{\"type\":\"aborted_delete\",",
            Kind::AbortedTruncate => b"{\"type\":\"aborted_truncate\",",
            Kind::AbortedStatement => b"{\"type\":\"aborted_statement\",",
            Kind::Abort => b"{\"type\":\"abort\",",
            Kind::CaptureStopped => b"{\"type\":\"capture_stopped\",",
            Kind::Gap => b"{\"type\":\"gap\",",
        }
    }

    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// What a record of a streamed or prepared transaction that rolled back becomes (`--include-aborted`).
    pub const fn aborted(self) -> Option<Kind> {
        match self {
            Kind::Delete => Some(Kind::AbortedDelete),
            Kind::Truncate => Some(Kind::AbortedTruncate),
            Kind::Statement => Some(Kind::AbortedStatement),
            _ => None,
        }
    }
}

/// Every log begins with its first run's `capture_started` record, written by serde with `type` first.
pub const LOG_START: &[u8] = br#"{"type":"capture_started""#;

/// Version of this format, written in `capture_started`. 2: schema/name, partitions, renames, open gaps
/// and the tamper-evident chain (`chain`, `chain_prev`, `repaired_tail`). 3: trigger statement brackets
/// (`statement` records, small row sessions, `trigger_evidence`, `trigger_error`). Older logs are read as
/// before.
pub const FORMAT_VERSION: u32 = 3;

/// Appends a JSON string literal, byte for byte what serde_json writes.
pub fn push_str(out: &mut BytesMut, s: &str) {
    // serde_json escapes only `"`, `\` and control characters below 0x20; everything else (DEL and
    // non-ASCII included) is copied as is. Nearly every value in a delete record needs no escape, and
    // the bulk copy is several times cheaper than serde_json's byte-by-byte path.
    if !needs_escape(s.as_bytes()) {
        out.reserve(s.len() + 2);
        out.extend_from_slice(b"\"");
        out.extend_from_slice(s.as_bytes());
        out.extend_from_slice(b"\"");
        return;
    }
    let mut w = BytesMutWriter(out);
    // Writing a &str to an in-memory buffer cannot fail.
    let _ = serde_json::to_writer(&mut w, s);
}

/// Whether any byte is `"`, `\` or below 0x20. Eight bytes per step (the classic "has a zero byte"
/// bit trick): a byte-at-a-time scan was the largest single cost of encoding a row.
fn needs_escape(b: &[u8]) -> bool {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let has_zero = |x: u64| x.wrapping_sub(LO) & !x & HI;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let x = u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
        // Bytes below 0x20 are those whose top three bits are all zero.
        let ctl = has_zero(x & (0xE0 * LO));
        let quote = has_zero(x ^ (u64::from(b'"') * LO));
        let backslash = has_zero(x ^ (u64::from(b'\\') * LO));
        if ctl | quote | backslash != 0 {
            return true;
        }
    }
    chunks.remainder().iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\')
}

/// Appends a column value in the log's representation (see the module docs).
pub fn push_value(out: &mut BytesMut, v: &Value) {
    match v {
        Value::Null => out.extend_from_slice(b"null"),
        Value::UnchangedToast => out.extend_from_slice(b"{\"unchanged_toast\":true}"),
        // Valid UTF-8 (the usual case, and always outside SQL_ASCII databases) is a JSON string; other
        // bytes are kept exactly, as hex in a marker object, never replaced (U+FFFD would make different
        // keys print the same).
        Value::Text(b) => match std::str::from_utf8(b) {
            Ok(s) => push_str(out, s),
            Err(_) => push_hex_object(out, b"{\"text_hex\":\"", b),
        },
        Value::Binary(b) => push_hex_object(out, b"{\"binary_hex\":\"", b),
    }
}

/// `{"<name>":"<lower-case hex of bytes>"}`, `open` being everything up to the opening quote of the hex.
fn push_hex_object(out: &mut BytesMut, open: &[u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.reserve(open.len() + bytes.len() * 2 + 2);
    out.extend_from_slice(open);
    for &b in bytes {
        out.extend_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xF)]]);
    }
    out.extend_from_slice(b"\"}");
}

/// Appends `"X/Y"` as `Lsn`'s Display writes it (upper-case hex halves, no padding), without going
/// through `fmt` and a temporary String: it runs for every row.
pub fn push_lsn(out: &mut BytesMut, lsn: Lsn) {
    let mut buf = [0u8; 19];
    buf[0] = b'"';
    let mut i = 1;
    for half in [(lsn.0 >> 32) as u32, lsn.0 as u32] {
        if i > 1 {
            buf[i] = b'/';
            i += 1;
        }
        let digits = (8 - half.leading_zeros() as usize / 4).max(1);
        for d in (0..digits).rev() {
            buf[i] = b"0123456789ABCDEF"[((half >> (d * 4)) & 0xF) as usize];
            i += 1;
        }
    }
    buf[i] = b'"';
    out.extend_from_slice(&buf[..=i]);
}

pub fn push_u64(out: &mut BytesMut, n: u64) {
    let b = itoa_buf(n);
    out.extend_from_slice(b.as_bytes());
}

fn itoa_buf(n: u64) -> ItoaOut {
    let mut buf = [0u8; 20];
    let mut i = buf.len();
    let mut n = n;
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    ItoaOut { buf, start: i }
}

struct ItoaOut {
    buf: [u8; 20],
    start: usize,
}

impl ItoaOut {
    fn as_bytes(&self) -> &[u8] {
        &self.buf[self.start..]
    }
}

/// Formats a PostgreSQL timestamp (microseconds since 2000-01-01 UTC) as RFC 3339 UTC with microseconds.
pub fn format_pg_time(pg_micros: i64) -> String {
    let unix_micros = crate::protocol::replication::pg_micros_to_unix_micros(pg_micros);
    format_unix_micros(unix_micros)
}

pub fn format_unix_micros(unix_micros: i64) -> String {
    let secs = unix_micros.div_euclid(1_000_000);
    let micros = unix_micros.rem_euclid(1_000_000) as u32;
    match chrono::DateTime::from_timestamp(secs, micros * 1000) {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string(),
        // Out of chrono's range (±262,000 years) only for garbage input: keep the raw number visible.
        None => format!("invalid-timestamp({unix_micros})"),
    }
}

pub fn now_rfc3339() -> String {
    let now = chrono::Utc::now();
    now.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// `capture_started`: what this run set up, so a log explains itself without the database.
#[derive(Debug, Serialize)]
pub struct CaptureStarted<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub time: String,
    pub slot: &'a str,
    pub publication: &'a str,
    pub tables: &'a [String],
    /// The watched tables with their OIDs (what `relation_renamed` refers to); format version 2.
    pub relations: &'a [WatchedRelation<'a>],
    pub start_lsn: Lsn,
    pub server_version: &'a str,
    pub system_identifier: &'a str,
    pub database: &'a str,
    pub walwitness_version: &'static str,
    pub format_version: u32,
    pub proto_version: u32,
    /// The server's timeline (IDENTIFY_SYSTEM) when the run started: a later run on another timeline checks
    /// that the log's positions are still in the server's history.
    pub timeline: u32,
    /// Transactions ending at or below this were already in the log (for this server, database and slot)
    /// when the run started, and are not written again.
    pub resume_after: Lsn,
    /// Who-ran-it sources of this run: `"trigger"`, `"activity"` (both, one, or none: `[]`).
    pub attribution_sources: &'a [&'a str],
    /// The activity sampler's interval in milliseconds (`null` without the activity source).
    pub activity_interval_ms: Option<u64>,
    /// The head of the log before this run (the chain value of its last line), or `None` for a new
    /// log, standard output, or a log whose last line has no chain value (format 1).
    pub chain_prev: Option<String>,
    /// What the log-tail repair cut before this run, if anything.
    pub repaired_tail: Option<RepairedTail>,
}

/// A watched table in `capture_started`.
#[derive(Debug, Serialize)]
pub struct WatchedRelation<'a> {
    pub oid: u32,
    pub schema: &'a str,
    pub name: &'a str,
}

/// The bytes the log-tail repair cut at start: lines after the last chain value (an unfinished
/// transaction, a torn write), which no chain value covered.
#[derive(Debug, Serialize)]
pub struct RepairedTail {
    pub cut_bytes: u64,
    pub cut_lines: u64,
    /// SHA-256 of the bytes cut, in lower-case hex.
    pub sha256: String,
}

/// `capture_stopped`: a deliberate end, with the last LSN the log covers.
#[derive(Debug, Serialize)]
pub struct CaptureStopped<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub time: String,
    pub reason: &'a str,
    pub last_lsn: Lsn,
    /// Whether the slot still exists after this end: kept for a later resume (`--keep-slot`), or left
    /// because dropping it failed (then it is in `left_behind`).
    pub slot_kept: bool,
    /// What this end meant to remove and could not, each with the statement that removes it; empty when
    /// everything it set out to remove is gone (or `--keep-slot` kept it on purpose).
    pub left_behind: &'a [crate::pg::leftover::Leftover],
}

/// `gap`: a stretch of WAL the log cannot cover (the slot was lost, dropped or recreated, the capture gave
/// it up to protect the server, the log belongs to another server or history, or the publication stopped
/// covering a table). Deletes committed between `from_lsn` and `to_lsn` may be missing; `to_lsn` is `None`
/// while the gap is `open` (its end not known yet), and a later record that `closes` it gives the end.
#[derive(Debug, Serialize)]
pub struct Gap<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub time: String,
    pub slot: &'a str,
    pub from_lsn: Lsn,
    pub to_lsn: Option<Lsn>,
    pub reason: &'a str,
    pub open: bool,
    pub closes: bool,
    pub table: Option<&'a str>,
    pub detail: &'a str,
}

impl<'a> Gap<'a> {
    /// A gap whose both ends are known.
    pub fn closed(slot: &'a str, reason: &'a str, from_lsn: Lsn, to_lsn: Lsn, detail: &'a str) -> Gap<'a> {
        Gap {
            kind: Kind::Gap.name(),
            time: now_rfc3339(),
            slot,
            from_lsn,
            to_lsn: Some(to_lsn.max(from_lsn)),
            reason,
            open: false,
            closes: false,
            table: None,
            detail,
        }
    }

    /// Coverage ended at `from_lsn`; the end is not known yet.
    pub fn opened(slot: &'a str, reason: &'a str, table: Option<&'a str>, from_lsn: Lsn, detail: &'a str) -> Gap<'a> {
        Gap {
            kind: Kind::Gap.name(),
            time: now_rfc3339(),
            slot,
            from_lsn,
            to_lsn: None,
            reason,
            open: true,
            closes: false,
            table,
            detail,
        }
    }

    /// Ends the open gap with the same `reason`, `table` and `from_lsn`: coverage resumed at `to_lsn`.
    pub fn closing(
        slot: &'a str,
        reason: &'a str,
        table: Option<&'a str>,
        from_lsn: Lsn,
        to_lsn: Lsn,
        detail: &'a str,
    ) -> Gap<'a> {
        Gap {
            kind: Kind::Gap.name(),
            time: now_rfc3339(),
            slot,
            from_lsn,
            to_lsn: Some(to_lsn.max(from_lsn)),
            reason,
            open: false,
            closes: true,
            table,
            detail,
        }
    }
}

/// Serialises a whole-line record and appends it with its newline.
pub fn push_record<T: Serialize>(out: &mut BytesMut, rec: &T) {
    let mut w = BytesMutWriter(out);
    let _ = serde_json::to_writer(&mut w, rec);
    out.extend_from_slice(b"\n");
}

struct BytesMutWriter<'a>(&'a mut BytesMut);

impl std::io::Write for BytesMutWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_have_microseconds_and_z() {
        assert_eq!(format_unix_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(format_pg_time(1), "2000-01-01T00:00:00.000001Z");
        assert_eq!(format_unix_micros(-1), "1969-12-31T23:59:59.999999Z");
    }

    #[test]
    fn integers_and_strings() {
        let mut b = BytesMut::new();
        push_u64(&mut b, 0);
        b.extend_from_slice(b" ");
        push_u64(&mut b, u64::from(u32::MAX));
        b.extend_from_slice(b" ");
        push_str(&mut b, "a\"b\\c\nd é");
        assert_eq!(&b[..], "0 4294967295 \"a\\\"b\\\\c\\nd é\"".as_bytes());
    }

    #[test]
    fn lsns_as_postgresql_prints_them() {
        for v in [0u64, 1, 0xF, 0x10, 0x1_0000_0000, 0x16_B374_D848, 0xFFFF_FFFF_FFFF_FFFF, 0xABC_0000_0001] {
            let mut b = BytesMut::new();
            push_lsn(&mut b, Lsn(v));
            assert_eq!(&b[..], format!("\"{}\"", Lsn(v)).as_bytes());
        }
    }

    #[test]
    fn strings_match_serde_json() {
        for s in ["", "plain", "a\"b", "back\\slash", "tab\there", "\u{1}\u{1f}\u{7f}", "é ü 日本 😀", "</script>"]
        {
            let mut b = BytesMut::new();
            push_str(&mut b, s);
            assert_eq!(&b[..], serde_json::to_string(s).unwrap().as_bytes(), "{s:?}");
        }
        // Every byte value at every position of an 8-byte step and of the remainder.
        for len in [8usize, 13] {
            for pos in 0..len {
                for byte in 0u8..=255 {
                    let mut v = vec![b'a'; len];
                    v[pos] = byte;
                    let want = byte < 0x20 || byte == b'"' || byte == b'\\';
                    assert_eq!(needs_escape(&v), want, "byte {byte:#x} at {pos} of {len}");
                }
            }
        }
    }

    #[test]
    fn text_that_is_not_utf8_is_kept_as_hex() {
        let text = |v: &'static [u8]| {
            let mut b = BytesMut::new();
            push_value(&mut b, &Value::Text(bytes::Bytes::from_static(v)));
            String::from_utf8(b.to_vec()).unwrap()
        };
        assert_eq!(text(b"ok\xffok"), r#"{"text_hex":"6f6bff6f6b"}"#);
        assert_eq!(text(b"\xc3"), r#"{"text_hex":"c3"}"#);
        // Valid UTF-8 stays a string, whatever it looks like.
        assert_eq!(text("é".as_bytes()), "\"é\"");
        assert_eq!(text(b"\\xff"), r#""\\xff""#);
        assert_eq!(text(b"{\"text_hex\":\"ff\"}"), r#""{\"text_hex\":\"ff\"}""#);
        // Different bytes never print the same (a lossy decoder gives U+FFFD for all of these).
        let all: Vec<&'static [u8]> = vec![b"\xff", b"\xfe", b"\xef\xbf\xbd", b"\xc3", b"\xc3\xff", b"\\xff", b"ff"];
        let printed: std::collections::BTreeSet<String> = all.iter().map(|v| text(v)).collect();
        assert_eq!(printed.len(), all.len(), "{printed:?}");
        for p in &printed {
            serde_json::from_str::<serde_json::Value>(p).unwrap();
        }
    }

    #[test]
    fn values() {
        let mut b = BytesMut::new();
        push_value(&mut b, &Value::Null);
        push_value(&mut b, &Value::UnchangedToast);
        push_value(&mut b, &Value::Binary(bytes::Bytes::from_static(&[0, 255])));
        assert_eq!(&b[..], b"null{\"unchanged_toast\":true}{\"binary_hex\":\"00ff\"}");
    }

    #[test]
    fn every_kind_opens_with_its_name() {
        for k in Kind::ALL {
            assert_eq!(k.open(), format!("{{\"type\":\"{}\",", k.name()).as_bytes());
            assert_eq!(Kind::parse(k.name()), Some(k));
            assert!(LOG_START.starts_with(&Kind::CaptureStarted.open()[..LOG_START.len()]));
        }
        assert_eq!(Kind::parse("nothing"), None);
    }
}
