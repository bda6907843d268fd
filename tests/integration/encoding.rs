//! Issue 10, items 7 and 8: bytes the server will not convert to UTF-8 (SQL_ASCII databases) and logical
//! decoding messages of other applications — neither may stop the capture, hide a delete, or make two
//! different keys print the same; a huge foreign message must not be buffered.
use std::collections::BTreeSet;

use serde_json::Value;

use crate::util::*;

/// A SQL_ASCII database (no encoding validation at all: any role can store any byte) with a watched
/// table, and its DSN.
async fn sql_ascii_db(env: &Env) -> String {
    env.exec("CREATE DATABASE ascii ENCODING 'SQL_ASCII' LC_COLLATE 'C' LC_CTYPE 'C' TEMPLATE template0").await;
    let dsn = env.cluster.socket_dsn("postgres", "ascii");
    let c = connect(&dsn).await;
    c.batch_execute(
        "CREATE TABLE t (k text PRIMARY KEY, v text); \
         CREATE TABLE f (id int PRIMARY KEY, v text); ALTER TABLE f REPLICA IDENTITY FULL;",
    )
    .await
    .unwrap();
    dsn
}

/// The key column's value as logged: `Some(bytes)` for a JSON string (its UTF-8) or a
/// `{"text_hex":…}` object (the decoded bytes), `None` for anything else.
fn logged_bytes(v: &Value) -> Option<Vec<u8>> {
    if let Some(s) = v.as_str() {
        return Some(s.as_bytes().to_vec());
    }
    let hex = v.as_object().filter(|o| o.len() == 1)?.get("text_hex")?.as_str()?;
    // The documented form: lower-case hex digits, two per byte.
    assert!(hex.len() % 2 == 0 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)), "{v}");
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok()).collect()
}

/// SQL for a text literal holding exactly `bytes` (`E'\ooo'` escapes, fine in a SQL_ASCII database).
fn lit(bytes: &[u8]) -> String {
    let mut s = String::from("E'");
    for b in bytes {
        s.push_str(&format!("\\{b:03o}"));
    }
    s.push('\'');
    s
}

/// Keys that are not valid UTF-8, or look like the escaped forms of others.
fn nasty_keys() -> Vec<Vec<u8>> {
    vec![
        b"\xff".to_vec(),
        b"\xfe".to_vec(),
        b"a\xffb".to_vec(),
        b"a\xfeb".to_vec(),
        b"\xc3".to_vec(),         // a truncated two-byte sequence
        b"\xc3\xa9".to_vec(),     // valid UTF-8 "é": stays a string
        b"\xef\xbf\xbd".to_vec(), // U+FFFD itself, what a lossy decoder would print for all the above
        b"\\xff".to_vec(),        // a literal backslash-x-f-f
        b"{\"text_hex\":\"ff\"}".to_vec(),
        b"plain".to_vec(),
    ]
}

