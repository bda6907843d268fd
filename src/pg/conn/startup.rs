//! Connecting: host order, the TLS negotiation per sslmode, the startup message and what the server
//! reports before it is ready.

use std::collections::HashMap;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::frame::{log_notice, Cur};
use super::{Phase, ReplicationConnection, Socket, READ_CHUNK};
use crate::pg::config::{ConnSpec, SslMode, Target};
use crate::pg::error::{DbError, PgError};
use crate::pg::tls;

/// Whether TLS is off, attempted, or mandatory for one connection attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TlsUse {
    Off,
    Preferred,
    Required,
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

    pub(super) fn parameter_status(&mut self, body: &[u8]) -> Result<(), PgError> {
        let mut c = Cur(body);
        let name = c.cstr()?.to_owned();
        let value = c.cstr()?.to_owned();
        if self.phase != Phase::Ready {
            tracing::debug!(%name, %value, "server parameter changed");
        }
        self.params.insert(name, value);
        Ok(())
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
