//! Connection settings: libpq-compatible DSN parsing, environment defaults,
//! `~/.pgpass`, and TLS settings.
//!
//! Parsing proper is delegated to `tokio_postgres::Config`. What it does not
//! understand (the verifying `sslmode`s, `sslrootcert`, `sslcert`, `sslkey`,
//! `passfile`, a few harmless libpq-only keys) is cut out of the string
//! first by a deliberately small tokenizer, so users can paste the same DSN
//! they give to `psql`.

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

pub use tokio_postgres::config::Host;

use super::error::PgError;

mod dsn;
mod env;
mod pgpass;

use dsn::*;
pub use dsn::{has_password, redact_dsn};
use env::*;
use pgpass::*;
pub use pgpass::{pgpass_host, pgpass_lookup};

/// libpq's `sslmode`, including the modes tokio-postgres lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Allow,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

impl FromStr for SslMode {
    type Err = PgError;
    fn from_str(s: &str) -> Result<SslMode, PgError> {
        Ok(match s {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(PgError::Config(format!(
                    "invalid sslmode \"{other}\" (expected disable, allow, prefer, require, verify-ca or verify-full)"
                )))
            }
        })
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How the server certificate is checked once a TLS session is up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertCheck {
    /// Any certificate is accepted (handshake signatures are still checked).
    None,
    /// The chain must lead to a trusted root; the host name is not checked.
    Chain,
    /// Chain and host name (or IP address) are checked.
    ChainAndName,
}

/// The value of `sslrootcert` that means "the system's trust store" (libpq 16+).
pub const SYSTEM_ROOT_CERT: &str = "system";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    /// Trusted roots (PEM). `Some("system")` means the system trust store.
    /// For the non-verifying modes this is only set when the file exists,
    /// because that is what makes libpq verify the chain there.
    pub root_cert: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

impl TlsSettings {
    /// libpq semantics: verify-full checks everything, verify-ca the chain,
    /// and the weaker modes verify the chain too if a root certificate file
    /// is present (libpq documents this for `require`; it loads the file and
    /// enables peer verification for `prefer`/`allow` as well).
    pub fn cert_check(&self) -> CertCheck {
        match self.mode {
            SslMode::VerifyFull => CertCheck::ChainAndName,
            SslMode::VerifyCa => CertCheck::Chain,
            SslMode::Disable => CertCheck::None,
            SslMode::Allow | SslMode::Prefer | SslMode::Require => {
                if self.root_cert.is_some() {
                    CertCheck::Chain
                } else {
                    CertCheck::None
                }
            }
        }
    }

    /// The mode tokio-postgres understands; verification is the connector's job.
    pub fn tokio_postgres_mode(&self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as T;
        match self.mode {
            SslMode::Disable => T::Disable,
            // tokio-postgres has no "allow"; trying TLS first is the safer
            // approximation and still works against servers without TLS.
            SslMode::Allow | SslMode::Prefer => T::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => T::Require,
        }
    }
}

/// One host to try, in libpq order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `Host::Unix(dir)` for a socket directory, else the TCP host name
    /// (used for TLS name checks and pgpass even when `hostaddr` is set).
    pub host: Host,
    /// libpq `hostaddr`: connect here instead of resolving `host`.
    pub hostaddr: Option<IpAddr>,
    pub port: u16,
    /// Password found in the pgpass file for this host, if the DSN and
    /// PGPASSWORD gave none.
    pgpass_password: Option<Vec<u8>>,
}

impl Target {
    pub fn is_unix(&self) -> bool {
        matches!(self.host, Host::Unix(_))
    }

    /// `{dir}/.s.PGSQL.{port}` for socket hosts.
    pub fn socket_path(&self) -> Option<PathBuf> {
        match &self.host {
            Host::Unix(dir) => Some(dir.join(format!(".s.PGSQL.{}", self.port))),
            Host::Tcp(_) => None,
        }
    }

