//! The report's aggregates, summed as committed transactions are read; `merge` folds a transaction in
//! at its commit, `finish` turns the aggregates into the [`Report`].

mod finish;
mod merge;

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::rc::Rc;

use serde::Deserialize;

use super::shape::{key_prefix, normalize_statement};
use super::CAP_TRACKED;
use crate::read::filter::Filter;
use crate::read::log::{Kind, Record, SessionRef};
use crate::read::rollup::{BinAgg, Bins, Period};
use crate::read::summary::*;
use crate::read::Consumer;

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
