//! Throwaway PostgreSQL clusters for the integration tests and `walwitness demo`.
//!
//! A [`Cluster`] is a brand-new data directory created with `initdb` inside a
//! fresh temporary directory, started with `pg_ctl`, configured for logical
//! replication (`wal_level = logical`), and torn down (immediate stop, directory
//! removed) when dropped. The API is synchronous (`std::process`); async callers
//! can wrap it in `spawn_blocking`.
//!
//! Design notes — why it looks the way it does:
//!
//! * **Root.** PostgreSQL refuses to run as root, but CI runs everything as root.
//!   When `geteuid() == 0`, every server-side program (`initdb`, `pg_ctl`,
//!   `postgres`) is started as the `postgres` system user through
//!   `std::os::unix::process::CommandExt::{uid, gid}`. The standard library
//!   drops root's supplementary groups (`setgroups(0, NULL)`) before `setuid`
//!   when it starts from root, so no `runuser`/`su` (and no PAM session, which
//!   fails in some containers) is involved. The temporary directory is chowned
//!   to that user and used as the child's working directory (the server must be
//!   able to read its cwd). The test process itself stays root and connects over
//!   the Unix socket or TCP as the database superuser `postgres`. If there is no
//!   `postgres` system user we fail with a one-line error saying how to create
//!   it rather than creating accounts behind the caller's back.
//! * **Free ports.** Tests run in parallel, so each cluster gets a port obtained by
//!   binding `127.0.0.1:0` (plus an in-process set so the same port is never handed
//!   out twice). There is still a window between releasing the probe socket and the
//!   postmaster binding it, so when the server log says it could not bind, we pick
//!   another port and start again (a few attempts). The Unix socket lives in the
//!   cluster's own temporary directory, so socket lock files never collide.
//! * **No sleeps.** Readiness is `pg_ctl -w` (which waits for the postmaster to
//!   report "ready" in `postmaster.pid`) followed by a polling loop with
//!   `pg_isready` (or a raw socket connect when `pg_isready` is not installed),
//!   with short polling intervals and an overall 60 s timeout; failures carry the
//!   tail of the server log.
//! * **Durability.** `fsync` stays on (crash tests use `restart(Immediate)` and
//!   rely on committed data surviving). `initdb --no-sync` is fine: an immediate
//!   stop does not lose the OS page cache.
//! * **Environment.** All `PG*` variables are removed from child environments so
//!   a developer's `PGHOST`/`PGPORT`/`PGSSLMODE` cannot redirect the tools.

use std::fs;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod certs;
mod os;

use os::*;

/// Name of the database superuser created by `initdb -U`.
const SUPERUSER: &str = "postgres";
/// Name of the OS account used to run the server when we are root.
const SERVER_OS_USER: &str = "postgres";
/// Overall timeout for a server to start / become ready / stop.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// Polling interval while waiting for readiness.
const POLL_INTERVAL: Duration = Duration::from_millis(50);
/// How many ports we try before giving up on "address already in use".
const START_ATTEMPTS: usize = 6;
/// Lines of server log quoted in error messages.
const ERROR_LOG_LINES: usize = 8;

/// Errors from creating or driving a throwaway cluster. Every message is one line.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No usable PostgreSQL server installation was found.
    #[error("no PostgreSQL server binaries found: install them (Debian: apt-get install postgresql-15) or set WALWITNESS_PG_BIN")]
    NoBinaries,
    /// `WALWITNESS_PG_BIN` is set but does not point at server binaries.
    #[error("WALWITNESS_PG_BIN={0} does not contain the PostgreSQL server binaries (postgres, initdb, pg_ctl)")]
    BadBinDir(String),
    /// Running as root and there is no `postgres` OS account to run the server as.
    #[error("running as root, and PostgreSQL refuses to run as root, but there is no `postgres` system user: create it (useradd --system --user-group --no-create-home postgres) or run as a non-root user")]
    NoServerUser,
    /// A TLS cluster was requested but the `openssl` CLI is missing.
    #[error("openssl command not found (needed to make TLS test certificates): install it (Debian: apt-get install openssl)")]
    NoOpenssl,
    /// A filesystem or process-spawning operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// An external command exited unsuccessfully.
    #[error("{command} failed ({status}): {detail}")]
    Command {
        /// The program that failed (e.g. `initdb`).
        command: String,
        /// Its exit status.
        status: String,
        /// One-line summary of its stderr (or stdout).
        detail: String,
    },
    /// The server did not start or did not become ready in time.
    #[error("PostgreSQL on port {port} did not start: {reason}; server log: {log}")]
    Start {
        /// The port we tried.
        port: u16,
        /// Why we gave up.
        reason: String,
        /// One-line tail of the server log.
        log: String,
    },
    /// `psql` reported an error (connection or SQL).
    #[error("psql failed ({status}): {detail}")]
    Psql {
        /// psql's exit status.
        status: String,
        /// One-line summary of psql's stderr.
        detail: String,
    },
    /// `postgres --version` printed something we could not parse.
    #[error("could not parse `postgres --version` output: {0}")]
    Version(String),
}

