//! Reading a log: opening it (plain, gzip or zstd, told apart by magic bytes), splitting it into lines
//! without ever mistaking a half-written last line for a record, typed borrowed records, and the
//! validator that checks the format's rules (see `crate::sink::record`) line by line.
//!
//! Everything here is streaming: the validator holds the state of one open transaction and the last
//! commit LSN of the current capture run, never the log.
use std::borrow::Cow;
use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;
use std::rc::Rc;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;

use crate::protocol::Lsn;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// How an input was stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Plain,
    Gzip,
    Zstd,
}

/// Opens `path` (`-`: standard input) and undoes gzip or zstd compression if its first bytes say so.
pub fn open_input(path: &str) -> io::Result<(Box<dyn BufRead + Send>, Compression)> {
    let raw: Box<dyn Read + Send> =
        if path == "-" { Box::new(io::stdin()) } else { Box::new(File::open(Path::new(path))?) };
    decompressing(BufReader::with_capacity(256 * 1024, raw))
}

/// Wraps a reader in the decoder its magic bytes call for.
pub fn decompressing<R: BufRead + Send + 'static>(mut r: R) -> io::Result<(Box<dyn BufRead + Send>, Compression)> {
    let head = fill_at_least(&mut r, 4)?;
    if head.starts_with(&GZIP_MAGIC) {
        // Multi-member: `cat a.gz b.gz` and rotated logs compressed piecewise are still one log.
        let d = flate2::bufread::MultiGzDecoder::new(r);
        return Ok((Box::new(BufReader::with_capacity(256 * 1024, d)), Compression::Gzip));
    }
    if head.starts_with(&ZSTD_MAGIC) {
        let d = ZstdFrames::new(r)?;
        return Ok((Box::new(BufReader::with_capacity(256 * 1024, d)), Compression::Zstd));
    }
    Ok((Box::new(r), Compression::Plain))
}

/// Peeks at up to `n` bytes without consuming them (a short read is fine: a tiny file is still a file).
fn fill_at_least<R: BufRead>(r: &mut R, n: usize) -> io::Result<Vec<u8>> {
    // BufReader's buffer may hold fewer than n bytes after one fill even when the file has more, but for
    // magic bytes at the very start of a fresh reader one fill returns min(len, capacity) bytes.
    let buf = r.fill_buf()?;
    Ok(buf[..buf.len().min(n)].to_vec())
}

/// A zstd stream of one or more concatenated frames (`zstd` writes one per file; `cat` joins them).
/// The first frame header is read at the first `read`, not at open: damaged zstd data is then a
/// damaged log at line 1 (exit 14) like any later damage, not a file that cannot be opened.
struct ZstdFrames<R: BufRead> {
    src: Option<R>,
    dec: Option<ruzstd::decoding::StreamingDecoder<R, ruzstd::decoding::FrameDecoder>>,
}

impl<R: BufRead> ZstdFrames<R> {
    fn new(r: R) -> io::Result<Self> {
        Ok(ZstdFrames { src: Some(r), dec: None })
    }
}

fn zstd_err(e: impl fmt::Display) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("damaged zstd data: {e}"))
}

impl<R: BufRead> Read for ZstdFrames<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(src) = self.src.take() {
            self.dec = Some(ruzstd::decoding::StreamingDecoder::new(src).map_err(zstd_err)?);
        }
        loop {
            let Some(dec) = self.dec.as_mut() else {
                return Ok(0);
            };
            let n = dec.read(buf)?;
            if n > 0 || buf.is_empty() {
                return Ok(n);
            }
            // End of a frame: another one may follow.
            let Some(d) = self.dec.take() else {
                return Ok(0);
            };
            let (mut src, frame) = d.into_parts();
            if src.fill_buf()?.is_empty() {
                return Ok(0);
            }
            self.dec = Some(ruzstd::decoding::StreamingDecoder::new_with_decoder(src, frame).map_err(zstd_err)?);
        }
    }
}

/// The longest line the readers accept by default (`--max-line-length`): far above any record
/// walwitness writes for ordinary rows, and what bounds the readers' memory whatever the input.
pub const DEFAULT_MAX_LINE: usize = 64 << 20;

/// A line longer than the limit: the input is not a log walwitness wrote (or a row was enormous).
#[derive(Debug)]
pub struct LineTooLong {
    /// Bytes of the line read before giving up (at least `limit + 1`).
    pub bytes: usize,
    pub limit: usize,
}

