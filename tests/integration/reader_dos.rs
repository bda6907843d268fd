//! Issue 13: the readers against hostile input (crafted logs and raw files). The real binary runs on
//! each file and its peak memory (`ru_maxrss` from `wait4`) and exit status are checked; timings are
//! printed (`--nocapture`), never asserted.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::util::*;

/// A run of the binary with its peak resident memory.
pub struct Measured {
    pub args: Vec<String>,
    pub code: Option<i32>,
    pub peak_kib: i64,
    pub secs: f64,
    pub stdout: PathBuf,
    pub stderr: String,
}

impl Measured {
    pub fn peak_mib(&self) -> f64 {
        self.peak_kib as f64 / 1024.0
    }

    pub fn stdout_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.stdout).unwrap_or_default()).into_owned()
    }

    pub fn assert_code(&self, code: i32) {
        assert_eq!(self.code, Some(code), "unexpected exit status\n{self}");
    }

    pub fn assert_peak_below_mib(&self, mib: i64) {
        assert!(self.peak_kib < mib * 1024, "peak RSS {:.1} MiB, expected below {mib} MiB\n{self}", self.peak_mib());
    }
}

impl std::fmt::Display for Measured {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "command: walwitness {}\nexit: {:?}, peak RSS {:.1} MiB, {:.2} s\nstderr:\n{}",
            self.args.join(" "),
            self.code,
            self.peak_mib(),
            self.secs,
            self.stderr
        )
    }
}

/// The peak resident memory of a running process (`VmHWM`), in KiB; `None` once it has exited.
fn vm_hwm_kib(pid: u32) -> Option<i64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs the binary with stdout into a file in `dir`, and measures its peak RSS from `VmHWM` in
/// `/proc/<pid>/status`, read every 2 ms while it runs (the high-water mark: only what it gains in its
/// last 2 ms can be missed). Not `wait4`'s `ru_maxrss`: Linux carries the spawning process's own peak
/// into the child's at exec, and this test process's peak is whatever the tests running beside it
/// needed. Killed (and the test failed) after 180 s.
pub fn run_measured(dir: &Path, args: &[&str]) -> Measured {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let stdout = dir.join(format!("measured-{n}.out"));
    let errpath = dir.join(format!("measured-{n}.err"));
    let start = Instant::now();
    let mut child = std::process::Command::new(BIN)
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&errpath).unwrap())
        .spawn()
        .expect("spawn walwitness");
    let pid = child.id();
    let poller = std::thread::spawn(move || {
        let mut peak = 0;
        let mut killed = false;
        while let Some(kib) = vm_hwm_kib(pid) {
            peak = peak.max(kib);
            if !killed && start.elapsed() > Duration::from_secs(180) {
                // Not reaped yet (the poller still sees its memory): the pid is still this child.
                unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
                killed = true;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        (peak, killed)
    });
    let status = child.wait().expect("wait for walwitness");
    let (peak_kib, killed) = poller.join().unwrap();
    let m = Measured {
        args: args.iter().map(|s| s.to_string()).collect(),
        code: status.code(),
        peak_kib,
        secs: start.elapsed().as_secs_f64(),
        stdout,
        stderr: std::fs::read_to_string(&errpath).unwrap_or_default(),
    };
    assert!(!killed, "walwitness did not finish in 180 s\n{m}");
    assert!(m.peak_kib > 0, "no memory figure read\n{m}");
    eprintln!(
        "measured: walwitness {}: exit {:?}, peak RSS {:.1} MiB, {:.2} s",
        m.args.join(" "),
        m.code,
        m.peak_mib(),
        m.secs
    );
    m
}

/// `members` gzip members of `chunk` each: what `cat a.gz b.gz …` makes, read as one stream.
fn gzip_members(chunk: &[u8], members: usize) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    enc.write_all(chunk).unwrap();
    enc.finish().unwrap().repeat(members)
}

fn zstd_frames(chunk: &[u8], frames: usize) -> Vec<u8> {
    ruzstd::encoding::compress_to_vec(chunk, ruzstd::encoding::CompressionLevel::Fastest).repeat(frames)
}

const CS: &str = r#"{"type":"capture_started","time":"2026-11-26T15:00:00.000000Z","slot":"s","publication":"p","tables":["public.t"],"start_lsn":"0/10","server_version":"15","system_identifier":"1","database":"postgres","walwitness_version":"0.1.0","format_version":1,"proto_version":3}"#;
const DEL: &str = r#"{"type":"delete","table":"public.t","xid":5,"lsn":"0/8","commit_lsn":"0/10","commit_time":"2026-11-26T15:01:02.000003Z","origin":null,"key":{"id":"a"},"old":null,"session":null}"#;

