//! Per-source GCRA buckets, updated with compare-and-swap so that one
//! source's limit holds however many CPUs see its packets.

use aya_ebpf::helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};
use throttle_common::{
    admit, ceiling, event, flags, gcra::ticks_from_ns, reason, table, table::SlotKey, ClassConfig, Config,
    Family, Limit, Reason, BAN_MARK, CAS_ATTEMPTS, CLOCK_COARSE, FAMILY_V4,
};

use crate::{
    events,
    table::{Insert, SlotWords},
    word::{self, Word},
};

/// A class's ban, in ticks (`for_ticks` 0: none).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Ban {
    pub after: u64,
    pub for_ticks: u64,
}

impl Ban {
    /// No ban.
    pub const NONE: Self = Self { after: 0, for_ticks: 0 };

    /// Makes this [`Ban::NONE`] in place, with two stores, volatile: as an
    /// assignment LLVM makes it a call of `memset` of 16 bytes of zeros, a
    /// loop over a stack pointer plus a register that a loader without
    /// `CAP_PERFMON` may not run.
    #[inline(always)]
    pub fn clear(&mut self) {
        // SAFETY: aligned fields of a live `Ban`.
        unsafe {
            core::ptr::write_volatile(&raw mut self.after, 0);
            core::ptr::write_volatile(&raw mut self.for_ticks, 0);
        }
    }
}

/// How a packet is metered besides its key and limit: what it costs,
/// whether a bucket made for it draws on the first-seen budget, the part of
/// the limit a newcomer gets ([`Config::newcomer_share`] under a limit the
/// controller moves, else 0: none is held back), and its class's ban.
pub struct Charge {
    pub cost: u64,
    pub budget: bool,
    pub newcomer: u32,
    pub ban: Ban,
}

/// Meters the packet `charge` describes against `limit`, on the bucket of
/// the source `key`. The lookup and the insert of a first-seen source are
/// calls of their own, made one after the other from here: one copy of
/// each however many buckets a packet meets, and the deepest call chain
/// (whose stack bounds the program) one call shorter than nesting them.
#[inline(always)]
pub fn meter(key: &SlotKey, limit: &Limit, config: &Config, charge_of: &Charge) -> Reason {
    let verdict = tracked(key, limit, config, charge_of);
    if verdict != reason::UNTRACKED {
        return verdict;
    }
    if charge_of.budget
        && config.flags & flags::NEW_SOURCE_LIMIT != 0
        && !take_new_source(now(limit), &config.new_source_limit, key)
    {
        // Not tracked: a flood of spoofed sources neither passes nor pushes
        // real sources out of the bucket table.
        return reason::NEW_SOURCE_LIMIT;
    }
    match first_seen(key, limit, config, charge_of.cost) {
        // Another CPU inserted it first: meter against that bucket.
        reason::UNTRACKED => match tracked(key, limit, config, charge_of) {
            reason::UNTRACKED => reason::CONTENDED,
            verdict => verdict,
        },
        verdict => verdict,
    }
}

/// The packet's time, in ticks, by the clock of `limit`.
#[inline(always)]
fn now(limit: &Limit) -> u64 {
    // SAFETY: helpers without arguments. Both read CLOCK_MONOTONIC, the
    // coarse one as of the last tick (`Limit::with_clock`).
    let ns = unsafe {
        if limit.clock == CLOCK_COARSE {
            bpf_ktime_get_coarse_ns()
        } else {
            bpf_ktime_get_ns()
        }
    };
    ticks_from_ns(ns)
}

/// [`meter`] for a source the table tracks; [`reason::UNTRACKED`] for
/// one it does not.
#[inline(never)]
fn tracked(key: &SlotKey, limit: &Limit, config: &Config, charge_of: &Charge) -> Reason {
    let (one, two) = table::first_slots(key, config.bucket_seed, config.bucket_groups);
    let Some(slot) = crate::table::find(key, one, two) else {
        return reason::UNTRACKED;
    };
    let arrival = Arrival { now: now(limit), cost: charge_of.cost, ban: charge_of.ban };
    // In fleet mode a heavy source may have a share of its limit here (and
    // every source the default one, with the fleet out of reach): one load
    // of the line just read, and the limit scaled for them alone. While the
    // controller reserves capacity for the sources known before an
    // overload, those that came since get a part of the limit too.
    //
    // The limit is a copy whatever the share: the verifier walks what
    // follows once, not once for the limit and once for its part. Only a
    // share to apply pays for working it out.
    let own = slot.share();
    let share = if own | config.default_share | charge_of.newcomer == 0 {
        table::SHARE_ONE
    } else {
        share_of(own, config, charge_of.newcomer, slot.born())
    };
    let shared = limit.shared(share);
    charge(slot, &arrival, &shared, key).unwrap_or(reason::UNTRACKED)
}

/// The part of its limit a source gets: its own share (`own`; 0: the
/// default one, 0 there too: all of it) times the newcomers' share when the
/// limit is one the controller moves (`newcomer` not 0) and the source came
/// at or after `known_before` (`born`). Without branches, so that the
/// verifier has one path through it.
#[inline(always)]
fn share_of(own: u32, config: &Config, newcomer: u32, born: u32) -> u32 {
    let share = whole_if_zero(own + is_zero(own) * config.default_share);
    let newcomer = newcomer * at_or_after(born, config.known_before);
    // A product of two at most 2^16, over 2^16.
    let share = ((u64::from(share) * u64::from(whole_if_zero(newcomer))) >> 16) as u32;
    share + is_zero(share)
}

