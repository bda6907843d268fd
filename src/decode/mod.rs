//! Transaction assembly: turns the pgoutput message sequence into forensic log records.
//!
//! Pure: messages in, bytes of JSON lines out. The capture loop feeds every decoded message with the
//! LSN from its XLogData header (for a change, the change's own LSN) and forwards the bytes to the
//! writer. Rows are written as they arrive — pgoutput sends a non-streamed transaction only after it
//! committed, and Begin already carries its commit LSN and time — so memory does not grow with the
//! size of a transaction. The commit record closes the transaction; a transaction cut short by a lost
//! connection is rolled back in the file by the writer (see `sink::writer`).
//!
//! Exactly-once: `resume_after` is the `end_lsn` of the last transaction the log already holds. The
//! server may send such transactions again after a restart (the slot's position is persisted only at
//! checkpoints); a transaction whose commit record starts below that LSN is recognised at Begin and
//! skipped whole.
pub mod pipeline;
pub mod relations;

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::attribution::infer::Inference;
use crate::attribution::trigger::{widen_xid, Close, ErrorReport, Evidence, Open, PREFIX as TRIGGER_PREFIX};
use crate::attribution::{Attributor, Session, SessionJson};
use crate::protocol::pgoutput::{Column, Message, OldKind, OldTuple, ReplicaIdentity, Value};
use crate::protocol::Lsn;
use crate::sink::record;
use relations::{QName, RelationCache, WatchList};

/// Commit position written into the synthesized Begin of a rolled-back streamed or prepared
/// transaction replayed for `--include-aborted` (see `decode::pipeline`). No real commit has it. The
/// Assembler undoes what such a replay taught the relation cache, as the server does for an aborted
/// streamed transaction (its Relation messages count as sent only once it commits), and writes no
/// `relation_renamed` for it.
pub const ABORT_SENTINEL_LSN: Lsn = Lsn(u64::MAX);

/// What a message meant for the transaction stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Continue,
    /// A transaction ended. `wrote`: it had watched rows and its commit record was written.
    Committed {
        end_lsn: Lsn,
        wrote: bool,
        deletes: u64,
        truncates: u64,
        commit_time: i64,
    },
}

#[derive(Debug, thiserror::Error)]
#[error("at LSN {lsn}, pgoutput {message} message: {reason}")]
pub struct AssembleError {
    pub lsn: Lsn,
    pub message: &'static str,
    pub reason: String,
}

/// Error reports of the trigger kept for the transactions they belong to (they arrive before them).
const MAX_ERROR_REPORTS: usize = 4096;

/// One statement's bracket on its table: opened by a verified open, ended by its close.
struct Bracket {
    open_lsn: Lsn,
    open: Box<Open>,
    /// `Err(reason)`: rows inside are not attributed (the closing trigger would not fire).
    valid: Result<(), &'static str>,
    /// A nested bracket of the same table ended on top of this one: its close is unsigned, so rows after
    /// it are not attributed to this statement (see `attribution::trigger`).
    resumed: bool,
    /// The statement record's number and the row-level session, once written.
    statement: Option<(u32, Bytes)>,
    session: Session,
}

struct Txn {
    xid: u32,
    /// The top-level xid with its epoch (known when trigger attribution is on).
    full_xid: Option<u64>,
    final_lsn: Lsn,
    commit_time: i64,
    /// Already in the log from an earlier run: decode, but write nothing.
    skip: bool,
    origin: Option<String>,
    /// `,"commit_lsn":…,"commit_time":…,"origin":…` shared by every row of the transaction.
    common: BytesMut,
    deletes: u64,
    truncates: u64,
    /// The activity source's session for this xid, if a sample saw it, and its statement once written.
    activity: Option<Arc<SessionJson>>,
    activity_statement: Option<(u32, Bytes)>,
    /// Open brackets per watched table (keyed by `RelationCache::table_key`), innermost last.
    brackets: HashMap<String, Vec<Bracket>>,
    /// Statement records written, by their session JSON (one record per distinct statement).
    statements: HashMap<Bytes, u32>,
    /// Contents of trigger messages seen (a second copy is a replay).
    seen: HashSet<Bytes>,
    last_open_id: Option<i64>,
    pid: Option<i32>,
    /// Tables (keys) with trigger evidence or rows in this transaction, and those whose Relation message
    /// was sent again after that (the table's definition or triggers changed inside the transaction).
    touched: HashSet<String>,
    altered: HashSet<String>,
    /// The trigger's error reports for this transaction: (LSN, table key).
    errors: Vec<(Lsn, String)>,
    /// Watched tables whose reported name this transaction changed, with the name before: put back if
    /// the transaction is abandoned (its records never reach the log).
    renames: Vec<(usize, QName)>,
    /// An aborted attempt's replay: the relation cache entries it replaced, put back at its end.
    saved_relations: Vec<(u32, relations::Saved)>,
    /// Row-level session written in the commit record: the first one any record carried.
    first_session: Option<Bytes>,
    attributed_trigger: u64,
    attributed_activity: u64,
    unattributed: u64,
    missing: u64,
    conflict: bool,
    rejected: Vec<String>,
    problems: Vec<String>,
    /// Whether to infer the session at the commit (no sampled session for the xid; see
    /// `attribution::infer`).
    infer: bool,
    /// Text of the first deleted rows' keys (single-column keys), which inference matches against the
    /// candidates' statements.
    keys: Vec<String>,
}

impl Txn {
    fn reject(&mut self, lsn: Lsn, reason: String) {
        tracing::warn!(
            "at LSN {lsn}: rejected a walwitness attribution message in xid {}: {}",
            self.xid,
            crate::term::clean(&reason)
        );
        self.rejected.push(format!("{lsn}: {reason}"));
    }

    fn problem(&mut self, lsn: Lsn, what: String) {
        tracing::warn!("at LSN {lsn}, xid {}: {}", self.xid, crate::term::clean(&what));
        if self.problems.len() < 100 {
            self.problems.push(format!("{lsn}: {what}"));
        }
    }

    fn new(xid: u32, final_lsn: Lsn, commit_time: i64) -> Txn {
        Txn {
            xid,
            full_xid: None,
            final_lsn,
            commit_time,
            skip: false,
            origin: None,
            common: BytesMut::new(),
            deletes: 0,
            truncates: 0,
            activity: None,
            activity_statement: None,
            brackets: HashMap::new(),
            statements: HashMap::new(),
            seen: HashSet::new(),
            last_open_id: None,
            pid: None,
            touched: HashSet::new(),
            altered: HashSet::new(),
            errors: Vec::new(),
            renames: Vec::new(),
            saved_relations: Vec::new(),
            first_session: None,
            attributed_trigger: 0,
            attributed_activity: 0,
            unattributed: 0,
            missing: 0,
            conflict: false,
            rejected: Vec::new(),
            problems: Vec::new(),
            infer: false,
            keys: Vec::new(),
        }
    }

    fn rebuild_common(&mut self) {
        let mut c = BytesMut::with_capacity(96);
        record::push_commit_fields(&mut c, self.final_lsn, self.commit_time, self.origin.as_deref());
        self.common = c;
    }

    /// Writes a `statement` record for `session` (unless an identical one was written in this
    /// transaction) and returns its number and the row-level session.
    fn statement(&mut self, out: &mut BytesMut, lsn: Lsn, session: &Session) -> (u32, Bytes) {
        let full = Bytes::from(serde_json::to_vec(session).unwrap_or_else(|_| b"null".to_vec()));
        let n = match self.statements.get(&full) {
            Some(&n) => n,
            None => {
                let n = self.statements.len() as u32 + 1;
                record::write_statement(out, self.xid, n, lsn, &self.common, &full);
                self.statements.insert(full, n);
                n
            }
        };
        (n, session.small_json(n))
    }

