//! Encoders of the records the decoder writes, byte for byte what the format (`sink::record`) says.
//! Row records (`delete`, `truncate`) are written up to their session, which is decided one message
//! later (see `decode::Assembler::handle`), then ended by `finish_row`.
use bytes::BytesMut;

use super::{format_pg_time, push_lsn, push_str, push_u64, push_value, Kind};
use crate::protocol::pgoutput::Value;
use crate::protocol::Lsn;

/// `,"commit_lsn":…,"commit_time":…,"origin":…`: what every record of a transaction carries.
pub fn push_commit_fields(out: &mut BytesMut, commit_lsn: Lsn, commit_time: i64, origin: Option<&str>) {
    out.extend_from_slice(b",\"commit_lsn\":");
    push_lsn(out, commit_lsn);
    out.extend_from_slice(b",\"commit_time\":");
    push_str(out, &format_pg_time(commit_time));
    out.extend_from_slice(b",\"origin\":");
    push_opt_str(out, origin);
}

/// A `statement` record; `common` from `push_commit_fields`, `session` the full session's JSON.
pub fn write_statement(out: &mut BytesMut, xid: u32, n: u32, lsn: Lsn, common: &[u8], session: &[u8]) {
    out.extend_from_slice(Kind::Statement.open());
    out.extend_from_slice(b"\"xid\":");
    push_u64(out, u64::from(xid));
    out.extend_from_slice(b",\"statement\":");
    push_u64(out, u64::from(n));
    out.extend_from_slice(b",\"lsn\":");
    push_lsn(out, lsn);
    out.extend_from_slice(common);
    out.extend_from_slice(b",\"session\":");
    out.extend_from_slice(session);
    out.extend_from_slice(b"}\n");
}

/// How every `delete` record of one relation begins, up to the value of its `xid`: `reference`
/// writes its `"table":…` fields.
pub fn delete_prefix(reference: impl FnOnce(&mut BytesMut)) -> Vec<u8> {
    let mut prefix = BytesMut::new();
    prefix.extend_from_slice(Kind::Delete.open());
    reference(&mut prefix);
    prefix.extend_from_slice(b",\"xid\":");
    prefix.to_vec()
}

/// A `delete` record up to its session: `prefix` from `delete_prefix`; `key` and `old` as (quoted
/// column name, value) pairs, `None` for `null`.
pub fn write_delete<'a>(
    out: &mut BytesMut,
    prefix: &[u8],
    xid: u32,
    lsn: Lsn,
    common: &[u8],
    key: Option<impl Iterator<Item = (&'a [u8], &'a Value)>>,
    old: Option<impl Iterator<Item = (&'a [u8], &'a Value)>>,
) {
    out.extend_from_slice(prefix);
    push_u64(out, u64::from(xid));
    out.extend_from_slice(b",\"lsn\":");
    push_lsn(out, lsn);
    out.extend_from_slice(common);
    out.extend_from_slice(b",\"key\":");
    match key {
        Some(fields) => push_object(out, fields),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"old\":");
    match old {
        Some(fields) => push_object(out, fields),
        None => out.extend_from_slice(b"null"),
    }
}

/// A `truncate` record up to its session: `relations` are the `{…}` objects, comma-separated.
#[allow(clippy::too_many_arguments)]
pub fn write_truncate(
    out: &mut BytesMut,
    tables: impl Iterator<Item = String>,
    relations: &[u8],
    xid: u32,
    lsn: Lsn,
    common: &[u8],
    cascade: bool,
    restart_identity: bool,
) {
    out.extend_from_slice(Kind::Truncate.open());
    out.extend_from_slice(b"\"tables\":[");
    for (i, t) in tables.enumerate() {
        if i > 0 {
            out.extend_from_slice(b",");
        }
        push_str(out, &t);
    }
    out.extend_from_slice(b"],\"relations\":[");
    out.extend_from_slice(relations);
    out.extend_from_slice(b"],\"xid\":");
    push_u64(out, u64::from(xid));
    out.extend_from_slice(b",\"lsn\":");
    push_lsn(out, lsn);
    out.extend_from_slice(common);
    out.extend_from_slice(if cascade { b",\"cascade\":true" } else { b",\"cascade\":false" });
    out.extend_from_slice(if restart_identity {
        b",\"restart_identity\":true"
    } else {
        b",\"restart_identity\":false"
    });
}

