//! throttle's XDP program: meters every packet against a per-source token
//! bucket and drops what is over budget.
//!
//! Per packet: L2 (up to two VLAN tags), L3 (IPv4 with options, IPv6 with a
//! bounded walk over extension headers), the class of its protocol and
//! destination port (in none: passed unless a deny rule matches), the rules
//! (longest prefix of the source: allow, deny or limit), the source's
//! buckets (one per limit of its class), the verdict; what passes goes on
//! into the program that follows, when one is chained. Every verdict
//! reason has a per-CPU counter for each interface. The program fails open:
//! whatever a packet contains, it returns `XDP_PASS` or `XDP_DROP`, never
//! `XDP_ABORTED`.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![feature(asm_experimental_arch)]
#![expect(internal_features, reason = "atomic_cxchg is the one way to a BPF cmpxchg")]
#![allow(clippy::inline_always, reason = "BPF-to-BPF calls cost on every packet and weigh on the verifier")]

mod bucket;
mod capture;
mod events;
mod maps;
mod parse;
mod rules;
mod stats;
mod table;
mod word;

use core::mem::MaybeUninit;

use aya_ebpf::{
    bindings::{
        xdp_action::{XDP_DROP, XDP_PASS},
        xdp_md,
    },
    macros::xdp,
    programs::XdpContext,
};
use throttle_common::{
    class_flags, class_owner, flags, reason, ClassConfig, Config, Limit, Reason, FAMILY_V4, MAX_CLASS_LIMITS,
    MAX_TIERS, TIER_SLOT, TIER_V4, TIER_V6, UNIT_BYTES,
};

use crate::{
    bucket::{Ban, Charge},
    maps::{CHAIN, CLASSES, CONFIG},
    rules::Selected,
    stats::count,
};

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
    // Only the flags and the counters' slot live on past the judgement and
    // the capture call: the program's stack is near its bound.
    let config_flags = config.flags;
    if !reason::drops(verdict) {
        return pass(&ctx, config_flags);
    }
    if config_flags & flags::CAPTURE != 0 {
        capture::dropped(ctx.ctx, verdict.slot(), config_flags);
    }
    if config_flags & flags::DRY_RUN != 0 {
        count(counters, reason::DRY_RUN_PASS);
        return pass(&ctx, config_flags);
    }
    XDP_DROP
}

/// Passes a packet: into the program that follows when there is one
/// ([`flags::CHAIN`]), to the stack otherwise. The tail call stays in the
/// entry function: the verifier bounds the stack of the frames under a
/// tail call made from a called function to 256 bytes, which this
/// program's exceed. With a constant slot, the JIT makes it a direct jump.
#[inline(always)]
fn pass(ctx: &XdpContext, config_flags: u32) -> u32 {
    if config_flags & flags::CHAIN != 0 {
        // SAFETY: on success the program that follows returns the verdict
        // in this program's place; nothing here is left to run or release.
        // An empty slot returns here.
        unsafe { CHAIN.tail_call(ctx, 0) };
    }
    XDP_PASS
}

/// The verdict reason for one packet.
#[inline(always)]
fn judge(ctx: &XdpContext, config: &Config) -> Reason {
    let mut packet = MaybeUninit::uninit();
    if let Err(verdict) = parse::packet(ctx, &mut packet) {
        return verdict;
    }
    // SAFETY: a parse that succeeds writes the whole packet.
    let packet = unsafe { packet.assume_init_ref() };
    // The class first: it is an array lookup, the rules a trie walk, and
    // out of every class only a deny rule changes the verdict.
    let Some(class_id) = rules::classify(ctx, packet, config.flags) else {
        return match rules::denied(packet, config) {
            Some(id) => {
                rules::decided(id, core::ptr::from_ref(packet));
                reason::DENY_RULE
            }
            None => reason::OUT_OF_SCOPE,
        };
    };
    let Some(class) = CLASSES.get(class_id) else {
        return reason::ERROR;
    };
    // One bucket step here for every metered packet: a rule's limit, or
    // the first of its class's; the class's other limits and its tiers in
    // a call of their own, for the classes that have them.
    let (limit, owner, ban, by_rule) = match rules::select(packet, config) {
        Selected::Allow(id) => {
            rules::decided(id, core::ptr::null());
            return reason::ALLOW_RULE;
        }
        Selected::Deny(id) => {
            rules::decided(id, core::ptr::from_ref(packet));
            return reason::DENY_RULE;
        }
        Selected::Rule(limit, rule) => (limit, rule, Ban::NONE, true),
        Selected::Class => (
            &class.limits[0],
            class_owner(class_id, 0),
            Ban { after: class.ban_after, for_ticks: class.ban_for },
            false,
        ),
    };
    let key = bucket::key(packet.family, &packet.src, owner, class);
    let newcomer = newcomer_share(by_rule, class, config);
    let verdict =
        bucket::meter(&key, limit, config, &Charge { cost: cost(limit, ctx), budget: true, newcomer, ban });
    if reason::drops(verdict) || by_rule || (class.limit_count < 2 && class.tier_count == 0) {
        return verdict;
    }
    let rest =
        meter_rest(ctx.ctx, core::ptr::from_ref(packet), class, &Rest { ban, class_id, _pad: 0 }, config);
    // The global function returns a bare scalar (the verifier knows
    // nothing of it); back to the reason it names, one constant on each
    // path. Whatever does not drop leaves the first bucket's verdict.
    match rest {
        r if r == reason::OVER_LIMIT.slot() => reason::OVER_LIMIT,
        r if r == reason::NEW_SOURCE_LIMIT.slot() => reason::NEW_SOURCE_LIMIT,
        r if r == reason::CONTENDED.slot() => reason::CONTENDED,
        r if r == reason::BANNED.slot() => reason::BANNED,
        _ => verdict,
    }
}

