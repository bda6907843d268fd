//! The raw capture file (`capture --raw-out`): the pgoutput payloads as received, for offline
//! re-decoding with `walwitness replay --raw` into the same records a live capture writes.
//!
//! Layout (all integers big-endian):
//! ```text
//! header: b"WWRAW" 0x01, u32 n, n bytes of JSON {"tables":[{"schema","table","primary_key"}],"slot","publication","proto_version"}
//! frame:  b'w', u64 wal_start, u32 n, n bytes   — one XLogData payload (exactly one pgoutput message)
//!         b'a', u32 xid, u32 n, n bytes          — the activity source's session for xid (JSON), as used live
//!         b'r'                                   — the connection was re-established: a transaction
//!                                                  in progress is sent again from its Begin
//!         b'p', u32 oid, u32 root, u32 n, n bytes — a partition of watched table `root` found while
//!                                                  capturing; JSON of its primary key (array or null)
//! ```
//! The header's tables carry `oid` and `partitions` ([{"oid","primary_key"}]) since format version 2
//! of the log; files without them are decoded matching tables by name.
//! The file is written through a buffer and is not fsynced: it is a companion for analysis, not the
//! evidence itself (the log is). A frame cut short at the end (a crash) is reported and ignored.
//! Trigger attribution messages are replayed but cannot be verified offline (the key stays on the
//! server), so offline output matches the live log for captures with `--attribution none|activity`.
//! Transactions the server streamed before commit (larger than `logical_decoding_work_mem`) and prepared
//! transactions are assembled from their spool files and are not stored in the raw file.
use std::io::{self, BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::protocol::Lsn;

const MAGIC: &[u8; 6] = b"WWRAW\x01";

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

impl RawWriter {
    /// Creates (or appends to) a raw file; a new file gets the header. Opened like the log
    /// (`sink::outfile`: no symbolic link, ours, one name); an existing file that is not a raw
    /// capture file is refused untouched.
    pub fn open(path: &Path, header: &RawHeader) -> io::Result<RawWriter> {
        let f = super::outfile::open_private(path, super::outfile::Access::Append)?.file;
        let fresh = f.metadata()?.len() == 0;
        if !fresh {
            let mut head = [0u8; MAGIC.len()];
            let n = f.read_at(&mut head, 0)?;
            if !MAGIC.starts_with(&head[..n]) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "it is not a walwitness raw capture file, so it was left untouched: give a new file, or the raw file of an earlier capture",
                ));
            }
        }
        let mut w = RawWriter { out: BufWriter::with_capacity(256 * 1024, f) };
        if fresh {
            let meta = serde_json::to_vec(header).map_err(io::Error::other)?;
            w.out.write_all(MAGIC)?;
            w.out.write_all(&(meta.len() as u32).to_be_bytes())?;
            w.out.write_all(&meta)?;
        } else {
            // Appending after a previous run: it may have died mid-transaction.
            w.reconnected()?;
        }
        Ok(w)
    }

    pub fn xlog(&mut self, wal_start: Lsn, payload: &[u8]) -> io::Result<()> {
        self.out.write_all(b"w")?;
        self.out.write_all(&wal_start.as_u64().to_be_bytes())?;
        self.out.write_all(&(payload.len() as u32).to_be_bytes())?;
        self.out.write_all(payload)
    }

    pub fn activity(&mut self, xid: u32, session_json: &[u8]) -> io::Result<()> {
        self.out.write_all(b"a")?;
        self.out.write_all(&xid.to_be_bytes())?;
        self.out.write_all(&(session_json.len() as u32).to_be_bytes())?;
        self.out.write_all(session_json)
    }

    pub fn partition(&mut self, oid: u32, root: u32, primary_key: Option<&[String]>) -> io::Result<()> {
        let pk = serde_json::to_vec(&primary_key).map_err(io::Error::other)?;
        self.out.write_all(b"p")?;
        self.out.write_all(&oid.to_be_bytes())?;
        self.out.write_all(&root.to_be_bytes())?;
        self.out.write_all(&(pk.len() as u32).to_be_bytes())?;
        self.out.write_all(&pk)
    }

    pub fn reconnected(&mut self) -> io::Result<()> {
        self.out.write_all(b"r")
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
}

/// Pure reader over a whole raw file's bytes.
pub struct RawReader {
    data: Bytes,
    pos: usize,
}

