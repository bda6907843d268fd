//! A bounds-checked, zero-copy cursor over one received message.
//!
//! Every read either succeeds or returns a [`DecodeError`] that says which
//! message was being decoded and at which byte it went wrong; nothing here can
//! panic, whatever the input. Variable-length payloads come back as
//! [`Bytes`] slices that share the receive buffer, so decoding a row never
//! copies its column values.

use std::fmt;

use bytes::Bytes;

use super::Lsn;

/// A message from the server did not have the shape the protocol promises.
///
/// `offset` is relative to the start of the decoded unit: the CopyData payload
/// for replication frames, the XLogData payload for pgoutput messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// Message type being decoded, e.g. `"Delete"` or `"Keepalive"`.
    pub message: &'static str,
    pub offset: usize,
    pub reason: String,
}

/// Names used for the streaming-replication framing layer; everything else is
/// a pgoutput message. Kept here so the Display text tells an operator which
/// layer of the stream was broken without widening the error struct.
const REPLICATION_MESSAGES: [&str; 3] = ["CopyData", "XLogData", "Keepalive"];

impl DecodeError {
    fn layer(&self) -> &'static str {
        if REPLICATION_MESSAGES.contains(&self.message) {
            "replication"
        } else {
            "pgoutput"
        }
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "malformed {} {} message at byte {}: {}", self.layer(), self.message, self.offset, self.reason)
    }
}

impl std::error::Error for DecodeError {}

/// A name from the server as a `String`, without losing or confusing anything: valid UTF-8 is kept as it
/// is, except text of the escaped form; anything else (bytes that are not UTF-8, which only a SQL_ASCII
/// database lets through) becomes that escaped form, `\x` followed by two lower-case hex digits per byte
/// (PostgreSQL's bytea notation). Valid text that already has that form (`\x`, then only `0-9a-f`) is
/// escaped too, so two different byte strings never give the same `String`, and a name that is plain
/// UTF-8 (every real one) is unchanged.
pub fn lossless_name(raw: &[u8]) -> String {
    match std::str::from_utf8(raw) {
        Ok(s) if !looks_escaped(s) => s.to_owned(),
        _ => {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            let mut out = String::with_capacity(2 + raw.len() * 2);
            out.push_str("\\x");
            for &b in raw {
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xF)]));
            }
            out
        }
    }
}

/// Whether `s` has the form [`lossless_name`] gives escaped names: `\x` and lower-case hex digits only.
fn looks_escaped(s: &str) -> bool {
    s.strip_prefix("\\x").is_some_and(|hex| hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)))
}

/// Cursor over one message. Cloning the underlying [`Bytes`] is a reference
/// count bump, so a `Reader` can be built from a borrowed buffer cheaply.
#[derive(Debug, Clone)]
pub struct Reader {
    bytes: Bytes,
    pos: usize,
    what: &'static str,
}

impl Reader {
    pub fn new(bytes: Bytes, what: &'static str) -> Self {
        Reader { bytes, pos: 0, what }
    }

    /// Rename the message being decoded, once its type byte is known, so later
    /// errors name the real message type.
    pub fn set_what(&mut self, what: &'static str) {
        self.what = what;
    }

