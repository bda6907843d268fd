//! Issue 13: safe on a shared host and against hostile input. Each test plays one attack against the
//! real binary: another local user's spool directory, swapped spool files, planted symbolic links and
//! foreign files at output paths, escape sequences and newlines in statements and keys, passwords in
//! errors and on the command line. (Tests run as root: "another user" is uid 65534, `nobody`.)
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use crate::util::*;

const NOBODY: u32 = 65534;

async fn run(args: &[&str]) -> Run {
    run_env(args, &[]).await
}

/// Runs the binary with extra environment variables.
async fn run_env(args: &[&str], envs: &[(&str, &str)]) -> Run {
    let mut cmd = tokio::process::Command::new(BIN);
    cmd.args(args).stdin(std::process::Stdio::null());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(180), cmd.output()).await.expect("walwitness hung").unwrap();
    Run {
        args: args.iter().map(|s| s.to_string()).collect(),
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

/// The attacker pre-creates `<out>.spool/` open to everyone: the capture refuses it, says what to do,
/// and leaves the server untouched. (The old code used it, so a spool file could be swapped.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_spool_directory_is_refused_before_the_server_is_touched() {
    let env = Env::start().await;
    env.exec("CREATE TABLE t (id int PRIMARY KEY)").await;
    let out = env.log_path("deletes.jsonl");
    let spool = env.log_path("deletes.jsonl.spool");
    std::fs::create_dir(&spool).unwrap();
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::os::unix::fs::chown(&spool, Some(NOBODY), Some(NOBODY)).unwrap();
    let end = env.lsn().await;
    let r = env.capture(&out, &["t"], &["--endpos", &end]).await;
    r.assert_code(11);
    assert!(r.stderr.contains("refusing the spool directory") && r.stderr.contains("belongs to uid 65534"), "{r}");
    assert!(r.stderr.contains("rm -r"), "the message says what to do\n{r}");
    assert!(env.slots().await.is_empty(), "a slot was created");
    assert!(env.publications().await.is_empty(), "a publication was created");

    // Ours but open to group and others: refused as well; once private, used.
    std::os::unix::fs::chown(&spool, Some(0), Some(0)).unwrap();
    let r = env.capture(&out, &["t"], &["--endpos", &end]).await;
    r.assert_code(11);
    assert!(r.stderr.contains("mode 0777") && r.stderr.contains("chmod 700"), "{r}");
    std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o700)).unwrap();
    env.capture(&out, &["t"], &["--endpos", &end]).await.assert_code(0);
}

/// A spool file of a streamed 2,000-row transaction is replaced, under its name, by a file of the same
/// length while the transaction is open: every row is still logged (the spool is read back through
/// its own descriptor). The old code reopened the name and read the substitute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spool_file_swapped_mid_transaction_changes_nothing() {
    let env = Env::start().await;
    env.exec("CREATE TABLE t (id int PRIMARY KEY, pad text NOT NULL); INSERT INTO t SELECT g, 'row ' || g FROM generate_series(1, 2000) g;").await;
    let out = env.log_path("big.jsonl");
    let spool_dir = env.log_path("big.jsonl.spool");
    let bg = env.start_capture(&out, &["t"], &["--logical-decoding-work-mem", "64kB", "--attribution", "none"]).await;
    let c = connect(&env.dsn).await;
    c.batch_execute("BEGIN; DELETE FROM t").await.unwrap();
    // Wait until the server streamed part of it: a spool file exists and holds some of it.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let victim = loop {
        let found =
            std::fs::read_dir(&spool_dir).into_iter().flatten().flatten().map(|e| e.path()).find(|p| {
                p.extension().is_some_and(|x| x == "spool") && std::fs::metadata(p).is_ok_and(|m| m.len() > 0)
            });
        if let Some(p) = found {
            break p;
        }
        assert!(tokio::time::Instant::now() < deadline, "the transaction was not streamed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    // A forged spool of the same length: one record whose message is blank padding, then an empty one.
    let len = std::fs::metadata(&victim).unwrap().len() as usize;
    let mut fake = Vec::with_capacity(len);
    if len >= 24 {
        let pad = len - 24;
        fake.extend_from_slice(&(pad as u32).to_be_bytes());
        fake.extend_from_slice(&0u64.to_be_bytes());
        fake.resize(12 + pad, b' ');
        fake.extend_from_slice(&[0u8; 12]);
    } else {
        fake.resize(len, 0);
    }
    let forged = spool_dir.join("forged.tmp");
    std::fs::write(&forged, &fake).unwrap();
    std::fs::rename(&forged, &victim).unwrap();
    c.batch_execute("COMMIT").await.unwrap();
    let stderr = env.stop_capture(bg).await;
    let recs = records(&out);
    check_structure(&recs);
    assert_eq!(of_type(&recs, "delete").len(), 2000, "rows lost to a swapped spool file\n{stderr}");
}

