//! Sampled attribution: `pg_stat_activity` rows of backends that hold a transaction id.
//!
//! pgoutput sends a transaction only after it commits, when its backend no longer shows that xid. So a
//! sampler polls `pg_stat_activity` while transactions are still open and remembers, per xid, who held
//! it. A transaction that was open during at least one sample is attributed; an autocommit DELETE that
//! starts and commits between two samples is not (use the trigger source for exact answers).
//!
//! Bounded: at most `MAX_ENTRIES` xids, each forgotten `TTL` after it was last seen.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::infer::{History, Inference, Observed};
use super::session::{Session, SessionJson};
use crate::protocol::replication::pg_micros_to_unix_micros;

pub const MAX_ENTRIES: usize = 200_000;
pub const TTL: Duration = Duration::from_secs(15 * 60);
/// Samples asked for between regular ones are at least this far apart (see `spawn_sampler`)...
pub const MIN_GAP: Duration = Duration::from_millis(2);
/// ... and at least this many times as far apart as the last sample took.
pub const GAP_PER_COST: u32 = 20;

struct Entry {
    session: SessionJson,
    /// Whether the sampled query looked like the delete itself (preferred over later statements).
    deleting_query: bool,
    last_seen: Instant,
}

#[derive(Default)]
pub struct ActivityMap {
    inner: Mutex<HashMap<u32, Entry>>,
    /// Xids of streamed transactions the capture just saw: still open on the server, so one sample
    /// right now catches their session (see `sample_now`).
    wanted: Mutex<Vec<u32>>,
    wake: tokio::sync::Notify,
    /// Statement windows of every session, for inference (`infer`); only on a live capture.
    history: Mutex<History>,
    /// The watched tables (schema, name), to classify statements.
    watched: Vec<(String, String)>,
    /// Whether inference runs (a live capture's map; not an offline replay's).
    infer: bool,
    /// Server time (PostgreSQL microseconds) of the latest sample.
    sampled: Option<tokio::sync::watch::Sender<i64>>,
    /// The sampling interval (for the advice printed when few transactions are attributed).
    pub interval: Duration,
    /// A wait for a sample timed out and no sample came since: do not wait again until one does.
    lagging: std::sync::atomic::AtomicBool,
    /// Offline replay: the live capture's inferences, by xid (raw files' 'i' frames).
    replayed: Mutex<HashMap<u32, Inference>>,
}

fn looks_deleting(q: Option<&str>) -> bool {
    q.is_some_and(|q| {
        let l = q.to_ascii_lowercase();
        l.contains("delete") || l.contains("truncate")
    })
}

impl ActivityMap {
    pub fn new() -> Self {
        Self::default()
    }

    /// A live capture's map: samples every session's statement for inference too.
    pub fn live(watched: Vec<(String, String)>, interval: Duration) -> Self {
        ActivityMap {
            watched,
            infer: true,
            sampled: Some(tokio::sync::watch::channel(i64::MIN).0),
            interval,
            ..Self::default()
        }
    }

