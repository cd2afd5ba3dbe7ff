//! throttle's XDP program: meters every packet against a per-source token
//! bucket and drops what is over budget.
//!
//! Per packet: L2 (up to two VLAN tags), L3 (IPv4 with options, IPv6 with a
//! bounded walk over extension headers), the scope (out of scope: passed
//! unless a deny rule matches), the rules (longest prefix of the source:
//! allow, deny or limit), the source's bucket, the verdict. Every verdict
//! reason has a per-CPU counter for each interface. The program fails open:
//! whatever a packet contains, it returns `XDP_PASS` or `XDP_DROP`, never
//! `XDP_ABORTED`.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "atomic_cxchg is the one way to a BPF cmpxchg")]
#![allow(clippy::inline_always, reason = "BPF-to-BPF calls cost on every packet and weigh on the verifier")]

mod bucket;
mod maps;
mod parse;
mod rules;
mod stats;
mod word;

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS},
    macros::xdp,
    programs::XdpContext,
};
use throttle_common::{flags, reason, Config, Reason, UNIT_BYTES};

use crate::{maps::CONFIG, rules::Selected, stats::count};

#[xdp]
#[expect(clippy::needless_pass_by_value, reason = "the #[xdp] macro's signature")]
pub fn throttle(ctx: XdpContext) -> u32 {
    let Some(config) = CONFIG.get(0) else {
        count(stats::base(&ctx), reason::ERROR);
        return XDP_PASS;
    };
    let counters = stats::base_of(&ctx, config);
    let verdict = judge(&ctx, config);
    count(counters, verdict);
    if !reason::drops(verdict) {
        return XDP_PASS;
    }
    if config.flags & flags::DRY_RUN != 0 {
        count(counters, reason::DRY_RUN_PASS);
        return XDP_PASS;
    }
    XDP_DROP
}

/// The verdict reason for one packet.
#[inline(always)]
fn judge(ctx: &XdpContext, config: &Config) -> Reason {
    let packet = match parse::packet(ctx) {
        Ok(packet) => packet,
        Err(verdict) => return verdict,
    };
    // The scope first: it is an array lookup, the rules a trie walk, and
    // out of scope only a deny rule changes the verdict.
    if config.flags & flags::SCOPE != 0 && !rules::in_scope(ctx, &packet, config.flags) {
        return if rules::denied(&packet, config) { reason::DENY_RULE } else { reason::OUT_OF_SCOPE };
    }
    let (limit, rule) = match rules::select(&packet, config) {
        Selected::Allow => return reason::ALLOW_RULE,
        Selected::Deny => return reason::DENY_RULE,
        Selected::Limit(limit, rule) => (limit, rule),
    };
    let key = bucket::key(packet.family, &packet.src, rule, config);
    let cost = if limit.unit == UNIT_BYTES { (ctx.data_end() - ctx.data()) as u64 } else { 1 };
    bucket::meter(ctx, &key, limit, cost, config)
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The object's license: the crate's. A program whose license the kernel
/// does not count as GPL-compatible may call every helper that is not
/// `gpl_only`, and each one this program calls is such: map lookup and
/// update, `bpf_ktime_get_ns` and `bpf_ktime_get_coarse_ns`
/// (<https://github.com/torvalds/linux/blob/v6.18/kernel/bpf/helpers.c>), and
/// the ring buffer's reserve, submit and discard behind aya-log
/// (<https://github.com/torvalds/linux/blob/v6.18/kernel/bpf/ringbuf.c>).
// SAFETY: the object's only `license` section and only symbol of this name,
// read by the loader and by nothing else.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 18] = *b"MIT OR Apache-2.0\0";
