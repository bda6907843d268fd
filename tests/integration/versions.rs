//! Issue 7: behaviour that differs between PostgreSQL majors (see proto-notes/versions.md). These run
//! on every major; each says which difference it pins down.
use crate::util::*;

const CACHE: &str =
    "CREATE TABLE cache (cache_key varchar(255) PRIMARY KEY, value text NOT NULL, expires timestamptz NOT NULL); \
                     INSERT INTO cache SELECT 'k' || g, 'v', now() FROM generate_series(1, 10) g;";

async fn confirmed_flush(env: &Env) -> u64 {
    let s: String =
        env.sql.query_one("SELECT confirmed_flush_lsn::text FROM pg_replication_slots", &[]).await.unwrap().get(0);
    lsn_num(&s)
}

/// PostgreSQL 14 sends an empty Begin/Commit for every transaction in the database; 15+ send nothing
/// for them (only keepalives). Either way no commit record is written, and the slot still moves past
/// them (otherwise an idle watched table on a busy server pins WAL).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unpublished_transactions_are_acknowledged_not_logged() {
    let env = Env::start().await;
    env.exec(&format!("{CACHE} CREATE TABLE other (id int PRIMARY KEY);")).await;
    let out = env.log_path("e.jsonl");
    let start = env.lsn().await;
    env.capture(&out, &["cache"], &["--endpos", &start, "--keep-slot"]).await.assert_code(0);
    for i in 0..200 {
        env.exec(&format!("INSERT INTO other VALUES ({i}); UPDATE cache SET value = 'u{i}' WHERE cache_key = 'k1'"))
            .await;
    }
    let end = env.lsn().await;
    env.capture(&out, &["cache"], &["--endpos", &end, "--keep-slot"]).await.assert_code(0);
    let recs = records(&out);
    check_structure(&recs);
    assert!(of_type(&recs, "commit").is_empty(), "{recs:#?}");
    assert!(
        confirmed_flush(&env).await >= lsn_num(&end),
        "slot not moved past the unpublished transactions (server {})",
        env.cluster.version_num()
    );
}

/// The slot must decode WAL from before its publication existed (the publication was dropped while
/// the slot was kept; the next run creates it again). 14-17 stop with ERROR `publication ... does not
/// exist`; 18 only sends WARNING `skipped loading publication` and would silently leave the DELETE
/// out. Both must end the capture with the same clear error and acknowledge nothing past the gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publication_missing_in_the_wal_is_an_error_on_every_major() {
    let env = Env::start().await;
    env.exec(CACHE).await;
    let out = env.log_path("p.jsonl");
    let start = env.lsn().await;
    env.capture(&out, &["cache"], &["--endpos", &start, "--keep-slot"]).await.assert_code(0);
    let before = confirmed_flush(&env).await;
    let publication = env.publications().await.pop().unwrap();
    env.exec(&format!("DROP PUBLICATION {publication}")).await;
    env.exec("DELETE FROM cache WHERE cache_key = 'k1'").await;
    let end = env.lsn().await;
    for _ in 0..2 {
        // The second run meets the same gap again: nothing was acknowledged past it.
        let r = env.capture(&out, &["cache"], &["--endpos", &end, "--keep-slot"]).await;
        r.assert_code(12);
        assert!(
            r.stderr.contains(&format!("publication {publication} did not exist"))
                && r.stderr.contains("pg_drop_replication_slot"),
            "{r}"
        );
        if env.cluster.version_num() >= 180000 {
            assert!(r.stderr.contains("skipped loading publication"), "{r}");
        } else {
            assert!(r.stderr.contains("does not exist"), "{r}");
        }
    }
    let recs = records(&out);
    check_structure(&recs);
    assert!(of_type(&recs, "commit").is_empty(), "{recs:#?}");
    assert!(confirmed_flush(&env).await < lsn_num(&end));
    assert!(confirmed_flush(&env).await >= before);
}