impl ClusterError {
    fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        ClusterError::Io { context: context.into(), source }
    }
}

/// How to stop the server (`pg_ctl -m`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopMode {
    /// Roll back open transactions, disconnect clients, checkpoint, exit.
    Fast,
    /// Kill everything without a checkpoint; the next start performs crash recovery.
    Immediate,
}

impl StopMode {
    fn as_str(self) -> &'static str {
        match self {
            StopMode::Fast => "fast",
            StopMode::Immediate => "immediate",
        }
    }
}

/// Options for [`Cluster::start`].
#[derive(Debug, Clone, Default)]
pub struct ClusterOptions {
    /// Turn on `ssl` with a freshly generated CA and server certificate
    /// (see [`Cluster::ca_cert`]).
    pub tls: bool,
    /// TCP connections (`host` lines in `pg_hba.conf`) use `scram-sha-256` when
    /// true and `trust` otherwise. Unix-socket connections are always `trust`.
    pub password_auth: bool,
    /// Extra `postgresql.conf` settings, appended last (so they override ours).
    /// Values are single-quoted for you unless they already start and end with `'`.
    pub extra_conf: Vec<(String, String)>,
    /// `pg_hba.conf` lines put before ours (the first matching line wins), e.g. a role that logs in
    /// with `md5` or `password`.
    pub hba_first: Vec<String>,
}

/// A running throwaway PostgreSQL cluster. Dropping it stops the server
/// (`pg_ctl stop -m immediate`) and removes its temporary directory.
pub struct Cluster {
    /// Socket dir; holds `data/`, `server.log` and (with TLS) `tls/`.
    dir: tempfile::TempDir,
    data_dir: PathBuf,
    bin_dir: PathBuf,
    log_file: PathBuf,
    ca_cert: Option<PathBuf>,
    port: u16,
    version_num: u32,
    /// `Some((uid, gid))` when we are root and run server programs as `postgres`.
    server_user: Option<(u32, u32)>,
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("dir", &self.dir.path())
            .field("port", &self.port)
            .field("version_num", &self.version_num)
            .field("bin_dir", &self.bin_dir)
            .finish()
    }
}

impl Cluster {
    /// Locate the directory holding `postgres`, `initdb` and `pg_ctl`:
    /// `$WALWITNESS_PG_BIN`, then `pg_config --bindir` (only if it holds the
    /// server binaries), then the highest-versioned `/usr/lib/postgresql/*/bin`
    /// (then `/usr/pgsql-*/bin`, the RPM layout).
    pub fn find_bin_dir() -> Result<PathBuf, ClusterError> {
        if let Some(dir) = std::env::var_os("WALWITNESS_PG_BIN").filter(|v| !v.is_empty()) {
            let dir = PathBuf::from(dir);
            return if has_server_bins(&dir) {
                Ok(dir)
            } else {
                Err(ClusterError::BadBinDir(dir.display().to_string()))
            };
        }
        if let Ok(out) = Command::new("pg_config").arg("--bindir").stdin(Stdio::null()).output() {
            if out.status.success() {
                let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                if has_server_bins(&dir) {
                    return Ok(dir);
                }
            }
        }
        for (parent, prefix) in [("/usr/lib/postgresql", ""), ("/usr", "pgsql-")] {
            if let Some(dir) = highest_versioned_bin(Path::new(parent), prefix) {
                return Ok(dir);
            }
        }
        Err(ClusterError::NoBinaries)
    }

