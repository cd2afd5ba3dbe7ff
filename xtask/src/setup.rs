//! `cargo xtask setup`: what building the eBPF program and running the tests
//! need, checked one item at a time and installed when missing.
//!
//! Every check is a quick probe, so a set-up machine passes in well under a
//! second; the one slow step is building bpf-linker (a minute or two) on a
//! machine that has none.

use std::{
    env, fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use crate::{
    cmd::{self, is_root},
    out::outln,
};

/// The toolchain that builds the eBPF crate, by its undated name: no dated
/// nightly is installed on the project's machines.
pub const NIGHTLY: &str = "nightly";

/// bpf-linker 0.13.0 is the newest release, and the first with an `llvm-22`
/// feature, which is the LLVM of the installed nightly. Pinned so that every
/// machine links the eBPF program with the same linker.
const BPF_LINKER_VERSION: &str = "0.13.0";

/// The Debian packages the privileged tests and the benchmarks use.
const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",    // ip netns, ip link: the veth pairs and namespaces
    "netsniff-ng", // trafgen: the packet generator
    "nftables",    // nft: baseline for the benchmarks
    "iptables",    // iptables -m hashlimit: baseline for the benchmarks
    "wrk",         // HTTP load against the admin API and the probed service
    "curl",
    "tshark",       // reads back the captures of dropped packets
    "chromium",     // the dashboard's test, in a real browser
    "prometheus",   // promtool: checks the example alerting rules
    "redis-server", // the fleet tests' Redis (and redis-cli), a Redis Cluster too
    "openssl",      // the certificate of the fleet tests' Redis over TLS
    "util-linux",   // setpriv: the daemon as an unprivileged user with its capabilities
    "systemd",      // systemd-analyze: checks the service's unit
    "python3-venv", // the virtual environment schemathesis is installed in
];

/// schemathesis, from the Python Package Index: the admin API fuzzed from its own OpenAPI
/// document (`tests/tests/api_fuzz.rs`). Pinned so that every machine runs
/// the same checks; 4.32.5 is the newest release.
pub const SCHEMATHESIS_VERSION: &str = "4.32.5";

/// What the privileged tests read to find schemathesis.
pub const SCHEMATHESIS_ENV: &str = "THROTTLE_SCHEMATHESIS";

const BPFFS: &str = "/sys/fs/bpf";

pub fn setup() -> Result<()> {
    let llvm_major = nightly()?;
    rust_src()?;
    bpf_linker(llvm_major)?;
    debian_packages()?;
    schemathesis()?;
    bpffs()?;
    Ok(())
}

/// Checks that the nightly toolchain is there and returns its LLVM major.
fn nightly() -> Result<u32> {
    let version =
        cmd::output(Command::new("rustc").args([&format!("+{NIGHTLY}"), "-vV"])).with_context(|| {
            format!(
                "the `{NIGHTLY}` toolchain is missing (the eBPF crate needs it): \
                 install it with `rustup toolchain install {NIGHTLY} --component rust-src`"
            )
        })?;
    let major = llvm_major(&version)
        .with_context(|| format!("no `LLVM version` in `rustc +{NIGHTLY} -vV`:\n{version}"))?;
    outln!("{NIGHTLY} toolchain (LLVM {major}): ok");
    Ok(major)
}

/// The LLVM major version in the output of `rustc -vV`.
fn llvm_major(rustc_vv: &str) -> Option<u32> {
    rustc_vv
        .lines()
        .find_map(|line| line.strip_prefix("LLVM version:"))?
        .trim()
        .split('.')
        .next()?
        .parse()
        .ok()
}

/// `-Z build-std=core` builds core from source.
fn rust_src() -> Result<()> {
    let installed = cmd::output(Command::new("rustup").args([
        "component",
        "list",
        "--installed",
        "--toolchain",
        NIGHTLY,
    ]))?;
    if installed.lines().any(|line| line.starts_with("rust-src")) {
        outln!("rust-src ({NIGHTLY}): ok");
        return Ok(());
    }
    cmd::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]))?;
    outln!("rust-src ({NIGHTLY}): installed");
    Ok(())
}