/// 1 when `x` is 0, else 0, without a branch.
#[inline(always)]
fn is_zero(x: u32) -> u32 {
    (u64::from(x).wrapping_sub(1) >> 63) as u32
}

/// `x`, or the whole limit's share ([`table::SHARE_ONE`]) for 0, without a
/// branch.
#[inline(always)]
fn whole_if_zero(x: u32) -> u32 {
    x + is_zero(x) * table::SHARE_ONE
}

/// 1 when `born` is at or after `at`, else 0, without a branch.
#[inline(always)]
fn at_or_after(born: u32, at: u32) -> u32 {
    1 - (u64::from(born).wrapping_sub(u64::from(at)) >> 63) as u32
}

/// When a packet came, what it costs, and its class's ban.
#[derive(Clone, Copy)]
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
    /// The slot changed hands: it holds another source now.
    Gone,
}

/// One GCRA step on `tat`, another CPU's update between read and write
/// retried up to [`CAS_ATTEMPTS`] times. `held` says whether the state is
/// still the caller's: checked after each read of the TAT, so that the
/// exchange can only land on a TAT read while it was.
#[inline(always)]
fn step(tat: Word, held: impl Fn() -> bool, now: u64, cost: u64, limit: &Limit) -> Step {
    for _ in 0..CAS_ATTEMPTS {
        let seen = tat.load();
        if !held() {
            return Step::Gone;
        }
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
/// and the bans. `None` when the slot changed hands under it.
#[inline(always)]
fn charge(bucket: SlotWords, arrival: &Arrival, limit: &Limit, key: &SlotKey) -> Option<Reason> {
    let Arrival { now, cost, ban } = *arrival;
    let tat = bucket.tat();
    let seen = tat.load();
    if seen & BAN_MARK != 0 {
        if bucket.tag().load() != key.tag {
            return None;
        }
        if seen & !BAN_MARK > now {
            bucket.dropped().bump();
            return Some(reason::BANNED);
        }
        // The ban is over: the source starts again from its end.
        tat.compare_exchange(seen, seen & !BAN_MARK);
    }
    let held = || bucket.tag().load() == key.tag;
    Some(match step(tat, held, now, cost, limit) {
        Step::Admitted(seen) => {
            bucket.passed().bump();
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
            bucket.dropped().bump();
            let since = bucket.over_since();
            let over = since.load();
            if over == 0 {
                if since.compare_exchange(0, now) {
                    events::of_bucket(event::DROP_START, key);
                }
                reason::OVER_LIMIT
            } else if ban.for_ticks != 0 {
                over_under_ban(bucket, now, ban, over, key)
            } else {
                reason::OVER_LIMIT
            }
        }
        Step::Contended => {
            bucket.dropped().bump();
            reason::CONTENDED
        }
        Step::Gone => return None,
    })
}

/// A source over its limit since `over` under a class that bans: banned
/// from now on once that has lasted the ban's `after`.
#[inline(always)]
fn over_under_ban(bucket: SlotWords, now: u64, ban: Ban, over: u64, key: &SlotKey) -> Reason {
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

/// A source not tracked yet, past the first-seen budget: it gets a slot of
/// its groups with a full burst less this packet, of `cost`.
/// [`reason::UNTRACKED`] when another CPU gave it one first. It sends no
/// event: this call is the deepest of the chain.
#[inline(never)]
fn first_seen(key: &SlotKey, limit: &Limit, config: &Config, cost: u64) -> Reason {
    let now = now(limit);
    let (one, two) = table::first_slots(key, config.bucket_seed, config.bucket_groups);
    let fresh = admit(0, now, cost, limit);
    match crate::table::insert(key, one, two, fresh, now) {
        Insert::Inserted if fresh.is_some() => reason::NEW_SOURCE,
        // Larger than the whole burst (a byte limit below the frame size).
        Insert::Inserted => reason::OVER_LIMIT,
        Insert::Present => reason::UNTRACKED,
        Insert::Contended => reason::CONTENDED,
    }
}

/// Takes one first-seen admission from the global budget for the source
/// `key`.
#[inline(always)]
fn take_new_source(now: u64, limit: &Limit, key: &SlotKey) -> bool {
    let Some(state) = word::new_sources() else {
        return true;
    };
    let admitted = matches!(step(state, || true, now, 1, limit), Step::Admitted(_));
    events::budget(admitted, key);
    admitted
}

/// The bucket key of a source: its address masked to its class's
/// aggregation prefix.
#[inline(always)]
pub fn key(family: Family, src: &[u32; 4], rule: u32, class: &ClassConfig) -> SlotKey {
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
) -> SlotKey {
    let addr = if family == FAMILY_V4 {
        [src[0] & ipv4_mask, 0, 0, 0]
    } else {
        let m = ipv6_mask;
        [src[0] & m[0], src[1] & m[1], src[2] & m[2], src[3] & m[3]]
    };
    SlotKey::new(&addr, rule, family)
}