/// A gzip (and a zstd) of 1 GiB of zeros — one line that never ends — stops every reader at the line
/// limit with exit 14 and FILE:1, in bounded memory. Before: `replay`/`report` ran past 120 s at 460 MB
/// and `tail` read 1 GB and exited 0; damaged zstd data exited 2.
#[test]
fn a_compressed_endless_line_is_damage_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let zeros = vec![0u8; 1 << 20];
    let gz = dir.path().join("zeros.jsonl.gz");
    std::fs::write(&gz, gzip_members(&zeros, 1024)).unwrap();
    let zst = dir.path().join("zeros.jsonl.zst");
    std::fs::write(&zst, zstd_frames(&zeros, 1024)).unwrap();
    for file in [&gz, &zst] {
        let f = file.to_str().unwrap();
        for cmd in [&["tail", f][..], &["replay", f], &["report", f], &["replay", "--lenient", f]] {
            let m = run_measured(dir.path(), cmd);
            m.assert_code(14);
            assert!(m.stderr.contains(&format!("{f}:1: damaged log")), "{m}");
            assert!(m.stderr.contains("--max-line-length"), "{m}");
            // The default limit is 64 MiB: the reader holds the line once, plus its own small buffers.
            m.assert_peak_below_mib(140);
        }
        // A smaller limit, smaller memory.
        let m = run_measured(dir.path(), &["replay", "--max-line-length", "1MB", f]);
        m.assert_code(14);
        assert!(m.stderr.contains("limit of 1 MiB"), "{m}");
        m.assert_peak_below_mib(48);
    }
    // Damaged zstd data: a damaged log (14) naming the file and line, not a usage error (2).
    let bad = dir.path().join("bad.zst");
    let mut b = vec![0x28, 0xb5, 0x2f, 0xfd];
    b.extend_from_slice(&[0xff; 100]);
    std::fs::write(&bad, b).unwrap();
    let f = bad.to_str().unwrap();
    for cmd in [&["tail", f][..], &["replay", f], &["report", f]] {
        let m = run_measured(dir.path(), cmd);
        m.assert_code(14);
        assert!(m.stderr.contains(&format!("{f}:1: damaged log")) && m.stderr.contains("zstd"), "{m}");
    }
}

/// A plain 100 MB line: read in linear time (before: quadratic, 5.4 s for 128 MB in a release build)
/// and refused at the limit; raised past it, read once in bounded memory.
#[test]
fn a_long_plain_line_is_linear_and_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("long.jsonl");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&p).unwrap());
    writeln!(f, "{CS}").unwrap();
    let block = vec![b'x'; 1 << 20];
    for _ in 0..100 {
        f.write_all(&block).unwrap();
    }
    f.write_all(b"\n").unwrap();
    writeln!(f, "{CS}").unwrap();
    drop(f);
    let ps = p.to_str().unwrap();
    let m = run_measured(dir.path(), &["replay", ps]);
    m.assert_code(14);
    assert!(m.stderr.contains(&format!("{ps}:2: damaged log")) && m.stderr.contains("limit of 64 MiB"), "{m}");
    m.assert_peak_below_mib(140);
    // tail reads it line by line (not through the block reader): same limit, same answer.
    let m = run_measured(dir.path(), &["tail", ps]);
    m.assert_code(14);
    assert!(m.stderr.contains(&format!("{ps}:2: damaged log")), "{m}");
    assert!(m.stdout_text().contains("capture started"), "what came before is shown\n{m}");
    m.assert_peak_below_mib(140);
    // With a limit above it the line is read (and is not a record): --lenient goes on past it.
    let m = run_measured(dir.path(), &["replay", "--lenient", "--max-line-length", "200MB", ps]);
    m.assert_code(0);
    assert!(m.stderr.contains("skipped 1 damaged line"), "{m}");
    assert_eq!(m.stdout_text().lines().count(), 2, "{m}");
    // The line once, in the block that carries it, plus what the parser needs: well below 4×.
    m.assert_peak_below_mib(400);
}

