//! walwitness: who deleted my rows?
//!
//! ```text
//! socket → pg (framing, auth, TLS: the only network I/O) → protocol (replication frames, pgoutput; pure)
//!        → decode (relation cache, transaction assembly) → sink (JSON lines, fsync, then acknowledge)
//! ```
//! `capture` wires these together; `cluster` starts throwaway servers for tests and `demo`.
pub mod attribution;
pub mod capture;
pub mod cleanup;
pub mod cli;
pub mod cluster;
pub mod cmd;
pub mod decode;
pub mod demo;
pub mod doctor;
pub mod error;
pub mod pg;
pub mod protocol;
pub mod read;
pub mod sink;
pub mod term;
