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
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

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
}

impl LastRun {
    /// Whether that run left its slot behind for this one to resume from.
    pub fn left_slot(&self) -> bool {
        self.stopped != Some(false)
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
}

/// Opens (creating with mode 0600) the log, repairs its tail and says where it ends.
pub fn open_log(path: &Path) -> Result<(File, Recovery), SinkError> {
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path)
        .map_err(|source| SinkError::Open { path: path.to_owned(), source })?;
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
    let rec = repair_tail(&mut file).map_err(|source| SinkError::Repair { path: path.to_owned(), source })?;
    Ok((file, rec))
}

#[derive(Deserialize)]
struct Peek {
    #[serde(rename = "type")]
    kind: String,
    end_lsn: Option<String>,
    slot: Option<String>,
    start_lsn: Option<String>,
    last_lsn: Option<String>,
    slot_kept: Option<bool>,
}

/// Cuts a torn last line and the lines of an unfinished transaction, then finds the last commit.
fn repair_tail(file: &mut File) -> io::Result<Recovery> {
    let len = file.seek(SeekFrom::End(0))?;
    let mut cut_at: Option<u64> = None;
    let mut cut_lines = 0u64;
    let mut last_commit_end = None;
    let mut last_run: Option<LastRun> = None;
    let mut stopped: Option<(bool, Option<Lsn>)> = None;
    let lsn = |s: &Option<String>| s.as_deref().and_then(|s| s.parse::<Lsn>().ok());
    let mut lines = BackwardLines::new(len);
    while let Some((start, line, terminated)) = lines.next_line(file)? {
        let peek: Option<Peek> = if terminated { serde_json::from_slice(&line).ok() } else { None };
        let is_boundary = match &peek {
            // Aborted rows are closed by their `abort` record like rows by their commit.
            Some(p) => !matches!(
                p.kind.as_str(),
                "delete" | "truncate" | "statement" | "aborted_delete" | "aborted_truncate" | "aborted_statement"
            ),
            None => false,
        };
        if cut_at.is_none() {
            if is_boundary {
                cut_at = Some(start + line.len() as u64 + 1);
            } else {
                cut_lines += 1;
                continue;
            }
        }
        if let Some(p) = peek {
            match p.kind.as_str() {
                "commit" if last_commit_end.is_none() => last_commit_end = lsn(&p.end_lsn),
                "capture_stopped" if last_run.is_none() && stopped.is_none() => {
                    stopped = Some((p.slot_kept.unwrap_or(true), lsn(&p.last_lsn)));
                }
                "capture_started" if last_run.is_none() => {
                    last_run = Some(LastRun {
                        slot: p.slot.unwrap_or_default(),
                        covered_to: lsn(&p.start_lsn)
                            .unwrap_or_default()
                            .max(stopped.and_then(|s| s.1).unwrap_or_default()),
                        stopped: stopped.map(|s| s.0),
                    });
                }
                _ => {}
            }
            if last_commit_end.is_some() && last_run.is_some() {
                break;
            }
        }
    }
    if let (Some(run), Some(c)) = (last_run.as_mut(), last_commit_end) {
        run.covered_to = run.covered_to.max(c);
    }
    let keep = cut_at.unwrap_or(0);
    if keep < len {
        file.set_len(keep)?;
        file.sync_all()?;
    }
    file.seek(SeekFrom::Start(keep))?;
    Ok(Recovery { last_commit_end, cut_bytes: len - keep, cut_lines, len: keep, last_run })
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
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer thread. For a file, `file` comes from [`open_log`]; `base_len` is its length.
    pub fn start(output: &Output, file: Option<File>, base_len: u64) -> io::Result<Writer> {
        let (tx, rx) = mpsc::channel::<Chunk>(32);
        let (dtx, drx) = watch::channel(Durable { lsn: Lsn::INVALID, bytes: base_len, error: None });
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
    pub async fn close(mut self) -> Durable {
        let Writer { tx, durable, thread } = &mut self;
        drop(std::mem::replace(tx, mpsc::channel(1).0));
        if let Some(t) = thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
        let d = durable.borrow().clone();
        d
    }
}

enum Target {
    File { file: File, path: PathBuf },
    Stdout(io::Stdout),
}

fn run(mut target: Target, mut rx: mpsc::Receiver<Chunk>, durable: watch::Sender<Durable>, base_len: u64) {
    let mut len = base_len;
    let mut boundary_len = base_len;
    let mut synced_lsn = Lsn::INVALID;
    while let Some(first) = rx.blocking_recv() {
        let mut pending_ack: Option<Lsn> = None;
        let mut dirty = false;
        let mut next = Some(first);
        let result: io::Result<()> = (|| {
            while let Some(chunk) = next.take() {
                match chunk {
                    Chunk::Append { data, boundary, ack } => {
                        if !data.is_empty() {
                            target.write_all(&data)?;
                            len += data.len() as u64;
                            dirty = true;
                        }
                        if boundary {
                            boundary_len = len;
                        }
                        if let Some(a) = ack {
                            pending_ack = Some(pending_ack.map_or(a, |p| p.max(a)));
                        }
                    }
                    Chunk::Rollback => {
                        if len != boundary_len {
                            target.truncate(boundary_len)?;
                            len = boundary_len;
                            dirty = true;
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
            Ok(())
        })();
        match result {
            Ok(()) => {
                if let Some(a) = pending_ack {
                    synced_lsn = synced_lsn.max(a);
                }
                durable.send_replace(Durable { lsn: synced_lsn, bytes: len, error: None });
            }
            Err(e) => {
                let msg = match &target {
                    Target::File { path, .. } => {
                        format!("cannot write output file {}: {e}", path.display())
                    }
                    Target::Stdout(_) => format!("cannot write to standard output: {e}"),
                };
                durable.send_replace(Durable { lsn: synced_lsn, bytes: boundary_len.min(len), error: Some(msg) });
                return;
            }
        }
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
    fn only_an_open_transaction() {
        let (rec, s) = recover(&format!("{DEL}{DEL}"));
        assert_eq!(s, "");
        assert_eq!(rec.last_commit_end, None);
        assert_eq!(rec.cut_lines, 2);
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
