//! One integration-test binary: every test starts its own throwaway PostgreSQL cluster and drives
//! the real `walwitness` binary against it.
mod attribution;
mod capture;
mod chain;
mod cleanup_rights;
mod coverage;
mod django;
mod encoding;
mod errors;
mod faults;
mod hostile;
mod integrity;
mod pg_live;
mod reader_dos;
mod readers;
mod relations;
mod streaming;
mod trigger_evidence;
mod util;
mod versions;
