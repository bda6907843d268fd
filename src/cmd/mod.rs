//! Subcommands that are wiring only: flags in, output out.
pub mod docs;
