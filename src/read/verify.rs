//! `walwitness replay --verify FILE…`: checks the log's tamper-evident chain (`crate::sink::chain`).
//!
//! Every line is read as stored (no CR stripped), parsed (an unreadable line is *damage*, exit 14) and
//! hashed into its run's chain; every chain value must be the SHA-256 of the bytes before it, and every
//! run must continue the head before it (`chain_prev`). Anything else is *tamper evidence* (exit 17),
//! named by the first line where it shows. Lines no chain value covers are not proven: a log (or
//! part) written before the chain existed, or a run that restarted the chain (exit 18); rows at the
//! very end that their commit does not close yet (a capture writing, a crash) carry no claim and are
//! only mentioned. With `--expect-head`, the log must contain that chain value: the log up to there
//! is then the very one whose head was written down.
//!
//! Files given together are one log in that order (a log split into pieces); each is read once,
//! streaming: memory does not grow with the log.
use std::io::Write;
use std::rc::Rc;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::error::Exit;
use crate::sink::chain::{parse_hex, split_chained, to_hex, value_after, Head};

use super::log::{self, Field};

/// Where a line is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loc {
    pub file: Rc<str>,
    pub line: u64,
}

impl std::fmt::Display for Loc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.file, self.line)
    }
}

/// Why verification stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Bad {
    /// The log cannot be read there (not a record, broken compression): exit 14.
    Damage(String),
    /// The bytes are not those the chain proves: exit 17.
    Tamper(String),
}

#[derive(Deserialize)]
struct Peek {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    chain_prev: Field<String>,
    #[serde(default)]
    format_version: Option<u64>,
}

enum Seg {
    /// No `capture_started` read yet in this file.
    None,
    /// A run written without the chain (format 1).
    Unchained,
    /// A chained run: its running hash, and the line after its last proven one.
    Chained { hash: Sha256, unproven_from: u64 },
}

/// A stretch of lines, for the summary.
#[derive(Debug, Clone, Default)]
struct Stretch {
    first: Option<Loc>,
    lines: u64,
}

impl Stretch {
    fn add(&mut self, at: &Loc) {
        self.first.get_or_insert_with(|| at.clone());
        self.lines += 1;
    }
}

/// The verification state over the files of one log.
pub struct Verifier {
    expect: Option<String>,
    expect_at: Option<Loc>,
    seg: Seg,
    head: Option<(Head, Loc)>,
    /// Rows after the last chain value of the current run.
    open_rows: Stretch,
    /// Lines no chain covers: outside any run, or in runs without the chain.
    unchained: Stretch,
    /// Runs that do not continue the head before them (`chain_prev` null after chained lines).
    restarts: Vec<Loc>,
    /// Rows no chain value covers that ended a file or run (notes; they carry no claim).
    loose_rows: Vec<(Loc, u64)>,
    pub lines: u64,
    pub runs: u64,
    pub chained_runs: u64,
    pub values: u64,
    pub notes: Vec<String>,
}

/// What a finished verification says.
#[derive(Debug)]
pub struct Verdict {
    pub exit: Exit,
    /// For standard output: what was found.
    pub summary: Vec<String>,
    /// For standard error: why it is not exit 0.
    pub problem: Option<String>,
}

fn is_row_kind(k: &str) -> bool {
    matches!(k, "delete" | "truncate" | "statement" | "aborted_delete" | "aborted_truncate" | "aborted_statement")
}

impl Verifier {
    /// `expect`: a chain head (at least 16 hex digits; a prefix of it is enough) the log must contain.
    pub fn new(expect: Option<&str>) -> Result<Verifier, String> {
        let expect = match expect {
            None => None,
            Some(e) => {
                let e = e.trim().to_ascii_lowercase();
                if e.len() < 16 || e.len() > 64 || !e.bytes().all(|c| c.is_ascii_hexdigit()) {
                    return Err(format!(
                        "--expect-head {e:?}: expected the chain head as printed (64 hex digits; at least the first 16)"
                    ));
                }
                Some(e)
            }
        };
        Ok(Verifier {
            expect,
            expect_at: None,
            seg: Seg::None,
            head: None,
            open_rows: Stretch::default(),
            unchained: Stretch::default(),
            restarts: Vec::new(),
            loose_rows: Vec::new(),
            lines: 0,
            runs: 0,
            chained_runs: 0,
            values: 0,
            notes: Vec::new(),
        })
    }