    /// Records one sample's statement windows: its query started at server time `taken_us` (before
    /// pg_stat_activity was read) and ended at `now_us`.
    pub fn record_windows(&self, taken_us: i64, now_us: i64, rows: &[Observed]) {
        if !self.infer {
            return;
        }
        if let Ok(mut h) = self.history.lock() {
            h.record(taken_us, now_us, rows, &self.watched);
        }
        if let Some(tx) = &self.sampled {
            tx.send_replace(taken_us);
        }
        self.lagging.store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// Waits (at most `limit`) until a sample was taken after `commit_us` (server time), so the
    /// statement that committed then is in the history. Returns at once when that is already so.
    pub async fn wait_sampled_after(&self, commit_us: i64, limit: Duration) {
        let Some(tx) = &self.sampled else { return };
        let mut rx = tx.subscribe();
        if *rx.borrow() > commit_us {
            return;
        }
        self.wake.notify_one();
        if self.lagging.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        if tokio::time::timeout(limit, rx.wait_for(|t| *t > commit_us)).await.is_err() {
            self.lagging.store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Offline replay: the inference the live capture made for `xid`, used at its commit.
    pub fn replay_inference(&self, xid: u32, inference: Inference) {
        if let Ok(mut m) = self.replayed.lock() {
            m.insert(xid, inference);
        }
    }

    /// Whether inference runs on this map.
    pub fn infers(&self) -> bool {
        self.infer
    }

    /// Inference for a transaction without evidence (`None`: inference is off).
    pub fn infer(&self, xid: u32, commit_us: i64, keys: &[String]) -> Option<Inference> {
        if !self.infer {
            return self.replayed.lock().ok()?.remove(&xid);
        }
        Some(self.history.lock().ok()?.infer(xid, commit_us, keys))
    }

    /// Records one sample's sessions.
    pub fn record(&self, now: Instant, sessions: Vec<(u32, Session)>) {
        let Ok(mut m) = self.inner.lock() else { return };
        for (xid, s) in sessions {
            let deleting = looks_deleting(s.query.as_deref());
            match m.get_mut(&xid) {
                // Keep the sample that shows the deleting statement; otherwise the newest.
                Some(e) if e.session.pid == s.pid && e.deleting_query && !deleting => e.last_seen = now,
                _ => {
                    m.insert(xid, Entry { session: SessionJson::new(&s), deleting_query: deleting, last_seen: now });
                }
            }
        }
        if m.len() > MAX_ENTRIES {
            m.retain(|_, e| now.duration_since(e.last_seen) < TTL);
            if m.len() > MAX_ENTRIES {
                let mut ages: Vec<Instant> = m.values().map(|e| e.last_seen).collect();
                ages.sort_unstable();
                let cut = ages[ages.len() - MAX_ENTRIES];
                m.retain(|_, e| e.last_seen >= cut);
            }
        }
    }

    /// Drops entries not seen for `TTL`.
    pub fn expire(&self, now: Instant) {
        if let Ok(mut m) = self.inner.lock() {
            m.retain(|_, e| now.duration_since(e.last_seen) < TTL);
        }
    }

    /// Asks the sampler for a sample now, off the stream's hot path: a streamed transaction is still
    /// open when its first block arrives, so a large cull is attributed even if it started and will
    /// end between two regular samples.
    pub fn sample_now(&self, xid: u32) {
        if let Ok(mut w) = self.wanted.lock() {
            w.push(xid);
        }
        self.wake.notify_one();
    }

    fn take_wanted(&self) -> Vec<u32> {
        self.wanted.lock().map(|mut w| std::mem::take(&mut *w)).unwrap_or_default()
    }

    pub fn lookup(&self, xid: u32) -> Option<SessionJson> {
        self.inner.lock().ok()?.get(&xid).map(|e| e.session.clone())
    }

    pub fn len(&self) -> usize {
        self.inner.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

const TS: &str = "'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'";

/// The sampling query: the backends of this database that hold an xid, are running a statement, or
/// changed state since `since_us` (PostgreSQL microseconds; earlier samples saw the others as they are
/// now). Cheap: pg_stat_activity is an in-memory view, and the filter keeps the result small.
pub fn sample_sql(since_us: Option<i64>) -> String {
    // The cut is one second before the previous sample (clock steps, rounding).
    let since = match since_us {
        Some(us) => format!("to_timestamp({:.6})", (pg_micros_to_unix_micros(us) - 1_000_000) as f64 / 1e6),
        None => "'-infinity'::timestamptz".into(),
    };
    format!(
        "SELECT backend_xid::text, pid, to_char(backend_start AT TIME ZONE 'UTC', {TS}), usename::text, application_name, \
         host(client_addr), client_port, left(query, 8192), \
         octet_length(query) >= (SELECT setting::int FROM pg_settings WHERE name = 'track_activity_query_size') - 1 OR length(query) > 8192, \
         to_char(xact_start AT TIME ZONE 'UTC', {TS}), to_char(clock_timestamp() AT TIME ZONE 'UTC', {TS}), \
         {q}, {s}, state = 'active', {now}, NULL::int8 \
         FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid() \
         AND (backend_xid IS NOT NULL OR state = 'active' OR state_change >= {since}) \
         UNION ALL SELECT NULL, 0, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, {now}, {stmt}",
        q = pg_us("query_start"),
        s = pg_us("state_change"),
        now = pg_us("clock_timestamp()"),
        stmt = pg_us("statement_timestamp()"),
    )
}

/// SQL for a timestamptz as PostgreSQL microseconds (since 2000-01-01, like pgoutput's times).
fn pg_us(expr: &str) -> String {
    format!("((extract(epoch FROM {expr}) - 946684800) * 1000000)::int8")
}

/// Turns one sample row into (xid, session) when it holds an xid, and the statement window.
pub fn observed_from_row(row: &tokio_postgres::Row) -> Option<(Option<(u32, Session)>, Observed)> {
    let xid: Option<u32> = row.get::<_, Option<String>>(0).and_then(|x| x.parse().ok());
    let port: Option<i32> = row.get(6);
    let query: Option<String> = row.get(7);
    let hidden = query.as_deref() == Some("<insufficient privilege>");
    let session = Session {
        attributed_by: "activity".into(),
        pid: row.get(1),
        backend_start: row.get(2),
        user: row.get(3),
        current_user: None,
        application_name: row.get(4),
        client_addr: row.get(5),
        // -1 means a Unix-socket client.
        client_port: port.filter(|p| *p >= 0),
        query: if hidden { None } else { query },
        query_truncated: row.get::<_, Option<bool>>(8).unwrap_or(false),
        xact_start: row.get(9),
        statement_start: None,
        trigger_depth: None,
        sampled_at: row.get(10),
        details_hidden: hidden,
        conflict: None,
    };
    let observed = Observed {
        session: session.clone(),
        xid,
        start_us: row.get(11),
        state_change_us: row.get(12),
        active: row.get::<_, Option<bool>>(13).unwrap_or(false),
    };
    Some((xid.map(|x| (x, session)), observed))
}

/// The server time of a sample (PostgreSQL microseconds), from any of its rows.
fn sample_time(row: &tokio_postgres::Row) -> Option<i64> {
    row.get(14)
}

/// Whether the sampling role can see other roles' sessions; without it their query, client address
/// and start times are hidden (only pid, user, application and xid remain).
pub async fn can_read_all_stats(c: &tokio_postgres::Client) -> bool {
    c.query_one(
        "SELECT rolsuper OR pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') FROM pg_roles WHERE rolname = current_user",
        &[],
    )
    .await
    .map(|r| r.get::<_, bool>(0))
    .unwrap_or(false)
}

/// Samples until the map is dropped by everyone else. Errors are retried quietly: attribution is
/// best-effort, the capture itself must not stop because a sample failed.
pub fn spawn_sampler(
    spec: crate::pg::config::ConnSpec,
    map: std::sync::Arc<ActivityMap>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut since: Option<i64> = None;
        let mut last: Option<Instant> = None;
        let mut cost = Duration::from_millis(1);
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut n: u64 = 0;
        let mut failures: u64 = 0;
        let mut client: Option<tokio_postgres::Client> = None;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = map.wake.notified() => {
                    // Asked for early (a commit to infer, a streamed transaction): the sooner after a
                    // commit, the likelier its session's statement is still the last one. But not back
                    // to back: at least GAP_PER_COST times the last sample's duration apart (so early
                    // samples keep the sampler's share of one core under ~5 %), and MIN_GAP.
                    let gap = (cost * GAP_PER_COST).clamp(MIN_GAP, every.max(MIN_GAP));
                    if let Some(wait) = last.map(|l: Instant| gap.saturating_sub(l.elapsed())).filter(|w| !w.is_zero()) {
                        tokio::time::sleep(wait).await;
                    }
                }
            }
            last = Some(Instant::now());
            if std::sync::Arc::strong_count(&map) == 1 {
                return;
            }
            // Its own connection, re-opened after a server restart: the sampler outlives connections.
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                client = crate::pg::connect_sql(&spec).await.ok();
            }
            let Some(c) = &client else { continue };
            // The last row (pid 0) carries the server's clock even when no session is listed.
            let sql = sample_sql(since);
            match c.query(&sql, &[]).await {
                Ok(rows) => {
                    if let Some(spent) = record_sample(&map, &rows, &mut since) {
                        cost = spent;
                    }
                }
                Err(e) => {
                    failures += 1;
                    // Say it once loudly: a silently failing sampler would look like "nobody was seen".
                    if failures == 1 {
                        tracing::warn!("sampling pg_stat_activity failed, activity attribution may be missing: {e}");
                    } else {
                        tracing::debug!("pg_stat_activity sample failed: {e}");
                    }
                }
            }
            n += 1;
            if n.is_multiple_of(1000) {
                map.expire(Instant::now());
                if let (Ok(mut h), Some(now_us)) = (map.history.lock(), since) {
                    h.expire(now_us);
                }
            }
        }
    })
}

