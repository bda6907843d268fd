//! `walwitness report FILE…` (also `replay --report`): who deleted, when, what, and what could not be
//! attributed — from committed transactions only.
//!
//! Memory is bounded by sessions, minutes and distinct shapes, never by rows: a transaction's rows are
//! summed into a small pending summary and merged at its commit; per-session statements, statement
//! shapes, key prefixes and tables keep at most [`CAP_TRACKED`] distinct entries (later ones are
//! counted in an `other` bucket) and the output shows the top [`TOP`].
//!
//! ## `--format json`
//! One JSON object (`format: 1`; fields are only ever added):
//!
//! ```text
//! {
//!   "format": 1,
//!   "files": ["a.jsonl"], "lines": 1234, "skipped_lines": 0,
//!   "transactions": 12, "rows": 1000, "truncates": 0,        // committed, after the filters
//!   "first_time": "…Z" | null, "last_time": "…Z" | null,   // commit times
//!   "sessions": [{                                           // by rows, descending
//!     "id": 0, "pid": 2223, "backend_start": "…Z" | null, "user": "…" | null,
//!     "application_name": "…" | null, "client": "10.0.0.5:51234" | "local socket",
//!     "attributed_by": "trigger" | "activity" | null,
//!     "transactions": 6, "rows": 30, "truncates": 0, "first_time": "…Z", "last_time": "…Z",
//!     "distinct_statements": 1,                              // counted up to the cap
//!     "statements": [{"statement": "DELETE …", "rows": 30, "transactions": 6}],   // top 50
//!     "statements_other": {"statements": 0, "rows": 0, "transactions": 0}
//!   }],
//!   "unattributed": {"rows": 0, "truncates": 0, "transactions": 0,  // transactions: no attributed row
//!                    "row_share_pct": 0.0, "transaction_share_pct": 0.0},   // rows + truncates share
//!   "minutes": [{"minute": "2026-11-26T15:21Z", "rows": 30, "truncates": 0, "burst": false,
//!                "sessions": [{"session": 0 | null, "rows": 30}]}],   // non-empty minutes, in order
//!   "median_rows_per_minute": 30, "burst_threshold": 100,   // burst: rows > max(3 × median, 100)
//!   "statements": [{"shape": "DELETE FROM t WHERE k IN (...)", "rows": 30, "transactions": 6,
//!                   "sessions": 1}],                          // top 50 by rows; attributed rows only
//!   "statements_other": {"shapes": 0, "rows": 0, "transactions": 0},
//!   "key_prefixes": [{"prefix": "report", "rows": 30}],     // text before the first ':' or '_'
//!   "key_prefixes_other": {"prefixes": 0, "rows": 0},
//!   "tables": [{"table": "public.cache", "rows": 30, "truncates": 0}]
//! }
//! ```
//! `session` ids in `minutes` refer to `sessions[].id`; `null` is the unattributed share.
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufWriter, Write};

use serde::{Deserialize, Serialize};

use crate::cli::{FilterArgs, ReportArgs, ReportFormat, ReportOutputArgs};
use crate::error::{Exit, Failure};
use crate::sink::record::format_unix_micros;
use crate::term::clean;

use super::log::{Key, KeyValue, Kind, Record};
use super::replay::Filter;
use super::{read_files, Consumer, Stop};

/// Distinct entries tracked per bucket (later ones go to `other`).
pub const CAP_TRACKED: usize = 1000;
/// Entries shown per list.
pub const TOP: usize = 50;
/// Raw statements kept per session.
pub const CAP_SESSION_STATEMENTS: usize = 50;

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

/// Normalises a statement to its shape: literals (numbers, quoted strings, dollar-quoted strings)
/// become `?`, `IN (?, ?, …)` becomes `IN (...)`, whitespace runs become one space, a trailing `;` goes.
/// Identifiers (also "quoted" ones) are kept: they are the shape.
pub fn normalize_statement(sql: &str) -> String {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    let ident_char = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    while i < b.len() {
        let c = b[i];
        match c {
            b'\'' => {
                // 'it''s' — doubled quotes stay inside; E'…' escapes with backslashes.
                let escapes = i > 0 && (b[i - 1] == b'E' || b[i - 1] == b'e') && !(i > 1 && ident_char(b[i - 2]));
                if escapes {
                    out.pop();
                }
                i += 1;
                while i < b.len() {
                    if escapes && b[i] == b'\\' {
                        i += 2;
                        continue;
                    }
                    if b[i] == b'\'' {
                        if i + 1 < b.len() && b[i + 1] == b'\'' {
                            i += 2;
                            continue;
                        }
                        break;
                    }
                    i += 1;
                }
                i += 1;
                out.push('?');
            }
            b'"' => {
                let start = i;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += 1;
                }
                i = (i + 1).min(b.len());
                out.push_str(&sql[start..i]);
            }
            b'$' if !(i > 0 && ident_char(b[i - 1])) && dollar_tag(&b[i..]).is_some() => {
                let tag_len = dollar_tag(&b[i..]).unwrap_or(1);
                let tag = &b[i..i + tag_len];
                let body = i + tag_len;
                let end = b[body..].windows(tag_len).position(|w| w == tag).map_or(b.len(), |p| body + p + tag_len);
                // $1-style parameters are not dollar quotes: dollar_tag rejects digits.
                out.push('?');
                i = end;
            }
            b'0'..=b'9' if !(i > 0 && ident_char(b[i - 1])) => {
                while i < b.len() && (b[i].is_ascii_digit() || b[i] == b'.') {
                    i += 1;
                }
                if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
                    let mut j = i + 1;
                    if j < b.len() && (b[j] == b'+' || b[j] == b'-') {
                        j += 1;
                    }
                    if j < b.len() && b[j].is_ascii_digit() {
                        i = j;
                        while i < b.len() && b[i].is_ascii_digit() {
                            i += 1;
                        }
                    }
                }
                // A leading minus sign of a negative literal is kept: `- ?` and `-?` shapes are rare.
                out.push('?');
            }
            c if c.is_ascii_whitespace() => {
                while i < b.len() && b[i].is_ascii_whitespace() {
                    i += 1;
                }
                if !out.is_empty() {
                    out.push(' ');
                }
            }
            _ => {
                // Copy one UTF-8 character.
                let len = utf8_len(c);
                let end = (i + len).min(b.len());
                out.push_str(sql.get(i..end).unwrap_or("?"));
                i = end;
            }
        }
    }
    while out.ends_with(' ') || out.ends_with(';') {
        out.pop();
    }
    collapse_in_lists(&out)
}

