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
pub mod relations;

use std::collections::HashMap;
use std::sync::Arc;

use bytes::BytesMut;

use crate::attribution::infer::Inference;
use crate::attribution::trigger::PREFIX as TRIGGER_PREFIX;
use crate::attribution::{Attributor, Session, SessionJson};
use crate::protocol::buf::lossless_name;
use crate::protocol::pgoutput::{Message, OldKind, Value};
use crate::protocol::Lsn;
use crate::sink::record::{format_pg_time, push_lsn, push_str, push_u64, push_value};
use relations::{QName, RelationCache, WatchList};

/// Commit position written into the synthesized Begin of a rolled-back streamed or prepared
/// transaction replayed for `--include-aborted` (see `capture::spooled`). No real commit has it. The
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

struct Txn {
    xid: u32,
    final_lsn: Lsn,
    commit_time: i64,
    /// Already in the log from an earlier run: decode, but write nothing.
    skip: bool,
    origin: Option<String>,
    /// `,"commit_lsn":…,"commit_time":…,"origin":…` shared by every row of the transaction.
    common: BytesMut,
    deletes: u64,
    truncates: u64,
    /// The activity source's session for this xid, if a sample saw it.
    activity: Option<Arc<SessionJson>>,
    /// The latest verified trigger session per watched table (keyed `#<oid>`, or `schema.table` for
    /// triggers installed by earlier versions): it covers the rows of its statement.
    trigger: HashMap<String, Arc<SessionJson>>,
    /// Watched tables whose reported name this transaction changed, with the name before: put back if
    /// the transaction is abandoned (its records never reach the log).
    renames: Vec<(usize, QName)>,
    /// An aborted attempt's replay: the relation cache entries it replaced, put back at its end.
    saved_relations: Vec<(u32, relations::Saved)>,
    /// Session written in the commit record: the first one any record carried.
    first_session: Option<Arc<SessionJson>>,
    attributed_trigger: u64,
    attributed_activity: u64,
    unattributed: u64,
    conflict: bool,
    rejected: Vec<String>,
    /// Whether to infer the session at the commit (no sampled session for the xid; see
    /// `attribution::infer`).
    infer: bool,
    /// Text of the first deleted rows' keys (single-column keys), which inference matches against the
    /// candidates' statements.
    keys: Vec<String>,
}

impl Txn {
    /// Writes the session of a record: the trigger's for its statement, else the sampled one, else null.
    fn push_session(&mut self, out: &mut BytesMut, trigger: Option<Arc<SessionJson>>) {
        let chosen = match trigger {
            Some(s) => {
                self.attributed_trigger += 1;
                Some(s)
            }
            None => match &self.activity {
                Some(a) => {
                    self.attributed_activity += 1;
                    Some(a.clone())
                }
                None => {
                    self.unattributed += 1;
                    None
                }
            },
        };
        match chosen {
            Some(s) => {
                out.extend_from_slice(&s.json);
                if self.first_session.is_none() {
                    self.first_session = Some(s);
                }
            }
            None => out.extend_from_slice(b"null"),
        }
    }

    fn reject(&mut self, lsn: Lsn, reason: String) {
        tracing::warn!(
            "at LSN {lsn}: rejected a walwitness attribution message in xid {}: {}",
            self.xid,
            crate::term::clean(&reason)
        );
        self.rejected.push(format!("{lsn}: {reason}"));
    }

    fn rebuild_common(&mut self) {
        let mut c = BytesMut::with_capacity(96);
        c.extend_from_slice(b",\"commit_lsn\":");
        push_lsn(&mut c, self.final_lsn);
        c.extend_from_slice(b",\"commit_time\":");
        push_str(&mut c, &format_pg_time(self.commit_time));
        c.extend_from_slice(b",\"origin\":");
        match &self.origin {
            Some(o) => push_str(&mut c, o),
            None => c.extend_from_slice(b"null"),
        }
        self.common = c;
    }
}

/// Keys of a transaction kept for inference (see `Txn::keys`).
const MAX_KEYS: usize = 16;

