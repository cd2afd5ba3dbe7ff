//! `cargo xtask`: the project's developer tasks.
//!
//! - `setup`: the toolchain and host set-up the eBPF build and the tests need
//!   (idempotent, and quick once everything is there);
//! - `build`: set-up, then the workspace;
//! - `run`: build, then the daemon, by default on a sandbox veth pair;
//! - `test`: build, then the unprivileged and the privileged test tiers;
//! - `bench`: build, then the benchmarks as root;
//! - `fuzz`: the fuzz targets of the parsers of hostile input (cargo-fuzz);
//! - `install`: build (release), then throttle as a systemd service.

mod bench;
mod build;
mod cmd;
mod fuzz;
mod install;
mod out;
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
    /// Run the fuzz targets (cargo-fuzz, libFuzzer, with nightly) of what
    /// throttle reads from outside: the configuration file, rates, set files,
    /// the admin API's bodies. Installs cargo-fuzz when missing; each target
    /// runs for `--secs`, and a failing input fails the command, named.
    Fuzz(fuzz::Options),
    /// Build (release), then install throttle as a systemd service: the
    /// binary, the unit (an unprivileged user with `CAP_BPF` and
    /// `CAP_NET_ADMIN`), the user, a commented `/etc/throttle/throttle.toml`,
    /// the man pages and the shell completions.
    Install(install::Options),
    /// Build (release), then the Debian package of what `install` puts
    /// under `/usr` (cargo-deb), in target/debian/.
    Deb,
}

fn main() -> std::process::ExitCode {
    let result = match Cli::parse().command {
        Command::Setup => setup::setup(),
        Command::Build(options) => build::build(&options),
        Command::Run(options) => run::run(options),
        Command::Test(options) => test::test(&options),
        Command::Bench(options) => bench::bench(&options),
        Command::Fuzz(options) => fuzz::fuzz(&options),
        Command::Install(options) => install::install(&options),
        Command::Deb => install::deb(),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            // Not `main() -> Result`, whose report would panic on a closed stderr.
            out::errln!("Error: {err:?}");
            std::process::ExitCode::FAILURE
        }
    }
}
