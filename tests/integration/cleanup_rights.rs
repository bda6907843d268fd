//! Issue 11, clean stop and prerequisites: trigger attribution with the least rights a role can have
//! (REPLICATION, CREATE on the database, TRIGGER on the table but not its ownership). What is installed
//! must be removable by the role that installs it; a deliberate end tries every cleanup step and says,
//! in `capture_stopped` and on stderr, exactly what is left and how to remove it.
use serde_json::Value;

use crate::util::*;

/// `cache` and `other` belong to `app_owner`; `witness` may replicate, create schemas and triggers.
const SETUP: &str = "CREATE ROLE app_owner; \
    CREATE TABLE cache (cache_key text PRIMARY KEY, value text NOT NULL); \
    INSERT INTO cache SELECT 'k' || g, 'v' FROM generate_series(1, 100) g; \
    CREATE TABLE other (id int PRIMARY KEY); \
    ALTER TABLE cache OWNER TO app_owner; ALTER TABLE other OWNER TO app_owner; \
    CREATE ROLE witness LOGIN REPLICATION; GRANT CREATE ON DATABASE postgres TO witness; \
    GRANT TRIGGER ON cache, other TO witness;";

fn args(cmd: &[&str]) -> Vec<String> {
    cmd.iter().map(|s| s.to_string()).collect()
}