fn utf8_len(first: u8) -> usize {
    match first {
        0xf0..=0xff => 4,
        0xe0..=0xef => 3,
        0xc0..=0xdf => 2,
        _ => 1,
    }
}

/// Length of a `$tag$` opener at the start of `b` (tag: letters/underscore, not a `$1` parameter).
fn dollar_tag(b: &[u8]) -> Option<usize> {
    let rest = b.get(1..)?;
    let n = rest.iter().take_while(|c| c.is_ascii_alphabetic() || **c == b'_' || **c >= 0x80).count();
    (rest.get(n) == Some(&b'$')).then_some(n + 2)
}

/// `IN (?, ?, ?)` → `IN (...)`; also `IN (?)`, so one-key and many-key deletes share a shape.
fn collapse_in_lists(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    loop {
        let lower = rest.to_ascii_lowercase();
        let Some(pos) = find_in_keyword(&lower) else {
            out.push_str(rest);
            return out;
        };
        // pos points just past "in", at optional space then "(".
        let after = &rest[pos..];
        let trimmed = after.trim_start();
        if let Some(inner) = trimmed.strip_prefix('(') {
            if let Some(close) = inner.find(')') {
                let list = &inner[..close];
                if !list.is_empty() && list.chars().all(|c| c == '?' || c == ',' || c == ' ') && list.contains('?') {
                    out.push_str(&rest[..pos]);
                    out.push_str(" (...)");
                    rest = &inner[close + 1..];
                    continue;
                }
            }
        }
        out.push_str(&rest[..pos]);
        rest = after;
    }
}

/// Byte offset just past the next standalone `in` keyword.
fn find_in_keyword(lower: &str) -> Option<usize> {
    let b = lower.as_bytes();
    let mut from = 0;
    while let Some(p) = lower[from..].find("in") {
        let at = from + p;
        let before_ok = at == 0 || !(b[at - 1].is_ascii_alphanumeric() || b[at - 1] == b'_' || b[at - 1] == b'"');
        let end = at + 2;
        let after_ok = end == b.len() || !(b[end].is_ascii_alphanumeric() || b[end] == b'_' || b[end] == b'"');
        if before_ok && after_ok {
            return Some(end);
        }
        from = end;
    }
    None
}

/// The text before the first `:` or `_` of a key's first column (the whole value if neither occurs).
pub fn key_prefix<'k>(key: &'k Key) -> &'k str {
    match key.0.first() {
        Some((_, KeyValue::Text(s))) => match s.find([':', '_']) {
            Some(p) => &s[..p],
            None => s,
        },
        Some((_, KeyValue::Null)) => "NULL",
        Some((_, KeyValue::Other | KeyValue::TextHex(_))) => "{…}",
        None => "",
    }
}

#[derive(Debug)]
struct SessionAgg {
    pid: i64,
    backend_start: Option<String>,
    user: Option<String>,
    application_name: Option<String>,
    client: String,
    attributed_by: Option<String>,
    transactions: u64,
    rows: u64,
    truncates: u64,
    first: i64,
    last: i64,
    last_txn: u64,
    statements: Vec<(String, u64, u64, u64)>, // statement, rows, transactions, last_txn
    statements_other: StatementsOther,
}

#[derive(Debug, Default)]
struct ShapeAgg {
    rows: u64,
    transactions: u64,
    last_txn: u64,
    sessions: Vec<usize>,
    sessions_over: bool,
}

#[derive(Debug, Default)]
struct MinuteAgg {
    rows: u64,
    truncates: u64,
    sessions: Vec<(Option<usize>, u64)>,
}

/// One (session, statement) of the transaction being read.
#[derive(Debug)]
struct PendEntry {
    session: Option<usize>,
    query: Option<String>,
    rows: u64,
    truncates: u64,
}

/// A session's entries in `Pending::entries`: the one without a query, and by query.
type SessionEntries = (Option<usize>, HashMap<String, usize>);

#[derive(Debug, Default)]
struct Pending {
    entries: Vec<PendEntry>,
    /// `entries` by session, then query (`None`: the entry without a query): a crafted transaction of
    /// a million distinct statements must not cost a search through all of them per row.
    index: HashMap<Option<usize>, SessionEntries>,
    prefixes: Vec<(String, u64)>,
    tables: Vec<(String, u64, u64)>,
}

impl Pending {
    fn clear(&mut self) {
        self.entries.clear();
        self.index.clear();
        self.prefixes.clear();
        self.tables.clear();
    }

    /// The entry of `session` and `query`, created if new.
    fn entry(&mut self, session: Option<usize>, query: Option<&str>) -> &mut PendEntry {
        let by_session = self.index.entry(session).or_default();
        let slot = match query {
            None => by_session.0,
            Some(q) => by_session.1.get(q).copied(),
        };
        let i = match slot {
            Some(i) => i,
            None => {
                let i = self.entries.len();
                self.entries.push(PendEntry { session, query: query.map(str::to_owned), rows: 0, truncates: 0 });
                match query {
                    None => by_session.0 = Some(i),
                    Some(q) => {
                        by_session.1.insert(q.to_owned(), i);
                    }
                }
                i
            }
        };
        &mut self.entries[i]
    }
}

