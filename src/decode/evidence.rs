//! The trigger's messages: statement brackets opened and closed inside a transaction, and error
//! reports between transactions (kept for their transaction, and written as `trigger_error` records).
use bytes::BytesMut;

use super::Assembler;
use crate::attribution::trigger::{Close, ErrorReport, Evidence};
use crate::protocol::Lsn;
use crate::sink::record;

/// Error reports of the trigger kept for the transactions they belong to (they arrive before them).
const MAX_ERROR_REPORTS: usize = 4096;

impl Assembler {
    /// A message with our prefix, inside a transaction or not.
    pub(super) fn trigger_message(&mut self, lsn: Lsn, transactional: bool, content: &[u8], out: &mut BytesMut) {
        let Some(verifier) = self.attributor.verifier.clone() else {
            return;
        };
        let evidence = verifier.verify(content);
        if !transactional {
            // Error reports are non-transactional: they reach us before their transaction.
            match evidence {
                Ok(Evidence::Error(r)) => self.error_report(lsn, r, out),
                Ok(_) => {
                    self.rejected_messages += 1;
                    tracing::warn!(
                        "at LSN {lsn}: non-transactional walwitness message that is not an error report ignored"
                    );
                }
                Err(e) => {
                    self.rejected_messages += 1;
                    tracing::warn!(
                        "at LSN {lsn}: non-transactional walwitness message rejected: {}",
                        crate::term::clean(&e)
                    );
                }
            }
            return;
        }
        let Some(t) = self.txn.as_mut() else { return };
        match evidence {
            Err(reason) => {
                t.reject(lsn, reason);
                self.rejected_messages += 1;
            }
            Ok(Evidence::Error(_)) => {
                t.reject(lsn, "an error report sent as a transactional message".into());
                self.rejected_messages += 1;
            }
            Ok(Evidence::Open(o)) => {
                let Some(key) = self.relations.evidence_key(o.r) else { return };
                if let Some(why) = t.open_rejection(&o, content) {
                    t.reject(lsn, why);
                    self.rejected_messages += 1;
                    return;
                }
                t.open_bracket(lsn, key, o);
            }
            Ok(Evidence::Close(c)) => {
                let Some(key) = self.relations.evidence_key(c.r) else { return };
                let table = c.table();
                t.touched.insert(key.clone());
                let stack = t.brackets.entry(key).or_default();
                match stack.last() {
                    Some(b) if b.open.closed_by(&c) => {
                        stack.pop();
                        if let Some(outer) = stack.last_mut() {
                            outer.resumed = true;
                        }
                    }
                    _ => t.problem(lsn, describe_unmatched(&c, &table)),
                }
            }
        }
    }

    /// Keeps an error report for its transaction and writes it as a `trigger_error` record.
    pub(super) fn error_report(&mut self, lsn: Lsn, r: ErrorReport, out: &mut BytesMut) {
        let table = r.table();
        tracing::warn!(
            "at LSN {lsn}: the attribution trigger failed on {} (pid {}, xid {:?}): {}",
            crate::term::clean(&table),
            r.pid,
            r.xid,
            crate::term::clean(&r.e)
        );
        match &mut self.txn {
            Some(t) if r.xid.is_some_and(|x| x % (1 << 32) == u64::from(t.xid)) => {
                if let Some(key) = self.relations.evidence_key(r.r) {
                    t.errors.push((lsn, key));
                }
            }
            _ => {
                if let Some(x) = r.xid {
                    if self.error_reports.len() >= MAX_ERROR_REPORTS {
                        self.error_reports.pop_front();
                    }
                    if let Some(key) = self.relations.evidence_key(r.r) {
                        self.error_reports.push_back((lsn, x, key));
                    }
                }
            }
        }
        if let Some(t) = self.txn.as_mut() {
            // Not expected (they are sent between transactions), but never lost: the commit lists it.
            t.problem(lsn, format!("the attribution trigger failed on {table} (pid {}): {}", r.pid, r.e));
            return;
        }
        if lsn < self.resume_after {
            return;
        }
        record::write_trigger_error(
            out,
            &record::TriggerError {
                lsn,
                xid: r.xid.map(|x| x % (1 << 32)),
                pid: r.pid.max(0) as u64,
                table: &table,
                oid: r.r,
                op: &r.op,
                trigger: &r.w,
                error: &r.e,
                signed: r.signed,
            },
        );
    }
}

fn describe_unmatched(c: &Close, table: &str) -> String {
    format!(
        "a statement on {table} (depth {}) ended without a matching start: its opening trigger did not fire (disabled, dropped or failed), or the close was forged",
        c.d
    )
}
