//! The replication loop: one `biased` select over signals, the deadline, the writer's durable
//! position, a status tick and the socket.
//!
//! Progress tracking: the only LSN ever sent to the server as flushed is the writer's durable LSN, which
//! is the `end_lsn` of the last commit whose lines are fsynced, or a keepalive position passed through the
//! writer while no transaction was open (so it is ordered after every byte before it). Acknowledging idle
//! keepalives is what keeps an idle watched table on a busy server from pinning WAL. Status updates go
//! out on a timer that never waits for the disk: pushing to a full writer queue keeps ticking.
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use super::acks::{Acks, Ticket};
use super::spooled;
use super::status::Progress;
use super::Outcome;
use crate::attribution::infer::Inference;
use crate::decode::pipeline::{Pipeline, PipelineError, Received, Replay, ReplayKind};
use crate::decode::Step;
use crate::error::{Exit, Failure};
use crate::pg::config::ConnSpec;
use crate::pg::conn::{CopyEvent, ReplicationConnection};
use crate::pg::error::from_pg;
use crate::pg::error::{DbError, PgError};
use crate::pg::names::{quote_ident, quote_literal};
use crate::protocol::pgoutput::Message;
use crate::protocol::replication::{
    encode_standby_status, parse_copy_data, unix_micros_to_pg_micros, ReplicationMessage,
};
use crate::protocol::Lsn;
use crate::sink::writer::{Chunk, Writer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Endpos,
    Duration,
    Sigint,
    Sigterm,
    /// The slot held more WAL than --max-retained-wal allowed, with --on-lag drop.
    MaxRetainedWal,
}

impl StopReason {
    pub fn as_str(&self) -> &'static str {
        match self {
            StopReason::Endpos => "endpos",
            StopReason::Duration => "duration",
            StopReason::Sigint => "sigint",
            StopReason::Sigterm => "sigterm",
            StopReason::MaxRetainedWal => "max_retained_wal",
        }
    }
}

pub struct LoopOptions {
    /// The raw capture file, if requested.
    pub raw: Option<crate::sink::raw::RawWriter>,
    pub keep_slot: bool,
    /// Warn when the slot holds more WAL than this; with `drop_on_lag`, end the capture instead.
    pub max_retained_wal: Option<u64>,
    pub drop_on_lag: bool,
    /// Names for messages.
    pub slot: String,
    pub publication: String,
    pub endpos: Option<Lsn>,
    pub endpos_later: Option<watch::Receiver<Option<Lsn>>>,
    pub duration: Option<Duration>,
    pub status_every: Duration,
    pub progress: bool,
    pub progress_interval: Duration,
    /// Reconnect when nothing at all arrives for this long (`--receive-timeout`; `None`: never).
    pub receive_timeout: Option<Duration>,
    /// The periodic check that the publication still covers the watched tables (`coverage`).
    pub coverage: Option<super::coverage::Checker>,
    /// Catalog lookups of relations the stream describes that are not known to be watched.
    pub partitions: super::partitions::PartitionLookup,
}

/// Flush a transaction's rows to the writer in pieces of this size, so memory does not grow with it.
const CHUNK: usize = 256 * 1024;
const TICK: Duration = Duration::from_millis(100);

struct Loop {
    target: StreamTarget,
    repl: ReplicationConnection,
    writer: Writer,
    /// Parse, route, assemble (`decode::pipeline`).
    pipe: Pipeline,
    out: BytesMut,
    o: LoopOptions,
    /// What may be acknowledged and where the log resumes (`acks`).
    acks: Acks,
    last_status: Instant,
    last_reply_request: Instant,
    /// Highest WAL position the server said it has sent.
    server_end: Lsn,
    progress: Progress,
    tick: tokio::time::Interval,
    status_buf: BytesMut,
    warned_retained: bool,
    lag_stop: bool,
    /// Bytes at the start of `out` that are complete transactions not yet handed to the writer (their
    /// commit is `acks`' batch). Small transactions are handed over in batches (at CHUNK bytes or the
    /// next tick), so a stream of them costs one writer wake-up and one fsync per batch, not each.
    batched_len: usize,
    /// When the loop last received something, or stopped waiting for the writer: the receive timeout
    /// counts only time spent waiting for the server.
    last_heard: Instant,
    /// The advice about unattributed transactions was given (`advise`).
    advised: bool,
}

enum Flow {
    Go,
    Stop(StopReason),
}

/// Written transactions after which the unattributed share is judged (`advise`).
const ADVICE_AFTER: u64 = 20;

