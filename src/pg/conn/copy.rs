//! Commands: simple queries (replication commands included) and the COPY BOTH stream.

use std::io;
use std::time::Duration;

use bytes::{BufMut, Bytes};
use postgres_protocol::message::frontend;
use tokio::io::AsyncWriteExt;

use super::frame::{log_notice, parse_data_row, parse_row_description, split_frame, Incoming};
use super::{CopyEvent, Phase, QueryResult, ReplicationConnection, DEFAULT_FINISH_TIMEOUT};
use crate::pg::error::{DbError, PgError};
use crate::protocol::replication::ForeignMessages;

impl ReplicationConnection {
    /// Runs `sql` with the simple query protocol (replication commands such
    /// as `IDENTIFY_SYSTEM` included). With several result sets, returns the
    /// last one that had rows, else the last one. A server error is returned
    /// only after ReadyForQuery, so the connection stays usable.
    pub async fn simple_query(&mut self, sql: &str) -> Result<QueryResult, PgError> {
        self.begin_command(sql).await?;
        let mut with_rows: Option<QueryResult> = None;
        let mut last: Option<QueryResult> = None;
        let mut current: Option<QueryResult> = None;
        let mut err: Option<PgError> = None;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'T' => match parse_row_description(&f.body) {
                    Ok(columns) => current = Some(QueryResult { columns, rows: Vec::new() }),
                    Err(e) => {
                        err.get_or_insert(e);
                    }
                },
                b'D' => match (current.as_mut(), parse_data_row(&f.body)) {
                    (Some(c), Ok(row)) => c.rows.push(row),
                    (None, _) => {
                        err.get_or_insert(PgError::protocol("DataRow without RowDescription"));
                    }
                    (_, Err(e)) => {
                        err.get_or_insert(e);
                    }
                },
                b'C' | b'I' => {
                    if let Some(c) = current.take() {
                        if c.rows.is_empty() {
                            last = Some(c);
                        } else {
                            with_rows = Some(c);
                            last = None;
                        }
                    }
                }
                b'E' => {
                    let e = DbError::parse(&f.body)?;
                    err.get_or_insert(PgError::Db(e));
                }
                b'N' => log_notice(&f.body),
                b'S' => self.parameter_status(&f.body)?,
                b'G' => {
                    // COPY FROM STDIN: refuse, the server then errors out.
                    self.wbuf.clear();
                    frontend::copy_fail("walwitness does not send COPY data", &mut self.wbuf)?;
                    self.flush_wbuf().await?;
                }
                b'W' => {
                    self.phase = Phase::CopyBoth;
                    return Err(PgError::protocol("the query started a COPY BOTH stream; use start_copy_both()"));
                }
                b'Z' => break,
                // CopyOut data, notifications, ...: nothing to keep.
                _ => {}
            }
        }
        self.phase = Phase::Ready;
        if let Some(e) = err {
            return Err(e);
        }
        Ok(with_rows.or(last).unwrap_or_default())
    }

    /// Sends `sql` (e.g. `START_REPLICATION ...`) and waits until the server
    /// enters COPY BOTH mode. On a server error the connection is drained to
    /// ReadyForQuery first, so a retry on the same connection works.
    pub async fn start_copy_both(&mut self, sql: &str) -> Result<(), PgError> {
        self.begin_command(sql).await?;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'W' => {
                    self.phase = Phase::CopyBoth;
                    return Ok(());
                }
                b'E' => {
                    let e = DbError::parse(&f.body)?;
                    self.phase = Phase::Draining;
                    self.drain_to_ready().await.ok();
                    return Err(PgError::Db(e));
                }
                b'N' => log_notice(&f.body),
                b'S' => self.parameter_status(&f.body)?,
                b'Z' => {
                    self.phase = Phase::Ready;
                    return Err(PgError::protocol("the command completed without starting a COPY BOTH stream"));
                }
                b'G' => {
                    self.wbuf.clear();
                    frontend::copy_fail("walwitness does not send COPY data", &mut self.wbuf)?;
                    self.flush_wbuf().await?;
                }
                _ => {}
            }
        }
    }

    /// From now on, drop large logical decoding messages whose prefix is not `own_prefix` as they
    /// arrive, instead of buffering them whole ([`ForeignMessages`]; [`CopyEvent::Skipped`] reports
    /// the dropped bytes). Call right after the stream started.
    pub fn skip_foreign_messages(&mut self, own_prefix: &str) {
        self.filter = Some(ForeignMessages::new(own_prefix));
    }

    /// Next event of the COPY BOTH stream.
    ///
    /// Cancel-safe: dropping the future (e.g. in `tokio::select!`) loses no
    /// data, because frames are only taken out of the read buffer once they
    /// are complete, and no state changes before that (the bytes of a skipped
    /// frame are dropped synchronously, and counted in `discard`).
    pub async fn recv(&mut self) -> Result<CopyEvent, PgError> {
        loop {
            if self.phase == Phase::Ready {
                return Ok(CopyEvent::Done);
            }
            let f = match self.next_incoming()? {
                Some(Incoming::Frame(f)) => f,
                Some(Incoming::Skipped(n)) => return Ok(CopyEvent::Skipped(n)),
                None => {
                    self.fill().await?;
                    continue;
                }
            };
            match f.tag {
                b'd' => return Ok(CopyEvent::Data(f.body.freeze())),
                b'c' => {
                    self.phase = match self.phase {
                        Phase::ClientCopyDone | Phase::Draining => Phase::Draining,
                        _ => Phase::ServerCopyDone,
                    };
                    return Ok(CopyEvent::Done);
                }
                b'Z' => {
                    self.phase = Phase::Ready;
                    return Ok(CopyEvent::Done);
                }
                b'E' => {
                    let e = DbError::parse(&f.body)?;
                    // An ERROR ends the copy; ReadyForQuery follows (FATAL
                    // closes the connection instead).
                    self.phase = Phase::Draining;
                    return Err(PgError::Db(e));
                }
                b'N' => match DbError::parse(&f.body) {
                    Ok(n) => return Ok(CopyEvent::Notice(n)),
                    Err(_) => tracing::debug!("unparseable notice from server"),
                },
                b'S' => self.parameter_status(&f.body)?,
                // The command's tail after the copy (CommandComplete, or a
                // result set after a timeline switch) and notifications.
                b'C' | b'T' | b'D' | b'A' => {}
                other => {
                    return Err(PgError::protocol(format!("unexpected message {:?} in COPY BOTH mode", other as char)))
                }
            }
        }
    }

    /// The next CopyData payload if a complete one is already in the read buffer; `None` otherwise,
    /// and for any other message, which is left for [`recv`](Self::recv). No I/O and no await: the
    /// stream loop drains what one read brought in without a `select!` round per message (at a
    /// million small messages, those polls were ~10% of the capture's CPU).
    pub fn try_recv_buffered(&mut self) -> Result<Option<Bytes>, PgError> {
        if self.phase == Phase::Ready || self.discard > 0 || self.rbuf.first() != Some(&b'd') {
            return Ok(None);
        }
        match split_frame(&mut self.rbuf)? {
            Some(f) => {
                if let Some(filter) = self.filter.as_mut() {
                    filter.delivered(&f.body);
                }
                Ok(Some(f.body.freeze()))
            }
            None => Ok(None),
        }
    }

    /// Sends one CopyData message (e.g. a standby status update) and flushes.
    /// Not cancel-safe: a write cut short leaves a partial message behind.
    pub async fn send_copy_data(&mut self, payload: &[u8]) -> Result<(), PgError> {
        if !matches!(self.phase, Phase::CopyBoth | Phase::ServerCopyDone) {
            return Err(PgError::protocol("send_copy_data outside of COPY BOTH mode"));
        }
        let len = i32::try_from(payload.len() + 4).map_err(|_| PgError::protocol("CopyData payload too large"))?;
        self.wbuf.clear();
        self.wbuf.put_u8(b'd');
        self.wbuf.put_i32(len);
        self.wbuf.extend_from_slice(payload);
        self.flush_wbuf().await
    }

    /// Ends the COPY BOTH stream cleanly within [`DEFAULT_FINISH_TIMEOUT`].
    pub async fn finish_copy(&mut self) -> Result<(), PgError> {
        self.finish_copy_within(DEFAULT_FINISH_TIMEOUT).await
    }

    /// Sends CopyDone, discards data until the server's CopyDone, then reads
    /// to ReadyForQuery. On timeout the connection is in an unknown state
    /// and should be dropped.
    pub async fn finish_copy_within(&mut self, timeout: Duration) -> Result<(), PgError> {
        match tokio::time::timeout(timeout, self.finish_copy_inner()).await {
            Ok(r) => r,
            Err(_) => Err(PgError::Io(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("server did not end the replication stream within {}s", timeout.as_secs()),
            ))),
        }
    }

    async fn finish_copy_inner(&mut self) -> Result<(), PgError> {
        match self.phase {
            Phase::Ready => return Ok(()),
            Phase::CopyBoth | Phase::ServerCopyDone => {
                self.wbuf.clear();
                frontend::copy_done(&mut self.wbuf);
                self.flush_wbuf().await?;
                self.phase = if self.phase == Phase::CopyBoth { Phase::ClientCopyDone } else { Phase::Draining };
            }
            Phase::ClientCopyDone | Phase::Draining => {}
        }
        // The server's CopyData, CopyDone and CommandComplete are skipped on the way to ReadyForQuery.
        self.drain_to_ready().await
    }

    /// Sends Terminate and closes the socket. Errors are irrelevant here:
    /// the server ends the session either way.
    pub async fn close(mut self) {
        self.wbuf.clear();
        frontend::terminate(&mut self.wbuf);
        let _ = self.flush_wbuf().await;
        let _ = self.socket.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bytes::BytesMut;
    use tokio::net::UnixStream;

    use super::super::frame::frame;
    use super::super::{Socket, SKIP_CHECK_MIN};
    use super::*;

    fn test_conn(socket: UnixStream) -> ReplicationConnection {
        ReplicationConnection {
            socket: Socket::Unix(socket),
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
            params: HashMap::new(),
            backend_pid: 0,
            secret_key: 0,
            target: "test".into(),
            tls: false,
            phase: Phase::CopyBoth,
            filter: None,
            discard: 0,
        }
    }

    /// CopyData holding XLogData with one pgoutput message.
    fn xlog(msg: &[u8]) -> Vec<u8> {
        let mut p = vec![b'w'];
        p.extend_from_slice(&[0; 24]);
        p.extend_from_slice(msg);
        frame(b'd', &p)
    }

    fn logical_message(prefix: &[u8], content: &[u8]) -> Vec<u8> {
        let mut m = vec![b'M', 1];
        m.extend_from_slice(&[0; 8]);
        m.extend_from_slice(prefix);
        m.push(0);
        m.extend_from_slice(&(content.len() as i32).to_be_bytes());
        m.extend_from_slice(content);
        xlog(&m)
    }

    /// A large message of another application is dropped as it arrives (the read buffer never holds
    /// much of it), cancelled reads in the middle of it lose nothing, and what follows arrives intact;
    /// large messages of our own and other large payloads are received whole.
    #[tokio::test]
    async fn large_foreign_messages_are_dropped_unread() {
        let (client, mut server) = UnixStream::pair().unwrap();
        let mut conn = test_conn(client);
        conn.skip_foreign_messages("walwitness");
        let big = vec![b'x'; 3 * SKIP_CHECK_MIN];
        let foreign = logical_message(b"other", &big);
        let ours = logical_message(b"walwitness", &big);
        let delete = xlog(&[b"D".as_slice(), &big].concat());
        let mut wire = xlog(b"first");
        wire.extend(&foreign);
        wire.extend(xlog(b"after"));
        wire.extend(&ours);
        wire.extend(&delete);
        wire.extend(frame(b'c', b""));
        let writer = tokio::spawn(async move {
            for chunk in wire.chunks(7000) {
                server.write_all(chunk).await.unwrap();
                tokio::task::yield_now().await;
            }
            server
        });
        let mut got = Vec::new();
        let mut skipped = 0;
        let mut cap = 0;
        loop {
            // Cancelled polls (a select! losing to a timer) must be harmless at any point.
            let ev = match tokio::time::timeout(Duration::from_micros(50), conn.recv()).await {
                Ok(ev) => ev.unwrap(),
                Err(_) => continue,
            };
            if conn.discard > 0 {
                assert!(conn.try_recv_buffered().unwrap().is_none(), "no frame while dropping one");
                cap = cap.max(conn.rbuf.capacity());
            }
            match ev {
                CopyEvent::Skipped(n) => skipped += n,
                CopyEvent::Data(d) => got.push(d),
                CopyEvent::Done => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(skipped, foreign.len());
        assert!(cap < SKIP_CHECK_MIN, "read buffer grew to {cap} bytes for a dropped message");
        let want: Vec<&[u8]> = vec![&xlog(b"first")[5..], &xlog(b"after")[5..], &ours[5..], &delete[5..]]
            .into_iter()
            .map(|v| v.to_vec().leak() as &[u8])
            .collect();
        assert_eq!(got.len(), want.len());
        for (g, w) in got.iter().zip(want) {
            assert!(g[..] == *w, "payload of {} bytes differs", w.len());
        }
        drop(writer.await.unwrap());
    }

    /// The reader over a real (in-process) socket pair: partial writes and
    /// cancelled reads must not lose or corrupt frames.
    #[tokio::test]
    async fn recv_is_cancel_safe() {
        let (client, mut server) = UnixStream::pair().unwrap();
        let mut conn = test_conn(client);
        let big = vec![7u8; 300_000];
        let mut wire = frame(b'd', b"first");
        wire.extend(frame(b'N', b"SNOTICE\0C00000\0Mhi\0\0"));
        wire.extend(frame(b'd', &big));
        wire.extend(frame(b'c', b""));
        let (a, b) = wire.split_at(7);
        server.write_all(a).await.unwrap();
        // Half a frame then silence: the read must pend, and cancelling it
        // must keep the bytes already read.
        let r = tokio::time::timeout(Duration::from_millis(50), conn.recv()).await;
        assert!(r.is_err());
        let writer = tokio::spawn({
            let b = b.to_vec();
            async move {
                for chunk in b.chunks(1000) {
                    server.write_all(chunk).await.unwrap();
                    tokio::task::yield_now().await;
                }
                server
            }
        });
        assert_eq!(conn.recv().await.unwrap(), CopyEvent::Data(Bytes::from_static(b"first")));
        // A notice in the stream is handed to the caller (it can matter: PostgreSQL 18's
        // `skipped loading publication`).
        match conn.recv().await.unwrap() {
            CopyEvent::Notice(n) => {
                assert_eq!((n.severity.as_str(), n.message.as_str()), ("NOTICE", "hi"))
            }
            other => panic!("{other:?}"),
        }
        match conn.recv().await.unwrap() {
            CopyEvent::Data(d) => assert_eq!(d.len(), big.len()),
            other => panic!("{other:?}"),
        }
        assert_eq!(conn.recv().await.unwrap(), CopyEvent::Done);
        assert_eq!(conn.phase, Phase::ServerCopyDone);
        let server = writer.await.unwrap();
        drop(server);
        conn.phase = Phase::Draining;
        assert!(matches!(conn.recv().await, Err(PgError::Closed)));
    }
}
