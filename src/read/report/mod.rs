//! `walwitness report FILE…` (also `replay --report`): who deleted, when, what, and what could not be
//! attributed — from committed transactions only.
//!
//! Memory is bounded by sessions, minutes and distinct shapes, never by rows: a transaction's rows are
//! summed into a small pending summary and merged at its commit; per-session statements, statement
//! shapes, key prefixes and tables keep at most [`CAP_TRACKED`] distinct entries (later ones are
//! counted in an `other` bucket) and the output shows the top [`TOP`].
//!
//! ## `--format json`
//! One JSON object (`format: 1`; fields are only ever added):
//!
//! ```text
//! {
//!   "format": 1,
//!   "files": ["a.jsonl"], "lines": 1234, "skipped_lines": 0,
//!   "transactions": 12, "rows": 1000, "truncates": 0,        // committed, after the filters
//!   "first_time": "…Z" | null, "last_time": "…Z" | null,   // commit times
//!   "sessions": [{                                           // by rows, descending
//!     "id": 0, "pid": 2223, "backend_start": "…Z" | null, "user": "…" | null,
//!     "application_name": "…" | null, "client": "10.0.0.5:51234" | "local socket",
//!     "attributed_by": "trigger" | "activity" | null,
//!     "transactions": 6, "rows": 30, "truncates": 0, "first_time": "…Z", "last_time": "…Z",
//!     "distinct_statements": 1,                              // counted up to the cap
//!     "statements": [{"statement": "DELETE …", "rows": 30, "transactions": 6}],   // top 50
//!     "statements_other": {"statements": 0, "rows": 0, "transactions": 0}
//!   }],
//!   "unattributed": {"rows": 0, "truncates": 0, "transactions": 0,  // transactions: no attributed row
//!                    "row_share_pct": 0.0, "transaction_share_pct": 0.0},   // rows + truncates share
//!   "minutes": [{"minute": "2026-11-26T15:21Z", "rows": 30, "truncates": 0, "burst": false,
//!                "sessions": [{"session": 0 | null, "rows": 30}]}],   // non-empty minutes, in order
//!   "median_rows_per_minute": 30, "burst_threshold": 100,   // burst: rows > max(3 × median, 100)
//!   "statements": [{"shape": "DELETE FROM t WHERE k IN (...)", "rows": 30, "transactions": 6,
//!                   "sessions": 1}],                          // top 50 by rows; attributed rows only
//!   "statements_other": {"shapes": 0, "rows": 0, "transactions": 0},
//!   "key_prefixes": [{"prefix": "report", "rows": 30}],     // text before the first ':' or '_'
//!   "key_prefixes_other": {"prefixes": 0, "rows": 0},
//!   "tables": [{"table": "public.cache", "rows": 30, "truncates": 0}],
//!   "gaps": […], "aborted_attempts": 0, "aborted_rows": 0,
//!   // Issue 12 (added):
//!   "headline": {"text": "ww-forgotten-job (ww_bgjob@10.0.0.5) deleted 70 % of the rows, every ~1.0 s",
//!                "application_name": "…" | null, "user": "…" | null, "client_host": "10.0.0.5" | null,
//!                "shape": "DELETE …" | null, "rows": 70, "truncates": 0, "row_share_pct": 70.0,
//!                "rows_inferred": 0, "basis": "evidence" | "inferred" | "mixed" | "none",
//!                "period_s": 1.0 | null},
//!   "inferred_rows": 0,                                      // rows attributed by inference
//!   "principals": [{"application_name", "user", "client_host", "rows", "rows_inferred", "truncates",
//!                   "transactions", "sessions", "row_share_pct", "period_s", "top_shape"}],  // top 50
//!   "by_application" | "by_user" | "by_client_host": [{"name": "…" | null, "rows", "rows_inferred",
//!                   "truncates", "transactions", "sessions", "row_share_pct", "period_s"}],  // top 50
//!   "bin_seconds": 1, "bins": [{"start": "2026-11-26T15:21:05Z", "rows", "truncates", "burst",
//!                               "sessions": [{"session", "rows"}]}],
//!   "median_rows_per_bin": 7, "bin_burst_threshold": 21      // burst: rows > max(3 × median, 10)
//! }
//! ```
//! Also added: `sessions[]` `inferred` (true: from a single-candidate `inferred`, not evidence),
//! `client_host`, `period_s`; `statements[]` `rows_inferred`, `period_s`; `key_prefixes[]` `django`
//! (a Django cache key: `KEY_PREFIX:VERSION:` + the key's own prefix); `unattributed`
//! `ambiguous_rows` (several candidates) and `reasons` (`[{"reason", "rows"}]`).
//! `session` ids in `minutes` and `bins` refer to `sessions[].id`; `null` is the unattributed share.
//!
//! `shape` normalises statements and keys, `aggregate` sums as logs are read (and builds the
//! [`Report`]), `headline` writes its first sentence, `text` renders it for a terminal.

