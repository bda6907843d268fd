//! `walwitness demo`: the whole story on a throwaway server, in one command.
//!
//! A Django-style cache table, one client that fills and reads it (like the app), another session with
//! its own application_name that deletes rows now and then (like the forgotten script in another
//! terminal), and a capture running throughout. At the end it prints what the log says.
use std::collections::BTreeMap;
use std::time::Duration;

use crate::capture::{self, CaptureOptions};
use crate::cli::DemoArgs;
use crate::cluster::{Cluster, ClusterOptions};
use crate::error::{Exit, Failure};
use crate::sink::writer::Output;

const TABLE: &str = "tracebase_cache_table";

/// What the demo says about its attribution mode (it is not the capture's default).
const MODE: &str =
    "walwitness demo: attribution mode: --attribution trigger,activity (exact: a statement trigger signs \
each transaction, the pg_stat_activity sampler cross-checks). `walwitness capture` defaults to --attribution activity: \
no DDL, but sampled and inferred (see \"inferred\" and \"unattributed_reason\" in the log); pass --attribution trigger \
for exact answers.";

fn fail(e: impl std::fmt::Display) -> Failure {
    Failure::new(Exit::Internal, e.to_string())
}

async fn connect(dsn: &str) -> Result<tokio_postgres::Client, Failure> {
    let (client, conn) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await.map_err(fail)?;
    tokio::spawn(conn);
    Ok(client)
}

pub async fn run(args: DemoArgs) -> Result<(), Failure> {
    eprintln!("walwitness demo: starting a throwaway PostgreSQL (initdb, wal_level=logical)…");
    let cluster = tokio::task::spawn_blocking(|| Cluster::start(ClusterOptions::default()))
        .await
        .map_err(fail)?
        .map_err(|e| Failure::new(Exit::ServerSetup, e.to_string()))?;
    let dsn = cluster.socket_dsn("postgres", "postgres");
    let admin = connect(&dsn).await?;
    admin
        .batch_execute(&format!(
            "CREATE TABLE {TABLE} (cache_key varchar(255) NOT NULL PRIMARY KEY, value text NOT NULL, expires timestamp with time zone NOT NULL)"
        ))
        .await
        .map_err(fail)?;

    let dir = tempfile::tempdir().map_err(fail)?;
    let log_path = args.out.clone().unwrap_or_else(|| dir.path().join("deletes.jsonl"));
    let (endpos_tx, endpos_rx) = tokio::sync::watch::channel(None);
    let opts = capture_options(&dsn, &log_path, endpos_rx);
    eprintln!("{MODE}");
    let capture = tokio::spawn(capture::run(opts));
    wait_for_capture_start(&log_path, &capture).await?;

    eprintln!("walwitness demo: app fills the cache; a forgotten script in another session deletes rows…");
    let app = connect(&format!("{dsn} application_name=django-app")).await?;
    let script = connect(&format!("{dsn} application_name=forgotten-cleanup.py")).await?;
    let deleted_by_script = workload(&app, &script, args.rows).await?;
    let remaining: i64 = app.query_one(&format!("SELECT count(*) FROM {TABLE}"), &[]).await.map_err(fail)?.get(0);
    let end: String = admin.query_one("SELECT pg_current_wal_lsn()::text", &[]).await.map_err(fail)?.get(0);
    let _ = endpos_tx.send(end.parse().ok());
    let outcome = capture.await.map_err(fail)??;

    let text = std::fs::read_to_string(&log_path).map_err(fail)?;
    print_summary(&text, args.rows, remaining, deleted_by_script, outcome.deletes);
    if args.out.is_some() {
        println!("\nThe log is kept at {}", log_path.display());
    }
    drop(cluster);
    Ok(())
}

/// The capture the demo runs: until the end position it is given once the workload is done.
fn capture_options(
    dsn: &str,
    log_path: &std::path::Path,
    endpos_rx: tokio::sync::watch::Receiver<Option<crate::protocol::Lsn>>,
) -> CaptureOptions {
    CaptureOptions {
        dsn: format!("{dsn} application_name=walwitness"),
        tables: vec![format!("public.{TABLE}")],
        out: Output::File(log_path.to_path_buf()),
        slot: None,
        publication: None,
        keep_slot: false,
        duration: None,
        endpos: None,
        endpos_later: Some(endpos_rx),
        progress_interval: Duration::from_secs(3600),
        status_interval: Duration::from_secs(10),
        progress: true,
        // Exact attribution for the story; the sampler runs too, as a cross-check.
        attribution: crate::attribution::Sources { trigger: true, activity: true },
        activity_interval: Duration::from_millis(200),
        reconnect_attempts: 10,
        max_retained_wal: None,
        raw_out: None,
        drop_on_lag: false,
        reconnect_max_delay: Duration::from_secs(30),
        receive_timeout: Some(Duration::from_secs(60)),
        logical_decoding_work_mem: None,
        stream_every_change: false,
        include_aborted: false,
        two_phase: false,
        coverage_interval: Duration::from_secs(5),
    }
}

