//! Transactions that arrive before they are final: streamed in-progress transactions (Stream Start …
//! Stream Stop blocks, then Stream Commit or Stream Abort) and prepared transactions (two-phase: Begin
//! Prepare … Prepare, then COMMIT / ROLLBACK PREPARED).
//!
//! Their messages are kept in a spool file (`sink::spool`, bounded memory) until they are final. At
//! commit the spool is replayed through the ordinary `Assembler` as a synthesized Begin … Commit
//! carrying the commit LSN and time that only then became known, so the records are byte-for-byte
//! those of a non-streamed transaction (plus `gid` on the commit record of a prepared one). The log
//! therefore stays contiguous per transaction and ends each with its commit.
//!
//! Subtransaction aborts cut the spool exactly as PostgreSQL's apply worker does (`worker.c`
//! `subxact_info_add` / `stream_abort_internal`): the spool offset of each subxid's first change is
//! remembered; Stream Abort of subxid ≠ xid truncates the spool there and forgets the subxacts added
//! after it; an unknown subxid (a subtransaction without changes) changes nothing. Filtering on the
//! `[xid]` field would be wrong: messages carry the top-level xid, nested subtransactions other xids.
//!
//! With `--include-aborted`, what an abort discards is rendered first as `aborted_delete` /
//! `aborted_truncate` records closed by an `abort` record (see `sink::record`).
//!
//! Only Relation, Delete, Truncate, walwitness's own logical messages and Origin are spooled: inserts,
//! updates and types are never evidence; they still mark where a subtransaction's first change is.
use std::collections::HashMap;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use crate::attribution::activity::ActivityMap;
use crate::attribution::trigger::PREFIX as TRIGGER_PREFIX;
use crate::protocol::pgoutput::{self, Message, ParseOptions};
use crate::protocol::Lsn;
use crate::sink::prepared::{self, PreparedMeta};
use crate::sink::record::{format_pg_time, push_lsn, push_str, push_u64};
use crate::sink::spool::{Spool, SpoolDir, SpoolReader};

/// Commit position and time written into an aborted transaction's synthesized Begin. No real commit
/// has it, so the rows rendered for it are recognised and rewritten (`rewrite_aborted`); its
/// final LSN is also above any resume point, so the Assembler never skips an abort's rows.
use crate::decode::ABORT_SENTINEL_LSN;
const ABORT_SENTINEL_TIME: i64 = 0;

#[derive(Debug, thiserror::Error)]
#[error("at LSN {lsn}, pgoutput {message} message: {reason}")]
pub struct SpoolError {
    pub lsn: Lsn,
    pub message: &'static str,
    pub reason: String,
}

