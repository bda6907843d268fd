//! Coverage while a capture runs: the publication must keep sending the watched tables' deletes and
//! truncates. Dropping a watched table, `ALTER PUBLICATION … DROP TABLE` / `SET TABLE` / a row filter, or
//! changing its `publish` option silently ends that coverage — pgoutput just stops sending — so a check
//! on the ordinary SQL connection looks every few seconds, and the capture writes an open `gap` record as
//! soon as coverage is lost and a record that closes it when coverage comes back.
//!
//! Positions: a check reads the server's WAL position before its catalog snapshot (`before`) and after it
//! (`after`). Coverage found lost was still there at the previous check's snapshot, so the DDL that ended
//! it committed after that check's `before`: the gap opens there. Coverage found back was restored by DDL
//! visible to this check's snapshot, committed before its `after`: the gap closes there.
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, Mutex};
use tokio_postgres::Client;

use crate::pg::config::ConnSpec;
use crate::protocol::Lsn;

/// A watched table: its OID when the capture started, and its name as the log writes it.
#[derive(Debug, Clone)]
pub struct Watched {
    pub oid: u32,
    pub name: String,
}

/// What coverage the capture started with.
#[derive(Debug, Clone)]
pub struct Expect {
    pub publication: String,
    pub tables: Vec<Watched>,
    /// The publication published TRUNCATE at start (if not, a warning said so then).
    pub truncates: bool,
}

/// One way coverage can be lost.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Aspect {
    pub reason: &'static str,
    pub table: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub aspect: Aspect,
    pub detail: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Opened { aspect: Aspect, from_lsn: Lsn, detail: String },
    Closed { aspect: Aspect, from_lsn: Lsn, to_lsn: Lsn, detail: String },
}

/// Turns successive checks into gap events. Pure.
#[derive(Debug, Clone)]
pub struct Tracker {
    open: Vec<(Aspect, Lsn)>,
    /// `before` of the last check (at start: a position read before the capture's own checks).
    last_before: Lsn,
}

impl Tracker {
    pub fn new(start: Lsn) -> Tracker {
        Tracker { open: Vec::new(), last_before: start }
    }

    /// One check: `findings` is what is not covered now.
    pub fn observe(&mut self, before: Lsn, after: Lsn, findings: Vec<Finding>) -> Vec<Event> {
        let mut events = Vec::new();
        let now: Vec<&Aspect> = findings.iter().map(|f| &f.aspect).collect();
        let mut still = Vec::new();
        for (aspect, from_lsn) in self.open.drain(..) {
            if now.contains(&&aspect) {
                still.push((aspect, from_lsn));
            } else {
                let detail = format!("coverage is back: {}", restored(&aspect));
                events.push(Event::Closed { aspect, from_lsn, to_lsn: after.max(from_lsn), detail });
            }
        }
        self.open = still;
        for f in findings {
            if !self.open.iter().any(|(a, _)| *a == f.aspect) {
                self.open.push((f.aspect.clone(), self.last_before));
                events.push(Event::Opened { aspect: f.aspect, from_lsn: self.last_before, detail: f.detail });
            }
        }
        self.last_before = self.last_before.max(before);
        events
    }
}

fn restored(a: &Aspect) -> String {
    let t = a.table.as_deref().unwrap_or("the watched tables");
    match a.reason {
        "table_unpublished" => format!("the publication includes {t} again"),
        "table_row_filter" => format!("the publication no longer filters the rows of {t}"),
        "deletes_unpublished" => "the publication publishes deletes again".into(),
        "truncates_unpublished" => "the publication publishes truncates again".into(),
        "publication_dropped" => "the publication exists again".into(),
        other => format!("{other} no longer applies"),
    }
}

/// One row of the check query, per watched table.
#[derive(Debug, Clone, Default)]
pub struct Row {
    pub oid: u32,
    pub exists: bool,
    pub published: bool,
    pub row_filter: Option<String>,
    /// `None`: the publication does not exist.
    pub pubdelete: Option<bool>,
    pub pubtruncate: Option<bool>,
}