fn humantime_ms(d: Duration) -> String {
    if d.as_millis().is_multiple_of(1000) {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn now_pg_micros() -> i64 {
    let unix =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0);
    unix_micros_to_pg_micros(unix)
}

/// SIGINT/SIGTERM handlers, installed before anything is set up so a signal that arrives during setup
/// is not fatal: it is seen when the stream loop starts, which then ends deliberately and cleans up.
pub struct Signals {
    sigint: tokio::signal::unix::Signal,
    sigterm: tokio::signal::unix::Signal,
}

impl Signals {
    pub fn install() -> Result<Signals, Failure> {
        let e = |e: std::io::Error| Failure::new(Exit::Internal, format!("cannot handle signals: {e}"));
        Ok(Signals {
            sigint: signal(SignalKind::interrupt()).map_err(e)?,
            sigterm: signal(SignalKind::terminate()).map_err(e)?,
        })
    }
}

async fn sleep_until_opt(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Where and how the stream (re)starts.
pub struct StreamTarget {
    pub spec: ConnSpec,
    pub slot: String,
    pub publication: String,
    /// Highest pgoutput protocol version to ask for; lowered once if the server refuses it.
    pub proto: u32,
    pub reconnect_attempts: u32,
    pub reconnect_max_delay: Duration,
    pub two_phase: bool,
    /// Ask pgoutput for logical decoding messages: only with trigger attribution, the one reader of them.
    /// Any role can emit messages, so without it they stay on the server (see `proto-notes/commands.md`).
    pub messages: bool,
    /// Extra startup parameters of the replication connection (see `spooled::startup_params`).
    pub startup: Vec<(&'static str, String)>,
    /// Set by `start`: Stream Abort carries abort_lsn/abort_time (streaming 'parallel').
    pub stream_abort_has_lsn: bool,
}

impl StreamTarget {
    /// START_REPLICATION on an open connection, stepping the protocol version down when the server
    /// says it is too high (SQLSTATE 0A000).
    pub async fn start(&mut self, conn: &mut ReplicationConnection, from: Lsn) -> Result<(), PgError> {
        loop {
            let (extra, abort_lsn) = spooled::replication_options(self.proto, self.two_phase);
            self.stream_abort_has_lsn = abort_lsn;
            let cmd = format!(
                "START_REPLICATION SLOT {} LOGICAL {} (proto_version '{}', publication_names {}, messages '{}'{extra})",
                quote_ident(&self.slot),
                from,
                self.proto,
                quote_literal(&quote_ident(&self.publication)),
                self.messages,
            );
            match conn.start_copy_both(&cmd).await {
                Ok(()) => {
                    // Other applications' messages (any role can emit them, up to 1 GB) are dropped unread.
                    conn.skip_foreign_messages(crate::attribution::trigger::PREFIX);
                    return Ok(());
                }
                Err(e) if e.sqlstate() == Some("0A000") && self.proto > 2 => self.proto -= 1,
                Err(e) => return Err(e),
            }
        }
    }

    async fn connect_and_start(&mut self, from: Lsn) -> Result<ReplicationConnection, PgError> {
        let params: Vec<(&str, &str)> = self.startup.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut conn = ReplicationConnection::connect(&self.spec, &params).await?;
        self.start(&mut conn, from).await?;
        Ok(conn)
    }
}

#[allow(clippy::too_many_arguments)]
pub async fn run(
    signals: Signals,
    target: StreamTarget,
    repl: ReplicationConnection,
    writer: Writer,
    pipe: Pipeline,
    o: LoopOptions,
    retained: watch::Receiver<Option<i64>>,
    start_lsn: Lsn,
) -> Result<Outcome, Failure> {
    let Signals { mut sigint, mut sigterm } = signals;
    let deadline = o.duration.map(|d| tokio::time::Instant::now() + d);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let now = Instant::now();
    let progress = Progress::new(o.progress, o.progress_interval, retained);
    let mut lp = Loop {
        target,
        repl,
        writer,
        pipe,
        out: BytesMut::with_capacity(CHUNK * 2),
        o,
        acks: Acks::new(start_lsn),
        last_status: now,
        last_reply_request: now,
        server_end: start_lsn,
        progress,
        tick,
        status_buf: BytesMut::with_capacity(64),
        warned_retained: false,
        lag_stop: false,
        batched_len: 0,
        last_heard: now,
        advised: false,
    };
    let result = lp.events(&mut sigint, &mut sigterm, deadline).await;
    lp.progress.finish();
    match result {
        Ok(reason) => lp.stop(reason).await,
        Err(f) => lp.fail(f).await,
    }
}

/// PostgreSQL 14-17: decoding WAL from before the publication existed is an ERROR
/// (`GetPublicationByName(name, false)` in pgoutput.c LoadPublications).
fn publication_missing_error(e: &DbError) -> bool {
    e.code == "42704" && e.message.starts_with("publication ")
}

/// PostgreSQL 18: the same situation is only a WARNING and pgoutput carries on without the
/// publication, silently leaving out every change until the position where it exists again.
fn publication_skipped_warning(n: &DbError) -> bool {
    n.code == "55000" && n.message.starts_with("skipped loading publication")
}

impl Loop {
    /// Runs until a deliberate end (its reason) or a failure that reconnecting did not cure.
    async fn events(
        &mut self,
        sigint: &mut tokio::signal::unix::Signal,
        sigterm: &mut tokio::signal::unix::Signal,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<StopReason, Failure> {
        let mut durable = self.writer.durable();
        loop {
            let step: Result<Flow, Failure> = tokio::select! {
                biased;
                _ = sigint.recv() => Ok(Flow::Stop(StopReason::Sigint)),
                _ = sigterm.recv() => Ok(Flow::Stop(StopReason::Sigterm)),
                _ = sleep_until_opt(deadline), if deadline.is_some() => Ok(Flow::Stop(StopReason::Duration)),
                r = durable.changed() => {
                    if r.is_err() || durable.borrow().error.is_some() {
                        return Err(self.writer_failure());
                    }
                    Ok(Flow::Go)
                }
                _ = self.tick.tick() => self.on_tick_all().await,
                ev = self.repl.recv() => match ev {
                    Ok(CopyEvent::Data(b)) => self.on_frames(b).await,
                    Ok(CopyEvent::Notice(n)) => self.on_notice(n).map(|()| Flow::Go),
                    Ok(CopyEvent::Skipped(_)) => {
                        self.last_heard = Instant::now();
                        Ok(Flow::Go)
                    }
                    Err(e) if e.db_error().is_some_and(publication_missing_error) => Err(self.publication_gap(&e.to_string())),
                    Ok(CopyEvent::Done) => {
                        let mut f = Failure::new(Exit::Stream, "the server ended the replication stream (is it shutting down?)");
                        f.transient = true;
                        Err(f)
                    }
                    Err(e) => Err(from_pg("replication connection lost", e)),
                },
            };
            match step {
                Ok(Flow::Go) if self.lag_stop && !self.pipe.asm.in_transaction() => {
                    return Ok(StopReason::MaxRetainedWal)
                }
                Ok(Flow::Go) => {}
                Ok(Flow::Stop(r)) => return Ok(r),
                Err(f) if f.transient && self.target.reconnect_attempts > 0 => {
                    if let Some(r) = self.reconnect(f, sigint, sigterm, deadline).await? {
                        return Ok(r);
                    }
                }
                Err(mut f) => {
                    if f.transient {
                        f.message.push_str("; run the same command again to resume");
                    }
                    return Err(f);
                }
            }
        }
    }

    /// The status tick: a later --endpos, batched transactions (they wait at most one tick for the
    /// writer), the deferred acknowledgement and coverage, the status update, the receive timeout.
    async fn on_tick_all(&mut self) -> Result<Flow, Failure> {
        if let Some(rx) = &self.o.endpos_later {
            if let Some(e) = *rx.borrow() {
                self.o.endpos = Some(e);
            }
        }
        self.flush_batch().await?;
        self.flush_deferred_ack_and_coverage().await?;
        self.on_tick().await?;
        self.check_receive_timeout().map(|()| Flow::Go)
    }

    /// A failure ends the capture: keep what is durable acknowledged, then give up; the slot stays
    /// for a resume.
    async fn fail(mut self, f: Failure) -> Result<Outcome, Failure> {
        if let Some((batch, t)) = self.take_batch() {
            if self.writer.send(batch).await.is_ok() {
                self.acks.record_queued(t);
            }
        }
        if self.pipe.asm.in_transaction() {
            let _ = self.writer.send(Chunk::Rollback).await;
        }
        // The stream may have failed because coverage ended (the publication was dropped): say so.
        if let Some(c) = self.o.coverage.as_mut() {
            let events = c.check_now(Duration::from_secs(5)).await;
            if !events.is_empty() {
                let mut rec = BytesMut::new();
                super::coverage::push_events(&mut rec, &self.o.slot, &events);
                let _ = self.writer.send(Chunk::Append { data: rec.freeze(), boundary: true, ack: None }).await;
            }
        }
        self.raw_write(|r| r.flush());
        let cap = self.pipe.held.ack_cap();
        let d = self.writer.close().await;
        let flush = self.acks.flush(d.lsn, cap);
        self.status_buf.clear();
        encode_standby_status(&mut self.status_buf, flush, flush, flush, now_pg_micros(), false);
        let _ = self.repl.send_copy_data(&self.status_buf).await;
        if let Some(e) = d.error {
            return Err(Failure::new(
                Exit::Output,
                format!("{e}; nothing after LSN {flush} was acknowledged, so the next run resumes there"),
            ));
        }
        Err(f)
    }

    /// Writes to the raw capture file; a failure there is reported once and ends raw capture, never
    /// the capture itself (the log is the evidence, the raw file a companion).
    fn raw_write(&mut self, f: impl FnOnce(&mut crate::sink::raw::RawWriter) -> std::io::Result<()>) {
        if let Some(r) = self.o.raw.as_mut() {
            if let Err(e) = f(r) {
                eprintln!("walwitness: warning: cannot write the raw capture file ({e}); raw capture stopped, the log goes on");
                self.o.raw = None;
            }
        }
    }

    /// Notices in the stream are logged; the one that means changes are being left out ends the
    /// capture like the ERROR of older servers, before anything after it is acknowledged.
    fn on_notice(&mut self, n: DbError) -> Result<(), Failure> {
        if publication_skipped_warning(&n) {
            return Err(self.publication_gap(&format!("server warning: {}", n.message)));
        }
        if n.severity == "WARNING" {
            tracing::warn!(code = %n.code, "server: {}", crate::term::clean(&n.message));
        } else {
            tracing::info!(severity = %n.severity, code = %n.code, "server: {}", crate::term::clean(&n.message));
        }
        Ok(())
    }

    /// The slot must decode WAL written before the publication existed (it was dropped, or dropped
    /// and created again, while the slot was kept). Those changes cannot be published, so resuming
    /// cannot close the gap: say so instead of "run again".
    fn publication_gap(&self, server: &str) -> Failure {
        Failure::new(
            Exit::Stream,
            format!(
                "after LSN {}: {server}: publication {} did not exist at this point in the WAL (it was dropped and created again after slot {} was made), so the server cannot send the changes made there; nothing after LSN {} was acknowledged. Deletes made while it was missing cannot be recovered from this slot: drop it (SELECT pg_drop_replication_slot('{}')) and start again",
                self.server_end,
                self.o.publication,
                self.o.slot,
                self.flush_pos(),
                self.o.slot
            ),
        )
    }

    /// Hands the end of the last transaction that wrote nothing to the writer. Only between
    /// transactions: the empty chunk is a rollback boundary.
    async fn flush_deferred_ack(&mut self) -> Result<(), Failure> {
        if self.pipe.asm.in_transaction() {
            return Ok(());
        }
        self.flush_batch().await?;
        if let Some(t) = self.acks.take_deferred(self.pipe.held.ack_cap()) {
            self.push_raw(Chunk::Append { data: Bytes::new(), boundary: true, ack: Some(t.ack) }, Some(t)).await?;
        }
        Ok(())
    }

    async fn flush_deferred_ack_and_coverage(&mut self) -> Result<(), Failure> {
        self.flush_deferred_ack().await?;
        self.write_coverage(false).await
    }

    /// Writes what the coverage check found, between transactions (`now`: check first).
    async fn write_coverage(&mut self, now: bool) -> Result<(), Failure> {
        if self.pipe.asm.in_transaction() {
            return Ok(());
        }
        let Some(c) = self.o.coverage.as_mut() else { return Ok(()) };
        let events = if now { c.check_now(Duration::from_secs(5)).await } else { c.pending() };
        if events.is_empty() {
            return Ok(());
        }
        let mut rec = BytesMut::new();
        super::coverage::push_events(&mut rec, &self.o.slot, &events);
        self.push(Chunk::Append { data: rec.freeze(), boundary: true, ack: None }, None).await
    }

    /// The flush position to report now: durable, capped below a waiting prepare, never below the floor.
    fn flush_pos(&self) -> Lsn {
        self.acks.flush(self.writer.durable().borrow().lsn, self.pipe.held.ack_cap())
    }

    /// Reconnects with capped exponential backoff and resumes from what is durable. Transactions the
    /// writer already holds are skipped when the server sends them again; a transaction cut short is
    /// rolled back in the log and arrives again whole. Returns a stop reason if a signal or the deadline
    /// came first.
    async fn reconnect(
        &mut self,
        mut why: Failure,
        sigint: &mut tokio::signal::unix::Signal,
        sigterm: &mut tokio::signal::unix::Signal,
        deadline: Option<tokio::time::Instant>,
    ) -> Result<Option<StopReason>, Failure> {
        // Complete transactions go to the log first; the connection is gone, so no ticking while waiting.
        if let Some((batch, t)) = self.take_batch() {
            self.writer.send(batch).await.map_err(|_| self.writer_failure())?;
            self.acks.record_queued(t);
        }
        if self.pipe.asm.in_transaction() {
            self.pipe.asm.abandon_transaction();
            self.out.clear();
            self.writer.send(Chunk::Rollback).await.map_err(|_| self.writer_failure())?;
        }
        self.raw_write(|r| r.reconnected());
        // Partly streamed and prepared transactions are sent again from their start (prepared ones
        // whose spool is durable are kept: the server may not send them again).
        self.pipe.reset();
        self.pipe.asm.set_resume_after(self.acks.queued());
        let mut delay = Duration::from_millis(250);
        let max = self.target.reconnect_attempts;
        for attempt in 1..=max {
            eprintln!(
                "walwitness: {}; reconnecting in {} (attempt {attempt} of {max})",
                why,
                humantime::format_duration(delay)
            );
            tokio::select! {
                biased;
                _ = sigint.recv() => return Ok(Some(StopReason::Sigint)),
                _ = sigterm.recv() => return Ok(Some(StopReason::Sigterm)),
                _ = sleep_until_opt(deadline), if deadline.is_some() => return Ok(Some(StopReason::Duration)),
                _ = tokio::time::sleep(delay) => {}
            }
            let from = self.flush_pos();
            match self.target.connect_and_start(from).await {
                Ok(conn) => {
                    self.repl = conn;
                    self.pipe.stream_abort_has_lsn = self.target.stream_abort_has_lsn;
                    self.acks.reconnected(from);
                    self.last_heard = Instant::now();
                    eprintln!("walwitness: reconnected; resuming from LSN {from}");
                    return Ok(None);
                }
                Err(e) => {
                    let transient = crate::pg::error::is_transient(&e);
                    why = from_pg("reconnection failed", e);
                    if !transient {
                        return Err(why);
                    }
                    delay = (delay * 2).min(self.target.reconnect_max_delay);
                }
            }
        }
        Err(Failure::new(
            Exit::Stream,
            format!(
                "gave up after {max} reconnection attempts ({}); run the same command again to resume",
                why.message
            ),
        ))
    }

    fn writer_failure(&self) -> Failure {
        let d = self.writer.durable().borrow().clone();
        Failure::new(
            Exit::Output,
            format!(
                "{}; nothing after LSN {} was acknowledged, so the next run resumes there",
                d.error.unwrap_or_else(|| "the log writer stopped".into()),
                self.acks.flush(d.lsn, self.pipe.held.ack_cap())
            ),
        )
    }

    /// Hands a chunk to the writer after any batched transactions, so the log keeps the stream's order.
    async fn push(&mut self, chunk: Chunk, ticket: Option<Ticket>) -> Result<(), Failure> {
        self.flush_batch().await?;
        self.push_raw(chunk, ticket).await
    }

    /// Hands the batched complete transactions to the writer.
    async fn flush_batch(&mut self) -> Result<(), Failure> {
        if let Some((chunk, t)) = self.take_batch() {
            self.push_raw(chunk, Some(t)).await?;
        }
        Ok(())
    }

    /// The batched transactions' bytes with their ticket, which must be recorded once the chunk is queued.
    fn take_batch(&mut self) -> Option<(Chunk, Ticket)> {
        let t = self.acks.take_batch(self.pipe.held.ack_cap())?;
        let data = self.pipe.asm.split_prefix(&mut self.out, self.batched_len);
        self.batched_len = 0;
        Some((Chunk::Append { data, boundary: true, ack: Some(t.ack) }, t))
    }

    /// Queues a chunk, answering the server on time while the writer is busy. A chunk in hand is never
    /// dropped: if answering the server fails meanwhile (the connection is gone), the chunk is still
    /// queued — waiting for room without ticking — before the failure is returned, because the resume
    /// mark already counts its transactions as written once `ticket` is recorded.
    async fn push_raw(&mut self, chunk: Chunk, ticket: Option<Ticket>) -> Result<(), Failure> {
        let writer_tx = self.writer.sender();
        let mut failed: Option<Failure> = None;
        let queued = loop {
            if failed.is_some() {
                break writer_tx.send(chunk).await.is_ok();
            }
            tokio::select! {
                biased;
                permit = writer_tx.reserve() => match permit {
                    Ok(p) => { p.send(chunk); break true; }
                    Err(_) => break false,
                },
                _ = self.tick.tick() => {
                    if let Err(f) = self.on_tick().await {
                        // Said now: the writer may wait long (a stalled reader of --out -).
                        eprintln!(
                            "walwitness: {}; handing the transactions already received to the writer before reconnecting",
                            f
                        );
                        failed = Some(f);
                    }
                }
            }
        };
        // Time spent waiting for the writer is not time the server was silent.
        self.last_heard = self.last_heard.max(Instant::now());
        if !queued {
            return Err(self.writer_failure());
        }
        if let Some(t) = ticket {
            self.acks.record_queued(t);
        }
        failed.map_or(Ok(()), Err)
    }

    async fn send_status(&mut self, reply_requested: bool) -> Result<(), Failure> {
        let flush = self.flush_pos();
        self.status_buf.clear();
        encode_standby_status(&mut self.status_buf, flush, flush, flush, now_pg_micros(), reply_requested);
        self.repl
            .send_copy_data(&self.status_buf)
            .await
            .map_err(|e| from_pg("cannot send a status update; run the same command again to resume", e))?;
        self.acks.record_sent(flush);
        self.last_status = Instant::now();
        if reply_requested {
            self.last_reply_request = self.last_status;
        }
        Ok(())
    }

    async fn on_tick(&mut self) -> Result<(), Failure> {
        let durable = self.writer.durable().borrow().clone();
        if durable.error.is_some() {
            return Err(self.writer_failure());
        }
        let since = self.last_status.elapsed();
        // Waiting for --endpos on an idle server: ask for a keepalive, which carries the server's position.
        let endpos_reply = self.o.endpos.is_some()
            && !self.pipe.asm.in_transaction()
            && self.last_reply_request.elapsed() >= Duration::from_millis(500);
        // Silent for half the receive timeout: ask for a keepalive, so a live server proves it is there
        // (an idle walsender whose client is caught up sends nothing on its own).
        let probe = self
            .o
            .receive_timeout
            .is_some_and(|t| self.last_heard.elapsed() >= t / 2 && self.last_reply_request.elapsed() >= t / 4);
        let want_reply = endpos_reply || probe;
        self.pipe.held.release(durable.lsn);
        let flush = self.flush_pos();
        if since >= self.o.status_every || flush > self.acks.sent() || want_reply {
            self.send_status(want_reply).await?;
        }
        self.progress.maybe_print(self.server_end, flush);
        if let (Some(max), Some(held)) = (self.o.max_retained_wal, self.progress.retained()) {
            if held > 0 && held as u64 > max {
                if self.o.drop_on_lag {
                    if !self.lag_stop {
                        eprintln!(
                            "walwitness: slot {} retains {} of WAL, over --max-retained-wal {}: ending the capture and dropping the slot (--on-lag drop); deletes after LSN {} will not be logged",
                            self.o.slot,
                            crate::term::human_bytes(held as u64),
                            crate::term::human_bytes(max),
                            flush
                        );
                    }
                    self.lag_stop = true;
                } else if !self.warned_retained {
                    self.warned_retained = true;
                    eprintln!(
                        "walwitness: warning: slot {} retains {} of WAL, over --max-retained-wal {}; the server keeps it until this capture catches up (use --on-lag drop to give up instead)",
                        self.o.slot,
                        crate::term::human_bytes(held as u64),
                        crate::term::human_bytes(max)
                    );
                }
            }
        }
        Ok(())
    }

    /// A connection that delivers nothing — not even the keepalive asked for at half the timeout — is
    /// taken for dead (a frozen network path, a stalled proxy) and replaced, like `wal_receiver_timeout`.
    fn check_receive_timeout(&self) -> Result<(), Failure> {
        let Some(t) = self.o.receive_timeout else { return Ok(()) };
        let silent = self.last_heard.elapsed();
        if silent < t {
            return Ok(());
        }
        let mut f = Failure::new(
            Exit::Stream,
            format!(
                "received nothing from the server for {} (--receive-timeout {}), not even an asked-for keepalive: the connection is taken for dead",
                humantime::format_duration(Duration::from_secs(silent.as_secs())),
                humantime::format_duration(t)
            ),
        );
        f.transient = true;
        Err(f)
    }

    /// Handles `first`, then the frames its read already brought in, without going back through the
    /// loop's `select!`: one read holds at most a few hundred KiB, so the status tick is not delayed
    /// noticeably, and `push` still answers it while the writer is full.
    async fn on_frames(&mut self, first: Bytes) -> Result<Flow, Failure> {
        self.last_heard = Instant::now();
        let mut next = Some(first);
        while let Some(payload) = next {
            if let Flow::Stop(r) = self.on_frame(payload).await? {
                return Ok(Flow::Stop(r));
            }
            next = self.repl.try_recv_buffered().map_err(|e| from_pg("replication connection lost", e))?;
        }
        Ok(Flow::Go)
    }

    async fn on_frame(&mut self, payload: Bytes) -> Result<Flow, Failure> {
        let msg = parse_copy_data(payload).map_err(|e| {
            Failure::new(
                Exit::Stream,
                format!("after LSN {}: {e}; this is a bug or a damaged connection, please report it", self.server_end),
            )
        })?;
        match msg {
            ReplicationMessage::XLogData { wal_start, wal_end, data, .. } => {
                self.server_end = self.server_end.max(wal_end);
                self.on_xlog(wal_start, data).await
            }
            ReplicationMessage::Keepalive { wal_end, reply_requested, .. } => {
                self.server_end = self.server_end.max(wal_end);
                self.on_keepalive(wal_end, reply_requested).await
            }
        }
    }

    /// One pgoutput payload through the decoding pipeline; the raw capture file gets every payload.
    async fn on_xlog(&mut self, wal_start: Lsn, data: Bytes) -> Result<Flow, Failure> {
        // Streamed and prepared transactions are held in spools until final (`decode::pipeline`).
        match self.pipe.receive(wal_start, &data, self.acks.acked()).map_err(stream_failure)? {
            Received::Message(m) => self.assemble(wal_start, &data, m).await,
            Received::Held => {
                self.raw_write(|r| r.xlog(wal_start, &data));
                Ok(Flow::Go)
            }
            Received::Replay(r) => self.replay(*r, wal_start, &data).await,
        }
    }

    /// A message of an ordinary transaction (or between transactions): its records are batched.
    async fn assemble(&mut self, wal_start: Lsn, data: &Bytes, m: Message) -> Result<Flow, Failure> {
        if let (Some(endpos), Message::Begin { final_lsn, .. }) = (self.o.endpos, &m) {
            if *final_lsn > endpos {
                return Ok(Flow::Stop(StopReason::Endpos));
            }
        }
        let is_begin = matches!(m, Message::Begin { .. });
        self.await_sample(&m).await;
        self.lookup_relation(&m).await?;
        let step = self.pipe.assemble(wal_start, m, &mut self.out).map_err(stream_failure)?;
        if self.o.raw.is_some() {
            let activity = if is_begin { self.pipe.asm.current_activity() } else { None };
            let inference = self.pipe.asm.take_inference();
            self.raw_frames(activity, inference, wal_start, data);
        }
        match step {
            Step::Continue => {
                if self.out.len() >= CHUNK {
                    self.flush_batch().await?;
                    let data = self.pipe.asm.take_complete(&mut self.out);
                    self.push_raw(Chunk::Append { data, boundary: false, ack: None }, None).await?;
                }
            }
            Step::Committed { end_lsn, wrote, deletes, truncates, commit_time } => {
                if !wrote && self.out.is_empty() {
                    // Nothing to write (PostgreSQL 14 sends an empty Begin/Commit for every
                    // transaction in the database): a writer round trip each would cost more
                    // than decoding them, so only remember the position; the next tick (or
                    // commit, keepalive, or stop) hands it to the writer.
                    self.acks.nothing_open_until(end_lsn);
                } else {
                    self.acks.batched_commit(end_lsn);
                    self.batched_len = self.out.len();
                    if self.batched_len >= CHUNK {
                        self.flush_batch().await?;
                    }
                }
                if wrote {
                    self.progress.committed(deletes, truncates, commit_time);
                    self.advise();
                }
                if self.o.endpos.is_some_and(|e| end_lsn >= e) {
                    return Ok(Flow::Stop(StopReason::Endpos));
                }
            }
        }
        Ok(Flow::Go)
    }

    /// A payload for the raw capture file, after what offline decoding must know before it: the
    /// session used at a Begin (found there offline), the inference made at a Commit (used there).
    fn raw_frames(
        &mut self,
        activity: Option<(u32, Bytes)>,
        inference: Option<(u32, Inference)>,
        wal_start: Lsn,
        data: &[u8],
    ) {
        self.raw_write(|r| {
            if let Some((xid, json)) = activity {
                r.activity(xid, &json)?;
            }
            if let Some((xid, i)) = inference {
                r.inference(xid, &i.encode())?;
            }
            r.xlog(wal_start, data)
        });
    }

    async fn on_keepalive(&mut self, wal_end: Lsn, reply_requested: bool) -> Result<Flow, Failure> {
        if !self.pipe.asm.in_transaction() && !self.pipe.held.streams_open() && wal_end > self.acks.queued() {
            // Nothing of ours is open below wal_end: once what is queued is durable, it may be acked.
            let t = self.acks.ticket(wal_end, self.pipe.held.ack_cap());
            self.push(Chunk::Append { data: Bytes::new(), boundary: true, ack: Some(t.ack) }, Some(t)).await?;
        }
        if reply_requested {
            self.send_status(false).await?;
        }
        if !self.pipe.asm.in_transaction() && self.o.endpos.is_some_and(|e| wal_end >= e) {
            return Ok(Flow::Stop(StopReason::Endpos));
        }
        Ok(Flow::Go)
    }

    /// A streamed or prepared transaction became final: feeds it through the Assembler and hands the
    /// records to the writer like an ordinary transaction's (a commit acknowledges its end; an abort
    /// written with --include-aborted acknowledges nothing). The payload that made it final goes to
    /// the raw capture file last, after the session and inference the replay used.
    async fn replay(&mut self, mut r: Replay, wal_start: Lsn, data: &Bytes) -> Result<Flow, Failure> {
        if let (Some(endpos), Some(c)) = (self.o.endpos, r.commit_lsn()) {
            if c > endpos {
                return Ok(Flow::Stop(StopReason::Endpos));
            }
        }
        // The replayed transaction's records are cut from `out` as a whole: nothing else may be in it.
        self.flush_batch().await?;
        let (mut activity, mut inference) = (None, None);
        while let Some((lsn, m)) = r.next_message().map_err(|e| stream_failure(e.into()))? {
            let is_begin = matches!(m, Message::Begin { .. });
            self.await_sample(&m).await;
            self.lookup_relation(&m).await?;
            let step = self.pipe.assemble(lsn, m, &mut self.out).map_err(stream_failure)?;
            if self.o.raw.is_some() {
                if is_begin {
                    activity = self.pipe.asm.current_activity();
                }
                inference = inference.or(self.pipe.asm.take_inference());
            }
            match step {
                Step::Continue => {
                    if self.out.len() >= CHUNK {
                        let data = r.finish_rows(self.pipe.asm.take_complete(&mut self.out));
                        self.push(Chunk::Append { data, boundary: false, ack: None }, None).await?;
                    }
                }
                Step::Committed { end_lsn, wrote, deletes, truncates, commit_time } => {
                    let records = r.finish_last(self.out.split().freeze());
                    let ticket = match r.kind {
                        ReplayKind::Commit { .. } => {
                            if wrote {
                                self.progress.committed(deletes, truncates, commit_time);
                                self.advise();
                            }
                            Some(self.acks.ticket(end_lsn, self.pipe.held.ack_cap()))
                        }
                        ReplayKind::Abort { .. } => None,
                    };
                    let ack = ticket.map(|t| t.ack);
                    self.push(Chunk::Append { data: records, boundary: true, ack }, ticket).await?;
                    self.raw_frames(activity, inference, wal_start, data);
                    let at = match r.kind {
                        ReplayKind::Commit { end_lsn, .. } => end_lsn,
                        ReplayKind::Abort { abort_lsn, .. } => abort_lsn.unwrap_or(self.server_end),
                    };
                    let stop = r.commit_lsn().is_some() && self.o.endpos.is_some_and(|e| end_lsn >= e);
                    self.pipe.held.retire(at, r);
                    return Ok(if stop { Flow::Stop(StopReason::Endpos) } else { Flow::Go });
                }
            }
        }
        Ok(Flow::Go)
    }

    /// Before a Begin that will need inference: waits until the sampler has looked at the sessions
    /// after the commit (at most two intervals and a second), so the statement that committed is known.
    async fn await_sample(&mut self, m: &Message) {
        if let Some((map, commit_time)) = self.pipe.asm.wants_sample_after(m) {
            let limit = map.interval * 2 + Duration::from_secs(1);
            map.wait_sampled_after(commit_time, limit).await;
        }
    }

    /// Says once, after `ADVICE_AFTER` written transactions, when most had no session named.
    fn advise(&mut self) {
        let (n, unnamed) = (self.pipe.asm.written_transactions, self.pipe.asm.unnamed_transactions);
        if self.advised || n < ADVICE_AFTER || unnamed * 4 < n {
            return;
        }
        self.advised = true;
        let interval = self.pipe.asm.inferring_map().map(|m| m.interval);
        let how = match interval {
            Some(i) => format!("the activity sampler (every {}) saw no session, or several, for them", humantime_ms(i)),
            None => "no attribution source named their session".into(),
        };
        crate::term::eprint_line(&format!(
            "walwitness: {unnamed} of the first {n} transactions have no session named ({how}). For exact answers \
             run the capture with --attribution trigger (installs a statement trigger for the capture's lifetime); \
             give each client program its own application_name (e.g. in its connection string) so sessions say which \
             program ran them."
        ));
    }

    /// A relation the stream describes that is not known to be watched may be a partition attached
    /// since the start (`partitions`); raw captures record what was found.
    async fn lookup_relation(&mut self, m: &Message) -> Result<(), Failure> {
        if let Some(f) = self.o.partitions.before(&mut self.pipe.asm, m).await? {
            self.raw_write(|r| r.partition(f.oid, f.root, f.primary_key.as_deref()));
        }
        Ok(())
    }

    /// A deliberate end: make the log durable, acknowledge, end the stream. `capture_stopped` is written by
    /// the caller after the cleanup (`teardown`), when it knows what is left.
    async fn stop(mut self, reason: StopReason) -> Result<Outcome, Failure> {
        self.flush_batch().await?;
        if self.pipe.asm.in_transaction() {
            // Its commit has not arrived; with --keep-slot it is sent again on the next run.
            self.pipe.asm.abandon_transaction();
            self.out.clear();
            self.push(Chunk::Rollback, None).await?;
        }
        // While prepared transactions still cap it: a waiting PREPARE must be sent again next time.
        self.flush_deferred_ack().await?;
        self.write_coverage(true).await?;
        self.raw_write(|r| r.flush());
        // `capture_stopped` is written by the caller once it knows what the cleanup left (`teardown`).
        let last_lsn = self.acks.covered();
        let cap = self.pipe.held.ack_cap();
        let Loop { mut repl, writer, progress, mut status_buf, acks, o, pipe, .. } = self;
        let (d, chain) = writer.close_with_chain().await;
        if let Some(e) = d.error {
            return Err(Failure::new(Exit::Output, e));
        }
        let flush = acks.flush(d.lsn, cap);
        // Unfinished streamed transactions come again on the next run; prepared ones whose spool is
        // durable stay for it only if the slot does.
        pipe.held.finish(o.keep_slot && reason != StopReason::MaxRetainedWal);
        status_buf.clear();
        encode_standby_status(&mut status_buf, flush, flush, flush, now_pg_micros(), false);
        let _ = repl.send_copy_data(&status_buf).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), repl.finish_copy()).await;
        repl.close().await;
        let (deletes, truncates, transactions) = progress.totals();
        let chain_head = d.head.as_ref().map(crate::sink::chain::to_hex);
        Ok(Outcome { reason, deletes, truncates, transactions, last_lsn, left_behind: Vec::new(), chain_head, chain })
    }
}

fn stream_failure(e: PipelineError) -> Failure {
    Failure::new(Exit::Stream, e.to_string())
}
