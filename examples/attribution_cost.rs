//! Measures what attribution costs the server (issue 3), on a throwaway cluster:
//! * trigger: pgbench TPS of a one-row DELETE (+ re-INSERT, so every statement deletes a row) with and
//!   without the attribution trigger, alternated A B A B A B; the per-statement cost is the difference of
//!   the mean latencies;
//! * activity: mean latency of the sampler's pg_stat_activity query with 50 idle client connections,
//!   turned into the share of one core it uses at the default interval.
//!
//! Run: `cargo run --release --example attribution_cost` (figures go to stdout; README quotes them).
use std::process::Command;
use std::time::Duration;

use walwitness::cluster::{Cluster, ClusterOptions};

fn pgbench(cluster: &Cluster, script: &str, secs: u32, clients: u32) -> f64 {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("s.sql");
    std::fs::write(&f, script).unwrap();
    let bin = cluster.bin_dir().join("pgbench");
    let bin = if bin.exists() { bin } else { "/usr/lib/postgresql/15/bin/pgbench".into() };
    let out = Command::new(bin)
        .args(["-n", "-M", "prepared", "-T", &secs.to_string(), "-c", &clients.to_string(), "-f"])
        .arg(&f)
        .args([
            "-h",
            cluster.socket_dir().to_str().unwrap(),
            "-p",
            &cluster.port().to_string(),
            "-U",
            "postgres",
            "postgres",
        ])
        .output()
        .expect("run pgbench");
    let text = String::from_utf8_lossy(&out.stdout);
    let lat = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("latency average = ").and_then(|r| r.split(' ').next()).and_then(|v| v.parse::<f64>().ok())
        })
        .unwrap_or_else(|| panic!("no latency in pgbench output:\n{text}\n{}", String::from_utf8_lossy(&out.stderr)));
    lat
}

#[tokio::main]
async fn main() {
    let cluster = Cluster::start(ClusterOptions::default()).expect("cluster");
    cluster
        .psql(
            "postgres",
            "CREATE TABLE cache (cache_key varchar(255) PRIMARY KEY, value text NOT NULL, expires timestamptz NOT NULL); \
             INSERT INTO cache SELECT 'k' || g, 'v', now() FROM generate_series(1, 100000) g;",
        )
        .unwrap();
    let script = "\\set id random(1, 100000)\nDELETE FROM cache WHERE cache_key = 'k' || :id;\n\
                  INSERT INTO cache VALUES ('k' || :id, 'v', now()) ON CONFLICT DO NOTHING;\n";
    let dsn = cluster.socket_dsn("postgres", "postgres");
    let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    let mut without = Vec::new();
    let mut with = Vec::new();
    pgbench(&cluster, script, 3, 1); // warm-up
    for _ in 0..3 {
        walwitness::attribution::trigger::remove(&c, &["cache".into()]).await.unwrap();
        without.push(pgbench(&cluster, script, 8, 1));
        walwitness::attribution::trigger::install(&c, &["cache".into()]).await.unwrap();
        with.push(pgbench(&cluster, script, 8, 1));
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (a, b) = (median(&mut without), median(&mut with));
    println!("trigger: DELETE+INSERT latency without {a:.3} ms, with {b:.3} ms (median of 3 × 8 s, 1 client)");
    println!(
        "trigger: cost per DELETE statement ≈ {:.1} µs ({:+.0}% on this statement pair)",
        (b - a) * 1000.0,
        (b / a - 1.0) * 100.0
    );

    // The sampler's query with 50 idle sessions connected.
    let mut idle = Vec::new();
    for _ in 0..50 {
        let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await.unwrap();
        tokio::spawn(conn);
        idle.push(c);
    }
    let sample = walwitness::attribution::activity::sample_sql(None);
    let n = 500;
    let t0 = std::time::Instant::now();
    for _ in 0..n {
        c.query(&sample, &[]).await.unwrap();
    }
    let lat = t0.elapsed().as_secs_f64() * 1000.0 / f64::from(n);
    let every = Duration::from_millis(200);
    println!(
        "activity: sampling query {lat:.3} ms round trip with 50 idle sessions; at the default {} ms interval that is at most {:.2}% of one server core",
        every.as_millis(),
        lat / every.as_secs_f64() / 10.0
    );
    drop(idle);
}
