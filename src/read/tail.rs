//! `walwitness tail FILE`: the log as people read it, one block per committed transaction.
//!
//! ```text
//! 2026-11-26T15:21:09.112702Z  xid 780  5 rows deleted from public.cache
//!   session  pid 2223  user postgres  app forgotten-cleanup.py  client local socket  (trigger)
//!   statement  DELETE FROM cache WHERE cache_key IN (SELECT …)
//!   keys  report:0, report:1, report:10 … (+2 more)
//! ```
//! A transaction is shown only when its commit has been read, so rows a crash left without a commit
//! never appear as committed. With `-f` the file is followed (see `follow`); `--format json` (old spelling `--json`) passes the
//! records of complete transactions through unchanged instead.
use std::io::{self, BufWriter, IsTerminal, Write};
use std::time::Duration;

use crate::cli::TailArgs;
use crate::error::{Exit, Failure};

use super::follow::{Event, Follower, POLL};
use super::log::{Kind, Record, SessionRef};
use super::one_line;
use super::{output_error, Consumer, Feeder, Stop};
use crate::term::clean;

/// ANSI styles, or nothing.
#[derive(Clone, Copy)]
struct Style {
    on: bool,
}

impl Style {
    fn paint(&self, code: &str, s: &str) -> String {
        if self.on {
            format!("\x1b[{code}m{s}\x1b[0m")
        } else {
            s.to_owned()
        }
    }
    fn bold(&self, s: &str) -> String {
        self.paint("1", s)
    }
    fn red(&self, s: &str) -> String {
        self.paint("1;31", s)
    }
    fn cyan(&self, s: &str) -> String {
        self.paint("36", s)
    }
    fn dim(&self, s: &str) -> String {
        self.paint("2", s)
    }
}

/// `--color` (see `term::colour_for`) for standard output.
fn colour_wanted() -> bool {
    crate::term::colour_for(io::stdout().is_terminal())
}

#[derive(Debug, Default)]
struct TableRows {
    name: String,
    deletes: u64,
    truncated: Option<(bool, bool)>,
    keys: Vec<String>,
}

#[derive(Debug, Clone, Default)]
struct SessionView {
    attributed_by: Option<String>,
    pid: i64,
    user: Option<String>,
    app: Option<String>,
    client: String,
    query: Option<String>,
    /// Format 2: the statement record that holds the query.
    statement: Option<u64>,
}

impl SessionView {
    fn of(s: &SessionRef) -> Self {
        SessionView {
            attributed_by: s.attributed_by.as_deref().map(str::to_owned),
            pid: s.pid,
            user: s.user.as_deref().map(str::to_owned),
            app: s.application_name.as_deref().map(str::to_owned),
            client: s.client(),
            query: s.query.as_deref().map(str::to_owned),
            statement: s.statement,
        }
    }
}

/// Tables (and renames) shown per transaction; more are summed up, so memory and time stay bounded.
const MAX_TABLES: usize = 100;

/// The human (or `--json`) view of complete transactions.
pub struct TailView<W: Write> {
    out: W,
    json: bool,
    keys: usize,
    style: Style,
    tables: Vec<TableRows>,
    first_session: Option<SessionView>,
    other_sessions: u64,
    held: super::held::Held,
    /// `old → new` of the transaction's relation_renamed records.
    renames: Vec<String>,
    /// Format 3: the open transaction's statement texts by number.
    statements: Vec<(u64, Option<String>)>,
}

