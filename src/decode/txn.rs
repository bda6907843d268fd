//! One transaction being assembled: the fields its records share, the trigger's statement brackets and
//! what they say of each row, the statement records written, and what its commit record will say.
use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};

use super::relations::{self, QName, RelationCache};
use crate::attribution::trigger::Open;
use crate::attribution::{Session, SessionJson};
use crate::protocol::Lsn;
use crate::sink::record;

/// One statement's bracket on its table: opened by a verified open, ended by its close.
pub(super) struct Bracket {
    pub(super) open_lsn: Lsn,
    pub(super) open: Box<Open>,
    /// `Err(reason)`: rows inside are not attributed (the closing trigger would not fire).
    pub(super) valid: Result<(), &'static str>,
    /// A nested bracket of the same table ended on top of this one: its close is unsigned, so rows after
    /// it are not attributed to this statement (see `attribution::trigger`).
    pub(super) resumed: bool,
    /// The statement record's number and the row-level session, once written.
    pub(super) statement: Option<(u32, Bytes)>,
    pub(super) session: Session,
}

pub(super) struct Txn {
    pub(super) xid: u32,
    /// The top-level xid with its epoch (known when trigger attribution is on).
    pub(super) full_xid: Option<u64>,
    pub(super) final_lsn: Lsn,
    pub(super) commit_time: i64,
    /// Already in the log from an earlier run: decode, but write nothing.
    pub(super) skip: bool,
    pub(super) origin: Option<String>,
    /// `,"commit_lsn":…,"commit_time":…,"origin":…` shared by every row of the transaction.
    pub(super) common: BytesMut,
    pub(super) deletes: u64,
    pub(super) truncates: u64,
    /// The activity source's session for this xid, if a sample saw it, and its statement once written.
    pub(super) activity: Option<Arc<SessionJson>>,
    pub(super) activity_statement: Option<(u32, Bytes)>,
    /// Open brackets per watched table (keyed by `RelationCache::table_key`), innermost last.
    pub(super) brackets: HashMap<String, Vec<Bracket>>,
    /// Statement records written, by their session JSON (one record per distinct statement).
    pub(super) statements: HashMap<Bytes, u32>,
    /// Contents of trigger messages seen (a second copy is a replay).
    pub(super) seen: HashSet<Bytes>,
    pub(super) last_open_id: Option<i64>,
    pub(super) pid: Option<i32>,
    /// Tables (keys) with trigger evidence or rows in this transaction, and those whose Relation message
    /// was sent again after that (the table's definition or triggers changed inside the transaction).
    pub(super) touched: HashSet<String>,
    pub(super) altered: HashSet<String>,
    /// The trigger's error reports for this transaction: (LSN, table key).
    pub(super) errors: Vec<(Lsn, String)>,
    /// Watched tables whose reported name this transaction changed, with the name before: put back if
    /// the transaction is abandoned (its records never reach the log).
    pub(super) renames: Vec<(usize, QName)>,
    /// An aborted attempt's replay: the relation cache entries it replaced, put back at its end.
    pub(super) saved_relations: Vec<(u32, relations::Saved)>,
    /// Row-level session written in the commit record: the first one any record carried.
    pub(super) first_session: Option<Bytes>,
    pub(super) attributed_trigger: u64,
    pub(super) attributed_activity: u64,
    pub(super) unattributed: u64,
    pub(super) missing: u64,
    pub(super) conflict: bool,
    pub(super) rejected: Vec<String>,
    pub(super) problems: Vec<String>,
    /// Whether to infer the session at the commit (no sampled session for the xid; see
    /// `attribution::infer`).
    pub(super) infer: bool,
    /// Text of the first deleted rows' keys (single-column keys), which inference matches against the
    /// candidates' statements.
    pub(super) keys: Vec<String>,
}

impl Txn {
    pub(super) fn reject(&mut self, lsn: Lsn, reason: String) {
        tracing::warn!(
            "at LSN {lsn}: rejected a walwitness attribution message in xid {}: {}",
            self.xid,
            crate::term::clean(&reason)
        );
        self.rejected.push(format!("{lsn}: {reason}"));
    }

    pub(super) fn problem(&mut self, lsn: Lsn, what: String) {
        tracing::warn!("at LSN {lsn}, xid {}: {}", self.xid, crate::term::clean(&what));
        if self.problems.len() < 100 {
            self.problems.push(format!("{lsn}: {what}"));
        }
    }

