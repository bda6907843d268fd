//! Transaction assembly: turns the pgoutput message sequence into forensic log records.
//!
//! Pure: messages in, bytes of JSON lines out. The pipeline (`pipeline`) feeds every decoded message
//! with the LSN from its XLogData header (for a change, the change's own LSN); the capture loop
//! forwards the bytes to the writer. Rows are written as they arrive — pgoutput sends a non-streamed transaction only after it
//! committed, and Begin already carries its commit LSN and time — so memory does not grow with the
//! size of a transaction. The commit record closes the transaction; a transaction cut short by a lost
//! connection is rolled back in the file by the writer (see `sink::writer`).
//!
//! Exactly-once: `resume_after` is the `end_lsn` of the last transaction the log already holds. The
//! server may send such transactions again after a restart (the slot's position is persisted only at
//! checkpoints); a transaction whose commit record starts below that LSN is recognised at Begin and
//! skipped whole.
//!
//! Here: the Assembler and one function per message; `txn` the transaction being assembled (its
//! brackets and row evidence), `evidence` the trigger's messages, `relations` the relation cache,
//! `pipeline` the path every received payload takes (parse, hold, assemble).
mod evidence;
pub mod pipeline;
pub mod relations;
#[cfg(test)]
mod tests;
mod txn;

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::BytesMut;

use crate::attribution::infer::Inference;
use crate::attribution::trigger::{widen_xid, PREFIX as TRIGGER_PREFIX};
use crate::attribution::Attributor;
use crate::protocol::pgoutput::{Column, Message, OldKind, OldTuple, ReplicaIdentity, Value};
use crate::protocol::Lsn;
use crate::sink::record;
use relations::{RelationCache, WatchList};
use txn::{Pending, PendingKey, Txn, MAX_KEYS};

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