/// A few MB of gzip make one transaction of hundreds of thousands of rows that never commits: `replay`
/// and `tail --json` hold its rows in a temporary file past 8 MiB, not in memory (before: the whole
/// transaction in memory, 538 MB for a 2 MB gzip of 3 million rows).
#[test]
fn a_huge_transaction_is_held_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let block: String = format!("{DEL}\n").repeat(10_000);
    let rows = 30; // × 10,000 rows, about 53 MB of lines
    let mut data = gzip_members(format!("{CS}\n").as_bytes(), 1);
    data.extend(gzip_members(block.as_bytes(), rows));
    let p = dir.path().join("rows.jsonl.gz");
    std::fs::write(&p, &data).unwrap();
    let ps = p.to_str().unwrap();
    for cmd in [&["replay", ps][..], &["tail", "--json", ps], &["report", ps]] {
        let m = run_measured(dir.path(), cmd);
        m.assert_peak_below_mib(48);
        if cmd[0] == "tail" {
            m.assert_code(0);
            assert!(m.stderr.contains("300000 row record(s)"), "{m}");
        } else {
            m.assert_code(14);
            assert!(m.stderr.contains("300000 row records of xid 5"), "{m}");
        }
    }
    // Committed, the same transaction is written whole, in order, from the temporary file.
    let commit = r#"{"type":"commit","xid":5,"commit_lsn":"0/10","end_lsn":"0/18","commit_time":"2026-11-26T15:01:02.000003Z","origin":null,"deletes":300000,"truncates":0,"session":null,"attribution":"none"}"#;
    data.extend(gzip_members(format!("{commit}\n").as_bytes(), 1));
    std::fs::write(&p, &data).unwrap();
    for cmd in [&["replay", ps][..], &["tail", "--json", ps]] {
        let m = run_measured(dir.path(), cmd);
        m.assert_code(0);
        m.assert_peak_below_mib(48);
        let out = std::fs::read(&m.stdout).unwrap();
        assert_eq!(out.len(), CS.len() + 1 + block.len() * rows + commit.len() + 1, "{m}");
        assert!(out.ends_with(format!("{DEL}\n{commit}\n").as_bytes()));
    }
}

/// Random damage to a compressed log: every reader exits 0 or 14 (never crashes, never another status)
/// and stays in bounded memory.
#[test]
fn damaged_compressed_logs_never_crash_the_readers() {
    let dir = tempfile::tempdir().unwrap();
    let commit = r#"{"type":"commit","xid":5,"commit_lsn":"0/10","end_lsn":"0/18","commit_time":"2026-11-26T15:01:02.000003Z","origin":null,"deletes":3,"truncates":0,"session":null,"attribution":"none"}"#;
    let text = format!("{CS}\n{DEL}\n{DEL}\n{DEL}\n{commit}\n").repeat(2000);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(text.as_bytes()).unwrap();
    let gz = gz.finish().unwrap();
    let zst = ruzstd::encoding::compress_to_vec(text.as_bytes(), ruzstd::encoding::CompressionLevel::Fastest);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for (name, data) in [("g.jsonl.gz", &gz), ("z.jsonl.zst", &zst)] {
        for i in 0..12 {
            let mut d = data.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % d.len();
                d[at] ^= 1 + (next() % 255) as u8;
            }
            let p = dir.path().join(format!("{i}-{name}"));
            std::fs::write(&p, &d).unwrap();
            let ps = p.to_str().unwrap();
            for cmd in [&["replay", ps][..], &["tail", ps], &["report", "--lenient", ps]] {
                let m = run_measured(dir.path(), cmd);
                assert!(matches!(m.code, Some(0) | Some(14)), "{m}");
                m.assert_peak_below_mib(140);
            }
        }
    }
}

/// The raw file's frames, read with the library (as a tool that forges one would).
fn raw_frames(path: &Path) -> (walwitness::sink::raw::RawHeader, Vec<walwitness::sink::raw::Frame>) {
    let f = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let (h, mut r) = walwitness::sink::raw::RawReader::open(f, usize::MAX).unwrap();
    let mut frames = Vec::new();
    while let Some(fr) = r.next_frame().unwrap() {
        frames.push(fr);
    }
    (h, frames)
}

