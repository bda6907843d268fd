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
    /// Start a throwaway local PostgreSQL, delete rows from a Django-style cache table, and show the capture.
    Demo(DemoArgs),
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
pub struct DemoArgs {
    /// Rows the filler client writes into the cache table.
    #[arg(long, default_value_t = 300)]
    pub rows: u32,
    /// Keep the demo's log file at this path instead of a temporary file.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 90s, 30m, 2h)"))
}

fn parse_lsn(s: &str) -> Result<Lsn, String> {
    s.parse::<Lsn>().map_err(|e| e.to_string())
}