/// bpf-linker, built against the nightly's own libLLVM: no system LLVM of the
/// right version is needed, and the linker reads the bitcode the nightly
/// writes.
fn bpf_linker(llvm_major: u32) -> Result<()> {
    let what = format!("bpf-linker {BPF_LINKER_VERSION} (LLVM {llvm_major})");
    // The links come first: a bpf-linker built by an earlier set-up finds its
    // libLLVM through them (its RUNPATH is the prefix's lib/).
    let prefix = llvm_prefix()?;
    link_nightly_llvm(&prefix)?;
    match bpf_linker_version() {
        Ok(found) if found.contains(BPF_LINKER_VERSION) => {
            outln!("{what}: ok");
            return Ok(());
        }
        Ok(found) => {
            outln!("{what}: ok, found `{found}` (the project pins {BPF_LINKER_VERSION})");
            return Ok(());
        }
        Err(e) => outln!("{what}: none that works ({e:#}); building it, a minute or two"),
    }
    let features = format!("llvm-{llvm_major}");
    cmd::run(
        Command::new("cargo")
            .env("LLVM_PREFIX", &prefix)
            .args(["install", "bpf-linker", "--version", BPF_LINKER_VERSION])
            // The lock file the release was tested with; 0.13.0 builds with it.
            .arg("--locked")
            // Replaces a bpf-linker that is there but does not work.
            .arg("--force")
            .args(["--no-default-features", "--features", &features]),
    )?;
    bpf_linker_version().context(
        "bpf-linker was installed, but does not run: is cargo's bin directory \
         (`$CARGO_HOME/bin`) on PATH?",
    )?;
    outln!("{what}: installed");
    Ok(())
}

/// The version line of the bpf-linker on PATH, if it runs.
fn bpf_linker_version() -> Result<String> {
    let version = cmd::output(Command::new("bpf-linker").arg("--version"))?;
    Ok(version.trim().to_owned())
}

/// Where bpf-linker's build looks for libLLVM (`LLVM_PREFIX`) and the built
/// linker does at run time. It stays next to the linker, in `$CARGO_HOME`.
fn llvm_prefix() -> Result<PathBuf> {
    let cargo_home = match env::var_os("CARGO_HOME") {
        Some(dir) => PathBuf::from(dir),
        None => {
            PathBuf::from(env::var_os("HOME").context("neither CARGO_HOME nor HOME is set")?).join(".cargo")
        }
    };
    Ok(cargo_home.join("throttle-llvm"))
}

/// Links the nightly's libLLVM into `<prefix>/lib`, both as `libLLVM.so`
/// (what bpf-linker's build links against) and under its own name (what the
/// built linker loads).
fn link_nightly_llvm(prefix: &Path) -> Result<()> {
    let sysroot = cmd::output(Command::new("rustc").args([&format!("+{NIGHTLY}"), "--print", "sysroot"]))?;
    let sysroot_lib = Path::new(sysroot.trim()).join("lib");
    let names = fs::read_dir(&sysroot_lib)
        .with_context(|| format!("listing {}", sysroot_lib.display()))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok());
    let libllvm = libllvm_name(names)
        .with_context(|| format!("no libLLVM.so.* in {}: the nightly ships none?", sysroot_lib.display()))?;
    let target = sysroot_lib.join(&libllvm);
    let lib = prefix.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    for name in ["libLLVM.so", libllvm.as_str()] {
        ensure_symlink(&target, &lib.join(name))?;
    }
    Ok(())
}

/// The versioned libLLVM (`libLLVM.so.22.1-rust-1.97.0-nightly`) among the
/// file names of a sysroot's lib/.
fn libllvm_name(names: impl IntoIterator<Item = String>) -> Option<String> {
    names.into_iter().filter(|name| name.starts_with("libLLVM.so.")).min()
}

fn ensure_symlink(target: &Path, link: &Path) -> Result<()> {
    if fs::read_link(link).is_ok_and(|current| current == target) {
        return Ok(());
    }
    match fs::remove_file(link) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", link.display())),
    }
    symlink(target, link).with_context(|| format!("linking {} to {}", link.display(), target.display()))
}

fn debian_packages() -> Result<()> {
    let missing = missing_packages(DEBIAN_PACKAGES, &dpkg_listing()?);
    if missing.is_empty() {
        outln!("debian packages: ok");
        return Ok(());
    }
    let missing = missing.join(" ");
    if !is_root() {
        bail!(
            "debian packages missing: {missing}\n\
             install them as root with: apt-get update && apt-get install -y {missing}"
        );
    }
    cmd::run(Command::new("apt-get").arg("update"))?;
    cmd::run(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y"])
            .args(missing.split(' ')),
    )?;
    outln!("debian packages: installed {missing}");
    Ok(())
}

/// What `dpkg-query` says of [`DEBIAN_PACKAGES`]. It exits non-zero when dpkg
/// has never heard of one of them; its listing of the others still counts.
fn dpkg_listing() -> Result<String> {
    let mut dpkg_query = Command::new("dpkg-query");
    dpkg_query.args(["-W", "-f", "${Package} ${Status}\\n"]).args(DEBIAN_PACKAGES);
    let output = dpkg_query.output().with_context(|| {
        format!(
            "running `{}` (not a Debian system? then install by hand: {})",
            cmd::display(&dpkg_query),
            DEBIAN_PACKAGES.join(" ")
        )
    })?;
    String::from_utf8(output.stdout).context("output of `dpkg-query -W` is not UTF-8")
}

