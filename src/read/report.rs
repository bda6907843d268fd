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
//!   "tables": [{"table": "public.cache", "rows": 30, "truncates": 0}],
//!   "gaps": […], "aborted_attempts": 0, "aborted_rows": 0,
//!   // Issue 12 (added):
//!   "headline": {"text": "ww-forgotten-job (ww_bgjob@10.0.0.5) deleted 70 % of the rows, every ~1.0 s",
//!                "application_name": "…" | null, "user": "…" | null, "client_host": "10.0.0.5" | null,
//!                "shape": "DELETE …" | null, "rows": 70, "truncates": 0, "row_share_pct": 70.0,
//!                "rows_inferred": 0, "basis": "evidence" | "inferred" | "mixed" | "none",
//!                "period_s": 1.0 | null},
//!   "inferred_rows": 0,                                      // rows attributed by inference
//!   "principals": [{"application_name", "user", "client_host", "rows", "rows_inferred", "truncates",
//!                   "transactions", "sessions", "row_share_pct", "period_s", "top_shape"}],  // top 50
//!   "by_application" | "by_user" | "by_client_host": [{"name": "…" | null, "rows", "rows_inferred",
//!                   "truncates", "transactions", "sessions", "row_share_pct", "period_s"}],  // top 50
//!   "bin_seconds": 1, "bins": [{"start": "2026-11-26T15:21:05Z", "rows", "truncates", "burst",
//!                               "sessions": [{"session", "rows"}]}],
//!   "median_rows_per_bin": 7, "bin_burst_threshold": 21      // burst: rows > max(3 × median, 10)
//! }
//! ```
//! Also added: `sessions[]` `inferred` (true: from a single-candidate `inferred`, not evidence),
//! `client_host`, `period_s`; `statements[]` `rows_inferred`, `period_s`; `key_prefixes[]` `django`
//! (a Django cache key: `KEY_PREFIX:VERSION:` + the key's own prefix); `unattributed`
//! `ambiguous_rows` (several candidates) and `reasons` (`[{"reason", "rows"}]`).
//! `session` ids in `minutes` and `bins` refer to `sessions[].id`; `null` is the unattributed share.
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::io::{self, BufWriter, Write};

use serde::Deserialize;

use crate::cli::{FilterArgs, ReportArgs, ReportFormat, ReportOutputArgs};
use crate::error::{Exit, Failure};
use crate::sink::record::format_unix_micros;
use crate::term::clean;

use std::rc::Rc;

use super::filter::Filter;
use super::log::{Key, KeyValue, Kind, Record, SessionRef};
use super::rollup::{BinAgg, Bins, Period};
use super::summary::*;
use super::{one_line, read_files, Consumer, Stop};

/// Distinct entries tracked per bucket (later ones go to `other`).
pub const CAP_TRACKED: usize = 1000;
/// Entries shown per list.
pub const TOP: usize = 50;
/// Raw statements kept per session.
pub const CAP_SESSION_STATEMENTS: usize = 50;

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

/// The prefix a key is grouped by, from its first column: for a Django cache key
/// (`KEY_PREFIX:VERSION:key`, see [`super::rollup::django_parts`]) `KEY_PREFIX:VERSION:` and the
/// key's own leading words ([`super::rollup::own_prefix`]: `:1:user_session_abc123` →
/// `:1:user_session`); otherwise the text before the first `:` or `_` (the whole value if neither
/// occurs). The second value says whether it was a Django key.
pub fn key_prefix<'k>(key: &'k Key) -> (Cow<'k, str>, bool) {
    match key.0.first() {
        Some((_, KeyValue::Text(s))) => {
            let s: &str = s;
            if let Some((kp, ver, rest)) = super::rollup::django_parts(s) {
                return (Cow::Owned(format!("{kp}:{ver}:{}", super::rollup::own_prefix(rest))), true);
            }
            match s.find([':', '_']) {
                Some(p) => (Cow::Borrowed(&s[..p]), false),
                None => (Cow::Borrowed(s), false),
            }
        }
        Some((_, KeyValue::Null)) => (Cow::Borrowed("NULL"), false),
        Some((_, KeyValue::Other | KeyValue::TextHex(_))) => (Cow::Borrowed("{…}"), false),
        None => (Cow::Borrowed(""), false),
    }
}

#[derive(Debug)]
struct SessionAgg {
    pid: i64,
    backend_start: Option<String>,
    user: Option<String>,
    application_name: Option<String>,
    client: String,
    client_host: String,
    attributed_by: Option<String>,
    inferred: bool,
    transactions: u64,
    rows: u64,
    truncates: u64,
    first: i64,
    last: i64,
    last_txn: u64,
    statements: Vec<(String, u64, u64, u64)>, // statement, rows, transactions, last_txn
    statements_other: StatementsOther,
    period: Period,
    /// Its entries in `Aggregator::groups`: application, user, client host, principal.
    groups: [usize; 4],
}

#[derive(Debug, Default)]
struct ShapeAgg {
    rows: u64,
    rows_inferred: u64,
    transactions: u64,
    last_txn: u64,
    sessions: Vec<usize>,
    sessions_over: bool,
    period: Period,
}

/// A roll-up entry: rows of the sessions sharing an application, a user, a client host, or all three.
#[derive(Debug, Default)]
struct GroupAgg {
    rows: u64,
    rows_inferred: u64,
    truncates: u64,
    transactions: u64,
    sessions: u64,
    last_txn: u64,
    period: Period,
    /// Principals only: rows by statement shape (at most [`CAP_GROUP_SHAPES`]).
    shapes: Vec<(String, u64)>,
}

