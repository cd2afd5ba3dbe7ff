//! Capture of dropped packets: while a capture runs (`flags::CAPTURE`, one
//! test on the drop path otherwise), the first bytes of the dropped packets
//! it asks for (by reason, source prefix and class, one in `sample` at
//! random) are copied to the `CAPTURED` ring buffer for the daemon to write
//! as pcap.

use core::{mem::MaybeUninit, ptr::addr_of_mut};

use aya_ebpf::{
    bindings::xdp_md,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns, bpf_xdp_load_bytes},
    programs::XdpContext,
};
use throttle_common::{event, Captured, Family, CAPTURE_SNAP, FAMILY_V4};

use crate::{
    events,
    maps::{CAPTURE, CAPTURED},
    parse, rules,
};

/// Copies the packet to the capture ring if the capture asks for it
/// (`verdict`: the slot of the reason it was dropped for). Takes the
/// context's pointer, not a reference to it: the caller's stack has no
/// room to spare for a copy. A BPF global function (exported, so
/// `BTF_FUNC_GLOBAL`), verified once on its own; it returns 0.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn dropped(md: *mut xdp_md, verdict: u32, config_flags: u32) -> u32 {
    copy_dropped(md, verdict, config_flags);
    0
}

#[inline(always)]
fn copy_dropped(md: *mut xdp_md, verdict: u32, config_flags: u32) {
    let ctx = &XdpContext::new(md);
    let Some(capture) = CAPTURE.get(0) else {
        return;
    };
    if capture.reasons & (1 << (verdict & 31)) == 0 {
        return;
    }
    let mut packet = MaybeUninit::uninit();
    if parse::packet(ctx, &mut packet).is_err() {
        return;
    }
    // SAFETY: a parse that succeeds writes the whole packet.
    let packet = unsafe { packet.assume_init_ref() };
    if capture.family != Family::default() && capture.family != packet.family {
        return;
    }
    let s = &packet.src;
    let m = &capture.mask;
    let a = &capture.addr;
    let inside = if packet.family == FAMILY_V4 {
        s[0] & m[0] == a[0]
    } else {
        s[0] & m[0] == a[0] && s[1] & m[1] == a[1] && s[2] & m[2] == a[2] && s[3] & m[3] == a[3]
    };
    if !inside {
        return;
    }
    if capture.class != 0 && class_of(md, packet, config_flags) != capture.class {
        return;
    }
    // SAFETY: a helper without arguments.
    if capture.sample > 1 && unsafe { bpf_get_prandom_u32() } % capture.sample != 0 {
        return;
    }
    let len = parse::frame_len(ctx) as u32;
    let snap = if capture.snap == 0 || capture.snap > CAPTURE_SNAP { CAPTURE_SNAP } else { capture.snap };
    let caplen = if len < snap { len } else { snap };
    if caplen == 0 || caplen > CAPTURE_SNAP {
        return;
    }
    let Some(mut entry) = CAPTURED.reserve::<Captured>(0) else {
        events::count(event::CAPTURE_LOST);
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points at the reserved entry, a `Captured`'s room; its
    // fields are written in place, the data by the helper, which reads at
    // most `caplen` (1 to CAPTURE_SNAP) bytes of the packet into the room of
    // `data`.
    let loaded = unsafe {
        addr_of_mut!((*e).at_ns).write(bpf_ktime_get_ns());
        addr_of_mut!((*e).len).write(len);
        addr_of_mut!((*e).caplen).write(caplen);
        addr_of_mut!((*e).reason).write(verdict);
        addr_of_mut!((*e).ifindex).write((*ctx.ctx).ingress_ifindex);
        bpf_xdp_load_bytes(ctx.ctx, 0, addr_of_mut!((*e).data).cast(), caplen)
    };
    if loaded != 0 {
        entry.discard(0);
        return;
    }
    entry.submit(0);
    events::count(event::CAPTURED);
}

/// The packet's class as a capture names it (0: none, else the class
/// plus one). A call of its own, so that its registers do not spill over
/// the slots of the capture's pointers, which the verifier of a loader
/// without `CAP_PERFMON` refuses.
#[inline(never)]
fn class_of(md: *mut xdp_md, packet: &parse::Packet, config_flags: u32) -> u32 {
    rules::classify(&XdpContext::new(md), packet, config_flags).map_or(0, |c| c + 1)
}
