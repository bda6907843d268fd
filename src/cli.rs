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
    #[command(subcommand)]
    pub command: Command,
}

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
}

#[derive(Debug, Args)]
pub struct CaptureArgs {
    /// Connection string: libpq key=value or a postgres:// URL. PG* environment variables and ~/.pgpass apply.
    #[arg(long, default_value = "")]
    pub dsn: String,
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
    #[arg(long, default_value = "")]
    pub dsn: String,
    #[arg(long = "table", required = true)]
    pub tables: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DoctorCliArgs {
    #[arg(long, default_value = "")]
    pub dsn: String,
    /// Tables the capture would watch (repeatable).
    #[arg(long = "table")]
    pub tables: Vec<String>,
}

#[derive(Debug, Args)]
pub struct CleanupCliArgs {
    #[arg(long, default_value = "")]
    pub dsn: String,
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
    /// Pass the records of complete transactions through as JSON lines instead.
    #[arg(long)]
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
        LimitArgs { max_line_length: crate::read::log::DEFAULT_MAX_LINE }
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
    /// Commit time at or after this (RFC 3339, e.g. 2026-11-26T15:00:00Z).
    #[arg(long)]
    pub since: Option<String>,
    /// Commit time before this (RFC 3339).
    #[arg(long)]
    pub until: Option<String>,
    /// Transaction id. Repeatable.
    #[arg(long)]
    pub xid: Vec<u64>,
    /// Backend PID of the session. Repeatable.
    #[arg(long)]
    pub pid: Vec<i64>,
    /// Session (login) user. Repeatable.
    #[arg(long)]
    pub user: Vec<String>,
    /// application_name of the session. Repeatable.
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
