//! The connection string itself: libpq keywords cut out before tokio-postgres parses the rest,
//! both syntaxes (`key=value`, `postgres://` URLs), service files applied, and passwords redacted.
use tokio_postgres::config::Host;

use crate::pg::error::PgError;
use std::str::FromStr;

/// Keys cut out of the DSN before tokio-postgres sees it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct LibpqKeys {
    pub sslmode: Option<String>,
    pub sslrootcert: Option<String>,
    pub sslcert: Option<String>,
    pub sslkey: Option<String>,
    pub passfile: Option<String>,
    pub fallback_application_name: Option<String>,
    pub service: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Extracted {
    pub keys: LibpqKeys,
    /// The DSN without those keys, still in its original syntax.
    pub rest: String,
}

/// The keywords tokio-postgres parses itself (`Config::from_str`); with [`take_key`]'s and
/// [`IGNORED_KEYS`], every keyword walwitness accepts.
pub(super) const TOKIO_KEYS: &[&str] = &[
    "user",
    "password",
    "dbname",
    "options",
    "application_name",
    "sslnegotiation",
    "host",
    "hostaddr",
    "port",
    "connect_timeout",
    "tcp_user_timeout",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_retries",
    "target_session_attrs",
    "channel_binding",
    "load_balance_hosts",
];

/// libpq's wording for a keyword it does not know, so the typo is named (tokio-postgres only says
/// the string is invalid).
pub(super) fn unknown_key(key: &str) -> PgError {
    PgError::Config(format!("invalid connection option \"{key}\""))
}

/// libpq keys tokio-postgres would reject but that do not change what we do
/// (GSSAPI is not supported, so `gssencmode` can only mean "don't").
pub(super) const IGNORED_KEYS: &[&str] = &[
    "gssencmode",
    "sslcompression",
    "sslsni",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "replication",
    "krbsrvname",
    "gsslib",
];

pub(super) fn is_url(dsn: &str) -> bool {
    dsn.starts_with("postgres://") || dsn.starts_with("postgresql://")
}

/// Returns true if the key was taken.
pub(super) fn take_key(keys: &mut LibpqKeys, key: &str, value: String) -> bool {
    let slot = match key {
        "sslmode" => &mut keys.sslmode,
        "sslrootcert" => &mut keys.sslrootcert,
        "sslcert" => &mut keys.sslcert,
        "sslkey" => &mut keys.sslkey,
        "passfile" => &mut keys.passfile,
        "fallback_application_name" => &mut keys.fallback_application_name,
        "service" => &mut keys.service,
        k if IGNORED_KEYS.contains(&k) => {
            tracing::debug!(key = k, "ignoring connection option");
            return true;
        }
        _ => return false,
    };
    *slot = Some(value);
    true
}

/// The keywords a service file may set besides [`take_key`]'s.
pub(super) const SERVICE_KEYS: &[&str] =
    &["host", "hostaddr", "port", "user", "password", "dbname", "options", "application_name", "connect_timeout"];

/// Fills what the connection string left unset from a service's settings (libpq applies them after
/// the connection string and before the environment).
pub(super) fn apply_service(
    config: &mut tokio_postgres::Config,
    keys: &mut LibpqKeys,
    name: &str,
    settings: Vec<(String, String)>,
) -> Result<(), PgError> {
    let mut rest = String::new();
    for (k, v) in settings {
        let mut fresh = LibpqKeys::default();
        if take_key(&mut fresh, &k, v.clone()) {
            let pairs = [
                (&mut keys.sslmode, fresh.sslmode),
                (&mut keys.sslrootcert, fresh.sslrootcert),
                (&mut keys.sslcert, fresh.sslcert),
                (&mut keys.sslkey, fresh.sslkey),
                (&mut keys.passfile, fresh.passfile),
                (&mut keys.fallback_application_name, fresh.fallback_application_name),
            ];
            for (slot, value) in pairs {
                if slot.is_none() {
                    *slot = value;
                }
            }
            continue;
        }
        if !TOKIO_KEYS.contains(&k.as_str()) {
            return Err(PgError::Config(format!("invalid connection option \"{k}\" in service \"{name}\"")));
        }
        if !SERVICE_KEYS.contains(&k.as_str()) {
            return Err(PgError::Config(format!(
                "service \"{name}\" sets {k}, which walwitness takes only from the connection string: put it there"
            )));
        }
        rest.push_str(&format!("{k}='{}' ", v.replace('\\', "\\\\").replace('\'', "\\'")));
    }
    let svc =
        tokio_postgres::Config::from_str(&rest).map_err(|e| PgError::Config(format!("service \"{name}\": {e}")))?;
    if config.get_hosts().is_empty() && config.get_hostaddrs().is_empty() {
        for h in svc.get_hosts() {
            match h {
                Host::Tcp(h) => config.host(h),
                Host::Unix(p) => config.host_path(p),
            };
        }
        for a in svc.get_hostaddrs() {
            config.hostaddr(*a);
        }
    }
    if config.get_ports().is_empty() {
        for p in svc.get_ports() {
            config.port(*p);
        }
    }
    if let (None, Some(u)) = (config.get_user(), svc.get_user()) {
        config.user(u);
    }
    if let (None, Some(p)) = (config.get_password(), svc.get_password()) {
        config.password(p);
    }
    if let (None, Some(d)) = (config.get_dbname(), svc.get_dbname()) {
        config.dbname(d);
    }
    if let (None, Some(o)) = (config.get_options(), svc.get_options()) {
        config.options(o);
    }
    if let (None, Some(a)) = (config.get_application_name(), svc.get_application_name()) {
        config.application_name(a);
    }
    if let (None, Some(t)) = (config.get_connect_timeout(), svc.get_connect_timeout()) {
        config.connect_timeout(*t);
    }
    Ok(())
}

