//! Issue 10, items 5, 6 and 11 (names): tables are watched by OID, not by name; partitions belong to
//! their partitioned table; names in the log are unambiguous.
use std::collections::BTreeSet;

use serde_json::{json, Value};

use crate::util::*;

const T: &str =
    "CREATE TABLE t (id int PRIMARY KEY, v text); INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 20) g;";

/// `(schema, name, key id)` of every delete record, in log order.
fn deletes(recs: &[Value]) -> Vec<(String, String, String)> {
    of_type(recs, "delete")
        .iter()
        .map(|r| {
            (
                r["schema"].as_str().unwrap_or("<none>").to_owned(),
                r["name"].as_str().unwrap_or("<none>").to_owned(),
                r["key"]["id"].as_str().unwrap_or("<none>").to_owned(),
            )
        })
        .collect()
}

fn row(schema: &str, name: &str, id: &str) -> (String, String, String) {
    (schema.to_owned(), name.to_owned(), id.to_owned())
}

/// `(previous schema.name, schema.name)` of every relation_renamed record.
fn renames(recs: &[Value]) -> Vec<(String, String)> {
    of_type(recs, "relation_renamed")
        .iter()
        .map(|r| {
            (
                format!("{}.{}", r["previous_schema"].as_str().unwrap(), r["previous_name"].as_str().unwrap()),
                format!("{}.{}", r["schema"].as_str().unwrap(), r["name"].as_str().unwrap()),
            )
        })
        .collect()
}

async fn oid(env: &Env, name: &str) -> u32 {
    env.sql.query_one("SELECT $1::text::regclass::oid", &[&name]).await.unwrap().get(0)
}

/// Renaming a table, or moving it to another schema, for the length of one transaction hid its
/// deletes: they were matched by name. Now they are logged under the name they had when deleted,
/// after a relation_renamed record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renamed_or_moved_inside_a_transaction_is_still_logged() {
    let env = Env::start().await;
    env.exec(&format!("{T} CREATE SCHEMA hide;")).await;
    let t_oid = oid(&env, "public.t").await;
    let out = env.log_path("r.jsonl");
    env.capture_around(&out, &["public.t"], || async {
        env.exec(
            "BEGIN; ALTER TABLE t RENAME TO t_x; DELETE FROM t_x WHERE id <= 3; ALTER TABLE t_x RENAME TO t; COMMIT",
        )
        .await;
        env.exec("BEGIN; ALTER TABLE t SET SCHEMA hide; DELETE FROM hide.t WHERE id = 4; ALTER TABLE hide.t SET SCHEMA public; COMMIT")
            .await;
        env.exec("DELETE FROM t WHERE id = 5").await;
    })
    .await;
    let recs = records(&out);
    check_structure(&recs);
    assert_eq!(
        deletes(&recs),
        [
            row("public", "t_x", "1"),
            row("public", "t_x", "2"),
            row("public", "t_x", "3"),
            row("hide", "t", "4"),
            row("public", "t", "5")
        ],
        "{recs:#?}"
    );
    assert_eq!(of_type(&recs, "delete")[0]["table"], "public.t_x");
    assert_eq!(
        renames(&recs),
        [
            ("public.t".to_owned(), "public.t_x".to_owned()),
            ("public.t_x".to_owned(), "hide.t".to_owned()),
            ("hide.t".to_owned(), "public.t".to_owned())
        ]
    );
    let r = of_type(&recs, "relation_renamed")[0];
    assert_eq!(r["oid"], t_oid);
    assert_eq!(r["xid"], of_type(&recs, "commit")[0]["xid"]);
    let started = of_type(&recs, "capture_started");
    assert_eq!(started[0]["format_version"], 3);
    assert_eq!(started[0]["relations"], json!([{"oid": t_oid, "schema": "public", "name": "t"}]));
    // The readers understand the new record and keep it with its transaction.
    let replay = run_bin(&["replay".into(), out.display().to_string()]).await;
    replay.assert_code(0);
    assert_eq!(replay.stdout.matches("\"relation_renamed\"").count(), 3, "{replay}");
    let tail = run_bin(&["tail".into(), out.display().to_string()]).await;
    tail.assert_code(0);
    assert!(tail.stdout.contains("public.t → public.t_x"), "{tail}");
}

