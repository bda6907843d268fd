//! The durable writer: appends log bytes on its own thread, fsyncs, and only then reports the LSN that
//! may be acknowledged to the server.
//!
//! ```text
//! capture loop ──Chunk{bytes, boundary, ack}──▶ writer thread ──write──▶ file
//!      ▲                                               │ fdatasync
//!      └──────────── watch<Durable{lsn}> ◀─────────────┘
//! ```
//!
//! Why a thread: a slow disk must never stop the capture loop from answering the server's keepalives
//! (the walsender drops a silent client after `wal_sender_timeout`). Why the channel carries the ack LSN
//! with the bytes: the LSN becomes acknowledgeable only once *those* bytes, and everything before them,
//! are on disk, and ordering through one channel guarantees exactly that. Several queued chunks are
//! written before one fdatasync, so a busy stream pays for one sync per batch, not per transaction.
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use super::chain::{split_chained, Chainer, Head};
use super::record::{Kind, LOG_START};
use crate::protocol::Lsn;

/// Where the log goes.
#[derive(Debug, Clone)]
pub enum Output {
    File(PathBuf),
    Stdout,
}

/// One unit of work for the writer thread.
#[derive(Debug)]
pub enum Chunk {
    /// Bytes to append. `boundary`: the log is at a transaction boundary after these bytes, so it is a
    /// valid place to roll back to. `ack`: once durable, the server may be told this LSN is flushed.
    Append { data: Bytes, boundary: bool, ack: Option<Lsn> },
    /// Cut the file back to the last boundary (a transaction was interrupted by a lost connection and
    /// will be sent again from its start).
    Rollback,
}

/// What the writer has made durable so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Durable {
    pub lsn: Lsn,
    /// Bytes of the log known to be on disk.
    pub bytes: u64,
    /// Set once the writer failed; it writes nothing after that.
    pub error: Option<String>,
    /// The last chain value written (see `crate::sink::chain`): the log's head.
    pub head: Option<Head>,
}

/// What opening an existing log found and repaired.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// `end_lsn` of the last complete transaction in the log: nothing at or below it is written again.
    pub last_commit_end: Option<Lsn>,
    /// Bytes cut from the end (a torn last line or an incomplete transaction).
    pub cut_bytes: u64,
    /// Whole or partial lines cut.
    pub cut_lines: u64,
    /// Log length after repair.
    pub len: u64,
    /// The most recent capture run recorded in the log.
    pub last_run: Option<LastRun>,
    /// Permission bits of an existing log that group or others can access (worth a warning: the log
    /// holds deleted rows' keys and the statements that deleted them).
    pub exposed_mode: Option<u32>,
    /// The chain value of the last line kept (the log's head), when it carries one; the next run
    /// continues the chain from it (`chain_prev`).
    pub chain_head: Option<Head>,
    /// SHA-256 of the bytes cut, when any were (recorded in the next `capture_started`).
    pub cut_sha256: Option<Head>,
}

/// What the log says about the run that wrote it last, to tell a resume from a gap.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LastRun {
    pub slot: String,
    /// Highest position the run covered (its start, its last commit, or where it stopped).
    pub covered_to: Lsn,
    /// `Some(kept)` when it ended deliberately (with the slot kept or dropped); `None` when it crashed
    /// or lost its connection, which leaves the slot for a resume.
    pub stopped: Option<bool>,
    /// The server it captured (`capture_started`): an empty identifier is unknown.
    pub system_identifier: String,
    pub database: String,
    /// `None` in logs written before the field existed.
    pub timeline: Option<u32>,
    /// `resume_after` of its `capture_started` (`None` in logs written before the field existed).
    pub resume_after: Option<Lsn>,
    /// `end_lsn` of the last commit this run wrote.
    pub last_commit_end: Option<Lsn>,
    /// Gaps it opened and nothing closed yet.
    pub open_gaps: Vec<OpenGap>,
}

/// A `gap` record with `open: true` that no later record `closes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenGap {
    pub reason: String,
    pub table: Option<String>,
    pub from_lsn: Lsn,
}

impl LastRun {
    /// Whether that run left its slot behind for this one to resume from.
    pub fn left_slot(&self) -> bool {
        self.stopped != Some(false)
    }
}

