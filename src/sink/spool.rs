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
//!
//! On a shared host the directory is an attack surface: another user who pre-creates `<out>.spool/`
//! (mode 0777) could swap a spool file for one of the same length, and a 2,000-row transaction would
//! be logged as nothing and acknowledged — lost for good. So the directory is created 0700 without
//! following a symbolic link, an existing one must be ours and closed to group and others (else the
//! capture refuses and says what to do), every file in it is opened relative to the directory's
//! descriptor (`openat`, `O_NOFOLLOW`), and a spool is read back through the descriptor it was written
//! with (`pread`), never by reopening its name.
use std::ffi::CStr;
use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use rustix::fs::{AtFlags, Mode, OFlags, CWD};

use crate::protocol::Lsn;

/// Write buffer of an open spool and read buffer of a replay.
pub const BUF: usize = 64 * 1024;
/// A pgoutput message is one WAL change; PostgreSQL caps a datum at 1 GB.
const MAX_MESSAGE: u32 = 1 << 30;
const EXT: &str = "spool";

/// The directory holding the spools of one capture: `<out>.spool/`, or a private temporary directory when
/// the log goes to standard output. Every file operation goes through its open descriptor.
pub struct SpoolDir {
    path: PathBuf,
    fd: Arc<OwnedFd>,
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

/// Opens a directory without following a symbolic link and checks, on the descriptor, that it is ours
/// and closed to group and others.
fn open_private_dir(path: &Path) -> io::Result<OwnedFd> {
    let refuse = |why: String| {
        io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "refusing the spool directory {}: {why}; another user could read the spooled rows, or swap a spool file and make a transaction's deletes vanish from the log. If you did not create it, remove it (rm -r -- '{}'); if it is yours, chmod 700 it; then run the same command again",
                path.display(),
                path.display()
            ),
        )
    };
    let fd = rustix::fs::openat(
        CWD,
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| match e {
        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR => {
            refuse("it is a symbolic link or not a directory".into())
        }
        e => io::Error::from(e),
    })?;
    let dir = File::from(fd);
    let meta = dir.metadata()?;
    let me = super::outfile::euid();
    if meta.uid() != me {
        return Err(refuse(format!("it belongs to uid {}, not to the user running walwitness (uid {me})", meta.uid())));
    }
    if super::outfile::exposed(meta.mode()) {
        return Err(refuse(format!("group or others have access to it (mode {:04o})", meta.mode() & 0o7777)));
    }
    Ok(OwnedFd::from(dir))
}

impl SpoolDir {
    /// Opens (creating with mode 0700) the spool directory next to `log`, deleting spools left by an
    /// earlier run: their transactions will be sent again whole. An existing directory that is a
    /// symbolic link, not ours, or open to others is refused.
    pub fn beside(log: &Path) -> io::Result<SpoolDir> {
        let mut name = log.file_name().map(|n| n.to_os_string()).unwrap_or_default();
        name.push(".spool");
        let path = log.with_file_name(name);
        match rustix::fs::mkdirat(CWD, &path, Mode::RWXU) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        let dir = SpoolDir { fd: Arc::new(open_private_dir(&path)?), path, _temp: None, next: 0 };
        for name in dir.names()? {
            if name.ends_with(&format!(".{EXT}")) {
                dir.remove(&name)?;
            }
        }
        Ok(dir)
    }

