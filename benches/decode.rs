//! Offline decode + JSON throughput (issue 6): what one core does per deleted row, without the server,
//! the socket or the disk.
//!
//! * `parse`: `pgoutput::parse` of one Delete message (key only, and REPLICA IDENTITY FULL);
//! * `handle`: `Assembler::handle` of an already parsed Delete into a BytesMut (the JSON record);
//! * `pipeline`: what the capture loop does per XLogData frame: `parse_copy_data`, `pgoutput::parse`,
//!   `Assembler::handle`, with the output buffer split off every 256 KiB as the loop does.
//!
//! Plain `harness = false` with `std::time` (criterion needs crates this project does not vendor).
//! Each figure is the median of 7 timed passes over 1,000,000 messages, as records per second on one
//! core. Run: `cargo bench --bench decode` (`BENCH_ROWS=…` to change the count).
use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use walwitness::attribution::Attributor;
use walwitness::decode::relations::WatchList;
use walwitness::decode::Assembler;
use walwitness::protocol::encode;
use walwitness::protocol::pgoutput::{self, ParseOptions};
use walwitness::protocol::replication::parse_copy_data;
use walwitness::protocol::Lsn;

const OPTS: ParseOptions = ParseOptions { in_stream: false, stream_abort_has_lsn: false };
const RELID: u32 = 16_385;
const XID: u32 = 4_242;
const COMMIT_LSN: u64 = 0x1_2345_6780;
const COMMIT_TIME: i64 = 817_000_000_000_000;

fn begin() -> Bytes {
    encode::begin(COMMIT_LSN, COMMIT_TIME, XID)
}

fn relation(full: bool) -> Bytes {
    let cols = [(true, "cache_key", 1043), (full, "value", 25), (full, "expires", 1184)];
    encode::relation(None, RELID, "public", "cache", if full { b'f' } else { b'd' }, &cols)
}

/// A Delete as PostgreSQL 15 sends it for the bench table: 'K' with the key and two NULLs, or 'O'
/// with the whole old row.
fn delete(i: u64, full: bool) -> Bytes {
    let key = format!(":1:views.decorators.cache.cache_page.{i}");
    if full {
        let value: &[u8] =
            b"Z3JlYXQgZXhwZWN0YXRpb25zIGFyZSB0aGUgc2VlZHMgb2YgZ3JlYXQ=bGFyZ2UgdmFsdWVzIGFyZSBqdXN0IHZhbHVlcw==";
        let expires: &[u8] = b"2026-11-27 15:04:05.123456+00";
        encode::delete(None, RELID, b'O', &[Some(key.as_bytes()), Some(value), Some(expires)])
    } else {
        encode::delete(None, RELID, b'K', &[Some(key.as_bytes()), None, None])
    }
}

/// The CopyData payload the socket delivers: XLogData header, then the pgoutput message.
fn xlogdata(lsn: u64, msg: &[u8]) -> Bytes {
    encode::xlogdata(lsn, COMMIT_TIME, msg)
}

fn assembler(full: bool, out: &mut BytesMut) -> Assembler {
    let mut watch = WatchList::new();
    watch.add("public", "cache", Some(vec!["cache_key".into()]));
    let mut asm = Assembler::new(watch, Lsn(0), Attributor::default());
    for m in [begin(), relation(full)] {
        asm.handle(Lsn(COMMIT_LSN - 1), pgoutput::parse(&m, OPTS).unwrap(), out).unwrap();
    }
    asm
}

/// Median over `passes` of the rate `f` achieves on `n` items, in items per second. `f` returns the
/// time of its measured part (so per-pass setup stays out of it).
fn rate(n: usize, passes: usize, mut f: impl FnMut() -> Duration) -> f64 {
    f(); // warm-up: page in the inputs, grow buffers
    let mut r: Vec<f64> = (0..passes).map(|_| n as f64 / f().as_secs_f64()).collect();
    r.sort_by(|a, b| a.partial_cmp(b).unwrap());
    r[r.len() / 2]
}

fn main() {
    // `cargo bench` passes --bench; under `cargo test` (a debug build) a small smoke run is enough.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let full = std::env::args().any(|a| a == "--bench");
    let default_rows = if full { 1_000_000 } else { 2_000 };
    let n: usize = std::env::var("BENCH_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(default_rows);
    let passes = 7;
    println!("decode bench: {n} Delete messages per pass, median of {passes} passes, one thread");
    for full in [false, true] {
        let label = if full { "REPLICA IDENTITY FULL" } else { "key only" };
        let msgs: Vec<Bytes> = (0..n as u64).map(|i| delete(i, full)).collect();
        let frames: Vec<Bytes> =
            msgs.iter().enumerate().map(|(i, m)| xlogdata(COMMIT_LSN - 1_000_000_000 + i as u64 * 80, m)).collect();

        let parse = rate(n, passes, || {
            let t = Instant::now();
            for m in &msgs {
                black_box(pgoutput::parse(black_box(m), OPTS).unwrap());
            }
            t.elapsed()
        });

        let parsed: Vec<_> = msgs.iter().map(|m| pgoutput::parse(m, OPTS).unwrap()).collect();
        let mut out = BytesMut::with_capacity(64 << 20);
        let mut asm = assembler(full, &mut out);
        let mut bytes_per_row = 0.0;
        let handle = rate(n, passes, || {
            // `handle` takes the message by value: clone them first, untimed, so this is the JSON alone.
            let batch = parsed.clone();
            out.clear();
            let t = Instant::now();
            for (i, m) in batch.into_iter().enumerate() {
                asm.handle(Lsn(COMMIT_LSN - 1_000_000_000 + i as u64 * 80), m, &mut out).unwrap();
            }
            let d = t.elapsed();
            bytes_per_row = out.len() as f64 / n as f64;
            d
        });

        let mut out = BytesMut::with_capacity(1 << 20);
        let mut asm = assembler(full, &mut out);
        let pipeline = rate(n, passes, || {
            let t = Instant::now();
            for f in &frames {
                let walwitness::protocol::replication::ReplicationMessage::XLogData { wal_start, data, .. } =
                    parse_copy_data(f.clone()).unwrap()
                else {
                    unreachable!()
                };
                let m = pgoutput::parse(&data, OPTS).unwrap();
                asm.handle(wal_start, m, &mut out).unwrap();
                if out.len() >= 256 * 1024 {
                    black_box(asm.take_complete(&mut out));
                }
            }
            t.elapsed()
        });
        println!("{label:>22}: parse {:>6.2} M msg/s | handle (JSON) {:>6.2} M rec/s, {bytes_per_row:.0} B/rec | pipeline {:>6.2} M rec/s/core", parse / 1e6, handle / 1e6, pipeline / 1e6);
    }
}
