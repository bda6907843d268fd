//! Spool files: the pgoutput messages of a transaction that is not final yet (streamed in progress, or
//! prepared), kept on disk until its Stream Commit / COMMIT PREPARED says whether and how it is logged.
//!
//! Why on disk: a streamed transaction can be any size (a 1,000,000-row cull), and the server streams it
//! precisely because it did not want to keep it in memory. Each open spool costs one write buffer of
//! `BUF` bytes in memory; reading back costs one read buffer of `BUF` plus one message at a time.
//!
//! Format of one record: Int32 length of the message, Int64 LSN (of its XLogData header), then the raw
//! pgoutput message bytes, all big-endian. Spools are scratch data, never fsynced: after a crash or a
//! reconnect the server sends unfinished transactions again from their start, so they are deleted (on
//! drop, and every leftover when a capture starts).
use std::fs::{File, OpenOptions};
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use bytes::Bytes;

use crate::protocol::Lsn;

/// Write buffer of an open spool and read buffer of a replay.
pub const BUF: usize = 64 * 1024;
/// A pgoutput message is one WAL change; PostgreSQL caps a datum at 1 GB.
const MAX_MESSAGE: u32 = 1 << 30;
const EXT: &str = "spool";

/// The directory holding the spools of one capture: `<out>.spool/`, or a private temporary directory when
/// the log goes to standard output.
pub struct SpoolDir {
    path: PathBuf,
    _temp: Option<tempfile::TempDir>,
    next: u64,
}

impl Drop for SpoolDir {
    /// Leaves nothing next to the log once no spool is left in it (an open one keeps the directory).
    fn drop(&mut self) {
        if self._temp.is_none() {
            let _ = std::fs::remove_dir(&self.path);
        }
    }
}

impl SpoolDir {
    /// Opens (creating with mode 0700) the spool directory next to `log`, deleting spools left by an
    /// earlier run: their transactions will be sent again whole.
    pub fn beside(log: &Path) -> io::Result<SpoolDir> {
        let mut name = log.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push(".spool");
        let path = log.with_file_name(name);
        std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&path)?;
        for e in std::fs::read_dir(&path)? {
            let p = e?.path();
            if p.extension().is_some_and(|x| x == EXT) {
                std::fs::remove_file(&p)?;
            }
        }
        Ok(SpoolDir { path, _temp: None, next: 0 })
    }

    /// A temporary directory, removed when the capture ends.
    pub fn temporary() -> io::Result<SpoolDir> {
        let t = tempfile::Builder::new().prefix("walwitness-spool.").tempdir()?;
        Ok(SpoolDir { path: t.path().to_owned(), _temp: Some(t), next: 0 })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new, empty spool for transaction `xid`.
    pub fn create(&mut self, xid: u32) -> io::Result<Spool> {
        self.next += 1;
        let path = self.path.join(format!("xid-{xid}-{}.{EXT}", self.next));
        let file = OpenOptions::new().read(true).write(true).create_new(true).mode(0o600).open(&path)?;
        Ok(Spool { path, out: BufWriter::with_capacity(BUF, file), len: 0, keep: false })
    }
}

/// One transaction's spooled messages. The file is deleted when the spool is dropped.
pub struct Spool {
    path: PathBuf,
    out: BufWriter<File>,
    len: u64,
    /// A durable spool (`sink::prepared`) outlives the process: dropping it keeps the file.
    keep: bool,
}

impl Spool {
    pub fn append(&mut self, lsn: Lsn, msg: &[u8]) -> io::Result<()> {
        let n = u32::try_from(msg.len()).ok().filter(|n| *n <= MAX_MESSAGE).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("a {} byte message is too large", msg.len()))
        })?;
        self.out.write_all(&n.to_be_bytes())?;
        self.out.write_all(&lsn.0.to_be_bytes())?;
        self.out.write_all(msg)?;
        self.len += 12 + u64::from(n);
        Ok(())
    }

    /// Bytes spooled: the offset the next record will have.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Drops every record at or after `offset` (an offset returned by [`Spool::len`]).
    pub fn truncate(&mut self, offset: u64) -> io::Result<()> {
        if offset >= self.len {
            return Ok(());
        }
        self.out.flush()?;
        let f = self.out.get_mut();
        f.set_len(offset)?;
        f.seek(SeekFrom::Start(offset))?;
        self.len = offset;
        Ok(())
    }

    /// Reads the records from `offset` to the current end, without disturbing later appends.
    pub fn read_from(&mut self, offset: u64) -> io::Result<SpoolReader> {
        self.out.flush()?;
        let mut f = File::open(&self.path)?;
        f.seek(SeekFrom::Start(offset))?;
        Ok(SpoolReader { r: BufReader::with_capacity(BUF, f), remaining: self.len.saturating_sub(offset) })
    }
}