    /// The trigger's evidence for a pending row: the first of the record's tables whose bracket covers
    /// it (`Ok(table key)`), or why the first table has none.
    fn evidence(&mut self, rels: &RelationCache, key: &PendingKey, lsn: Lsn) -> Result<String, &'static str> {
        let tables: Vec<String> = match key {
            PendingKey::Rel(relid) => {
                rels.get(*relid).and_then(|r| r.watched).map(|i| vec![rels.table_key(i)]).unwrap_or_default()
            }
            PendingKey::Tables(tables) => tables.iter().map(|&i| rels.table_key(i)).collect(),
        };
        let mut verdict = Err("no_trigger_fired");
        for (i, key) in tables.into_iter().enumerate() {
            if !self.touched.contains(&key) {
                self.touched.insert(key.clone());
            }
            match self.covering(&key, lsn) {
                Ok(()) => return Ok(key),
                Err(r) if i == 0 => verdict = Err(r),
                Err(_) => {}
            }
        }
        verdict
    }

    /// The small session of a pending row (the covering bracket's, else the activity source's), after
    /// its statement record if that is not written yet; `None`: not attributed.
    fn choose_session(&mut self, verdict: &Result<String, &str>, p: &Pending, out: &mut BytesMut) -> Option<Bytes> {
        // A statement record written now goes before the row, which is the last thing in `out`: the row
        // is set aside meanwhile (only then, so most rows are never copied).
        let mut row: Option<BytesMut> = None;
        let chosen = match verdict {
            Ok(name) => {
                let b = self.brackets.get_mut(name).and_then(|v| v.last_mut()).expect("covering bracket");
                let (_, small) = match &b.statement {
                    Some(s) => s.clone(),
                    None => {
                        let session = b.session.clone();
                        let open_lsn = b.open_lsn;
                        row = Some(out.split_off(p.start));
                        let s = self.statement(out, open_lsn, &session);
                        let b = self.brackets.get_mut(name).and_then(|v| v.last_mut()).expect("covering bracket");
                        b.statement = Some(s.clone());
                        s
                    }
                };
                self.attributed_trigger += 1;
                Some(small)
            }
            Err(_) => match self.activity.clone() {
                Some(a) => {
                    self.attributed_activity += 1;
                    let (_, small) = match &self.activity_statement {
                        Some(s) => s.clone(),
                        None => {
                            let session: Session = serde_json::from_slice(&a.json).unwrap_or_default();
                            row = Some(out.split_off(p.start));
                            let s = self.statement(out, p.lsn, &session);
                            self.activity_statement = Some(s.clone());
                            s
                        }
                    };
                    Some(small)
                }
                None => {
                    self.unattributed += 1;
                    None
                }
            },
        };
        if let Some(r) = row {
            out.extend_from_slice(&r);
        }
        chosen
    }

    /// Why a verified open cannot be this transaction's (a replayed or misplaced copy), if so.
    fn open_rejection(&mut self, o: &Open, content: &[u8]) -> Option<String> {
        let fresh = self.seen.insert(Bytes::copy_from_slice(content));
        if !fresh {
            Some("a copy of an earlier message of this transaction (replayed)".to_owned())
        } else if self.full_xid.is_some_and(|x| x != o.xid) || o.xid % (1 << 32) != u64::from(self.xid) {
            Some(format!("signed for xid {} but found in xid {}", o.xid, self.full_xid.unwrap_or(u64::from(self.xid))))
        } else if self.pid.is_some_and(|p| p != o.pid) {
            Some(format!("signed by pid {} in a transaction of pid {}", o.pid, self.pid.unwrap_or_default()))
        } else if self.last_open_id.is_some_and(|l| o.id <= l) {
            Some("older than an earlier statement of this transaction (replayed)".to_owned())
        } else {
            None
        }
    }

    /// A statement's bracket opens on the table `key`.
    fn open_bracket(&mut self, lsn: Lsn, key: String, o: Box<Open>) {
        let table = o.table();
        self.pid = Some(o.pid);
        self.last_open_id = Some(o.id);
        self.touched.insert(key.clone());
        let mut session = o.session();
        if let Some(a) = &self.activity {
            if !SessionJson::new(&session).same_backend(a) {
                session.conflict = serde_json::from_slice::<Session>(&a.json).ok().map(Box::new);
                self.conflict = true;
            }
        }
        let valid = if o.armed { Ok(()) } else { Err("closing_trigger_disabled") };
        if !o.armed {
            self.problem(
                lsn,
                format!(
                    "statement on {table} (pid {}, application {:?}) ran without its closing trigger (disabled, dropped or replaced): its rows are not attributed",
                    o.pid,
                    o.app.as_deref().unwrap_or("")
                ),
            );
        }
        self.brackets.entry(key).or_default().push(Bracket {
            open_lsn: lsn,
            open: o,
            valid,
            resumed: false,
            statement: None,
            session,
        });
    }

    /// Why the trigger's evidence does not cover a row of `table` at `lsn`, when no bracket does.
    fn missing_reason(&self, table: &str, lsn: Lsn) -> &'static str {
        if self.errors.iter().any(|(e, t)| *e <= lsn && t == table) {
            "trigger_error"
        } else if self.altered.contains(table) {
            "table_altered"
        } else if !self.rejected.is_empty() {
            "rejected_evidence"
        } else if self.origin.is_some() {
            "replicated"
        } else {
            "no_trigger_fired"
        }
    }

    /// The bracket evidence for a row of `table` at `lsn`: `Ok(bracket)` when a valid one covers it,
    /// `Err(reason)` otherwise.
    fn covering(&self, table: &str, lsn: Lsn) -> Result<(), &'static str> {
        let Some(b) = self.brackets.get(table).and_then(|v| v.last()) else {
            return Err(self.missing_reason(table, lsn));
        };
        b.valid?;
        if self.errors.iter().any(|(e, t)| *e > b.open_lsn && *e <= lsn && t == table) {
            return Err("trigger_error");
        }
        if b.resumed {
            return Err("after_nested_statement");
        }
        if lsn < b.open_lsn {
            return Err("before_its_statement");
        }
        Ok(())
    }
}

/// Keys of a transaction kept for inference (see `Txn::keys`).
const MAX_KEYS: usize = 16;

/// A row record written up to (not including) its `,"session":` member, waiting for the next message
/// (see `handle`).
struct Pending {
    lsn: Lsn,
    /// Offset of the record's first byte in the output buffer.
    start: usize,
    key: PendingKey,
}

enum PendingKey {
    Rel(u32),
    /// The watched tables of a truncate (indexes into the watch list).
    Tables(Vec<usize>),
}

pub struct Assembler {
    pending: Option<Pending>,
    relations: RelationCache,
    txn: Option<Txn>,
    resume_after: Lsn,
    attributor: Attributor,
    /// The trigger's error reports not yet matched with their transaction: (LSN, full xid, table).
    error_reports: VecDeque<(Lsn, u64, String)>,
    xid_reference: u64,
    /// Messages with our prefix that failed verification, over the whole capture.
    pub rejected_messages: u64,
    /// Transactions written, and those of them with no session and no single inferred one.
    pub written_transactions: u64,
    pub unnamed_transactions: u64,
    /// The inference made at the last commit, with its xid (for raw captures; see `take_inference`).
    last_inference: Option<(u32, Inference)>,
}

impl Assembler {
    pub fn new(watch: WatchList, resume_after: Lsn, attributor: Attributor) -> Self {
        let xid_reference = attributor.verifier.as_ref().map_or(0, |v| v.xid_reference);
        Assembler {
            pending: None,
            relations: RelationCache::new(watch),
            txn: None,
            resume_after,
            attributor,
            error_reports: VecDeque::new(),
            xid_reference,
            rejected_messages: 0,
            written_transactions: 0,
            unnamed_transactions: 0,
            last_inference: None,
        }
    }

    /// The activity source's map, when it infers (a live capture).
    pub fn inferring_map(&self) -> Option<Arc<crate::attribution::activity::ActivityMap>> {
        self.attributor.activity.clone().filter(|m| m.infers())
    }

    /// Whether a Begin needs inference (no sampled session for its xid, not already logged), and so a
    /// sample taken after its commit.
    pub fn wants_sample_after(&self, msg: &Message) -> Option<(Arc<crate::attribution::activity::ActivityMap>, i64)> {
        let Message::Begin { final_lsn, commit_time, xid } = msg else { return None };
        let m = self.inferring_map()?;
        (*final_lsn >= self.resume_after && m.lookup(*xid).is_none()).then_some((m, *commit_time))
    }

    pub fn in_transaction(&self) -> bool {
        self.txn.is_some()
    }

    /// The activity source's session the open transaction got at Begin (recorded in raw captures so
    /// offline re-decoding attributes exactly as the live capture did).
    pub fn current_activity(&self) -> Option<(u32, bytes::Bytes)> {
        let t = self.txn.as_ref()?;
        t.activity.as_ref().map(|a| (t.xid, a.json.clone()))
    }

    /// The inference the last Commit used, once (a raw capture stores it before the Commit's frame).
    pub fn take_inference(&mut self) -> Option<(u32, Inference)> {
        self.last_inference.take()
    }