impl Recovery {
    /// Transactions ending at or below this are in the log for the last run's server, database and slot:
    /// the run's own `resume_after` raised by what it wrote, or (logs without `resume_after`) the log's
    /// last commit.
    pub fn resume_mark(&self) -> Lsn {
        match &self.last_run {
            Some(LastRun { resume_after: Some(r), last_commit_end, .. }) => {
                (*r).max(last_commit_end.unwrap_or_default())
            }
            _ => self.last_commit_end.unwrap_or_default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    #[error("cannot open output file {path}: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error("output file {path} is being written by another walwitness capture: stop it first, or use another --out")]
    Locked { path: PathBuf },
    #[error("cannot read or repair output file {path}: {source}")]
    Repair { path: PathBuf, source: io::Error },
    #[error("output file {path} is not a walwitness log: {source}")]
    NotALog { path: PathBuf, source: io::Error },
}

/// Opens (creating with mode 0600) the log, repairs its tail and says where it ends. The path is never
/// followed through a symbolic link, and an existing file must be ours, have one name, and be a
/// walwitness log (`sink::outfile`): anything else is refused untouched, never "repaired".
pub fn open_log(path: &Path) -> Result<(File, Recovery), SinkError> {
    let opened = super::outfile::open_private(path, super::outfile::Access::ReadWrite)
        .map_err(|source| SinkError::Open { path: path.to_owned(), source })?;
    let mut file = opened.file;
    // Two captures appending to one log would interleave their transactions: hold an exclusive lock
    // for as long as the file is open (released by the kernel when the process exits, even on kill -9).
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(SinkError::Locked { path: path.to_owned() });
        }
    }
    if !opened.created && opened.regular {
        check_is_log(&mut file).map_err(|source| SinkError::NotALog { path: path.to_owned(), source })?;
    }
    let mut rec = repair_tail(&mut file).map_err(|source| SinkError::Repair { path: path.to_owned(), source })?;
    rec.exposed_mode = Some(opened.mode).filter(|m| opened.regular && super::outfile::exposed(*m));
    if opened.created {
        // A new file survives a crash only once its directory entry is durable too.
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| SinkError::Repair { path: path.to_owned(), source })?;
    }
    Ok((file, rec))
}

/// An existing `--out` file must be empty or begin like a walwitness log (a first line torn by a crash
/// included), so that a mistyped path never gets its lines "repaired" away.
fn check_is_log(file: &mut File) -> io::Result<()> {
    let mut head = Vec::with_capacity(LOG_START.len());
    file.seek(SeekFrom::Start(0))?;
    (&mut *file).take(LOG_START.len() as u64).read_to_end(&mut head)?;
    if LOG_START.starts_with(&head) {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "it does not begin with a capture_started record; walwitness appends only to a log it wrote (and would cut lines it cannot read), so it was left untouched: give a new file, or the log of an earlier capture",
    ))
}

/// The fields of a line that repair needs. Everything is optional and loosely typed: a line that does
/// not parse as this is taken for damage and cut, so no field may be stricter than what any record holds.
#[derive(Deserialize)]
struct Peek {
    #[serde(rename = "type")]
    kind: String,
    end_lsn: Option<String>,
    slot: Option<String>,
    start_lsn: Option<String>,
    last_lsn: Option<String>,
    slot_kept: Option<bool>,
    system_identifier: Option<serde_json::Value>,
    database: Option<serde_json::Value>,
    timeline: Option<serde_json::Value>,
    resume_after: Option<serde_json::Value>,
    reason: Option<serde_json::Value>,
    table: Option<serde_json::Value>,
    from_lsn: Option<serde_json::Value>,
    open: Option<serde_json::Value>,
    closes: Option<serde_json::Value>,
}

fn text(v: &Option<serde_json::Value>) -> Option<String> {
    v.as_ref().and_then(|v| v.as_str()).map(str::to_owned)
}

