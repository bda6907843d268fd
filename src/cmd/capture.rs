//! `walwitness capture`: flags → [`crate::capture::CaptureOptions`] → the capture, then its summary.
use crate::cli::CaptureArgs;
use crate::error::{Exit, Failure};

pub async fn run(args: CaptureArgs, quiet: bool) -> Result<Exit, Failure> {
    let opts = crate::capture::options_from_args(args, !quiet)?;
    let outcome = crate::capture::run(opts).await?;
    if !quiet {
        eprintln!(
            "walwitness: stopped ({}): {} deleted rows and {} truncates in {} transactions, log covers up to LSN {}",
            outcome.reason.as_str(),
            outcome.deletes,
            outcome.truncates,
            outcome.transactions,
            outcome.last_lsn
        );
    }
    // Even with -q: the head is only worth something written down elsewhere.
    if let Some(h) = &outcome.chain_head {
        eprintln!(
            "walwitness: chain head {h} (check the log later with: walwitness replay --verify --expect-head {h} LOG)"
        );
    }
    Ok(outcome.exit())
}