/// What is not covered, from the check query's rows. Pure.
pub fn findings(expect: &Expect, rows: &[Row]) -> Vec<Finding> {
    let p = &expect.publication;
    let mut out = Vec::new();
    let publication = rows.first().and_then(|r| r.pubdelete.zip(r.pubtruncate));
    let mut push = |reason, table: Option<&str>, detail: String| {
        out.push(Finding { aspect: Aspect { reason, table: table.map(str::to_owned) }, detail })
    };
    match publication {
        None => push(
            "publication_dropped",
            None,
            format!("publication {p} was dropped: the server sends none of the watched tables' changes (the replication stream is expected to fail)"),
        ),
        Some((delete, truncate)) => {
            if !delete {
                push(
                    "deletes_unpublished",
                    None,
                    format!("publication {p} no longer publishes deletes (its publish option was changed): DELETEs on the watched tables are not sent"),
                );
            }
            if !truncate && expect.truncates {
                push(
                    "truncates_unpublished",
                    None,
                    format!("publication {p} no longer publishes truncates (its publish option was changed): TRUNCATEs of the watched tables are not sent"),
                );
            }
        }
    }
    for t in &expect.tables {
        let Some(r) = rows.iter().find(|r| r.oid == t.oid) else { continue };
        let name = Some(t.name.as_str());
        if !r.exists {
            push(
                "table_dropped",
                name,
                format!(
                    "table {} (OID {}) was dropped: its rows went without DELETE or TRUNCATE records, and a table created again under its name is not covered by this run",
                    t.name, t.oid
                ),
            );
        } else if publication.is_some() && !r.published {
            push(
                "table_unpublished",
                name,
                format!("publication {p} no longer includes {} (ALTER PUBLICATION … DROP TABLE or SET TABLE): its deletes are not sent", t.name),
            );
        } else if let Some(f) = r.row_filter.as_ref().filter(|_| publication.is_some()) {
            push(
                "table_row_filter",
                name,
                format!("publication {p} publishes only the rows of {} matching WHERE {f}: deletes of other rows are not sent", t.name),
            );
        }
    }
    out
}

const LSN_NOW: &str =
    "(CASE WHEN pg_catalog.pg_is_in_recovery() THEN pg_catalog.pg_last_wal_replay_lsn() ELSE pg_catalog.pg_current_wal_lsn() END)::text";

fn check_sql(version_num: u32) -> String {
    // Row filters exist from PostgreSQL 15 (`pg_publication_tables.rowfilter`).
    let rowfilter = if version_num >= 150000 { "p.rowfilter" } else { "NULL::text" };
    format!(
        "WITH pt AS ( \
           SELECT c.oid AS relid, {rowfilter} AS rowfilter FROM pg_catalog.pg_publication_tables p \
           JOIN pg_catalog.pg_namespace n ON n.nspname = p.schemaname \
           JOIN pg_catalog.pg_class c ON c.relnamespace = n.oid AND c.relname = p.tablename \
           WHERE p.pubname = $1) \
         SELECT w.oid, c.oid IS NOT NULL, \
           EXISTS (SELECT 1 FROM pt WHERE pt.relid = w.oid \
             OR (c.relkind = 'p' AND pt.relid IN (SELECT t.relid FROM pg_catalog.pg_partition_tree(w.oid) t))), \
           (SELECT string_agg(pt.rowfilter, ' OR ') FROM pt WHERE pt.relid = w.oid AND pt.rowfilter IS NOT NULL), \
           pub.pubdelete, pub.pubtruncate, {LSN_NOW} \
         FROM unnest($2::oid[]) AS w(oid) \
         LEFT JOIN pg_catalog.pg_class c ON c.oid = w.oid \
         LEFT JOIN pg_catalog.pg_publication pub ON pub.pubname = $1"
    )
}

/// The server's WAL position now.
pub async fn current_lsn(c: &Client) -> Result<Lsn, tokio_postgres::Error> {
    let s: String = c.query_one(&format!("SELECT {LSN_NOW}"), &[]).await?.get(0);
    Ok(s.parse().unwrap_or_default())
}

