//! The forensic log: record format (`record`), the durable writer (`writer`) and its tamper-evident
//! chain (`chain`), the raw capture file (`raw`), and the spool files of transactions that are not
//! final yet (`spool`).
pub mod chain;
pub mod prepared;
pub mod raw;
pub mod record;
pub mod spool;
pub mod writer;
