//! Reading and writing messages: cancel-safe frame reads, the skipping of large foreign CopyData
//! frames as they arrive, and draining to ReadyForQuery.

use bytes::Buf;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::frame::{log_notice, missing_bytes, split_frame, Frame, Incoming};
use super::{Phase, ReplicationConnection, MAX_RESERVE_STEP, READ_CHUNK, SKIP_CHECK_MIN};
use crate::pg::error::{DbError, PgError};
use crate::protocol::replication::Verdict;

impl ReplicationConnection {
    pub(super) async fn flush_wbuf(&mut self) -> Result<(), PgError> {
        self.socket.write_all(&self.wbuf).await?;
        self.socket.flush().await?;
        self.wbuf.clear();
        Ok(())
    }

    /// Cancel-safe: the only await is `read_buf`, which either appends to
    /// `rbuf` or does nothing; frames are split off synchronously.
    pub(super) async fn read_frame(&mut self) -> Result<Frame, PgError> {
        loop {
            match self.next_incoming()? {
                Some(Incoming::Frame(f)) => return Ok(f),
                // Only `recv` asks for skipping; elsewhere the rest of a skipped frame is just dropped.
                Some(Incoming::Skipped(_)) => continue,
                None => self.fill().await?,
            }
        }
    }

    /// What the read buffer holds next, without I/O: a complete frame, or bytes of a skipped one
    /// dropped. `None`: more bytes are needed.
    pub(super) fn next_incoming(&mut self) -> Result<Option<Incoming>, PgError> {
        if self.discard > 0 {
            let n = self.discard.min(self.rbuf.len());
            self.rbuf.advance(n);
            self.discard -= n;
            return Ok((n > 0).then_some(Incoming::Skipped(n)));
        }
        if let Some(f) = split_frame(&mut self.rbuf)? {
            if let (Some(filter), b'd') = (self.filter.as_mut(), f.tag) {
                filter.delivered(&f.body);
            }
            return Ok(Some(Incoming::Frame(f)));
        }
        if self.front_verdict() == Verdict::Skip {
            // split_frame checked the length: 5 bytes are there, and the frame is incomplete.
            let len = i32::from_be_bytes([self.rbuf[1], self.rbuf[2], self.rbuf[3], self.rbuf[4]]);
            tracing::debug!(bytes = len, "dropping a large logical decoding message of another application unread");
            self.discard = 1 + len as usize;
            return self.next_incoming();
        }
        Ok(None)
    }

    /// The filter's verdict on the incomplete CopyData frame at the front of the buffer, if it is large.
    fn front_verdict(&self) -> Verdict {
        let Some(filter) = &self.filter else { return Verdict::Keep };
        match self.rbuf.get(..5) {
            Some([b'd', l @ ..]) if i32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize > SKIP_CHECK_MIN + 4 => {
                filter.check(&self.rbuf[5..])
            }
            _ => Verdict::Keep,
        }
    }

    /// Reads more bytes. While a large frame's fate is open (or its bytes are being dropped), only a
    /// chunk at a time: the buffer must not be grown for a frame that will not be kept.
    pub(super) async fn fill(&mut self) -> Result<(), PgError> {
        let want = if self.discard > 0 || self.front_verdict() == Verdict::NeedMore {
            READ_CHUNK
        } else {
            missing_bytes(&self.rbuf).clamp(READ_CHUNK, MAX_RESERVE_STEP)
        };
        self.rbuf.reserve(want);
        let n = self.socket.read_buf(&mut self.rbuf).await?;
        if n == 0 {
            if !self.rbuf.is_empty() || self.discard > 0 {
                tracing::debug!(pending = self.rbuf.len(), "connection closed mid-message");
            }
            return Err(PgError::Closed);
        }
        Ok(())
    }

    /// Consumes everything up to ReadyForQuery, returning the first error.
    pub(super) async fn drain_to_ready(&mut self) -> Result<(), PgError> {
        let mut err = None;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'Z' => break,
                b'E' => {
                    let e = DbError::parse(&f.body)?;
                    err.get_or_insert(PgError::Db(e));
                }
                b'N' => log_notice(&f.body),
                b'S' => self.parameter_status(&f.body)?,
                _ => {}
            }
        }
        self.phase = Phase::Ready;
        err.map_or(Ok(()), Err)
    }

    pub(super) async fn begin_command(&mut self, sql: &str) -> Result<(), PgError> {
        match self.phase {
            Phase::Ready => {}
            Phase::Draining => {
                // Leftovers of an earlier command; its error was reported.
                let _ = self.drain_to_ready().await;
            }
            _ => return Err(PgError::protocol("COPY is in progress; call finish_copy() before another command")),
        }
        self.wbuf.clear();
        frontend::query(sql, &mut self.wbuf).map_err(|e| PgError::Config(format!("invalid query text: {e}")))?;
        self.flush_wbuf().await
    }
}