    /// A temporary directory (mode 0700: by default it would be 0755), removed when the capture ends.
    pub fn temporary() -> io::Result<SpoolDir> {
        use std::os::unix::fs::PermissionsExt;
        let t = tempfile::Builder::new()
            .prefix("walwitness-spool.")
            .permissions(std::fs::Permissions::from_mode(0o700))
            .tempdir()?;
        let fd = open_private_dir(t.path())?;
        Ok(SpoolDir { path: t.path().to_owned(), fd: Arc::new(fd), _temp: Some(t), next: 0 })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new, empty spool for transaction `xid`.
    pub fn create(&mut self, xid: u32) -> io::Result<Spool> {
        self.next += 1;
        let name = format!("xid-{xid}-{}.{EXT}", self.next);
        let file = self.create_new(&name)?;
        Ok(Spool {
            dir: self.fd.clone(),
            path: self.path.join(&name),
            name,
            out: BufWriter::with_capacity(BUF, file),
            len: 0,
            keep: false,
        })
    }

    /// The names of the directory's entries (those that are UTF-8; walwitness writes no others).
    pub fn names(&self) -> io::Result<Vec<String>> {
        let mut v = Vec::new();
        for e in rustix::fs::Dir::read_from(&*self.fd)? {
            let e = e?;
            let n: &CStr = e.file_name();
            if let Ok(n) = n.to_str() {
                if n != "." && n != ".." {
                    v.push(n.to_owned());
                }
            }
        }
        Ok(v)
    }

    /// A new file (mode 0600) in the directory; fails if the name exists.
    pub fn create_new(&self, name: &str) -> io::Result<File> {
        let fd = rustix::fs::openat(
            &*self.fd,
            name,
            OFlags::RDWR | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::RUSR | Mode::WUSR,
        )?;
        Ok(File::from(fd))
    }

    /// An existing regular file of the directory, read and write, never through a symbolic link.
    pub fn open_existing(&self, name: &str) -> io::Result<File> {
        let fd = rustix::fs::openat(
            &*self.fd,
            name,
            OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        let f = File::from(fd);
        let meta = f.metadata()?;
        if !meta.file_type().is_file() || meta.uid() != super::outfile::euid() || meta.nlink() != 1 {
            return Err(io::Error::new(io::ErrorKind::PermissionDenied, "not a regular file of ours with one name"));
        }
        Ok(f)
    }

    pub fn exists(&self, name: &str) -> bool {
        rustix::fs::statat(&*self.fd, name, AtFlags::SYMLINK_NOFOLLOW).is_ok()
    }

    pub fn remove(&self, name: &str) -> io::Result<()> {
        Ok(rustix::fs::unlinkat(&*self.fd, name, AtFlags::empty())?)
    }

    pub fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        Ok(rustix::fs::renameat(&*self.fd, from, &*self.fd, to)?)
    }

    /// Makes the directory's entries durable.
    pub fn sync(&self) -> io::Result<()> {
        Ok(rustix::fs::fsync(&*self.fd)?)
    }

    /// A durable spool found again by a later run, opened from `file` (see [`SpoolDir::open_existing`]);
    /// `len` is the length its metadata recorded.
    pub fn reopen(&self, name: &str, mut file: File, len: u64) -> io::Result<Spool> {
        file.seek(SeekFrom::Start(len))?;
        Ok(Spool {
            dir: self.fd.clone(),
            path: self.path.join(name),
            name: name.to_owned(),
            out: BufWriter::with_capacity(BUF, file),
            len,
            keep: true,
        })
    }
}

/// One transaction's spooled messages. The file is deleted when the spool is dropped.
pub struct Spool {
    dir: Arc<OwnedFd>,
    /// For messages only: every access goes through `dir` and `name`, or the open file.
    path: PathBuf,
    name: String,
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

    pub fn name(&self) -> &str {
        &self.name
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

    /// Reads the records from `offset` to the current end, without disturbing later appends. Reads go
    /// through the descriptor the spool was written with (positioned reads on a duplicate), so a file
    /// swapped in under the same name is never read.
    pub fn read_from(&mut self, offset: u64) -> io::Result<SpoolReader> {
        self.out.flush()?;
        let f = self.out.get_ref().try_clone()?;
        Ok(SpoolReader {
            r: BufReader::with_capacity(BUF, At { f, pos: offset }),
            remaining: self.len.saturating_sub(offset),
        })
    }

    /// SHA-256 of the whole spool, read through its descriptor.
    pub fn sha256(&mut self) -> io::Result<[u8; 32]> {
        self.out.flush()?;
        sha256_at(self.out.get_ref(), self.len)
    }
}

/// SHA-256 of the first `len` bytes of `f`, by positioned reads; a file of another length is an error.
pub fn sha256_at(f: &File, len: u64) -> io::Result<[u8; 32]> {
    use sha2::{Digest, Sha256};
    if f.metadata()?.len() != len {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "length differs from the recorded one"));
    }
    let mut h = Sha256::new();
    let mut r = At { f: f.try_clone()?, pos: 0 };
    let mut buf = vec![0u8; BUF];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

/// Positioned reads: a duplicate descriptor shares the file offset, so reading must not move it.
struct At {
    f: File,
    pos: u64,
}

impl Read for At {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.f.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Spool {
    /// Makes what was spooled durable (fsync) under `name` in the same directory; from then on dropping
    /// the spool keeps the file, and only [`Spool::discard`] removes it.
    pub fn persist(&mut self, name: &str) -> io::Result<()> {
        self.out.flush()?;
        self.out.get_ref().sync_all()?;
        rustix::fs::renameat(&*self.dir, self.name.as_str(), &*self.dir, name)?;
        self.path = self.path.with_file_name(name);
        self.name = name.to_owned();
        self.keep = true;
        Ok(())
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
            let _ = rustix::fs::unlinkat(&*self.dir, self.name.as_str(), AtFlags::empty());
        }
    }
}

pub struct SpoolReader {
    r: BufReader<At>,
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

