//! Issue 13, the tamper-evident log: `replay --verify` on logs a real capture wrote, then edited,
//! cut, reordered and truncated; a chain that continues across runs and through the log-tail repair;
//! old logs without the chain.
use sha2::Digest;

use crate::util::*;

const CACHE: &str =
    "CREATE TABLE cache (cache_key varchar(255) PRIMARY KEY, value text NOT NULL, expires timestamptz NOT NULL);";

fn fill(n: usize) -> String {
    format!("INSERT INTO cache SELECT 'k' || g, 'v' || g, now() FROM generate_series(1, {n}) g;")
}

/// The head a capture printed at its stop.
fn printed_head(run: &Run) -> String {
    let at = run.stderr.find("chain head ").unwrap_or_else(|| panic!("no chain head printed\n{run}"));
    let h = &run.stderr[at + "chain head ".len()..][..64];
    assert!(h.bytes().all(|c| c.is_ascii_hexdigit()), "{run}");
    h.to_owned()
}

fn lines(path: &std::path::Path) -> Vec<String> {
    std::fs::read_to_string(path).unwrap().split_inclusive('\n').map(str::to_owned).collect()
}

fn kind(line: &str) -> String {
    serde_json::from_str::<serde_json::Value>(line).unwrap()["type"].as_str().unwrap().to_owned()
}

/// Writes `lines` to a new file and runs `replay --verify` on it (with `extra` arguments).
async fn verify(env: &Env, name: &str, lines: &[String], extra: &[&str]) -> Run {
    let p = env.log_path(name);
    std::fs::write(&p, lines.concat()).unwrap();
    verify_files(&[&p], extra).await
}