/// A permanent rename while the capture runs: logging goes on under the new name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permanent_rename_does_not_stop_logging() {
    let env = Env::start().await;
    env.exec(T).await;
    let out = env.log_path("p.jsonl");
    let bg = env.start_capture(&out, &["public.t"], &[]).await;
    env.exec("DELETE FROM t WHERE id = 1").await;
    env.exec("ALTER TABLE t RENAME TO t_renamed").await;
    env.exec("DELETE FROM t_renamed WHERE id IN (2, 3)").await;
    env.stop_capture(bg).await;
    let recs = records(&out);
    check_structure(&recs);
    assert_eq!(
        deletes(&recs),
        [row("public", "t", "1"), row("public", "t_renamed", "2"), row("public", "t_renamed", "3")],
        "{recs:#?}"
    );
    assert_eq!(renames(&recs), [("public.t".to_owned(), "public.t_renamed".to_owned())]);
}

/// With a FOR ALL TABLES publication every table is sent: a decoy renamed to the watched table's
/// name was logged as the watched table, and the real one, renamed away, was not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decoy_with_the_watched_name_is_not_the_watched_table() {
    let env = Env::start().await;
    env.exec(&format!(
        "{T} CREATE TABLE decoy (id int PRIMARY KEY); INSERT INTO decoy SELECT generate_series(100, 105); \
         CREATE PUBLICATION everything FOR ALL TABLES;"
    ))
    .await;
    let out = env.log_path("d.jsonl");
    let bg = env.start_capture(&out, &["public.t"], &["--publication", "everything"]).await;
    env.exec("BEGIN; ALTER TABLE t RENAME TO t_old; ALTER TABLE decoy RENAME TO t; COMMIT").await;
    env.exec("DELETE FROM t WHERE id IN (100, 101)").await;
    env.exec("DELETE FROM t_old WHERE id = 7").await;
    env.stop_capture(bg).await;
    let recs = records(&out);
    check_structure(&recs);
    assert_eq!(deletes(&recs), [row("public", "t_old", "7")], "{recs:#?}");
    assert_eq!(renames(&recs), [("public.t".to_owned(), "public.t_old".to_owned())]);
}

const MEASUREMENTS: &str = "CREATE SCHEMA parts; \
    CREATE TABLE m (id int, region text, PRIMARY KEY (id, region)) PARTITION BY RANGE (id); \
    CREATE TABLE parts.m_1 PARTITION OF m FOR VALUES FROM (0) TO (100); \
    CREATE TABLE parts.m_2 PARTITION OF m FOR VALUES FROM (100) TO (200) PARTITION BY LIST (region); \
    CREATE TABLE parts.m_2_eu PARTITION OF parts.m_2 FOR VALUES IN ('eu'); \
    CREATE TABLE parts.m_2_us PARTITION OF parts.m_2 FOR VALUES IN ('us'); \
    INSERT INTO m SELECT g, CASE WHEN g % 2 = 0 THEN 'eu' ELSE 'us' END FROM generate_series(1, 199) g;";

/// `(table, partition schema.name or "", key id)` of every delete record.
fn partition_deletes(recs: &[Value]) -> Vec<(String, String, String)> {
    of_type(recs, "delete")
        .iter()
        .map(|r| {
            let p = &r["partition"];
            let part = if p.is_null() {
                String::new()
            } else {
                format!("{}.{}", p["schema"].as_str().unwrap(), p["name"].as_str().unwrap())
            };
            (r["table"].as_str().unwrap().to_owned(), part, r["key"]["id"].as_str().unwrap().to_owned())
        })
        .collect()
}

fn p(part: &str, id: &str) -> (String, String, String) {
    ("public.m".to_owned(), part.to_owned(), id.to_owned())
}