/// Records one sample's rows in `map` (the sessions holding transactions, the statement windows);
/// `since` becomes the sample's server time. Returns what the sample cost the server, if it says.
fn record_sample(map: &ActivityMap, rows: &[tokio_postgres::Row], since: &mut Option<i64>) -> Option<Duration> {
    // The server's time on the query (not the round trip): what early samples cost it.
    let cost = rows
        .iter()
        .find_map(|r| Some((r.get::<_, Option<i64>>(14)?, r.get::<_, Option<i64>>(15)?)))
        .map(|(end, start)| Duration::from_micros(end.saturating_sub(start).max(0) as u64));
    let now_us = rows.iter().filter_map(sample_time).max();
    let mut held = Vec::new();
    let mut observed = Vec::with_capacity(rows.len());
    for r in rows.iter().filter(|r| r.get::<_, i32>(1) != 0) {
        if let Some((x, o)) = observed_from_row(r) {
            held.extend(x);
            observed.push(o);
        }
    }
    map.record(Instant::now(), held);
    let taken_us = rows.iter().find_map(|r| r.get::<_, Option<i64>>(15));
    if let (Some(now_us), Some(taken_us)) = (now_us, taken_us) {
        map.record_windows(taken_us, now_us, &observed);
        *since = Some(now_us);
    }
    for xid in map.take_wanted() {
        match map.lookup(xid) {
            Some(s) => {
                tracing::info!("streamed transaction {xid}: session of pid {} recorded while it was open", s.pid)
            }
            None => tracing::info!(
                "streamed transaction {xid}: not open in pg_stat_activity any more (or in another database)"
            ),
        }
    }
    cost
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(pid: i32, q: &str) -> Session {
        Session { attributed_by: "activity".into(), pid, query: Some(q.into()), ..Default::default() }
    }

    #[test]
    fn keeps_the_deleting_statement_and_expires() {
        let m = ActivityMap::new();
        let t0 = Instant::now();
        m.record(t0, vec![(10, s(1, "DELETE FROM t"))]);
        m.record(t0, vec![(10, s(1, "SELECT 1")), (11, s(2, "UPDATE x"))]);
        assert_eq!(m.lookup(10).unwrap().pid, 1);
        assert!(String::from_utf8_lossy(&m.lookup(10).unwrap().json).contains("DELETE FROM t"));
        m.record(t0, vec![(11, s(2, "delete from t"))]);
        assert!(String::from_utf8_lossy(&m.lookup(11).unwrap().json).contains("delete from t"));
        assert!(m.lookup(12).is_none());
        m.expire(t0 + TTL + Duration::from_secs(1));
        assert!(m.is_empty());
    }
}
