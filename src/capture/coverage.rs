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
pub use crate::pg::coverage::*;
use crate::protocol::Lsn;

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
