//! Reference XDP programs for the benchmarks (`cargo xtask bench`), loaded
//! beside throttle's program in the same run:
//!
//! - `baseline_pass` counts every packet in a per-CPU slot and passes it:
//!   the least a program that looks at every packet can cost;
//! - `baseline_drop` drops every packet and does nothing else: the fastest
//!   way to drop a flood.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};

/// Packets seen by `baseline_pass`, per CPU, in slot 0.
#[map(name = "BASELINE_COUNT")]
static BASELINE_COUNT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn baseline_pass(_ctx: XdpContext) -> u32 {
    if let Some(slot) = BASELINE_COUNT.get_ptr_mut(0) {
        // SAFETY: the pointer comes from a successful lookup in this CPU's
        // slice of the array, which nothing else writes while we run.
        unsafe { *slot += 1 };
    }
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
