//! Per-source GCRA buckets, updated with compare-and-swap so that one
//! source's limit holds however many CPUs see its packets.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns},
    programs::XdpContext,
};
use aya_log_ebpf::error;
use throttle_common::{
    admit, ceiling, event, flags, gcra::ticks_from_ns, reason, Bucket, BucketKey, ClassConfig, Config,
    Family, Limit, Reason, BAN_MARK, CAS_ATTEMPTS, CLOCK_COARSE, FAMILY_V4,
};

use crate::{
    events,
    maps::BUCKETS,
    word::{self, BucketWords, Word},
};

const EEXIST: i32 = 17;

/// A class's ban, in ticks (`for_ticks` 0: none).
#[derive(Clone, Copy)]
pub struct Ban {
    pub after: u64,
    pub for_ticks: u64,
}

impl Ban {
    /// No ban.
    pub const NONE: Self = Self { after: 0, for_ticks: 0 };
}

/// Meters `cost` units of the source `key` against `limit`, under `ban`; a
/// bucket made for it draws on the first-seen budget when `budget`.
#[inline(always)]
pub fn meter(
    ctx: &XdpContext,
    key: &BucketKey,
    limit: &Limit,
    cost: u64,
    config: &Config,
    budget: bool,
    ban: Ban,
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
    let arrival = Arrival { now, cost, ban };
    if let Some(bucket) = word::bucket(key) {
        return charge(bucket, &arrival, limit, key);
    }
    let budget = (budget && config.flags & flags::NEW_SOURCE_LIMIT != 0).then_some(&config.new_source_limit);
    first_seen(ctx, key, limit, &arrival, budget)
}

/// When a packet came, what it costs, and its class's ban (one argument of
/// a BPF call, which takes five at most).
struct Arrival {
    now: u64,
    cost: u64,
    ban: Ban,
}

/// What one GCRA step on a shared TAT came to.
enum Step {
    /// The TAT moved on from this value: the units fit.
    Admitted(u64),
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
        if seen & BAN_MARK != 0 {
            // Banned by another CPU since the caller looked: nothing here
            // may lower the mark.
            return Step::Over;
        }
        let Some(next) = admit(seen, now, cost, limit) else {
            if let Some(top) = ceiling(seen, now, limit) {
                // The limit shrank under this state: keep it exactly empty
                // under the new one. Losing this race is harmless.
                tat.compare_exchange(seen, top);
            }
            return Step::Over;
        };
        if tat.compare_exchange(seen, next) {
            return Step::Admitted(seen);
        }
    }
    Step::Contended
}

/// A tracked source: its ban, or one GCRA step on its bucket, counted in
/// it. The time since it has been over its limit (`over_since`, in the same
/// cache line) marks when it starts and stops being dropped, for the events
/// and the bans.
#[inline(always)]
fn charge(bucket: BucketWords, arrival: &Arrival, limit: &Limit, key: &BucketKey) -> Reason {
    let Arrival { now, cost, ban } = *arrival;
    let tat = bucket.tat();
    let seen = tat.load();
    if seen & BAN_MARK != 0 {
        if seen & !BAN_MARK > now {
            bucket.dropped().add(1);
            return reason::BANNED;
        }
        // The ban is over: the source starts again from its end.
        tat.compare_exchange(seen, seen & !BAN_MARK);
    }
    match step(tat, now, cost, limit) {
        Step::Admitted(seen) => {
            bucket.passed().add(1);
            // A source that floods gets a packet through now and then at
            // its rate, from an empty bucket: still over its limit. Its
            // streak ends when it passes with half its burst to spare.
            if seen <= now + limit.tolerance / 2 {
                let since = bucket.over_since();
                let over = since.load();
                if over != 0 && since.compare_exchange(over, 0) {
                    events::of_bucket(event::DROP_END, key);
                }
            }
            reason::PASSED
        }
        Step::Over => {
            bucket.dropped().add(1);
            let since = bucket.over_since();
            let over = since.load();
            if over == 0 {
                if since.compare_exchange(0, now) {
                    events::of_bucket(event::DROP_START, key);
                }
                return reason::OVER_LIMIT;
            }
            if ban.for_ticks != 0 {
                return over_under_ban(bucket, now, ban, over, key);
            }
            reason::OVER_LIMIT
        }
        Step::Contended => {
            bucket.dropped().add(1);
            reason::CONTENDED
        }
    }
}

/// A source over its limit since `over` under a class that bans: banned
/// from now on once that has lasted the ban's `after`.
#[inline(always)]
fn over_under_ban(bucket: BucketWords, now: u64, ban: Ban, over: u64, key: &BucketKey) -> Reason {
    if now.saturating_sub(over) < ban.after {
        return reason::OVER_LIMIT;
    }
    let tat = bucket.tat();
    let seen = tat.load();
    if seen & BAN_MARK == 0 && tat.compare_exchange(seen, (now + ban.for_ticks) | BAN_MARK) {
        bucket.over_since().compare_exchange(over, 0);
        events::of_bucket(event::BAN_START, key);
    }
    reason::BANNED
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
    let Arrival { now, cost, .. } = *arrival;
    if budget.is_some_and(|budget| !take_new_source(now, budget, key)) {
        // Not tracked: a flood of spoofed sources neither passes nor pushes
        // real sources out of the bucket map.
        return reason::NEW_SOURCE_LIMIT;
    }
    let (fresh, verdict) = match admit(0, now, cost, limit) {
        Some(tat) => (Bucket { tat, passed: 1, dropped: 0, over_since: 0 }, reason::NEW_SOURCE),
        // Larger than the whole burst (a byte limit below the frame size).
        None => (Bucket { tat: 0, passed: 0, dropped: 1, over_since: 0 }, reason::OVER_LIMIT),
    };
    match BUCKETS.insert(key, fresh, u64::from(BPF_NOEXIST)) {
        Ok(()) => verdict,
        // Another CPU inserted it first: meter against that bucket.
        Err(err) if err == -EEXIST => match word::bucket(key) {
            Some(bucket) => charge(bucket, arrival, limit, key),
            None => reason::ERROR,
        },
        Err(err) => {
            error!(ctx, "bucket insert failed: {}", err);
            reason::ERROR
        }
    }
}

/// Takes one first-seen admission from the global budget for the source
/// `key`.
#[inline(always)]
fn take_new_source(now: u64, limit: &Limit, key: &BucketKey) -> bool {
    let Some(state) = word::new_sources() else {
        return true;
    };
    let admitted = matches!(step(state, now, 1, limit), Step::Admitted(_));
    events::budget(admitted, key);
    admitted
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
