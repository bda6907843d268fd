//! Issue 10: no committed delete is lost or acknowledged without being logged — a writer that cannot
//! keep up when the connection drops, a stop or a server shutdown while a prepared transaction waits
//! for COMMIT PREPARED, a network path that freezes.
use std::collections::BTreeSet;
use std::os::fd::AsRawFd;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use walwitness::cluster::{ClusterOptions, StopMode};

use crate::util::*;

const T: &str = "CREATE TABLE t (id int PRIMARY KEY, pad text NOT NULL);";

fn fill(n: u32) -> String {
    format!("INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, {n}) g;")
}

/// Ids of the rows the log holds deletes for, each once at most.
fn deleted_ids(path: &std::path::Path) -> Vec<u32> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut ids = Vec::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:.200}"));
        if v["type"] == "delete" {
            ids.push(v["key"]["id"].as_str().unwrap().parse().unwrap());
        }
    }
    ids
}

fn assert_exact(logged: &[u32], expected: impl IntoIterator<Item = u32>) {
    let set: BTreeSet<u32> = logged.iter().copied().collect();
    assert_eq!(set.len(), logged.len(), "a row was logged twice");
    let want: BTreeSet<u32> = expected.into_iter().collect();
    let missing: Vec<_> = want.difference(&set).take(10).collect();
    let extra: Vec<_> = set.difference(&want).take(10).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "logged {} rows, {} expected; missing (first 10): {missing:?}; unexpected: {extra:?}",
        set.len(),
        want.len()
    );
}

/// Waits until `path` holds a delete of row `id`.
async fn wait_logged(path: &std::path::Path, id: u32, stderr: &std::path::Path) {
    let what = format!("\"key\":{{\"id\":\"{id}\"}}");
    let what = what.as_str();
    wait_until(
        &format!("row {id} in the log"),
        Duration::from_secs(120),
        || async move { file_text(path).contains(what).then_some(()) },
        || file_text(stderr),
    )
    .await
}

async fn wait_stderr(path: &std::path::Path, what: &str) {
    wait_until(
        &format!("{what:?} on stderr"),
        Duration::from_secs(120),
        || async move { file_text(path).contains(what).then_some(()) },
        || file_text(path),
    )
    .await
}

async fn sent_lsn(env: &Env) -> Option<u64> {
    let r = env
        .sql
        .query_opt("SELECT sent_lsn::text FROM pg_stat_replication WHERE application_name LIKE 'walwitness%'", &[])
        .await
        .unwrap()?;
    r.get::<_, Option<String>>(0).map(|s| lsn_num(&s))
}

async fn confirmed_lsn(env: &Env) -> u64 {
    let r: Option<String> =
        env.sql.query_one("SELECT max(confirmed_flush_lsn)::text FROM pg_replication_slots", &[]).await.unwrap().get(0);
    r.map_or(0, |s| lsn_num(&s))
}

/// Bytes waiting in a pipe (what its reader has not taken yet).
fn pipe_pending(fd: i32) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which is valid for the call.
    let rc = unsafe { libc::ioctl(fd, libc::FIONREAD, &mut n) };
    assert_eq!(rc, 0, "FIONREAD");
    n as usize
}