/// Cuts a torn last line and the lines of an unfinished transaction, then finds the last commit and what
/// the last run recorded about itself. The file is synced whatever was found: its tail may have been
/// written by a process that died before its fsync, and the next run acknowledges from it.
fn repair_tail(file: &mut File) -> io::Result<Recovery> {
    let len = file.seek(SeekFrom::End(0))?;
    let mut cut_at: Option<u64> = None;
    let mut cut_lines = 0u64;
    let mut chain_head = None;
    let mut found = Found::default();
    let mut lines = BackwardLines::new(len);
    while let Some((start, line, terminated)) = lines.next_line(file)? {
        let peek: Option<Peek> = if terminated { serde_json::from_slice(&line).ok() } else { None };
        let is_boundary = match &peek {
            // Aborted rows are closed by their `abort` record like rows by their commit; a rename is
            // written inside its transaction, before the first row that shows the new name.
            Some(p) => !matches!(
                Kind::parse(&p.kind),
                Some(
                    Kind::Delete
                        | Kind::Truncate
                        | Kind::Statement
                        | Kind::RelationRenamed
                        | Kind::AbortedDelete
                        | Kind::AbortedTruncate
                        | Kind::AbortedStatement
                )
            ),
            None => false,
        };
        if cut_at.is_none() {
            if is_boundary {
                cut_at = Some(start + line.len() as u64 + 1);
                // Every boundary record carries a chain value (format 2): only lines after the last
                // one, never covered by any, are cut.
                chain_head = split_chained(&line).map(|(_, h)| h);
            } else {
                cut_lines += 1;
                continue;
            }
        }
        if let Some(p) = peek {
            found.note(p);
            if found.last_commit_end.is_some() && found.last_run.is_some() {
                break;
            }
        }
    }
    let (last_commit_end, last_run) = found.finish();
    let keep = cut_at.unwrap_or(0);
    let cut_sha256 = cut_and_sync(file, keep, len)?;
    Ok(Recovery {
        last_commit_end,
        cut_bytes: len - keep,
        cut_lines,
        len: keep,
        last_run,
        exposed_mode: None,
        chain_head,
        cut_sha256,
    })
}

/// What repair finds reading the kept lines backwards: the last commit, and the last run's records.
#[derive(Default)]
struct Found {
    last_commit_end: Option<Lsn>,
    last_run: Option<LastRun>,
    stopped: Option<(bool, Option<Lsn>)>,
    // Of the last run, read backwards: gaps closed later, gaps still open.
    closed: Vec<(String, Option<String>, Lsn)>,
    open_gaps: Vec<OpenGap>,
}

fn lsn(s: &Option<String>) -> Option<Lsn> {
    s.as_deref().and_then(|s| s.parse::<Lsn>().ok())
}

impl Found {
    fn note(&mut self, p: Peek) {
        match Kind::parse(&p.kind) {
            Some(Kind::Commit) if self.last_commit_end.is_none() => self.last_commit_end = lsn(&p.end_lsn),
            Some(Kind::CaptureStopped) if self.last_run.is_none() && self.stopped.is_none() => {
                self.stopped = Some((p.slot_kept.unwrap_or(true), lsn(&p.last_lsn)));
            }
            Some(Kind::Gap) if self.last_run.is_none() => {
                let key =
                    (text(&p.reason).unwrap_or_default(), text(&p.table), lsn(&text(&p.from_lsn)).unwrap_or_default());
                if p.closes.as_ref().and_then(|v| v.as_bool()) == Some(true) {
                    self.closed.push(key);
                } else if p.open.as_ref().and_then(|v| v.as_bool()) == Some(true) && !self.closed.contains(&key) {
                    self.open_gaps.push(OpenGap { reason: key.0, table: key.1, from_lsn: key.2 });
                }
            }
            Some(Kind::CaptureStarted) if self.last_run.is_none() => {
                self.open_gaps.reverse();
                self.last_run = Some(LastRun {
                    slot: p.slot.unwrap_or_default(),
                    covered_to: lsn(&p.start_lsn)
                        .unwrap_or_default()
                        .max(self.stopped.and_then(|s| s.1).unwrap_or_default()),
                    stopped: self.stopped.map(|s| s.0),
                    system_identifier: text(&p.system_identifier).unwrap_or_default(),
                    database: text(&p.database).unwrap_or_default(),
                    timeline: p.timeline.as_ref().and_then(|v| v.as_u64()).and_then(|t| u32::try_from(t).ok()),
                    resume_after: lsn(&text(&p.resume_after)),
                    // Commits read before reaching its start are its own.
                    last_commit_end: self.last_commit_end,
                    open_gaps: std::mem::take(&mut self.open_gaps),
                });
            }
            _ => {}
        }
    }

    /// The last commit's end, and the last run with what it covered.
    fn finish(self) -> (Option<Lsn>, Option<LastRun>) {
        let Found { last_commit_end, mut last_run, .. } = self;
        if let Some(run) = last_run.as_mut() {
            // What the run covered: its own commits and what it resumed after. Logs without
            // `resume_after` (older versions) did not change servers behind the log's back: their last
            // commit counts.
            let own = match run.resume_after {
                Some(r) => run.last_commit_end.unwrap_or_default().max(r),
                None => last_commit_end.unwrap_or_default(),
            };
            run.covered_to = run.covered_to.max(own);
        }
        (last_commit_end, last_run)
    }
}

