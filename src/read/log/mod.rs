//! Reading a log: opening it (plain, gzip or zstd, told apart by magic bytes), splitting it into lines
//! without ever mistaking a half-written last line for a record, typed borrowed records, and the
//! validator that checks the format's rules (see `crate::sink::record`) line by line.
//!
//! Everything here is streaming: the validator holds the state of one open transaction and the last
//! commit LSN of the current capture run, never the log.
//!
//! `input` opens (and decompresses), `lines` splits into lines, `record` is the typed record, `parse`
//! checks one line's fields, `validate` the rules between lines.

mod input;
mod lines;
mod parse;
mod record;
mod validate;

pub use input::{decompressing, open_input, Compression};
pub use lines::{block_lines, read_chunks, size_text, too_long, Chunk, LineReader, LineTooLong, DEFAULT_MAX_LINE};
pub use parse::{parse_line, parse_time, Kind, Parser};
pub use record::{Field, Key, KeyValue, Present, Record, RelName, RelRef, SessionRef};
pub use validate::{Action, Damage, Validator, Verdict};

#[cfg(test)]
pub(crate) mod tests {
    use std::io;
    use std::rc::Rc;

    use super::*;

    pub const CS: &str = r#"{"type":"capture_started","time":"2026-11-26T15:00:00.000000Z","slot":"s","publication":"p","tables":["public.t"],"start_lsn":"0/10","server_version":"15","system_identifier":"1","database":"postgres","walwitness_version":"0.1.0","format_version":1,"proto_version":3}"#;

    pub fn session(pid: i64, user: &str, app: &str, query: &str) -> String {
        format!(
            r#"{{"attributed_by":"trigger","pid":{pid},"backend_start":"2026-11-26T14:00:00.000000Z","user":"{user}","application_name":"{app}","client_addr":"10.0.0.5","client_port":5{pid},"query":{q},"query_truncated":false,"xact_start":null}}"#,
            q = serde_json::to_string(query).unwrap()
        )
    }

    pub fn del(xid: u64, lsn: u64, time: &str, key: &str, session: &str) -> String {
        format!(
            r#"{{"type":"delete","table":"public.t","xid":{xid},"lsn":"0/{:X}","commit_lsn":"0/{:X}","commit_time":"{time}","origin":null,"key":{{"id":"{key}"}},"old":null,"session":{session}}}"#,
            lsn * 16 - 8,
            lsn * 16
        )
    }

    /// Format 3: the row-level session of pid 7 (alice, psql) naming statement 1, and that statement's
    /// record in xid 5 carrying `full`.
    pub const SMALL_SESSION: &str = r#"{"attributed_by":"trigger","pid":7,"backend_start":null,"user":"alice","application_name":"psql","client_addr":null,"client_port":null,"statement":1}"#;

    pub fn statement_record(time: &str, full: &str) -> String {
        format!(
            r#"{{"type":"statement","xid":5,"statement":1,"lsn":"0/1","commit_lsn":"0/1","commit_time":"{time}","origin":null,"session":{full}}}"#
        )
    }

    pub fn commit(xid: u64, lsn: u64, time: &str, deletes: u64, session: &str) -> String {
        format!(
            r#"{{"type":"commit","xid":{xid},"commit_lsn":"0/{:X}","end_lsn":"0/{:X}","commit_time":"{time}","origin":null,"deletes":{deletes},"truncates":0,"session":{session},"attribution":"trigger"}}"#,
            lsn * 16,
            lsn * 16 + 8
        )
    }

