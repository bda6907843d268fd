//! Routing: which messages belong to a transaction that is not final yet, kept in its spool until it
//! is (see the module docs of `decode::pipeline`).
use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::replay::{Replay, ReplayKind};
use crate::attribution::activity::ActivityMap;
use crate::attribution::trigger::PREFIX as TRIGGER_PREFIX;
use crate::protocol::pgoutput::Message;
use crate::protocol::Lsn;
use crate::sink::prepared::{self, PreparedMeta};
use crate::sink::spool::{Spool, SpoolDir};

#[derive(Debug, thiserror::Error)]
#[error("at LSN {lsn}, pgoutput {message} message: {reason}")]
pub struct SpoolError {
    pub lsn: Lsn,
    pub message: &'static str,
    pub reason: String,
}

/// One transaction that is not final yet.
pub(super) struct Held {
    pub(super) xid: u32,
    pub(super) spool: Spool,
    /// Messages were spooled from a stream block, so they carry the `[xid]` field.
    pub(super) in_stream: bool,
    /// (subxid, spool offset of its first change), in the order first seen.
    pub(super) subxacts: Vec<(u32, u64)>,
    /// The first Relation message per relation, replayed before the spool: a subtransaction abort may
    /// cut the one the server sent, and the server does not send it again in the same transaction.
    pub(super) relations: Vec<(u32, Lsn, Bytes)>,
    pub(super) origin: Option<String>,
    pub(super) gid: Option<String>,
    /// The highest position that was acknowledged when it started: a prepared transaction keeps
    /// acknowledgements at or below it, so a restart decodes its PREPARE again.
    pub(super) ack_cap: Lsn,
}

impl Held {
    /// `subxact_info_add`: remember where a subtransaction's first change is.
    fn subxact_add(&mut self, xid: Option<u32>) {
        let Some(x) = xid else { return };
        if x == self.xid || x == 0 || self.subxacts.iter().rev().any(|s| s.0 == x) {
            return;
        }
        self.subxacts.push((x, self.spool.len()));
    }
}

/// What the capture loop does with a message.
pub enum Route {
    /// Not part of a held transaction: the Assembler handles it.
    Pass(Message),
    /// Spooled, or bookkeeping only.
    Held,
    /// A held transaction became final: replay it into the Assembler.
    Replay(Box<Replay>),
}

pub struct Spooled {
    pub(super) dir: SpoolDir,
    /// For messages (kept apart from `dir` so error paths do not borrow it).
    dir_name: String,
    /// Streamed (or being prepared) transactions, by top-level xid.
    open: HashMap<u32, Held>,
    /// Prepared, waiting for COMMIT / ROLLBACK PREPARED, by xid.
    prepared: HashMap<u32, Held>,
    /// Inside Stream Start … Stream Stop of this xid.
    block: Option<u32>,
    /// Inside Begin Prepare … Prepare of this xid.
    preparing: Option<u32>,
    include_aborted: bool,
    two_phase: bool,
    activity: Option<Arc<ActivityMap>>,
    /// Prepared transactions' spools are made durable at PREPARE (`sink::prepared`), so
    /// acknowledgements need not stay below them. Off when the log goes to standard output: nothing is
    /// durable then, and the next run could not find the spools.
    durable_prepared: bool,
    /// Durable spools of transactions already replayed, removed once the log is durable past the LSN.
    retired: Vec<(Lsn, u32, Spool)>,
}

impl Spooled {
    pub fn new(dir: SpoolDir, include_aborted: bool, two_phase: bool, activity: Option<Arc<ActivityMap>>) -> Self {
        Spooled {
            dir_name: dir.path().display().to_string(),
            dir,
            open: HashMap::new(),
            prepared: HashMap::new(),
            block: None,
            preparing: None,
            include_aborted,
            two_phase,
            activity,
            durable_prepared: false,
            retired: Vec::new(),
        }
    }

    /// Keeps prepared transactions durable from now on, and takes back those an earlier run left
    /// waiting for COMMIT PREPARED. Returns what was found damaged (and is not replayed).
    pub fn durable_prepared(&mut self) -> std::io::Result<Vec<String>> {
        self.durable_prepared = true;
        let found = prepared::load(&self.dir)?;
        for (m, spool) in found.intact {
            let mut h = held(m.xid, spool, m.in_stream, Lsn::INVALID);
            h.gid = Some(m.gid);
            h.origin = m.origin;
            h.relations = m.relations;
            self.prepared.insert(m.xid, h);
        }
        Ok(found.damaged)
    }