/// The app fills and reads the cache; the script deletes a few rows now and then. Returns how many the
/// script deleted.
async fn workload(app: &tokio_postgres::Client, script: &tokio_postgres::Client, rows: u32) -> Result<u64, Failure> {
    let mut deleted_by_script = 0u64;
    for i in 0..rows {
        app.execute(
            &format!(
                "INSERT INTO {TABLE} VALUES ($1, $2, now() + interval '1 year') ON CONFLICT (cache_key) DO UPDATE SET value = EXCLUDED.value"
            ),
            &[&format!("report:{i}"), &format!("computed value {i}")],
        )
        .await
        .map_err(fail)?;
        if i % 7 == 0 {
            app.query(&format!("SELECT value FROM {TABLE} WHERE cache_key = $1"), &[&format!("report:{}", i / 2)])
                .await
                .map_err(fail)?;
        }
        if i % 50 == 49 {
            // The culprit: deletes a handful of rows through its own connection.
            let n = script
                .execute(
                    &format!("DELETE FROM {TABLE} WHERE cache_key IN (SELECT cache_key FROM {TABLE} ORDER BY cache_key LIMIT 5)"),
                    &[],
                )
                .await
                .map_err(fail)?;
            deleted_by_script += n;
        }
    }
    Ok(deleted_by_script)
}

async fn wait_for_capture_start(
    log: &std::path::Path,
    capture: &tokio::task::JoinHandle<Result<capture::Outcome, Failure>>,
) -> Result<(), Failure> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        if std::fs::read_to_string(log).is_ok_and(|s| {
            s.contains(std::str::from_utf8(crate::sink::record::Kind::CaptureStarted.open()).unwrap_or_default())
        }) {
            return Ok(());
        }
        if capture.is_finished() || tokio::time::Instant::now() > deadline {
            return Err(Failure::new(Exit::Internal, "the capture did not start"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn print_summary(log: &str, rows: u32, remaining: i64, deleted: u64, captured: u64) {
    let mut per_txn: BTreeMap<u64, (String, u64, Vec<String>, String)> = BTreeMap::new();
    let mut first_lines = Vec::new();
    for line in log.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        match v["type"].as_str() {
            Some("delete") => {
                if first_lines.len() < 2 {
                    first_lines.push(line.to_owned());
                }
                let xid = v["xid"].as_u64().unwrap_or(0);
                let e = per_txn.entry(xid).or_default();
                e.0 = v["commit_time"].as_str().unwrap_or("").to_owned();
                e.1 += 1;
                if e.2.len() < 3 {
                    e.2.push(v["key"]["cache_key"].as_str().unwrap_or("?").to_owned());
                }
                e.3 = match &v["session"] {
                    serde_json::Value::Null => "not attributed".to_owned(),
                    s => format!(
                        "pid {} user {} application {}",
                        s["pid"],
                        s["user"].as_str().unwrap_or("?"),
                        s["application_name"].as_str().unwrap_or("?")
                    ),
                };
            }
            Some("commit") => {}
            _ => {}
        }
    }
    println!("\n=== what walwitness captured ===");
    println!("The app wrote {rows} cache rows; {remaining} are left. Deleted by the other session: {deleted}. Delete records in the log: {captured}.");
    for (xid, (time, n, keys, session)) in &per_txn {
        println!("  {time}  xid {xid}: {n} rows deleted from public.{TABLE} ({session}), e.g. {}", keys.join(", "));
    }
    println!("\nFirst records, as written (JSON lines):");
    for l in first_lines {
        println!("  {l}");
    }
    println!(
        "\nSessions above come from the trigger: this demo ran with --attribution trigger,activity. A capture run \
              with the default (--attribution activity) names sessions from pg_stat_activity samples and inference, \
              and may leave some null (see unattributed_reason)."
    );
    if u64::try_from(i64::from(rows) - remaining).ok() == Some(captured) {
        println!("\nEvery vanished row is accounted for.");
    } else {
        println!("\nMISMATCH: rows vanished {} vs captured {captured}", i64::from(rows) - remaining);
    }
}
