//! Pure decoding of the logical replication stream: bytes in, typed values out.
//!
//! Data flow, outermost first:
//!
//! 1. `crate::pg` owns the socket. After `START_REPLICATION` it receives
//!    CopyData (`'d'`) frames and hands each frame's payload to
//!    [`replication::parse_copy_data`], which yields either an XLogData
//!    (`'w'`) carrying one pgoutput message, or a primary keepalive (`'k'`).
//! 2. The XLogData payload goes to [`pgoutput::parse`], which returns one
//!    [`pgoutput::Message`] (Begin, Relation, Delete, Truncate, Commit, ...).
//!    The caller tracks whether it is inside a Stream Start/Stop block and
//!    passes that in [`pgoutput::ParseOptions`], because the in-stream xid
//!    field is not self-describing.
//! 3. Going the other way, [`replication::encode_standby_status`] builds the
//!    `'r'` standby status update that acknowledges a flushed [`Lsn`].
//!
//! Nothing here does I/O, keeps state between messages or depends on tokio.
//! That keeps the part of the program that interprets untrusted bytes small,
//! deterministic and testable byte-for-byte, and lets the same code replay a
//! captured stream offline. Decoding never panics: malformed input becomes a
//! [`DecodeError`] naming the message type and byte offset. Column values are
//! returned as [`bytes::Bytes`] slices of the received frame, so no row data
//! is copied.

pub mod buf;
pub mod encode;
pub mod lsn;
pub mod pgoutput;
pub mod replication;

pub use buf::DecodeError;
pub use lsn::Lsn;