impl fmt::Display for LineTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a line longer than the limit of {} (over {} bytes before its newline): not a record walwitness wrote \
             unless a deleted row was that large; to read it anyway, raise --max-line-length",
            size_text(self.limit),
            self.limit
        )
    }
}

impl std::error::Error for LineTooLong {}

/// The `LineTooLong` inside an I/O error, if that is what it is.
pub fn too_long(e: &io::Error) -> Option<&LineTooLong> {
    e.get_ref().and_then(|i| i.downcast_ref::<LineTooLong>())
}

/// `64 MiB`, `512 kiB`, `100 bytes`.
pub fn size_text(n: usize) -> String {
    if n >= 1 << 20 && n.is_multiple_of(1 << 20) {
        format!("{} MiB", n >> 20)
    } else if n >= 1 << 10 && n.is_multiple_of(1 << 10) {
        format!("{} kiB", n >> 10)
    } else {
        format!("{n} bytes")
    }
}

/// What the chunk reader thread hands over.
pub enum Chunk {
    /// Complete lines, the last one ending with its newline.
    Lines(Vec<u8>),
    /// The input ended with these bytes of an unterminated line.
    Incomplete(usize),
    /// The next line is longer than the limit (this many bytes read without a newline); reading stopped.
    TooLong(usize),
    Err(io::Error),
}

