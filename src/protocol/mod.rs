//! Pure decoding of the replication stream (no I/O).
