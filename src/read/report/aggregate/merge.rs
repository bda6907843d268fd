//! Folding one committed transaction into the aggregates.

use super::{Aggregator, PendEntry, Pending, CAP_GROUP_SHAPES};
use crate::read::report::{CAP_SESSION_STATEMENTS, CAP_TRACKED};

impl Aggregator {
    pub(super) fn merge_commit(&mut self, time: i64) {
        self.txn_seq += 1;
        let seq = self.txn_seq;
        let pending = std::mem::take(&mut self.pending);
        if pending.entries.is_empty() {
            self.pending = pending;
            return;
        }
        self.transactions += 1;
        self.first = Some(self.first.map_or(time, |f| f.min(time)));
        self.last = Some(self.last.map_or(time, |l| l.max(time)));
        let minute = time.div_euclid(60_000_000);
        let mut unattributed_txn = false;
        for e in &pending.entries {
            self.rows += e.rows;
            self.truncates += e.truncates;
            self.minutes.entry(minute).or_default().add(e.session, e.rows, e.truncates);
            self.bins.at(time).add(e.session, e.rows, e.truncates);
            let Some(si) = e.session else {
                self.un_rows += e.rows;
                self.un_truncates += e.truncates;
                unattributed_txn = true;
                continue;
            };
            self.merge_session(si, e, seq, time);
        }
        if unattributed_txn && pending.entries.iter().all(|e| e.session.is_none()) {
            self.un_transactions += 1;
        }
        self.merge_tallies(&pending);
        self.pending = pending;
        self.pending.clear();
    }

    /// The rows of session `si` in transaction `seq`: into the session and its roll-ups.
    fn merge_session(&mut self, si: usize, e: &PendEntry, seq: u64, time: i64) {
        let s = &mut self.sessions[si];
        let inferred = s.inferred;
        let inferred_rows = if inferred { e.rows } else { 0 };
        self.inferred_rows += inferred_rows;
        s.rows += e.rows;
        s.truncates += e.truncates;
        s.first = s.first.min(time);
        s.last = s.last.max(time);
        if s.last_txn != seq {
            s.last_txn = seq;
            s.transactions += 1;
            s.period.add(time);
        }
        let groups = s.groups;
        for g in groups {
            let g = &mut self.groups[g].1;
            g.rows += e.rows;
            g.rows_inferred += inferred_rows;
            g.truncates += e.truncates;
            if g.last_txn != seq {
                g.last_txn = seq;
                g.transactions += 1;
                g.period.add(time);
            }
        }
        self.merge_statement(si, groups[3], e, inferred_rows, seq, time);
    }

    /// The statement of session `si`'s rows, if known: into the session's statements, its principal's
    /// (group `principal`) shapes, and the statement shapes.
    fn merge_statement(&mut self, si: usize, principal: usize, e: &PendEntry, inferred_rows: u64, seq: u64, time: i64) {
        let Some(q) = &e.query else { return };
        let s = &mut self.sessions[si];
        if let Some(st) = s.statements.iter_mut().find(|st| st.0 == *q) {
            st.1 += e.rows;
            if st.3 != seq {
                st.3 = seq;
                st.2 += 1;
            }
        } else if s.statements.len() < CAP_SESSION_STATEMENTS {
            s.statements.push((q.clone(), e.rows, 1, seq));
        } else {
            s.statements_other.statements += 1;
            s.statements_other.rows += e.rows;
            s.statements_other.transactions += 1;
        }
        let shape = self.shape_of(q);
        let principal = &mut self.groups[principal].1.shapes;
        if let Some(p) = principal.iter_mut().find(|p| p.0 == shape) {
            p.1 += e.rows;
        } else if principal.len() < CAP_GROUP_SHAPES {
            principal.push((shape.clone(), e.rows));
        }
        let tracked = self.shapes.len() < CAP_TRACKED || self.shapes.contains_key(&shape);
        if tracked {
            let sh = self.shapes.entry(shape).or_default();
            sh.rows += e.rows;
            sh.rows_inferred += inferred_rows;
            if sh.last_txn != seq {
                sh.last_txn = seq;
                sh.transactions += 1;
                sh.period.add(time);
            }
            if !sh.sessions.contains(&si) {
                if sh.sessions.len() < CAP_TRACKED {
                    sh.sessions.push(si);
                } else {
                    sh.sessions_over = true;
                }
            }
        } else {
            self.shapes_other.shapes += 1;
            self.shapes_other.rows += e.rows;
            self.shapes_other.transactions += 1;
        }
    }

    /// The transaction's unattributed reasons, key prefixes and tables.
    fn merge_tallies(&mut self, pending: &Pending) {
        self.un_ambiguous += pending.ambiguous;
        for (r, n) in &pending.reasons {
            if let Some(c) = self.un_reasons.get_mut(r.as_str()) {
                *c += n;
            } else if self.un_reasons.len() < CAP_TRACKED {
                self.un_reasons.insert(r.clone(), *n);
            }
        }
        for (p, n) in &pending.prefixes {
            if let Some(c) = self.prefixes.get_mut(p.as_str()) {
                *c += n;
            } else if self.prefixes.len() < CAP_TRACKED && !p.is_empty() {
                self.prefixes.insert(p.clone(), *n);
            } else {
                self.prefixes_other.prefixes += 1;
                self.prefixes_other.rows += n;
            }
        }
        for (t, r, tr) in &pending.tables {
            if let Some(c) = self.tables.get_mut(t.as_str()) {
                c.0 += r;
                c.1 += tr;
            } else if self.tables.len() < CAP_TRACKED {
                self.tables.insert(t.clone(), (*r, *tr));
            }
        }
    }
}
