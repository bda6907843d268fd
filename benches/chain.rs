//! What the tamper-evident chain costs the writer thread (issue 13): the writer's path for a chunk —
//! `write` into the log file (page cache; the fdatasync that follows is the same either way and is left
//! out, which makes the ratio the least favourable one) — without and with `Chainer::feed` (SHA-256 over
//! the bytes, a chain value per transaction).
//!
//! Records are shaped like the capture's (`bench/run.sh` logs: 245 bytes per key-only row, 445 with
//! REPLICA IDENTITY FULL, a 250-byte commit) and handed over in the capture's chunks (whole
//! transactions batched up to 256 KiB; a large transaction in 256 KiB pieces).
//!
//! `harness = false` with `std::time`; each figure is the median of 7 passes over 1,000,000 rows.
//! Run: `cargo bench --bench chain` (`BENCH_ROWS=…` to change the count).
use std::fs::File;
use std::hint::black_box;
use std::io::{Seek, SeekFrom, Write};
use std::time::{Duration, Instant};

use walwitness::sink::chain::Chainer;

const PASSES: usize = 7;
const CHUNK: usize = 256 * 1024;

fn row(i: u64, xid: u64, full: bool) -> String {
    let old = if full {
        format!(
            "{{\"cache_key\":\":1:views.decorators.cache.cache_page.{i}\",\"value\":\"Z3JlYXQgZXhwZWN0YXRpb25zIGFyZSB0aGUgc2VlZHMgb2YgZ3JlYXQ=bGFyZ2UgdmFsdWVzIGFyZSBqdXN0IHZhbHVlcw==\",\"expires\":\"2026-11-26 15:17:53.580816+00\"}}"
        )
    } else {
        "null".to_owned()
    };
    format!(
        "{{\"type\":\"delete\",\"table\":\"public.cache\",\"xid\":{xid},\"lsn\":\"1/2345{i:04X}\",\"commit_lsn\":\"1/23456780\",\"commit_time\":\"2026-11-26T15:17:53.580816Z\",\"origin\":null,\"key\":{{\"cache_key\":\":1:views.decorators.cache.cache_page.{i}\"}},\"old\":{old},\"session\":null}}\n"
    )
}

fn commit(xid: u64, n: u64) -> String {
    format!(
        "{{\"type\":\"commit\",\"xid\":{xid},\"commit_lsn\":\"1/23456780\",\"end_lsn\":\"1/234567B0\",\"commit_time\":\"2026-11-26T15:17:53.580816Z\",\"origin\":null,\"deletes\":{n},\"truncates\":0,\"session\":null,\"attribution\":\"none\"}}\n"
    )
}

/// The chunks the capture would hand the writer: a capture_started, then `rows` rows in
/// transactions of `per_txn`, batched into chunks of about 256 KiB.
fn chunks(rows: u64, per_txn: u64, full: bool) -> Vec<Vec<u8>> {
    let mut out =
        vec![b"{\"type\":\"capture_started\",\"slot\":\"s\",\"format_version\":2,\"chain_prev\":null}\n".to_vec()];
    let mut cur = Vec::with_capacity(CHUNK + 4096);
    let mut i = 0;
    let mut xid = 1000;
    while i < rows {
        let n = per_txn.min(rows - i);
        for _ in 0..n {
            cur.extend_from_slice(row(i, xid, full).as_bytes());
            i += 1;
            if cur.len() >= CHUNK {
                out.push(std::mem::replace(&mut cur, Vec::with_capacity(CHUNK + 4096)));
            }
        }
        cur.extend_from_slice(commit(xid, n).as_bytes());
        xid += 1;
        if cur.len() >= CHUNK {
            out.push(std::mem::replace(&mut cur, Vec::with_capacity(CHUNK + 4096)));
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn pass(file: &mut File, chunks: &[Vec<u8>], chain: bool) -> Duration {
    file.set_len(0).unwrap();
    file.seek(SeekFrom::Start(0)).unwrap();
    let mut chainer = Chainer::new();
    let mut out = Vec::new();
    let t = Instant::now();
    for c in chunks {
        if chain {
            out.clear();
            chainer.feed(c, &mut out);
            file.write_all(&out).unwrap();
            chainer.mark_boundary();
        } else {
            file.write_all(c).unwrap();
        }
    }
    black_box(chainer.head());
    t.elapsed()
}

fn main() {
    // `cargo bench` passes --bench; under `cargo test` (a debug build) a small smoke run is enough.
    let full = std::env::args().any(|a| a == "--bench");
    let default_rows = if full { 1_000_000 } else { 2_000 };
    let rows: u64 = std::env::var("BENCH_ROWS").ok().and_then(|s| s.parse().ok()).unwrap_or(default_rows);
    let dir = tempfile::tempdir().unwrap();
    let mut file = File::create(dir.path().join("bench.jsonl")).unwrap();
    println!("{rows} rows, median of {PASSES} passes; write() to the page cache, no fdatasync");
    println!(
        "{:<40} {:>9} {:>12} {:>12} {:>8} {:>10}",
        "workload", "MiB", "plain ns/row", "chain ns/row", "ratio", "chain MB/s"
    );
    // The floor: SHA-256 alone over the same bytes (SHA-NI where the CPU has it: sha2 detects it).
    {
        use sha2::{Digest, Sha256};
        let cs = chunks(rows, 100, false);
        let bytes: usize = cs.iter().map(Vec::len).sum();
        let d = median(
            (0..PASSES)
                .map(|_| {
                    let t = Instant::now();
                    let mut h = Sha256::new();
                    for c in &cs {
                        h.update(c);
                    }
                    black_box(h.finalize());
                    t.elapsed()
                })
                .collect(),
        );
        println!("sha256 alone: {:.0} MB/s", bytes as f64 / d.as_secs_f64() / 1e6);
    }
    for (name, per_txn, full) in [
        ("(a) one transaction, key only", rows, false),
        ("(b) transactions of 100, key only", 100, false),
        ("(c) transactions of 100, FULL rows", 100, true),
        ("(d) one row per transaction, key only", 1, false),
    ] {
        let cs = chunks(rows, per_txn, full);
        let bytes: usize = cs.iter().map(Vec::len).sum();
        // Warm the page cache and the code once each.
        pass(&mut file, &cs, false);
        pass(&mut file, &cs, true);
        let mut plain = Vec::new();
        let mut chained = Vec::new();
        for _ in 0..PASSES {
            plain.push(pass(&mut file, &cs, false));
            chained.push(pass(&mut file, &cs, true));
        }
        let (p, c) = (median(plain), median(chained));
        let per_row = |d: Duration| d.as_nanos() as f64 / rows as f64;
        println!(
            "{:<40} {:>9.1} {:>12.1} {:>12.1} {:>7.2}× {:>10.0}",
            name,
            bytes as f64 / (1024.0 * 1024.0),
            per_row(p),
            per_row(c),
            c.as_secs_f64() / p.as_secs_f64(),
            bytes as f64 / c.as_secs_f64() / 1e6,
        );
    }
}