/// Adds `n` to the entry for `key` in a small vector map (a transaction touches few of each).
fn bump(v: &mut Vec<(String, u64)>, key: &str, n: u64) {
    if let Some(e) = v.iter_mut().find(|e| e.0 == key) {
        e.1 += n;
    } else if v.len() < CAP_TRACKED {
        v.push((key.to_owned(), n));
    } else if let Some(e) = v.iter_mut().find(|e| e.0.is_empty()) {
        e.1 += n;
    } else {
        v.push((String::new(), n));
    }
}

/// The report's aggregates as logs are read.
#[derive(Debug, Default)]
pub struct Aggregator {
    filter: Filter,
    sessions: Vec<SessionAgg>,
    session_index: HashMap<(i64, Option<String>), usize>,
    last_session: Option<usize>,
    txn_seq: u64,
    transactions: u64,
    rows: u64,
    truncates: u64,
    first: Option<i64>,
    last: Option<i64>,
    un_rows: u64,
    un_truncates: u64,
    un_transactions: u64,
    minutes: BTreeMap<i64, MinuteAgg>,
    shapes: HashMap<String, ShapeAgg>,
    shapes_other: ShapesOther,
    shape_cache: HashMap<String, String>,
    prefixes: HashMap<String, u64>,
    prefixes_other: PrefixesOther,
    tables: HashMap<String, (u64, u64)>,
    pending: Pending,
    gaps: Vec<GapOut>,
    aborted_attempts: u64,
    aborted_rows: u64,
    /// Format 2: the open transaction's statement texts by number.
    statements: Vec<(u64, Option<String>)>,
}

impl Aggregator {
    pub fn new(filter: Filter) -> Self {
        Aggregator { filter, ..Default::default() }
    }

    fn intern_session(&mut self, s: &super::log::SessionRef) -> usize {
        if let Some(i) = self.last_session {
            let a = &self.sessions[i];
            if a.pid == s.pid && a.backend_start.as_deref() == s.backend_start.as_deref() {
                return i;
            }
        }
        let key = (s.pid, s.backend_start.as_deref().map(str::to_owned));
        let i = match self.session_index.get(&key) {
            Some(&i) => i,
            None => {
                let i = self.sessions.len();
                self.sessions.push(SessionAgg {
                    pid: s.pid,
                    backend_start: key.1.clone(),
                    user: s.user.as_deref().map(str::to_owned),
                    application_name: s.application_name.as_deref().map(str::to_owned),
                    client: s.client(),
                    attributed_by: s.attributed_by.as_deref().map(str::to_owned),
                    transactions: 0,
                    rows: 0,
                    truncates: 0,
                    first: i64::MAX,
                    last: i64::MIN,
                    last_txn: 0,
                    statements: Vec::new(),
                    statements_other: StatementsOther::default(),
                });
                self.session_index.insert(key, i);
                i
            }
        };
        self.last_session = Some(i);
        i
    }

    fn shape_of(&mut self, query: &str) -> String {
        if let Some(s) = self.shape_cache.get(query) {
            return s.clone();
        }
        let shape = normalize_statement(query);
        // The cache only saves work; dropping it when large keeps memory bounded.
        if self.shape_cache.len() >= 10_000 {
            self.shape_cache.clear();
        }
        self.shape_cache.insert(query.to_owned(), shape.clone());
        shape
    }

    fn merge_commit(&mut self, time: i64) {
        self.txn_seq += 1;
        let seq = self.txn_seq;
        let pending = std::mem::take(&mut self.pending);
        if pending.entries.is_empty() {
            self.pending = pending;
            return;
        }
        self.transactions += 1;
        self.first = Some(self.first.map_or(time, |f| f.min(time)));
        self.last = Some(self.last.map_or(time, |l| l.max(time)));
        let minute = time.div_euclid(60_000_000);
        let mut unattributed_txn = false;
        for e in &pending.entries {
            self.rows += e.rows;
            self.truncates += e.truncates;
            let m = self.minutes.entry(minute).or_default();
            m.rows += e.rows;
            m.truncates += e.truncates;
            match m.sessions.iter_mut().find(|s| s.0 == e.session) {
                Some(s) => s.1 += e.rows,
                None => m.sessions.push((e.session, e.rows)),
            }
            let Some(si) = e.session else {
                self.un_rows += e.rows;
                self.un_truncates += e.truncates;
                unattributed_txn = true;
                continue;
            };
            let s = &mut self.sessions[si];
            s.rows += e.rows;
            s.truncates += e.truncates;
            s.first = s.first.min(time);
            s.last = s.last.max(time);
            if s.last_txn != seq {
                s.last_txn = seq;
                s.transactions += 1;
            }
            if let Some(q) = &e.query {
                if let Some(st) = s.statements.iter_mut().find(|st| st.0 == *q) {
                    st.1 += e.rows;
                    if st.3 != seq {
                        st.3 = seq;
                        st.2 += 1;
                    }
                } else if s.statements.len() < CAP_SESSION_STATEMENTS {
                    s.statements.push((q.clone(), e.rows, 1, seq));
                } else {
                    s.statements_other.statements += 1;
                    s.statements_other.rows += e.rows;
                    s.statements_other.transactions += 1;
                }
                let shape = self.shape_of(q);
                let tracked = self.shapes.len() < CAP_TRACKED || self.shapes.contains_key(&shape);
                if tracked {
                    let sh = self.shapes.entry(shape).or_default();
                    sh.rows += e.rows;
                    if sh.last_txn != seq {
                        sh.last_txn = seq;
                        sh.transactions += 1;
                    }
                    if !sh.sessions.contains(&si) {
                        if sh.sessions.len() < CAP_TRACKED {
                            sh.sessions.push(si);
                        } else {
                            sh.sessions_over = true;
                        }
                    }
                } else {
                    self.shapes_other.shapes += 1;
                    self.shapes_other.rows += e.rows;
                    self.shapes_other.transactions += 1;
                }
            }
        }
        if unattributed_txn && pending.entries.iter().all(|e| e.session.is_none()) {
            self.un_transactions += 1;
        }
        for (p, n) in &pending.prefixes {
            if let Some(c) = self.prefixes.get_mut(p.as_str()) {
                *c += n;
            } else if self.prefixes.len() < CAP_TRACKED && !p.is_empty() {
                self.prefixes.insert(p.clone(), *n);
            } else {
                self.prefixes_other.prefixes += 1;
                self.prefixes_other.rows += n;
            }
        }
        for (t, r, tr) in &pending.tables {
            if let Some(c) = self.tables.get_mut(t.as_str()) {
                c.0 += r;
                c.1 += tr;
            } else if self.tables.len() < CAP_TRACKED {
                self.tables.insert(t.clone(), (*r, *tr));
            }
        }
        self.pending = pending;
        self.pending.clear();
    }

