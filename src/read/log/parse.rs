//! Lines into checked records: the record types, the format's required fields per type, and times.

use std::rc::Rc;

use super::record::{Field, Record, SessionRef};

/// What a record is, once checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Delete,
    Truncate,
    Commit,
    CaptureStarted,
    CaptureStopped,
    Gap,
    /// Rows of a streamed or prepared transaction that rolled back (`--include-aborted`): evidence of
    /// an attempt, never of a deletion. Closed by their `abort` record.
    AbortedDelete,
    AbortedTruncate,
    Abort,
    /// A watched table appears under another name from here on (format version 2). Part of the
    /// transaction whose records follow it, counted in neither `deletes` nor `truncates`.
    RelationRenamed,
    /// Format 3: a statement's session and text, once per transaction, before the rows naming it.
    Statement,
    AbortedStatement,
    /// Format 3: the attribution trigger failed (written between transactions).
    TriggerError,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "delete" => Kind::Delete,
            "truncate" => Kind::Truncate,
            "commit" => Kind::Commit,
            "capture_started" => Kind::CaptureStarted,
            "capture_stopped" => Kind::CaptureStopped,
            "gap" => Kind::Gap,
            "aborted_delete" => Kind::AbortedDelete,
            "aborted_truncate" => Kind::AbortedTruncate,
            "abort" => Kind::Abort,
            "relation_renamed" => Kind::RelationRenamed,
            "statement" => Kind::Statement,
            "aborted_statement" => Kind::AbortedStatement,
            "trigger_error" => Kind::TriggerError,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Delete => "delete",
            Kind::Truncate => "truncate",
            Kind::Commit => "commit",
            Kind::CaptureStarted => "capture_started",
            Kind::CaptureStopped => "capture_stopped",
            Kind::Gap => "gap",
            Kind::AbortedDelete => "aborted_delete",
            Kind::AbortedTruncate => "aborted_truncate",
            Kind::Abort => "abort",
            Kind::RelationRenamed => "relation_renamed",
            Kind::Statement => "statement",
            Kind::AbortedStatement => "aborted_statement",
            Kind::TriggerError => "trigger_error",
        }
    }

    pub fn is_row(self) -> bool {
        matches!(self, Kind::Delete | Kind::Truncate)
    }
}

/// Parses lines into checked records. Keeps the last session: the rows of a transaction repeat the same
/// session object, and parsing it once instead of per row is most of the speed of `report`.
#[derive(Debug, Default)]
pub struct Parser {
    last_raw: Vec<u8>,
    last: Option<Rc<SessionRef>>,
}

impl Parser {
    pub fn new() -> Self {
        Self::default()
    }

    /// Parses one line into a record and checks its type and required fields. `scratch` may hold the
    /// bytes the record borrows from (see the fast path below).
    pub fn parse<'l>(&mut self, line: &'l [u8], scratch: &'l mut Vec<u8>) -> Result<(Kind, Record<'l>), String> {
        // Fast path: a row line that ends with `"session":<the previous session>}` is parsed with
        // `null` in its place and given the session already parsed. Substituting one valid JSON value
        // for another keeps the line's validity and meaning; skipping the repeated session object
        // (most of a row's bytes) roughly halves the time `report` spends parsing.
        const KEY: &[u8] = b"\"session\":";
        if self.last.is_some() && !self.last_raw.is_empty() {
            if let Some(body) = line.strip_suffix(b"}") {
                if let Some(head) = body.strip_suffix(self.last_raw.as_slice()) {
                    if head.ends_with(KEY) {
                        scratch.clear();
                        scratch.extend_from_slice(head);
                        scratch.extend_from_slice(b"null}");
                        let (kind, mut rec) = self.parse_plain(scratch)?;
                        if matches!(rec.session_raw, Field::Null) {
                            rec.session = Field::Value(Rc::clone(self.last.as_ref().expect("checked")));
                        }
                        rec.check(kind)?;
                        return Ok((kind, rec));
                    }
                }
            }
        }
        let (kind, rec) = self.parse_plain(line)?;
        rec.check(kind)?;
        Ok((kind, rec))
    }

    /// Parses a line, and its session unless it is the previous line's; does not check fields.
    fn parse_plain<'l>(&mut self, line: &'l [u8]) -> Result<(Kind, Record<'l>), String> {
        let mut rec: Record = serde_json::from_slice(line).map_err(|e| {
            if line.is_empty() {
                "empty line".to_owned()
            } else {
                format!("not a valid record: {e}")
            }
        })?;
        let kind = Kind::parse(&rec.kind).ok_or_else(|| format!("unknown record type {:?}", rec.kind.as_ref()))?;
        rec.session = match rec.session_raw {
            Field::Missing => Field::Missing,
            Field::Null => Field::Null,
            Field::Value(raw) => {
                let bytes = raw.get().as_bytes();
                match &self.last {
                    Some(s) if self.last_raw == bytes => Field::Value(Rc::clone(s)),
                    _ => {
                        let s: SessionRef =
                            serde_json::from_str(raw.get()).map_err(|e| format!("invalid session object: {e}"))?;
                        let s = Rc::new(s);
                        self.last_raw.clear();
                        self.last_raw.extend_from_slice(bytes);
                        self.last = Some(Rc::clone(&s));
                        Field::Value(s)
                    }
                }
            }
        };
        Ok((kind, rec))
    }
}

