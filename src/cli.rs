//! Command-line flags. Parsed here, turned into plain option structs, then run: flags never leak
//! into the code that does the work.
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::protocol::Lsn;

#[derive(Debug, Parser)]
#[command(
    name = "walwitness",
    version,
    about = "Who deleted my rows? Logs every committed DELETE and TRUNCATE on watched PostgreSQL tables, from a pgoutput logical replication slot."
)]
pub struct Cli {
    /// More diagnostics on stderr (repeat for more).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true, conflicts_with = "verbose")]
    pub quiet: bool,
    /// Colour in `tail` and in diagnostics on stderr: auto (a terminal, and NO_COLOR unset), always, never.
    #[arg(long, global = true, value_enum, value_name = "WHEN", default_value = "auto")]
    pub color: ColorChoice,
    #[command(subcommand)]
    pub command: Command,
}

pub use crate::term::ColorChoice;

/// The longest line the readers accept by default (`--max-line-length`): far above any record
/// walwitness writes for ordinary rows, and what bounds the readers' memory whatever the input.
pub const DEFAULT_MAX_LINE: usize = 64 << 20;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Record every committed DELETE and TRUNCATE on the watched tables as JSON lines.
    Capture(Box<CaptureArgs>),
    /// Install or remove the exact (trigger) attribution on tables.
    #[command(subcommand)]
    Attribution(AttributionCommand),
    /// Check every prerequisite of a capture on a server, and say how to fix what is missing.
    Doctor(DoctorCliArgs),
    /// List and remove what walwitness created (slots, publications, attribution triggers and schema).
    Cleanup(CleanupCliArgs),
    /// Start a throwaway local PostgreSQL, delete rows from a Django-style cache table, and show the capture.
    Demo(DemoArgs),
    /// Show a log grouped by transaction, as people read it; -f follows it as it grows.
    Tail(TailArgs),
    /// Check captured logs (plain, gzip or zstd) and write the records that pass the filters as JSON lines.
    Replay(ReplayArgs),
    /// Summarise captured logs: who deleted, when, what, and what could not be attributed.
    Report(ReportArgs),
    /// Print shell completions (bash, zsh, fish, elvish, powershell) on standard output.
    Completions(CompletionsArgs),
    /// Print the manual page (roff), or write one page per command into a directory.
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell, e.g. `walwitness completions bash > /etc/bash_completion.d/walwitness`.
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Write walwitness.1 and walwitness-COMMAND.1 here instead of printing walwitness.1.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// Where the connection string comes from. A password on the command line is visible to every local
/// user (`ps`, /proc/PID/cmdline), so it can also come from the environment or a file.
#[derive(Debug, Args, Clone, Default)]
pub struct DsnArgs {
    /// Connection string: libpq key=value or a postgres:// URL. PG* environment variables, ~/.pgpass and
    /// service files (service=NAME, PGSERVICE) apply. A password given here is visible to every local
    /// user in `ps`: put the connection string in the WALWITNESS_DSN environment variable or in a file
    /// (--dsn-file) instead, or the password in ~/.pgpass or PGPASSWORD. Without --dsn and --dsn-file,
    /// WALWITNESS_DSN is used.
    #[arg(long, value_name = "DSN", conflicts_with = "dsn_file")]
    pub dsn: Option<String>,
    /// Read the connection string from this file (its first line; `-` for standard input). Keep it
    /// mode 0600.
    #[arg(long, value_name = "FILE")]
    pub dsn_file: Option<PathBuf>,
}

/// The environment variable holding a connection string (used without --dsn and --dsn-file).
pub const DSN_ENV: &str = "WALWITNESS_DSN";

impl DsnArgs {
    /// The connection string: --dsn, else the first line of --dsn-file, else `WALWITNESS_DSN`, else
    /// empty (libpq defaults and PG* variables). Warns when a password sits on the command line or in a
    /// file other users can read.
    pub fn resolve(&self) -> Result<String, crate::error::Failure> {
        self.resolve_with(&|k| std::env::var(k).ok(), &mut std::io::stdin().lock(), true)
    }

