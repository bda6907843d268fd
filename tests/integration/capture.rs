//! Issue 2: what `walwitness capture` records, against a real server.
use std::collections::BTreeSet;

use walwitness::cluster::ClusterOptions;

use crate::util::*;

const CACHE: &str =
    "CREATE TABLE cache (cache_key varchar(255) PRIMARY KEY, value text NOT NULL, expires timestamptz NOT NULL);";

fn fill(n: usize) -> String {
    format!("INSERT INTO cache SELECT 'k' || g, 'v' || g, now() FROM generate_series(1, {n}) g;")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_and_multi_row_deletes() {
    let env = Env::start().await;
    env.exec(&format!("{CACHE}{}", fill(20))).await;
    let out = env.log_path("a.jsonl");
    env.capture_around(&out, &["public.cache"], || async {
        env.exec("DELETE FROM cache WHERE cache_key = 'k1'").await;
        env.exec("DELETE FROM cache WHERE cache_key IN ('k2', 'k3', 'k4')").await;
    })
    .await;
    let recs = records(&out);
    check_structure(&recs);
    assert_eq!(deleted_keys(&recs, "public.cache", &["cache_key"]), ["k1", "k2", "k3", "k4"]);
    let commits = of_type(&recs, "commit");
    assert_eq!(commits.len(), 2);
    assert_eq!(commits[1]["deletes"], 3);
    let d = &of_type(&recs, "delete")[0];
    assert_eq!(d["old"], serde_json::Value::Null);
    assert_eq!(d["session"], serde_json::Value::Null);
    assert_eq!(d["origin"], serde_json::Value::Null);
    assert_eq!(d["commit_lsn"], commits[0]["commit_lsn"]);
    assert!(d["commit_time"].as_str().unwrap().ends_with('Z'));
    assert_eq!(d["commit_time"].as_str().unwrap().len(), "2026-11-26T15:04:05.123456Z".len());
    assert!(lsn_num(d["lsn"].as_str().unwrap()) < lsn_num(commits[0]["commit_lsn"].as_str().unwrap()));
    // A deliberate end drops what the capture created.
    assert!(env.slots().await.is_empty());
    assert!(env.publications().await.is_empty());
    let started = of_type(&recs, "capture_started");
    assert_eq!(started.len(), 2);
    assert_eq!(started[0]["tables"][0], "public.cache");
    assert_eq!(started[0]["database"], "postgres");
    assert_eq!(of_type(&recs, "capture_stopped")[1]["reason"], "endpos");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transactions_rollbacks_and_savepoints() {
    let env = Env::start().await;
    env.exec(&format!("{CACHE}{}", fill(100))).await;
    let out = env.log_path("c.jsonl");
    env.capture_around(&out, &["public.cache"], || async {
        let a = connect(&env.dsn).await;
        let b = connect(&env.dsn).await;
        a.batch_execute("BEGIN; DELETE FROM cache WHERE cache_key = 'k10'").await.unwrap();
        b.batch_execute("BEGIN; DELETE FROM cache WHERE cache_key = 'k20'").await.unwrap();
        a.batch_execute("DELETE FROM cache WHERE cache_key = 'k11'").await.unwrap();
        b.batch_execute("COMMIT").await.unwrap();
        a.batch_execute("COMMIT").await.unwrap();
        // Rolled back whole, and rolled back to a savepoint.
        env.exec("BEGIN; DELETE FROM cache WHERE cache_key = 'k30'; ROLLBACK").await;
        env.exec(
            "BEGIN; DELETE FROM cache WHERE cache_key = 'k40'; SAVEPOINT s; DELETE FROM cache WHERE cache_key = 'k41'; \
             ROLLBACK TO SAVEPOINT s; SAVEPOINT t; DELETE FROM cache WHERE cache_key = 'k42'; RELEASE t; COMMIT",
        )
        .await;
    })
    .await;
    let recs = records(&out);
    check_structure(&recs);
    // Commit order: b (k20), then a (k10, k11), then the savepoint transaction.
    assert_eq!(deleted_keys(&recs, "public.cache", &["cache_key"]), ["k20", "k10", "k11", "k40", "k42"]);
    let commits = of_type(&recs, "commit");
    assert_eq!(commits.len(), 3);
    let left: i64 =
        env.sql.query_one("SELECT count(*) FROM cache WHERE cache_key IN ('k30','k41')", &[]).await.unwrap().get(0);
    assert_eq!(left, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_and_cascade() {
    let env = Env::start().await;
    env.exec(
        "CREATE TABLE parent (id int PRIMARY KEY); CREATE TABLE child (id int PRIMARY KEY, p int REFERENCES parent); \
         INSERT INTO parent VALUES (1),(2); INSERT INTO child VALUES (1,1);",
    )
    .await;
    let out = env.log_path("t.jsonl");
    env.capture_around(&out, &["parent", "public.child"], || async {
        env.exec("TRUNCATE child").await;
        env.exec("INSERT INTO child VALUES (2,2)").await;
        env.exec("TRUNCATE parent CASCADE").await;
        env.exec("INSERT INTO parent VALUES (5); TRUNCATE parent RESTART IDENTITY CASCADE").await;
    })
    .await;
    let recs = records(&out);
    check_structure(&recs);
    let t = of_type(&recs, "truncate");
    assert_eq!(t.len(), 3, "{recs:#?}");
    assert_eq!(t[0]["tables"], serde_json::json!(["public.child"]));
    assert_eq!(t[0]["cascade"], false);
    let tables: BTreeSet<&str> = t[1]["tables"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    assert_eq!(tables, BTreeSet::from(["public.parent", "public.child"]));
    assert_eq!(t[1]["cascade"], true);
    assert_eq!(t[2]["restart_identity"], true);
    assert!(of_type(&recs, "delete").is_empty());
    assert_eq!(of_type(&recs, "commit")[0]["truncates"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_identity_full_with_nulls_and_composite_keys() {
    let env = Env::start().await;
    env.exec(
        "CREATE TABLE f (id int PRIMARY KEY, a text, b int); ALTER TABLE f REPLICA IDENTITY FULL; \
         INSERT INTO f VALUES (1, NULL, 7), (2, 'x', NULL); \
         CREATE TABLE nopk (a text, b int); ALTER TABLE nopk REPLICA IDENTITY FULL; INSERT INTO nopk VALUES ('q', NULL); \
         CREATE TABLE comp (tenant int, k text, v text, PRIMARY KEY (tenant, k)); INSERT INTO comp VALUES (1,'a','x'),(2,'b','y');",
    )
    .await;
    let out = env.log_path("f.jsonl");
    env.capture_around(&out, &["f", "nopk", "comp"], || async {
        env.exec("DELETE FROM f; DELETE FROM nopk; DELETE FROM comp WHERE tenant = 2").await;
    })
    .await;
    let recs = records(&out);
    check_structure(&recs);
    let d = of_type(&recs, "delete");
    assert_eq!(d.len(), 4);
    assert_eq!(d[0]["key"], serde_json::json!({"id": "1"}));
    assert_eq!(d[0]["old"], serde_json::json!({"id": "1", "a": null, "b": "7"}));
    assert_eq!(d[1]["old"], serde_json::json!({"id": "2", "a": "x", "b": null}));
    assert_eq!(d[2]["table"], "public.nopk");
    assert_eq!(d[2]["key"], serde_json::Value::Null);
    assert_eq!(d[2]["old"], serde_json::json!({"a": "q", "b": null}));
    assert_eq!(d[3]["key"], serde_json::json!({"tenant": "2", "k": "b"}));
    assert_eq!(d[3]["old"], serde_json::Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quotes_non_ascii_and_mixed_case_names() {
    let env = Env::start().await;
    env.exec(
        "CREATE SCHEMA \"Sales\"; CREATE TABLE \"Sales\".\"Order Lines\" (\"Clé\" text PRIMARY KEY, n int); \
         INSERT INTO \"Sales\".\"Order Lines\" VALUES ('it''s \"quoted\" \\ ünïcødé ✓', 1), (E'tab\\there', 2);",
    )
    .await;
    let out = env.log_path("q.jsonl");
    env.capture_around(&out, &["Sales.Order Lines"], || async {
        env.exec("DELETE FROM \"Sales\".\"Order Lines\"").await;
    })
    .await;
    let recs = records(&out);
    check_structure(&recs);
    let keys: BTreeSet<String> = deleted_keys(&recs, "Sales.Order Lines", &["Clé"]).into_iter().collect();
    assert_eq!(keys, BTreeSet::from(["it's \"quoted\" \\ ünïcødé ✓".to_owned(), "tab\there".to_owned()]));
    assert_eq!(of_type(&recs, "capture_started")[0]["tables"][0], "Sales.Order Lines");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrelated_tables_inserts_and_updates_are_ignored() {
    let env = Env::start().await;
    env.exec(&format!("{CACHE}{} CREATE TABLE other (id int PRIMARY KEY); INSERT INTO other VALUES (1),(2);", fill(5)))
        .await;
    let out = env.log_path("u.jsonl");
    env.capture_around(&out, &["cache"], || async {
        env.exec("INSERT INTO cache VALUES ('new', 'v', now()); UPDATE cache SET value = 'w' WHERE cache_key = 'k1';")
            .await;
        env.exec("DELETE FROM other; TRUNCATE other;").await;
        env.exec("BEGIN; DELETE FROM other; DELETE FROM cache WHERE cache_key = 'k2'; COMMIT;").await;
    })
    .await;
    let recs = records(&out);
    check_structure(&recs);
    assert_eq!(deleted_keys(&recs, "public.cache", &["cache_key"]), ["k2"]);
    assert!(of_type(&recs, "truncate").is_empty());
    assert_eq!(of_type(&recs, "commit").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_origin_is_recorded() {
    let env = Env::start().await;
    env.exec(&format!("{CACHE}{} SELECT pg_replication_origin_create('upstream_eu');", fill(5))).await;
    let out = env.log_path("o.jsonl");
    env.capture_around(&out, &["cache"], || async {
        // Separate statements: one multi-statement query would commit after the reset.
        let c = connect(&env.dsn).await;
        c.batch_execute("SELECT pg_replication_origin_session_setup('upstream_eu')").await.unwrap();
        c.batch_execute("DELETE FROM cache WHERE cache_key = 'k1'").await.unwrap();
        c.batch_execute("SELECT pg_replication_origin_session_reset()").await.unwrap();
        env.exec("DELETE FROM cache WHERE cache_key = 'k2'").await;
    })
    .await;
    let recs = records(&out);
    check_structure(&recs);
    let d = of_type(&recs, "delete");
    assert_eq!(d[0]["origin"], "upstream_eu");
    assert_eq!(d[1]["origin"], serde_json::Value::Null);
    assert_eq!(of_type(&recs, "commit")[0]["origin"], "upstream_eu");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_resumes_without_duplicates_or_gaps() {
    let env = Env::start().await;
    env.exec(&format!("{CACHE}{}", fill(300))).await;
    let out = env.log_path("r.jsonl");
    let start = env.lsn().await;
    env.capture(&out, &["cache"], &["--endpos", &start, "--keep-slot"]).await.assert_code(0);
    for i in 0..3 {
        env.exec(&format!(
            "DELETE FROM cache WHERE cache_key IN (SELECT cache_key FROM cache ORDER BY cache_key LIMIT {})",
            10 + i
        ))
        .await;
        let mid = env.lsn().await;
        env.capture(&out, &["cache"], &["--endpos", &mid, "--keep-slot"]).await.assert_code(0);
    }
    // The slot's confirmed position may lag the log (it is persisted at checkpoints); move the slot back
    // to before everything by resuming from a log whose last transaction the server will send again.
    env.exec("DELETE FROM cache WHERE cache_key = 'k99'").await;
    let end = env.lsn().await;
    env.capture(&out, &["cache"], &["--endpos", &end]).await.assert_code(0);
    let recs = records(&out);
    check_structure(&recs);
    let keys = deleted_keys(&recs, "public.cache", &["cache_key"]);
    let unique: BTreeSet<_> = keys.iter().collect();
    assert_eq!(keys.len(), unique.len(), "duplicates in {keys:?}");
    let left: i64 = env.sql.query_one("SELECT count(*) FROM cache", &[]).await.unwrap().get(0);
    assert_eq!(keys.len() as i64, 300 - left);
    assert!(env.slots().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_transactions_sent_again_are_skipped() {
    // Simulates the server sending already-logged transactions again (slot position persisted only at
    // checkpoints): a second slot starting earlier feeds the same log.
    let env = Env::start().await;
    env.exec(&format!("{CACHE}{}", fill(50))).await;
    let out = env.log_path("d.jsonl");
    let start = env.lsn().await;
    env.capture(&out, &["cache"], &["--endpos", &start, "--keep-slot", "--slot", "first"]).await.assert_code(0);
    env.capture(&out, &["cache"], &["--endpos", &start, "--keep-slot", "--slot", "second"]).await.assert_code(0);
    env.exec("DELETE FROM cache WHERE cache_key LIKE 'k1%'").await;
    env.exec("DELETE FROM cache WHERE cache_key LIKE 'k2%'").await;
    let end = env.lsn().await;
    env.capture(&out, &["cache"], &["--endpos", &end, "--slot", "first"]).await.assert_code(0);
    // "second" still starts before both transactions: the log already has them.
    env.capture(&out, &["cache"], &["--endpos", &end, "--slot", "second"]).await.assert_code(0);
    let recs = records(&out);
    check_structure(&recs);
    assert_eq!(of_type(&recs, "commit").len(), 2);
    let left: i64 = env.sql.query_one("SELECT count(*) FROM cache", &[]).await.unwrap().get(0);
    assert_eq!(of_type(&recs, "delete").len() as i64, 50 - left);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scram_password_over_tcp() {
    let env = Env::with(ClusterOptions { password_auth: true, ..Default::default() }).await;
    env.exec(&format!(
        "{CACHE}{} CREATE ROLE app LOGIN REPLICATION PASSWORD 's3cret pw'; ALTER TABLE cache OWNER TO app; \
         GRANT CREATE ON DATABASE postgres TO app;",
        fill(5)
    ))
    .await;
    let dsn = env.cluster.tcp_dsn("app", Some("s3cret pw"), "postgres");
    let out = env.log_path("s.jsonl");
    let start = env.lsn().await;
    let r = env.capture_dsn(&dsn, &out, &["cache"], &["--endpos", &start, "--keep-slot"]).await;
    r.assert_code(0);
    assert!(!r.stderr.contains("s3cret"), "password printed:\n{r}");
    env.exec("DELETE FROM cache WHERE cache_key = 'k3'").await;
    let end = env.lsn().await;
    env.capture_dsn(&dsn, &out, &["cache"], &["--endpos", &end]).await.assert_code(0);
    assert_eq!(deleted_keys(&records(&out), "public.cache", &["cache_key"]), ["k3"]);
    let bad = env.cluster.tcp_dsn("app", Some("wrong"), "postgres");
    let r = env.capture_dsn(&bad, &env.log_path("bad.jsonl"), &["cache"], &["--endpos", &end]).await;
    r.assert_code(5);
    assert!(!r.stderr.contains("wrong"), "password printed:\n{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_require_and_verify_full() {
    let env = Env::with(ClusterOptions { tls: true, password_auth: true, ..Default::default() }).await;
    env.exec(&format!("{CACHE}{} CREATE ROLE app LOGIN REPLICATION SUPERUSER PASSWORD 'pw';", fill(5))).await;
    let base = env.cluster.tcp_dsn("app", Some("pw"), "postgres");
    let out = env.log_path("tls.jsonl");
    let start = env.lsn().await;
    let req = format!("{base} sslmode=require");
    env.capture_dsn(&req, &out, &["cache"], &["--endpos", &start, "--keep-slot"]).await.assert_code(0);
    env.exec("DELETE FROM cache WHERE cache_key = 'k4'").await;
    let ca = env.cluster.ca_cert().unwrap();
    let full = format!("{base} sslmode=verify-full sslrootcert={}", ca.display());
    let end = env.lsn().await;
    env.capture_dsn(&full, &out, &["cache"], &["--endpos", &end]).await.assert_code(0);
    assert_eq!(deleted_keys(&records(&out), "public.cache", &["cache_key"]), ["k4"]);
    // A CA that did not sign the server's certificate is refused.
    let other = Env::with(ClusterOptions { tls: true, ..Default::default() }).await;
    let wrong = format!("{base} sslmode=verify-full sslrootcert={}", other.cluster.ca_cert().unwrap().display());
    let r = env.capture_dsn(&wrong, &env.log_path("w.jsonl"), &["cache"], &["--endpos", &end]).await;
    r.assert_code(4);
    assert!(r.stderr.to_lowercase().contains("certificate"), "{r}");
    assert!(env.slots().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duration_stops_cleanly_and_drops_objects() {
    let env = Env::start().await;
    env.exec(&format!("{CACHE}{}", fill(5))).await;
    let out = env.log_path("dur.jsonl");
    let r = env.capture(&out, &["cache"], &["--duration", "2s"]).await;
    r.assert_code(0);
    let recs = records(&out);
    assert_eq!(of_type(&recs, "capture_stopped")[0]["reason"], "duration");
    assert!(env.slots().await.is_empty());
    assert!(env.publications().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdout_output() {
    let env = Env::start().await;
    env.exec(&format!("{CACHE}{}", fill(5))).await;
    let start = env.lsn().await;
    let out = env.log_path("unused");
    env.capture(&out, &["cache"], &["--endpos", &start, "--keep-slot"]).await.assert_code(0);
    env.exec("DELETE FROM cache WHERE cache_key = 'k5'").await;
    let end = env.lsn().await;
    let args: Vec<String> = ["capture", "--dsn", &env.dsn, "--table", "cache", "--out", "-", "--endpos", &end]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let r = run_bin(&args).await;
    r.assert_code(0);
    let lines: Vec<serde_json::Value> = r.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    check_structure(&lines);
    assert_eq!(deleted_keys(&lines, "public.cache", &["cache_key"]), ["k5"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_workload_matches_table_contents() {
    // Issue 2, "done means": exactly the committed deleted rows of a 100,000-row mixed workload.
    let env = Env::start().await;
    env.exec(&format!("{CACHE}{}", fill(100_000))).await;
    let out = env.log_path("mix.jsonl");
    env.capture_around(&out, &["cache"], || async {
        let a = connect(&env.dsn).await;
        let b = connect(&env.dsn).await;
        let w1 = async {
            for i in 0..40 {
                // Batches of varied size, some rolled back, interleaved with inserts and updates.
                let lo = i * 1000;
                let hi = lo + 1 + (i * 37) % 900;
                let end = if i % 5 == 4 { "ROLLBACK" } else { "COMMIT" };
                a.batch_execute(&format!(
                    "BEGIN; DELETE FROM cache WHERE substr(cache_key, 2)::int BETWEEN {} AND {}; \
                     INSERT INTO cache VALUES ('n{i}', 'v', now()); UPDATE cache SET value = 'u' WHERE cache_key = 'k{}'; {end}",
                    lo + 1,
                    lo + hi,
                    lo + hi + 5
                ))
                .await
                .unwrap();
            }
        };
        let w2 = async {
            for i in 0..200 {
                let k = 50_000 + i * 7;
                b.batch_execute(&format!("DELETE FROM cache WHERE cache_key = 'k{k}'")).await.unwrap();
            }
            b.batch_execute("DELETE FROM cache WHERE substr(cache_key, 2)::int > 90000 AND cache_key LIKE 'k%'").await.unwrap();
        };
        tokio::join!(w1, w2);
    })
    .await;
    let recs = records(&out);
    check_structure(&recs);
    let keys = deleted_keys(&recs, "public.cache", &["cache_key"]);
    let logged: BTreeSet<String> = keys.iter().cloned().collect();
    assert_eq!(logged.len(), keys.len(), "duplicate delete records");
    let present: BTreeSet<String> =
        env.sql.query("SELECT cache_key FROM cache", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    let expected: BTreeSet<String> = (1..=100_000).map(|i| format!("k{i}")).filter(|k| !present.contains(k)).collect();
    assert_eq!(logged.len(), expected.len());
    assert!(logged == expected, "logged deletes differ from the rows that vanished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_capture_replays_to_the_same_bytes() {
    let env = Env::start().await;
    env.exec(&format!(
        "{CACHE}{} CREATE TABLE f (id int PRIMARY KEY, a text); ALTER TABLE f REPLICA IDENTITY FULL; INSERT INTO f VALUES (1, NULL), (2, 'x');",
        fill(3000)
    ))
    .await;
    let out = env.log_path("live.jsonl");
    let raw = env.log_path("live.raw");
    let raw_s = raw.display().to_string();
    let bg = env
        .start_capture(
            &out,
            &["cache", "f"],
            &["--raw-out", &raw_s, "--attribution", "activity", "--activity-interval", "50ms"],
        )
        .await;
    let c = connect(&env.dsn).await;
    c.batch_execute("BEGIN; DELETE FROM cache WHERE substr(cache_key, 2)::int <= 2000; SELECT pg_sleep(0.3); COMMIT")
        .await
        .unwrap();
    c.batch_execute("DELETE FROM f; TRUNCATE cache").await.unwrap();
    env.exec("DELETE FROM cache WHERE cache_key = 'nonexistent'").await;
    env.stop_capture(bg).await;
    let live = std::fs::read_to_string(&out).unwrap();
    let live_txns: String = live
        .lines()
        .filter(|l| {
            l.starts_with("{\"type\":\"delete\"")
                || l.starts_with("{\"type\":\"statement\"")
                || l.starts_with("{\"type\":\"truncate\"")
                || l.starts_with("{\"type\":\"commit\"")
        })
        // The chain value (the log's, not the transaction's) is the one field offline decoding cannot
        // know: the commit line is compared without it.
        .map(|l| match l.len().checked_sub(76).filter(|&at| l[at..].starts_with(",\"chain\":\"")) {
            Some(at) => format!("{}}}\n", &l[..at]),
            None => format!("{l}\n"),
        })
        .collect();
    assert!(live_txns.contains("\"attributed_by\":\"activity\""), "the sampler saw the long transaction");
    assert_eq!(live_txns.matches("\"chain\"").count(), 0);
    let r = run_bin(&["replay".into(), "--raw".into(), raw_s]).await;
    r.assert_code(0);
    // 2000 rows + commit; then 2 rows of f, the truncate and their commit.
    let statements = live_txns.lines().filter(|l| l.starts_with("{\"type\":\"statement\"")).count();
    assert!(statements >= 1, "the attributed transaction's statement record");
    assert_eq!(live_txns.lines().count() - statements, 2000 + 1 + 2 + 1 + 1, "{}", r.stderr);
    assert!(r.stdout == live_txns, "offline decoding differs from the live log");
}