    /// A new file of the log begins: a run never spans files.
    pub fn start_file(&mut self) {
        self.close_open_rows();
        self.seg = Seg::None;
    }

    /// Rows no chain value covers, at the end of a file or before a run that does not continue the
    /// chain: noted, not proven.
    fn close_open_rows(&mut self) {
        if let Some(first) = self.open_rows.first.take() {
            self.loose_rows.push((first, self.open_rows.lines));
        }
        self.open_rows.lines = 0;
    }

    /// One complete line, with its newline.
    pub fn line(&mut self, at: Loc, line: &[u8]) -> Result<(), Bad> {
        self.lines += 1;
        let body = line.strip_suffix(b"\n").unwrap_or(line);
        let peek: Peek = serde_json::from_slice(body).map_err(|e| {
            Bad::Damage(if body.is_empty() {
                format!("{at}: empty line")
            } else {
                format!("{at}: not a valid record: {e}")
            })
        })?;
        let chained = split_chained(body);
        if peek.kind == "capture_started" {
            self.runs += 1;
            self.start_run(&at, &peek, chained.is_some())?;
        }
        match &mut self.seg {
            Seg::None | Seg::Unchained => {
                if chained.is_some() {
                    return Err(Bad::Tamper(if matches!(self.seg, Seg::None) {
                        format!(
                            "{at}: a chain value before any capture_started: the beginning of the log (its capture_started and what followed it) was removed"
                        )
                    } else {
                        format!(
                            "{at}: a chain value inside a run written without the chain (format_version 1): the line does not belong to this run"
                        )
                    }));
                }
                self.unchained.add(&at);
            }
            Seg::Chained { hash, unproven_from } => match chained {
                Some((hashed, value)) => {
                    let (mut next, want) = value_after(hash, hashed);
                    if want != value {
                        let from = *unproven_from;
                        return Err(Bad::Tamper(if from == at.line {
                            format!("{at}: the chain value does not match: this {} record was changed", peek.kind)
                        } else {
                            format!(
                                "{at}: the chain value does not match: one of lines {from} to {} of {} was changed, or lines were inserted, removed or reordered there (everything before line {from} is proven)",
                                at.line, at.file
                            )
                        }));
                    }
                    next.update(&line[hashed.len()..]);
                    *hash = next;
                    *unproven_from = at.line + 1;
                    self.values += 1;
                    self.open_rows = Stretch::default();
                    if self.expect.as_deref().is_some_and(|e| to_hex(&value).starts_with(e)) && self.expect_at.is_none()
                    {
                        self.expect_at = Some(at.clone());
                    }
                    self.head = Some((value, at));
                }
                None if is_row_kind(&peek.kind) => {
                    hash.update(line);
                    self.open_rows.add(&at);
                }
                None => {
                    return Err(Bad::Tamper(format!(
                        "{at}: a {} record without its chain value, in a run that has them: it was edited or inserted",
                        peek.kind
                    )))
                }
            },
        }
        Ok(())
    }

