//! CopyData payloads of the streaming replication protocol.
//!
//! Once `START_REPLICATION` has answered with CopyBothResponse, every message
//! in both directions is a CopyData frame. Server to client it holds either
//! XLogData (`'w'`, one pgoutput message for a logical slot) or a primary
//! keepalive (`'k'`); client to server we only send the standby status update
//! (`'r'`) that reports how far we have durably processed the stream. All
//! integers are big-endian; timestamps are microseconds since 2000-01-01 UTC
//! (`walsender.c`, `protocol.sgml` "Streaming Replication Protocol").

use bytes::{BufMut, Bytes, BytesMut};

use super::buf::Reader;
use super::{DecodeError, Lsn};

/// Seconds between the Unix epoch and PostgreSQL's epoch (2000-01-01 UTC).
pub const PG_EPOCH_UNIX_SECS: i64 = 946_684_800;

const PG_EPOCH_UNIX_MICROS: i64 = PG_EPOCH_UNIX_SECS * 1_000_000;

/// Length of a standby status update payload: tag + 4 x Int64 + Byte1.
pub const STANDBY_STATUS_LEN: usize = 34;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// `'w'`. For a logical walsender both LSNs are the decoding position of
    /// the write, and 0 for writes the plugin marked as not-last (Relation,
    /// Type, a Begin followed by Origin), so the LSNs inside the pgoutput
    /// message are the ones to trust.
    XLogData { wal_start: Lsn, wal_end: Lsn, send_time: i64, data: Bytes },
    /// `'k'`. `reply_requested` means the server is about to time us out and
    /// wants a status update now.
    Keepalive { wal_end: Lsn, send_time: i64, reply_requested: bool },
}

/// Decode one CopyData payload received during START_REPLICATION.
pub fn parse_copy_data(payload: Bytes) -> Result<ReplicationMessage, DecodeError> {
    let mut r = Reader::new(payload, "CopyData");
    if r.remaining() == 0 {
        return Err(r.error("empty CopyData payload"));
    }
    let tag = r.u8()?;
    match tag {
        b'w' => {
            r.set_what("XLogData");
            let wal_start = r.lsn()?;
            let wal_end = r.lsn()?;
            let send_time = r.i64()?;
            let data = r.rest();
            Ok(ReplicationMessage::XLogData { wal_start, wal_end, send_time, data })
        }
        b'k' => {
            r.set_what("Keepalive");
            let wal_end = r.lsn()?;
            let send_time = r.i64()?;
            let reply_requested = r.u8()? != 0;
            // The keepalive has a fixed size; walreceiver also rejects any
            // other length, so extra bytes mean a framing disagreement.
            r.expect_end()?;
            Ok(ReplicationMessage::Keepalive { wal_end, send_time, reply_requested })
        }
        other => {
            Err(r.error_at(0, format!("unknown replication message type byte 0x{other:02X} ({:?})", char::from(other))))
        }
    }
}

/// Append a standby status update (`'r'`) payload to `buf`: the CopyData
/// body only, without the `'d'` frame header.
///
/// For a logical slot the server uses `flush` as the new confirmed_flush
/// position without checking it against what it sent, so callers must only
/// pass an LSN whose data they have durably handled (normally a Commit's
/// `end_lsn`). `write`/`flush`/`apply` also feed `pg_stat_replication`.
pub fn encode_standby_status(
    buf: &mut BytesMut,
    write: Lsn,
    flush: Lsn,
    apply: Lsn,
    client_time: i64,
    reply_requested: bool,
) {
    buf.reserve(STANDBY_STATUS_LEN);
    buf.put_u8(b'r');
    buf.put_u64(write.0);
    buf.put_u64(flush.0);
    buf.put_u64(apply.0);
    buf.put_i64(client_time);
    buf.put_u8(u8::from(reply_requested));
}

/// PostgreSQL timestamp (µs since 2000-01-01) to Unix µs. Saturates instead
/// of overflowing: the input comes off the wire and may be garbage.
pub fn pg_micros_to_unix_micros(pg_micros: i64) -> i64 {
    pg_micros.saturating_add(PG_EPOCH_UNIX_MICROS)
}

