//! The tamper-evident chain: a running SHA-256 over the exact bytes of the log, written into the log.
//!
//! Every capture run is one *segment*, from the first byte of its `capture_started` line on. The hash
//! runs over the segment's bytes as they are written (newlines included) and is never reset within it.
//! Every record that is not a row (`delete`, `truncate`, `aborted_delete`, `aborted_truncate`, and a
//! transaction's `statement`/`aborted_statement` records, format 3) — that
//! is `capture_started`, `commit`, `abort`, `gap`, `capture_stopped` — ends with a last field
//!
//! ```text
//! …,"chain":"<64 lower-case hex digits>"}
//! ```
//!
//! whose value is SHA-256 of the segment's bytes from its first byte up to and including the
//! `"chain":"` of that very line: it covers the record itself, every line before it in the run, and
//! (through `capture_started`'s `chain_prev`, the head of the log before the run) every run before.
//! The value's own bytes and the rest of the line are hashed next, as part of what the next value
//! covers. The *head* of a log is its last chain value.
//!
//! Rows are covered by the chain value of the record that closes their transaction, so the lines of a
//! transaction are proven at once, by its commit. Lines after the last chain value (an unfinished
//! transaction) are covered by nothing yet; the log-tail repair on start cuts exactly those, never a
//! covered line, and records what it cut in the next `capture_started` (`repaired_tail`).
//!
//! Cost in the writer: one pass of SHA-256 over the bytes written (the bytes are in the CPU cache
//! already) and one extra finalisation per transaction, on the writer thread (`cargo bench --bench
//! chain`). Verification is `walwitness replay --verify` (`crate::read::verify`).
use sha2::{Digest, Sha256};

use super::record::Kind;

/// A chain value.
pub type Head = [u8; 32];

/// What precedes a chain value in its line: the hash covers everything up to and including this.
pub const FIELD: &[u8] = b",\"chain\":\"";

/// Bytes after the hashed part of a chained line (without its newline): the value and `"}`.
const TAIL_LEN: usize = 64 + 2;

/// The record types whose lines the chain value of their transaction's closing record covers.
const ROW_KINDS: [Kind; 6] =
    [Kind::Delete, Kind::Truncate, Kind::Statement, Kind::AbortedDelete, Kind::AbortedTruncate, Kind::AbortedStatement];

/// Whether the line (its first bytes suffice) is a row record, which the chain value of its
/// transaction's closing record covers instead of one of its own. Matches the writer's own output
/// byte for byte: every record starts with `{"type":"<type>"`. Called for every line written, so it
/// compares bytes and nothing more.
pub fn is_row_line(line: &[u8]) -> bool {
    ROW_KINDS.iter().any(|&k| opens_as(line, k))
}

/// Whether the line starts a capture run (and so a segment of the chain).
pub fn starts_run(line: &[u8]) -> bool {
    opens_as(line, Kind::CaptureStarted)
}

fn opens_as(line: &[u8], kind: Kind) -> bool {
    line.strip_prefix(b"{\"type\":\"")
        .and_then(|rest| rest.strip_prefix(kind.name().as_bytes()))
        .is_some_and(|rest| rest.first() == Some(&b'"'))
}

/// Splits a line (without its newline) that ends with a chain value into the hashed part (up to and
/// including `"chain":"`) and the value; `None` when the line carries none.
pub fn split_chained(line: &[u8]) -> Option<(&[u8], Head)> {
    let n = line.len();
    if n < FIELD.len() + TAIL_LEN || !line.ends_with(b"\"}") {
        return None;
    }
    let head = parse_hex(&line[n - TAIL_LEN..n - 2])?;
    let hashed = &line[..n - TAIL_LEN];
    hashed.ends_with(FIELD).then_some((hashed, head))
}

/// Lower-case hex of a chain value, as the log writes it.
pub fn to_hex(h: &Head) -> String {
    hex::encode(h)
}

/// A chain value from its 64 lower-case hex digits (the log's form only: upper case is not it).
pub fn parse_hex(s: &[u8]) -> Option<Head> {
    if s.len() != 64 || !s.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut h = [0u8; 32];
    hex::decode_to_slice(s, &mut h).ok()?;
    Some(h)
}

