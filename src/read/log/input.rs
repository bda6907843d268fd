//! Opening a log: plain, gzip or zstd (several frames included), told apart by magic bytes.

use std::fmt;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::Path;

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

#[cfg(test)]
mod tests {
    use std::io;

    use super::*;

    #[test]
    fn damaged_zstd_is_a_read_error_not_an_open_error() {
        let mut data = ZSTD_MAGIC.to_vec();
        data.extend_from_slice(&[0xff; 100]);
        let (mut r, c) = decompressing(io::Cursor::new(data)).expect("opens");
        assert_eq!(c, Compression::Zstd);
        let e = r.fill_buf().unwrap_err();
        assert!(e.to_string().contains("damaged zstd data"), "{e}");
    }
}
