//! Reference XDP programs for the benchmarks (`cargo xtask bench`), loaded
//! beside throttle's program in the same run:
//!
//! - `baseline_pass` counts every packet in a per-CPU slot and passes it:
//!   the least a program that looks at every packet can cost;
//! - `baseline_drop` drops every packet and does nothing else: the fastest
//!   way to drop a flood;
//! - `ref_clock` and `ref_lru` count and pass like `baseline_pass`, and read
//!   the clock, or look up (and bump) a 24-byte key in an LRU hash map: the
//!   two costs every metered packet of throttle pays, measured alone.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{LruHashMap, PerCpuArray},
    programs::XdpContext,
};

/// Packets seen by `baseline_pass`, per CPU, in slot 0.
#[map(name = "BASELINE_COUNT")]
static BASELINE_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// A bucket map's shape: 24-byte keys and values, as throttle's.
#[map(name = "REF_LRU")]
static REF_LRU: LruHashMap<[u32; 6], [u64; 3]> = LruHashMap::with_max_entries(1_024, 0);

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

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