impl RawReader {
    pub fn new(data: Bytes) -> Result<(RawHeader, RawReader), String> {
        if data.len() < 10 || &data[..6] != MAGIC {
            return Err("not a walwitness raw capture file (bad magic)".into());
        }
        let n = u32::from_be_bytes([data[6], data[7], data[8], data[9]]) as usize;
        let end = 10usize.checked_add(n).filter(|e| *e <= data.len()).ok_or("raw file header is cut short")?;
        let header: RawHeader =
            serde_json::from_slice(&data[10..end]).map_err(|e| format!("raw file header is not understood: {e}"))?;
        Ok((header, RawReader { data, pos: end }))
    }

    /// The next frame; `Ok(None)` at the end; an error names the offset of a frame cut short.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, String> {
        let d = &self.data;
        let at = self.pos;
        let Some(&tag) = d.get(at) else { return Ok(None) };
        let cut = || format!("frame at byte {at} is cut short (the capture stopped while writing it)");
        let take = |from: usize, n: usize| -> Result<usize, String> {
            from.checked_add(n).filter(|e| *e <= d.len()).ok_or_else(cut)
        };
        let u32_at = |i: usize| u32::from_be_bytes([d[i], d[i + 1], d[i + 2], d[i + 3]]);
        match tag {
            b'w' => {
                let h = take(at + 1, 12)?;
                let lsn = u64::from_be_bytes(d[at + 1..at + 9].try_into().map_err(|_| cut())?);
                let n = u32_at(at + 9) as usize;
                let end = take(h, n)?;
                let payload = d.slice(h..end);
                self.pos = end;
                Ok(Some(Frame::XLog { wal_start: Lsn(lsn), payload }))
            }
            b'a' => {
                let h = take(at + 1, 8)?;
                let xid = u32_at(at + 1);
                let n = u32_at(at + 5) as usize;
                let end = take(h, n)?;
                let session = d.slice(h..end);
                self.pos = end;
                Ok(Some(Frame::Activity { xid, session }))
            }
            b'r' => {
                self.pos = at + 1;
                Ok(Some(Frame::Reconnected))
            }
            b'p' => {
                let h = take(at + 1, 12)?;
                let (oid, root) = (u32_at(at + 1), u32_at(at + 5));
                let n = u32_at(at + 9) as usize;
                let end = take(h, n)?;
                let primary_key = serde_json::from_slice(&d[h..end])
                    .map_err(|e| format!("partition frame at byte {at} is not understood: {e}"))?;
                self.pos = end;
                Ok(Some(Frame::Partition { oid, root, primary_key }))
            }
            other => Err(format!("unknown frame type {other:#04x} at byte {at}: the file is damaged")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_truncation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.raw");
        let h = RawHeader {
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
        };
        let mut w = RawWriter::open(&p, &h).unwrap();
        w.xlog(Lsn(5), b"B123").unwrap();
        w.activity(7, b"{}").unwrap();
        w.partition(11, 9, Some(&["id".to_owned()])).unwrap();
        w.flush().unwrap();
        drop(w);
        let mut w = RawWriter::open(&p, &h).unwrap();
        w.xlog(Lsn(6), b"C").unwrap();
        w.flush().unwrap();
        let bytes = std::fs::read(&p).unwrap();
        let (h2, mut r) = RawReader::new(Bytes::from(bytes.clone())).unwrap();
        assert_eq!(h2, h);
        let mut frames = Vec::new();
        while let Some(f) = r.next_frame().unwrap() {
            frames.push(f);
        }
        assert_eq!(
            frames,
            vec![
                Frame::XLog { wal_start: Lsn(5), payload: Bytes::from_static(b"B123") },
                Frame::Activity { xid: 7, session: Bytes::from_static(b"{}") },
                Frame::Partition { oid: 11, root: 9, primary_key: Some(vec!["id".into()]) },
                Frame::Reconnected,
                Frame::XLog { wal_start: Lsn(6), payload: Bytes::from_static(b"C") },
            ]
        );
        // Every truncation is either a clean end or an error naming the offset, never a panic.
        for n in 0..bytes.len() {
            if let Ok((_, mut r)) = RawReader::new(Bytes::copy_from_slice(&bytes[..n])) {
                while let Ok(Some(_)) = r.next_frame() {}
            }
        }
        assert!(RawReader::new(Bytes::from_static(b"nope")).is_err());
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