    /// Create and start a new cluster. Blocks until it accepts connections.
    pub fn start(opts: ClusterOptions) -> Result<Cluster, ClusterError> {
        let bin_dir = Self::find_bin_dir()?;
        // SAFETY: geteuid has no preconditions.
        let server_user = if unsafe { libc::geteuid() } == 0 {
            Some(lookup_user(SERVER_OS_USER)?.ok_or(ClusterError::NoServerUser)?)
        } else {
            None
        };
        if opts.tls && !openssl_available() {
            return Err(ClusterError::NoOpenssl);
        }

        let dir = make_temp_dir(server_user)?;
        let data_dir = dir.path().join("data");
        let log_file = dir.path().join("server.log");

        let mut cluster =
            Cluster { dir, data_dir, bin_dir, log_file, ca_cert: None, port: 0, version_num: 0, server_user };

        let version_out = cluster.run_server_tool("postgres", |c| {
            c.arg("--version");
        })?;
        let version_text = String::from_utf8_lossy(&version_out.stdout).into_owned();
        cluster.version_num =
            parse_version_num(&version_text).ok_or_else(|| ClusterError::Version(one_line(&version_text)))?;

        let data_dir = cluster.data_dir.clone();
        cluster.run_server_tool("initdb", |c| {
            c.arg("-D")
                .arg(&data_dir)
                .args(["-U", SUPERUSER])
                .args(["--auth-local=trust", "--auth-host=trust"])
                .args(["-E", "UTF8", "--locale=C", "--no-sync"]);
        })?;

        if opts.tls {
            cluster.ca_cert = Some(cluster.make_certificates()?);
        }
        cluster.write_hba(opts.password_auth, &opts.hba_first)?;
        let base_conf = fs::read_to_string(cluster.data_dir.join("postgresql.conf"))
            .map_err(|e| ClusterError::io("reading postgresql.conf", e))?;

        // If anything below fails, dropping `cluster` stops whatever was started.
        let mut attempt = 0;
        loop {
            attempt += 1;
            cluster.port = free_port()?;
            cluster.write_conf(&base_conf, &opts)?;
            let log_offset = fs::metadata(&cluster.log_file).map(|m| m.len()).unwrap_or(0);
            match cluster.pg_ctl_start() {
                Ok(()) => break,
                Err(err) => {
                    let new_log = read_from(&cluster.log_file, log_offset);
                    let port_taken = new_log.contains("could not bind")
                        || new_log.contains("Address already in use")
                        || new_log.contains("could not create any TCP/IP sockets");
                    if port_taken && attempt < START_ATTEMPTS {
                        continue;
                    }
                    return Err(err);
                }
            }
        }
        cluster.wait_ready()?;
        Ok(cluster)
    }

    /// TCP port the server listens on (on 127.0.0.1, and in the socket name).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Directory holding the Unix socket (`.s.PGSQL.<port>`); usable as `host=`.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The cluster's data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The PostgreSQL bin directory in use.
    pub fn bin_dir(&self) -> &Path {
        &self.bin_dir
    }

    /// Server version in `server_version_num` form, e.g. `150018` for 15.18.
    pub fn version_num(&self) -> u32 {
        self.version_num
    }

    /// The database superuser (`postgres`); trusted over the Unix socket.
    pub fn superuser(&self) -> &str {
        SUPERUSER
    }

    /// key=value connection string over the Unix socket.
    pub fn socket_dsn(&self, user: &str, dbname: &str) -> String {
        format!(
            "host={} port={} user={} dbname={}",
            dsn_quote(&self.socket_dir().to_string_lossy()),
            self.port,
            dsn_quote(user),
            dsn_quote(dbname)
        )
    }

    /// key=value connection string over TCP to 127.0.0.1 (no `sslmode`; add it yourself).
    pub fn tcp_dsn(&self, user: &str, password: Option<&str>, dbname: &str) -> String {
        let mut dsn =
            format!("host=127.0.0.1 port={} user={} dbname={}", self.port, dsn_quote(user), dsn_quote(dbname));
        if let Some(pw) = password {
            dsn.push_str(" password=");
            dsn.push_str(&dsn_quote(pw));
        }
        dsn
    }

    /// With `tls`, the PEM file of the self-signed CA that signed the server
    /// certificate (server certificate CN = localhost, SAN = DNS:localhost, IP:127.0.0.1).
    pub fn ca_cert(&self) -> Option<PathBuf> {
        self.ca_cert.clone()
    }