/// The value a chained line carries, given the hash state of the segment before the line and the
/// line's hashed part (see [`split_chained`]).
pub fn value_after(state: &Sha256, hashed: &[u8]) -> (Sha256, Head) {
    let mut s = state.clone();
    s.update(hashed);
    let v = s.clone().finalize().into();
    (s, v)
}

#[derive(Clone, Default)]
struct State {
    /// The running hash of the current segment; `None` before any `capture_started` (the writer is
    /// then passing through bytes that are not a capture's: only unit tests do that).
    hasher: Option<Sha256>,
    head: Option<Head>,
}

/// The writer's side: adds chain values to the records it writes.
#[derive(Default)]
pub struct Chainer {
    cur: State,
    /// The state at the last transaction boundary, for a rollback of the file to there.
    boundary: State,
    /// Bytes of a line whose end has not arrived yet (the capture hands over whole lines; this only
    /// keeps a split line correct).
    carry: Vec<u8>,
}

impl Chainer {
    pub fn new() -> Self {
        Self::default()
    }

    /// The last chain value written.
    pub fn head(&self) -> Option<Head> {
        self.cur.head
    }

    /// Appends to `out` the bytes to write for `data`: the same lines, a chain value added to every
    /// record that is not a row. An unterminated last line is kept until its end arrives.
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>) {
        out.reserve(data.len() + 128);
        let mut data = data;
        let owned;
        if !self.carry.is_empty() {
            let Some(nl) = memchr::memchr(b'\n', data) else {
                self.carry.extend_from_slice(data);
                return;
            };
            let mut line = std::mem::take(&mut self.carry);
            line.extend_from_slice(&data[..=nl]);
            owned = line;
            self.lines(&owned, out);
            data = &data[nl + 1..];
        }
        let end = memchr::memrchr(b'\n', data).map_or(0, |p| p + 1);
        self.lines(&data[..end], out);
        self.carry.extend_from_slice(&data[end..]);
    }

    /// Complete lines, each ending with its newline.
    fn lines(&mut self, data: &[u8], out: &mut Vec<u8>) {
        // Bytes from `from` on are passed through (and hashed) unchanged until a line needs a value.
        let mut from = 0;
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', data) {
            let line = &data[start..=nl];
            let line_start = start;
            start = nl + 1;
            if starts_run(line) {
                self.pass(&data[from..line_start], out);
                from = line_start;
                self.cur.hasher = Some(Sha256::new());
            }
            if self.cur.hasher.is_none() || is_row_line(line) || !line.ends_with(b"}\n") {
                continue;
            }
            // Everything before this line's closing brace, then the field, then the value.
            let close = nl - 1;
            self.pass(&data[from..close], out);
            let hasher = self.cur.hasher.as_mut().expect("checked");
            hasher.update(FIELD);
            let value: Head = hasher.clone().finalize().into();
            let mut hex = [0u8; 64];
            // 32 bytes always fit 64 hex digits.
            let _ = hex::encode_to_slice(value, &mut hex);
            hasher.update(hex);
            hasher.update(b"\"}\n");
            out.extend_from_slice(FIELD);
            out.extend_from_slice(&hex);
            out.extend_from_slice(b"\"}\n");
            self.cur.head = Some(value);
            from = nl + 1;
        }
        self.pass(&data[from..], out);
    }

    fn pass(&mut self, bytes: &[u8], out: &mut Vec<u8>) {
        if let Some(h) = self.cur.hasher.as_mut() {
            h.update(bytes);
        }
        out.extend_from_slice(bytes);
    }

    /// The file is at a transaction boundary: a rollback returns here.
    pub fn mark_boundary(&mut self) {
        self.boundary = self.cur.clone();
    }

    /// The file was cut back to the last boundary: so is the hash.
    pub fn rollback(&mut self) {
        self.cur = self.boundary.clone();
        self.carry.clear();
    }

    /// The bytes written stay (standard output cannot take them back): only a split line still held
    /// is dropped, as it was never written.
    pub fn drop_carry(&mut self) {
        self.carry.clear();
    }
}

impl std::fmt::Debug for Chainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chainer").field("head", &self.head().map(|h| to_hex(&h))).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CS: &[u8] = b"{\"type\":\"capture_started\",\"chain_prev\":null}\n";
    const DEL: &[u8] = b"{\"type\":\"delete\",\"xid\":7}\n";
    const COMMIT: &[u8] = b"{\"type\":\"commit\",\"xid\":7}\n";