/// Parses one line on its own (no session reuse across lines).
pub fn parse_line(line: &[u8]) -> Result<(Kind, Record<'_>), String> {
    let (kind, rec) = Parser::new().parse_plain(line)?;
    rec.check(kind)?;
    Ok((kind, rec))
}

impl Record<'_> {
    /// The format's required fields for `kind` (types were already checked by deserialisation).
    fn check(&self, kind: Kind) -> Result<(), String> {
        let missing = self.missing_fields(kind);
        if !missing.is_empty() {
            return Err(format!(
                "{} record without required field{} {}",
                kind.as_str(),
                if missing.len() > 1 { "s" } else { "" },
                missing.join(", ")
            ));
        }
        for t in [&self.commit_time, &self.time].into_iter().flatten() {
            if parse_time(t).is_none() {
                return Err(format!("{} record with invalid time {t:?}", kind.as_str()));
            }
        }
        Ok(())
    }

    // Long because it is one flat table: each record type's required fields, as the format lists them.
    /// The required fields of `kind` that this record lacks.
    fn missing_fields(&self, kind: Kind) -> Vec<&'static str> {
        let mut missing: Vec<&'static str> = Vec::new();
        let mut need = |ok: bool, name: &'static str| {
            if !ok {
                missing.push(name)
            }
        };
        match kind {
            Kind::Delete => {
                need(self.table.is_some(), "table");
                need(self.xid.is_some(), "xid");
                need(self.lsn.is_some(), "lsn");
                need(self.commit_lsn.is_some(), "commit_lsn");
                need(self.commit_time.is_some(), "commit_time");
                need(self.key.present(), "key");
                need(self.old.0, "old");
                need(self.session.present(), "session");
            }
            Kind::Truncate => {
                need(self.tables.is_some(), "tables");
                need(self.xid.is_some(), "xid");
                need(self.lsn.is_some(), "lsn");
                need(self.commit_lsn.is_some(), "commit_lsn");
                need(self.commit_time.is_some(), "commit_time");
                need(self.session.present(), "session");
            }
            Kind::Commit => {
                need(self.xid.is_some(), "xid");
                need(self.commit_lsn.is_some(), "commit_lsn");
                need(self.end_lsn.is_some(), "end_lsn");
                need(self.commit_time.is_some(), "commit_time");
                need(self.deletes.is_some(), "deletes");
                need(self.truncates.is_some(), "truncates");
                need(self.session.present(), "session");
            }
            Kind::CaptureStarted => {
                need(self.time.is_some(), "time");
                need(self.slot.is_some(), "slot");
                need(self.tables.is_some(), "tables");
                need(self.start_lsn.is_some(), "start_lsn");
                need(self.format_version.is_some(), "format_version");
            }
            Kind::CaptureStopped => {
                need(self.time.is_some(), "time");
                need(self.reason.is_some(), "reason");
                need(self.last_lsn.is_some(), "last_lsn");
            }
            Kind::Gap => {
                need(self.time.is_some(), "time");
                need(self.reason.is_some(), "reason");
                need(self.from_lsn.is_some(), "from_lsn");
                need(self.to_lsn.is_some() || self.open == Some(true), "to_lsn");
            }
            Kind::AbortedDelete => {
                need(self.table.is_some(), "table");
                need(self.xid.is_some(), "xid");
                need(self.lsn.is_some(), "lsn");
                need(self.key.present(), "key");
                need(self.session.present(), "session");
            }
            Kind::AbortedTruncate => {
                need(self.tables.is_some(), "tables");
                need(self.xid.is_some(), "xid");
                need(self.lsn.is_some(), "lsn");
            }
            Kind::Abort => {
                need(self.xid.is_some(), "xid");
                need(self.deletes.is_some(), "deletes");
                need(self.truncates.is_some(), "truncates");
            }
            Kind::RelationRenamed => {
                need(self.schema.is_some(), "schema");
                need(self.name.is_some(), "name");
                need(self.previous_schema.is_some(), "previous_schema");
                need(self.previous_name.is_some(), "previous_name");
                need(self.xid.is_some(), "xid");
                need(self.lsn.is_some(), "lsn");
                need(self.commit_lsn.is_some(), "commit_lsn");
                need(self.commit_time.is_some(), "commit_time");
            }
            Kind::Statement => {
                need(self.xid.is_some(), "xid");
                need(self.statement.is_some(), "statement");
                need(self.commit_lsn.is_some(), "commit_lsn");
                need(self.session.present(), "session");
            }
            Kind::AbortedStatement => {
                need(self.xid.is_some(), "xid");
                need(self.statement.is_some(), "statement");
            }
            Kind::TriggerError => {
                need(self.lsn.is_some(), "lsn");
            }
        }
        missing
    }

    /// Commit time (rows, commits) or event time (capture_started/stopped), in unix microseconds.
    pub fn time_micros(&self) -> Option<i64> {
        self.commit_time.as_deref().or(self.time.as_deref()).and_then(parse_time)
    }

    pub fn xid(&self) -> u64 {
        self.xid.unwrap_or(0)
    }
}