    /// A replayed transaction's durable spool stays until the log is durable past `lsn`.
    pub fn retire(&mut self, lsn: Lsn, r: Replay) {
        if let Some(spool) = r.spool.filter(Spool::is_durable) {
            self.retired.push((lsn, r.xid, spool));
        }
    }

    /// Removes the retired spools the log now covers.
    pub fn release(&mut self, durable: Lsn) {
        if self.retired.iter().all(|r| r.0 > durable) {
            return;
        }
        let (done, keep) = std::mem::take(&mut self.retired).into_iter().partition(|r| r.0 <= durable);
        self.retired = keep;
        for (_, xid, spool) in done {
            prepared::remove(&self.dir, xid, spool);
        }
    }

    /// The end of a capture, after the writer closed (everything queued is durable): durable prepared
    /// spools stay for the next run only if the slot does.
    pub fn finish(mut self, keep_prepared: bool) {
        for (_, xid, spool) in self.retired.drain(..) {
            prepared::remove(&self.dir, xid, spool);
        }
        if !keep_prepared {
            for (xid, h) in self.prepared.drain() {
                prepared::remove(&self.dir, xid, h.spool);
            }
        }
    }

    /// Whether data messages now carry the `[xid]` field.
    pub fn in_stream_block(&self) -> bool {
        self.block.is_some()
    }

    /// Whether a streamed transaction is open: keepalive positions must not be acknowledged then
    /// (like the apply worker, which only acks keepalives outside a streamed transaction).
    pub fn streams_open(&self) -> bool {
        self.block.is_some() || self.open.values().any(|h| h.in_stream)
    }

    /// Acknowledgements must stay at or below this while a prepared transaction waits: the server sends
    /// a PREPARE again only if it starts after the slot's confirmed position.
    pub fn ack_cap(&self) -> Option<Lsn> {
        let preparing = self.preparing.and_then(|x| self.open.get(&x));
        self.prepared.values().filter(|h| !h.spool.is_durable()).chain(preparing).map(|h| h.ack_cap).min()
    }

    /// Forgets what is held after a lost connection: the server sends unfinished transactions again
    /// from their start. Scratch spool files are deleted as they are dropped; durable prepared ones
    /// are kept, since the server may have been told it need not send them again.
    pub fn reset(&mut self) {
        self.open.clear();
        self.prepared.retain(|_, h| h.spool.is_durable());
        self.block = None;
        self.preparing = None;
    }

    /// Routes one decoded message; `raw` is its bytes (what is spooled), `lsn` its XLogData position and
    /// `acked` the highest position acknowledged so far.
    pub fn route(&mut self, lsn: Lsn, raw: &Bytes, msg: Message, acked: Lsn) -> Result<Route, SpoolError> {
        let at = At { lsn, name: msg.type_name() };
        // Inside a stream block or a prepare, data messages belong to the held transaction.
        if let Some(top) = self.block.or(self.preparing) {
            if is_data(&msg) {
                return self.hold(at, top, raw, msg);
            }
        }
        match msg {
            Message::StreamStart { xid, first_segment } => self.stream_start(at, xid, first_segment, acked),
            Message::StreamStop => {
                if self.block.take().is_none() {
                    return Err(at.err("Stream Stop outside a stream block".into()));
                }
                Ok(Route::Held)
            }
            Message::StreamCommit { xid, commit_lsn, end_lsn, commit_time, .. } => {
                let h = self.open.remove(&xid).ok_or_else(|| {
                    at.err(format!(
                        "Stream Commit of transaction {xid}, which was never streamed; this is a bug, please report it"
                    ))
                })?;
                let kind = ReplayKind::Commit { commit_lsn, end_lsn, commit_time };
                replay(at, &self.dir_name, h, kind)
            }
            Message::StreamAbort { xid, subxid, abort_lsn, abort_time } => {
                let abort_lsn = abort_lsn.filter(|l| *l != Lsn::INVALID);
                let kind =
                    ReplayKind::Abort { subxid, abort_lsn, abort_time: abort_time.filter(|_| abort_lsn.is_some()) };
                if xid == subxid {
                    return match self.open.remove(&xid) {
                        Some(h) if self.include_aborted && !h.spool.is_empty() => replay(at, &self.dir_name, h, kind),
                        _ => Ok(Route::Held),
                    };
                }
                self.subxact_abort(at, xid, subxid, kind)
            }
            Message::BeginPrepare { xid, gid, .. } if self.two_phase => {
                let spool = self.dir.create(xid).map_err(|e| at.io(&self.dir_name, "create", e))?;
                let mut h = held(xid, spool, false, acked);
                h.gid = Some(gid);
                self.open.insert(xid, h);
                self.preparing = Some(xid);
                Ok(Route::Held)
            }
            Message::Prepare { xid, gid, .. } | Message::StreamPrepare { xid, gid, .. } if self.two_phase => {
                self.prepare(at, xid, gid, acked)
            }
            Message::CommitPrepared { xid, gid, commit_lsn, end_lsn, commit_time, .. } if self.two_phase => {
                match self.prepared.remove(&xid) {
                    Some(mut h) => {
                        h.gid = Some(gid);
                        replay(at, &self.dir_name, h, ReplayKind::Commit { commit_lsn, end_lsn, commit_time })
                    }
                    None => {
                        crate::term::eprint_line(&format!(
                            "walwitness: warning: at LSN {commit_lsn}: COMMIT PREPARED '{gid}' (xid {xid}) committed a transaction whose PREPARE this capture never received (it was prepared before two-phase decoding started on the slot, or before the log began): its deletes are not in the log"
                        ));
                        Ok(Route::Held)
                    }
                }
            }
            Message::RollbackPrepared { xid, gid, rollback_end_lsn, rollback_time, .. } if self.two_phase => {
                self.rollback_prepared(at, xid, gid, rollback_end_lsn, rollback_time)
            }
            other => Ok(Route::Pass(other)),
        }
    }