/// The part of its limit a newcomer gets under a limit rule (`by_rule`) or
/// a limit of `class`: the controller moves every limit rule and the
/// adaptive classes.
#[inline(always)]
fn newcomer_share(by_rule: bool, class: &ClassConfig, config: &Config) -> u32 {
    if by_rule || class.flags & class_flags::ADAPTIVE != 0 {
        config.newcomer_share
    } else {
        0
    }
}

/// The cost of the packet under `limit`: its frame's length for a limit in
/// bytes (a helper call, made only then), else 1.
#[inline(always)]
fn cost(limit: &Limit, ctx: &XdpContext) -> u64 {
    if limit.unit == UNIT_BYTES {
        parse::frame_len(ctx)
    } else {
        1
    }
}

/// What [`meter_rest`] needs besides the packet and its class (a BPF call
/// takes five arguments at most). Without implicit padding: the verifier
/// of a loader without `CAP_PERFMON` wants every byte of what is passed to
/// a global function written.
#[repr(C)]
struct Rest {
    ban: Ban,
    class_id: u32,
    _pad: u32,
}

/// Meters the packet against its class's limits after the first, in turn,
/// then against each of its prefix tiers; the first that refuses it drops
/// it (those before it have counted it, which only makes them stricter,
/// never looser). Only the first bucket draws on the first-seen budget.
///
/// A BPF global function (exported, so `BTF_FUNC_GLOBAL`): the verifier
/// checks it once, on its own, instead of once per path that calls it. It
/// sees each pointer argument as memory of its type's size that may be
/// NULL, whose contents it knows nothing of; it returns a scalar (the
/// reason's slot, [`reason::PASSED`]'s when an argument is NULL).
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn meter_rest(
    md: *mut xdp_md,
    packet: *const parse::Packet,
    class: *const ClassConfig,
    rest: *const Rest,
    config: *const Config,
) -> u32 {
    // SAFETY: each pointer is NULL or points at a live value of its type:
    // the caller passes references.
    let pointees = unsafe { (packet.as_ref(), class.as_ref(), rest.as_ref(), config.as_ref()) };
    let (Some(packet), Some(class), Some(rest), Some(config)) = pointees else {
        return reason::PASSED.slot();
    };
    meter_rest_of(&XdpContext::new(md), packet, class, rest, config).slot()
}

#[inline(always)]
fn meter_rest_of(
    ctx: &XdpContext,
    packet: &parse::Packet,
    class: &ClassConfig,
    rest: &Rest,
    config: &Config,
) -> Reason {
    let Rest { ban, class_id, .. } = *rest;
    // One key and one charge, rewritten for each bucket: the stack of this
    // call is part of the deepest chain.
    let newcomer = newcomer_share(false, class, config);
    let mut charge = Charge { cost: 0, budget: false, newcomer, ban };
    let mut key;
    for slot in 1..MAX_CLASS_LIMITS {
        if slot >= class.limit_count {
            break;
        }
        let limit = &class.limits[slot as usize];
        key = bucket::key(packet.family, &packet.src, class_owner(class_id, slot), class);
        charge.cost = cost(limit, ctx);
        let next = bucket::meter(&key, limit, config, &charge);
        if reason::drops(next) {
            return next;
        }
    }
    // No ban for the tiers.
    charge.ban.clear();
    let family = if packet.family == FAMILY_V4 { TIER_V4 } else { TIER_V6 };
    for index in 0..MAX_TIERS {
        if index >= class.tier_count {
            break;
        }
        let tier = &class.tiers[index as usize];
        if tier.families & family == 0 {
            continue;
        }
        let owner = class_owner(class_id, TIER_SLOT + index);
        key = bucket::masked_key(packet.family, &packet.src, owner, tier.ipv4_mask, &tier.ipv6_mask);
        charge.cost = cost(&tier.limit, ctx);
        let next = bucket::meter(&key, &tier.limit, config, &charge);
        if reason::drops(next) {
            return next;
        }
    }
    reason::PASSED
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
