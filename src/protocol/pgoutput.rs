//! Messages of the `pgoutput` logical replication protocol, versions 1-4.
//!
//! Each XLogData frame carries exactly one message. Layouts follow
//! `logicalrep_write_*` in `src/backend/replication/logical/proto.c`
//! (PostgreSQL 14-18) and the "Logical Replication Message Formats" section of
//! `doc/src/sgml/protocol.sgml`. Version differences that change bytes:
//!
//! * proto 2 (PG14): streaming. Between Stream Start and Stream Stop the
//!   Relation/Type/Insert/Update/Delete/Truncate/Message messages carry a
//!   leading Int32 xid. The field is not self-describing, so the caller passes
//!   [`ParseOptions::in_stream`].
//! * proto 3 (PG15): two-phase messages ('b', 'P', 'K', 'r', 'p').
//! * proto 4 (PG16): with `streaming 'parallel'`, Stream Abort also carries
//!   abort_lsn and abort_time ([`ParseOptions::stream_abort_has_lsn`]).
//!
//! Column values are zero-copy [`Bytes`] slices of the frame; decoding a
//! Delete allocates only the vector of column values.

use bytes::Bytes;

use super::buf::Reader;
use super::{DecodeError, Lsn};

/// Decoder state that the bytes themselves do not carry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ParseOptions {
    /// Between Stream Start and Stream Stop: data messages carry an Int32 xid.
    pub in_stream: bool,
    /// `streaming 'parallel'` was negotiated (proto 4), so Stream Abort
    /// carries abort_lsn and abort_time.
    pub stream_abort_has_lsn: bool,
}

/// `pg_class.relreplident` as sent in Relation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicaIdentity {
    /// `'d'`: primary key, if any.
    Default,
    /// `'n'`: no old-row information.
    Nothing,
    /// `'f'`: the whole old row.
    Full,
    /// `'i'`: a chosen unique index.
    Index,
    /// Anything else; kept rather than rejected so a future server value
    /// does not stop the stream.
    Other(u8),
}

impl ReplicaIdentity {
    pub fn from_byte(b: u8) -> Self {
        match b {
            b'd' => ReplicaIdentity::Default,
            b'n' => ReplicaIdentity::Nothing,
            b'f' => ReplicaIdentity::Full,
            b'i' => ReplicaIdentity::Index,
            other => ReplicaIdentity::Other(other),
        }
    }

