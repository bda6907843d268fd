//! `walwitness capture`: preflight, server objects, then the replication stream until a deliberate end.
//!
//! ```text
//! setup (SQL: checks, publication) ─▶ replication connection (slot, START_REPLICATION)
//!      ─▶ stream loop: frames ─▶ pgoutput decode ─▶ Assembler ─▶ Writer thread (write, fsync)
//!                         ▲                                            │ durable LSN
//!                         └──────── standby status updates ◀───────────┘
//! ```
mod acks;
pub mod names;
pub mod setup;
mod spooled;
mod status;
mod stream;

use std::path::PathBuf;
use std::time::Duration;

use crate::attribution::{activity, trigger, Attributor, Sources};
use crate::cli::AttributionSource;
use crate::decode::relations::WatchList;
use crate::decode::Assembler;
use crate::error::{from_pg, Exit, Failure};
use crate::pg::config::{redact_dsn, ConnSpec};
use crate::pg::conn::ReplicationConnection;
use crate::protocol::Lsn;
use crate::sink::chain::to_hex;
use crate::sink::record::{now_rfc3339, push_record, CaptureStarted, Gap, RepairedTail, FORMAT_VERSION};
use crate::sink::writer::{open_log, Chunk, Output, Recovery, Writer};
use names::{parse_table, quote_ident};
use setup::{PubOrigin, SlotState};
pub use status::human_bytes;
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
}

/// What a finished capture did.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub reason: StopReason,
    pub deletes: u64,
    pub truncates: u64,
    pub transactions: u64,
    pub last_lsn: Lsn,
    /// The log's chain head after `capture_stopped` (its chain value), to write down elsewhere.
    pub chain_head: Option<String>,
}

