//! walwitness: who deleted my rows?
//!
//! ```text
//! socket → pg (framing, auth, TLS: the only network I/O) → protocol (replication frames, pgoutput; pure)
//!        → decode (relation cache, transaction assembly; pure) → sink (JSON lines, fsync, then acknowledge)
//! ```
//!
//! Module map, top to bottom: a module imports only from rows below its own (and from its own row
//! only where a command composes another: `cmd` → the commands, `demo` → `capture`, the readers →
//! `cli`'s argument structs); no import circle (`scripts/check-layers.py`, run in CI):
//!
//! | layer | module | owns |
//! |---|---|---|
//! | commands | [`cmd`] | one file per subcommand: flags → options → run (`cmd::capture`, `cmd::server`, `cmd::docs`); `main` prints failures |
//! | | [`capture`] | `walwitness capture`: preflight, server objects, the stream loop (I/O and batching), acknowledgements, coverage watch, teardown |
//! | | [`doctor`], [`cleanup`], [`demo`] | `doctor`, `cleanup`, `demo` |
//! | | [`read`] | `tail`, `replay`, `report` (and `replay --verify`, `--raw`): the readers of captured logs; their filters (`read::filter`, `read::when`), the report's data model (`read::summary`) and roll-ups (`read::rollup`) |
//! | | [`cli`] | every flag (clap); turned into option structs before anything runs |
//! | decoding | [`decode`] | pgoutput messages → log records: relation cache, transaction assembly (pure); `decode::pipeline` (parse → hold streamed and prepared transactions in spools → assemble), the one path of the live loop and `replay --raw` |
//! | evidence | [`attribution`] | who ran a transaction: the activity sampler, inference from statement windows (`attribution::infer`, kept apart from evidence) and the trigger's signed statement brackets |
//! | log | [`sink`] | the record format with its `Kind`s and encoders (`sink::record`), the durable writer and its chain, raw and spool files, safe output files |
//! | server | [`pg`] | connection settings (DSN, service, pgpass), TLS, the replication connection, SQL sessions, catalog queries, quoting, leftovers, server errors and what they mean for the exit status (`pg::error`) |
//! | wire | [`protocol`] | bytes → replication frames and pgoutput messages (pure), LSNs; `protocol::encode` builds messages for tests, fuzzing and benches |
//! | shared | [`error`], [`term`] | exit codes and failures; terminal-safe output, `--color`, byte counts for people |
//! | tests | [`cluster`] | throwaway PostgreSQL clusters (tests and `demo`) |
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
