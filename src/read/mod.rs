//! The readers: `tail`, `replay` and `report` read a captured log offline.
//!
//! ```text
//! file / stdin → log::open_input (plain, gzip, zstd) → log::LineReader (complete lines only)
//!   → log::parse_line (typed, borrowed records) → log::Validator (format rules, one open transaction)
//!   → Consumer: tail (human view), replay (filters → JSON lines), report (bounded aggregates)
//! ```
//! Memory is bounded whatever the input: no line longer than `--max-line-length` (default 64 MiB) is
//! held (a longer one is damage that stops reading, exit 14), compressed input included; a transaction's
//! rows held until their commit move from memory to an unnamed temporary file past [`held::IN_MEMORY`].
//!
//! Only committed transactions reach a consumer as committed: rows are handed over as they are read
//! (`row`), and the consumer holds them until `commit` or drops them on `abort` (the capture was cut
//! mid-transaction). Nothing holds more than one transaction, so memory does not grow with the log.
use std::io;

use crate::error::{Exit, Failure};

pub mod filter;
pub mod follow;
pub mod held;
pub mod html;
pub mod log;
pub mod raw_replay;
pub mod replay;
pub mod report;
pub mod rollup;
pub mod summary;
pub mod tail;
pub mod verify;
pub mod when;

use log::{Action, Damage, Kind, Parser, Record, Validator};

/// Receives checked records in log order.
pub trait Consumer {
    /// A delete/truncate of the transaction being read; not committed until `commit`.
    fn row(&mut self, kind: Kind, rec: &Record, line: &[u8]) -> io::Result<()>;
    /// The open transaction's commit.
    fn commit(&mut self, rec: &Record, line: &[u8]) -> io::Result<()>;
    /// The rows handed over since the last commit were not committed: forget them.
    fn abort(&mut self);
    /// capture_started / capture_stopped.
    fn boundary(&mut self, kind: Kind, rec: &Record, line: &[u8]) -> io::Result<()>;
    /// A `statement` record (format 2) of the transaction being read, before the rows that name it.
    fn statement(&mut self, _rec: &Record, _line: &[u8]) -> io::Result<()> {
        Ok(())
    }
}

/// Why reading stopped early.
#[derive(Debug)]
pub enum Stop {
    /// The reader of our output went away (`| head`): a normal end, exit 0.
    BrokenPipe,
    Failure(Failure),
}

impl From<Failure> for Stop {
    fn from(f: Failure) -> Self {
        Stop::Failure(f)
    }
}

/// An error writing our output.
pub fn output_error(e: io::Error) -> Stop {
    if e.kind() == io::ErrorKind::BrokenPipe {
        Stop::BrokenPipe
    } else {
        Stop::Failure(Failure::new(Exit::Output, format!("cannot write the output: {e}")))
    }
}

/// Turns the outcome of a reader command into its exit status, printing the failure.
pub fn finish(cmd: &str, r: Result<(), Stop>) -> Exit {
    match r {
        Ok(()) | Err(Stop::BrokenPipe) => Exit::Ok,
        Err(Stop::Failure(f)) => {
            eprintln!("walwitness {cmd}: error: {f}");
            f.exit
        }
    }
}

/// What reading found wrong, for the `--lenient` summary.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub lines: u64,
    /// Lines not used: unreadable ones and the rows of transactions without a commit.
    pub skipped_lines: u64,
    /// Every rule broken (some break a rule without costing a line, e.g. a commit count mismatch).
    pub problems: u64,
    pub first_problem: Option<String>,
}

/// Runs lines through the validator and into a consumer; owns the strict/lenient policy.
pub struct Feeder {
    pub validator: Validator,
    parser: Parser,
    scratch: Vec<u8>,
    pub lenient: bool,
    /// Report problems as they happen (tail) rather than only in the summary.
    pub warn_each: bool,
    pub name: String,
    pub stats: Stats,
}

impl Feeder {
    pub fn new(name: &str, lenient: bool) -> Self {
        Feeder {
            validator: Validator::new(),
            parser: Parser::new(),
            scratch: Vec::new(),
            lenient,
            warn_each: false,
            name: name.to_owned(),
            stats: Stats::default(),
        }
    }

    fn damage<C: Consumer>(&mut self, d: Damage, c: &mut C, skip_line: bool) -> Result<(), Stop> {
        if !self.lenient {
            return Err(Stop::Failure(Failure::new(
                Exit::DamagedLog,
                format!(
                    "{}:{}: damaged log: {} (to read past damaged lines, add --lenient)",
                    self.name, d.line, d.message
                ),
            )));
        }
        if d.aborted_rows > 0 {
            c.abort();
        }
        self.stats.skipped_lines += d.aborted_rows + u64::from(skip_line);
        self.stats.problems += 1;
        let text = format!("{}:{}: {}", self.name, d.line, d.message);
        if self.warn_each {
            crate::term::eprint_line(&format!("walwitness: {text}"));
        }
        self.stats.first_problem.get_or_insert(text);
        Ok(())
    }