/// Reads `input` on its own thread in blocks of whole lines, so that reading (and decompressing)
/// overlaps with parsing on the other core.
///
/// Memory is bounded whatever the input: a line (complete or not) is never held beyond `max_line`
/// bytes (then `Chunk::TooLong` ends the stream), and no more than a few blocks are handed over and
/// not yet given back. **Every `Chunk::Lines` block must be sent back** on the returned sender once
/// used (or the sender dropped): the reader waits for them when too many bytes are out. Time is linear
/// in the input: each byte is searched for a newline once (a long line used to be searched again at
/// every read, quadratic: 5.4 s for a 128 MB line).
pub fn read_chunks(
    mut input: Box<dyn BufRead + Send>,
    max_line: usize,
) -> (std::sync::mpsc::Receiver<Chunk>, std::sync::mpsc::Sender<Vec<u8>>) {
    const BLOCK: usize = 128 * 1024;
    const STEP: usize = 64 * 1024;
    /// Bytes handed over and not yet given back, beyond which the reader waits (plus one block).
    const OUT_MAX: usize = 4 * BLOCK;
    let (tx, rx) = std::sync::mpsc::sync_channel(4);
    // Blocks come back for reuse: fresh megabyte allocations would each cost page faults.
    let (back_tx, back_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    std::thread::spawn(move || {
        let mut carry: Vec<u8> = Vec::new();
        let mut spare: Vec<Vec<u8>> = Vec::new();
        let mut out = 0usize;
        // A block given back: no longer out; kept for reuse unless a long line made it big.
        let back = |b: Vec<u8>, out: &mut usize, spare: &mut Vec<Vec<u8>>| {
            *out = out.saturating_sub(b.len());
            if b.capacity() <= 2 * BLOCK && spare.len() < 2 {
                spare.push(b);
            }
        };
        loop {
            while let Ok(b) = back_rx.try_recv() {
                back(b, &mut out, &mut spare);
            }
            let mut buf = spare.pop().unwrap_or_else(|| Vec::with_capacity(BLOCK + STEP));
            buf.clear();
            // The carry is the start of a line: it holds no newline.
            buf.append(&mut carry);
            let mut searched = buf.len();
            let mut found = false;
            let mut eof = false;
            // Fill to about BLOCK bytes, and further only until a line ends (long lines stay whole).
            while buf.len() < BLOCK || !found {
                match input.fill_buf() {
                    Ok([]) => {
                        eof = true;
                        break;
                    }
                    Ok(b) => {
                        let n = b.len().min(BLOCK.saturating_sub(buf.len()).max(STEP));
                        buf.extend_from_slice(&b[..n]);
                        input.consume(n);
                        if !found {
                            // Only the new bytes are searched: linear however long the line.
                            found = memchr::memchr(b'\n', &buf[searched..]).is_some();
                            searched = buf.len();
                            if !found && buf.len() > max_line {
                                let _ = tx.send(Chunk::TooLong(buf.len()));
                                return;
                            }
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        // Hand on the complete lines read before the failure, then the failure.
                        let keep = memchr::memrchr(b'\n', &buf).map_or(0, |p| p + 1);
                        buf.truncate(keep);
                        let _ = tx.send(Chunk::Lines(buf));
                        let _ = tx.send(Chunk::Err(e));
                        return;
                    }
                }
            }
            let keep = memchr::memrchr(b'\n', &buf).map_or(0, |p| p + 1);
            carry.extend_from_slice(&buf[keep..]);
            buf.truncate(keep);
            if !buf.is_empty() {
                while out > OUT_MAX {
                    match back_rx.recv() {
                        Ok(b) => back(b, &mut out, &mut spare),
                        Err(_) => return, // the consumer stopped
                    }
                }
                out += buf.len();
                if tx.send(Chunk::Lines(buf)).is_err() {
                    return; // the consumer stopped (damage, closed pipe)
                }
            }
            if eof {
                let _ = tx.send(Chunk::Incomplete(carry.len()));
                return;
            }
        }
    });
    (rx, back_tx)
}

/// Splits a block of complete lines (as sent by [`read_chunks`]) into lines without their newline
/// (and without a CR before it).
pub fn block_lines(block: &[u8]) -> impl Iterator<Item = &[u8]> {
    // memchr's SIMD search: a byte-at-a-time split was a fifth of `report`'s time.
    let mut start = 0;
    memchr::memchr_iter(b'\n', block).map(move |end| {
        let line = &block[start..end];
        start = end + 1;
        line.strip_suffix(b"\r").unwrap_or(line)
    })
}

/// Splits a byte stream into lines. A last line without its newline is *incomplete*, not a record:
/// the writer may be in the middle of it (`tail -f`), or it was cut by a crash (`replay` reports it).
/// A line longer than the limit is an error ([`LineTooLong`]): memory stays bounded.
pub struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    /// Number of the last complete line returned (1-based).
    line_no: u64,
    /// Bytes of complete lines returned so far.
    consumed: u64,
    max_line: usize,
}

impl<R: BufRead> LineReader<R> {
    pub fn new(inner: R) -> Self {
        Self::with_limit(inner, DEFAULT_MAX_LINE)
    }

    /// A reader refusing lines longer than `max_line` bytes (before the newline).
    pub fn with_limit(inner: R, max_line: usize) -> Self {
        LineReader { inner, buf: Vec::with_capacity(4096), line_no: 0, consumed: 0, max_line }
    }

    /// The next complete line without its newline, or `Ok(None)` when there is none yet. The bytes of an
    /// incomplete last line are kept, so calling again after the file grew continues that line.
    pub fn next_line(&mut self) -> io::Result<Option<&[u8]>> {
        Ok(if self.advance()? { Some(self.current()) } else { None })
    }

    /// Reads the next complete line; `false` when there is none yet (see `next_line`).
    pub fn advance(&mut self) -> io::Result<bool> {
        if self.buf.last() == Some(&b'\n') {
            self.buf.clear();
        }
        loop {
            let avail = match self.inner.fill_buf() {
                Ok(a) => a,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if avail.is_empty() {
                return Ok(false);
            }
            let (n, done) = match memchr::memchr(b'\n', avail) {
                Some(i) => (i + 1, true),
                None => (avail.len(), false),
            };
            let line_len = self.buf.len() + n - usize::from(done);
            if line_len > self.max_line {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    LineTooLong { bytes: line_len, limit: self.max_line },
                ));
            }
            self.buf.extend_from_slice(&avail[..n]);
            self.inner.consume(n);
            if done {
                self.line_no += 1;
                self.consumed += self.buf.len() as u64;
                return Ok(true);
            }
        }
    }

    /// The line `advance` found, without its newline (and without a CR before it: a log copied
    /// through a Windows tool is still the same log).
    pub fn current(&self) -> &[u8] {
        let Some(mut end) = self.buf.len().checked_sub(1) else {
            return &[];
        };
        if self.buf.last() != Some(&b'\n') {
            return &[];
        }
        if end > 0 && self.buf[end - 1] == b'\r' {
            end -= 1;
        }
        &self.buf[..end]
    }

    /// Bytes of an incomplete last line read so far (0: the input ended at a line boundary).
    pub fn pending(&self) -> usize {
        if self.buf.last() == Some(&b'\n') {
            0
        } else {
            self.buf.len()
        }
    }

    pub fn line_no(&self) -> u64 {
        self.line_no
    }

    /// Bytes of complete lines read.
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }
}

/// A field that may be absent, `null`, or a value: the format requires some fields to be present even
/// when null (`session`, `key`, `old`, `origin`), so "missing" must stay distinguishable from "null".
#[derive(Debug, Clone, Default, PartialEq)]
pub enum Field<T> {
    #[default]
    Missing,
    Null,
    Value(T),
}

