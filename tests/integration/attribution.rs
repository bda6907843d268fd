//! Issue 3: every captured delete attributed to the session that ran it — or honestly not.
use std::collections::HashMap;

use serde_json::Value;
use walwitness::cluster::ClusterOptions;

use crate::util::*;

const CACHE: &str =
    "CREATE TABLE cache (cache_key varchar(255) PRIMARY KEY, value text NOT NULL, expires timestamptz NOT NULL); \
     INSERT INTO cache SELECT 'k' || g, 'v', now() FROM generate_series(1, 2000) g;";

struct Client {
    c: tokio_postgres::Client,
    pid: i32,
    app: String,
    user: String,
}

async fn client(dsn: &str, app: &str) -> Client {
    let c = connect(&format!("{dsn} application_name={app}")).await;
    let row = c.query_one("SELECT pg_backend_pid(), session_user::text", &[]).await.unwrap();
    Client { pid: row.get(0), user: row.get(1), c, app: app.to_owned() }
}

/// Several clients delete interleaved rows concurrently, in short and in long transactions.
/// Returns key → (pid, app, user) of the client that deleted it.
async fn concurrent_workload(env: &Env, long_ms: u64) -> HashMap<String, (i32, String, String)> {
    env.exec("CREATE ROLE cron LOGIN; GRANT DELETE, SELECT ON cache TO cron; CREATE ROLE batch LOGIN; GRANT DELETE, SELECT ON cache TO batch;").await;
    let sock = |u: &str| env.cluster.socket_dsn(u, "postgres");
    let clients = vec![
        client(&sock("postgres"), "web-1").await,
        client(&sock("cron"), "cron-cleanup").await,
        client(&sock("batch"), "batch-job").await,
        client(&env.cluster.tcp_dsn("postgres", None, "postgres"), "tcp-client").await,
    ];
    let mut expected = HashMap::new();
    let mut tasks = Vec::new();
    for (n, cl) in clients.into_iter().enumerate() {
        for k in (n..400).step_by(4).map(|i| format!("k{}", i + 1)) {
            expected.insert(k, (cl.pid, cl.app.clone(), cl.user.clone()));
        }
        tasks.push(tokio::spawn(async move {
            let keys: Vec<String> = (n..400).step_by(4).map(|i| format!("'k{}'", i + 1)).collect();
            for (j, chunk) in keys.chunks(10).enumerate() {
                if j % 3 == 0 {
                    // A long transaction: open across several sampling intervals.
                    cl.c.batch_execute(&format!(
                        "BEGIN; DELETE FROM cache WHERE cache_key IN ({}); SELECT pg_sleep({}); COMMIT",
                        chunk.join(","),
                        long_ms as f64 / 1000.0
                    ))
                    .await
                    .unwrap();
                } else {
                    for k in chunk {
                        cl.c.batch_execute(&format!("DELETE FROM cache WHERE cache_key = {k}")).await.unwrap();
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    expected
}

fn session_of(r: &Value) -> Option<(i32, String, String)> {
    let s = &r["session"];
    if s.is_null() {
        return None;
    }
    Some((
        s["pid"].as_i64().unwrap() as i32,
        s["application_name"].as_str().unwrap().to_owned(),
        s["user"].as_str().unwrap().to_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_mode_attributes_every_row_exactly() {
    let env = Env::start().await;
    env.exec(CACHE).await;
    let out = env.log_path("t.jsonl");
    let bg = env.start_capture(&out, &["cache"], &["--attribution", "trigger"]).await;
    let expected = concurrent_workload(&env, 300).await;
    env.stop_capture(bg).await;
    let recs = records(&out);
    check_structure(&recs);
    let deletes = of_type(&recs, "delete");
    assert_eq!(deletes.len(), 400);
    for d in &deletes {
        let key = d["key"]["cache_key"].as_str().unwrap();
        assert_eq!(session_of(d).as_ref(), expected.get(key), "wrong session for {key}: {d}");
        assert_eq!(d["session"]["attributed_by"], "trigger");
        let full = full_session(&recs, d);
        let q = full["query"].as_str().unwrap();
        assert!(q.contains("DELETE FROM cache") && q.contains(key), "query {q} does not show {key}");
        if d["session"]["application_name"] == "tcp-client" {
            assert_eq!(d["session"]["client_addr"], "127.0.0.1");
            assert!(d["session"]["client_port"].as_i64().unwrap() > 0);
        } else {
            assert_eq!(d["session"]["client_addr"], Value::Null);
            assert_eq!(d["session"]["client_port"], Value::Null);
        }
    }
    for c in of_type(&recs, "commit") {
        assert_eq!(c["attribution"], "trigger", "{c}");
    }
    // A deliberate end removes the trigger, its function and schema.
    assert!(!env.catalog_fingerprint().await.iter().any(|o| o.contains("walwitness")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activity_mode_is_right_when_it_answers_and_catches_long_transactions() {
    let env = Env::start().await;
    env.exec(CACHE).await;
    let out = env.log_path("a.jsonl");
    let bg = env.start_capture(&out, &["cache"], &["--attribution", "activity", "--activity-interval", "50ms"]).await;
    // Long transactions stay open 600 ms: twelve sampling intervals.
    let expected = concurrent_workload(&env, 600).await;
    env.stop_capture(bg).await;
    let recs = records(&out);
    check_structure(&recs);
    let mut attributed = 0;
    let mut long_rows = 0;
    for d in of_type(&recs, "delete") {
        let key = d["key"]["cache_key"].as_str().unwrap();
        if let Some(s) = session_of(d) {
            attributed += 1;
            assert_eq!(Some(&s), expected.get(key), "wrong session for {key}: {d}");
            assert_eq!(d["session"]["attributed_by"], "activity");
        }
    }
    // Every row of a long transaction (10 keys each, the IN-list ones) is attributed.
    for c in of_type(&recs, "commit") {
        if c["deletes"] == 10 {
            long_rows += 10;
            assert_eq!(c["attribution"], "activity", "long transaction not attributed: {c}");
        }
    }
    assert!(long_rows >= 100, "expected long transactions, saw {long_rows} rows");
    assert!(attributed >= long_rows);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_function_replica_role_and_forgery() {
    let env = Env::start().await;
    env.exec(&format!(
        "{CACHE} CREATE TABLE other (id int PRIMARY KEY); INSERT INTO other VALUES (1); \
         CREATE FUNCTION purge(p text) RETURNS int LANGUAGE plpgsql AS $$ DECLARE n int; BEGIN \
           DELETE FROM cache WHERE cache_key LIKE p; GET DIAGNOSTICS n = ROW_COUNT; RETURN n; END $$; \
         CREATE ROLE mallory LOGIN;"
    ))
    .await;
    let out = env.log_path("x.jsonl");
    let bg =
        env.start_capture(&out, &["cache", "other"], &["--attribution", "trigger", "--attribution", "activity"]).await;
    let app = client(&env.dsn, "purger").await;
    app.c.batch_execute("SELECT purge('k1%')").await.unwrap();
    // Deletes that bypass ordinary triggers are still logged, without a trigger session.
    let rep = client(&env.dsn, "replica-apply").await;
    rep.c
        .batch_execute("SET session_replication_role = replica; DELETE FROM cache WHERE cache_key = 'k2'")
        .await
        .unwrap();
    // Someone forges our prefix inside their own delete transaction.
    let m = client(&env.cluster.socket_dsn("mallory", "postgres"), "mallory-app").await;
    env.exec("GRANT DELETE, SELECT ON cache TO mallory").await;
    m.c.batch_execute(
        "BEGIN; SELECT pg_logical_emit_message(true, 'walwitness', \
           '0000000000000000000000000000000000000000000000000000000000000000 {\"v\":1,\"pid\":1}'); \
         DELETE FROM cache WHERE cache_key = 'k3'; COMMIT",
    )
    .await
    .unwrap();
    let tr = client(&env.dsn, "truncator").await;
    tr.c.batch_execute("TRUNCATE other").await.unwrap();
    env.stop_capture(bg).await;
    let recs = records(&out);
    check_structure(&recs);
    let deletes = of_type(&recs, "delete");
    let by_key = |k: &str| *deletes.iter().find(|d| d["key"]["cache_key"] == k).unwrap();
    let purged = by_key("k1");
    assert_eq!(purged["session"]["pid"], app.pid);
    assert_eq!(full_session(&recs, purged)["query"], "SELECT purge('k1%')", "the outer statement");
    assert_eq!(full_session(&recs, purged)["trigger_depth"], 0);
    let replica = by_key("k2");
    assert_ne!(replica["session"]["attributed_by"], "trigger");
    assert_eq!(replica["trigger_evidence"], "missing", "{replica}");
    let forged = by_key("k3");
    // The real trigger fired for mallory's DELETE too: the session is mallory's own, not the forged one.
    assert_eq!(forged["session"]["pid"], m.pid);
    assert_eq!(forged["session"]["user"], "mallory");
    let forged_commit = of_type(&recs, "commit").into_iter().find(|c| c["xid"] == forged["xid"]).unwrap();
    assert!(
        forged_commit["rejected_attribution_messages"][0].as_str().unwrap().contains("signature"),
        "{forged_commit}"
    );
    let t = &of_type(&recs, "truncate")[0];
    assert_eq!(t["session"]["pid"], tr.pid);
    assert_eq!(full_session(&recs, t)["query"], "TRUNCATE other");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_remove_idempotent_and_leaves_nothing() {
    let env = Env::start().await;
    env.exec(
        "CREATE TABLE t (id int PRIMARY KEY); CREATE TABLE u (id int PRIMARY KEY); INSERT INTO t VALUES (1), (2);",
    )
    .await;
    let before = env.catalog_fingerprint().await;
    let run = |args: &[&str]| {
        let mut v: Vec<String> = vec!["attribution".into()];
        v.extend(args.iter().map(|s| s.to_string()));
        v
    };
    for _ in 0..2 {
        run_bin(&run(&["install", "--dsn", &env.dsn, "--table", "t", "--table", "u"])).await.assert_code(0);
    }
    let installed = env.catalog_fingerprint().await;
    assert!(installed.iter().any(|o| o == "trigger walwitness_attribution_delete"), "{installed:?}");
    // The user's statement is unaffected: same result as without the trigger.
    let n = env.sql.execute("DELETE FROM t WHERE id = 1", &[]).await.unwrap();
    assert_eq!(n, 1);
    // Nobody but the owner can read the key.
    env.exec("CREATE ROLE eve LOGIN").await;
    let eve = connect(&env.cluster.socket_dsn("eve", "postgres")).await;
    assert!(eve.query("SELECT * FROM walwitness.hmac_key", &[]).await.is_err());
    run_bin(&run(&["remove", "--dsn", &env.dsn, "--table", "t"])).await.assert_code(0);
    assert!(env.catalog_fingerprint().await.iter().any(|o| o.contains("walwitness")), "u still uses it");
    for _ in 0..2 {
        run_bin(&run(&["remove", "--dsn", &env.dsn, "--table", "t", "--table", "u"])).await.assert_code(0);
    }
    let mut after = env.catalog_fingerprint().await;
    after.retain(|o| o != "schema eve");
    assert_eq!(after, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_read_all_stats_own_sessions_are_still_attributed() {
    let env = Env::start().await;
    env.exec(&format!(
        "{CACHE} CREATE ROLE watcher LOGIN REPLICATION; ALTER TABLE cache OWNER TO watcher; GRANT CREATE ON DATABASE postgres TO watcher;"
    ))
    .await;
    let dsn = env.cluster.socket_dsn("watcher", "postgres");
    let out = env.log_path("w.jsonl");
    let bg = env.start_capture_dsn(&dsn, &out, &["cache"], &["--activity-interval", "50ms"]).await;
    let own = client(&dsn, "watcher-own").await;
    own.c.batch_execute("BEGIN; DELETE FROM cache WHERE cache_key = 'k1'; SELECT pg_sleep(0.5); COMMIT").await.unwrap();
    let other = client(&env.dsn, "superuser-app").await;
    other
        .c
        .batch_execute("BEGIN; DELETE FROM cache WHERE cache_key = 'k2'; SELECT pg_sleep(0.5); COMMIT")
        .await
        .unwrap();
    let stderr = env.stop_capture(bg).await;
    assert!(stderr.contains("pg_read_all_stats"), "no warning:\n{stderr}");
    let recs = records(&out);
    let d = of_type(&recs, "delete");
    assert_eq!(d[0]["session"]["pid"], own.pid);
    assert!(full_session(&recs, d[0])["query"].as_str().unwrap().contains("DELETE FROM cache WHERE cache_key = 'k1'"));
    // Another role's session: still identified by pid, user and application, but its details are hidden.
    assert_eq!(d[1]["session"]["pid"], other.pid);
    assert_eq!(d[1]["session"]["application_name"], "superuser-app");
    assert_eq!(full_session(&recs, d[1])["query"], Value::Null);
    assert_eq!(d[1]["session"]["details_hidden"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_names_the_deleting_session() {
    let r = run_bin(&["demo".to_owned(), "--rows".to_owned(), "120".to_owned()]).await;
    r.assert_code(0);
    assert!(r.stdout.contains("application forgotten-cleanup.py"), "{r}");
    assert!(r.stdout.contains("Every vanished row is accounted for."), "{r}");
    // It says which mode it uses, since it is not the capture's default.
    assert!(r.stderr.contains("attribution mode: --attribution trigger,activity"), "{r}");
    assert!(r.stdout.contains("this demo ran with --attribution trigger,activity"), "{r}");
}

/// Issue 12: with the default mode, a script that deletes and then sits idle is named by inference
/// (or by its xid, when a sample caught it open); a client whose statement is gone before any sample
/// is left null with a reason; and after 20 transactions mostly unnamed the capture says, once, how to
/// get exact answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_mode_infers_idle_deleters_and_advises_once() {
    let env = Env::start().await;
    env.exec(CACHE).await;
    let out = env.log_path("infer.jsonl");
    let bg = env.start_capture(&out, &["cache"], &[]).await;
    let script = client(&env.dsn, "forgotten-script").await;
    let busy = client(&env.dsn, "busy-web").await;
    let mut script_keys = Vec::new();
    for round in 0..30 {
        // The busy client's DELETE is replaced by its next statement at once.
        busy.c.batch_execute(&format!("DELETE FROM cache WHERE cache_key = 'k{}'", 1000 + round)).await.unwrap();
        busy.c.batch_execute("SELECT 1").await.unwrap();
        if round % 10 == 0 {
            // The script deletes, then sits idle (its statement stays the last one).
            script
                .c
                .batch_execute(&format!("DELETE FROM \"public\".cache WHERE cache_key = 'k{}'", round + 1))
                .await
                .unwrap();
            script_keys.push(format!("k{}", round + 1));
            tokio::time::sleep(std::time::Duration::from_millis(600)).await;
        }
    }
    let stderr = env.stop_capture(bg).await;
    let recs = records(&out);
    check_structure(&recs);
    let started = of_type(&recs, "capture_started")[0];
    assert_eq!(started["attribution_sources"], serde_json::json!(["activity"]), "{started}");
    assert_eq!(started["activity_interval_ms"], 200, "{started}");
    let commits = of_type(&recs, "commit");
    assert_eq!(commits.len(), 33);
    let mut script_named = 0;
    for c in &commits {
        let key = of_type(&recs, "delete").iter().find(|d| d["xid"] == c["xid"]).unwrap()["key"]["cache_key"].clone();
        let by_script = script_keys.iter().any(|k| key == k.as_str());
        let pid = c["session"]["pid"]
            .as_i64()
            .or_else(|| (c["inferred"]["candidates"] == 1).then(|| c["inferred"]["session"]["pid"].as_i64()).flatten());
        if let Some(pid) = pid {
            let want = if by_script { script.pid } else { busy.pid };
            assert_eq!(pid, i64::from(want), "wrong session: {c}");
            if by_script {
                script_named += 1;
            }
        }
        if c["session"].is_null() && c.get("inferred").is_none() {
            assert!(c["unattributed_reason"].as_str().is_some_and(|r| !r.is_empty()), "{c}");
        }
        if c["inferred"]["candidates"] == 1 {
            assert_eq!(c["inferred"]["session"]["attributed_by"], "inferred", "{c}");
            assert!(c["inferred"]["statement"].as_str().unwrap().starts_with("DELETE"), "{c}");
            assert!(c["inferred"]["statement_start"].as_str().unwrap() <= c["commit_time"].as_str().unwrap(), "{c}");
        }
    }
    assert_eq!(script_named, 3, "the idle script must be named every time: {commits:?}");
    let unnamed = commits.iter().filter(|c| c["session"].is_null() && c["inferred"]["candidates"] != 1).count();
    // The readers take the new fields in their stride.
    let log = out.display().to_string();
    for args in [vec!["tail", &log], vec!["replay", &log], vec!["report", &log], vec!["replay", "--verify", &log]] {
        let r = run_bin(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>()).await;
        r.assert_code(0);
    }
    if unnamed * 4 >= 20 {
        assert_eq!(stderr.matches("have no session named").count(), 1, "{stderr}");
        assert!(stderr.contains("--attribution trigger") && stderr.contains("application_name"), "{stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_password_client_attribution_by_activity() {
    let env = Env::with(ClusterOptions { password_auth: true, ..Default::default() }).await;
    env.exec(&format!("{CACHE} CREATE ROLE app LOGIN PASSWORD 'pw'; GRANT SELECT, DELETE ON cache TO app;")).await;
    let out = env.log_path("tcp.jsonl");
    let bg = env.start_capture(&out, &["cache"], &["--activity-interval", "50ms"]).await;
    let app = client(&env.cluster.tcp_dsn("app", Some("pw"), "postgres"), "tcp-app").await;
    app.c.batch_execute("BEGIN; DELETE FROM cache WHERE cache_key = 'k9'; SELECT pg_sleep(0.4); COMMIT").await.unwrap();
    env.stop_capture(bg).await;
    let recs = records(&out);
    let d = &of_type(&recs, "delete")[0];
    assert_eq!(d["session"]["pid"], app.pid);
    assert_eq!(d["session"]["user"], "app");
    assert_eq!(d["session"]["client_addr"], "127.0.0.1");
    assert!(full_session(&recs, d)["xact_start"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trigger_function_cannot_be_hijacked() {
    // mallory owns the watched table and may create objects in public and temp schemas; the attribution
    // function runs as its (superuser) owner. Nothing mallory defines must run with those rights.
    let env = Env::start().await;
    env.exec(
        "CREATE ROLE mallory LOGIN; GRANT CREATE ON SCHEMA public TO mallory; \
         CREATE TABLE t (id int PRIMARY KEY); ALTER TABLE t OWNER TO mallory; INSERT INTO t VALUES (1), (2);",
    )
    .await;
    run_bin(&["attribution".into(), "install".into(), "--dsn".into(), env.dsn.clone(), "--table".into(), "t".into()])
        .await
        .assert_code(0);
    let m = connect(&env.cluster.socket_dsn("mallory", "postgres")).await;
    for f in [
        "CREATE FUNCTION public.sha256(bytea) RETURNS bytea LANGUAGE sql AS $$ ALTER ROLE mallory SUPERUSER; SELECT $1 $$",
        "CREATE FUNCTION public.left(text, int) RETURNS text LANGUAGE sql AS $$ ALTER ROLE mallory SUPERUSER; SELECT $1 $$",
        "CREATE FUNCTION pg_temp.encode(bytea, text) RETURNS text LANGUAGE sql AS $$ ALTER ROLE mallory SUPERUSER; SELECT 'x' $$",
        // What the closing function (no search_path setting) calls.
        "CREATE FUNCTION public.to_json(text) RETURNS json LANGUAGE sql AS $$ ALTER ROLE mallory SUPERUSER; SELECT '1'::json $$",
        "CREATE FUNCTION public.pg_trigger_depth() RETURNS int LANGUAGE sql AS $$ ALTER ROLE mallory SUPERUSER; SELECT 1 $$",
        // Neither function sets search_path: every operator and function they use must be qualified. Each of
        // these shadows one that an unqualified name would find first on mallory's search_path.
        "CREATE FUNCTION public.array_to_json(anyarray) RETURNS json LANGUAGE sql AS $$ ALTER ROLE mallory SUPERUSER; SELECT '[]'::json $$",
        "CREATE FUNCTION public.timestamptz_send(timestamptz) RETURNS bytea LANGUAGE sql AS $$ ALTER ROLE mallory SUPERUSER; SELECT '\\x00'::bytea $$",
        "CREATE FUNCTION public.current_setting(text) RETURNS text LANGUAGE sql AS $$ ALTER ROLE mallory SUPERUSER; SELECT 'x' $$",
        "CREATE FUNCTION public.host(inet) RETURNS text LANGUAGE sql AS $$ ALTER ROLE mallory SUPERUSER; SELECT 'x' $$",
        "CREATE FUNCTION public.pg_stat_get_backend_pid(int) RETURNS int LANGUAGE sql AS $$ ALTER ROLE mallory SUPERUSER; SELECT 1 $$",
        "CREATE FUNCTION public.convert_to(text, name) RETURNS bytea LANGUAGE sql AS $$ ALTER ROLE mallory SUPERUSER; SELECT '\\x00'::bytea $$",
        "CREATE FUNCTION public.pg_logical_emit_message(boolean, text, text) RETURNS pg_lsn LANGUAGE sql AS $$ ALTER ROLE mallory SUPERUSER; SELECT '0/0'::pg_lsn $$",
        "CREATE FUNCTION public.ev_int(int, int) RETURNS boolean LANGUAGE sql AS $$ ALTER ROLE mallory SUPERUSER; SELECT $1 OPERATOR(pg_catalog.=) $2 $$",
        "CREATE OPERATOR public.= (LEFTARG = int, RIGHTARG = int, FUNCTION = public.ev_int)",
        "CREATE FUNCTION public.ev_oid(oid, oid) RETURNS boolean LANGUAGE sql AS $$ ALTER ROLE mallory SUPERUSER; SELECT $1 OPERATOR(pg_catalog.=) $2 $$",
        "CREATE OPERATOR public.= (LEFTARG = oid, RIGHTARG = oid, FUNCTION = public.ev_oid)",
        "CREATE FUNCTION public.ev_name(name, name) RETURNS boolean LANGUAGE sql AS $$ ALTER ROLE mallory SUPERUSER; SELECT $1 OPERATOR(pg_catalog.=) $2 $$",
        "CREATE OPERATOR public.= (LEFTARG = name, RIGHTARG = name, FUNCTION = public.ev_name)",
        "CREATE FUNCTION public.ev_text(text, text) RETURNS boolean LANGUAGE sql AS $$ ALTER ROLE mallory SUPERUSER; SELECT $1 OPERATOR(pg_catalog.=) $2 $$",
        "CREATE OPERATOR public.= (LEFTARG = text, RIGHTARG = text, FUNCTION = public.ev_text)",
        "CREATE FUNCTION public.ev_cat(text, text) RETURNS text LANGUAGE sql AS $$ ALTER ROLE mallory SUPERUSER; SELECT $1 OPERATOR(pg_catalog.||) $2 $$",
        "CREATE OPERATOR public.|| (LEFTARG = text, RIGHTARG = text, FUNCTION = public.ev_cat)",
        "CREATE FUNCTION public.ev_bcat(bytea, bytea) RETURNS bytea LANGUAGE sql AS $$ ALTER ROLE mallory SUPERUSER; SELECT $1 OPERATOR(pg_catalog.||) $2 $$",
        "CREATE OPERATOR public.|| (LEFTARG = bytea, RIGHTARG = bytea, FUNCTION = public.ev_bcat)",
        "CREATE FUNCTION public.ev_minus(int, int) RETURNS int LANGUAGE sql AS $$ ALTER ROLE mallory SUPERUSER; SELECT $1 OPERATOR(pg_catalog.-) $2 $$",
        "CREATE OPERATOR public.- (LEFTARG = int, RIGHTARG = int, FUNCTION = public.ev_minus)",
        "CREATE FUNCTION public.ev_gt(int, int) RETURNS boolean LANGUAGE sql AS $$ ALTER ROLE mallory SUPERUSER; SELECT $1 OPERATOR(pg_catalog.>) $2 $$",
        "CREATE OPERATOR public.> (LEFTARG = int, RIGHTARG = int, FUNCTION = public.ev_gt)",
        "CREATE FUNCTION public.length(text) RETURNS int LANGUAGE sql AS $$ ALTER ROLE mallory SUPERUSER; SELECT 1 $$",
    ] {
        m.batch_execute(f).await.unwrap();
    }
    m.batch_execute(
        "SET search_path = pg_temp, public, pg_catalog; DELETE FROM t WHERE id OPERATOR(pg_catalog.=) 1; TRUNCATE t",
    )
    .await
    .unwrap();
    let su: bool =
        env.sql.query_one("SELECT rolsuper FROM pg_roles WHERE rolname = 'mallory'", &[]).await.unwrap().get(0);
    assert!(!su, "the attribution function ran mallory's code with its owner's rights");
    // The owner of the table cannot replace or alter the function either.
    assert!(m.batch_execute("CREATE OR REPLACE FUNCTION walwitness.attribution_trigger() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NULL; END $$").await.is_err());
    assert!(m.batch_execute("SELECT * FROM walwitness.hmac_key").await.is_err());
}