    /// Issue 13: a spool file swapped for another of the same length under its name is never read: the
    /// replay goes through the descriptor the spool was written with.
    #[test]
    fn a_swapped_spool_file_is_not_read() {
        let tmp = tempfile::tempdir().unwrap();
        let mut dir = SpoolDir::beside(&tmp.path().join("x.jsonl")).unwrap();
        let mut s = dir.create(9).unwrap();
        for i in 0..2000u64 {
            s.append(Lsn(i), b"D delete of one row").unwrap();
        }
        let first = all(&mut s, 0);
        // Another file of the same length, holding one harmless record and padding, renamed over it.
        let len = s.len() as usize;
        let mut fake = Vec::new();
        let pad = len - 12 - 12;
        fake.extend_from_slice(&(pad as u32).to_be_bytes());
        fake.extend_from_slice(&0u64.to_be_bytes());
        fake.extend(std::iter::repeat_n(b' ', pad));
        fake.extend_from_slice(&0u32.to_be_bytes());
        fake.extend_from_slice(&0u64.to_be_bytes());
        assert_eq!(fake.len(), len);
        let forged = dir.path().join("forged");
        std::fs::write(&forged, &fake).unwrap();
        std::fs::rename(&forged, s.path()).unwrap();
        assert_eq!(all(&mut s, 0), first);
        assert_eq!(first.len(), 2000);
        // Appends after the swap still go to (and are read from) the real spool.
        s.append(Lsn(5000), b"late").unwrap();
        assert_eq!(all(&mut s, 0).last().unwrap(), &(5000, b"late".to_vec()));
    }

    fn refused(log: &Path) -> String {
        match SpoolDir::beside(log) {
            Ok(_) => panic!("a hostile spool directory was accepted"),
            Err(e) => e.to_string(),
        }
    }

    /// Issue 13: a `<out>.spool/` another user prepared (open to everyone, not ours, or a symbolic
    /// link) is refused with what to do; the old code used it as it was.
    #[test]
    fn a_hostile_spool_directory_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let log = tmp.path().join("x.jsonl");
        let spool = tmp.path().join("x.jsonl.spool");
        std::fs::create_dir(&spool).unwrap();
        std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = refused(&log);
        assert!(e.contains("mode 0777") && e.contains("rm -r") && e.contains("chmod 700"), "{e}");
        std::fs::set_permissions(&spool, std::fs::Permissions::from_mode(0o700)).unwrap();
        if super::super::outfile::euid() == 0 {
            std::os::unix::fs::chown(&spool, Some(65534), None).unwrap();
            let e = refused(&log);
            assert!(e.contains("belongs to uid 65534"), "{e}");
        }
        std::fs::remove_dir(&spool).unwrap();
        // A symbolic link to a directory elsewhere (even a private one of ours) is not followed.
        let elsewhere = tmp.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::set_permissions(&elsewhere, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::write(elsewhere.join("keep.spool"), "x").unwrap();
        std::os::unix::fs::symlink(&elsewhere, &spool).unwrap();
        let e = refused(&log);
        assert!(e.contains("symbolic link"), "{e}");
        assert!(elsewhere.join("keep.spool").exists(), "leftover cleanup went through the link");
        // Ours and private: used.
        std::fs::remove_file(&spool).unwrap();
        let d = SpoolDir::beside(&log).unwrap();
        assert_eq!(std::fs::metadata(d.path()).unwrap().permissions().mode() & 0o777, 0o700);
        let t = SpoolDir::temporary().unwrap();
        assert_eq!(std::fs::metadata(t.path()).unwrap().permissions().mode() & 0o777, 0o700);
    }
}