    /// Name used for TLS verification and SNI.
    pub fn tls_name(&self) -> String {
        match (&self.host, self.hostaddr) {
            (Host::Tcp(h), _) if !h.is_empty() => h.clone(),
            (_, Some(a)) => a.to_string(),
            (Host::Tcp(h), None) => h.clone(),
            (Host::Unix(p), None) => p.display().to_string(),
        }
    }

    /// `host:port`, or `/socket/dir:port`.
    pub fn describe(&self) -> String {
        let host = match &self.host {
            Host::Tcp(h) if h.is_empty() => self.hostaddr.map(|a| a.to_string()).unwrap_or_default(),
            Host::Tcp(h) if h.contains(':') => format!("[{h}]"),
            Host::Tcp(h) => h.clone(),
            Host::Unix(p) => p.display().to_string(),
        };
        format!("{host}:{}", self.port)
    }
}

/// Everything needed to open connections, with libpq defaults applied.
#[derive(Clone)]
pub struct ConnSpec {
    config: tokio_postgres::Config,
    tls: TlsSettings,
    user: String,
    dbname: String,
    /// From the DSN or PGPASSWORD; pgpass passwords live on the targets.
    explicit_password: Option<Vec<u8>>,
    application_name: Option<String>,
    options: Option<String>,
    connect_timeout: Option<Duration>,
    hosts: Vec<Host>,
    ports: Vec<u16>,
    targets: Vec<Target>,
}

impl fmt::Debug for ConnSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnSpec")
            .field("target", &self.describe())
            .field("tls", &self.tls)
            .field("password", &self.password().map(|_| "***"))
            .finish()
    }
}

/// Process-level facts that libpq consults, gathered once so that parsing
/// stays testable.
#[derive(Debug, Clone)]
pub struct SystemDefaults {
    pub os_user: Option<String>,
    /// Home directory from the password database (libpq prefers `$HOME`).
    pub home: Option<PathBuf>,
    /// `/var/run/postgresql` where it exists (Debian's compiled-in default),
    /// else `/tmp` (upstream's).
    pub socket_dir: PathBuf,
}

impl SystemDefaults {
    pub fn detect() -> SystemDefaults {
        let (os_user, home) = passwd_entry();
        let debian = Path::new("/var/run/postgresql");
        SystemDefaults {
            os_user,
            home,
            socket_dir: if debian.is_dir() { debian.to_path_buf() } else { PathBuf::from("/tmp") },
        }
    }
}