impl<W: Write> TailView<W> {
    pub fn new(out: W, json: bool, keys: usize, colour: bool) -> Self {
        TailView {
            out,
            json,
            keys,
            style: Style { on: colour },
            tables: Vec::new(),
            statements: Vec::new(),
            first_session: None,
            other_sessions: 0,
            held: super::held::Held::new(),
            renames: Vec::new(),
        }
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    pub fn into_inner(self) -> W {
        self.out
    }

    fn table(&mut self, name: &str) -> &mut TableRows {
        let i = match self.tables.iter().position(|t| t.name == name) {
            Some(i) => i,
            // A crafted transaction naming a million tables: the rest are summed as other tables.
            None if self.tables.len() >= MAX_TABLES => {
                if self.tables.len() == MAX_TABLES {
                    self.tables.push(TableRows { name: "(other tables)".to_owned(), ..Default::default() });
                }
                MAX_TABLES
            }
            None => {
                self.tables.push(TableRows { name: name.to_owned(), ..Default::default() });
                self.tables.len() - 1
            }
        };
        &mut self.tables[i]
    }

    fn session_line(&self, s: Option<&SessionView>, attribution: Option<&str>) -> String {
        let st = self.style;
        match s {
            None => format!(
                "  {}  {}",
                st.dim("session"),
                st.red(&format!("not attributed ({})", clean(attribution.unwrap_or("none"))))
            ),
            Some(s) => {
                let mut l = format!(
                    "  {}  pid {}  user {}  app {}  client {}",
                    st.dim("session"),
                    st.cyan(&s.pid.to_string()),
                    st.cyan(&clean(s.user.as_deref().unwrap_or("?"))),
                    st.cyan(&clean(s.app.as_deref().unwrap_or(""))),
                    st.cyan(&clean(&s.client)),
                );
                if let Some(a) = attribution.or(s.attributed_by.as_deref()) {
                    l.push_str(&st.dim(&format!("  ({})", clean(a))));
                }
                if self.other_sessions > 0 {
                    l.push_str(&format!("  +{} rows from other sessions", self.other_sessions));
                }
                l
            }
        }
    }
}

impl<W: Write> Consumer for TailView<W> {
    fn row(&mut self, kind: Kind, rec: &Record, line: &[u8]) -> io::Result<()> {
        if self.json {
            return self.held.push_line(line);
        }
        if kind == Kind::RelationRenamed {
            if self.renames.len() > MAX_TABLES {
                return Ok(());
            }
            if self.renames.len() == MAX_TABLES {
                self.renames.push("… (more renames not shown)".to_owned());
                return Ok(());
            }
            self.renames.push(format!(
                "{} → {}",
                rec.previous_table.as_deref().map(str::to_owned).unwrap_or_else(|| format!(
                    "{}.{}",
                    rec.previous_schema.as_deref().unwrap_or("?"),
                    rec.previous_name.as_deref().unwrap_or("?")
                )),
                rec.table.as_deref().unwrap_or("?")
            ));
            return Ok(());
        }
        let session = rec.session.value();
        match (&self.first_session, session) {
            (None, Some(s)) if self.tables.is_empty() => self.first_session = Some(SessionView::of(s)),
            (Some(f), Some(s)) if f.pid == s.pid => {}
            (None, None) => {}
            _ => self.other_sessions += 1,
        }
        let keys = self.keys;
        match kind {
            Kind::Delete => {
                let label = match &rec.partition {
                    Some(p) => format!("{} (partition {}.{})", rec.table.as_deref().unwrap_or("?"), p.schema, p.name),
                    None => rec.table.as_deref().unwrap_or("?").to_owned(),
                };
                let t = self.table(&label);
                t.deletes += 1;
                if t.keys.len() < keys {
                    if let Some(k) = rec.key.value() {
                        t.keys.push(clean(&k.to_string()).into_owned());
                    }
                }
            }
            _ => {
                let c = (rec.cascade.unwrap_or(false), rec.restart_identity.unwrap_or(false));
                let labels: Vec<String> = match &rec.relations {
                    Some(rs) => rs
                        .iter()
                        .map(|r| {
                            let table = format!("{}.{}", r.schema, r.name);
                            match &r.partition {
                                Some(p) => format!("{table} (partition {}.{})", p.schema, p.name),
                                None => table,
                            }
                        })
                        .collect(),
                    None => rec.tables.iter().flatten().map(|t| t.to_string()).collect(),
                };
                for label in labels {
                    self.table(&label).truncated = Some(c);
                }
            }
        }
        Ok(())
    }

