//! The raw capture file (`capture --raw-out`): the pgoutput payloads as received, for offline
//! re-decoding with `walwitness replay --raw` into the same records a live capture writes.
//!
//! Layout, format version 2 (all integers big-endian; CRC-32 is the IEEE polynomial, as in gzip):
//! ```text
//! header: b"WWRAW" 0x02, u32 n, u32 head_crc, n bytes of JSON, u32 crc
//!         JSON: {"tables":[{"schema","table","primary_key"}],"slot","publication","proto_version"}
//! frame:  u8 tag, fixed fields, u32 n, u32 head_crc, n bytes of payload, u32 crc
//!   tag 'w', u64 wal_start      — one XLogData payload (exactly one pgoutput message)
//!   tag 'a', u32 xid            — the activity source's session for xid (JSON), as used live
//!   tag 'r', no fields, n = 0   — the connection was re-established: a transaction in progress
//!                                 is sent again from its Begin
//!   tag 'p', u32 oid, u32 root  — a partition of watched table `root` found while capturing;
//!                                 payload: JSON of its primary key (array or null)
//!   tag 'i', u32 xid            — the inference the live capture made for xid at its commit
//!                                 (before the Commit's 'w' frame): b'1' + the `inferred` JSON with one
//!                                 candidate, b'n' + with several, b'r' + the `unattributed_reason`
//!                                 (UTF-8). Since issue 12; earlier builds stop at it (unknown frame).
//! head_crc: CRC-32 of the bytes from the tag (the magic, for the header) through n
//! crc:      CRC-32 of every byte of the frame before it (tag through payload, head_crc included)
//! ```
//! `head_crc` lets a reader trust `n` before reading that many bytes, so a damaged length is told
//! apart from a file that really ends early; `crc` covers the rest. Every damage of up to 32
//! consecutive bits is detected, and other damage but for one chance in 2^32: `replay --raw` stops with
//! exit 14 naming the frame's byte offset. A checksum is no seal: whoever can write the file can
//! recompute it (the log, not this file, is the evidence).
//!
//! Format version 1 (`WWRAW` 0x01, walwitness before issue 13) had the same frames without `n` for
//! 'r', `head_crc` and `crc`: `replay --raw` still reads it, warning that damage to it cannot be
//! detected; `capture --raw-out` refuses to append to it.
//!
//! The header's tables carry `oid` and `partitions` ([{"oid","primary_key"}]) since format version 2
//! of the log; files without them are decoded matching tables by name.
//! The file is written through a buffer and is not fsynced: it is a companion for analysis, not the
//! evidence itself (the log is). A frame cut short at the end (a crash) is reported and ignored; a
//! later capture appending to the file first cuts it off (after checking every frame before it).
//! Trigger attribution messages are stored but cannot be verified offline (the key stays on the
//! server), so offline output matches the live log for captures with `--attribution none|activity`;
//! sessions of 'a' frames are reported as `activity`, whatever their JSON claims (see
//! `crate::read::raw_replay`).
//! Transactions the server streamed before commit (larger than `logical_decoding_work_mem`) and prepared
//! transactions are stored as received, every payload of them ('w' frames; before issue 14 they were
//! left out): `replay --raw` holds them until final as the live capture does (`decode::pipeline`). The
//! session and inference a live replay of one used ('a', 'i') come before the frame that made it final
//! (Stream Commit, COMMIT PREPARED). What an abort discarded is not decoded offline (the file does not
//! say whether the capture had `--include-aborted`).
//!
//! Readers stream the file frame by frame: memory is bounded by the largest frame accepted
//! (`--max-line-length`, default 64 MiB), not by the file.
use std::fmt;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::protocol::Lsn;

