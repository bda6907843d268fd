//! Following a growing log like `tail -f`, by polling (no inotify: it is not available everywhere,
//! e.g. on network file systems, and a poll every 150 ms is well within the 1 s the view promises).
//!
//! The writer appends whole transactions and fsyncs; a reader may still see a line half-written, so
//! only complete lines are handed on and the rest is kept until its newline arrives. The file may not
//! exist yet (we wait), or be rotated: replaced by a new file (inode change) or truncated (size below
//! what we have read) — then it is read again from the start.
use std::fs::{self, File};
use std::io::{self, BufReader, Read};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::Duration;

use super::log::LineReader;

/// How often a quiet file is checked again.
pub const POLL: Duration = Duration::from_millis(150);

/// What one poll found.
#[derive(Debug, PartialEq, Eq)]
pub enum Event {
    /// A complete line is available from [`Follower::line`].
    Line,
    /// Nothing new yet.
    Idle,
    /// The file does not exist (yet).
    Missing,
    /// The file was opened for the first time.
    Opened,
    /// The file was replaced or truncated and is read again from the start; state about the old
    /// content (an open transaction) must be dropped.
    Reopened(&'static str),
}

pub struct Follower {
    path: PathBuf,
    reader: Option<LineReader<BufReader<File>>>,
    id: (u64, u64),
    max_line: usize,
}

impl Follower {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self::with_limit(path, super::log::DEFAULT_MAX_LINE)
    }

    /// A follower refusing lines longer than `max_line` bytes (an error from `poll`, see
    /// [`super::log::too_long`]).
    pub fn with_limit(path: impl Into<PathBuf>, max_line: usize) -> Self {
        Follower { path: path.into(), reader: None, id: (0, 0), max_line }
    }

    fn open(&mut self) -> io::Result<bool> {
        let mut f = match File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        let meta = f.metadata()?;
        let mut head = [0u8; 4];
        let n = f.read(&mut head)?;
        if head[..n].starts_with(&[0x1f, 0x8b]) || head[..n].starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the file is compressed: -f follows the plain log that capture writes (without -f, tail reads gzip and zstd)",
            ));
        }
        let mut r = BufReader::with_capacity(256 * 1024, f);
        // Put back what the magic-byte check read: rewind the fresh reader to the start.
        io::Seek::seek(&mut r, io::SeekFrom::Start(0))?;
        self.id = (meta.dev(), meta.ino());
        self.reader = Some(LineReader::with_limit(r, self.max_line));
        Ok(true)
    }

    /// The line found by the last `Event::Line`.
    pub fn line(&self) -> &[u8] {
        self.reader.as_ref().map_or(&[][..], |r| r.current())
    }

    /// Number of the line found by the last `Event::Line` (1-based, from the start of the file).
    pub fn line_no(&self) -> u64 {
        self.reader.as_ref().map_or(0, |r| r.line_no())
    }

    pub fn poll(&mut self) -> io::Result<Event> {
        let Some(reader) = self.reader.as_mut() else {
            return Ok(if self.open()? { Event::Opened } else { Event::Missing });
        };
        if reader.advance()? {
            return Ok(Event::Line);
        }
        let read_so_far = reader.consumed() + reader.pending() as u64;
        let meta = match fs::metadata(&self.path) {
            Ok(m) => m,
            // Renamed away and the new file not created yet: keep the old one until it appears.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Event::Idle),
            Err(e) => return Err(e),
        };
        let why = if (meta.dev(), meta.ino()) != self.id {
            "replaced"
        } else if meta.len() < read_so_far {
            "truncated"
        } else {
            return Ok(Event::Idle);
        };
        self.reader = None;
        if !self.open()? {
            return Ok(Event::Missing);
        }
        Ok(Event::Reopened(why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn lines(f: &mut Follower) -> (Vec<String>, Event) {
        let mut out = Vec::new();
        loop {
            match f.poll().unwrap() {
                Event::Line => out.push(String::from_utf8(f.line().to_vec()).unwrap()),
                e => return (out, e),
            }
        }
    }

    #[test]
    fn waits_continues_and_follows_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.jsonl");
        let mut f = Follower::new(&path);
        assert_eq!(f.poll().unwrap(), Event::Missing);
        let mut w = File::create(&path).unwrap();
        assert_eq!(f.poll().unwrap(), Event::Opened);
        w.write_all(b"a\nb").unwrap();
        assert_eq!(lines(&mut f), (vec!["a".to_owned()], Event::Idle));
        w.write_all(b"c\n").unwrap();
        assert_eq!(lines(&mut f), (vec!["bc".to_owned()], Event::Idle));
        // Truncated in place (copytruncate).
        w.set_len(0).unwrap();
        assert_eq!(lines(&mut f), (vec![], Event::Reopened("truncated")));
        let mut w = fs::OpenOptions::new().append(true).open(&path).unwrap();
        w.write_all(b"d\n").unwrap();
        assert_eq!(lines(&mut f), (vec!["d".to_owned()], Event::Idle));
        // Replaced (rename + create).
        fs::rename(&path, dir.path().join("old")).unwrap();
        w.write_all(b"e\n").unwrap();
        assert_eq!(lines(&mut f), (vec!["e".to_owned()], Event::Idle));
        let mut w2 = File::create(&path).unwrap();
        w2.write_all(b"f\n").unwrap();
        assert_eq!(lines(&mut f), (vec![], Event::Reopened("replaced")));
        assert_eq!(lines(&mut f), (vec!["f".to_owned()], Event::Idle));
        assert_eq!(f.line_no(), 1);
    }
}
