//! Issue 12: with the default `--attribution activity`, real Django 4.2 processes on the database cache
//! backend (web workers setting, reading, culling — some inside transaction.atomic — and a forgotten
//! job calling `cache.delete_many` every ~0.7 s): inference names the job for ≥ 90 % of its
//! transactions, and ≤ 1 % of all single-candidate inferences are wrong.
//!
//! Ground truth: a second capture of the same table on its own slot and publication, with
//! `--attribution trigger` (a signed message from a statement trigger inside each transaction: the exact
//! backend pid of every xid). Both captures see the same transactions, so each inference is checked
//! against the trigger's pid for that xid.
//!
//! Django comes from `scripts/test.sh` (pip into `$XDG_CACHE_HOME/walwitness/django-4.2`, or the folder
//! in `WALWITNESS_DJANGO_PATH`). Without it the test says it skipped — except in CI (`CI=true`), where it
//! fails.
use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use crate::util::*;

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/integration/django_workload.py");
const WRITERS: usize = 6;
const SECONDS: f64 = 75.0;

fn django_path() -> PathBuf {
    if let Some(p) = std::env::var_os("WALWITNESS_DJANGO_PATH") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache"));
    cache.join("walwitness").join("django-4.2")
}

/// Whether Django 4.2 and psycopg2 import; in CI their absence is a failure.
fn django_available() -> bool {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import django, psycopg2; assert django.VERSION[:2] == (4, 2), django.VERSION"])
        .env("PYTHONPATH", django_path())
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "Django 4.2 and psycopg2 are not importable from {} (scripts/test.sh installs them with pip)",
            django_path().display()
        );
        eprintln!(
            "SKIPPED: Django 4.2 is not installed in {} (run scripts/test.sh, which installs it)",
            django_path().display()
        );
    }
    ok
}

fn python(env: &Env, args: &[&str]) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("python3");
    c.arg(SCRIPT)
        .arg(args[0])
        .arg(env.cluster.socket_dir())
        .arg(env.cluster.port().to_string())
        .args(&args[1..])
        .env("PYTHONPATH", django_path())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    c
}

