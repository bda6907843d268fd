//! The forensic log: record format (`record`), the durable writer (`writer`) and its tamper-evident
//! chain (`chain`), the raw capture file (`raw`), the spool files of transactions that are not final yet
//! (`spool`), and opening output files safely on a shared host (`outfile`).
pub mod chain;
pub mod outfile;
pub mod prepared;
pub mod raw;
pub mod record;
pub mod spool;
pub mod writer;