impl<T> Field<T> {
    pub fn value(&self) -> Option<&T> {
        match self {
            Field::Value(v) => Some(v),
            _ => None,
        }
    }
    pub fn present(&self) -> bool {
        !matches!(self, Field::Missing)
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Field<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Option::<T>::deserialize(d)? {
            Some(v) => Field::Value(v),
            None => Field::Null,
        })
    }
}

/// A present field whose content is not needed (only its presence is checked).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Present(pub bool);

impl<'de> Deserialize<'de> for Present {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        IgnoredAny::deserialize(d)?;
        Ok(Present(true))
    }
}

/// A key column's value as the readers need it: text, SQL NULL, text that is not UTF-8 (the hex of
/// `{"text_hex":"…"}`), or another marker object (binary/TOAST).
#[derive(Debug, Clone, PartialEq)]
pub enum KeyValue<'a> {
    Text(Cow<'a, str>),
    Null,
    TextHex(String),
    Other,
}

impl fmt::Display for KeyValue<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyValue::Text(s) => f.write_str(s),
            KeyValue::Null => f.write_str("NULL"),
            // PostgreSQL's bytea notation, as the log writes names that are not UTF-8.
            KeyValue::TextHex(h) => write!(f, "\\x{h}"),
            KeyValue::Other => f.write_str("{…}"),
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for KeyValue<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = KeyValue<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key value (string, null or object)")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(KeyValue::Text(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(KeyValue::Text(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(KeyValue::Text(Cow::Owned(v)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(KeyValue::Null)
            }
            fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
                Ok(KeyValue::Null)
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut hex = None;
                let mut fields = 0;
                while let Some(k) = m.next_key::<Cow<'de, str>>()? {
                    fields += 1;
                    if k == "text_hex" {
                        hex = m.next_value::<Option<String>>()?;
                    } else {
                        m.next_value::<IgnoredAny>()?;
                    }
                }
                Ok(match hex {
                    Some(h) if fields == 1 => KeyValue::TextHex(h),
                    _ => KeyValue::Other,
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// The `key` object, in the order the log wrote its columns.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Key<'a>(pub Vec<(Cow<'a, str>, KeyValue<'a>)>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a key object (column → value)")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut cols = Vec::with_capacity(2);
                while let Some((k, v)) = m.next_entry::<Cow<'de, str>, KeyValue<'de>>()? {
                    cols.push((k, v));
                }
                Ok(Key(cols))
            }
        }
        d.deserialize_map(V)
    }
}

impl fmt::Display for Key<'_> {
    /// One column: its value. Several: `col=value` joined by commas.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let [(_, v)] = self.0.as_slice() {
            return write!(f, "{v}");
        }
        for (i, (c, v)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{c}={v}")?;
        }
        Ok(())
    }
}

/// The `session` object, as far as the readers need it (see `crate::attribution::session::Session`).
/// Owned, because it is parsed once and shared by every row of a transaction (see [`Parser`]).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct SessionRef {
    #[serde(default)]
    pub attributed_by: Option<String>,
    pub pid: i64,
    #[serde(default)]
    pub backend_start: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub application_name: Option<String>,
    #[serde(default)]
    pub client_addr: Option<String>,
    #[serde(default)]
    pub client_port: Option<i64>,
    #[serde(default)]
    pub query: Option<String>,
    #[serde(default)]
    pub query_truncated: Option<bool>,
    /// Format 2: the number of the transaction's `statement` record that holds the query and times.
    #[serde(default)]
    pub statement: Option<u64>,
}

impl SessionRef {
    /// `addr:port`, `[v6]:port`, or "local socket" for Unix-socket clients.
    pub fn client(&self) -> String {
        match (&self.client_addr, self.client_port) {
            (None, _) => "local socket".to_owned(),
            (Some(a), Some(p)) if a.contains(':') => format!("[{a}]:{p}"),
            (Some(a), Some(p)) => format!("{a}:{p}"),
            (Some(a), None) => a.to_string(),
        }
    }
}

