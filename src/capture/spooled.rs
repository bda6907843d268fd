//! The capture's side of streamed and prepared transactions: what START_REPLICATION asks for, and the
//! replication connection's startup settings. Holding and replaying them is `decode::pipeline`'s.
pub use crate::decode::pipeline::Spooled;

/// START_REPLICATION options for streaming and two-phase, and whether Stream Abort then carries the
/// abort LSN and time. `parallel` (proto 4, 16+) is asked for only for those two fields: walwitness
/// applies nothing in parallel, and the server sends the same messages otherwise.
pub fn replication_options(proto: u32, two_phase: bool) -> (String, bool) {
    let parallel = crate::decode::pipeline::stream_abort_has_lsn(proto);
    let mut s = format!(", streaming '{}'", if parallel { "parallel" } else { "on" });
    if two_phase && proto >= 3 {
        s.push_str(", two_phase 'on'");
    }
    (s, parallel)
}

/// Startup parameters of the replication connection: settings the walsender's decoding reads.
pub fn startup_params(opts: &super::CaptureOptions) -> Vec<(&'static str, String)> {
    let mut p = Vec::new();
    if let Some(bytes) = opts.logical_decoding_work_mem {
        // The server's unit is kB; its minimum is 64kB (it refuses less with a clear error).
        p.push(("logical_decoding_work_mem", format!("{}kB", bytes.div_ceil(1024))));
    }
    if opts.stream_every_change {
        p.push(("debug_logical_replication_streaming", "immediate".to_owned()));
    }
    p
}
