//! The format's structural rules, checked line by line: transactions whole and in LSN order.

use super::parse::Kind;
use super::record::Record;
use crate::protocol::Lsn;

/// A rule of the format that the log breaks, at a line.
#[derive(Debug, Clone, PartialEq)]
pub struct Damage {
    pub line: u64,
    pub message: String,
    /// Rows of an unfinished transaction that this damage discards (they were already handed on as
    /// `Row`: the consumer must drop them).
    pub aborted_rows: u64,
}

/// What to do with a line after checking it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The line is unusable (bad JSON, unknown type, missing fields, a commit without its rows).
    Skip,
    /// A delete/truncate (or relation_renamed) of the open transaction: hold it until its commit.
    Row,
    /// The commit of the open transaction: its held rows are committed.
    Commit,
    /// capture_started / capture_stopped.
    Boundary,
    /// A `statement` record of the open transaction (held like its rows).
    Statement,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub action: Action,
    pub damage: Option<Damage>,
}

#[derive(Debug, Clone)]
struct OpenTxn {
    xid: u64,
    commit_lsn: Lsn,
    first_line: u64,
    deletes: u64,
    truncates: u64,
    /// relation_renamed records (handed on as rows too).
    renames: u64,
}

/// Checks the log's structural rules as lines arrive: a transaction's rows are contiguous, share xid
/// and commit_lsn, and end with a commit that matches them; commit LSNs increase within a capture run
/// (`capture_started` starts a new run, possibly from another server).
#[derive(Debug, Default)]
pub struct Validator {
    open: Option<OpenTxn>,
    last_commit: Option<Lsn>,
}