/// Cuts the file at `keep` (returning the SHA-256 of what was cut), syncs it and positions it there.
fn cut_and_sync(file: &mut File, keep: u64, len: u64) -> io::Result<Option<Head>> {
    let mut cut_sha256 = None;
    if keep < len {
        cut_sha256 = Some(sha256_of_range(file, keep, len)?);
        file.set_len(keep)?;
    }
    // Only a regular file has anything to sync (a device such as /dev/full refuses fsync with EINVAL).
    if file.metadata()?.is_file() {
        file.sync_all()?;
    }
    file.seek(SeekFrom::Start(keep))?;
    Ok(cut_sha256)
}

/// SHA-256 of the file's bytes from `from` to `to`, read in blocks (an unfinished transaction can be
/// large).
fn sha256_of_range(file: &mut File, from: u64, to: u64) -> io::Result<Head> {
    use sha2::{Digest, Sha256};
    file.seek(SeekFrom::Start(from))?;
    let mut h = Sha256::new();
    let mut left = to - from;
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        let n = (buf.len() as u64).min(left) as usize;
        file.read_exact(&mut buf[..n])?;
        h.update(&buf[..n]);
        left -= n as u64;
    }
    Ok(h.finalize().into())
}

/// Reads lines from the end of a file towards its start without loading it whole.
struct BackwardLines {
    /// File offset where `buf` begins.
    pos: u64,
    buf: Vec<u8>,
    first: bool,
}

impl BackwardLines {
    fn new(len: u64) -> Self {
        BackwardLines { pos: len, buf: Vec::new(), first: true }
    }

    /// Returns (start offset, line without newline, whether a newline ended it). Only the file's last
    /// line can lack its newline: that is a torn write.
    fn next_line(&mut self, file: &mut File) -> io::Result<Option<(u64, Vec<u8>, bool)>> {
        loop {
            // After the first line is taken, buf ends with the newline of the line we want next.
            let search_end = if self.first { self.buf.len() } else { self.buf.len().saturating_sub(1) };
            let found = self.buf[..search_end].iter().rposition(|&b| b == b'\n');
            if found.is_none() && self.pos > 0 {
                let step = (64 * 1024u64).min(self.pos);
                let new_pos = self.pos - step;
                let mut chunk = vec![0u8; step as usize];
                file.seek(SeekFrom::Start(new_pos))?;
                file.read_exact(&mut chunk)?;
                chunk.extend_from_slice(&self.buf);
                self.buf = chunk;
                self.pos = new_pos;
                continue;
            }
            let idx = found.map_or(0, |nl| nl + 1);
            if self.buf.is_empty() {
                return Ok(None);
            }
            let was_first = self.first;
            self.first = false;
            let mut line = self.buf.split_off(idx);
            if !was_first {
                line.pop();
            } else if line.is_empty() {
                // The file ends with a newline: no torn line.
                continue;
            }
            return Ok(Some((self.pos + idx as u64, line, !was_first)));
        }
    }
}

/// The capture loop's handle on the writer thread.
pub struct Writer {
    tx: mpsc::Sender<Chunk>,
    durable: watch::Receiver<Durable>,
    thread: Option<std::thread::JoinHandle<Chainer>>,
}

impl Writer {
    /// Starts the writer thread. For a file, `file` comes from [`open_log`]; `base_len` is its length.
    pub fn start(output: &Output, file: Option<File>, base_len: u64) -> io::Result<Writer> {
        let (tx, rx) = mpsc::channel::<Chunk>(32);
        let (dtx, drx) = watch::channel(Durable { lsn: Lsn::INVALID, bytes: base_len, error: None, head: None });
        let target = match (output, file) {
            (Output::File(path), Some(f)) => Target::File { file: f, path: path.clone() },
            (Output::File(path), None) => {
                let (f, _) = open_log(path).map_err(|e| io::Error::other(e.to_string()))?;
                Target::File { file: f, path: path.clone() }
            }
            (Output::Stdout, _) => Target::Stdout(io::stdout()),
        };
        let thread = std::thread::Builder::new()
            .name("walwitness-writer".into())
            .spawn(move || run(target, rx, dtx, base_len))?;
        Ok(Writer { tx, durable: drx, thread: Some(thread) })
    }

    /// Queues a chunk; waits when the writer is behind (bounded memory).
    pub async fn send(&self, chunk: Chunk) -> Result<(), String> {
        self.tx.send(chunk).await.map_err(|_| self.failure())
    }

