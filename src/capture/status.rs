//! What the user sees while a capture runs: a live line on a terminal, plain progress lines otherwise.
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::protocol::replication::pg_micros_to_unix_micros;
use crate::protocol::Lsn;
use crate::sink::record::format_pg_time;

pub struct Progress {
    enabled: bool,
    tty: bool,
    interval: Duration,
    last: Instant,
    rows: u64,
    truncates: u64,
    txns: u64,
    last_commit: Option<i64>,
    retained: watch::Receiver<Option<i64>>,
    dirty_line: bool,
}

impl Progress {
    pub fn new(enabled: bool, interval: Duration, retained: watch::Receiver<Option<i64>>) -> Self {
        let tty = std::io::stderr().is_terminal();
        Progress {
            enabled,
            tty,
            interval: if tty { Duration::from_secs(1) } else { interval },
            last: Instant::now(),
            rows: 0,
            truncates: 0,
            txns: 0,
            last_commit: None,
            retained,
            dirty_line: false,
        }
    }

    pub fn committed(&mut self, deletes: u64, truncates: u64, commit_time: i64) {
        self.rows += deletes;
        self.truncates += truncates;
        self.txns += 1;
        self.last_commit = Some(commit_time);
    }

    /// Bytes of WAL the slot holds back, as last sampled.
    pub fn retained(&self) -> Option<i64> {
        *self.retained.borrow()
    }

    pub fn totals(&self) -> (u64, u64, u64) {
        (self.rows, self.truncates, self.txns)
    }

    pub fn maybe_print(&mut self, server_end: Lsn, durable: Lsn) {
        if !self.enabled || self.last.elapsed() < self.interval {
            return;
        }
        self.last = Instant::now();
        let lag_bytes = server_end.as_u64().saturating_sub(durable.as_u64());
        let lag_secs = match (lag_bytes, self.last_commit) {
            (0, _) | (_, None) => 0.0,
            (_, Some(t)) => {
                let now = chrono::Utc::now().timestamp_micros();
                (now - pg_micros_to_unix_micros(t)).max(0) as f64 / 1e6
            }
        };
        let retained = match *self.retained.borrow() {
            Some(b) => crate::term::human_bytes(b.max(0) as u64),
            None => "?".into(),
        };
        let last = self.last_commit.map(format_pg_time).unwrap_or_else(|| "-".into());
        let line = format!(
            "rows {} · txns {} · truncates {} · last commit {} · lag {} / {:.1}s · slot retains {}",
            self.rows,
            self.txns,
            self.truncates,
            last,
            crate::term::human_bytes(lag_bytes),
            lag_secs,
            retained
        );
        let mut err = std::io::stderr().lock();
        if self.tty {
            let _ = write!(err, "\r\x1b[K{line}");
            self.dirty_line = true;
        } else {
            let _ = writeln!(err, "walwitness: {line}");
        }
        let _ = err.flush();
    }

    pub fn finish(&mut self) {
        if self.dirty_line {
            eprintln!();
            self.dirty_line = false;
        }
    }
}

/// Samples how much WAL the slot holds back, on its own ordinary SQL connection, off the stream's path.
pub fn spawn_retained_wal_probe(spec: crate::pg::config::ConnSpec, slot: String) -> watch::Receiver<Option<i64>> {
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        let mut client: Option<tokio_postgres::Client> = None;
        loop {
            every.tick().await;
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                client = crate::pg::connect_sql(&spec).await.ok();
            }
            let v = match &client {
                Some(c) => match c
                    .query_opt(
                        "SELECT (pg_current_wal_lsn() - restart_lsn)::bigint FROM pg_replication_slots WHERE slot_name = $1",
                        &[&slot],
                    )
                    .await
                {
                    Ok(Some(row)) => row.get::<_, Option<i64>>(0),
                    _ => None,
                },
                None => None,
            };
            if tx.send(v).is_err() {
                return;
            }
        }
    });
    rx
}