    /// The finished report.
    pub fn report(&self, files: &[String], lines: u64, skipped: u64) -> Report {
        let mut ids: Vec<usize> =
            (0..self.sessions.len()).filter(|&i| self.sessions[i].rows + self.sessions[i].truncates > 0).collect();
        ids.sort_by(|&a, &b| {
            let (x, y) = (&self.sessions[a], &self.sessions[b]);
            (y.rows, y.truncates).cmp(&(x.rows, x.truncates)).then(x.first.cmp(&y.first))
        });
        // Output ids are positions in the sorted list, so `sessions[id]` works for readers of the JSON.
        let mut new_id = vec![usize::MAX; self.sessions.len()];
        for (n, &i) in ids.iter().enumerate() {
            new_id[i] = n;
        }
        let sessions = ids
            .iter()
            .enumerate()
            .map(|(n, &i)| {
                let s = &self.sessions[i];
                let mut st: Vec<StatementOut> = s
                    .statements
                    .iter()
                    .map(|(q, r, t, _)| StatementOut { statement: q.clone(), rows: *r, transactions: *t })
                    .collect();
                st.sort_by(|a, b| b.rows.cmp(&a.rows).then(a.statement.cmp(&b.statement)));
                SessionOut {
                    id: n,
                    pid: s.pid,
                    backend_start: s.backend_start.clone(),
                    user: s.user.clone(),
                    application_name: s.application_name.clone(),
                    client: s.client.clone(),
                    attributed_by: s.attributed_by.clone(),
                    transactions: s.transactions,
                    rows: s.rows,
                    truncates: s.truncates,
                    first_time: format_unix_micros(s.first),
                    last_time: format_unix_micros(s.last),
                    distinct_statements: s.statements.len() as u64 + s.statements_other.statements,
                    statements: st,
                    statements_other: s.statements_other.clone(),
                }
            })
            .collect();
        let mut counts: Vec<u64> = self.minutes.values().map(|m| m.rows).collect();
        counts.sort_unstable();
        let median = if counts.is_empty() {
            0
        } else if counts.len() % 2 == 1 {
            counts[counts.len() / 2]
        } else {
            (counts[counts.len() / 2 - 1] + counts[counts.len() / 2]) / 2
        };
        let threshold = (3 * median).max(100);
        let minutes = self
            .minutes
            .iter()
            .map(|(&m, a)| {
                let mut sess: Vec<MinuteSession> = a
                    .sessions
                    .iter()
                    .filter(|(_, r)| *r > 0)
                    .map(|&(s, r)| MinuteSession { session: s.map(|i| new_id[i]), rows: r })
                    .collect();
                sess.sort_by_key(|s| s.session.unwrap_or(usize::MAX));
                MinuteOut {
                    minute: format_unix_micros(m * 60_000_000)[..16].to_owned() + "Z",
                    rows: a.rows,
                    truncates: a.truncates,
                    burst: a.rows > threshold,
                    sessions: sess,
                }
            })
            .collect();
        let mut shapes: Vec<ShapeOut> = self
            .shapes
            .iter()
            .map(|(k, v)| ShapeOut {
                shape: k.clone(),
                rows: v.rows,
                transactions: v.transactions,
                sessions: v.sessions.len() as u64,
            })
            .collect();
        shapes.sort_by(|a, b| b.rows.cmp(&a.rows).then(a.shape.cmp(&b.shape)));
        let mut statements_other = self.shapes_other.clone();
        for s in shapes.iter().skip(TOP) {
            statements_other.shapes += 1;
            statements_other.rows += s.rows;
            statements_other.transactions += s.transactions;
        }
        shapes.truncate(TOP);
        let mut prefixes: Vec<PrefixOut> =
            self.prefixes.iter().map(|(k, v)| PrefixOut { prefix: k.clone(), rows: *v }).collect();
        prefixes.sort_by(|a, b| b.rows.cmp(&a.rows).then(a.prefix.cmp(&b.prefix)));
        let mut prefixes_other = self.prefixes_other.clone();
        for p in prefixes.iter().skip(TOP) {
            prefixes_other.prefixes += 1;
            prefixes_other.rows += p.rows;
        }
        prefixes.truncate(TOP);
        let mut tables: Vec<TableOut> =
            self.tables.iter().map(|(k, v)| TableOut { table: k.clone(), rows: v.0, truncates: v.1 }).collect();
        tables.sort_by(|a, b| (b.rows, b.truncates).cmp(&(a.rows, a.truncates)).then(a.table.cmp(&b.table)));
        let pct = |part: u64, whole: u64| {
            if whole == 0 {
                0.0
            } else {
                (part as f64 * 1000.0 / whole as f64).round() / 10.0
            }
        };
        Report {
            format: 1,
            files: files.to_vec(),
            lines,
            skipped_lines: skipped,
            transactions: self.transactions,
            rows: self.rows,
            truncates: self.truncates,
            first_time: self.first.map(format_unix_micros),
            last_time: self.last.map(format_unix_micros),
            sessions,
            unattributed: Unattributed {
                rows: self.un_rows,
                truncates: self.un_truncates,
                transactions: self.un_transactions,
                row_share_pct: pct(self.un_rows + self.un_truncates, self.rows + self.truncates),
                transaction_share_pct: pct(self.un_transactions, self.transactions),
            },
            minutes,
            median_rows_per_minute: median,
            burst_threshold: threshold,
            statements: shapes,
            statements_other,
            key_prefixes: prefixes,
            key_prefixes_other: prefixes_other,
            tables,
            gaps: self.gaps.clone(),
            aborted_attempts: self.aborted_attempts,
            aborted_rows: self.aborted_rows,
        }
    }
}

