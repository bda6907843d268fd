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

    pub const T: &str = "2026-11-26T15:01:02.000003Z";

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
}