    pub(super) fn new(xid: u32, final_lsn: Lsn, commit_time: i64) -> Txn {
        Txn {
            xid,
            full_xid: None,
            final_lsn,
            commit_time,
            skip: false,
            origin: None,
            common: BytesMut::new(),
            deletes: 0,
            truncates: 0,
            activity: None,
            activity_statement: None,
            brackets: HashMap::new(),
            statements: HashMap::new(),
            seen: HashSet::new(),
            last_open_id: None,
            pid: None,
            touched: HashSet::new(),
            altered: HashSet::new(),
            errors: Vec::new(),
            renames: Vec::new(),
            saved_relations: Vec::new(),
            first_session: None,
            attributed_trigger: 0,
            attributed_activity: 0,
            unattributed: 0,
            missing: 0,
            conflict: false,
            rejected: Vec::new(),
            problems: Vec::new(),
            infer: false,
            keys: Vec::new(),
        }
    }

    pub(super) fn rebuild_common(&mut self) {
        let mut c = BytesMut::with_capacity(96);
        record::push_commit_fields(&mut c, self.final_lsn, self.commit_time, self.origin.as_deref());
        self.common = c;
    }

    /// Writes a `statement` record for `session` (unless an identical one was written in this
    /// transaction) and returns its number and the row-level session.
    pub(super) fn statement(&mut self, out: &mut BytesMut, lsn: Lsn, session: &Session) -> (u32, Bytes) {
        let full = Bytes::from(serde_json::to_vec(session).unwrap_or_else(|_| b"null".to_vec()));
        let n = match self.statements.get(&full) {
            Some(&n) => n,
            None => {
                let n = self.statements.len() as u32 + 1;
                record::write_statement(out, self.xid, n, lsn, &self.common, &full);
                self.statements.insert(full, n);
                n
            }
        };
        (n, session.small_json(n))
    }