/// A real raw capture: 300 random corruptions of 1 to 4 bytes are each detected (exit 14 naming the
/// byte offset of the frame) or change nothing (the same output); a forged activity frame claiming
/// the trigger's exactness is reported as `activity`. Before: 164 of 300 corruptions changed records
/// with exit 0, and the forged frame came out as `"attributed_by":"trigger"`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_file_damage_is_detected_and_forged_sessions_are_not_trusted() {
    let env = Env::start().await;
    env.exec(
        "CREATE TABLE cache (cache_key text PRIMARY KEY, value text); \
         INSERT INTO cache SELECT 'k' || g, repeat('v', g % 50) FROM generate_series(1, 300) g;",
    )
    .await;
    let out = env.log_path("live.jsonl");
    let raw = env.log_path("live.raw");
    let raw_s = raw.display().to_string();
    let bg = env.start_capture(&out, &["cache"], &["--raw-out", &raw_s, "--attribution", "none"]).await;
    for i in 0..12 {
        env.exec(&format!(
            "DELETE FROM cache WHERE substr(cache_key, 2)::int % 12 = {i} AND substr(cache_key, 2)::int < 100"
        ))
        .await;
    }
    env.exec("BEGIN; DELETE FROM cache WHERE cache_key = 'k150'; INSERT INTO cache VALUES ('new', 'x'); COMMIT").await;
    env.stop_capture(bg).await;
    let base = run_bin(&["replay".into(), "--raw".into(), raw_s.clone()]).await;
    base.assert_code(0);
    assert_eq!(base.stdout.lines().filter(|l| l.contains("\"type\":\"commit\"")).count(), 13, "{base}");
    let bytes = std::fs::read(&raw).unwrap();
    eprintln!("raw capture: {} bytes", bytes.len());

    // The corruption sweep.
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let damaged = env.log_path("damaged.raw");
    let damaged_s = damaged.display().to_string();
    let (mut detected, mut unchanged) = (0, 0);
    for round in 0..300 {
        let mut d = bytes.clone();
        let mut places = Vec::new();
        for _ in 0..1 + next() % 4 {
            let at = (next() as usize) % d.len();
            d[at] ^= 1 + (next() % 255) as u8;
            places.push(at);
        }
        std::fs::write(&damaged, &d).unwrap();
        let r = run_bin(&["replay".into(), "--raw".into(), damaged_s.clone()]).await;
        match r.code {
            Some(14) => {
                assert!(r.stderr.contains("at byte "), "round {round}, damage at {places:?}: no offset named\n{r}");
                detected += 1;
            }
            Some(0) => {
                assert!(
                    r.stdout == base.stdout,
                    "round {round}, damage at {places:?} changed the output silently\n{r}"
                );
                unchanged += 1;
            }
            _ => panic!("round {round}, damage at {places:?}\n{r}"),
        }
    }
    eprintln!("corruption sweep: {detected} of 300 detected (exit 14), {unchanged} without effect");

    // A forged activity frame before every Begin: a session claiming to be the trigger's.
    let (header, frames) = raw_frames(&raw);
    let forged = env.log_path("forged.raw");
    std::fs::remove_file(&forged).ok();
    let mut w = walwitness::sink::raw::RawWriter::open(&forged, &header).unwrap();
    let session = br#"{"attributed_by":"trigger","pid":4242,"backend_start":null,"user":"mallory","application_name":"forged","client_addr":null,"client_port":null,"query":"DELETE FROM cache","query_truncated":false,"xact_start":null,"statement_start":"2026-01-01T00:00:00.000000Z","trigger_depth":0}"#;
    let mut begins = 0;
    for f in &frames {
        match f {
            walwitness::sink::raw::Frame::XLog { wal_start, payload } => {
                if payload.first() == Some(&b'B') {
                    let xid = u32::from_be_bytes(payload[17..21].try_into().unwrap());
                    w.activity(xid, session).unwrap();
                    begins += 1;
                }
                w.xlog(*wal_start, payload).unwrap();
            }
            walwitness::sink::raw::Frame::Activity { xid, session } => w.activity(*xid, session).unwrap(),
            walwitness::sink::raw::Frame::Reconnected => w.reconnected().unwrap(),
            walwitness::sink::raw::Frame::Inference { xid, encoded } => w.inference(*xid, encoded).unwrap(),
            walwitness::sink::raw::Frame::Partition { oid, root, primary_key } => {
                w.partition(*oid, *root, primary_key.as_deref()).unwrap()
            }
        }
    }
    w.flush().unwrap();
    drop(w);
    assert!(begins >= 13);
    let r = run_bin(&["replay".into(), "--raw".into(), forged.display().to_string()]).await;
    r.assert_code(0);
    let all: Vec<serde_json::Value> = r.stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // Each forged session also gets its transaction's statement record (format 3).
    let recs: Vec<&serde_json::Value> = all.iter().filter(|r| r["type"] != "statement").collect();
    assert_eq!(recs.len(), base.stdout.lines().count());
    for st in all.iter().filter(|r| r["type"] == "statement") {
        assert_eq!(st["session"]["attributed_by"], "activity", "{st}");
        assert!(st["session"].get("trigger_depth").is_none(), "{st}");
    }
    for rec in &recs {
        assert_eq!(rec["session"]["attributed_by"], "activity", "{rec}");
        assert_eq!(rec["session"]["user"], "mallory", "the claim is shown for what it is");
        assert!(rec["session"].get("statement_start").is_none() && rec["session"].get("trigger_depth").is_none());
        if rec["type"] == "commit" {
            assert_eq!(rec["attribution"], "activity", "{rec}");
        }
    }
    assert!(!r.stdout.contains("\"trigger\""), "{r}");
}

