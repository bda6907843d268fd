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
//! and field is checked and turned into [`PgError::Protocol`].

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use postgres_protocol::authentication::sasl::{self, ScramSha256};
use postgres_protocol::message::frontend;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use super::config::{ConnSpec, SslMode, Target};
use super::error::{AuthError, DbError, PgError};
use super::tls;
use crate::protocol::replication::{ForeignMessages, Verdict};

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

// ---------------------------------------------------------------------------
// Framing.

/// One backend message: its tag and body (the length word removed).
#[derive(Debug)]
pub(crate) struct Frame {
    pub tag: u8,
    pub body: BytesMut,
}

/// Splits one complete message off the front of `buf`. `Ok(None)` means
/// "need more bytes" and leaves `buf` untouched, which is what makes the
/// reader cancel-safe.
pub(crate) fn split_frame(buf: &mut BytesMut) -> Result<Option<Frame>, PgError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 || len as usize > MAX_FRAME_LEN {
        return Err(PgError::protocol(format!("invalid message length {len} (tag {:?})", buf[0] as char)));
    }
    let total = 1 + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let mut body = buf.split_to(total);
    let tag = body[0];
    body.advance(5);
    Ok(Some(Frame { tag, body }))
}

/// Bytes still missing for the frame at the front of `buf` (0 if unknown).
fn missing_bytes(buf: &[u8]) -> usize {
    if buf.len() < 5 {
        return 0;
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    (1 + len.max(4) as usize).saturating_sub(buf.len())
}

/// What the read buffer yields next.
enum Incoming {
    Frame(Frame),
    /// Bytes of a skipped CopyData frame, dropped.
    Skipped(usize),
}

/// Checked reads from a message body.
struct Cur<'a>(&'a [u8]);

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], PgError> {
        if self.0.len() < n {
            return Err(PgError::protocol("message shorter than its contents"));
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Ok(h)
    }
    fn i16(&mut self) -> Result<i16, PgError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self) -> Result<i32, PgError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn cstr(&mut self) -> Result<&'a str, PgError> {
        let nul =
            self.0.iter().position(|&b| b == 0).ok_or_else(|| PgError::protocol("unterminated string in message"))?;
        let s = self.take(nul + 1)?;
        std::str::from_utf8(&s[..nul]).map_err(|_| PgError::protocol("string is not UTF-8"))
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

fn parse_row_description(body: &[u8]) -> Result<Vec<String>, PgError> {
    let mut c = Cur(body);
    let n = c.i16()?;
    let mut cols = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        cols.push(c.cstr()?.to_owned());
        // table oid, column number, type oid, type size, type modifier, format
        c.take(4 + 2 + 4 + 2 + 4 + 2)?;
    }
    Ok(cols)
}

fn parse_data_row(body: &[u8]) -> Result<Vec<Option<String>>, PgError> {
    let mut c = Cur(body);
    let n = c.i16()?;
    let mut row = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let len = c.i32()?;
        if len < 0 {
            row.push(None);
        } else {
            let v = c.take(len as usize)?;
            row.push(Some(String::from_utf8_lossy(v).into_owned()));
        }
    }
    Ok(row)
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

fn log_notice(body: &[u8]) {
    match DbError::parse(body) {
        Ok(n) if matches!(n.severity.as_str(), "WARNING") => {
            tracing::warn!(code = %n.code, "server: {}", crate::term::clean(&n.message))
        }
        Ok(n) => tracing::info!(severity = %n.severity, code = %n.code, "server: {}", crate::term::clean(&n.message)),
        Err(_) => tracing::debug!("unparseable notice from server"),
    }
}

// ---------------------------------------------------------------------------