    fn start_run(&mut self, at: &Loc, peek: &Peek, chained: bool) -> Result<(), Bad> {
        if !chained {
            if peek.format_version.unwrap_or(1) >= 2 {
                return Err(Bad::Tamper(format!(
                    "{at}: a capture_started of format_version {} without its chain value: the record was edited",
                    peek.format_version.unwrap_or(0)
                )));
            }
            self.close_open_rows();
            self.seg = Seg::Unchained;
            return Ok(());
        }
        let prev = match &peek.chain_prev {
            Field::Missing => {
                return Err(Bad::Tamper(format!(
                    "{at}: a capture_started with a chain value but no chain_prev: the record was edited"
                )))
            }
            Field::Null => None,
            Field::Value(s) => Some(parse_hex(s.as_bytes()).ok_or_else(|| {
                Bad::Tamper(format!("{at}: chain_prev {s:?} is not a chain value: the record was edited"))
            })?),
        };
        match (prev, &self.head) {
            (Some(p), Some((h, _))) if p == *h => {
                if let Some(first) = &self.open_rows.first {
                    return Err(Bad::Tamper(format!(
                        "{first}: {} row line{} that no chain value covers, followed at {at} by a run that continues the chain as if they were not there: they were inserted (a capture cuts such lines before it starts)",
                        self.open_rows.lines,
                        if self.open_rows.lines == 1 { "" } else { "s" }
                    )));
                }
            }
            (Some(p), Some((h, hl))) => {
                return Err(Bad::Tamper(format!(
                    "{at}: this run continues chain head {}, but the last chain value before it ({hl}) is {}: lines between were removed or changed (or the files are not given in order)",
                    to_hex(&p),
                    to_hex(h)
                )))
            }
            (Some(p), None) => {
                return Err(Bad::Tamper(format!(
                    "{at}: this run continues chain head {}, which is nowhere before it: the earlier part of the log was removed (a log split into files is verified with all of them, in order)",
                    to_hex(&p)
                )))
            }
            (None, Some(_)) => {
                self.close_open_rows();
                self.restarts.push(at.clone());
            }
            (None, None) => self.close_open_rows(),
        }
        self.chained_runs += 1;
        self.seg = Seg::Chained { hash: Sha256::new(), unproven_from: at.line };
        Ok(())
    }

    /// The input ended. `torn`: bytes of an unterminated last line, with where it is.
    pub fn finish(mut self, torn: Option<(Loc, usize)>) -> Verdict {
        self.close_open_rows();
        let mut summary = Vec::new();
        let mut notes = std::mem::take(&mut self.notes);
        for (first, n) in &self.loose_rows {
            notes.push(format!(
                "{first}: {n} row line{} not closed by a commit (a capture still writing, or cut by a crash): no chain value covers them, and readers ignore them",
                if *n == 1 { "" } else { "s" }
            ));
        }
        if let Some((at, n)) = &torn {
            notes.push(format!(
                "{at}: an incomplete last line ({n} bytes without a newline: a capture writing, or cut mid-write): not covered"
            ));
        }
        if let Some(e) = &self.expect {
            if self.expect_at.is_none() {
                return Verdict {
                    exit: Exit::Tampered,
                    summary: notes,
                    problem: Some(format!(
                        "the expected chain head {e} is not in the log: it was cut before that point, or rewritten"
                    )),
                };
            }
        }
        let plural = |n: u64, w: &str| format!("{n} {w}{}", if n == 1 { "" } else { "s" });
        if self.chained_runs == 0 {
            return Verdict {
                exit: Exit::Unverifiable,
                summary: notes,
                problem: Some(format!(
                    "no chain to verify: {} in {} written without it (format_version 1, before walwitness had the chain; or not a walwitness log)",
                    plural(self.lines, "line"),
                    plural(self.runs, "capture run"),
                )),
            };
        }
        let head = self.head.as_ref().expect("a chained run has a chain value");
        summary.push(format!(
            "{} in {} ({} with the chain), {}: every chain value matches",
            plural(self.lines, "line"),
            plural(self.runs, "capture run"),
            self.chained_runs,
            plural(self.values, "chain value"),
        ));
        if let Some(at) = &self.expect_at {
            summary.push(format!(
                "the expected head is at {at}: the log up to there is the one whose head was recorded{}",
                if *at == head.1 { String::new() } else { "; lines after it were written later".to_owned() }
            ));
        }
        summary.push(format!("chain head: {} ({})", to_hex(&head.0), head.1));
        summary.extend(notes);
        let mut gaps = Vec::new();
        if let Some(first) = &self.unchained.first {
            gaps.push(format!(
                "{} from {first} on carry no chain (written before format_version 2, or outside any capture run)",
                plural(self.unchained.lines, "line"),
            ));
        }
        if let Some(first) = self.restarts.first() {
            gaps.push(format!(
                "{} at {first}{} start{} the chain afresh instead of continuing the head before {}: whether lines were removed at the end of the run before cannot be told (a log of `--out -` appended to, or pieces joined)",
                plural(self.restarts.len() as u64, "run"),
                if self.restarts.len() > 1 { " and later" } else { "" },
                if self.restarts.len() == 1 { "s" } else { "" },
                if self.restarts.len() == 1 { "it" } else { "them" },
            ));
        }
        if gaps.is_empty() {
            summary.insert(0, "intact".to_owned());
            Verdict { exit: Exit::Ok, summary, problem: None }
        } else {
            summary.insert(0, "no tamper evidence, but not all of the log is proven".to_owned());
            Verdict { exit: Exit::Unverifiable, summary, problem: Some(gaps.join("; ")) }
        }
    }
}

