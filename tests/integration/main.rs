//! One integration-test binary: every test starts its own throwaway PostgreSQL cluster and drives
//! the real `walwitness` binary against it.
mod capture;
mod errors;
mod readers;
mod util;
