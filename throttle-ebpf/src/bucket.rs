//! Per-source GCRA buckets, updated with compare-and-swap so that one
//! source's limit holds however many CPUs see its packets.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    programs::XdpContext,
};
use aya_log_ebpf::error;
use throttle_common::{
    admit, ceiling, flags, gcra::ticks_from_ns, reason, Bucket, BucketKey, ClassConfig, Config, Family,
    Limit, Reason, CAS_ATTEMPTS, CLOCK_COARSE, FAMILY_V4,
};

use crate::{
    maps::BUCKETS,
    word::{self, BucketWords, Word},
};

const EEXIST: i32 = 17;

/// Meters `cost` units of the source `key` against `limit`; a bucket made
/// for it draws on the first-seen budget when `budget`.
#[inline(always)]
pub fn meter(
    ctx: &XdpContext,
    key: &BucketKey,
    limit: &Limit,
    cost: u64,
    config: &Config,
    budget: bool,
) -> Reason {
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
    if let Some(bucket) = word::bucket(key) {
        return charge(bucket, now, cost, limit);
    }
    let budget = (budget && config.flags & flags::NEW_SOURCE_LIMIT != 0).then_some(&config.new_source_limit);
    first_seen(ctx, key, limit, &Arrival { now, cost }, budget)
}

/// When a packet came and what it costs (one argument of a BPF call, which
/// takes five at most).
struct Arrival {
    now: u64,
    cost: u64,
}

/// What one GCRA step on a shared TAT came to.
enum Step {
    /// The TAT moved on: the units fit.
    Admitted,
    /// They do not fit; the TAT stays (or comes down to the ceiling).
    Over,
    /// Other CPUs changed the TAT at every one of [`CAS_ATTEMPTS`] tries.
    Contended,
}

/// One GCRA step on `tat`, another CPU's update between read and write
/// retried up to [`CAS_ATTEMPTS`] times.
#[inline(always)]
fn step(tat: Word, now: u64, cost: u64, limit: &Limit) -> Step {
    for _ in 0..CAS_ATTEMPTS {
        let seen = tat.load();
        let Some(next) = admit(seen, now, cost, limit) else {
            if let Some(top) = ceiling(seen, now, limit) {
                // The limit shrank under this state: keep it exactly empty
                // under the new one. Losing this race is harmless.
                tat.compare_exchange(seen, top);
            }
            return Step::Over;
        };
        if tat.compare_exchange(seen, next) {
            return Step::Admitted;
        }
    }
    Step::Contended
}

/// A tracked source: one GCRA step on its bucket, counted in it.
#[inline(always)]
fn charge(bucket: BucketWords, now: u64, cost: u64, limit: &Limit) -> Reason {
    match step(bucket.tat(), now, cost, limit) {
        Step::Admitted => {
            bucket.passed().add(1);
            reason::PASSED
        }
        Step::Over => {
            bucket.dropped().add(1);
            reason::OVER_LIMIT
        }
        Step::Contended => {
            bucket.dropped().add(1);
            reason::CONTENDED
        }
    }
}

/// A source not tracked yet: it draws on the first-seen `budget` if any,
/// then gets a bucket with a full burst less this packet.
#[inline(never)]
fn first_seen(
    ctx: &XdpContext,
    key: &BucketKey,
    limit: &Limit,
    arrival: &Arrival,
    budget: Option<&Limit>,
) -> Reason {
    let Arrival { now, cost } = *arrival;
    if budget.is_some_and(|budget| !take_new_source(now, budget)) {
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
        Err(err) if err == -EEXIST => match word::bucket(key) {
            Some(bucket) => charge(bucket, now, cost, limit),
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
    let Some(state) = word::new_sources() else {
        return true;
    };
    matches!(step(state, now, 1, limit), Step::Admitted)
}

/// The bucket key of a source: its address masked to its class's
/// aggregation prefix.
#[inline(always)]
pub fn key(family: Family, src: &[u32; 4], rule: u32, class: &ClassConfig) -> BucketKey {
    masked_key(family, src, rule, class.ipv4_mask, &class.ipv6_mask)
}

/// The bucket key of a source masked with these masks.
#[inline(always)]
pub fn masked_key(
    family: Family,
    src: &[u32; 4],
    rule: u32,
    ipv4_mask: u32,
    ipv6_mask: &[u32; 4],
) -> BucketKey {
    let addr = if family == FAMILY_V4 {
        [src[0] & ipv4_mask, 0, 0, 0]
    } else {
        let m = ipv6_mask;
        [src[0] & m[0], src[1] & m[1], src[2] & m[2], src[3] & m[3]]
    };
    BucketKey { addr, rule, family }
}