impl Spool {
    /// Makes what was spooled durable (fsync) under `name` in the same directory; from then on dropping
    /// the spool keeps the file, and only [`Spool::discard`] removes it.
    pub fn persist(&mut self, name: &str) -> io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        let to = self.path.with_file_name(name);
        std::fs::rename(&self.path, &to)?;
        self.path = to;
        self.keep = true;
        Ok(())
    }

    /// A durable spool found again by a later run; `len` is the length its metadata recorded.
    pub fn reopen(path: PathBuf, len: u64) -> io::Result<Spool> {
        let mut file = OpenOptions::new().read(true).write(true).custom_flags(libc::O_NOFOLLOW).open(&path)?;
        file.seek(SeekFrom::Start(len))?;
        Ok(Spool { path, out: BufWriter::with_capacity(BUF, file), len, keep: true })
    }

    pub fn is_durable(&self) -> bool {
        self.keep
    }

    /// Removes the file, durable or not.
    pub fn discard(mut self) {
        self.keep = false;
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

pub struct SpoolReader {
    r: BufReader<File>,
    remaining: u64,
}

impl SpoolReader {
    /// The next record, or `None` at the end of what was spooled when the reader was made.
    pub fn next_record(&mut self) -> io::Result<Option<(Lsn, Bytes)>> {
        if self.remaining == 0 {
            return Ok(None);
        }
        let mut head = [0u8; 12];
        self.r.read_exact(&mut head)?;
        let n = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let lsn = u64::from_be_bytes([head[4], head[5], head[6], head[7], head[8], head[9], head[10], head[11]]);
        if n > MAX_MESSAGE || 12 + u64::from(n) > self.remaining {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "damaged spool record"));
        }
        let mut buf = vec![0u8; n as usize];
        self.r.read_exact(&mut buf)?;
        self.remaining -= 12 + u64::from(n);
        Ok(Some((Lsn(lsn), Bytes::from(buf))))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all(s: &mut Spool, from: u64) -> Vec<(u64, Vec<u8>)> {
        let mut r = s.read_from(from).unwrap();
        let mut v = Vec::new();
        while let Some((l, b)) = r.next_record().unwrap() {
            v.push((l.0, b.to_vec()));
        }
        v
    }

    #[test]
    fn append_truncate_read_and_cleanup() {
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("x.jsonl");
        let mut dir = SpoolDir::beside(&log).unwrap();
        assert_eq!(dir.path(), tmp.path().join("x.jsonl.spool"));
        let mut s = dir.create(7).unwrap();
        s.append(Lsn(1), b"one").unwrap();
        let mark = s.len();
        s.append(Lsn(2), b"two").unwrap();
        s.append(Lsn(3), b"").unwrap();
        assert_eq!(all(&mut s, 0), vec![(1, b"one".to_vec()), (2, b"two".to_vec()), (3, vec![])]);
        assert_eq!(all(&mut s, mark), vec![(2, b"two".to_vec()), (3, vec![])]);
        s.truncate(mark).unwrap();
        s.append(Lsn(4), b"four").unwrap();
        assert_eq!(all(&mut s, 0), vec![(1, b"one".to_vec()), (4, b"four".to_vec())]);
        let p = s.path().to_owned();
        assert!(p.exists());
        drop(s);
        assert!(!p.exists());
        // A leftover from a crashed run is removed when the next run opens the directory.
        let left = dir.create(8).unwrap();
        let lp = left.path().to_owned();
        std::mem::forget(left);
        assert!(lp.exists());
        let _dir2 = SpoolDir::beside(&log).unwrap();
        assert!(!lp.exists());
    }

    #[test]
    fn large_spool_reads_back_in_order() {
        let mut dir = SpoolDir::temporary().unwrap();
        let mut s = dir.create(1).unwrap();
        for i in 0..50_000u64 {
            s.append(Lsn(i), format!("message {i}").as_bytes()).unwrap();
        }
        let mut r = s.read_from(0).unwrap();
        let mut i = 0u64;
        while let Some((l, b)) = r.next_record().unwrap() {
            assert_eq!(l.0, i);
            assert_eq!(b, format!("message {i}").as_bytes());
            i += 1;
        }
        assert_eq!(i, 50_000);
    }
}