/// Runs one check: (before, after, rows).
pub async fn query(
    c: &Client,
    expect: &Expect,
    version_num: u32,
) -> Result<(Lsn, Lsn, Vec<Row>), tokio_postgres::Error> {
    let before = current_lsn(c).await?;
    let oids: Vec<u32> = expect.tables.iter().map(|t| t.oid).collect();
    let rows = c.query(&check_sql(version_num), &[&expect.publication, &oids]).await?;
    let mut after = before;
    let rows = rows
        .iter()
        .map(|r| {
            if let Ok(s) = r.try_get::<_, String>(6) {
                after = after.max(s.parse().unwrap_or_default());
            }
            Row {
                oid: r.get(0),
                exists: r.get(1),
                published: r.get(2),
                row_filter: r.get(3),
                pubdelete: r.get(4),
                pubtruncate: r.get(5),
            }
        })
        .collect();
    Ok((before, after, rows))
}

struct Inner {
    client: Arc<Client>,
    spec: ConnSpec,
    expect: Expect,
    version_num: u32,
    tracker: Tracker,
    failing: bool,
}

impl Inner {
    async fn check(&mut self) -> Vec<Event> {
        if self.client.is_closed() {
            match crate::pg::connect_sql(&self.spec).await {
                Ok(c) => self.client = Arc::new(c),
                Err(e) => return self.failed(&e.to_string()),
            }
        }
        match query(&self.client, &self.expect, self.version_num).await {
            Ok((before, after, rows)) => {
                if self.failing {
                    self.failing = false;
                    eprintln!("walwitness: the coverage check works again");
                }
                let f = findings(&self.expect, &rows);
                self.tracker.observe(before, after, f)
            }
            Err(e) => self.failed(&e.to_string()),
        }
    }

    fn failed(&mut self, e: &str) -> Vec<Event> {
        if !self.failing {
            self.failing = true;
            eprintln!("walwitness: warning: cannot check that the publication still covers the watched tables ({e}); retrying");
        }
        Vec::new()
    }
}

/// The periodic check, running on its own task; events reach the capture loop through `events`.
pub struct Checker {
    inner: Arc<Mutex<Inner>>,
    events: mpsc::UnboundedReceiver<Event>,
    task: tokio::task::JoinHandle<()>,
}