/// Every record type, read leniently (unknown fields ignored: the format only ever adds fields) and
/// checked by [`Record::check`]. Borrows from the line wherever the JSON needs no unescaping.
#[derive(Debug, Default, Deserialize)]
pub struct Record<'a> {
    #[serde(rename = "type", borrow)]
    pub kind: Cow<'a, str>,
    #[serde(borrow, default)]
    pub table: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub tables: Option<Vec<Cow<'a, str>>>,
    /// The watched table's schema and name (format version 2; `table` joins them ambiguously).
    #[serde(borrow, default)]
    pub schema: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub name: Option<Cow<'a, str>>,
    /// The partition a deleted row was in, when it was not in the watched table itself.
    #[serde(borrow, default)]
    pub partition: Option<RelName<'a>>,
    /// A truncate's watched relations (format version 2).
    #[serde(borrow, default)]
    pub relations: Option<Vec<RelRef<'a>>>,
    /// relation_renamed: the name the log showed before.
    #[serde(borrow, default)]
    pub previous_table: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub previous_schema: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub previous_name: Option<Cow<'a, str>>,
    #[serde(default)]
    pub xid: Option<u64>,
    #[serde(default)]
    pub lsn: Option<Lsn>,
    #[serde(default)]
    pub commit_lsn: Option<Lsn>,
    #[serde(default)]
    pub end_lsn: Option<Lsn>,
    #[serde(default)]
    pub start_lsn: Option<Lsn>,
    #[serde(default)]
    pub last_lsn: Option<Lsn>,
    #[serde(default)]
    pub from_lsn: Option<Lsn>,
    #[serde(default)]
    pub to_lsn: Option<Lsn>,
    #[serde(borrow, default)]
    pub commit_time: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub time: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub origin: Field<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub key: Field<Key<'a>>,
    #[serde(default)]
    pub old: Present,
    /// The raw `session` JSON: parsed by [`Parser`] only when it differs from the previous line's.
    #[serde(rename = "session", borrow, default)]
    pub session_raw: Field<&'a serde_json::value::RawValue>,
    /// The parsed session, filled in by [`Parser::parse`].
    #[serde(skip)]
    pub session: Field<Rc<SessionRef>>,
    #[serde(default)]
    pub deletes: Option<u64>,
    #[serde(default)]
    pub truncates: Option<u64>,
    #[serde(borrow, default)]
    pub attribution: Option<Cow<'a, str>>,
    #[serde(default)]
    pub cascade: Option<bool>,
    #[serde(default)]
    pub restart_identity: Option<bool>,
    #[serde(borrow, default)]
    pub slot: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub publication: Option<Cow<'a, str>>,
    #[serde(default)]
    pub format_version: Option<u64>,
    #[serde(borrow, default)]
    pub reason: Option<Cow<'a, str>>,
    /// `gap`: its end is not known yet (`to_lsn` is `null`).
    #[serde(default)]
    pub open: Option<bool>,
    /// `gap`: ends the open gap with the same `reason`, `table` and `from_lsn`.
    #[serde(default)]
    pub closes: Option<bool>,
    #[serde(borrow, default)]
    pub detail: Option<Cow<'a, str>>,
    /// Rows and commits without evidence (`session` null) may carry the sessions that could have run
    /// them: `{"candidates": 1, "session": {…}, "statement", …}` or `{"candidates": N, "possible": […]}`.
    /// Kept raw: only `report` reads it (see `report::Inferred`).
    #[serde(borrow, default)]
    pub inferred: Option<&'a serde_json::value::RawValue>,
    /// Why a row or commit has no session, when the capture says.
    #[serde(borrow, default)]
    pub unattributed_reason: Option<Cow<'a, str>>,
    /// `statement` records: their number in the transaction.
    #[serde(default)]
    pub statement: Option<u64>,
}

/// A schema and name (a `partition`).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RelName<'a> {
    #[serde(borrow)]
    pub schema: Cow<'a, str>,
    #[serde(borrow)]
    pub name: Cow<'a, str>,
}

/// One entry of a truncate's `relations`: the watched table, and the partition truncated if it was one.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct RelRef<'a> {
    #[serde(borrow)]
    pub schema: Cow<'a, str>,
    #[serde(borrow)]
    pub name: Cow<'a, str>,
    #[serde(borrow, default)]
    pub partition: Option<RelName<'a>>,
}

impl Record<'_> {
    /// The watched tables (schema, name) and partitions a row record names: from `schema`/`name`,
    /// `partition` and `relations` when the log has them (format version 2); `None` for older logs,
    /// which only have the ambiguous `table`/`tables` strings.
    pub fn named_relations(&self) -> Option<Vec<(&str, &str)>> {
        if let Some(rs) = &self.relations {
            let mut v = Vec::with_capacity(rs.len() * 2);
            for r in rs {
                v.push((r.schema.as_ref(), r.name.as_ref()));
                if let Some(p) = &r.partition {
                    v.push((p.schema.as_ref(), p.name.as_ref()));
                }
            }
            return Some(v);
        }
        let (s, n) = (self.schema.as_deref()?, self.name.as_deref()?);
        let mut v = vec![(s, n)];
        if let Some(p) = &self.partition {
            v.push((p.schema.as_ref(), p.name.as_ref()));
        }
        if let (Some(ps), Some(pn)) = (self.previous_schema.as_deref(), self.previous_name.as_deref()) {
            v.push((ps, pn));
        }
        Some(v)
    }
}

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
        let mut missing: Vec<&str> = Vec::new();
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