impl Consumer for Aggregator {
    fn row(&mut self, kind: Kind, rec: &Record, _line: &[u8]) -> io::Result<()> {
        if kind == Kind::RelationRenamed {
            self.filter.follow_rename(rec);
            return Ok(());
        }
        if !self.filter.kind_allowed(kind) || !self.filter.row_matches(rec) {
            return Ok(());
        }
        let session = rec.session.value().map(|s| self.intern_session(s));
        let looked_up = rec
            .session
            .value()
            .and_then(|s| s.statement)
            .and_then(|n| self.statements.iter().find(|(m, _)| *m == n))
            .and_then(|(_, q)| q.as_deref());
        let query = rec.session.value().and_then(|s| s.query.as_deref()).or(looked_up);
        let (rows, truncates) = if kind == Kind::Delete { (1, 0) } else { (0, 1) };
        let p = &mut self.pending;
        let e = p.entry(session, query);
        e.rows += rows;
        e.truncates += truncates;
        if let Some(key) = rec.key.value() {
            let mut v = std::mem::take(&mut p.prefixes);
            bump(&mut v, key_prefix(key), 1);
            p.prefixes = v;
        }
        let mut add_table = |t: &str, r: u64, tr: u64| {
            if let Some(e) = p.tables.iter_mut().find(|e| e.0 == t) {
                e.1 += r;
                e.2 += tr;
            } else if p.tables.len() < CAP_TRACKED {
                // As many as the report tracks (see `merge_commit`): a crafted transaction naming a
                // million tables holds no more.
                p.tables.push((t.to_owned(), r, tr));
            }
        };
        if let Some(t) = &rec.table {
            add_table(t, rows, 0);
        }
        if kind == Kind::Truncate {
            for t in rec.tables.iter().flatten() {
                add_table(t, 0, 1);
            }
        }
        Ok(())
    }

    fn commit(&mut self, rec: &Record, _line: &[u8]) -> io::Result<()> {
        let time = rec.time_micros().unwrap_or(0);
        self.merge_commit(time);
        self.statements.clear();
        Ok(())
    }

    fn abort(&mut self) {
        self.pending.clear();
        self.statements.clear();
    }

    fn statement(&mut self, rec: &Record, _line: &[u8]) -> io::Result<()> {
        if let (Some(n), Some(s)) = (rec.statement, rec.session.value()) {
            self.statements.push((n, s.query.clone()));
        }
        Ok(())
    }

    fn boundary(&mut self, kind: Kind, rec: &Record, _line: &[u8]) -> io::Result<()> {
        match kind {
            Kind::Abort => self.aborted_attempts += 1,
            Kind::AbortedDelete => self.aborted_rows += 1,
            _ => {}
        }
        if kind == Kind::Gap {
            let g = GapOut {
                time: rec.time.as_deref().unwrap_or_default().to_owned(),
                from_lsn: rec.from_lsn.map(|l| l.to_string()).unwrap_or_default(),
                to_lsn: rec.to_lsn.map(|l| l.to_string()).unwrap_or_default(),
                reason: rec.reason.as_deref().unwrap_or_default().to_owned(),
                open: rec.open == Some(true),
                table: rec.table.as_deref().map(str::to_owned),
                detail: rec.detail.as_deref().unwrap_or_default().to_owned(),
            };
            // A record that closes an open gap completes it rather than adding another.
            let opened = (rec.closes == Some(true))
                .then(|| {
                    self.gaps
                        .iter_mut()
                        .rev()
                        .find(|o| o.open && o.reason == g.reason && o.table == g.table && o.from_lsn == g.from_lsn)
                })
                .flatten();
            match opened {
                Some(o) => {
                    o.open = false;
                    o.to_lsn = g.to_lsn;
                }
                None => self.gaps.push(g),
            }
        }
        Ok(())
    }
}

fn thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn or_dash(s: &Option<String>) -> Cow<'_, str> {
    clean(s.as_deref().unwrap_or("-"))
}