/// One transaction that is not final yet.
struct Held {
    xid: u32,
    spool: Spool,
    /// Messages were spooled from a stream block, so they carry the `[xid]` field.
    in_stream: bool,
    /// (subxid, spool offset of its first change), in the order first seen.
    subxacts: Vec<(u32, u64)>,
    /// The first Relation message per relation, replayed before the spool: a subtransaction abort may
    /// cut the one the server sent, and the server does not send it again in the same transaction.
    relations: Vec<(u32, Lsn, Bytes)>,
    origin: Option<String>,
    gid: Option<String>,
    /// The highest position that was acknowledged when it started: a prepared transaction keeps
    /// acknowledgements at or below it, so a restart decodes its PREPARE again.
    ack_cap: Lsn,
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
    dir: SpoolDir,
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
        let name = msg.type_name();
        let err = |reason: String| SpoolError { lsn, message: name, reason };
        let io = |what: &str, e: std::io::Error| {
            SpoolError {
            lsn,
            message: name,
            reason: format!(
                "cannot {what} the spool file of a streamed or prepared transaction in {}: {e}; free space there and run the same command again",
                self.dir_name
            ),
        }
        };
        // Inside a stream block or a prepare, data messages belong to the held transaction.
        if let Some(top) = self.block.or(self.preparing) {
            let is_data = matches!(
                msg,
                Message::Origin { .. }
                    | Message::Relation { .. }
                    | Message::Type { .. }
                    | Message::Insert { .. }
                    | Message::Update { .. }
                    | Message::Delete { .. }
                    | Message::Truncate { .. }
                    | Message::LogicalMessage { .. }
            );
            if is_data {
                let Some(h) = self.open.get_mut(&top) else {
                    return Err(err(format!("transaction {top} is not open")));
                };
                match &msg {
                    Message::Origin { name: o, .. } => h.origin = Some(o.clone()),
                    Message::Relation { xid, oid, .. } => {
                        h.subxact_add(*xid);
                        if !h.relations.iter().any(|r| r.0 == *oid) {
                            h.relations.push((*oid, lsn, raw.clone()));
                        }
                        h.spool.append(lsn, raw).map_err(|e| io("write", e))?;
                    }
                    Message::Type { xid, .. } | Message::Insert { xid, .. } | Message::Update { xid, .. } => {
                        h.subxact_add(*xid)
                    }
                    Message::Delete { xid, .. } | Message::Truncate { xid, .. } => {
                        h.subxact_add(*xid);
                        h.spool.append(lsn, raw).map_err(|e| io("write", e))?;
                    }
                    Message::LogicalMessage { transactional: true, prefix, .. } if prefix == TRIGGER_PREFIX => {
                        h.spool.append(lsn, raw).map_err(|e| io("write", e))?;
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
                return Ok(Route::Held);
            }
        }
        match msg {
            Message::StreamStart { xid, first_segment } => {
                if let Some(b) = self.block {
                    return Err(err(format!("Stream Start of xid {xid} inside the stream block of xid {b}")));
                }
                if first_segment || !self.open.contains_key(&xid) {
                    if !first_segment {
                        return Err(err(format!(
                            "Stream Start continues transaction {xid}, whose first block was not received; this is a bug, please report it, and run the same command again to resume"
                        )));
                    }
                    let spool = self.dir.create(xid).map_err(|e| io("create", e))?;
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
            Message::StreamStop => {
                if self.block.take().is_none() {
                    return Err(err("Stream Stop outside a stream block".into()));
                }
                Ok(Route::Held)
            }
            Message::StreamCommit { xid, commit_lsn, end_lsn, commit_time, .. } => {
                let h = self.open.remove(&xid).ok_or_else(|| {
                    err(format!(
                        "Stream Commit of transaction {xid}, which was never streamed; this is a bug, please report it"
                    ))
                })?;
                let kind = ReplayKind::Commit { commit_lsn, end_lsn, commit_time };
                Ok(Route::Replay(Box::new(Replay::new(h, 0, kind).map_err(|e| io("read", e))?)))
            }
            Message::StreamAbort { xid, subxid, abort_lsn, abort_time } => {
                let abort_lsn = abort_lsn.filter(|l| *l != Lsn::INVALID);
                let kind =
                    ReplayKind::Abort { subxid, abort_lsn, abort_time: abort_time.filter(|_| abort_lsn.is_some()) };
                if xid == subxid {
                    return match self.open.remove(&xid) {
                        Some(h) if self.include_aborted && !h.spool.is_empty() => {
                            Ok(Route::Replay(Box::new(Replay::new(h, 0, kind).map_err(|e| io("read", e))?)))
                        }
                        _ => Ok(Route::Held),
                    };
                }
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
                    route = Route::Replay(Box::new(Replay::new(part, 0, kind).map_err(|e| io("read", e))?));
                }
                h.spool.truncate(offset).map_err(|e| io("truncate", e))?;
                Ok(route)
            }
            Message::BeginPrepare { xid, gid, .. } if self.two_phase => {
                let spool = self.dir.create(xid).map_err(|e| io("create", e))?;
                let mut h = held(xid, spool, false, acked);
                h.gid = Some(gid);
                self.open.insert(xid, h);
                self.preparing = Some(xid);
                Ok(Route::Held)
            }
            Message::Prepare { xid, gid, .. } | Message::StreamPrepare { xid, gid, .. } if self.two_phase => {
                if name == "Prepare" && self.preparing.take() != Some(xid) {
                    return Err(err(format!("Prepare of xid {xid} without its Begin Prepare")));
                }
                let mut h = self
                    .open
                    .remove(&xid)
                    .ok_or_else(|| err(format!("Prepare of xid {xid}, which was never received")))?;
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
                    prepared::persist(&self.dir, &mut h.spool, &meta).map_err(|e| io("make durable", e))?;
                } else {
                    // From now on it waits for COMMIT PREPARED: keep the restart point before it.
                    h.ack_cap = h.ack_cap.min(acked);
                }
                self.prepared.insert(xid, h);
                Ok(Route::Held)
            }
            Message::CommitPrepared { xid, gid, commit_lsn, end_lsn, commit_time, .. } if self.two_phase => {
                match self.prepared.remove(&xid) {
                    Some(mut h) => {
                        h.gid = Some(gid);
                        let kind = ReplayKind::Commit { commit_lsn, end_lsn, commit_time };
                        Ok(Route::Replay(Box::new(Replay::new(h, 0, kind).map_err(|e| io("read", e))?)))
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
                match self.prepared.remove(&xid) {
                    Some(mut h) if self.include_aborted && !h.spool.is_empty() => {
                        h.gid = Some(gid);
                        let kind = ReplayKind::Abort {
                            subxid: xid,
                            abort_lsn: Some(rollback_end_lsn),
                            abort_time: Some(rollback_time),
                        };
                        Ok(Route::Replay(Box::new(Replay::new(h, 0, kind).map_err(|e| io("read", e))?)))
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
            other => Ok(Route::Pass(other)),
        }
    }
}

fn held(xid: u32, spool: Spool, in_stream: bool, ack_cap: Lsn) -> Held {
    Held { xid, spool, in_stream, subxacts: Vec::new(), relations: Vec::new(), origin: None, gid: None, ack_cap }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayKind {
    Commit { commit_lsn: Lsn, end_lsn: Lsn, commit_time: i64 },
    Abort { subxid: u32, abort_lsn: Option<Lsn>, abort_time: Option<i64> },
}

/// A final transaction, as the message sequence the Assembler expects: Begin, Origin, Relations,
/// the spooled messages, Commit.
pub struct Replay {
    pub xid: u32,
    pub kind: ReplayKind,
    gid: Option<String>,
    stage: u8,
    origin: Option<String>,
    relations: std::vec::IntoIter<(u32, Lsn, Bytes)>,
    reader: SpoolReader,
    in_stream: bool,
    /// Kept so the file lives until the replay is done; a scratch one is deleted when the replay is
    /// dropped, a durable one handed to `Spooled::retire`.
    spool: Option<Spool>,
}

impl Replay {
    fn new(mut h: Held, from: u64, kind: ReplayKind) -> std::io::Result<Replay> {
        let reader = h.spool.read_from(from)?;
        Ok(Replay {
            xid: h.xid,
            kind,
            gid: h.gid.take(),
            stage: 0,
            origin: h.origin.take(),
            relations: std::mem::take(&mut h.relations).into_iter(),
            reader,
            in_stream: h.in_stream,
            spool: Some(h.spool),
        })
    }

    /// The commit LSN, for a commit.
    pub fn commit_lsn(&self) -> Option<Lsn> {
        match self.kind {
            ReplayKind::Commit { commit_lsn, .. } => Some(commit_lsn),
            ReplayKind::Abort { .. } => None,
        }
    }

    /// The next message to feed, with its LSN.
    pub fn next_message(&mut self) -> Result<Option<(Lsn, Message)>, SpoolError> {
        let (final_lsn, commit_time, end_lsn) = match self.kind {
            ReplayKind::Commit { commit_lsn, end_lsn, commit_time } => (commit_lsn, commit_time, end_lsn),
            ReplayKind::Abort { .. } => (ABORT_SENTINEL_LSN, ABORT_SENTINEL_TIME, ABORT_SENTINEL_LSN),
        };
        let opts = ParseOptions { in_stream: self.in_stream, stream_abort_has_lsn: false };
        let err = |reason: String| SpoolError { lsn: final_lsn, message: "spooled", reason };
        loop {
            match self.stage {
                0 => {
                    self.stage = 1;
                    return Ok(Some((Lsn::INVALID, Message::Begin { final_lsn, commit_time, xid: self.xid })));
                }
                1 => {
                    self.stage = 2;
                    if let Some(name) = self.origin.take() {
                        return Ok(Some((Lsn::INVALID, Message::Origin { origin_lsn: Lsn::INVALID, name })));
                    }
                }
                2 => match self.relations.next() {
                    Some((_, lsn, raw)) => {
                        let m = pgoutput::parse(&raw, opts).map_err(|e| err(format!("spooled Relation: {e}")))?;
                        return Ok(Some((lsn, m)));
                    }
                    None => self.stage = 3,
                },
                3 => match self.reader.next_record() {
                    Ok(Some((lsn, raw))) => {
                        let m = pgoutput::parse(&raw, opts).map_err(|e| err(format!("spooled message: {e}")))?;
                        return Ok(Some((lsn, m)));
                    }
                    Ok(None) => self.stage = 4,
                    Err(e) => {
                        return Err(err(format!(
                            "cannot read back the spool of transaction {}: {e}; run the same command again",
                            self.xid
                        )))
                    }
                },
                4 => {
                    self.stage = 5;
                    return Ok(Some((
                        end_lsn,
                        Message::Commit { flags: 0, commit_lsn: final_lsn, end_lsn, commit_time },
                    )));
                }
                _ => return Ok(None),
            }
        }
    }

    /// Turns complete row records the Assembler rendered into what the log gets.
    pub fn finish_rows(&self, rendered: Bytes) -> Bytes {
        match self.kind {
            ReplayKind::Commit { .. } => rendered,
            ReplayKind::Abort { abort_lsn, abort_time, .. } => rewrite_aborted(&rendered, abort_lsn, abort_time),
        }
    }

    /// Like `finish_rows` for the last bytes, which end with the commit record (if anything was
    /// written): a prepared transaction's commit gets its `gid`; an abort's becomes the `abort` record.
    pub fn finish_last(&self, rendered: Bytes) -> Bytes {
        let Some(cut) = last_line_start(&rendered) else { return self.finish_rows(rendered) };
        let last = &rendered[cut..];
        if !last.starts_with(b"{\"type\":\"commit\",") || !last.ends_with(b"}\n") {
            return self.finish_rows(rendered);
        }
        let rows = self.finish_rows(rendered.slice(..cut));
        let mut out = BytesMut::with_capacity(rendered.len() + 96);
        out.extend_from_slice(&rows);
        match self.kind {
            ReplayKind::Commit { .. } => {
                out.extend_from_slice(&last[..last.len() - 2]);
                if let Some(g) = &self.gid {
                    out.extend_from_slice(b",\"gid\":");
                    push_str(&mut out, g);
                }
                out.extend_from_slice(b"}\n");
            }
            ReplayKind::Abort { subxid, abort_lsn, abort_time } => {
                // The commit record from ",\"origin\":" on (origin, counts, session, attribution) is
                // what the abort record says too; what comes before it is the sentinel commit data.
                let Some(o) = memchr::memmem::find(last, b",\"origin\":") else { return rendered };
                out.extend_from_slice(b"{\"type\":\"abort\",\"xid\":");
                push_u64(&mut out, u64::from(self.xid));
                out.extend_from_slice(b",\"subxid\":");
                push_u64(&mut out, u64::from(subxid));
                push_abort_fields(&mut out, abort_lsn, abort_time);
                out.extend_from_slice(&last[o..last.len() - 2]);
                if let Some(g) = &self.gid {
                    out.extend_from_slice(b",\"gid\":");
                    push_str(&mut out, g);
                }
                out.extend_from_slice(b"}\n");
            }
        }
        out.freeze()
    }
}

fn last_line_start(b: &[u8]) -> Option<usize> {
    if b.is_empty() {
        return None;
    }
    Some(b[..b.len() - 1].iter().rposition(|&c| c == b'\n').map_or(0, |i| i + 1))
}

fn push_abort_fields(out: &mut BytesMut, abort_lsn: Option<Lsn>, abort_time: Option<i64>) {
    out.extend_from_slice(b",\"abort_lsn\":");
    match abort_lsn {
        Some(l) => push_lsn(out, l),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"abort_time\":");
    match abort_time {
        Some(t) => push_str(out, &format_pg_time(t)),
        None => out.extend_from_slice(b"null"),
    }
}

/// `delete`/`truncate` lines rendered with the sentinel commit data become `aborted_delete` /
/// `aborted_truncate` with `commit_lsn`/`commit_time` null and `abort_lsn`/`abort_time`.
fn rewrite_aborted(rendered: &[u8], abort_lsn: Option<Lsn>, abort_time: Option<i64>) -> Bytes {
    let mut sentinel = BytesMut::new();
    sentinel.extend_from_slice(b",\"commit_lsn\":");
    push_lsn(&mut sentinel, ABORT_SENTINEL_LSN);
    sentinel.extend_from_slice(b",\"commit_time\":");
    push_str(&mut sentinel, &format_pg_time(ABORT_SENTINEL_TIME));
    let mut replacement = BytesMut::new();
    replacement.extend_from_slice(b",\"commit_lsn\":null,\"commit_time\":null");
    push_abort_fields(&mut replacement, abort_lsn, abort_time);
    let finder = memchr::memmem::Finder::new(&sentinel[..]);
    let mut out = BytesMut::with_capacity(rendered.len() + rendered.len() / 8);
    for line in rendered.split_inclusive(|&c| c == b'\n') {
        let rest = if let Some(r) = line.strip_prefix(b"{\"type\":\"delete\",".as_slice()) {
            out.extend_from_slice(b"{\"type\":\"aborted_delete\",");
            r
        } else if let Some(r) = line.strip_prefix(b"{\"type\":\"truncate\",".as_slice()) {
            out.extend_from_slice(b"{\"type\":\"aborted_truncate\",");
            r
        } else if let Some(r) = line.strip_prefix(b"{\"type\":\"statement\",".as_slice()) {
            out.extend_from_slice(b"{\"type\":\"aborted_statement\",");
            r
        } else {
            out.extend_from_slice(line);
            continue;
        };
        match finder.find(rest) {
            Some(i) => {
                out.extend_from_slice(&rest[..i]);
                out.extend_from_slice(&replacement);
                out.extend_from_slice(&rest[i + sentinel.len()..]);
            }
            None => out.extend_from_slice(rest),
        }
    }
    out.freeze()
}

#[cfg(test)]
mod tests;

/// START_REPLICATION options for streaming and two-phase, and whether Stream Abort then carries the
/// abort LSN and time. `parallel` (proto 4, 16+) is asked for only for those two fields: walwitness
/// applies nothing in parallel, and the server sends the same messages otherwise.
pub fn replication_options(proto: u32, two_phase: bool) -> (String, bool) {
    let parallel = proto >= 4;
    let mut s = format!(", streaming '{}'", if parallel { "parallel" } else { "on" });
    if two_phase && proto >= 3 {
        s.push_str(", two_phase 'on'");
    }
    (s, parallel)
}

/// Startup parameters of the replication connection: settings the walsender's decoding reads.
pub fn startup_params(opts: &super::CaptureOptions) -> Vec<(&'static str, String)> {
    let mut p = Vec::new();
    if let Some(bytes) = opts.logical_decoding_work_mem {
        // The server's unit is kB; its minimum is 64kB (it refuses less with a clear error).
        p.push(("logical_decoding_work_mem", format!("{}kB", bytes.div_ceil(1024))));
    }
    if opts.stream_every_change {
        p.push(("debug_logical_replication_streaming", "immediate".to_owned()));
    }
    p
}
