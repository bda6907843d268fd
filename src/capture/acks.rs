//! The capture loop's LSN bookkeeping: what may be acknowledged to the server, and from where a
//! transaction sent again is already in the log.
//!
//! The invariant (asserted in debug builds, property-tested below): the flush position sent to the server
//! never passes a transaction whose records are not durable in the log, nor the start of a prepared
//! transaction that waits for COMMIT PREPARED without a durable spool (`cap`). The writer only reports
//! as durable the acks it received in chunks it has fsynced, so it is enough that
//! * every ack handed to the writer travels in the chunk that carries (or follows) the records it covers,
//! * an ack is capped when it is handed over, and a cap never drops below what was handed before it
//!   started (a prepare's cap is the highest ack at its Begin Prepare),
//! * the resume mark (`queued`) moves only once the chunk carrying it is in the writer's queue: a
//!   transaction the server sends again after a reconnect is skipped only if its records will be written.
use crate::protocol::Lsn;

/// An acknowledgement about to travel in a chunk: `ack` (capped) goes to the writer, `mark` (uncapped)
/// becomes the resume mark once the chunk is queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "a ticket must be recorded with Acks::queued once its chunk is queued"]
pub struct Ticket {
    pub ack: Lsn,
    mark: Lsn,
}

#[derive(Debug, Clone)]
pub struct Acks {
    /// Reportable without the writer: confirmed by the slot at start, or durable before a reconnect.
    floor: Lsn,
    /// Highest position whose records are all in the writer's queue (or written): what the server sends
    /// again at or below it is skipped.
    queued: Lsn,
    /// Commit end of the complete transactions batched in memory, not yet queued.
    batched: Option<Lsn>,
    /// End of the last transaction that wrote nothing, not yet handed to the writer.
    deferred: Lsn,
    /// Highest ack handed to the writer (after the cap).
    acked: Lsn,
    /// Last flush position sent to the server.
    sent: Lsn,
}

impl Acks {
    pub fn new(start: Lsn) -> Acks {
        Acks { floor: start, queued: start, batched: None, deferred: start, acked: start, sent: Lsn::INVALID }
    }

    /// The highest ack handed to the writer: a prepare starting now must keep acknowledgements at it.
    pub fn acked(&self) -> Lsn {
        self.acked
    }

    /// The resume mark: transactions ending at or below it are in the log or in the writer's queue.
    pub fn queued(&self) -> Lsn {
        self.queued
    }

    pub fn sent(&self) -> Lsn {
        self.sent
    }

    /// The position the log covers: what `capture_stopped` reports as `last_lsn`.
    pub fn covered(&self) -> Lsn {
        self.queued.max(self.floor)
    }

    /// A transaction whose records were appended to the in-memory batch committed, ending at `end`.
    pub fn batched_commit(&mut self, end: Lsn) {
        self.batched = Some(self.batched.map_or(end, |b| b.max(end)));
    }

    /// A transaction that wrote nothing ended at `end` (nothing of ours is open below it).
    pub fn nothing_open_until(&mut self, end: Lsn) {
        self.deferred = self.deferred.max(end);
    }

    /// The ticket for `mark`, capped at `cap`.
    pub fn ticket(&mut self, mark: Lsn, cap: Option<Lsn>) -> Ticket {
        let ack = cap.map_or(mark, |c| mark.min(c));
        debug_assert!(cap.is_none_or(|c| ack <= c), "ack {ack} passes the cap");
        Ticket { ack, mark }
    }

    /// The batch's ticket, taken together with the batch's bytes.
    pub fn take_batch(&mut self, cap: Option<Lsn>) -> Option<Ticket> {
        let b = self.batched.take()?;
        Some(self.ticket(b, cap))
    }

    /// A ticket for the deferred position, if it is ahead of what was queued.
    pub fn take_deferred(&mut self, cap: Option<Lsn>) -> Option<Ticket> {
        (self.deferred > self.queued).then(|| self.ticket(self.deferred, cap))
    }

    /// The chunk carrying `t` is in the writer's queue.
    pub fn record_queued(&mut self, t: Ticket) {
        self.acked = self.acked.max(t.ack);
        self.queued = self.queued.max(t.mark);
    }

    /// The flush position to report, given the writer's durable position and the current cap. The cap
    /// is applied again here, so a position handed over before a cap existed can never be reported
    /// past a prepare that waits now.
    pub fn flush(&self, durable: Lsn, cap: Option<Lsn>) -> Lsn {
        let d = cap.map_or(durable, |c| durable.min(c));
        let f = d.max(self.floor);
        debug_assert!(f <= durable.max(self.floor), "flush {f} passes what is durable");
        f
    }

    pub fn record_sent(&mut self, flush: Lsn) {
        self.sent = flush;
    }

