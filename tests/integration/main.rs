//! One integration-test binary: every test starts its own throwaway PostgreSQL cluster and drives
//! the real `walwitness` binary against it.
mod attribution;
mod capture;
mod encoding;
mod errors;
mod faults;
mod integrity;
mod readers;
mod streaming;
mod trigger_evidence;
mod util;
mod versions;
