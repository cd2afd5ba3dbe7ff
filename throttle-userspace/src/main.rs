//! The `throttle` binary: the daemon, and (later) the client of its admin API.

use clap::{Parser, Subcommand};
use throttle::config::DaemonArgs;
use tracing_subscriber::EnvFilter;

#[derive(Debug, Parser)]
#[command(name = "throttle", version, about = "An XDP ingress throttle: per-source token buckets at the NIC")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Load the XDP program, attach it and enforce the limits.
    Daemon(DaemonArgs),
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("THROTTLE_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: starting the runtime: {err}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = match cli.command {
        Command::Daemon(args) => runtime.block_on(throttle::daemon::run(args)),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
