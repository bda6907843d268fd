//! Issue 5: nothing lost, nothing duplicated — kill -9 at random points, restarts, reconnects.
use std::collections::BTreeSet;
use std::time::Duration;

use crate::util::*;

const CACHE: &str =
    "CREATE TABLE cache (cache_key varchar(255) PRIMARY KEY, value text NOT NULL, expires timestamptz NOT NULL);";

/// Deterministic pseudo-random numbers (xorshift), so a failure can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

async fn wait_slot_inactive(env: &Env) {
    wait_until(
        "the slot to become inactive",
        Duration::from_secs(60),
        || async move {
            let active: bool = env
                .sql
                .query_one("SELECT coalesce(bool_or(active), false) FROM pg_replication_slots", &[])
                .await
                .unwrap()
                .get(0);
            (!active).then_some(())
        },
        || env.cluster.log_tail(20),
    )
    .await
}

fn assert_exactly_vanished(recs: &[serde_json::Value], present: &BTreeSet<String>, total: usize) {
    check_structure(recs);
    let keys = deleted_keys(recs, "public.cache", &["cache_key"]);
    let logged: BTreeSet<&String> = keys.iter().collect();
    assert_eq!(logged.len(), keys.len(), "a delete was logged twice");
    let expected: Vec<String> = (1..=total).map(|i| format!("k{i}")).filter(|k| !present.contains(k)).collect();
    assert_eq!(keys.len(), expected.len(), "logged {} deletes, {} rows vanished", keys.len(), expected.len());
    assert!(expected.iter().all(|k| logged.contains(k)), "a vanished row is missing from the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_points_loses_and_duplicates_nothing() {
    const ROWS: usize = 120_000;
    let env = Env::start().await;
    env.exec(&format!("{CACHE} INSERT INTO cache SELECT 'k' || g, 'v', now() FROM generate_series(1, {ROWS}) g;"))
        .await;
    let out = env.log_path("k.jsonl");
    let start = env.lsn().await;
    env.capture(&out, &["cache"], &["--endpos", &start, "--keep-slot"]).await.assert_code(0);

    // The workload: deletes in transactions of varied size (1 to ~5000 rows), some rolled back, until
    // at least 100,000 rows are gone; it runs while the capture is killed and restarted.
    let dsn = env.dsn.clone();
    let workload = tokio::spawn(async move {
        let c = connect(&dsn).await;
        let mut rng = Rng(0x5eed);
        let mut next = 1usize;
        let mut deleted = 0usize;
        while deleted < 100_000 && next <= ROWS {
            let size = match rng.next() % 10 {
                0 => 1 + (rng.next() % 5000) as usize,
                1..=3 => 1 + (rng.next() % 500) as usize,
                _ => 1 + (rng.next() % 20) as usize,
            };
            let hi = (next + size - 1).min(ROWS);
            let rollback = rng.next().is_multiple_of(10);
            c.batch_execute(&format!(
                "BEGIN; DELETE FROM cache WHERE substr(cache_key, 2)::int BETWEEN {next} AND {hi}; {}",
                if rollback { "ROLLBACK" } else { "COMMIT" }
            ))
            .await
            .unwrap();
            if !rollback {
                deleted += hi - next + 1;
                next = hi + 1;
            }
        }
    });

    let mut rng = Rng(0xdecaf);
    let mut kills = 0;
    while kills < 20 || !workload.is_finished() {
        wait_slot_inactive(&env).await;
        let bg = env.start_capture(&out, &["cache"], &["--keep-slot", "-q"]).await;
        // Let it run for a random while (10–400 ms), then kill -9: mid-transaction, mid-line, between
        // fsync and acknowledgement — wherever it happens to be.
        tokio::time::sleep(Duration::from_millis(10 + rng.next() % 390)).await;
        let mut child = bg.child;
        child.start_kill().unwrap();
        child.wait().await.unwrap();
        kills += 1;
        assert!(kills < 500, "workload did not finish");
    }
    workload.await.unwrap();
    wait_slot_inactive(&env).await;
    let end = env.lsn().await;
    let r = env.capture(&out, &["cache"], &["--endpos", &end]).await;
    r.assert_code(0);
    let present: BTreeSet<String> =
        env.sql.query("SELECT cache_key FROM cache", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert!(ROWS - present.len() >= 100_000);
    assert_exactly_vanished(&records(&out), &present, ROWS);
    eprintln!("killed {kills} times; {} rows deleted", ROWS - present.len());
}

async fn delete_batch(dsn: &str, from: usize, to: usize) {
    let c = connect(dsn).await;
    for lo in (from..to).step_by(50) {
        c.batch_execute(&format!(
            "DELETE FROM cache WHERE substr(cache_key, 2)::int BETWEEN {} AND {}",
            lo + 1,
            (lo + 50).min(to)
        ))
        .await
        .unwrap();
    }
}

/// Waits until `what` occurs at least `n` times in the file.
async fn wait_for_log(path: &std::path::Path, what: &str, n: usize) {
    wait_until(
        &format!("{what} {n} times in {}", path.display()),
        Duration::from_secs(60),
        || async move { (file_text(path).matches(what).count() >= n).then_some(()) },
        || file_text(path),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restarts_and_cut_connections_lose_and_duplicate_nothing() {
    const ROWS: usize = 5000;
    let env = Env::with(walwitness::cluster::ClusterOptions::default()).await;
    env.exec(&format!("{CACHE} INSERT INTO cache SELECT 'k' || g, 'v', now() FROM generate_series(1, {ROWS}) g;"))
        .await;
    let proxy = Proxy::start(env.cluster.port()).await;
    let via_proxy = format!("host=127.0.0.1 port={} user=postgres dbname=postgres", proxy.port);
    let out = env.log_path("r.jsonl");
    let bg = env
        .start_capture_dsn(&via_proxy, &out, &["cache"], &["--reconnect-attempts", "40", "--reconnect-max-delay", "1s"])
        .await;
    // After each fault, wait until the capture has logged the rows deleted since (it is connected to the
    // restarted server again), so every fault hits a live stream.
    let logged = |k: usize| format!("\"cache_key\":\"k{k}\"");
    delete_batch(&env.dsn, 0, 1000).await;
    wait_for_log(&out, &logged(1000), 1).await;
    env.cluster.restart(walwitness::cluster::StopMode::Fast).unwrap();
    delete_batch(&env.dsn, 1000, 2000).await;
    wait_for_log(&out, &logged(2000), 1).await;
    env.cluster.restart(walwitness::cluster::StopMode::Immediate).unwrap();
    delete_batch(&env.dsn, 2000, 3000).await;
    wait_for_log(&out, &logged(3000), 1).await;
    // Cut the TCP connection right after a large transaction committed, while it is being sent.
    let c = connect(&env.dsn).await;
    c.batch_execute("DELETE FROM cache WHERE substr(cache_key, 2)::int BETWEEN 3001 AND 4000").await.unwrap();
    proxy.cut();
    delete_batch(&env.dsn, 4000, 4500).await;
    wait_for_log(&out, &logged(4500), 1).await;
    proxy.cut();
    let stderr = env.stop_capture(bg).await;
    assert!(stderr.matches("reconnected").count() >= 3, "{stderr}");
    let sql = connect(&env.dsn).await;
    let present: BTreeSet<String> =
        sql.query("SELECT cache_key FROM cache", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(present.len(), ROWS - 4500);
    assert_exactly_vanished(&records(&out), &present, ROWS);
    let slots: i64 = sql.query_one("SELECT count(*) FROM pg_replication_slots", &[]).await.unwrap().get(0);
    assert_eq!(slots, 0, "a deliberate end after reconnects still drops the slot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disk_full_stops_without_acknowledging() {
    let env = Env::start().await;
    env.exec(&format!("{CACHE} INSERT INTO cache SELECT 'k' || g, 'v', now() FROM generate_series(1, 100) g;")).await;
    let start = env.lsn().await;
    let ok = env.log_path("ok.jsonl");
    env.capture(&ok, &["cache"], &["--endpos", &start, "--keep-slot"]).await.assert_code(0);
    env.exec("DELETE FROM cache WHERE cache_key = 'k1'").await;
    let end = env.lsn().await;
    // /dev/full accepts the open and fails every write with ENOSPC.
    let r = env.capture(std::path::Path::new("/dev/full"), &["cache"], &["--endpos", &end]).await;
    r.assert_code(11);
    assert!(r.stderr.contains("No space left on device"), "{r}");
    // The slot stays (not a deliberate end) and did not move past what could not be written.
    let row =
        env.sql.query_one("SELECT confirmed_flush_lsn::text, active FROM pg_replication_slots", &[]).await.unwrap();
    assert!(lsn_num(&row.get::<_, String>(0)) < lsn_num(&end));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_cut_closes_connections() {
    let env = Env::start().await;
    let proxy = Proxy::start(env.cluster.port()).await;
    let c = connect(&format!("host=127.0.0.1 port={} user=postgres dbname=postgres", proxy.port)).await;
    c.batch_execute("SELECT 1").await.unwrap();
    proxy.cut();
    let c = &c;
    wait_until(
        "the cut to close the connection",
        Duration::from_secs(10),
        || async move { c.is_closed().then_some(()) },
        String::new,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_slot_is_recorded_as_a_gap_and_reported() {
    let env = Env::start().await;
    env.exec(&format!("{CACHE} INSERT INTO cache SELECT 'k' || g, 'v', now() FROM generate_series(1, 100) g;")).await;
    let out = env.log_path("g.jsonl");
    let start = env.lsn().await;
    env.capture(&out, &["cache"], &["--endpos", &start, "--keep-slot"]).await.assert_code(0);
    env.exec("DELETE FROM cache WHERE cache_key = 'k1'").await;
    // Someone drops the slot the log expects to resume from; what happened meanwhile is lost.
    env.exec("SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots").await;
    env.exec("DELETE FROM cache WHERE cache_key = 'k2'").await;
    let mid = env.lsn().await;
    let r = env.capture(&out, &["cache"], &["--endpos", &mid, "--keep-slot"]).await;
    r.assert_code(0);
    assert!(r.stderr.contains("is gone"), "{r}");
    env.exec("DELETE FROM cache WHERE cache_key = 'k3'").await;
    let end = env.lsn().await;
    env.capture(&out, &["cache"], &["--endpos", &end]).await.assert_code(0);
    let recs = records(&out);
    check_structure(&recs);
    let gaps = of_type(&recs, "gap");
    assert_eq!(gaps.len(), 1, "{recs:#?}");
    assert_eq!(gaps[0]["reason"], "slot_missing");
    assert!(lsn_num(gaps[0]["from_lsn"].as_str().unwrap()) <= lsn_num(gaps[0]["to_lsn"].as_str().unwrap()));
    assert_eq!(deleted_keys(&recs, "public.cache", &["cache_key"]), ["k3"]);
    let rep = run_bin(&["report".into(), "--format".into(), "json".into(), out.display().to_string()]).await;
    rep.assert_code(0);
    let v: serde_json::Value = serde_json::from_str(&rep.stdout).unwrap();
    assert_eq!(v["gaps"].as_array().unwrap().len(), 1, "{rep}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_retained_wal_the_capture_gives_up_its_slot() {
    let env = Env::start().await;
    env.exec(&format!("{CACHE} CREATE TABLE filler (id int PRIMARY KEY, pad text);")).await;
    let out = env.log_path("lag.jsonl");
    let bg = env.start_capture(&out, &["cache"], &["--max-retained-wal", "64kB", "--on-lag", "drop"]).await;
    // A transaction left open pins the slot's restart_lsn (decoding must be able to restart before it),
    // so the WAL written meanwhile stays retained however fast the capture acknowledges.
    let blocker = connect(&env.dsn).await;
    blocker.batch_execute("BEGIN; INSERT INTO filler VALUES (0, 'open')").await.unwrap();
    env.exec("INSERT INTO filler SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g; CHECKPOINT;").await;
    let mut child = bg.child;
    let status =
        tokio::time::timeout(Duration::from_secs(60), child.wait()).await.expect("capture kept running").unwrap();
    let stderr = std::fs::read_to_string(&bg.stderr_path).unwrap();
    assert_eq!(status.code(), Some(15), "{stderr}");
    assert!(stderr.contains("--max-retained-wal"), "{stderr}");
    let recs = records(&out);
    assert_eq!(of_type(&recs, "gap")[0]["reason"], "max_retained_wal");
    assert_eq!(of_type(&recs, "capture_stopped")[0]["reason"], "max_retained_wal");
    assert!(env.slots().await.is_empty());
}
