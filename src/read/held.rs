//! The rows of the transaction being read, held until its commit (`replay`, `tail --json`).
//!
//! A transaction can be as large as the log (one `DELETE` of every row), and a crafted file can make
//! it so from a few megabytes of gzip: past [`IN_MEMORY`] bytes the rows move to an unnamed temporary
//! file (in `$TMPDIR`, removed by the system however the process ends), so memory stays bounded.
use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};

/// Bytes held in memory before spilling to a temporary file.
pub const IN_MEMORY: usize = 8 << 20;

#[derive(Default)]
pub struct Held {
    mem: Vec<u8>,
    file: Option<io::BufWriter<File>>,
    /// Bytes in the file (valid only while `file` is in use).
    spilled: u64,
    limit: Option<usize>,
}

fn spill_error(e: io::Error) -> io::Error {
    io::Error::new(
        e.kind(),
        format!(
            "cannot hold a large transaction in a temporary file ({e}); set TMPDIR to a directory with room \
             (it needs about the size of the transaction's lines)"
        ),
    )
}

impl Held {
    pub fn new() -> Self {
        Self::default()
    }

    /// A holder that spills past `limit` bytes instead of [`IN_MEMORY`] (tests).
    pub fn with_limit(limit: usize) -> Self {
        Held { limit: Some(limit), ..Self::default() }
    }

    pub fn is_empty(&self) -> bool {
        self.mem.is_empty() && self.spilled == 0
    }

    /// Whether the rows went to a temporary file.
    pub fn spilled(&self) -> bool {
        self.spilled > 0
    }

    /// Holds `line` followed by a newline.
    pub fn push_line(&mut self, line: &[u8]) -> io::Result<()> {
        self.push(&[line, b"\n"])
    }

    /// Holds `bytes` as they are.
    pub fn push_bytes(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.push(&[bytes])
    }

    fn push(&mut self, parts: &[&[u8]]) -> io::Result<()> {
        let limit = self.limit.unwrap_or(IN_MEMORY);
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if self.file.is_none() && self.mem.len() + len <= limit {
            for p in parts {
                self.mem.extend_from_slice(p);
            }
            return Ok(());
        }
        if self.file.is_none() {
            let f = match tempfile::tempfile() {
                Ok(f) => f,
                Err(e) => return Err(spill_error(e)),
            };
            self.file = Some(io::BufWriter::with_capacity(256 * 1024, f));
            self.spilled = 0;
        }
        let Some(f) = self.file.as_mut() else { return Ok(()) };
        let mut r = f.write_all(&self.mem);
        for p in parts {
            r = r.and_then(|()| f.write_all(p));
        }
        self.spilled += (self.mem.len() + len) as u64;
        self.mem.clear();
        // The memory block is not needed any more: give it back.
        self.mem.shrink_to(64 * 1024);
        r.map_err(spill_error)
    }

    /// Writes what is held to `out` (in order) and forgets it.
    pub fn write_to(&mut self, out: &mut impl Write) -> io::Result<()> {
        if let Some(mut f) = self.file.take() {
            let copied = (|| {
                f.flush()?;
                let mut file = f.into_inner().map_err(|e| e.into_error())?;
                file.seek(SeekFrom::Start(0))?;
                let n = io::copy(&mut io::Read::take(&mut file, self.spilled), out)?;
                if n != self.spilled {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the temporary file was cut short"));
                }
                Ok(())
            })();
            self.spilled = 0;
            copied?;
        }
        out.write_all(&self.mem)?;
        self.mem.clear();
        Ok(())
    }

    /// Forgets what is held.
    pub fn clear(&mut self) {
        self.file = None;
        self.spilled = 0;
        self.mem.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spills_and_writes_back_in_order() {
        let mut h = Held::with_limit(100);
        let mut want = Vec::new();
        for i in 0..1000 {
            let l = format!("line {i}");
            h.push_line(l.as_bytes()).unwrap();
            want.extend_from_slice(l.as_bytes());
            want.push(b'\n');
        }
        assert!(h.spilled());
        assert!(h.mem.capacity() <= 64 * 1024);
        let mut out = Vec::new();
        h.write_to(&mut out).unwrap();
        assert_eq!(out, want);
        assert!(h.is_empty());
        // Reused after a clear: small again.
        h.push_line(b"x").unwrap();
        h.push_line(b"y").unwrap();
        h.clear();
        h.push_line(b"z").unwrap();
        let mut out = Vec::new();
        h.write_to(&mut out).unwrap();
        assert_eq!(out, b"z\n");
    }
}