/// Symbolic links planted at `--out` and `report --html`, an ordinary file given as `--out`, and a
/// log owned by another user: all refused, their targets untouched, no slot left behind; new files
/// are 0600 and an existing log others can read gets a warning.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_paths_refuse_symlinks_foreign_and_non_log_files() {
    let env = Env::start().await;
    env.exec("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t SELECT generate_series(1, 10);").await;
    let end = env.lsn().await;
    let precious = env.log_path("root-only.conf");
    std::fs::write(&precious, "secret=1\nother=2\n").unwrap();
    std::fs::set_permissions(&precious, std::fs::Permissions::from_mode(0o600)).unwrap();

    let link = env.log_path("deletes.jsonl");
    std::os::unix::fs::symlink(&precious, &link).unwrap();
    let r = env.capture(&link, &["t"], &["--endpos", &end]).await;
    r.assert_code(11);
    assert!(r.stderr.contains("symbolic link"), "{r}");
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "secret=1\nother=2\n");

    // An ordinary file (a mistyped path): the old code "repaired" it, cutting its lines.
    let r = env.capture(&precious, &["t"], &["--endpos", &end]).await;
    r.assert_code(11);
    assert!(r.stderr.contains("not a walwitness log") && r.stderr.contains("left untouched"), "{r}");
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "secret=1\nother=2\n");

    // A log file another user created (and can edit at will).
    let theirs = env.log_path("theirs.jsonl");
    std::fs::write(&theirs, "").unwrap();
    std::os::unix::fs::chown(&theirs, Some(NOBODY), Some(NOBODY)).unwrap();
    let r = env.capture(&theirs, &["t"], &["--endpos", &end]).await;
    r.assert_code(11);
    assert!(r.stderr.contains("belongs to uid 65534"), "{r}");
    assert!(env.slots().await.is_empty() && env.publications().await.is_empty(), "server changed");

    // A real log: created 0600; made readable by others, the next run warns.
    let log = env.log_path("real.jsonl");
    env.capture(&log, &["t"], &["--endpos", &end, "--keep-slot"]).await.assert_code(0);
    assert_eq!(mode(&log), 0o600);
    env.exec("DELETE FROM t WHERE id < 4").await;
    std::fs::set_permissions(&log, std::fs::Permissions::from_mode(0o644)).unwrap();
    let end = env.lsn().await;
    let r = env.capture(&log, &["t"], &["--endpos", &end]).await;
    r.assert_code(0);
    assert!(r.stderr.contains("can be read by other users (mode 0644)"), "{r}");

    // report --html through a planted symlink: refused, target untouched; a new report is 0600.
    let html_link = env.log_path("incident.html");
    std::os::unix::fs::symlink(&precious, &html_link).unwrap();
    let log_s = log.to_str().unwrap();
    let r = run(&["report", log_s, "--html", html_link.to_str().unwrap()]).await;
    r.assert_code(11);
    assert!(r.stderr.contains("symbolic link"), "{r}");
    assert_eq!(std::fs::read_to_string(&precious).unwrap(), "secret=1\nother=2\n");
    let html = env.log_path("new.html");
    run(&["report", log_s, "--html", html.to_str().unwrap()]).await.assert_code(0);
    assert_eq!(mode(&html), 0o600);
    assert!(std::fs::read_to_string(&html).unwrap().contains("<html"));
}

