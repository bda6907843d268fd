//! From the server objects to the stream: the replication connection and slot, where to start (`resume`),
//! the log's first records (`capture_started`, gaps), then the stream loop with everything it watches.
use std::sync::Arc;
use std::time::Duration;

use crate::attribution::Attributor;
use crate::decode::pipeline::Pipeline;
use crate::decode::relations::WatchList;
use crate::decode::Assembler;
use crate::error::{Exit, Failure};
use crate::pg::catalog as setup;
use crate::pg::config::{redact_dsn, ConnSpec};
use crate::pg::conn::ReplicationConnection;
use crate::pg::error::from_pg;
use crate::pg::names::quote_ident;
use crate::protocol::Lsn;
use crate::sink::chain::to_hex;
use crate::sink::record::{
    now_rfc3339, push_record, CaptureStarted, Gap, RepairedTail, WatchedRelation, FORMAT_VERSION,
};
use crate::sink::writer::{Chunk, LastRun, Output, Recovery, Writer};
use setup::SlotState;

use super::preflight::{Checked, LogFiles};
use super::{coverage, partitions, resume, spooled, status, stream, CaptureOptions, Outcome};

/// What every step of the start reads.
struct Ctx<'a> {
    opts: &'a CaptureOptions,
    spec: &'a ConnSpec,
    sql: &'a Arc<tokio_postgres::Client>,
    c: &'a Checked,
}

/// The server as IDENTIFY_SYSTEM describes it.
struct Identity {
    system_identifier: String,
    timeline: u32,
    flush_lsn: Lsn,
}

/// Runs the capture on the objects set up, until it stops; returns its outcome and a second handle on
/// the log for `capture_stopped`.
#[allow(clippy::too_many_arguments)]
pub(super) async fn capture_with_objects(
    signals: stream::Signals,
    opts: &CaptureOptions,
    spec: &ConnSpec,
    sql: &Arc<tokio_postgres::Client>,
    checked: &Checked,
    log: LogFiles,
    attributor: Attributor,
    invalidated: bool,
    (expect, coverage_start): (coverage::Expect, Lsn),
) -> Result<(Outcome, Option<std::fs::File>), Failure> {
    let x = Ctx { opts, spec, sql, c: checked };
    let LogFiles { file, recovery, spool_dir } = log;
    let startup = spooled::startup_params(opts);
    let (mut repl, server) = identify(&x, &startup).await?;
    let (created, slot_start) = slot_position(&x, &mut repl).await?;
    let plan = resume_plan(&x, &mut repl, &recovery, &server, (slot_start, created, invalidated)).await;
    let start_lsn = plan.start_lsn;
    let target = start_stream(&x, startup, &mut repl, start_lsn).await?;
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
    let first = first_records(&x, &recovery, &plan, &server, proto);
    writer
        .send(Chunk::Append { data: first.freeze(), boundary: true, ack: None })
        .await
        .map_err(|e| Failure::new(Exit::Output, e))?;
    if opts.progress {
        say_started(&x, created, start_lsn, proto);
    }

    let spooled = spooled_transactions(opts, spool_dir, &attributor)?;
    let assembler = Assembler::new(watch_list(checked), plan.resume_after, attributor);
    let status_every = status_every(&x).await;
    let retained = status::spawn_retained_wal_probe(spec.clone(), checked.slot.clone());
    let raw = raw_writer(&x, proto)?;
    let pipe = Pipeline::new(assembler, spooled, target.stream_abort_has_lsn);
    let loop_opts = loop_options(&x, raw, status_every, (expect, coverage_start));
    let outcome = stream::run(signals, target, repl, writer, pipe, loop_opts, retained, start_lsn).await?;
    Ok((outcome, log_tail))
}

