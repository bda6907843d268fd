//! The forensic log: record format (`record`) and the durable writer (`writer`).
pub mod raw;
pub mod record;
pub mod writer;
