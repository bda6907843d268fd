//! A minimal PostgreSQL client for `replication=database` connections.
//!
//! tokio-postgres cannot speak the replication sub-protocol (it has no
//! CopyBoth support), so this is our own client on top of
//! `postgres-protocol`'s frontend encoders and authentication helpers.
//! Backend messages are framed and parsed here: the framing has to know
//! about CopyBothResponse (`W`), which postgres-protocol rejects, and doing
//! it ourselves lets CopyData payloads leave as zero-copy `Bytes` slices of
//! the read buffer.
//!
//! Nothing that arrives from the network may cause a panic: every length
//! and field is checked and turned into [`PgError::Protocol`](super::PgError::Protocol).
//!
//! `startup` connects (hosts, TLS, startup message), `auth` authenticates, `frame` splits and parses
//! backend messages, `wire` reads and writes them, `copy` runs commands and the COPY BOTH stream.

mod auth;
mod copy;
mod frame;
mod startup;
mod wire;

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use super::error::DbError;
use crate::protocol::replication::ForeignMessages;

/// Read-buffer headroom kept before each read, so that a busy stream is
/// consumed in large chunks with few syscalls.
const READ_CHUNK: usize = 128 * 1024;
/// Upper bound for a single pre-reservation when a large frame is pending;
/// the buffer still grows past it as data arrives.
const MAX_RESERVE_STEP: usize = 16 * 1024 * 1024;
/// PostgreSQL never sends a message larger than MaxAllocSize (1 GB - 1);
/// anything bigger is a corrupt stream, not something to allocate for.
const MAX_FRAME_LEN: usize = 0x3fff_ffff;
/// How long `finish_copy` waits for the server to wind the stream down.
pub const DEFAULT_FINISH_TIMEOUT: Duration = Duration::from_secs(30);
/// CopyData payloads up to this size are always received whole; larger ones are shown to the
/// [`ForeignMessages`] filter first. Far above walwitness's own messages (under 64 KiB: the statement is
/// cut at 8192 characters), so those are never judged, and what a skipped message can cost is one read.
pub const SKIP_CHECK_MIN: usize = 1 << 20;

/// Result of [`ReplicationConnection::simple_query`], in text format.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

impl QueryResult {
    /// Value of `column` in row `row`, if both exist and it is not NULL.
    pub fn get(&self, row: usize, column: &str) -> Option<&str> {
        let i = self.columns.iter().position(|c| c == column)?;
        self.rows.get(row)?.get(i)?.as_deref()
    }
}

/// What [`ReplicationConnection::recv`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyEvent {
    /// One CopyData payload (an XLogData `w` or keepalive `k` message, ...).
    Data(Bytes),
    /// The server ended the stream (CopyDone, or the command completed).
    Done,
    /// This many bytes of a CopyData payload that the [`ForeignMessages`] filter judged not worth
    /// receiving (a large logical decoding message of another application) arrived and were dropped
    /// unread. Repeated as the rest of that payload arrives: the server is alive and sending.
    Skipped(usize),
    /// A NoticeResponse (WARNING, NOTICE, ...) in the middle of the stream. Handed to the caller
    /// rather than only logged: some carry meaning for the data, e.g. PostgreSQL 18's
    /// `skipped loading publication`, which 14-17 report as an ERROR instead.
    Notice(DbError),
}

/// Where the connection is in the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Idle, ReadyForQuery consumed.
    Ready,
    /// Inside COPY BOTH, neither side has sent CopyDone.
    CopyBoth,
    /// Server sent CopyDone; we may still send until we send ours.
    ServerCopyDone,
    /// We sent CopyDone; the server may still send data until its CopyDone.
    ClientCopyDone,
    /// The copy or command is over; the rest up to ReadyForQuery is unread.
    Draining,
}

enum Socket {
    Tcp(TcpStream),
    Unix(UnixStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Socket {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// `server_version` as reported at startup → `server_version_num` form:
/// `15.18 (Debian 15.18-0+deb12u1)` → 150018, `17.2` → 170002,
/// `18beta1` → 180000, `9.6.24` → 90624.
pub fn parse_server_version(v: &str) -> Option<u32> {
    fn num(s: &str) -> (Option<u32>, &str) {
        let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        (s[..end].parse().ok(), &s[end..])
    }
    let (major, rest) = num(v.trim_start());
    let major = major?;
    let (minor, rest) = match rest.strip_prefix('.') {
        Some(r) => num(r),
        None => (None, rest),
    };
    if major >= 10 {
        return major.checked_mul(10000)?.checked_add(minor.unwrap_or(0));
    }
    let patch = match rest.strip_prefix('.') {
        Some(r) => num(r).0,
        None => None,
    };
    Some(major * 10000 + minor.unwrap_or(0) * 100 + patch.unwrap_or(0))
}

/// A `replication=database` session.
pub struct ReplicationConnection {
    socket: Socket,
    rbuf: BytesMut,
    wbuf: BytesMut,
    params: HashMap<String, String>,
    backend_pid: i32,
    secret_key: i32,
    target: String,
    tls: bool,
    phase: Phase,
    /// Judges large CopyData payloads by their first bytes ([`skip_foreign_messages`](Self::skip_foreign_messages)).
    filter: Option<ForeignMessages>,
    /// Bytes of a skipped CopyData frame still to arrive and be dropped.
    discard: usize,
}

impl std::fmt::Debug for ReplicationConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConnection")
            .field("target", &self.target)
            .field("tls", &self.tls)
            .field("backend_pid", &self.backend_pid)
            .field("phase", &self.phase)
            .finish()
    }
}

impl ReplicationConnection {
    /// `server_version` as a number (150018 for 15.18); 0 if unknown.
    pub fn server_version_num(&self) -> u32 {
        self.parameter("server_version").and_then(parse_server_version).unwrap_or(0)
    }

    /// A ParameterStatus value reported by the server.
    pub fn parameter(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }

    pub fn backend_pid(&self) -> i32 {
        self.backend_pid
    }

    /// The cancel key, for a CancelRequest on a separate connection.
    pub fn secret_key(&self) -> i32 {
        self.secret_key
    }

    /// True if the session is encrypted.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// `user@host:port/db` of this connection.
    pub fn target(&self) -> &str {
        &self.target
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_versions() {
        assert_eq!(parse_server_version("15.18 (Debian 15.18-0+deb12u1)"), Some(150018));
        assert_eq!(parse_server_version("17.2"), Some(170002));
        assert_eq!(parse_server_version("18beta1"), Some(180000));
        assert_eq!(parse_server_version("17devel"), Some(170000));
        assert_eq!(parse_server_version("9.6.24"), Some(90624));
        assert_eq!(parse_server_version("16rc1"), Some(160000));
        assert_eq!(parse_server_version("garbage"), None);
        assert_eq!(parse_server_version(""), None);
        assert_eq!(parse_server_version("99999999999"), None);
    }
}
