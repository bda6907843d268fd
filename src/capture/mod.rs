//! `walwitness capture`: preflight, server objects, then the replication stream until a deliberate end.
//!
//! ```text
//! setup (SQL: checks, publication) ─▶ replication connection (slot, START_REPLICATION)
//!      ─▶ stream loop: frames ─▶ pgoutput decode ─▶ Assembler ─▶ Writer thread (write, fsync)
//!                         ▲                                            │ durable LSN
//!                         └──────── standby status updates ◀───────────┘
//! ```
mod acks;
pub mod coverage;
mod partitions;
pub mod resume;
mod spooled;
mod status;
mod stream;
pub mod teardown;

use std::path::PathBuf;
use std::time::Duration;

use crate::attribution::{activity, trigger, Attributor, Sources};
use crate::cli::AttributionSource;
use crate::decode::relations::WatchList;
use crate::decode::Assembler;
use crate::error::{from_pg, Exit, Failure};
use crate::pg::catalog as setup;
use crate::pg::config::{redact_dsn, ConnSpec};
use crate::pg::conn::ReplicationConnection;
use crate::pg::leftover::{self, Leftover};
use crate::pg::names::{parse_table, quote_ident};
use crate::protocol::Lsn;
use crate::sink::chain::to_hex;
use crate::sink::record::{
    now_rfc3339, push_record, CaptureStarted, CaptureStopped, Gap, RepairedTail, WatchedRelation, FORMAT_VERSION,
};
use crate::sink::writer::LastRun;
use crate::sink::writer::{open_log, Chunk, Output, Recovery, Writer};
use setup::{PubOrigin, SlotState};
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
    // Partitions belong to their watched table; inheritance children are tables of their own.
    let mut partitions: Vec<(u32, Vec<setup::Partition>)> = Vec::new();
    for t in &tables {
        let (parts, children) = setup::members(&sql, t).await?;
        if !children.is_empty() {
            eprintln!(
                "walwitness: warning: {} has inheritance children ({}): rows deleted from them (also by DELETE FROM {}) are not logged; watch them with their own --table",
                t.qualified(),
                children.join(", "),
                t.sql_name()
            );
        }
        partitions.push((t.oid, parts));
    }
    // What trigger attribution installs, this role must be able to remove again at the end.
    if opts.attribution.trigger {
        let names: Vec<String> = tables.iter().map(setup::Table::sql_name).collect();
        trigger::check_removable(&sql, &names).await?;
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
    if let (Some(mode), Output::File(p)) = (recovery.exposed_mode, &opts.out) {
        eprintln!(
            "walwitness: warning: the log {} can be read by other users (mode {mode:04o}); it holds the keys of deleted rows and the statements that deleted them: chmod 600 it",
            p.display()
        );
    }
    // Spools of streamed and prepared transactions: next to the log, leftovers of a crashed run removed.
    // Like the log, checked before the server is changed (a hostile directory is refused).
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
    if recovery.cut_bytes > 0 {
        eprintln!(
            "walwitness: repaired the log: cut {} bytes ({} lines) of an unfinished transaction or torn write at its end, after its last chain value; they will be received again (size and SHA-256 of the cut bytes are recorded in capture_started.repaired_tail)",
            recovery.cut_bytes, recovery.cut_lines
        );
    }
    if let (Some(h), true) = (recovery.chain_head, opts.progress) {
        eprintln!("walwitness: continuing the log's tamper-evident chain from head {}", to_hex(&h));
    }

    // A slot the server invalidated cannot be resumed: recreated, and a gap recorded (`resume`).
    let invalidated = slot_state == SlotState::Lost;
    if invalidated {
        eprintln!(
            "walwitness: warning: replication slot {slot} was invalidated by the server (wal_status = lost): the WAL it needed is gone, so deletes since it last ran cannot be recovered; recreating it and recording a gap"
        );
        setup::drop_slot(&sql, &slot).await?;
        slot_state = SlotState::Absent;
    }

    // Read before the publication is checked: coverage lost after that check opens a gap from here.
    let coverage_start = coverage::current_lsn(&sql).await.unwrap_or_default();
    let (pub_origin, warnings) =
        setup::ensure_publication(&sql, &publication, opts.publication.is_some(), &tables).await?;
    for w in warnings {
        crate::term::eprint_line(&format!("walwitness: warning: {w}"));
    }
    // Refused after this point: a publication this run created must not stay behind.
    let drop_created = |e: Failure| {
        let sql = sql.clone();
        let publication = publication.clone();
        async move {
            if pub_origin == PubOrigin::Created {
                let _ = setup::drop_publication(&sql, &publication).await;
            }
            e
        }
    };
    let expect = match coverage_at_start(&sql, &publication, &tables, info.version_num).await {
        Ok(e) => e,
        Err(e) => return Err(drop_created(e).await),
    };

    let sql_tables: Vec<String> = tables.iter().map(setup::Table::sql_name).collect();
    // The names a statement may use for the watched rows: the tables and their partitions.
    let watched_names: Vec<(String, String)> = tables
        .iter()
        .map(|t| (t.schema.clone(), t.name.clone()))
        .chain(partitions.iter().flat_map(|(_, ps)| ps.iter().map(|p| (p.schema.clone(), p.name.clone()))))
        .collect();
    let (attributor, sampler) = match attribution(&opts, &spec, &sql, &info, &sql_tables, watched_names).await {
        Ok(a) => a,
        Err(e) => return Err(drop_created(e).await),
    };

    let result = capture_with_objects(
        signals,
        &opts,
        &spec,
        &sql,
        &info,
        &tables,
        &partitions,
        &slot,
        &publication,
        slot_state,
        file,
        recovery,
        spool_dir,
        attributor,
        invalidated,
        (expect, coverage_start),
    )
    .await;
    if let Some(s) = sampler {
        s.abort();
    }
    let (mut outcome, log_tail) = match result {
        Ok(o) => o,
        Err(e) => {
            if pub_origin == PubOrigin::Created {
                // Nothing was captured into a slot that does not exist yet: don't leave a fresh publication.
                if let Some(sql) = usable(&sql, &spec).await {
                    if matches!(
                        setup::inspect_slot(&sql, &slot, &info.database, opts.two_phase).await,
                        Ok(SlotState::Absent)
                    ) {
                        let _ = setup::drop_publication(&sql, &publication).await;
                    }
                }
            }
            return Err(e);
        }
    };

    // A deliberate end. The server may have restarted while we streamed, or the path to it frozen (the
    // stream then reconnected on its own): cleanup needs a connection that answers. Every step is
    // tried whatever the others did, and what stays is said (`teardown`).
    let keep = opts.keep_slot && outcome.reason != StopReason::MaxRetainedWal;
    let left = if keep {
        say(opts.progress, &format!("walwitness: kept slot {slot} and publication {publication} (--keep-slot); run the same command to resume"));
        Vec::new()
    } else {
        let plan = teardown::Plan {
            triggers: opts.attribution.trigger.then_some(sql_tables.as_slice()),
            slot: Some(&slot),
            publication: (pub_origin != PubOrigin::Given).then_some(publication.as_str()),
        };
        let conn = usable(&sql, &spec).await;
        let unreachable = format!("the server at {target} could not be reached to remove it");
        let left = teardown::run(conn.as_deref(), &plan, &unreachable).await;
        if left.is_empty() {
            say(
                opts.progress,
                &format!(
                    "walwitness: dropped slot {slot}{}",
                    if pub_origin != PubOrigin::Given {
                        format!(" and publication {publication}")
                    } else {
                        String::new()
                    }
                ),
            );
        }
        left
    };
    let slot_kept = keep || left.iter().any(|l| l.object == "slot");
    let written = write_stopped(&opts.out, log_tail, &mut outcome, &slot, slot_kept, &left);
    if !left.is_empty() {
        eprint!(
            "walwitness: error: {}",
            leftover::explain("the capture stopped, but could not remove everything it set up", &left)
        );
    }
    outcome.left_behind = left;
    written?;
    Ok(outcome)
}