impl Checker {
    /// `start`: a WAL position read before the capture checked the publication at start.
    pub fn spawn(
        client: Arc<Client>,
        spec: ConnSpec,
        expect: Expect,
        version_num: u32,
        start: Lsn,
        every: Duration,
    ) -> Checker {
        let inner = Arc::new(Mutex::new(Inner {
            client,
            spec,
            expect,
            version_num,
            tracker: Tracker::new(start),
            failing: false,
        }));
        let (tx, events) = mpsc::unbounded_channel();
        let shared = inner.clone();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let evs = shared.lock().await.check().await;
                for e in evs {
                    if tx.send(e).is_err() {
                        return;
                    }
                }
            }
        });
        Checker { inner, events, task }
    }

    /// Events found by the periodic check since the last call.
    pub fn pending(&mut self) -> Vec<Event> {
        let mut v = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            v.push(e);
        }
        v
    }

    /// Checks at once (at the end of a run, or when the stream failed) and returns every event not yet
    /// taken, in order. Gives up after `limit` (the server may be gone).
    pub async fn check_now(&mut self, limit: Duration) -> Vec<Event> {
        let inner = self.inner.clone();
        let fresh = tokio::time::timeout(limit, async move { inner.lock().await.check().await }).await;
        let mut v = self.pending();
        v.extend(fresh.unwrap_or_default());
        v
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Appends the gap records for `events` and says on stderr what happened.
pub fn push_events(out: &mut bytes::BytesMut, slot: &str, events: &[Event]) {
    use crate::sink::record::{push_record, Gap};
    for e in events {
        match e {
            Event::Opened { aspect, from_lsn, detail } => {
                eprintln!("walwitness: warning: {detail}; recording a gap from LSN {from_lsn}");
                push_record(out, &Gap::opened(slot, aspect.reason, aspect.table.as_deref(), *from_lsn, detail));
            }
            Event::Closed { aspect, from_lsn, to_lsn, detail } => {
                eprintln!("walwitness: {detail}; the gap from LSN {from_lsn} ends at LSN {to_lsn}");
                push_record(
                    out,
                    &Gap::closing(slot, aspect.reason, aspect.table.as_deref(), *from_lsn, *to_lsn, detail),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn expect() -> Expect {
        Expect {
            publication: "p".into(),
            tables: vec![Watched { oid: 10, name: "public.a".into() }, Watched { oid: 11, name: "public.b".into() }],
            truncates: true,
        }
    }

    fn ok(oid: u32) -> Row {
        Row { oid, exists: true, published: true, row_filter: None, pubdelete: Some(true), pubtruncate: Some(true) }
    }

    fn reasons(f: &[Finding]) -> Vec<(&str, Option<&str>)> {
        f.iter().map(|f| (f.aspect.reason, f.aspect.table.as_deref())).collect()
    }

    #[test]
    fn findings_name_what_is_lost() {
        let e = expect();
        assert!(findings(&e, &[ok(10), ok(11)]).is_empty());
        let f = findings(&e, &[Row { exists: false, published: false, ..ok(10) }, Row { published: false, ..ok(11) }]);
        assert_eq!(reasons(&f), [("table_dropped", Some("public.a")), ("table_unpublished", Some("public.b"))]);
        let f = findings(&e, &[Row { pubdelete: Some(false), pubtruncate: Some(false), ..ok(10) }, ok(11)]);
        assert_eq!(reasons(&f), [("deletes_unpublished", None), ("truncates_unpublished", None)]);
        // Truncates were not published at start: not a loss.
        let e2 = Expect { truncates: false, ..expect() };
        assert!(findings(&e2, &[Row { pubtruncate: Some(false), ..ok(10) }, ok(11)]).is_empty());
        let f = findings(&e, &[Row { row_filter: Some("(id > 5)".into()), ..ok(10) }, ok(11)]);
        assert_eq!(reasons(&f), [("table_row_filter", Some("public.a"))]);
        assert!(f[0].detail.contains("(id > 5)"));
        // Without the publication, only that (and dropped tables) is reported.
        let gone = |oid| Row { published: false, pubdelete: None, pubtruncate: None, ..ok(oid) };
        let f = findings(&e, &[gone(10), Row { exists: false, ..gone(11) }]);
        assert_eq!(reasons(&f), [("publication_dropped", None), ("table_dropped", Some("public.b"))]);
    }

    #[test]
    fn gaps_open_at_the_previous_check_and_close_at_this_one() {
        let e = expect();
        let mut t = Tracker::new(Lsn(100));
        assert!(t.observe(Lsn(110), Lsn(120), findings(&e, &[ok(10), ok(11)])).is_empty());
        let lost = findings(&e, &[Row { published: false, ..ok(10) }, ok(11)]);
        let ev = t.observe(Lsn(200), Lsn(210), lost.clone());
        assert_eq!(ev.len(), 1);
        let Event::Opened { aspect, from_lsn, .. } = &ev[0] else { panic!("{ev:?}") };
        assert_eq!((aspect.reason, *from_lsn), ("table_unpublished", Lsn(110)));
        // Still lost: nothing new.
        assert!(t.observe(Lsn(300), Lsn(310), lost).is_empty());
        let ev = t.observe(Lsn(400), Lsn(410), findings(&e, &[ok(10), ok(11)]));
        let Event::Closed { from_lsn, to_lsn, detail, .. } = &ev[0] else { panic!("{ev:?}") };
        assert_eq!((*from_lsn, *to_lsn), (Lsn(110), Lsn(410)));
        assert!(detail.contains("includes public.a again"), "{detail}");
    }
}