    /// Run SQL with `psql -X -v ON_ERROR_STOP=1 -A -t -q` over the Unix socket as
    /// the superuser, feeding `sql` on stdin (so several statements run one by one,
    /// and `CREATE DATABASE` etc. work). Returns psql's stdout unchanged (one line
    /// per result row, `|`-separated; `-q` suppresses command tags).
    pub fn psql(&self, dbname: &str, sql: &str) -> Result<String, ClusterError> {
        let local = self.bin_dir.join("psql");
        let program = if is_executable(&local) { local } else { PathBuf::from("/usr/bin/psql") };
        let mut cmd = Command::new(&program);
        clean_env(&mut cmd);
        cmd.env("PGCLIENTENCODING", "UTF8")
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-A", "-t", "-q"])
            .arg("-h")
            .arg(self.socket_dir())
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-U", SUPERUSER, "-d", dbname, "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| ClusterError::io(format!("running {}", program.display()), e))?;
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let sql_owned = sql.to_owned();
        // Write from a thread so large inputs cannot deadlock against psql's output.
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(sql_owned.as_bytes());
        });
        let out = child.wait_with_output().map_err(|e| ClusterError::io("waiting for psql", e))?;
        let _ = writer.join();
        if !out.status.success() {
            return Err(ClusterError::Psql { status: out.status.to_string(), detail: output_detail(&out) });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `pg_ctl restart -m <mode>`, then wait until the server accepts connections.
    /// With [`StopMode::Immediate`] the start performs crash recovery.
    /// Also works after [`Cluster::stop`] (it then just starts the server).
    pub fn restart(&self, mode: StopMode) -> Result<(), ClusterError> {
        let data_dir = self.data_dir.clone();
        let log_file = self.log_file.clone();
        let timeout = READY_TIMEOUT.as_secs().to_string();
        self.run_server_tool("pg_ctl", |c| {
            c.arg("restart").arg("-D").arg(&data_dir).arg("-l").arg(&log_file).args([
                "-m",
                mode.as_str(),
                "-w",
                "-t",
                &timeout,
                "-s",
            ]);
        })
        .map_err(|e| self.start_error(e.to_string()))?;
        self.wait_ready()
    }

    /// `pg_ctl stop -m <mode>` and wait for the server to exit.
    pub fn stop(&mut self, mode: StopMode) -> Result<(), ClusterError> {
        self.pg_ctl_stop(mode).map(|_| ())
    }

    /// The last `n` lines of the server log (for test failure messages).
    pub fn log_tail(&self, n: usize) -> String {
        match fs::read(&self.log_file) {
            Ok(bytes) => {
                let text = String::from_utf8_lossy(&bytes);
                let lines: Vec<&str> = text.lines().collect();
                lines[lines.len().saturating_sub(n)..].join("\n")
            }
            Err(e) => format!("(could not read {}: {e})", self.log_file.display()),
        }
    }

    // ----- internals -------------------------------------------------------

    /// A command for a server-side program from the bin dir, run as the server
    /// OS user when we are root, with a clean environment and a readable cwd.
    fn server_command(&self, program: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(program));
        clean_env(&mut cmd);
        cmd.current_dir(self.dir.path()).env("LC_ALL", "C").stdin(Stdio::null());
        if let Some((uid, gid)) = self.server_user {
            // std calls setgroups(0, NULL) before setuid when starting from root.
            cmd.uid(uid)
                .gid(gid)
                .env("HOME", self.dir.path())
                .env("USER", SERVER_OS_USER)
                .env("LOGNAME", SERVER_OS_USER);
        }
        cmd
    }

    fn run_server_tool(&self, program: &str, configure: impl FnOnce(&mut Command)) -> Result<Output, ClusterError> {
        let mut cmd = self.server_command(program);
        configure(&mut cmd);
        let label = match cmd.get_args().next() {
            Some(sub) if program == "pg_ctl" => format!("pg_ctl {}", sub.to_string_lossy()),
            _ => program.to_owned(),
        };
        let out = cmd.output().map_err(|e| ClusterError::io(format!("running {label}"), e))?;
        if !out.status.success() {
            return Err(ClusterError::Command {
                command: label,
                status: out.status.to_string(),
                detail: output_detail(&out),
            });
        }
        Ok(out)
    }

    fn pg_ctl_start(&self) -> Result<(), ClusterError> {
        let data_dir = self.data_dir.clone();
        let log_file = self.log_file.clone();
        let timeout = READY_TIMEOUT.as_secs().to_string();
        self.run_server_tool("pg_ctl", |c| {
            c.arg("start").arg("-D").arg(&data_dir).arg("-l").arg(&log_file).args(["-w", "-t", &timeout, "-s"]);
        })
        .map(|_| ())
        .map_err(|e| self.start_error(e.to_string()))
    }

    fn pg_ctl_stop(&self, mode: StopMode) -> Result<Output, ClusterError> {
        let data_dir = self.data_dir.clone();
        let timeout = READY_TIMEOUT.as_secs().to_string();
        self.run_server_tool("pg_ctl", |c| {
            c.arg("stop").arg("-D").arg(&data_dir).args(["-m", mode.as_str(), "-w", "-t", &timeout, "-s"]);
        })
    }

    fn start_error(&self, reason: String) -> ClusterError {
        ClusterError::Start { port: self.port, reason, log: one_line(&self.log_tail(ERROR_LOG_LINES)) }
    }

    /// Poll until the server accepts connections (after `pg_ctl -w` returned).
    fn wait_ready(&self) -> Result<(), ClusterError> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let pg_isready =
            [self.bin_dir.join("pg_isready"), "/usr/bin/pg_isready".into()].into_iter().find(|p| is_executable(p));
        let socket = self.socket_dir().join(format!(".s.PGSQL.{}", self.port));
        loop {
            let ready = match &pg_isready {
                Some(prog) => {
                    let mut cmd = Command::new(prog);
                    clean_env(&mut cmd);
                    cmd.arg("-q")
                        .arg("-h")
                        .arg(self.socket_dir())
                        .arg("-p")
                        .arg(self.port.to_string())
                        .args(["-U", SUPERUSER, "-d", "postgres", "-t", "5"])
                        .stdin(Stdio::null())
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status()
                        .map(|s| s.success())
                        .unwrap_or(false)
                }
                None => std::os::unix::net::UnixStream::connect(&socket).is_ok(),
            };
            if ready {
                return Ok(());
            }
            if !self.data_dir.join("postmaster.pid").exists() {
                return Err(self.start_error("the server exited during startup".into()));
            }
            if Instant::now() >= deadline {
                return Err(self.start_error(format!("not accepting connections after {}s", READY_TIMEOUT.as_secs())));
            }
            std::thread::sleep(POLL_INTERVAL);
        }
    }

    fn write_hba(&self, password_auth: bool, first: &[String]) -> Result<(), ClusterError> {
        let method = if password_auth { "scram-sha-256" } else { "trust" };
        let first: String = first.iter().map(|l| format!("{l}\n")).collect();
        let hba = format!(
            "# written by walwitness::cluster\n\
             {first}\
             local all all trust\n\
             local replication all trust\n\
             host all all 127.0.0.1/32 {method}\n\
             host replication all 127.0.0.1/32 {method}\n"
        );
        // Truncating the existing file keeps its owner (the server user).
        write_existing(&self.data_dir.join("pg_hba.conf"), &hba)
    }

    fn write_conf(&self, base: &str, opts: &ClusterOptions) -> Result<(), ClusterError> {
        let mut conf = String::from(base);
        if !conf.ends_with('\n') {
            conf.push('\n');
        }
        conf.push_str("\n# ---- added by walwitness::cluster ----\n");
        let socket_dir = self.socket_dir().to_string_lossy().into_owned();
        let mut settings: Vec<(String, String)> = vec![
            ("wal_level".into(), "logical".into()),
            ("max_replication_slots".into(), "20".into()),
            ("max_wal_senders".into(), "20".into()),
            ("port".into(), self.port.to_string()),
            ("listen_addresses".into(), "127.0.0.1".into()),
            ("unix_socket_directories".into(), socket_dir),
            ("logging_collector".into(), "off".into()),
            ("max_connections".into(), "100".into()),
            ("shared_buffers".into(), "32MB".into()),
        ];
        if opts.tls {
            settings.push(("ssl".into(), "on".into()));
            settings.push(("ssl_cert_file".into(), "server.crt".into()));
            settings.push(("ssl_key_file".into(), "server.key".into()));
        }
        settings.extend(opts.extra_conf.iter().cloned());
        for (key, value) in &settings {
            conf.push_str(key);
            conf.push_str(" = ");
            conf.push_str(&conf_quote(value));
            conf.push('\n');
        }
        write_existing(&self.data_dir.join("postgresql.conf"), &conf)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let pid_file = self.data_dir.join("postmaster.pid");
        if !pid_file.exists() {
            return;
        }
        // Read the pid first: pg_ctl removes the file on success.
        let pid = fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.lines().next().and_then(|l| l.trim().parse::<libc::pid_t>().ok()));
        if self.pg_ctl_stop(StopMode::Immediate).is_err() {
            if let Some(pid) = pid.filter(|p| *p > 0) {
                // SIGQUIT is the postmaster's "immediate shutdown" signal.
                // SAFETY: plain kill(2) on a pid read from our own postmaster.pid.
                unsafe {
                    libc::kill(pid, libc::SIGQUIT);
                }
                let deadline = Instant::now() + Duration::from_secs(10);
                while pid_file.exists() && Instant::now() < deadline {
                    std::thread::sleep(POLL_INTERVAL);
                }
            }
        }
        // The TempDir field removes the directory when it is dropped next.
    }
}