/// Items 7: invalid UTF-8 keys and values in a SQL_ASCII database, deleted while a capture runs with the
/// default attribution, each logged with distinct lossless values; then the emit_message attack by an
/// unprivileged role; the capture keeps running and logs the deletes after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_ascii_bytes_and_foreign_messages_do_not_stop_the_capture() {
    let env = Env::start().await;
    let dsn = sql_ascii_db(&env).await;
    let keys = nasty_keys();
    let c = connect(&dsn).await;
    for (i, k) in keys.iter().enumerate() {
        c.batch_execute(&format!(
            "INSERT INTO t VALUES ({}, 'v'); INSERT INTO f VALUES ({i}, {});",
            lit(k),
            lit(&[k.as_slice(), b"\xff"].concat())
        ))
        .await
        .unwrap();
    }
    c.batch_execute("INSERT INTO t VALUES ('after-1', 'v'), ('after-2', 'v'), ('after-3', 'v')").await.unwrap();
    env.exec("CREATE ROLE mallory LOGIN").await;
    let out = env.log_path("ascii.jsonl");
    let raw = env.log_path("ascii.raw");
    let bg = env
        .start_capture_dsn(&dsn, &out, &["t", "f"], &["--reconnect-attempts", "1", "--raw-out", raw.to_str().unwrap()])
        .await;

    for k in &keys {
        c.batch_execute(&format!("DELETE FROM t WHERE k = {}", lit(k))).await.unwrap();
    }
    c.batch_execute("DELETE FROM f").await.unwrap();
    // Any role can write logical decoding messages with any prefix and content.
    let m = connect(&env.cluster.socket_dsn("mallory", "ascii")).await;
    m.batch_execute("SELECT pg_logical_emit_message(false, E'\\377', 'x')").await.unwrap();
    m.batch_execute("BEGIN; SELECT pg_logical_emit_message(true, E'\\377', E'\\377'); COMMIT").await.unwrap();
    c.batch_execute("DELETE FROM t WHERE k = 'after-1'").await.unwrap();
    c.batch_execute(
        "BEGIN; SELECT pg_logical_emit_message(true, E'other\\377', 'x'); DELETE FROM t WHERE k = 'after-2'; COMMIT",
    )
    .await
    .unwrap();
    c.batch_execute("DELETE FROM t WHERE k = 'after-3'").await.unwrap();
    let stderr = env.stop_capture(bg).await;

    let recs = records(&out);
    check_structure(&recs);
    let logged: Vec<Vec<u8>> = recs
        .iter()
        .filter(|r| r["type"] == "delete" && r["table"] == "public.t")
        .map(|r| logged_bytes(&r["key"]["k"]).unwrap_or_else(|| panic!("key not in a documented form: {r}")))
        .collect();
    let mut want = keys.clone();
    want.extend([b"after-1".to_vec(), b"after-2".to_vec(), b"after-3".to_vec()]);
    assert_eq!(logged, want, "every key logged, in order, losslessly\n{stderr}");
    // Valid UTF-8 stays a plain string; only invalid bytes use the hex form.
    for r in recs.iter().filter(|r| r["type"] == "delete" && r["table"] == "public.t") {
        let k = &r["key"]["k"];
        let raw = logged_bytes(k).unwrap();
        assert_eq!(k.is_string(), std::str::from_utf8(&raw).is_ok(), "{k}");
    }
    // Two different keys never print the same.
    let printed: BTreeSet<String> = recs
        .iter()
        .filter(|r| r["type"] == "delete" && r["table"] == "public.t")
        .map(|r| r["key"].to_string())
        .collect();
    assert_eq!(printed.len(), want.len(), "two keys printed the same: {printed:?}");
    // REPLICA IDENTITY FULL: every old value lossless too.
    let olds: Vec<Vec<u8>> = recs
        .iter()
        .filter(|r| r["type"] == "delete" && r["table"] == "public.f")
        .map(|r| logged_bytes(&r["old"]["v"]).unwrap())
        .collect();
    let want_old: Vec<Vec<u8>> = keys.iter().map(|k| [k.as_slice(), b"\xff"].concat()).collect();
    assert_eq!(olds, want_old);
    assert!(!stderr.contains("reconnecting"), "the capture lost its stream:\n{stderr}");
    // Without trigger attribution no message is asked for: none reaches the capture (its raw file holds
    // every payload received).
    let raw = std::fs::read(&raw).unwrap();
    assert!(raw.windows(6).any(|w| w == b"after-"), "the raw file holds the stream");
    assert!(!raw.windows(6).any(|w| w == b"other\xff"), "a logical decoding message was sent to the capture");
}

/// Item 7 with trigger attribution on (messages requested): foreign prefixes, invalid UTF-8 prefixes and
/// contents are skipped without being read as text, and the walwitness messages around them still
/// attribute the deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_ascii_foreign_messages_with_trigger_attribution() {
    let env = Env::start().await;
    let dsn = sql_ascii_db(&env).await;
    let c = connect(&dsn).await;
    c.batch_execute(
        "INSERT INTO t SELECT 'k' || g, 'v' FROM generate_series(1, 5) g; INSERT INTO t VALUES (E'\\377', 'v')",
    )
    .await
    .unwrap();
    env.exec("CREATE ROLE mallory LOGIN").await;
    let out = env.log_path("trig.jsonl");
    let bg =
        env.start_capture_dsn(&dsn, &out, &["t"], &["--attribution", "trigger", "--reconnect-attempts", "1"]).await;
    let m = connect(&env.cluster.socket_dsn("mallory", "ascii")).await;
    m.batch_execute("SELECT pg_logical_emit_message(false, E'\\377', 'x')").await.unwrap();
    m.batch_execute("SELECT pg_logical_emit_message(false, 'other', E'\\377\\376')").await.unwrap();
    c.batch_execute("DELETE FROM t WHERE k = 'k1'").await.unwrap();
    c.batch_execute(
        "BEGIN; SELECT pg_logical_emit_message(true, E'\\377', E'\\377'); DELETE FROM t WHERE k = 'k2'; \
         SELECT pg_logical_emit_message(true, 'other', E'\\377\\376'); DELETE FROM t WHERE k = E'\\377'; COMMIT",
    )
    .await
    .unwrap();
    // A prefix that starts like walwitness's.
    c.batch_execute(
        "BEGIN; SELECT pg_logical_emit_message(true, E'walwitness\\377', 'x'); DELETE FROM t WHERE k = 'k3'; COMMIT",
    )
    .await
    .unwrap();
    // 8,200 bytes, 4,100 characters in UTF-8: SQL_ASCII counts them as 8,200, so the trigger cuts the
    // statement at 8,192 of them and must say so (the capture cannot count the database's characters).
    c.batch_execute(&format!("DELETE FROM t WHERE k = 'k4' /* {} */", "é".repeat(4100))).await.unwrap();
    let stderr = env.stop_capture(bg).await;
    let recs = records(&out);
    check_structure(&recs);
    let dels = of_type(&recs, "delete");
    let keys: Vec<Vec<u8>> = dels.iter().map(|r| logged_bytes(&r["key"]["k"]).unwrap()).collect();
    assert_eq!(
        keys,
        vec![b"k1".to_vec(), b"k2".to_vec(), b"\xff".to_vec(), b"k3".to_vec(), b"k4".to_vec()],
        "{stderr}"
    );
    let cut = full_session(&recs, dels[4]);
    assert_eq!(cut["query_truncated"], true, "{cut}");
    assert_eq!(full_session(&recs, dels[0])["query_truncated"], false);
    for d in &dels {
        assert_eq!(d["session"]["attributed_by"], "trigger", "{d}");
    }
    for c in of_type(&recs, "commit") {
        assert!(c.get("rejected_attribution_messages").is_none(), "foreign messages are not forgeries: {c}");
    }
    assert!(!stderr.contains("reconnecting"), "the capture lost its stream:\n{stderr}");
}