    /// One complete line.
    pub fn line<C: Consumer>(&mut self, line_no: u64, line: &[u8], c: &mut C) -> Result<(), Stop> {
        self.stats.lines += 1;
        let mut scratch = std::mem::take(&mut self.scratch);
        let r = self.line_with(line_no, line, &mut scratch, c);
        self.scratch = scratch;
        r
    }

    fn line_with<C: Consumer>(
        &mut self,
        line_no: u64,
        line: &[u8],
        scratch: &mut Vec<u8>,
        c: &mut C,
    ) -> Result<(), Stop> {
        let parsed = self.parser.parse(line, scratch);
        let verdict = self.validator.check(line_no, parsed.as_ref().map(|(k, r)| (*k, r)).map_err(Clone::clone));
        if let Some(d) = verdict.damage {
            self.damage(d, c, verdict.action == Action::Skip)?;
        }
        let Ok((kind, rec)) = parsed else {
            return Ok(());
        };
        match verdict.action {
            Action::Skip => Ok(()),
            Action::Row => c.row(kind, &rec, line).map_err(output_error),
            Action::Commit => c.commit(&rec, line).map_err(output_error),
            Action::Boundary => c.boundary(kind, &rec, line).map_err(output_error),
            Action::Statement => c.statement(&rec, line).map_err(output_error),
        }
    }

    /// The input ended after `last_line` complete lines and `pending` bytes of an unterminated one.
    pub fn end<C: Consumer>(&mut self, last_line: u64, pending: usize, c: &mut C) -> Result<(), Stop> {
        for d in self.validator.finish(last_line, pending) {
            let skip = d.aborted_rows == 0;
            self.damage(d, c, skip)?;
        }
        Ok(())
    }

    /// The `--lenient` summary line, if anything was skipped.
    pub fn summary(&self) -> Option<String> {
        if self.stats.problems == 0 {
            return None;
        }
        Some(format!(
            "walwitness: {}: skipped {} damaged line{} ({} problem{}; first: {})",
            self.name,
            self.stats.skipped_lines,
            if self.stats.skipped_lines == 1 { "" } else { "s" },
            self.stats.problems,
            if self.stats.problems == 1 { "" } else { "s" },
            self.stats.first_problem.as_deref().unwrap_or("")
        ))
    }
}

/// A line over the limit: reading cannot go on in bounded memory, so it stops, even with `--lenient`.
pub fn too_long_failure(name: &str, line: u64, e: &log::LineTooLong) -> Stop {
    Stop::Failure(Failure::new(Exit::DamagedLog, format!("{name}:{line}: damaged log: {e}")))
}

/// Reads whole files (or `-`) through a consumer: the offline path of `replay` and `report`.
/// Lines longer than `max_line` bytes stop reading (exit 14). Returns the total stats.
pub fn read_files<C: Consumer>(files: &[String], lenient: bool, max_line: usize, c: &mut C) -> Result<Stats, Stop> {
    let mut total = Stats::default();
    for name in files {
        let display = if name == "-" { "<stdin>" } else { name.as_str() };
        let (input, _) = log::open_input(name).map_err(|e| {
            Failure::new(
                Exit::Usage,
                format!("cannot open {display}: {e} (give a log file written by `walwitness capture --out`, or - for standard input)"),
            )
        })?;
        // A new file is read on its own: its first transaction cannot continue the previous file's.
        let mut feeder = Feeder::new(display, lenient);
        let mut line_no = 0u64;
        let mut pending = 0usize;
        let (chunks, recycle) = log::read_chunks(input, max_line);
        for chunk in chunks {
            match chunk {
                log::Chunk::Lines(block) => {
                    for line in log::block_lines(&block) {
                        line_no += 1;
                        if line.len() > max_line {
                            let e = log::LineTooLong { bytes: line.len(), limit: max_line };
                            return Err(too_long_failure(display, line_no, &e));
                        }
                        feeder.line(line_no, line, c)?;
                    }
                    let _ = recycle.send(block);
                }
                log::Chunk::TooLong(bytes) => {
                    let e = log::LineTooLong { bytes, limit: max_line };
                    return Err(too_long_failure(display, line_no + 1, &e));
                }
                log::Chunk::Incomplete(n) => pending = n,
                log::Chunk::Err(e) => {
                    // A broken gzip/zstd stream or a read error: the rest of this file is unreadable.
                    let d = Damage { line: line_no + 1, message: format!("cannot read further: {e}"), aborted_rows: 0 };
                    feeder.damage(d, c, false)?;
                }
            }
        }
        feeder.end(line_no, pending, c)?;
        if let Some(s) = feeder.summary() {
            crate::term::eprint_line(&s);
        }
        total.lines += feeder.stats.lines;
        total.skipped_lines += feeder.stats.skipped_lines;
        total.problems += feeder.stats.problems;
        if total.first_problem.is_none() {
            total.first_problem = feeder.stats.first_problem;
        }
    }
    Ok(total)
}
/// A statement on one line, cut to `max` characters.
pub fn one_line(s: &str, max: usize) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() > max {
        let cut: String = flat.chars().take(max).collect();
        format!("{cut}…")
    } else {
        flat
    }
}