mod aggregate;
mod headline;
mod shape;
mod text;

use std::io::{self, BufWriter, Write};

use crate::cli::{FilterArgs, ReportArgs, ReportFormat, ReportOutputArgs};
use crate::error::{Exit, Failure};

use super::filter::Filter;
use super::summary::*;
use super::{read_files, Stop};

pub use aggregate::Aggregator;
pub use shape::{key_prefix, normalize_statement};
pub use text::render_text;

/// Distinct entries tracked per bucket (later ones go to `other`).
pub const CAP_TRACKED: usize = 1000;
/// Entries shown per list.
pub const TOP: usize = 50;
/// Raw statements kept per session.
pub const CAP_SESSION_STATEMENTS: usize = 50;

pub fn build(files: &[String], filter: &FilterArgs, lenient: bool, max_line: usize) -> Result<Report, Stop> {
    let filter = Filter::from_args(filter)?;
    let mut agg = Aggregator::new(filter);
    let stats = read_files(files, lenient, max_line, &mut agg)?;
    Ok(agg.report(files, stats.lines, stats.skipped_lines))
}

fn report(
    files: &[String],
    filter: &FilterArgs,
    lenient: bool,
    max_line: usize,
    out: &ReportOutputArgs,
) -> Result<(), Stop> {
    let r = build(files, filter, lenient, max_line)?;
    if let Some(path) = &out.html {
        let page = super::html::render(&r);
        write_private(path, page.as_bytes()).map_err(|e| {
            Failure::new(
                Exit::Output,
                format!("cannot write {}: {e} (check the directory exists and is writable)", path.display()),
            )
        })?;
    }
    let stdout = io::stdout();
    let mut w = BufWriter::new(stdout.lock());
    match out.format {
        ReportFormat::Text => render_text(&r, &mut w).map_err(super::output_error)?,
        ReportFormat::Json => {
            serde_json::to_writer_pretty(&mut w, &r).map_err(|e| super::output_error(e.into()))?;
            w.write_all(b"\n").map_err(super::output_error)?;
        }
    }
    w.flush().map_err(super::output_error)
}

/// Writes a report file: created 0600 (it names who deleted what), never through a symbolic link,
/// and an existing file is replaced only if it is ours and has one name (`sink::outfile`).
pub fn write_private(path: &std::path::Path, data: &[u8]) -> io::Result<()> {
    let o = crate::sink::outfile::open_private(path, crate::sink::outfile::Access::Write)?;
    let mut f = o.file;
    if o.regular {
        f.set_len(0)?;
    }
    f.write_all(data)?;
    f.flush()
}

pub fn run_with(
    cmd: &str,
    files: &[String],
    filter: &FilterArgs,
    lenient: bool,
    max_line: usize,
    out: &ReportOutputArgs,
) -> Exit {
    super::finish(cmd, report(files, filter, lenient, max_line, out))
}