/// Verifies the files (one log, in order) and prints the verdict; returns the exit status.
pub fn run(files: &[String], expect: Option<&str>, max_line: usize) -> Exit {
    let mut v = match Verifier::new(expect) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("walwitness replay: error: {e}");
            return Exit::Usage;
        }
    };
    let name = if files.len() == 1 { files[0].as_str() } else { "the log" };
    match verify_files(files, &mut v, max_line) {
        Err(Bad::Damage(m)) => {
            eprintln!("walwitness replay: damaged log: {m}");
            Exit::DamagedLog
        }
        Err(Bad::Tamper(m)) => {
            eprintln!("walwitness replay: TAMPER EVIDENCE: {m}");
            Exit::Tampered
        }
        Ok(torn) => {
            let verdict = v.finish(torn);
            let mut out = std::io::stdout().lock();
            for (i, s) in verdict.summary.iter().enumerate() {
                let _ = if i == 0 { writeln!(out, "{name}: {s}") } else { writeln!(out, "  {s}") };
            }
            let _ = out.flush();
            if let Some(p) = verdict.problem {
                let what = if verdict.exit == Exit::Tampered { "TAMPER EVIDENCE" } else { "not verifiable" };
                eprintln!("walwitness replay: {what}: {name}: {p}");
            }
            verdict.exit
        }
    }
}

