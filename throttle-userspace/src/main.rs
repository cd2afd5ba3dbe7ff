//! The `throttle` binary: the daemon, and the client of its admin API.

use std::{path::PathBuf, process::ExitCode};

use clap::{CommandFactory as _, Parser, Subcommand};
use throttle::{
    client::{
        self, BansCommand, CaptureArgs, ClassesCommand, ClientArgs, ClientCommand, ControllerCommand,
        LimitsCommand, RulesCommand, SetsCommand,
    },
    logging,
    settings::DaemonArgs,
};
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
    /// Write the man pages or a shell's completions, generated from these
    /// definitions (for packagers and `cargo xtask install`).
    Generate {
        #[command(subcommand)]
        what: Generate,
    },
    /// The daemon at a glance: interfaces, sources tracked, version.
    Status(#[command(flatten)] ClientArgs),
    /// Show the default limit, or change it with `limits set`.
    Limits {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        set: Option<LimitsCommand>,
    },
    /// The limit classes as a table, or one with `classes show NAME`.
    Classes {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: Option<ClassesCommand>,
    },
    /// The IP sets as a table; `sets load NAME FILE` loads one, `sets rm NAME` removes one.
    Sets {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: Option<SetsCommand>,
    },
    /// What the data path would do with a packet now: `explain 192.0.2.7 tcp/22 --syn`.
    Explain {
        #[command(flatten)]
        client: ClientArgs,
        /// The packet's source address.
        addr: String,
        /// Its protocol and destination port: `tcp/22`, `udp/53`.
        to: Option<String>,
        /// A TCP SYN without ACK.
        #[arg(long)]
        syn: bool,
    },
    /// The sources their class bans now, or `bans rm ADDR` to lift one's.
    Bans {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: Option<BansCommand>,
    },
    /// List, add and remove rules.
    Rules {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// The last events (sources starting and stopping being dropped, bans, changes and who made
    /// them...); `--follow` prints each new one as it happens.
    Events {
        #[command(flatten)]
        client: ClientArgs,
        /// How many of the last.
        #[arg(short = 'n', default_value_t = 20)]
        n: usize,
        /// Keep printing events as they happen.
        #[arg(short = 'f', long)]
        follow: bool,
    },
    /// Dropped packets into a pcap file: `capture --reason over_limit -c 100 -w drops.pcap`.
    Capture {
        #[command(flatten)]
        client: ClientArgs,
        #[command(flatten)]
        capture: CaptureArgs,
    },
    /// The sources with the most packets dropped (or passed).
    Top {
        #[command(flatten)]
        client: ClientArgs,
        /// How many.
        #[arg(short = 'n', default_value_t = 10)]
        n: usize,
        /// `dropped` or `passed`.
        #[arg(long, default_value = "dropped")]
        by: String,
        /// A live view: refreshed every `--interval`, with the rates per
        /// second since the last refresh, until Ctrl-C.
        #[arg(short = 'w', long)]
        watch: bool,
        /// Seconds between refreshes of `--watch`.
        #[arg(long, default_value_t = 1.0, value_name = "SECS")]
        interval: f64,
        /// Stop `--watch` after this many refreshes.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// One source's bucket; `--reset` forgets it (a fresh burst).
    Source {
        #[command(flatten)]
        client: ClientArgs,
        /// An IPv4 or IPv6 address.
        addr: String,
        #[arg(long)]
        reset: bool,
    },
    /// The adaptive controller: its state, or `controller set` to change it.
    Controller {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        set: Option<ControllerCommand>,
    },
}

/// The client's flags a command line gives before its subcommand, moved
/// after it (where each subcommand takes them): `throttle --json status`
/// as `throttle status --json`. The daemon's own flags are left alone.
fn hoist_client_flags(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    let mut flags = Vec::new();
    let mut i = 1;
    while let Some(arg) = args.get(i).and_then(|a| a.to_str()) {
        let name = arg.split('=').next().unwrap_or(arg);
        match name {
            "--admin" | "--token-file" if !arg.contains('=') => i += 2,
            "--json" | "--admin" | "--token-file" => i += 1,
            _ => break,
        }
        flags.push(i);
    }
    let end = flags.last().copied().unwrap_or(1);
    if end == 1 || end >= args.len() || args[end] == "daemon" {
        return args;
    }
    let mut out = vec![args[0].clone(), args[end].clone()];
    out.extend(args[1..end].iter().cloned());
    out.extend(args[end + 1..].iter().cloned());
    out
}

/// What `throttle generate` writes.
#[derive(Debug, Subcommand)]
enum Generate {
    /// The man pages into DIR: `throttle.1`, and one for each subcommand
    /// (`throttle-daemon.1`...).
    Man { dir: PathBuf },
    /// The completion script for SHELL, on standard output.
    Completions { shell: clap_complete::Shell },
}

/// Writes what `what` asks for.
fn generate(what: &Generate) -> std::io::Result<()> {
    let mut command = Cli::command();
    match what {
        Generate::Man { dir } => {
            std::fs::create_dir_all(dir)?;
            clap_mangen::generate_to(command, dir)
        }
        Generate::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(*shell, &mut command, "throttle", &mut out);
            std::io::Write::write_all(&mut std::io::stdout(), &out)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse_from(hoist_client_flags(std::env::args_os().collect()));
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(err) => {
            logging::eprint_line(format_args!("error: starting the runtime: {err}"));
            return ExitCode::FAILURE;
        }
    };
    let (client, command) = match cli.command {
        Command::Daemon(args) => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    EnvFilter::try_from_env("THROTTLE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
                )
                // A log nobody reads any more must not stop the daemon.
                .with_writer(logging::Stderr)
                .log_internal_errors(false)
                .init();
            return match runtime.block_on(throttle::daemon::run(args)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    logging::eprint_line(format_args!("error: {}", chain(&err)));
                    ExitCode::FAILURE
                }
            };
        }
        Command::Status(client) => (client, ClientCommand::Status),
        Command::Limits { client, set } => {
            (client, ClientCommand::Limits(set.map(|LimitsCommand::Set(s)| s)))
        }
        Command::Classes { client, command } => (client, ClientCommand::Classes(command)),
        Command::Bans { client, command } => (client, ClientCommand::Bans(command)),
        Command::Sets { client, command } => (client, ClientCommand::Sets(command)),
        Command::Explain { client, addr, to, syn } => (client, ClientCommand::Explain { addr, to, syn }),
        Command::Rules { client, command } => (client, ClientCommand::Rules(command)),
        Command::Top { client, n, by, watch: false, .. } => (client, ClientCommand::Top { n, by }),
        Command::Top { client, n, by, watch: true, interval, count } => {
            if !(interval.is_finite() && (0.1..=3600.0).contains(&interval)) {
                logging::eprint_line(format_args!("error: --interval {interval}: from 0.1 to 3600 seconds"));
                return ExitCode::from(client::EXIT_USAGE);
            }
            (
                client,
                ClientCommand::Watch { n, by, interval: std::time::Duration::from_secs_f64(interval), count },
            )
        }
        Command::Events { client, n, follow } => (client, ClientCommand::Events { n, follow }),
        Command::Capture { client, capture } => (client, ClientCommand::Capture(capture)),
        Command::Source { client, addr, reset } => (client, ClientCommand::Source { addr, reset }),
        Command::Controller { client, set } => (client, ClientCommand::Controller(set)),
        Command::Generate { what } => {
            return match generate(&what) {
                Ok(()) => ExitCode::SUCCESS,
                Err(err) => {
                    logging::eprint_line(format_args!("error: {err}"));
                    ExitCode::FAILURE
                }
            };
        }
    };
    match runtime.block_on(client::run(&client, command)) {
        // A reader that went away (`throttle rules list | head -1`) is no
        // error of the command's.
        Ok(text) => {
            let _ = logging::print_text(&text);
            ExitCode::from(client::EXIT_OK)
        }
        Err(err) => {
            logging::eprint_line(format_args!("error: {err}"));
            ExitCode::from(err.exit_code())
        }
    }
}

