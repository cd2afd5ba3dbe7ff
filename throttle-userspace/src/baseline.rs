//! The benchmarks' reference XDP programs (`throttle-ebpf/src/bin/baseline.rs`),
//! built for the BPF target by `build.rs`. Not part of the daemon.

/// The object holding [`PASS_PROGRAM`] and [`DROP_PROGRAM`].
pub static BASELINE_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/baseline"));

/// Counts every packet in a per-CPU slot ([`COUNT_MAP`], slot 0) and passes it.
pub const PASS_PROGRAM: &str = "baseline_pass";
/// Drops every packet.
pub const DROP_PROGRAM: &str = "baseline_drop";
/// The per-CPU counter of [`PASS_PROGRAM`].
pub const COUNT_MAP: &str = "BASELINE_COUNT";