/// The terminal rendering. Every string that comes from the log is escaped (`crate::term`): the
/// culprit controls statements, keys, application names and more.
pub fn render_text(r: &Report, w: &mut impl Write) -> io::Result<()> {
    writeln!(
        w,
        "walwitness report: {} ({} lines{})",
        clean(&r.files.join(", ")),
        thousands(r.lines),
        if r.skipped_lines > 0 {
            format!(", {} damaged lines skipped", thousands(r.skipped_lines))
        } else {
            String::new()
        }
    )?;
    writeln!(
        w,
        "Deleted rows: {} in {} committed transactions; {} truncates; from {} to {}",
        thousands(r.rows),
        thousands(r.transactions),
        thousands(r.truncates),
        or_dash(&r.first_time),
        or_dash(&r.last_time)
    )?;
    if !r.gaps.is_empty() {
        writeln!(w, "GAPS: {} stretch(es) of WAL not covered — deletes there may be missing:", r.gaps.len())?;
        for g in &r.gaps {
            let to = if g.open { "(still open)" } else { g.to_lsn.as_str() };
            let table = g.table.as_deref().map(|t| format!(", {}", clean(t))).unwrap_or_default();
            writeln!(
                w,
                "  {}  LSN {} .. {}  ({}{table})",
                clean(&g.time),
                clean(&g.from_lsn),
                clean(to),
                clean(&g.reason)
            )?;
        }
    }
    if r.aborted_attempts > 0 {
        writeln!(
            w,
            "Aborted attempts (rolled back, nothing deleted): {} transactions or savepoints, {} rows",
            thousands(r.aborted_attempts),
            thousands(r.aborted_rows)
        )?;
    }
    let u = &r.unattributed;
    writeln!(
        w,
        "Not attributed: {} rows ({:.1}%), {} transactions ({:.1}%)",
        thousands(u.rows),
        u.row_share_pct,
        thousands(u.transactions),
        u.transaction_share_pct
    )?;
    writeln!(w, "\nWHO — per session (pid + backend start)")?;
    for s in &r.sessions {
        writeln!(
            w,
            "  #{} pid {} started {}  user {}  app {}  client {}  ({})",
            s.id,
            s.pid,
            or_dash(&s.backend_start),
            or_dash(&s.user),
            or_dash(&s.application_name),
            clean(&s.client),
            or_dash(&s.attributed_by)
        )?;
        writeln!(
            w,
            "      {} rows, {} truncates in {} transactions, {} … {}; {} distinct statement{}",
            thousands(s.rows),
            thousands(s.truncates),
            thousands(s.transactions),
            clean(&s.first_time),
            clean(&s.last_time),
            s.distinct_statements,
            if s.distinct_statements == 1 { "" } else { "s" }
        )?;
        for st in s.statements.iter().take(5) {
            writeln!(w, "      {:>9} rows  {}", thousands(st.rows), clean(&one_line(&st.statement, 120)))?;
        }
        let more = s.statements.len().saturating_sub(5) as u64 + s.statements_other.statements;
        if more > 0 {
            writeln!(w, "      … and {more} more statements")?;
        }
    }
    if r.sessions.is_empty() {
        writeln!(w, "  (no attributed rows)")?;
    }
    writeln!(
        w,
        "\nWHEN — rows per minute (median {}, burst above {})",
        thousands(r.median_rows_per_minute),
        thousands(r.burst_threshold)
    )?;
    let max = r.minutes.iter().map(|m| m.rows).max().unwrap_or(0).max(1);
    let show_all = r.minutes.len() <= 60;
    let mut hidden = 0;
    for m in &r.minutes {
        if !show_all && !m.burst {
            hidden += 1;
            continue;
        }
        let bar = "#".repeat(((m.rows * 40).div_ceil(max)) as usize);
        writeln!(
            w,
            "  {}  {:>9}  {bar}{}",
            clean(m.minute.replace('T', " ").trim_end_matches('Z')),
            thousands(m.rows),
            if m.burst { "  <- burst" } else { "" }
        )?;
    }
    if hidden > 0 {
        writeln!(w, "  ({hidden} quieter minutes not shown; --format json or --html has them all)")?;
    }
    writeln!(w, "\nWHAT — statement shapes")?;
    for s in &r.statements {
        writeln!(
            w,
            "  {:>9} rows {:>7} txns  {}",
            thousands(s.rows),
            thousands(s.transactions),
            clean(&one_line(&s.shape, 140))
        )?;
    }
    if r.statements_other.shapes > 0 {
        writeln!(
            w,
            "  {:>9} rows {:>7} txns  (other: {} shapes)",
            thousands(r.statements_other.rows),
            thousands(r.statements_other.transactions),
            r.statements_other.shapes
        )?;
    }
    writeln!(w, "\nWHAT — key prefixes")?;
    for p in &r.key_prefixes {
        writeln!(w, "  {:>9} rows  {}", thousands(p.rows), clean(&p.prefix))?;
    }
    if r.key_prefixes_other.prefixes > 0 {
        writeln!(
            w,
            "  {:>9} rows  (other: {} prefixes)",
            thousands(r.key_prefixes_other.rows),
            r.key_prefixes_other.prefixes
        )?;
    }
    writeln!(w, "\nTables")?;
    for t in &r.tables {
        writeln!(w, "  {:>9} rows {:>5} truncates  {}", thousands(t.rows), thousands(t.truncates), clean(&t.table))?;
    }
    Ok(())
}

/// A statement on one line, cut to `max` characters.
pub fn one_line(s: &str, max: usize) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > max {
        let cut: String = flat.chars().take(max).collect();
        format!("{cut}…")
    } else {
        flat
    }
}

pub fn build(files: &[String], filter: &FilterArgs, lenient: bool, max_line: usize) -> Result<Report, Stop> {
    let filter = Filter::from_args(filter)?;
    let mut agg = Aggregator::new(filter);
    let stats = read_files(files, lenient, max_line, &mut agg)?;
    Ok(agg.report(files, stats.lines, stats.skipped_lines))
}