    fn commit(&mut self, rec: &Record, line: &[u8]) -> io::Result<()> {
        if self.json {
            self.held.write_to(&mut self.out)?;
            self.out.write_all(line)?;
            self.out.write_all(b"\n")?;
            self.abort();
            return Ok(());
        }
        let st = self.style;
        let time = rec.commit_time.as_deref().unwrap_or("?");
        let mut what = Vec::new();
        for t in &self.tables {
            if t.deletes > 0 {
                what.push(format!(
                    "{} deleted from {}",
                    st.red(&format!("{} row{}", t.deletes, if t.deletes == 1 { "" } else { "s" })),
                    st.bold(&clean(&t.name))
                ));
            }
            if let Some((cascade, restart)) = t.truncated {
                let mut s = format!("{} {}", st.red("TRUNCATE"), st.bold(&clean(&t.name)));
                if cascade {
                    s.push_str(" CASCADE");
                }
                if restart {
                    s.push_str(" RESTART IDENTITY");
                }
                what.push(s);
            }
        }
        let mut block =
            format!("{}  {}  {}\n", st.bold(&clean(time)), st.dim(&format!("xid {}", rec.xid())), what.join("; "));
        for r in &self.renames {
            block.push_str(&format!("  {}  {}\n", st.dim("renamed"), st.bold(&clean(r))));
        }
        let commit_session = rec.session.value().map(|s| SessionView::of(s));
        let session = commit_session.as_ref().or(self.first_session.as_ref());
        block.push_str(&self.session_line(session, rec.attribution.as_deref()));
        block.push('\n');
        let looked_up = session
            .and_then(|s| s.statement)
            .and_then(|n| self.statements.iter().find(|(m, _)| *m == n))
            .and_then(|(_, q)| q.as_deref());
        if let Some(q) = session.and_then(|s| s.query.as_deref()).or(looked_up) {
            block.push_str(&format!("  {}  {}\n", st.dim("statement"), clean(&one_line(q, 200))));
        }
        for t in &self.tables {
            if t.keys.is_empty() {
                continue;
            }
            let more = t.deletes.saturating_sub(t.keys.len() as u64);
            let label = if self.tables.len() > 1 { format!("keys ({})", clean(&t.name)) } else { "keys".to_owned() };
            block.push_str(&format!(
                "  {}  {}{}\n",
                st.dim(&label),
                t.keys.join(", "),
                if more > 0 { format!(" … (+{more} more)") } else { String::new() }
            ));
        }
        self.abort();
        self.out.write_all(block.as_bytes())
    }

    fn statement(&mut self, rec: &Record, line: &[u8]) -> io::Result<()> {
        if self.json {
            return self.held.push_line(line);
        } else if let (Some(n), Some(s)) = (rec.statement, rec.session.value()) {
            self.statements.push((n, s.query.clone()));
        }
        Ok(())
    }

    fn abort(&mut self) {
        self.tables.clear();
        self.first_session = None;
        self.other_sessions = 0;
        self.held.clear();
        self.renames.clear();
        self.statements.clear();
    }