const MAGIC: &[u8; 6] = b"WWRAW\x02";
const MAGIC_V1: &[u8; 6] = b"WWRAW\x01";
/// The raw format version this build writes.
pub const FORMAT_VERSION: u8 = 2;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RawTable {
    pub schema: String,
    pub table: String,
    pub primary_key: Option<Vec<String>>,
    /// The table's OID; absent in files of earlier versions, which are then matched by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oid: Option<u32>,
    /// Its partitions known at start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partitions: Vec<RawPartition>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RawPartition {
    pub oid: u32,
    pub primary_key: Option<Vec<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RawHeader {
    pub tables: Vec<RawTable>,
    pub slot: String,
    pub publication: String,
    pub proto_version: u32,
}

pub struct RawWriter {
    out: BufWriter<std::fs::File>,
}

fn crc(parts: &[&[u8]]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    for p in parts {
        h.update(p);
    }
    h.finalize()
}

impl RawWriter {
    /// Creates (or appends to) a raw file; a new file gets the header. Opened like the log
    /// (`sink::outfile`: no symbolic link, ours, one name); an existing file that is not a raw capture
    /// file is refused untouched. An existing one must be a raw file of this format version: its
    /// frames are checked, and a frame a crash cut short at its end is cut off (said on stderr) before
    /// appending.
    pub fn open(path: &Path, header: &RawHeader) -> io::Result<RawWriter> {
        let mut f = super::outfile::open_private(path, super::outfile::Access::ReadWrite)?.file;
        let len = f.metadata()?.len();
        if len > 0 {
            let mut head = [0u8; MAGIC.len()];
            let n = f.read_at(&mut head, 0)?;
            // Either version's magic: a version 1 file is refused below, with what to do.
            if ![MAGIC, MAGIC_V1].iter().any(|m| m.starts_with(&head[..n.min(m.len())])) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "it is not a walwitness raw capture file, so it was left untouched: give a new file, or the raw file of an earlier capture",
                ));
            }
        }
        if len == 0 {
            let mut w = RawWriter { out: BufWriter::with_capacity(256 * 1024, f) };
            let meta = serde_json::to_vec(header).map_err(io::Error::other)?;
            let n = (meta.len() as u32).to_be_bytes();
            let head_crc = crc(&[MAGIC, &n]).to_be_bytes();
            w.out.write_all(MAGIC)?;
            w.out.write_all(&n)?;
            w.out.write_all(&head_crc)?;
            w.out.write_all(&meta)?;
            w.out.write_all(&crc(&[MAGIC, &n, &head_crc, &meta]).to_be_bytes())?;
            return Ok(w);
        }
        // Appending after a previous run: find where its last complete frame ends.
        let end = {
            let (existing, mut r) = RawReader::open(BufReader::with_capacity(256 * 1024, &mut f), usize::MAX)
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{e}; give another --raw-out file")))?;
            // `replay --raw` parses a file's messages with the layout of its header's protocol version
            // (Stream Abort grew in version 4): a run on another version would make the file unreadable.
            if existing.proto_version != header.proto_version {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "it holds pgoutput protocol version {} messages and this capture receives version {} \
                         (another server version): give another --raw-out file",
                        existing.proto_version, header.proto_version
                    ),
                ));
            }
            if !r.checked() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "it is a raw file of format version 1 (an older walwitness), without checksums: \
                     give another --raw-out file (walwitness replay --raw still reads this one)",
                ));
            }
            loop {
                match r.next_frame() {
                    Ok(Some(_)) => {}
                    Ok(None) => break r.offset(),
                    Err(RawError::Cut { at }) => {
                        eprintln!(
                            "walwitness: the raw capture file {} ends with a frame cut short at byte {at} \
                             (the previous capture stopped while writing it): cut off before appending",
                            path.display()
                        );
                        break at;
                    }
                    Err(e) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("{e}; give another --raw-out file (appending would hide the rest)"),
                        ))
                    }
                }
            }
        };
        if end < len {
            f.set_len(end)?;
        }
        f.seek(SeekFrom::Start(end))?;
        let mut w = RawWriter { out: BufWriter::with_capacity(256 * 1024, f) };
        // The previous run may have died mid-transaction.
        w.reconnected()?;
        Ok(w)
    }

    fn frame(&mut self, tag: u8, fixed: &[u8], payload: &[u8]) -> io::Result<()> {
        let n = u32::try_from(payload.len())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a raw frame over 4 GiB"))?
            .to_be_bytes();
        let tag = [tag];
        let head_crc = crc(&[&tag, fixed, &n]).to_be_bytes();
        let sum = crc(&[&tag, fixed, &n, &head_crc, payload]).to_be_bytes();
        self.out.write_all(&tag)?;
        self.out.write_all(fixed)?;
        self.out.write_all(&n)?;
        self.out.write_all(&head_crc)?;
        self.out.write_all(payload)?;
        self.out.write_all(&sum)
    }

    pub fn xlog(&mut self, wal_start: Lsn, payload: &[u8]) -> io::Result<()> {
        self.frame(b'w', &wal_start.as_u64().to_be_bytes(), payload)
    }

    pub fn activity(&mut self, xid: u32, session_json: &[u8]) -> io::Result<()> {
        self.frame(b'a', &xid.to_be_bytes(), session_json)
    }

    pub fn partition(&mut self, oid: u32, root: u32, primary_key: Option<&[String]>) -> io::Result<()> {
        let pk = serde_json::to_vec(&primary_key).map_err(io::Error::other)?;
        let mut fixed = [0u8; 8];
        fixed[..4].copy_from_slice(&oid.to_be_bytes());
        fixed[4..].copy_from_slice(&root.to_be_bytes());
        self.frame(b'p', &fixed, &pk)
    }

    pub fn inference(&mut self, xid: u32, encoded: &[u8]) -> io::Result<()> {
        self.frame(b'i', &xid.to_be_bytes(), encoded)
    }

    pub fn reconnected(&mut self) -> io::Result<()> {
        self.frame(b'r', &[], &[])
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    XLog { wal_start: Lsn, payload: Bytes },
    Activity { xid: u32, session: Bytes },
    Reconnected,
    Partition { oid: u32, root: u32, primary_key: Option<Vec<String>> },
    Inference { xid: u32, encoded: Bytes },
}

