//! Builds binaries of the XDP crate (`throttle-ebpf`) for the BPF target,
//! from a build script, and leaves each object in `OUT_DIR/<binary>`, where
//! the crate embeds it with
//! `aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/<binary>"))`.
//! throttle-userspace's build script builds the program the daemon loads,
//! throttle-tests' (with its `bench` feature) the benchmarks' reference
//! programs.
//!
//! This is what `aya-build` does, with one difference: the program needs
//! `-C target-cpu=v3` for the `BPF_CMPXCHG` of its buckets, and aya-build
//! 0.2.0 replaces every rustflag. The build needs the `nightly` toolchain
//! with `rust-src` and a `bpf-linker` on PATH: `cargo xtask setup` installs
//! them.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

/// The toolchain of the BPF build. Not a dated nightly: automatic toolchain
/// installation is not available everywhere this builds.
const TOOLCHAIN: &str = "nightly";
const PACKAGE: &str = "throttle-ebpf";
const TARGET: &str = "bpfel-unknown-none";

/// Builds `binaries` of `throttle-ebpf` (release, for the BPF target) and
/// copies each object to `OUT_DIR/<binary>`. Call it from a build script
/// only: it reads the variables cargo gives one, and prints the
/// `cargo:rerun-if-...` lines that rebuild the objects when the eBPF or
/// common crate changes. Exits the build script with a message naming
/// `cargo xtask setup` when the build fails.
pub fn build(binaries: &[&str]) {
    // This crate lives at `xtask/ebpf-build` of the workspace.
    let workspace =
        Path::new(env!("CARGO_MANIFEST_DIR")).ancestors().nth(2).expect("the workspace root").to_path_buf();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    for dir in [PACKAGE, "throttle-common"] {
        println!("cargo:rerun-if-changed={}", workspace.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed=PATH");

    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("CARGO_CFG_TARGET_ARCH");
    let target_dir = out_dir.join("ebpf-target");
    let rustflags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
        // BPF ISA v3: atomic compare-and-swap and fetch-add.
        "-Ctarget-cpu=v3".to_owned(),
    ]
    // No `+allows-misaligned-mem-access`, which would let LLVM join stores
    // and loads on the stack into misaligned wider ones: the verifier
    // refuses those whoever loads the program.
    .join("\x1f");

    let mut cmd = Command::new("rustup");
    cmd.args(["run", TOOLCHAIN, "cargo", "build", "--package", PACKAGE, "--release"])
        .args(binaries.iter().flat_map(|&binary| ["--bin", binary]))
        .args(["--target", TARGET, "-Z", "build-std=core"])
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&workspace)
        .env("CARGO_ENCODED_RUSTFLAGS", rustflags);
    // The outer cargo's settings would pick the host toolchain or flags.
    for key in ["RUSTC", "RUSTC_WRAPPER", "RUSTC_WORKSPACE_WRAPPER", "RUSTFLAGS", "CARGO_BUILD_TARGET"] {
        cmd.env_remove(key);
    }
    let shown = binaries.join(", ");
    let status = cmd.status().unwrap_or_else(|err| {
        fail(&format!("cannot run `rustup run {TOOLCHAIN} cargo`: {err}"));
    });
    if !status.success() {
        fail(&format!("building {PACKAGE} ({shown}) for {TARGET} failed ({status})"));
    }
    for binary in binaries {
        copy(&target_dir.join(TARGET).join("release").join(binary), &out_dir.join(binary));
    }
}

fn copy(from: &Path, to: &Path) {
    if let Err(err) = std::fs::copy(from, to) {
        fail(&format!("copying {} to {}: {err}", from.display(), to.display()));
    }
}

fn fail(message: &str) -> ! {
    eprintln!("error: {message}");
    eprintln!(
        "The XDP program needs the `{TOOLCHAIN}` toolchain with rust-src and bpf-linker: \
         run `cargo xtask setup`."
    );
    std::process::exit(1);
}