pub(crate) fn extract_libpq_keys(dsn: &str) -> Result<Extracted, PgError> {
    if is_url(dsn) {
        extract_url(dsn)
    } else {
        extract_kv(dsn)
    }
}

pub(super) fn extract_kv(dsn: &str) -> Result<Extracted, PgError> {
    let tokens = tokenize_kv(dsn, true)?;
    let mut keys = LibpqKeys::default();
    let mut rest = String::with_capacity(dsn.len());
    for t in tokens {
        let Some(value) = t.value else { continue };
        if take_key(&mut keys, &t.key, value.clone()) {
            continue;
        }
        if !TOKIO_KEYS.contains(&t.key.as_str()) {
            return Err(unknown_key(&t.key));
        }
        if !rest.is_empty() {
            rest.push(' ');
        }
        // Re-quote every value so tokio-postgres sees exactly what libpq
        // would have (its own parser rejects empty unquoted values).
        rest.push_str(&t.key);
        rest.push_str("='");
        for c in value.chars() {
            if c == '\'' || c == '\\' {
                rest.push('\\');
            }
            rest.push(c);
        }
        rest.push('\'');
    }
    Ok(Extracted { keys, rest })
}

/// An unencoded `@` anywhere but between the user info and the host makes a URL ambiguous: libpq ends
/// the user info at the first `@` (its look-ahead stops at the first `@` or `/`: `fe-connect.c`,
/// `conninfo_uri_parse_options`), and so does tokio-postgres, so the rest of a password holding an
/// `@` (or a `/` and an `@`) became the host or the database name — and was printed in every
/// connection error. Such URLs are refused, with no part of them in the message.
pub(super) fn check_url_ats(dsn: &str) -> Result<(), PgError> {
    let rest = &dsn[dsn.find("://").map_or(0, |i| i + 3)..];
    let path_end = rest.find('?').unwrap_or(rest.len());
    let authority_end = rest[..path_end].find('/').unwrap_or(path_end);
    let ats = rest.matches('@').count();
    let in_path = rest[authority_end..path_end].contains('@');
    if ats > 1 || in_path {
        return Err(PgError::Config(
            "this postgres:// URL has an unencoded \"@\" that is not the one between the user info and the host, so part of a password could be taken for the host or the database (and shown in errors): write @ as %40 inside a user name, password or database name (the URL is not repeated here, since it may hold a password)".into(),
        ));
    }
    Ok(())
}

/// Whether a DSN (either syntax) carries a password.
pub fn has_password(dsn: &str) -> bool {
    if is_url(dsn) {
        let rest = &dsn[dsn.find("://").map_or(0, |i| i + 3)..];
        let userinfo = rest.rfind('@').map_or("", |at| &rest[..at]);
        return userinfo.contains(':') || redact_url(dsn) != dsn;
    }
    redact_kv(dsn) != dsn
}

pub(super) fn extract_url(dsn: &str) -> Result<Extracted, PgError> {
    check_url_ats(dsn)?;
    let (base, query) = match dsn.find('?') {
        Some(i) => (&dsn[..i], Some(&dsn[i + 1..])),
        None => (dsn, None),
    };
    let mut keys = LibpqKeys::default();
    let mut kept: Vec<&str> = Vec::new();
    let mut ssl_true = false;
    if let Some(q) = query {
        for param in q.split('&').filter(|p| !p.is_empty()) {
            let Some((k, v)) = param.split_once('=') else {
                return Err(PgError::Config(format!(
                    "missing \"=\" in URI query parameter in \"{}\"",
                    redact_dsn(dsn)
                )));
            };
            let key = percent_decode(k)?;
            // JDBC-style `ssl=true`, which libpq accepts as sslmode=require.
            if key == "ssl" {
                if percent_decode(v)? == "true" {
                    ssl_true = true;
                    continue;
                }
                return Err(PgError::Config("invalid URI query parameter \"ssl\" (only ssl=true is accepted)".into()));
            }
            if take_key(&mut keys, &key, percent_decode(v)?) {
                continue;
            }
            if !TOKIO_KEYS.contains(&key.as_str()) {
                return Err(unknown_key(&key));
            }
            kept.push(param);
        }
    }
    if ssl_true && keys.sslmode.is_none() {
        keys.sslmode = Some("require".into());
    }
    let mut rest = base.to_owned();
    if !kept.is_empty() {
        rest.push('?');
        rest.push_str(&kept.join("&"));
    }
    Ok(Extracted { keys, rest })
}