    pub fn resolve_with(
        &self,
        env: &dyn Fn(&str) -> Option<String>,
        stdin: &mut dyn std::io::Read,
        warn: bool,
    ) -> Result<String, crate::error::Failure> {
        use crate::error::{Exit, Failure};
        if let Some(d) = &self.dsn {
            if warn && crate::pg::config::has_password(d) {
                eprintln!(
                    "walwitness: warning: the password in --dsn is visible to every local user (ps); put the connection string in {DSN_ENV} or a --dsn-file, or the password in ~/.pgpass"
                );
            }
            return Ok(d.clone());
        }
        if let Some(path) = &self.dsn_file {
            let mut text = String::new();
            let read = if path.as_os_str() == "-" {
                stdin.read_to_string(&mut text).map(|_| ())
            } else {
                read_dsn_file(path, warn).map(|t| text = t)
            };
            read.map_err(|e| {
                Failure::new(
                    Exit::Config,
                    format!("cannot read the connection string from --dsn-file {}: {e}", path.display()),
                )
            })?;
            return Ok(text.lines().next().unwrap_or("").trim().to_owned());
        }
        Ok(env(DSN_ENV).unwrap_or_default())
    }
}

/// Reads a --dsn-file (at most 64 KiB), warning when group or others can read it.
fn read_dsn_file(path: &std::path::Path, warn: bool) -> std::io::Result<String> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let f = std::fs::File::open(path)?;
    let mode = f.metadata()?.mode();
    if warn && mode & 0o077 != 0 {
        eprintln!(
            "walwitness: warning: --dsn-file {} can be read by other users (mode {:04o}): chmod 600 it",
            path.display(),
            mode & 0o7777
        );
    }
    let mut text = String::new();
    f.take(64 * 1024).read_to_string(&mut text)?;
    Ok(text)
}

