//! `cargo xtask test`: the unprivileged tiers, then the privileged ones as
//! root.

use std::{env, fmt, process::Command};

use anyhow::{bail, Result};

use crate::{
    build::{self, EBPF_CRATE},
    cmd::{self, Privilege},
    out::{errln, outln},
    setup,
};

/// The privileged tests: veth pairs, namespaces, the real daemon.
const PRIVILEGED_CRATE: &str = "throttle-tests";

#[derive(clap::Args)]
pub struct Options {
    /// Arguments for the test binaries of both tiers (a name filter, say).
    #[arg(last = true)]
    pub args: Vec<String>,
}

/// How a tier ended.
enum Outcome {
    Passed,
    Failed,
    NotRun,
    Skipped(&'static str),
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Passed => f.write_str("passed"),
            Self::Failed => f.write_str("FAILED"),
            Self::NotRun => f.write_str("not run"),
            Self::Skipped(why) => write!(f, "SKIPPED ({why})"),
        }
    }
}

pub fn test(options: &Options) -> Result<()> {
    setup::setup()?;
    build::cargo_build(false)?;

    let in_ci = env::var("CI").is_ok_and(|ci| ci == "true");
    let unprivileged = tier_outcome(cmd::run(&mut unprivileged_tests(&options.args)));
    let privileged = match (&unprivileged, Privilege::detect()) {
        (Outcome::Passed, Some(privilege)) => tier_outcome(
            privileged_tests(privilege, in_ci, &options.args).and_then(|mut cargo| cmd::run(&mut cargo)),
        ),
        (Outcome::Passed, None) => Outcome::Skipped("not root, and no sudo"),
        _ => Outcome::NotRun,
    };

    if matches!(privileged, Outcome::Skipped(_)) {
        errln!("{}", skipped_banner());
    }
    outln!("test summary:");
    outln!("  unprivileged tiers (workspace less {PRIVILEGED_CRATE}): {unprivileged}");
    outln!("  privileged tiers ({PRIVILEGED_CRATE}, as root): {privileged}");
    match privileged {
        Outcome::Passed => Ok(()),
        Outcome::Skipped(_) if !in_ci => Ok(()),
        Outcome::Skipped(_) => bail!("in CI (CI=true) the privileged tests must run: run as root"),
        Outcome::Failed | Outcome::NotRun => bail!("tests failed"),
    }
}

/// The tier's outcome; a failure is printed here and summed up at the end.
fn tier_outcome(result: Result<()>) -> Outcome {
    match result {
        Ok(()) => Outcome::Passed,
        Err(e) => {
            errln!("error: {e:#}");
            Outcome::Failed
        }
    }
}

fn unprivileged_tests(args: &[String]) -> Command {
    let mut cargo = Command::new("cargo");
    cargo.args(["test", "--workspace", "--exclude", EBPF_CRATE, "--exclude", PRIVILEGED_CRATE]);
    if !args.is_empty() {
        cargo.arg("--").args(args);
    }
    cargo
}

/// The privileged tests, against the daemon binary of the debug build. Cargo
/// builds them as the invoking user; only the test binaries run as root,
/// through a `sudo -E` runner when we are not root already.
fn privileged_tests(privilege: Privilege, in_ci: bool, args: &[String]) -> Result<Command> {
    let mut cargo = Command::new("cargo");
    cargo
        .args(["test", "--package", PRIVILEGED_CRATE])
        .env("THROTTLE_BIN", build::daemon_binary(false)?)
        .env(setup::SCHEMATHESIS_ENV, setup::schemathesis_bin()?);
    if in_ci {
        // A test that cannot get root then fails instead of skipping.
        cargo.env("THROTTLE_REQUIRE_PRIVILEGED", "1");
    }
    if privilege == Privilege::Sudo {
        cargo.args(["--config", r#"target."cfg(all())".runner = "sudo -E""#]);
    }
    cargo.args(["--", "--test-threads=2"]).args(args);
    Ok(cargo)
}

fn skipped_banner() -> String {
    let rule = "*".repeat(72);
    format!("{rule}\n*** PRIVILEGED TESTS SKIPPED: run as root (or with sudo on PATH)\n{rule}")
}
