//! Issue 4: the readers (`tail`, `replay`, `report`) on logs captured from a real server.
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::util::*;

const CACHE: &str = "CREATE TABLE cache (cache_key varchar(255) PRIMARY KEY, value text NOT NULL); \
    INSERT INTO cache SELECT 'k' || g, 'v' || g FROM generate_series(1, 50) g; \
    INSERT INTO cache SELECT 'report:' || g, 'r' || g FROM generate_series(1, 10) g;";

async fn run(args: &[&str]) -> Run {
    run_bin(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>()).await
}

async fn pid(c: &tokio_postgres::Client) -> i64 {
    i64::from(c.query_one("SELECT pg_backend_pid()", &[]).await.unwrap().get::<_, i32>(0))
}

/// Two attributed sessions (one over TCP, one over the socket) and a known workload; returns their pids.
async fn workload(env: &Env, out: &Path) -> (i64, i64) {
    env.exec(CACHE).await;
    let mut pids = (0, 0);
    // Exact attribution: the trigger is installed for good, so the workload between the two capture
    // runs is attributed when the second run decodes it.
    let dsn = env.dsn.clone();
    run(&["attribution", "install", "--dsn", &dsn, "--table", "public.cache"]).await.assert_code(0);
    capture_around_with(env, out, &["--attribution", "trigger"], || async {
        let tcp = format!("{} application_name=cleaner", env.cluster.tcp_dsn("postgres", None, "postgres"));
        let a = connect(&tcp).await;
        let b = connect(&format!("{} application_name=janitor", env.dsn)).await;
        pids = (pid(&a).await, pid(&b).await);
        a.batch_execute("DELETE FROM cache WHERE cache_key IN ('report:1', 'report:2', 'report:3')").await.unwrap();
        b.batch_execute("DELETE FROM cache WHERE cache_key = 'k10'").await.unwrap();
        a.batch_execute(
            "BEGIN; DELETE FROM cache WHERE cache_key = 'k11'; DELETE FROM cache WHERE cache_key LIKE 'k2_'; COMMIT",
        )
        .await
        .unwrap();
    })
    .await;
    pids
}

/// `Env::capture_around` with extra capture arguments on both runs.
async fn capture_around_with<F, Fut>(env: &Env, out: &Path, extra: &[&str], workload: F)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let tables = ["public.cache"];
    let start = env.lsn().await;
    let mut first: Vec<&str> = vec!["--endpos", &start, "--keep-slot"];
    first.extend_from_slice(extra);
    env.capture(out, &tables, &first).await.assert_code(0);
    workload().await;
    let end = env.lsn().await;
    let mut second: Vec<&str> = vec!["--endpos", &end];
    second.extend_from_slice(extra);
    env.capture(out, &tables, &second).await.assert_code(0);
}