    pub fn what(&self) -> &'static str {
        self.what
    }

    pub fn position(&self) -> usize {
        self.pos
    }

    pub fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    /// An error at the current position.
    pub fn error(&self, reason: impl Into<String>) -> DecodeError {
        self.error_at(self.pos, reason)
    }

    /// An error at an earlier position, for when a field is only found bad
    /// after it has been read.
    pub fn error_at(&self, offset: usize, reason: impl Into<String>) -> DecodeError {
        DecodeError { message: self.what, offset, reason: reason.into() }
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let end = self.checked_end(N)?;
        let mut out = [0u8; N];
        // `checked_end` guarantees pos..end is in bounds; `get` keeps that
        // guarantee visible to the reader without an indexing panic path.
        let src = self.bytes.get(self.pos..end).ok_or_else(|| self.need(N))?;
        out.copy_from_slice(src);
        self.pos = end;
        Ok(out)
    }

    fn need(&self, n: usize) -> DecodeError {
        self.error(format!("need {n} bytes, {} left", self.remaining()))
    }

    fn checked_end(&self, n: usize) -> Result<usize, DecodeError> {
        match self.pos.checked_add(n) {
            Some(end) if end <= self.bytes.len() => Ok(end),
            _ => Err(self.need(n)),
        }
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take::<1>()?[0])
    }

    pub fn i16(&mut self) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.take()?))
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.take()?))
    }

    pub fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.take()?))
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.take()?))
    }

    pub fn i64(&mut self) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.take()?))
    }

    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.take()?))
    }

    pub fn lsn(&mut self) -> Result<Lsn, DecodeError> {
        self.u64().map(Lsn)
    }

    /// A NUL-terminated string (a name, prefix or gid), in the lossless form of [`lossless_name`]: the
    /// server sends these in the client encoding, which is UTF8 except in a SQL_ASCII database, where it
    /// sends the bytes as stored and any role can store bytes that are not UTF-8. Those are data to keep,
    /// not a reason to stop the stream.
    pub fn cstr(&mut self) -> Result<String, DecodeError> {
        let start = self.pos;
        let rest = self.bytes.get(start..).unwrap_or_default();
        let nul = rest.iter().position(|&b| b == 0).ok_or_else(|| self.error("string is not NUL-terminated"))?;
        let raw = rest.get(..nul).unwrap_or_default();
        let s = lossless_name(raw);
        // nul < rest.len(), so this cannot overflow past the buffer.
        self.pos = start.saturating_add(nul).saturating_add(1);
        Ok(s)
    }

    /// The next `n` bytes as a slice sharing the input buffer.
    pub fn bytes(&mut self, n: usize) -> Result<Bytes, DecodeError> {
        let end = self.checked_end(n)?;
        let out = self.bytes.slice(self.pos..end);
        self.pos = end;
        Ok(out)
    }

    /// An Int32 length followed by that many bytes. PostgreSQL writes these
    /// lengths as signed; a negative or oversized one is corruption, never a
    /// reason to allocate or slice blindly.
    pub fn len_prefixed_bytes(&mut self) -> Result<Bytes, DecodeError> {
        let at = self.pos;
        let len = self.i32()?;
        let len = usize::try_from(len).map_err(|_| self.error_at(at, format!("negative length {len}")))?;
        if len > self.remaining() {
            return Err(self.error_at(at, format!("length {len} exceeds the {} bytes left", self.remaining())));
        }
        self.bytes(len)
    }

    /// Everything not yet read, as a shared slice.
    pub fn rest(&mut self) -> Bytes {
        let start = self.pos.min(self.bytes.len());
        self.pos = self.bytes.len();
        self.bytes.slice(start..)
    }

    /// Each decoded unit holds exactly one message; leftovers mean we and the
    /// server disagree about the layout, which must not pass silently.
    pub fn expect_end(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(self.error(format!("{n} unexpected trailing bytes"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(b: &[u8]) -> Reader {
        Reader::new(Bytes::copy_from_slice(b), "Delete")
    }

    #[test]
    fn integers_are_big_endian() {
        let mut r = reader(&[
            0x01, 0xFF, 0xFE, 0x00, 0x02, 0xFF, 0xFF, 0xFF, 0xFD, 0x00, 0x00, 0x00, 0x04, 0, 0, 0, 0, 0, 0, 0, 5, 0, 0,
            0, 0x16, 0xB3, 0x74, 0xD8, 0x48,
        ]);
        assert_eq!(r.u8().unwrap(), 1);
        assert_eq!(r.i16().unwrap(), -2);
        assert_eq!(r.u16().unwrap(), 2);
        assert_eq!(r.i32().unwrap(), -3);
        assert_eq!(r.u32().unwrap(), 4);
        assert_eq!(r.i64().unwrap(), 5);
        assert_eq!(r.lsn().unwrap(), Lsn(0x16_B374_D848));
        r.expect_end().unwrap();
    }

    #[test]
    fn short_read_reports_offset_and_need() {
        let mut r = reader(&[0, 0, 0, 0, 0, 0, 0, 0xAA, 0xBB]);
        r.bytes(7).unwrap();
        let e = r.u32().unwrap_err();
        assert_eq!(e.message, "Delete");
        assert_eq!(e.offset, 7);
        assert_eq!(e.to_string(), "malformed pgoutput Delete message at byte 7: need 4 bytes, 2 left");
        // A failed read does not move the cursor.
        assert_eq!(r.position(), 7);
    }

    #[test]
    fn replication_layer_named_in_display() {
        let e = Reader::new(Bytes::new(), "Keepalive").u64().unwrap_err();
        assert!(e.to_string().starts_with("malformed replication Keepalive"));
    }

    #[test]
    fn cstr_reads_and_validates() {
        let mut r = reader(b"public\0\0x");
        assert_eq!(r.cstr().unwrap(), "public");
        assert_eq!(r.cstr().unwrap(), "");
        let e = r.cstr().unwrap_err();
        assert_eq!(e.offset, 8);
        assert!(e.reason.contains("NUL"));

        // Not UTF-8 (a SQL_ASCII database): kept, in the escaped form, and the cursor moves on.
        let mut r = reader(b"ab\xFFc\0x\0");
        assert_eq!(r.cstr().unwrap(), "\\x6162ff63");
        assert_eq!(r.cstr().unwrap(), "x");
        r.expect_end().unwrap();
    }

    #[test]
    fn lossless_names_are_unchanged_or_escaped_and_never_collide() {
        // Real names, UTF-8 included, are unchanged; so is text that only resembles the escape.
        for s in ["public", "", "Order Lines", "é日本", "\\", "\\X41", "\\xFF", "x\\x41", "\\x4g"] {
            assert_eq!(lossless_name(s.as_bytes()), s);
        }
        assert_eq!(lossless_name(b"\xff"), "\\xff");
        assert_eq!(lossless_name(b"caf\xe9"), "\\x636166e9");
        assert_eq!(lossless_name(b"\xc3"), "\\xc3");
        // Text of the escaped form is escaped itself, so it cannot pass for the bytes it spells.
        assert_eq!(lossless_name(b"\\xff"), "\\x5c786666");
        assert_eq!(lossless_name(b"\\x"), "\\x5c78");
        // Injective over every short byte string from an alphabet that makes collisions likely.
        let alphabet: &[u8] = &[b'\\', b'x', b'f', b'5', b'c', 0xff, 0xc3, 0xa9];
        let mut seen = std::collections::HashMap::new();
        let mut strings: Vec<Vec<u8>> = vec![Vec::new()];
        for _ in 0..5 {
            let longer: Vec<Vec<u8>> = strings
                .iter()
                .filter(|s| s.len() == strings.last().map_or(0, Vec::len))
                .flat_map(|s| alphabet.iter().map(move |&b| [s.as_slice(), &[b]].concat()))
                .collect();
            strings.extend(longer);
        }
        for s in &strings {
            if let Some(other) = seen.insert(lossless_name(s), s.clone()) {
                panic!("{other:?} and {s:?} both give {:?}", lossless_name(s));
            }
        }
        assert!(seen.len() > 30_000, "{}", seen.len());
    }

    #[test]
    fn bytes_are_zero_copy() {
        let buf = Bytes::from_static(b"hello world");
        let mut r = Reader::new(buf.clone(), "x");
        r.bytes(6).unwrap();
        let w = r.bytes(5).unwrap();
        assert_eq!(&w[..], b"world");
        // Same backing memory: the slice points into the original buffer.
        assert_eq!(w.as_ptr(), buf[6..].as_ptr());
        assert!(r.bytes(1).is_err());
        assert!(r.bytes(usize::MAX).is_err());
    }

    #[test]
    fn len_prefixed_rejects_negative_and_huge() {
        let mut r = reader(&[0xFF, 0xFF, 0xFF, 0xFF, 1, 2]);
        let e = r.len_prefixed_bytes().unwrap_err();
        assert_eq!(e.offset, 0);
        assert!(e.reason.contains("negative length -1"), "{e}");

        let mut r = reader(&[0x7F, 0xFF, 0xFF, 0xFF, 1, 2]);
        let e = r.len_prefixed_bytes().unwrap_err();
        assert!(e.reason.contains("2147483647"), "{e}");

        let mut r = reader(&[0, 0, 0, 2, 1, 2]);
        assert_eq!(&r.len_prefixed_bytes().unwrap()[..], &[1, 2]);
        r.expect_end().unwrap();
    }

    #[test]
    fn expect_end_and_rest() {
        let mut r = reader(&[1, 2, 3]);
        r.u8().unwrap();
        let e = r.expect_end().unwrap_err();
        assert_eq!(e.offset, 1);
        assert!(e.reason.contains("2 unexpected trailing bytes"));
        assert_eq!(&r.rest()[..], &[2, 3]);
        assert_eq!(r.remaining(), 0);
        assert!(r.rest().is_empty());
        r.expect_end().unwrap();
    }
}