async fn finish(c: tokio::process::Child) -> Value {
    let out = tokio::time::timeout(Duration::from_secs(120), c.wait_with_output()).await.unwrap().unwrap();
    assert!(
        out.status.success(),
        "django process failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(out.stdout.trim_ascii()).unwrap()
}

/// Stops the ground-truth capture (slot `truth`) once it confirmed everything written so far.
async fn stop_truth(env: &Env, mut bg: Background) {
    let end = lsn_num(&env.lsn().await);
    let sql = connect(&env.dsn).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let c: Option<String> = sql
            .query_opt("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'truth'", &[])
            .await
            .unwrap()
            .and_then(|r| r.get(0));
        if c.is_some_and(|c| lsn_num(&c) >= end) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the trigger capture never confirmed {end:X}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    unsafe { libc::kill(bg.child.id().unwrap() as i32, libc::SIGTERM) };
    tokio::time::timeout(Duration::from_secs(60), bg.child.wait()).await.unwrap().unwrap();
}

#[tokio::test]
async fn default_mode_names_the_periodic_django_job() {
    if !django_available() {
        return;
    }
    let env = Env::start().await;
    finish(python(&env, &["setup"]).spawn().unwrap()).await;
    env.exec("CREATE PUBLICATION truth_pub FOR TABLE django_cache").await;

    let out = env.log_path("activity.jsonl");
    let truth_out = env.log_path("truth.jsonl");
    // The default: no --attribution, no --activity-interval.
    let bg = env.start_capture(&out, &["django_cache"], &[]).await;
    let truth = env
        .start_capture(
            &truth_out,
            &["django_cache"],
            &["--attribution", "trigger", "--slot", "truth", "--publication", "truth_pub"],
        )
        .await;

    let secs = SECONDS.to_string();
    let mut workers = Vec::new();
    for i in 0..WRITERS {
        let name = format!("web-{i}");
        workers.push(python(&env, &["writer", &name, &secs, &i.to_string()]).spawn().unwrap());
    }
    let job = python(&env, &["job", "forgotten-job", &secs, "0.7"]).spawn().unwrap();
    let job = finish(job).await;
    let mut pids: HashMap<i64, String> = HashMap::new();
    for w in workers {
        let v = finish(w).await;
        pids.insert(v["pid"].as_i64().unwrap(), v["name"].as_str().unwrap().to_owned());
    }
    let job_pid = job["pid"].as_i64().unwrap();
    pids.insert(job_pid, "forgotten-job".into());

    stop_truth(&env, truth).await;
    let stderr = env.stop_capture(bg).await;

    let recs = records(&out);
    check_structure(&recs);
    let started = of_type(&recs, "capture_started")[0];
    assert_eq!(started["attribution_sources"], serde_json::json!(["activity"]), "{started}");
    assert!(started["activity_interval_ms"].as_u64().is_some(), "{started}");

    // xid → pid, from the trigger.
    let truth_recs = records(&truth_out);
    let truth_pid: HashMap<u64, i64> = of_type(&truth_recs, "commit")
        .iter()
        .filter_map(|c| Some((c["xid"].as_u64()?, c["session"]["pid"].as_i64()?)))
        .collect();
    let commits = of_type(&recs, "commit");
    assert!(commits.len() > 100, "too small a workload: {} transactions", commits.len());
    let (mut job_txns, mut job_named, mut inferred, mut wrong, mut several, mut none, mut evidence, mut evidence_wrong) =
        (0, 0, 0, 0, 0, 0, 0, 0);
    let mut wrong_examples = Vec::new();
    let mut job_missed = Vec::new();
    let mut reasons: HashMap<String, usize> = HashMap::new();
    for c in &commits {
        let xid = c["xid"].as_u64().unwrap();
        let Some(&pid) = truth_pid.get(&xid) else { panic!("xid {xid} has no trigger session: {c}") };
        let named = if c["session"].is_object() {
            evidence += 1;
            assert!(c.get("inferred").is_none(), "evidence and inference on one commit: {c}");
            let p = c["session"]["pid"].as_i64().unwrap();
            if p != pid {
                evidence_wrong += 1;
            }
            Some(p)
        } else if c["inferred"]["candidates"] == 1 {
            inferred += 1;
            let p = c["inferred"]["session"]["pid"].as_i64().unwrap();
            assert_eq!(c["inferred"]["session"]["attributed_by"], "inferred", "{c}");
            assert!(c["inferred"]["statement"].as_str().unwrap().contains("DELETE"), "{c}");
            if p != pid {
                wrong += 1;
                wrong_examples.push(format!(
                    "commit {} deletes {}: inferred pid {p} ({:?}) statement {:.200} [{} .. {}]; truth: pid {pid} ({:?})",
                    c["commit_time"],
                    c["deletes"],
                    pids.get(&p),
                    c["inferred"]["statement"].as_str().unwrap_or(""),
                    c["inferred"]["statement_start"],
                    c["inferred"]["statement_end"],
                    pids.get(&pid)
                ));
            }
            Some(p)
        } else if c["inferred"].is_object() {
            several += 1;
            assert!(c["inferred"]["candidates"].as_u64().unwrap() > 1, "{c}");
            assert!(c["inferred"].get("session").is_none(), "{c}");
            let n = c["inferred"]["possible"].as_array().unwrap().len();
            assert!((1..=5).contains(&n), "{c}");
            None
        } else {
            none += 1;
            *reasons
                .entry(c["unattributed_reason"].as_str().unwrap_or("").chars().take(60).collect::<String>())
                .or_insert(0) += 1;
            assert!(c["session"].is_null() && c["unattributed_reason"].is_string(), "{c}");
            None
        };
        if pid == job_pid {
            job_txns += 1;
            if named == Some(job_pid) {
                job_named += 1;
            } else {
                job_missed.push(c.to_string());
            }
        }
    }
    // Inference is on commit records only (it uses the transaction's deleted keys); rows keep evidence.
    for d in of_type(&recs, "delete") {
        assert!(d.get("inferred").is_none(), "{d}");
    }
    let figures = format!(
        "{} transactions: {evidence} by evidence ({evidence_wrong} wrong), {inferred} inferred with one candidate \
         ({wrong} wrong), {several} with several, {none} none; forgotten job: {job_named} of {job_txns} named",
        commits.len()
    );
    eprintln!("django workload: {figures}; reasons: {reasons:?}");
    for m in job_missed.iter().chain(&wrong_examples) {
        eprintln!("not named or wrong: {m:.700}");
    }
    assert_eq!(evidence_wrong, 0, "{figures}");
    assert!(job_txns >= 20, "the job ran too few transactions: {figures}");
    assert!(
        job_named * 10 >= job_txns * 9,
        "the job was named for < 90 % of its transactions: {figures}\n{}",
        job_missed.join("\n")
    );
    assert!(
        wrong * 100 <= inferred.max(1),
        "more than 1 % of inferences wrong: {figures}\n{}",
        wrong_examples.join("\n")
    );
    // The report answers first: its headline (JSON, and the HTML page as Chromium renders it) names the
    // job, which deleted the most rows.
    let page = env.dir.path().join("django.html");
    let r = run_bin(&[
        "report".into(),
        out.display().to_string(),
        "--format".into(),
        "json".into(),
        "--html".into(),
        page.display().to_string(),
    ])
    .await;
    r.assert_code(0);
    let rep: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    let headline = rep["headline"]["text"].as_str().unwrap_or_default().to_owned();
    assert_eq!(rep["headline"]["application_name"], "forgotten-job", "{headline}\n{figures}");
    eprintln!("django report headline: {headline}");
    if let Some(chromium) = crate::readers::find_chromium() {
        let profile = env.dir.path().join("profile");
        let dump = crate::readers::chromium_on(&chromium, &profile, &page, "--dump-dom".into()).await;
        let dom = String::from_utf8_lossy(&dump.stdout);
        let shown = crate::readers::element_text(&dom, "id=\"headline\"").expect("no headline in the page");
        assert!(shown.starts_with("forgotten-job"), "{shown}");
    } else {
        assert!(std::env::var("CI").is_err(), "chromium is needed in CI for the HTML headline check");
    }
    // Culls inside transaction blocks stay unnamed, and the capture says how to fix that, once.
    let share_unnamed = (several + none) as f64 / commits.len() as f64;
    if share_unnamed > 0.3 {
        assert_eq!(stderr.matches("--attribution trigger").count(), 1, "{figures}\n{stderr}");
    }
}
