//! Writes a synthetic walwitness log for benchmarks: `cargo run --release --example gen_log -- N > log.jsonl`.
//!
//! N records (default 1,000,000): transactions of 1–20 deletes (now and then a 2,000-row burst) by a
//! dozen sessions plus an unattributed share, over a few hours, in the exact format `capture` writes.
//! Deterministic (a fixed-seed LCG), so runs are comparable.
use std::io::{self, BufWriter, Write};

struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn time(micros: i64) -> String {
    chrono::DateTime::from_timestamp(micros.div_euclid(1_000_000), (micros.rem_euclid(1_000_000) * 1000) as u32)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string())
        .unwrap_or_default()
}

fn lsn(n: u64) -> String {
    format!("{:X}/{:X}", n >> 32, n as u32)
}

fn main() -> io::Result<()> {
    let n: u64 = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1_000_000);
    let mut out = BufWriter::with_capacity(1 << 20, io::stdout().lock());
    let apps = ["web", "cron-cleanup", "psql", "django-admin", "etl", "report-gen"];
    let prefixes = ["report", "user", "session", "cache", "tmp", "job"];
    let statements = [
        "DELETE FROM cache WHERE cache_key IN (SELECT cache_key FROM cache ORDER BY expires LIMIT 20)",
        "DELETE FROM cache WHERE cache_key = 'report:17'",
        "DELETE FROM cache WHERE expires < now() - interval '1 day'",
        "DELETE FROM cache WHERE cache_key IN ('user_1', 'user_2', 'user_3')",
    ];
    let mut rng = Lcg(42);
    let start = 1_795_000_000_000_000i64; // 2026-11-18
    let mut t = start;
    let mut pos: u64 = 0x16_0000_0000;
    let mut xid: u64 = 1000;
    writeln!(
        out,
        r#"{{"type":"capture_started","time":"{}","slot":"bench","publication":"bench","tables":["public.cache"],"start_lsn":"{}","server_version":"17.2","system_identifier":"1","database":"app","walwitness_version":"0.1.0","format_version":1,"proto_version":3}}"#,
        time(t),
        lsn(pos)
    )?;
    let mut written = 1u64;
    while written + 2 <= n {
        t += 200_000 + rng.below(1_500_000) as i64;
        xid += 1 + rng.below(5);
        let sess = rng.below(14); // 12 sessions, 2 of 14 unattributed
        let rows = if rng.below(400) == 0 { 2000 } else { 1 + rng.below(20) };
        let rows = rows.min(n - written - 1);
        let session = if sess >= 12 {
            "null".to_owned()
        } else {
            format!(
                r#"{{"attributed_by":"trigger","pid":{pid},"backend_start":"{bs}","user":"app_{u}","application_name":"{app}","client_addr":"10.1.0.{h}","client_port":{port},"query":"{q}","query_truncated":false,"xact_start":"{ts}","statement_start":"{ts}","trigger_depth":0}}"#,
                pid = 4000 + sess * 37,
                bs = time(start - 3_600_000_000 + sess as i64 * 1_000_000),
                u = sess % 3,
                app = apps[sess as usize % apps.len()],
                h = 10 + sess,
                port = 40000 + sess,
                q = statements[(sess as usize + (xid as usize % 2)) % statements.len()],
                ts = time(t - 3000)
            )
        };
        let commit_lsn = pos + rows * 72 + 40;
        let ct = time(t);
        for _ in 0..rows {
            pos += 72;
            let p = prefixes[rng.below(prefixes.len() as u64) as usize];
            let sep = if rng.below(2) == 0 { ':' } else { '_' };
            writeln!(
                out,
                r#"{{"type":"delete","table":"public.cache","xid":{xid},"lsn":"{}","commit_lsn":"{}","commit_time":"{ct}","origin":null,"key":{{"cache_key":"{p}{sep}{}"}},"old":null,"session":{session}}}"#,
                lsn(pos),
                lsn(commit_lsn),
                rng.below(10_000_000)
            )?;
        }
        pos = commit_lsn + 56;
        let attribution = if session == "null" { "none" } else { "trigger" };
        writeln!(
            out,
            r#"{{"type":"commit","xid":{xid},"commit_lsn":"{}","end_lsn":"{}","commit_time":"{ct}","origin":null,"deletes":{rows},"truncates":0,"session":{session},"attribution":"{attribution}"}}"#,
            lsn(commit_lsn),
            lsn(pos)
        )?;
        written += rows + 1;
    }
    writeln!(
        out,
        r#"{{"type":"capture_stopped","time":"{}","reason":"sigterm","last_lsn":"{}"}}"#,
        time(t + 1000),
        lsn(pos)
    )?;
    out.flush()
}