/// A row record written up to its `"session":` value, waiting for the next message (see `handle`).
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
        Assembler {
            pending: None,
            relations: RelationCache::new(watch),
            txn: None,
            resume_after,
            attributor,
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
    /// A row record is completed one message late: the trigger's message is queued in the reorder
    /// buffer at the *end* LSN of its WAL record, which can equal the *start* LSN of the statement's first
    /// row, and PostgreSQL orders such a tie either way. So a row's session is decided only once the
    /// next message shows whether it is the tying attribution message.
    pub fn handle(&mut self, lsn: Lsn, msg: Message, out: &mut BytesMut) -> Result<Step, AssembleError> {
        if let Some(p) = &self.pending {
            let tie = matches!(&msg, Message::LogicalMessage { lsn: m, prefix, .. } if prefix == TRIGGER_PREFIX && *m == p.lsn);
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
        let trig = if t.trigger.is_empty() {
            None
        } else {
            let rels = &self.relations;
            let lookup = |i: usize| {
                let st = rels.table(i);
                st.oid
                    .and_then(|o| t.trigger.get(&format!("#{o}")))
                    .or_else(|| t.trigger.get(&st.current.qualified()))
                    .cloned()
            };
            match &p.key {
                PendingKey::Rel(relid) => rels.get(*relid).and_then(|r| r.watched).and_then(lookup),
                PendingKey::Tables(tables) => tables.iter().find_map(|&i| lookup(i)),
            }
        };
        t.push_session(out, trig);
        out.extend_from_slice(b"}\n");
    }

    fn handle_inner(&mut self, lsn: Lsn, msg: Message, out: &mut BytesMut) -> Result<Step, AssembleError> {
        let name = msg.type_name();
        let err = |reason: String| AssembleError { lsn, message: name, reason };
        match msg {
            Message::Begin { final_lsn, commit_time, xid } => {
                if let Some(t) = &self.txn {
                    return Err(err(format!("Begin of xid {xid} while xid {} is still open", t.xid)));
                }
                let activity = self.attributor.activity.as_ref().and_then(|m| m.lookup(xid)).map(Arc::new);
                let infer = activity.is_none() && self.attributor.activity.is_some();
                let mut t = Txn {
                    xid,
                    final_lsn,
                    commit_time,
                    skip: final_lsn < self.resume_after,
                    origin: None,
                    common: BytesMut::new(),
                    deletes: 0,
                    truncates: 0,
                    activity,
                    trigger: HashMap::new(),
                    renames: Vec::new(),
                    saved_relations: Vec::new(),
                    first_session: None,
                    attributed_trigger: 0,
                    attributed_activity: 0,
                    unattributed: 0,
                    conflict: false,
                    rejected: Vec::new(),
                    infer,
                    keys: Vec::new(),
                };
                t.rebuild_common();
                self.txn = Some(t);
            }
            Message::Origin { name: origin, .. } => {
                let t = self.txn.as_mut().ok_or_else(|| err("Origin outside a transaction".into()))?;
                t.origin = Some(origin);
                t.rebuild_common();
            }
            Message::Relation { oid, namespace, name: relname, replica_identity, columns, .. } => {
                if let Some(t) = self.txn.as_mut().filter(|t| t.final_lsn == ABORT_SENTINEL_LSN) {
                    if !t.saved_relations.iter().any(|(o, _)| *o == oid) {
                        t.saved_relations.push((oid, self.relations.save(oid)));
                    }
                }
                self.relations.update(oid, namespace, relname, replica_identity, columns);
            }
            Message::Delete { relid, old, .. } => {
                let t = self.txn.as_mut().ok_or_else(|| err("Delete outside a transaction".into()))?;
                let rel = self
                    .relations
                    .get(relid)
                    .ok_or_else(|| err(format!("relation OID {relid} was never described by a Relation message")))?;
                let Some(w) = rel.watched else {
                    return Ok(Step::Continue);
                };
                let vals = &old.tuple.columns;
                if vals.len() != rel.columns.len() {
                    return Err(err(format!(
                        "old tuple of {} has {} columns, its Relation message described {}",
                        rel.name.qualified(),
                        vals.len(),
                        rel.columns.len()
                    )));
                }
                note_rename(&mut self.relations, t, w, lsn, out);
                if t.skip {
                    return Ok(Step::Continue);
                }
                let Some(rel) = self.relations.get(relid) else {
                    return Err(err(format!("relation OID {relid} vanished from the relation cache")));
                };
                let row_start = out.len();
                out.extend_from_slice(&rel.delete_prefix);
                push_u64(out, u64::from(t.xid));
                out.extend_from_slice(b",\"lsn\":");
                push_lsn(out, lsn);
                out.extend_from_slice(&t.common);
                out.extend_from_slice(b",\"key\":");
                let key_cols = match old.kind {
                    OldKind::Key => Some(&rel.identity_cols),
                    OldKind::Old => rel.pk_cols.as_ref(),
                };
                if let (true, Some([i])) = (t.infer && t.keys.len() < MAX_KEYS, key_cols.map(Vec::as_slice)) {
                    if let Some(Value::Text(v)) = vals.get(*i) {
                        t.keys.push(String::from_utf8_lossy(v).into_owned());
                    }
                }
                match key_cols {
                    Some(cols) => push_object(out, cols.iter().map(|&i| (&rel.columns[i].name_json[..], &vals[i]))),
                    None => out.extend_from_slice(b"null"),
                }
                out.extend_from_slice(b",\"old\":");
                match old.kind {
                    OldKind::Old => {
                        push_object(out, rel.columns.iter().zip(vals.iter()).map(|(c, v)| (&c.name_json[..], v)))
                    }
                    OldKind::Key => out.extend_from_slice(b"null"),
                }
                out.extend_from_slice(b",\"session\":");
                self.pending = Some(Pending { lsn, start: row_start, key: PendingKey::Rel(relid) });
                t.deletes += 1;
            }
            Message::Truncate { relids, cascade, restart_identity, .. } => {
                let t = self.txn.as_mut().ok_or_else(|| err("Truncate outside a transaction".into()))?;
                // The watched relations it truncated (each once) and the watched tables they belong to.
                let mut seen: Vec<u32> = Vec::with_capacity(relids.len());
                let mut tables: Vec<usize> = Vec::new();
                for relid in relids {
                    let rel = self.relations.get(relid).ok_or_else(|| {
                        err(format!("relation OID {relid} was never described by a Relation message"))
                    })?;
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
                    return Ok(Step::Continue);
                }
                let row_start = out.len();
                out.extend_from_slice(b"{\"type\":\"truncate\",\"tables\":[");
                for (i, &w) in tables.iter().enumerate() {
                    if i > 0 {
                        out.extend_from_slice(b",");
                    }
                    push_str(out, &self.relations.table(w).current.qualified());
                }
                out.extend_from_slice(b"],\"relations\":[");
                for (i, relid) in seen.iter().enumerate() {
                    let Some(rel) = self.relations.get(*relid) else { continue };
                    let Some(w) = rel.watched else { continue };
                    if i > 0 {
                        out.extend_from_slice(b",");
                    }
                    out.extend_from_slice(b"{");
                    self.relations.push_reference(out, w, rel);
                    out.extend_from_slice(b"}");
                }
                out.extend_from_slice(b"],\"xid\":");
                push_u64(out, u64::from(t.xid));
                out.extend_from_slice(b",\"lsn\":");
                push_lsn(out, lsn);
                out.extend_from_slice(&t.common);
                out.extend_from_slice(if cascade { b",\"cascade\":true" } else { b",\"cascade\":false" });
                out.extend_from_slice(if restart_identity {
                    b",\"restart_identity\":true"
                } else {
                    b",\"restart_identity\":false"
                });
                out.extend_from_slice(b",\"session\":");
                self.pending = Some(Pending { lsn, start: row_start, key: PendingKey::Tables(tables) });
                t.truncates += 1;
            }
            Message::Commit { commit_lsn, end_lsn, commit_time, .. } => {
                let mut t = self.txn.take().ok_or_else(|| err("Commit outside a transaction".into()))?;
                if commit_lsn != t.final_lsn {
                    return Err(err(format!(
                        "Commit of xid {} at {commit_lsn} but its Begin announced {}",
                        t.xid, t.final_lsn
                    )));
                }
                // An aborted attempt's Relation messages never counted as sent (see ABORT_SENTINEL_LSN).
                for (oid, saved) in t.saved_relations.drain(..).rev() {
                    self.relations.restore(oid, saved);
                }
                let wrote = !t.skip && (t.deletes > 0 || t.truncates > 0);
                if wrote {
                    out.extend_from_slice(b"{\"type\":\"commit\",\"xid\":");
                    push_u64(out, u64::from(t.xid));
                    out.extend_from_slice(b",\"commit_lsn\":");
                    push_lsn(out, commit_lsn);
                    out.extend_from_slice(b",\"end_lsn\":");
                    push_lsn(out, end_lsn);
                    out.extend_from_slice(b",\"commit_time\":");
                    push_str(out, &format_pg_time(commit_time));
                    out.extend_from_slice(b",\"origin\":");
                    match &t.origin {
                        Some(o) => push_str(out, o),
                        None => out.extend_from_slice(b"null"),
                    }
                    out.extend_from_slice(b",\"deletes\":");
                    push_u64(out, t.deletes);
                    out.extend_from_slice(b",\"truncates\":");
                    push_u64(out, t.truncates);
                    out.extend_from_slice(b",\"session\":");
                    match &t.first_session {
                        Some(s) => out.extend_from_slice(&s.json),
                        None => out.extend_from_slice(b"null"),
                    }
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
                    out.extend_from_slice(b",\"attribution\":");
                    push_str(out, attribution);
                    // Inference for the rows without a session; why there is none when nothing named them.
                    let mut named = t.unattributed == 0;
                    let inference = match &self.attributor.activity {
                        Some(m) if t.infer && t.unattributed > 0 => m.infer(t.xid, commit_time, &t.keys),
                        _ => None,
                    };
                    if t.unattributed > 0 {
                        match &inference {
                            Some(Inference::Inferred { json, named: one }) => {
                                out.extend_from_slice(b",\"inferred\":");
                                out.extend_from_slice(json);
                                named = *one;
                            }
                            Some(Inference::Unattributed(reason)) if t.first_session.is_none() => {
                                out.extend_from_slice(b",\"unattributed_reason\":");
                                push_str(out, reason);
                            }
                            _ => {}
                        }
                    }
                    if let Some(i) = inference {
                        self.last_inference = Some((t.xid, i));
                    }
                    self.written_transactions += 1;
                    if !named {
                        self.unnamed_transactions += 1;
                    }
                    if t.conflict {
                        out.extend_from_slice(b",\"attribution_conflict\":true");
                    }
                    if !t.rejected.is_empty() {
                        out.extend_from_slice(b",\"rejected_attribution_messages\":[");
                        for (i, r) in t.rejected.iter().enumerate() {
                            if i > 0 {
                                out.extend_from_slice(b",");
                            }
                            push_str(out, r);
                        }
                        out.extend_from_slice(b"]");
                    }
                    out.extend_from_slice(b"}\n");
                }
                return Ok(Step::Committed {
                    end_lsn,
                    wrote,
                    deletes: if wrote { t.deletes } else { 0 },
                    truncates: if wrote { t.truncates } else { 0 },
                    commit_time,
                });
            }
            Message::LogicalMessage { transactional, prefix, content, .. } if prefix == TRIGGER_PREFIX => {
                let Some(t) = self.txn.as_mut() else {
                    if !transactional {
                        self.rejected_messages += 1;
                        tracing::warn!("at LSN {lsn}: non-transactional message with the walwitness prefix ignored (not from the trigger)");
                    }
                    return Ok(Step::Continue);
                };
                let Some(verifier) = self.attributor.verifier.as_ref() else {
                    return Ok(Step::Continue);
                };
                match verifier.verify(&content) {
                    Ok(p) if p.xid % (1 << 32) != u64::from(t.xid) => {
                        t.reject(lsn, format!("signed for xid {} but found in xid {}", p.xid, t.xid));
                        self.rejected_messages += 1;
                    }
                    Ok(p) => {
                        let mut session = p.session();
                        if let Some(a) = &t.activity {
                            let trig = SessionJson::new(&session);
                            if !trig.same_backend(a) {
                                session.conflict = serde_json::from_slice::<Session>(&a.json).ok().map(Box::new);
                                t.conflict = true;
                            }
                        }
                        // Keyed like the relation cache: by OID, or (older payloads) by the name in the
                        // lossless form the stream's names are decoded to.
                        let key = match p.relid {
                            Some(oid) => format!("#{oid}"),
                            None => {
                                format!("{}.{}", lossless_name(p.schema.as_bytes()), lossless_name(p.table.as_bytes()))
                            }
                        };
                        t.trigger.insert(key, Arc::new(SessionJson::new(&session)));
                    }
                    Err(reason) => {
                        t.reject(lsn, reason);
                        self.rejected_messages += 1;
                    }
                }
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
    out.extend_from_slice(b"{\"type\":\"relation_renamed\",\"oid\":");
    match st.oid {
        Some(o) => push_u64(out, u64::from(o)),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"table\":");
    push_str(out, &st.current.qualified());
    out.extend_from_slice(b",");
    st.current.push_fields(out);
    out.extend_from_slice(b",\"previous_table\":");
    push_str(out, &previous.qualified());
    out.extend_from_slice(b",\"previous_schema\":");
    push_str(out, &previous.schema);
    out.extend_from_slice(b",\"previous_name\":");
    push_str(out, &previous.name);
    out.extend_from_slice(b",\"xid\":");
    push_u64(out, u64::from(t.xid));
    out.extend_from_slice(b",\"lsn\":");
    push_lsn(out, lsn);
    out.extend_from_slice(&t.common);
    out.extend_from_slice(b"}\n");
}

fn push_object<'a>(out: &mut BytesMut, fields: impl Iterator<Item = (&'a [u8], &'a Value)>) {
    out.extend_from_slice(b"{");
    for (i, (name, v)) in fields.enumerate() {
        if i > 0 {
            out.extend_from_slice(b",");
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b":");
        push_value(out, v);
    }
    out.extend_from_slice(b"}");
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

    fn payload(xid: u64, pid: i32) -> String {
        format!(
            r#"{{"v":1,"xid":{xid},"pid":{pid},"backend_start":null,"user":"app","role":"none","application_name":"cron","client_addr":null,"client_port":null,"query":"DELETE FROM cache","query_truncated":false,"xact_start":null,"statement_start":null,"trigger_depth":0,"schema":"public","table":"cache","op":"DELETE"}}"#
        )
    }

    fn msg(lsn: u64, content: Bytes) -> Message {
        Message::LogicalMessage { xid: None, transactional: true, lsn: Lsn(lsn), prefix: "walwitness".into(), content }
    }

    #[test]
    fn trigger_session_covers_its_statement_even_when_the_first_row_ties_with_it() {
        let (i, o) = pads(&[3u8; 32]);
        let v = Verifier::from_pads(i.clone(), o.clone());
        let attributor = Attributor { activity: None, verifier: Some(Arc::new(Verifier::from_pads(i, o))) };
        let mut asm = Assembler::new(watch(), Lsn(0), attributor);
        // The first row's start LSN equals the message's end LSN, and pgoutput sent the row first.
        let (out, _) = run(
            &mut asm,
            vec![
                (0, begin(7, 0x100)),
                (0, rel(ReplicaIdentity::Default, false)),
                (0x40, del(OldKind::Key, "a", None)),
                (0x40, msg(0x40, signed(&v, &payload(7 + (5 << 32), 99)))),
                (0x50, del(OldKind::Key, "b", None)),
                (0x100, commit(0x100, 0x130)),
            ],
        );
        let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3);
        for l in &lines {
            assert_eq!(l["session"]["pid"], 99, "{l}");
            assert_eq!(l["session"]["attributed_by"], "trigger");
        }
        assert_eq!(lines[2]["attribution"], "trigger");
    }

    #[test]
    fn forged_and_replayed_messages_are_rejected_and_flagged() {
        let (i, o) = pads(&[3u8; 32]);
        let v = Verifier::from_pads(i.clone(), o.clone());
        let attributor = Attributor { activity: None, verifier: Some(Arc::new(Verifier::from_pads(i, o))) };
        let mut asm = Assembler::new(watch(), Lsn(0), attributor);
        let (other_i, other_o) = pads(&[4u8; 32]);
        let forger = Verifier::from_pads(other_i, other_o);
        let (out, _) = run(
            &mut asm,
            vec![
                (0, begin(7, 0x100)),
                (0, rel(ReplicaIdentity::Default, false)),
                (0x10, msg(0x10, signed(&forger, &payload(7, 1)))),
                // Validly signed, but for another transaction: a replay.
                (0x20, msg(0x20, signed(&v, &payload(8, 2)))),
                (0x50, del(OldKind::Key, "a", None)),
                (0x100, commit(0x100, 0x130)),
            ],
        );
        let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[0]["session"], serde_json::Value::Null);
        let rejected = lines[1]["rejected_attribution_messages"].as_array().unwrap();
        assert_eq!(rejected.len(), 2);
        assert!(rejected[0].as_str().unwrap().contains("does not match"));
        assert!(rejected[1].as_str().unwrap().contains("signed for xid 8"));
        assert_eq!(asm.rejected_messages, 2);
    }

    #[test]
    fn activity_and_trigger_disagreeing_is_flagged_not_hidden() {
        let (i, o) = pads(&[3u8; 32]);
        let v = Verifier::from_pads(i.clone(), o.clone());
        let map = Arc::new(ActivityMap::new());
        map.record(
            std::time::Instant::now(),
            vec![(7, Session { attributed_by: "activity".into(), pid: 555, ..Default::default() })],
        );
        let attributor = Attributor { activity: Some(map), verifier: Some(Arc::new(Verifier::from_pads(i, o))) };
        let mut asm = Assembler::new(watch(), Lsn(0), attributor);
        let (out, _) = run(
            &mut asm,
            vec![
                (0, begin(7, 0x100)),
                (0, rel(ReplicaIdentity::Default, false)),
                (0x10, msg(0x10, signed(&v, &payload(7, 99)))),
                (0x50, del(OldKind::Key, "a", None)),
                (0x100, commit(0x100, 0x130)),
            ],
        );
        let lines: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines[0]["session"]["pid"], 99, "the trigger wins");
        assert_eq!(lines[0]["session"]["conflict"]["pid"], 555, "the activity view is kept");
        assert_eq!(lines[1]["attribution_conflict"], true);
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

    fn lines(out: &str) -> Vec<serde_json::Value> {
        out.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
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