#[derive(Debug, Args)]
pub struct CaptureArgs {
    #[command(flatten)]
    pub conn: DsnArgs,
    /// Table to watch, as schema.table (public. is assumed without a schema; "Quoted"."Names" keep their case). Repeatable.
    #[arg(long = "table", required = true)]
    pub tables: Vec<String>,
    /// Output file (appended to; created with mode 0600), or - for standard output.
    #[arg(long)]
    pub out: String,
    /// Replication slot name (default: derived from database and table).
    #[arg(long)]
    pub slot: Option<String>,
    /// Use this existing publication as-is (it must cover the tables and publish deletes).
    #[arg(long)]
    pub publication: Option<String>,
    /// Keep the slot and publication at a deliberate end, to resume later.
    #[arg(long)]
    pub keep_slot: bool,
    /// Stop after this long (e.g. 30m, 2h, 90s).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Stop once the stream has passed this LSN (e.g. 16/B374D848), like pg_recvlogical --endpos.
    #[arg(long, value_parser = parse_lsn)]
    pub endpos: Option<Lsn>,
    /// Also store the pgoutput payloads as received in this file (framed; see `replay --raw`).
    #[arg(long)]
    pub raw_out: Option<PathBuf>,
    /// Interval of the plain progress line when stderr is not a terminal.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub progress_interval: Duration,
    /// Who ran each transaction: `activity` (sample pg_stat_activity; no DDL), `trigger` (exact; installs
    /// a statement trigger for the capture's lifetime), or `none`. Repeatable: both sources may be on.
    #[arg(long = "attribution", value_enum, default_values_t = vec![AttributionSource::Activity])]
    pub attribution: Vec<AttributionSource>,
    /// How often the activity source samples pg_stat_activity.
    #[arg(long, value_parser = parse_duration, default_value = "200ms")]
    pub activity_interval: Duration,
    /// Warn when the slot holds back more WAL than this (e.g. 10GB, 512MB).
    #[arg(long, value_parser = parse_size)]
    pub max_retained_wal: Option<u64>,
    /// What to do over --max-retained-wal: `warn` once, or `drop`: end the capture and drop the slot
    /// (writing a gap record) rather than let it fill the server's disk.
    #[arg(long, value_enum, default_value_t = OnLag::Warn, requires = "max_retained_wal")]
    pub on_lag: OnLag,
    /// After a lost connection or a server restart, reconnect and resume; give up after this many
    /// consecutive failed attempts (0: do not reconnect).
    #[arg(long, default_value_t = 10)]
    pub reconnect_attempts: u32,
    /// Cap of the exponential backoff between reconnection attempts (starts at 250ms, doubles).
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub reconnect_max_delay: Duration,
    /// Interval of standby status updates to the server (capped at half of wal_sender_timeout).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub status_interval: Duration,
    /// Reconnect when nothing at all arrives from the server for this long (like wal_receiver_timeout):
    /// after half of it walwitness asks for a keepalive, so only a dead or frozen connection stays
    /// silent. 0 disables.
    #[arg(long, value_parser = parse_duration, default_value = "60s")]
    pub receive_timeout: Duration,
    /// logical_decoding_work_mem of the replication connection (e.g. 64kB, 64MB; server default 64MB):
    /// a transaction whose changes outgrow it is streamed to walwitness before it commits, and spooled
    /// on disk next to the log instead of on the server.
    #[arg(long, value_parser = parse_size)]
    pub logical_decoding_work_mem: Option<u64>,
    /// PostgreSQL 16+: stream every transaction while it is open (debug_logical_replication_streaming =
    /// immediate), so activity attribution sees each one live. Costs a spool file and more messages per
    /// transaction.
    #[arg(long)]
    pub stream_every_change: bool,
    /// Also log deletes of streamed or prepared transactions that then rolled back, as `aborted_delete`
    /// records closed by an `abort` record (evidence of attempts).
    #[arg(long)]
    pub include_aborted: bool,
    /// PostgreSQL 15+: decode prepared transactions at PREPARE (two-phase); their deletes are logged at
    /// COMMIT PREPARED with the gid. Marks the slot two-phase for good.
    #[arg(long)]
    pub two_phase: bool,
    /// How often to check that the publication still covers the watched tables (tests shorten it).
    #[arg(long, value_parser = parse_duration, default_value = "5s", hide = true)]
    pub coverage_check_interval: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnLag {
    Warn,
    Drop,
}

/// Sizes like PostgreSQL's: a number with an optional unit (B, kB, MB, GB, TB; 1024-based).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size (examples: 512MB, 10GB)"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1 << 10,
        "mb" | "m" => 1 << 20,
        "gb" | "g" => 1 << 30,
        "tb" | "t" => 1 << 40,
        other => return Err(format!("unknown size unit {other:?} (use B, kB, MB, GB or TB)")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AttributionSource {
    Trigger,
    Activity,
    None,
}

#[derive(Debug, Subcommand)]
pub enum AttributionCommand {
    /// Install the signed attribution trigger on the tables (idempotent).
    Install(AttributionArgs),
    /// Remove the triggers; the walwitness schema goes when no table uses it any more.
    Remove(AttributionArgs),
}

#[derive(Debug, Args)]
pub struct AttributionArgs {
    #[command(flatten)]
    pub conn: DsnArgs,
    #[arg(long = "table", required = true)]
    pub tables: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DoctorCliArgs {
    #[command(flatten)]
    pub conn: DsnArgs,
    /// Tables the capture would watch (repeatable).
    #[arg(long = "table")]
    pub tables: Vec<String>,
    /// A publication the capture would be given (capture --publication): checked (exists, publishes
    /// deletes and truncates, includes the tables, filters no rows) instead of the right to create one.
    #[arg(long)]
    pub publication: Option<String>,
    /// Attribution the capture would use (repeatable, as capture --attribution): `trigger` checks every
    /// prerequisite of the trigger (CREATE on the database, TRIGGER and ownership of the tables).
    #[arg(long = "attribution", value_enum, default_values_t = vec![AttributionSource::Activity])]
    pub attribution: Vec<AttributionSource>,
    /// `json`: one object on stdout, `{"ready", "exit", "checks": [{"level": "ok"|"warn"|"fail",
    /// "message"}]}`, instead of lines.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub format: ReportFormat,
}

#[derive(Debug, Args)]
pub struct CleanupCliArgs {
    #[command(flatten)]
    pub conn: DsnArgs,
    /// Drop without asking.
    #[arg(long)]
    pub yes: bool,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Rows the filler client writes into the cache table.
    #[arg(long, default_value_t = 300)]
    pub rows: u32,
    /// Keep the demo's log file at this path instead of a temporary file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct TailArgs {
    /// The log file (plain, gzip or zstd; -f needs a plain file).
    pub file: String,
    /// Keep reading as the file grows; wait for it to appear; reopen it when rotated or truncated.
    #[arg(short, long)]
    pub follow: bool,
    /// `json`: pass the records of complete transactions through as JSON lines instead.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub format: ReportFormat,
    /// The old spelling of `--format json` (kept for scripts).
    #[arg(long, hide = true)]
    pub json: bool,
    /// Keys shown per table of a transaction.
    #[arg(long, default_value_t = 3)]
    pub keys: usize,
    #[command(flatten)]
    pub limits: LimitArgs,
}

/// What bounds the readers' memory whatever the input.
#[derive(Debug, Args, Clone, Copy)]
pub struct LimitArgs {
    /// The longest line read (for replay --raw: the largest frame), e.g. 64MB, 1GB. A longer one stops
    /// reading as damage (exit 14), even with --lenient; memory stays within a few times this.
    #[arg(long, value_name = "SIZE", default_value = "64MB", value_parser = parse_line_limit)]
    pub max_line_length: usize,
}

impl Default for LimitArgs {
    fn default() -> Self {
        LimitArgs { max_line_length: DEFAULT_MAX_LINE }
    }
}

fn parse_line_limit(s: &str) -> Result<usize, String> {
    let n = parse_size(s)?;
    if n < 1024 {
        return Err(format!("{s:?} is too small (at least 1kB)"));
    }
    usize::try_from(n).map_err(|_| format!("{s:?} is too large"))
}

/// Which records `replay` writes; all given filters must match.
#[derive(Debug, Args, Default, Clone)]
pub struct FilterArgs {
    /// Commit time at or after this: RFC 3339 (2026-11-26T15:00:00Z), a local time (2026-11-26 15:00[:00],
    /// local unless +02:00 or Z follows), or that long before now (10m, 2h, 1d).
    #[arg(long)]
    pub since: Option<String>,
    /// Commit time before this (same forms as --since).
    #[arg(long)]
    pub until: Option<String>,
    /// Transaction id. Repeatable.
    #[arg(long)]
    pub xid: Vec<u64>,
    /// Backend PID of the session. Repeatable.
    #[arg(long)]
    pub pid: Vec<i64>,
    /// Session (login) user, or a glob (`*`, `?`) it must match. Repeatable.
    #[arg(long)]
    pub user: Vec<String>,
    /// application_name of the session, or a glob (`*`, `?`) it must match. Repeatable.
    #[arg(long)]
    pub app: Vec<String>,
    /// Client address, addr:port ([v6]:port), or `local` for Unix-socket clients. Repeatable.
    #[arg(long)]
    pub client: Vec<String>,
    /// Table (schema.table as for capture; public. assumed): matches the watched table, a partition, or a name it had (relation_renamed). Repeatable.
    #[arg(long)]
    pub table: Vec<String>,
    /// A glob (`*`, `?`) that any key value must match. Repeatable.
    #[arg(long)]
    pub key: Vec<String>,
    /// Record type: delete, truncate, commit, relation_renamed, capture_started, capture_stopped, gap, aborted_delete, aborted_truncate, abort. Repeatable.
    #[arg(long = "type")]
    pub kind: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Log files (plain, gzip or zstd), or - for standard input.
    #[arg(required = true)]
    pub files: Vec<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Read past damaged lines (counted on stderr) instead of stopping at the first one.
    #[arg(long)]
    pub lenient: bool,
    /// The files are raw captures (`capture --raw-out`): decode them into the records a live capture
    /// writes (transaction records only; filters and --report do not apply).
    #[arg(long)]
    pub raw: bool,
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Write the summary of `walwitness report` instead of the records (the filters apply).
    #[arg(long)]
    pub report: bool,
    /// Check the log's tamper-evident chain instead of writing records (the files are one log, in
    /// order). Exit 0: intact; 14: damaged (a line cannot be read); 17: tamper evidence (the first bad
    /// line is named); 18: no chain, or not all of the log is covered by it.
    #[arg(long, conflicts_with_all = ["raw", "report", "lenient"])]
    pub verify: bool,
    /// With --verify: the chain head written down elsewhere (printed at the capture's stop and by
    /// --verify; 64 hex digits, or at least the first 16). The log must contain it.
    #[arg(long, value_name = "HEX", requires = "verify")]
    pub expect_head: Option<String>,
    #[command(flatten)]
    pub report_opts: ReportOutputArgs,
}

#[derive(Debug, Args, Clone)]
pub struct ReportOutputArgs {
    /// Output format on stdout.
    #[arg(long, value_enum, default_value_t = ReportFormat::Text)]
    pub format: ReportFormat,
    /// Also write the report as one self-contained HTML page to this file.
    #[arg(long)]
    pub html: Option<PathBuf>,
}

/// `--format` of `report`, `replay --report`, `tail` and `doctor`: one spelling across commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ReportFormat {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Log files (plain, gzip or zstd), or - for standard input.
    #[arg(required = true)]
    pub files: Vec<String>,
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Read past damaged lines (counted on stderr) instead of stopping at the first one.
    #[arg(long)]
    pub lenient: bool,
    #[command(flatten)]
    pub limits: LimitArgs,
    #[command(flatten)]
    pub output: ReportOutputArgs,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 90s, 30m, 2h)"))
}

fn parse_lsn(s: &str) -> Result<Lsn, String> {
    s.parse::<Lsn>().map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(dsn: Option<&str>, file: Option<&std::path::Path>) -> DsnArgs {
        DsnArgs { dsn: dsn.map(str::to_owned), dsn_file: file.map(|p| p.to_owned()) }
    }

    /// Issue 13: the connection string (and its password) need not be on the command line, where
    /// every local user sees it in `ps`.
    #[test]
    fn dsn_from_option_file_stdin_or_environment() {
        let env = |k: &str| (k == DSN_ENV).then(|| "host=fromenv password=e".to_owned());
        let none = |_: &str| None;
        let mut stdin: &[u8] = b"host=fromstdin password=s\nignored\n";
        assert_eq!(args(Some("host=x"), None).resolve_with(&env, &mut stdin, false).unwrap(), "host=x");
        assert_eq!(args(None, None).resolve_with(&env, &mut stdin, false).unwrap(), "host=fromenv password=e");
        assert_eq!(args(None, None).resolve_with(&none, &mut stdin, false).unwrap(), "");
        let d = tempfile::tempdir().unwrap();
        let f = d.path().join("dsn");
        std::fs::write(&f, "  postgres://u:p%40ss@h/db  \n# comment\n").unwrap();
        assert_eq!(args(None, Some(&f)).resolve_with(&env, &mut stdin, false).unwrap(), "postgres://u:p%40ss@h/db");
        let dash = std::path::Path::new("-");
        assert_eq!(args(None, Some(dash)).resolve_with(&env, &mut stdin, false).unwrap(), "host=fromstdin password=s");
        let e = args(None, Some(&d.path().join("missing"))).resolve_with(&env, &mut stdin, false).unwrap_err();
        assert_eq!(e.exit, crate::error::Exit::Config);
        // --dsn and --dsn-file together are a usage error.
        assert!(Cli::try_parse_from(["walwitness", "doctor", "--dsn", "x", "--dsn-file", "f"]).is_err());
    }

    /// Issue 12: `--format json` is spelled the same for report, replay --report, tail and doctor;
    /// tail's old `--json` still works but is not advertised.
    #[test]
    fn one_format_json_spelling() {
        use clap::CommandFactory;
        for argv in [
            &["walwitness", "report", "f", "--format", "json"][..],
            &["walwitness", "replay", "--report", "f", "--format", "json"],
            &["walwitness", "tail", "f", "--format", "json"],
            &["walwitness", "tail", "f", "--json"],
            &["walwitness", "doctor", "--format", "json"],
        ] {
            assert!(Cli::try_parse_from(argv).is_ok(), "{argv:?}");
        }
        let Command::Tail(t) = Cli::try_parse_from(["walwitness", "tail", "f", "--format", "json"]).unwrap().command
        else {
            panic!("not tail")
        };
        assert_eq!(t.format, ReportFormat::Json);
        let mut cli = Cli::command();
        let help = cli.find_subcommand_mut("tail").unwrap().render_help().to_string();
        assert!(help.contains("--format") && !help.contains("--json"), "{help}");
    }

    #[test]
    fn help_says_where_else_the_dsn_can_come_from() {
        use clap::CommandFactory;
        let mut cli = Cli::command();
        for sub in ["capture", "doctor", "cleanup"] {
            let help = cli.find_subcommand_mut(sub).unwrap().render_help().to_string();
            assert!(help.contains("WALWITNESS_DSN") && help.contains("--dsn-file"), "{sub}: {help}");
        }
    }
}