/// Deletes and truncates of a partitioned table arrive under its partitions (at any depth): they
/// were not logged at all. A TRUNCATE of one partition is logged, naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_table_deletes_and_truncates_are_logged_with_their_partition() {
    let env = Env::start().await;
    env.exec(MEASUREMENTS).await;
    let out = env.log_path("m.jsonl");
    let start = env.lsn().await;
    env.capture(&out, &["m"], &["--endpos", &start, "--keep-slot", "--attribution", "trigger"]).await.assert_code(0);
    env.exec("DELETE FROM m WHERE id IN (5, 150, 151)").await;
    env.exec("DELETE FROM parts.m_1 WHERE id = 6").await;
    env.exec("TRUNCATE parts.m_2_us").await;
    env.exec("TRUNCATE m").await;
    let end = env.lsn().await;
    let run = env.capture(&out, &["m"], &["--endpos", &end, "--attribution", "trigger"]).await;
    run.assert_code(0);
    let recs = records(&out);
    check_structure(&recs);
    assert_eq!(
        partition_deletes(&recs),
        [p("parts.m_1", "5"), p("parts.m_2_eu", "150"), p("parts.m_2_us", "151"), p("parts.m_1", "6")],
        "{recs:#?}"
    );
    let d = of_type(&recs, "delete");
    assert_eq!((d[0]["schema"].as_str(), d[0]["name"].as_str()), (Some("public"), Some("m")));
    // The statement-level trigger on the partitioned table attributes its statement's rows.
    assert_eq!(d[0]["session"]["attributed_by"], "trigger", "{recs:#?}");
    assert!(full_session(&recs, d[0])["query"].as_str().unwrap().contains("DELETE FROM m WHERE"));
    let t = of_type(&recs, "truncate");
    assert_eq!(t.len(), 2, "{recs:#?}");
    assert_eq!(t[0]["tables"], json!(["public.m"]));
    assert_eq!(
        t[0]["relations"],
        json!([{"table": "public.m", "schema": "public", "name": "m", "partition": {"schema": "parts", "name": "m_2_us"}}])
    );
    assert_eq!(t[1]["session"]["attributed_by"], "trigger", "TRUNCATE m fires the table's trigger: {}", t[1]);
    let parts: BTreeSet<&str> =
        t[1]["relations"].as_array().unwrap().iter().map(|r| r["partition"]["name"].as_str().unwrap()).collect();
    assert_eq!(parts, BTreeSet::from(["m_1", "m_2_eu", "m_2_us"]));
    // The reader's --table filter selects by the watched table and by partition.
    let by_partition = run_bin(&[
        "replay".into(),
        "--table".into(),
        "parts.m_1".into(),
        "--type".into(),
        "delete".into(),
        out.display().to_string(),
    ])
    .await;
    by_partition.assert_code(0);
    assert_eq!(by_partition.stdout.lines().count(), 2, "{by_partition}");
    let by_table = run_bin(&[
        "replay".into(),
        "--table".into(),
        "m".into(),
        "--type".into(),
        "delete".into(),
        out.display().to_string(),
    ])
    .await;
    assert_eq!(by_table.stdout.lines().count(), 4, "{by_table}");
}

/// Partitions created or attached while the capture runs are found when the server first describes
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_attached_while_capturing_are_logged() {
    let env = Env::start().await;
    env.exec(MEASUREMENTS).await;
    let out = env.log_path("a.jsonl");
    let version: i32 =
        env.sql.query_one("SELECT current_setting('server_version_num')::int", &[]).await.unwrap().get(0);
    let bg = env.start_capture(&out, &["public.m"], &[]).await;
    env.exec(
        "CREATE TABLE parts.m_3 PARTITION OF m FOR VALUES FROM (200) TO (300); INSERT INTO m VALUES (250, 'eu'); \
         CREATE TABLE loose (id int, region text, PRIMARY KEY (id, region));",
    )
    .await;
    if version >= 150000 {
        // A table with changes decoded before it became a partition: PostgreSQL 14's walsender keeps
        // it unpublished until it reconnects (its pgoutput `rel_sync_cache_relation_cb` does not reset
        // `replicate_valid`), so only 15+ can be asked this.
        env.exec("INSERT INTO loose VALUES (350, 'us'); DELETE FROM loose WHERE id = 350;").await;
    }
    env.exec("ALTER TABLE m ATTACH PARTITION loose FOR VALUES FROM (300) TO (400); INSERT INTO m VALUES (351, 'us');")
        .await;
    env.exec("DELETE FROM m WHERE id IN (250, 351)").await;
    env.stop_capture(bg).await;
    let recs = records(&out);
    check_structure(&recs);
    assert_eq!(partition_deletes(&recs), [p("parts.m_3", "250"), p("public.loose", "351")], "{recs:#?}");
}