/// Unix µs to a PostgreSQL timestamp (µs since 2000-01-01), saturating.
pub fn unix_micros_to_pg_micros(unix_micros: i64) -> i64 {
    unix_micros.saturating_sub(PG_EPOCH_UNIX_MICROS)
}

/// Offset of the pgoutput message inside an XLogData payload: `'w'`, dataStart, walEnd, sendTime.
const XLOGDATA_HEADER: usize = 1 + 8 + 8 + 8;

/// What to do with a CopyData payload, judged from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The bytes so far do not tell yet.
    NeedMore,
    /// Receive it whole.
    Keep,
    /// A logical decoding message of another application: its body may be dropped unread.
    Skip,
}

/// Decides from the first bytes of an XLogData payload whether it is a logical decoding message (`'M'`)
/// whose prefix is not `own_prefix`, so the framing layer can drop the rest of it as it arrives instead
/// of buffering it: any role can emit such messages, up to 1 GB each (`pg_logical_emit_message`), and
/// nothing but walwitness's own messages is read. Pure; the connection feeds it.
///
/// The `'M'` layout is `'M'`, [Int32 xid], Int8 flags, Int64 lsn, String prefix, Int32 length, content
/// (`proto.c` `logicalrep_write_message`), the xid only inside a Stream Start/Stop block — which this
/// type follows itself from the payloads it is shown ([`delivered`](Self::delivered)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForeignMessages {
    /// With its NUL terminator, as it is on the wire.
    own_prefix: Vec<u8>,
    in_stream: bool,
}

impl ForeignMessages {
    pub fn new(own_prefix: &str) -> Self {
        let mut own = own_prefix.as_bytes().to_vec();
        own.push(0);
        ForeignMessages { own_prefix: own, in_stream: false }
    }

    /// Every CopyData payload that was received whole, in stream order.
    pub fn delivered(&mut self, payload: &[u8]) {
        if payload.first() == Some(&b'w') {
            match payload.get(XLOGDATA_HEADER) {
                Some(b'S') => self.in_stream = true,
                Some(b'E') => self.in_stream = false,
                _ => {}
            }
        }
    }

