//! `cargo xtask build`, and where the workspace's build output lands.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, Result};

use crate::{cmd, setup};

/// The eBPF crate builds for bpfel-unknown-none with nightly only, through
/// the build scripts of throttle-userspace and (for the benchmarks)
/// throttle-tests. `--workspace` ignores the `default-members` that leave it
/// out, so every workspace-wide cargo command here excludes it by name.
pub const EBPF_CRATE: &str = "throttle-ebpf";

#[derive(clap::Args)]
pub struct Options {
    /// Build with the release profile.
    #[arg(long)]
    pub release: bool,
}

pub fn build(options: &Options) -> Result<()> {
    setup::setup()?;
    cargo_build(options.release)
}

/// `cargo build` of the workspace, the eBPF program included (through the
/// build script); not the benchmarks (`cargo xtask bench` builds those).
pub fn cargo_build(release: bool) -> Result<()> {
    let mut cargo = Command::new("cargo");
    cargo.args(["build", "--workspace", "--exclude", EBPF_CRATE]);
    if release {
        cargo.arg("--release");
    }
    cmd::run(&mut cargo)
}

/// The `throttle` binary of a build.
pub fn daemon_binary(release: bool) -> Result<PathBuf> {
    let profile = if release { "release" } else { "debug" };
    Ok(target_dir()?.join(profile).join("throttle"))
}

/// The workspace's root: where xtask's own manifest's parent is.
pub fn workspace_dir() -> Result<PathBuf> {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .context("xtask's manifest directory has no parent")
}

/// The workspace's target directory, as cargo resolves it (`CARGO_TARGET_DIR`
/// and configuration included).
pub fn target_dir() -> Result<PathBuf> {
    let metadata =
        cmd::output(Command::new("cargo").args(["metadata", "--format-version", "1", "--no-deps"]))?;
    let metadata: serde_json::Value =
        serde_json::from_str(&metadata).context("parsing the output of `cargo metadata`")?;
    let dir = metadata["target_directory"]
        .as_str()
        .context("no `target_directory` in the output of `cargo metadata`")?;
    Ok(PathBuf::from(dir))
}
