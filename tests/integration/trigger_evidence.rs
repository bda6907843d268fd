//! Issue 11: trigger attribution must tie its evidence to its own rows. Each test reproduces an attack
//! as an attacker would run it and checks that every row is either attributed to the session that
//! really deleted it or flagged `trigger_evidence: "missing"` — never given a decoy's identity.
use serde_json::Value;
use walwitness::cluster::ClusterOptions;

use crate::util::*;

/// `t` (100 rows) owned by `owner`; `app_user` (a role the owner may become) and `deleter` may delete.
const SETUP: &str =
    "CREATE ROLE owner LOGIN; CREATE ROLE app_user; CREATE ROLE deleter LOGIN; GRANT app_user TO owner; \
    CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' FROM generate_series(1, 100) g; \
    ALTER TABLE t OWNER TO owner; GRANT SELECT, DELETE ON t TO app_user, deleter;";

fn rows_between(recs: &[Value], lo: i64, hi: i64) -> Vec<&Value> {
    recs.iter()
        .filter(|r| r["type"] == "delete")
        .filter(|r| r["key"]["id"].as_str().and_then(|s| s.parse::<i64>().ok()).is_some_and(|id| id >= lo && id <= hi))
        .collect()
}

/// Every row is flagged (and carries no trigger session) or attributed to `app`; none to `decoy`.
fn never_the_decoy(recs: &[Value], rows: &[&Value], decoy: &str) {
    for r in rows {
        let s = full_session(recs, r);
        assert_ne!(s["application_name"], decoy, "row attributed to the decoy: {r}\nsession {s}");
        assert_ne!(s["current_user"], "app_user", "row attributed to the decoy's role: {r}\nsession {s}");
        if r["trigger_evidence"] == "missing" {
            assert_ne!(r["session"]["attributed_by"], "trigger", "{r}");
        } else {
            assert_eq!(r["session"]["attributed_by"], "trigger", "neither attributed nor flagged: {r}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn owner_disabling_the_trigger_after_a_decoy_gets_flagged_rows() {
    let env = Env::start().await;
    env.exec(SETUP).await;
    let out = env.log_path("a.jsonl");
    let bg = env.start_capture(&out, &["t"], &["--attribution", "trigger"]).await;
    let owner = connect(&env.cluster.socket_dsn("owner", "postgres")).await;
    // The attack: a decoy statement under another role and application, then the real delete
    // with the opening trigger disabled.
    owner
        .batch_execute(
            "BEGIN; SET LOCAL application_name = 'nightly-retention-job'; SET LOCAL ROLE app_user; \
             DELETE FROM t WHERE id < 0; RESET ROLE; \
             ALTER TABLE t DISABLE TRIGGER walwitness_attribution_delete; SET LOCAL application_name = 'evil'; \
             DELETE FROM t WHERE id BETWEEN 20 AND 29; ALTER TABLE t ENABLE TRIGGER walwitness_attribution_delete; COMMIT",
        )
        .await
        .unwrap();
    // The same with the decoy's closing trigger disabled too, so that its bracket never ends.
    owner
        .batch_execute(
            "BEGIN; ALTER TABLE t DISABLE TRIGGER walwitness_attribution_delete_end; \
             SET LOCAL application_name = 'nightly-retention-job'; SET LOCAL ROLE app_user; \
             DELETE FROM t WHERE id < 0; RESET ROLE; \
             ALTER TABLE t DISABLE TRIGGER walwitness_attribution_delete; SET LOCAL application_name = 'evil'; \
             DELETE FROM t WHERE id BETWEEN 30 AND 39; \
             ALTER TABLE t ENABLE TRIGGER walwitness_attribution_delete; ALTER TABLE t ENABLE TRIGGER walwitness_attribution_delete_end; COMMIT",
        )
        .await
        .unwrap();
    // A later, honest delete in its own transaction is attributed.
    owner.batch_execute("SET application_name = 'honest'; DELETE FROM t WHERE id = 50").await.unwrap();
    env.stop_capture(bg).await;
    let recs = records(&out);
    check_structure(&recs);
    for (lo, hi) in [(20, 29), (30, 39)] {
        let rows = rows_between(&recs, lo, hi);
        assert_eq!(rows.len(), 10);
        never_the_decoy(&recs, &rows, "nightly-retention-job");
        for r in &rows {
            assert_eq!(r["trigger_evidence"], "missing", "{r}");
        }
        let commit = of_type(&recs, "commit").into_iter().find(|c| c["xid"] == rows[0]["xid"]).unwrap();
        assert_eq!(commit["attribution"], "none", "{commit}");
        assert_eq!(commit["trigger_evidence_missing"], 10, "{commit}");
        assert!(commit["trigger_evidence_problems"].is_array(), "{commit}");
    }
    assert_eq!(rows_between(&recs, 20, 29)[0]["trigger_evidence_reason"], "table_altered");
    assert_eq!(rows_between(&recs, 30, 39)[0]["trigger_evidence_reason"], "closing_trigger_disabled");
    let honest = &rows_between(&recs, 50, 50)[0];
    assert_eq!(honest["session"]["application_name"], "honest");
    assert_eq!(honest["session"]["attributed_by"], "trigger");
    assert!(honest["session"]["backend_start"].as_str().is_some_and(|b| b.ends_with('Z')), "{honest}");
    assert!(honest.get("trigger_evidence").is_none(), "{honest}");
}

fn lock_cluster() -> ClusterOptions {
    // A small shared lock table, quick to fill with advisory locks.
    ClusterOptions { extra_conf: vec![("max_locks_per_transaction".into(), "10".into())], ..Default::default() }
}

/// Takes session advisory locks until the shared lock table is full.
const EXHAUST: &str = "DO $$ BEGIN FOR i IN 1..1000000 LOOP BEGIN PERFORM pg_advisory_lock(i); \
    EXCEPTION WHEN out_of_memory THEN EXIT; END; END LOOP; END $$;";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exhausting_the_lock_table_after_a_decoy_does_not_lend_the_decoy_identity() {
    let env = Env::with(lock_cluster()).await;
    env.exec(SETUP).await;
    let out = env.log_path("b.jsonl");
    let bg = env.start_capture(&out, &["t"], &["--attribution", "trigger"]).await;
    let deleter = connect(&env.cluster.socket_dsn("deleter", "postgres")).await;
    deleter.batch_execute("DELETE FROM t WHERE id = 1").await.unwrap();
    deleter
        .batch_execute(&format!(
            "BEGIN; SET LOCAL application_name = 'nightly-retention-job'; DELETE FROM t WHERE id < 0; {EXHAUST} \
             SET LOCAL application_name = 'evil'; DELETE FROM t WHERE id BETWEEN 20 AND 29; \
             SELECT pg_advisory_unlock_all(); COMMIT"
        ))
        .await
        .unwrap();
    env.stop_capture(bg).await;
    let recs = records(&out);
    check_structure(&recs);
    let rows = rows_between(&recs, 20, 29);
    assert_eq!(rows.len(), 10);
    never_the_decoy(&recs, &rows, "nightly-retention-job");
    // The decoy's trigger already holds every lock the trigger needs: the real delete is attributed.
    for r in &rows {
        assert_eq!(r["session"]["application_name"], "evil", "{r}");
        assert_eq!(r["session"]["user"], "deleter");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trigger_that_fails_leaves_an_error_record_and_flags_its_rows() {
    let env = Env::with(lock_cluster()).await;
    env.exec(&format!(
        "{SETUP} {} GRANT SELECT ON {} TO deleter;",
        (1..=16).map(|i| format!("CREATE TABLE x{i} (a int);")).collect::<String>(),
        (1..=16).map(|i| format!("x{i}")).collect::<Vec<_>>().join(", ")
    ))
    .await;
    let out = env.log_path("e.jsonl");
    let bg = env.start_capture(&out, &["t"], &["--attribution", "trigger"]).await;
    let deleter = connect(&env.cluster.socket_dsn("deleter", "postgres")).await;
    deleter.batch_execute("DELETE FROM t WHERE id = 1").await.unwrap();
    // The transaction takes its xid and the locks its delete needs (EXPLAIN plans it: the table and its
    // index in the delete's lock mode, without firing triggers), uses up the backend's fast-path lock
    // slots on other tables, then fills the shared lock table: the trigger cannot lock its key table.
    let from: String = (1..=16).map(|i| format!("x{i}")).collect::<Vec<_>>().join(", ");
    deleter
        .batch_execute(&format!(
            "BEGIN; SET LOCAL application_name = 'evil'; SELECT pg_current_xact_id(), pg_advisory_unlock_all(); \
             SELECT count(*) FROM t WHERE id BETWEEN 20 AND 29; EXPLAIN DELETE FROM t WHERE id BETWEEN 20 AND 29; SELECT 1 FROM {from}; {EXHAUST} \
             DELETE FROM t WHERE id BETWEEN 20 AND 29; SELECT pg_advisory_unlock_all(); COMMIT"
        ))
        .await
        .unwrap_or_else(|e| panic!("{e:?}\n{}", env.cluster.log_tail(30)));
    env.stop_capture(bg).await;
    let recs = records(&out);
    check_structure(&recs);
    let rows = rows_between(&recs, 20, 29);
    assert_eq!(rows.len(), 10, "the user's statement still succeeded");
    let errors = of_type(&recs, "trigger_error");
    assert!(!errors.is_empty(), "no trace of the swallowed error");
    let e = errors[0];
    assert_eq!(e["table"], "public.t");
    assert_eq!(e["xid"], rows[0]["xid"]);
    assert!(e["error"].as_str().unwrap().starts_with("53200"), "{e}");
    for r in &rows {
        assert_eq!(r["trigger_evidence"], "missing", "{r}");
        assert_eq!(r["trigger_evidence_reason"], "trigger_error", "{r}");
        assert_eq!(r["session"], Value::Null);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropped_trigger_and_inheritance_parent_deletes_are_flagged() {
    let env = Env::start().await;
    env.exec(&format!("{SETUP} CREATE TABLE parent (id int, v text); ALTER TABLE parent OWNER TO owner;")).await;
    let out = env.log_path("c.jsonl");
    let bg = env.start_capture(&out, &["t"], &["--attribution", "trigger"]).await;
    let owner = connect(&env.cluster.socket_dsn("owner", "postgres")).await;
    // Through an inheritance parent: only the parent's statement triggers fire.
    owner.batch_execute("ALTER TABLE t INHERIT parent; DELETE FROM parent WHERE id BETWEEN 10 AND 14").await.unwrap();
    owner.batch_execute("ALTER TABLE t NO INHERIT parent").await.unwrap();
    // Disabled in an earlier transaction, then dropped.
    owner.batch_execute("ALTER TABLE t DISABLE TRIGGER walwitness_attribution_delete").await.unwrap();
    owner.batch_execute("DELETE FROM t WHERE id BETWEEN 20 AND 24").await.unwrap();
    owner.batch_execute("DROP TRIGGER walwitness_attribution_delete ON t").await.unwrap();
    owner.batch_execute("DELETE FROM t WHERE id BETWEEN 30 AND 34").await.unwrap();
    env.stop_capture(bg).await;
    let recs = records(&out);
    check_structure(&recs);
    for (lo, hi) in [(10, 14), (20, 24), (30, 34)] {
        let rows = rows_between(&recs, lo, hi);
        assert_eq!(rows.len(), 5);
        for r in &rows {
            assert_eq!(r["trigger_evidence"], "missing", "{r}");
            assert!(r["trigger_evidence_reason"].is_string(), "{r}");
        }
        let commit = of_type(&recs, "commit").into_iter().find(|c| c["xid"] == rows[0]["xid"]).unwrap();
        assert_eq!(commit["trigger_evidence_missing"], 5, "{commit}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_statement_is_written_once_not_per_row() {
    let env = Env::start().await;
    env.exec("CREATE TABLE big (id int PRIMARY KEY); INSERT INTO big SELECT generate_series(1, 2000);").await;
    let out = env.log_path("size.jsonl");
    let bg = env.start_capture(&out, &["big"], &["--attribution", "trigger"]).await;
    // An 8 KB statement (a long comment) deleting 2,000 rows.
    let comment = "x".repeat(8000);
    env.exec(&format!("DELETE FROM big /* {comment} */ WHERE id > 0")).await;
    env.stop_capture(bg).await;
    let recs = records(&out);
    check_structure(&recs);
    assert_eq!(of_type(&recs, "delete").len(), 2000);
    assert_eq!(of_type(&recs, "statement").len(), 1);
    let session = full_session(&recs, of_type(&recs, "delete")[0]);
    assert!(session["query"].as_str().unwrap().contains(&comment));
    assert_eq!(session["query_truncated"], false);
    let bytes = std::fs::metadata(&out).unwrap().len();
    // Format 1 wrote the 8 KB session on each row: 17.3 MB.
    assert!(bytes < 1_000_000, "log of {bytes} bytes");
    eprintln!("2,000-row DELETE with an 8 KB statement: {bytes} bytes of log");
}