/// RFC 3339 to unix microseconds. The log's own form (`2026-11-26T15:04:05.123456Z`) takes a fast path
/// because it is parsed once per record; anything else RFC 3339 goes through chrono.
pub fn parse_time(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() == 27
        && b[4] == b'-'
        && b[7] == b'-'
        && b[10] == b'T'
        && b[13] == b':'
        && b[16] == b':'
        && b[19] == b'.'
        && b[26] == b'Z'
    {
        let num = |r: std::ops::Range<usize>| -> Option<i64> {
            let mut n = 0i64;
            for &c in &b[r] {
                if !c.is_ascii_digit() {
                    return None;
                }
                n = n * 10 + i64::from(c - b'0');
            }
            Some(n)
        };
        let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (h, mi, sec, us) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..26)?);
        if (1..=12).contains(&mo) && (1..=31).contains(&d) && h < 24 && mi < 60 && sec < 61 {
            let days = days_from_civil(y, mo, d);
            return Some(((days * 86_400 + h * 3600 + mi * 60 + sec) * 1_000_000) + us);
        }
        return None;
    }
    let t = chrono::DateTime::parse_from_rfc3339(s).ok()?;
    Some(t.timestamp_micros())
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::super::record::KeyValue;
    use super::super::tests::{del, session, T};
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_time("1970-01-01T00:00:00.000001Z"), Some(1));
        assert_eq!(
            parse_time("2026-11-26T15:04:05.123456Z"),
            Some(chrono::DateTime::parse_from_rfc3339("2026-11-26T15:04:05.123456Z").unwrap().timestamp_micros())
        );
        assert_eq!(parse_time("2026-11-26T16:04:05+01:00"), parse_time("2026-11-26T15:04:05.000000Z"));
        assert_eq!(parse_time("2026-13-26T15:04:05.123456Z"), None);
        assert_eq!(parse_time("nope"), None);
    }

    #[test]
    fn bad_lines() {
        for (line, want) in [
            ("{", "not a valid record"),
            (r#"{"type":"update"}"#, "unknown record type"),
            (r#"{"type":"delete","xid":"5"}"#, "invalid type"),
            (r#"{"type":"capture_stopped","time":"2026-11-26T15:00:00Z"}"#, "reason, last_lsn"),
            (r#"{"type":"capture_stopped","time":"yesterday","reason":"x","last_lsn":"0/1"}"#, "invalid time"),
            ("", "empty line"),
            ("[1,2]", "not a valid record"),
        ] {
            let e = parse_line(line.as_bytes()).unwrap_err();
            assert!(e.contains(want), "{line}: {e}");
        }
    }

    #[test]
    fn repeated_session_is_parsed_once_and_still_checked() {
        let s = session(7, "alice", "psql", "DELETE FROM t");
        let mut p = Parser::new();
        let mut scratch = Vec::new();
        let l1 = del(5, 1, T, "a", &s);
        let first = p.parse(l1.as_bytes(), &mut scratch).unwrap().1.session.value().cloned().unwrap();
        let mut scratch = Vec::new();
        let l2 = del(5, 1, T, "b", &s);
        let (_, r2) = p.parse(l2.as_bytes(), &mut scratch).unwrap();
        assert!(Rc::ptr_eq(r2.session.value().unwrap(), &first), "reused");
        assert_eq!(r2.key.value().unwrap().to_string(), "b");
        // The rest of the line is still parsed and checked.
        let bad = l2.replace("\"xid\":5", "\"xid\":\"5\"");
        let mut scratch = Vec::new();
        assert!(p.parse(bad.as_bytes(), &mut scratch).is_err());
        let missing = l2.replace("\"old\":null,", "");
        let mut scratch = Vec::new();
        let e = p.parse(missing.as_bytes(), &mut scratch).unwrap_err();
        assert!(e.contains("old"), "{e}");
        let broken = format!("{{\"type\":\"delete\",\"session\":{s}}}").replacen('{', "[", 1);
        let mut scratch = Vec::new();
        assert!(p.parse(broken.as_bytes(), &mut scratch).is_err());
        // Another session is parsed.
        let l3 = del(6, 2, T, "c", &session(8, "bob", "cron", "x"));
        let mut scratch = Vec::new();
        assert_eq!(p.parse(l3.as_bytes(), &mut scratch).unwrap().1.session.value().unwrap().pid, 8);
    }

    #[test]
    fn key_and_session_parse() {
        let s = session(7, "alice", "psql", "DELETE FROM t WHERE a = 'x\ny'");
        let l = del(5, 1, T, "report:1", &s);
        let (_, r) = parse_line(l.as_bytes()).unwrap();
        assert_eq!(r.key.value().unwrap().to_string(), "report:1");
        let sess = r.session.value().unwrap();
        assert_eq!(sess.pid, 7);
        assert_eq!(sess.query.as_deref(), Some("DELETE FROM t WHERE a = 'x\ny'"));
        assert_eq!(sess.client(), "10.0.0.5:57");
    }

    #[test]
    fn keys_that_are_not_utf8_show_their_bytes() {
        let l =
            del(5, 1, T, "x", "null").replace(r#"{"id":"x"}"#, r#"{"id":{"text_hex":"61ff"},"b":{"binary_hex":"00"}}"#);
        let (_, r) = parse_line(l.as_bytes()).unwrap();
        let k = r.key.value().unwrap();
        assert_eq!(k.0[0].1, KeyValue::TextHex("61ff".into()));
        assert_eq!(k.0[1].1, KeyValue::Other);
        assert_eq!(k.to_string(), "id=\\x61ff,b={…}");
        // A marker object with anything else is not taken for text.
        let l = del(5, 1, T, "x", "null").replace(r#"{"id":"x"}"#, r#"{"id":{"text_hex":"61","x":1}}"#);
        let (_, r) = parse_line(l.as_bytes()).unwrap();
        assert_eq!(r.key.value().unwrap().0[0].1, KeyValue::Other);
    }
}