/// `sql` if it still answers, else a new connection (`None` if none can be had).
async fn usable(
    sql: &std::sync::Arc<tokio_postgres::Client>,
    spec: &ConnSpec,
) -> Option<std::sync::Arc<tokio_postgres::Client>> {
    if answers(sql).await {
        return Some(sql.clone());
    }
    match crate::pg::connect_sql(spec).await {
        Ok(c) => Some(std::sync::Arc::new(c)),
        Err(e) => {
            eprintln!("walwitness: cannot reconnect to {} to clean up: {e}", spec.describe());
            None
        }
    }
}

/// Closes the log with `capture_stopped` — written after the cleanup, so `slot_kept` and `left_behind`
/// say what is really left — and, when the slot was given up over `--max-retained-wal`, the open gap.
fn write_stopped(
    out: &Output,
    log_tail: Option<std::fs::File>,
    outcome: &mut Outcome,
    slot: &str,
    slot_kept: bool,
    left: &[Leftover],
) -> Result<(), Failure> {
    use std::io::{Seek, Write};
    let mut rec = bytes::BytesMut::new();
    push_record(
        &mut rec,
        &CaptureStopped {
            kind: "capture_stopped",
            time: now_rfc3339(),
            reason: outcome.reason.as_str(),
            last_lsn: outcome.last_lsn,
            slot_kept,
            left_behind: left,
        },
    );
    if outcome.reason == StopReason::MaxRetainedWal {
        // Open: coverage resumes only when a capture starts again, which closes it.
        let detail = if slot_kept {
            format!(
                "slot {slot} retained more WAL than --max-retained-wal and was given up (--on-lag drop), but could not be dropped (see capture_stopped.left_behind): deletes after LSN {} are not logged until a capture starts again",
                outcome.last_lsn
            )
        } else {
            format!(
                "slot {slot} retained more WAL than --max-retained-wal and was dropped (--on-lag drop): deletes after LSN {} are not logged until a capture starts again",
                outcome.last_lsn
            )
        };
        push_record(&mut rec, &Gap::opened(slot, "max_retained_wal", None, outcome.last_lsn, &detail));
    }
    // Through the chain, like every line before it; the head is then this record's chain value.
    let mut chained = Vec::with_capacity(rec.len() + 128);
    outcome.chain.feed(&rec, &mut chained);
    if let Some(h) = outcome.chain.head() {
        outcome.chain_head = Some(to_hex(&h));
    }
    let rec = chained;
    let result = match (out, log_tail) {
        (Output::File(_), Some(mut f)) => {
            f.seek(std::io::SeekFrom::End(0)).and_then(|_| f.write_all(&rec)).and_then(|_| f.sync_data())
        }
        (Output::File(_), None) => Ok(()),
        (Output::Stdout, _) => {
            let mut o = std::io::stdout().lock();
            o.write_all(&rec).and_then(|_| o.flush())
        }
    };
    // A reader of standard output that went away does not make the stop a failure.
    match result {
        Err(e) if matches!(out, Output::Stdout) && e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure::new(Exit::Output, format!("cannot write capture_stopped to the log: {e}"))),
        Ok(()) => Ok(()),
    }
}

