//! The reader filters (`--since … --type`, shared by `replay`, `report` and `tail`): compiled once from
//! the flags, then asked of every record.
use crate::cli::FilterArgs;
use crate::error::{Exit, Failure};

use super::log::{Kind, Record};

/// A client filter: address, optionally with a port, or a Unix-socket client.
#[derive(Debug, Clone, PartialEq)]
enum ClientMatch {
    Local,
    Addr(String, Option<i64>),
}

/// A `--table` filter: the (schema, name) pairs it may mean (an unquoted part also folded to lower
/// case, as the capture resolves it), matched against `schema`/`name`/`partition`/`relations`, or,
/// for logs written before those fields (format version 1), against the joined `table` strings.
#[derive(Debug, Clone, PartialEq)]
struct TableMatch {
    names: Vec<(String, String)>,
}

impl TableMatch {
    fn parse(arg: &str) -> Result<TableMatch, Failure> {
        let t = crate::pg::names::parse_table(arg).map_err(|e| usage(format!("--table: {e}")))?;
        let mut names = vec![(t.schema.clone(), t.table.clone())];
        let folded = (
            if t.schema_quoted { t.schema.clone() } else { t.schema.to_lowercase() },
            if t.table_quoted { t.table.clone() } else { t.table.to_lowercase() },
        );
        if folded != names[0] {
            names.push(folded);
        }
        Ok(TableMatch { names })
    }

    fn pair(&self, schema: &str, name: &str) -> bool {
        self.names.iter().any(|(s, n)| s == schema && n == name)
    }

    fn joined(&self, table: &str) -> bool {
        self.names.iter().any(|(s, n)| table.len() == s.len() + 1 + n.len() && table == format!("{s}.{n}"))
    }
}

/// The compiled `--since … --type` filters.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    since: Option<i64>,
    until: Option<i64>,
    xids: Vec<u64>,
    pids: Vec<i64>,
    users: Vec<String>,
    apps: Vec<String>,
    clients: Vec<ClientMatch>,
    tables: Vec<TableMatch>,
    keys: Vec<String>,
    kinds: Vec<Kind>,
}

fn usage(msg: String) -> Failure {
    Failure::new(Exit::Usage, msg)
}

impl Filter {
    pub fn from_args(a: &FilterArgs) -> Result<Filter, Failure> {
        let time = |flag: &str, v: &Option<String>| -> Result<Option<i64>, Failure> {
            v.as_deref().map(|s| super::when::parse_when(s).map_err(|e| usage(format!("{flag} {e}")))).transpose()
        };
        let mut kinds = Vec::new();
        for k in &a.kind {
            kinds.push(Kind::parse(k).ok_or_else(|| {
                usage(format!(
                    "--type {k:?}: expected delete, truncate, commit, relation_renamed, capture_started, capture_stopped, gap, aborted_delete, aborted_truncate or abort"
                ))
            })?);
        }
        let clients = a.client.iter().map(|c| parse_client(c)).collect::<Result<Vec<_>, _>>()?;
        Ok(Filter {
            since: time("--since", &a.since)?,
            until: time("--until", &a.until)?,
            xids: a.xid.clone(),
            pids: a.pid.clone(),
            users: a.user.clone(),
            apps: a.app.clone(),
            clients,
            tables: a.table.iter().map(|t| TableMatch::parse(t)).collect::<Result<Vec<_>, _>>()?,
            keys: a.key.clone(),
            kinds,
        })
    }

    /// No filter that selects rows (time and type aside).
    fn selects_rows(&self) -> bool {
        !(self.xids.is_empty()
            && self.pids.is_empty()
            && self.users.is_empty()
            && self.apps.is_empty()
            && self.clients.is_empty()
            && self.tables.is_empty()
            && self.keys.is_empty())
    }

    pub fn kind_allowed(&self, k: Kind) -> bool {
        self.kinds.is_empty() || self.kinds.contains(&k)
    }

