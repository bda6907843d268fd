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

use super::log::{Kind, Record};
use super::{read_files, Consumer, Stop};

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

/// Writes passing records, holding each transaction's passing rows until its commit.
pub struct ReplayOut<W: Write> {
    out: W,
    filter: Filter,
    held: super::held::Held,
    any_row: bool,
}

impl<W: Write> ReplayOut<W> {
    pub fn new(out: W, filter: Filter) -> Self {
        ReplayOut { out, filter, held: super::held::Held::new(), any_row: false }
    }

    pub fn into_inner(self) -> W {
        self.out
    }
}

impl<W: Write> Consumer for ReplayOut<W> {
    fn row(&mut self, kind: Kind, rec: &Record, line: &[u8]) -> io::Result<()> {
        if kind == Kind::RelationRenamed {
            // Context for the rows after it: written with them if any of its transaction's rows pass.
            self.filter.follow_rename(rec);
            if self.filter.kind_allowed(kind) {
                self.held.push_line(line)?;
            }
            return Ok(());
        }
        if self.filter.row_matches(rec) {
            self.any_row = true;
            if self.filter.kind_allowed(kind) {
                self.held.push_line(line)?;
            }
        }
        Ok(())
    }

    fn commit(&mut self, _rec: &Record, line: &[u8]) -> io::Result<()> {
        let r = if self.any_row {
            self.held.write_to(&mut self.out).and_then(|()| {
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
            return self.held.push_line(line);
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
        return super::raw_replay::run(&args.files, args.limits.max_line_length);
    }
    if args.verify {
        let f = &args.filter;
        if f.since.is_some()
            || f.until.is_some()
            || !(f.xid.is_empty()
                && f.pid.is_empty()
                && f.user.is_empty()
                && f.app.is_empty()
                && f.client.is_empty()
                && f.table.is_empty()
                && f.key.is_empty()
                && f.kind.is_empty())
        {
            eprintln!("walwitness replay: error: --verify checks whole logs: filters do not apply");
            return Exit::Usage;
        }
        return super::verify::run(&args.files, args.expect_head.as_deref(), args.limits.max_line_length);
    }
    if !args.report && (args.report_opts.html.is_some() || args.report_opts.format != crate::cli::ReportFormat::Text) {
        eprintln!(
            "walwitness replay: error: --format and --html shape the report: add --report (or use walwitness report)"
        );
        return Exit::Usage;
    }
    if args.report {
        return super::report::run_with(
            "replay",
            &args.files,
            &args.filter,
            args.lenient,
            args.limits.max_line_length,
            &args.report_opts,
        );
    }
    super::finish("replay", replay(&args))
}

fn replay(args: &ReplayArgs) -> Result<(), Stop> {
    let filter = Filter::from_args(&args.filter)?;
    let stdout = io::stdout();
    let mut out = ReplayOut::new(BufWriter::with_capacity(256 * 1024, stdout.lock()), filter);
    read_files(&args.files, args.lenient, args.limits.max_line_length, &mut out)?;
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

    #[test]
    fn table_filter_uses_schema_and_name_and_follows_renames() {
        use super::super::log::tests::{del2, renamed};
        let lines = vec![
            CS.to_owned(),
            del2(5, 1, "a.b", "c", "1"),
            commit(5, 1, "2026-11-26T15:01:02.000003Z", 1, "null"),
            del2(6, 2, "a", "b.c", "2"),
            commit(6, 2, "2026-11-26T15:01:02.000003Z", 1, "null"),
            renamed(7, 3, ("a", "b.c"), ("public", "hidden")),
            del2(7, 3, "public", "hidden", "3"),
            commit(7, 3, "2026-11-26T15:01:02.000003Z", 1, "null"),
        ];
        let keys = |filter: &str| -> Vec<String> {
            let args = FilterArgs { table: vec![filter.into()], kind: vec!["delete".into()], ..Default::default() };
            replay_lines(&lines, args, false)
                .unwrap()
                .iter()
                .map(|l| {
                    serde_json::from_str::<serde_json::Value>(l).unwrap()["key"]["id"].as_str().unwrap().to_owned()
                })
                .collect()
        };
        assert_eq!(keys("\"a.b\".c"), ["1"]);
        assert_eq!(keys("a.\"b.c\""), ["2", "3"], "the rename is followed");
        assert_eq!(keys("hidden"), ["3"]);
        // The rename record goes out with its transaction's rows.
        let all =
            replay_lines(&lines, FilterArgs { table: vec!["a.\"b.c\"".into()], ..Default::default() }, false).unwrap();
        assert_eq!(all.iter().filter(|l| l.contains("relation_renamed")).count(), 1);
        assert!(matches!(
            Filter::from_args(&FilterArgs { table: vec!["\"open".into()], ..Default::default() }),
            Err(f) if f.message.contains("--table")
        ));
    }

    #[test]
    fn table_filter_on_old_logs_compares_the_joined_name() {
        // Format 1: only `table` ("public.t" in these helpers).
        let lines = log();
        for (filter, n) in
            [("t", 4), ("public.t", 4), ("\"public\".\"t\"", 4), ("Public.T", 4), ("\"T\"", 0), ("public.u", 0)]
        {
            let args = FilterArgs { table: vec![filter.into()], kind: vec!["delete".into()], ..Default::default() };
            assert_eq!(replay_lines(&lines, args, false).unwrap().len(), n, "{filter}");
        }
    }
}