    /// The queue itself, for callers that must keep doing other work while they wait for room.
    pub fn sender(&self) -> mpsc::Sender<Chunk> {
        self.tx.clone()
    }

    pub fn durable(&self) -> watch::Receiver<Durable> {
        self.durable.clone()
    }

    fn failure(&self) -> String {
        self.durable.borrow().error.clone().unwrap_or_else(|| "log writer stopped".to_owned())
    }

    /// Waits until everything queued is durable (or the writer failed) and stops the thread.
    pub async fn close(self) -> Durable {
        self.close_with_chain().await.0
    }

    /// Like [`Writer::close`], also handing back the chain state, so that a record written after the
    /// writer stopped (`capture_stopped`, once the cleanup is known) continues the chain.
    pub async fn close_with_chain(mut self) -> (Durable, Chainer) {
        let Writer { tx, durable, thread } = &mut self;
        drop(std::mem::replace(tx, mpsc::channel(1).0));
        let mut chain = Chainer::new();
        if let Some(t) = thread.take() {
            if let Ok(Ok(c)) = tokio::task::spawn_blocking(move || t.join()).await {
                chain = c;
            }
        }
        let d = durable.borrow().clone();
        (d, chain)
    }
}

enum Target {
    File { file: File, path: PathBuf },
    Stdout(io::Stdout),
}

fn run(mut target: Target, mut rx: mpsc::Receiver<Chunk>, durable: watch::Sender<Durable>, base_len: u64) -> Chainer {
    // Chain values are added here, on the bytes exactly as written (see `crate::sink::chain`).
    let mut w = Written { len: base_len, boundary_len: base_len, chain: Chainer::new(), out: Vec::new() };
    let mut synced_lsn = Lsn::INVALID;
    while let Some(first) = rx.blocking_recv() {
        match w.write_batch(&mut target, first, &mut rx) {
            Ok(pending_ack) => {
                if let Some(a) = pending_ack {
                    synced_lsn = synced_lsn.max(a);
                }
                durable.send_replace(Durable { lsn: synced_lsn, bytes: w.len, error: None, head: w.chain.head() });
            }
            Err(e) => {
                let msg = match &target {
                    Target::File { path, .. } => {
                        format!("cannot write output file {}: {e}", path.display())
                    }
                    Target::Stdout(_) => format!("cannot write to standard output: {e}"),
                };
                durable.send_replace(Durable {
                    lsn: synced_lsn,
                    bytes: w.boundary_len.min(w.len),
                    error: Some(msg),
                    head: None,
                });
                // The log failed: nothing may be chained onto it.
                return Chainer::new();
            }
        }
    }
    w.chain
}

/// What the writer thread has written.
struct Written {
    len: u64,
    /// The length at the last transaction boundary: where a rollback cuts back to.
    boundary_len: u64,
    chain: Chainer,
    /// The bytes of a chunk with chain values added.
    out: Vec<u8>,
}

impl Written {
    /// Writes `first` and whatever is already queued behind it, then syncs once; returns the highest
    /// acknowledgement the batch carried (durable once this returns).
    fn write_batch(
        &mut self,
        target: &mut Target,
        first: Chunk,
        rx: &mut mpsc::Receiver<Chunk>,
    ) -> io::Result<Option<Lsn>> {
        let mut pending_ack: Option<Lsn> = None;
        let mut dirty = false;
        let mut next = Some(first);
        while let Some(chunk) = next.take() {
            match chunk {
                Chunk::Append { data, boundary, ack } => {
                    if !data.is_empty() {
                        self.out.clear();
                        self.chain.feed(&data, &mut self.out);
                        target.write_all(&self.out)?;
                        self.len += self.out.len() as u64;
                        dirty = true;
                        // Do not keep a large transaction's buffer around.
                        if self.out.capacity() > 1 << 20 {
                            self.out = Vec::new();
                        }
                    }
                    if boundary {
                        self.boundary_len = self.len;
                        self.chain.mark_boundary();
                    }
                    if let Some(a) = ack {
                        pending_ack = Some(pending_ack.map_or(a, |p| p.max(a)));
                    }
                }
                Chunk::Rollback => {
                    if self.len != self.boundary_len {
                        target.truncate(self.boundary_len)?;
                        self.len = self.boundary_len;
                        dirty = true;
                    }
                    if target.can_truncate() {
                        self.chain.rollback();
                    } else {
                        // The bytes stay in the pipe, and in the chain.
                        self.chain.drop_carry();
                    }
                }
            }
            // Coalesce whatever is already queued into this sync.
            next = rx.try_recv().ok();
        }
        // With nothing new written since the last sync, an ack needs no second sync.
        if dirty {
            target.sync()?;
        }
        Ok(pending_ack)
    }
}