fn report(
    files: &[String],
    filter: &FilterArgs,
    lenient: bool,
    max_line: usize,
    out: &ReportOutputArgs,
) -> Result<(), Stop> {
    let r = build(files, filter, lenient, max_line)?;
    if let Some(path) = &out.html {
        let page = super::html::render(&r);
        write_private(path, page.as_bytes()).map_err(|e| {
            Failure::new(
                Exit::Output,
                format!("cannot write {}: {e} (check the directory exists and is writable)", path.display()),
            )
        })?;
    }
    let stdout = io::stdout();
    let mut w = BufWriter::new(stdout.lock());
    match out.format {
        ReportFormat::Text => render_text(&r, &mut w).map_err(super::output_error)?,
        ReportFormat::Json => {
            serde_json::to_writer_pretty(&mut w, &r).map_err(|e| super::output_error(e.into()))?;
            w.write_all(b"\n").map_err(super::output_error)?;
        }
    }
    w.flush().map_err(super::output_error)
}

/// Writes a report file: created 0600 (it names who deleted what), never through a symbolic link,
/// and an existing file is replaced only if it is ours and has one name (`sink::outfile`).
pub fn write_private(path: &std::path::Path, data: &[u8]) -> io::Result<()> {
    let o = crate::sink::outfile::open_private(path, crate::sink::outfile::Access::Write)?;
    let mut f = o.file;
    if o.regular {
        f.set_len(0)?;
    }
    f.write_all(data)?;
    f.flush()
}

pub fn run_with(
    cmd: &str,
    files: &[String],
    filter: &FilterArgs,
    lenient: bool,
    max_line: usize,
    out: &ReportOutputArgs,
) -> Exit {
    super::finish(cmd, report(files, filter, lenient, max_line, out))
}

pub fn run(args: ReportArgs) -> Exit {
    run_with("report", &args.files, &args.filter, args.lenient, args.limits.max_line_length, &args.output)
}

#[cfg(test)]
mod tests {
    use super::super::log::tests::{commit, del, session, CS};
    use super::super::Feeder;
    use super::*;

    #[test]
    fn statement_shapes() {
        for (sql, want) in [
            ("DELETE FROM t WHERE id = 42", "DELETE FROM t WHERE id = ?"),
            ("DELETE FROM t WHERE k = 'it''s'  ;", "DELETE FROM t WHERE k = ?"),
            ("delete from t where k in ('a', 'b',\n 'c')", "delete from t where k in (...)"),
            (
                "DELETE FROM t WHERE k IN (1,2,3) AND x IN (SELECT 1)",
                "DELETE FROM t WHERE k IN (...) AND x IN (SELECT ?)",
            ),
            ("DELETE FROM t2 WHERE a1 = 1.5e3", "DELETE FROM t2 WHERE a1 = ?"),
            ("DELETE FROM \"T 1\" WHERE v = E'a\\'b'", "DELETE FROM \"T 1\" WHERE v = ?"),
            ("DELETE FROM t WHERE v = $$x'y$$ OR w = $1", "DELETE FROM t WHERE v = ? OR w = $1"),
            ("DELETE FROM t WHERE v = $tag$x$tag$", "DELETE FROM t WHERE v = ?"),
            ("SELECT 'unterminated", "SELECT ?"),
            ("DELETE FROM t WHERE pin = 3 AND inx = 4", "DELETE FROM t WHERE pin = ? AND inx = ?"),
            ("DELETE FROM é WHERE x = 'é'", "DELETE FROM é WHERE x = ?"),
        ] {
            assert_eq!(normalize_statement(sql), want, "{sql}");
        }
        // Never panics on odd input.
        for s in ["'", "$", "$a", "E'\\", "1e", "in (", "IN (?", "\"", "é'", "$é$"] {
            let _ = normalize_statement(s);
        }
    }

    #[test]
    fn key_prefixes() {
        let k = |s: &str| Key(vec![("id".into(), KeyValue::Text(s.to_owned().into()))]);
        assert_eq!(key_prefix(&k("report:1")), "report");
        assert_eq!(key_prefix(&k("user_9:x")), "user");
        assert_eq!(key_prefix(&k("plain")), "plain");
        assert_eq!(key_prefix(&Key(vec![])), "");
    }

    fn report_of(lines: &[String]) -> Report {
        let mut agg = Aggregator::new(Filter::default());
        let mut f = Feeder::new("t", true);
        for (i, l) in lines.iter().enumerate() {
            f.line(i as u64 + 1, l.as_bytes(), &mut agg).unwrap();
        }
        f.end(lines.len() as u64, 0, &mut agg).unwrap();
        agg.report(&["t".into()], f.stats.lines, f.stats.skipped_lines)
    }