    fn time_ok(&self, t: Option<i64>) -> bool {
        match t {
            Some(t) => self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t < u),
            None => self.since.is_none() && self.until.is_none(),
        }
    }

    /// Whether a delete/truncate record matches every filter except `--type`.
    pub fn row_matches(&self, rec: &Record) -> bool {
        self.row_matches_as(rec, rec.session.value().map(|s| &**s))
    }

    /// As [`Filter::row_matches`], with the session filters (`--pid`, `--user`, `--app`, `--client`)
    /// applied to `session` instead of the record's own (`report` gives the inferred one when there is
    /// no evidence).
    pub fn row_matches_as(&self, rec: &Record, session: Option<&super::log::SessionRef>) -> bool {
        if (self.since.is_some() || self.until.is_some()) && !self.time_ok(rec.time_micros()) {
            return false;
        }
        if !self.xids.is_empty() && !self.xids.contains(&rec.xid()) {
            return false;
        }
        if !self.tables.is_empty() {
            let hit = match rec.named_relations() {
                Some(names) => names.iter().any(|(s, n)| self.tables.iter().any(|f| f.pair(s, n))),
                None => match (&rec.table, &rec.tables) {
                    (Some(t), _) => self.tables.iter().any(|f| f.joined(t)),
                    (None, Some(ts)) => ts.iter().any(|t| self.tables.iter().any(|f| f.joined(t))),
                    _ => false,
                },
            };
            if !hit {
                return false;
            }
        }
        if !self.keys.is_empty() {
            let Some(key) = rec.key.value() else {
                return false;
            };
            let hit = self.keys.iter().all(|g| {
                key.0.iter().any(|(_, v)| match v {
                    super::log::KeyValue::Text(s) => glob_match(g, s),
                    // Text that is not UTF-8 matches in its displayed form, `\x` + hex.
                    v @ super::log::KeyValue::TextHex(_) => glob_match(g, &v.to_string()),
                    _ => false,
                })
            });
            if !hit {
                return false;
            }
        }
        if self.pids.is_empty() && self.users.is_empty() && self.apps.is_empty() && self.clients.is_empty() {
            return true;
        }
        let Some(s) = session else {
            return false;
        };
        if !self.pids.is_empty() && !self.pids.contains(&s.pid) {
            return false;
        }
        if !self.users.is_empty() && !s.user.as_deref().is_some_and(|u| self.users.iter().any(|f| glob_match(f, u))) {
            return false;
        }
        if !self.apps.is_empty()
            && !s.application_name.as_deref().is_some_and(|a| self.apps.iter().any(|f| glob_match(f, a)))
        {
            return false;
        }
        if !self.clients.is_empty() {
            let hit = self.clients.iter().any(|c| match c {
                ClientMatch::Local => s.client_addr.is_none(),
                ClientMatch::Addr(a, port) => {
                    s.client_addr.as_deref() == Some(a.as_str()) && port.is_none_or(|p| s.client_port == Some(p))
                }
            });
            if !hit {
                return false;
            }
        }
        true
    }

    /// Follows a `relation_renamed` record: a `--table` filter that selected the table under its
    /// previous name selects it under the new one from here on.
    pub fn follow_rename(&mut self, rec: &Record) {
        let (Some(ps), Some(pn), Some(s), Some(n)) =
            (rec.previous_schema.as_deref(), rec.previous_name.as_deref(), rec.schema.as_deref(), rec.name.as_deref())
        else {
            return;
        };
        if self.tables.iter().any(|f| f.pair(ps, pn)) && !self.tables.iter().any(|f| f.pair(s, n)) {
            self.tables.push(TableMatch { names: vec![(s.to_owned(), n.to_owned())] });
        }
    }

    /// Whether a capture_started/capture_stopped record is written.
    pub fn boundary_passes(&self, kind: Kind, rec: &Record) -> bool {
        if self.kinds.contains(&kind) {
            return self.time_ok(rec.time_micros());
        }
        self.kinds.is_empty() && !self.selects_rows() && self.time_ok(rec.time_micros())
    }
}

fn parse_client(c: &str) -> Result<ClientMatch, Failure> {
    if c == "local" {
        return Ok(ClientMatch::Local);
    }
    let bad = || usage(format!("--client {c:?}: expected an address, addr:port, [v6addr]:port, or local"));
    if let Some(rest) = c.strip_prefix('[') {
        let (addr, port) = rest.split_once(']').ok_or_else(bad)?;
        let port = match port.strip_prefix(':') {
            Some(p) => Some(p.parse().map_err(|_| bad())?),
            None if port.is_empty() => None,
            None => return Err(bad()),
        };
        return Ok(ClientMatch::Addr(addr.to_owned(), port));
    }
    // One colon: addr:port. More: a bare IPv6 address.
    if c.matches(':').count() == 1 {
        let (addr, port) = c.split_once(':').ok_or_else(bad)?;
        return Ok(ClientMatch::Addr(addr.to_owned(), Some(port.parse().map_err(|_| bad())?)));
    }
    if c.is_empty() {
        return Err(bad());
    }
    Ok(ClientMatch::Addr(c.to_owned(), None))
}

/// Shell-style glob: `*` any run of characters, `?` exactly one, everything else literal.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let t: Vec<char> = text.chars().collect();
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || (p[pi] != '*' && p[pi] == t[ti])) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            // Let the last star swallow one more character and retry.
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::FilterArgs;

    #[test]
    fn globs() {
        assert!(glob_match("report:*", "report:1"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("??", "é1"));
        assert!(!glob_match("?", ""));
        assert!(glob_match("*:1?", "user:12"));
        assert!(!glob_match("abc", "abcd"));
    }

    #[test]
    fn bad_filter_values_are_usage_errors() {
        for args in [
            FilterArgs { since: Some("yesterday".into()), ..Default::default() },
            FilterArgs { kind: vec!["update".into()], ..Default::default() },
            FilterArgs { client: vec!["1.2.3.4:port".into()], ..Default::default() },
        ] {
            assert_eq!(Filter::from_args(&args).unwrap_err().exit, Exit::Usage);
        }
        let f = parse_client("[::1]:5432").unwrap();
        assert_eq!(f, ClientMatch::Addr("::1".into(), Some(5432)));
        assert_eq!(parse_client("::1").unwrap(), ClientMatch::Addr("::1".into(), None));
    }
}