fn verify_files(files: &[String], v: &mut Verifier, max_line: usize) -> Result<Option<(Loc, usize)>, Bad> {
    let mut torn = None;
    for name in files {
        let display = if name == "-" { "<stdin>" } else { name.as_str() };
        let file: Rc<str> = Rc::from(display);
        let (input, _) = log::open_input(name).map_err(|e| {
            Bad::Damage(format!("cannot open {display}: {e} (give a log written by `walwitness capture --out`)"))
        })?;
        v.start_file();
        let mut line_no = 0u64;
        let (chunks, recycle) = log::read_chunks(input, max_line);
        for chunk in chunks {
            match chunk {
                log::Chunk::Lines(block) => {
                    let mut start = 0;
                    for nl in memchr::memchr_iter(b'\n', &block) {
                        line_no += 1;
                        v.line(Loc { file: Rc::clone(&file), line: line_no }, &block[start..=nl])?;
                        start = nl + 1;
                    }
                    let _ = recycle.send(block);
                }
                log::Chunk::Incomplete(0) => {}
                log::Chunk::Incomplete(n) => torn = Some((Loc { file: Rc::clone(&file), line: line_no + 1 }, n)),
                log::Chunk::TooLong(n) => {
                    return Err(Bad::Damage(format!(
                        "{display}:{}: a line longer than --max-line-length ({n} bytes without a newline): not a line walwitness writes",
                        line_no + 1
                    )));
                }
                log::Chunk::Err(e) => {
                    return Err(Bad::Damage(format!("{display}:{}: cannot read further: {e}", line_no + 1)));
                }
            }
        }
    }
    Ok(torn)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::chain::Chainer;

    fn started(prev: Option<Head>) -> String {
        let prev = prev.map_or("null".to_owned(), |h| format!("\"{}\"", to_hex(&h)));
        format!("{{\"type\":\"capture_started\",\"slot\":\"s\",\"format_version\":2,\"chain_prev\":{prev}}}\n")
    }
    fn del(xid: u64, k: u64) -> String {
        format!("{{\"type\":\"delete\",\"xid\":{xid},\"key\":{{\"k\":\"{k}\"}}}}\n")
    }
    fn commit(xid: u64, n: u64) -> String {
        format!("{{\"type\":\"commit\",\"xid\":{xid},\"deletes\":{n}}}\n")
    }

    /// A log of `runs` capture runs of `txns` transactions of 2 rows each, each run continuing the
    /// chain, as the capture writes it (through the writer's Chainer, one chunk per transaction).
    fn build(runs: u64, txns: u64) -> Vec<u8> {
        let mut out = Vec::new();
        let mut head = None;
        for r in 0..runs {
            let mut c = Chainer::new();
            c.feed(started(head).as_bytes(), &mut out);
            for t in 0..txns {
                let xid = 100 * r + t;
                c.feed(format!("{}{}{}", del(xid, 1), del(xid, 2), commit(xid, 2)).as_bytes(), &mut out);
            }
            c.feed(b"{\"type\":\"capture_stopped\",\"reason\":\"endpos\"}\n", &mut out);
            head = c.head();
        }
        out
    }

    fn lines(log: &[u8]) -> Vec<Vec<u8>> {
        log.split_inclusive(|&b| b == b'\n').map(<[u8]>::to_vec).collect()
    }

    fn verify_with(log: &[u8], expect: Option<&str>) -> Result<Verdict, Bad> {
        let mut v = Verifier::new(expect).unwrap();
        let file: Rc<str> = Rc::from("t.jsonl");
        v.start_file();
        let mut n = 0;
        let mut rest = log;
        while let Some(nl) = rest.iter().position(|&b| b == b'\n') {
            n += 1;
            v.line(Loc { file: Rc::clone(&file), line: n }, &rest[..=nl])?;
            rest = &rest[nl + 1..];
        }
        let torn = (!rest.is_empty()).then(|| (Loc { file, line: n + 1 }, rest.len()));
        Ok(v.finish(torn))
    }

    fn verify(log: &[u8]) -> Result<Verdict, Bad> {
        verify_with(log, None)
    }

    fn tamper(log: &[u8]) -> String {
        match verify(log) {
            Err(Bad::Tamper(m)) => m,
            other => panic!("expected tamper evidence, got {other:?}\n{}", String::from_utf8_lossy(log)),
        }
    }

    #[test]
    fn an_untouched_log_is_intact() {
        let log = build(3, 4);
        let v = verify(&log).unwrap();
        assert_eq!(v.exit, Exit::Ok, "{v:?}");
        assert_eq!(v.summary[0], "intact");
        let last = lines(&log).last().unwrap().clone();
        let head = split_chained(last.strip_suffix(b"\n").unwrap()).unwrap().1;
        assert!(v.summary.iter().any(|s| s.contains(&to_hex(&head))), "{v:?}");
    }

    #[test]
    fn an_edited_row_is_found_at_its_commit() {
        let log = build(1, 3);
        let edited = String::from_utf8(log.clone())
            .unwrap()
            .replace("\"xid\":1,\"key\":{\"k\":\"2\"}", "\"xid\":1,\"key\":{\"k\":\"9\"}");
        assert_ne!(edited.as_bytes(), log);
        let m = tamper(edited.as_bytes());
        // Line 1 capture_started, 2-4 the first transaction, 5-7 the second (edited on line 6).
        assert!(m.starts_with("t.jsonl:7: the chain value does not match: one of lines 5 to 7"), "{m}");
    }

    #[test]
    fn an_edited_chained_record_is_named() {
        let log = build(1, 1);
        let s = String::from_utf8(log).unwrap().replace("\"reason\":\"endpos\"", "\"reason\":\"sigint\"");
        let m = tamper(s.as_bytes());
        assert!(
            m.starts_with("t.jsonl:5: the chain value does not match: this capture_stopped record was changed"),
            "{m}"
        );
    }

    #[test]
    fn removed_inserted_and_moved_lines() {
        let log = lines(&build(1, 4));
        // Indexes: capture_started 0, transactions 1..=3, 4..=6, 7..=9, 10..=12, capture_stopped 13.
        let join = |ls: Vec<Vec<u8>>| ls.concat();
        let mut removed_row = log.clone();
        removed_row.remove(5);
        assert!(tamper(&join(removed_row)).starts_with("t.jsonl:6:"));
        let mut removed_txn = log.clone();
        removed_txn.drain(4..7);
        assert!(tamper(&join(removed_txn)).starts_with("t.jsonl:7:"));
        let mut swapped = log.clone();
        swapped.swap(1, 4);
        swapped.swap(2, 5);
        swapped.swap(3, 6);
        assert!(tamper(&join(swapped)).starts_with("t.jsonl:4:"));
        let mut inserted = log.clone();
        inserted.insert(8, del(999, 1).into_bytes());
        assert!(tamper(&join(inserted)).starts_with("t.jsonl:11:"));
        let mut duplicated = log.clone();
        duplicated.insert(4, log[3].clone());
        assert!(tamper(&join(duplicated)).starts_with("t.jsonl:5: the chain value does not match: this commit"));
        let mut moved_row = log.clone();
        let row = moved_row.remove(2);
        moved_row.insert(1, row);
        assert!(tamper(&join(moved_row)).starts_with("t.jsonl:4:"));
    }

    #[test]
    fn a_chain_value_stripped_or_a_record_added_without_one() {
        let log = lines(&build(1, 2));
        let mut stripped = log.clone();
        let body = stripped[3].strip_suffix(b"\n").unwrap().to_vec();
        let (hashed, _) = split_chained(&body).unwrap();
        stripped[3] = [&hashed[..hashed.len() - crate::sink::chain::FIELD.len()], b"}\n"].concat();
        assert!(tamper(&stripped.concat()).starts_with("t.jsonl:4: a commit record without its chain value"));
    }

    #[test]
    fn the_beginning_removed() {
        let log = lines(&build(2, 2));
        assert!(tamper(&log[1..].concat()).contains("before any capture_started"));
        // A whole first run removed: the second names a head that is nowhere.
        let run = 1 + 2 * 3 + 1;
        assert!(tamper(&log[run..].concat()).contains("which is nowhere before it"));
    }

    #[test]
    fn the_end_of_a_run_removed_before_the_next() {
        let log = lines(&build(2, 2));
        let mut cut = log.clone();
        cut.remove(7); // run 1's capture_stopped
        assert!(tamper(&cut.concat()).starts_with("t.jsonl:8: this run continues chain head"));
    }

    #[test]
    fn rows_inserted_before_a_linked_run() {
        let mut log = lines(&build(2, 1));
        log.insert(5, del(77, 1).into_bytes());
        assert!(tamper(&log.concat()).contains("as if they were not there"));
    }

    #[test]
    fn truncation_at_a_boundary_shows_only_against_a_recorded_head() {
        let full = build(1, 4);
        let full_lines = lines(&full);
        let head = split_chained(full_lines.last().unwrap().strip_suffix(b"\n").unwrap()).unwrap().1;
        let cut = full_lines[..7].concat();
        assert_eq!(verify(&cut).unwrap().exit, Exit::Ok);
        let hex = to_hex(&head);
        let v = verify_with(&cut, Some(&hex)).unwrap();
        assert_eq!(v.exit, Exit::Tampered, "{v:?}");
        assert!(v.problem.unwrap().contains("is not in the log"));
        // The full log has it; a prefix of the head is enough, and an earlier head is found with the
        // lines after it reported.
        assert_eq!(verify_with(&full, Some(&hex[..16])).unwrap().exit, Exit::Ok);
        let early = split_chained(full_lines[3].strip_suffix(b"\n").unwrap()).unwrap().1;
        let v = verify_with(&full, Some(&to_hex(&early).to_uppercase())).unwrap();
        assert_eq!(v.exit, Exit::Ok);
        assert!(v.summary.iter().any(|s| s.contains("at t.jsonl:4") && s.contains("written later")), "{v:?}");
        assert!(Verifier::new(Some("abc")).is_err());
    }

    #[test]
    fn an_unfinished_transaction_at_the_end_is_noted_not_proven() {
        let mut log = build(1, 2);
        log.extend_from_slice(del(5, 1).as_bytes());
        log.extend_from_slice(b"{\"type\":\"del");
        let v = verify(&log).unwrap();
        assert_eq!(v.exit, Exit::Ok, "{v:?}");
        assert!(v.summary.iter().any(|s| s.contains("t.jsonl:9: 1 row line not closed")), "{v:?}");
        assert!(v.summary.iter().any(|s| s.contains("t.jsonl:10: an incomplete last line")), "{v:?}");
    }

    #[test]
    fn unreadable_lines_are_damage() {
        let mut log = lines(&build(1, 2));
        log[2] = b"{\"type\":\"delete\",\n".to_vec();
        match verify(&log.concat()) {
            Err(Bad::Damage(m)) => assert!(m.starts_with("t.jsonl:3: not a valid record"), "{m}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn old_logs_have_no_chain() {
        let old = "{\"type\":\"capture_started\",\"slot\":\"s\",\"format_version\":1}\n".to_owned()
            + &del(1, 1)
            + &commit(1, 1);
        let v = verify(old.as_bytes()).unwrap();
        assert_eq!(v.exit, Exit::Unverifiable);
        assert!(v.problem.unwrap().starts_with("no chain to verify: 3 lines in 1 capture run"));
        // Continued by a chained run: the chain is verified, the old part is said to be unproven.
        let mixed = [old.as_bytes(), &build(1, 1)].concat();
        let v = verify(&mixed).unwrap();
        assert_eq!(v.exit, Exit::Unverifiable, "{v:?}");
        assert!(v.problem.unwrap().contains("3 lines from t.jsonl:1 on carry no chain"));
        // A format 2 capture_started stripped of its chain is not an old one.
        let s = String::from_utf8(build(1, 1)).unwrap();
        let first = s.lines().next().unwrap();
        let (hashed, _) = split_chained(first.as_bytes()).unwrap();
        let stripped = format!(
            "{}}}\n{}",
            std::str::from_utf8(&hashed[..hashed.len() - crate::sink::chain::FIELD.len()]).unwrap(),
            &s[first.len() + 1..]
        );
        assert!(tamper(stripped.as_bytes()).contains("format_version 2 without its chain value"));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 2000, ..Default::default() })]

        /// Any change of one byte of a log that ends with a chain value is found (damage or tamper
        /// evidence), except of its very last newline: without it the last record is a torn line, which
        /// is a truncation. Arbitrary splices never make the verifier panic.
        #[test]
        fn any_byte_changed_is_found(pos in 0usize..10_000, byte in proptest::prelude::any::<u8>(),
                                     cut in 0usize..10_000, junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40)) {
            let log = build(2, 2);
            let pos = pos % (log.len() - 1);
            let mut changed = log.clone();
            proptest::prop_assume!(changed[pos] != byte);
            changed[pos] = byte;
            match verify(&changed) {
                Err(_) => {}
                Ok(v) => proptest::prop_assert!(v.exit != Exit::Ok, "byte {pos} -> {byte:#x} passed: {v:?}"),
            }
            let cut = cut % log.len();
            let spliced = [&log[..cut], &junk[..], &log[cut..]].concat();
            let _ = verify(&spliced);
        }
    }

    #[test]
    fn a_restarted_chain_is_not_proven() {
        let log = [build(1, 1), build(1, 1)].concat();
        let v = verify(&log).unwrap();
        assert_eq!(v.exit, Exit::Unverifiable, "{v:?}");
        assert!(v.problem.unwrap().contains("1 run at t.jsonl:6 starts the chain afresh"));
    }
}
