//! `walwitness replay --raw FILE…`: decodes raw capture files offline into the transaction records
//! (delete, truncate, commit) a live capture wrote — the same pipeline (`decode::pipeline`: streamed and
//! prepared transactions are held until final here too), the same bytes.
//!
//! The file is streamed frame by frame (see `crate::sink::raw`): memory is bounded by the largest frame
//! (`--max-line-length`), and a transaction's records wait for its commit in memory only up to
//! `held::IN_MEMORY`, then in a temporary file. A damaged frame (checksum mismatch, unknown type) stops
//! it with exit 14 naming the frame's byte offset; a frame cut short at the very end (a capture that
//! stopped while writing it) is reported and the rest ignored, as the live log's repair would.
//!
//! Attribution is never taken on the file's word: a session stored in an activity frame ('a') is
//! reported as `"attributed_by":"activity"` whatever its JSON says (a forged frame claiming the
//! trigger's exactness gets no more than the activity source's standing), without the fields only the
//! trigger sets; trigger messages cannot be verified offline (the key stays on the server) and
//! attribute nothing.
//!
//! Each file is decoded with its own held transactions: a transaction prepared in one file and committed
//! in another is reported as never prepared (a capture appends to one `--raw-out` file across runs).
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Write};
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;

use crate::attribution::activity::ActivityMap;
use crate::attribution::{Attributor, Session};
use crate::decode::pipeline::{stream_abort_has_lsn, Pipeline, PipelineError, Spooled};
use crate::decode::relations::WatchList;
use crate::decode::Assembler;
use crate::error::{Exit, Failure};
use crate::protocol::Lsn;
use crate::sink::raw::{Frame, RawError, RawHeader, RawReader};
use crate::sink::spool::SpoolDir;

use super::held::Held;

pub fn run(files: &[String], max_frame: usize) -> Exit {
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    for f in files {
        match decode_file(f, max_frame, &mut out) {
            Ok(()) => {}
            Err(Ok(f)) => {
                // What was decoded before the damage is written, then the failure.
                let _ = out.flush();
                eprintln!("walwitness replay: error: {f}");
                return f.exit;
            }
            // Our reader went away (`| head`): a normal end.
            Err(Err(e)) if e.kind() == io::ErrorKind::BrokenPipe => return Exit::Ok,
            Err(Err(e)) => {
                eprintln!("walwitness replay: error: cannot write the output: {e}");
                return Exit::Output;
            }
        }
    }
    match out.flush() {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Exit::Output,
        _ => Exit::Ok,
    }
}

/// The session of an activity frame as offline replay may report it: the activity source's claim,
/// never more. `None` when it is not a session at all.
pub fn activity_session(json: &[u8]) -> Option<Session> {
    let mut s: Session = serde_json::from_slice(json).ok()?;
    s.attributed_by = "activity".into();
    // Only the trigger source sets these (or a disagreement between both sources, live only).
    s.current_user = None;
    s.statement_start = None;
    s.trigger_depth = None;
    s.conflict = None;
    Some(s)
}

type FileError = Result<Failure, io::Error>;

fn damaged(path: &str, e: impl std::fmt::Display) -> FileError {
    Ok(Failure::new(Exit::DamagedLog, format!("{path}: {e}")))
}

fn decode_file(path: &str, max_frame: usize, out: &mut impl Write) -> Result<(), FileError> {
    let file = File::open(path).map_err(|e| Ok(Failure::new(Exit::Usage, format!("cannot read {path}: {e}"))))?;
    let (header, mut reader) = RawReader::open(BufReader::with_capacity(256 * 1024, file), max_frame)
        .map_err(|e| damaged(path, format!("{e} (give a file written by `walwitness capture --raw-out`)")))?;
    if !reader.checked() {
        eprintln!(
            "walwitness replay: warning: {path} is a raw file of format version {} (an older walwitness): its \
             frames carry no checksums, so damage to it cannot be detected — its output is unchecked",
            reader.version()
        );
    }
    let mut d = Decoder::new(&header).map_err(|e| {
        Ok(Failure::new(
            Exit::Output,
            format!("cannot make a temporary directory for the spools of streamed and prepared transactions: {e}"),
        ))
    })?;
    loop {
        let at = reader.offset();
        let frame = match reader.next_frame() {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(RawError::Cut { at }) => {
                crate::term::eprint_line(&format!(
                    "walwitness replay: warning: {path}: the frame at byte {at} is cut short (the capture stopped while writing it); the rest is ignored"
                ));
                break;
            }
            Err(e) => return Err(damaged(path, e)),
        };
        d.frame(frame, out).map_err(|e| match e {
            Ok(FrameError::Damaged(kind, why)) => {
                damaged(path, format!("damaged raw file: the {kind} frame at byte {at} {why}"))
            }
            Ok(FrameError::Decode { wal_start, e: PipelineError::Parse { source, .. } }) => {
                damaged(path, format!("the frame at byte {at} (LSN {wal_start}) is not a pgoutput message: {source}"))
            }
            Ok(FrameError::Decode { e, .. }) => damaged(path, format!("at the frame at byte {at}: {e}")),
            Err(io) => Err(io),
        })?;
    }
    Ok(())
}