// ----- helpers -------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn start(opts: ClusterOptions) -> Cluster {
        Cluster::start(opts).unwrap_or_else(|e| panic!("cluster start failed: {e}"))
    }

    fn sql(c: &Cluster, db: &str, q: &str) -> String {
        c.psql(db, q).unwrap_or_else(|e| panic!("psql failed: {e}\nserver log:\n{}", c.log_tail(30))).trim().to_owned()
    }

    #[test]
    fn version_parsing() {
        assert_eq!(parse_version_num("postgres (PostgreSQL) 15.18 (Debian 15.18-0+deb12u1)\n"), Some(150018));
        assert_eq!(parse_version_num("postgres (PostgreSQL) 18.0"), Some(180000));
        assert_eq!(parse_version_num("postgres (PostgreSQL) 16beta1"), Some(160000));
        assert_eq!(parse_version_num("postgres (PostgreSQL) 9.6.24"), Some(90624));
        assert_eq!(parse_version_num("something else"), None);
    }

    #[test]
    fn quoting() {
        assert_eq!(dsn_quote("abc"), "abc");
        assert_eq!(dsn_quote(""), "''");
        assert_eq!(dsn_quote("a b'c\\"), r"'a b\'c\\'");
        assert_eq!(conf_quote("on"), "'on'");
        assert_eq!(conf_quote("it's"), "'it''s'");
        assert_eq!(conf_quote("'x'"), "'x'");
        assert!(one_line("a\n\n b \nc").eq("a | b | c"));
    }

    #[test]
    fn starts_with_logical_wal() {
        let c = start(ClusterOptions::default());
        assert_eq!(sql(&c, "postgres", "SHOW wal_level"), "logical");
        assert_eq!(sql(&c, "postgres", "SHOW ssl"), "off");
        assert_eq!(sql(&c, "postgres", "SHOW port"), c.port().to_string(), "port setting");
        let server_num: u32 = sql(&c, "postgres", "SHOW server_version_num").parse().unwrap();
        assert_eq!(server_num, c.version_num());
        assert_eq!(c.superuser(), "postgres");
        assert!(c.data_dir().join("PG_VERSION").exists());
        assert!(has_server_bins(c.bin_dir()));
        assert!(c.socket_dsn("postgres", "postgres").contains("host=/"));
        assert!(c.tcp_dsn("u", Some("p w"), "d").ends_with("password='p w'"));
        assert_eq!(c.ca_cert(), None);
        // Several statements, one per line of output; CREATE DATABASE works.
        let out = sql(&c, "postgres", "CREATE DATABASE other; SELECT 1; SELECT 'a', 2;");
        assert_eq!(out, "1\na|2");
        assert_eq!(sql(&c, "other", "SELECT current_database()"), "other");
        // SQL errors come back as one-line errors.
        let err = c.psql("postgres", "SELECT * FROM nope").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("nope") && !msg.contains('\n'), "{msg}");
        assert!(!c.log_tail(5).is_empty());
    }

    #[test]
    fn two_clusters_at_once() {
        let handles: Vec<_> = (0..2).map(|_| std::thread::spawn(|| start(ClusterOptions::default()))).collect();
        let clusters: Vec<Cluster> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        assert_ne!(clusters[0].port(), clusters[1].port());
        assert_ne!(clusters[0].socket_dir(), clusters[1].socket_dir());
        for c in &clusters {
            assert_eq!(sql(c, "postgres", "SHOW port"), c.port().to_string());
        }
    }

    #[test]
    fn restart_fast_and_immediate() {
        let mut c = start(ClusterOptions {
            extra_conf: vec![("wal_sender_timeout".into(), "30s".into())],
            ..Default::default()
        });
        assert_eq!(sql(&c, "postgres", "SHOW wal_sender_timeout"), "30s");
        sql(&c, "postgres", "CREATE TABLE t (id int); INSERT INTO t VALUES (1);");
        c.restart(StopMode::Fast).unwrap_or_else(|e| panic!("{e}\n{}", c.log_tail(30)));
        assert_eq!(sql(&c, "postgres", "SELECT count(*) FROM t"), "1");
        sql(&c, "postgres", "INSERT INTO t VALUES (2);");
        c.restart(StopMode::Immediate).unwrap_or_else(|e| panic!("{e}\n{}", c.log_tail(30)));
        assert_eq!(sql(&c, "postgres", "SELECT count(*) FROM t"), "2");
        assert!(c.log_tail(200).contains("database system was interrupted"));
        c.stop(StopMode::Fast).unwrap();
        assert!(!c.data_dir().join("postmaster.pid").exists());
        assert!(c.psql("postgres", "SELECT 1").is_err());
        // restart() after stop() starts it again.
        c.restart(StopMode::Fast).unwrap();
        assert_eq!(sql(&c, "postgres", "SELECT count(*) FROM t"), "2");
    }

    #[test]
    fn tls_cluster_with_password_auth() {
        let c = start(ClusterOptions { tls: true, password_auth: true, ..Default::default() });
        assert_eq!(sql(&c, "postgres", "SHOW ssl"), "on");
        let ca = c.ca_cert().expect("tls cluster has a CA");
        assert!(ca.exists());
        sql(&c, "postgres", "CREATE ROLE alice LOGIN PASSWORD 's3cret pw';");
        // End to end: psql over TCP, verify-full against our CA (checks the
        // 127.0.0.1 SAN), SCRAM password.
        let psql =
            [c.bin_dir().join("psql"), PathBuf::from("/usr/bin/psql")].into_iter().find(|p| is_executable(p)).unwrap();
        let dsn = format!(
            "{} sslmode=verify-full sslrootcert={}",
            c.tcp_dsn("alice", Some("s3cret pw"), "postgres"),
            dsn_quote(&ca.to_string_lossy())
        );
        let run = |dsn: &str| {
            let mut cmd = Command::new(&psql);
            clean_env(&mut cmd);
            cmd.args(["-X", "-A", "-t", "-c"])
                .arg("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
                .arg(dsn)
                .stdin(Stdio::null())
                .output()
                .unwrap()
        };
        let out = run(&dsn);
        assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), c.log_tail(20));
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "t");
        // localhost also verifies (DNS SAN).
        let dsn_localhost = dsn.replace("host=127.0.0.1", "host=localhost");
        assert!(run(&dsn_localhost).status.success());
        // Wrong password is rejected.
        let bad = dsn.replace("'s3cret pw'", "wrong");
        assert!(!run(&bad).status.success());
    }

    #[test]
    fn port_in_use_gives_one_line_error_with_log() {
        // Force every attempt onto a port we hold, so all retries fail.
        let holder = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = holder.local_addr().unwrap().port();
        let err = Cluster::start(ClusterOptions {
            extra_conf: vec![("port".into(), port.to_string())],
            ..Default::default()
        })
        .unwrap_err();
        let msg = err.to_string();
        assert!(!msg.contains('\n'), "{msg}");
        assert!(msg.contains("Address already in use"), "{msg}");
        eprintln!("{msg}");
    }

    #[test]
    fn drop_stops_server_and_removes_dir() {
        let c = start(ClusterOptions::default());
        let dir = c.socket_dir().to_path_buf();
        let port = c.port();
        assert!(dir.exists());
        drop(c);
        assert!(!dir.exists(), "{} still exists", dir.display());
        assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_err(), "server still listening on {port}");
    }
}