    /// Forgets a transaction interrupted by a lost connection; the server sends it again from Begin.
    pub fn abandon_transaction(&mut self) {
        if let Some(t) = self.txn.take() {
            self.undo(t);
        }
        self.pending = None;
    }

    /// Puts back what a transaction that will not be in the log changed in the relation cache.
    fn undo(&mut self, mut t: Txn) {
        for (i, before) in t.renames.drain(..).rev() {
            self.relations.table_mut(i).reported = before;
        }
        for (oid, saved) in t.saved_relations.drain(..).rev() {
            self.relations.restore(oid, saved);
        }
    }

    /// Whether a Relation message is for a relation the capture should look up in the catalog first
    /// (a partition attached since the start?): returns its OID.
    pub fn needs_lookup(&self, msg: &Message) -> Option<u32> {
        match msg {
            Message::Relation { oid, .. } if self.relations.needs_lookup(*oid) => Some(*oid),
            _ => None,
        }
    }

    /// The OIDs of the watched tables.
    pub fn watched_oids(&self) -> Vec<u32> {
        self.relations.watched_oids()
    }

    /// Records a partition of a watched table found by a catalog lookup.
    pub fn add_partition(&mut self, oid: u32, root: u32, primary_key: Option<Vec<String>>) -> bool {
        self.relations.add_partition(oid, root, primary_key)
    }

    /// Raises the position below which transactions are already logged.
    pub fn set_resume_after(&mut self, lsn: Lsn) {
        self.resume_after = self.resume_after.max(lsn);
    }

    /// Feeds one message. `lsn` is its XLogData header position (for a change, the change's LSN).
    ///
    /// A row record is completed one message late: the trigger's messages are queued in the reorder
    /// buffer at the *end* LSN of their WAL record, which can equal the *start* LSN of the next row, and
    /// PostgreSQL orders such a tie either way. So a row's session is decided only once the next message
    /// shows whether it is a tying attribution message: a tying open starts before the row (the row is
    /// its statement's first), a tying close ends before it (the row comes after that statement).
    pub fn handle(&mut self, lsn: Lsn, msg: Message, out: &mut BytesMut) -> Result<Step, AssembleError> {
        if let Some(p) = &self.pending {
            let tie = matches!(&msg, Message::LogicalMessage { lsn: m, prefix, transactional: true, .. } if prefix == TRIGGER_PREFIX && *m == p.lsn);
            if tie {
                let step = self.handle_inner(lsn, msg, out)?;
                self.finalize_pending(out);
                return Ok(step);
            }
            self.finalize_pending(out);
        }
        self.handle_inner(lsn, msg, out)
    }

    /// Splits off the first `n` bytes of `out` (complete records before any row still being decided),
    /// keeping the pending row's position right.
    pub fn split_prefix(&mut self, out: &mut BytesMut, n: usize) -> bytes::Bytes {
        let n = n.min(out.len());
        if let Some(p) = &mut self.pending {
            p.start = p.start.saturating_sub(n);
        }
        out.split_to(n).freeze()
    }

    /// Bytes of `out` that are complete records (everything before a pending row), split off for writing.
    pub fn take_complete(&mut self, out: &mut BytesMut) -> bytes::Bytes {
        match &mut self.pending {
            Some(p) => {
                let n = p.start;
                p.start = 0;
                out.split_to(n).freeze()
            }
            None => out.split().freeze(),
        }
    }

    fn finalize_pending(&mut self, out: &mut BytesMut) {
        let Some(p) = self.pending.take() else { return };
        let Some(t) = self.txn.as_mut() else { return };
        let trigger_mode = self.attributor.verifier.is_some();
        let verdict = if trigger_mode { t.evidence(&self.relations, &p.key, p.lsn) } else { Err("no_trigger_fired") };
        let session = t.choose_session(&verdict, &p, out);
        let missing = match (trigger_mode, &verdict) {
            (true, Err(reason)) => {
                t.missing += 1;
                Some(*reason)
            }
            _ => None,
        };
        record::finish_row(out, missing, session.as_deref());
        if let Some(s) = session {
            if t.first_session.is_none() {
                t.first_session = Some(s);
            }
        }
    }

    /// A message with our prefix, inside a transaction or not.
    fn trigger_message(&mut self, lsn: Lsn, transactional: bool, content: &[u8], out: &mut BytesMut) {
        let Some(verifier) = self.attributor.verifier.clone() else {
            return;
        };
        let evidence = verifier.verify(content);
        if !transactional {
            // Error reports are non-transactional: they reach us before their transaction.
            match evidence {
                Ok(Evidence::Error(r)) => self.error_report(lsn, r, out),
                Ok(_) => {
                    self.rejected_messages += 1;
                    tracing::warn!(
                        "at LSN {lsn}: non-transactional walwitness message that is not an error report ignored"
                    );
                }
                Err(e) => {
                    self.rejected_messages += 1;
                    tracing::warn!(
                        "at LSN {lsn}: non-transactional walwitness message rejected: {}",
                        crate::term::clean(&e)
                    );
                }
            }
            return;
        }
        let Some(t) = self.txn.as_mut() else { return };
        match evidence {
            Err(reason) => {
                t.reject(lsn, reason);
                self.rejected_messages += 1;
            }
            Ok(Evidence::Error(_)) => {
                t.reject(lsn, "an error report sent as a transactional message".into());
                self.rejected_messages += 1;
            }
            Ok(Evidence::Open(o)) => {
                let Some(key) = self.relations.evidence_key(o.r) else { return };
                if let Some(why) = t.open_rejection(&o, content) {
                    t.reject(lsn, why);
                    self.rejected_messages += 1;
                    return;
                }
                t.open_bracket(lsn, key, o);
            }
            Ok(Evidence::Close(c)) => {
                let Some(key) = self.relations.evidence_key(c.r) else { return };
                let table = c.table();
                t.touched.insert(key.clone());
                let stack = t.brackets.entry(key).or_default();
                match stack.last() {
                    Some(b) if b.open.closed_by(&c) => {
                        stack.pop();
                        if let Some(outer) = stack.last_mut() {
                            outer.resumed = true;
                        }
                    }
                    _ => t.problem(lsn, describe_unmatched(&c, &table)),
                }
            }
        }
    }

    /// Keeps an error report for its transaction and writes it as a `trigger_error` record.
    fn error_report(&mut self, lsn: Lsn, r: ErrorReport, out: &mut BytesMut) {
        let table = r.table();
        tracing::warn!(
            "at LSN {lsn}: the attribution trigger failed on {} (pid {}, xid {:?}): {}",
            crate::term::clean(&table),
            r.pid,
            r.xid,
            crate::term::clean(&r.e)
        );
        match &mut self.txn {
            Some(t) if r.xid.is_some_and(|x| x % (1 << 32) == u64::from(t.xid)) => {
                if let Some(key) = self.relations.evidence_key(r.r) {
                    t.errors.push((lsn, key));
                }
            }
            _ => {
                if let Some(x) = r.xid {
                    if self.error_reports.len() >= MAX_ERROR_REPORTS {
                        self.error_reports.pop_front();
                    }
                    if let Some(key) = self.relations.evidence_key(r.r) {
                        self.error_reports.push_back((lsn, x, key));
                    }
                }
            }
        }
        if let Some(t) = self.txn.as_mut() {
            // Not expected (they are sent between transactions), but never lost: the commit lists it.
            t.problem(lsn, format!("the attribution trigger failed on {table} (pid {}): {}", r.pid, r.e));
            return;
        }
        if lsn < self.resume_after {
            return;
        }
        record::write_trigger_error(
            out,
            &record::TriggerError {
                lsn,
                xid: r.xid.map(|x| x % (1 << 32)),
                pid: r.pid.max(0) as u64,
                table: &table,
                oid: r.r,
                op: &r.op,
                trigger: &r.w,
                error: &r.e,
                signed: r.signed,
            },
        );
    }

