use clap::Parser;

use walwitness::cli::Cli;
use walwitness::error::Exit;

fn main() {
    let cli = Cli::parse();
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (_, 0) => "warn",
        (_, 1) => "info",
        (_, 2) => "debug",
        _ => "trace",
    };
    walwitness::term::set_colour_choice(cli.color);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(walwitness::term::colour_for(std::io::IsTerminal::is_terminal(&std::io::stderr())))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WALWITNESS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(format!("walwitness={level}"))),
        )
        .with_target(false)
        .init();
    let rt = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("walwitness: cannot start the async runtime: {e}");
            std::process::exit(Exit::Internal as i32);
        }
    };
    // The command runs as a spawned task, not in `block_on` itself: a `block_on` future lives on the
    // main thread, which does not drive the I/O reactor, so every socket wake-up of the replication
    // stream was a hand-off from a worker thread to the main thread (two context switches, ~43k per
    // million deleted rows). On a worker, the thread that polls the socket runs the loop.
    let task = rt.spawn(async move {
        match walwitness::cmd::run(cli.command, cli.quiet).await {
            Ok(exit) => exit,
            // The one place a failure is printed.
            Err(f) => {
                eprintln!("walwitness: error: {f}");
                f.exit
            }
        }
    });
    let code = rt.block_on(task).unwrap_or_else(|e| {
        eprintln!("walwitness: internal error: {e}");
        Exit::Internal
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    std::process::exit(code as i32);
}