pub fn run(args: ReportArgs) -> Exit {
    run_with("report", &args.files, &args.filter, args.lenient, args.limits.max_line_length, &args.output)
}

#[cfg(test)]
mod tests {
    use super::super::log::tests::{commit, del, session, CS};
    use super::super::Feeder;
    use super::*;

    fn report_of(lines: &[String]) -> Report {
        let mut agg = Aggregator::new(Filter::default());
        let mut f = Feeder::new("t", true);
        for (i, l) in lines.iter().enumerate() {
            f.line(i as u64 + 1, l.as_bytes(), &mut agg).unwrap();
        }
        f.end(lines.len() as u64, 0, &mut agg).unwrap();
        agg.report(&["t".into()], f.stats.lines, f.stats.skipped_lines)
    }

    #[test]
    fn aggregates() {
        let a = session(7, "alice", "psql", "DELETE FROM t WHERE id IN ('report:1', 'report:2')");
        let b = session(8, "bob", "cron", "DELETE FROM t WHERE id = 'user_9'");
        let t1 = "2026-11-26T15:01:00.000000Z";
        let t2 = "2026-11-26T15:03:30.000000Z";
        let mut lines = vec![
            CS.to_owned(),
            del(5, 1, t1, "report:1", &a),
            del(5, 1, t1, "report:2", &a),
            commit(5, 1, t1, 2, &a),
            del(6, 2, t2, "user_9", &b),
            commit(6, 2, t2, 1, &b),
            del(7, 3, t2, "x", "null"),
            commit(7, 3, t2, 1, "null"),
        ];
        // An uncommitted transaction at the end does not count.
        lines.push(del(8, 4, t2, "report:3", &a));
        let r = report_of(&lines);
        assert_eq!(r.skipped_lines, 1);
        assert_eq!((r.rows, r.transactions), (4, 3));
        assert_eq!(r.sessions.len(), 2);
        assert_eq!((r.sessions[0].pid, r.sessions[0].rows, r.sessions[0].transactions), (7, 2, 1));
        assert_eq!(r.sessions[0].client, "10.0.0.5:57");
        assert_eq!(r.sessions[1].user.as_deref(), Some("bob"));
        assert_eq!((r.unattributed.rows, r.unattributed.transactions), (1, 1));
        assert_eq!(r.unattributed.row_share_pct, 25.0);
        assert_eq!(r.unattributed.transaction_share_pct, 33.3);
        assert_eq!(r.minutes.len(), 2);
        assert_eq!(r.minutes[0].minute, "2026-11-26T15:01Z");
        assert_eq!(r.minutes[1].rows, 2);
        assert_eq!(
            r.minutes[1].sessions,
            vec![MinuteSession { session: Some(1), rows: 1 }, MinuteSession { session: None, rows: 1 }]
        );
        assert_eq!(r.burst_threshold, 100);
        assert_eq!(r.statements[0].shape, "DELETE FROM t WHERE id IN (...)");
        assert_eq!(r.key_prefixes[0], PrefixOut { prefix: "report".into(), rows: 2, django: false });
        assert_eq!(r.tables[0], TableOut { table: "public.t".into(), rows: 4, truncates: 0 });
        let mut text = Vec::new();
        render_text(&r, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("Not attributed: 1 rows (25.0%)"), "{text}");
    }

    #[test]
    fn bursts() {
        let s = session(7, "alice", "psql", "DELETE FROM t");
        let mut lines = vec![];
        for (xid, minute) in (1..).zip(0..5) {
            let n = if minute == 3 { 150 } else { 2 };
            let t = format!("2026-11-26T15:0{minute}:00.000000Z");
            for k in 0..n {
                lines.push(del(xid, xid, &t, &format!("k{k}"), &s));
            }
            lines.push(commit(xid, xid, &t, n, &s));
        }
        let r = report_of(&lines);
        assert_eq!(r.median_rows_per_minute, 2);
        let bursts: Vec<_> = r.minutes.iter().filter(|m| m.burst).map(|m| m.minute.as_str()).collect();
        assert_eq!(bursts, ["2026-11-26T15:03Z"]);
    }