/// A rule of the format that the log breaks, at a line.
#[derive(Debug, Clone, PartialEq)]
pub struct Damage {
    pub line: u64,
    pub message: String,
    /// Rows of an unfinished transaction that this damage discards (they were already handed on as
    /// `Row`: the consumer must drop them).
    pub aborted_rows: u64,
}

/// What to do with a line after checking it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The line is unusable (bad JSON, unknown type, missing fields, a commit without its rows).
    Skip,
    /// A delete/truncate (or relation_renamed) of the open transaction: hold it until its commit.
    Row,
    /// The commit of the open transaction: its held rows are committed.
    Commit,
    /// capture_started / capture_stopped.
    Boundary,
    /// A `statement` record of the open transaction (held like its rows).
    Statement,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub action: Action,
    pub damage: Option<Damage>,
}

#[derive(Debug, Clone)]
struct OpenTxn {
    xid: u64,
    commit_lsn: Lsn,
    first_line: u64,
    deletes: u64,
    truncates: u64,
    /// relation_renamed records (handed on as rows too).
    renames: u64,
}

/// Checks the log's structural rules as lines arrive: a transaction's rows are contiguous, share xid
/// and commit_lsn, and end with a commit that matches them; commit LSNs increase within a capture run
/// (`capture_started` starts a new run, possibly from another server).
#[derive(Debug, Default)]
pub struct Validator {
    open: Option<OpenTxn>,
    last_commit: Option<Lsn>,
}