    #[test]
    fn aggregates() {
        let a = session(7, "alice", "psql", "DELETE FROM t WHERE id IN ('report:1', 'report:2')");
        let b = session(8, "bob", "cron", "DELETE FROM t WHERE id = 'user_9'");
        let t1 = "2026-11-26T15:01:00.000000Z";
        let t2 = "2026-11-26T15:03:30.000000Z";
        let mut lines = vec![
            CS.to_owned(),
            del(5, 1, t1, "report:1", &a),
            del(5, 1, t1, "report:2", &a),
            commit(5, 1, t1, 2, &a),
            del(6, 2, t2, "user_9", &b),
            commit(6, 2, t2, 1, &b),
            del(7, 3, t2, "x", "null"),
            commit(7, 3, t2, 1, "null"),
        ];
        // An uncommitted transaction at the end does not count.
        lines.push(del(8, 4, t2, "report:3", &a));
        let r = report_of(&lines);
        assert_eq!(r.skipped_lines, 1);
        assert_eq!((r.rows, r.transactions), (4, 3));
        assert_eq!(r.sessions.len(), 2);
        assert_eq!((r.sessions[0].pid, r.sessions[0].rows, r.sessions[0].transactions), (7, 2, 1));
        assert_eq!(r.sessions[0].client, "10.0.0.5:57");
        assert_eq!(r.sessions[1].user.as_deref(), Some("bob"));
        assert_eq!((r.unattributed.rows, r.unattributed.transactions), (1, 1));
        assert_eq!(r.unattributed.row_share_pct, 25.0);
        assert_eq!(r.unattributed.transaction_share_pct, 33.3);
        assert_eq!(r.minutes.len(), 2);
        assert_eq!(r.minutes[0].minute, "2026-11-26T15:01Z");
        assert_eq!(r.minutes[1].rows, 2);
        assert_eq!(
            r.minutes[1].sessions,
            vec![MinuteSession { session: Some(1), rows: 1 }, MinuteSession { session: None, rows: 1 }]
        );
        assert_eq!(r.burst_threshold, 100);
        assert_eq!(r.statements[0].shape, "DELETE FROM t WHERE id IN (...)");
        assert_eq!(r.key_prefixes[0], PrefixOut { prefix: "report".into(), rows: 2 });
        assert_eq!(r.tables[0], TableOut { table: "public.t".into(), rows: 4, truncates: 0 });
        let mut text = Vec::new();
        render_text(&r, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("Not attributed: 1 rows (25.0%)"), "{text}");
    }

    #[test]
    fn bursts() {
        let s = session(7, "alice", "psql", "DELETE FROM t");
        let mut lines = vec![];
        for (xid, minute) in (1..).zip(0..5) {
            let n = if minute == 3 { 150 } else { 2 };
            let t = format!("2026-11-26T15:0{minute}:00.000000Z");
            for k in 0..n {
                lines.push(del(xid, xid, &t, &format!("k{k}"), &s));
            }
            lines.push(commit(xid, xid, &t, n, &s));
        }
        let r = report_of(&lines);
        assert_eq!(r.median_rows_per_minute, 2);
        let bursts: Vec<_> = r.minutes.iter().filter(|m| m.burst).map(|m| m.minute.as_str()).collect();
        assert_eq!(bursts, ["2026-11-26T15:03Z"]);
    }

    #[test]
    fn caps_bound_the_aggregates() {
        let mut lines = vec![];
        for i in 0..(CAP_SESSION_STATEMENTS as u64 + 10) {
            let s = session(7, "alice", "psql", &format!("DELETE FROM t WHERE id = {i}"));
            lines.push(del(i + 1, i + 1, "2026-11-26T15:01:00.000000Z", &format!("p{i}:x"), &s));
            lines.push(commit(i + 1, i + 1, "2026-11-26T15:01:00.000000Z", 1, &s));
        }
        let r = report_of(&lines);
        let s = &r.sessions[0];
        assert_eq!(s.statements.len(), CAP_SESSION_STATEMENTS);
        assert_eq!(s.statements_other.statements, 10);
        assert_eq!(s.distinct_statements, CAP_SESSION_STATEMENTS as u64 + 10);
        assert_eq!(r.statements.len(), 1, "one shape");
        assert_eq!(r.key_prefixes.len(), TOP);
        assert_eq!(r.key_prefixes_other.prefixes, 10);
    }

    /// Issue 13: `report --html` followed a planted symbolic link and overwrote its target.
    #[test]
    fn html_report_is_private_and_never_follows_a_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("root-only");
        std::fs::write(&target, "precious\n").unwrap();
        let link = d.path().join("incident.html");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = write_private(&link, b"<html>").unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
        let p = d.path().join("new.html");
        write_private(&p, b"<html>long</html>").unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        write_private(&p, b"<p>").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "<p>");
    }

    /// Issue 13: the text report escapes control characters in every field taken from the log.
    #[test]
    fn text_report_escapes_control_characters() {
        let s = session(7, "eve\\u001b[8m", "\\u001b]0;x\\u0007", "DELETE FROM t -- \x1b[2J\x1b[H\r\nfake line");
        let t = "2026-11-26T15:01:02.000003Z";
        let lines = vec![CS.to_owned(), del(5, 1, t, "a\\nWHO — fake", &s), commit(5, 1, t, 1, &s)];
        let r = report_of(&lines);
        let mut text = Vec::new();
        render_text(&r, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(!text.chars().any(|c| c != '\n' && c.is_control()), "{text:?}");
        assert!(text.contains("user eve\\x1b[8m  app \\x1b]0;x\\x07"), "{text}");
        assert!(!text.lines().any(|l| l.starts_with("WHO — fake") || l.starts_with("fake line")), "{text}");
        // JSON keeps the exact strings.
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r"eve\u001b[8m"), "{json}");
    }

    #[test]
    fn format_2_rows_take_their_query_from_the_statement_record() {
        use super::super::log::tests::{commit, del, session, CS};
        let t = "2026-11-26T15:01:02.000003Z";
        let full = session(7, "alice", "psql", "DELETE FROM t WHERE id = 1");
        let small = r#"{"attributed_by":"trigger","pid":7,"backend_start":null,"user":"alice","application_name":"psql","client_addr":null,"client_port":null,"statement":1}"#;
        let stmt = format!(
            r#"{{"type":"statement","xid":5,"statement":1,"lsn":"0/1","commit_lsn":"0/1","commit_time":"{t}","origin":null,"session":{full}}}"#
        );
        let r = report_of(&[
            CS.to_owned(),
            stmt,
            del(5, 1, t, "a", small),
            del(5, 1, t, "b", small),
            commit(5, 1, t, 2, small),
        ]);
        assert_eq!(r.sessions.len(), 1);
        assert_eq!(r.sessions[0].rows, 2);
        assert_eq!(r.sessions[0].statements[0].statement, "DELETE FROM t WHERE id = 1");
    }
}
