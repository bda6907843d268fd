//! The only module that touches sockets.
//!
//! - [`config`]: libpq-compatible connection settings (DSN, environment,
//!   `~/.pgpass`, sslmode) and DSN redaction for logs.
//! - [`tls`]: rustls configuration with libpq's sslmode semantics, also
//!   usable by tokio-postgres ([`MakeRustlsConnect`]).
//! - [`conn`]: our own client for `replication=database` sessions
//!   (replication commands, COPY BOTH streaming).
//! - [`error`]: [`PgError`], whose variants the CLI maps to exit codes.
//! - [`catalog`]: catalog queries (tables, partitions, server facts) and the slot and publication
//!   walwitness creates and drops.
//! - [`coverage`]: what a publication still sends of the watched tables.
//! - [`names`]: SQL quoting, `--table` parsing and the names walwitness gives what it creates.
//! - [`service`]: libpq service files.
//! - [`leftover`]: server objects a deliberate end could not remove, and how to remove them.
//!
//! Ordinary SQL (catalog queries, publications) goes through tokio-postgres
//! via [`connect_sql`], with the same hosts, credentials and TLS rules.

pub mod catalog;
pub mod config;
pub mod conn;
pub mod coverage;
pub mod error;
pub mod leftover;
pub mod names;
pub mod service;
pub mod tls;

pub use config::{redact_dsn, CertCheck, ConnSpec, SslMode, Target, TlsSettings};
pub use conn::{CopyEvent, QueryResult, ReplicationConnection};
pub use error::{AuthError, DbError, PgError};
pub use tls::MakeRustlsConnect;

use tokio_postgres::config::Host;

/// Opens an ordinary (non-replication) tokio-postgres session for `spec`.
///
/// Hosts are tried in order like libpq; Unix sockets never use TLS; the
/// per-host pgpass password is applied. The connection task is spawned on
/// the current tokio runtime and logs its own termination error.
pub async fn connect_sql(spec: &ConnSpec) -> Result<tokio_postgres::Client, PgError> {
    let mut make_tls: Option<MakeRustlsConnect> = None;
    let mut last_err = None;
    for target in spec.targets() {
        let what = spec.describe_target(target);
        let plain = target.is_unix() || spec.tls().mode == SslMode::Disable;
        let mut result = if plain {
            connect_sql_plain(single_host_config(spec, target), &what).await
        } else {
            let tls = match &make_tls {
                Some(t) => t.clone(),
                None => make_tls.insert(MakeRustlsConnect::new(spec.tls())?).clone(),
            };
            let cfg = single_host_config(spec, target);
            match cfg.connect(tls).await {
                Ok((client, conn)) => {
                    spawn_connection(conn, what.clone());
                    Ok(client)
                }
                Err(e) => Err(error::from_tokio_postgres(e, &what)),
            }
        };
        // libpq's prefer/allow fall back to plaintext when the handshake
        // (e.g. chain verification against an existing root.crt) fails.
        if matches!(result, Err(PgError::Tls(_))) && matches!(spec.tls().mode, SslMode::Prefer | SslMode::Allow) {
            tracing::warn!(target = %what, "TLS failed, retrying without TLS (sslmode={})", spec.tls().mode);
            result = connect_sql_plain(single_host_config(spec, target), &what).await;
        }
        match result {
            Ok(client) => return Ok(client),
            Err(e @ (PgError::Auth(_) | PgError::Config(_))) => return Err(e),
            Err(e) => {
                tracing::debug!(target = %what, error = %e, "SQL connection attempt failed");
                last_err = Some(e);
            }
        }
    }
    Err(last_err.unwrap_or_else(|| PgError::Config("no host to connect to".into())))
}

async fn connect_sql_plain(mut cfg: tokio_postgres::Config, what: &str) -> Result<tokio_postgres::Client, PgError> {
    cfg.ssl_mode(tokio_postgres::config::SslMode::Disable);
    match cfg.connect(tokio_postgres::NoTls).await {
        Ok((client, conn)) => {
            spawn_connection(conn, what.to_owned());
            Ok(client)
        }
        Err(e) => Err(error::from_tokio_postgres(e, what)),
    }
}

fn spawn_connection<S, T>(conn: tokio_postgres::Connection<S, T>, what: String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(target = %what, error = %e, "SQL connection ended with an error");
        }
    });
}

/// A tokio-postgres config for exactly one host: tokio-postgres cannot be
/// told to skip TLS for the Unix-socket entries of a mixed host list, and
/// pgpass passwords differ per host.
fn single_host_config(spec: &ConnSpec, target: &Target) -> tokio_postgres::Config {
    let base = spec.pg_config();
    let mut c = tokio_postgres::Config::new();
    c.user(spec.user());
    c.dbname(spec.dbname());
    if let Some(p) = spec.password_for(target) {
        c.password(p);
    }
    if let Some(o) = spec.options() {
        c.options(o);
    }
    c.application_name(spec.application_name().unwrap_or("walwitness"));
    match &target.host {
        Host::Unix(dir) => {
            c.host_path(dir);
        }
        // hostaddr only: name the host by its address, so TLS has a
        // name to check and tokio-postgres does not refuse the handshake.
        Host::Tcp(h) if h.is_empty() => {
            c.host(target.tls_name());
        }
        Host::Tcp(h) => {
            c.host(h);
        }
    }
    if let Some(a) = target.hostaddr {
        c.hostaddr(a);
    }
    c.port(target.port);
    c.ssl_mode(spec.tls().tokio_postgres_mode());
    if let Some(t) = spec.connect_timeout() {
        c.connect_timeout(t);
    }
    if let Some(t) = base.get_tcp_user_timeout() {
        c.tcp_user_timeout(*t);
    }
    c.keepalives(base.get_keepalives());
    c.keepalives_idle(base.get_keepalives_idle());
    if let Some(i) = base.get_keepalives_interval() {
        c.keepalives_interval(i);
    }
    if let Some(r) = base.get_keepalives_retries() {
        c.keepalives_retries(r);
    }
    c.target_session_attrs(base.get_target_session_attrs());
    c.channel_binding(base.get_channel_binding());
    c.ssl_negotiation(base.get_ssl_negotiation());
    c
}