    fn chained(input: &[u8]) -> Vec<u8> {
        let mut c = Chainer::new();
        let mut out = Vec::new();
        c.feed(input, &mut out);
        out
    }

    /// Recomputes every chain value from the bytes, the verifier's way.
    fn check(log: &[u8]) -> Vec<Head> {
        let mut state: Option<Sha256> = None;
        let mut heads = Vec::new();
        for line in log.split_inclusive(|&b| b == b'\n') {
            if starts_run(line) {
                state = Some(Sha256::new());
            }
            let body = line.strip_suffix(b"\n").unwrap();
            let s = state.as_mut().unwrap();
            match split_chained(body) {
                Some((hashed, v)) => {
                    let (mut next, want) = value_after(s, hashed);
                    assert_eq!(v, want, "{}", String::from_utf8_lossy(line));
                    next.update(&line[hashed.len()..]);
                    *s = next;
                    heads.push(v);
                }
                None => {
                    assert!(is_row_line(line), "{}", String::from_utf8_lossy(line));
                    s.update(line);
                }
            }
        }
        heads
    }

    #[test]
    fn records_but_rows_get_a_value_that_checks() {
        let log = [CS, DEL, DEL, COMMIT].concat();
        let out = chained(&log);
        let text = String::from_utf8(out.clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4);
        assert!(lines[0].starts_with("{\"type\":\"capture_started\",\"chain_prev\":null,\"chain\":\""));
        assert_eq!(lines[1], "{\"type\":\"delete\",\"xid\":7}");
        assert!(lines[3].starts_with("{\"type\":\"commit\",\"xid\":7,\"chain\":\""), "{}", lines[3]);
        for l in &lines {
            serde_json::from_str::<serde_json::Value>(l).unwrap();
        }
        let heads = check(&out);
        assert_eq!(heads.len(), 2);
        // The first value is SHA-256 of the line up to `"chain":"`.
        let first = Sha256::digest(&lines[0].as_bytes()[..lines[0].len() - TAIL_LEN]);
        assert_eq!(heads[0], <Head>::from(first));
    }

    #[test]
    fn split_anywhere_gives_the_same_bytes() {
        let log = [CS, DEL, COMMIT, DEL, DEL, COMMIT].concat();
        let whole = chained(&log);
        for cut in 0..log.len() {
            let mut c = Chainer::new();
            let mut out = Vec::new();
            c.feed(&log[..cut], &mut out);
            c.feed(&log[cut..], &mut out);
            assert_eq!(out, whole, "split at {cut}");
        }
    }

    #[test]
    fn rollback_returns_to_the_boundary_state() {
        let mut c = Chainer::new();
        let mut out = Vec::new();
        c.feed(&[CS, DEL, COMMIT].concat(), &mut out);
        c.mark_boundary();
        let mut dropped = Vec::new();
        c.feed(&[DEL, DEL].concat(), &mut dropped);
        c.rollback();
        c.feed(&[DEL, COMMIT].concat(), &mut out);
        assert_eq!(out, chained(&[CS, DEL, COMMIT, DEL, COMMIT].concat()));
    }

    #[test]
    fn each_run_starts_a_segment() {
        let out = chained(&[CS, DEL, COMMIT, CS, DEL, COMMIT].concat());
        assert_eq!(check(&out).len(), 4);
        let half = chained(&[CS, DEL, COMMIT].concat());
        assert!(out.starts_with(&half));
        assert!(out.ends_with(&half));
    }

    #[test]
    fn before_any_run_bytes_pass_through() {
        assert_eq!(chained(b"a\nb\n"), b"a\nb\n");
    }

    #[test]
    fn hex_forms() {
        assert!(parse_hex(&[b'a'; 64]).is_some());
        assert!(parse_hex(&[b'A'; 64]).is_none());
        assert!(parse_hex(&[b'a'; 63]).is_none());
        let h = [7u8; 32];
        assert_eq!(parse_hex(to_hex(&h).as_bytes()), Some(h));
        assert!(split_chained(b"{\"chain\":\"x\"}").is_none());
    }
}
