//! walwitness: who deleted my rows?
pub mod cluster;
pub mod pg;
pub mod protocol;
