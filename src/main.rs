use clap::Parser;

use walwitness::cli::{Cli, Command};
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
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
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
        match cli.command {
            Command::Capture(args) => {
                let opts = match walwitness::capture::options_from_args(*args, !cli.quiet) {
                    Ok(o) => o,
                    Err(f) => {
                        eprintln!("walwitness: error: {f}");
                        return f.exit;
                    }
                };
                match walwitness::capture::run(opts).await {
                    Ok(outcome) => {
                        if !cli.quiet {
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
                        outcome.exit()
                    }
                    Err(f) => {
                        eprintln!("walwitness: error: {f}");
                        f.exit
                    }
                }
            }
            Command::Attribution(cmd) => match walwitness::attribution::run_command(cmd).await {
                Ok(()) => Exit::Ok,
                Err(f) => {
                    eprintln!("walwitness: error: {f}");
                    f.exit
                }
            },
            Command::Doctor(a) => {
                let dsn = match a.conn.resolve() {
                    Ok(d) => d,
                    Err(f) => {
                        eprintln!("walwitness: error: {f}");
                        return f.exit;
                    }
                };
                match walwitness::doctor::run(walwitness::doctor::DoctorArgs {
                    dsn,
                    tables: a.tables,
                    publication: a.publication,
                    json: a.format == walwitness::cli::ReportFormat::Json,
                    attribution: walwitness::attribution::Sources {
                        trigger: a.attribution.contains(&walwitness::cli::AttributionSource::Trigger),
                        activity: a.attribution.contains(&walwitness::cli::AttributionSource::Activity),
                    },
                })
                .await
                {
                    Ok(code) => code,
                    Err(f) => {
                        eprintln!("walwitness: error: {f}");
                        f.exit
                    }
                }
            }
            Command::Cleanup(a) => {
                let dsn = match a.conn.resolve() {
                    Ok(d) => d,
                    Err(f) => {
                        eprintln!("walwitness: error: {f}");
                        return f.exit;
                    }
                };
                match walwitness::cleanup::run(walwitness::cleanup::CleanupArgs { dsn, yes: a.yes }).await {
                    Ok(()) => Exit::Ok,
                    Err(f) => {
                        eprintln!("walwitness: error: {f}");
                        f.exit
                    }
                }
            }
            Command::Demo(args) => match walwitness::demo::run(args).await {
                Ok(()) => Exit::Ok,
                Err(f) => {
                    eprintln!("walwitness demo: error: {f}");
                    f.exit
                }
            },
            Command::Tail(args) => walwitness::read::tail::run(args),
            Command::Replay(args) => walwitness::read::replay::run(args),
            Command::Report(args) => walwitness::read::report::run(args),
        }
    });
    let code = rt.block_on(task).unwrap_or_else(|e| {
        eprintln!("walwitness: internal error: {e}");
        Exit::Internal
    });
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    std::process::exit(code as i32);
}