    /// The trigger's evidence for a pending row: the first of the record's tables whose bracket covers
    /// it (`Ok(table key)`), or why the first table has none.
    pub(super) fn evidence(
        &mut self,
        rels: &RelationCache,
        key: &PendingKey,
        lsn: Lsn,
    ) -> Result<String, &'static str> {
        let tables: Vec<String> = match key {
            PendingKey::Rel(relid) => {
                rels.get(*relid).and_then(|r| r.watched).map(|i| vec![rels.table_key(i)]).unwrap_or_default()
            }
            PendingKey::Tables(tables) => tables.iter().map(|&i| rels.table_key(i)).collect(),
        };
        let mut verdict = Err("no_trigger_fired");
        for (i, key) in tables.into_iter().enumerate() {
            if !self.touched.contains(&key) {
                self.touched.insert(key.clone());
            }
            match self.covering(&key, lsn) {
                Ok(()) => return Ok(key),
                Err(r) if i == 0 => verdict = Err(r),
                Err(_) => {}
            }
        }
        verdict
    }

    /// The small session of a pending row (the covering bracket's, else the activity source's), after
    /// its statement record if that is not written yet; `None`: not attributed.
    pub(super) fn choose_session(
        &mut self,
        verdict: &Result<String, &str>,
        p: &Pending,
        out: &mut BytesMut,
    ) -> Option<Bytes> {
        // A statement record written now goes before the row, which is the last thing in `out`: the row
        // is set aside meanwhile (only then, so most rows are never copied).
        let mut row: Option<BytesMut> = None;
        let chosen = match verdict {
            Ok(name) => {
                let b = self.brackets.get_mut(name).and_then(|v| v.last_mut()).expect("covering bracket");
                let (_, small) = match &b.statement {
                    Some(s) => s.clone(),
                    None => {
                        let session = b.session.clone();
                        let open_lsn = b.open_lsn;
                        row = Some(out.split_off(p.start));
                        let s = self.statement(out, open_lsn, &session);
                        let b = self.brackets.get_mut(name).and_then(|v| v.last_mut()).expect("covering bracket");
                        b.statement = Some(s.clone());
                        s
                    }
                };
                self.attributed_trigger += 1;
                Some(small)
            }
            Err(_) => match self.activity.clone() {
                Some(a) => {
                    self.attributed_activity += 1;
                    let (_, small) = match &self.activity_statement {
                        Some(s) => s.clone(),
                        None => {
                            let session: Session = serde_json::from_slice(&a.json).unwrap_or_default();
                            row = Some(out.split_off(p.start));
                            let s = self.statement(out, p.lsn, &session);
                            self.activity_statement = Some(s.clone());
                            s
                        }
                    };
                    Some(small)
                }
                None => {
                    self.unattributed += 1;
                    None
                }
            },
        };
        if let Some(r) = row {
            out.extend_from_slice(&r);
        }
        chosen
    }

    /// Why a verified open cannot be this transaction's (a replayed or misplaced copy), if so.
    pub(super) fn open_rejection(&mut self, o: &Open, content: &[u8]) -> Option<String> {
        let fresh = self.seen.insert(Bytes::copy_from_slice(content));
        if !fresh {
            Some("a copy of an earlier message of this transaction (replayed)".to_owned())
        } else if self.full_xid.is_some_and(|x| x != o.xid) || o.xid % (1 << 32) != u64::from(self.xid) {
            Some(format!("signed for xid {} but found in xid {}", o.xid, self.full_xid.unwrap_or(u64::from(self.xid))))
        } else if self.pid.is_some_and(|p| p != o.pid) {
            Some(format!("signed by pid {} in a transaction of pid {}", o.pid, self.pid.unwrap_or_default()))
        } else if self.last_open_id.is_some_and(|l| o.id <= l) {
            Some("older than an earlier statement of this transaction (replayed)".to_owned())
        } else {
            None
        }
    }

    /// A statement's bracket opens on the table `key`.
    pub(super) fn open_bracket(&mut self, lsn: Lsn, key: String, o: Box<Open>) {
        let table = o.table();
        self.pid = Some(o.pid);
        self.last_open_id = Some(o.id);
        self.touched.insert(key.clone());
        let mut session = o.session();
        if let Some(a) = &self.activity {
            if !SessionJson::new(&session).same_backend(a) {
                session.conflict = serde_json::from_slice::<Session>(&a.json).ok().map(Box::new);
                self.conflict = true;
            }
        }
        let valid = if o.armed { Ok(()) } else { Err("closing_trigger_disabled") };
        if !o.armed {
            self.problem(
                lsn,
                format!(
                    "statement on {table} (pid {}, application {:?}) ran without its closing trigger (disabled, dropped or replaced): its rows are not attributed",
                    o.pid,
                    o.app.as_deref().unwrap_or("")
                ),
            );
        }
        self.brackets.entry(key).or_default().push(Bracket {
            open_lsn: lsn,
            open: o,
            valid,
            resumed: false,
            statement: None,
            session,
        });
    }

    /// Why the trigger's evidence does not cover a row of `table` at `lsn`, when no bracket does.
    pub(super) fn missing_reason(&self, table: &str, lsn: Lsn) -> &'static str {
        if self.errors.iter().any(|(e, t)| *e <= lsn && t == table) {
            "trigger_error"
        } else if self.altered.contains(table) {
            "table_altered"
        } else if !self.rejected.is_empty() {
            "rejected_evidence"
        } else if self.origin.is_some() {
            "replicated"
        } else {
            "no_trigger_fired"
        }
    }

    /// The bracket evidence for a row of `table` at `lsn`: `Ok(bracket)` when a valid one covers it,
    /// `Err(reason)` otherwise.
    pub(super) fn covering(&self, table: &str, lsn: Lsn) -> Result<(), &'static str> {
        let Some(b) = self.brackets.get(table).and_then(|v| v.last()) else {
            return Err(self.missing_reason(table, lsn));
        };
        b.valid?;
        if self.errors.iter().any(|(e, t)| *e > b.open_lsn && *e <= lsn && t == table) {
            return Err("trigger_error");
        }
        if b.resumed {
            return Err("after_nested_statement");
        }
        if lsn < b.open_lsn {
            return Err("before_its_statement");
        }
        Ok(())
    }
}

/// Keys of a transaction kept for inference (see `Txn::keys`).
pub(super) const MAX_KEYS: usize = 16;

/// A row record written up to (not including) its `,"session":` member, waiting for the next message
/// (see `handle`).
pub(super) struct Pending {
    pub(super) lsn: Lsn,
    /// Offset of the record's first byte in the output buffer.
    pub(super) start: usize,
    pub(super) key: PendingKey,
}

pub(super) enum PendingKey {
    Rel(u32),
    /// The watched tables of a truncate (indexes into the watch list).
    Tables(Vec<usize>),
}
