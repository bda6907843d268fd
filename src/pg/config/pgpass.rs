//! `~/.pgpass` (or `passfile`/`PGPASSFILE`), read as libpq reads it.
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use tokio_postgres::config::Host;

pub(super) fn read_pgpass(path: &Option<PathBuf>) -> Option<String> {
    use std::os::unix::fs::PermissionsExt;
    let path = path.as_ref()?;
    let meta = std::fs::metadata(path).ok()?;
    if !meta.is_file() {
        return None;
    }
    if meta.permissions().mode() & 0o077 != 0 {
        tracing::warn!(
            path = %path.display(),
            "password file has group or world access; permissions should be u=rw (0600) or less; ignoring it"
        );
        return None;
    }
    match std::fs::read_to_string(path) {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "could not read password file");
            None
        }
    }
}

/// The host name a pgpass line must match: libpq compares socket hosts
/// literally, except that its compiled-in default socket directory (and
/// an empty host) match `localhost`.
pub fn pgpass_host(host: &Host, hostaddr: Option<IpAddr>, default_socket_dir: &Path) -> String {
    match host {
        Host::Unix(p) if p == default_socket_dir => "localhost".into(),
        Host::Unix(p) => p.display().to_string(),
        Host::Tcp(h) if h.is_empty() => hostaddr.map(|a| a.to_string()).unwrap_or_else(|| "localhost".into()),
        Host::Tcp(h) => h.clone(),
    }
}

/// libpq's `passwordFromFile` over the file's text: the first line whose
/// `host:port:db:user` fields match (each literally or `*`) wins. In the
/// fields `\:` and `\\` are escapes; the password ends at an unescaped `:`.
pub fn pgpass_lookup(text: &str, host: &str, port: &str, dbname: &str, user: &str) -> Option<String> {
    for line in text.lines() {
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut rest = line.as_bytes();
        let mut ok = true;
        for token in [host, port, dbname, user] {
            match pgpass_field_matches(rest, token.as_bytes()) {
                Some(r) => rest = r,
                None => {
                    ok = false;
                    break;
                }
            }
        }
        if !ok {
            continue;
        }
        let mut pw = Vec::with_capacity(rest.len());
        let mut i = 0;
        while i < rest.len() && rest[i] != b':' {
            if rest[i] == b'\\' && i + 1 < rest.len() {
                i += 1;
            }
            pw.push(rest[i]);
            i += 1;
        }
        return Some(String::from_utf8_lossy(&pw).into_owned());
    }
    None
}

/// libpq's `pwdfMatchesString`: returns the rest of the line after the
/// field if the field matches `token`.
pub(super) fn pgpass_field_matches<'a>(buf: &'a [u8], token: &[u8]) -> Option<&'a [u8]> {
    if buf.len() >= 2 && buf[0] == b'*' && buf[1] == b':' {
        return Some(&buf[2..]);
    }
    let mut i = 0;
    let mut t = 0;
    while i < buf.len() {
        let mut escaped = false;
        if buf[i] == b'\\' {
            i += 1;
            escaped = true;
            if i >= buf.len() {
                return None;
            }
        }
        if buf[i] == b':' && !escaped && t == token.len() {
            return Some(&buf[i + 1..]);
        }
        if t == token.len() || buf[i] != token[t] {
            return None;
        }
        i += 1;
        t += 1;
    }
    None
}

// ---------------------------------------------------------------------------
// Redaction.
