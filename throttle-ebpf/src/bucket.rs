//! Per-source GCRA buckets, updated with compare-and-swap so that one
//! source's limit holds however many CPUs see its packets.

use core::{
    intrinsics::{atomic_cxchg, atomic_xadd, AtomicOrdering},
    ptr::addr_of_mut,
};

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    programs::XdpContext,
};
use aya_log_ebpf::error;
use throttle_common::{
    admit, ceiling, flags, gcra::ticks_from_ns, reason, Bucket, BucketKey, Config, Limit, CAS_ATTEMPTS,
    CLOCK_COARSE,
};

use crate::maps::{BUCKETS, NEW_SOURCES};

const EEXIST: i32 = 17;

/// Reads a word another CPU may be writing. A relaxed atomic load does not
/// lower on the BPF target; a volatile load of an aligned u64 is one
/// instruction, which is as atomic as the hardware's.
#[inline(always)]
unsafe fn load(p: *const u64) -> u64 {
    // SAFETY: the caller passes a pointer into a map value.
    unsafe { p.read_volatile() }
}

/// `BPF_CMPXCHG`: whether `*p` was `old` and is now `new`.
#[inline(always)]
unsafe fn compare_and_swap(p: *mut u64, old: u64, new: u64) -> bool {
    // SAFETY: the caller passes a pointer into a map value.
    unsafe { atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(p, old, new).1 }
}

/// `BPF_ADD` with no fetch: a locked add.
#[inline(always)]
unsafe fn add(p: *mut u64, n: u64) {
    // SAFETY: the caller passes a pointer into a map value.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(p, n) };
}

/// Meters `cost` units of the source `key` against `limit`.
#[inline(always)]
pub fn meter(ctx: &XdpContext, key: &BucketKey, limit: &Limit, cost: u64, config: &Config) -> u32 {
    // SAFETY: helpers without arguments. Both read CLOCK_MONOTONIC, the
    // coarse one as of the last tick (`Limit::with_clock`).
    let ns = unsafe {
        if limit.clock == CLOCK_COARSE {
            bpf_ktime_get_coarse_ns()
        } else {
            bpf_ktime_get_ns()
        }
    };
    let now = ticks_from_ns(ns);
    if let Some(bucket) = BUCKETS.get_ptr_mut(key) {
        // SAFETY: a pointer from a successful lookup.
        return unsafe { charge(bucket, now, cost, limit) };
    }
    first_seen(ctx, key, limit, cost, now, config)
}

/// A tracked source: one GCRA step on its bucket.
#[inline(always)]
unsafe fn charge(bucket: *mut Bucket, now: u64, cost: u64, limit: &Limit) -> u32 {
    // SAFETY (all blocks below): `bucket` points into a live map value.
    let tat = unsafe { addr_of_mut!((*bucket).tat) };
    for _ in 0..CAS_ATTEMPTS {
        let seen = unsafe { load(tat) };
        let Some(next) = admit(seen, now, cost, limit) else {
            if let Some(top) = ceiling(seen, now, limit) {
                // The limit shrank under this source: keep it exactly empty
                // under the new one. Losing this race is harmless.
                unsafe { compare_and_swap(tat, seen, top) };
            }
            unsafe { add(addr_of_mut!((*bucket).dropped), 1) };
            return reason::OVER_LIMIT;
        };
        if unsafe { compare_and_swap(tat, seen, next) } {
            unsafe { add(addr_of_mut!((*bucket).passed), 1) };
            return reason::PASSED;
        }
    }
    unsafe { add(addr_of_mut!((*bucket).dropped), 1) };
    reason::CONTENDED
}

/// A source not tracked yet: it draws on the first-seen budget, then gets a
/// bucket with a full burst less this packet.
#[inline(never)]
fn first_seen(ctx: &XdpContext, key: &BucketKey, limit: &Limit, cost: u64, now: u64, config: &Config) -> u32 {
    if config.flags & flags::NEW_SOURCE_LIMIT != 0 && !take_new_source(now, &config.new_source_limit) {
        // Not tracked: a flood of spoofed sources neither passes nor pushes
        // real sources out of the bucket map.
        return reason::NEW_SOURCE_LIMIT;
    }
    let (fresh, verdict) = match admit(0, now, cost, limit) {
        Some(tat) => (Bucket { tat, passed: 1, dropped: 0 }, reason::NEW_SOURCE),
        // Larger than the whole burst (a byte limit below the frame size).
        None => (Bucket { tat: 0, passed: 0, dropped: 1 }, reason::OVER_LIMIT),
    };
    match BUCKETS.insert(key, fresh, u64::from(BPF_NOEXIST)) {
        Ok(()) => verdict,
        // Another CPU inserted it first: meter against that bucket.
        Err(err) if err == -EEXIST => match BUCKETS.get_ptr_mut(key) {
            // SAFETY: a pointer from a successful lookup.
            Some(bucket) => unsafe { charge(bucket, now, cost, limit) },
            None => reason::ERROR,
        },
        Err(err) => {
            error!(ctx, "bucket insert failed: {}", err);
            reason::ERROR
        }
    }
}

/// Takes one first-seen admission from the global budget.
#[inline(always)]
fn take_new_source(now: u64, limit: &Limit) -> bool {
    let Some(state) = NEW_SOURCES.get_ptr_mut(0) else {
        return true;
    };
    for _ in 0..CAS_ATTEMPTS {
        // SAFETY: `state` points into the array's only value.
        let seen = unsafe { load(state) };
        let Some(next) = admit(seen, now, 1, limit) else {
            if let Some(top) = ceiling(seen, now, limit) {
                // SAFETY: as above.
                unsafe { compare_and_swap(state, seen, top) };
            }
            return false;
        };
        // SAFETY: as above.
        if unsafe { compare_and_swap(state, seen, next) } {
            return true;
        }
    }
    false
}

/// The bucket key of a source: its address masked to the aggregation prefix.
#[inline(always)]
pub fn key(family: u32, src: &[u32; 4], rule: u32, config: &Config) -> BucketKey {
    let addr = if family == throttle_common::FAMILY_V4 {
        [src[0] & config.ipv4_mask, 0, 0, 0]
    } else {
        let m = &config.ipv6_mask;
        [src[0] & m[0], src[1] & m[1], src[2] & m[2], src[3] & m[3]]
    };
    BucketKey { addr, rule, family }
}