    fn handle_inner(&mut self, lsn: Lsn, msg: Message, out: &mut BytesMut) -> Result<Step, AssembleError> {
        let name = msg.type_name();
        let err = |reason: String| AssembleError { lsn, message: name, reason };
        match msg {
            Message::Begin { final_lsn, commit_time, xid } => self.begin(final_lsn, commit_time, xid).map_err(err)?,
            Message::Origin { name: origin, .. } => {
                let t = self.txn.as_mut().ok_or_else(|| err("Origin outside a transaction".into()))?;
                t.origin = Some(origin);
                t.rebuild_common();
            }
            Message::Relation { oid, namespace, name: relname, replica_identity, columns, .. } => {
                self.relation(oid, namespace, relname, replica_identity, columns)
            }
            Message::Delete { relid, old, .. } => self.delete(lsn, relid, old, out).map_err(err)?,
            Message::Truncate { relids, cascade, restart_identity, .. } => {
                self.truncate(lsn, relids, cascade, restart_identity, out).map_err(err)?
            }
            Message::Commit { commit_lsn, end_lsn, commit_time, .. } => {
                return self.commit(commit_lsn, end_lsn, commit_time, out).map_err(err)
            }
            Message::LogicalMessage { transactional, prefix, content, .. } if prefix == TRIGGER_PREFIX => {
                self.trigger_message(lsn, transactional, &content, out);
            }
            // Inserts, updates, user types and other plugins' messages are not evidence of deletion.
            Message::Insert { .. } | Message::Update { .. } | Message::Type { .. } | Message::LogicalMessage { .. } => {
            }
            Message::StreamStart { .. }
            | Message::StreamStop
            | Message::StreamCommit { .. }
            | Message::StreamAbort { .. }
            | Message::StreamPrepare { .. } => {
                return Err(err("streaming was not requested, yet the server sent a streaming message".into()));
            }
            Message::BeginPrepare { .. }
            | Message::Prepare { .. }
            | Message::CommitPrepared { .. }
            | Message::RollbackPrepared { .. } => {
                return Err(err(
                    "the slot has two-phase decoding enabled, which walwitness does not handle yet: use a slot created by walwitness"
                        .into(),
                ));
            }
        }
        Ok(Step::Continue)
    }

    fn begin(&mut self, final_lsn: Lsn, commit_time: i64, xid: u32) -> Result<(), String> {
        if let Some(t) = &self.txn {
            return Err(format!("Begin of xid {xid} while xid {} is still open", t.xid));
        }
        let full_xid = self.attributor.verifier.as_ref().map(|_| {
            let f = widen_xid(xid, self.xid_reference);
            self.xid_reference = self.xid_reference.max(f);
            f
        });
        // The trigger's error reports that arrived before the transaction (they are sent outside it).
        let mut errors = Vec::new();
        if let Some(f) = full_xid {
            self.error_reports.retain(|(l, x, table)| {
                let mine = *x == f;
                if mine {
                    errors.push((*l, table.clone()));
                }
                !mine
            });
        }
        let activity = self.attributor.activity.as_ref().and_then(|m| m.lookup(xid)).map(Arc::new);
        let infer = activity.is_none() && self.attributor.activity.is_some();
        let mut t = Txn::new(xid, final_lsn, commit_time);
        t.full_xid = full_xid;
        t.skip = final_lsn < self.resume_after;
        t.activity = activity;
        t.errors = errors;
        t.infer = infer;
        t.rebuild_common();
        self.txn = Some(t);
        Ok(())
    }

    fn relation(
        &mut self,
        oid: u32,
        namespace: String,
        relname: String,
        replica_identity: ReplicaIdentity,
        columns: Vec<Column>,
    ) {
        if let Some(t) = self.txn.as_mut().filter(|t| t.final_lsn == ABORT_SENTINEL_LSN) {
            if !t.saved_relations.iter().any(|(o, _)| *o == oid) {
                t.saved_relations.push((oid, self.relations.save(oid)));
            }
        }
        self.relations.update(oid, namespace, relname, replica_identity, columns);
        if let (Some(t), Some(r)) = (self.txn.as_mut(), self.relations.get(oid)) {
            // Sent again inside the transaction after evidence or rows of the table: its definition
            // or triggers changed since (ALTER TABLE … DISABLE TRIGGER, DROP TRIGGER, …).
            if let Some(key) = r.watched.map(|i| self.relations.table_key(i)) {
                if t.touched.contains(&key) {
                    t.altered.insert(key);
                }
            }
        }
    }

    /// A `delete` record, up to its session (`pending`).
    fn delete(&mut self, lsn: Lsn, relid: u32, old: OldTuple, out: &mut BytesMut) -> Result<(), String> {
        let t = self.txn.as_mut().ok_or_else(|| "Delete outside a transaction".to_owned())?;
        let rel = self
            .relations
            .get(relid)
            .ok_or_else(|| format!("relation OID {relid} was never described by a Relation message"))?;
        let Some(w) = rel.watched else {
            return Ok(());
        };
        let vals = &old.tuple.columns;
        if vals.len() != rel.columns.len() {
            return Err(format!(
                "old tuple of {} has {} columns, its Relation message described {}",
                rel.name.qualified(),
                vals.len(),
                rel.columns.len()
            ));
        }
        note_rename(&mut self.relations, t, w, lsn, out);
        if t.skip {
            return Ok(());
        }
        let Some(rel) = self.relations.get(relid) else {
            return Err(format!("relation OID {relid} vanished from the relation cache"));
        };
        let key_cols = match old.kind {
            OldKind::Key => Some(&rel.identity_cols),
            OldKind::Old => rel.pk_cols.as_ref(),
        };
        if let (true, Some([i])) = (t.infer && t.keys.len() < MAX_KEYS, key_cols.map(Vec::as_slice)) {
            if let Some(Value::Text(v)) = vals.get(*i) {
                t.keys.push(String::from_utf8_lossy(v).into_owned());
            }
        }
        let row_start = out.len();
        let key = key_cols.map(|cols| cols.iter().map(|&i| (&rel.columns[i].name_json[..], &vals[i])));
        let whole = rel.columns.iter().zip(vals.iter()).map(|(c, v)| (&c.name_json[..], v));
        let whole = matches!(old.kind, OldKind::Old).then_some(whole);
        record::write_delete(out, &rel.delete_prefix, t.xid, lsn, &t.common, key, whole);
        self.pending = Some(Pending { lsn, start: row_start, key: PendingKey::Rel(relid) });
        t.deletes += 1;
        Ok(())
    }

    /// A `truncate` record of the watched relations among `relids`, up to its session (`pending`).
    fn truncate(
        &mut self,
        lsn: Lsn,
        relids: Vec<u32>,
        cascade: bool,
        restart_identity: bool,
        out: &mut BytesMut,
    ) -> Result<(), String> {
        let t = self.txn.as_mut().ok_or_else(|| "Truncate outside a transaction".to_owned())?;
        // The watched relations it truncated (each once) and the watched tables they belong to.
        let mut seen: Vec<u32> = Vec::with_capacity(relids.len());
        let mut tables: Vec<usize> = Vec::new();
        for relid in relids {
            let rel = self
                .relations
                .get(relid)
                .ok_or_else(|| format!("relation OID {relid} was never described by a Relation message"))?;
            if let Some(w) = rel.watched {
                if !seen.contains(&relid) {
                    seen.push(relid);
                    if !tables.contains(&w) {
                        tables.push(w);
                    }
                }
            }
        }
        for &w in &tables {
            note_rename(&mut self.relations, t, w, lsn, out);
        }
        if seen.is_empty() || t.skip {
            return Ok(());
        }
        let mut relations = BytesMut::new();
        for (i, relid) in seen.iter().enumerate() {
            let Some(rel) = self.relations.get(*relid) else { continue };
            let Some(w) = rel.watched else { continue };
            if i > 0 {
                relations.extend_from_slice(b",");
            }
            relations.extend_from_slice(b"{");
            self.relations.push_reference(&mut relations, w, rel);
            relations.extend_from_slice(b"}");
        }
        let row_start = out.len();
        let names = tables.iter().map(|&w| self.relations.table(w).current.qualified());
        record::write_truncate(out, names, &relations, t.xid, lsn, &t.common, cascade, restart_identity);
        self.pending = Some(Pending { lsn, start: row_start, key: PendingKey::Tables(tables) });
        t.truncates += 1;
        Ok(())
    }

    /// Ends the transaction: its `commit` record if it wrote rows.
    fn commit(&mut self, commit_lsn: Lsn, end_lsn: Lsn, commit_time: i64, out: &mut BytesMut) -> Result<Step, String> {
        let mut t = self.txn.take().ok_or_else(|| "Commit outside a transaction".to_owned())?;
        if commit_lsn != t.final_lsn {
            return Err(format!("Commit of xid {} at {commit_lsn} but its Begin announced {}", t.xid, t.final_lsn));
        }
        // An aborted attempt's Relation messages never counted as sent (see ABORT_SENTINEL_LSN).
        for (oid, saved) in t.saved_relations.drain(..).rev() {
            self.relations.restore(oid, saved);
        }
        let unclosed: Vec<(String, Lsn)> =
            t.brackets.values().flat_map(|v| v.iter().map(|b| (b.open.table(), b.open_lsn))).collect();
        for (name, at) in unclosed {
            t.problem(commit_lsn, format!("the statement on {name} opened at {at} was never closed"));
        }
        let wrote = !t.skip && (t.deletes > 0 || t.truncates > 0);
        if wrote {
            self.write_commit(&t, commit_lsn, end_lsn, commit_time, out);
        }
        Ok(Step::Committed {
            end_lsn,
            wrote,
            deletes: if wrote { t.deletes } else { 0 },
            truncates: if wrote { t.truncates } else { 0 },
            commit_time,
        })
    }

