//! `walwitness replay FILE…`: checks captured logs and writes the records that pass the filters, as
//! JSON lines, unchanged (byte for byte as captured).
//!
//! A row (delete/truncate) passes when every given filter matches it; its transaction's commit is
//! written when any of the transaction's rows pass (with `--type`, only the named types are written,
//! but the other filters still select through the rows). `capture_started`/`capture_stopped` are
//! written when `--type` names them, or when no filter other than `--since/--until` is given and their
//! `time` is in range. Rows are held until their commit: rows the capture never committed are not
//! replayed.
use std::io::{self, BufWriter, Write};

use crate::cli::{FilterArgs, ReplayArgs};
use crate::error::{Exit, Failure};

use super::log::{parse_time, Kind, Record};
use super::{read_files, Consumer, Stop};

/// A client filter: address, optionally with a port, or a Unix-socket client.
#[derive(Debug, Clone, PartialEq)]
enum ClientMatch {
    Local,
    Addr(String, Option<i64>),
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
    tables: Vec<String>,
    keys: Vec<String>,
    kinds: Vec<Kind>,
}

fn usage(msg: String) -> Failure {
    Failure::new(Exit::Usage, msg)
}

impl Filter {
    pub fn from_args(a: &FilterArgs) -> Result<Filter, Failure> {
        let time = |flag: &str, v: &Option<String>| -> Result<Option<i64>, Failure> {
            v.as_deref()
                .map(|s| {
                    parse_time(s).ok_or_else(|| {
                        usage(format!("{flag} {s:?} is not an RFC 3339 time (example: 2026-11-26T15:04:05Z)"))
                    })
                })
                .transpose()
        };
        let mut kinds = Vec::new();
        for k in &a.kind {
            kinds.push(Kind::parse(k).ok_or_else(|| {
                usage(format!(
                    "--type {k:?}: expected delete, truncate, commit, capture_started, capture_stopped or gap"
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
            tables: a.table.iter().map(|t| if t.contains('.') { t.clone() } else { format!("public.{t}") }).collect(),
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
        if (self.since.is_some() || self.until.is_some()) && !self.time_ok(rec.time_micros()) {
            return false;
        }
        if !self.xids.is_empty() && !self.xids.contains(&rec.xid()) {
            return false;
        }
        if !self.tables.is_empty() {
            let hit = match (&rec.table, &rec.tables) {
                (Some(t), _) => self.tables.iter().any(|f| f == t),
                (None, Some(ts)) => ts.iter().any(|t| self.tables.iter().any(|f| f == t)),
                _ => false,
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
        let Some(s) = rec.session.value() else {
            return false;
        };
        if !self.pids.is_empty() && !self.pids.contains(&s.pid) {
            return false;
        }
        if !self.users.is_empty() && !s.user.as_deref().is_some_and(|u| self.users.iter().any(|f| f == u)) {
            return false;
        }
        if !self.apps.is_empty() && !s.application_name.as_deref().is_some_and(|a| self.apps.iter().any(|f| f == a)) {
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

/// Writes passing records, holding each transaction's passing rows until its commit.
pub struct ReplayOut<W: Write> {
    out: W,
    filter: Filter,
    held: Vec<u8>,
    any_row: bool,
}

impl<W: Write> ReplayOut<W> {
    pub fn new(out: W, filter: Filter) -> Self {
        ReplayOut { out, filter, held: Vec::new(), any_row: false }
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> Consumer for ReplayOut<W> {
    fn row(&mut self, kind: Kind, rec: &Record, line: &[u8]) -> io::Result<()> {
        if self.filter.row_matches(rec) {
            self.any_row = true;
            if self.filter.kind_allowed(kind) {
                self.held.extend_from_slice(line);
                self.held.push(b'\n');
            }
        }
        Ok(())
    }

    fn commit(&mut self, _rec: &Record, line: &[u8]) -> io::Result<()> {
        let r = if self.any_row {
            self.out.write_all(&self.held).and_then(|()| {
                if self.filter.kind_allowed(Kind::Commit) {
                    self.out.write_all(line)?;
                    self.out.write_all(b"\n")
                } else {
                    Ok(())
                }
            })
        } else {
            Ok(())
        };
        self.abort();
        r
    }

    fn statement(&mut self, _rec: &Record, line: &[u8]) -> io::Result<()> {
        if self.filter.kind_allowed(Kind::Statement) {
            self.held.extend_from_slice(line);
            self.held.push(b'\n');
        }
        Ok(())
    }

    fn abort(&mut self) {
        self.held.clear();
        self.any_row = false;
    }

    fn boundary(&mut self, kind: Kind, rec: &Record, line: &[u8]) -> io::Result<()> {
        if self.filter.boundary_passes(kind, rec) {
            self.out.write_all(line)?;
            self.out.write_all(b"\n")?;
        }
        Ok(())
    }
}

pub fn run(args: ReplayArgs) -> Exit {
    if args.raw {
        return super::raw_replay::run(&args.files);
    }
    if !args.report && (args.report_opts.html.is_some() || args.report_opts.format != crate::cli::ReportFormat::Text) {
        eprintln!(
            "walwitness replay: error: --format and --html shape the report: add --report (or use walwitness report)"
        );
        return Exit::Usage;
    }
    if args.report {
        return super::report::run_with("replay", &args.files, &args.filter, args.lenient, &args.report_opts);
    }
    super::finish("replay", replay(&args))
}

fn replay(args: &ReplayArgs) -> Result<(), Stop> {
    let filter = Filter::from_args(&args.filter)?;
    let stdout = io::stdout();
    let mut out = ReplayOut::new(BufWriter::with_capacity(256 * 1024, stdout.lock()), filter);
    read_files(&args.files, args.lenient, &mut out)?;
    out.into_inner().flush().map_err(super::output_error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::log::tests::{commit, del, session, CS};
    use super::super::Feeder;
    use super::*;

    const T1: &str = "2026-11-26T15:01:00.000000Z";
    const T2: &str = "2026-11-26T15:05:00.000000Z";

    fn log() -> Vec<String> {
        let a = session(7, "alice", "psql", "DELETE FROM t WHERE id LIKE 'report%'");
        let b = session(8, "bob", "cron", "DELETE FROM t WHERE id = 'x'");
        vec![
            CS.to_owned(),
            del(5, 1, T1, "report:1", &a),
            del(5, 1, T1, "report:2", &a),
            commit(5, 1, T1, 2, &a),
            del(6, 2, T2, "user_9", &b),
            commit(6, 2, T2, 1, &b),
            del(7, 3, T2, "x", "null"),
            commit(7, 3, T2, 1, "null"),
        ]
    }

    fn replay_lines(lines: &[String], args: FilterArgs, lenient: bool) -> Result<Vec<String>, Stop> {
        let mut out = ReplayOut::new(Vec::new(), Filter::from_args(&args)?);
        let mut f = Feeder::new("t.jsonl", lenient);
        for (i, l) in lines.iter().enumerate() {
            f.line(i as u64 + 1, l.as_bytes(), &mut out)?;
        }
        f.end(lines.len() as u64, 0, &mut out)?;
        let text = String::from_utf8(out.into_inner()).unwrap();
        Ok(text.lines().map(str::to_owned).collect())
    }

    fn kinds_xids(lines: &[String]) -> Vec<String> {
        lines
            .iter()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                format!("{}{}", v["type"].as_str().unwrap(), v.get("xid").map(|x| x.to_string()).unwrap_or_default())
            })
            .collect()
    }

    #[test]
    fn no_filter_passes_everything() {
        let l = log();
        assert_eq!(replay_lines(&l, FilterArgs::default(), false).unwrap(), l);
    }

    #[test]
    fn filters() {
        let l = log();
        let cases: Vec<(FilterArgs, Vec<&str>)> = vec![
            (FilterArgs { pid: vec![7], ..Default::default() }, vec!["delete5", "delete5", "commit5"]),
            (FilterArgs { user: vec!["bob".into()], ..Default::default() }, vec!["delete6", "commit6"]),
            (
                FilterArgs {
                    app: vec!["cron".into(), "psql".into()],
                    kind: vec!["commit".into()],
                    ..Default::default()
                },
                vec!["commit5", "commit6"],
            ),
            (FilterArgs { key: vec!["report:?".into()], ..Default::default() }, vec!["delete5", "delete5", "commit5"]),
            (FilterArgs { key: vec!["*2".into()], ..Default::default() }, vec!["delete5", "commit5"]),
            (
                FilterArgs { since: Some("2026-11-26T15:02:00Z".into()), ..Default::default() },
                vec!["delete6", "commit6", "delete7", "commit7"],
            ),
            (
                FilterArgs { until: Some("2026-11-26T15:02:00Z".into()), ..Default::default() },
                vec!["capture_started", "delete5", "delete5", "commit5"],
            ),
            (FilterArgs { xid: vec![7], ..Default::default() }, vec!["delete7", "commit7"]),
            (FilterArgs { client: vec!["10.0.0.5:58".into()], ..Default::default() }, vec!["delete6", "commit6"]),
            (
                FilterArgs { client: vec!["10.0.0.5".into()], kind: vec!["delete".into()], ..Default::default() },
                vec!["delete5", "delete5", "delete6"],
            ),
            (FilterArgs { client: vec!["local".into()], ..Default::default() }, vec![]),
            (
                FilterArgs { table: vec!["t".into()], kind: vec!["capture_started".into()], ..Default::default() },
                vec!["capture_started"],
            ),
            (FilterArgs { table: vec!["public.other".into()], ..Default::default() }, vec![]),
        ];
        for (args, want) in cases {
            let got = kinds_xids(&replay_lines(&l, args.clone(), false).unwrap());
            assert_eq!(got, want, "{args:?}");
        }
    }

    #[test]
    fn strict_stops_at_damage_lenient_skips() {
        let mut l = log();
        l.insert(5, "{\"type\":\"delete\",".into()); // a torn line inside xid 6
        match replay_lines(&l, FilterArgs::default(), false) {
            Err(Stop::Failure(f)) => {
                assert_eq!(f.exit, Exit::DamagedLog);
                assert!(f.message.starts_with("t.jsonl:6: damaged log"), "{}", f.message);
            }
            other => panic!("{other:?}"),
        }
        let got = replay_lines(&l, FilterArgs::default(), true).unwrap();
        assert_eq!(got.len(), l.len() - 1);
    }

    #[test]
    fn uncommitted_rows_are_not_replayed() {
        let mut l = log();
        l.truncate(7); // xid 7's row without its commit
        let got = replay_lines(&l, FilterArgs::default(), true).unwrap();
        assert_eq!(kinds_xids(&got).last().unwrap(), "commit6");
        assert!(replay_lines(&l, FilterArgs::default(), false).is_err());
    }

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
