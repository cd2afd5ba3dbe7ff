//! `cargo xtask bench`: builds the daemon and the benchmark binary
//! (release), then runs the benchmarks as root. They measure and report;
//! they assert nothing about speed, but fail when a part cannot run.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use crate::{
    build,
    cmd::{self, Privilege},
    setup,
};

/// The package and binary of the benchmarks.
const BENCH_PACKAGE: &str = "throttle-tests";
const BENCH_BIN: &str = "throttle-bench";
/// The feature that builds the benchmark binary and its reference programs.
const BENCH_FEATURE: &str = "throttle-tests/bench";
/// Where the README's chart lives (the full run writes it).
const CHART_COPY: &str = "docs/bench/flood.svg";

#[derive(clap::Args)]
pub struct Options {
    /// Every part briefly (about 70 s once built): checks that the benchmarks still
    /// run, for CI. Leaves the README's chart alone.
    #[arg(long)]
    pub quick: bool,
    /// Only these parts (comma-separated: cost, flood, live, scale, admin, fuzz;
    /// soak runs only when named).
    #[arg(long)]
    pub parts: Option<String>,
}

pub fn bench(options: &Options) -> Result<()> {
    setup::setup()?;
    cmd::run(Command::new("cargo").args([
        "build",
        "--release",
        "--package",
        "throttle-userspace",
        "--bin",
        "throttle",
        "--package",
        BENCH_PACKAGE,
        "--features",
        BENCH_FEATURE,
        "--bin",
        BENCH_BIN,
    ]))?;
    let daemon = build::daemon_binary(true)?;
    let release = daemon.parent().context("the daemon binary has a directory")?.to_path_buf();
    let bench = release.join(BENCH_BIN);
    let out: PathBuf = release.parent().context("the release directory has a parent")?.join("bench");

    let privilege = Privilege::require("cargo xtask bench (XDP programs, network namespaces)")?;
    let mut run = privilege.command(&bench);
    run.env("THROTTLE_BIN", &daemon).arg("--out").arg(&out);
    if options.quick {
        run.arg("--quick");
    } else {
        run.args(["--chart-copy", CHART_COPY]);
    }
    if let Some(parts) = &options.parts {
        run.args(["--parts", parts]);
    }
    cmd::run(&mut run)
}
