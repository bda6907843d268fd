//! The host side of a throwaway cluster: finding server binaries, the server's OS user, free ports,
//! temporary directories, and quoting for DSNs and postgresql.conf.
use std::collections::HashSet;
use std::ffi::CString;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

use super::ClusterError;

pub(super) fn is_executable(path: &Path) -> bool {
    fs::metadata(path).map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

pub(super) fn has_server_bins(dir: &Path) -> bool {
    ["postgres", "initdb", "pg_ctl"].iter().all(|b| is_executable(&dir.join(b)))
}

/// Highest `<parent>/<prefix><version>/bin` that holds server binaries.
pub(super) fn highest_versioned_bin(parent: &Path, prefix: &str) -> Option<PathBuf> {
    let mut best: Option<(Vec<u32>, PathBuf)> = None;
    for entry in fs::read_dir(parent).ok()?.flatten() {
        let name = entry.file_name();
        let Some(version) = name.to_str().and_then(|n| n.strip_prefix(prefix)) else {
            continue;
        };
        let key: Option<Vec<u32>> = version.split('.').map(|p| p.parse().ok()).collect();
        let Some(key) = key else { continue };
        let bin = entry.path().join("bin");
        if !has_server_bins(&bin) {
            continue;
        }
        if best.as_ref().is_none_or(|(k, _)| key > *k) {
            best = Some((key, bin));
        }
    }
    best.map(|(_, p)| p)
}

/// `postgres (PostgreSQL) 15.18 (Debian ...)` → 150018; `9.6.24` → 90624;
/// `16beta1` → 160000.
pub(super) fn parse_version_num(text: &str) -> Option<u32> {
    let word = text.split("(PostgreSQL)").nth(1)?.split_whitespace().next()?;
    let numeric: String = word.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    let parts: Vec<u32> =
        numeric.split('.').filter(|p| !p.is_empty()).map(|p| p.parse().ok()).collect::<Option<_>>()?;
    let major = *parts.first()?;
    let at = |i: usize| parts.get(i).copied().unwrap_or(0);
    if major >= 10 {
        Some(major * 10000 + at(1))
    } else {
        Some(major * 10000 + at(1) * 100 + at(2))
    }
}

/// uid/gid of an OS account, via the thread-safe getpwnam_r.
pub(super) fn lookup_user(name: &str) -> Result<Option<(u32, u32)>, ClusterError> {
    let cname = CString::new(name).expect("user name has no NUL");
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    loop {
        // SAFETY: passwd is plain data; getpwnam_r fills it and points its strings
        // into `buf`, which outlives every use below (we only read uid/gid).
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut result: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe { libc::getpwnam_r(cname.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 {
            return Err(ClusterError::io(format!("looking up OS user {name}"), std::io::Error::from_raw_os_error(rc)));
        }
        return Ok(if result.is_null() { None } else { Some((pwd.pw_uid, pwd.pw_gid)) });
    }
}

pub(super) fn openssl_available() -> bool {
    Command::new("openssl")
        .arg("version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Whether `user` (uid, gid) can traverse every ancestor of `dir`.
pub(super) fn traversable_by(dir: &Path, (uid, gid): (u32, u32)) -> bool {
    use std::os::unix::fs::MetadataExt;
    dir.ancestors().all(|p| match fs::metadata(p) {
        Ok(m) => {
            let mode = m.mode();
            mode & 0o001 != 0 || (m.uid() == uid && mode & 0o100 != 0) || (m.gid() == gid && mode & 0o010 != 0)
        }
        Err(_) => false,
    })
}

/// A fresh temp dir the server user owns. Falls back to /tmp when $TMPDIR is not
/// reachable by the server user or too long for a Unix socket path (108 bytes).
pub(super) fn make_temp_dir(server_user: Option<(u32, u32)>) -> Result<tempfile::TempDir, ClusterError> {
    let mut base = std::env::temp_dir();
    if let Ok(c) = base.canonicalize() {
        base = c;
    }
    // "<base>/walwitness-pg-XXXXXX/.s.PGSQL.65535.lock" must fit in sun_path.
    let too_long = base.as_os_str().len() + 50 > 100;
    let unreachable = server_user.is_some_and(|u| !traversable_by(&base, u));
    if too_long || unreachable {
        base = PathBuf::from("/tmp");
    }
    let dir = tempfile::Builder::new()
        .prefix("walwitness-pg-")
        .tempdir_in(&base)
        .map_err(|e| ClusterError::io(format!("creating a temp dir in {}", base.display()), e))?;
    if let Some((uid, gid)) = server_user {
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))
            .map_err(|e| ClusterError::io("chown of the cluster temp dir", e))?;
    }
    Ok(dir)
}

/// Ports handed out by this process, never reused (parallel tests).
pub(super) static USED_PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

pub(super) fn free_port() -> Result<u16, ClusterError> {
    for _ in 0..50 {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .map_err(|e| ClusterError::io("binding 127.0.0.1:0 to find a free port", e))?;
        let port = listener.local_addr().map_err(|e| ClusterError::io("reading the probe socket address", e))?.port();
        let mut used = USED_PORTS.lock().unwrap_or_else(|e| e.into_inner());
        if used.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    Err(ClusterError::io("finding a free port", std::io::Error::other("the OS kept returning ports already used")))
}

pub(super) fn clean_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        if key.as_encoded_bytes().starts_with(b"PG") {
            cmd.env_remove(&key);
        }
    }
}

/// Overwrite an existing file in place (keeps owner and mode).
pub(super) fn write_existing(path: &Path, contents: &str) -> Result<(), ClusterError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(|e| ClusterError::io(format!("opening {}", path.display()), e))?;
    f.write_all(contents.as_bytes()).map_err(|e| ClusterError::io(format!("writing {}", path.display()), e))
}

/// File contents from byte `offset` on ("" if unreadable).
pub(super) fn read_from(path: &Path, offset: u64) -> String {
    let mut s = Vec::new();
    if let Ok(mut f) = fs::File::open(path) {
        if f.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = f.read_to_end(&mut s);
        }
    }
    String::from_utf8_lossy(&s).into_owned()
}

/// Collapse multi-line text into one line (`a | b | c`).
pub(super) fn one_line(text: &str) -> String {
    let joined = text.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" | ");
    if joined.is_empty() {
        "(empty)".into()
    } else {
        joined
    }
}

pub(super) fn output_detail(out: &Output) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.trim().is_empty() {
        one_line(&String::from_utf8_lossy(&out.stdout))
    } else {
        one_line(&stderr)
    }
}

/// Quote a libpq key=value value when needed.
pub(super) fn dsn_quote(value: &str) -> String {
    if !value.is_empty() && !value.chars().any(|c| c.is_whitespace() || c == '\'' || c == '\\') {
        return value.to_owned();
    }
    let mut s = String::with_capacity(value.len() + 2);
    s.push('\'');
    for c in value.chars() {
        if c == '\'' || c == '\\' {
            s.push('\\');
        }
        s.push(c);
    }
    s.push('\'');
    s
}

/// Quote a postgresql.conf value (always single-quoted unless already quoted).
pub(super) fn conf_quote(value: &str) -> String {
    if value.len() >= 2 && value.starts_with('\'') && value.ends_with('\'') {
        return value.to_owned();
    }
    format!("'{}'", value.replace('\'', "''"))
}