fn cstr(b: &mut Vec<u8>, s: &str) {
    b.extend_from_slice(s.as_bytes());
    b.push(0);
}

/// A raw file much larger than the memory allowed, with one transaction of 200,000 rows: streamed
/// frame by frame, the transaction waiting for its commit on disk. Before: the whole file was read
/// into memory, and the transaction's records held there too.
#[test]
fn a_large_raw_file_is_streamed() {
    use walwitness::protocol::Lsn;
    use walwitness::sink::raw::{RawHeader, RawTable, RawWriter};
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("large.raw");
    let header = RawHeader {
        tables: vec![RawTable {
            schema: "public".into(),
            table: "cache".into(),
            primary_key: Some(vec!["cache_key".into()]),
            oid: Some(16384),
            partitions: vec![],
        }],
        slot: "s".into(),
        publication: "p".into(),
        proto_version: 1,
    };
    let mut w = RawWriter::open(&p, &header).unwrap();
    let mut lsn = 0x1000u64;
    let mut rel = vec![b'R'];
    rel.extend_from_slice(&16384u32.to_be_bytes());
    cstr(&mut rel, "public");
    cstr(&mut rel, "cache");
    rel.push(b'd');
    rel.extend_from_slice(&1i16.to_be_bytes());
    rel.push(1);
    cstr(&mut rel, "cache_key");
    rel.extend_from_slice(&25u32.to_be_bytes());
    rel.extend_from_slice(&(-1i32).to_be_bytes());
    let pad = "p".repeat(300);
    let mut xid = 1000u32;
    let mut rows_total = 0;
    let mut txn = |w: &mut RawWriter, rows: usize, lsn: &mut u64, first: bool| {
        let final_lsn = *lsn + rows as u64 * 0x100 + 0x100;
        let mut b = vec![b'B'];
        b.extend_from_slice(&final_lsn.to_be_bytes());
        b.extend_from_slice(&0i64.to_be_bytes());
        b.extend_from_slice(&xid.to_be_bytes());
        w.xlog(Lsn(*lsn), &b).unwrap();
        if first {
            w.xlog(Lsn(*lsn), &rel).unwrap();
        }
        for i in 0..rows {
            *lsn += 0x100;
            let key = format!("k{xid}-{i}-{pad}");
            let mut d = vec![b'D'];
            d.extend_from_slice(&16384u32.to_be_bytes());
            d.push(b'K');
            d.extend_from_slice(&1i16.to_be_bytes());
            d.push(b't');
            d.extend_from_slice(&(key.len() as i32).to_be_bytes());
            d.extend_from_slice(key.as_bytes());
            w.xlog(Lsn(*lsn), &d).unwrap();
        }
        let mut c = vec![b'C', 0];
        c.extend_from_slice(&final_lsn.to_be_bytes());
        c.extend_from_slice(&(final_lsn + 0x10).to_be_bytes());
        c.extend_from_slice(&0i64.to_be_bytes());
        w.xlog(Lsn(final_lsn), &c).unwrap();
        *lsn = final_lsn + 0x100;
        xid += 1;
    };
    txn(&mut w, 200_000, &mut lsn, true);
    rows_total += 200_000;
    for _ in 0..50 {
        txn(&mut w, 1000, &mut lsn, false);
        rows_total += 1000;
    }
    w.flush().unwrap();
    drop(w);
    let size = std::fs::metadata(&p).unwrap().len();
    assert!(size > 80 << 20, "{size}");
    let m = run_measured(dir.path(), &["replay", "--raw", p.to_str().unwrap()]);
    m.assert_code(0);
    let out = std::fs::read_to_string(&m.stdout).unwrap();
    assert_eq!(out.lines().count(), rows_total + 51, "{m}");
    assert!(out.lines().nth(199_999).unwrap().contains(&format!("\"k1000-199999-{pad}\"")));
    assert!(out.lines().nth(200_000).unwrap().contains("\"deletes\":200000"));
    eprintln!("raw file of {:.0} MiB streamed", size as f64 / 1048576.0);
    m.assert_peak_below_mib(48);
}
