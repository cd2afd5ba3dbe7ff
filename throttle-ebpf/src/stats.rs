//! Per-CPU verdict counters, per interface.

use aya_ebpf::programs::XdpContext;
use throttle_common::{flags, reason, Config, Reason, IFACE_SLOTS};

use crate::maps::{COUNTERS, IFACE_SLOT};

/// The first counter of the interface the packet arrived on.
#[inline(always)]
pub fn base(ctx: &XdpContext) -> u32 {
    #[expect(clippy::cast_possible_truncation, reason = "read from a u32 field")]
    let ifindex = ctx.ingress_ifindex() as u32;
    let slot = IFACE_SLOT.get(ifindex).copied().unwrap_or(0);
    if slot < IFACE_SLOTS {
        slot * reason::COUNT
    } else {
        0
    }
}

/// [`base`], from the configuration when the program is attached to one
/// interface: no lookup then.
#[inline(always)]
pub fn base_of(ctx: &XdpContext, config: &Config) -> u32 {
    // Two plain loads in either order; this one compiles to fewer
    // instructions on every path of the program (seen in its disassembly).
    if config.iface_slot < IFACE_SLOTS && config.flags & flags::ONE_IFACE != 0 {
        return config.iface_slot * reason::COUNT;
    }
    base(ctx)
}

/// Counts one packet under `reason`, from the interface's `base`. A per-CPU
/// slot needs no atomic.
#[inline(always)]
pub fn count(base: u32, reason: Reason) {
    if let Some(slot) = COUNTERS.get_ptr_mut(base + reason.slot()) {
        // SAFETY: the pointer comes from a successful lookup in this CPU's
        // slice of the array, which nothing else writes while we run.
        unsafe { *slot += 1 };
    }
}
