//! Issue 7: streamed in-progress transactions, subtransaction aborts inside them, aborted deletes as
//! evidence, live attribution of streamed transactions, and two-phase commit.
use std::collections::BTreeSet;
use std::io::BufRead;
use std::time::Duration;

use crate::util::*;

const T: &str = "CREATE TABLE t (id int PRIMARY KEY, pad text NOT NULL);";

fn fill(n: u32) -> String {
    format!("INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, {n}) g;")
}

/// Ids of the `kind` records, read line by line (a million-row log does not fit comfortably in a `Value`).
fn ids(path: &std::path::Path, kind: &str) -> Vec<u32> {
    let f = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let tag = format!("{{\"type\":\"{kind}\",");
    f.lines()
        .map(|l| l.unwrap())
        .filter(|l| l.starts_with(&tag))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(&l).unwrap();
            v["key"]["id"].as_str().unwrap().parse().unwrap()
        })
        .collect()
}

/// Ids no longer in the table: what the log must hold, exactly once each.
async fn vanished(env: &Env, total: u32) -> Vec<u32> {
    let present: BTreeSet<i32> =
        env.sql.query("SELECT id FROM t", &[]).await.unwrap().iter().map(|r| r.get::<_, i32>(0)).collect();
    (1..=total).filter(|i| !present.contains(&(*i as i32))).collect()
}

fn assert_exact(logged: &[u32], expected: &[u32]) {
    let set: BTreeSet<u32> = logged.iter().copied().collect();
    assert_eq!(set.len(), logged.len(), "a row was logged twice");
    let want: BTreeSet<u32> = expected.iter().copied().collect();
    assert_eq!(set.len(), want.len(), "logged {} rows, {} vanished", set.len(), want.len());
    assert!(set == want, "the logged rows differ from the vanished rows");
}

async fn streamed_txns(env: &Env) -> i64 {
    env.sql
        .query_one("SELECT coalesce(sum(stream_txns), 0)::bigint FROM pg_stat_replication_slots", &[])
        .await
        .unwrap()
        .get(0)
}

/// Runs `sql` in an open transaction and waits until the server streamed some of it (a spool file exists),
/// then rolls it back. Held open because PostgreSQL 18 no longer streams a transaction it already knows
/// aborted (it drops its changes instead), which a ROLLBACK before decoding catches up would be.
async fn rollback_after_streaming(env: &Env, bg: &Background, spool_dir: &std::path::Path, sql: &str) {
    // Earlier transactions first, so the spool we wait for is this transaction's and not one of theirs.
    wait_confirmed(env, bg).await;
    let c = connect(&env.dsn).await;
    c.batch_execute(&format!("BEGIN; {sql}")).await.unwrap();
    wait_until(
        "the transaction to be streamed (a spool file)",
        Duration::from_secs(60),
        || async move { (std::fs::read_dir(spool_dir).map(|d| d.count()).unwrap_or(0) > 0).then_some(()) },
        || file_text(&bg.stderr_path),
    )
    .await;
    c.batch_execute("ROLLBACK").await.unwrap();
}