/// Why a raw file cannot be read further.
#[derive(Debug)]
pub enum RawError {
    /// The file ends inside the frame that starts at byte `at` (a capture stopped while writing it).
    Cut {
        at: u64,
    },
    /// The frame (or header) at byte `at` is damaged: a checksum does not match, or it cannot be.
    Damaged {
        at: u64,
        what: String,
    },
    /// The frame at byte `at` is larger than the limit.
    TooLarge {
        at: u64,
        bytes: u64,
        limit: usize,
    },
    Io(io::Error),
}

impl fmt::Display for RawError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RawError::Cut { at } => {
                write!(f, "the frame at byte {at} is cut short (the capture stopped while writing it)")
            }
            RawError::Damaged { at, what } => write!(f, "damaged raw file: the frame at byte {at} {what}"),
            RawError::TooLarge { at, bytes, limit } => write!(
                f,
                "the frame at byte {at} holds {bytes} bytes, over the limit of {limit} bytes \
                 (to read it anyway, raise --max-line-length)"
            ),
            RawError::Io(e) => write!(f, "cannot read: {e}"),
        }
    }
}

/// Streaming reader of a raw file, frame by frame (format version 2, or 1 without checksums).
pub struct RawReader<R> {
    r: R,
    pos: u64,
    version: u8,
    max_frame: usize,
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` when the input ends first.
fn read_full<R: Read>(r: &mut R, buf: &mut [u8]) -> io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => return Ok(false),
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

impl<R: Read> RawReader<R> {
    /// Reads the header; frames (and their payloads) may be at most `max_frame` bytes.
    pub fn open(mut r: R, max_frame: usize) -> Result<(RawHeader, RawReader<R>), RawError> {
        let bad = |what: &str| RawError::Damaged { at: 0, what: what.to_owned() };
        let mut head = [0u8; 10];
        if !read_full(&mut r, &mut head).map_err(RawError::Io)? {
            return Err(RawError::Damaged {
                at: 0,
                what: "is not a walwitness raw capture file header (the file is too short)".into(),
            });
        }
        let version = if &head[..6] == MAGIC {
            2
        } else if &head[..6] == MAGIC_V1 {
            1
        } else {
            return Err(bad("is not a walwitness raw capture file header (bad magic)"));
        };
        let n = u32::from_be_bytes([head[6], head[7], head[8], head[9]]);
        let mut head_crc = [0u8; 4];
        if version == 2 {
            if !read_full(&mut r, &mut head_crc).map_err(RawError::Io)? {
                return Err(bad("(the file header) is cut short"));
            }
            if crc(&[&head]) != u32::from_be_bytes(head_crc) {
                return Err(bad("(the file header) does not match its checksum"));
            }
        }
        if n as usize > max_frame {
            return Err(RawError::TooLarge { at: 0, bytes: n.into(), limit: max_frame });
        }
        let mut meta = Vec::new();
        (&mut r).take(n.into()).read_to_end(&mut meta).map_err(RawError::Io)?;
        if meta.len() < n as usize {
            return Err(bad("(the file header) is cut short"));
        }
        let mut pos = 10 + u64::from(n);
        if version == 2 {
            let mut sum = [0u8; 4];
            if !read_full(&mut r, &mut sum).map_err(RawError::Io)? {
                return Err(bad("(the file header) is cut short"));
            }
            if crc(&[&head, &head_crc, &meta]) != u32::from_be_bytes(sum) {
                return Err(bad("(the file header) does not match its checksum"));
            }
            pos += 8;
        }
        let header: RawHeader = serde_json::from_slice(&meta)
            .map_err(|e| RawError::Damaged { at: 0, what: format!("(the file header) is not understood: {e}") })?;
        Ok((header, RawReader { r, pos, version, max_frame }))
    }

    /// Whether the file's frames carry checksums (format version 2).
    pub fn checked(&self) -> bool {
        self.version >= 2
    }

    pub fn version(&self) -> u8 {
        self.version
    }

    /// Byte offset of the next frame.
    pub fn offset(&self) -> u64 {
        self.pos
    }

    /// The next frame; `Ok(None)` at the end of the file.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, RawError> {
        let at = self.pos;
        let mut tag = [0u8; 1];
        if !read_full(&mut self.r, &mut tag).map_err(RawError::Io)? {
            return Ok(None);
        }
        let fixed_len = match tag[0] {
            b'w' => 8,
            b'a' => 4,
            b'i' => 4,
            b'p' => 8,
            b'r' => 0,
            other => {
                return Err(RawError::Damaged { at, what: format!("has an unknown frame type {other:#04x}") });
            }
        };
        let v2 = self.version >= 2;
        if !v2 && tag[0] == b'r' {
            self.pos += 1;
            return Ok(Some(Frame::Reconnected));
        }
        // Fixed fields, n, and (version 2) head_crc.
        let head_len = fixed_len + 4 + if v2 { 4 } else { 0 };
        let mut head = [0u8; 16];
        let head = &mut head[..head_len];
        if !read_full(&mut self.r, head).map_err(RawError::Io)? {
            return Err(RawError::Cut { at });
        }
        let n_at = fixed_len;
        let n = u32::from_be_bytes([head[n_at], head[n_at + 1], head[n_at + 2], head[n_at + 3]]);
        if v2
            && crc(&[&tag, &head[..n_at + 4]])
                != u32::from_be_bytes([head[n_at + 4], head[n_at + 5], head[n_at + 6], head[n_at + 7]])
        {
            return Err(RawError::Damaged { at, what: "does not match its header checksum".into() });
        }
        if n as usize > self.max_frame {
            return Err(RawError::TooLarge { at, bytes: n.into(), limit: self.max_frame });
        }
        // Read as it arrives: a length claiming more than the file holds allocates no more than it.
        let mut payload = Vec::with_capacity((n as usize).min(1 << 20));
        (&mut self.r).take(n.into()).read_to_end(&mut payload).map_err(RawError::Io)?;
        if payload.len() < n as usize {
            return Err(RawError::Cut { at });
        }
        let mut len = 1 + head_len as u64 + u64::from(n);
        if v2 {
            let mut sum = [0u8; 4];
            if !read_full(&mut self.r, &mut sum).map_err(RawError::Io)? {
                return Err(RawError::Cut { at });
            }
            if crc(&[&tag, head, &payload]) != u32::from_be_bytes(sum) {
                return Err(RawError::Damaged { at, what: "does not match its checksum".into() });
            }
            len += 4;
        }
        let frame = frame_of(tag[0], head, payload, at)?;
        self.pos += len;
        Ok(Some(frame))
    }
}

/// The frame of a checked tag, fixed fields (`head`) and payload; the frame at `at` for errors.
fn frame_of(tag: u8, head: &[u8], payload: Vec<u8>, at: u64) -> Result<Frame, RawError> {
    let u32_at = |i: usize| u32::from_be_bytes([head[i], head[i + 1], head[i + 2], head[i + 3]]);
    Ok(match tag {
        b'w' => {
            let mut lsn = [0u8; 8];
            lsn.copy_from_slice(&head[..8]);
            Frame::XLog { wal_start: Lsn(u64::from_be_bytes(lsn)), payload: Bytes::from(payload) }
        }
        b'a' => Frame::Activity { xid: u32_at(0), session: Bytes::from(payload) },
        b'i' => Frame::Inference { xid: u32_at(0), encoded: Bytes::from(payload) },
        b'p' => {
            let primary_key = serde_json::from_slice(&payload)
                .map_err(|e| RawError::Damaged { at, what: format!("(a partition frame) is not understood: {e}") })?;
            Frame::Partition { oid: u32_at(0), root: u32_at(4), primary_key }
        }
        _ => {
            if !payload.is_empty() {
                return Err(RawError::Damaged { at, what: "(a reconnection frame) has a payload".into() });
            }
            Frame::Reconnected
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> RawHeader {
        RawHeader {
            tables: vec![RawTable {
                schema: "public".into(),
                table: "t".into(),
                primary_key: Some(vec!["id".into()]),
                oid: Some(9),
                partitions: vec![RawPartition { oid: 10, primary_key: None }],
            }],
            slot: "s".into(),
            publication: "p".into(),
            proto_version: 3,
        }
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<Frame>, RawError> {
        let (_, mut r) = RawReader::open(bytes, 1 << 20)?;
        let mut frames = Vec::new();
        while let Some(f) = r.next_frame()? {
            frames.push(f);
        }
        Ok(frames)
    }

    fn sample(dir: &Path) -> (std::path::PathBuf, Vec<Frame>) {
        let p = dir.join("r.raw");
        let h = header();
        let mut w = RawWriter::open(&p, &h).unwrap();
        w.xlog(Lsn(5), b"B123").unwrap();
        w.activity(7, b"{}").unwrap();
        w.partition(11, 9, Some(&["id".to_owned()])).unwrap();
        w.flush().unwrap();
        drop(w);
        let mut w = RawWriter::open(&p, &h).unwrap();
        w.xlog(Lsn(6), b"C").unwrap();
        w.flush().unwrap();
        let frames = vec![
            Frame::XLog { wal_start: Lsn(5), payload: Bytes::from_static(b"B123") },
            Frame::Activity { xid: 7, session: Bytes::from_static(b"{}") },
            Frame::Partition { oid: 11, root: 9, primary_key: Some(vec!["id".into()]) },
            Frame::Reconnected,
            Frame::XLog { wal_start: Lsn(6), payload: Bytes::from_static(b"C") },
        ];
        (p, frames)
    }

    #[test]
    fn round_trip_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let (p, want) = sample(dir.path());
        let bytes = std::fs::read(&p).unwrap();
        let (h2, r) = RawReader::open(&bytes[..], 1 << 20).unwrap();
        assert_eq!(h2, header());
        assert_eq!(r.version(), FORMAT_VERSION);
        assert!(r.checked());
        assert_eq!(read_all(&bytes).unwrap(), want);
        // A truncated header is damage; every later truncation is a clean end at a frame boundary or a
        // frame cut short, never damage.
        let start = r.offset() as usize;
        for n in 0..start {
            assert!(matches!(read_all(&bytes[..n]), Err(RawError::Damaged { at: 0, .. })), "{n}");
        }
        for n in start..bytes.len() {
            match read_all(&bytes[..n]) {
                Ok(f) => assert!(want.starts_with(&f), "{n}"),
                Err(RawError::Cut { .. }) => {}
                Err(e) => panic!("cut at {n}: {e}"),
            }
        }
        assert!(matches!(read_all(b"nope"), Err(RawError::Damaged { at: 0, .. })));
    }

    #[test]
    fn every_damaged_byte_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let (p, want) = sample(dir.path());
        let bytes = std::fs::read(&p).unwrap();
        for i in 0..bytes.len() {
            for x in [0x01, 0x80, 0xff, 0x5a] {
                let mut d = bytes.clone();
                d[i] ^= x;
                match read_all(&d) {
                    Ok(f) => panic!("damage at byte {i} (^{x:#x}) not detected: {}", f == want),
                    Err(RawError::Damaged { .. } | RawError::TooLarge { .. }) => {}
                    // Only the last frame's tag can turn it into a longer frame the file cannot hold.
                    Err(RawError::Cut { at }) => assert_eq!(at as usize, i, "damage at byte {i} taken for a cut"),
                    Err(RawError::Io(e)) => panic!("{e}"),
                }
            }
        }
    }

    #[test]
    fn appending_cuts_a_torn_frame_and_refuses_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let (p, mut want) = sample(dir.path());
        // A crash in the middle of a frame.
        let mut bytes = std::fs::read(&p).unwrap();
        let whole = bytes.len();
        bytes.extend_from_slice(b"w\0\0\0\0\0\0\0\x07\0\0\0\x30");
        std::fs::write(&p, &bytes).unwrap();
        let mut w = RawWriter::open(&p, &header()).unwrap();
        w.xlog(Lsn(8), b"D").unwrap();
        w.flush().unwrap();
        let after = std::fs::read(&p).unwrap();
        assert_eq!(after[..whole], bytes[..whole]);
        want.push(Frame::Reconnected);
        want.push(Frame::XLog { wal_start: Lsn(8), payload: Bytes::from_static(b"D") });
        assert_eq!(read_all(&after).unwrap(), want);
        // Not a raw file, a damaged one, a version 1 file: refused, untouched.
        let other = dir.path().join("notes.txt");
        std::fs::write(&other, b"my notes").unwrap();
        assert!(RawWriter::open(&other, &header()).is_err());
        assert_eq!(std::fs::read(&other).unwrap(), b"my notes");
        let mut damaged = after.clone();
        let last = damaged.len() - 1;
        damaged[last] ^= 1;
        std::fs::write(&p, &damaged).unwrap();
        let e = RawWriter::open(&p, &header()).err().unwrap();
        assert!(e.to_string().contains("checksum"), "{e}");
        let v1 = dir.path().join("v1.raw");
        std::fs::write(&v1, v1_file()).unwrap();
        let e = RawWriter::open(&v1, &header()).err().unwrap();
        assert!(e.to_string().contains("format version 1"), "{e}");
    }

    /// A file as walwitness wrote it before checksums (format version 1).
    fn v1_file() -> Vec<u8> {
        let meta = serde_json::to_vec(&header()).unwrap();
        let mut b = MAGIC_V1.to_vec();
        b.extend_from_slice(&(meta.len() as u32).to_be_bytes());
        b.extend_from_slice(&meta);
        b.push(b'w');
        b.extend_from_slice(&5u64.to_be_bytes());
        b.extend_from_slice(&4u32.to_be_bytes());
        b.extend_from_slice(b"B123");
        b.push(b'a');
        b.extend_from_slice(&7u32.to_be_bytes());
        b.extend_from_slice(&2u32.to_be_bytes());
        b.extend_from_slice(b"{}");
        b.push(b'r');
        b.push(b'p');
        b.extend_from_slice(&11u32.to_be_bytes());
        b.extend_from_slice(&9u32.to_be_bytes());
        b.extend_from_slice(&4u32.to_be_bytes());
        b.extend_from_slice(b"null");
        b
    }

    #[test]
    fn version_1_files_are_still_read_unchecked() {
        let bytes = v1_file();
        let (h, r) = RawReader::open(&bytes[..], 1 << 20).unwrap();
        assert_eq!(h, header());
        assert!(!r.checked());
        assert_eq!(
            read_all(&bytes).unwrap(),
            vec![
                Frame::XLog { wal_start: Lsn(5), payload: Bytes::from_static(b"B123") },
                Frame::Activity { xid: 7, session: Bytes::from_static(b"{}") },
                Frame::Reconnected,
                Frame::Partition { oid: 11, root: 9, primary_key: None },
            ]
        );
    }

    #[test]
    fn a_frame_over_the_limit_is_refused_before_it_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.raw");
        let mut w = RawWriter::open(&p, &header()).unwrap();
        w.xlog(Lsn(1), &vec![b'x'; 5000]).unwrap();
        w.flush().unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let (_, mut r) = RawReader::open(&bytes[..], 4096).unwrap();
        let at = r.offset();
        match r.next_frame() {
            Err(RawError::TooLarge { at: a, bytes: 5000, limit: 4096 }) => assert_eq!(a, at),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn appending_with_another_protocol_version_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.raw");
        let h = |v| RawHeader { tables: vec![], slot: "s".into(), publication: "p".into(), proto_version: v };
        drop(RawWriter::open(&p, &h(3)).unwrap());
        let before = std::fs::read(&p).unwrap();
        let e = RawWriter::open(&p, &h(4)).err().unwrap();
        assert!(e.to_string().contains("protocol version 3"), "{e}");
        assert_eq!(std::fs::read(&p).unwrap(), before, "refused untouched");
        assert!(RawWriter::open(&p, &h(3)).is_ok());
    }

    /// Issue 13: `--raw-out` is opened like the log: no symbolic link, and no appending to a file that
    /// is not a raw capture.
    #[test]
    fn raw_out_refuses_symlinks_and_other_files() {
        let dir = tempfile::tempdir().unwrap();
        let h = RawHeader { tables: vec![], slot: "s".into(), publication: "p".into(), proto_version: 3 };
        let target = dir.path().join("precious");
        std::fs::write(&target, "keep me\n").unwrap();
        let link = dir.path().join("r.raw");
        std::os::unix::fs::symlink(&target, &link).unwrap();
        let e = RawWriter::open(&link, &h).err().unwrap();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        let e = RawWriter::open(&target, &h).err().unwrap();
        assert!(e.to_string().contains("not a walwitness raw capture file"), "{e}");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep me\n");
    }
}
