//! The support of throttle's privileged tests and benchmarks: the packet
//! tests (tier 2) run the program on frames from [`frames`] through
//! [`xdp`]; the end-to-end tests (tier 3) use the rest.
//!
//! End-to-end tests build a [`VethPair`] (a sender and a receiver network namespace
//! joined by a veth pair), start the real daemon on the receiving end with a
//! [`Daemon`] guard, push real UDP traffic through it with a [`Flood`] and
//! count what arrived with a [`Receiver`]. Every namespace, interface and pin
//! directory is named after the test process and a counter, so tests run in
//! parallel, and every guard removes what it made when it drops.
//!
//! These tests need root. A test starts with [`require_root!`], which skips it
//! loudly when not root, or fails it when `THROTTLE_REQUIRE_PRIVILEGED=1` (CI).

pub mod chain;
pub mod daemon;
pub mod ethtool;
pub mod frames;
pub mod fuzz;
mod http;
pub mod measure;
pub mod netns;
pub mod raw;
pub mod redis;
pub mod service;
pub mod traffic;
pub mod veth;
pub mod xdp;

use std::{
    io::Write as _,
    path::Path,
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

pub use daemon::{start_daemon, Daemon, DaemonBuilder, DAEMON_CAPS};
pub use measure::Checks;
pub use netns::Netns;
pub use traffic::{flood_once, Arrival, Arrivals, Flood, Flow, FlowReport, Receiver};
pub use veth::{VethPair, VethPairBuilder};

/// Set to `1` where privileged tests must run (CI): without root they fail
/// instead of skipping.
pub const REQUIRE_PRIVILEGED_ENV: &str = "THROTTLE_REQUIRE_PRIVILEGED";

/// Whether the calling test may run: true as root. Otherwise it panics when
/// [`REQUIRE_PRIVILEGED_ENV`] is `1`, and prints a loud skip notice and
/// returns false when it is not.
#[must_use]
pub fn privileged(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        return true;
    }
    assert!(
        std::env::var(REQUIRE_PRIVILEGED_ENV).as_deref() != Ok("1"),
        "{test} needs root (euid is {euid}) and {REQUIRE_PRIVILEGED_ENV}=1 forbids skipping it: \
         run the privileged tests as root, through `cargo xtask test`"
    );
    report(&format!(
        "\n==================================================================\n\
         SKIPPED {test}: needs root (euid is {euid}).\n\
         Run it as root, e.g. through `cargo xtask test`.\n\
         =================================================================="
    ));
    false
}

/// Writes a line straight to the process's stderr. libtest captures
/// `eprintln!` of passing tests; skip notices and measured figures must show
/// in every run log.
pub fn report(line: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{line}");
}

/// Returns from the calling test unless it may run (see [`privileged`]).
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::privileged(&$crate::current_test_name()) {
            return;
        }
    };
}

/// The name of the running test: libtest names each test's thread after it.
#[must_use]
pub fn current_test_name() -> String {
    thread::current().name().unwrap_or("this privileged test").to_owned()
}

/// Removes the directory `dir` and everything in it, from a guard's drop: a
/// warning, not a panic, when that fails, and nothing when it is gone already.
pub fn remove_dir(dir: &Path) {
    if let Err(err) = std::fs::remove_dir_all(dir) {
        if err.kind() != std::io::ErrorKind::NotFound {
            report(&format!("warning: removing {}: {err}", dir.display()));
        }
    }
}

static NEXT_ID: AtomicU32 = AtomicU32::new(0);

/// A short name part unique among the test processes running on this
/// machine: `<pid>-<counter>` (at most 7 + 1 + 10 characters, usually 8).
#[must_use]
pub fn unique_id() -> String {
    format!("{}-{}", std::process::id(), NEXT_ID.fetch_add(1, Ordering::Relaxed))
}

/// Polls `probe` every `interval` until it returns `Some`, for at most
/// `timeout`; `None` when the time ran out. `probe` runs at least once, and
/// once more after the deadline, so a condition met at the last moment counts.
pub fn poll_until<T>(
    timeout: Duration,
    interval: Duration,
    mut probe: impl FnMut() -> Option<T>,
) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe() {
            return Some(value);
        }
        let now = Instant::now();
        if now >= deadline {
            return probe();
        }
        thread::sleep(interval.min(deadline - now));
    }
}

/// Nanoseconds on `CLOCK_MONOTONIC`: the clock of `bpf_ktime_get_ns`, shared
/// by every thread and namespace of this machine. Send instants are stamped
/// with it, so they can be compared with instants taken anywhere in a test.
#[must_use]
pub fn mono_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC)
}

/// Nanoseconds on `clock` (a clock that always exists, such as
/// `CLOCK_MONOTONIC` or `CLOCK_THREAD_CPUTIME_ID`).
fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec.
    let rc = unsafe { libc::clock_gettime(clock, &raw mut ts) };
    assert_eq!(rc, 0, "clock_gettime({clock}) failed");
    u64::try_from(ts.tv_sec).expect("seconds are positive") * 1_000_000_000
        + u64::try_from(ts.tv_nsec).expect("nanoseconds are positive")
}

/// Seconds from monotonic instant `from` to `to` (negative if `to` is earlier).
#[must_use]
#[expect(clippy::cast_precision_loss, reason = "nanosecond spans of a test fit in f64's 52-bit mantissa")]
pub fn secs_between(from: u64, to: u64) -> f64 {
    (to as f64 - from as f64) / 1e9
}

/// Everything under `dir`, relative to it, sorted; empty when it is gone
/// (a pin directory's maps and links, say).
#[must_use]
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else { return };
        for entry in entries.map(|e| e.expect("a directory entry")) {
            let path = entry.path();
            out.push(path.strip_prefix(root).expect("under the root").display().to_string());
            if entry.file_type().expect("a file type").is_dir() {
                walk(root, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