    pub fn as_byte(self) -> u8 {
        match self {
            ReplicaIdentity::Default => b'd',
            ReplicaIdentity::Nothing => b'n',
            ReplicaIdentity::Full => b'f',
            ReplicaIdentity::Index => b'i',
            ReplicaIdentity::Other(b) => b,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Part of the replica identity (flags bit 1). Under REPLICA IDENTITY FULL
    /// every column is marked.
    pub is_key: bool,
    pub flags: u8,
    pub name: String,
    pub type_oid: u32,
    /// `atttypmod`, -1 when the type has none.
    pub type_modifier: i32,
}

/// One column value of a TupleData.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `'n'`. In a 'K' old tuple this also stands for every non-key column.
    Null,
    /// `'u'`: a TOASTed value the server did not resend (UPDATE new tuples).
    UnchangedToast,
    /// `'t'`: the type's text output, in the client encoding.
    Text(Bytes),
    /// `'b'`: the type's binary send format (only with `binary 'true'`).
    Binary(Bytes),
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TupleData {
    /// In the order of the Relation's columns.
    pub columns: Vec<Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OldKind {
    /// `'K'`: only the replica identity columns are meaningful; the others
    /// are sent as NULL.
    Key,
    /// `'O'`: the whole old row (REPLICA IDENTITY FULL).
    Old,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OldTuple {
    pub kind: OldKind,
    pub tuple: TupleData,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Begin {
        /// LSN of the commit record (equals Commit.commit_lsn).
        final_lsn: Lsn,
        commit_time: i64,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: Lsn,
        /// End of the commit record: the position to acknowledge.
        end_lsn: Lsn,
        commit_time: i64,
    },
    Origin {
        origin_lsn: Lsn,
        name: String,
    },
    Relation {
        xid: Option<u32>,
        oid: u32,
        /// Empty for pg_catalog.
        namespace: String,
        name: String,
        replica_identity: ReplicaIdentity,
        columns: Vec<Column>,
    },
    Type {
        xid: Option<u32>,
        oid: u32,
        namespace: String,
        name: String,
    },
    Insert {
        xid: Option<u32>,
        relid: u32,
        new: TupleData,
    },
    Update {
        xid: Option<u32>,
        relid: u32,
        old: Option<OldTuple>,
        new: TupleData,
    },
    Delete {
        xid: Option<u32>,
        relid: u32,
        old: OldTuple,
    },
    Truncate {
        xid: Option<u32>,
        relids: Vec<u32>,
        flags: u8,
        cascade: bool,
        restart_identity: bool,
    },
    LogicalMessage {
        xid: Option<u32>,
        transactional: bool,
        lsn: Lsn,
        prefix: String,
        content: Bytes,
    },
    StreamStart {
        xid: u32,
        first_segment: bool,
    },
    StreamStop,
    StreamCommit {
        xid: u32,
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: i64,
    },
    StreamAbort {
        xid: u32,
        subxid: u32,
        abort_lsn: Option<Lsn>,
        abort_time: Option<i64>,
    },
    BeginPrepare {
        prepare_lsn: Lsn,
        end_lsn: Lsn,
        prepare_time: i64,
        xid: u32,
        gid: String,
    },
    Prepare {
        flags: u8,
        prepare_lsn: Lsn,
        end_lsn: Lsn,
        prepare_time: i64,
        xid: u32,
        gid: String,
    },
    CommitPrepared {
        flags: u8,
        commit_lsn: Lsn,
        end_lsn: Lsn,
        commit_time: i64,
        xid: u32,
        gid: String,
    },
    RollbackPrepared {
        flags: u8,
        prepare_end_lsn: Lsn,
        rollback_end_lsn: Lsn,
        prepare_time: i64,
        rollback_time: i64,
        xid: u32,
        gid: String,
    },
    StreamPrepare {
        flags: u8,
        prepare_lsn: Lsn,
        end_lsn: Lsn,
        prepare_time: i64,
        xid: u32,
        gid: String,
    },
}

impl Message {
    /// Stable name of the message type, also used in [`DecodeError::message`].
    pub fn type_name(&self) -> &'static str {
        match self {
            Message::Begin { .. } => "Begin",
            Message::Commit { .. } => "Commit",
            Message::Origin { .. } => "Origin",
            Message::Relation { .. } => "Relation",
            Message::Type { .. } => "Type",
            Message::Insert { .. } => "Insert",
            Message::Update { .. } => "Update",
            Message::Delete { .. } => "Delete",
            Message::Truncate { .. } => "Truncate",
            Message::LogicalMessage { .. } => "LogicalMessage",
            Message::StreamStart { .. } => "StreamStart",
            Message::StreamStop => "StreamStop",
            Message::StreamCommit { .. } => "StreamCommit",
            Message::StreamAbort { .. } => "StreamAbort",
            Message::BeginPrepare { .. } => "BeginPrepare",
            Message::Prepare { .. } => "Prepare",
            Message::CommitPrepared { .. } => "CommitPrepared",
            Message::RollbackPrepared { .. } => "RollbackPrepared",
            Message::StreamPrepare { .. } => "StreamPrepare",
        }
    }
}

/// Name for the type byte, or `None` if pgoutput never sends it.
fn name_for_tag(tag: u8) -> Option<&'static str> {
    Some(match tag {
        b'B' => "Begin",
        b'C' => "Commit",
        b'O' => "Origin",
        b'R' => "Relation",
        b'Y' => "Type",
        b'I' => "Insert",
        b'U' => "Update",
        b'D' => "Delete",
        b'T' => "Truncate",
        b'M' => "LogicalMessage",
        b'S' => "StreamStart",
        b'E' => "StreamStop",
        b'c' => "StreamCommit",
        b'A' => "StreamAbort",
        b'b' => "BeginPrepare",
        b'P' => "Prepare",
        b'K' => "CommitPrepared",
        b'r' => "RollbackPrepared",
        b'p' => "StreamPrepare",
        _ => return None,
    })
}

fn describe_byte(b: u8) -> String {
    if b.is_ascii_graphic() {
        format!("0x{b:02X} ('{}')", char::from(b))
    } else {
        format!("0x{b:02X}")
    }
}

/// Decode one pgoutput message: the whole payload of one XLogData frame.
pub fn parse(data: &Bytes, opts: ParseOptions) -> Result<Message, DecodeError> {
    let mut r = Reader::new(data.clone(), "unknown");
    if r.remaining() == 0 {
        return Err(r.error("empty pgoutput message"));
    }
    let tag = r.u8()?;
    let name =
        name_for_tag(tag).ok_or_else(|| r.error_at(0, format!("unknown message type byte {}", describe_byte(tag))))?;
    r.set_what(name);

    let msg = match tag {
        b'B' => Message::Begin { final_lsn: r.lsn()?, commit_time: r.i64()?, xid: r.u32()? },
        b'C' => Message::Commit { flags: r.u8()?, commit_lsn: r.lsn()?, end_lsn: r.lsn()?, commit_time: r.i64()? },
        b'O' => Message::Origin { origin_lsn: r.lsn()?, name: r.cstr()? },
        b'R' => parse_relation(&mut r, opts)?,
        b'Y' => Message::Type { xid: stream_xid(&mut r, opts)?, oid: r.u32()?, namespace: r.cstr()?, name: r.cstr()? },
        b'I' => parse_insert(&mut r, opts)?,
        b'U' => parse_update(&mut r, opts)?,
        b'D' => parse_delete(&mut r, opts)?,
        b'T' => parse_truncate(&mut r, opts)?,
        b'M' => parse_logical_message(&mut r, opts)?,
        b'S' => Message::StreamStart {
            xid: r.u32()?,
            // The server reads this as `== 1`; do the same.
            first_segment: r.u8()? == 1,
        },
        b'E' => Message::StreamStop,
        b'c' => Message::StreamCommit {
            xid: r.u32()?,
            flags: r.u8()?,
            commit_lsn: r.lsn()?,
            end_lsn: r.lsn()?,
            commit_time: r.i64()?,
        },
        b'A' => parse_stream_abort(&mut r, opts)?,
        b'b' => Message::BeginPrepare {
            prepare_lsn: r.lsn()?,
            end_lsn: r.lsn()?,
            prepare_time: r.i64()?,
            xid: r.u32()?,
            gid: r.cstr()?,
        },
        b'P' | b'p' => parse_prepare(&mut r, tag)?,
        b'K' => parse_commit_prepared(&mut r)?,
        b'r' => parse_rollback_prepared(&mut r)?,
        // name_for_tag accepted the byte, so every tag is matched above; this
        // arm only satisfies exhaustiveness without a panic path.
        _ => return Err(r.error_at(0, format!("unhandled message type {}", describe_byte(tag)))),
    };
    r.expect_end()?;
    Ok(msg)
}

fn parse_insert(r: &mut Reader, opts: ParseOptions) -> Result<Message, DecodeError> {
    let xid = stream_xid(r, opts)?;
    let relid = r.u32()?;
    expect_byte(r, b'N')?;
    Ok(Message::Insert { xid, relid, new: parse_tuple(r)? })
}

fn parse_delete(r: &mut Reader, opts: ParseOptions) -> Result<Message, DecodeError> {
    let xid = stream_xid(r, opts)?;
    let relid = r.u32()?;
    let at = r.position();
    let kind = match r.u8()? {
        b'K' => OldKind::Key,
        b'O' => OldKind::Old,
        other => return Err(r.error_at(at, format!("expected 'K' or 'O', got {}", describe_byte(other)))),
    };
    Ok(Message::Delete { xid, relid, old: OldTuple { kind, tuple: parse_tuple(r)? } })
}

fn parse_logical_message(r: &mut Reader, opts: ParseOptions) -> Result<Message, DecodeError> {
    let xid = stream_xid(r, opts)?;
    let flags = r.u8()?;
    Ok(Message::LogicalMessage {
        xid,
        transactional: flags & 1 != 0,
        lsn: r.lsn()?,
        prefix: r.cstr()?,
        content: r.len_prefixed_bytes()?,
    })
}

fn parse_stream_abort(r: &mut Reader, opts: ParseOptions) -> Result<Message, DecodeError> {
    let xid = r.u32()?;
    let subxid = r.u32()?;
    let (abort_lsn, abort_time) =
        if opts.stream_abort_has_lsn { (Some(r.lsn()?), Some(r.i64()?)) } else { (None, None) };
    Ok(Message::StreamAbort { xid, subxid, abort_lsn, abort_time })
}

/// Prepare ('P') and Stream Prepare ('p') share their layout.
fn parse_prepare(r: &mut Reader, tag: u8) -> Result<Message, DecodeError> {
    let flags = r.u8()?;
    let prepare_lsn = r.lsn()?;
    let end_lsn = r.lsn()?;
    let prepare_time = r.i64()?;
    let xid = r.u32()?;
    let gid = r.cstr()?;
    Ok(if tag == b'P' {
        Message::Prepare { flags, prepare_lsn, end_lsn, prepare_time, xid, gid }
    } else {
        Message::StreamPrepare { flags, prepare_lsn, end_lsn, prepare_time, xid, gid }
    })
}

fn parse_commit_prepared(r: &mut Reader) -> Result<Message, DecodeError> {
    Ok(Message::CommitPrepared {
        flags: r.u8()?,
        commit_lsn: r.lsn()?,
        end_lsn: r.lsn()?,
        commit_time: r.i64()?,
        xid: r.u32()?,
        gid: r.cstr()?,
    })
}

fn parse_rollback_prepared(r: &mut Reader) -> Result<Message, DecodeError> {
    Ok(Message::RollbackPrepared {
        flags: r.u8()?,
        prepare_end_lsn: r.lsn()?,
        rollback_end_lsn: r.lsn()?,
        prepare_time: r.i64()?,
        rollback_time: r.i64()?,
        xid: r.u32()?,
        gid: r.cstr()?,
    })
}

fn stream_xid(r: &mut Reader, opts: ParseOptions) -> Result<Option<u32>, DecodeError> {
    if opts.in_stream {
        r.u32().map(Some)
    } else {
        Ok(None)
    }
}

fn expect_byte(r: &mut Reader, want: u8) -> Result<(), DecodeError> {
    let at = r.position();
    let got = r.u8()?;
    if got == want {
        Ok(())
    } else {
        Err(r.error_at(at, format!("expected {}, got {}", describe_byte(want), describe_byte(got))))
    }
}

fn parse_relation(r: &mut Reader, opts: ParseOptions) -> Result<Message, DecodeError> {
    let xid = stream_xid(r, opts)?;
    let oid = r.u32()?;
    let namespace = r.cstr()?;
    let name = r.cstr()?;
    let replica_identity = ReplicaIdentity::from_byte(r.u8()?);
    let ncols = usize::from(r.u16()?);
    // A column takes at least 10 bytes (flags, empty name, two Int32s), so
    // the remaining length bounds a sane capacity even if ncols lies.
    let mut columns = Vec::with_capacity(ncols.min(r.remaining() / 10));
    for _ in 0..ncols {
        let flags = r.u8()?;
        columns.push(Column {
            is_key: flags & 1 != 0,
            flags,
            name: r.cstr()?,
            type_oid: r.u32()?,
            type_modifier: r.i32()?,
        });
    }
    Ok(Message::Relation { xid, oid, namespace, name, replica_identity, columns })
}

fn parse_update(r: &mut Reader, opts: ParseOptions) -> Result<Message, DecodeError> {
    let xid = stream_xid(r, opts)?;
    let relid = r.u32()?;
    let at = r.position();
    let old = match r.u8()? {
        b'N' => None,
        b @ (b'K' | b'O') => {
            let kind = if b == b'K' { OldKind::Key } else { OldKind::Old };
            let tuple = parse_tuple(r)?;
            expect_byte(r, b'N')?;
            Some(OldTuple { kind, tuple })
        }
        other => return Err(r.error_at(at, format!("expected 'K', 'O' or 'N', got {}", describe_byte(other)))),
    };
    Ok(Message::Update { xid, relid, old, new: parse_tuple(r)? })
}

fn parse_truncate(r: &mut Reader, opts: ParseOptions) -> Result<Message, DecodeError> {
    let xid = stream_xid(r, opts)?;
    let at = r.position();
    let n = r.i32()?;
    let n = usize::try_from(n).map_err(|_| r.error_at(at, format!("negative relation count {n}")))?;
    let flags = r.u8()?;
    // Check before allocating so a corrupt count cannot reserve gigabytes.
    if n.checked_mul(4).is_none_or(|need| need > r.remaining()) {
        return Err(r.error_at(at, format!("relation count {n} needs more than the {} bytes left", r.remaining())));
    }
    let mut relids = Vec::with_capacity(n);
    for _ in 0..n {
        relids.push(r.u32()?);
    }
    Ok(Message::Truncate { xid, relids, flags, cascade: flags & 1 != 0, restart_identity: flags & 2 != 0 })
}

fn parse_tuple(r: &mut Reader) -> Result<TupleData, DecodeError> {
    let ncols = usize::from(r.u16()?);
    // Every column takes at least its kind byte.
    let mut columns = Vec::with_capacity(ncols.min(r.remaining()));
    for _ in 0..ncols {
        let at = r.position();
        let value = match r.u8()? {
            b'n' => Value::Null,
            b'u' => Value::UnchangedToast,
            b't' => Value::Text(r.len_prefixed_bytes()?),
            b'b' => Value::Binary(r.len_prefixed_bytes()?),
            other => return Err(r.error_at(at, format!("unknown column kind {}", describe_byte(other)))),
        };
        columns.push(value);
    }
    Ok(TupleData { columns })
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::protocol::encode::Msg as W;

    const PLAIN: ParseOptions = ParseOptions { in_stream: false, stream_abort_has_lsn: false };
    const STREAM: ParseOptions = ParseOptions { in_stream: true, stream_abort_has_lsn: false };
    const PARALLEL: ParseOptions = ParseOptions { in_stream: false, stream_abort_has_lsn: true };

    fn sxid(opts: ParseOptions, xid: u32) -> Option<u32> {
        opts.in_stream.then_some(xid)
    }

    fn t(s: &'static [u8]) -> Value {
        Value::Text(Bytes::from_static(s))
    }

    /// One well-formed example of every message type, with its expected
    /// decoding, under the given options.
    fn samples(opts: ParseOptions) -> Vec<(Bytes, Message)> {
        let mut v = vec![
            (
                W::new(b'B').u64(0x16_B374_D848).i64(777).u32(4242).bytes(),
                Message::Begin { final_lsn: Lsn(0x16_B374_D848), commit_time: 777, xid: 4242 },
            ),
            (
                W::new(b'C').u8(0).u64(0x100).u64(0x130).i64(-1).bytes(),
                Message::Commit { flags: 0, commit_lsn: Lsn(0x100), end_lsn: Lsn(0x130), commit_time: -1 },
            ),
            (
                W::new(b'O').u64(0).s("pg_16402").bytes(),
                Message::Origin { origin_lsn: Lsn(0), name: "pg_16402".into() },
            ),
            (
                W::new(b'R')
                    .opt_u32(sxid(opts, 901))
                    .u32(16384)
                    .s("public")
                    .s("accounts")
                    .u8(b'f')
                    .u16(2)
                    .u8(1)
                    .s("id")
                    .u32(23)
                    .i32(-1)
                    .u8(0)
                    .s("note")
                    .u32(1043)
                    .i32(68)
                    .bytes(),
                Message::Relation {
                    xid: sxid(opts, 901),
                    oid: 16384,
                    namespace: "public".into(),
                    name: "accounts".into(),
                    replica_identity: ReplicaIdentity::Full,
                    columns: vec![
                        Column { is_key: true, flags: 1, name: "id".into(), type_oid: 23, type_modifier: -1 },
                        Column { is_key: false, flags: 0, name: "note".into(), type_oid: 1043, type_modifier: 68 },
                    ],
                },
            ),
            (
                W::new(b'Y').opt_u32(sxid(opts, 902)).u32(16500).s("").s("int4").bytes(),
                Message::Type { xid: sxid(opts, 902), oid: 16500, namespace: String::new(), name: "int4".into() },
            ),
            (
                W::new(b'I')
                    .opt_u32(sxid(opts, 903))
                    .u32(16384)
                    .u8(b'N')
                    .u16(3)
                    .text(b"1")
                    .u8(b'n')
                    .bin(&[0xDE, 0xAD])
                    .bytes(),
                Message::Insert {
                    xid: sxid(opts, 903),
                    relid: 16384,
                    new: TupleData {
                        columns: vec![t(b"1"), Value::Null, Value::Binary(Bytes::from_static(&[0xDE, 0xAD]))],
                    },
                },
            ),
            (
                W::new(b'U')
                    .opt_u32(sxid(opts, 904))
                    .u32(16384)
                    .u8(b'K')
                    .u16(2)
                    .text(b"1")
                    .u8(b'n')
                    .u8(b'N')
                    .u16(2)
                    .text(b"2")
                    .u8(b'u')
                    .bytes(),
                Message::Update {
                    xid: sxid(opts, 904),
                    relid: 16384,
                    old: Some(OldTuple {
                        kind: OldKind::Key,
                        tuple: TupleData { columns: vec![t(b"1"), Value::Null] },
                    }),
                    new: TupleData { columns: vec![t(b"2"), Value::UnchangedToast] },
                },
            ),
            (
                W::new(b'D').opt_u32(sxid(opts, 905)).u32(16384).u8(b'O').u16(2).text(b"42").text(b"").bytes(),
                Message::Delete {
                    xid: sxid(opts, 905),
                    relid: 16384,
                    old: OldTuple { kind: OldKind::Old, tuple: TupleData { columns: vec![t(b"42"), t(b"")] } },
                },
            ),
            (
                W::new(b'T').opt_u32(sxid(opts, 906)).i32(2).u8(3).u32(16384).u32(16390).bytes(),
                Message::Truncate {
                    xid: sxid(opts, 906),
                    relids: vec![16384, 16390],
                    flags: 3,
                    cascade: true,
                    restart_identity: true,
                },
            ),
            (
                W::new(b'M')
                    .opt_u32(sxid(opts, 907))
                    .u8(1)
                    .u64(0x16_B374_D900)
                    .s("walwitness")
                    .i32(3)
                    .raw(b"{}\0")
                    .bytes(),
                Message::LogicalMessage {
                    xid: sxid(opts, 907),
                    transactional: true,
                    lsn: Lsn(0x16_B374_D900),
                    prefix: "walwitness".into(),
                    content: Bytes::from_static(b"{}\0"),
                },
            ),
            (W::new(b'S').u32(908).u8(1).bytes(), Message::StreamStart { xid: 908, first_segment: true }),
            (W::new(b'E').bytes(), Message::StreamStop),
            (
                W::new(b'c').u32(909).u8(0).u64(0x200).u64(0x230).i64(12345).bytes(),
                Message::StreamCommit {
                    xid: 909,
                    flags: 0,
                    commit_lsn: Lsn(0x200),
                    end_lsn: Lsn(0x230),
                    commit_time: 12345,
                },
            ),
            (
                W::new(b'b').u64(0x300).u64(0x330).i64(5).u32(911).s("gid-1").bytes(),
                Message::BeginPrepare {
                    prepare_lsn: Lsn(0x300),
                    end_lsn: Lsn(0x330),
                    prepare_time: 5,
                    xid: 911,
                    gid: "gid-1".into(),
                },
            ),
            (
                W::new(b'P').u8(0).u64(0x300).u64(0x330).i64(6).u32(912).s("gid-2").bytes(),
                Message::Prepare {
                    flags: 0,
                    prepare_lsn: Lsn(0x300),
                    end_lsn: Lsn(0x330),
                    prepare_time: 6,
                    xid: 912,
                    gid: "gid-2".into(),
                },
            ),
            (
                W::new(b'K').u8(0).u64(0x400).u64(0x430).i64(7).u32(913).s("gid-3").bytes(),
                Message::CommitPrepared {
                    flags: 0,
                    commit_lsn: Lsn(0x400),
                    end_lsn: Lsn(0x430),
                    commit_time: 7,
                    xid: 913,
                    gid: "gid-3".into(),
                },
            ),
            (
                W::new(b'r').u8(0).u64(0x330).u64(0x530).i64(6).i64(8).u32(914).s("gid-4").bytes(),
                Message::RollbackPrepared {
                    flags: 0,
                    prepare_end_lsn: Lsn(0x330),
                    rollback_end_lsn: Lsn(0x530),
                    prepare_time: 6,
                    rollback_time: 8,
                    xid: 914,
                    gid: "gid-4".into(),
                },
            ),
            (
                W::new(b'p').u8(0).u64(0x600).u64(0x630).i64(9).u32(915).s("gid-5").bytes(),
                Message::StreamPrepare {
                    flags: 0,
                    prepare_lsn: Lsn(0x600),
                    end_lsn: Lsn(0x630),
                    prepare_time: 9,
                    xid: 915,
                    gid: "gid-5".into(),
                },
            ),
        ];
        let abort = if opts.stream_abort_has_lsn {
            (
                W::new(b'A').u32(910).u32(920).u64(0x16_0000_0001).i64(99).bytes(),
                Message::StreamAbort {
                    xid: 910,
                    subxid: 920,
                    abort_lsn: Some(Lsn(0x16_0000_0001)),
                    abort_time: Some(99),
                },
            )
        } else {
            (
                W::new(b'A').u32(910).u32(910).bytes(),
                Message::StreamAbort { xid: 910, subxid: 910, abort_lsn: None, abort_time: None },
            )
        };
        v.push(abort);
        v
    }

    const ALL_OPTS: [ParseOptions; 3] = [PLAIN, STREAM, PARALLEL];

    #[test]
    fn every_message_type_decodes() {
        for opts in ALL_OPTS {
            let samples = samples(opts);
            let mut tags: Vec<u8> = samples.iter().map(|(b, _)| b[0]).collect();
            tags.sort_unstable();
            tags.dedup();
            assert_eq!(tags.len(), 19, "a sample for every type byte");
            for (bytes, want) in samples {
                let got = parse(&bytes, opts).unwrap_or_else(|e| panic!("{opts:?}: {e}"));
                assert_eq!(got, want, "{opts:?}");
                assert_eq!(name_for_tag(bytes[0]), Some(want.type_name()));
            }
        }
    }

    #[test]
    fn every_truncated_prefix_is_an_error_naming_the_type() {
        for opts in ALL_OPTS {
            for (bytes, want) in samples(opts) {
                for n in 0..bytes.len() {
                    let e = parse(&bytes.slice(..n), opts).expect_err("a strict prefix must not decode");
                    if n == 0 {
                        assert!(e.reason.contains("empty"), "{e}");
                        continue;
                    }
                    assert_eq!(e.message, want.type_name(), "prefix {n}: {e}");
                    assert!(e.offset <= n, "prefix {n}: {e}");
                    let text = e.to_string();
                    assert!(text.contains(want.type_name()), "{text}");
                    assert!(text.contains(&format!("at byte {}", e.offset)), "{text}");
                }
            }
        }
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        for opts in ALL_OPTS {
            for (bytes, want) in samples(opts) {
                let mut v = bytes.to_vec();
                v.push(0);
                let e = parse(&Bytes::from(v), opts).unwrap_err();
                assert_eq!(e.message, want.type_name());
                assert_eq!(e.offset, bytes.len());
                assert!(e.reason.contains("trailing"), "{e}");
            }
        }
    }

    #[test]
    fn stream_xid_only_when_in_stream() {
        let bytes = W::new(b'D').u32(77).u32(16384).u8(b'K').u16(1).text(b"5").bytes();
        match parse(&bytes, STREAM).unwrap() {
            Message::Delete { xid, relid, .. } => {
                assert_eq!(xid, Some(77));
                assert_eq!(relid, 16384);
            }
            m => panic!("{m:?}"),
        }
        // Without in_stream the xid would be read as the relid and the
        // remaining bytes would not line up.
        assert!(parse(&bytes, PLAIN).is_err());
    }

    #[test]
    fn stream_abort_with_and_without_lsn() {
        let short = W::new(b'A').u32(1).u32(2).bytes();
        let long = W::new(b'A').u32(1).u32(2).u64(3).i64(4).bytes();
        assert!(matches!(
            parse(&short, PLAIN).unwrap(),
            Message::StreamAbort { abort_lsn: None, abort_time: None, .. }
        ));
        assert!(parse(&long, PLAIN).is_err());
        assert!(parse(&short, PARALLEL).is_err());
        assert_eq!(
            parse(&long, PARALLEL).unwrap(),
            Message::StreamAbort { xid: 1, subxid: 2, abort_lsn: Some(Lsn(3)), abort_time: Some(4) }
        );
    }

    #[test]
    fn delete_key_tuple_and_zero_copy() {
        let bytes = W::new(b'D').u32(16384).u8(b'K').u16(3).text(b"abc").u8(b'n').u8(b'n').bytes();
        let msg = parse(&bytes, PLAIN).unwrap();
        let Message::Delete { xid, old, .. } = msg else { panic!() };
        assert_eq!(xid, None);
        assert_eq!(old.kind, OldKind::Key);
        assert_eq!(old.tuple.columns.len(), 3);
        let Value::Text(v) = &old.tuple.columns[0] else { panic!() };
        assert_eq!(&v[..], b"abc");
        // 'D' + relid(4) + 'K' + ncols(2) + 't' + len(4) = value at byte 13.
        assert_eq!(v.as_ptr(), bytes[13..].as_ptr());
    }

    #[test]
    fn delete_rejects_bad_old_marker() {
        let bytes = W::new(b'D').u32(1).u8(b'N').u16(0).bytes();
        let e = parse(&bytes, PLAIN).unwrap_err();
        assert_eq!(e.message, "Delete");
        assert_eq!(e.offset, 5);
        assert!(e.reason.contains("'N'"), "{e}");
    }

    #[test]
    fn update_without_old_and_bad_markers() {
        let bytes = W::new(b'U').u32(1).u8(b'N').u16(1).u8(b'n').bytes();
        assert_eq!(
            parse(&bytes, PLAIN).unwrap(),
            Message::Update { xid: None, relid: 1, old: None, new: TupleData { columns: vec![Value::Null] } }
        );
        // Old tuple not followed by 'N'.
        let bytes = W::new(b'U').u32(1).u8(b'O').u16(0).u8(b'K').u16(0).bytes();
        let e = parse(&bytes, PLAIN).unwrap_err();
        assert_eq!(e.offset, 8);
        // Unknown marker.
        let e = parse(&W::new(b'U').u32(1).u8(b'X').bytes(), PLAIN).unwrap_err();
        assert_eq!(e.offset, 5);
        // Insert needs 'N'.
        let e = parse(&W::new(b'I').u32(1).u8(b'K').u16(0).bytes(), PLAIN).unwrap_err();
        assert_eq!(e.message, "Insert");
        assert_eq!(e.offset, 5);
    }

    #[test]
    fn tuple_kinds_and_unknown_kind() {
        let bytes = W::new(b'I').u32(1).u8(b'N').u16(4).u8(b'n').u8(b'u').text(b"x").bin(b"\x00\x01").bytes();
        let Message::Insert { new, .. } = parse(&bytes, PLAIN).unwrap() else { panic!() };
        assert_eq!(
            new.columns,
            vec![Value::Null, Value::UnchangedToast, t(b"x"), Value::Binary(Bytes::from_static(b"\x00\x01")),]
        );
        let bytes = W::new(b'I').u32(1).u8(b'N').u16(1).u8(b'q').bytes();
        let e = parse(&bytes, PLAIN).unwrap_err();
        assert_eq!(e.offset, 8);
        assert!(e.reason.contains("'q'"), "{e}");
    }

    #[test]
    fn negative_and_huge_lengths_are_errors() {
        for len in [-1i32, i32::MIN, i32::MAX, 5] {
            let bytes = W::new(b'D').u32(1).u8(b'O').u16(1).u8(b't').i32(len).raw(b"abc").bytes();
            let e = parse(&bytes, PLAIN).unwrap_err();
            assert_eq!(e.message, "Delete");
            assert_eq!(e.offset, 9, "{e}");
        }
        let e = parse(&W::new(b'M').u8(0).u64(1).s("p").i32(-7).bytes(), PLAIN).unwrap_err();
        assert!(e.reason.contains("negative length -7"), "{e}");
        let e = parse(&W::new(b'T').i32(-1).u8(0).bytes(), PLAIN).unwrap_err();
        assert!(e.reason.contains("negative relation count"), "{e}");
        let e = parse(&W::new(b'T').i32(i32::MAX).u8(0).u32(1).bytes(), PLAIN).unwrap_err();
        assert!(e.reason.contains("relation count"), "{e}");
        // A column count far beyond the data must fail, not allocate.
        let e = parse(&W::new(b'D').u32(1).u8(b'O').u16(u16::MAX).bytes(), PLAIN).unwrap_err();
        assert_eq!(e.message, "Delete");
        let e = parse(&W::new(b'R').u32(1).s("").s("t").u8(b'd').u16(u16::MAX).bytes(), PLAIN).unwrap_err();
        assert_eq!(e.message, "Relation");
    }

    #[test]
    fn flags_and_identity_variants() {
        for (flags, cascade, restart) in [(0u8, false, false), (1, true, false), (2, false, true)] {
            let m = parse(&W::new(b'T').i32(0).u8(flags).bytes(), PLAIN).unwrap();
            assert_eq!(m, Message::Truncate { xid: None, relids: vec![], flags, cascade, restart_identity: restart });
        }
        for (b, want) in [
            (b'd', ReplicaIdentity::Default),
            (b'n', ReplicaIdentity::Nothing),
            (b'f', ReplicaIdentity::Full),
            (b'i', ReplicaIdentity::Index),
            (b'x', ReplicaIdentity::Other(b'x')),
        ] {
            assert_eq!(ReplicaIdentity::from_byte(b), want);
            assert_eq!(want.as_byte(), b);
        }
        let m = parse(&W::new(b'M').u8(0).u64(9).s("").i32(0).bytes(), PLAIN).unwrap();
        assert_eq!(
            m,
            Message::LogicalMessage {
                xid: None,
                transactional: false,
                lsn: Lsn(9),
                prefix: String::new(),
                content: Bytes::new(),
            }
        );
        let m = parse(&W::new(b'S').u32(3).u8(0).bytes(), PLAIN).unwrap();
        assert_eq!(m, Message::StreamStart { xid: 3, first_segment: false });
    }

    #[test]
    fn unknown_and_empty_messages() {
        let e = parse(&Bytes::from_static(b"Zabc"), PLAIN).unwrap_err();
        assert_eq!(e.offset, 0);
        assert!(e.reason.contains("0x5A ('Z')"), "{e}");
        let e = parse(&Bytes::from_static(b"\x00"), PLAIN).unwrap_err();
        assert!(e.reason.contains("0x00"), "{e}");
        let e = parse(&Bytes::new(), PLAIN).unwrap_err();
        assert!(e.reason.contains("empty"), "{e}");
    }

    #[test]
    fn names_that_are_not_utf8_are_kept_losslessly() {
        // A SQL_ASCII database sends names, prefixes and gids as stored: never a reason to stop.
        let bytes = W::new(b'O').u64(0).raw(b"o\xC3\0").bytes();
        assert_eq!(parse(&bytes, PLAIN).unwrap(), Message::Origin { origin_lsn: Lsn(0), name: "\\x6fc3".into() });
        let bytes = W::new(b'M').u8(0).u64(9).raw(b"\xff\0").i32(2).raw(b"\xff\xfe").bytes();
        let Message::LogicalMessage { prefix, content, .. } = parse(&bytes, PLAIN).unwrap() else { panic!() };
        assert_eq!(prefix, "\\xff");
        assert_eq!(&content[..], b"\xff\xfe");
        let bytes = W::new(b'K').u8(0).u64(1).u64(2).i64(3).u32(4).raw(b"g\xe9\0").bytes();
        let Message::CommitPrepared { gid, .. } = parse(&bytes, PLAIN).unwrap() else { panic!() };
        assert_eq!(gid, "\\x67e9");
        let bytes = W::new(b'R')
            .u32(1)
            .s("public")
            .raw(b"t\xff\0")
            .u8(b'd')
            .u16(1)
            .u8(1)
            .raw(b"k\xff\0")
            .u32(25)
            .i32(-1)
            .bytes();
        let Message::Relation { name, columns, .. } = parse(&bytes, PLAIN).unwrap() else { panic!() };
        assert_eq!((name.as_str(), columns[0].name.as_str()), ("\\x74ff", "\\x6bff"));
    }

    #[test]
    fn fuzz_smoke_no_panic() {
        let mut s: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            s
        };
        const TAGS: &[u8] = b"BCORYIUDTMSEcAbPKrp";
        let seeds: Vec<Bytes> = ALL_OPTS.iter().flat_map(|&o| samples(o)).map(|(b, _)| b).collect();
        for i in 0..6000 {
            let opts = ALL_OPTS[(next() % 3) as usize];
            let v: Vec<u8> = if i % 2 == 0 {
                // Random bytes behind a valid type byte, biased towards the
                // small values that make lengths and counts plausible.
                let len = (next() % 64) as usize;
                let mut v: Vec<u8> = (0..len)
                    .map(|_| {
                        let x = next();
                        if x % 4 == 0 {
                            (x >> 8) as u8
                        } else {
                            (x >> 8) as u8 % 4
                        }
                    })
                    .collect();
                if let Some(f) = v.first_mut() {
                    *f = TAGS[(next() % TAGS.len() as u64) as usize];
                }
                v
            } else {
                // Mutations of well-formed messages reach deeper code paths.
                let mut v = seeds[(next() % seeds.len() as u64) as usize].to_vec();
                for _ in 0..=(next() % 3) {
                    if v.is_empty() {
                        break;
                    }
                    let at = (next() % v.len() as u64) as usize;
                    v[at] = next() as u8;
                }
                v.truncate((next() % (v.len() as u64 + 2)) as usize);
                v
            };
            let bytes = Bytes::from(v);
            let _ = parse(&bytes, opts);
            let mut framed = vec![b'w'];
            framed.extend_from_slice(&[0u8; 24]);
            framed.extend_from_slice(&bytes);
            if let Ok(super::super::replication::ReplicationMessage::XLogData { data, .. }) =
                super::super::replication::parse_copy_data(Bytes::from(framed))
            {
                assert_eq!(data, bytes);
                let _ = parse(&data, opts);
            }
            let _ = super::super::replication::parse_copy_data(bytes);
        }
    }
}