/// Peak resident memory the capture may use, whatever the transaction size: write buffers of the
/// writer queue (32 × 256 KiB) and of open spools (64 KiB each), the read buffer, the runtime.
const RSS_BOUND_KIB: u64 = 64 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn million_row_streamed_delete_is_exact_with_bounded_memory() {
    const N: u32 = 1_000_000;
    let env = Env::start().await;
    env.exec(&format!("{T}{}", fill(N))).await;
    let out = env.log_path("big.jsonl");
    let bg = env.start_capture(&out, &["t"], &["--logical-decoding-work-mem", "64kB", "--attribution", "none"]).await;
    let t0 = std::time::Instant::now();
    env.exec("DELETE FROM t").await;
    wait_confirmed(&env, &bg).await;
    let took = t0.elapsed();
    let hwm = vm_hwm_kib(bg.child.id().unwrap());
    let streamed = streamed_txns(&env).await;
    let spool_dir = out.with_file_name("big.jsonl.spool");
    env.stop_capture(bg).await;
    eprintln!("1,000,000-row streamed delete: captured in {took:?}, capture peak RSS {hwm} KiB");
    assert!(streamed >= 1, "the transaction was not streamed (stream_txns = {streamed})");
    assert!(hwm < RSS_BOUND_KIB, "peak RSS {hwm} KiB over the bound {RSS_BOUND_KIB} KiB");
    assert_exact(&ids(&out, "delete"), &(1..=N).collect::<Vec<_>>());
    // Spools are deleted after use, and the directory with the last of them.
    assert!(!spool_dir.exists(), "spool directory left behind");
    let recs: Vec<serde_json::Value> = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .filter(|l| !l.starts_with("{\"type\":\"delete\""))
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let commits = of_type(&recs, "commit");
    assert_eq!(commits.len(), 1);
    assert_eq!(commits[0]["deletes"], N);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoint_rollbacks_inside_a_streamed_transaction() {
    let env = Env::start().await;
    env.exec(&format!("{T}{}", fill(60_000))).await;
    let out = env.log_path("sp.jsonl");
    let bg = env.start_capture(&out, &["t"], &["--logical-decoding-work-mem", "64kB", "--attribution", "none"]).await;
    // Nested savepoints rolled back, a rolled-back subtransaction followed by more rows, a released one,
    // and a whole transaction rolled back.
    env.exec(
        "BEGIN; DELETE FROM t WHERE id <= 5000; \
         SAVEPOINT a; DELETE FROM t WHERE id BETWEEN 5001 AND 10000; \
           SAVEPOINT b; DELETE FROM t WHERE id BETWEEN 10001 AND 15000; RELEASE b; \
         ROLLBACK TO a; \
         DELETE FROM t WHERE id BETWEEN 15001 AND 20000; \
         SAVEPOINT c; DELETE FROM t WHERE id BETWEEN 20001 AND 25000; ROLLBACK TO c; \
         DELETE FROM t WHERE id BETWEEN 25001 AND 30000; \
         SAVEPOINT d; DELETE FROM t WHERE id BETWEEN 30001 AND 35000; RELEASE d; \
         COMMIT",
    )
    .await;
    rollback_after_streaming(
        &env,
        &bg,
        &out.with_file_name("sp.jsonl.spool"),
        "DELETE FROM t WHERE id BETWEEN 40001 AND 50000",
    )
    .await;
    env.exec("DELETE FROM t WHERE id = 59999").await;
    wait_confirmed(&env, &bg).await;
    let streamed = streamed_txns(&env).await;
    env.stop_capture(bg).await;
    assert!(streamed >= 2, "expected streamed transactions, stream_txns = {streamed}");
    let recs = records(&out);
    check_structure(&recs);
    assert_exact(&ids(&out, "delete"), &vanished(&env, 60_000).await);
    assert_eq!(vanished(&env, 60_000).await.len(), 5000 + 5000 + 5000 + 5000 + 1);
    assert!(ids(&out, "aborted_delete").is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aborted_streamed_deletes_with_include_aborted() {
    let env = Env::start().await;
    env.exec(&format!("{T}{}", fill(30_000))).await;
    let out = env.log_path("ab.jsonl");
    let bg = env
        .start_capture(
            &out,
            &["t"],
            &["--logical-decoding-work-mem", "64kB", "--include-aborted", "--attribution", "none"],
        )
        .await;
    env.exec("BEGIN; DELETE FROM t WHERE id <= 10000; SAVEPOINT s; DELETE FROM t WHERE id BETWEEN 10001 AND 20000; ROLLBACK TO s; DELETE FROM t WHERE id = 29000; COMMIT").await;
    rollback_after_streaming(
        &env,
        &bg,
        &out.with_file_name("ab.jsonl.spool"),
        "DELETE FROM t WHERE id BETWEEN 20001 AND 28000",
    )
    .await;
    wait_confirmed(&env, &bg).await;
    env.stop_capture(bg).await;
    let recs = records(&out);
    let mut want: Vec<u32> = (1..=10_000).collect();
    want.push(29000);
    assert_exact(&ids(&out, "delete"), &want);
    assert_exact(&ids(&out, "delete"), &vanished(&env, 30_000).await);
    // Only what the server streamed before the abort can be evidence: the changes still in its
    // memory when the rollback came are discarded there and never sent.
    let aborted = ids(&out, "aborted_delete");
    let set: BTreeSet<u32> = aborted.iter().copied().collect();
    assert_eq!(set.len(), aborted.len(), "an aborted row was logged twice");
    assert!(aborted.iter().all(|i| (10_001..=28_000).contains(i)), "an aborted_delete outside the rolled-back rows");
    let aborts = of_type(&recs, "abort");
    assert_eq!(aborts.len(), 2, "one for the savepoint, one for the transaction: {aborts:?}");
    assert_ne!(aborts[0]["subxid"], aborts[0]["xid"]);
    assert_eq!(aborts[1]["subxid"], aborts[1]["xid"]);
    let in_savepoint = aborted.iter().filter(|i| **i <= 20_000).count();
    assert!(in_savepoint > 0 && aborted.len() > in_savepoint, "{in_savepoint} of {}", aborted.len());
    assert_eq!(aborts[0]["deletes"], in_savepoint);
    assert_eq!(aborts[1]["deletes"], aborted.len() - in_savepoint);
    let first = recs.iter().find(|r| r["type"] == "aborted_delete").unwrap();
    assert_eq!(first["commit_lsn"], serde_json::Value::Null);
    if env.cluster.version_num() >= 160000 {
        // streaming 'parallel' tells the abort position and time.
        assert!(aborts[1]["abort_lsn"].is_string(), "{}", aborts[1]);
        assert!(aborts[1]["abort_time"].is_string());
    }
    // The readers accept the log and count the attempts.
    let run = run_bin(&["report".into(), out.display().to_string()]).await;
    run.assert_code(0);
    assert!(run.stdout.contains("Aborted attempts (rolled back, nothing deleted): 2 "), "{run}");
    let run = run_bin(&["replay".into(), out.display().to_string()]).await;
    run.assert_code(0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnect_in_the_middle_of_a_streamed_transaction() {
    let env = Env::start().await;
    env.exec(&format!("{T}{}", fill(200_000))).await;
    let out = env.log_path("rc.jsonl");
    let bg = env.start_capture(&out, &["t"], &["--logical-decoding-work-mem", "64kB", "--attribution", "none"]).await;
    env.exec("DELETE FROM t WHERE id <= 10").await;
    let big = connect(&env.dsn).await;
    big.batch_execute("BEGIN; DELETE FROM t WHERE id BETWEEN 1000 AND 150000").await.unwrap();
    // Wait until part of it was streamed to the capture (a spool file exists), then cut the walsender.
    let spool_dir = out.with_file_name("rc.jsonl.spool");
    let spool = spool_dir.as_path();
    wait_until(
        "part of the transaction to be streamed (a spool file)",
        Duration::from_secs(60),
        || async move { (std::fs::read_dir(spool).map(|d| d.count()).unwrap_or(0) > 0).then_some(()) },
        || env.cluster.log_tail(20),
    )
    .await;
    let killed: bool = env
        .sql
        .query_one(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_replication WHERE application_name = 'walwitness'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    big.batch_execute("DELETE FROM t WHERE id = 199999; COMMIT").await.unwrap();
    env.exec("DELETE FROM t WHERE id = 200000").await;
    wait_confirmed(&env, &bg).await;
    let stderr = env.stop_capture(bg).await;
    assert!(stderr.contains("reconnected"), "{stderr}");
    let recs = records(&out);
    check_structure(&recs);
    assert_exact(&ids(&out, "delete"), &vanished(&env, 200_000).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_every_change_streams_and_attributes_small_transactions() {
    let env = Env::start().await;
    if env.cluster.version_num() < 160000 {
        eprintln!(
            "skipped: debug_logical_replication_streaming needs PostgreSQL 16+, this is {}",
            env.cluster.version_num()
        );
        return;
    }
    env.exec(&format!("{T}{}", fill(100))).await;
    let out = env.log_path("imm.jsonl");
    // A sampling interval so long that only the sample asked for by the stream can attribute.
    let bg = env.start_capture(&out, &["t"], &["--stream-every-change", "--activity-interval", "1h", "-v"]).await;
    let c = connect(&env.dsn).await;
    c.batch_execute("SET application_name = 'culler'; BEGIN; DELETE FROM t WHERE id IN (1, 2)").await.unwrap();
    let xid: String = c.query_one("SELECT txid_current()::text", &[]).await.unwrap().get(0);
    let pid: i32 = c.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get(0);
    let want = format!("streamed transaction {xid}: session of pid {pid} recorded");
    let (stderr, want) = (bg.stderr_path.as_path(), want.as_str());
    wait_until(
        "the streamed transaction to be sampled while open",
        Duration::from_secs(60),
        || async move { file_text(stderr).contains(want).then_some(()) },
        || file_text(stderr),
    )
    .await;
    c.batch_execute("SAVEPOINT s; DELETE FROM t WHERE id = 3; ROLLBACK TO s; DELETE FROM t WHERE id = 4; COMMIT")
        .await
        .unwrap();
    env.exec("BEGIN; DELETE FROM t WHERE id = 5; ROLLBACK").await;
    wait_confirmed(&env, &bg).await;
    let streamed = streamed_txns(&env).await;
    env.stop_capture(bg).await;
    assert!(streamed >= 2, "stream_txns = {streamed}");
    let recs = records(&out);
    check_structure(&recs);
    assert_exact(&ids(&out, "delete"), &[1, 2, 4]);
    for d in of_type(&recs, "delete") {
        assert_eq!(d["session"]["pid"], pid, "{d}");
        assert_eq!(d["session"]["application_name"], "culler");
    }
    assert_eq!(of_type(&recs, "commit")[0]["attribution"], "activity");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_phase_commit_and_rollback_prepared() {
    let Some(env) = Env::two_phase().await else { return };
    env.exec(&format!("{T}{}", fill(100))).await;
    let out = env.log_path("2pc.jsonl");
    let bg = env.start_capture(&out, &["t"], &["--two-phase", "--include-aborted", "--attribution", "none"]).await;
    env.exec("BEGIN; DELETE FROM t WHERE id IN (1, 2); PREPARE TRANSACTION 'cull-1'").await;
    env.exec("BEGIN; DELETE FROM t WHERE id = 3; PREPARE TRANSACTION 'cull-2'").await;
    env.exec("DELETE FROM t WHERE id = 10").await;
    env.exec("ROLLBACK PREPARED 'cull-2'").await;
    env.exec("COMMIT PREPARED 'cull-1'").await;
    wait_confirmed(&env, &bg).await;
    let two_phase: bool = env
        .sql
        .query_one("SELECT two_phase FROM pg_replication_slots WHERE slot_name LIKE 'walwitness%'", &[])
        .await
        .unwrap()
        .get(0);
    env.stop_capture(bg).await;
    assert!(two_phase);
    let recs = records(&out);
    assert_exact(&ids(&out, "delete"), &[1, 2, 10]);
    assert_exact(&ids(&out, "aborted_delete"), &[3]);
    let commits = of_type(&recs, "commit");
    assert_eq!(commits.len(), 2);
    assert!(commits[0].get("gid").is_none());
    assert_eq!(commits[1]["gid"], "cull-1");
    assert_eq!(commits[1]["deletes"], 2);
    let abort = of_type(&recs, "abort");
    assert_eq!(abort.len(), 1);
    assert_eq!(abort[0]["gid"], "cull-2");
}

/// A raw capture keeps streamed and prepared transactions: `replay --raw` decodes them through the same
/// pipeline into the live log's records (a savepoint rolled back inside the streamed one included).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_capture_keeps_streamed_and_prepared_transactions() {
    let Some(env) = Env::two_phase().await else { return };
    env.exec(&format!("{T}{}", fill(20_000))).await;
    let out = env.log_path("s.jsonl");
    let raw = env.log_path("s.raw");
    let raw_s = raw.display().to_string();
    let flags = ["--raw-out", &raw_s, "--two-phase", "--logical-decoding-work-mem", "64kB", "--attribution", "none"];
    let bg = env.start_capture(&out, &["t"], &flags).await;
    env.exec(
        "BEGIN; DELETE FROM t WHERE id <= 5000; SAVEPOINT s; DELETE FROM t WHERE id BETWEEN 5001 AND 8000; \
         ROLLBACK TO s; DELETE FROM t WHERE id = 9000; COMMIT",
    )
    .await;
    env.exec("BEGIN; DELETE FROM t WHERE id IN (10001, 10002); PREPARE TRANSACTION 'cull-1'").await;
    env.exec("COMMIT PREPARED 'cull-1'").await;
    env.exec("DELETE FROM t WHERE id = 12000").await;
    wait_confirmed(&env, &bg).await;
    let streamed = streamed_txns(&env).await;
    env.stop_capture(bg).await;
    assert!(streamed >= 1, "the transaction was not streamed (stream_txns = {streamed})");
    let mut want: Vec<u32> = (1..=5000).collect();
    want.extend([9000, 10001, 10002, 12000]);
    assert_exact(&ids(&out, "delete"), &want);
    let live: String = std::fs::read_to_string(&out)
        .unwrap()
        .lines()
        .filter(|l| l.starts_with("{\"type\":\"delete\"") || l.starts_with("{\"type\":\"commit\""))
        // The chain value is the log's, which offline decoding cannot know: commits are compared without it.
        .map(|l| match l.len().checked_sub(76).filter(|&at| l[at..].starts_with(",\"chain\":\"")) {
            Some(at) => format!("{}}}\n", &l[..at]),
            None => format!("{l}\n"),
        })
        .collect();
    assert!(live.contains("\"gid\":\"cull-1\""), "the prepared transaction's commit");
    let r = run_bin(&["replay".into(), "--raw".into(), raw_s]).await;
    r.assert_code(0);
    assert_eq!(r.stdout.lines().count(), live.lines().count(), "{}", r.stderr);
    assert!(r.stdout == live, "offline decoding differs from the live log");
}
