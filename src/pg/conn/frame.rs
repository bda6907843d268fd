//! Backend message framing and the checked parsing of message bodies.

use bytes::{Buf, BytesMut};

use super::MAX_FRAME_LEN;
use crate::pg::error::{DbError, PgError};

/// One backend message: its tag and body (the length word removed).
#[derive(Debug)]
pub(crate) struct Frame {
    pub tag: u8,
    pub body: BytesMut,
}

/// Splits one complete message off the front of `buf`. `Ok(None)` means
/// "need more bytes" and leaves `buf` untouched, which is what makes the
/// reader cancel-safe.
pub(crate) fn split_frame(buf: &mut BytesMut) -> Result<Option<Frame>, PgError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if len < 4 || len as usize > MAX_FRAME_LEN {
        return Err(PgError::protocol(format!("invalid message length {len} (tag {:?})", buf[0] as char)));
    }
    let total = 1 + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    let mut body = buf.split_to(total);
    let tag = body[0];
    body.advance(5);
    Ok(Some(Frame { tag, body }))
}

/// Bytes still missing for the frame at the front of `buf` (0 if unknown).
pub(super) fn missing_bytes(buf: &[u8]) -> usize {
    if buf.len() < 5 {
        return 0;
    }
    let len = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    (1 + len.max(4) as usize).saturating_sub(buf.len())
}

/// What the read buffer yields next.
pub(super) enum Incoming {
    Frame(Frame),
    /// Bytes of a skipped CopyData frame, dropped.
    Skipped(usize),
}

/// Checked reads from a message body.
pub(super) struct Cur<'a>(pub(super) &'a [u8]);

impl<'a> Cur<'a> {
    pub(super) fn take(&mut self, n: usize) -> Result<&'a [u8], PgError> {
        if self.0.len() < n {
            return Err(PgError::protocol("message shorter than its contents"));
        }
        let (h, t) = self.0.split_at(n);
        self.0 = t;
        Ok(h)
    }
    pub(super) fn i16(&mut self) -> Result<i16, PgError> {
        let b = self.take(2)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    pub(super) fn i32(&mut self) -> Result<i32, PgError> {
        let b = self.take(4)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub(super) fn cstr(&mut self) -> Result<&'a str, PgError> {
        let nul =
            self.0.iter().position(|&b| b == 0).ok_or_else(|| PgError::protocol("unterminated string in message"))?;
        let s = self.take(nul + 1)?;
        std::str::from_utf8(&s[..nul]).map_err(|_| PgError::protocol("string is not UTF-8"))
    }
    pub(super) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

pub(super) fn parse_row_description(body: &[u8]) -> Result<Vec<String>, PgError> {
    let mut c = Cur(body);
    let n = c.i16()?;
    let mut cols = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        cols.push(c.cstr()?.to_owned());
        // table oid, column number, type oid, type size, type modifier, format
        c.take(4 + 2 + 4 + 2 + 4 + 2)?;
    }
    Ok(cols)
}

pub(super) fn parse_data_row(body: &[u8]) -> Result<Vec<Option<String>>, PgError> {
    let mut c = Cur(body);
    let n = c.i16()?;
    let mut row = Vec::with_capacity(n.max(0) as usize);
    for _ in 0..n {
        let len = c.i32()?;
        if len < 0 {
            row.push(None);
        } else {
            let v = c.take(len as usize)?;
            row.push(Some(String::from_utf8_lossy(v).into_owned()));
        }
    }
    Ok(row)
}

pub(super) fn log_notice(body: &[u8]) {
    match DbError::parse(body) {
        Ok(n) if matches!(n.severity.as_str(), "WARNING") => {
            tracing::warn!(code = %n.code, "server: {}", crate::term::clean(&n.message))
        }
        Ok(n) => tracing::info!(severity = %n.severity, code = %n.code, "server: {}", crate::term::clean(&n.message)),
        Err(_) => tracing::debug!("unparseable notice from server"),
    }
}

/// One backend message on the wire: tag, length word, body.
#[cfg(test)]
pub(super) fn frame(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag];
    v.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    v.extend_from_slice(body);
    v
}

#[cfg(test)]
mod tests {
    use bytes::BufMut;

    use super::*;

    #[test]
    fn frames_split_only_when_complete() {
        let mut wire = frame(b'd', b"hello");
        wire.extend(frame(b'Z', b"I"));
        let mut buf = BytesMut::new();
        // Feed one byte at a time: no frame until the last byte arrives.
        for (i, b) in wire.iter().enumerate() {
            buf.put_u8(*b);
            let f = split_frame(&mut buf).unwrap();
            if i == 9 {
                let f = f.unwrap();
                assert_eq!(f.tag, b'd');
                assert_eq!(&f.body[..], b"hello");
                assert!(buf.is_empty());
            } else if i == wire.len() - 1 {
                let f = f.unwrap();
                assert_eq!((f.tag, &f.body[..]), (b'Z', &b"I"[..]));
            } else {
                assert!(f.is_none(), "byte {i}");
            }
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn frames_reject_bad_lengths() {
        let mut buf = BytesMut::from(&[b'd', 0, 0, 0, 3][..]);
        assert!(matches!(split_frame(&mut buf), Err(PgError::Protocol(_))));
        let mut buf = BytesMut::from(&[b'd', 0x7f, 0xff, 0xff, 0xff][..]);
        assert!(matches!(split_frame(&mut buf), Err(PgError::Protocol(_))));
        let mut buf = BytesMut::from(&[b'd', 0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(split_frame(&mut buf), Err(PgError::Protocol(_))));
        assert_eq!(missing_bytes(&[b'd', 0, 0, 0, 10, 1]), 5);
        assert_eq!(missing_bytes(&[b'd', 0, 0]), 0);
    }

    #[test]
    fn copy_data_is_zero_copy() {
        let mut buf = BytesMut::from(&frame(b'd', b"payload")[..]);
        let base = buf.as_ptr() as usize;
        let f = split_frame(&mut buf).unwrap().unwrap();
        let bytes = f.body.freeze();
        assert_eq!(bytes.as_ptr() as usize, base + 5);
    }

    #[test]
    fn row_parsing_is_checked() {
        let mut rd = vec![0, 2];
        for name in ["systemid", "timeline"] {
            rd.extend_from_slice(name.as_bytes());
            rd.push(0);
            rd.extend_from_slice(&[0; 18]);
        }
        assert_eq!(parse_row_description(&rd).unwrap(), vec!["systemid", "timeline"]);
        assert!(parse_row_description(&rd[..rd.len() - 1]).is_err());
        assert!(parse_row_description(&[0, 1, b'x']).is_err());

        let mut dr = vec![0, 2, 0, 0, 0, 2, b'4', b'2', 0xff, 0xff, 0xff, 0xff];
        assert_eq!(parse_data_row(&dr).unwrap(), vec![Some("42".to_owned()), None]);
        dr[5] = 200;
        assert!(parse_data_row(&dr).is_err());
        assert!(parse_data_row(&[0xff, 0xff]).unwrap().is_empty());
    }

    #[test]
    fn error_fields() {
        let body = b"SFATAL\0VFATAL\0C28P01\0Mpassword authentication failed for user \"x\"\0\0";
        let e = DbError::parse(body).unwrap();
        assert_eq!(e.code, "28P01");
        assert_eq!(e.severity, "FATAL");
        assert!(PgError::from_startup_error(e).to_string().starts_with("authentication failed"));
        assert!(DbError::parse(b"Mno terminator").is_err());
        assert!(DbError::parse(b"").is_err());
    }
}
