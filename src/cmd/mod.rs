//! The subcommands: each file turns its flags into options and runs the work, returning an exit status
//! or a [`Failure`]. [`run`] dispatches; `main` prints a failure, once, in one place.
pub mod capture;
pub mod docs;
pub mod server;

use crate::cli::Command;
use crate::error::{Exit, Failure};

/// Runs one subcommand. `quiet` is `-q`.
pub async fn run(command: Command, quiet: bool) -> Result<Exit, Failure> {
    match command {
        Command::Capture(args) => capture::run(*args, quiet).await,
        Command::Attribution(cmd) => server::attribution(cmd).await.map(|()| Exit::Ok),
        Command::Doctor(args) => server::doctor(args).await,
        Command::Cleanup(args) => server::cleanup(args).await,
        Command::Demo(args) => crate::demo::run(args).await.map(|()| Exit::Ok),
        // The readers report their own errors (file and line), as they read.
        Command::Tail(args) => Ok(crate::read::tail::run(args)),
        Command::Replay(args) => Ok(crate::read::replay::run(args)),
        Command::Report(args) => Ok(crate::read::report::run(args)),
        Command::Completions(args) => Ok(docs::completions(args)),
        Command::Man(args) => Ok(docs::man(args)),
    }
}
