//! walwitness: who deleted my rows?
//!
//! ```text
//! socket → pg (framing, auth, TLS: the only network I/O) → protocol (replication frames, pgoutput; pure)
//!        → decode (relation cache, transaction assembly; pure) → sink (JSON lines, fsync, then acknowledge)
//! ```
//!
//! Module map (lower layers never import higher ones; the commands at the top wire them):
//!
//! | layer | module | owns |
//! |---|---|---|
//! | commands | [`capture`] | `walwitness capture`: preflight, server objects, the stream loop (I/O and batching), acknowledgements, coverage watch, teardown |
//! | | [`doctor`], [`cleanup`], [`demo`] | `doctor`, `cleanup`, `demo` |
//! | | [`read`] | `tail`, `replay`, `report` (and `replay --verify`, `--raw`): the readers of captured logs; their filters (`read::filter`, `read::when`), the report's data model (`read::summary`) and roll-ups (`read::rollup`) |
//! | | [`cmd`] | one file per subcommand: flags → options → run (`cmd::capture`, `cmd::server`, `cmd::docs`); `main` prints failures |
//! | | [`cli`] | every flag (clap); turned into option structs before anything runs |
//! | evidence | [`attribution`] | who ran a transaction: the activity sampler, inference from statement windows (`attribution::infer`, kept apart from evidence) and the trigger's signed statement brackets |
//! | log | [`sink`] | the record format with its `Kind`s and encoders (`sink::record`), the durable writer and its chain, raw and spool files, safe output files |
//! | decoding | [`decode`] | pgoutput messages → log records: relation cache, transaction assembly (pure); `decode::pipeline` (parse → hold streamed and prepared transactions in spools → assemble), the one path of the live loop and `replay --raw` |
//! | | [`protocol`] | bytes → replication frames and pgoutput messages (pure), LSNs; `protocol::encode` builds messages for tests, fuzzing and benches |
//! | server | [`pg`] | connection settings (DSN, service, pgpass), TLS, the replication connection, SQL sessions, catalog queries, quoting, leftovers |
//! | shared | [`error`], [`term`] | exit codes and failures; terminal-safe output and byte counts for people |
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
