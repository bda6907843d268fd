//! Issue 2, item 7: clear refusals with distinct exit codes, and nothing changed on the server.
use walwitness::cluster::ClusterOptions;

use crate::util::*;

async fn assert_untouched(env: &Env) {
    assert!(env.slots().await.is_empty(), "a slot was left behind");
    assert!(env.publications().await.is_empty(), "a publication was left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_not_logical() {
    let env =
        Env::with(ClusterOptions { extra_conf: vec![("wal_level".into(), "replica".into())], ..Default::default() })
            .await;
    env.exec("CREATE TABLE t (id int PRIMARY KEY)").await;
    let r = env.capture(&env.log_path("x"), &["t"], &["--duration", "1s"]).await;
    r.assert_code(6);
    assert!(r.stderr.contains("wal_level") && r.stderr.contains("restart"), "{r}");
    assert_untouched(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals() {
    let env = Env::start().await;
    env.exec(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE n (id int PRIMARY KEY); ALTER TABLE n REPLICA IDENTITY NOTHING; \
         CREATE TABLE nopk (a int); CREATE ROLE plain LOGIN; GRANT SELECT ON t TO plain;",
    )
    .await;
    let out = env.log_path("x");
    let r = env.capture(&out, &["missing"], &["--duration", "1s"]).await;
    r.assert_code(8);
    assert!(r.stderr.contains("public.missing"), "{r}");
    let r = env.capture(&out, &["n"], &["--duration", "1s"]).await;
    r.assert_code(9);
    assert!(r.stderr.contains("REPLICA IDENTITY NOTHING"), "{r}");
    let r = env.capture(&out, &["nopk"], &["--duration", "1s"]).await;
    r.assert_code(9);
    let plain = env.cluster.socket_dsn("plain", "postgres");
    let r = env.capture_dsn(&plain, &out, &["t"], &["--duration", "1s"]).await;
    r.assert_code(7);
    assert!(r.stderr.contains("REPLICATION"), "{r}");
    let r = env.capture_dsn("host=/nonexistent/dir port=1 user=x", &out, &["t"], &["--duration", "1s"]).await;
    r.assert_code(4);
    let r = env.capture_dsn("postgres://u:secretpw@[bad", &out, &["t"], &["--duration", "1s"]).await;
    r.assert_code(3);
    assert!(!r.stderr.contains("secretpw"), "{r}");
    assert_untouched(&env).await;
    let r = env.capture(&env.dir.path().join("no/such/dir/x.jsonl"), &["t"], &["--duration", "1s"]).await;
    r.assert_code(11);
    assert_untouched(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_in_use_names_the_pid() {
    let env = Env::start().await;
    env.exec("CREATE TABLE t (id int PRIMARY KEY)").await;
    let out = env.log_path("a");
    let first = tokio::process::Command::new(BIN)
        .args(["capture", "--dsn", &env.dsn, "--table", "t", "--out", out.to_str().unwrap(), "--slot", "busy", "-q"])
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    // Wait until the first capture holds the slot.
    let pid: i32 = loop {
        let row = env
            .sql
            .query_opt("SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'busy'", &[])
            .await
            .unwrap();
        if let Some(p) = row.and_then(|r| r.get::<_, Option<i32>>(0)) {
            break p;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let r = env.capture(&env.log_path("b"), &["t"], &["--slot", "busy", "--duration", "1s"]).await;
    r.assert_code(10);
    assert!(r.stderr.contains(&pid.to_string()), "{r}");
    // SIGINT ends the first one deliberately: exit 130, slot dropped.
    let id = first.id().unwrap() as i32;
    unsafe { libc::kill(id, libc::SIGINT) };
    let status = first.wait_with_output().await.unwrap().status;
    assert_eq!(status.code(), Some(130));
    assert!(env.slots().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_explains_what_to_fix() {
    let bad =
        Env::with(ClusterOptions { extra_conf: vec![("wal_level".into(), "replica".into())], ..Default::default() })
            .await;
    bad.exec("CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE nopk (a int);").await;
    let run = |dsn: &str, tables: &[&str]| {
        let mut a: Vec<String> = vec!["doctor".into(), "--dsn".into(), dsn.into()];
        for t in tables {
            a.push("--table".into());
            a.push((*t).into());
        }
        a
    };
    let r = run_bin(&run(&bad.dsn, &["t", "nopk", "missing"])).await;
    r.assert_code(6);
    assert!(r.stdout.contains("FAIL  wal_level = replica → ALTER SYSTEM SET wal_level = logical"), "{r}");
    assert!(r.stdout.contains("REPLICA IDENTITY FULL (or add a primary key)"), "{r}");
    assert!(r.stdout.contains("public.missing not found"), "{r}");
    assert!(r.stdout.contains("pgoutput protocol version"), "{r}");
    // Issue 12: one `--format json` spelling across commands, doctor too.
    let mut j = run(&bad.dsn, &["t", "nopk"]);
    j.extend(["--format".into(), "json".into()]);
    let r = run_bin(&j).await;
    r.assert_code(6);
    let doc: serde_json::Value = serde_json::from_str(&r.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {r}"));
    assert_eq!((doc["ready"].as_bool(), doc["exit"].as_i64()), (Some(false), Some(6)), "{doc}");
    let checks = doc["checks"].as_array().unwrap();
    assert!(
        checks
            .iter()
            .any(|c| c["level"] == "fail" && c["message"].as_str().unwrap().starts_with("wal_level = replica")),
        "{doc}"
    );
    assert!(checks.iter().any(|c| c["level"] == "ok"), "{doc}");

    let good = Env::start().await;
    good.exec("CREATE TABLE t (id int PRIMARY KEY); CREATE ROLE lurker LOGIN;").await;
    let r = run_bin(&run(&good.dsn, &["t"])).await;
    r.assert_code(0);
    assert!(r.stdout.contains("ready"), "{r}");
    assert!(r.stdout.contains("`key` = primary key (id)"), "{r}");
    let r = run_bin(&run(&good.cluster.socket_dsn("lurker", "postgres"), &["t"])).await;
    r.assert_code(6);
    assert!(r.stdout.contains("lacks REPLICATION"), "{r}");
    assert!(r.stdout.contains("pg_read_all_stats"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cleanup_removes_everything_walwitness_left() {
    let env = Env::start().await;
    env.exec("CREATE TABLE t (id int PRIMARY KEY)").await;
    let before = env.catalog_fingerprint().await;
    let start = env.lsn().await;
    env.capture(&env.log_path("c.jsonl"), &["t"], &["--endpos", &start, "--keep-slot", "--attribution", "trigger"])
        .await
        .assert_code(0);
    assert_eq!(env.slots().await.len(), 1);
    assert_eq!(env.publications().await.len(), 1);
    let args = |yes: bool| {
        let mut a: Vec<String> = vec!["cleanup".into(), "--dsn".into(), env.dsn.clone()];
        if yes {
            a.push("--yes".into());
        }
        a
    };
    // Without a terminal to ask on and without --yes: lists, refuses, drops nothing.
    let r = run_bin(&args(false)).await;
    r.assert_code(2);
    assert!(r.stdout.contains("slot walwitness_postgres_public_t"), "{r}");
    assert_eq!(env.slots().await.len(), 1);
    run_bin(&args(true)).await.assert_code(0);
    assert!(env.slots().await.is_empty());
    assert!(env.publications().await.is_empty());
    assert_eq!(env.catalog_fingerprint().await, before);
    let r = run_bin(&args(true)).await;
    r.assert_code(0);
    assert!(r.stdout.contains("nothing to clean up"), "{r}");
}