fn json_lines(run: &Run) -> Vec<Value> {
    run.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}\n{run}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_replay_and_report_on_a_captured_log() {
    let env = Env::start().await;
    let out = env.log_path("r.jsonl");
    let (pa, pb) = workload(&env, &out).await;
    let log = out.display().to_string();
    let recs = records(&out);
    check_structure(&recs);

    // tail: one block per transaction, with the session.
    let t = run(&["tail", &log]).await;
    t.assert_code(0);
    assert!(t.stdout.contains("3 rows deleted from public.cache"), "{t}");
    assert!(t.stdout.contains(&format!("pid {pa}  user postgres  app cleaner  client 127.0.0.1:")), "{t}");
    assert!(t.stdout.contains(&format!("pid {pb}  user postgres  app janitor  client local socket")), "{t}");
    assert!(t.stdout.contains("11 rows deleted"), "{t}");
    assert!(t.stdout.contains("keys  report:1, report:2, report:3"), "{t}");
    assert!(!t.stdout.contains('\x1b'), "no colour into a pipe\n{t}");
    let tj = run(&["tail", "--json", &log]).await;
    assert_eq!(json_lines(&tj), recs);

    // replay: everything back unchanged; filters select what the test did.
    let all = run(&["replay", &log]).await;
    all.assert_code(0);
    assert_eq!(all.stdout, std::fs::read_to_string(&out).unwrap());
    let by_app = json_lines(&run(&["replay", &log, "--app", "cleaner", "--type", "delete"]).await);
    assert_eq!(by_app.len(), 3 + 1 + 10);
    assert!(by_app.iter().all(|r| r["session"]["pid"] == pa));
    let by_pid = json_lines(&run(&["replay", &log, "--pid", &pb.to_string()]).await);
    let kinds: Vec<&str> = by_pid.iter().map(|r| r["type"].as_str().unwrap()).collect();
    // Format 2: the transaction's statement record comes with its rows.
    assert_eq!(kinds, ["statement", "delete", "commit"]);
    assert_eq!(by_pid[1]["key"]["cache_key"], "k10");
    let by_key = json_lines(&run(&["replay", &log, "--key", "report:?"]).await);
    assert_eq!(by_key.iter().filter(|r| r["type"] == "delete").count(), 3);
    assert_eq!(by_key.last().unwrap()["type"], "commit");
    let local = json_lines(&run(&["replay", &log, "--client", "local", "--type", "delete"]).await);
    assert_eq!(local.len(), 1);
    let tcp = json_lines(&run(&["replay", &log, "--client", "127.0.0.1", "--type", "commit"]).await);
    assert_eq!(tcp.len(), 2);
    let xid = recs.iter().find(|r| r["type"] == "commit").unwrap()["xid"].to_string();
    let by_xid = json_lines(&run(&["replay", &log, "--xid", &xid, "--type", "commit"]).await);
    assert_eq!(by_xid.len(), 1);
    let first_commit = recs.iter().find(|r| r["type"] == "commit").unwrap()["commit_time"].as_str().unwrap().to_owned();
    let since = json_lines(&run(&["replay", &log, "--since", &first_commit, "--type", "commit"]).await);
    assert_eq!(since.len(), 3);
    let until = json_lines(&run(&["replay", &log, "--until", &first_commit, "--type", "commit"]).await);
    assert_eq!(until.len(), 0);

    // report: per-session numbers are what the sessions did.
    let r = run(&["report", &log, "--format", "json"]).await;
    r.assert_code(0);
    let rep: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(rep["rows"], 15, "{r}");
    assert_eq!(rep["transactions"], 3);
    let sessions = rep["sessions"].as_array().unwrap();
    assert_eq!(sessions.len(), 2);
    assert_eq!(sessions[0]["pid"], pa);
    assert_eq!(sessions[0]["rows"], 14);
    assert_eq!(sessions[0]["transactions"], 2);
    assert_eq!(sessions[0]["application_name"], "cleaner");
    assert!(sessions[0]["client"].as_str().unwrap().starts_with("127.0.0.1:"));
    // The BEGIN…COMMIT batch is one simple query: its text is the statement of both deletes.
    assert_eq!(sessions[0]["distinct_statements"], 2, "{r}");
    assert_eq!(sessions[1]["pid"], pb);
    assert_eq!(sessions[1]["rows"], 1);
    assert_eq!(rep["unattributed"]["rows"], 0);
    let prefixes: Vec<(&str, u64)> = rep["key_prefixes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["prefix"].as_str().unwrap(), p["rows"].as_u64().unwrap()))
        .collect();
    assert_eq!(prefixes[0], ("report", 3), "{prefixes:?}");
    assert_eq!(prefixes.len(), 1 + 1 + 1 + 10, "k10, k11, k20..k29 have no separator: each is its own prefix");
    let shapes: Vec<&str> =
        rep["statements"].as_array().unwrap().iter().map(|s| s["shape"].as_str().unwrap()).collect();
    assert!(shapes.contains(&"DELETE FROM cache WHERE cache_key IN (...)"), "{shapes:?}");
    assert!(
        shapes.contains(
            &"BEGIN; DELETE FROM cache WHERE cache_key = ?; DELETE FROM cache WHERE cache_key LIKE ?; COMMIT"
        ),
        "{shapes:?}"
    );
    let text = run(&["report", &log]).await;
    text.assert_code(0);
    assert!(text.stdout.contains("Deleted rows: 15 in 3 committed transactions"), "{text}");
    assert!(text.stdout.contains("Not attributed: 0 rows (0.0%)"), "{text}");
    // replay --report is the same report.
    let rr = run(&["replay", "--report", "--format", "json", &log]).await;
    assert_eq!(rr.stdout, r.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn damaged_and_compressed_logs() {
    let env = Env::start().await;
    let out = env.log_path("d.jsonl");
    workload(&env, &out).await;
    let text = std::fs::read_to_string(&out).unwrap();
    let dir = env.dir.path();
    // Cut in the middle of the last transaction's rows.
    let lines: Vec<&str> = text.lines().collect();
    let cut_at = lines.iter().rposition(|l| l.contains("\"type\":\"delete\"")).unwrap();
    let torn = dir.join("torn.jsonl");
    std::fs::write(&torn, format!("{}\n{}", lines[..cut_at].join("\n"), &lines[cut_at][..40])).unwrap();
    let torn_s = torn.display().to_string();
    let r = run(&["replay", &torn_s]).await;
    r.assert_code(14);
    assert!(r.stderr.contains(&format!("{torn_s}:{}: damaged log", cut_at + 1)), "{r}");
    assert!(r.stderr.contains("--lenient"), "{r}");
    let l = run(&["replay", "--lenient", &torn_s]).await;
    l.assert_code(0);
    assert!(l.stderr.contains("skipped"), "{l}");
    let got = json_lines(&l);
    check_structure(&got);
    assert_eq!(got.iter().filter(|r| r["type"] == "commit").count(), 2, "the cut transaction is not replayed");
    // tail shows the complete transactions only.
    let t = run(&["tail", &torn_s]).await;
    t.assert_code(0);
    assert!(!t.stdout.contains("11 rows deleted"), "{t}");
    assert!(t.stdout.contains("3 rows deleted"), "{t}");

    // gzip and zstd (made by the real tools when present, else by the crates) read the same.
    let gz = dir.join("d.jsonl.gz");
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut enc, text.as_bytes()).unwrap();
    std::fs::write(&gz, enc.finish().unwrap()).unwrap();
    let zst = dir.join("d.jsonl.zst");
    std::fs::write(
        &zst,
        ruzstd::encoding::compress_to_vec(text.as_bytes(), ruzstd::encoding::CompressionLevel::Fastest),
    )
    .unwrap();
    for f in [&gz, &zst] {
        let r = run(&["replay", &f.display().to_string()]).await;
        r.assert_code(0);
        assert_eq!(r.stdout, text, "{}", f.display());
    }
    // Standard input, and a closed pipe is not an error.
    let child = tokio::process::Command::new(BIN)
        .args(["replay", "-"])
        .stdin(std::fs::File::open(&zst).unwrap())
        .output()
        .await
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&child.stdout), text);
    // More output than a pipe buffer holds, read by `head -c 1`: replay meets EPIPE and exits 0.
    let big = dir.join("big.jsonl");
    std::fs::write(&big, text.repeat(400)).unwrap();
    let sh = tokio::process::Command::new("bash")
        .arg("-c")
        .arg(format!("set -o pipefail; '{BIN}' replay '{}' | head -c 1 >/dev/null", big.display()))
        .output()
        .await
        .unwrap();
    assert!(sh.status.success(), "replay | head: {sh:?}");
}

