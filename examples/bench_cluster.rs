//! A throwaway cluster for `bench/run.sh` (issue 6): starts one with `walwitness::cluster`, prints
//! `KEY=value` lines the shell script reads, and keeps it running until its standard input closes, so
//! the cluster (and its temp directory) is removed however the script ends.
//!
//! Run: `bench/run.sh` starts it as a coprocess; by hand: `cargo run --release --example bench_cluster`.
use std::io::{BufRead, Write};

use walwitness::cluster::{Cluster, ClusterOptions};

fn main() {
    let opts = ClusterOptions {
        extra_conf: vec![
            // 3 repetitions × 4 consumers of one workload at a time, plus headroom.
            ("max_replication_slots".into(), "20".into()),
            ("max_wal_senders".into(), "20".into()),
            // The deleted rows' WAL stays retained by 12 slots until drained; avoid checkpoint
            // storms in the middle of the workload distorting what the consumers then read.
            ("max_wal_size".into(), "8GB".into()),
            ("checkpoint_timeout".into(), "30min".into()),
            ("shared_buffers".into(), "128MB".into()),
        ],
        ..Default::default()
    };
    let cluster = Cluster::start(opts).unwrap_or_else(|e| {
        eprintln!("bench_cluster: {e}");
        std::process::exit(1);
    });
    let mut out = std::io::stdout().lock();
    writeln!(out, "SOCKET_DIR={}", cluster.socket_dir().display()).unwrap();
    writeln!(out, "PORT={}", cluster.port()).unwrap();
    writeln!(out, "BIN_DIR={}", cluster.bin_dir().display()).unwrap();
    writeln!(out, "DATA_DIR={}", cluster.data_dir().display()).unwrap();
    writeln!(out, "READY").unwrap();
    out.flush().unwrap();
    drop(out);
    // Until the script closes our stdin (or dies): then Drop stops the server and removes the directory.
    let mut line = String::new();
    while std::io::stdin().lock().read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
        line.clear();
    }
}