    /// A data message of the held transaction `top`: spooled if it can be evidence, and where a
    /// subtransaction's first change is noted either way.
    fn hold(&mut self, at: At, top: u32, raw: &Bytes, msg: Message) -> Result<Route, SpoolError> {
        let Some(h) = self.open.get_mut(&top) else {
            return Err(at.err(format!("transaction {top} is not open")));
        };
        let io = |e| at.io(&self.dir_name, "write", e);
        match &msg {
            Message::Origin { name: o, .. } => h.origin = Some(o.clone()),
            Message::Relation { xid, oid, .. } => {
                h.subxact_add(*xid);
                if !h.relations.iter().any(|r| r.0 == *oid) {
                    h.relations.push((*oid, at.lsn, raw.clone()));
                }
                h.spool.append(at.lsn, raw).map_err(io)?;
            }
            Message::Type { xid, .. } | Message::Insert { xid, .. } | Message::Update { xid, .. } => {
                h.subxact_add(*xid)
            }
            Message::Delete { xid, .. } | Message::Truncate { xid, .. } => {
                h.subxact_add(*xid);
                h.spool.append(at.lsn, raw).map_err(io)?;
            }
            Message::LogicalMessage { transactional: true, prefix, .. } if prefix == TRIGGER_PREFIX => {
                h.spool.append(at.lsn, raw).map_err(io)?;
            }
            _ => {}
        }
        // In a prepared (non-streamed) transaction the server counts a Relation as sent for
        // good, and later transactions do not get it again: the relation cache needs it now.
        // A streamed one's counts only once it commits (pgoutput `cleanup_rel_sync_cache`),
        // and its replay brings it.
        if !h.in_stream && matches!(msg, Message::Relation { .. }) {
            return Ok(Route::Pass(msg));
        }
        Ok(Route::Held)
    }

    fn stream_start(&mut self, at: At, xid: u32, first_segment: bool, acked: Lsn) -> Result<Route, SpoolError> {
        if let Some(b) = self.block {
            return Err(at.err(format!("Stream Start of xid {xid} inside the stream block of xid {b}")));
        }
        if first_segment || !self.open.contains_key(&xid) {
            if !first_segment {
                return Err(at.err(format!(
                    "Stream Start continues transaction {xid}, whose first block was not received; this is a bug, please report it, and run the same command again to resume"
                )));
            }
            let spool = self.dir.create(xid).map_err(|e| at.io(&self.dir_name, "create", e))?;
            self.open.insert(xid, held(xid, spool, true, acked));
            // The transaction is still open on the server right now: ask the sampler to look at
            // pg_stat_activity at once, so a large cull gets its session.
            if let Some(a) = &self.activity {
                a.sample_now(xid);
            }
        }
        self.block = Some(xid);
        Ok(Route::Held)
    }