    #[test]
    fn caps_bound_the_aggregates() {
        let mut lines = vec![];
        for i in 0..(CAP_SESSION_STATEMENTS as u64 + 10) {
            let s = session(7, "alice", "psql", &format!("DELETE FROM t WHERE id = {i}"));
            lines.push(del(i + 1, i + 1, "2026-11-26T15:01:00.000000Z", &format!("p{i}:x"), &s));
            lines.push(commit(i + 1, i + 1, "2026-11-26T15:01:00.000000Z", 1, &s));
        }
        let r = report_of(&lines);
        let s = &r.sessions[0];
        assert_eq!(s.statements.len(), CAP_SESSION_STATEMENTS);
        assert_eq!(s.statements_other.statements, 10);
        assert_eq!(s.distinct_statements, CAP_SESSION_STATEMENTS as u64 + 10);
        assert_eq!(r.statements.len(), 1, "one shape");
        assert_eq!(r.key_prefixes.len(), TOP);
        assert_eq!(r.key_prefixes_other.prefixes, 10);
    }

    /// Issue 12: the answer first. A job that connects anew each second (a new pid every time) is one
    /// principal, named with its share and period; time bins are seconds for a one-minute capture.
    #[test]
    fn headline_names_the_main_deleter_and_its_period() {
        let mut lines = vec![CS.to_owned()];
        let mut lsn = 0;
        for i in 0..10u64 {
            let s = session(
                100 + i as i64,
                "ww_bgjob",
                "ww-forgotten-job",
                &format!("DELETE FROM cache WHERE cache_key IN ('k{i}a', 'k{i}b')"),
            );
            let t = format!("2026-11-26T15:01:{:02}.{:06}Z", 10 + i, (i % 3) * 2000);
            lsn += 1;
            for k in 0..7 {
                lines.push(del(i + 1, lsn, &t, &format!(":1:user_session_{i}x{k}"), &s));
            }
            lines.push(commit(i + 1, lsn, &t, 7, &s));
        }
        let a = session(7, "alice", "psql", "DELETE FROM cache WHERE cache_key LIKE 'report%'");
        for (n, t) in [(20, "2026-11-26T15:01:12.500000Z"), (10, "2026-11-26T15:01:40.000000Z")] {
            lsn += 1;
            for k in 0..n {
                lines.push(del(50 + lsn, lsn, t, &format!("report:{k}"), &a));
            }
            lines.push(commit(50 + lsn, lsn, t, n, &a));
        }
        let r = report_of(&lines);
        let h = r.headline.clone().unwrap();
        assert_eq!(h.text, "ww-forgotten-job (ww_bgjob@10.0.0.5) deleted 70 % of the rows, every ~1.0 s", "{h:?}");
        assert_eq!((h.basis.as_str(), h.rows, h.row_share_pct), ("evidence", 70, 70.0));
        assert_eq!(r.principals.len(), 2);
        assert_eq!((r.principals[0].sessions, r.principals[0].transactions), (10, 10));
        assert_eq!(r.principals[1].period_s, None, "two transactions: no period");
        assert_eq!(r.by_application[0].name.as_deref(), Some("ww-forgotten-job"));
        assert_eq!(r.by_user[1].name.as_deref(), Some("alice"));
        assert_eq!((r.by_client_host.len(), r.by_client_host[0].rows), (1, 100));
        assert_eq!(r.statements[0].shape, "DELETE FROM cache WHERE cache_key IN (...)");
        assert_eq!(r.statements[0].period_s, Some(1.0));
        assert_eq!(r.key_prefixes[0], PrefixOut { prefix: ":1:user_session".into(), rows: 70, django: true });
        assert_eq!(r.bin_seconds, 1);
        assert_eq!(r.bins.first().unwrap().start, "2026-11-26T15:01:10Z");
        assert_eq!(r.bins.iter().map(|b| b.rows).sum::<u64>(), 100);
        let mut text = Vec::new();
        render_text(&r, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        let first: Vec<&str> = text.lines().take(3).collect();
        assert_eq!(first[2], h.text, "{text}");
        assert!(text.contains("WHEN — rows per second"), "{text}");
        assert!(text.contains("  2026-11-26 15:01:10          7  "), "{text}");
    }

    /// Without an application_name the headline names the statement shape; truncates only: counted.
    #[test]
    fn headline_falls_back_to_the_statement_shape() {
        let s = session(9, "bob", "", "DELETE FROM t WHERE id = 42");
        let t = "2026-11-26T15:01:00.000000Z";
        let r = report_of(&[CS.to_owned(), del(1, 1, t, "a", &s), commit(1, 1, t, 1, &s)]);
        assert_eq!(r.headline.unwrap().text, "\"DELETE FROM t WHERE id = ?\" (bob@10.0.0.5) deleted 100 % of the rows");
        let tr = format!(
            r#"{{"type":"truncate","tables":["public.t"],"xid":2,"lsn":"0/18","commit_lsn":"0/20","commit_time":"{t}","origin":null,"cascade":false,"restart_identity":false,"session":{}}}"#,
            session(10, "carol", "psql", "TRUNCATE t")
        );
        let c = commit(2, 2, t, 0, &session(10, "carol", "psql", "TRUNCATE t"))
            .replace("\"truncates\":0", "\"truncates\":1");
        let r = report_of(&[CS.to_owned(), tr, c]);
        assert_eq!(r.headline.unwrap().text, "psql (carol@10.0.0.5) ran 1 of the 1 TRUNCATEs");
        let r = report_of(&[CS.to_owned()]);
        assert_eq!(r.headline.unwrap().text, "No committed deletes in this log.");
    }

    /// The shapes of `inferred` (see the README): one candidate, several, or none.
    fn one(session: &str, statement: &str) -> String {
        format!(
            r#"{{"candidates":1,"session":{session},"statement":{},"statement_start":"2026-11-26T15:00:59.000000Z","statement_end":null}}"#,
            serde_json::to_string(statement).unwrap()
        )
    }

    fn several(a: &str, b: &str) -> String {
        format!(
            r#"{{"candidates":2,"possible":[{{"session":{a},"statement":"DELETE 1","statement_start":"2026-11-26T15:00:59.000000Z","statement_end":null}},{{"session":{b},"statement":"DELETE 2","statement_start":"2026-11-26T15:00:59.000000Z","statement_end":null}}]}}"#
        )
    }

    /// A line without evidence: `session` null, and the capture's reason and inference.
    fn with_inferred(line: String, reason: &str, inferred: Option<&str>) -> String {
        let mut l = line.strip_suffix('}').unwrap().to_owned();
        l.push_str(&format!(r#","unattributed_reason":"{reason}""#));
        if let Some(i) = inferred {
            l.push_str(&format!(r#","inferred":{i}"#));
        }
        l.push('}');
        l
    }

    /// Evidence first; a single-candidate inference is used but kept apart; several candidates are
    /// never an answer.
    #[test]
    fn inferred_sessions_are_used_but_kept_apart() {
        let job = session(41, "ww_bgjob", "ww-forgotten-job", "DELETE FROM cache WHERE expires < now()");
        let other = session(42, "bob", "cron", "DELETE 2");
        let t = |s: u32| format!("2026-11-26T15:02:{s:02}.000000Z");
        let inf = one(&job, "DELETE FROM cache WHERE expires < now() - interval '1 day'");
        let mut lines = vec![CS.to_owned()];
        // Rows with their own single-candidate inference.
        for k in 0..6 {
            lines.push(with_inferred(del(1, 1, &t(0), &format!("a{k}"), "null"), "no sample", Some(&inf)));
        }
        lines.push(with_inferred(commit(1, 1, &t(0), 6, "null"), "no sample", Some(&inf)));
        // Rows with none; the commit has the inference.
        for k in 0..2 {
            lines.push(with_inferred(del(2, 2, &t(1), &format!("b{k}"), "null"), "no sample", None));
        }
        lines.push(with_inferred(commit(2, 2, &t(1), 2, "null"), "no sample", Some(&inf)));
        // Several candidates: not attributed, counted as ambiguous.
        let amb = several(&job, &other);
        for k in 0..3 {
            lines.push(with_inferred(del(3, 3, &t(2), &format!("c{k}"), "null"), "two sessions open", Some(&amb)));
        }
        lines.push(with_inferred(commit(3, 3, &t(2), 3, "null"), "two sessions open", Some(&amb)));
        // No inference at all.
        lines.push(with_inferred(del(4, 4, &t(3), "d", "null"), "transaction too short to sample", None));
        lines.push(with_inferred(commit(4, 4, &t(3), 1, "null"), "transaction too short to sample", None));
        // Evidence for the same backend elsewhere: its own session, not merged with the inferred one.
        lines.push(del(5, 5, &t(4), "e", &job));
        lines.push(commit(5, 5, &t(4), 1, &job));
        let r = report_of(&lines);
        assert_eq!((r.rows, r.inferred_rows), (13, 8));
        assert_eq!(r.sessions.len(), 2);
        let s = &r.sessions[0];
        assert!(s.inferred && s.pid == 41 && s.rows == 8, "{s:?}");
        assert_eq!(s.statements[0].statement, "DELETE FROM cache WHERE expires < now() - interval '1 day'");
        assert!(!r.sessions[1].inferred && r.sessions[1].rows == 1);
        assert_eq!((r.unattributed.rows, r.unattributed.ambiguous_rows), (4, 3));
        assert_eq!(
            r.unattributed.reasons,
            vec![
                ReasonOut { reason: "two sessions open".into(), rows: 3 },
                ReasonOut { reason: "transaction too short to sample".into(), rows: 1 }
            ]
        );
        // One principal across the evidence and the inferred session.
        assert_eq!((r.principals.len(), r.principals[0].rows, r.principals[0].rows_inferred), (1, 9, 8));
        let h = r.headline.clone().unwrap();
        assert_eq!(h.basis, "mixed");
        assert_eq!(
            h.text,
            "ww-forgotten-job (ww_bgjob@10.0.0.5) deleted 69 % of the rows (89 % of them inferred); 31 % of the rows are not attributed"
        );
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["sessions"][0]["inferred"], true);
        assert_eq!(json["sessions"][1]["inferred"], false);
        let mut text = Vec::new();
        render_text(&r, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("pid 41 started 2026-11-26T14:00:00.000000Z  user ww_bgjob  app ww-forgotten-job  client 10.0.0.5:541  (trigger)  INFERRED, not evidence"), "{text}");
        assert!(text.contains("of which 3 rows had several candidate sessions"), "{text}");

        // Only inferred: the headline says so; only ambiguous: nobody is named.
        let r = report_of(&lines[..8]);
        assert_eq!(
            r.headline.unwrap().text,
            "ww-forgotten-job (ww_bgjob@10.0.0.5) deleted 100 % of the rows (inferred: no evidence session)"
        );
        let mut amb_only = vec![CS.to_owned()];
        amb_only.extend_from_slice(&lines[11..15]);
        let r = report_of(&amb_only);
        assert!(r.sessions.is_empty());
        assert_eq!(
            r.headline.unwrap().text,
            "None of the 3 deleted rows can be attributed to a session (two sessions open); 3 rows had several candidate sessions, and none is named."
        );
    }

    /// Issue 12: `--app`/`--user` filters in `report` match the session a row is attributed to, evidence
    /// or inferred, with globs.
    #[test]
    fn report_filters_match_the_attributed_session_with_globs() {
        let job = session(41, "ww_bgjob", "ww-forgotten-job", "DELETE 1");
        let t = "2026-11-26T15:02:00.000000Z";
        let lines = [
            CS.to_owned(),
            with_inferred(del(1, 1, t, "a", "null"), "no sample", Some(&one(&job, "DELETE 1"))),
            with_inferred(commit(1, 1, t, 1, "null"), "no sample", None),
            del(2, 2, t, "b", &session(8, "alice", "psql", "DELETE 3")),
            commit(2, 2, t, 1, &session(8, "alice", "psql", "DELETE 3")),
        ];
        let args = crate::cli::FilterArgs { app: vec!["ww-*".into()], ..Default::default() };
        let mut agg = Aggregator::new(Filter::from_args(&args).unwrap());
        let mut f = Feeder::new("t", true);
        for (i, l) in lines.iter().enumerate() {
            f.line(i as u64 + 1, l.as_bytes(), &mut agg).unwrap();
        }
        f.end(lines.len() as u64, 0, &mut agg).unwrap();
        let r = agg.report(&["t".into()], 5, 0);
        assert_eq!((r.rows, r.sessions.len(), r.sessions[0].pid), (1, 1, 41));
    }

    /// Issue 13: `report --html` followed a planted symbolic link and overwrote its target.
    #[test]
    fn html_report_is_private_and_never_follows_a_symlink() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let target = d.path().join("root-only");
        std::fs::write(&target, "precious\n").unwrap();
        let link = d.path().join("incident.html");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = write_private(&link, b"<html>").unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "precious\n");
        let p = d.path().join("new.html");
        write_private(&p, b"<html>long</html>").unwrap();
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        write_private(&p, b"<p>").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "<p>");
    }

    /// Issue 13: the text report escapes control characters in every field taken from the log.
    #[test]
    fn text_report_escapes_control_characters() {
        let s = session(7, "eve\\u001b[8m", "\\u001b]0;x\\u0007", "DELETE FROM t -- \x1b[2J\x1b[H\r\nfake line");
        let t = "2026-11-26T15:01:02.000003Z";
        let lines = vec![CS.to_owned(), del(5, 1, t, "a\\nWHO — fake", &s), commit(5, 1, t, 1, &s)];
        let r = report_of(&lines);
        let mut text = Vec::new();
        render_text(&r, &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(!text.chars().any(|c| c != '\n' && c.is_control()), "{text:?}");
        assert!(text.contains("user eve\\x1b[8m  app \\x1b]0;x\\x07"), "{text}");
        assert!(!text.lines().any(|l| l.starts_with("WHO — fake") || l.starts_with("fake line")), "{text}");
        // JSON keeps the exact strings.
        let json = serde_json::to_string(&r).unwrap();
        assert!(json.contains(r"eve\u001b[8m"), "{json}");
    }

    #[test]
    fn format_2_rows_take_their_query_from_the_statement_record() {
        use super::super::log::tests::{commit, del, session, CS};
        let t = "2026-11-26T15:01:02.000003Z";
        let full = session(7, "alice", "psql", "DELETE FROM t WHERE id = 1");
        let small = super::super::log::tests::SMALL_SESSION;
        let stmt = super::super::log::tests::statement_record(t, &full);
        let r = report_of(&[
            CS.to_owned(),
            stmt,
            del(5, 1, t, "a", small),
            del(5, 1, t, "b", small),
            commit(5, 1, t, 2, small),
        ]);
        assert_eq!(r.sessions.len(), 1);
        assert_eq!(r.sessions[0].rows, 2);
        assert_eq!(r.sessions[0].statements[0].statement, "DELETE FROM t WHERE id = 1");
    }
}