#[allow(clippy::too_many_arguments)]
async fn capture_with_objects(
    signals: stream::Signals,
    opts: &CaptureOptions,
    spec: &ConnSpec,
    sql: &std::sync::Arc<tokio_postgres::Client>,
    info: &setup::ServerInfo,
    tables: &[setup::Table],
    partitions: &[(u32, Vec<setup::Partition>)],
    slot: &str,
    publication: &str,
    slot_state: SlotState,
    file: Option<std::fs::File>,
    recovery: Recovery,
    spool_dir: crate::sink::spool::SpoolDir,
    attributor: Attributor,
    invalidated: bool,
    (expect, coverage_start): (coverage::Expect, Lsn),
) -> Result<(Outcome, Option<std::fs::File>), Failure> {
    let target = spec.describe();
    let startup = spooled::startup_params(opts);
    let params: Vec<(&str, &str)> = startup.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut repl = ReplicationConnection::connect(spec, &params)
        .await
        .map_err(|e| from_pg(&format!("cannot open a replication connection to {target}"), e))?;
    let ident = repl.simple_query("IDENTIFY_SYSTEM").await.map_err(|e| from_pg("IDENTIFY_SYSTEM failed", e))?;
    let column = |i: usize| ident.rows.first().and_then(|r| r.get(i).cloned().flatten()).unwrap_or_default();
    let system_identifier = column(0);
    let timeline: u32 = column(1).parse().unwrap_or(0);
    let flush_lsn: Lsn = column(2).parse().unwrap_or_default();

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
    // The log's positions are trusted only on the server, database and history that wrote them.
    let history = if resume::history_needed(&recovery, timeline) {
        match repl.simple_query(&format!("TIMELINE_HISTORY {timeline}")).await {
            Ok(r) => Some(resume::parse_history(
                &r.rows.first().and_then(|row| row.get(1).cloned().flatten()).unwrap_or_default(),
            )),
            Err(e) => {
                eprintln!("walwitness: warning: cannot read the history of timeline {timeline} ({e}): the log's positions are taken as not in this server's history");
                None
            }
        }
    } else {
        None
    };
    // With two-phase, a transaction prepared before the log's last commit and still waiting for COMMIT
    // PREPARED is only sent again if decoding starts before its PREPARE: the plan starts from the slot's
    // position (kept before every waiting PREPARE, see `spooled`); what the log already holds is skipped.
    let plan = resume::plan(
        &recovery,
        &resume::Server {
            system_identifier: &system_identifier,
            database: &info.database,
            timeline,
            flush_lsn,
            slot,
            slot_start,
            slot_created: created,
            slot_invalidated: invalidated,
            two_phase: opts.two_phase,
            history: history.as_deref(),
        },
    );
    if let Some(g) = &plan.gap {
        eprintln!(
            "walwitness: warning: {}; recording a gap ({}) from LSN {} to LSN {}",
            g.detail, g.reason, g.from_lsn, g.to_lsn
        );
    }
    let log_mark = plan.resume_after;
    let start_lsn = plan.start_lsn;

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

    // A second handle on the log (sharing its lock) for `capture_stopped`, written after the cleanup.
    let log_tail = match &file {
        Some(f) => Some(
            f.try_clone()
                .map_err(|e| Failure::new(Exit::Output, format!("cannot duplicate the log's file handle: {e}")))?,
        ),
        None => None,
    };
    let writer = Writer::start(&opts.out, file, recovery.len)
        .map_err(|e| Failure::new(Exit::Output, format!("cannot start the log writer: {e}")))?;
    let table_names: Vec<String> = tables.iter().map(setup::Table::qualified).collect();
    let relations: Vec<WatchedRelation> =
        tables.iter().map(|t| WatchedRelation { oid: t.oid, schema: &t.schema, name: &t.name }).collect();
    let attribution_sources: Vec<&str> =
        [(opts.attribution.trigger, "trigger"), (opts.attribution.activity, "activity")]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect();
    let mut first = bytes::BytesMut::new();
    push_record(
        &mut first,
        &CaptureStarted {
            kind: "capture_started",
            time: now_rfc3339(),
            slot,
            publication,
            tables: &table_names,
            relations: &relations,
            start_lsn,
            server_version: &info.version,
            system_identifier: &system_identifier,
            database: &info.database,
            walwitness_version: env!("CARGO_PKG_VERSION"),
            format_version: FORMAT_VERSION,
            proto_version: proto,
            timeline,
            resume_after: log_mark,
            attribution_sources: &attribution_sources,
            activity_interval_ms: opts.attribution.activity.then_some(opts.activity_interval.as_millis() as u64),
            chain_prev: recovery.chain_head.as_ref().map(to_hex),
            repaired_tail: recovery.cut_sha256.as_ref().map(|h| RepairedTail {
                cut_bytes: recovery.cut_bytes,
                cut_lines: recovery.cut_lines,
                sha256: to_hex(h),
            }),
        },
    );
    if let Some(g) = &plan.gap {
        push_record(&mut first, &Gap::closed(slot, g.reason, g.from_lsn, g.to_lsn, &g.detail));
    }
    // Gaps the last run left open end here: this run checked the publication's coverage at its start.
    if plan.close_open_gaps {
        for g in recovery.last_run.as_ref().map(|r: &LastRun| r.open_gaps.as_slice()).unwrap_or_default() {
            let detail = format!("coverage resumed when a capture started again at LSN {start_lsn}");
            push_record(&mut first, &Gap::closing(slot, &g.reason, g.table.as_deref(), g.from_lsn, start_lsn, &detail));
        }
    }
    writer
        .send(Chunk::Append { data: first.freeze(), boundary: true, ack: None })
        .await
        .map_err(|e| Failure::new(Exit::Output, e))?;

    if opts.progress {
        let redacted = redact_dsn(&opts.dsn);
        use crate::term::clean;
        eprintln!(
            "walwitness: capturing DELETE and TRUNCATE on {} in database {} ({})",
            clean(&table_names.join(", ")),
            clean(&info.database),
            clean(&info.version)
        );
        eprintln!("  slot:        {} ({})", clean(slot), if created { "created" } else { "reused: resuming" });
        eprintln!("  publication: {}", clean(publication));
        eprintln!("  start LSN:   {start_lsn} (pgoutput protocol version {proto})");
        match &opts.out {
            Output::File(p) => eprintln!("  log:         {}", clean(&p.display().to_string())),
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
        watch.add_table(t.oid, &t.schema, &t.name, t.primary_key.clone());
    }
    for (root, parts) in partitions {
        for p in parts {
            watch.add_partition(p.oid, *root, p.primary_key.clone());
        }
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
            crate::term::eprint_line(&format!("walwitness: warning: a prepared transaction kept by an earlier run cannot be used ({d}); if it commits, its deletes will be missing from the log (the files stay for inspection)"));
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
                        oid: Some(t.oid),
                        partitions: partitions
                            .iter()
                            .filter(|(root, _)| *root == t.oid)
                            .flat_map(|(_, ps)| ps.iter())
                            .map(|p| crate::sink::raw::RawPartition { oid: p.oid, primary_key: p.primary_key.clone() })
                            .collect(),
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
        coverage: Some(coverage::Checker::spawn(
            sql.clone(),
            spec.clone(),
            expect,
            info.version_num,
            coverage_start,
            opts.coverage_interval,
        )),
        partitions: partitions::PartitionLookup::new(spec.clone(), sql.clone()),
    };
    let outcome = stream::run(signals, target, repl, writer, assembler, loop_opts, retained, start_lsn).await?;
    Ok((outcome, log_tail))
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

/// Whether a connection still answers within a few seconds (a closed one, or one behind a stalled
/// network path, does not: cleanup through it would fail or wait forever).
async fn answers(sql: &tokio_postgres::Client) -> bool {
    !sql.is_closed()
        && tokio::time::timeout(std::time::Duration::from_secs(5), sql.simple_query("SELECT 1"))
            .await
            .is_ok_and(|r| r.is_ok())
}

/// What the publication covers at start, checked like the running capture will check it: a row filter on
/// a watched table is refused (deletes of rows outside it would not be sent).
async fn coverage_at_start(
    sql: &tokio_postgres::Client,
    publication: &str,
    tables: &[setup::Table],
    version_num: u32,
) -> Result<coverage::Expect, Failure> {
    let mut expect = coverage::Expect {
        publication: publication.to_owned(),
        tables: tables.iter().map(|t| coverage::Watched { oid: t.oid, name: t.qualified() }).collect(),
        truncates: true,
    };
    let (_, _, rows) = coverage::query(sql, &expect, version_num)
        .await
        .map_err(|e| crate::error::from_sql("cannot check what the publication covers", e))?;
    expect.truncates = rows.first().and_then(|r| r.pubtruncate).unwrap_or(false);
    if let Some(f) = coverage::findings(&expect, &rows).first() {
        return Err(Failure::new(
            Exit::Conflict,
            format!(
                "{}: fix the publication (ALTER PUBLICATION {} …) or use another",
                f.detail,
                quote_ident(publication)
            ),
        ));
    }
    Ok(expect)
}

/// Sets up attribution: the trigger (installed now, removed again if installing it fails part way and
/// this run created its schema) and the activity sampler.
async fn attribution(
    opts: &CaptureOptions,
    spec: &ConnSpec,
    sql: &tokio_postgres::Client,
    info: &setup::ServerInfo,
    sql_tables: &[String],
    watched_names: Vec<(String, String)>,
) -> Result<(Attributor, Option<tokio::task::JoinHandle<()>>), Failure> {
    let mut attributor = Attributor::default();
    if opts.attribution.trigger {
        let existed: bool = sql
            .query_one("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)", &[&trigger::SCHEMA])
            .await
            .map_err(|e| crate::error::from_sql("cannot read pg_namespace", e))?
            .get(0);
        let installed = async {
            trigger::install(sql, sql_tables).await?;
            trigger::load_verifier(sql).await
        }
        .await;
        match installed {
            Ok(v) => attributor.verifier = Some(std::sync::Arc::new(v)),
            Err(e) => {
                if !existed {
                    let _ = trigger::remove(sql, sql_tables).await;
                }
                return Err(e);
            }
        }
        say(opts.progress, &format!("walwitness: attribution trigger installed on {}", sql_tables.join(", ")));
    }
    let mut sampler = None;
    if opts.attribution.activity {
        if !activity::can_read_all_stats(sql).await {
            eprintln!(
                "walwitness: warning: role {} is not a member of pg_read_all_stats: for other roles' sessions only pid, user and application are visible (no statement, client address or start time); GRANT pg_read_all_stats TO {}",
                info.user,
                quote_ident(&info.user)
            );
        }
        let map = std::sync::Arc::new(activity::ActivityMap::live(watched_names, opts.activity_interval));
        sampler = Some(activity::spawn_sampler(spec.clone(), map.clone(), opts.activity_interval));
        attributor.activity = Some(map);
    }
    Ok((attributor, sampler))
}