async fn verify_files(files: &[&std::path::Path], extra: &[&str]) -> Run {
    let mut args: Vec<String> = vec!["replay".into(), "--verify".into()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(files.iter().map(|p| p.display().to_string()));
    run_bin(&args).await
}

fn assert_tamper_at(run: &Run, name: &str, line: usize) {
    run.assert_code(17);
    assert!(run.stderr.contains(&format!("TAMPER EVIDENCE: {}:{line}:", name)), "expected line {line}\n{run}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_catches_edits_deletions_reordering_and_truncation() {
    let env = Env::start().await;
    env.exec(&format!("{CACHE}{}", fill(40))).await;
    let out = env.log_path("real.jsonl");
    let run = env
        .capture_around(&out, &["public.cache"], || async {
            for i in 0..5 {
                env.exec(&format!(
                    "DELETE FROM cache WHERE cache_key IN ('k{}', 'k{}', 'k{}')",
                    3 * i + 1,
                    3 * i + 2,
                    3 * i + 3
                ))
                .await;
            }
        })
        .await;
    let head = printed_head(&run);
    let recs = records(&out);
    check_structure(&recs);
    // Every record but rows carries a chain value; the last (capture_stopped) carries the head.
    for r in &recs {
        let row = r["type"] == "delete" || r["type"] == "statement";
        assert_eq!(r.get("chain").is_none(), row, "{r}");
    }
    assert_eq!(recs.last().unwrap()["chain"], head.as_str());
    assert_eq!(recs[0]["format_version"], 3);
    assert_eq!(of_type(&recs, "capture_started")[1]["chain_prev"], recs[1]["chain"], "run 2 continues run 1");

    let good = lines(&out);
    let v = verify(&env, "good.jsonl", &good, &[]).await;
    v.assert_code(0);
    assert!(v.stdout.contains("intact") && v.stdout.contains(&head), "{v}");
    verify(&env, "good.jsonl", &good, &["--expect-head", &head]).await.assert_code(0);
    // Readers read the chained log as before.
    let r = run_bin(&["replay".into(), out.display().to_string()]).await;
    r.assert_code(0);
    assert_eq!(r.stdout, good.concat());

    // Lines: run 1 = capture_started, capture_stopped; run 2 = capture_started (3), then transactions
    // of 3 rows and a commit: rows 4-6 commit 7, rows 8-10 commit 11, …, capture_stopped last.
    let commits: Vec<usize> = (0..good.len()).filter(|&i| kind(&good[i]) == "commit").collect();
    assert_eq!(commits.len(), 5);
    let (c1, c2, c3) = (commits[0], commits[1], commits[2]);
    assert_eq!(kind(&good[c1 - 3]), "delete");

    // An edited row: named at its transaction's commit, the range given.
    let mut edited = good.clone();
    let row = c2 - 2;
    assert!(edited[row].contains("\"k5\""), "{}", edited[row]);
    edited[row] = edited[row].replace("\"k5\"", "\"k55\"");
    let v = verify(&env, "edited.jsonl", &edited, &[]).await;
    assert_tamper_at(&v, &env.log_path("edited.jsonl").display().to_string(), c2 + 1);
    assert!(v.stderr.contains(&format!("one of lines {} to {}", c1 + 2, c2 + 1)), "{v}");

    // An edited commit (its session made anonymous).
    let mut edited_commit = good.clone();
    edited_commit[c1] = edited_commit[c1].replace("\"deletes\":3", "\"deletes\":2");
    let v = verify(&env, "edited_commit.jsonl", &edited_commit, &[]).await;
    assert_tamper_at(&v, &env.log_path("edited_commit.jsonl").display().to_string(), c1 + 1);

    // A row deleted.
    let mut one_row_less = good.clone();
    one_row_less.remove(c2 - 1);
    let v = verify(&env, "row_removed.jsonl", &one_row_less, &[]).await;
    assert_tamper_at(&v, &env.log_path("row_removed.jsonl").display().to_string(), c2);

    // A whole transaction deleted (rows and commit).
    let mut txn_removed = good.clone();
    txn_removed.drain(c2 - 3..=c2);
    let v = verify(&env, "txn_removed.jsonl", &txn_removed, &[]).await;
    assert_tamper_at(&v, &env.log_path("txn_removed.jsonl").display().to_string(), c3 - 3);

    // Two transactions swapped.
    let mut swapped = good.clone();
    let second: Vec<String> = swapped.drain(c2 - 3..=c2).collect();
    for (i, l) in second.into_iter().enumerate() {
        swapped.insert(c1 - 3 + i, l);
    }
    let v = verify(&env, "swapped.jsonl", &swapped, &[]).await;
    assert_tamper_at(&v, &env.log_path("swapped.jsonl").display().to_string(), c1 + 1);

    // Truncated at a transaction boundary: consistent, so only the recorded head shows it.
    let at_boundary = good[..=c3].to_vec();
    let v = verify(&env, "cut.jsonl", &at_boundary, &[]).await;
    v.assert_code(0);
    let v = verify(&env, "cut.jsonl", &at_boundary, &["--expect-head", &head]).await;
    v.assert_code(17);
    assert!(v.stderr.contains("is not in the log"), "{v}");

    // Truncated inside a transaction (mid-line too): the leftover rows are no claim, and are named.
    let mut mid = good[..c3 + 2].concat();
    mid.push_str(&good[c3 + 2][..20]);
    let p = env.log_path("mid.jsonl");
    std::fs::write(&p, &mid).unwrap();
    let v = verify_files(&[&p], &[]).await;
    v.assert_code(0);
    assert!(v.stdout.contains(&format!(":{}: 1 row line not closed", c3 + 2)), "{v}");
    assert!(v.stdout.contains("an incomplete last line"), "{v}");
    verify_files(&[&p], &["--expect-head", &head]).await.assert_code(17);

    // An unreadable line is damage (14), not tamper evidence.
    let mut garbled = good.clone();
    garbled[c1 - 1] = "{\"type\":\"delete\",\"xid\n".to_owned();
    let v = verify(&env, "garbled.jsonl", &garbled, &[]).await;
    v.assert_code(14);
    assert!(v.stderr.contains(&format!("garbled.jsonl:{}: not a valid record", c1)), "{v}");

    // The same edit through gzip: read like any log.
    let gz = env.log_path("edited.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    std::io::Write::write_all(&mut enc, edited.concat().as_bytes()).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    verify_files(&[&gz], &[]).await.assert_code(17);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chain_continues_across_runs_and_through_a_repaired_tail() {
    let env = Env::start().await;
    env.exec(&format!("{CACHE}{}", fill(40))).await;
    let out = env.log_path("resume.jsonl");
    let tables = ["public.cache"];
    env.exec("DELETE FROM cache WHERE cache_key IN ('k1', 'k2')").await;
    let start = env.lsn().await;
    // Run 1 starts here (the slot is created at start), logs two transactions, keeps the slot.
    env.capture(&out, &tables, &["--endpos", &start, "--keep-slot"]).await.assert_code(0);
    env.exec("DELETE FROM cache WHERE cache_key IN ('k3', 'k4')").await;
    env.exec("DELETE FROM cache WHERE cache_key = 'k5'").await;
    let end = env.lsn().await;
    let run1 = env.capture(&out, &tables, &["--endpos", &end, "--keep-slot"]).await;
    run1.assert_code(0);
    let h1 = printed_head(&run1);
    let after_run1 = lines(&out);
    assert!(after_run1.last().unwrap().contains(&h1));

    // What a crash in the middle of a transaction leaves: rows without their commit, a torn line.
    let row = after_run1.iter().find(|l| kind(l) == "delete").unwrap().replace("\"k3\"", "\"k99\"");
    let leftover = format!("{row}{row}{}", &row[..30]);
    std::fs::OpenOptions::new()
        .append(true)
        .open(&out)
        .and_then(|mut f| std::io::Write::write_all(&mut f, leftover.as_bytes()))
        .unwrap();
    verify_files(&[&out], &[]).await.assert_code(0);

    env.exec("DELETE FROM cache WHERE cache_key IN ('k6', 'k7', 'k8')").await;
    let end = env.lsn().await;
    let run2 = env.capture(&out, &tables, &["--endpos", &end]).await;
    run2.assert_code(0);
    assert!(run2.stderr.contains("repaired the log"), "{run2}");
    assert!(run2.stderr.contains(&format!("continuing the log's tamper-evident chain from head {h1}")), "{run2}");
    let h2 = printed_head(&run2);
    let recs = records(&out);
    check_structure(&recs);
    let started = of_type(&recs, "capture_started");
    assert_eq!(started.len(), 3);
    let third = started[2];
    assert_eq!(third["chain_prev"], h1.as_str(), "run 2 continues run 1's head");
    assert_eq!(third["repaired_tail"]["cut_lines"], 3);
    assert_eq!(third["repaired_tail"]["cut_bytes"], leftover.len());
    assert_eq!(third["repaired_tail"]["sha256"], hex::encode(sha2::Sha256::digest(leftover.as_bytes())));
    assert_eq!(started[1]["repaired_tail"], serde_json::Value::Null);
    assert_eq!(
        crate::util::deleted_keys(&recs, "public.cache", &["cache_key"]),
        ["k3", "k4", "k5", "k6", "k7", "k8"],
        "nothing lost or doubled by the repair"
    );

    let v = verify_files(&[&out], &[]).await;
    v.assert_code(0);
    assert!(v.stdout.contains("intact") && v.stdout.contains(&h2), "{v}");
    let v = verify_files(&[&out], &["--expect-head", &h1]).await;
    v.assert_code(0);
    assert!(v.stdout.contains("written later"), "{v}");
    verify_files(&[&out], &["--expect-head", &h2[..16]]).await.assert_code(0);

    let all = lines(&out);
    let run2_at = all.iter().rposition(|l| kind(l) == "capture_started").unwrap();
    // The end of run 1 removed (its last transaction and capture_stopped), hidden by run 2: run 2's
    // link names the head that is gone.
    let mut end_cut = all.clone();
    let last_commit_of_run1 = (0..run2_at).rev().find(|&i| kind(&all[i]) == "commit").unwrap();
    end_cut.drain(last_commit_of_run1 - 1..run2_at);
    let v = verify(&env, "end_cut.jsonl", &end_cut, &[]).await;
    assert_tamper_at(&v, &env.log_path("end_cut.jsonl").display().to_string(), last_commit_of_run1);
    assert!(v.stderr.contains("this run continues chain head"), "{v}");
    // The earlier runs removed entirely.
    let v = verify(&env, "head_cut.jsonl", &all[run2_at..], &[]).await;
    assert_tamper_at(&v, &env.log_path("head_cut.jsonl").display().to_string(), 1);
    assert!(v.stderr.contains("nowhere before it"), "{v}");
    // The log split into two files is one log when both are given, in order.
    let (p1, p2) = (env.log_path("part1.jsonl"), env.log_path("part2.jsonl"));
    std::fs::write(&p1, all[..run2_at].concat()).unwrap();
    std::fs::write(&p2, all[run2_at..].concat()).unwrap();
    verify_files(&[&p1, &p2], &[]).await.assert_code(0);
    verify_files(&[&p2, &p1], &[]).await.assert_code(17);
}

/// A log as walwitness wrote it before the chain (format_version 1).
const OLD_LOG: &str = concat!(
    r#"{"type":"capture_started","time":"2026-11-26T15:00:00.000000Z","slot":"walwitness_old","publication":"p","tables":["public.cache"],"start_lsn":"0/10","server_version":"15","system_identifier":"1","database":"postgres","walwitness_version":"0.1.0","format_version":1,"proto_version":3}"#,
    "\n",
    r#"{"type":"delete","table":"public.cache","xid":5,"lsn":"0/20","commit_lsn":"0/30","commit_time":"2026-11-26T15:01:00.000000Z","origin":null,"key":{"cache_key":"old1"},"old":null,"session":null}"#,
    "\n",
    r#"{"type":"commit","xid":5,"commit_lsn":"0/30","end_lsn":"0/40","commit_time":"2026-11-26T15:01:00.000000Z","origin":null,"deletes":1,"truncates":0,"session":null,"attribution":"none"}"#,
    "\n",
    r#"{"type":"capture_stopped","time":"2026-11-26T15:02:00.000000Z","reason":"endpos","last_lsn":"0/40","slot_kept":false}"#,
    "\n",
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_logs_without_the_chain_are_read_and_said_to_have_none() {
    let env = Env::start().await;
    let old = env.log_path("old.jsonl");
    std::fs::write(&old, OLD_LOG).unwrap();
    let r = run_bin(&["replay".into(), old.display().to_string()]).await;
    r.assert_code(0);
    assert_eq!(r.stdout, OLD_LOG);
    run_bin(&["report".into(), old.display().to_string()]).await.assert_code(0);
    let v = verify_files(&[&old], &[]).await;
    v.assert_code(18);
    assert!(v.stderr.contains("no chain to verify: 4 lines in 1 capture run"), "{v}");

    // The new version continues an old log: its runs are chained, the old part is said to be unproven.
    env.exec(&format!("{CACHE}{}", fill(5))).await;
    let run = env
        .capture_around(&old, &["public.cache"], || async {
            env.exec("DELETE FROM cache WHERE cache_key = 'k1'").await;
        })
        .await;
    let recs = records(&old);
    assert_eq!(of_type(&recs, "capture_started")[1]["chain_prev"], serde_json::Value::Null);
    let v = verify_files(&[&old], &[]).await;
    v.assert_code(18);
    assert!(v.stderr.contains("4 lines from") && v.stderr.contains("carry no chain"), "{v}");
    assert!(v.stdout.contains(&printed_head(&run)), "the chained part is verified\n{v}");
}
