//! libpq's environment variables and built-in defaults, applied where the DSN is silent.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio_postgres::config::Host;

use super::dsn::LibpqKeys;
use super::{SslMode, SystemDefaults, TlsSettings, DEFAULT_PORT, SYSTEM_ROOT_CERT};
use crate::pg::error::PgError;

/// Result of applying the environment on top of the DSN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct EnvSettings {
    pub user: String,
    pub dbname: String,
    pub tls: TlsSettings,
    pub passfile: Option<PathBuf>,
}

pub(super) fn nonempty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

fn split_list(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim)
}

/// Fills everything the DSN left unsaid from libpq's environment variables
/// and built-in defaults. Pure apart from `is_file` checks on certificate
/// paths; `env` stands in for `std::env::var`.
pub(crate) fn apply_env_defaults(
    config: &mut tokio_postgres::Config,
    keys: &LibpqKeys,
    env: &dyn Fn(&str) -> Option<String>,
    sys: &SystemDefaults,
) -> Result<EnvSettings, PgError> {
    let var = |k: &str| nonempty(env(k));

    apply_hosts(config, &var, sys)?;
    let (user, dbname) = apply_session(config, keys, &var, sys)?;

    let home = var("HOME").map(PathBuf::from).or_else(|| sys.home.clone());
    let pgdir = home.as_ref().map(|h| h.join(".postgresql"));
    let tls = tls_settings(config, keys, &var, pgdir)?;
    config.ssl_mode(tls.tokio_postgres_mode());

    let passfile = keys
        .passfile
        .clone()
        .or_else(|| var("PGPASSFILE"))
        .map(PathBuf::from)
        .or_else(|| home.as_ref().map(|h| h.join(".pgpass")));

    Ok(EnvSettings { user, dbname, tls, passfile })
}

/// `PGHOST`, `PGHOSTADDR` and `PGPORT`, else the socket directory and 5432.
fn apply_hosts(
    config: &mut tokio_postgres::Config,
    var: &dyn Fn(&str) -> Option<String>,
    sys: &SystemDefaults,
) -> Result<(), PgError> {
    if config.get_hosts().is_empty() {
        if let Some(h) = var("PGHOST") {
            for h in split_list(&h) {
                if h.is_empty() {
                    config.host_path(&sys.socket_dir);
                } else {
                    config.host(h);
                }
            }
        }
    }
    if config.get_hostaddrs().is_empty() {
        if let Some(a) = var("PGHOSTADDR") {
            for a in split_list(&a) {
                let ip: IpAddr = a.parse().map_err(|_| PgError::Config(format!("invalid PGHOSTADDR value \"{a}\"")))?;
                config.hostaddr(ip);
            }
        }
    }
    if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
        config.host_path(&sys.socket_dir);
    }
    if config.get_ports().is_empty() {
        match var("PGPORT") {
            Some(p) => {
                for p in split_list(&p) {
                    let port = if p.is_empty() {
                        DEFAULT_PORT
                    } else {
                        p.parse().map_err(|_| PgError::Config(format!("invalid PGPORT value \"{p}\"")))?
                    };
                    config.port(port);
                }
            }
            None => {
                config.port(DEFAULT_PORT);
            }
        }
    }
    Ok(())
}

