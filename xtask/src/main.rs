//! `cargo xtask`: the project's developer tasks.
//!
//! - `setup`: the toolchain and host set-up the eBPF build and the tests need
//!   (idempotent, and quick once everything is there);
//! - `build`: set-up, then the workspace;
//! - `run`: build, then the daemon, by default on a sandbox veth pair;
//! - `test`: build, then the unprivileged and the privileged test tiers;
//! - `bench`: build, then the benchmarks as root.

mod bench;
mod build;
mod cmd;
mod run;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about, bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what building and testing throttle needs, when it is missing:
    /// rust-src for nightly, bpf-linker, Debian packages, schemathesis (in a
    /// venv under ~/.cache/throttle), bpffs.
    Setup,
    /// Set up, then build the workspace (the eBPF program through
    /// throttle-userspace's build script).
    Build(build::Options),
    /// Build, then run `throttle daemon` as root. Without `--iface` among the
    /// daemon's arguments it attaches to a sandbox veth pair whose peer sits
    /// in a private network namespace; both are removed on exit.
    Run(run::Options),
    /// Build, then run the unprivileged tests and, as root, the privileged
    /// ones (`throttle-tests`).
    Test(test::Options),
    /// Build (release), then run the benchmarks as root: cost per packet,
    /// flood drop rate against nftables and iptables, accuracy, scale.
    /// Results go to target/bench/ (JSON, Markdown, SVG chart).
    Bench(bench::Options),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::setup(),
        Command::Build(options) => build::build(&options),
        Command::Run(options) => run::run(options),
        Command::Test(options) => test::test(&options),
        Command::Bench(options) => bench::bench(&options),
    }
}