impl Validator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rows currently held for a transaction whose commit has not been read.
    pub fn open_rows(&self) -> u64 {
        self.open.as_ref().map_or(0, |t| t.deletes + t.truncates + t.renames)
    }

    /// Forget everything (the file was rotated or truncated: a new log starts).
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    fn abort_open(&mut self, line: u64, why: &str) -> Option<Damage> {
        let t = self.open.take()?;
        let rows = t.deletes + t.truncates + t.renames;
        Some(Damage {
            line,
            message: format!(
                "{rows} row record{} of xid {} (from line {}) {why}: the capture was cut mid-transaction",
                if rows == 1 { "" } else { "s" },
                t.xid,
                t.first_line
            ),
            aborted_rows: rows,
        })
    }

    /// Checks a parsed line (or its parse error) against the state so far.
    pub fn check(&mut self, line: u64, parsed: Result<(Kind, &Record), String>) -> Verdict {
        let (kind, rec) = match parsed {
            Ok(p) => p,
            Err(message) => {
                return Verdict { action: Action::Skip, damage: Some(Damage { line, message, aborted_rows: 0 }) }
            }
        };
        match kind {
            Kind::Delete | Kind::Truncate | Kind::RelationRenamed => {
                let (damage, t) = self.join_open(line, rec, "a row");
                match kind {
                    Kind::Delete => t.deletes += 1,
                    Kind::Truncate => t.truncates += 1,
                    _ => t.renames += 1,
                }
                Verdict { action: Action::Row, damage }
            }
            Kind::Statement => {
                let (damage, _) = self.join_open(line, rec, "a statement");
                Verdict { action: Action::Statement, damage }
            }
            Kind::Commit => self.commit(line, rec),
            // Aborted attempts are written whole between transactions, so to the structure they are
            // boundaries (each consumer decides what to make of them).
            Kind::CaptureStarted
            | Kind::CaptureStopped
            | Kind::Gap
            | Kind::AbortedDelete
            | Kind::AbortedTruncate
            | Kind::AbortedStatement
            | Kind::TriggerError
            | Kind::Abort => {
                let damage = self.abort_open(line, &format!("are followed by {}", kind.as_str()));
                if kind == Kind::CaptureStarted {
                    self.last_commit = None;
                }
                Verdict { action: Action::Boundary, damage }
            }
        }
    }

    /// The open transaction that a row or statement record (`what`) belongs to, opened if need be; an
    /// open transaction it does not belong to is cut first (the damage).
    fn join_open(&mut self, line: u64, rec: &Record, what: &str) -> (Option<Damage>, &mut OpenTxn) {
        let xid = rec.xid();
        let commit_lsn = rec.commit_lsn.unwrap_or_default();
        let mut damage = None;
        if let Some(t) = &self.open {
            if t.xid != xid || t.commit_lsn != commit_lsn {
                damage = self.abort_open(line, &format!("are followed by {what} of xid {xid} instead of their commit"));
            }
        }
        let t = self.open.get_or_insert(OpenTxn {
            xid,
            commit_lsn,
            first_line: line,
            deletes: 0,
            truncates: 0,
            renames: 0,
        });
        (damage, t)
    }

    /// A commit: it must close the open transaction, match its rows, and come after the last commit.
    fn commit(&mut self, line: u64, rec: &Record) -> Verdict {
        let xid = rec.xid();
        let commit_lsn = rec.commit_lsn.unwrap_or_default();
        let Some(t) = self.open.take() else {
            return Verdict {
                action: Action::Skip,
                damage: Some(Damage {
                    line,
                    message: format!("commit of xid {xid} without its rows (a commit follows the rows it commits)"),
                    aborted_rows: 0,
                }),
            };
        };
        if t.xid != xid {
            self.open = Some(t);
            let mut d =
                self.abort_open(line, &format!("are followed by the commit of xid {xid}")).expect("open transaction");
            d.message.push_str("; that commit has no rows and is skipped too");
            return Verdict { action: Action::Skip, damage: Some(d) };
        }
        let mut problems = Vec::new();
        if t.commit_lsn != commit_lsn {
            problems.push(format!("its rows say commit_lsn {} but the commit says {commit_lsn}", t.commit_lsn));
        }
        let (d, tr) = (rec.deletes.unwrap_or(0), rec.truncates.unwrap_or(0));
        if (d, tr) != (t.deletes, t.truncates) {
            problems.push(format!(
                "it counts {d} deletes and {tr} truncates but {} and {} precede it (lines lost?)",
                t.deletes, t.truncates
            ));
        }
        if let Some(last) = self.last_commit {
            if commit_lsn <= last {
                problems.push(format!(
                    "commit_lsn {commit_lsn} is not after the previous commit's {last} (logs of \
                     different runs joined without their capture_started?)"
                ));
            }
        }
        self.last_commit = Some(commit_lsn);
        Verdict {
            action: Action::Commit,
            damage: (!problems.is_empty()).then(|| Damage {
                line,
                message: format!("commit of xid {xid}: {}", problems.join("; ")),
                aborted_rows: 0,
            }),
        }
    }

    /// The input ended: an open transaction was cut, and so was an unterminated last line.
    pub fn finish(&mut self, last_line: u64, pending_bytes: usize) -> Vec<Damage> {
        let mut out = Vec::new();
        // The torn line first: it is the cause, the open transaction its consequence.
        if pending_bytes > 0 {
            out.push(Damage {
                line: last_line + 1,
                message: format!(
                    "the last line is incomplete ({pending_bytes} bytes without a newline): the log was cut mid-write"
                ),
                aborted_rows: 0,
            });
        }
        if let Some(d) = self.abort_open(last_line, "are not followed by their commit before the end of the log") {
            out.push(d);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse::parse_line;
    use super::super::tests::{commit, del, del2, renamed, session, CS, T};
    use super::*;

    fn run(lines: &[String]) -> (Vec<Action>, Vec<Damage>) {
        let mut v = Validator::new();
        let mut actions = Vec::new();
        let mut damages = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            let p = parse_line(l.as_bytes());
            let verdict = v.check(i as u64 + 1, p.as_ref().map(|(k, r)| (*k, r)).map_err(Clone::clone));
            actions.push(verdict.action);
            damages.extend(verdict.damage);
        }
        damages.extend(v.finish(lines.len() as u64, 0));
        (actions, damages)
    }

    #[test]
    fn valid_log_has_no_damage() {
        let s = session(7, "alice", "psql", "DELETE FROM t");
        let lines = vec![
            CS.to_owned(),
            del(5, 1, T, "a", &s),
            del(5, 1, T, "b", &s),
            commit(5, 1, T, 2, &s),
            del(6, 2, T, "c", "null"),
            commit(6, 2, T, 1, "null"),
        ];
        let (actions, damages) = run(&lines);
        assert!(damages.is_empty(), "{damages:?}");
        use Action::*;
        assert_eq!(actions, [Boundary, Row, Row, Commit, Row, Commit]);
    }

    #[test]
    fn relation_renamed_belongs_to_its_transaction_and_is_not_counted() {
        let lines = vec![
            renamed(5, 1, ("public", "t"), ("public", "t_x")),
            del2(5, 1, "public", "t_x", "a"),
            commit(5, 1, T, 1, "null"),
            // Cut before its rows' commit: it is dropped with them.
            renamed(6, 2, ("public", "t_x"), ("public", "t")),
        ];
        let (actions, damages) = run(&lines);
        use Action::*;
        assert_eq!(actions, [Row, Row, Commit, Row]);
        assert_eq!(damages.len(), 1, "{damages:?}");
        assert_eq!(damages[0].aborted_rows, 1);
        let (kind, rec) = parse_line(lines[0].as_bytes()).unwrap();
        assert_eq!(kind, Kind::RelationRenamed);
        assert_eq!(rec.named_relations().unwrap(), [("public", "t_x"), ("public", "t")]);
        let bad = lines[0].replace(r#""previous_name":"t","#, "");
        assert!(parse_line(bad.as_bytes()).unwrap_err().contains("previous_name"));
    }

    #[test]
    fn rows_without_commit_are_damage() {
        let s = "null";
        let lines = vec![del(5, 1, T, "a", s), CS.to_owned(), del(6, 2, T, "b", s)];
        let (_, damages) = run(&lines);
        assert_eq!(damages.len(), 2);
        assert_eq!(damages[0].line, 2);
        assert_eq!(damages[0].aborted_rows, 1);
        assert!(damages[0].message.contains("xid 5"), "{}", damages[0].message);
        assert!(damages[1].message.contains("xid 6"));
    }

    #[test]
    fn lsn_order_and_counts() {
        let s = "null";
        let lines = vec![
            del(5, 2, T, "a", s),
            commit(5, 2, T, 1, s),
            del(6, 1, T, "b", s),
            commit(6, 1, T, 2, s),
            CS.to_owned(),
            del(7, 1, T, "c", s),
            commit(7, 1, T, 1, s),
        ];
        let (_, damages) = run(&lines);
        assert_eq!(damages.len(), 1, "{damages:?}");
        assert_eq!(damages[0].line, 4);
        assert!(damages[0].message.contains("not after"));
        assert!(damages[0].message.contains("counts 2 deletes"));
    }

    #[test]
    fn commit_without_rows_and_wrong_xid() {
        let s = "null";
        let lines = vec![commit(5, 1, T, 1, s), del(6, 2, T, "a", s), commit(7, 2, T, 1, s)];
        let (actions, damages) = run(&lines);
        assert_eq!(actions, [Action::Skip, Action::Row, Action::Skip]);
        assert_eq!(damages.len(), 2);
        assert_eq!(damages[1].aborted_rows, 1);
    }
}