    /// `head`: the first bytes of the next payload, as many as have arrived.
    pub fn check(&self, head: &[u8]) -> Verdict {
        match head.first() {
            None => return Verdict::NeedMore,
            Some(b'w') => {}
            Some(_) => return Verdict::Keep,
        }
        match head.get(XLOGDATA_HEADER) {
            None => return Verdict::NeedMore,
            Some(b'M') => {}
            Some(_) => return Verdict::Keep,
        }
        let xid = if self.in_stream { 4 } else { 0 };
        let prefix_at = XLOGDATA_HEADER + 1 + xid + 1 + 8;
        for (i, want) in self.own_prefix.iter().enumerate() {
            match head.get(prefix_at + i) {
                None => return Verdict::NeedMore,
                Some(b) if b != want => return Verdict::Skip,
                Some(_) => {}
            }
        }
        Verdict::Keep
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xlogdata(start: u64, end: u64, time: i64, data: &[u8]) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'w');
        b.put_u64(start);
        b.put_u64(end);
        b.put_i64(time);
        b.put_slice(data);
        b.freeze()
    }

    fn keepalive(end: u64, time: i64, reply: u8) -> Bytes {
        let mut b = BytesMut::new();
        b.put_u8(b'k');
        b.put_u64(end);
        b.put_i64(time);
        b.put_u8(reply);
        b.freeze()
    }

    #[test]
    fn parses_xlogdata() {
        let payload = xlogdata(0x16_B374_D848, 0x16_B374_D900, 42, b"Bxyz");
        let msg = parse_copy_data(payload.clone()).unwrap();
        match msg {
            ReplicationMessage::XLogData { wal_start, wal_end, send_time, data } => {
                assert_eq!(wal_start, Lsn(0x16_B374_D848));
                assert_eq!(wal_end, Lsn(0x16_B374_D900));
                assert_eq!(send_time, 42);
                assert_eq!(&data[..], b"Bxyz");
                // The payload is a view into the frame, not a copy.
                assert_eq!(data.as_ptr(), payload[25..].as_ptr());
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn xlogdata_may_have_empty_data() {
        let msg = parse_copy_data(xlogdata(0, 0, 0, b"")).unwrap();
        assert!(matches!(msg, ReplicationMessage::XLogData { data, .. } if data.is_empty()));
    }

    #[test]
    fn parses_keepalive() {
        assert_eq!(
            parse_copy_data(keepalive(0x1_0000_0001, -5, 1)).unwrap(),
            ReplicationMessage::Keepalive { wal_end: Lsn(0x1_0000_0001), send_time: -5, reply_requested: true }
        );
        assert_eq!(
            parse_copy_data(keepalive(7, 0, 0)).unwrap(),
            ReplicationMessage::Keepalive { wal_end: Lsn(7), send_time: 0, reply_requested: false }
        );
    }

    #[test]
    fn truncated_frames_error_with_name_and_offset() {
        let full = xlogdata(1, 2, 3, b"");
        for n in 0..full.len() {
            let e = parse_copy_data(full.slice(..n)).unwrap_err();
            let want = if n == 0 { "CopyData" } else { "XLogData" };
            assert_eq!(e.message, want, "prefix {n}");
            assert!(e.offset <= n);
            assert!(e.to_string().contains(want));
        }
        let full = keepalive(1, 2, 1);
        for n in 1..full.len() {
            let e = parse_copy_data(full.slice(..n)).unwrap_err();
            assert_eq!(e.message, "Keepalive", "prefix {n}");
            assert!(e.offset <= n);
            assert!(e.to_string().contains("at byte"));
        }
    }

    #[test]
    fn keepalive_trailing_bytes_rejected() {
        let mut b = BytesMut::from(&keepalive(1, 2, 0)[..]);
        b.put_u8(0);
        let e = parse_copy_data(b.freeze()).unwrap_err();
        assert_eq!(e.message, "Keepalive");
        assert_eq!(e.offset, 18);
    }

    #[test]
    fn unknown_tag_named() {
        let e = parse_copy_data(Bytes::from_static(b"zzz")).unwrap_err();
        assert_eq!(e.offset, 0);
        assert!(e.reason.contains("0x7A"), "{e}");
        assert!(e.reason.contains("'z'"), "{e}");
    }

    #[test]
    fn standby_status_exact_bytes() {
        let mut buf = BytesMut::new();
        encode_standby_status(
            &mut buf,
            Lsn(0x0102_0304_0506_0708),
            Lsn(0x16_B374_D848),
            Lsn(0),
            0x7FFF_FFFF_FFFF_FFFF,
            true,
        );
        let expected: [u8; 34] = [
            b'r', //
            1, 2, 3, 4, 5, 6, 7, 8, //
            0, 0, 0, 0x16, 0xB3, 0x74, 0xD8, 0x48, //
            0, 0, 0, 0, 0, 0, 0, 0, //
            0x7F, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, //
            1,
        ];
        assert_eq!(&buf[..], &expected[..]);
        assert_eq!(buf.len(), STANDBY_STATUS_LEN);

        // Appends rather than overwrites.
        encode_standby_status(&mut buf, Lsn(0), Lsn(0), Lsn(0), -1, false);
        assert_eq!(buf.len(), 2 * STANDBY_STATUS_LEN);
        assert_eq!(buf[34], b'r');
        assert_eq!(&buf[59..67], &[0xFF; 8]);
        assert_eq!(buf[67], 0);
    }

    #[test]
    fn epoch_conversion() {
        assert_eq!(pg_micros_to_unix_micros(0), 946_684_800_000_000);
        assert_eq!(unix_micros_to_pg_micros(946_684_800_000_000), 0);
        for v in [-1_000_000i64, 0, 1, 800_000_000_000_000] {
            assert_eq!(unix_micros_to_pg_micros(pg_micros_to_unix_micros(v)), v);
        }
        // Garbage from the wire must not overflow-panic.
        assert_eq!(pg_micros_to_unix_micros(i64::MAX), i64::MAX);
        assert_eq!(unix_micros_to_pg_micros(i64::MIN), i64::MIN);
    }

    /// An XLogData payload holding a logical decoding message, as `logicalrep_write_message` writes it.
    fn message(xid: Option<u32>, prefix: &[u8], content: &[u8]) -> Bytes {
        let mut m = vec![b'M'];
        if let Some(x) = xid {
            m.extend_from_slice(&x.to_be_bytes());
        }
        m.push(1);
        m.extend_from_slice(&0x16_B374_D848u64.to_be_bytes());
        m.extend_from_slice(prefix);
        m.push(0);
        m.extend_from_slice(&(content.len() as i32).to_be_bytes());
        m.extend_from_slice(content);
        xlogdata(1, 1, 0, &m)
    }

    /// The verdict once all of `payload` is known, checking that every shorter head either waits or
    /// already gives that verdict.
    fn verdict(f: &ForeignMessages, payload: &[u8]) -> Verdict {
        let last = f.check(payload);
        for n in 0..payload.len() {
            let v = f.check(&payload[..n]);
            assert!(v == Verdict::NeedMore || v == last, "head of {n} bytes: {v:?}, whole: {last:?}");
        }
        last
    }

    #[test]
    fn foreign_messages_are_skipped_by_prefix_alone() {
        let f = ForeignMessages::new("walwitness");
        let big = vec![b'x'; 1000];
        assert_eq!(verdict(&f, &message(None, b"walwitness", &big)), Verdict::Keep);
        assert_eq!(verdict(&f, &message(None, b"other", &big)), Verdict::Skip);
        assert_eq!(verdict(&f, &message(None, b"", &big)), Verdict::Skip);
        assert_eq!(verdict(&f, &message(None, b"walwitnes", &big)), Verdict::Skip);
        assert_eq!(verdict(&f, &message(None, b"walwitnessX", &big)), Verdict::Skip);
        assert_eq!(verdict(&f, &message(None, b"\xff", &big)), Verdict::Skip);
        // Decided from the prefix: the content is never looked at, however long the prefix.
        let m = message(None, &vec![b'a'; 100_000], &big);
        assert_eq!(f.check(&m[..XLOGDATA_HEADER + 1 + 1 + 8 + 1]), Verdict::Skip);
        let m = message(None, b"walwitness", &big);
        assert_eq!(f.check(&m[..XLOGDATA_HEADER + 1 + 1 + 8 + 11]), Verdict::Keep);
        assert_eq!(f.check(&m[..XLOGDATA_HEADER + 1 + 1 + 8 + 10]), Verdict::NeedMore);
        // Everything else is kept whole: other pgoutput messages (a big Delete), keepalives, garbage
        // (which the decoder then reports).
        assert_eq!(verdict(&f, &xlogdata(1, 1, 0, b"Dxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx")), Verdict::Keep);
        assert_eq!(verdict(&f, &keepalive(1, 2, 0)), Verdict::Keep);
        assert_eq!(verdict(&f, b"zz"), Verdict::Keep);
        assert_eq!(f.check(b""), Verdict::NeedMore);
    }

    #[test]
    fn foreign_messages_follow_stream_blocks() {
        let mut f = ForeignMessages::new("walwitness");
        let big = vec![b'x'; 100];
        // Inside a stream block the xid comes first; read without it, "walwitness" would not line up.
        let ours = message(Some(0x0102_0304), b"walwitness", &big);
        let theirs = message(Some(0x0102_0304), b"other", &big);
        assert_eq!(verdict(&f, &ours), Verdict::Skip, "outside a block the xid is taken for the prefix");
        f.delivered(&xlogdata(1, 1, 0, b"S\0\0\0\x07\x01"));
        assert_eq!(verdict(&f, &ours), Verdict::Keep);
        assert_eq!(verdict(&f, &theirs), Verdict::Skip);
        // Other payloads change nothing; Stream Stop ends the block.
        f.delivered(&keepalive(1, 2, 0));
        f.delivered(&message(Some(7), b"x", b""));
        assert_eq!(verdict(&f, &ours), Verdict::Keep);
        f.delivered(&xlogdata(1, 1, 0, b"E"));
        assert_eq!(verdict(&f, &message(None, b"walwitness", &big)), Verdict::Keep);
        f.delivered(b"");
        f.delivered(b"w");
    }

    #[test]
    fn fuzz_smoke_no_panic() {
        let mut s: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        for _ in 0..5000 {
            let len = (next() % 40) as usize;
            let mut v: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(first) = v.first_mut() {
                *first = [b'w', b'k', *first][(next() % 3) as usize];
            }
            let mut f = ForeignMessages::new("walwitness");
            f.delivered(&v);
            let _ = f.check(&v);
            let _ = parse_copy_data(Bytes::from(v));
        }
    }
}
