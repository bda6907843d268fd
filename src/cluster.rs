//! Throwaway PostgreSQL clusters for tests and `walwitness demo`.