/// Escape sequences in a SQL comment (recorded as the statement) and newlines in a key: `tail` and
/// the text `report` show them escaped — no erased lines, no fabricated transaction block — while
/// `tail --json` and `replay` keep the log's exact JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn escape_sequences_and_newlines_cannot_fake_output() {
    let env = Env::start().await;
    let fake_key =
        "k1\n2026-11-26T15:01:03.000000Z  xid 6  1 row deleted from public.innocent\n  session  pid 1  user admin";
    env.exec("CREATE TABLE t (k text PRIMARY KEY); INSERT INTO t VALUES ('plain');").await;
    env.sql.execute("INSERT INTO t VALUES ($1)", &[&fake_key]).await.unwrap();
    let out = env.log_path("inj.jsonl");
    let extra = ["--attribution", "trigger"];
    let start = env.lsn().await;
    env.capture(&out, &["t"], &["--endpos", &start, "--keep-slot", extra[0], extra[1]]).await.assert_code(0);
    let statement = "DELETE FROM t /* \x1b[1A\x1b[2K\x1b]0;owned\x07\r\u{202e} */ WHERE k <> 'plain'";
    env.exec(statement).await;
    let end = env.lsn().await;
    env.capture(&out, &["t"], &["--endpos", &end, extra[0], extra[1]]).await.assert_code(0);
    let recs = records(&out);
    let dels = of_type(&recs, "delete");
    assert_eq!(dels.len(), 1);
    assert_eq!(dels[0]["key"]["k"], fake_key);
    assert!(full_session(&recs, dels[0])["query"].as_str().unwrap().contains("\x1b[2K"), "{}", dels[0]);

    let path = out.to_str().unwrap();
    let bad = |s: &str| s.chars().any(|c| c != '\n' && (c.is_control() || c == '\u{202e}'));
    let tail = run(&["tail", path]).await;
    tail.assert_code(0);
    assert!(!bad(&tail.stdout), "{tail}");
    assert!(!tail.stdout.lines().any(|l| l.starts_with("2026-11-26T15:01:03")), "a fake block\n{tail}");
    assert!(tail.stdout.contains("k1\\n2026-11-26T15:01:03.000000Z  xid 6"), "{tail}");
    assert!(tail.stdout.contains("/* \\x1b[1A\\x1b[2K\\x1b]0;owned\\x07 \\u{202e} */"), "{tail}");
    let report = run(&["report", path]).await;
    report.assert_code(0);
    assert!(!bad(&report.stdout), "{report}");
    assert!(report.stdout.contains("\\x1b[2K"), "{report}");

    // The JSON outputs are exact.
    let text = std::fs::read_to_string(&out).unwrap();
    let json = run(&["tail", "--json", path]).await;
    let tx: Vec<&str> = text.lines().filter(|l| !l.contains("\"capture_st")).collect();
    let shown: Vec<&str> = json.stdout.lines().filter(|l| !l.contains("\"capture_st")).collect();
    assert_eq!(shown, tx);
    let replay = run(&["replay", path, "--type", "delete"]).await;
    assert_eq!(
        replay.stdout.lines().collect::<Vec<_>>(),
        text.lines().filter(|l| l.contains("\"delete\"")).collect::<Vec<_>>()
    );
}

/// The connection string need not be on the command line (`ps` shows it to every local user):
/// WALWITNESS_DSN and --dsn-file work for capture, and a password is never printed in errors, even
/// in a URL whose password holds an '@' (its tail used to become the host name in every error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_string_from_environment_or_file_and_passwords_never_printed() {
    let env = Env::start().await;
    env.exec("CREATE TABLE t (id int PRIMARY KEY)").await;
    let out = env.log_path("env.jsonl");
    let end = env.lsn().await;
    let o = out.to_str().unwrap();
    let r = run_env(&["capture", "--table", "t", "--out", o, "--endpos", &end], &[("WALWITNESS_DSN", &env.dsn)]).await;
    r.assert_code(0);
    assert!(!r.args.iter().any(|a| a.contains(&env.dsn)));
    let file = env.log_path("dsn");
    std::fs::write(&file, format!("{}\n", env.dsn)).unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let r = run(&["capture", "--dsn-file", file.to_str().unwrap(), "--table", "t", "--out", o, "--endpos", &end]).await;
    r.assert_code(0);
    assert!(!r.stderr.contains("warning"), "{r}");

    // Passwords in errors: an '@' in a URL password, through every way of giving it.
    for (dsn, code) in [
        ("postgres://app:se@Kq9secret@127.0.0.1:1/db", 3),
        ("postgres://app:p@Kq9/secret@127.0.0.1:1/db", 3),
        ("postgres://app:Kq9%40secret@127.0.0.1:1/db", 4),
        ("host=127.0.0.1 port=1 user=app password='Kq9 secret'", 4),
    ] {
        let r = run(&["doctor", "--dsn", dsn]).await;
        r.assert_code(code);
        assert!(!r.stderr.contains("Kq9") && !r.stdout.contains("Kq9"), "password shown\n{r}");
        assert!(r.stderr.contains("visible to every local user"), "no warning about ps\n{r}");
        let r = run_env(&["capture", "--table", "t", "--out", o], &[("WALWITNESS_DSN", dsn)]).await;
        r.assert_code(code);
        assert!(!r.stderr.contains("Kq9"), "password shown\n{r}");
        assert!(!r.stderr.contains("visible to every local user"), "{r}");
    }
    let help = run(&["capture", "--help"]).await;
    assert!(help.stdout.contains("WALWITNESS_DSN") && help.stdout.contains("--dsn-file"), "{help}");
}