/// User, database, password, application name, options and connect timeout; returns the user and
/// database settled on.
fn apply_session(
    config: &mut tokio_postgres::Config,
    keys: &LibpqKeys,
    var: &dyn Fn(&str) -> Option<String>,
    sys: &SystemDefaults,
) -> Result<(String, String), PgError> {
    let user = match config.get_user().filter(|u| !u.is_empty()) {
        Some(u) => u.to_owned(),
        None => var("PGUSER")
            .or_else(|| sys.os_user.clone())
            .ok_or_else(|| PgError::Config("no user name given and the OS user name is unknown".into()))?,
    };
    config.user(user.clone());
    let dbname = match config.get_dbname().filter(|d| !d.is_empty()) {
        Some(d) => d.to_owned(),
        None => var("PGDATABASE").unwrap_or_else(|| user.clone()),
    };
    config.dbname(dbname.clone());

    if config.get_password().is_none() {
        if let Some(p) = var("PGPASSWORD") {
            config.password(p);
        }
    }
    if config.get_application_name().is_none() {
        if let Some(a) = var("PGAPPNAME").or_else(|| keys.fallback_application_name.clone()) {
            config.application_name(a);
        }
    }
    if config.get_options().is_none() {
        if let Some(o) = var("PGOPTIONS") {
            config.options(o);
        }
    }
    if config.get_connect_timeout().is_none() {
        if let Some(t) = var("PGCONNECT_TIMEOUT") {
            let secs: i64 =
                t.trim().parse().map_err(|_| PgError::Config(format!("invalid PGCONNECT_TIMEOUT value \"{t}\"")))?;
            if secs > 0 {
                // libpq rounds 1 up to 2 seconds.
                config.connect_timeout(Duration::from_secs(secs.max(2) as u64));
            }
        }
    }
    Ok((user, dbname))
}

/// sslmode, the root certificate (libpq 16's `sslrootcert=system` included) and the client
/// certificate and key, from the DSN's keys, the environment and `~/.postgresql`.
fn tls_settings(
    config: &tokio_postgres::Config,
    keys: &LibpqKeys,
    var: &dyn Fn(&str) -> Option<String>,
    pgdir: Option<PathBuf>,
) -> Result<TlsSettings, PgError> {
    let root_explicit = keys.sslrootcert.clone().or_else(|| var("PGSSLROOTCERT"));
    let mode = match keys.sslmode.clone().or_else(|| var("PGSSLMODE")) {
        Some(m) => m.parse::<SslMode>()?,
        // libpq 16: trusting the system store only makes sense with name checks.
        None if root_explicit.as_deref() == Some(SYSTEM_ROOT_CERT) => SslMode::VerifyFull,
        None => SslMode::Prefer,
    };
    if root_explicit.as_deref() == Some(SYSTEM_ROOT_CERT) && mode != SslMode::VerifyFull {
        return Err(PgError::Config(format!(
            "weak sslmode \"{mode}\" may not be used with sslrootcert=system (use \"verify-full\")"
        )));
    }
    let verifying = matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull);
    let root_cert = match root_explicit {
        Some(r) if r == SYSTEM_ROOT_CERT => Some(PathBuf::from(r)),
        Some(r) => {
            let p = PathBuf::from(r);
            // Only verify-* insist on the file; the weaker modes verify iff it exists.
            (verifying || p.is_file()).then_some(p)
        }
        None => pgdir.as_ref().map(|d| d.join("root.crt")).filter(|p| p.is_file()),
    };
    // libpq never starts TLS on a Unix socket, so it never needs the file there.
    let all_unix = config.get_hostaddrs().is_empty() && config.get_hosts().iter().all(|h| matches!(h, Host::Unix(_)));
    if verifying && root_cert.is_none() && !all_unix {
        return Err(PgError::Config(format!(
            "sslmode={mode} needs a root certificate to verify the server: set sslrootcert \
             (or PGSSLROOTCERT), or put it at ~/.postgresql/root.crt"
        )));
    }
    let client_cert = keys
        .sslcert
        .clone()
        .or_else(|| var("PGSSLCERT"))
        .map(PathBuf::from)
        .or_else(|| pgdir.as_ref().map(|d| d.join("postgresql.crt")).filter(|p| p.is_file()));
    let client_key = keys.sslkey.clone().or_else(|| var("PGSSLKEY")).map(PathBuf::from).or_else(|| {
        client_cert.as_ref()?;
        pgdir.as_ref().map(|d| d.join("postgresql.key"))
    });
    Ok(TlsSettings { mode, root_cert, client_cert, client_key })
}