    /// The `commit` record, with how the rows were attributed (or what inference found for them).
    fn write_commit(&mut self, t: &Txn, commit_lsn: Lsn, end_lsn: Lsn, commit_time: i64, out: &mut BytesMut) {
        let total = t.deletes + t.truncates;
        let attribution = if t.attributed_trigger == total {
            "trigger"
        } else if t.attributed_activity == total {
            "activity"
        } else if t.unattributed == total {
            "none"
        } else {
            "partial"
        };
        // Inference for the rows without a session; why there is none when nothing named them.
        let mut named = t.unattributed == 0;
        let inference = match &self.attributor.activity {
            Some(m) if t.infer && t.unattributed > 0 => m.infer(t.xid, commit_time, &t.keys),
            _ => None,
        };
        let (mut inferred, mut unattributed_reason) = (None, None);
        if t.unattributed > 0 {
            match &inference {
                Some(Inference::Inferred { json, named: one }) => {
                    inferred = Some(&json[..]);
                    named = *one;
                }
                Some(Inference::Unattributed(reason)) if t.first_session.is_none() => {
                    unattributed_reason = Some(&reason[..]);
                }
                _ => {}
            }
        }
        record::write_commit(
            out,
            &record::Commit {
                xid: t.xid,
                commit_lsn,
                end_lsn,
                commit_time,
                origin: t.origin.as_deref(),
                deletes: t.deletes,
                truncates: t.truncates,
                session: t.first_session.as_deref(),
                attribution,
                inferred,
                unattributed_reason,
                conflict: t.conflict,
                evidence_missing: t.missing,
                rejected: &t.rejected,
                problems: &t.problems,
            },
        );
        if let Some(i) = inference {
            self.last_inference = Some((t.xid, i));
        }
        self.written_transactions += 1;
        if !named {
            self.unnamed_transactions += 1;
        }
    }
}

/// Writes `relation_renamed` before the first record that shows the watched table `i` under another
/// name than the log last showed. In a transaction already in the log only the state follows; an
/// aborted attempt's names are not reported (its rename was rolled back too).
fn note_rename(relations: &mut RelationCache, t: &mut Txn, i: usize, lsn: Lsn, out: &mut BytesMut) {
    let st = relations.table_mut(i);
    if st.current == st.reported || t.final_lsn == ABORT_SENTINEL_LSN {
        return;
    }
    let previous = std::mem::replace(&mut st.reported, st.current.clone());
    t.renames.push((i, previous.clone()));
    if t.skip {
        return;
    }
    let st = relations.table(i);
    record::write_relation_renamed(
        out,
        &record::RelationRenamed {
            oid: st.oid,
            table: &st.current.qualified(),
            schema: &st.current.schema,
            name: &st.current.name,
            previous_table: &previous.qualified(),
            previous_schema: &previous.schema,
            previous_name: &previous.name,
            xid: t.xid,
            lsn,
            common: &t.common,
        },
    );
}