/// Ends a row record: why the trigger's evidence is missing (trigger attribution only), and its
/// small session (`None`: not attributed).
pub fn finish_row(out: &mut BytesMut, missing_evidence: Option<&str>, session: Option<&[u8]>) {
    if let Some(reason) = missing_evidence {
        out.extend_from_slice(b",\"trigger_evidence\":\"missing\",\"trigger_evidence_reason\":");
        push_str(out, reason);
    }
    out.extend_from_slice(b",\"session\":");
    out.extend_from_slice(session.unwrap_or(b"null"));
    out.extend_from_slice(b"}\n");
}

/// A `relation_renamed` record.
pub struct RelationRenamed<'a> {
    pub oid: Option<u32>,
    /// The new name: qualified, schema, name.
    pub table: &'a str,
    pub schema: &'a str,
    pub name: &'a str,
    pub previous_table: &'a str,
    pub previous_schema: &'a str,
    pub previous_name: &'a str,
    pub xid: u32,
    pub lsn: Lsn,
    /// From `push_commit_fields`.
    pub common: &'a [u8],
}

pub fn write_relation_renamed(out: &mut BytesMut, r: &RelationRenamed) {
    out.extend_from_slice(Kind::RelationRenamed.open());
    out.extend_from_slice(b"\"oid\":");
    match r.oid {
        Some(o) => push_u64(out, u64::from(o)),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"table\":");
    push_str(out, r.table);
    out.extend_from_slice(b",\"schema\":");
    push_str(out, r.schema);
    out.extend_from_slice(b",\"name\":");
    push_str(out, r.name);
    out.extend_from_slice(b",\"previous_table\":");
    push_str(out, r.previous_table);
    out.extend_from_slice(b",\"previous_schema\":");
    push_str(out, r.previous_schema);
    out.extend_from_slice(b",\"previous_name\":");
    push_str(out, r.previous_name);
    out.extend_from_slice(b",\"xid\":");
    push_u64(out, u64::from(r.xid));
    out.extend_from_slice(b",\"lsn\":");
    push_lsn(out, r.lsn);
    out.extend_from_slice(r.common);
    out.extend_from_slice(b"}\n");
}

/// A `commit` record.
pub struct Commit<'a> {
    pub xid: u32,
    pub commit_lsn: Lsn,
    pub end_lsn: Lsn,
    pub commit_time: i64,
    pub origin: Option<&'a str>,
    pub deletes: u64,
    pub truncates: u64,
    /// The first small session a record of the transaction carried.
    pub session: Option<&'a [u8]>,
    pub attribution: &'a str,
    /// The `inferred` JSON, or else the `unattributed_reason`.
    pub inferred: Option<&'a [u8]>,
    pub unattributed_reason: Option<&'a str>,
    pub conflict: bool,
    pub evidence_missing: u64,
    pub rejected: &'a [String],
    pub problems: &'a [String],
}

pub fn write_commit(out: &mut BytesMut, c: &Commit) {
    out.extend_from_slice(Kind::Commit.open());
    out.extend_from_slice(b"\"xid\":");
    push_u64(out, u64::from(c.xid));
    out.extend_from_slice(b",\"commit_lsn\":");
    push_lsn(out, c.commit_lsn);
    out.extend_from_slice(b",\"end_lsn\":");
    push_lsn(out, c.end_lsn);
    out.extend_from_slice(b",\"commit_time\":");
    push_str(out, &format_pg_time(c.commit_time));
    out.extend_from_slice(b",\"origin\":");
    push_opt_str(out, c.origin);
    out.extend_from_slice(b",\"deletes\":");
    push_u64(out, c.deletes);
    out.extend_from_slice(b",\"truncates\":");
    push_u64(out, c.truncates);
    out.extend_from_slice(b",\"session\":");
    out.extend_from_slice(c.session.unwrap_or(b"null"));
    out.extend_from_slice(b",\"attribution\":");
    push_str(out, c.attribution);
    if let Some(json) = c.inferred {
        out.extend_from_slice(b",\"inferred\":");
        out.extend_from_slice(json);
    } else if let Some(reason) = c.unattributed_reason {
        out.extend_from_slice(b",\"unattributed_reason\":");
        push_str(out, reason);
    }
    if c.conflict {
        out.extend_from_slice(b",\"attribution_conflict\":true");
    }
    if c.evidence_missing > 0 {
        out.extend_from_slice(b",\"trigger_evidence_missing\":");
        push_u64(out, c.evidence_missing);
    }
    push_str_list(out, "rejected_attribution_messages", c.rejected);
    push_str_list(out, "trigger_evidence_problems", c.problems);
    out.extend_from_slice(b"}\n");
}