    /// Stream Abort of a subtransaction: cuts the spool where its first change is (see the module
    /// docs); with --include-aborted the cut part is replayed as an abort first.
    fn subxact_abort(&mut self, at: At, xid: u32, subxid: u32, kind: ReplayKind) -> Result<Route, SpoolError> {
        let io = |what: &str, e| at.io(&self.dir_name, what, e);
        let Some(h) = self.open.get_mut(&xid) else { return Ok(Route::Held) };
        let Some(i) = h.subxacts.iter().rposition(|s| s.0 == subxid) else { return Ok(Route::Held) };
        let offset = h.subxacts[i].1;
        h.subxacts.truncate(i);
        let mut route = Route::Held;
        if self.include_aborted && offset < h.spool.len() {
            // The replay needs the cut part after the spool goes on growing: copy it out first.
            let mut copy = self.dir.create(xid).map_err(|e| io("create", e))?;
            let mut r = h.spool.read_from(offset).map_err(|e| io("read", e))?;
            while let Some((l, b)) = r.next_record().map_err(|e| io("read", e))? {
                copy.append(l, &b).map_err(|e| io("write", e))?;
            }
            let mut part = held(xid, copy, true, h.ack_cap);
            part.relations = h.relations.clone();
            part.origin = h.origin.clone();
            route = replay(at, &self.dir_name, part, kind)?;
        }
        h.spool.truncate(offset).map_err(|e| io("truncate", e))?;
        Ok(route)
    }

    fn prepare(&mut self, at: At, xid: u32, gid: String, acked: Lsn) -> Result<Route, SpoolError> {
        if at.name == "Prepare" && self.preparing.take() != Some(xid) {
            return Err(at.err(format!("Prepare of xid {xid} without its Begin Prepare")));
        }
        let mut h =
            self.open.remove(&xid).ok_or_else(|| at.err(format!("Prepare of xid {xid}, which was never received")))?;
        h.gid = Some(gid);
        // Sent again (the slot was not acknowledged past it): the new copy replaces the old.
        if let Some(old) = self.prepared.remove(&xid) {
            prepared::remove(&self.dir, xid, old.spool);
        }
        if self.durable_prepared {
            let meta = PreparedMeta {
                xid,
                gid: h.gid.clone().unwrap_or_default(),
                in_stream: h.in_stream,
                origin: h.origin.clone(),
                relations: h.relations.clone(),
            };
            prepared::persist(&self.dir, &mut h.spool, &meta).map_err(|e| at.io(&self.dir_name, "make durable", e))?;
        } else {
            // From now on it waits for COMMIT PREPARED: keep the restart point before it.
            h.ack_cap = h.ack_cap.min(acked);
        }
        self.prepared.insert(xid, h);
        Ok(Route::Held)
    }

    fn rollback_prepared(
        &mut self,
        at: At,
        xid: u32,
        gid: String,
        rollback_end_lsn: Lsn,
        rollback_time: i64,
    ) -> Result<Route, SpoolError> {
        match self.prepared.remove(&xid) {
            Some(mut h) if self.include_aborted && !h.spool.is_empty() => {
                h.gid = Some(gid);
                let kind = ReplayKind::Abort {
                    subxid: xid,
                    abort_lsn: Some(rollback_end_lsn),
                    abort_time: Some(rollback_time),
                };
                replay(at, &self.dir_name, h, kind)
            }
            Some(h) => {
                // Nothing is written for it: the spool goes once the log is durable past the rollback.
                if h.spool.is_durable() {
                    self.retired.push((rollback_end_lsn, xid, h.spool));
                }
                Ok(Route::Held)
            }
            None => Ok(Route::Held),
        }
    }
}

/// Messages that belong to the held transaction when they come inside its stream block or prepare.
fn is_data(msg: &Message) -> bool {
    matches!(
        msg,
        Message::Origin { .. }
            | Message::Relation { .. }
            | Message::Type { .. }
            | Message::Insert { .. }
            | Message::Update { .. }
            | Message::Delete { .. }
            | Message::Truncate { .. }
            | Message::LogicalMessage { .. }
    )
}

/// A routed message's position and name, for its errors.
#[derive(Clone, Copy)]
struct At {
    lsn: Lsn,
    name: &'static str,
}

impl At {
    fn err(self, reason: String) -> SpoolError {
        SpoolError { lsn: self.lsn, message: self.name, reason }
    }

    /// A spool file could not be used: says where, and what to do.
    fn io(self, dir: &str, what: &str, e: std::io::Error) -> SpoolError {
        self.err(format!(
            "cannot {what} the spool file of a streamed or prepared transaction in {dir}: {e}; free space there and run the same command again"
        ))
    }
}

/// The transaction became final: its replay, from the start of its spool.
fn replay(at: At, dir: &str, h: Held, kind: ReplayKind) -> Result<Route, SpoolError> {
    Ok(Route::Replay(Box::new(Replay::new(h, 0, kind).map_err(|e| at.io(dir, "read", e))?)))
}

pub(super) fn held(xid: u32, spool: Spool, in_stream: bool, ack_cap: Lsn) -> Held {
    Held { xid, spool, in_stream, subxacts: Vec::new(), relations: Vec::new(), origin: None, gid: None, ack_cap }
}