    /// A new connection starts streaming at `from` (what is durable): everything after it comes again,
    /// so a position noted but not queued before is stale.
    pub fn reconnected(&mut self, from: Lsn) {
        debug_assert!(self.batched.is_none(), "a batch must be queued before reconnecting");
        self.floor = self.floor.max(from);
        self.deferred = self.queued;
        self.sent = Lsn::INVALID;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cap_applies_when_handed_and_when_reported() {
        let mut a = Acks::new(Lsn(100));
        a.batched_commit(Lsn(200));
        let t = a.take_batch(Some(Lsn(150))).unwrap();
        assert_eq!(t.ack, Lsn(150));
        a.record_queued(t);
        assert_eq!(a.queued(), Lsn(200));
        assert_eq!(a.acked(), Lsn(150));
        // Durable at 300 from before a prepare started at 120: still not reported past it.
        assert_eq!(a.flush(Lsn(300), Some(Lsn(120))), Lsn(120));
        assert_eq!(a.flush(Lsn(300), None), Lsn(300));
        // Never below what the slot already confirmed.
        assert_eq!(a.flush(Lsn(0), Some(Lsn(50))), Lsn(100));
    }

    #[test]
    fn reconnect_forgets_positions_not_queued() {
        let mut a = Acks::new(Lsn(100));
        a.nothing_open_until(Lsn(500));
        a.reconnected(Lsn(100));
        assert_eq!(a.take_deferred(None), None);
        a.nothing_open_until(Lsn(600));
        assert_eq!(a.take_deferred(None).map(|t| t.ack), Some(Lsn(600)));
    }

    /// A model of the capture: transactions committing (with or without records), keepalives, prepares
    /// beginning and ending, the writer making queued chunks durable, reconnects.
    #[derive(Debug, Clone)]
    enum Ev {
        Commit { len: u64, wrote: bool },
        Keepalive { ahead: u64 },
        FlushBatch,
        FlushDeferred,
        BeginPrepare,
        EndPrepare,
        WriterSyncs(usize),
        Send,
        Reconnect,
    }

    fn ev() -> impl Strategy<Value = Ev> {
        prop_oneof![
            (1u64..500, any::<bool>()).prop_map(|(len, wrote)| Ev::Commit { len, wrote }),
            (0u64..500).prop_map(|ahead| Ev::Keepalive { ahead }),
            Just(Ev::FlushBatch),
            Just(Ev::FlushDeferred),
            Just(Ev::BeginPrepare),
            Just(Ev::EndPrepare),
            (0usize..4).prop_map(Ev::WriterSyncs),
            Just(Ev::Send),
            Just(Ev::Reconnect),
        ]
    }

    proptest! {
        #[test]
        fn flush_never_passes_undurable_records_nor_a_waiting_prepare(evs in prop::collection::vec(ev(), 1..200)) {
            let mut a = Acks::new(Lsn(1000));
            let mut pos = 1000u64;
            // Chunks queued to the writer: (ack, end of the records they carry).
            let mut queue: Vec<(Lsn, Lsn)> = Vec::new();
            let mut durable = Lsn::INVALID;
            // Highest commit whose records are durable.
            let mut durable_records = Lsn(1000);
            let mut batch_records: Option<Lsn> = None;
            // Caps of prepares that wait.
            let mut caps: Vec<Lsn> = Vec::new();
            for e in evs {
                let cap = caps.iter().copied().min();
                match e {
                    Ev::Commit { len, wrote } => {
                        pos += len;
                        if wrote || batch_records.is_some() {
                            a.batched_commit(Lsn(pos));
                            batch_records = Some(Lsn(pos));
                        } else {
                            a.nothing_open_until(Lsn(pos));
                        }
                    }
                    Ev::Keepalive { ahead } => {
                        pos += ahead;
                        if batch_records.is_none() {
                            let t = a.ticket(Lsn(pos), cap);
                            queue.push((t.ack, Lsn(pos)));
                            a.record_queued(t);
                        }
                    }
                    Ev::FlushBatch => {
                        if let Some(t) = a.take_batch(cap) {
                            queue.push((t.ack, batch_records.take().unwrap()));
                            a.record_queued(t);
                        }
                    }
                    Ev::FlushDeferred => {
                        if batch_records.is_none() {
                            if let Some(t) = a.take_deferred(cap) {
                                queue.push((t.ack, a.queued().max(t.mark)));
                                a.record_queued(t);
                            }
                        }
                    }
                    Ev::BeginPrepare => caps.push(a.acked()),
                    Ev::EndPrepare => { caps.pop(); }
                    Ev::WriterSyncs(n) => {
                        for (ack, rec) in queue.drain(..n.min(queue.len())) {
                            durable = durable.max(ack);
                            durable_records = durable_records.max(rec);
                        }
                    }
                    Ev::Send => {
                        let f = a.flush(durable, cap);
                        // Invariant: nothing reported past records that are not durable...
                        prop_assert!(f <= durable_records, "flush {} > durable records {}", f, durable_records);
                        // ...nor past a waiting prepare (the slot's own start is below every cap).
                        if let Some(c) = cap { prop_assert!(f <= c, "flush {} passes prepare cap {}", f, c); }
                        a.record_sent(f);
                    }
                    Ev::Reconnect => {
                        if let Some(t) = a.take_batch(cap) {
                            queue.push((t.ack, batch_records.take().unwrap()));
                            a.record_queued(t);
                        }
                        // The writer drains its queue; streaming restarts from what is durable and
                        // prepares still waiting are sent again (their caps stay until then).
                        for (ack, rec) in queue.drain(..) {
                            durable = durable.max(ack);
                            durable_records = durable_records.max(rec);
                        }
                        a.reconnected(durable.max(Lsn(1000)));
                    }
                }
                // The resume mark never passes records that are not at least queued.
                let queued_records = queue.iter().map(|q| q.1).max().unwrap_or(Lsn::INVALID).max(durable_records);
                prop_assert!(a.queued() <= queued_records.max(Lsn(1000)));
            }
        }
    }
}
