//! A final transaction fed back to the Assembler from its spool, and what its records become: those of
//! an ordinary transaction (plus `gid`), or with `--include-aborted` the `aborted_*` records closed by an
//! `abort` record (see `sink::record`).
use bytes::{Bytes, BytesMut};

use super::route::{Held, SpoolError};
use crate::decode::ABORT_SENTINEL_LSN;
use crate::protocol::pgoutput::{self, Message, ParseOptions};
use crate::protocol::Lsn;
use crate::sink::record::{self, format_pg_time, push_lsn, push_str, Kind};
use crate::sink::spool::{Spool, SpoolReader};

/// Commit time written into an aborted transaction's synthesized Begin, with `ABORT_SENTINEL_LSN`.
/// No real commit has them, so the rows rendered for it are recognised and rewritten
/// (`rewrite_aborted`); its final LSN is also above any resume point, so the Assembler never skips an
/// abort's rows.
const ABORT_SENTINEL_TIME: i64 = 0;

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
    pub(super) spool: Option<Spool>,
}

impl Replay {
    pub(super) fn new(mut h: Held, from: u64, kind: ReplayKind) -> std::io::Result<Replay> {
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
        if !last.starts_with(Kind::Commit.open()) || !last.ends_with(b"}\n") {
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
                record::write_abort_head(&mut out, self.xid, subxid, abort_lsn, abort_time);
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
    record::push_abort_fields(&mut replacement, abort_lsn, abort_time);
    let finder = memchr::memmem::Finder::new(&sentinel[..]);
    let mut out = BytesMut::with_capacity(rendered.len() + rendered.len() / 8);
    for line in rendered.split_inclusive(|&c| c == b'\n') {
        let aborted = [Kind::Delete, Kind::Truncate, Kind::Statement]
            .into_iter()
            .find_map(|k| Some((line.strip_prefix(k.open())?, k.aborted()?)));
        let Some((rest, kind)) = aborted else {
            out.extend_from_slice(line);
            continue;
        };
        out.extend_from_slice(kind.open());
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