impl Validator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rows currently held for a transaction whose commit has not been read.
    pub fn open_rows(&self) -> u64 {
        self.open.as_ref().map_or(0, |t| t.deletes + t.truncates + t.renames)
    }

    /// Forget everything (the file was rotated or truncated: a new log starts).
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    fn abort_open(&mut self, line: u64, why: &str) -> Option<Damage> {
        let t = self.open.take()?;
        let rows = t.deletes + t.truncates + t.renames;
        Some(Damage {
            line,
            message: format!(
                "{rows} row record{} of xid {} (from line {}) {why}: the capture was cut mid-transaction",
                if rows == 1 { "" } else { "s" },
                t.xid,
                t.first_line
            ),
            aborted_rows: rows,
        })
    }

    /// Checks a parsed line (or its parse error) against the state so far.
    pub fn check(&mut self, line: u64, parsed: Result<(Kind, &Record), String>) -> Verdict {
        let (kind, rec) = match parsed {
            Ok(p) => p,
            Err(message) => {
                return Verdict { action: Action::Skip, damage: Some(Damage { line, message, aborted_rows: 0 }) }
            }
        };
        match kind {
            Kind::Delete | Kind::Truncate | Kind::RelationRenamed => {
                let xid = rec.xid();
                let commit_lsn = rec.commit_lsn.unwrap_or_default();
                let mut damage = None;
                if let Some(t) = &self.open {
                    if t.xid != xid || t.commit_lsn != commit_lsn {
                        damage = self
                            .abort_open(line, &format!("are followed by a row of xid {xid} instead of their commit"));
                    }
                }
                let t = self.open.get_or_insert(OpenTxn {
                    xid,
                    commit_lsn,
                    first_line: line,
                    deletes: 0,
                    truncates: 0,
                    renames: 0,
                });
                match kind {
                    Kind::Delete => t.deletes += 1,
                    Kind::Truncate => t.truncates += 1,
                    _ => t.renames += 1,
                }
                Verdict { action: Action::Row, damage }
            }
            Kind::Statement => {
                let xid = rec.xid();
                let commit_lsn = rec.commit_lsn.unwrap_or_default();
                let mut damage = None;
                if let Some(t) = &self.open {
                    if t.xid != xid || t.commit_lsn != commit_lsn {
                        damage = self.abort_open(
                            line,
                            &format!("are followed by a statement of xid {xid} instead of their commit"),
                        );
                    }
                }
                self.open.get_or_insert(OpenTxn {
                    xid,
                    commit_lsn,
                    first_line: line,
                    deletes: 0,
                    truncates: 0,
                    renames: 0,
                });
                Verdict { action: Action::Statement, damage }
            }
            Kind::Commit => {
                let xid = rec.xid();
                let commit_lsn = rec.commit_lsn.unwrap_or_default();
                let Some(t) = self.open.take() else {
                    return Verdict {
                        action: Action::Skip,
                        damage: Some(Damage {
                            line,
                            message: format!(
                                "commit of xid {xid} without its rows (a commit follows the rows it commits)"
                            ),
                            aborted_rows: 0,
                        }),
                    };
                };
                if t.xid != xid {
                    self.open = Some(t);
                    let mut d = self
                        .abort_open(line, &format!("are followed by the commit of xid {xid}"))
                        .expect("open transaction");
                    d.message.push_str("; that commit has no rows and is skipped too");
                    return Verdict { action: Action::Skip, damage: Some(d) };
                }
                let mut problems = Vec::new();
                if t.commit_lsn != commit_lsn {
                    problems.push(format!("its rows say commit_lsn {} but the commit says {commit_lsn}", t.commit_lsn));
                }
                let (d, tr) = (rec.deletes.unwrap_or(0), rec.truncates.unwrap_or(0));
                if (d, tr) != (t.deletes, t.truncates) {
                    problems.push(format!(
                        "it counts {d} deletes and {tr} truncates but {} and {} precede it (lines lost?)",
                        t.deletes, t.truncates
                    ));
                }
                if let Some(last) = self.last_commit {
                    if commit_lsn <= last {
                        problems.push(format!(
                            "commit_lsn {commit_lsn} is not after the previous commit's {last} (logs of \
                             different runs joined without their capture_started?)"
                        ));
                    }
                }
                self.last_commit = Some(commit_lsn);
                Verdict {
                    action: Action::Commit,
                    damage: (!problems.is_empty()).then(|| Damage {
                        line,
                        message: format!("commit of xid {xid}: {}", problems.join("; ")),
                        aborted_rows: 0,
                    }),
                }
            }
            // Aborted attempts are written whole between transactions, so to the structure they are
            // boundaries (each consumer decides what to make of them).
            Kind::CaptureStarted
            | Kind::CaptureStopped
            | Kind::Gap
            | Kind::AbortedDelete
            | Kind::AbortedTruncate
            | Kind::AbortedStatement
            | Kind::TriggerError
            | Kind::Abort => {
                let damage = self.abort_open(line, &format!("are followed by {}", kind.as_str()));
                if kind == Kind::CaptureStarted {
                    self.last_commit = None;
                }
                Verdict { action: Action::Boundary, damage }
            }
        }
    }

    /// The input ended: an open transaction was cut, and so was an unterminated last line.
    pub fn finish(&mut self, last_line: u64, pending_bytes: usize) -> Vec<Damage> {
        let mut out = Vec::new();
        // The torn line first: it is the cause, the open transaction its consequence.
        if pending_bytes > 0 {
            out.push(Damage {
                line: last_line + 1,
                message: format!(
                    "the last line is incomplete ({pending_bytes} bytes without a newline): the log was cut mid-write"
                ),
                aborted_rows: 0,
            });
        }
        if let Some(d) = self.abort_open(last_line, "are not followed by their commit before the end of the log") {
            out.push(d);
        }
        out
    }
}

#[cfg(test)]
pub(crate) mod tests {
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
    fn line_reader_keeps_incomplete_line() {
        let mut data: &[u8] = b"one\ntwo\r\nthr";
        let mut r = LineReader::new(&mut data);
        assert_eq!(r.next_line().unwrap(), Some(&b"one"[..]));
        assert_eq!(r.next_line().unwrap(), Some(&b"two"[..]));
        assert_eq!(r.next_line().unwrap(), None);
        assert_eq!(r.pending(), 3);
        assert_eq!(r.line_no(), 2);
        assert_eq!(r.consumed(), 9);
    }