/// Waits until the slot confirmed the current WAL position, then returns the capture's peak RSS.
async fn wait_confirmed_peak_rss(env: &Env, bg: &Background) -> u64 {
    wait_confirmed(env, bg).await;
    vm_hwm_kib(bg.child.id().unwrap())
}

/// Item 8: a 64 MiB message of another application (generated server-side), transactional and not, with
/// trigger attribution on: the capture's peak RSS stays far below the message size, and the deletes
/// around it are logged and attributed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_foreign_message_is_not_buffered() {
    const SIZE: u64 = 64 << 20;
    const BOUND_KIB: u64 = 40 * 1024;
    let env = Env::start().await;
    env.exec("CREATE TABLE t (k text PRIMARY KEY); INSERT INTO t SELECT 'k' || g FROM generate_series(1, 4) g;").await;
    let out = env.log_path("big.jsonl");
    let bg = env.start_capture(&out, &["t"], &["--attribution", "trigger", "--reconnect-attempts", "1"]).await;
    env.exec(&format!(
        "BEGIN; DELETE FROM t WHERE k = 'k1'; SELECT pg_logical_emit_message(true, 'other', repeat('x', {SIZE})); \
         DELETE FROM t WHERE k = 'k2'; COMMIT"
    ))
    .await;
    env.exec(&format!("SELECT pg_logical_emit_message(false, 'other', repeat('y', {SIZE}))")).await;
    env.exec("DELETE FROM t WHERE k IN ('k3', 'k4')").await;
    // Once everything up to now is confirmed, the messages have passed through the capture.
    let hwm = wait_confirmed_peak_rss(&env, &bg).await;
    eprintln!("two {} MiB foreign messages: capture peak RSS {hwm} KiB", SIZE >> 20);
    let stderr = env.stop_capture(bg).await;
    assert!(hwm < BOUND_KIB, "peak RSS {hwm} KiB over {BOUND_KIB} KiB: the message was buffered\n{stderr}");
    let recs = records(&out);
    check_structure(&recs);
    let dels = of_type(&recs, "delete");
    let keys: Vec<&str> = dels.iter().map(|r| r["key"]["k"].as_str().unwrap()).collect();
    assert_eq!(keys, ["k1", "k2", "k3", "k4"]);
    for d in &dels {
        assert_eq!(d["session"]["attributed_by"], "trigger", "{d}");
    }
}

/// Item 8 inside a streamed transaction (`--logical-decoding-work-mem 64kB`), where messages carry the
/// `[xid]` field: the foreign message is dropped, the transaction's deletes are logged and attributed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_foreign_message_in_a_streamed_transaction() {
    const SIZE: u64 = 48 << 20;
    let env = Env::start().await;
    env.exec("CREATE TABLE t (k text PRIMARY KEY); INSERT INTO t SELECT 'k' || g FROM generate_series(1, 3000) g;")
        .await;
    let out = env.log_path("streamed.jsonl");
    let bg = env
        .start_capture(
            &out,
            &["t"],
            &["--attribution", "trigger", "--logical-decoding-work-mem", "64kB", "--reconnect-attempts", "1"],
        )
        .await;
    env.exec(&format!(
        "BEGIN; DELETE FROM t WHERE k <= 'k2'; SELECT pg_logical_emit_message(true, 'other', repeat('x', {SIZE})); \
         DELETE FROM t WHERE k > 'k2'; COMMIT"
    ))
    .await;
    let hwm = wait_confirmed_peak_rss(&env, &bg).await;
    let streamed: i64 = env
        .sql
        .query_one("SELECT coalesce(sum(stream_txns), 0)::bigint FROM pg_stat_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    let stderr = env.stop_capture(bg).await;
    eprintln!("{} MiB foreign message in a streamed transaction: capture peak RSS {hwm} KiB", SIZE >> 20);
    assert!(streamed >= 1, "the transaction was not streamed");
    assert!(hwm < 40 * 1024, "peak RSS {hwm} KiB: the message was buffered");
    let recs = records(&out);
    check_structure(&recs);
    let dels = of_type(&recs, "delete");
    assert_eq!(dels.len(), 3000, "{stderr}");
    assert!(dels.iter().all(|d| d["session"]["attributed_by"] == "trigger"));
}
