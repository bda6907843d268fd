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

use crate::cli::ReplayArgs;
use crate::error::Exit;

use super::filter::Filter;
use super::log::{Kind, Record};
use super::{read_files, Consumer, Stop};
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
    use crate::cli::FilterArgs;

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
