//! A deliberate end: the objects this run set up are removed (`teardown`), unless kept, and the log is
//! closed with `capture_stopped`, which says what really stayed.
use std::sync::Arc;

use crate::error::{Exit, Failure};
use crate::pg::catalog::PubOrigin;
use crate::pg::config::ConnSpec;
use crate::pg::leftover::{self, Leftover};
use crate::sink::chain::to_hex;
use crate::sink::record::{now_rfc3339, push_record, CaptureStopped, Gap};
use crate::sink::writer::Output;

use super::preflight::Checked;
use super::{say, teardown, CaptureOptions, Outcome, StopReason};

/// The server may have restarted while we streamed, or the path to it frozen (the stream then
/// reconnected on its own): cleanup needs a connection that answers. Every step is tried whatever the
/// others did, and what stays is said (`teardown`).
pub(super) async fn deliberate_end(
    opts: &CaptureOptions,
    spec: &ConnSpec,
    sql: &Arc<tokio_postgres::Client>,
    checked: &Checked,
    (pub_origin, sql_tables): (PubOrigin, &[String]),
    mut outcome: Outcome,
    log_tail: Option<std::fs::File>,
) -> Result<Outcome, Failure> {
    let (slot, publication) = (&checked.slot, &checked.publication);
    let keep = opts.keep_slot && outcome.reason != StopReason::MaxRetainedWal;
    let left = if keep {
        say(opts.progress, &format!("walwitness: kept slot {slot} and publication {publication} (--keep-slot); run the same command to resume"));
        Vec::new()
    } else {
        let plan = teardown::Plan {
            triggers: opts.attribution.trigger.then_some(sql_tables),
            slot: Some(slot),
            publication: (pub_origin != PubOrigin::Given).then_some(publication.as_str()),
        };
        let conn = usable(sql, spec).await;
        let unreachable = format!("the server at {} could not be reached to remove it", spec.describe());
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
    let written = write_stopped(&opts.out, log_tail, &mut outcome, slot, slot_kept, &left);
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
pub(super) async fn usable(
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
            kind: crate::sink::record::Kind::CaptureStopped.name(),
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

/// Whether a connection still answers within a few seconds (a closed one, or one behind a stalled
/// network path, does not: cleanup through it would fail or wait forever).
async fn answers(sql: &tokio_postgres::Client) -> bool {
    !sql.is_closed()
        && tokio::time::timeout(std::time::Duration::from_secs(5), sql.simple_query("SELECT 1"))
            .await
            .is_ok_and(|r| r.is_ok())
}