/// The packages of `wanted` that a `dpkg-query -W -f '${Package} ${Status}\n'`
/// listing does not show as installed.
fn missing_packages<'a>(wanted: &[&'a str], listing: &str) -> Vec<&'a str> {
    wanted
        .iter()
        .copied()
        .filter(|package| {
            !listing.lines().any(|line| {
                line.split_once(' ')
                    .is_some_and(|(name, status)| name == *package && status.trim() == "install ok installed")
            })
        })
        .collect()
}

/// The virtual environment schemathesis is installed in, one per version:
/// `~/.cache/throttle/schemathesis-VERSION`.
pub fn schemathesis_venv() -> Result<PathBuf> {
    let cache = match env::var_os("XDG_CACHE_HOME") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(env::var_os("HOME").context("neither XDG_CACHE_HOME nor HOME is set")?)
            .join(".cache"),
    };
    Ok(cache.join("throttle").join(format!("schemathesis-{SCHEMATHESIS_VERSION}")))
}

/// The schemathesis the privileged tests run.
pub fn schemathesis_bin() -> Result<PathBuf> {
    Ok(schemathesis_venv()?.join("bin").join("schemathesis"))
}

/// schemathesis in its virtual environment, made with Debian's Python (not
/// whatever `python3` comes first on PATH) and pip-installed at the pinned
/// version.
fn schemathesis() -> Result<()> {
    let what = format!("schemathesis {SCHEMATHESIS_VERSION}");
    let bin = schemathesis_bin()?;
    let version = |bin: &Path| cmd::output(Command::new(bin).arg("--version"));
    if version(&bin).is_ok_and(|v| v.contains(SCHEMATHESIS_VERSION)) {
        println!("{what}: ok");
        return Ok(());
    }
    let venv = schemathesis_venv()?;
    println!("{what}: installing into {}", venv.display());
    cmd::run(Command::new("/usr/bin/python3").args(["-m", "venv", "--clear"]).arg(&venv))?;
    cmd::run(
        Command::new(venv.join("bin").join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("schemathesis=={SCHEMATHESIS_VERSION}")),
    )?;
    let found =
        version(&bin).with_context(|| format!("{} was installed, but does not run", bin.display()))?;
    println!("{what}: installed ({})", found.trim());
    Ok(())
}

/// The daemon pins its maps and link under bpffs.
fn bpffs() -> Result<()> {
    let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if bpffs_mounted(&mounts) {
        outln!("bpffs at {BPFFS}: ok");
        return Ok(());
    }
    if !is_root() {
        bail!("bpffs is not mounted at {BPFFS}: mount it as root with `mount -t bpf bpf {BPFFS}`");
    }
    cmd::run(Command::new("mount").args(["-t", "bpf", "bpf", BPFFS]))?;
    outln!("bpffs at {BPFFS}: mounted");
    Ok(())
}

/// Whether a `/proc/mounts` listing has bpffs at [`BPFFS`].
fn bpffs_mounted(mounts: &str) -> bool {
    mounts.lines().any(|line| {
        let mut fields = line.split_whitespace().skip(1);
        fields.next() == Some(BPFFS) && fields.next() == Some("bpf")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_from_rustc_vv() {
        let vv = "rustc 1.97.0-nightly (e50aa6fba 2026-05-19)\n\
                  binary: rustc\n\
                  host: x86_64-unknown-linux-gnu\n\
                  release: 1.97.0-nightly\n\
                  LLVM version: 22.1.4\n";
        assert_eq!(llvm_major(vv), Some(22));
        assert_eq!(llvm_major("rustc 1.97.0-nightly\n"), None);
        assert_eq!(llvm_major("LLVM version: x\n"), None);
    }

    #[test]
    fn libllvm_name_is_the_versioned_library() {
        let names = [
            "librustc_driver-b5a965480ee51f9a.so",
            "libLLVM-22-rust-1.97.0-nightly.so",
            "libLLVM.so.22.1-rust-1.97.0-nightly",
            "rustlib",
        ]
        .map(String::from);
        assert_eq!(libllvm_name(names).as_deref(), Some("libLLVM.so.22.1-rust-1.97.0-nightly"));
        assert_eq!(libllvm_name(["rustlib".to_owned()]), None);
    }

    #[test]
    fn missing_packages_from_dpkg_listing() {
        let listing = "curl install ok installed\n\
                       wrk deinstall ok config-files\n\
                       iproute2 install ok installed\n";
        assert_eq!(missing_packages(&["iproute2", "wrk", "curl", "nftables"], listing), ["wrk", "nftables"]);
    }

    #[test]
    fn bpffs_in_proc_mounts() {
        let mounts = "sysfs /sys sysfs rw,nosuid 0 0\n\
                      bpf /sys/fs/bpf bpf rw,nosuid,nodev,noexec,relatime,mode=700 0 0\n";
        assert!(bpffs_mounted(mounts));
        assert!(!bpffs_mounted("sysfs /sys sysfs rw,nosuid 0 0\n"));
        assert!(!bpffs_mounted("tmpfs /sys/fs/bpf tmpfs rw 0 0\n"));
    }
}