fn describe_unmatched(c: &Close, table: &str) -> String {
    format!(
        "a statement on {table} (depth {}) ended without a matching start: its opening trigger did not fire (disabled, dropped or failed), or the close was forged",
        c.d
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attribution::activity::ActivityMap;
    use crate::attribution::trigger::{pads, Verifier};
    use crate::protocol::pgoutput::{Column, OldTuple, ReplicaIdentity, TupleData};
    use bytes::Bytes;

    fn watch() -> WatchList {
        let mut w = WatchList::new();
        w.add("public", "cache", Some(vec!["cache_key".into()]));
        w
    }

    fn rel(identity: ReplicaIdentity, key_flags: bool) -> Message {
        Message::Relation {
            xid: None,
            oid: 10,
            namespace: "public".into(),
            name: "cache".into(),
            replica_identity: identity,
            columns: vec![
                Column { is_key: true, flags: 1, name: "cache_key".into(), type_oid: 25, type_modifier: -1 },
                Column {
                    is_key: key_flags,
                    flags: key_flags as u8,
                    name: "value".into(),
                    type_oid: 25,
                    type_modifier: -1,
                },
            ],
        }
    }

    fn del(kind: OldKind, key: &str, value: Option<&str>) -> Message {
        let v = |s: Option<&str>| s.map_or(Value::Null, |s| Value::Text(Bytes::copy_from_slice(s.as_bytes())));
        Message::Delete {
            xid: None,
            relid: 10,
            old: OldTuple { kind, tuple: TupleData { columns: vec![v(Some(key)), v(value)] } },
        }
    }

    fn begin(xid: u32, final_lsn: u64) -> Message {
        Message::Begin { final_lsn: Lsn(final_lsn), commit_time: 0, xid }
    }

    fn commit(final_lsn: u64, end: u64) -> Message {
        Message::Commit { flags: 0, commit_lsn: Lsn(final_lsn), end_lsn: Lsn(end), commit_time: 0 }
    }

    fn run(asm: &mut Assembler, msgs: Vec<(u64, Message)>) -> (String, Vec<Step>) {
        let mut out = BytesMut::new();
        let mut steps = Vec::new();
        for (lsn, m) in msgs {
            steps.push(asm.handle(Lsn(lsn), m, &mut out).unwrap());
        }
        (String::from_utf8(out.to_vec()).unwrap(), steps)
    }

    #[test]
    fn a_transaction_becomes_rows_then_commit() {
        let mut asm = Assembler::new(watch(), Lsn(0), Attributor::default());
        let (out, steps) = run(
            &mut asm,
            vec![
                (0, begin(7, 0x100)),
                (0, rel(ReplicaIdentity::Default, false)),
                (0x50, del(OldKind::Key, "k\"1", None)),
                (0x100, commit(0x100, 0x130)),
            ],
        );
        assert_eq!(
            out,
            "{\"type\":\"delete\",\"table\":\"public.cache\",\"schema\":\"public\",\"name\":\"cache\",\"xid\":7,\"lsn\":\"0/50\",\"commit_lsn\":\"0/100\",\"commit_time\":\"2000-01-01T00:00:00.000000Z\",\"origin\":null,\"key\":{\"cache_key\":\"k\\\"1\"},\"old\":null,\"session\":null}\n\
             {\"type\":\"commit\",\"xid\":7,\"commit_lsn\":\"0/100\",\"end_lsn\":\"0/130\",\"commit_time\":\"2000-01-01T00:00:00.000000Z\",\"origin\":null,\"deletes\":1,\"truncates\":0,\"session\":null,\"attribution\":\"none\"}\n"
        );
        assert_eq!(
            steps.last().unwrap(),
            &Step::Committed { end_lsn: Lsn(0x130), wrote: true, deletes: 1, truncates: 0, commit_time: 0 }
        );
    }

    #[test]
    fn full_identity_uses_primary_key_and_old_row() {
        let mut asm = Assembler::new(watch(), Lsn(0), Attributor::default());
        let (out, _) = run(
            &mut asm,
            vec![
                (0, begin(7, 0x100)),
                (0, rel(ReplicaIdentity::Full, true)),
                (0x50, del(OldKind::Old, "a", None)),
                (0x100, commit(0x100, 0x130)),
            ],
        );
        assert!(out.contains("\"key\":{\"cache_key\":\"a\"},\"old\":{\"cache_key\":\"a\",\"value\":null}"), "{out}");
    }

    #[test]
    fn transactions_already_in_the_log_are_skipped_and_empty_ones_write_nothing() {
        let mut asm = Assembler::new(watch(), Lsn(0x130), Attributor::default());
        let (out, steps) = run(
            &mut asm,
            vec![
                (0, begin(7, 0x100)),
                (0, rel(ReplicaIdentity::Default, false)),
                (0x50, del(OldKind::Key, "a", None)),
                (0x100, commit(0x100, 0x130)),
                (0, begin(8, 0x200)),
                (0x200, commit(0x200, 0x230)),
            ],
        );
        assert_eq!(out, "");
        assert!(matches!(steps[3], Step::Committed { wrote: false, .. }));
        assert!(matches!(steps[5], Step::Committed { wrote: false, end_lsn: Lsn(0x230), .. }));
    }

    #[test]
    fn protocol_violations_are_errors_with_context() {
        let mut asm = Assembler::new(watch(), Lsn(0), Attributor::default());
        let mut out = BytesMut::new();
        let e = asm.handle(Lsn(5), del(OldKind::Key, "a", None), &mut out).unwrap_err();
        assert!(e.to_string().contains("at LSN 0/5") && e.to_string().contains("outside a transaction"), "{e}");
        asm.handle(Lsn(0), begin(1, 0x100), &mut out).unwrap();
        let e = asm.handle(Lsn(6), del(OldKind::Key, "a", None), &mut out).unwrap_err();
        assert!(e.to_string().contains("never described"), "{e}");
        let e = asm.handle(Lsn(7), commit(0x999, 0x1000), &mut out).unwrap_err();
        assert!(e.to_string().contains("Begin announced 0/100"), "{e}");
    }

    fn signed(v: &Verifier, payload: &str) -> Bytes {
        Bytes::from(format!("{} {payload}", hex::encode(v.mac(payload.as_bytes()))))
    }

    const SYS: &str = "7000000000000000001";

    /// An open for table cache by `pid` with application `app`, statement start `ss`, statement id `id`.
    fn open(v: &Verifier, xid: u64, pid: i32, app: &str, ss: i64, id: i64, armed: bool) -> Bytes {
        let p = crate::attribution::trigger::tests::open_payload(SYS, xid, pid, app, "cache", ss)
            .replace("\"id\":1,", &format!("\"id\":{id},"))
            .replace("\"armed\":true", &format!("\"armed\":{armed}"));
        signed(v, &p)
    }

    fn close(ss: i64) -> Bytes {
        Bytes::from(format!(r#"close {{"d":0,"ss":{ss},"op":"DELETE","r":10,"s":"public","t":"cache"}}"#))
    }

    fn msg(lsn: u64, content: Bytes) -> Message {
        Message::LogicalMessage { xid: None, transactional: true, lsn: Lsn(lsn), prefix: "walwitness".into(), content }
    }

    fn verifier() -> (Verifier, Attributor) {
        let (i, o) = pads(&[3u8; 32]);
        let v = Verifier::from_pads(i.clone(), o.clone()).for_cluster(SYS, 7);
        let attributor =
            Attributor { activity: None, verifier: Some(Arc::new(Verifier::from_pads(i, o).for_cluster(SYS, 7))) };
        (v, attributor)
    }

    fn lines(out: &str) -> Vec<serde_json::Value> {
        out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }

    #[test]
    fn rows_inside_a_bracket_get_its_statement_even_when_the_first_row_ties_with_it() {
        let (v, attributor) = verifier();
        let mut asm = Assembler::new(watch(), Lsn(0), attributor);
        // The first row's start LSN equals the open's end LSN, and pgoutput sent the row first; the row
        // after the close starts where the close ends and was sent before it: it is outside.
        let (out, _) = run(
            &mut asm,
            vec![
                (0, begin(7, 0x100)),
                (0, rel(ReplicaIdentity::Default, false)),
                (0x40, del(OldKind::Key, "a", None)),
                (0x40, msg(0x40, open(&v, 7, 99, "cron", 5, 1, true))),
                (0x50, del(OldKind::Key, "b", None)),
                (0x70, del(OldKind::Key, "c", None)),
                (0x70, msg(0x70, close(5))),
                (0x100, commit(0x100, 0x130)),
            ],
        );
        let l = lines(&out);
        assert_eq!(l.len(), 5, "{out}");
        assert_eq!(l[0]["type"], "statement");
        assert_eq!(l[0]["statement"], 1);
        assert_eq!(l[0]["session"]["query"], "DELETE FROM cache");
        assert_eq!(l[0]["session"]["application_name"], "cron");
        for r in &l[1..3] {
            assert_eq!(r["session"]["pid"], 99, "{r}");
            assert_eq!(r["session"]["statement"], 1);
            assert_eq!(r["session"]["attributed_by"], "trigger");
            assert!(r["session"].get("query").is_none(), "the statement text is written once: {r}");
            assert!(r.get("trigger_evidence").is_none());
        }
        assert_eq!(l[3]["key"]["cache_key"], "c");
        assert_eq!(l[3]["session"], serde_json::Value::Null);
        assert_eq!(l[3]["trigger_evidence"], "missing");
        assert_eq!(l[3]["trigger_evidence_reason"], "no_trigger_fired");
        assert_eq!(l[4]["attribution"], "partial");
        assert_eq!(l[4]["trigger_evidence_missing"], 1);
        assert_eq!(l[4]["session"]["statement"], 1);
    }

    #[test]
    fn a_decoy_statement_never_covers_the_rows_of_another() {
        let (v, attributor) = verifier();
        let mut asm = Assembler::new(watch(), Lsn(0), attributor);
        let (out, _) = run(
            &mut asm,
            vec![
                (0, begin(7, 0x300)),
                (0, rel(ReplicaIdentity::Default, false)),
                // Decoy: opens and closes with no rows.
                (0x10, msg(0x10, open(&v, 7, 99, "nightly", 5, 1, true))),
                (0x20, msg(0x20, close(5))),
                // The real delete ran with the opening trigger disabled: a Relation message comes again.
                (0x30, rel(ReplicaIdentity::Default, false)),
                (0x40, del(OldKind::Key, "a", None)),
                (0x50, msg(0x50, close(6))),
                // A decoy whose closing trigger was disabled: its open says so.
                (0x60, msg(0x60, open(&v, 7, 99, "nightly", 7, 2, false))),
                (0x70, del(OldKind::Key, "b", None)),
                // Replays of a valid open are rejected.
                (0x80, msg(0x80, open(&v, 7, 99, "nightly", 5, 1, true))),
                (0x90, del(OldKind::Key, "c", None)),
                (0x300, commit(0x300, 0x330)),
            ],
        );
        let l = lines(&out);
        let rows: Vec<_> = l.iter().filter(|r| r["type"] == "delete").collect();
        assert_eq!(rows.len(), 3);
        let reasons: Vec<_> = rows.iter().map(|r| r["trigger_evidence_reason"].as_str().unwrap()).collect();
        assert_eq!(reasons, ["table_altered", "closing_trigger_disabled", "closing_trigger_disabled"], "{out}");
        for r in &rows {
            assert_eq!(r["session"], serde_json::Value::Null, "never the decoy: {r}");
            assert_eq!(r["trigger_evidence"], "missing");
        }
        assert!(l.iter().all(|r| r["type"] != "statement"), "{out}");
        let c = l.last().unwrap();
        assert_eq!(c["attribution"], "none");
        assert_eq!(c["trigger_evidence_missing"], 3);
        let problems = c["trigger_evidence_problems"].to_string();
        assert!(problems.contains("without a matching start") && problems.contains("closing trigger"), "{c}");
        assert!(c["rejected_attribution_messages"][0].as_str().unwrap().contains("replayed"), "{c}");
    }

    #[test]
    fn an_error_report_before_the_transaction_flags_the_rows_after_it() {
        let (v, attributor) = verifier();
        let mut asm = Assembler::new(watch(), Lsn(0), attributor);
        let report = r#"{"v":2,"k":"error","sys":null,"xid":7,"pid":99,"w":"BEFORE","op":"DELETE","r":10,"s":"public","t":"cache","e":"53200 out of shared memory","at":1}"#;
        let (out, _) = run(
            &mut asm,
            vec![
                (0, rel(ReplicaIdentity::Default, false)),
                (
                    0x25,
                    Message::LogicalMessage {
                        xid: None,
                        transactional: false,
                        lsn: Lsn(0x25),
                        prefix: "walwitness".into(),
                        content: Bytes::from(format!("error - {report}")),
                    },
                ),
                (0, begin(7, 0x300)),
                (0x10, msg(0x10, open(&v, 7, 99, "nightly", 5, 1, true))),
                (0x18, del(OldKind::Key, "a", None)),
                // Rows after the error are not the decoy's even while its bracket is open.
                (0x30, del(OldKind::Key, "b", None)),
                (0x40, msg(0x40, close(5))),
                (0x300, commit(0x300, 0x330)),
            ],
        );
        let l = lines(&out);
        assert_eq!(l[0]["type"], "trigger_error", "{out}");
        assert_eq!(l[0]["error"], "53200 out of shared memory");
        assert_eq!(l[0]["signed"], false);
        assert_eq!(l[1]["type"], "statement");
        assert_eq!(l[2]["session"]["application_name"], "nightly", "the decoy's own row");
        assert_eq!(l[3]["trigger_evidence_reason"], "trigger_error");
        assert_eq!(l[3]["session"], serde_json::Value::Null);
        let _ = v;
    }

    #[test]
    fn an_open_for_another_transaction_or_cluster_is_rejected() {
        let (v, attributor) = verifier();
        let mut asm = Assembler::new(watch(), Lsn(0), attributor);
        let (other_i, other_o) = pads(&[4u8; 32]);
        let forger = Verifier::from_pads(other_i, other_o);
        let elsewhere = crate::attribution::trigger::tests::open_payload("1", 7, 1, "x", "cache", 5);
        let (out, _) = run(
            &mut asm,
            vec![
                (0, begin(7, 0x100)),
                (0, rel(ReplicaIdentity::Default, false)),
                (0x10, msg(0x10, open(&forger, 7, 1, "x", 5, 1, true))),
                // Same low 32 bits, another epoch: a replay from 2^32 transactions ago.
                (0x20, msg(0x20, open(&v, 7 + (1 << 32), 2, "x", 5, 2, true))),
                (0x30, msg(0x30, signed(&v, &elsewhere))),
                (0x50, del(OldKind::Key, "a", None)),
                (0x100, commit(0x100, 0x130)),
            ],
        );
        let l = lines(&out);
        assert_eq!(l[0]["session"], serde_json::Value::Null);
        assert_eq!(l[0]["trigger_evidence_reason"], "rejected_evidence");
        let rejected = l[1]["rejected_attribution_messages"].as_array().unwrap();
        assert_eq!(rejected.len(), 3, "{}", l[1]);
        assert!(rejected[0].as_str().unwrap().contains("does not match"));
        assert!(rejected[1].as_str().unwrap().contains("signed for xid"));
        assert!(rejected[2].as_str().unwrap().contains("cluster"));
        assert_eq!(asm.rejected_messages, 3);
    }

    #[test]
    fn rows_after_a_nested_statement_of_the_same_table_are_not_attributed_to_the_outer_one() {
        let (v, attributor) = verifier();
        let mut asm = Assembler::new(watch(), Lsn(0), attributor);
        let (out, _) = run(
            &mut asm,
            vec![
                (0, begin(7, 0x300)),
                (0, rel(ReplicaIdentity::Default, false)),
                (0x10, msg(0x10, open(&v, 7, 99, "outer", 5, 1, true))),
                (0x18, del(OldKind::Key, "a", None)),
                (0x20, msg(0x20, open(&v, 7, 99, "inner", 5, 2, true))),
                (0x28, del(OldKind::Key, "b", None)),
                (0x30, msg(0x30, close(5))),
                (0x38, del(OldKind::Key, "c", None)),
                (0x40, msg(0x40, close(5))),
                (0x300, commit(0x300, 0x330)),
            ],
        );
        let l = lines(&out);
        let rows: Vec<_> = l.iter().filter(|r| r["type"] == "delete").collect();
        assert_eq!(rows[0]["session"]["application_name"], "outer");
        assert_eq!(rows[1]["session"]["application_name"], "inner");
        assert_eq!(rows[2]["trigger_evidence_reason"], "after_nested_statement", "{out}");
        assert_eq!(l.iter().filter(|r| r["type"] == "statement").count(), 2);
    }

    #[test]
    fn activity_and_trigger_disagreeing_is_flagged_not_hidden() {
        let (v, _) = verifier();
        let (i, o) = pads(&[3u8; 32]);
        let map = Arc::new(ActivityMap::new());
        map.record(
            std::time::Instant::now(),
            vec![(7, Session { attributed_by: "activity".into(), pid: 555, ..Default::default() })],
        );
        let attributor =
            Attributor { activity: Some(map), verifier: Some(Arc::new(Verifier::from_pads(i, o).for_cluster(SYS, 7))) };
        let mut asm = Assembler::new(watch(), Lsn(0), attributor);
        let (out, _) = run(
            &mut asm,
            vec![
                (0, begin(7, 0x100)),
                (0, rel(ReplicaIdentity::Default, false)),
                (0x10, msg(0x10, open(&v, 7, 99, "cron", 5, 1, true))),
                (0x50, del(OldKind::Key, "a", None)),
                (0x60, msg(0x60, close(5))),
                (0x70, del(OldKind::Key, "b", None)),
                (0x100, commit(0x100, 0x130)),
            ],
        );
        let l = lines(&out);
        assert_eq!(l[0]["session"]["pid"], 99, "the trigger wins");
        assert_eq!(l[0]["session"]["conflict"]["pid"], 555, "the activity view is kept");
        assert_eq!(l[1]["session"]["pid"], 99);
        // A row outside the bracket falls back to the activity session, flagged.
        assert_eq!(l[2]["type"], "statement");
        assert_eq!(l[3]["session"]["pid"], 555);
        assert_eq!(l[3]["session"]["attributed_by"], "activity");
        assert_eq!(l[3]["trigger_evidence"], "missing");
        assert_eq!(l[4]["attribution_conflict"], true);
        assert_eq!(l[4]["attribution"], "partial");
    }

    #[test]
    fn inference_goes_on_the_commit_and_a_window_explains_one_transaction() {
        use crate::attribution::infer::Observed;
        let map =
            Arc::new(ActivityMap::live(vec![("public".into(), "cache".into())], std::time::Duration::from_millis(200)));
        let window = Observed {
            session: Session {
                attributed_by: "activity".into(),
                pid: 42,
                query: Some("DELETE FROM cache WHERE cache_key = 'a'".into()),
                ..Default::default()
            },
            xid: None,
            start_us: Some(-5),
            state_change_us: Some(5),
            active: false,
        };
        map.record_windows(-10, -10, &[]);
        map.record_windows(10, 10, &[window]);
        let mut asm = Assembler::new(watch(), Lsn(0), Attributor { activity: Some(map), verifier: None });
        let (out, _) = run(
            &mut asm,
            vec![
                (0, begin(7, 0x100)),
                (0, rel(ReplicaIdentity::Default, false)),
                (0x50, del(OldKind::Key, "a", None)),
                (0x100, commit(0x100, 0x130)),
                (0x200, begin(8, 0x300)),
                (0x250, del(OldKind::Key, "b", None)),
                (0x300, commit(0x300, 0x330)),
            ],
        );
        let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert!(
            lines[0]["session"].is_null() && lines[0].get("inferred").is_none(),
            "rows keep evidence only: {}",
            lines[0]
        );
        assert_eq!(lines[1]["inferred"]["candidates"], 1, "{}", lines[1]);
        assert_eq!(lines[1]["inferred"]["session"]["pid"], 42);
        assert_eq!(lines[1]["inferred"]["statement"], "DELETE FROM cache WHERE cache_key = 'a'");
        assert!(lines[1]["session"].is_null() && lines[1].get("unattributed_reason").is_none());
        // The window is used up: the next transaction at the same time is not explained by it.
        assert!(lines[3].get("inferred").is_none(), "{}", lines[3]);
        assert!(lines[3]["unattributed_reason"].is_string(), "{}", lines[3]);
        assert_eq!((asm.written_transactions, asm.unnamed_transactions), (2, 1));
    }

    #[test]
    fn truncate_lists_only_watched_tables() {
        let mut asm = Assembler::new(watch(), Lsn(0), Attributor::default());
        let other = Message::Relation {
            xid: None,
            oid: 11,
            namespace: "public".into(),
            name: "other".into(),
            replica_identity: ReplicaIdentity::Default,
            columns: vec![],
        };
        let (out, _) = run(
            &mut asm,
            vec![
                (0, begin(7, 0x100)),
                (0, rel(ReplicaIdentity::Default, false)),
                (0, other),
                (
                    0x50,
                    Message::Truncate {
                        xid: None,
                        relids: vec![11, 10, 10],
                        flags: 1,
                        cascade: true,
                        restart_identity: false,
                    },
                ),
                (0x100, commit(0x100, 0x130)),
            ],
        );
        assert!(
            out.starts_with("{\"type\":\"truncate\",\"tables\":[\"public.cache\"],\"relations\":[{\"table\":\"public.cache\",\"schema\":\"public\",\"name\":\"cache\"}],\"xid\":7,\"lsn\":\"0/50\""),
            "{out}"
        );
        assert!(out.contains("\"cascade\":true,\"restart_identity\":false"));
        assert!(out.contains("\"truncates\":1"));
    }

    fn watch_oid() -> WatchList {
        let mut w = WatchList::new();
        w.add_table(10, "public", "cache", Some(vec!["cache_key".into()]));
        w.add_partition(12, 10, None);
        w
    }

    fn rel_named(oid: u32, schema: &str, name: &str) -> Message {
        match rel(ReplicaIdentity::Default, false) {
            Message::Relation { xid, replica_identity, columns, .. } => {
                Message::Relation { xid, oid, namespace: schema.into(), name: name.into(), replica_identity, columns }
            }
            _ => unreachable!(),
        }
    }

    fn del_from(relid: u32, key: &str) -> Message {
        match del(OldKind::Key, key, None) {
            Message::Delete { xid, old, .. } => Message::Delete { xid, relid, old },
            _ => unreachable!(),
        }
    }

    /// The table owner renames the watched table and gives its name to another table whose triggers
    /// open a bracket: evidence is matched by the table's OID, so the decoy's open covers nothing.
    #[test]
    fn evidence_from_another_table_with_the_watched_name_covers_nothing() {
        let (v, attributor) = verifier();
        let mut asm = Assembler::new(watch_oid(), Lsn(0), attributor);
        let decoy = crate::attribution::trigger::tests::open_payload(SYS, 7, 99, "decoy", "cache", 5)
            .replace("\"r\":10", "\"r\":13");
        let own = crate::attribution::trigger::tests::open_payload(SYS, 7, 98, "real", "cache_x", 6)
            .replace("\"id\":1,", "\"id\":2,");
        let (out, _) = run(
            &mut asm,
            vec![
                (0, begin(7, 0x300)),
                (0, rel_named(10, "public", "cache_x")),
                (0, rel_named(13, "public", "cache")),
                (0x10, msg(0x10, signed(&v, &decoy))),
                (0x20, del_from(10, "a")),
                (0x30, msg(0x30, signed(&v, &own))),
                (0x40, del_from(10, "b")),
                (0x300, commit(0x300, 0x330)),
            ],
        );
        let l = lines(&out);
        let rows: Vec<_> = l.iter().filter(|r| r["type"] == "delete").collect();
        assert_eq!(rows.len(), 2, "{out}");
        assert_eq!(rows[0]["session"], serde_json::Value::Null, "never the decoy: {out}");
        assert_eq!(rows[0]["trigger_evidence"], "missing");
        assert_eq!(rows[1]["session"]["application_name"], "real", "{out}");
    }

    #[test]
    fn watched_by_oid_through_renames_with_a_record_for_each_new_name() {
        let mut asm = Assembler::new(watch_oid(), Lsn(0), Attributor::default());
        let (out, _) = run(
            &mut asm,
            vec![
                // BEGIN; ALTER TABLE cache RENAME TO cache_x; DELETE FROM cache_x …; rename back; COMMIT
                (0, begin(7, 0x100)),
                (0x40, rel_named(10, "public", "cache_x")),
                (0x40, del_from(10, "a")),
                (0x100, commit(0x100, 0x130)),
                // A decoy given the watched name is not the watched table.
                (0, begin(8, 0x200)),
                (0x140, rel_named(11, "public", "cache")),
                (0x140, del_from(11, "decoy")),
                (0x200, commit(0x200, 0x230)),
                // The next change shows the original name again.
                (0, begin(9, 0x300)),
                (0x240, rel_named(10, "public", "cache")),
                (0x240, del_from(10, "b")),
                (0x300, commit(0x300, 0x330)),
            ],
        );
        let l = lines(&out);
        let kinds: Vec<&str> = l.iter().map(|r| r["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["relation_renamed", "delete", "commit", "relation_renamed", "delete", "commit"], "{out}");
        assert_eq!(l[0]["oid"], 10);
        assert_eq!((l[0]["schema"].as_str(), l[0]["name"].as_str()), (Some("public"), Some("cache_x")));
        assert_eq!((l[0]["previous_schema"].as_str(), l[0]["previous_name"].as_str()), (Some("public"), Some("cache")));
        assert_eq!(l[0]["xid"], 7);
        assert_eq!(l[0]["commit_lsn"], "0/100");
        assert_eq!((l[1]["table"].as_str(), l[1]["name"].as_str()), (Some("public.cache_x"), Some("cache_x")));
        assert_eq!(l[2]["deletes"], 1);
        assert_eq!(l[3]["previous_name"], "cache_x");
        assert_eq!(l[4]["key"]["cache_key"], "b");
    }

    #[test]
    fn partitions_are_logged_as_their_watched_table_naming_the_partition() {
        let mut asm = Assembler::new(watch_oid(), Lsn(0), Attributor::default());
        let (out, _) = run(
            &mut asm,
            vec![
                (0, begin(7, 0x100)),
                (0x40, rel_named(12, "part", "cache_p1")),
                (0x40, del_from(12, "a")),
                (
                    0x50,
                    Message::Truncate {
                        xid: None,
                        relids: vec![12],
                        flags: 0,
                        cascade: false,
                        restart_identity: false,
                    },
                ),
                (0x100, commit(0x100, 0x130)),
            ],
        );
        let l = lines(&out);
        assert_eq!(l.len(), 3, "{out}");
        assert_eq!(l[0]["table"], "public.cache");
        assert_eq!((l[0]["schema"].as_str(), l[0]["name"].as_str()), (Some("public"), Some("cache")));
        assert_eq!(l[0]["partition"], serde_json::json!({"schema": "part", "name": "cache_p1"}));
        assert_eq!(l[1]["tables"], serde_json::json!(["public.cache"]));
        assert_eq!(
            l[1]["relations"],
            serde_json::json!([{"table": "public.cache", "schema": "public", "name": "cache", "partition": {"schema": "part", "name": "cache_p1"}}])
        );
        // Unknown relations are for the capture to look up; known ones are not.
        assert_eq!(asm.needs_lookup(&rel_named(13, "part", "cache_p2")), Some(13));
        assert_eq!(asm.needs_lookup(&rel_named(12, "part", "cache_p1")), None);
        assert!(asm.add_partition(13, 10, None));
        assert_eq!(asm.needs_lookup(&rel_named(13, "part", "cache_p2")), None);
    }

    #[test]
    fn an_abandoned_transaction_reports_its_rename_again_when_sent_again() {
        let mut asm = Assembler::new(watch_oid(), Lsn(0), Attributor::default());
        let mut out = BytesMut::new();
        for (lsn, m) in [(0, begin(7, 0x100)), (0x40, rel_named(10, "s2", "cache")), (0x40, del_from(10, "a"))] {
            asm.handle(Lsn(lsn), m, &mut out).unwrap();
        }
        asm.abandon_transaction();
        let (again, _) = run(
            &mut asm,
            vec![
                (0, begin(7, 0x100)),
                (0x40, rel_named(10, "s2", "cache")),
                (0x40, del_from(10, "a")),
                (0x100, commit(0x100, 0x130)),
            ],
        );
        assert!(again.starts_with("{\"type\":\"relation_renamed\""), "{again}");
    }

    #[test]
    fn an_aborted_attempt_teaches_the_relation_cache_nothing() {
        let mut asm = Assembler::new(watch_oid(), Lsn(0), Attributor::default());
        let (out, _) = run(
            &mut asm,
            vec![
                (0, begin(6, 0x80)),
                (0x10, rel_named(10, "public", "cache")),
                (0x10, del_from(10, "x")),
                (0x80, commit(0x80, 0x90)),
                // Replay of a rolled-back streamed transaction that renamed the table first.
                (0, Message::Begin { final_lsn: ABORT_SENTINEL_LSN, commit_time: 0, xid: 7 }),
                (0x40, rel_named(10, "public", "cache_x")),
                (0x40, del_from(10, "a")),
                (
                    u64::MAX,
                    Message::Commit {
                        flags: 0,
                        commit_lsn: ABORT_SENTINEL_LSN,
                        end_lsn: ABORT_SENTINEL_LSN,
                        commit_time: 0,
                    },
                ),
                // The server does not describe the table again: the name before the attempt holds.
                (0, begin(8, 0x200)),
                (0x140, del_from(10, "b")),
                (0x200, commit(0x200, 0x230)),
            ],
        );
        let l = lines(&out);
        assert!(l.iter().all(|r| r["type"] != "relation_renamed"), "{out}");
        assert_eq!(l[2]["table"], "public.cache_x", "the attempt's own rows show its names");
        assert_eq!(l.last().unwrap()["type"], "commit");
        assert_eq!(l[l.len() - 2]["table"], "public.cache", "{out}");
    }
}