    #[test]
    fn line_reader_continues_a_line_that_grows() {
        // A reader over a growing source: the second read sees the rest of the line.
        let mut file = tempfile::NamedTempFile::new().unwrap();
        use std::io::Write;
        file.write_all(b"{\"a\":").unwrap();
        let f = File::open(file.path()).unwrap();
        let mut r = LineReader::new(BufReader::new(f));
        assert_eq!(r.next_line().unwrap(), None);
        file.write_all(b"1}\n").unwrap();
        assert_eq!(r.next_line().unwrap(), Some(&b"{\"a\":1}"[..]));
        assert_eq!(r.next_line().unwrap(), None);
        assert_eq!(r.pending(), 0);
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
    fn chunks_keep_lines_whole() {
        // Lines longer than a block, CRLF, an empty line, and a torn last line.
        let long = "x".repeat(300_000);
        let text = format!("a\r\n{long}\n\nb\n{long}\ntorn");
        let (r, _) = decompressing(io::Cursor::new(text.clone().into_bytes())).unwrap();
        let (rx, recycle) = read_chunks(r, DEFAULT_MAX_LINE);
        let mut lines = Vec::new();
        let mut incomplete = None;
        for c in rx {
            match c {
                Chunk::Lines(b) => {
                    lines.extend(block_lines(&b).map(|l| l.len()));
                    let _ = recycle.send(b);
                }
                Chunk::Incomplete(n) => incomplete = Some(n),
                Chunk::TooLong(n) => panic!("too long: {n}"),
                Chunk::Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(lines, [1, 300_000, 0, 1, 300_000]);
        assert_eq!(incomplete, Some(4));
    }

    fn chunk_lines(data: Vec<u8>, max: usize) -> (Vec<usize>, Option<usize>, Option<usize>) {
        let (r, _) = decompressing(io::Cursor::new(data)).unwrap();
        let (rx, recycle) = read_chunks(r, max);
        let (mut lines, mut incomplete, mut too_long) = (Vec::new(), None, None);
        for c in rx {
            match c {
                Chunk::Lines(b) => {
                    lines.extend(block_lines(&b).map(|l| l.len()));
                    let _ = recycle.send(b);
                }
                Chunk::Incomplete(n) => incomplete = Some(n),
                Chunk::TooLong(n) => too_long = Some(n),
                Chunk::Err(e) => panic!("{e}"),
            }
        }
        (lines, incomplete, too_long)
    }

    #[test]
    fn chunks_stop_at_a_line_over_the_limit_in_bounded_memory() {
        let max = 200_000;
        // At the limit: fine. Over it, unterminated: stops after at most a read step more than the limit.
        let ok = format!("{}\n{}\n", "a".repeat(max), "b".repeat(10));
        assert_eq!(chunk_lines(ok.into_bytes(), max), (vec![max, 10], Some(0), None));
        let (lines, inc, long) = chunk_lines(format!("x\n{}", "z".repeat(5 * max)).into_bytes(), max);
        assert_eq!((lines, inc), (vec![1], None));
        let long = long.expect("too long");
        assert!(long > max && long <= max + 64 * 1024, "{long}");
        // Many blocks of short lines, many long lines: all arrive whole, in order (the reader waits for
        // blocks to come back instead of reading ahead without bound).
        let mut text = String::new();
        let mut want = Vec::new();
        for i in 0..2000 {
            let n = if i % 100 == 7 { 150_000 } else { i % 50 };
            text.push_str(&"q".repeat(n));
            text.push('\n');
            want.push(n);
        }
        assert_eq!(chunk_lines(text.into_bytes(), max), (want, Some(0), None));
    }

    #[test]
    fn line_reader_refuses_a_line_over_the_limit() {
        let data = format!("{}\n{}\n{}", "a".repeat(100), "b".repeat(101), "c".repeat(50));
        let mut r = LineReader::with_limit(io::BufReader::with_capacity(16, data.as_bytes()), 100);
        assert_eq!(r.next_line().unwrap().map(<[u8]>::len), Some(100));
        let e = r.next_line().unwrap_err();
        let t = too_long(&e).expect("LineTooLong");
        assert_eq!(t.limit, 100);
        assert!(e.to_string().contains("--max-line-length"), "{e}");
        // Unterminated and already over the limit: refused before the newline arrives.
        let data = "d".repeat(1000);
        let mut r = LineReader::with_limit(io::BufReader::with_capacity(16, data.as_bytes()), 100);
        assert!(too_long(&r.next_line().unwrap_err()).is_some());
        assert!(r.pending() <= 100);
    }

    #[test]
    fn damaged_zstd_is_a_read_error_not_an_open_error() {
        let mut data = ZSTD_MAGIC.to_vec();
        data.extend_from_slice(&[0xff; 100]);
        let (mut r, c) = decompressing(io::Cursor::new(data)).expect("opens");
        assert_eq!(c, Compression::Zstd);
        let e = r.fill_buf().unwrap_err();
        assert!(e.to_string().contains("damaged zstd data"), "{e}");
    }

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