impl Target {
    fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Target::File { file, .. } => file.write_all(data),
            Target::Stdout(s) => {
                let mut l = s.lock();
                l.write_all(data)
            }
        }
    }

    fn sync(&mut self) -> io::Result<()> {
        match self {
            Target::File { file, .. } => file.sync_data(),
            // A pipe or terminal has no durability to wait for; flushing hands the bytes to the reader.
            Target::Stdout(s) => s.lock().flush(),
        }
    }

    fn can_truncate(&self) -> bool {
        matches!(self, Target::File { .. })
    }

    fn truncate(&mut self, len: u64) -> io::Result<()> {
        match self {
            Target::File { file, .. } => {
                file.set_len(len)?;
                file.seek(SeekFrom::Start(len))?;
                Ok(())
            }
            // Bytes already handed to a pipe cannot be taken back; readers drop rows without a commit.
            Target::Stdout(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn recover(content: &str) -> (Recovery, String) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log.jsonl");
        std::fs::write(&p, content).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        let (_f, rec) = open_log(&p).unwrap();
        (rec, std::fs::read_to_string(&p).unwrap())
    }

    const STARTED: &str = "{\"type\":\"capture_started\"}\n";
    const DEL: &str = "{\"type\":\"delete\"}\n";
    const COMMIT1: &str = "{\"type\":\"commit\",\"end_lsn\":\"0/10\"}\n";
    const COMMIT2: &str = "{\"type\":\"commit\",\"end_lsn\":\"1/20\"}\n";

    #[test]
    fn empty_and_missing_file() {
        let (rec, s) = recover("");
        assert_eq!(rec, Recovery::default());
        assert_eq!(s, "");
    }

    #[test]
    fn complete_log_is_untouched() {
        let log = format!("{STARTED}{DEL}{COMMIT1}{DEL}{DEL}{COMMIT2}");
        let (rec, s) = recover(&log);
        assert_eq!(s, log);
        assert_eq!(rec.last_commit_end, Some(Lsn(0x1_0000_0020)));
        assert_eq!(rec.cut_bytes, 0);
    }

    #[test]
    fn torn_line_and_open_transaction_are_cut() {
        let good = format!("{STARTED}{DEL}{COMMIT1}");
        let (rec, s) = recover(&format!("{good}{DEL}{DEL}{{\"type\":\"del"));
        assert_eq!(s, good);
        assert_eq!(rec.last_commit_end, Some(Lsn(0x10)));
        assert_eq!(rec.cut_lines, 3);
    }

    #[test]
    fn boundary_records_after_last_commit_are_kept() {
        let log = format!("{STARTED}{DEL}{COMMIT1}{{\"type\":\"capture_stopped\"}}\n{STARTED}");
        let (rec, s) = recover(&format!("{log}{DEL}"));
        assert_eq!(s, log);
        assert_eq!(rec.last_commit_end, Some(Lsn(0x10)));
    }

    #[test]
    fn an_open_transactions_statement_records_are_cut_with_its_rows() {
        let good = format!("{STARTED}{DEL}{COMMIT1}{{\"type\":\"trigger_error\"}}\n");
        let (rec, s) = recover(&format!("{good}{{\"type\":\"statement\"}}\n{DEL}{{\"type\":\"statement\"}}\n"));
        assert_eq!(s, good);
        assert_eq!(rec.cut_lines, 3);
    }

    #[test]
    fn an_open_transactions_rename_is_cut_with_its_rows() {
        // A crash after the rename and a row of the same transaction: keeping the rename (and the row before
        // it) would leave that row twice in the log once the transaction is decoded again.
        let good = format!("{STARTED}{DEL}{COMMIT1}");
        let renamed = "{\"type\":\"relation_renamed\",\"xid\":7}\n";
        let (rec, s) = recover(&format!("{good}{DEL}{renamed}{DEL}"));
        assert_eq!(s, good);
        assert_eq!(rec.cut_lines, 3);
        // Inside a transaction that committed, it stays.
        let log = format!("{good}{DEL}{renamed}{DEL}{COMMIT2}");
        assert_eq!(recover(&log).1, log);
    }

    #[test]
    fn only_an_open_transaction() {
        let (rec, s) = recover(&format!("{STARTED}{DEL}{DEL}"));
        assert_eq!(s, STARTED);
        assert_eq!(rec.last_commit_end, None);
        assert_eq!(rec.cut_lines, 2);
        // A crash during the very first write leaves a torn capture_started: still a log.
        let (rec, s) = recover("{\"type\":\"capture_st");
        assert_eq!((s.as_str(), rec.cut_lines), ("", 1));
    }

    /// Issue 13: `--out` naming an ordinary file "repaired" it (cut its lines); it is refused untouched.
    #[test]
    fn a_file_that_is_not_a_log_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        for content in ["root:x:0:0:root:/root:/bin/bash\nbin:x:1:1::/:\n", "{\"type\":\"delete\"}\n", "no newline"] {
            let p = dir.path().join("notes.txt");
            std::fs::write(&p, content).unwrap();
            let e = open_log(&p).unwrap_err();
            assert!(matches!(e, SinkError::NotALog { .. }), "{e}");
            assert!(e.to_string().contains("left untouched"), "{e}");
            assert_eq!(std::fs::read_to_string(&p).unwrap(), content);
        }
    }

    /// Issue 13: a symbolic link planted at the `--out` path is not followed (its target was truncated).
    #[test]
    fn a_planted_symlink_is_not_followed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("shadow");
        std::fs::write(&target, "secret\n").unwrap();
        let p = dir.path().join("deletes.jsonl");
        std::os::unix::fs::symlink(&target, &p).unwrap();
        let e = open_log(&p).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "secret\n");
    }

    #[test]
    fn an_exposed_log_is_reported() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("l.jsonl");
        std::fs::write(&p, STARTED).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(open_log(&p).unwrap().1.exposed_mode, Some(0o644));
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(open_log(&p).unwrap().1.exposed_mode, None);
    }

    #[test]
    fn long_lines_across_read_chunks() {
        let big = format!("{{\"type\":\"delete\",\"pad\":\"{}\"}}\n", "x".repeat(100_000));
        let log = format!("{STARTED}{big}{COMMIT1}{big}{big}");
        let (rec, s) = recover(&log);
        assert_eq!(s, format!("{STARTED}{big}{COMMIT1}"));
        assert_eq!(rec.last_commit_end, Some(Lsn(0x10)));
    }

    #[test]
    fn the_last_run_and_its_open_gaps() {
        let a = "{\"type\":\"capture_started\",\"slot\":\"s\",\"start_lsn\":\"0/5\",\"system_identifier\":\"7\",\"database\":\"app\",\"timeline\":2,\"resume_after\":\"0/8\"}\n";
        let open = |r: &str, from: &str| {
            format!("{{\"type\":\"gap\",\"reason\":\"{r}\",\"table\":\"public.t\",\"from_lsn\":\"{from}\",\"to_lsn\":null,\"open\":true,\"closes\":false}}\n")
        };
        let close = |r: &str, from: &str| {
            format!("{{\"type\":\"gap\",\"reason\":\"{r}\",\"table\":\"public.t\",\"from_lsn\":\"{from}\",\"to_lsn\":\"0/30\",\"open\":false,\"closes\":true}}\n")
        };
        // An earlier run's open gap is not this run's; one of this run's was closed, one was not.
        let log = format!(
            "{STARTED}{}{a}{DEL}{COMMIT1}{}{}{}",
            open("old", "0/1"),
            open("table_unpublished", "0/9"),
            close("table_unpublished", "0/9"),
            open("table_dropped", "0/12")
        );
        let (rec, s) = recover(&log);
        assert_eq!(s, log);
        let run = rec.last_run.clone().unwrap();
        assert_eq!((run.system_identifier.as_str(), run.database.as_str(), run.timeline), ("7", "app", Some(2)));
        assert_eq!(run.last_commit_end, Some(Lsn(0x10)));
        assert_eq!(
            run.open_gaps,
            [OpenGap { reason: "table_dropped".into(), table: Some("public.t".into()), from_lsn: Lsn(0x12) }]
        );
        // resume_after raised by the run's own commits.
        assert_eq!(rec.resume_mark(), Lsn(0x10));
        // A run that wrote nothing resumes after what it started with, not after an earlier run's commits.
        let (rec, _) = recover(&format!("{STARTED}{DEL}{COMMIT2}{a}"));
        assert_eq!(rec.last_commit_end, Some(Lsn(0x1_0000_0020)));
        assert_eq!(rec.resume_mark(), Lsn(0x8));
        // Its coverage is its own: an earlier run's (maybe another server's) commits are not.
        assert_eq!(rec.last_run.unwrap().covered_to, Lsn(0x8));
        // Logs without resume_after: the last commit, as before.
        let (rec, _) = recover(&format!("{STARTED}{DEL}{COMMIT2}{STARTED}"));
        assert_eq!(rec.resume_mark(), Lsn(0x1_0000_0020));
    }

    #[test]
    fn a_log_in_use_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("busy.jsonl");
        let (_held, _) = open_log(&p).unwrap();
        let e = open_log(&p).unwrap_err();
        assert!(e.to_string().contains("another walwitness capture"), "{e}");
    }

    #[test]
    fn new_file_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("n.jsonl");
        let (mut f, _) = open_log(&p).unwrap();
        f.write_all(b"x").unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
    }

    #[tokio::test]
    async fn the_chain_survives_a_rollback_and_a_repair() {
        use crate::sink::chain::to_hex;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.jsonl");
        let (f, rec) = open_log(&p).unwrap();
        let w = Writer::start(&Output::File(p.clone()), Some(f), rec.len).unwrap();
        let cs = "{\"type\":\"capture_started\",\"format_version\":2,\"chain_prev\":null}\n";
        let del = "{\"type\":\"delete\",\"xid\":7}\n";
        let commit = "{\"type\":\"commit\",\"xid\":7}\n";
        let send = |data: String, boundary: bool| {
            let w = &w;
            async move { w.send(Chunk::Append { data: Bytes::from(data), boundary, ack: None }).await.unwrap() }
        };
        send(cs.to_owned(), true).await;
        send(format!("{del}{del}"), false).await;
        w.send(Chunk::Rollback).await.unwrap();
        send(format!("{del}{commit}"), true).await;
        let fin = w.close().await;
        let written = std::fs::read(&p).unwrap();
        let last = written.split(|&b| b == b'\n').rev().nth(1).unwrap();
        let head = crate::sink::chain::split_chained(last).unwrap().1;
        assert_eq!(fin.head, Some(head));
        let ok = |log: &[u8]| {
            let mut v = crate::read::verify::Verifier::new(None).unwrap();
            let file: std::rc::Rc<str> = "c".into();
            for (i, l) in log.split_inclusive(|&b| b == b'\n').enumerate() {
                v.line(crate::read::verify::Loc { file: file.clone(), line: i as u64 + 1 }, l).unwrap();
            }
        };
        ok(&written);
        assert_eq!(written.split(|&b| b == b'\n').count(), 4, "{}", String::from_utf8_lossy(&written));
        // A crash leaves an unfinished transaction: the repair cuts it (and only it), says what it cut,
        // and hands over the head for the next run's chain_prev.
        let tail = format!("{del}{del}{{\"type\":\"com");
        std::fs::OpenOptions::new().append(true).open(&p).unwrap().write_all(tail.as_bytes()).unwrap();
        let (_f, rec) = open_log(&p).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), written);
        assert_eq!(rec.chain_head, Some(head));
        assert_eq!(rec.cut_lines, 3);
        assert_eq!(rec.cut_bytes, tail.len() as u64);
        use sha2::Digest;
        assert_eq!(to_hex(&rec.cut_sha256.unwrap()), hex::encode(sha2::Sha256::digest(tail.as_bytes())));
    }

    #[tokio::test]
    async fn writer_rolls_back_to_boundary_and_reports_durable_lsn() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.jsonl");
        let (f, rec) = open_log(&p).unwrap();
        let w = Writer::start(&Output::File(p.clone()), Some(f), rec.len).unwrap();
        let mut d = w.durable();
        w.send(Chunk::Append { data: Bytes::from_static(b"a\n"), boundary: true, ack: Some(Lsn(5)) }).await.unwrap();
        w.send(Chunk::Append { data: Bytes::from_static(b"b\n"), boundary: false, ack: None }).await.unwrap();
        w.send(Chunk::Rollback).await.unwrap();
        w.send(Chunk::Append { data: Bytes::from_static(b"c\n"), boundary: true, ack: Some(Lsn(9)) }).await.unwrap();
        d.wait_for(|x| x.lsn == Lsn(9)).await.unwrap();
        let fin = w.close().await;
        assert_eq!(fin.lsn, Lsn(9));
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "a\nc\n");
    }
}