/// An error and its causes, joined by ": ", leaving out a cause whose text
/// already ends the message (an error that names its source in its own
/// text and also returns it as its source).
fn chain(err: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in err.chain() {
        let text = cause.to_string();
        if out.ends_with(&text) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(&text);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::io;

    use super::{chain, hoist_client_flags};

    fn hoisted(line: &str) -> String {
        let args = line.split(' ').map(std::ffi::OsString::from).collect();
        hoist_client_flags(args).iter().map(|a| a.to_str().unwrap()).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn client_flags_before_the_subcommand_go_after_it() {
        assert_eq!(hoisted("throttle --json status"), "throttle status --json");
        assert_eq!(
            hoisted("throttle --admin 10.0.0.1:9840 --json rules list"),
            "throttle rules --admin 10.0.0.1:9840 --json list"
        );
        assert_eq!(hoisted("throttle --token-file=/t top -n 3"), "throttle top --token-file=/t -n 3");
        assert_eq!(hoisted("throttle status --json"), "throttle status --json", "already after");
        assert_eq!(
            hoisted("throttle --admin 0.0.0.0:1 daemon"),
            "throttle --admin 0.0.0.0:1 daemon",
            "not the daemon's"
        );
        assert_eq!(hoisted("throttle --json"), "throttle --json", "no subcommand: clap says so");
        assert_eq!(hoisted("throttle --version"), "throttle --version");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("pin directory /sys/fs/bpf/x: {source}")]
    struct Named {
        source: io::Error,
    }

    #[test]
    fn a_cause_the_message_already_ends_with_is_left_out() {
        let err = anyhow::Error::new(Named { source: io::Error::from(io::ErrorKind::NotFound) })
            .context("loading the XDP program");
        assert_eq!(chain(&err), "loading the XDP program: pin directory /sys/fs/bpf/x: entity not found");
    }

    #[test]
    fn causes_the_message_does_not_name_are_kept() {
        let err = anyhow::Error::new(io::Error::from(io::ErrorKind::NotFound)).context("reading /etc/x");
        assert_eq!(chain(&err), "reading /etc/x: entity not found");
    }
}