    fn run(lines: &[String]) -> (Vec<Action>, Vec<Damage>) {
        let mut v = Validator::new();
        let mut actions = Vec::new();
        let mut damages = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            let p = parse_line(l.as_bytes());
            let verdict = v.check(i as u64 + 1, p.as_ref().map(|(k, r)| (*k, r)).map_err(Clone::clone));
            actions.push(verdict.action);
            damages.extend(verdict.damage);
        }
        damages.extend(v.finish(lines.len() as u64, 0));
        (actions, damages)
    }

    const T: &str = "2026-11-26T15:01:02.000003Z";

    #[test]
    fn valid_log_has_no_damage() {
        let s = session(7, "alice", "psql", "DELETE FROM t");
        let lines = vec![
            CS.to_owned(),
            del(5, 1, T, "a", &s),
            del(5, 1, T, "b", &s),
            commit(5, 1, T, 2, &s),
            del(6, 2, T, "c", "null"),
            commit(6, 2, T, 1, "null"),
        ];
        let (actions, damages) = run(&lines);
        assert!(damages.is_empty(), "{damages:?}");
        use Action::*;
        assert_eq!(actions, [Boundary, Row, Row, Commit, Row, Commit]);
    }

    /// A format-2 delete of `schema`.`name` (with `table` joining them as the capture writes it).
    pub fn del2(xid: u64, lsn: u64, schema: &str, name: &str, key: &str) -> String {
        del(xid, lsn, T, key, "null").replacen(
            r#""table":"public.t","#,
            &format!(r#""table":"{schema}.{name}","schema":"{schema}","name":"{name}","#),
            1,
        )
    }

    pub fn renamed(xid: u64, lsn: u64, from: (&str, &str), to: (&str, &str)) -> String {
        format!(
            r#"{{"type":"relation_renamed","oid":16384,"table":"{}.{}","schema":"{}","name":"{}","previous_table":"{}.{}","previous_schema":"{}","previous_name":"{}","xid":{xid},"lsn":"0/{:X}","commit_lsn":"0/{:X}","commit_time":"{T}","origin":null}}"#,
            to.0,
            to.1,
            to.0,
            to.1,
            from.0,
            from.1,
            from.0,
            from.1,
            lsn * 16 - 8,
            lsn * 16
        )
    }

    #[test]
    fn relation_renamed_belongs_to_its_transaction_and_is_not_counted() {
        let lines = vec![
            renamed(5, 1, ("public", "t"), ("public", "t_x")),
            del2(5, 1, "public", "t_x", "a"),
            commit(5, 1, T, 1, "null"),
            // Cut before its rows' commit: it is dropped with them.
            renamed(6, 2, ("public", "t_x"), ("public", "t")),
        ];
        let (actions, damages) = run(&lines);
        use Action::*;
        assert_eq!(actions, [Row, Row, Commit, Row]);
        assert_eq!(damages.len(), 1, "{damages:?}");
        assert_eq!(damages[0].aborted_rows, 1);
        let (kind, rec) = parse_line(lines[0].as_bytes()).unwrap();
        assert_eq!(kind, Kind::RelationRenamed);
        assert_eq!(rec.named_relations().unwrap(), [("public", "t_x"), ("public", "t")]);
        let bad = lines[0].replace(r#""previous_name":"t","#, "");
        assert!(parse_line(bad.as_bytes()).unwrap_err().contains("previous_name"));
    }

    #[test]
    fn rows_without_commit_are_damage() {
        let s = "null";
        let lines = vec![del(5, 1, T, "a", s), CS.to_owned(), del(6, 2, T, "b", s)];
        let (_, damages) = run(&lines);
        assert_eq!(damages.len(), 2);
        assert_eq!(damages[0].line, 2);
        assert_eq!(damages[0].aborted_rows, 1);
        assert!(damages[0].message.contains("xid 5"), "{}", damages[0].message);
        assert!(damages[1].message.contains("xid 6"));
    }

    #[test]
    fn lsn_order_and_counts() {
        let s = "null";
        let lines = vec![
            del(5, 2, T, "a", s),
            commit(5, 2, T, 1, s),
            del(6, 1, T, "b", s),
            commit(6, 1, T, 2, s),
            CS.to_owned(),
            del(7, 1, T, "c", s),
            commit(7, 1, T, 1, s),
        ];
        let (_, damages) = run(&lines);
        assert_eq!(damages.len(), 1, "{damages:?}");
        assert_eq!(damages[0].line, 4);
        assert!(damages[0].message.contains("not after"));
        assert!(damages[0].message.contains("counts 2 deletes"));
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
    fn commit_without_rows_and_wrong_xid() {
        let s = "null";
        let lines = vec![commit(5, 1, T, 1, s), del(6, 2, T, "a", s), commit(7, 2, T, 1, s)];
        let (actions, damages) = run(&lines);
        assert_eq!(actions, [Action::Skip, Action::Row, Action::Skip]);
        assert_eq!(damages.len(), 2);
        assert_eq!(damages[1].aborted_rows, 1);
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
    fn compressed_inputs() {
        let text = format!("{CS}\n{CS}\n");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        use std::io::Write;
        gz.write_all(text.as_bytes()).unwrap();
        let gz = gz.finish().unwrap();
        let zst = ruzstd::encoding::compress_to_vec(text.as_bytes(), ruzstd::encoding::CompressionLevel::Fastest);
        // Two zstd frames back to back are one stream.
        let mut zst2 = zst.clone();
        zst2.extend_from_slice(&zst);
        for (data, comp, lines) in [
            (text.as_bytes().to_vec(), Compression::Plain, 2),
            (gz, Compression::Gzip, 2),
            (zst, Compression::Zstd, 2),
            (zst2, Compression::Zstd, 4),
        ] {
            let (r, c) = decompressing(io::Cursor::new(data)).unwrap();
            assert_eq!(c, comp);
            let mut lr = LineReader::new(r);
            let mut n = 0;
            while let Some(l) = lr.next_line().unwrap() {
                assert!(parse_line(l).is_ok());
                n += 1;
            }
            assert_eq!(n, lines, "{comp:?}");
        }
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