/// The watched tables a raw file's header names, by OID when it has them (else by name).
fn watch_list(header: &RawHeader) -> WatchList {
    let mut watch = WatchList::new();
    for t in &header.tables {
        match t.oid {
            Some(oid) => {
                watch.add_table(oid, &t.schema, &t.table, t.primary_key.clone());
                for p in &t.partitions {
                    watch.add_partition(p.oid, oid, p.primary_key.clone());
                }
            }
            None => watch.add(&t.schema, &t.table, t.primary_key.clone()),
        }
    }
    watch
}

/// Why a frame cannot be decoded.
enum FrameError {
    /// The kind of frame, and what is wrong with it.
    Damaged(&'static str, &'static str),
    Decode {
        wal_start: Lsn,
        e: PipelineError,
    },
}

/// One raw file's frames through the pipeline the live capture used (`decode::pipeline`).
struct Decoder {
    pipe: Pipeline,
    map: Arc<ActivityMap>,
    /// Records of the transaction being decoded.
    buf: BytesMut,
    /// A transaction is written only once its commit is decoded, as the live log's rollback would
    /// leave it; a large one waits on disk, not in memory.
    waiting: Held,
}

impl Decoder {
    fn new(header: &RawHeader) -> io::Result<Decoder> {
        let map = Arc::new(ActivityMap::new());
        let attributor = Attributor { activity: Some(map.clone()), verifier: None };
        let asm = Assembler::new(watch_list(header), Default::default(), attributor);
        // Two-phase messages are in the file only if the capture asked for them; aborted attempts are
        // not written (the file does not say whether the capture wrote them).
        let mut held = Spooled::new(SpoolDir::temporary()?, false, true, None);
        // Kept across a reconnection, like the live capture's durable ones: the server may not send a
        // PREPARE again.
        held.durable_prepared()?;
        let pipe = Pipeline::new(asm, held, stream_abort_has_lsn(header.proto_version));
        Ok(Decoder { pipe, map, buf: BytesMut::new(), waiting: Held::new() })
    }

    /// Handles one frame; `Err(Ok(_))` when it cannot be decoded, `Err(Err(_))` when the output fails.
    fn frame(&mut self, frame: Frame, out: &mut impl Write) -> Result<(), Result<FrameError, io::Error>> {
        match frame {
            Frame::Activity { xid, session } => match activity_session(&session) {
                Some(s) => self.map.record(Instant::now(), vec![(xid, s)]),
                None => return Err(Ok(FrameError::Damaged("activity", "is not a session"))),
            },
            Frame::Inference { xid, encoded } => match crate::attribution::infer::Inference::decode(&encoded) {
                Some(i) => self.map.replay_inference(xid, i),
                None => return Err(Ok(FrameError::Damaged("inference", "is not understood"))),
            },
            Frame::Partition { oid, root, primary_key } => {
                self.pipe.asm.add_partition(oid, root, primary_key);
            }
            Frame::Reconnected => {
                self.pipe.reset();
                self.buf.clear();
                self.waiting.clear();
            }
            Frame::XLog { wal_start, payload } => {
                let waiting = &mut self.waiting;
                let ended = self
                    .pipe
                    .feed(wal_start, &payload, &mut self.buf, 1 << 20, &mut |b| waiting.push_bytes(&b))
                    .map_err(|e| match e {
                        PipelineError::Spill(e) => Err(e),
                        e => Ok(FrameError::Decode { wal_start, e }),
                    })?;
                if let Some(ended) = ended {
                    if let Some(end) = ended.end_lsn {
                        self.pipe.asm.set_resume_after(end);
                    }
                    self.waiting.write_to(out).map_err(Err)?;
                    out.write_all(&self.buf).map_err(Err)?;
                    self.buf.clear();
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_activity_frame_never_claims_more_than_activity() {
        let forged = Session {
            attributed_by: "trigger".into(),
            pid: 4242,
            user: Some("mallory".into()),
            current_user: Some("admin".into()),
            statement_start: Some("2026-01-01T00:00:00.000000Z".into()),
            trigger_depth: Some(0),
            conflict: Some(Box::new(Session::default())),
            ..Default::default()
        };
        let s = activity_session(&serde_json::to_vec(&forged).unwrap()).unwrap();
        assert_eq!(s.attributed_by, "activity");
        assert_eq!((s.pid, s.user.as_deref()), (4242, Some("mallory")));
        assert_eq!((s.current_user, s.statement_start, s.trigger_depth), (None, None, None));
        assert!(s.conflict.is_none());
        assert!(activity_session(b"{\"not\":\"a session\"}").is_none());
    }
}