impl Outcome {
    pub fn exit(&self) -> Exit {
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
    let info = setup::server_info(&sql).await?;
    if opts.two_phase && info.version_num < 150000 {
        return Err(Failure::new(
            Exit::ServerSetup,
            format!("--two-phase needs PostgreSQL 15 or later (pgoutput protocol 3); this server is {}", info.version),
        ));
    }
    if opts.stream_every_change && info.version_num < 160000 {
        return Err(Failure::new(
            Exit::ServerSetup,
            format!(
                "--stream-every-change needs PostgreSQL 16 or later (debug_logical_replication_streaming); this server is {}: use --logical-decoding-work-mem 64kB to stream large transactions instead",
                info.version
            ),
        ));
    }
    let mut tables = Vec::new();
    for t in &opts.tables {
        let arg = parse_table(t).map_err(|e| Failure::new(Exit::Usage, e))?;
        let table = setup::resolve_table(&sql, &arg).await?;
        if !tables.iter().any(|x: &setup::Table| x.oid == table.oid) {
            tables.push(table);
        }
    }
    let slot = opts.slot.clone().unwrap_or_else(|| setup::default_slot(&info.database, &tables));
    let publication = opts.publication.clone().unwrap_or_else(|| setup::default_publication(&tables));
    let mut slot_state = setup::inspect_slot(&sql, &slot, &info.database, opts.two_phase).await?;

    // The log is opened (and its tail repaired) before the server is changed: an unwritable --out
    // must not leave a slot behind.
    let (file, recovery) = match &opts.out {
        Output::File(p) => {
            let (f, r) = open_log(p).map_err(|e| Failure::new(Exit::Output, e.to_string()))?;
            (Some(f), r)
        }
        Output::Stdout => (None, Recovery::default()),
    };
    if recovery.cut_bytes > 0 {
        eprintln!(
            "walwitness: repaired the log: cut {} bytes ({} lines) of an unfinished transaction or torn write at its end, after its last chain value; they will be received again (size and SHA-256 of the cut bytes are recorded in capture_started.repaired_tail)",
            recovery.cut_bytes, recovery.cut_lines
        );
    }
    if let (Some(h), true) = (recovery.chain_head, opts.progress) {
        eprintln!("walwitness: continuing the log's tamper-evident chain from head {}", to_hex(&h));
    }

    // Coverage the log cannot have: recorded as a gap record, never hidden.
    let mut gap: Option<(Lsn, &'static str)> = None;
    if slot_state == SlotState::Lost {
        eprintln!(
            "walwitness: warning: replication slot {slot} was invalidated by the server (wal_status = lost): the WAL it needed is gone, so deletes since it last ran cannot be recovered; recreating it and recording a gap"
        );
        setup::drop_slot(&sql, &slot).await?;
        slot_state = SlotState::Absent;
        gap = Some((recovery.last_run.as_ref().map(|r| r.covered_to).unwrap_or_default(), "slot_invalidated"));
    } else if slot_state == SlotState::Absent {
        if let Some(run) = recovery.last_run.as_ref().filter(|r| r.slot == slot && r.left_slot()) {
            eprintln!(
                "walwitness: warning: replication slot {slot}, which the previous run left to resume from, is gone (dropped by someone, or by the server): deletes after LSN {} until now are not in the log; recreating it and recording a gap",
                run.covered_to
            );
            gap = Some((run.covered_to, "slot_missing"));
        }
    }

    let (pub_origin, warnings) =
        setup::ensure_publication(&sql, &publication, opts.publication.is_some(), &tables).await?;
    for w in warnings {
        eprintln!("walwitness: warning: {w}");
    }

    let sql_tables: Vec<String> = tables.iter().map(setup::Table::sql_name).collect();
    let mut attributor = Attributor::default();
    if opts.attribution.trigger {
        trigger::install(&sql, &sql_tables).await?;
        attributor.verifier = Some(std::sync::Arc::new(trigger::load_verifier(&sql).await?));
        say(opts.progress, &format!("walwitness: attribution trigger installed on {}", sql_tables.join(", ")));
    }
    let mut sampler = None;
    if opts.attribution.activity {
        if !activity::can_read_all_stats(&sql).await {
            eprintln!(
                "walwitness: warning: role {} is not a member of pg_read_all_stats: for other roles' sessions only pid, user and application are visible (no statement, client address or start time); GRANT pg_read_all_stats TO {}",
                info.user,
                quote_ident(&info.user)
            );
        }
        let map = std::sync::Arc::new(activity::ActivityMap::new());
        sampler = Some(activity::spawn_sampler(spec.clone(), map.clone(), opts.activity_interval));
        attributor.activity = Some(map);
    }

    let result = capture_with_objects(
        signals,
        &opts,
        &spec,
        &sql,
        &info,
        &tables,
        &slot,
        &publication,
        slot_state,
        file,
        recovery,
        attributor,
        gap,
    )
    .await;
    if let Some(s) = sampler {
        s.abort();
    }
    // The server may have restarted while we streamed, or the path to it frozen (the stream then
    // reconnected on its own): cleanup needs a connection that answers.
    let sql = if !answers(&sql).await {
        std::sync::Arc::new(
            crate::pg::connect_sql(&spec)
                .await
                .map_err(|e| from_pg(&format!("cannot reconnect to {target} to clean up"), e))?,
        )
    } else {
        sql
    };
    if opts.attribution.trigger && result.is_ok() && !opts.keep_slot {
        trigger::remove(&sql, &sql_tables).await?;
    }

    match &result {
        Ok(o) if !opts.keep_slot || o.reason == StopReason::MaxRetainedWal => {
            // A deliberate end: leave nothing behind.
            let dropped_slot = setup::drop_slot(&sql, &slot).await;
            let dropped_pub = if pub_origin != PubOrigin::Given {
                setup::drop_publication(&sql, &publication).await
            } else {
                Ok(())
            };
            dropped_slot?;
            dropped_pub?;
            say(opts.progress, &format!("walwitness: dropped slot {slot}{}", if pub_origin != PubOrigin::Given { format!(" and publication {publication}") } else { String::new() }));
        }
        Ok(_) => say(opts.progress, &format!("walwitness: kept slot {slot} and publication {publication} (--keep-slot); run the same command to resume")),
        Err(_) if pub_origin == PubOrigin::Created => {
            // Nothing was captured into a slot that does not exist yet: don't leave a fresh publication.
            if matches!(setup::inspect_slot(&sql, &slot, &info.database, opts.two_phase).await, Ok(SlotState::Absent)) {
                let _ = setup::drop_publication(&sql, &publication).await;
            }
        }
        Err(_) => {}
    }
    result
}

#[allow(clippy::too_many_arguments)]
async fn capture_with_objects(
    signals: stream::Signals,
    opts: &CaptureOptions,
    spec: &ConnSpec,
    sql: &std::sync::Arc<tokio_postgres::Client>,
    info: &setup::ServerInfo,
    tables: &[setup::Table],
    slot: &str,
    publication: &str,
    slot_state: SlotState,
    file: Option<std::fs::File>,
    recovery: Recovery,
    attributor: Attributor,
    gap: Option<(Lsn, &'static str)>,
) -> Result<Outcome, Failure> {
    let target = spec.describe();
    // Spools of streamed and prepared transactions: next to the log, leftovers of a crashed run removed.
    let spool_dir = match &opts.out {
        Output::File(p) => crate::sink::spool::SpoolDir::beside(p),
        Output::Stdout => crate::sink::spool::SpoolDir::temporary(),
    }
    .map_err(|e| {
        Failure::new(
            Exit::Output,
            format!(
                "cannot prepare the spool directory for streamed transactions (next to the log, <out>.spool/): {e}"
            ),
        )
    })?;
    let startup = spooled::startup_params(opts);
    let params: Vec<(&str, &str)> = startup.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut repl = ReplicationConnection::connect(spec, &params)
        .await
        .map_err(|e| from_pg(&format!("cannot open a replication connection to {target}"), e))?;
    let ident = repl.simple_query("IDENTIFY_SYSTEM").await.map_err(|e| from_pg("IDENTIFY_SYSTEM failed", e))?;
    let system_identifier = ident.rows.first().and_then(|r| r.first().cloned().flatten()).unwrap_or_default();

    let (created, slot_start) = match slot_state {
        // A lost slot was dropped (and a gap recorded) before this point.
        SlotState::Absent | SlotState::Lost => {
            let cmd = if info.version_num >= 150000 {
                // TWO_PHASE at creation: prepared transactions are decoded at PREPARE from the start.
                let two_phase = if opts.two_phase { ", TWO_PHASE" } else { "" };
                format!(
                    "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT 'nothing'{two_phase})",
                    quote_ident(slot)
                )
            } else {
                format!("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput NOEXPORT_SNAPSHOT", quote_ident(slot))
            };
            let r = repl
                .simple_query(&cmd)
                .await
                .map_err(|e| from_pg(&format!("cannot create replication slot {slot}"), e))?;
            let point = r.rows.first().and_then(|row| row.get(1).cloned().flatten()).unwrap_or_default();
            (true, point.parse::<Lsn>().unwrap_or_default())
        }
        SlotState::Reusable { confirmed_flush } => {
            (false, confirmed_flush.and_then(|s| s.parse::<Lsn>().ok()).unwrap_or_default())
        }
    };
    let log_mark = recovery.last_commit_end.unwrap_or_default();
    // With two-phase, a transaction prepared before the log's last commit and still waiting for COMMIT
    // PREPARED is only sent again if decoding starts before its PREPARE: start from the slot's position
    // (kept before every waiting PREPARE, see `spooled`); what the log already holds is skipped.
    let start_lsn = if opts.two_phase { slot_start } else { slot_start.max(log_mark) };

    let mut target = stream::StreamTarget {
        spec: spec.clone(),
        slot: slot.to_owned(),
        publication: publication.to_owned(),
        proto: match info.version_num {
            v if v >= 160000 => 4,
            v if v >= 150000 => 3,
            _ => 2,
        },
        reconnect_attempts: opts.reconnect_attempts,
        reconnect_max_delay: opts.reconnect_max_delay,
        two_phase: opts.two_phase,
        messages: opts.attribution.trigger,
        startup,
        stream_abort_has_lsn: false,
    };
    target
        .start(&mut repl, start_lsn)
        .await
        .map_err(|e| from_pg(&format!("cannot start replication from slot {slot}"), e))?;
    let proto = target.proto;

    let writer = Writer::start(&opts.out, file, recovery.len)
        .map_err(|e| Failure::new(Exit::Output, format!("cannot start the log writer: {e}")))?;
    let table_names: Vec<String> = tables.iter().map(setup::Table::qualified).collect();
    let mut first = bytes::BytesMut::new();
    push_record(
        &mut first,
        &CaptureStarted {
            kind: "capture_started",
            time: now_rfc3339(),
            slot,
            publication,
            tables: &table_names,
            start_lsn,
            server_version: &info.version,
            system_identifier: &system_identifier,
            database: &info.database,
            walwitness_version: env!("CARGO_PKG_VERSION"),
            format_version: FORMAT_VERSION,
            proto_version: proto,
            chain_prev: recovery.chain_head.as_ref().map(to_hex),
            repaired_tail: recovery.cut_sha256.as_ref().map(|h| RepairedTail {
                cut_bytes: recovery.cut_bytes,
                cut_lines: recovery.cut_lines,
                sha256: to_hex(h),
            }),
        },
    );
    if let Some((from_lsn, reason)) = gap {
        push_record(&mut first, &Gap { kind: "gap", time: now_rfc3339(), slot, from_lsn, to_lsn: start_lsn, reason });
    }
    writer
        .send(Chunk::Append { data: first.freeze(), boundary: true, ack: None })
        .await
        .map_err(|e| Failure::new(Exit::Output, e))?;

    if opts.progress {
        let redacted = redact_dsn(&opts.dsn);
        eprintln!(
            "walwitness: capturing DELETE and TRUNCATE on {} in database {} ({})",
            table_names.join(", "),
            info.database,
            info.version
        );
        eprintln!("  slot:        {slot} ({})", if created { "created" } else { "reused: resuming" });
        eprintln!("  publication: {publication}");
        eprintln!("  start LSN:   {start_lsn} (pgoutput protocol version {proto})");
        match &opts.out {
            Output::File(p) => eprintln!("  log:         {}", p.display()),
            Output::Stdout => eprintln!("  log:         standard output"),
        }
        eprintln!(
            "  if this process dies, the slot keeps WAL until you resume or remove it:\n    psql {} -c \"SELECT pg_drop_replication_slot('{slot}')\" -c {}",
            shell_quote(&redacted),
            shell_quote(&format!("DROP PUBLICATION IF EXISTS {}", quote_ident(publication)))
        );
    }

    let mut watch = WatchList::new();
    for t in tables {
        watch.add(&t.schema, &t.name, t.primary_key.clone());
    }
    let mut spooled =
        spooled::Spooled::new(spool_dir, opts.include_aborted, opts.two_phase, attributor.activity.clone());
    // Prepared transactions are kept on disk next to the log, so the slot may be acknowledged past a
    // waiting PREPARE (the server can shut down, and the next run finds them); not for standard output.
    if opts.two_phase && matches!(opts.out, Output::File(_)) {
        let damaged = spooled.durable_prepared().map_err(|e| {
            Failure::new(
                Exit::Output,
                format!("cannot read the prepared transactions kept in the spool directory: {e}"),
            )
        })?;
        for d in damaged {
            eprintln!("walwitness: warning: a prepared transaction kept by an earlier run cannot be used ({d}); if it commits, its deletes will be missing from the log (the files stay for inspection)");
        }
    }
    let assembler = Assembler::new(watch, log_mark, attributor);
    let wal_sender_timeout = sql
        .query_one("SELECT setting::bigint * CASE unit WHEN 's' THEN 1000 ELSE 1 END FROM pg_settings WHERE name = 'wal_sender_timeout'", &[])
        .await
        .ok()
        .map(|r| r.get::<_, i64>(0))
        .filter(|ms| *ms > 0)
        .map(|ms| Duration::from_millis(ms as u64));
    let status_every = match wal_sender_timeout {
        Some(t) => opts.status_interval.min(t / 2),
        None => opts.status_interval,
    };
    let retained = status::spawn_retained_wal_probe(spec.clone(), slot.to_owned());
    let raw = match &opts.raw_out {
        Some(p) => {
            let header = crate::sink::raw::RawHeader {
                tables: tables
                    .iter()
                    .map(|t| crate::sink::raw::RawTable {
                        schema: t.schema.clone(),
                        table: t.name.clone(),
                        primary_key: t.primary_key.clone(),
                    })
                    .collect(),
                slot: slot.to_owned(),
                publication: publication.to_owned(),
                proto_version: proto,
            };
            Some(crate::sink::raw::RawWriter::open(p, &header).map_err(|e| {
                Failure::new(Exit::Output, format!("cannot open the raw capture file {}: {e}", p.display()))
            })?)
        }
        None => None,
    };
    let loop_opts = stream::LoopOptions {
        raw,
        keep_slot: opts.keep_slot,
        max_retained_wal: opts.max_retained_wal,
        drop_on_lag: opts.drop_on_lag,
        slot: slot.to_owned(),
        publication: publication.to_owned(),
        endpos: opts.endpos,
        endpos_later: opts.endpos_later.clone(),
        duration: opts.duration,
        status_every,
        progress: opts.progress,
        progress_interval: opts.progress_interval,
        receive_timeout: opts.receive_timeout,
        spooled,
    };
    let outcome = stream::run(signals, target, repl, writer, assembler, loop_opts, retained, start_lsn).await;
    outcome
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

pub fn output_from_arg(out: &str) -> Output {
    if out == "-" {
        Output::Stdout
    } else {
        Output::File(PathBuf::from(out))
    }
}

pub fn options_from_args(a: crate::cli::CaptureArgs, progress: bool) -> CaptureOptions {
    CaptureOptions {
        dsn: a.dsn,
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
    }
}

/// Whether a connection still answers within a few seconds (a closed one, or one behind a stalled
/// network path, does not: cleanup through it would fail or wait forever).
async fn answers(sql: &tokio_postgres::Client) -> bool {
    !sql.is_closed()
        && tokio::time::timeout(std::time::Duration::from_secs(5), sql.simple_query("SELECT 1"))
            .await
            .is_ok_and(|r| r.is_ok())
}
