//! CPU cost of the attribution trigger alone: 20,000 zero-row DELETE statements in one DO block (a
//! statement trigger fires even when no row matches), with and without the trigger.
//! Run: `cargo run --release --example trigger_micro`.
use walwitness::cluster::{Cluster, ClusterOptions};

#[tokio::main]
async fn main() {
    let cluster = Cluster::start(ClusterOptions::default()).expect("cluster");
    let dsn = cluster.socket_dsn("postgres", "postgres");
    let (c, conn) = tokio_postgres::connect(&dsn, tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    c.batch_execute("CREATE TABLE z (id int PRIMARY KEY)").await.unwrap();
    let n = 20_000;
    let body = format!("DO $$ BEGIN FOR i IN 1..{n} LOOP DELETE FROM z WHERE id = -1; END LOOP; END $$");
    let mut res = Vec::new();
    for round in 0..6 {
        let with = round % 2 == 1;
        if with {
            walwitness::attribution::trigger::install(&c, &["z".into()]).await.unwrap();
        } else {
            walwitness::attribution::trigger::remove(&c, &["z".into()]).await.unwrap();
        }
        let t0 = std::time::Instant::now();
        c.batch_execute(&body).await.unwrap();
        res.push((with, t0.elapsed().as_secs_f64() * 1e6 / f64::from(n)));
    }
    let avg = |w: bool| {
        let v: Vec<f64> = res.iter().filter(|r| r.0 == w).map(|r| r.1).collect();
        v.iter().sum::<f64>() / v.len() as f64
    };
    println!(
        "zero-row DELETE statement: {:.1} µs without trigger, {:.1} µs with; trigger ≈ {:.1} µs per statement",
        avg(false),
        avg(true),
        avg(true) - avg(false)
    );
}