/// Polls `rx` (lines of the tail's stdout) until one satisfies `pred`, within `limit`.
async fn wait_line(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<String>,
    seen: &mut Vec<String>,
    limit: Duration,
    pred: impl Fn(&str) -> bool,
) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, rx.recv()).await {
            Ok(Some(l)) => {
                let hit = pred(&l);
                seen.push(l);
                if hit {
                    return true;
                }
            }
            _ => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tail_follow_shows_a_delete_within_a_second() {
    let env = Env::start().await;
    env.exec(CACHE).await;
    let out = env.log_path("live.jsonl");
    // The tail starts first: the log does not exist yet.
    let mut tail = tokio::process::Command::new(BIN)
        .args(["tail", "-f", &out.display().to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stdout = tail.stdout.take().unwrap();
    tokio::spawn(async move {
        let mut lines = BufReader::new(stdout).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    let mut capture = tokio::process::Command::new(BIN)
        .args(["capture", "--dsn", &env.dsn, "--table", "public.cache", "--out"])
        .arg(&out)
        .args(["--attribution", "trigger"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut seen = Vec::new();
    assert!(
        wait_line(&mut rx, &mut seen, Duration::from_secs(60), |l| l.contains("capture started")).await,
        "tail -f never showed the capture start; saw {seen:?}"
    );
    let a = connect(&format!("{} application_name=live-deleter", env.dsn)).await;
    a.batch_execute("DELETE FROM cache WHERE cache_key IN ('k1', 'k2')").await.unwrap();
    let committed = Instant::now();
    let shown =
        wait_line(&mut rx, &mut seen, Duration::from_secs(10), |l| l.contains("2 rows deleted from public.cache"))
            .await;
    let delay = committed.elapsed();
    let shown_session =
        shown && wait_line(&mut rx, &mut seen, Duration::from_secs(5), |l| l.contains("app live-deleter")).await;
    // SIGTERM: a deliberate end of the capture.
    unsafe {
        libc::kill(capture.id().unwrap() as i32, libc::SIGTERM);
    }
    let status = tokio::time::timeout(Duration::from_secs(30), capture.wait()).await.unwrap().unwrap();
    let _ = tail.start_kill();
    assert!(shown, "the delete did not show in tail -f within 10 s; saw {seen:?}");
    assert!(shown_session, "no session line; saw {seen:?}");
    println!("tail -f showed the transaction {} ms after its COMMIT returned", delay.as_millis());
    assert!(delay < Duration::from_secs(1), "tail -f took {delay:?} (promised: within 1 s)");
    assert!(matches!(status.code(), Some(0) | Some(143)), "capture exit {status:?}");
}

pub(crate) fn find_chromium() -> Option<String> {
    let which = |n: &str| {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {n}"))
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    for n in ["chromium", "chromium-browser"] {
        if let Some(p) = which(n) {
            return Some(p);
        }
    }
    // scripts/test.sh installs it; a bare `cargo test` as root gets one try here too.
    let root = unsafe { libc::geteuid() } == 0;
    if root && which("apt-get").is_some() {
        let _ = std::process::Command::new("sh")
            .arg("-c")
            .arg("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        return which("chromium");
    }
    None
}

pub(crate) fn chromium_args(profile: &Path) -> Vec<String> {
    [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect()
}

/// The number shown for `data-k="key"` in the rendered DOM (digit grouping removed).
fn shown(dom: &str, key: &str) -> Option<f64> {
    let at = dom.find(&format!("data-k=\"{key}\">"))? + key.len() + 10;
    let end = dom[at..].find('<')? + at;
    dom[at..end].replace(',', "").parse().ok()
}

/// The text of the first element whose start tag holds `attr` (entities for &, <, > undone).
/// Runs headless Chromium on `page` at 1280 px with one more flag (`--dump-dom`, `--screenshot=…`).
pub(crate) async fn chromium_on(chromium: &str, profile: &Path, page: &Path, flag: String) -> std::process::Output {
    let mut args = chromium_args(profile);
    args.push("--window-size=1280,1500".into());
    args.push(flag.clone());
    args.push(format!("file://{}", page.display()));
    tokio::time::timeout(
        Duration::from_secs(120),
        tokio::process::Command::new(chromium).args(&args).stdin(Stdio::null()).output(),
    )
    .await
    .unwrap_or_else(|_| panic!("chromium {flag} did not finish in 120 s"))
    .unwrap()
}

pub(crate) fn element_text(dom: &str, attr: &str) -> Option<String> {
    let at = dom.find(attr)?;
    let start = dom[at..].find('>')? + at + 1;
    let end = dom[start..].find("</")? + start;
    Some(dom[start..end].replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&"))
}

/// A number the page's script wrote on `<body>` (`data-scroll-width` …).
fn body_attr(dom: &str, name: &str) -> Option<i64> {
    let body = &dom[dom.find("<body")?..];
    let body = &body[..body.find('>')?];
    let at = body.find(&format!("{name}=\""))? + name.len() + 2;
    body[at..].split('"').next()?.parse().ok()
}

/// Issue 12: at a window 1280 px wide the page needs no horizontal scrolling, and no table is cut off
/// inside its scroll box.
fn fits_1280(dom: &str) {
    let inner = body_attr(dom, "data-inner-width");
    assert_eq!(
        inner,
        Some(1280),
        "window width not applied; body: {:?}",
        &dom[dom.find("<body").unwrap_or(0)..][..300]
    );
    let width = body_attr(dom, "data-scroll-width").expect("no data-scroll-width");
    assert!(width <= 1280, "the page is {width} px wide at a 1280 px window");
    assert_eq!(body_attr(dom, "data-wide-overflow"), Some(0), "a table overflows its box");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_html_renders_in_chromium() {
    let env = Env::start().await;
    let out = env.log_path("h.jsonl");
    workload(&env, &out).await;
    let page = env.dir.path().join("report.html");
    let r =
        run(&["report", &out.display().to_string(), "--format", "json", "--html", &page.display().to_string()]).await;
    r.assert_code(0);
    let rep: Value = serde_json::from_str(&r.stdout).unwrap();
    let Some(chromium) = find_chromium() else {
        println!("SKIPPED report_html_renders_in_chromium: chromium is not installed and could not be installed (run scripts/test.sh as root, or apt-get install chromium)");
        return;
    };
    let dump = chromium_on(&chromium, &env.dir.path().join("profile"), &page, "--dump-dom".into()).await;
    let dom = String::from_utf8_lossy(&dump.stdout);
    assert!(
        dom.contains("data-check=\"ok\""),
        "the page's own number check did not pass:\n{}\nstderr: {}",
        &dom[..dom.len().min(3000)],
        String::from_utf8_lossy(&dump.stderr)
    );
    assert!(dom.contains("<svg id=\"timeline\""), "no chart");
    assert!(dom.matches("<rect class=\"bar\"").count() >= 2, "no bars (two sessions)");
    for key in
        ["rows", "transactions", "unattributed.rows", "sessions.0.rows", "sessions.1.rows", "sessions.0.transactions"]
    {
        let want = key.split('.').fold(&rep, |v, k| match k.parse::<usize>() {
            Ok(i) => &v[i],
            Err(_) => &v[k],
        });
        assert_eq!(shown(&dom, key), want.as_f64(), "{key}");
    }
    assert_eq!(shown(&dom, "unattributed.row_share_pct"), Some(0.0));
    // Issue 12: the answer first — the headline names the main deleter (cleaner: 14 of 15 rows).
    let headline = element_text(&dom, "id=\"headline\"").expect("no headline");
    assert!(headline.starts_with("cleaner (postgres@127.0.0.1) deleted 93 % of the rows"), "{headline}");
    assert_eq!(rep["headline"]["text"].as_str(), Some(headline.as_str()));
    fits_1280(&dom);

    let png = env.dir.path().join("report.png");
    let shot =
        chromium_on(&chromium, &env.dir.path().join("profile2"), &page, format!("--screenshot={}", png.display()))
            .await;
    let bytes = std::fs::read(&png)
        .unwrap_or_else(|e| panic!("no screenshot ({e}): {}", String::from_utf8_lossy(&shot.stderr)));
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    assert!(bytes.len() > 20_000, "screenshot suspiciously small: {} bytes", bytes.len());
    if let Ok(keep) = std::env::var("WALWITNESS_KEEP_SCREENSHOT") {
        let _ = std::fs::copy(&png, keep);
    }
}

/// A log written by hand, as a capture with activity attribution and inference writes it (issue 12):
/// `ww-forgotten-job` connects anew every second (a new pid each time) and deletes 7 Django cache
/// keys; 2 of its 10 transactions have no evidence, only a single-candidate `inferred`. A second
/// client with a long application name over IPv6 deletes 20 rows; 5 rows have several candidates and
/// 5 none.
fn crafted_log(path: &Path) {
    use serde_json::json;
    let cs = json!({"type":"capture_started","time":"2026-11-26T15:00:00.000000Z","slot":"s","publication":"p",
        "tables":["public.django_cache"],"start_lsn":"0/10","server_version":"15","system_identifier":"1",
        "database":"app","walwitness_version":"0.1.0","format_version":1,"proto_version":3});
    let mut lines = vec![cs.to_string()];
    let session = |pid: i64, user: &str, app: &str, addr: &str, q: &str| {
        json!({"attributed_by":"activity","pid":pid,"backend_start":"2026-11-26T15:00:00.000000Z","user":user,
            "application_name":app,"client_addr":addr,"client_port":40000 + pid,"query":q,"query_truncated":false,
            "xact_start":null})
    };
    let mut lsn = 0x100u64;
    let mut txn = |xid: u64, t: &str, keys: Vec<String>, session: Value, extra: Value| {
        lsn += 0x100;
        for k in &keys {
            let mut r = json!({"type":"delete","table":"public.django_cache","xid":xid,"lsn":format!("0/{:X}", lsn - 8),
                "commit_lsn":format!("0/{lsn:X}"),"commit_time":t,"origin":null,"key":{"cache_key":k},"old":null,
                "session":session});
            for (f, v) in extra.as_object().unwrap() {
                r[f] = v.clone();
            }
            lines.push(r.to_string());
        }
        let c = json!({"type":"commit","xid":xid,"commit_lsn":format!("0/{lsn:X}"),"end_lsn":format!("0/{:X}", lsn + 8),
            "commit_time":t,"origin":null,"deletes":keys.len(),"truncates":0,"session":session,"attribution":"activity"});
        lines.push(c.to_string());
    };
    for i in 0..10u64 {
        let q = format!(
            "DELETE FROM django_cache WHERE cache_key IN ({})",
            (0..7).map(|k| format!("':1:user_session_{i}{k}'")).collect::<Vec<_>>().join(", ")
        );
        let s = session(2000 + i as i64, "ww_bgjob", "ww-forgotten-job", "10.0.0.5", &q);
        let t = format!("2026-11-26T15:01:{:02}.{:06}Z", 10 + i, (i % 3) * 1500);
        let keys = (0..7).map(|k| format!(":1:user_session_{i}{k}x9f")).collect();
        if i % 5 == 4 {
            let inferred = json!({"candidates":1,"session":s,"statement":q,"statement_start":t,"statement_end":null});
            txn(100 + i, &t, keys, Value::Null, json!({"unattributed_reason":"not sampled","inferred":inferred}));
        } else {
            txn(100 + i, &t, keys, s, json!({}));
        }
    }
    let long_app = format!("reporting-{}", "x".repeat(120));
    let long_q = format!(
        "DELETE FROM django_cache WHERE cache_key LIKE 'views.decorators.cache.cache_page.%' -- {}",
        "y".repeat(400)
    );
    let other = session(77, "alice", &long_app, "2001:db8:ffff:ffff:ffff:ffff:ffff:1", &long_q);
    for (n, t) in [(0u64, "2026-11-26T15:01:12.500000Z"), (1, "2026-11-26T15:01:15.500000Z")] {
        let keys = (0..10).map(|k| format!("views.decorators.cache.cache_page.{}{n}{k}", "a".repeat(60))).collect();
        txn(200 + n, t, keys, other.clone(), json!({}));
    }
    let amb = json!({"candidates":2,"possible":[
        {"session":session(3001, "bob", "cron", "10.0.0.9", "DELETE 1"),"statement":"DELETE 1","statement_start":"2026-11-26T15:01:17.000000Z","statement_end":null},
        {"session":session(3002, "carol", "cron", "10.0.0.9", "DELETE 2"),"statement":"DELETE 2","statement_start":"2026-11-26T15:01:17.000000Z","statement_end":null}]});
    txn(
        300,
        "2026-11-26T15:01:17.200000Z",
        (0..5).map(|k| format!("amb{k}")).collect(),
        Value::Null,
        json!({"unattributed_reason":"several sessions could have run it","inferred":amb}),
    );
    txn(
        301,
        "2026-11-26T15:01:18.700000Z",
        (0..5).map(|k| format!("none{k}")).collect(),
        Value::Null,
        json!({"unattributed_reason":"transaction too short to be sampled"}),
    );
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Issue 12 items 3 and 4 on a log written by hand (no server needed): the headline, roll-ups,
/// periodicity, adaptive bins, Django prefixes and inferred sessions; `--since/--until` forms and
/// `--app/--user` globs; `--format json` for tail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_answers_first_on_a_crafted_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crafted.jsonl");
    crafted_log(&path);
    let log = path.display().to_string();
    let r = run(&["report", &log, "--format", "json"]).await;
    r.assert_code(0);
    let rep: Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(rep["rows"], 100);
    let h = &rep["headline"];
    assert_eq!(
        h["text"],
        "ww-forgotten-job (ww_bgjob@10.0.0.5) deleted 70 % of the rows (20 % of them inferred), every ~1.0 s; 10 % of the rows are not attributed",
        "{h}"
    );
    assert_eq!((h["basis"].as_str(), h["rows_inferred"].as_u64()), (Some("mixed"), Some(14)));
    assert_eq!(rep["inferred_rows"], 14);
    let p0 = &rep["principals"][0];
    assert_eq!(
        (p0["sessions"].as_u64(), p0["transactions"].as_u64(), p0["period_s"].as_f64()),
        (Some(10), Some(10), Some(1.0)),
        "{p0}"
    );
    assert_eq!(rep["by_application"][0]["name"], "ww-forgotten-job");
    assert_eq!(rep["by_user"][1]["name"], "alice");
    assert_eq!(rep["by_client_host"][1]["name"], "2001:db8:ffff:ffff:ffff:ffff:ffff:1");
    let sessions = rep["sessions"].as_array().unwrap();
    assert_eq!(sessions.iter().filter(|s| s["inferred"] == true).count(), 2);
    assert_eq!(rep["unattributed"]["rows"], 10);
    assert_eq!(rep["unattributed"]["ambiguous_rows"], 5);
    assert_eq!(rep["statements"][0]["shape"], "DELETE FROM django_cache WHERE cache_key IN (...)");
    assert_eq!(rep["statements"][0]["period_s"], 1.0);
    assert_eq!(rep["key_prefixes"][0]["prefix"], ":1:user_session");
    assert_eq!(rep["key_prefixes"][0]["django"], true);
    assert_eq!(rep["bin_seconds"], 1);
    assert_eq!(rep["bins"][0]["start"], "2026-11-26T15:01:10Z");
    // Text: the headline comes first.
    let t = run(&["report", &log]).await;
    t.assert_code(0);
    assert_eq!(t.stdout.lines().nth(2), h["text"].as_str(), "{t}");
    assert!(t.stdout.contains("INFERRED, not evidence"), "{t}");
    assert!(t.stdout.contains("WHEN — rows per second"), "{t}");

    // Item 4: globs on application and user; report matches the attributed session (evidence or
    // inferred), replay the evidence.
    let rows = |args: &[&str]| {
        let mut a = vec!["report", log.as_str(), "--format", "json"];
        a.extend_from_slice(args);
        let a: Vec<String> = a.iter().map(|s| s.to_string()).collect();
        async move {
            let r = run_bin(&a).await;
            r.assert_code(0);
            serde_json::from_str::<Value>(&r.stdout).unwrap()["rows"].as_u64().unwrap()
        }
    };
    assert_eq!(rows(&["--app", "ww-*"]).await, 70);
    assert_eq!(rows(&["--app", "ww-forgotten-job"]).await, 70);
    assert_eq!(rows(&["--user", "ww_?gjob", "--user", "al*"]).await, 90);
    assert_eq!(rows(&["--app", "reporting-*", "--user", "ww_*"]).await, 0);
    let evidence = json_lines(&run(&["replay", &log, "--app", "ww-f*job", "--type", "delete"]).await);
    assert_eq!(evidence.len(), 56);
    // --since/--until: RFC 3339, a wall-clock time with an offset or Z, relative.
    assert_eq!(rows(&["--since", "2026-11-26T15:01:15Z"]).await, 7 * 5 + 10 + 5 + 5);
    assert_eq!(rows(&["--since", "2026-11-26 15:01:15Z"]).await, 55);
    assert_eq!(rows(&["--since", "2026-11-26 16:01:15+01:00", "--until", "2026-11-26 15:01:17Z"]).await, 7 * 2 + 10);
    assert_eq!(rows(&["--since", "2026-11-26 15:01:17.2+00:00"]).await, 7 * 2 + 5 + 5);
    assert_eq!(rows(&["--since", "5000000d"]).await, 100, "long before now: everything");
    assert_eq!(rows(&["--until", "5000000d"]).await, 0);
    let bad = run(&["report", &log, "--since", "yesterday"]).await;
    bad.assert_code(2);
    assert!(bad.stderr.contains("--since") && bad.stderr.contains("10m"), "{bad}");

    // One spelling: --format json for tail as for report (--json still works).
    let a = run(&["tail", &log, "--format", "json"]).await;
    a.assert_code(0);
    assert_eq!(a.stdout, run(&["tail", &log, "--json"]).await.stdout);
    assert_eq!(json_lines(&a).len(), std::fs::read_to_string(&path).unwrap().lines().count());
}

/// Issue 12: the HTML page of that log — the headline names the main deleter, inferred sessions are
/// marked, and long names, statements and IPv6 addresses still fit a 1280 px window.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_html_headline_and_width_in_chromium() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crafted.jsonl");
    crafted_log(&path);
    let page = dir.path().join("crafted.html");
    run(&["report", &path.display().to_string(), "--html", &page.display().to_string()]).await.assert_code(0);
    let Some(chromium) = find_chromium() else {
        println!("SKIPPED report_html_headline_and_width_in_chromium: chromium is not installed");
        return;
    };
    let dump = chromium_on(&chromium, &dir.path().join("profile"), &page, "--dump-dom".into()).await;
    let dom = String::from_utf8_lossy(&dump.stdout);
    assert!(dom.contains("data-check=\"ok\""), "the page's number check did not pass: {}", &dom[..dom.len().min(2000)]);
    let headline = element_text(&dom, "id=\"headline\"").expect("no headline");
    assert!(headline.starts_with("ww-forgotten-job (ww_bgjob@10.0.0.5) deleted 70 % of the rows"), "{headline}");
    assert!(dom.contains("data-basis=\"mixed\""));
    assert_eq!(dom.matches("data-inferred=\"true\"").count(), 2, "the two inferred sessions are marked");
    assert_eq!(shown(&dom, "principals.0.rows_inferred"), Some(14.0));
    assert_eq!(shown(&dom, "bin_seconds"), Some(1.0));
    fits_1280(&dom);
}

/// `--color`: `tail` colours a pipe when asked (`always`), never otherwise; `auto` leaves a pipe plain
/// and NO_COLOR wins over a terminal only in `auto`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn color_flag_decides_tail_colour() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crafted.jsonl");
    crafted_log(&path);
    let log = path.display().to_string();
    let esc = |s: &str| s.contains('\x1b');
    let auto = run(&["tail", &log]).await;
    auto.assert_code(0);
    assert!(!esc(&auto.stdout) && !auto.stdout.is_empty(), "auto colours a pipe:\n{}", auto.stdout);
    let always = run(&["--color", "always", "tail", &log]).await;
    always.assert_code(0);
    assert!(esc(&always.stdout), "always did not colour");
    // Global: after the subcommand too.
    let never = run(&["tail", "--color", "never", &log]).await;
    never.assert_code(0);
    assert!(!esc(&never.stdout));
    assert_eq!(never.stdout, auto.stdout);
    run(&["--color", "sometimes", "tail", &log]).await.assert_code(2);
}
