//! Splitting a log into lines without ever mistaking a half-written last line for a record, with
//! memory bounded by the longest line accepted.

use std::fmt;
use std::io::{self, BufRead};
use std::sync::mpsc::SyncSender;

pub use crate::cli::DEFAULT_MAX_LINE;

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
            let eof = match fill_block(&mut input, buf, max_line, &tx) {
                Filled::Block(b, eof) => {
                    buf = b;
                    eof
                }
                Filled::Stop => return,
            };
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

/// The size [`read_chunks`] fills a block to (further only until a line ends).
const BLOCK: usize = 128 * 1024;
/// The most it takes from the input at a time once a block is full.
const STEP: usize = 64 * 1024;

/// How filling one block ended.
enum Filled {
    /// The block, and whether the input ended.
    Block(Vec<u8>, bool),
    /// The reader is done: a line over the limit or a read error was sent.
    Stop,
}

/// Fills `buf` (holding the carry: a line's start, no newline) to about [`BLOCK`] bytes, and further
/// only until a line ends, so long lines stay whole.
fn fill_block(
    input: &mut Box<dyn BufRead + Send>,
    mut buf: Vec<u8>,
    max_line: usize,
    tx: &SyncSender<Chunk>,
) -> Filled {
    let mut searched = buf.len();
    let mut found = false;
    while buf.len() < BLOCK || !found {
        match input.fill_buf() {
            Ok([]) => return Filled::Block(buf, true),
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
                        return Filled::Stop;
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
                return Filled::Stop;
            }
        }
    }
    Filled::Block(buf, false)
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

#[cfg(test)]
mod tests {
    use std::fs::File;
    use std::io::{self, BufReader};

    use super::super::input::decompressing;
    use super::*;

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
}