/// A partition without a usable replica identity: publishing the table would make its deletes fail,
/// so the capture refuses before changing anything.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_without_replica_identity_is_refused() {
    let env = Env::start().await;
    env.exec(
        "CREATE TABLE n (id int, v text) PARTITION BY RANGE (id); ALTER TABLE n REPLICA IDENTITY FULL; \
         CREATE TABLE n_1 PARTITION OF n FOR VALUES FROM (0) TO (10); INSERT INTO n VALUES (1, 'a');",
    )
    .await;
    let out = env.log_path("n.jsonl");
    let run = env.capture(&out, &["n"], &["--duration", "1s"]).await;
    run.assert_code(9);
    assert!(run.stderr.contains("\"public\".\"n_1\"") && run.stderr.contains("REPLICA IDENTITY FULL"), "{run}");
    assert!(env.slots().await.is_empty() && env.publications().await.is_empty());
    env.exec("DELETE FROM n WHERE id = 1").await;
}

/// Inheritance children are tables of their own: not logged (the capture says so), and not put in
/// the publication, where a child without a replica identity would make its deletes fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inheritance_children_are_not_watched_and_keep_working() {
    let env = Env::start().await;
    env.exec(
        "CREATE TABLE parent (id int PRIMARY KEY); CREATE TABLE kid (extra text) INHERITS (parent); \
         INSERT INTO parent VALUES (1), (2); INSERT INTO kid VALUES (3, 'x'), (4, 'y');",
    )
    .await;
    let out = env.log_path("i.jsonl");
    let bg = env.start_capture(&out, &["parent"], &[]).await;
    env.exec("DELETE FROM parent WHERE id IN (1, 3)").await;
    env.exec("DELETE FROM kid WHERE id = 4").await;
    let stderr = env.stop_capture(bg).await;
    assert!(stderr.contains("inheritance children (kid)"), "{stderr}");
    let recs = records(&out);
    check_structure(&recs);
    assert_eq!(deletes(&recs), [row("public", "parent", "1")], "{recs:#?}");
    let doctor = run_bin(&["doctor".into(), "--dsn".into(), env.dsn.clone(), "--table".into(), "parent".into()]).await;
    assert!(format!("{}{}", doctor.stdout, doctor.stderr).contains("inheritance children (kid)"), "{doctor}");
}

/// `"a.b"."c"` and `"a"."b.c"` both print as `a.b.c` in `table`: `schema` and `name` tell them apart,
/// and the readers' --table filter uses them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_dots_are_unambiguous() {
    let env = Env::start().await;
    env.exec(
        "CREATE SCHEMA \"a.b\"; CREATE SCHEMA a; CREATE TABLE \"a.b\".c (id int PRIMARY KEY); \
         CREATE TABLE a.\"b.c\" (id int PRIMARY KEY); INSERT INTO \"a.b\".c VALUES (1), (2); INSERT INTO a.\"b.c\" VALUES (1), (2);",
    )
    .await;
    let out = env.log_path("n.jsonl");
    env.capture_around(&out, &["\"a.b\".c", "a.\"b.c\""], || async {
        env.exec("DELETE FROM \"a.b\".c WHERE id = 1").await;
        env.exec("DELETE FROM a.\"b.c\" WHERE id = 2").await;
        env.exec("TRUNCATE a.\"b.c\"").await;
    })
    .await;
    let recs = records(&out);
    check_structure(&recs);
    assert_eq!(deletes(&recs), [row("a.b", "c", "1"), row("a", "b.c", "2")]);
    let d = of_type(&recs, "delete");
    assert_eq!(d[0]["table"], d[1]["table"], "the old field stays as it was");
    let t = of_type(&recs, "truncate");
    assert_eq!(t[0]["relations"], json!([{"table": "a.b.c", "schema": "a", "name": "b.c"}]));
    for (filter, want) in [("\"a.b\".c", vec!["1"]), ("a.\"b.c\"", vec!["2"])] {
        let r = run_bin(&[
            "replay".into(),
            "--table".into(),
            filter.into(),
            "--type".into(),
            "delete".into(),
            out.display().to_string(),
        ])
        .await;
        r.assert_code(0);
        let ids: Vec<String> = r
            .stdout
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap()["key"]["id"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(ids, want, "{filter}: {r}");
    }
}

