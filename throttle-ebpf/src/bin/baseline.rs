//! Reference XDP programs for the benchmarks (`cargo xtask bench`), loaded
//! beside throttle's program in the same run:
//!
//! - `baseline_pass` counts every packet in a per-CPU slot and passes it:
//!   the least a program that looks at every packet can cost;
//! - `baseline_drop` drops every packet and does nothing else: the fastest
//!   way to drop a flood;
//! - `ref_clock`, `ref_lru` and `ref_atomics` count and pass like
//!   `baseline_pass`, and read the clock, or look up (and bump) a 24-byte key
//!   in an LRU hash map, or do a compare-and-swap and a locked add on a map
//!   value: the steps every metered packet of throttle pays, measured alone.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "atomic_cxchg is the one way to a BPF cmpxchg")]

use core::intrinsics::{atomic_cxchg, atomic_xadd, AtomicOrdering};

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    macros::{map, xdp},
    maps::{Array, LruHashMap, PerCpuArray},
    programs::XdpContext,
};

/// Packets seen by `baseline_pass`, per CPU, in slot 0.
#[map(name = "BASELINE_COUNT")]
static BASELINE_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// A bucket map's shape: 24-byte keys and values, as throttle's.
#[map(name = "REF_LRU")]
static REF_LRU: LruHashMap<[u32; 6], [u64; 3]> = LruHashMap::with_max_entries(1_024, 0);

/// An IPv4 bucket map's shape: 8-byte keys (address, rule), 24-byte values.
#[map(name = "REF_LRU8")]
static REF_LRU8: LruHashMap<[u32; 2], [u64; 3]> = LruHashMap::with_max_entries(1_024, 0);

/// A bucket's shape: a word to compare-and-swap and counters.
#[map(name = "REF_WORDS")]
static REF_WORDS: Array<[u64; 3]> = Array::with_max_entries(1, 0);

/// Adds `n` to this CPU's slot.
#[expect(clippy::inline_always, reason = "a BPF-to-BPF call would add to what is measured")]
#[inline(always)]
fn count(n: u64) {
    if let Some(slot) = BASELINE_COUNT.get_ptr_mut(0) {
        // SAFETY: the pointer comes from a successful lookup in this CPU's
        // slice of the array, which nothing else writes while we run.
        unsafe { *slot += n };
    }
}

#[xdp]
pub fn baseline_pass(_ctx: XdpContext) -> u32 {
    count(1);
    XDP_PASS
}

#[xdp]
pub fn ref_clock(_ctx: XdpContext) -> u32 {
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // Counts 1 whatever the time; the call stays.
    count(1 + (now >> 63));
    XDP_PASS
}

#[xdp]
pub fn ref_coarse_clock(_ctx: XdpContext) -> u32 {
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    count(1 + (now >> 63));
    XDP_PASS
}

#[xdp]
pub fn ref_lru8(_ctx: XdpContext) -> u32 {
    let key = [10, 0];
    match REF_LRU8.get_ptr_mut(key) {
        // SAFETY: a pointer from a successful lookup.
        Some(value) => unsafe { (*value)[1] += 1 },
        None => {
            let _ = REF_LRU8.insert(key, [0, 1, 0], 0);
        }
    }
    count(1);
    XDP_PASS
}

#[xdp]
pub fn ref_lru(_ctx: XdpContext) -> u32 {
    let key = [10, 0, 0, 0, 4, 0];
    match REF_LRU.get_ptr_mut(key) {
        // SAFETY: a pointer from a successful lookup.
        Some(value) => unsafe { (*value)[1] += 1 },
        None => {
            let _ = REF_LRU.insert(key, [0, 1, 0], 0);
        }
    }
    count(1);
    XDP_PASS
}

#[xdp]
pub fn baseline_drop(_ctx: XdpContext) -> u32 {
    XDP_DROP
}

#[xdp]
pub fn ref_atomics(_ctx: XdpContext) -> u32 {
    if let Some(words) = REF_WORDS.get_ptr_mut(0) {
        // SAFETY: a pointer into the array's only value, from a successful
        // lookup; BPF_CMPXCHG and BPF_ADD on aligned u64 words of it.
        unsafe {
            let word = words.cast::<u64>();
            let seen = word.read_volatile();
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(word, seen, seen + 1);
            atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(word.add(1), 1);
        }
    }
    count(1);
    XDP_PASS
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The object's license: the crate's. These programs call no `gpl_only`
/// helper (see throttle's `LICENSE`).
// SAFETY: the object's only `license` section and only symbol of this name,
// read by the loader and by nothing else.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 18] = *b"MIT OR Apache-2.0\0";