async fn identify(
    x: &Ctx<'_>,
    startup: &[(&'static str, String)],
) -> Result<(ReplicationConnection, Identity), Failure> {
    let params: Vec<(&str, &str)> = startup.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut repl = ReplicationConnection::connect(x.spec, &params)
        .await
        .map_err(|e| from_pg(&format!("cannot open a replication connection to {}", x.spec.describe()), e))?;
    let ident = repl.simple_query("IDENTIFY_SYSTEM").await.map_err(|e| from_pg("IDENTIFY_SYSTEM failed", e))?;
    let column = |i: usize| ident.rows.first().and_then(|r| r.get(i).cloned().flatten()).unwrap_or_default();
    let server = Identity {
        system_identifier: column(0),
        timeline: column(1).parse().unwrap_or(0),
        flush_lsn: column(2).parse().unwrap_or_default(),
    };
    Ok((repl, server))
}

/// The slot created, or reused: whether it was created, and where it starts.
async fn slot_position(x: &Ctx<'_>, repl: &mut ReplicationConnection) -> Result<(bool, Lsn), Failure> {
    let slot = &x.c.slot;
    Ok(match &x.c.slot_state {
        // A lost slot was dropped (and a gap recorded) before this point.
        SlotState::Absent | SlotState::Lost => {
            let cmd = if x.c.info.version_num >= 150000 {
                // TWO_PHASE at creation: prepared transactions are decoded at PREPARE from the start.
                let two_phase = if x.opts.two_phase { ", TWO_PHASE" } else { "" };
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
            (false, confirmed_flush.as_deref().and_then(|s| s.parse::<Lsn>().ok()).unwrap_or_default())
        }
    })
}

/// Where to start, and what the log already holds; a gap it cannot avoid is said here and recorded in
/// the first records.
async fn resume_plan(
    x: &Ctx<'_>,
    repl: &mut ReplicationConnection,
    recovery: &Recovery,
    server: &Identity,
    (slot_start, created, invalidated): (Lsn, bool, bool),
) -> resume::Plan {
    let timeline = server.timeline;
    // The log's positions are trusted only on the server, database and history that wrote them.
    let history = if resume::history_needed(recovery, timeline) {
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
        recovery,
        &resume::Server {
            system_identifier: &server.system_identifier,
            database: &x.c.info.database,
            timeline,
            flush_lsn: server.flush_lsn,
            slot: &x.c.slot,
            slot_start,
            slot_created: created,
            slot_invalidated: invalidated,
            two_phase: x.opts.two_phase,
            history: history.as_deref(),
        },
    );
    if let Some(g) = &plan.gap {
        eprintln!(
            "walwitness: warning: {}; recording a gap ({}) from LSN {} to LSN {}",
            g.detail, g.reason, g.from_lsn, g.to_lsn
        );
    }
    plan
}

async fn start_stream(
    x: &Ctx<'_>,
    startup: Vec<(&'static str, String)>,
    repl: &mut ReplicationConnection,
    start_lsn: Lsn,
) -> Result<stream::StreamTarget, Failure> {
    let mut target = stream::StreamTarget {
        spec: x.spec.clone(),
        slot: x.c.slot.clone(),
        publication: x.c.publication.clone(),
        proto: match x.c.info.version_num {
            v if v >= 160000 => 4,
            v if v >= 150000 => 3,
            _ => 2,
        },
        reconnect_attempts: x.opts.reconnect_attempts,
        reconnect_max_delay: x.opts.reconnect_max_delay,
        two_phase: x.opts.two_phase,
        messages: x.opts.attribution.trigger,
        startup,
        stream_abort_has_lsn: false,
    };
    target
        .start(repl, start_lsn)
        .await
        .map_err(|e| from_pg(&format!("cannot start replication from slot {}", x.c.slot), e))?;
    Ok(target)
}

/// `capture_started`, then the gap the plan records and the gaps the last run left open.
fn first_records(
    x: &Ctx<'_>,
    recovery: &Recovery,
    plan: &resume::Plan,
    server: &Identity,
    proto: u32,
) -> bytes::BytesMut {
    let (opts, info, slot, start_lsn) = (x.opts, &x.c.info, x.c.slot.as_str(), plan.start_lsn);
    let table_names: Vec<String> = x.c.tables.iter().map(setup::Table::qualified).collect();
    let relations: Vec<WatchedRelation> =
        x.c.tables.iter().map(|t| WatchedRelation { oid: t.oid, schema: &t.schema, name: &t.name }).collect();
    let attribution_sources: Vec<&str> =
        [(opts.attribution.trigger, "trigger"), (opts.attribution.activity, "activity")]
            .into_iter()
            .filter_map(|(on, name)| on.then_some(name))
            .collect();
    let mut first = bytes::BytesMut::new();
    push_record(
        &mut first,
        &CaptureStarted {
            kind: crate::sink::record::Kind::CaptureStarted.name(),
            time: now_rfc3339(),
            slot,
            publication: &x.c.publication,
            tables: &table_names,
            relations: &relations,
            start_lsn,
            server_version: &info.version,
            system_identifier: &server.system_identifier,
            database: &info.database,
            walwitness_version: env!("CARGO_PKG_VERSION"),
            format_version: FORMAT_VERSION,
            proto_version: proto,
            timeline: server.timeline,
            resume_after: plan.resume_after,
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
    first
}

/// What is captured where, and how to remove the objects if this process dies.
fn say_started(x: &Ctx<'_>, created: bool, start_lsn: Lsn, proto: u32) {
    use crate::term::clean;
    let (opts, info, slot, publication) = (x.opts, &x.c.info, &x.c.slot, &x.c.publication);
    let table_names: Vec<String> = x.c.tables.iter().map(setup::Table::qualified).collect();
    let redacted = redact_dsn(&opts.dsn);
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

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

fn watch_list(c: &Checked) -> WatchList {
    let mut watch = WatchList::new();
    for t in &c.tables {
        watch.add_table(t.oid, &t.schema, &t.name, t.primary_key.clone());
    }
    for (root, parts) in &c.partitions {
        for p in parts {
            watch.add_partition(p.oid, *root, p.primary_key.clone());
        }
    }
    watch
}

fn spooled_transactions(
    opts: &CaptureOptions,
    spool_dir: crate::sink::spool::SpoolDir,
    attributor: &Attributor,
) -> Result<spooled::Spooled, Failure> {
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
    Ok(spooled)
}

/// Status updates at least twice per wal_sender_timeout, so the server does not give up on us.
async fn status_every(x: &Ctx<'_>) -> Duration {
    let wal_sender_timeout = x
        .sql
        .query_one("SELECT setting::bigint * CASE unit WHEN 's' THEN 1000 ELSE 1 END FROM pg_settings WHERE name = 'wal_sender_timeout'", &[])
        .await
        .ok()
        .map(|r| r.get::<_, i64>(0))
        .filter(|ms| *ms > 0)
        .map(|ms| Duration::from_millis(ms as u64));
    match wal_sender_timeout {
        Some(t) => x.opts.status_interval.min(t / 2),
        None => x.opts.status_interval,
    }
}

fn raw_writer(x: &Ctx<'_>, proto: u32) -> Result<Option<crate::sink::raw::RawWriter>, Failure> {
    let Some(p) = &x.opts.raw_out else {
        return Ok(None);
    };
    let header = crate::sink::raw::RawHeader {
        tables: x
            .c
            .tables
            .iter()
            .map(|t| crate::sink::raw::RawTable {
                schema: t.schema.clone(),
                table: t.name.clone(),
                primary_key: t.primary_key.clone(),
                oid: Some(t.oid),
                partitions: x
                    .c
                    .partitions
                    .iter()
                    .filter(|(root, _)| *root == t.oid)
                    .flat_map(|(_, ps)| ps.iter())
                    .map(|p| crate::sink::raw::RawPartition { oid: p.oid, primary_key: p.primary_key.clone() })
                    .collect(),
            })
            .collect(),
        slot: x.c.slot.clone(),
        publication: x.c.publication.clone(),
        proto_version: proto,
    };
    Ok(Some(
        crate::sink::raw::RawWriter::open(p, &header).map_err(|e| {
            Failure::new(Exit::Output, format!("cannot open the raw capture file {}: {e}", p.display()))
        })?,
    ))
}

fn loop_options(
    x: &Ctx<'_>,
    raw: Option<crate::sink::raw::RawWriter>,
    status_every: Duration,
    (expect, coverage_start): (coverage::Expect, Lsn),
) -> stream::LoopOptions {
    let opts = x.opts;
    stream::LoopOptions {
        raw,
        keep_slot: opts.keep_slot,
        max_retained_wal: opts.max_retained_wal,
        drop_on_lag: opts.drop_on_lag,
        slot: x.c.slot.clone(),
        publication: x.c.publication.clone(),
        endpos: opts.endpos,
        endpos_later: opts.endpos_later.clone(),
        duration: opts.duration,
        status_every,
        progress: opts.progress,
        progress_interval: opts.progress_interval,
        receive_timeout: opts.receive_timeout,
        coverage: Some(coverage::Checker::spawn(
            x.sql.clone(),
            x.spec.clone(),
            expect,
            x.c.info.version_num,
            coverage_start,
            opts.coverage_interval,
        )),
        partitions: partitions::PartitionLookup::new(x.spec.clone(), x.sql.clone()),
    }
}