/// Offline re-decoding of a raw capture knows the partitions found while capturing and renames the
/// same way: the same bytes as the live log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_capture_replays_partitions_and_renames_to_the_same_bytes() {
    let env = Env::start().await;
    env.exec(&format!("{MEASUREMENTS} {T}")).await;
    let out = env.log_path("live.jsonl");
    let raw = env.log_path("live.raw");
    let raw_s = raw.display().to_string();
    let bg = env.start_capture(&out, &["m", "t"], &["--raw-out", &raw_s]).await;
    env.exec("DELETE FROM m WHERE id IN (1, 150)").await;
    env.exec("CREATE TABLE parts.m_3 PARTITION OF m FOR VALUES FROM (200) TO (300); INSERT INTO m VALUES (201, 'eu')")
        .await;
    env.exec("BEGIN; ALTER TABLE t RENAME TO t_x; DELETE FROM t_x WHERE id = 1; DELETE FROM m WHERE id = 201; COMMIT")
        .await;
    env.exec("TRUNCATE parts.m_3").await;
    env.stop_capture(bg).await;
    let live = std::fs::read_to_string(&out).unwrap();
    // The chain value (the log's, not the transaction's) is the one field offline decoding cannot know.
    let live_txns: String = live
        .lines()
        .filter(|l| !l.starts_with("{\"type\":\"capture_"))
        .map(|l| match l.len().checked_sub(76).filter(|&at| l[at..].starts_with(",\"chain\":\"")) {
            Some(at) => format!("{}}}\n", &l[..at]),
            None => format!("{l}\n"),
        })
        .collect();
    assert!(live_txns.contains("\"name\":\"m_3\"") && live_txns.contains("relation_renamed"), "{live}");
    let r = run_bin(&["replay".into(), "--raw".into(), raw_s]).await;
    r.assert_code(0);
    assert_eq!(r.stdout, live_txns, "offline decoding differs from the live log");
}

/// Transactions streamed before they commit (logical_decoding_work_mem exceeded) are assembled from
/// their spools: a partition the server first describes there, and a rename inside, are handled the
/// same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streamed_transactions_rename_and_partitions() {
    let env = Env::start().await;
    env.exec(&format!("{MEASUREMENTS} {T}")).await;
    let out = env.log_path("s.jsonl");
    let bg = env.start_capture(&out, &["m", "t"], &["--logical-decoding-work-mem", "64kB"]).await;
    env.exec(
        "CREATE TABLE parts.m_big PARTITION OF m FOR VALUES FROM (1000) TO (20000); \
         INSERT INTO m SELECT g, 'eu' FROM generate_series(1000, 4999) g;",
    )
    .await;
    env.exec(
        "BEGIN; ALTER TABLE t RENAME TO t_s; DELETE FROM t_s WHERE id = 2; DELETE FROM m WHERE id >= 1000; COMMIT",
    )
    .await;
    env.stop_capture(bg).await;
    let recs = records(&out);
    check_structure(&recs);
    let d = partition_deletes(&recs);
    assert_eq!(d.len(), 4001, "{:?}", &d[..d.len().min(5)]);
    assert_eq!(d[0], ("public.t_s".to_owned(), String::new(), "2".to_owned()));
    assert!(d[1..].iter().all(|r| r.0 == "public.m" && r.1 == "parts.m_big"), "{:?}", &d[1..3]);
    assert_eq!(renames(&recs), [("public.t".to_owned(), "public.t_s".to_owned())]);
}