fn passwd_entry() -> (Option<String>, Option<PathBuf>) {
    use std::ffi::CStr;
    // getpwuid_r, not getpwuid: the latter returns a pointer into static
    // storage that another thread may overwrite.
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: all pointers refer to live, correctly sized local storage.
    let rc = unsafe { libc::getpwuid_r(libc::geteuid(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc != 0 || result.is_null() {
        return (None, None);
    }
    // SAFETY: on success pw_name/pw_dir point to NUL-terminated strings in buf.
    let name = unsafe { CStr::from_ptr(pwd.pw_name) }.to_string_lossy().into_owned();
    let dir = if pwd.pw_dir.is_null() {
        None
    } else {
        let d = unsafe { CStr::from_ptr(pwd.pw_dir) };
        Some(PathBuf::from(d.to_string_lossy().into_owned()))
    };
    (Some(name), dir)
}

const DEFAULT_PORT: u16 = 5432;

impl ConnSpec {
    /// Parses a libpq conninfo string or `postgres://` URL and applies the
    /// process environment and libpq defaults.
    pub fn parse(dsn: &str) -> Result<ConnSpec, PgError> {
        let env = |k: &str| std::env::var(k).ok();
        ConnSpec::parse_with(dsn, &env, &SystemDefaults::detect())
    }

    /// [`ConnSpec::parse`] with the environment and system facts supplied
    /// by the caller, so tests need not mutate the process environment.
    pub fn parse_with(
        dsn: &str,
        env: &dyn Fn(&str) -> Option<String>,
        sys: &SystemDefaults,
    ) -> Result<ConnSpec, PgError> {
        let mut extracted = extract_libpq_keys(dsn)?;
        let mut config = if extracted.rest.trim().is_empty() {
            tokio_postgres::Config::new()
        } else {
            tokio_postgres::Config::from_str(&extracted.rest)
                .map_err(|e| PgError::Config(format!("{e} in \"{}\"", redact_dsn(dsn))))?
        };
        if let Some(name) = extracted.keys.service.clone().or_else(|| nonempty(env("PGSERVICE"))) {
            let settings = super::service::lookup(&name, env, sys.home.as_deref())?;
            apply_service(&mut config, &mut extracted.keys, &name, settings)?;
        }
        let settings = apply_env_defaults(&mut config, &extracted.keys, env, sys)?;
        ConnSpec::finish(config, settings, sys)
    }

    fn finish(mut config: tokio_postgres::Config, s: EnvSettings, sys: &SystemDefaults) -> Result<ConnSpec, PgError> {
        let hosts: Vec<Host> = config.get_hosts().to_vec();
        let hostaddrs: Vec<IpAddr> = config.get_hostaddrs().to_vec();
        let ports: Vec<u16> = config.get_ports().to_vec();
        let n = hosts.len().max(hostaddrs.len());
        if !hosts.is_empty() && !hostaddrs.is_empty() && hosts.len() != hostaddrs.len() {
            return Err(PgError::Config(format!(
                "could not match {} host names to {} hostaddr values",
                hosts.len(),
                hostaddrs.len()
            )));
        }
        if ports.len() > 1 && ports.len() != n {
            return Err(PgError::Config(format!("could not match {} port numbers to {} hosts", ports.len(), n)));
        }

        let explicit_password = config.get_password().filter(|p| !p.is_empty()).map(<[u8]>::to_vec);

        let pgpass_text = if explicit_password.is_none() { read_pgpass(&s.passfile) } else { None };

        let mut targets = Vec::with_capacity(n);
        for i in 0..n {
            let hostaddr = hostaddrs.get(i).copied();
            let host = match hosts.get(i) {
                // An empty host name means "the default", like libpq.
                Some(Host::Tcp(h)) if h.is_empty() && hostaddr.is_none() => Host::Unix(sys.socket_dir.clone()),
                Some(h) => h.clone(),
                None => Host::Tcp(String::new()),
            };
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(DEFAULT_PORT);
            let pgpass_password = pgpass_text.as_deref().and_then(|text| {
                let h = pgpass_host(&host, hostaddr, &sys.socket_dir);
                pgpass_lookup(text, &h, &port.to_string(), &s.dbname, &s.user).map(String::into_bytes)
            });
            targets.push(Target { host, hostaddr, port, pgpass_password });
        }

        // Keep pg_config() usable on its own: the first host's pgpass
        // password is the one tokio-postgres would need.
        if explicit_password.is_none() {
            if let Some(p) = targets.first().and_then(|t| t.pgpass_password.clone()) {
                config.password(p);
            }
        }

        Ok(ConnSpec {
            tls: s.tls,
            user: s.user,
            dbname: s.dbname,
            explicit_password,
            application_name: config.get_application_name().map(str::to_owned),
            options: config.get_options().map(str::to_owned),
            connect_timeout: config.get_connect_timeout().copied(),
            hosts: targets.iter().map(|t| t.host.clone()).collect(),
            ports: targets.iter().map(|t| t.port).collect(),
            targets,
            config,
        })
    }

    /// The tokio-postgres view of the settings (defaults applied; password
    /// from pgpass for the first host included). Its `ssl_mode` is the
    /// coarse tokio-postgres one; see [`ConnSpec::tls`] for the real one.
    pub fn pg_config(&self) -> &tokio_postgres::Config {
        &self.config
    }

    pub fn tls(&self) -> &TlsSettings {
        &self.tls
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn dbname(&self) -> &str {
        &self.dbname
    }

    /// The password to use for the first host (DSN, PGPASSWORD or pgpass).
    pub fn password(&self) -> Option<&[u8]> {
        self.targets.first().and_then(|t| self.password_for(t)).or(self.explicit_password.as_deref())
    }

    /// The password for a particular host: pgpass entries are per host.
    pub fn password_for<'a>(&'a self, target: &'a Target) -> Option<&'a [u8]> {
        self.explicit_password.as_deref().or(target.pgpass_password.as_deref())
    }

    pub fn application_name(&self) -> Option<&str> {
        self.application_name.as_deref()
    }

    /// The `options` startup parameter (e.g. `-c statement_timeout=0`).
    pub fn options(&self) -> Option<&str> {
        self.options.as_deref()
    }

    pub fn connect_timeout(&self) -> Option<Duration> {
        self.connect_timeout
    }

    /// Hosts in the order they are tried (at least one).
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Port of each host, parallel to [`ConnSpec::hosts`].
    pub fn ports(&self) -> &[u16] {
        &self.ports
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// `user@host:port/db` (all hosts, comma-separated); never the password.
    pub fn describe(&self) -> String {
        let hosts: Vec<String> = self.targets.iter().map(Target::describe).collect();
        format!("{}@{}/{}", self.user, hosts.join(","), self.dbname)
    }

    /// [`ConnSpec::describe`] for one host.
    pub fn describe_target(&self, target: &Target) -> String {
        format!("{}@{}/{}", self.user, target.describe(), self.dbname)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn sys() -> SystemDefaults {
        SystemDefaults {
            os_user: Some("alice".into()),
            home: Some(PathBuf::from("/nonexistent-home")),
            socket_dir: PathBuf::from("/var/run/postgresql"),
        }
    }

    fn parse_env(dsn: &str, vars: &[(&str, &str)]) -> Result<ConnSpec, PgError> {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let env = move |k: &str| map.get(k).cloned();
        ConnSpec::parse_with(dsn, &env, &sys())
    }

    #[test]
    fn an_unknown_keyword_is_named() {
        for dsn in ["hots=db dbname=x", "postgres://u@h/db?hots=db"] {
            let e = parse_env(dsn, &[]).unwrap_err().to_string();
            assert!(e.contains("invalid connection option \"hots\""), "{dsn}: {e}");
        }
        assert!(parse_env("host=db keepalives_idle=5 gssencmode=disable", &[]).is_ok());
    }

    #[test]
    fn a_service_fills_what_the_string_leaves_unset_before_the_environment() {
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("svc.conf");
        std::fs::write(
            &f,
            "[app]\nhost=svc-host\nport=6543\ndbname=svcdb\nuser=svcuser\nsslmode=require\napplication_name=svc\n[bad]\nkeepalives=0\n[typo]\nhots=x\n",
        )
        .unwrap();
        let file = f.display().to_string();
        let s = parse_env("service=app dbname=mine", &[("PGSERVICEFILE", &file), ("PGHOST", "env-host")]).unwrap();
        assert_eq!(s.hosts(), &[Host::Tcp("svc-host".into())], "the service before the environment");
        assert_eq!(s.ports(), &[6543]);
        assert_eq!(s.dbname(), "mine", "the string before the service");
        assert_eq!(s.user(), "svcuser");
        assert_eq!(s.application_name(), Some("svc"));
        assert_eq!(s.tls().mode, SslMode::Require);
        let s = parse_env("dbname=x", &[("PGSERVICEFILE", &file), ("PGSERVICE", "app")]).unwrap();
        assert_eq!(s.user(), "svcuser", "PGSERVICE names the service too");
        let e = parse_env("service=bad", &[("PGSERVICEFILE", &file)]).unwrap_err().to_string();
        assert!(e.contains("keepalives"), "{e}");
        let e = parse_env("service=typo", &[("PGSERVICEFILE", &file)]).unwrap_err().to_string();
        assert!(e.contains("invalid connection option \"hots\" in service \"typo\""), "{e}");
        let e = parse_env("service=none", &[("PGSERVICEFILE", &file), ("PGSYSCONFDIR", "/nonexistent")])
            .unwrap_err()
            .to_string();
        assert!(e.contains("definition of service \"none\" not found"), "{e}");
    }

    #[test]
    fn kv_extracts_ssl_keys_with_quoting() {
        let e = extract_libpq_keys(
            r"host=db sslmode=verify-full sslrootcert='/etc/my certs/ca.crt' sslkey=/k\ ey password='it\'s'",
        )
        .unwrap();
        assert_eq!(e.keys.sslmode.as_deref(), Some("verify-full"));
        assert_eq!(e.keys.sslrootcert.as_deref(), Some("/etc/my certs/ca.crt"));
        assert_eq!(e.keys.sslkey.as_deref(), Some("/k ey"));
        let c: tokio_postgres::Config = e.rest.parse().unwrap();
        assert_eq!(c.get_password(), Some(&b"it's"[..]));
        assert_eq!(c.get_hosts(), &[Host::Tcp("db".into())]);
    }

    #[test]
    fn kv_spaces_around_equals_and_empty_values() {
        let e = extract_libpq_keys("host = db  user=''  sslcert = '/c.crt'").unwrap();
        assert_eq!(e.keys.sslcert.as_deref(), Some("/c.crt"));
        let c: tokio_postgres::Config = e.rest.parse().unwrap();
        assert_eq!(c.get_user(), Some(""));
    }

    #[test]
    fn kv_errors() {
        assert!(matches!(extract_libpq_keys("host"), Err(PgError::Config(_))));
        assert!(matches!(extract_libpq_keys("password='abc"), Err(PgError::Config(_))));
        let e = ConnSpec::parse_with("host=x bogus=1 password=secret", &|_| None, &sys()).unwrap_err();
        assert!(e.to_string().contains("bogus"), "{e}");
        assert!(!e.to_string().contains("secret"), "{e}");
    }

    #[test]
    fn url_extracts_ssl_keys_percent_decoded() {
        let e = extract_libpq_keys(
            "postgresql://u:p%40ss@db.internal:6432/app?sslmode=verify-ca&sslrootcert=%2Fetc%2Fca%20x.pem&application_name=w",
        )
        .unwrap();
        assert_eq!(e.keys.sslmode.as_deref(), Some("verify-ca"));
        assert_eq!(e.keys.sslrootcert.as_deref(), Some("/etc/ca x.pem"));
        assert_eq!(e.rest, "postgresql://u:p%40ss@db.internal:6432/app?application_name=w");
        let c: tokio_postgres::Config = e.rest.parse().unwrap();
        assert_eq!(c.get_password(), Some(&b"p@ss"[..]));
        assert_eq!(c.get_application_name(), Some("w"));

        let e = extract_libpq_keys("postgres://h/db?ssl=true").unwrap();
        assert_eq!(e.keys.sslmode.as_deref(), Some("require"));
        assert_eq!(e.rest, "postgres://h/db");
        assert!(extract_libpq_keys("postgres://h/db?sslcert=%zz").is_err());
        assert!(extract_libpq_keys("postgres://h/db?sslcert").is_err());
    }

    #[test]
    fn env_defaults_fill_gaps_only() {
        let s = parse_env(
            "dbname=tracebase",
            &[
                ("PGHOST", "db.internal"),
                ("PGPORT", "6543"),
                ("PGUSER", "app"),
                ("PGDATABASE", "ignored"),
                ("PGPASSWORD", "pw"),
                ("PGAPPNAME", "wit"),
                ("PGCONNECT_TIMEOUT", "1"),
                ("PGOPTIONS", "-c x=1"),
                ("PGSSLMODE", "require"),
            ],
        )
        .unwrap();
        assert_eq!(s.describe(), "app@db.internal:6543/tracebase");
        assert_eq!(s.password(), Some(&b"pw"[..]));
        assert_eq!(s.application_name(), Some("wit"));
        assert_eq!(s.options(), Some("-c x=1"));
        assert_eq!(s.connect_timeout(), Some(Duration::from_secs(2)));
        assert_eq!(s.tls().mode, SslMode::Require);
        assert_eq!(s.tls().cert_check(), CertCheck::None);
        assert_eq!(s.pg_config().get_ssl_mode(), tokio_postgres::config::SslMode::Require);

        // The DSN wins over the environment.
        let s = parse_env(
            "postgres://bob@h1:1,h2:2/x?sslmode=disable",
            &[("PGUSER", "app"), ("PGHOST", "other"), ("PGSSLMODE", "require")],
        )
        .unwrap();
        assert_eq!(s.describe(), "bob@h1:1,h2:2/x");
        assert_eq!(s.tls().mode, SslMode::Disable);
        assert_eq!(s.hosts().len(), 2);
        assert_eq!(s.ports(), &[1, 2]);
    }

    #[test]
    fn builtin_defaults() {
        let s = parse_env("", &[]).unwrap();
        assert_eq!(s.user(), "alice");
        assert_eq!(s.dbname(), "alice");
        assert_eq!(s.describe(), "alice@/var/run/postgresql:5432/alice");
        assert_eq!(s.tls().mode, SslMode::Prefer);
        assert!(s.targets()[0].is_unix());
        assert_eq!(s.targets()[0].socket_path().unwrap(), PathBuf::from("/var/run/postgresql/.s.PGSQL.5432"));
        assert_eq!(s.password(), None);

        let s = parse_env("host=/tmp/x port=5433 user=postgres", &[]).unwrap();
        assert_eq!(s.describe(), "postgres@/tmp/x:5433/postgres");

        let s = parse_env("hostaddr=127.0.0.1 port=5", &[]).unwrap();
        assert_eq!(s.describe(), "alice@127.0.0.1:5/alice");
        assert_eq!(s.targets()[0].tls_name(), "127.0.0.1");
    }

    #[test]
    fn verify_modes_need_a_root_cert() {
        let e = parse_env("host=h sslmode=verify-full", &[]).unwrap_err();
        // ... but not where TLS is never used.
        parse_env("host=/tmp sslmode=verify-full", &[]).unwrap();
        assert!(matches!(e, PgError::Config(_)));
        assert!(e.to_string().contains("root certificate"), "{e}");
        let s = parse_env("host=h sslmode=verify-ca sslrootcert=/x/ca.pem", &[]).unwrap();
        assert_eq!(s.tls().cert_check(), CertCheck::Chain);
        assert_eq!(s.tls().root_cert.as_deref(), Some(Path::new("/x/ca.pem")));
        // require + missing explicit file: like libpq, no verification.
        let s = parse_env("host=h sslmode=require sslrootcert=/x/ca.pem", &[]).unwrap();
        assert_eq!(s.tls().cert_check(), CertCheck::None);
        // sslrootcert=system implies verify-full and forbids weaker modes.
        let s = parse_env("host=h sslrootcert=system", &[]).unwrap();
        assert_eq!(s.tls().mode, SslMode::VerifyFull);
        assert!(parse_env("host=h sslrootcert=system sslmode=require", &[]).is_err());
        assert!(parse_env("host=h sslmode=bogus", &[]).is_err());
    }

    #[test]
    fn require_with_existing_root_cert_verifies_chain() {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("root.crt");
        std::fs::write(&ca, "x").unwrap();
        let dsn = format!("host=h sslmode=require sslrootcert={}", ca.display());
        let s = parse_env(&dsn, &[]).unwrap();
        assert_eq!(s.tls().cert_check(), CertCheck::Chain);
        // Default location under $HOME/.postgresql.
        std::fs::create_dir(dir.path().join(".postgresql")).unwrap();
        std::fs::write(dir.path().join(".postgresql/root.crt"), "x").unwrap();
        std::fs::write(dir.path().join(".postgresql/postgresql.crt"), "x").unwrap();
        let home = dir.path().to_str().unwrap();
        let s = parse_env("host=h sslmode=require", &[("HOME", home)]).unwrap();
        assert_eq!(s.tls().cert_check(), CertCheck::Chain);
        assert_eq!(s.tls().client_key.as_deref(), Some(dir.path().join(".postgresql/postgresql.key").as_path()));
    }

    #[test]
    fn pgpass_matching() {
        let text = "# comment\n\
                    db.internal:5432:*:app:first\n\
                    *:*:tracebase:app:se\\:cr\\\\et:trailing\n\
                    localhost:5433:*:*:sock\r\n\
                    /tmp/x:5433:*:*:literal\n\
                    *:*:*:*:fallback\n";
        assert_eq!(pgpass_lookup(text, "db.internal", "5432", "x", "app").as_deref(), Some("first"));
        assert_eq!(pgpass_lookup(text, "other", "1", "tracebase", "app").as_deref(), Some("se:cr\\et"));
        assert_eq!(pgpass_lookup(text, "localhost", "5433", "d", "u").as_deref(), Some("sock"));
        assert_eq!(pgpass_lookup(text, "/tmp/x", "5433", "d", "u").as_deref(), Some("literal"));
        assert_eq!(pgpass_lookup(text, "zzz", "1", "d", "u").as_deref(), Some("fallback"));
        assert_eq!(pgpass_lookup("a\\:b:1:d:u:pw\n", "a:b", "1", "d", "u").as_deref(), Some("pw"));
        // A prefix of the field is not a match.
        assert_eq!(pgpass_lookup("db:1:d:u:pw\n", "d", "1", "d", "u"), None);
        assert_eq!(pgpass_lookup("db:1:d:u\n", "db", "1", "d", "u"), None);
        assert_eq!(pgpass_lookup("", "db", "1", "d", "u"), None);
    }

    #[test]
    fn pgpass_socket_host() {
        let def = Path::new("/var/run/postgresql");
        assert_eq!(pgpass_host(&Host::Unix(def.into()), None, def), "localhost");
        assert_eq!(pgpass_host(&Host::Unix("/tmp/x".into()), None, def), "/tmp/x");
        assert_eq!(pgpass_host(&Host::Tcp("h".into()), None, def), "h");
        assert_eq!(pgpass_host(&Host::Tcp(String::new()), Some("10.0.0.1".parse().unwrap()), def), "10.0.0.1");
    }

    #[test]
    fn pgpass_file_applied_only_without_password() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let pf = dir.path().join("pgpass");
        std::fs::write(&pf, "localhost:5432:*:app:frompass\nh2:5432:*:app:second\n").unwrap();
        std::fs::set_permissions(&pf, std::fs::Permissions::from_mode(0o600)).unwrap();
        let pfs = pf.to_str().unwrap();
        let s = parse_env("user=app", &[("PGPASSFILE", pfs)]).unwrap();
        assert_eq!(s.password(), Some(&b"frompass"[..]));
        assert_eq!(s.pg_config().get_password(), Some(&b"frompass"[..]));
        let s = parse_env("user=app host=h1,h2", &[("PGPASSFILE", pfs)]).unwrap();
        assert_eq!(s.password(), None);
        assert_eq!(s.password_for(&s.targets()[1]), Some(&b"second"[..]));
        let s = parse_env(&format!("user=app password=given passfile={pfs}"), &[]).unwrap();
        assert_eq!(s.password(), Some(&b"given"[..]));
        // Group-readable: ignored like libpq does.
        std::fs::set_permissions(&pf, std::fs::Permissions::from_mode(0o640)).unwrap();
        let s = parse_env("user=app", &[("PGPASSFILE", pfs)]).unwrap();
        assert_eq!(s.password(), None);
    }

    #[test]
    fn redaction() {
        assert_eq!(redact_dsn("host=h password=secret user=u"), "host=h password=*** user=u");
        assert_eq!(redact_dsn("password='se cret' host=h"), "password=*** host=h");
        assert_eq!(redact_dsn("password = 'it\\'s' x=1"), "password = *** x=1");
        assert_eq!(redact_dsn("password='unterminated"), "password=***");
        assert_eq!(redact_dsn("host=h"), "host=h");
        assert_eq!(redact_dsn("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact_dsn("postgresql://u@h/db"), "postgresql://u@h/db");
        assert_eq!(redact_dsn("postgres://u:se@cret@h/db"), "postgres://u:***@h/db");
        assert_eq!(
            redact_dsn("postgres://h/db?user=u&password=secret&sslmode=require"),
            "postgres://h/db?user=u&password=***&sslmode=require"
        );
        assert_eq!(redact_dsn("postgres://h/db?a=x@y"), "postgres://h/db?a=x@y");
        // Issue 13: a password holding '@', '/', '?' or '#' never shows its tail.
        for (dsn, secret) in [
            ("postgres://u:p@ss?word@h/db", ["ss?word", "ss"]),
            ("postgres://u:p@ss/word@h/db", ["ss/word", "word"]),
            ("postgres://u:pa@ss#x@h/db", ["ss#x", "#x"]),
            ("postgres://u:pa/ss@h/db", ["pa/ss", "pa"]),
            ("postgresql://u:se@cret@h:5/db?password=zz", ["cret", "zz"]),
        ] {
            let r = redact_dsn(dsn);
            assert!(r.starts_with("postgres") && r.contains(":***@"), "{dsn} → {r}");
            for s in secret {
                assert!(!r.contains(s), "{dsn} → {r} shows {s}");
            }
        }
    }

    /// Issue 13: `postgres://u:se@cret@host/db` was read as host `cret@host`, printed in every
    /// connection error; URLs with an '@' anywhere but between user info and host are refused, without
    /// repeating the URL.
    #[test]
    fn ambiguous_at_signs_are_refused_without_showing_the_password() {
        for dsn in [
            "postgres://u:se@Kq9@127.0.0.1:1/db",
            "postgres://u:p@Kq9/Kq9@h/db",
            "postgres://u:p@Kq9?Kq9@h/db",
            "postgres://u:pa@Kq9#x@h/db",
            "postgres://u:12/Kq9@h/db",
            "postgres://user@Kq9@h/db",
        ] {
            let e = ConnSpec::parse_with(dsn, &|_| None, &sys()).unwrap_err().to_string();
            assert!(e.contains("%40") && !e.contains("Kq9"), "{dsn}: {e}");
        }
        for dsn in ["postgres://u:se%40cret@h/db", "postgres://h/db?application_name=a@b", "postgres://u@h/db"] {
            ConnSpec::parse_with(dsn, &|_| None, &sys()).unwrap_or_else(|e| panic!("{dsn}: {e}"));
        }
        assert!(has_password("postgres://u:x@h/db") && has_password("host=h password=x"));
        assert!(has_password("postgres://h/db?password=x"));
        assert!(!has_password("postgres://u@h/db") && !has_password("host=h user=u") && !has_password(""));
    }

    #[test]
    fn debug_hides_password() {
        let s = parse_env("host=h password=secret", &[]).unwrap();
        let d = format!("{s:?}");
        assert!(!d.contains("secret"), "{d}");
    }
}
