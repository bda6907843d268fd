//! pgoutput messages built the way the server writes them (`pq_send*` in `proto.c`): big-endian
//! integers, NUL-terminated strings, tuple columns as `n`/`u`/`t`/`b`. The one encoder the unit tests,
//! the fuzz seeds and the benchmarks share, so a fix to how a message is laid out is made once.
use bytes::{BufMut, Bytes, BytesMut};

/// One message under construction, starting with its type byte.
#[derive(Debug, Default, Clone)]
pub struct Msg(pub Vec<u8>);

impl Msg {
    pub fn new(tag: u8) -> Msg {
        Msg(vec![tag])
    }
    pub fn u8(mut self, v: u8) -> Msg {
        self.0.push(v);
        self
    }
    pub fn u16(mut self, v: u16) -> Msg {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn i16(mut self, v: i16) -> Msg {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u32(mut self, v: u32) -> Msg {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn i32(mut self, v: i32) -> Msg {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn u64(mut self, v: u64) -> Msg {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    pub fn i64(mut self, v: i64) -> Msg {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    /// A NUL-terminated string.
    pub fn s(mut self, v: &str) -> Msg {
        self.0.extend_from_slice(v.as_bytes());
        self.0.push(0);
        self
    }
    pub fn raw(mut self, v: &[u8]) -> Msg {
        self.0.extend_from_slice(v);
        self
    }
    /// The transaction id streamed messages carry (protocol 2+ inside a stream); nothing otherwise.
    pub fn opt_u32(self, v: Option<u32>) -> Msg {
        match v {
            Some(v) => self.u32(v),
            None => self,
        }
    }
    /// A text column.
    pub fn text(self, v: &[u8]) -> Msg {
        self.u8(b't').i32(v.len() as i32).raw(v)
    }
    /// A binary column.
    pub fn bin(self, v: &[u8]) -> Msg {
        self.u8(b'b').i32(v.len() as i32).raw(v)
    }
    /// A NULL column.
    pub fn null(self) -> Msg {
        self.u8(b'n')
    }
    pub fn bytes(self) -> Bytes {
        Bytes::from(self.0)
    }
}

/// Begin: final LSN, commit time, xid.
pub fn begin(final_lsn: u64, commit_time: i64, xid: u32) -> Bytes {
    Msg::new(b'B').u64(final_lsn).i64(commit_time).u32(xid).bytes()
}

/// Commit (flags 0).
pub fn commit(commit_lsn: u64, end_lsn: u64, commit_time: i64) -> Bytes {
    Msg::new(b'C').u8(0).u64(commit_lsn).u64(end_lsn).i64(commit_time).bytes()
}

/// Relation: `identity` is the replica identity byte (`d`, `f`, `i`, `n`); columns are (is key, name,
/// type OID), with type modifier -1.
pub fn relation(
    xid: Option<u32>,
    oid: u32,
    schema: &str,
    name: &str,
    identity: u8,
    cols: &[(bool, &str, u32)],
) -> Bytes {
    let mut m = Msg::new(b'R').opt_u32(xid).u32(oid).s(schema).s(name).u8(identity).u16(cols.len() as u16);
    for (key, col, type_oid) in cols {
        m = m.u8(u8::from(*key)).s(col).u32(*type_oid).i32(-1);
    }
    m.bytes()
}

/// Delete with a 'K' (key) or 'O' (whole old row) tuple; `None` columns are NULL.
pub fn delete(xid: Option<u32>, relid: u32, kind: u8, cols: &[Option<&[u8]>]) -> Bytes {
    let mut m = Msg::new(b'D').opt_u32(xid).u32(relid).u8(kind).u16(cols.len() as u16);
    for c in cols {
        m = match c {
            Some(v) => m.text(v),
            None => m.null(),
        };
    }
    m.bytes()
}

/// Truncate: option bits (1 CASCADE, 2 RESTART IDENTITY) and the relations.
pub fn truncate(xid: Option<u32>, options: u8, relids: &[u32]) -> Bytes {
    let mut m = Msg::new(b'T').opt_u32(xid).i32(relids.len() as i32).u8(options);
    for r in relids {
        m = m.u32(*r);
    }
    m.bytes()
}

/// Logical decoding message (`pg_logical_emit_message`).
pub fn message(xid: Option<u32>, transactional: bool, lsn: u64, prefix: &str, content: &[u8]) -> Bytes {
    Msg::new(b'M')
        .opt_u32(xid)
        .u8(u8::from(transactional))
        .u64(lsn)
        .s(prefix)
        .i32(content.len() as i32)
        .raw(content)
        .bytes()
}

/// Origin.
pub fn origin(lsn: u64, name: &str) -> Bytes {
    Msg::new(b'O').u64(lsn).s(name).bytes()
}

/// The CopyData payload that carries `msg` (XLogData: start and end LSN, send time).
pub fn xlogdata(lsn: u64, send_time: i64, msg: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(25 + msg.len());
    b.put_u8(b'w');
    b.put_u64(lsn);
    b.put_u64(lsn);
    b.put_i64(send_time);
    b.put_slice(msg);
    b.freeze()
}