pub(super) fn percent_decode(s: &str) -> Result<String, PgError> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            match hex {
                Some(0) => return Err(PgError::Config("forbidden value %00 in percent-encoded value".into())),
                Some(v) => {
                    out.push(v);
                    i += 3;
                }
                None => return Err(PgError::Config("invalid percent-encoded token in connection URI".into())),
            }
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| PgError::Config("percent-encoded value is not valid UTF-8".into()))
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct KvToken {
    key: String,
    /// `None` for a keyword without `=` (only in lenient mode).
    value: Option<String>,
    /// Byte range of the value as written, quotes included.
    value_span: std::ops::Range<usize>,
}

/// libpq conninfo tokenizer: `key = value`, values either bare (ending at
/// whitespace) or in single quotes; a backslash escapes the next character
/// in both. Lenient mode never fails (for redaction of broken strings).
pub(super) fn tokenize_kv(s: &str, strict: bool) -> Result<Vec<KvToken>, PgError> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let skip_ws = |mut i: usize| {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        i
    };
    loop {
        i = skip_ws(i);
        if i >= b.len() {
            break;
        }
        let kstart = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' {
            i += 1;
        }
        let key = s[kstart..i].to_owned();
        i = skip_ws(i);
        if i >= b.len() || b[i] != b'=' {
            if strict {
                return Err(PgError::Config(format!("missing \"=\" after \"{key}\" in connection info string")));
            }
            out.push(KvToken { key, value: None, value_span: i..i });
            continue;
        }
        i = skip_ws(i + 1);
        let vstart = i;
        let mut value = Vec::new();
        if i < b.len() && b[i] == b'\'' {
            i += 1;
            let mut closed = false;
            while i < b.len() {
                match b[i] {
                    b'\\' if i + 1 < b.len() => {
                        value.push(b[i + 1]);
                        i += 2;
                    }
                    b'\'' => {
                        i += 1;
                        closed = true;
                        break;
                    }
                    c => {
                        value.push(c);
                        i += 1;
                    }
                }
            }
            if !closed && strict {
                return Err(PgError::Config("unterminated quoted string in connection info string".into()));
            }
        } else {
            while i < b.len() && !b[i].is_ascii_whitespace() {
                if b[i] == b'\\' && i + 1 < b.len() {
                    value.push(b[i + 1]);
                    i += 2;
                } else {
                    value.push(b[i]);
                    i += 1;
                }
            }
        }
        // Splitting only ever happens at ASCII bytes, so this is UTF-8.
        let value = String::from_utf8_lossy(&value).into_owned();
        out.push(KvToken { key, value: Some(value), value_span: vstart..i });
    }
    Ok(out)
}

// ---------------------------------------------------------------------------
// Environment defaults.

pub(super) const SECRET_KEYS: &[&str] = &["password", "sslpassword"];

/// Replaces every password in a DSN (either syntax) with `***`. Never
/// fails: broken strings are redacted too, erring on the side of hiding.
pub fn redact_dsn(dsn: &str) -> String {
    if is_url(dsn) {
        redact_url(dsn)
    } else {
        redact_kv(dsn)
    }
}

pub(super) fn redact_kv(dsn: &str) -> String {
    let Ok(tokens) = tokenize_kv(dsn, false) else {
        return "***".into();
    };
    let mut out = String::with_capacity(dsn.len());
    let mut last = 0;
    for t in tokens {
        if t.value.is_some() && SECRET_KEYS.contains(&t.key.as_str()) {
            out.push_str(&dsn[last..t.value_span.start]);
            out.push_str("***");
            last = t.value_span.end;
        }
    }
    out.push_str(&dsn[last..]);
    out
}

pub(super) fn redact_url(dsn: &str) -> String {
    let scheme_end = dsn.find("://").map(|i| i + 3).unwrap_or(0);
    // Where the user info ends is unknowable when a password holds '@', '/' or '?': hide everything from
    // the first ':' of the user info to the last '@' of the whole URL, erring on the side of hiding.
    let (shown, tail) = match dsn[scheme_end..].rfind('@').map(|i| i + scheme_end) {
        Some(at) => {
            let userinfo = &dsn[scheme_end..at];
            match userinfo.find(':') {
                Some(c) => (format!("{}:***", &dsn[..scheme_end + c]), &dsn[at..]),
                None => (dsn[..at].to_owned(), &dsn[at..]),
            }
        }
        None => (String::new(), dsn),
    };
    let mut out = shown;
    let (head, query) = match tail.find('?') {
        Some(i) => (&tail[..i], Some(&tail[i + 1..])),
        None => (tail, None),
    };
    out.push_str(head);
    if let Some(q) = query {
        out.push('?');
        let parts: Vec<String> = q
            .split('&')
            .map(|p| match p.split_once('=') {
                Some((k, _)) if SECRET_KEYS.contains(&percent_decode(k).unwrap_or_default().as_str()) => {
                    format!("{k}=***")
                }
                _ => p.to_owned(),
            })
            .collect();
        out.push_str(&parts.join("&"));
    }
    out
}
