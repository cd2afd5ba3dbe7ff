//! The benchmarks' XDP programs: the references (`throttle-ebpf/src/bin/baseline.rs`)
//! and the live-frames generator (`throttle-ebpf/src/bin/generator.rs`),
//! built for the BPF target by this crate's `build.rs` (`bench` feature).

/// The object holding [`PASS_PROGRAM`], [`DROP_PROGRAM`], [`CLOCK_PROGRAM`],
/// [`LRU_PROGRAM`] and [`ATOMICS_PROGRAM`].
pub static BASELINE_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/baseline"));

/// Counts every packet in a per-CPU slot ([`COUNT_MAP`], slot 0) and passes it.
pub const PASS_PROGRAM: &str = "baseline_pass";
/// Drops every packet.
pub const DROP_PROGRAM: &str = "baseline_drop";
/// Counts like [`PASS_PROGRAM`] and reads the clock (`bpf_ktime_get_ns`).
pub const CLOCK_PROGRAM: &str = "ref_clock";
/// Counts like [`PASS_PROGRAM`] and reads the coarse clock
/// (`bpf_ktime_get_coarse_ns`).
pub const COARSE_CLOCK_PROGRAM: &str = "ref_coarse_clock";
/// Counts like [`PASS_PROGRAM`] and looks up an 8-byte key in an LRU hash map.
pub const LRU8_PROGRAM: &str = "ref_lru8";
/// Counts like [`PASS_PROGRAM`] and looks up a 24-byte key in an LRU hash map.
pub const LRU_PROGRAM: &str = "ref_lru";
/// Counts like [`PASS_PROGRAM`], and does a compare-and-swap and a locked add
/// on a map value.
pub const ATOMICS_PROGRAM: &str = "ref_atomics";
/// The per-CPU counter of [`PASS_PROGRAM`].
pub const COUNT_MAP: &str = "BASELINE_COUNT";

/// The object of the live-frames generator (`throttle-ebpf/src/bin/generator.rs`).
pub static GENERATOR_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/generator"));
/// Writes a source, a port and TCP flags into each frame and returns the
/// verdict it is told to.
pub const GENERATOR_PROGRAM: &str = "generator";
/// The generator's parameters: one `[u32; 8]`.
pub const GENERATOR_PARAMS: &str = "GEN_PARAMS";
/// Frames generated, per CPU, slot 0.
pub const GENERATOR_SENT: &str = "GEN_SENT";