fn stopped(out: &std::path::Path) -> Value {
    let recs = records(out);
    check_structure(&recs);
    let s = of_type(&recs, "capture_stopped");
    assert_eq!(s.len(), 1, "one capture_stopped expected: {recs:?}");
    s[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_privilege_without_ownership_is_refused_before_anything_is_installed() {
    // Before: the triggers were installed, the stop failed with "must be owner of table cache" and
    // returned before dropping the slot — triggers, schema and a slot holding WAL stayed, and the log
    // said `slot_kept: false`.
    let env = Env::start().await;
    env.exec(SETUP).await;
    // The least rights cannot create a publication (that needs ownership): the owner gives one.
    env.exec("CREATE PUBLICATION audit FOR TABLE ONLY cache WITH (publish = 'delete, truncate')").await;
    let before = env.catalog_fingerprint().await;
    let dsn = env.cluster.socket_dsn("witness", "postgres");
    let out = env.log_path("refused.jsonl");
    let end = env.lsn().await;
    let run = env
        .capture_dsn(&dsn, &out, &["cache"], &["--publication", "audit", "--attribution", "trigger", "--endpos", &end])
        .await;
    run.assert_code(7);
    assert!(run.stderr.contains("nothing was installed"), "{run}");
    assert!(run.stderr.contains(r#"GRANT "app_owner" TO "witness";"#), "the fix is not given:\n{run}");
    assert!(run.stderr.contains("capture as role app_owner"), "the other way is not given:\n{run}");
    assert!(env.slots().await.is_empty(), "a slot was left: {:?}", env.slots().await);
    assert_eq!(env.catalog_fingerprint().await, before, "the server was changed");
    assert!(!std::fs::read_to_string(&out).unwrap_or_default().contains("capture_started"));

    // `attribution install` refuses the same way.
    let r = run_bin(&args(&["attribution", "install", "--dsn", &dsn, "--table", "cache"])).await;
    r.assert_code(7);
    assert!(r.stderr.contains(r#"GRANT "app_owner" TO "witness";"#), "{r}");
    assert_eq!(env.catalog_fingerprint().await, before);

    // The doctor says so beforehand, and checks the given publication instead of the right to create one.
    let doctor =
        args(&["doctor", "--dsn", &dsn, "--table", "cache", "--attribution", "trigger", "--publication", "audit"]);
    let r = run_bin(&doctor).await;
    r.assert_code(6);
    assert!(r.stdout.contains(r#"FAIL  trigger attribution: role witness could install"#), "{r}");
    assert!(r.stdout.contains(r#"GRANT "app_owner" TO "witness";"#), "{r}");
    assert!(r.stdout.contains("ok    publication audit includes public.cache, all rows"), "{r}");
    assert!(!r.stdout.contains("can create its publication") && !r.stdout.contains("creating the publication"), "{r}");

    // With the fix applied, everything is ready, and the capture runs and stops clean.
    env.exec("GRANT app_owner TO witness").await;
    let r = run_bin(&doctor).await;
    r.assert_code(0);
    assert!(
        r.stdout.contains("ok    trigger attribution: role witness can install the triggers on public.cache"),
        "{r}"
    );
    let end = env.lsn().await;
    env.capture_dsn(&dsn, &out, &["cache"], &["--publication", "audit", "--attribution", "trigger", "--endpos", &end])
        .await
        .assert_code(0);
    assert_eq!(env.catalog_fingerprint().await, before);
    assert!(env.slots().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_without_create_on_the_database() {
    let env = Env::start().await;
    env.exec(&format!("{SETUP} GRANT app_owner TO witness; REVOKE CREATE ON DATABASE postgres FROM witness;")).await;
    let dsn = env.cluster.socket_dsn("witness", "postgres");
    let r = run_bin(&args(&["doctor", "--dsn", &dsn, "--table", "cache", "--attribution", "trigger"])).await;
    r.assert_code(6);
    assert!(r.stdout.contains(r#"GRANT CREATE ON DATABASE "postgres" TO "witness";"#), "{r}");
}

/// Amazon RDS grants replication through membership in `rds_replication`, not the attribute: doctor
/// recognises it, and names the grant when it is missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_recognises_a_managed_replication_role() {
    let env = Env::start().await;
    env.exec(&format!("{SETUP} ALTER ROLE witness NOREPLICATION; CREATE ROLE rds_replication NOLOGIN;")).await;
    let dsn = env.cluster.socket_dsn("witness", "postgres");
    let r = run_bin(&args(&["doctor", "--dsn", &dsn, "--table", "cache"])).await;
    assert!(r.stdout.contains(r#"GRANT rds_replication TO "witness";"#), "{r}");
    env.exec("GRANT rds_replication TO witness;").await;
    let r = run_bin(&args(&["doctor", "--dsn", &dsn, "--table", "cache"])).await;
    assert!(r.stdout.contains("may open replication connections (member of rds_replication, Amazon RDS"), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_membership_in_the_owner_role_a_stop_leaves_nothing() {
    let env = Env::start().await;
    env.exec(&format!("{SETUP} GRANT app_owner TO witness;")).await;
    let before = env.catalog_fingerprint().await;
    let dsn = env.cluster.socket_dsn("witness", "postgres");
    let out = env.log_path("member.jsonl");
    let bg = env.start_capture_dsn(&dsn, &out, &["cache"], &["--attribution", "trigger"]).await;
    env.exec("DELETE FROM cache WHERE cache_key IN ('k1', 'k2')").await;
    env.stop_capture(bg).await;
    let s = stopped(&out);
    assert_eq!(s["slot_kept"], false, "{s}");
    assert_eq!(s["left_behind"], serde_json::json!([]), "{s}");
    let recs = records(&out);
    let d = of_type(&recs, "delete");
    assert_eq!(d.len(), 2);
    assert_eq!(d[0]["session"]["attributed_by"], "trigger");
    assert_eq!(env.catalog_fingerprint().await, before);
    assert!(env.slots().await.is_empty());
    assert!(env.publications().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_that_cannot_remove_everything_says_what_is_left_and_how() {
    let env = Env::start().await;
    env.exec(&format!("{SETUP} GRANT app_owner TO witness;")).await;
    let before = env.catalog_fingerprint().await;
    let dsn = env.cluster.socket_dsn("witness", "postgres");
    // Another table uses the attribution schema too, so it must stay.
    run_bin(&args(&["attribution", "install", "--dsn", &dsn, "--table", "other"])).await.assert_code(0);
    let out = env.log_path("partial.jsonl");
    let bg = env.start_capture_dsn(&dsn, &out, &["cache"], &["--attribution", "trigger"]).await;
    // Mid-run, the role loses the owner's privileges and REPLICATION: it can remove neither its
    // triggers on cache nor its slot any more.
    env.exec("REVOKE app_owner FROM witness; ALTER ROLE witness NOREPLICATION;").await;
    env.exec("DELETE FROM cache WHERE cache_key = 'k3'").await;
    let (code, stderr) = env.stop_capture_with_code(bg).await;
    assert_eq!(code, Some(16), "cleanup incomplete must exit 16:\n{stderr}");

    let s = stopped(&out);
    assert_eq!(s["slot_kept"], true, "the slot stays, so the log must say so: {s}");
    let left = s["left_behind"].as_array().unwrap();
    let kinds: Vec<&str> = left.iter().map(|l| l["object"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["trigger", "slot"], "{s}");
    assert_eq!(left[0]["table"], "public.cache");
    assert!(left[0]["error"].as_str().unwrap().contains("must be owner"), "{s}");
    assert!(left[0]["run_as"].as_str().unwrap().contains("role app_owner"), "{s}");
    let slot = left[1]["name"].as_str().unwrap();
    assert!(env.slots().await.contains(&slot.to_owned()));
    // The publication the capture created is gone all the same; the schema stays for `other`.
    assert!(env.publications().await.is_empty());
    assert!(stderr.contains("could not remove everything"), "{stderr}");
    assert!(stderr.contains("-- as the owner of public.cache (role app_owner) or a superuser:"), "{stderr}");
    for l in left {
        let sql = l["sql"].as_str().unwrap();
        assert!(stderr.contains(&format!("  {sql}\n")), "{sql} not printed:\n{stderr}");
    }
    assert!(stderr.contains("pg_drop_replication_slot"), "{stderr}");

    // `attribution remove` by the role that lost the owner's privileges says the same (exit 7: only
    // privileges were missing), and removes nothing it must not: the schema still serves cache.
    let r = run_bin(&args(&["attribution", "remove", "--dsn", &dsn, "--table", "other"])).await;
    r.assert_code(7);
    assert!(
        r.stderr.contains(r#"  DROP TRIGGER IF EXISTS "walwitness_attribution_delete" ON "public"."other";"#),
        "{r}"
    );
    assert!(r.stderr.contains("-- as the owner of public.other (role app_owner) or a superuser:"), "{r}");

    // The statements printed are exact: run as they say, they leave only `other`'s install, which
    // `attribution remove` then takes away.
    for l in left {
        env.exec(l["sql"].as_str().unwrap()).await;
    }
    assert!(env.slots().await.is_empty());
    run_bin(&args(&["attribution", "remove", "--dsn", &env.dsn, "--table", "other"])).await.assert_code(0);
    assert_eq!(env.catalog_fingerprint().await, before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_drop_trigger_cannot_remove_go_with_the_schema() {
    // The role lost the owner's privileges mid-run, but nothing else uses its schema: dropping the schema
    // (its own) takes the triggers on cache with it, so the stop still leaves nothing.
    let env = Env::start().await;
    env.exec(&format!("{SETUP} GRANT app_owner TO witness;")).await;
    let before = env.catalog_fingerprint().await;
    let dsn = env.cluster.socket_dsn("witness", "postgres");
    let out = env.log_path("cascade.jsonl");
    let bg = env.start_capture_dsn(&dsn, &out, &["cache"], &["--attribution", "trigger"]).await;
    env.exec("REVOKE app_owner FROM witness").await;
    env.exec("DELETE FROM cache WHERE cache_key = 'k4'").await;
    let stderr = env.stop_capture(bg).await;
    let s = stopped(&out);
    assert_eq!(s["slot_kept"], false, "{s}");
    assert_eq!(s["left_behind"], serde_json::json!([]), "{s}\n{stderr}");
    assert_eq!(env.catalog_fingerprint().await, before);
    assert!(env.slots().await.is_empty());
    assert!(env.publications().await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_checks_a_given_publication() {
    let env = Env::start().await;
    env.exec(
        "CREATE TABLE cache (cache_key text PRIMARY KEY); CREATE TABLE other (id int PRIMARY KEY); \
         CREATE PUBLICATION good FOR TABLE ONLY cache WITH (publish = 'delete, truncate'); \
         CREATE PUBLICATION inserts FOR TABLE ONLY cache WITH (publish = 'insert'); \
         CREATE PUBLICATION deletes FOR TABLE ONLY cache WITH (publish = 'delete'); \
         CREATE PUBLICATION elsewhere FOR TABLE ONLY other;",
    )
    .await;
    // Row filters exist from PostgreSQL 15 on.
    let row_filters = env.cluster.version_num() >= 150000;
    if row_filters {
        env.exec(
            "CREATE PUBLICATION filtered FOR TABLE ONLY cache WHERE (cache_key <> 'keep') WITH (publish = 'delete')",
        )
        .await;
    }
    let doctor = |p: &str| args(&["doctor", "--dsn", &env.dsn, "--table", "cache", "--publication", p]);
    let r = run_bin(&doctor("good")).await;
    r.assert_code(0);
    assert!(r.stdout.contains("ok    publication good publishes deletes"), "{r}");
    assert!(r.stdout.contains("ok    publication good includes public.cache, all rows"), "{r}");

    let r = run_bin(&doctor("inserts")).await;
    r.assert_code(6);
    assert!(r.stdout.contains("FAIL  publication inserts does not publish deletes"), "{r}");

    let r = run_bin(&doctor("deletes")).await;
    r.assert_code(0);
    assert!(r.stdout.contains("warn  publication deletes does not publish TRUNCATE"), "{r}");

    if row_filters {
        let r = run_bin(&doctor("filtered")).await;
        r.assert_code(6);
        assert!(
            r.stdout.contains("FAIL  publication filtered publishes only the rows of public.cache matching WHERE"),
            "{r}"
        );
    }

    let r = run_bin(&doctor("elsewhere")).await;
    r.assert_code(6);
    assert!(r.stdout.contains(r#"FAIL  publication elsewhere does not include public.cache → ALTER PUBLICATION "elsewhere" ADD TABLE ONLY "public"."cache";"#), "{r}");

    let r = run_bin(&doctor("missing")).await;
    r.assert_code(6);
    assert!(r.stdout.contains("FAIL  publication missing does not exist"), "{r}");
}
