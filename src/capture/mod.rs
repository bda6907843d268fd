//! `walwitness capture`: preflight, server objects, then the replication stream until a deliberate end.
//!
//! ```text
//! setup (SQL: checks, publication) ─▶ replication connection (slot, START_REPLICATION)
//!      ─▶ stream loop: frames ─▶ pgoutput decode ─▶ Assembler ─▶ Writer thread (write, fsync)
//!                         ▲                                            │ durable LSN
//!                         └──────── standby status updates ◀───────────┘
//! ```
//!
//! The steps, in order: `preflight` (checks; the log opened), `objects` (publication, attribution),
//! `start` (slot, resume plan, first records, the stream loop in `stream`), `stop` (teardown, the last
//! record).
mod acks;
pub mod coverage;
mod objects;
mod partitions;
mod preflight;
pub mod resume;
mod spooled;
mod start;
mod status;
mod stop;
mod stream;
pub mod teardown;

use std::path::PathBuf;
use std::time::Duration;

use crate::attribution::Sources;
use crate::cli::AttributionSource;
use crate::error::{Exit, Failure};
use crate::pg::config::ConnSpec;
use crate::pg::error::from_pg;
use crate::pg::leftover::Leftover;
use crate::protocol::Lsn;
use crate::sink::writer::Output;
pub use stream::StopReason;

#[derive(Debug, Clone)]
pub struct CaptureOptions {
    pub dsn: String,
    pub tables: Vec<String>,
    pub out: Output,
    pub slot: Option<String>,
    pub publication: Option<String>,
    pub keep_slot: bool,
    pub duration: Option<Duration>,
    pub endpos: Option<Lsn>,
    /// For callers embedding a capture (the demo): an end position decided while it runs.
    pub endpos_later: Option<tokio::sync::watch::Receiver<Option<Lsn>>>,
    pub progress_interval: Duration,
    pub status_interval: Duration,
    /// Show a status line / progress lines on stderr.
    pub progress: bool,
    pub attribution: Sources,
    pub activity_interval: Duration,
    pub max_retained_wal: Option<u64>,
    pub drop_on_lag: bool,
    pub raw_out: Option<PathBuf>,
    /// Consecutive failed reconnection attempts before giving up (0: never reconnect).
    pub reconnect_attempts: u32,
    /// Cap of the exponential backoff between attempts.
    pub reconnect_max_delay: Duration,
    /// Reconnect after this long without anything from the server (`None`: never).
    pub receive_timeout: Option<Duration>,
    /// logical_decoding_work_mem for the replication connection, in bytes.
    pub logical_decoding_work_mem: Option<u64>,
    /// debug_logical_replication_streaming = immediate (16+).
    pub stream_every_change: bool,
    /// Write deletes of aborted streamed/prepared transactions as `aborted_delete`.
    pub include_aborted: bool,
    /// Two-phase decoding (15+).
    pub two_phase: bool,
    /// How often the publication's coverage of the watched tables is checked while the capture runs.
    pub coverage_interval: Duration,
}

/// What a finished capture did.
#[derive(Debug)]
pub struct Outcome {
    pub reason: StopReason,
    pub deletes: u64,
    pub truncates: u64,
    pub transactions: u64,
    pub last_lsn: Lsn,
    /// What the deliberate end could not remove (also in `capture_stopped.left_behind`).
    pub left_behind: Vec<Leftover>,
    /// The log's chain head after `capture_stopped` (its chain value), to write down elsewhere.
    pub chain_head: Option<String>,
    /// The writer's chain state at its close, continued by `capture_stopped`.
    pub chain: crate::sink::chain::Chainer,
}

impl Outcome {
    pub fn exit(&self) -> Exit {
        if !self.left_behind.is_empty() {
            return Exit::CleanupIncomplete;
        }
        match self.reason {
            StopReason::Sigint => Exit::Sigint,
            StopReason::Sigterm => Exit::Sigterm,
            StopReason::Endpos | StopReason::Duration => Exit::Ok,
            StopReason::MaxRetainedWal => Exit::LagLimit,
        }
    }
}

fn say(progress: bool, msg: &str) {
    if progress {
        eprintln!("{msg}");
    }
}

pub async fn run(opts: CaptureOptions) -> Result<Outcome, Failure> {
    let signals = stream::Signals::install()?;
    let spec = ConnSpec::parse(&opts.dsn).map_err(|e| from_pg("invalid --dsn", e))?;
    let target = spec.describe();
    let sql = std::sync::Arc::new(
        crate::pg::connect_sql(&spec).await.map_err(|e| from_pg(&format!("cannot connect to {target}"), e))?,
    );

    // Checks first: refusing must leave the server untouched.
    let mut checked = preflight::check(&opts, &sql).await?;
    let log = preflight::open_output(&opts)?;
    let invalidated = objects::replace_lost_slot(&sql, &mut checked).await?;
    let objects::Objects { pub_origin, expect, coverage_start, attributor, sampler, sql_tables } =
        objects::set_up(&opts, &spec, &sql, &checked).await?;

    let result = start::capture_with_objects(
        signals,
        &opts,
        &spec,
        &sql,
        &checked,
        log,
        attributor,
        invalidated,
        (expect, coverage_start),
    )
    .await;
    if let Some(s) = sampler {
        s.abort();
    }
    let (outcome, log_tail) = match result {
        Ok(o) => o,
        Err(e) => {
            objects::drop_unused_publication(&opts, &spec, &sql, &checked, pub_origin).await;
            return Err(e);
        }
    };
    stop::deliberate_end(&opts, &spec, &sql, &checked, (pub_origin, &sql_tables), outcome, log_tail).await
}

pub fn output_from_arg(out: &str) -> Output {
    if out == "-" {
        Output::Stdout
    } else {
        Output::File(PathBuf::from(out))
    }
}

pub fn options_from_args(a: crate::cli::CaptureArgs, progress: bool) -> Result<CaptureOptions, Failure> {
    Ok(CaptureOptions {
        dsn: a.conn.resolve()?,
        tables: a.tables,
        out: output_from_arg(&a.out),
        slot: a.slot,
        publication: a.publication,
        keep_slot: a.keep_slot,
        duration: a.duration,
        endpos: a.endpos,
        endpos_later: None,
        progress_interval: a.progress_interval,
        status_interval: a.status_interval,
        progress,
        attribution: Sources {
            trigger: a.attribution.contains(&AttributionSource::Trigger),
            activity: a.attribution.contains(&AttributionSource::Activity),
        },
        activity_interval: a.activity_interval,
        reconnect_attempts: a.reconnect_attempts,
        max_retained_wal: a.max_retained_wal,
        raw_out: a.raw_out,
        drop_on_lag: a.on_lag == crate::cli::OnLag::Drop,
        reconnect_max_delay: a.reconnect_max_delay,
        receive_timeout: Some(a.receive_timeout).filter(|d| !d.is_zero()),
        logical_decoding_work_mem: a.logical_decoding_work_mem,
        stream_every_change: a.stream_every_change,
        include_aborted: a.include_aborted,
        two_phase: a.two_phase,
        coverage_interval: a.coverage_check_interval,
    })
}