/// A `trigger_error` record.
pub struct TriggerError<'a> {
    pub lsn: Lsn,
    /// The 32-bit xid, when the transaction had one.
    pub xid: Option<u64>,
    pub pid: u64,
    pub table: &'a str,
    pub oid: u32,
    pub op: &'a str,
    pub trigger: &'a str,
    pub error: &'a str,
    pub signed: bool,
}

pub fn write_trigger_error(out: &mut BytesMut, e: &TriggerError) {
    out.extend_from_slice(Kind::TriggerError.open());
    out.extend_from_slice(b"\"lsn\":");
    push_lsn(out, e.lsn);
    out.extend_from_slice(b",\"xid\":");
    match e.xid {
        Some(x) => push_u64(out, x),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"pid\":");
    push_u64(out, e.pid);
    out.extend_from_slice(b",\"table\":");
    push_str(out, e.table);
    out.extend_from_slice(b",\"oid\":");
    push_u64(out, u64::from(e.oid));
    out.extend_from_slice(b",\"op\":");
    push_str(out, e.op);
    out.extend_from_slice(b",\"trigger\":");
    push_str(out, e.trigger);
    out.extend_from_slice(b",\"error\":");
    push_str(out, e.error);
    out.extend_from_slice(if e.signed { b",\"signed\":true}\n" } else { b",\"signed\":false}\n" });
}

/// The start of an `abort` record, up to the fields it shares with a commit record (from `origin` on).
pub fn write_abort_head(out: &mut BytesMut, xid: u32, subxid: u32, abort_lsn: Option<Lsn>, abort_time: Option<i64>) {
    out.extend_from_slice(Kind::Abort.open());
    out.extend_from_slice(b"\"xid\":");
    push_u64(out, u64::from(xid));
    out.extend_from_slice(b",\"subxid\":");
    push_u64(out, u64::from(subxid));
    push_abort_fields(out, abort_lsn, abort_time);
}

/// `,"abort_lsn":…,"abort_time":…` (`null` when unknown).
pub fn push_abort_fields(out: &mut BytesMut, abort_lsn: Option<Lsn>, abort_time: Option<i64>) {
    out.extend_from_slice(b",\"abort_lsn\":");
    match abort_lsn {
        Some(l) => push_lsn(out, l),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(b",\"abort_time\":");
    match abort_time {
        Some(t) => push_str(out, &format_pg_time(t)),
        None => out.extend_from_slice(b"null"),
    }
}

fn push_opt_str(out: &mut BytesMut, s: Option<&str>) {
    match s {
        Some(s) => push_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// `,"<name>":[…]`, nothing when `items` is empty.
fn push_str_list(out: &mut BytesMut, name: &str, items: &[String]) {
    if items.is_empty() {
        return;
    }
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":[");
    for (i, r) in items.iter().enumerate() {
        if i > 0 {
            out.extend_from_slice(b",");
        }
        push_str(out, r);
    }
    out.extend_from_slice(b"]");
}

/// `{name:value,…}` from quoted names and values.
fn push_object<'a>(out: &mut BytesMut, fields: impl Iterator<Item = (&'a [u8], &'a Value)>) {
    out.extend_from_slice(b"{");
    for (i, (name, v)) in fields.enumerate() {
        if i > 0 {
            out.extend_from_slice(b",");
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b":");
        push_value(out, v);
    }
    out.extend_from_slice(b"}");
}