/// Shapes kept per principal (for the headline's fallback name).
const CAP_GROUP_SHAPES: usize = 20;

/// The roll-ups: 0 application, 1 user, 2 client host, 3 principal (application, user, host).
type GroupKey = (u8, Option<String>, Option<String>, Option<String>);

type MinuteAgg = BinAgg;

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
    /// Rows and truncates without a session by `unattributed_reason`.
    reasons: Vec<(String, u64)>,
    /// Of those, with several candidates.
    ambiguous: u64,
    /// Rows that carried an `inferred` object of their own (then the commit's is not used).
    rows_with_inferred: u64,
}

impl Pending {
    fn clear(&mut self) {
        self.entries.clear();
        self.index.clear();
        self.prefixes.clear();
        self.tables.clear();
        self.reasons.clear();
        self.ambiguous = 0;
        self.rows_with_inferred = 0;
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

/// The `inferred` object of a row or commit (see the README's format section), as far as `report`
/// needs it.
#[derive(Debug, Deserialize)]
struct InferredIn {
    #[serde(default)]
    candidates: u64,
    #[serde(default)]
    session: Option<SessionRef>,
    #[serde(default)]
    statement: Option<String>,
}

/// What an `inferred` object says.
#[derive(Debug, Clone)]
enum Inferred {
    /// Absent, empty, or not readable: nothing.
    None,
    /// One candidate: the session, and the statement it was running.
    One(Rc<SessionRef>, Option<Rc<str>>),
    /// Several candidates: never an answer.
    Several,
}

/// The report's aggregates as logs are read.
#[derive(Debug, Default)]
pub struct Aggregator {
    filter: Filter,
    sessions: Vec<SessionAgg>,
    session_index: HashMap<(i64, Option<String>, bool), usize>,
    last_session: Option<usize>,
    txn_seq: u64,
    transactions: u64,
    rows: u64,
    truncates: u64,
    inferred_rows: u64,
    first: Option<i64>,
    last: Option<i64>,
    un_rows: u64,
    un_truncates: u64,
    un_transactions: u64,
    un_ambiguous: u64,
    un_reasons: HashMap<String, u64>,
    minutes: BTreeMap<i64, MinuteAgg>,
    bins: Bins,
    shapes: HashMap<String, ShapeAgg>,
    shapes_other: ShapesOther,
    shape_cache: HashMap<String, String>,
    prefixes: HashMap<String, u64>,
    prefixes_other: PrefixesOther,
    tables: HashMap<String, (u64, u64)>,
    groups: Vec<(GroupKey, GroupAgg)>,
    group_index: HashMap<GroupKey, usize>,
    pending: Pending,
    gaps: Vec<GapOut>,
    aborted_attempts: u64,
    aborted_rows: u64,
    /// The last `inferred` object read, and what it said: a transaction's rows repeat it.
    inferred_raw: Vec<u8>,
    inferred_last: Option<Inferred>,
    /// Format 2: the open transaction's statement texts by number.
    statements: Vec<(u64, Option<String>)>,
}

/// The address without the port, or "local socket".
fn client_host(s: &SessionRef) -> String {
    s.client_addr.clone().unwrap_or_else(|| "local socket".to_owned())
}

impl Aggregator {
    pub fn new(filter: Filter) -> Self {
        Aggregator { filter, ..Default::default() }
    }

    /// What a record's `inferred` says (parsed once per distinct object).
    fn inferred_of(&mut self, raw: Option<&serde_json::value::RawValue>) -> Inferred {
        let Some(raw) = raw else {
            return Inferred::None;
        };
        let bytes = raw.get().as_bytes();
        if let Some(i) = &self.inferred_last {
            if self.inferred_raw == bytes {
                return i.clone();
            }
        }
        // Unreadable is nothing: this field is an inference, never a reason to call the log damaged.
        let i = match serde_json::from_str::<InferredIn>(raw.get()) {
            Ok(InferredIn { candidates: 1, session: Some(s), statement }) => {
                Inferred::One(Rc::new(s), statement.map(Rc::from))
            }
            Ok(InferredIn { candidates, .. }) if candidates > 1 => Inferred::Several,
            _ => Inferred::None,
        };
        self.inferred_raw.clear();
        self.inferred_raw.extend_from_slice(bytes);
        self.inferred_last = Some(i.clone());
        i
    }

    fn group(&mut self, key: GroupKey) -> usize {
        if let Some(&i) = self.group_index.get(&key) {
            return i;
        }
        let i = self.groups.len();
        self.groups.push((key.clone(), GroupAgg::default()));
        self.group_index.insert(key, i);
        i
    }

    fn intern_session(&mut self, s: &SessionRef, inferred: bool) -> usize {
        if let Some(i) = self.last_session {
            let a = &self.sessions[i];
            if a.pid == s.pid && a.inferred == inferred && a.backend_start.as_deref() == s.backend_start.as_deref() {
                return i;
            }
        }
        let key = (s.pid, s.backend_start.as_deref().map(str::to_owned), inferred);
        let i = match self.session_index.get(&key) {
            Some(&i) => i,
            None => {
                let i = self.sessions.len();
                let app = s.application_name.as_deref().map(str::to_owned);
                let user = s.user.as_deref().map(str::to_owned);
                let host = client_host(s);
                let groups = [
                    self.group((0, app.clone(), None, None)),
                    self.group((1, None, user.clone(), None)),
                    self.group((2, None, None, Some(host.clone()))),
                    self.group((3, app.clone(), user.clone(), Some(host.clone()))),
                ];
                for g in groups {
                    self.groups[g].1.sessions += 1;
                }
                self.sessions.push(SessionAgg {
                    pid: s.pid,
                    backend_start: key.1.clone(),
                    user,
                    application_name: app,
                    client: s.client(),
                    client_host: host,
                    attributed_by: s.attributed_by.as_deref().map(str::to_owned),
                    inferred,
                    transactions: 0,
                    rows: 0,
                    truncates: 0,
                    first: i64::MAX,
                    last: i64::MIN,
                    last_txn: 0,
                    statements: Vec::new(),
                    statements_other: StatementsOther::default(),
                    period: Period::default(),
                    groups,
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
            self.minutes.entry(minute).or_default().add(e.session, e.rows, e.truncates);
            self.bins.at(time).add(e.session, e.rows, e.truncates);
            let Some(si) = e.session else {
                self.un_rows += e.rows;
                self.un_truncates += e.truncates;
                unattributed_txn = true;
                continue;
            };
            let s = &mut self.sessions[si];
            let inferred = s.inferred;
            let inferred_rows = if inferred { e.rows } else { 0 };
            self.inferred_rows += inferred_rows;
            s.rows += e.rows;
            s.truncates += e.truncates;
            s.first = s.first.min(time);
            s.last = s.last.max(time);
            if s.last_txn != seq {
                s.last_txn = seq;
                s.transactions += 1;
                s.period.add(time);
            }
            let groups = s.groups;
            for g in groups {
                let g = &mut self.groups[g].1;
                g.rows += e.rows;
                g.rows_inferred += inferred_rows;
                g.truncates += e.truncates;
                if g.last_txn != seq {
                    g.last_txn = seq;
                    g.transactions += 1;
                    g.period.add(time);
                }
            }
            let s = &mut self.sessions[si];
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
                let principal = &mut self.groups[groups[3]].1.shapes;
                if let Some(p) = principal.iter_mut().find(|p| p.0 == shape) {
                    p.1 += e.rows;
                } else if principal.len() < CAP_GROUP_SHAPES {
                    principal.push((shape.clone(), e.rows));
                }
                let tracked = self.shapes.len() < CAP_TRACKED || self.shapes.contains_key(&shape);
                if tracked {
                    let sh = self.shapes.entry(shape).or_default();
                    sh.rows += e.rows;
                    sh.rows_inferred += inferred_rows;
                    if sh.last_txn != seq {
                        sh.last_txn = seq;
                        sh.transactions += 1;
                        sh.period.add(time);
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
        self.un_ambiguous += pending.ambiguous;
        for (r, n) in &pending.reasons {
            if let Some(c) = self.un_reasons.get_mut(r.as_str()) {
                *c += n;
            } else if self.un_reasons.len() < CAP_TRACKED {
                self.un_reasons.insert(r.clone(), *n);
            }
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
        let pct = |part: u64, whole: u64| {
            if whole == 0 {
                0.0
            } else {
                (part as f64 * 1000.0 / whole as f64).round() / 10.0
            }
        };
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
                    inferred: s.inferred,
                    client_host: s.client_host.clone(),
                    period_s: s.period.period_s(),
                }
            })
            .collect();
        let session_list = |v: &[(Option<usize>, u64)]| {
            let mut sess: Vec<MinuteSession> = v
                .iter()
                .filter(|(_, r)| *r > 0)
                .map(|&(s, r)| MinuteSession { session: s.map(|i| new_id[i]), rows: r })
                .collect();
            sess.sort_by_key(|s| s.session.unwrap_or(usize::MAX));
            sess
        };
        let median_of = |mut counts: Vec<u64>| {
            counts.sort_unstable();
            if counts.is_empty() {
                0
            } else if counts.len() % 2 == 1 {
                counts[counts.len() / 2]
            } else {
                (counts[counts.len() / 2 - 1] + counts[counts.len() / 2]) / 2
            }
        };
        let median = median_of(self.minutes.values().map(|m| m.rows).collect());
        let threshold = (3 * median).max(100);
        let minutes = self
            .minutes
            .iter()
            .map(|(&m, a)| MinuteOut {
                minute: format_unix_micros(m * 60_000_000)[..16].to_owned() + "Z",
                rows: a.rows,
                truncates: a.truncates,
                burst: a.rows > threshold,
                sessions: session_list(&a.sessions),
            })
            .collect();
        let (bin_seconds, shown) = self.bins.shown();
        let bin_median = median_of(shown.iter().map(|b| b.1.rows).collect());
        let bin_threshold = (3 * bin_median).max(10);
        let bins = shown
            .iter()
            .map(|(t, a)| BinOut {
                start: format_unix_micros(*t)[..19].to_owned() + "Z",
                rows: a.rows,
                truncates: a.truncates,
                burst: a.rows > bin_threshold,
                sessions: session_list(&a.sessions),
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
                rows_inferred: v.rows_inferred,
                period_s: v.period.period_s(),
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
        let mut prefixes: Vec<PrefixOut> = self
            .prefixes
            .iter()
            .map(|(k, v)| PrefixOut { prefix: k.clone(), rows: *v, django: super::rollup::django_parts(k).is_some() })
            .collect();
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

        // Roll-ups, by rows then truncates; groups without either (filtered out) are left out.
        let by = |kind: u8| {
            let mut v: Vec<GroupOut> = self
                .groups
                .iter()
                .filter(|(k, g)| k.0 == kind && g.rows + g.truncates > 0)
                .map(|(k, g)| GroupOut {
                    name: k.1.clone().or(k.2.clone()).or(k.3.clone()),
                    rows: g.rows,
                    rows_inferred: g.rows_inferred,
                    truncates: g.truncates,
                    transactions: g.transactions,
                    sessions: g.sessions,
                    row_share_pct: pct(g.rows, self.rows),
                    period_s: g.period.period_s(),
                })
                .collect();
            v.sort_by(|a, b| (b.rows, b.truncates).cmp(&(a.rows, a.truncates)).then(a.name.cmp(&b.name)));
            v.truncate(TOP);
            v
        };
        let mut principals: Vec<PrincipalOut> = self
            .groups
            .iter()
            .filter(|(k, g)| k.0 == 3 && g.rows + g.truncates > 0)
            .map(|(k, g)| PrincipalOut {
                application_name: k.1.clone(),
                user: k.2.clone(),
                client_host: k.3.clone().unwrap_or_default(),
                rows: g.rows,
                rows_inferred: g.rows_inferred,
                truncates: g.truncates,
                transactions: g.transactions,
                sessions: g.sessions,
                row_share_pct: pct(g.rows, self.rows),
                period_s: g.period.period_s(),
                top_shape: g.shapes.iter().max_by(|a, b| a.1.cmp(&b.1).then(b.0.cmp(&a.0))).map(|s| s.0.clone()),
            })
            .collect();
        principals.sort_by(|a, b| {
            (b.rows, b.truncates)
                .cmp(&(a.rows, a.truncates))
                .then(a.application_name.cmp(&b.application_name))
                .then(a.user.cmp(&b.user))
                .then(a.client_host.cmp(&b.client_host))
        });
        principals.truncate(TOP);
        let mut reasons: Vec<ReasonOut> =
            self.un_reasons.iter().map(|(r, n)| ReasonOut { reason: r.clone(), rows: *n }).collect();
        reasons.sort_by(|a, b| b.rows.cmp(&a.rows).then(a.reason.cmp(&b.reason)));
        reasons.truncate(TOP);
        let unattributed = Unattributed {
            rows: self.un_rows,
            truncates: self.un_truncates,
            transactions: self.un_transactions,
            row_share_pct: pct(self.un_rows + self.un_truncates, self.rows + self.truncates),
            transaction_share_pct: pct(self.un_transactions, self.transactions),
            ambiguous_rows: self.un_ambiguous,
            reasons,
        };
        let headline = headline(self.rows, self.truncates, principals.first(), &unattributed);
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
            unattributed,
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
            headline: Some(headline),
            inferred_rows: self.inferred_rows,
            by_application: by(0),
            by_user: by(1),
            by_client_host: by(2),
            principals,
            bin_seconds: bin_seconds as u64,
            bins,
            median_rows_per_bin: bin_median,
            bin_burst_threshold: bin_threshold,
        }
    }
}

/// How a principal is named: `app (user@host)`, the statement shape when the application is unset.
fn principal_name(p: &PrincipalOut) -> String {
    let user = p.user.as_deref().unwrap_or("?");
    let whom = if p.client_host == "local socket" {
        format!("{user}, local socket")
    } else {
        format!("{user}@{}", p.client_host)
    };
    match (p.application_name.as_deref().filter(|a| !a.is_empty()), &p.top_shape) {
        (Some(app), _) => format!("{app} ({whom})"),
        (None, Some(shape)) => format!("\"{}\" ({whom})", one_line(shape, 80)),
        (None, None) => format!("a client without application_name ({whom})"),
    }
}

/// The report's first sentence: who deleted the most rows, their share, and how regularly.
fn headline(rows: u64, truncates: u64, top: Option<&PrincipalOut>, u: &Unattributed) -> Headline {
    use super::rollup::{fmt_period, fmt_share};
    let none = |text: String| Headline {
        text,
        application_name: None,
        user: None,
        client_host: None,
        shape: None,
        rows: 0,
        truncates: 0,
        row_share_pct: 0.0,
        rows_inferred: 0,
        basis: "none".into(),
        period_s: None,
    };
    if rows == 0 && truncates == 0 {
        return none("No committed deletes in this log.".into());
    }
    let Some(p) = top else {
        let mut text = if rows > 0 {
            format!("None of the {} deleted rows can be attributed to a session", thousands(rows))
        } else {
            format!("None of the {} TRUNCATEs can be attributed to a session", thousands(truncates))
        };
        if let Some(r) = u.reasons.first().filter(|r| !r.reason.is_empty()) {
            text.push_str(&format!(" ({})", r.reason));
        }
        if u.ambiguous_rows > 0 {
            text.push_str(&format!(
                "; {} rows had several candidate sessions, and none is named",
                thousands(u.ambiguous_rows)
            ));
        }
        text.push('.');
        return none(text);
    };
    let who = principal_name(p);
    let share = if rows > 0 { (p.rows as f64 * 1000.0 / rows as f64).round() / 10.0 } else { 0.0 };
    let mut text = if rows > 0 && p.rows > 0 {
        format!("{who} deleted {} of the rows", fmt_share(share))
    } else {
        format!("{who} ran {} of the {} TRUNCATEs", thousands(p.truncates), thousands(truncates))
    };
    let basis = if p.rows_inferred == 0 {
        "evidence"
    } else if p.rows_inferred >= p.rows {
        text.push_str(" (inferred: no evidence session)");
        "inferred"
    } else {
        let part = (p.rows_inferred as f64 * 1000.0 / p.rows as f64).round() / 10.0;
        text.push_str(&format!(" ({} of them inferred)", fmt_share(part)));
        "mixed"
    };
    if let Some(s) = p.period_s {
        text.push_str(&format!(", every ~{}", fmt_period(s)));
    }
    if u.rows > 0 && rows > 0 {
        text.push_str(&format!("; {} of the rows are not attributed", fmt_share(u.row_share_pct)));
    }
    Headline {
        text,
        application_name: p.application_name.clone(),
        user: p.user.clone(),
        client_host: Some(p.client_host.clone()),
        shape: p.top_shape.clone(),
        rows: p.rows,
        truncates: p.truncates,
        row_share_pct: share,
        rows_inferred: p.rows_inferred,
        basis: basis.into(),
        period_s: p.period_s,
    }
}

impl Consumer for Aggregator {
    fn row(&mut self, kind: Kind, rec: &Record, _line: &[u8]) -> io::Result<()> {
        if kind == Kind::RelationRenamed {
            self.filter.follow_rename(rec);
            return Ok(());
        }
        if !self.filter.kind_allowed(kind) {
            return Ok(());
        }
        // Evidence first; without it, a single-candidate inference (marked); several: nobody.
        let evidence = rec.session.value().cloned();
        let inferred = if evidence.is_none() { self.inferred_of(rec.inferred) } else { Inferred::None };
        let (who, statement, is_inferred) = match (&evidence, &inferred) {
            (Some(s), _) => (Some(Rc::clone(s)), None, false),
            (None, Inferred::One(s, st)) => (Some(Rc::clone(s)), st.clone(), true),
            _ => (None, None, false),
        };
        if !self.filter.row_matches_as(rec, who.as_deref()) {
            return Ok(());
        }
        let session = who.as_ref().map(|s| self.intern_session(s, is_inferred));
        // A row of format 3 names its statement record by number instead of repeating the text.
        let looked_up = evidence
            .as_ref()
            .and_then(|s| s.statement)
            .and_then(|n| self.statements.iter().find(|(m, _)| *m == n))
            .and_then(|(_, q)| q.as_deref());
        let query = statement.as_deref().or(who.as_ref().and_then(|s| s.query.as_deref())).or(looked_up);
        let (rows, truncates) = if kind == Kind::Delete { (1, 0) } else { (0, 1) };
        let p = &mut self.pending;
        let e = p.entry(session, query);
        e.rows += rows;
        e.truncates += truncates;
        if rec.inferred.is_some() {
            p.rows_with_inferred += 1;
        }
        if session.is_none() {
            if matches!(inferred, Inferred::Several) {
                p.ambiguous += rows + truncates;
            }
            bump(&mut p.reasons, rec.unattributed_reason.as_deref().unwrap_or(""), rows + truncates);
        }
        if let Some(key) = rec.key.value() {
            let mut v = std::mem::take(&mut p.prefixes);
            bump(&mut v, &key_prefix(key).0, 1);
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
        // Rows without a session and without an inference of their own take the commit's single
        // candidate, if it has one (its several candidates mark them ambiguous).
        if rec.session.value().is_none() && self.pending.rows_with_inferred == 0 && rec.inferred.is_some() {
            let unattributed: u64 =
                self.pending.entries.iter().filter(|e| e.session.is_none()).map(|e| e.rows + e.truncates).sum();
            if unattributed > 0 {
                match self.inferred_of(rec.inferred) {
                    Inferred::One(s, st) => {
                        let si = self.intern_session(&s, true);
                        let query = st.as_deref().or(s.query.as_deref()).map(str::to_owned);
                        for e in self.pending.entries.iter_mut().filter(|e| e.session.is_none()) {
                            e.session = Some(si);
                            e.query = query.clone();
                        }
                        self.pending.reasons.clear();
                    }
                    Inferred::Several => self.pending.ambiguous += unattributed,
                    Inferred::None => {}
                }
            }
        }
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
    if let Some(h) = &r.headline {
        writeln!(w, "\n{}\n", clean(&h.text))?;
    }
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
    if u.ambiguous_rows > 0 {
        writeln!(w, "  of which {} rows had several candidate sessions (none is named)", thousands(u.ambiguous_rows))?;
    }
    for reason in u.reasons.iter().filter(|x| !x.reason.is_empty()).take(5) {
        writeln!(w, "  {:>9} rows  {}", thousands(reason.rows), clean(&one_line(&reason.reason, 120)))?;
    }
    if r.inferred_rows > 0 {
        writeln!(
            w,
            "Inferred, not evidence: {} rows attributed to the one session that could have run them (marked \"inferred\")",
            thousands(r.inferred_rows)
        )?;
    }
    let period = |p: Option<f64>| p.map(|p| format!("  every ~{}", super::rollup::fmt_period(p))).unwrap_or_default();
    let inferred = |n: u64| if n > 0 { format!("  ({} inferred)", thousands(n)) } else { String::new() };
    writeln!(w, "\nWHO — application (user@client host), across sessions")?;
    for p in r.principals.iter().take(20) {
        writeln!(
            w,
            "  {:>9} rows {:>6} {:>7} txns {:>5} sessions  {}{}{}",
            thousands(p.rows),
            format!("{:.1}%", p.row_share_pct),
            thousands(p.transactions),
            thousands(p.sessions),
            clean(&principal_name(p)),
            period(p.period_s),
            inferred(p.rows_inferred)
        )?;
    }
    if r.principals.is_empty() {
        writeln!(w, "  (no attributed rows)")?;
    }
    for (title, list) in [("application", &r.by_application), ("user", &r.by_user), ("client host", &r.by_client_host)]
    {
        if list.len() < 2 {
            continue;
        }
        writeln!(w, "  by {title}:")?;
        for g in list.iter().take(10) {
            writeln!(
                w,
                "  {:>9} rows {:>6} {:>7} txns {:>5} sessions  {}{}{}",
                thousands(g.rows),
                format!("{:.1}%", g.row_share_pct),
                thousands(g.transactions),
                thousands(g.sessions),
                or_dash(&g.name),
                period(g.period_s),
                inferred(g.rows_inferred)
            )?;
        }
    }
    writeln!(w, "\nWHO — per session (pid + backend start)")?;
    const SHOWN_SESSIONS: usize = 20;
    for s in r.sessions.iter().take(SHOWN_SESSIONS) {
        writeln!(
            w,
            "  #{} pid {} started {}  user {}  app {}  client {}  ({}){}",
            s.id,
            s.pid,
            or_dash(&s.backend_start),
            or_dash(&s.user),
            or_dash(&s.application_name),
            clean(&s.client),
            or_dash(&s.attributed_by),
            if s.inferred { "  INFERRED, not evidence" } else { "" }
        )?;
        writeln!(
            w,
            "      {} rows, {} truncates in {} transactions, {} … {}; {} distinct statement{}{}",
            thousands(s.rows),
            thousands(s.truncates),
            thousands(s.transactions),
            clean(&s.first_time),
            clean(&s.last_time),
            s.distinct_statements,
            if s.distinct_statements == 1 { "" } else { "s" },
            period(s.period_s)
        )?;
        for st in s.statements.iter().take(5) {
            writeln!(w, "      {:>9} rows  {}", thousands(st.rows), clean(&one_line(&st.statement, 120)))?;
        }
        let more = s.statements.len().saturating_sub(5) as u64 + s.statements_other.statements;
        if more > 0 {
            writeln!(w, "      … and {more} more statements")?;
        }
    }
    if r.sessions.len() > SHOWN_SESSIONS {
        writeln!(
            w,
            "  … and {} more sessions (--format json or --html has them all)",
            r.sessions.len() - SHOWN_SESSIONS
        )?;
    }
    if r.sessions.is_empty() {
        writeln!(w, "  (no attributed rows)")?;
    }
    let width = super::rollup::fmt_width(r.bin_seconds as i64);
    writeln!(
        w,
        "\nWHEN — rows per {width} (UTC; median {}, burst above {})",
        thousands(r.median_rows_per_bin),
        thousands(r.bin_burst_threshold)
    )?;
    let max = r.bins.iter().map(|m| m.rows).max().unwrap_or(0).max(1);
    let show_all = r.bins.len() <= 60;
    let mut hidden = 0;
    for m in &r.bins {
        if !show_all && !m.burst {
            hidden += 1;
            continue;
        }
        let bar = "#".repeat(((m.rows * 40).div_ceil(max)) as usize);
        let label = m.start.replace('T', " ");
        let label = label.trim_end_matches('Z');
        let label = if r.bin_seconds.is_multiple_of(60) { label.strip_suffix(":00").unwrap_or(label) } else { label };
        writeln!(w, "  {}  {:>9}  {bar}{}", clean(label), thousands(m.rows), if m.burst { "  <- burst" } else { "" })?;
    }
    if hidden > 0 {
        writeln!(w, "  ({hidden} quieter bins not shown; --format json or --html has them all)")?;
    }
    writeln!(w, "\nWHAT — statement shapes")?;
    for s in &r.statements {
        writeln!(
            w,
            "  {:>9} rows {:>7} txns  {}{}{}",
            thousands(s.rows),
            thousands(s.transactions),
            clean(&one_line(&s.shape, 140)),
            period(s.period_s),
            inferred(s.rows_inferred)
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
        let p = |s: &str| key_prefix(&k(s)).0.into_owned();
        assert_eq!(p("report:1"), "report");
        assert_eq!(p("user_9:x"), "user");
        assert_eq!(p("plain"), "plain");
        assert_eq!(key_prefix(&Key(vec![])).0, "");
        // Django's `KEY_PREFIX:VERSION:key`: grouped by the key's own leading words.
        assert_eq!(key_prefix(&k(":1:user_session_abc123")), (Cow::Borrowed(":1:user_session"), true));
        assert_eq!(p("shop:2:views.decorators.cache.cache_page.9f8e"), "shop:2:views.decorators.cache.cache_page");
        assert_eq!(p(":1:5f3a9c0d1e"), ":1:");
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
        assert_eq!(r.key_prefixes[0], PrefixOut { prefix: "report".into(), rows: 2, django: false });
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

    /// Issue 12: the answer first. A job that connects anew each second (a new pid every time) is one
    /// principal, named with its share and period; time bins are seconds for a one-minute capture.
    #[test]
    fn headline_names_the_main_deleter_and_its_period() {
        let mut lines = vec![CS.to_owned()];
        let mut lsn = 0;
        for i in 0..10u64 {
            let s = session(
                100 + i as i64,
                "ww_bgjob",
                "ww-forgotten-job",
                &format!("DELETE FROM cache WHERE cache_key IN ('k{i}a', 'k{i}b')"),
            );
            let t = format!("2026-11-26T15:01:{:02}.{:06}Z", 10 + i, (i % 3) * 2000);
            lsn += 1;
            for k in 0..7 {
                lines.push(del(i + 1, lsn, &t, &format!(":1:user_session_{i}x{k}"), &s));
            }
            lines.push(commit(i + 1, lsn, &t, 7, &s));
        }
        let a = session(7, "alice", "psql", "DELETE FROM cache WHERE cache_key LIKE 'report%'");
        for (n, t) in [(20, "2026-11-26T15:01:12.500000Z"), (10, "2026-11-26T15:01:40.000000Z")] {
            lsn += 1;
            for k in 0..n {
                lines.push(del(50 + lsn, lsn, t, &format!("report:{k}"), &a));
            }
            lines.push(commit(50 + lsn, lsn, t, n, &a));
        }
        let r = report_of(&lines);
        let h = r.headline.clone().unwrap();
        assert_eq!(h.text, "ww-forgotten-job (ww_bgjob@10.0.0.5) deleted 70 % of the rows, every ~1.0 s", "{h:?}");
        assert_eq!((h.basis.as_str(), h.rows, h.row_share_pct), ("evidence", 70, 70.0));
        assert_eq!(r.principals.len(), 2);
        assert_eq!((r.principals[0].sessions, r.principals[0].transactions), (10, 10));
        assert_eq!(r.principals[1].period_s, None, "two transactions: no period");
        assert_eq!(r.by_application[0].name.as_deref(), Some("ww-forgotten-job"));
        assert_eq!(r.by_user[1].name.as_deref(), Some("alice"));
        assert_eq!((r.by_client_host.len(), r.by_client_host[0].rows), (1, 100));
        assert_eq!(r.statements[0].shape, "DELETE FROM cache WHERE cache_key IN (...)");
        assert_eq!(r.statements[0].period_s, Some(1.0));
        assert_eq!(r.key_prefixes[0], PrefixOut { prefix: ":1:user_session".into(), rows: 70, django: true });
        assert_eq!(r.bin_seconds, 1);
        assert_eq!(r.bins.first().unwrap().start, "2026-11-26T15:01:10Z");
        assert_eq!(r.bins.iter().map(|b| b.rows).sum::<u64>(), 100);
        let mut text = Vec::new();
        render_text(&r, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        let first: Vec<&str> = text.lines().take(3).collect();
        assert_eq!(first[2], h.text, "{text}");
        assert!(text.contains("WHEN — rows per second"), "{text}");
        assert!(text.contains("  2026-11-26 15:01:10          7  "), "{text}");
    }

    /// Without an application_name the headline names the statement shape; truncates only: counted.
    #[test]
    fn headline_falls_back_to_the_statement_shape() {
        let s = session(9, "bob", "", "DELETE FROM t WHERE id = 42");
        let t = "2026-11-26T15:01:00.000000Z";
        let r = report_of(&[CS.to_owned(), del(1, 1, t, "a", &s), commit(1, 1, t, 1, &s)]);
        assert_eq!(r.headline.unwrap().text, "\"DELETE FROM t WHERE id = ?\" (bob@10.0.0.5) deleted 100 % of the rows");
        let tr = format!(
            r#"{{"type":"truncate","tables":["public.t"],"xid":2,"lsn":"0/18","commit_lsn":"0/20","commit_time":"{t}","origin":null,"cascade":false,"restart_identity":false,"session":{}}}"#,
            session(10, "carol", "psql", "TRUNCATE t")
        );
        let c = commit(2, 2, t, 0, &session(10, "carol", "psql", "TRUNCATE t"))
            .replace("\"truncates\":0", "\"truncates\":1");
        let r = report_of(&[CS.to_owned(), tr, c]);
        assert_eq!(r.headline.unwrap().text, "psql (carol@10.0.0.5) ran 1 of the 1 TRUNCATEs");
        let r = report_of(&[CS.to_owned()]);
        assert_eq!(r.headline.unwrap().text, "No committed deletes in this log.");
    }

    /// The shapes of `inferred` (see the README): one candidate, several, or none.
    fn one(session: &str, statement: &str) -> String {
        format!(
            r#"{{"candidates":1,"session":{session},"statement":{},"statement_start":"2026-11-26T15:00:59.000000Z","statement_end":null}}"#,
            serde_json::to_string(statement).unwrap()
        )
    }

    fn several(a: &str, b: &str) -> String {
        format!(
            r#"{{"candidates":2,"possible":[{{"session":{a},"statement":"DELETE 1","statement_start":"2026-11-26T15:00:59.000000Z","statement_end":null}},{{"session":{b},"statement":"DELETE 2","statement_start":"2026-11-26T15:00:59.000000Z","statement_end":null}}]}}"#
        )
    }

    /// A line without evidence: `session` null, and the capture's reason and inference.
    fn with_inferred(line: String, reason: &str, inferred: Option<&str>) -> String {
        let mut l = line.strip_suffix('}').unwrap().to_owned();
        l.push_str(&format!(r#","unattributed_reason":"{reason}""#));
        if let Some(i) = inferred {
            l.push_str(&format!(r#","inferred":{i}"#));
        }
        l.push('}');
        l
    }

    /// Evidence first; a single-candidate inference is used but kept apart; several candidates are
    /// never an answer.
    #[test]
    fn inferred_sessions_are_used_but_kept_apart() {
        let job = session(41, "ww_bgjob", "ww-forgotten-job", "DELETE FROM cache WHERE expires < now()");
        let other = session(42, "bob", "cron", "DELETE 2");
        let t = |s: u32| format!("2026-11-26T15:02:{s:02}.000000Z");
        let inf = one(&job, "DELETE FROM cache WHERE expires < now() - interval '1 day'");
        let mut lines = vec![CS.to_owned()];
        // Rows with their own single-candidate inference.
        for k in 0..6 {
            lines.push(with_inferred(del(1, 1, &t(0), &format!("a{k}"), "null"), "no sample", Some(&inf)));
        }
        lines.push(with_inferred(commit(1, 1, &t(0), 6, "null"), "no sample", Some(&inf)));
        // Rows with none; the commit has the inference.
        for k in 0..2 {
            lines.push(with_inferred(del(2, 2, &t(1), &format!("b{k}"), "null"), "no sample", None));
        }
        lines.push(with_inferred(commit(2, 2, &t(1), 2, "null"), "no sample", Some(&inf)));
        // Several candidates: not attributed, counted as ambiguous.
        let amb = several(&job, &other);
        for k in 0..3 {
            lines.push(with_inferred(del(3, 3, &t(2), &format!("c{k}"), "null"), "two sessions open", Some(&amb)));
        }
        lines.push(with_inferred(commit(3, 3, &t(2), 3, "null"), "two sessions open", Some(&amb)));
        // No inference at all.
        lines.push(with_inferred(del(4, 4, &t(3), "d", "null"), "transaction too short to sample", None));
        lines.push(with_inferred(commit(4, 4, &t(3), 1, "null"), "transaction too short to sample", None));
        // Evidence for the same backend elsewhere: its own session, not merged with the inferred one.
        lines.push(del(5, 5, &t(4), "e", &job));
        lines.push(commit(5, 5, &t(4), 1, &job));
        let r = report_of(&lines);
        assert_eq!((r.rows, r.inferred_rows), (13, 8));
        assert_eq!(r.sessions.len(), 2);
        let s = &r.sessions[0];
        assert!(s.inferred && s.pid == 41 && s.rows == 8, "{s:?}");
        assert_eq!(s.statements[0].statement, "DELETE FROM cache WHERE expires < now() - interval '1 day'");
        assert!(!r.sessions[1].inferred && r.sessions[1].rows == 1);
        assert_eq!((r.unattributed.rows, r.unattributed.ambiguous_rows), (4, 3));
        assert_eq!(
            r.unattributed.reasons,
            vec![
                ReasonOut { reason: "two sessions open".into(), rows: 3 },
                ReasonOut { reason: "transaction too short to sample".into(), rows: 1 }
            ]
        );
        // One principal across the evidence and the inferred session.
        assert_eq!((r.principals.len(), r.principals[0].rows, r.principals[0].rows_inferred), (1, 9, 8));
        let h = r.headline.clone().unwrap();
        assert_eq!(h.basis, "mixed");
        assert_eq!(
            h.text,
            "ww-forgotten-job (ww_bgjob@10.0.0.5) deleted 69 % of the rows (89 % of them inferred); 31 % of the rows are not attributed"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["sessions"][0]["inferred"], true);
        assert_eq!(json["sessions"][1]["inferred"], false);
        let mut text = Vec::new();
        render_text(&r, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("pid 41 started 2026-11-26T14:00:00.000000Z  user ww_bgjob  app ww-forgotten-job  client 10.0.0.5:541  (trigger)  INFERRED, not evidence"), "{text}");
        assert!(text.contains("of which 3 rows had several candidate sessions"), "{text}");

        // Only inferred: the headline says so; only ambiguous: nobody is named.
        let r = report_of(&lines[..8]);
        assert_eq!(
            r.headline.unwrap().text,
            "ww-forgotten-job (ww_bgjob@10.0.0.5) deleted 100 % of the rows (inferred: no evidence session)"
        );
        let mut amb_only = vec![CS.to_owned()];
        amb_only.extend_from_slice(&lines[11..15]);
        let r = report_of(&amb_only);
        assert!(r.sessions.is_empty());
        assert_eq!(
            r.headline.unwrap().text,
            "None of the 3 deleted rows can be attributed to a session (two sessions open); 3 rows had several candidate sessions, and none is named."
        );
    }

    /// Issue 12: `--app`/`--user` filters in `report` match the session a row is attributed to, evidence
    /// or inferred, with globs.
    #[test]
    fn report_filters_match_the_attributed_session_with_globs() {
        let job = session(41, "ww_bgjob", "ww-forgotten-job", "DELETE 1");
        let t = "2026-11-26T15:02:00.000000Z";
        let lines = [
            CS.to_owned(),
            with_inferred(del(1, 1, t, "a", "null"), "no sample", Some(&one(&job, "DELETE 1"))),
            with_inferred(commit(1, 1, t, 1, "null"), "no sample", None),
            del(2, 2, t, "b", &session(8, "alice", "psql", "DELETE 3")),
            commit(2, 2, t, 1, &session(8, "alice", "psql", "DELETE 3")),
        ];
        let args = crate::cli::FilterArgs { app: vec!["ww-*".into()], ..Default::default() };
        let mut agg = Aggregator::new(Filter::from_args(&args).unwrap());
        let mut f = Feeder::new("t", true);
        for (i, l) in lines.iter().enumerate() {
            f.line(i as u64 + 1, l.as_bytes(), &mut agg).unwrap();
        }
        f.end(lines.len() as u64, 0, &mut agg).unwrap();
        let r = agg.report(&["t".into()], 5, 0);
        assert_eq!((r.rows, r.sessions.len(), r.sessions[0].pid), (1, 1, 41));
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
        let small = super::super::log::tests::SMALL_SESSION;
        let stmt = super::super::log::tests::statement_record(t, &full);
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
