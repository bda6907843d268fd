//! The decoding pipeline, one step for every received pgoutput payload: parse (with the stream state
//! the payload needs), route (transactions that are not final yet are held), assemble (`Assembler`).
//! The live capture loop (`capture::stream`, which adds only I/O and batching) and `replay --raw`
//! (`read::raw_replay`) both go through it, so a raw capture file decodes to the records the live
//! capture wrote, streamed and prepared transactions included.
//!
//! Transactions that arrive before they are final: streamed in-progress transactions (Stream Start …
//! Stream Stop blocks, then Stream Commit or Stream Abort) and prepared transactions (two-phase: Begin
//! Prepare … Prepare, then COMMIT / ROLLBACK PREPARED).
//!
//! Their messages are kept in a spool file (`sink::spool`, bounded memory) until they are final
//! (`route`). At commit the spool is replayed through the ordinary `Assembler` as a synthesized Begin …
//! Commit carrying the commit LSN and time that only then became known (`replay`), so the records are
//! byte-for-byte those of a non-streamed transaction (plus `gid` on the commit record of a prepared
//! one). The log therefore stays contiguous per transaction and ends each with its commit.
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
mod replay;
mod route;
#[cfg(test)]
mod tests;

use bytes::{Bytes, BytesMut};

pub use replay::{Replay, ReplayKind};
pub use route::{Route, SpoolError, Spooled};

use super::{AssembleError, Assembler, Step};
use crate::protocol::pgoutput::{self, Message, ParseOptions};
use crate::protocol::{DecodeError, Lsn};

/// Whether Stream Abort carries the abort LSN and time with this pgoutput protocol version: with
/// `streaming 'parallel'` (protocol 4, PostgreSQL 16+), which walwitness asks for only for them.
pub fn stream_abort_has_lsn(proto: u32) -> bool {
    proto >= 4
}

#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error("at LSN {lsn}: {source}")]
    Parse { lsn: Lsn, source: DecodeError },
    #[error(transparent)]
    Route(#[from] SpoolError),
    #[error(transparent)]
    Assemble(#[from] AssembleError),
    /// Records set aside by `Pipeline::feed`'s caller could not be kept.
    #[error(transparent)]
    Spill(std::io::Error),
}

/// What a received payload means, before assembly.
pub enum Received {
    /// For the Assembler now.
    Message(Message),
    /// Held (spooled, or bookkeeping only).
    Held,
    /// A held transaction became final: its messages go to the Assembler (`Replay::next_message`).
    Replay(Box<Replay>),
}

pub struct Pipeline {
    pub asm: Assembler,
    /// Streamed and prepared transactions, held until they are final.
    pub held: Spooled,
    /// See `stream_abort_has_lsn`; follows the protocol version the stream was started with.
    pub stream_abort_has_lsn: bool,
}

impl Pipeline {
    pub fn new(asm: Assembler, held: Spooled, stream_abort_has_lsn: bool) -> Pipeline {
        Pipeline { asm, held, stream_abort_has_lsn }
    }

    /// Parses and routes one XLogData payload; `acked` is the highest position acknowledged so far.
    pub fn receive(&mut self, lsn: Lsn, data: &Bytes, acked: Lsn) -> Result<Received, PipelineError> {
        let opts =
            ParseOptions { in_stream: self.held.in_stream_block(), stream_abort_has_lsn: self.stream_abort_has_lsn };
        let m = pgoutput::parse(data, opts).map_err(|source| PipelineError::Parse { lsn, source })?;
        Ok(match self.held.route(lsn, data, m, acked)? {
            Route::Pass(m) => Received::Message(m),
            Route::Held => Received::Held,
            Route::Replay(r) => Received::Replay(r),
        })
    }

    /// Assembles one message (received, or of a replay) into `out`.
    pub fn assemble(&mut self, lsn: Lsn, msg: Message, out: &mut BytesMut) -> Result<Step, PipelineError> {
        Ok(self.asm.handle(lsn, msg, out)?)
    }

    /// The connection was lost: the server sends unfinished transactions again from their start.
    pub fn reset(&mut self) {
        self.asm.abandon_transaction();
        self.held.reset();
    }

    /// The whole pipeline for one payload, without the live capture's waits (for the sampler, the
    /// catalog) or its acknowledgements: offline decoding and tests. Records accumulate in `out`;
    /// complete ones are handed to `spill` once `out` holds `spill_at` bytes mid-transaction. Says when
    /// a transaction's records are complete (the rest of them in `out`).
    pub fn feed(
        &mut self,
        lsn: Lsn,
        data: &Bytes,
        out: &mut BytesMut,
        spill_at: usize,
        spill: &mut dyn FnMut(Bytes) -> std::io::Result<()>,
    ) -> Result<Option<Ended>, PipelineError> {
        match self.receive(lsn, data, Lsn::INVALID)? {
            Received::Held => Ok(None),
            Received::Message(m) => match self.assemble(lsn, m, out)? {
                Step::Committed { end_lsn, .. } => Ok(Some(Ended { end_lsn: Some(end_lsn) })),
                Step::Continue => {
                    if out.len() >= spill_at {
                        spill(self.asm.take_complete(out)).map_err(PipelineError::Spill)?;
                    }
                    Ok(None)
                }
            },
            Received::Replay(mut r) => {
                while let Some((at, m)) = r.next_message()? {
                    match self.assemble(at, m, out)? {
                        Step::Continue if out.len() >= spill_at => {
                            spill(r.finish_rows(self.asm.take_complete(out))).map_err(PipelineError::Spill)?;
                        }
                        Step::Continue => {}
                        Step::Committed { end_lsn, .. } => {
                            let last = r.finish_last(out.split().freeze());
                            out.extend_from_slice(&last);
                            let end_lsn = r.commit_lsn().map(|_| end_lsn);
                            let at = match r.kind {
                                ReplayKind::Commit { end_lsn, .. } => end_lsn,
                                ReplayKind::Abort { abort_lsn, .. } => abort_lsn.unwrap_or(lsn),
                            };
                            // Offline nothing waits for durability: the spool can go now.
                            self.held.retire(at, *r);
                            self.held.release(at);
                            return Ok(Some(Ended { end_lsn }));
                        }
                    }
                }
                Ok(None)
            }
        }
    }
}

/// A transaction's records are complete.
pub struct Ended {
    /// Where a commit ends (`None` for an aborted attempt's records, which acknowledge nothing).
    pub end_lsn: Option<Lsn>,
}