/// Whether TLS is off, attempted, or mandatory for one connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TlsUse {
    Off,
    Preferred,
    Required,
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
    /// Connects to the first reachable host of `spec` (libpq order), with
    /// TLS per `sslmode`, and authenticates. `params` are extra startup
    /// parameters; they override the defaults of the same name.
    pub async fn connect(spec: &ConnSpec, params: &[(&str, &str)]) -> Result<ReplicationConnection, PgError> {
        let mut tls_config: Option<Arc<rustls::ClientConfig>> = None;
        let mut last_err = None;
        for target in spec.targets() {
            let needs_tls = !target.is_unix() && spec.tls().mode != SslMode::Disable;
            if needs_tls && tls_config.is_none() {
                tls_config = Some(tls::client_config(spec.tls())?);
            }
            let what = spec.describe_target(target);
            let attempt = Self::connect_target(spec, target, params, tls_config.clone());
            let res = match spec.connect_timeout() {
                Some(t) => match tokio::time::timeout(t, attempt).await {
                    Ok(r) => r,
                    Err(_) => Err(PgError::Connect {
                        target: what.clone(),
                        source: io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!("timeout expired after {}s", t.as_secs()),
                        ),
                    }),
                },
                None => attempt.await,
            };
            match res {
                Ok(c) => return Ok(c),
                // libpq stops at an authentication failure instead of
                // trying the remaining hosts.
                Err(e @ (PgError::Auth(_) | PgError::Config(_))) => return Err(e),
                Err(e) => {
                    tracing::debug!(target = %what, error = %e, "connection attempt failed");
                    last_err = Some(e);
                }
            }
        }
        Err(last_err.unwrap_or_else(|| PgError::Config("no host to connect to".into())))
    }

    async fn connect_target(
        spec: &ConnSpec,
        target: &Target,
        params: &[(&str, &str)],
        tls_config: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<ReplicationConnection, PgError> {
        // libpq never uses TLS over a Unix socket, whatever sslmode says.
        let mode = if target.is_unix() { SslMode::Disable } else { spec.tls().mode };
        let cfg = tls_config.as_ref();
        match mode {
            SslMode::Disable => Self::attempt(spec, target, params, TlsUse::Off, cfg).await,
            SslMode::Allow => {
                match Self::attempt(spec, target, params, TlsUse::Off, cfg).await {
                    // "no pg_hba.conf entry" for a non-TLS connection: the
                    // server may only have hostssl lines.
                    Err(e) if e.sqlstate() == Some("28000") => {
                        tracing::debug!(error = %e, "retrying with TLS (sslmode=allow)");
                        Self::attempt(spec, target, params, TlsUse::Required, cfg).await
                    }
                    r => r,
                }
            }
            SslMode::Prefer => match Self::attempt(spec, target, params, TlsUse::Preferred, cfg).await {
                Err(e @ PgError::Tls(_)) => {
                    tracing::warn!(target = %target.describe(), error = %e,
                            "TLS failed, retrying without TLS (sslmode=prefer)");
                    Self::attempt(spec, target, params, TlsUse::Off, cfg).await
                }
                Err(e) if e.sqlstate() == Some("28000") => {
                    tracing::debug!(error = %e, "retrying without TLS (sslmode=prefer)");
                    Self::attempt(spec, target, params, TlsUse::Off, cfg).await
                }
                r => r,
            },
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                Self::attempt(spec, target, params, TlsUse::Required, cfg).await
            }
        }
    }

    async fn open_socket(spec: &ConnSpec, target: &Target) -> Result<(Socket, String), PgError> {
        if let Some(path) = target.socket_path() {
            let what = format!("socket \"{}\"", path.display());
            let s =
                UnixStream::connect(&path).await.map_err(|source| PgError::Connect { target: what.clone(), source })?;
            return Ok((Socket::Unix(s), what));
        }
        let host = match target.hostaddr {
            Some(a) => a.to_string(),
            None => target.tls_name(),
        };
        let what = target.describe();
        let addrs: Vec<_> = tokio::net::lookup_host((host.as_str(), target.port))
            .await
            .map_err(|source| PgError::Connect { target: what.clone(), source })?
            .collect();
        let mut last = io::Error::new(io::ErrorKind::NotFound, "host name resolved to no addresses");
        for addr in addrs {
            match TcpStream::connect(addr).await {
                Ok(s) => {
                    let _ = s.set_nodelay(true);
                    set_keepalive(&s, spec.pg_config());
                    return Ok((Socket::Tcp(s), what));
                }
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "TCP connect failed");
                    last = e;
                }
            }
        }
        Err(PgError::Connect { target: what, source: last })
    }

    async fn attempt(
        spec: &ConnSpec,
        target: &Target,
        params: &[(&str, &str)],
        tls_use: TlsUse,
        tls_config: Option<&Arc<rustls::ClientConfig>>,
    ) -> Result<ReplicationConnection, PgError> {
        let (socket, what) = Self::open_socket(spec, target).await?;
        let socket = match (tls_use, socket) {
            (TlsUse::Off, s) => s,
            (_, Socket::Tcp(mut tcp)) => {
                let mut buf = BytesMut::new();
                frontend::ssl_request(&mut buf);
                tcp.write_all(&buf).await?;
                // Exactly one byte: anything the server sends after 'S'
                // must go to the TLS layer (CVE-2021-23222).
                let answer = tcp.read_u8().await.map_err(|e| match e.kind() {
                    io::ErrorKind::UnexpectedEof => PgError::Closed,
                    _ => PgError::Io(e),
                })?;
                match answer {
                    b'S' => {
                        let cfg = tls_config.ok_or_else(|| PgError::Tls("TLS configuration missing".into()))?;
                        let name = tls::server_name(&target.tls_name())?;
                        let stream = tokio_rustls::TlsConnector::from(cfg.clone())
                            .connect(name, tcp)
                            .await
                            .map_err(|e| tls::handshake_error(e, &what))?;
                        Socket::Tls(Box::new(stream))
                    }
                    b'N' if tls_use == TlsUse::Preferred => Socket::Tcp(tcp),
                    b'N' => {
                        return Err(PgError::Tls(format!(
                            "server {what} does not support SSL, but sslmode={} requires it",
                            spec.tls().mode
                        )))
                    }
                    // Pre-7.0-style error reply; the server hangs up next.
                    b'E' => return Err(PgError::Tls(format!("server {what} rejected the SSL request"))),
                    other => return Err(PgError::protocol(format!("unexpected response {other:#04x} to SSL request"))),
                }
            }
            (_, s) => s,
        };
        let tls = matches!(socket, Socket::Tls(_));
        let mut conn = ReplicationConnection {
            socket,
            rbuf: BytesMut::with_capacity(READ_CHUNK),
            wbuf: BytesMut::with_capacity(1024),
            params: HashMap::new(),
            backend_pid: 0,
            secret_key: 0,
            target: spec.describe_target(target),
            tls,
            phase: Phase::Ready,
            filter: None,
            discard: 0,
        };
        conn.startup(spec, target, params).await?;
        tracing::debug!(target = %conn.target, tls, pid = conn.backend_pid, "replication connection established");
        Ok(conn)
    }

    async fn startup(&mut self, spec: &ConnSpec, target: &Target, extra: &[(&str, &str)]) -> Result<(), PgError> {
        let mut params: Vec<(&str, &str)> = vec![
            ("user", spec.user()),
            ("database", spec.dbname()),
            ("replication", "database"),
            ("client_encoding", "UTF8"),
            ("application_name", spec.application_name().unwrap_or("walwitness")),
        ];
        if let Some(o) = spec.options() {
            params.push(("options", o));
        }
        for &(k, v) in extra {
            match params.iter_mut().find(|(pk, _)| *pk == k) {
                Some(slot) => slot.1 = v,
                None => params.push((k, v)),
            }
        }
        self.wbuf.clear();
        frontend::startup_message(params.iter().copied(), &mut self.wbuf)
            .map_err(|e| PgError::Config(format!("invalid startup parameter: {e}")))?;
        self.flush_wbuf().await?;

        self.authenticate(spec, target).await?;

        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'S' => self.parameter_status(&f.body)?,
                b'K' => {
                    let mut c = Cur(&f.body);
                    self.backend_pid = c.i32()?;
                    // Protocol 3.2 allows longer keys; we only speak 3.0,
                    // but keep the first word either way.
                    self.secret_key = c.i32().unwrap_or(0);
                }
                b'Z' => return self.take_sql_ascii_as_stored().await,
                b'E' => return Err(PgError::from_startup_error(DbError::parse(&f.body)?)),
                b'N' => log_notice(&f.body),
                b'v' => tracing::debug!("server negotiated protocol version"),
                other => {
                    return Err(PgError::protocol(format!("unexpected message {:?} during startup", other as char)))
                }
            }
        }
    }

    /// In a SQL_ASCII database the server cannot convert text to UTF8, only check it (`pg_server_to_any`
    /// in `mbutils.c`), and anyone can store bytes that are not UTF-8: with `client_encoding` UTF8 one
    /// such byte in a row, a name or a message prefix is an ERROR that ends the stream at the same place
    /// every time. With `client_encoding` SQL_ASCII the server sends the bytes as stored, and the decoder
    /// keeps them losslessly (`protocol::buf::lossless_name`, `sink::record::push_value`). Every other
    /// server encoding converts to UTF8 and stays that way.
    async fn take_sql_ascii_as_stored(&mut self) -> Result<(), PgError> {
        if self.parameter("server_encoding") == Some("SQL_ASCII")
            && self.parameter("client_encoding") != Some("SQL_ASCII")
        {
            self.simple_query("SET client_encoding TO 'SQL_ASCII'").await?;
        }
        Ok(())
    }

    async fn authenticate(&mut self, spec: &ConnSpec, target: &Target) -> Result<(), PgError> {
        let password = spec.password_for(target).map(<[u8]>::to_vec);
        let need_password = |method: &str| {
            password
                .clone()
                .ok_or_else(|| PgError::Auth(AuthError::Client(format!("{} ({method})", super::error::NO_PASSWORD))))
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            let f = self.read_frame().await?;
            match f.tag {
                b'R' => {}
                b'E' => return Err(PgError::from_startup_error(DbError::parse(&f.body)?)),
                b'N' => {
                    log_notice(&f.body);
                    continue;
                }
                b'v' => continue,
                other => {
                    return Err(PgError::protocol(format!(
                        "unexpected message {:?} during authentication",
                        other as char
                    )))
                }
            }
            let mut c = Cur(&f.body);
            let code = c.i32()?;
            self.wbuf.clear();
            match code {
                0 => {
                    if scram.is_some() {
                        return Err(PgError::Auth(AuthError::Client("server ended SCRAM authentication early".into())));
                    }
                    return Ok(());
                }
                3 => {
                    let pw = need_password("password")?;
                    frontend::password_message(&pw, &mut self.wbuf)?;
                }
                5 => {
                    let pw = need_password("md5")?;
                    let s = c.take(4)?;
                    let salt = [s[0], s[1], s[2], s[3]];
                    let hash = postgres_protocol::authentication::md5_hash(spec.user().as_bytes(), &pw, salt);
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf)?;
                }
                10 => {
                    let pw = need_password("SCRAM-SHA-256")?;
                    let mut has_scram = false;
                    let mut has_plus = false;
                    loop {
                        let m = c.cstr()?;
                        if m.is_empty() {
                            break;
                        }
                        has_scram |= m == sasl::SCRAM_SHA_256;
                        has_plus |= m == sasl::SCRAM_SHA_256_PLUS;
                    }
                    let cb = self.channel_binding_data();
                    let (binding, mechanism) = match (has_plus, cb) {
                        (true, Some(cb)) => (sasl::ChannelBinding::tls_server_end_point(cb), sasl::SCRAM_SHA_256_PLUS),
                        (_, cb) if has_scram => {
                            // 'y' tells the server we could have bound, so a
                            // stripped PLUS offer is detected as tampering.
                            let b = if cb.is_some() {
                                sasl::ChannelBinding::unrequested()
                            } else {
                                sasl::ChannelBinding::unsupported()
                            };
                            (b, sasl::SCRAM_SHA_256)
                        }
                        _ => {
                            return Err(PgError::Auth(AuthError::Client(
                                "the server offered no supported SASL mechanism".into(),
                            )))
                        }
                    };
                    tracing::debug!(mechanism, "SASL authentication");
                    let s = ScramSha256::new(&pw, binding);
                    frontend::sasl_initial_response(mechanism, s.message(), &mut self.wbuf)?;
                    scram = Some(s);
                }
                11 => {
                    let s =
                        scram.as_mut().ok_or_else(|| PgError::protocol("SASLContinue without SASL authentication"))?;
                    s.update(c.rest())
                        .map_err(|e| PgError::Auth(AuthError::Client(format!("SCRAM exchange failed: {e}"))))?;
                    frontend::sasl_response(s.message(), &mut self.wbuf)?;
                }
                12 => {
                    let mut s =
                        scram.take().ok_or_else(|| PgError::protocol("SASLFinal without SASL authentication"))?;
                    s.finish(c.rest()).map_err(|e| {
                        PgError::Auth(AuthError::Client(format!("could not verify the server's SCRAM signature: {e}")))
                    })?;
                    continue;
                }
                2 | 6 | 7 | 8 | 9 => {
                    let name = match code {
                        2 => "Kerberos V5",
                        6 => "SCM credentials",
                        9 => "SSPI",
                        _ => "GSSAPI",
                    };
                    return Err(PgError::Auth(AuthError::Client(format!(
                        "the server requested {name} authentication, which is not supported"
                    ))));
                }
                other => return Err(PgError::protocol(format!("unknown authentication request {other}"))),
            }
            self.flush_wbuf().await?;
        }
    }

    fn channel_binding_data(&self) -> Option<Vec<u8>> {
        match &self.socket {
            Socket::Tls(s) => {
                s.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| tls::tls_server_end_point(c))
            }
            _ => None,
        }
    }

    fn parameter_status(&mut self, body: &[u8]) -> Result<(), PgError> {
        let mut c = Cur(body);
        let name = c.cstr()?.to_owned();
        let value = c.cstr()?.to_owned();
        if self.phase != Phase::Ready {
            tracing::debug!(%name, %value, "server parameter changed");
        }
        self.params.insert(name, value);
        Ok(())
    }

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

    // -- I/O primitives ----------------------------------------------------

    async fn flush_wbuf(&mut self) -> Result<(), PgError> {
        self.socket.write_all(&self.wbuf).await?;
        self.socket.flush().await?;
        self.wbuf.clear();
        Ok(())
    }

    /// Cancel-safe: the only await is `read_buf`, which either appends to
    /// `rbuf` or does nothing; frames are split off synchronously.
    async fn read_frame(&mut self) -> Result<Frame, PgError> {
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
    fn next_incoming(&mut self) -> Result<Option<Incoming>, PgError> {
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
    async fn fill(&mut self) -> Result<(), PgError> {
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
    async fn drain_to_ready(&mut self) -> Result<(), PgError> {
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

    async fn begin_command(&mut self, sql: &str) -> Result<(), PgError> {
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

    // -- Commands ------------------------------------------------------------

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

/// TCP keepalives as configured (tokio-postgres defaults: on, 2 h idle),
/// so a dead peer is noticed on an otherwise quiet replication stream.
fn set_keepalive(s: &TcpStream, cfg: &tokio_postgres::Config) {
    use std::os::fd::AsRawFd;
    if !cfg.get_keepalives() {
        return;
    }
    let fd = s.as_raw_fd();
    let set = |level: libc::c_int, opt: libc::c_int, val: libc::c_int| {
        // SAFETY: fd is a live socket owned by `s`; val outlives the call.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                level,
                opt,
                &val as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            tracing::debug!(opt, error = %io::Error::last_os_error(), "setsockopt failed");
        }
    };
    set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, 1);
    #[cfg(target_os = "linux")]
    {
        let secs = |d: Duration| d.as_secs().clamp(1, i32::MAX as u64) as libc::c_int;
        set(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, secs(cfg.get_keepalives_idle()));
        if let Some(i) = cfg.get_keepalives_interval() {
            set(libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, secs(i));
        }
        if let Some(n) = cfg.get_keepalives_retries() {
            set(libc::IPPROTO_TCP, libc::TCP_KEEPCNT, n.min(i32::MAX as u32) as libc::c_int);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
        let mut v = vec![tag];
        v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
        v.extend_from_slice(body);
        v
    }

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

    #[test]
    fn frames_split_only_when_complete() {
        let mut wire = frame(b'd', b"hello");
        wire.extend(frame(b'Z', b"I"));
        let mut buf = BytesMut::new();
        // Feed one byte at a time: no frame until the last byte arrives.
        for (i, b) in wire.iter().enumerate() {
            buf.put_u8(*b);
            let f = split_frame(&mut buf).unwrap();
            if i == 9 {
                let f = f.unwrap();
                assert_eq!(f.tag, b'd');
                assert_eq!(&f.body[..], b"hello");
                assert!(buf.is_empty());
            } else if i == wire.len() - 1 {
                let f = f.unwrap();
                assert_eq!((f.tag, &f.body[..]), (b'Z', &b"I"[..]));
            } else {
                assert!(f.is_none(), "byte {i}");
            }
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn frames_reject_bad_lengths() {
        let mut buf = BytesMut::from(&[b'd', 0, 0, 0, 3][..]);
        assert!(matches!(split_frame(&mut buf), Err(PgError::Protocol(_))));
        let mut buf = BytesMut::from(&[b'd', 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(matches!(split_frame(&mut buf), Err(PgError::Protocol(_))));
        let mut buf = BytesMut::from(&[b'd', 0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(split_frame(&mut buf), Err(PgError::Protocol(_))));
        assert_eq!(missing_bytes(&[b'd', 0, 0, 0, 10, 1]), 5);
        assert_eq!(missing_bytes(&[b'd', 0, 0]), 0);
    }

    #[test]
    fn copy_data_is_zero_copy() {
        let mut buf = BytesMut::from(&frame(b'd', b"payload")[..]);
        let base = buf.as_ptr() as usize;
        let f = split_frame(&mut buf).unwrap().unwrap();
        let bytes = f.body.freeze();
        assert_eq!(bytes.as_ptr() as usize, base + 5);
    }

    #[test]
    fn row_parsing_is_checked() {
        let mut rd = vec![0, 2];
        for name in ["systemid", "timeline"] {
            rd.extend_from_slice(name.as_bytes());
            rd.push(0);
            rd.extend_from_slice(&[0; 18]);
        }
        assert_eq!(parse_row_description(&rd).unwrap(), vec!["systemid", "timeline"]);
        assert!(parse_row_description(&rd[..rd.len() - 1]).is_err());
        assert!(parse_row_description(&[0, 1, b'x']).is_err());

        let mut dr = vec![0, 2, 0, 0, 0, 2, b'4', b'2', 0xff, 0xff, 0xff, 0xff];
        assert_eq!(parse_data_row(&dr).unwrap(), vec![Some("42".to_owned()), None]);
        dr[5] = 200;
        assert!(parse_data_row(&dr).is_err());
        assert!(parse_data_row(&[0xff, 0xff]).unwrap().is_empty());
    }

    #[test]
    fn error_fields() {
        let body = b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user \"x\"\0\0";
        let e = DbError::parse(body).unwrap();
        assert_eq!(e.code, "28P01");
        assert_eq!(e.severity, "FATAL");
        assert!(PgError::from_startup_error(e).to_string().starts_with("authentication failed"));
        assert!(DbError::parse(b"Mno terminator").is_err());
        assert!(DbError::parse(b"").is_err());
    }

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