/// `--out -` into a pipe whose reader stalls fills the writer's queue; the connection drops while the
/// stream loop waits for room (with a batch in hand and status updates failing). Before, that batch was
/// dropped and its transactions skipped after the reconnect as already written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_stdout_reader_and_a_cut_connection_lose_nothing() {
    const TXNS: u32 = 5000;
    const PER: u32 = 20;
    let env = Env::start().await;
    env.exec(&format!("{T}{}", fill(TXNS * PER))).await;
    let proxy = Proxy::start(env.cluster.port()).await;
    let stderr_path = env.log_path("stdout.stderr");
    let mut child = tokio::process::Command::new(BIN)
        .args(["capture", "--dsn", &proxy.dsn(), "--out", "-", "--table", "t", "--attribution", "none"])
        .args(["--reconnect-attempts", "40", "--reconnect-max-delay", "1s"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let fd = stdout.as_raw_fd();
    let mut lines = tokio::io::BufReader::new(stdout);
    let out = env.log_path("stdout.jsonl");
    let mut file = tokio::fs::File::create(&out).await.unwrap();
    loop {
        let mut line = String::new();
        assert!(lines.read_line(&mut line).await.unwrap() > 0, "capture ended before starting");
        file.write_all(line.as_bytes()).await.unwrap();
        if line.contains("\"capture_started\"") {
            break;
        }
    }
    // One transaction per 20 rows, about 30 MB of log: far more than the pipe and the writer's queue hold.
    env.exec(&format!(
        "DO $$ BEGIN FOR i IN 0..{} LOOP DELETE FROM t WHERE id BETWEEN i * {PER} + 1 AND i * {PER} + {PER}; COMMIT; END LOOP; END $$;",
        TXNS - 1
    ))
    .await;
    let end = lsn_num(&env.lsn().await);
    // The reader stalls: wait until the pipe is full, the server's sending stopped advancing and the log
    // is not durable to the end (the stream loop stopped reading: it waits for room in the writer's queue).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    let mut last = None;
    let mut steady = 0;
    loop {
        let sent = sent_lsn(&env).await;
        let confirmed = confirmed_lsn(&env).await;
        if pipe_pending(fd) >= 32768 && sent.is_some() && sent == last && confirmed < end {
            steady += 1;
            if steady >= 5 {
                break;
            }
        } else {
            steady = 0;
        }
        last = sent;
        assert!(
            tokio::time::Instant::now() < deadline,
            "the capture never backed up (sent {last:?}, end {end:X}, pipe {})",
            pipe_pending(fd)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Not pg_terminate_backend: a walsender whose client stopped reading cannot send its goodbye and
    // lingers; a dropped TCP path is what the capture has to survive here.
    proxy.cut();
    // The capture notices while it waits for the writer; it may only reconnect once the reader drains.
    wait_stderr(&stderr_path, "reconnecting").await;
    let copy = tokio::spawn(async move {
        tokio::io::copy(&mut lines, &mut file).await.unwrap();
        file.flush().await.unwrap();
    });
    let bg = Background { child, out: out.clone(), stderr_path };
    let stderr = env.stop_capture(bg).await;
    copy.await.unwrap();
    assert!(stderr.contains("reconnected"), "{stderr}");
    let recs = records(&out);
    check_structure(&recs);
    assert_exact(&deleted_ids(&out), 1..=TXNS * PER);
    assert_eq!(of_type(&recs, "commit").len(), TXNS as usize);
}

/// A cluster that allows prepared transactions, with table `t` of 100 rows; `None` (skipped) before
/// PostgreSQL 15, which cannot decode them.
async fn two_phase_env() -> Option<Env> {
    let env = Env::two_phase().await?;
    env.exec(&format!("{T}{}", fill(100))).await;
    Some(env)
}

/// A `--two-phase --keep-slot` capture stopped while a prepared transaction waits, then started again:
/// the COMMIT PREPARED that follows is logged with the prepared deletes. Before, the stop acknowledged
/// past the PREPARE, the server never sent it again and the deletes were lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_while_a_prepared_transaction_waits_then_commit_prepared() {
    let Some(env) = two_phase_env().await else { return };
    let out = env.log_path("2pc.jsonl");
    let args = ["--two-phase", "--keep-slot", "--attribution", "none"];
    let bg = env.start_capture(&out, &["t"], &args).await;
    env.exec("BEGIN; DELETE FROM t WHERE id IN (1, 2); PREPARE TRANSACTION 'p1'").await;
    env.exec("DELETE FROM t WHERE id = 10").await;
    wait_logged(&out, 10, &bg.stderr_path).await;
    env.stop_capture(bg).await;
    assert!(!std::fs::read_to_string(&out).unwrap().contains("\"gid\":\"p1\""));

    let bg = env.start_capture(&out, &["t"], &args).await;
    env.exec("COMMIT PREPARED 'p1'").await;
    env.exec("DELETE FROM t WHERE id = 11").await;
    wait_logged(&out, 11, &bg.stderr_path).await;
    env.stop_capture(bg).await;
    let recs = records(&out);
    check_structure(&recs);
    assert_exact(&deleted_ids(&out), [1, 2, 10, 11]);
    let p1: Vec<_> = of_type(&recs, "commit").into_iter().filter(|c| c["gid"] == "p1").collect();
    assert_eq!(p1.len(), 1, "one commit record for the prepared transaction");
    assert_eq!(p1[0]["deletes"], 2);
}

/// A fast shutdown of the server completes while a prepared transaction waits (the walsender waits for
/// its client to confirm the end of WAL), and the COMMIT PREPARED after the restart is logged. Before,
/// the capture never confirmed past the PREPARE and `pg_ctl stop` hung until its timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_shutdown_completes_while_a_prepared_transaction_waits() {
    let Some(env) = two_phase_env().await else { return };
    let out = env.log_path("2pc.jsonl");
    let bg = env
        .start_capture(
            &out,
            &["t"],
            &["--two-phase", "--attribution", "none", "--reconnect-attempts", "40", "--reconnect-max-delay", "1s"],
        )
        .await;
    env.exec("BEGIN; DELETE FROM t WHERE id IN (1, 2); PREPARE TRANSACTION 'p1'").await;
    env.exec("DELETE FROM t WHERE id = 10").await;
    wait_logged(&out, 10, &bg.stderr_path).await;
    let started = std::time::Instant::now();
    let cluster = &env.cluster;
    tokio::task::block_in_place(|| cluster.restart(StopMode::Fast)).expect("fast restart with a waiting PREPARE");
    eprintln!("fast restart took {:?}", started.elapsed());
    let sql = connect(&env.dsn).await;
    sql.batch_execute("COMMIT PREPARED 'p1'").await.unwrap();
    sql.batch_execute("DELETE FROM t WHERE id = 11").await.unwrap();
    wait_logged(&out, 11, &bg.stderr_path).await;
    let stderr = env.stop_capture(bg).await;
    assert!(stderr.contains("reconnected"), "{stderr}");
    let recs = records(&out);
    check_structure(&recs);
    assert_exact(&deleted_ids(&out), [1, 2, 10, 11]);
    assert_eq!(of_type(&recs, "commit").iter().filter(|c| c["gid"] == "p1").count(), 1);
}

/// A network path that stops delivering without closing (a stalled proxy) is detected by the receive
/// timeout and replaced; deletes made meanwhile are logged once. Before, the capture waited forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_connection_is_replaced_after_the_receive_timeout() {
    // The server notices the silence too and releases the slot (the default is 60 s).
    let env = Env::with(ClusterOptions {
        extra_conf: vec![("wal_sender_timeout".into(), "3s".into())],
        ..Default::default()
    })
    .await;
    env.exec(&format!("{T}{}", fill(100))).await;
    let proxy = Proxy::start(env.cluster.port()).await;
    let out = env.log_path("frozen.jsonl");
    let bg = env
        .start_capture_dsn(
            &proxy.dsn(),
            &out,
            &["t"],
            &[
                "--attribution",
                "none",
                "--receive-timeout",
                "2s",
                "--reconnect-attempts",
                "60",
                "--reconnect-max-delay",
                "1s",
            ],
        )
        .await;
    env.exec("DELETE FROM t WHERE id = 1").await;
    wait_logged(&out, 1, &bg.stderr_path).await;
    proxy.freeze();
    env.exec("DELETE FROM t WHERE id BETWEEN 2 AND 5").await;
    wait_logged(&out, 5, &bg.stderr_path).await;
    let stderr = env.stop_capture(bg).await;
    assert!(stderr.contains("--receive-timeout 2s"), "{stderr}");
    assert!(stderr.contains("reconnected"), "{stderr}");
    assert_exact(&deleted_ids(&out), 1..=5);
}