    fn boundary(&mut self, kind: Kind, rec: &Record, line: &[u8]) -> io::Result<()> {
        if self.json {
            self.out.write_all(line)?;
            return self.out.write_all(b"\n");
        }
        let st = self.style;
        let time = clean(rec.time.as_deref().unwrap_or("?"));
        if matches!(kind, Kind::AbortedDelete | Kind::AbortedTruncate) {
            // Summed up by their `abort` record.
            return Ok(());
        }
        let text = if kind == Kind::Abort {
            format!(
                "── aborted attempt: xid {} rolled back {} deletes and {} truncates (logged as aborted_delete)",
                rec.xid(),
                rec.deletes.unwrap_or(0),
                rec.truncates.unwrap_or(0)
            )
        } else if kind == Kind::CaptureStarted {
            format!(
                "── capture started {time}: slot {}, tables {}",
                clean(rec.slot.as_deref().unwrap_or("?")),
                clean(&rec.tables.iter().flatten().map(|t| t.as_ref()).collect::<Vec<_>>().join(", "))
            )
        } else if kind == Kind::Gap {
            let from = rec.from_lsn.map(|l| l.to_string()).unwrap_or_default();
            let to = rec.to_lsn.map(|l| l.to_string()).unwrap_or_default();
            let why = match (rec.reason.as_deref().unwrap_or("?"), rec.table.as_deref()) {
                (r, Some(t)) => clean(&format!("{r}, {t}")).to_string(),
                (r, None) => clean(r).to_string(),
            };
            let detail = rec.detail.as_deref().map(|d| format!(": {}", clean(d))).unwrap_or_default();
            if rec.open == Some(true) {
                format!("── GAP {time}: deletes after LSN {from} may be missing, until further notice ({why}){detail}")
            } else if rec.closes == Some(true) {
                format!("── gap closed {time}: deletes between LSN {from} and {to} may be missing ({why}); covered again from there")
            } else {
                format!("── GAP {time}: deletes between LSN {from} and {to} may be missing ({why}){detail}")
            }
        } else {
            format!(
                "── capture stopped {time} ({}), log complete up to LSN {}",
                clean(rec.reason.as_deref().unwrap_or("?")),
                rec.last_lsn.map(|l| l.to_string()).unwrap_or_default()
            )
        };
        writeln!(self.out, "{}", st.dim(&text))
    }
}

pub fn run(args: TailArgs) -> Exit {
    super::finish("tail", tail(&args))
}

fn tail(args: &TailArgs) -> Result<(), Stop> {
    let stdout = io::stdout();
    let json = args.json || args.format == crate::cli::ReportFormat::Json;
    let mut view = TailView::new(BufWriter::new(stdout.lock()), json, args.keys, !json && colour_wanted());
    let name = if args.file == "-" { "<stdin>" } else { &args.file };
    // tail shows what it can: damaged lines are reported on stderr and read past.
    let mut feeder = Feeder::new(name, true);
    feeder.warn_each = true;
    if !args.follow {
        return read_once(args, name, &mut feeder, &mut view);
    }
    follow(args, name, &mut feeder, &mut view)
}

/// Shows the log as it is now, then stops.
fn read_once<W: Write>(args: &TailArgs, name: &str, feeder: &mut Feeder, view: &mut TailView<W>) -> Result<(), Stop> {
    let (input, _) = super::log::open_input(&args.file).map_err(|e| {
        Failure::new(
            Exit::Usage,
            format!("cannot open {name}: {e} (to wait for a log that does not exist yet, add -f)"),
        )
    })?;
    let mut reader = super::log::LineReader::with_limit(input, args.limits.max_line_length);
    loop {
        let no = reader.line_no() + 1;
        match reader.next_line() {
            Ok(Some(line)) => feeder.line(no, line, view)?,
            Ok(None) => break,
            Err(e) => {
                // What was read is shown; the rest cannot be: that is a failure, not an end.
                view.flush().map_err(output_error)?;
                if let Some(t) = super::log::too_long(&e) {
                    return Err(super::too_long_failure(name, no, t));
                }
                return Err(Failure::new(
                    Exit::DamagedLog,
                    format!("{}:{no}: damaged log: cannot read further: {e}", crate::term::clean(name)),
                )
                .into());
            }
        }
    }
    if reader.pending() > 0 {
        eprintln!(
            "walwitness tail: {name}:{}: the last line is incomplete ({} bytes without a newline): not shown",
            reader.line_no() + 1,
            reader.pending()
        );
    }
    let open = feeder.validator.open_rows();
    if open > 0 {
        crate::term::eprint_line(&format!(
            "walwitness tail: {open} row record(s) at the end of {name} have no commit yet: not shown"
        ));
    }
    view.flush().map_err(output_error)
}

/// `-f`: shows the log and what is appended to it, across rotation and truncation, until interrupted.
fn follow<W: Write>(args: &TailArgs, name: &str, feeder: &mut Feeder, view: &mut TailView<W>) -> Result<(), Stop> {
    if args.file == "-" {
        return Err(Failure::new(Exit::Usage, "tail -f follows a file; for standard input, drop -f").into());
    }
    let mut follower = Follower::with_limit(&args.file, args.limits.max_line_length);
    let mut said_waiting = false;
    loop {
        let event = follower.poll().map_err(|e| match super::log::too_long(&e) {
            Some(t) => super::too_long_failure(name, follower.line_no() + 1, t),
            None => Failure::new(Exit::Usage, format!("cannot follow {name}: {e}")).into(),
        })?;
        match event {
            Event::Line => {
                let no = follower.line_no();
                feeder.line(no, follower.line(), view)?;
            }
            Event::Idle | Event::Missing => {
                if event == Event::Missing && !said_waiting {
                    crate::term::eprint_line(&format!("walwitness tail: waiting for {name} to appear…"));
                    said_waiting = true;
                }
                view.flush().map_err(output_error)?;
                std::thread::sleep(POLL.min(Duration::from_millis(200)));
            }
            Event::Opened => {}
            Event::Reopened(why) => {
                crate::term::eprint_line(&format!("walwitness tail: {name} was {why}; reading it from the start"));
                feeder.validator.reset();
                view.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::log::tests::{commit, del, session, CS};
    use super::*;

    fn show(lines: &[String], json: bool) -> String {
        let mut view = TailView::new(Vec::new(), json, 2, false);
        let mut f = Feeder::new("t", true);
        for (i, l) in lines.iter().enumerate() {
            f.line(i as u64 + 1, l.as_bytes(), &mut view).unwrap();
        }
        String::from_utf8(view.into_inner()).unwrap()
    }

    #[test]
    fn groups_by_transaction_and_hides_uncommitted_rows() {
        let s = session(7, "alice", "psql", "DELETE FROM t\n WHERE id < 10");
        let t = "2026-11-26T15:01:02.000003Z";
        let lines = vec![
            CS.to_owned(),
            del(5, 1, t, "a", &s),
            del(5, 1, t, "b", &s),
            del(5, 1, t, "c", &s),
            commit(5, 1, t, 3, &s),
            del(6, 2, t, "z", "null"),
            commit(6, 2, t, 1, "null"),
            del(7, 3, t, "uncommitted", &s),
        ];
        let out = show(&lines, false);
        assert!(out.contains("2026-11-26T15:01:02.000003Z  xid 5  3 rows deleted from public.t"), "{out}");
        assert!(out.contains("pid 7  user alice  app psql  client 10.0.0.5:57  (trigger)"), "{out}");
        assert!(out.contains("statement  DELETE FROM t WHERE id < 10"), "{out}");
        assert!(out.contains("keys  a, b … (+1 more)"), "{out}");
        assert!(out.contains("xid 6  1 row deleted"), "{out}");
        assert!(out.contains("not attributed (trigger)"), "{out}");
        assert!(!out.contains("uncommitted"), "{out}");
        assert!(!out.contains('\x1b'));
        let json = show(&lines, true);
        assert_eq!(json.lines().count(), 7);
        assert!(!json.contains("uncommitted"));
    }

    /// Issue 13: ESC/OSC sequences in a SQL comment, an application name or a user, and newlines in
    /// a key, erased and faked lines of `tail`; they are escaped, and `--json` stays exact.
    #[test]
    fn control_characters_from_the_log_cannot_drive_the_terminal() {
        let query = "DELETE FROM t /* \x1b[1A\x1b[2K\x1b]0;owned\x07\u{202e} */ WHERE id = 1";
        let s = session(7, "mallory\\r", "\\u001b]8;;http://evil\\u0007app", query);
        let t = "2026-11-26T15:01:02.000003Z";
        let fake =
            "k1\\n2026-11-26T15:01:03.000000Z  xid 6  1 row deleted from public.t\\n  session  pid 1  user admin";
        let lines = vec![CS.to_owned(), del(5, 1, t, fake, &s), commit(5, 1, t, 1, &s)];
        let out = show(&lines, false);
        assert!(!out.chars().any(|c| c != '\n' && (c.is_control() || c == '\u{202e}')), "{out:?}");
        // The capture_started line and one block of four lines: nothing fabricated.
        assert_eq!(out.lines().count(), 5, "{out}");
        assert!(!out.lines().any(|l| l.starts_with("2026-11-26T15:01:03")), "{out}");
        assert!(out.contains("keys  k1\\n2026-11-26T15:01:03.000000Z  xid 6"), "{out}");
        assert!(out.contains("app \\x1b]8;;http://evil\\x07app"), "{out}");
        assert!(out.contains("user mallory\\r"), "{out}");
        assert!(out.contains("/* \\x1b[1A\\x1b[2K\\x1b]0;owned\\x07\\u{202e} */"), "{out}");
        let json = show(&lines, true);
        assert_eq!(json, format!("{}\n{}\n{}\n", lines[0], lines[1], lines[2]));
    }

    #[test]
    fn format_2_statement_records_give_the_query() {
        let t = "2026-11-26T15:01:02.000003Z";
        let full = session(7, "alice", "psql", "DELETE FROM t WHERE id < 10");
        let small = super::super::log::tests::SMALL_SESSION;
        let stmt = super::super::log::tests::statement_record(t, &full);
        let lines = vec![
            CS.replace("\"format_version\":1", "\"format_version\":2"),
            stmt,
            del(5, 1, t, "a", small),
            commit(5, 1, t, 1, small),
        ];
        let out = show(&lines, false);
        assert!(out.contains("statement  DELETE FROM t WHERE id < 10"), "{out}");
        assert!(out.contains("pid 7  user alice  app psql"), "{out}");
        assert_eq!(show(&lines, true).lines().count(), 4);
    }
}
