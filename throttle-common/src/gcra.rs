//! The rate-limit arithmetic: a generic cell rate algorithm (GCRA).
//!
//! A source's whole state is one number, its *theoretical arrival time* (TAT):
//! the instant at which its bucket would be full again. A packet of cost `c`
//! at time `now` is admitted when `max(tat, now) + c * interval - now` does not
//! exceed the tolerance `burst * interval`; the TAT then moves to that sum.
//! That is a token bucket of `burst` tokens refilled at one token per
//! `interval`, kept in a single word that a compare-and-swap can update, so
//! the limit holds however many CPUs see one source's packets.
//!
//! Time is counted in ticks of 1/16 ns ([`TICKS_PER_NS`]) so that the
//! interval of a high rate loses almost nothing to integer rounding: at the
//! maximum rate of 10^8 per second the interval is 160 ticks, exact; in
//! general the admitted rate is below the configured one by less than
//! `rate / TICKS_PER_SEC` (0.625 % at the maximum rate). A u64 of ticks lasts
//! 2^60 ns, 36 years of uptime. All arithmetic saturates instead of wrapping.
//!
//! Because the state is a time and not a token count, changing the rate or the
//! burst of a limit keeps what every tracked source has used: the next packet
//! is judged against the new limit from the same TAT.

use bytemuck::{Pod, Zeroable};

/// Nanoseconds in a second.
pub const NS_PER_SEC: u64 = 1_000_000_000;
/// Ticks of the GCRA clock in a nanosecond (a shift of [`TICK_SHIFT`]).
pub const TICKS_PER_NS: u64 = 1 << TICK_SHIFT;
/// log2 of [`TICKS_PER_NS`].
pub const TICK_SHIFT: u32 = 4;
/// Ticks of the GCRA clock in a second.
pub const TICKS_PER_SEC: u64 = NS_PER_SEC * TICKS_PER_NS;

/// Lowest rate a limit accepts, per second.
pub const MIN_RATE: u64 = 1;
/// Highest rate a limit accepts, per second (packets or bytes).
pub const MAX_RATE: u64 = 100_000_000;
/// Lowest burst a limit accepts.
pub const MIN_BURST: u64 = 1;
/// Highest burst a limit accepts.
pub const MAX_BURST: u64 = 1_000_000_000;

/// Largest cost of one packet: more than any frame's length.
pub const MAX_COST: u64 = 1 << 24;

/// Seconds in a day: the longest period of a rate.
pub const SECS_PER_DAY: u64 = 86_400;
/// The longest interval of a limit: one unit a day (2^50.3 ticks). A packet
/// costs one unit then, and `cost * interval` stays below 2^64 for every
/// cost of a rate of bytes, whose interval is at most [`TICKS_PER_SEC`].
pub const MAX_INTERVAL: u64 = TICKS_PER_SEC * SECS_PER_DAY;

/// What a limit counts.
pub const UNIT_PACKETS: u32 = 0;
/// Bytes: the cost of a packet is its frame length as received (L2 included).
pub const UNIT_BYTES: u32 = 1;

/// The limit is metered with `bpf_ktime_get_ns`: a clock read to the
/// nanosecond.
pub const CLOCK_FINE: u32 = 0;
/// The limit is metered with `bpf_ktime_get_coarse_ns`, the same monotonic
/// clock as of the last scheduler tick, and three times cheaper to read
/// (see [`Limit::with_clock`]).
pub const CLOCK_COARSE: u32 = 1;
/// How many ticks of the coarse clock a limit's burst must last for the data
/// path to meter it with that clock.
pub const COARSE_CLOCK_MIN_TICKS: u64 = 16;

/// A rate limit in the form the data path uses: no division per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Limit {
    /// Ticks between two units at the limit's rate, rounded up so that the
    /// admitted rate never exceeds the configured one.
    pub interval: u64,
    /// `burst * interval`: how far ahead of now a TAT may run.
    pub tolerance: u64,
    /// [`UNIT_PACKETS`] or [`UNIT_BYTES`].
    pub unit: u32,
    /// [`CLOCK_FINE`] or [`CLOCK_COARSE`]: which clock the data path reads
    /// for it. Set by [`Limit::with_clock`] when the limit is written to the
    /// kernel.
    pub clock: u32,
}

const _: () = assert!(size_of::<Limit>() == 24);

impl Limit {
    /// The limit of `rate` units per second with room for `burst` units at once.
    ///
    /// Total for every input: `rate` and `burst` are clamped to at least 1, and
    /// products saturate. Callers validate against [`MIN_RATE`]..=[`MAX_RATE`]
    /// and [`MIN_BURST`]..=[`MAX_BURST`] before they get here.
    #[must_use]
    pub const fn new(rate: u64, burst: u64, unit: u32) -> Self {
        Self::from_interval(interval_ticks(rate), burst, unit)
    }

    /// The limit of one unit every `interval` ticks with room for `burst`
    /// units at once: any rate, per second or per day ([`MAX_INTERVAL`]
    /// at most; a rate of bytes is at least one a second, [`TICKS_PER_SEC`],
    /// so that a packet's cost times the interval stays far from overflow).
    #[must_use]
    pub const fn from_interval(interval: u64, burst: u64, unit: u32) -> Self {
        let interval = if interval == 0 { 1 } else { interval };
        let interval = if interval > MAX_INTERVAL { MAX_INTERVAL } else { interval };
        let burst = if burst == 0 { 1 } else { burst };
        Self { interval, tolerance: interval.saturating_mul(burst), unit, clock: CLOCK_FINE }
    }

    /// The limit with the clock the data path should read for it, given the
    /// resolution of the coarse clock (`clock_getres(CLOCK_MONOTONIC_COARSE)`,
    /// 0 when unknown).
    ///
    /// The coarse clock reads the monotonic time of the last tick, up to one
    /// resolution late (iptables `hashlimit` meters on the same jiffies).
    /// The long-run rate is exact; what a bucket admits over a window of
    /// time differs from the exact figure by at most one resolution's worth
    /// of refill, because the refill arrives a tick at a time. The coarse
    /// clock is chosen when that is at most 1/[`COARSE_CLOCK_MIN_TICKS`] of
    /// the burst: a burst that lasts 64 ms or more at a 4 ms tick. A limit
    /// whose burst is shorter (a high rate with a small burst) keeps the
    /// fine clock.
    #[must_use]
    pub const fn with_clock(mut self, coarse_resolution_ns: u64) -> Self {
        let lag = ticks_from_ns(coarse_resolution_ns).saturating_mul(COARSE_CLOCK_MIN_TICKS);
        self.clock =
            if coarse_resolution_ns > 0 && self.tolerance >= lag { CLOCK_COARSE } else { CLOCK_FINE };
        self
    }

    /// The part `share` (in 1/[`crate::table::SHARE_ONE`]ths; 0 or more
    /// than one: all) of the limit: its rate times the share, and its burst
    /// times the share but at least one unit. Scaling the interval up by
    /// the share keeps `burst * interval`, the tolerance, as it was. One
    /// division, for the sources that have a share.
    #[inline(always)]
    #[must_use]
    pub const fn shared(&self, share: u32) -> Self {
        if share >= crate::table::SHARE_ONE {
            return *self;
        }
        // The interval is below 2^51 (MAX_INTERVAL), the product below 2^67
        // only for rates under one a day: saturate there. A share of 0 is
        // the whole limit (and no division by zero for the program to
        // carry a panic for).
        let Some(interval) =
            self.interval.saturating_mul(crate::table::SHARE_ONE as u64).checked_div(share as u64)
        else {
            return *self;
        };
        let interval = if interval > MAX_INTERVAL { MAX_INTERVAL } else { interval };
        let tolerance = if self.tolerance < interval { interval } else { self.tolerance };
        Self { interval, tolerance, unit: self.unit, clock: self.clock }
    }

    /// The limit's rate per second, to the nearest unit (the configured rate
    /// for every rate whose interval does not round).
    #[must_use]
    pub const fn rate(&self) -> u64 {
        if self.interval == 0 {
            return 0;
        }
        (TICKS_PER_SEC + self.interval / 2) / self.interval
    }

    /// The limit's burst.
    #[must_use]
    pub const fn burst(&self) -> u64 {
        if self.interval == 0 {
            return 0;
        }
        self.tolerance / self.interval
    }
}

/// Ticks between two units at `rate` per second, rounded up (never 0).
#[must_use]
pub const fn interval_ticks(rate: u64) -> u64 {
    let rate = if rate == 0 { 1 } else { rate };
    TICKS_PER_SEC.div_ceil(rate)
}

/// The GCRA clock reading for a `bpf_ktime_get_ns` value.
#[inline(always)]
#[must_use]
pub const fn ticks_from_ns(ns: u64) -> u64 {
    ns << TICK_SHIFT
}

/// One GCRA step: `Some(new_tat)` when `cost` units at `now` fit in `limit`
/// for a source whose theoretical arrival time is `tat`, `None` when they do
/// not (and the state must stay as it was).
///
/// A source never seen has `tat == 0`, which is in the past: it starts with a
/// full burst.
#[inline(always)]
#[must_use]
pub const fn admit(tat: u64, now: u64, cost: u64, limit: &Limit) -> Option<u64> {
    // With the cost clamped, the product stays below 2^58 for every interval
    // (at most TICKS_PER_SEC, under 2^34), and the BPF target gets a plain
    // multiplication instead of an overflow check it cannot lower.
    let cost = if cost > MAX_COST { MAX_COST } else { cost };
    let base = if tat > now { tat } else { now };
    let new_tat = base.saturating_add(cost.wrapping_mul(limit.interval));
    if new_tat - now <= limit.tolerance {
        Some(new_tat)
    } else {
        None
    }
}

/// After a limit shrinks, a source's TAT may run further ahead of now than
/// the new tolerance: `Some(now + tolerance)` is the TAT of a bucket exactly
/// empty under the new limit, to store in its place; `None` when the TAT is
/// within the tolerance. Without it, raising a rate while lowering the burst
/// in time would silence a source that is at its limit until the old debt
/// ran out, instead of letting it continue at the new rate.
#[inline(always)]
#[must_use]
pub const fn ceiling(tat: u64, now: u64, limit: &Limit) -> Option<u64> {
    let top = now.saturating_add(limit.tolerance);
    if tat > top {
        Some(top)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::vec::Vec;

    use super::*;
    use proptest::prelude::*;

    /// Runs `arrivals` (time in ns, cost) through the GCRA and returns which
    /// were admitted.
    fn run(limit: &Limit, arrivals: &[(u64, u64)]) -> Vec<bool> {
        let mut tat = 0;
        arrivals.iter().map(|&(t, cost)| step(&mut tat, ticks_from_ns(t), cost, limit)).collect()
    }

    /// One packet as the data path meters it: admit, or deny and lower a
    /// TAT above the ceiling.
    fn step(tat: &mut u64, now: u64, cost: u64, limit: &Limit) -> bool {
        if let Some(next) = admit(*tat, now, cost, limit) {
            *tat = next;
            return true;
        }
        if let Some(top) = ceiling(*tat, now, limit) {
            *tat = top;
        }
        false
    }

    #[test]
    fn a_source_at_its_limit_continues_at_a_new_rate_without_a_gap() {
        // 500/s, burst 250: a flooding source is at its limit.
        let before = Limit::new(500, 250, UNIT_PACKETS);
        let mut tat = 0;
        let mut t = NS_PER_SEC;
        let mut admitted = 0;
        while t < 2 * NS_PER_SEC {
            admitted += u64::from(step(&mut tat, ticks_from_ns(t), 1, &before));
            t += 100_000;
        }
        assert_eq!(admitted, 250 + 500 - 1);
        // Raised to 1000/s with the same burst: its debt of 0.5 s exceeds
        // the new tolerance of 0.25 s. It continues at 1000/s at once: no
        // silence, and no fresh burst either.
        let after = Limit::new(1_000, 250, UNIT_PACKETS);
        let mut admitted = 0;
        let end = t + NS_PER_SEC;
        while t < end {
            admitted += u64::from(step(&mut tat, ticks_from_ns(t), 1, &after));
            t += 100_000;
        }
        assert!((999..=1_001).contains(&admitted), "{admitted}");
    }

    /// The reference: the largest number of units any bucket of `burst`
    /// tokens at `rate` per second may admit over `elapsed_ns`, in exact
    /// rational arithmetic.
    fn bound(rate: u64, burst: u64, elapsed_ns: u64) -> u128 {
        u128::from(burst) + u128::from(rate) * u128::from(elapsed_ns) / u128::from(NS_PER_SEC)
    }

    #[test]
    fn a_fresh_source_gets_exactly_its_burst() {
        let limit = Limit::new(10, 5, UNIT_PACKETS);
        let admitted = run(&limit, &[(1_000, 1); 8]);
        assert_eq!(admitted, [true, true, true, true, true, false, false, false]);
    }

    #[test]
    fn refills_at_the_rate() {
        let limit = Limit::new(10, 1, UNIT_PACKETS);
        // One every 100 ms is admitted; one 99 ms after an admitted one is not.
        let admitted =
            run(&limit, &[(0, 1), (99_000_000, 1), (100_000_000, 1), (150_000_000, 1), (200_000_000, 1)]);
        assert_eq!(admitted, [true, false, true, false, true]);
    }

    #[test]
    fn bytes_cost_their_length() {
        let limit = Limit::new(1_000, 1_500, UNIT_BYTES);
        assert_eq!(run(&limit, &[(0, 1_000), (0, 500), (0, 1)]), [true, true, false]);
        // A packet larger than the whole burst never fits.
        assert_eq!(run(&limit, &[(0, 1_501)]), [false]);
    }

    #[test]
    fn extremes_do_not_overflow() {
        for (rate, burst) in
            [(MIN_RATE, MAX_BURST), (MAX_RATE, MAX_BURST), (MIN_RATE, MIN_BURST), (MAX_RATE, MIN_BURST)]
        {
            let limit = Limit::new(rate, burst, UNIT_BYTES);
            assert_eq!(limit.rate(), rate);
            assert_eq!(limit.burst(), burst);
            // Late in a long uptime, with the largest frame.
            let now = ticks_from_ns(30 * 365 * 24 * 3600 * NS_PER_SEC);
            assert!(admit(0, now, 1, &limit).is_some());
            let _ = admit(u64::MAX, now, 65_535, &limit);
            let _ = admit(now, now, u64::MAX, &limit);
        }
    }

    #[test]
    fn interval_rounds_up_and_rates_round_trip() {
        assert_eq!(interval_ticks(MAX_RATE), 160);
        assert_eq!(interval_ticks(3), TICKS_PER_SEC.div_ceil(3));
        for rate in [1, 2, 3, 7, 500, 1_000, 65_536, 1_000_000, 33_333_333, 77_777_777, MAX_RATE] {
            let limit = Limit::new(rate, 1, UNIT_PACKETS);
            // The admitted rate is at most the configured one, and within 0.7 %.
            let admitted = u128::from(TICKS_PER_SEC) * 1_000_000 / u128::from(limit.interval);
            assert!(admitted <= u128::from(rate) * 1_000_000, "{rate}");
            assert!(admitted * 1000 >= u128::from(rate) * 993 * 1_000_000, "{rate}");
            assert!(limit.rate() <= rate && limit.rate() * 1000 >= rate * 993, "{rate}");
        }
        for rate in [1, 2, 3, 7, 500, 1_000, 65_536, 1_000_000, MAX_RATE] {
            assert_eq!(Limit::new(rate, 1, UNIT_PACKETS).rate(), rate);
        }
    }

    #[test]
    fn the_coarse_clock_is_chosen_only_for_bursts_that_last() {
        let tick = 4_000_000; // 4 ms, HZ=250
                              // 1000/s, burst 1000: a burst of 1 s.
        assert_eq!(Limit::new(1_000, 1_000, UNIT_PACKETS).with_clock(tick).clock, CLOCK_COARSE);
        // 1000/s, burst 64: 64 ms, exactly 16 ticks.
        assert_eq!(Limit::new(1_000, 64, UNIT_PACKETS).with_clock(tick).clock, CLOCK_COARSE);
        assert_eq!(Limit::new(1_000, 63, UNIT_PACKETS).with_clock(tick).clock, CLOCK_FINE);
        // 100 000/s, burst 200: 2 ms.
        assert_eq!(Limit::new(100_000, 200, UNIT_PACKETS).with_clock(tick).clock, CLOCK_FINE);
        // Resolution unknown.
        assert_eq!(Limit::new(1, 1_000, UNIT_PACKETS).with_clock(0).clock, CLOCK_FINE);
        // Back to fine when the limit no longer qualifies.
        let coarse = Limit::new(1_000, 1_000, UNIT_PACKETS).with_clock(tick);
        assert_eq!(Limit { tolerance: 1, ..coarse }.with_clock(tick).clock, CLOCK_FINE);
    }

    /// Arrivals: sorted times with small gaps (so that bursts and refills
    /// both happen) and costs of one unit or a frame's bytes.
    fn arrival_times(max_gap_ns: u64, max_cost: u64) -> impl Strategy<Value = Vec<(u64, u64)>> {
        prop::collection::vec((0..max_gap_ns, 1..=max_cost), 1..300).prop_map(|steps| {
            let mut t = 1_000_000_000;
            steps
                .into_iter()
                .map(|(gap, cost)| {
                    t += gap;
                    (t, cost)
                })
                .collect()
        })
    }

    fn limits() -> impl Strategy<Value = (u64, u64)> {
        prop_oneof![
            (MIN_RATE..=1_000u64, MIN_BURST..=100u64),
            (MIN_RATE..=MAX_RATE, MIN_BURST..=MAX_BURST),
            (1_000_000u64..=MAX_RATE, MIN_BURST..=1_000u64),
        ]
    }

    /// The reference for a rate of `count` per `period_secs`.
    fn bound_per_period(count: u64, period_secs: u64, burst: u64, elapsed_ns: u64) -> u128 {
        u128::from(burst) + u128::from(count) * u128::from(elapsed_ns) / u128::from(period_secs * NS_PER_SEC)
    }

    /// The interval of `count` per `period_secs`, as the daemon computes it.
    fn period_interval(count: u64, period_secs: u64) -> u64 {
        u64::try_from((u128::from(TICKS_PER_SEC) * u128::from(period_secs)).div_ceil(u128::from(count)))
            .unwrap()
    }

    proptest! {
        #[test]
        fn a_share_of_a_limit_scales_its_rate_and_keeps_a_unit_of_burst(
            rate in 1u64..=1_000_000,
            burst in 1u64..=100_000,
            share in 1u32..crate::table::SHARE_ONE,
        ) {
            let limit = Limit::new(rate, burst, UNIT_PACKETS);
            let shared = limit.shared(share);
            let one = u64::from(crate::table::SHARE_ONE);
            // The interval grows by the share's inverse, to the tick.
            prop_assert_eq!(shared.interval, (limit.interval * one / u64::from(share)).min(MAX_INTERVAL));
            prop_assert!(shared.tolerance >= shared.interval, "at least one unit at once");
            prop_assert!(shared.tolerance == limit.tolerance || shared.tolerance == shared.interval);
            prop_assert_eq!(limit.shared(0), limit);
            prop_assert_eq!(limit.shared(crate::table::SHARE_ONE), limit);
        }
    }

    proptest! {
        /// Rates per minute, hour and day hold the same bound: over every
        /// window of arrivals, never more than burst + count * elapsed /
        /// period, with arrivals spread over many periods.
        #[test]
        fn never_admits_more_than_the_bound_over_any_period(
            count in 1u64..=1_000,
            period_secs in prop_oneof![Just(1u64), Just(60), Just(3_600), Just(SECS_PER_DAY)],
            burst in MIN_BURST..=50u64,
            gaps in prop::collection::vec(0u64..=1_000, 1..200),
        ) {
            let limit = Limit::from_interval(period_interval(count, period_secs), burst, UNIT_PACKETS);
            // Gaps in thousandths of the time between two units at the rate.
            let unit_ns = period_secs * NS_PER_SEC / count;
            let mut t = NS_PER_SEC;
            let arrivals: Vec<(u64, u64)> = gaps.iter().map(|g| { t += unit_ns / 1_000 * g; (t, 1) }).collect();
            let admitted = run(&limit, &arrivals);
            for i in 0..arrivals.len() {
                let mut sum = 0u128;
                for j in i..arrivals.len() {
                    sum += u128::from(admitted[j]);
                    let allowed = bound_per_period(count, period_secs, burst, arrivals[j].0 - arrivals[i].0);
                    prop_assert!(sum <= allowed, "window {i}..={j}: {sum} > {allowed}");
                }
            }
            prop_assert!(admitted.iter().filter(|&&a| a).count() as u64 >= burst.min(arrivals.len() as u64));
        }

        /// Over every window [i, j] of arrivals, what was admitted never
        /// exceeds burst + rate * elapsed.
        #[test]
        fn never_admits_more_than_the_bound(
            (rate, burst) in limits(),
            arrivals in arrival_times(20_000_000, 3),
        ) {
            let limit = Limit::new(rate, burst, UNIT_PACKETS);
            let admitted = run(&limit, &arrivals);
            for i in 0..arrivals.len() {
                let mut sum = 0u128;
                for j in i..arrivals.len() {
                    if admitted[j] {
                        sum += u128::from(arrivals[j].1);
                    }
                    let allowed = bound(rate, burst, arrivals[j].0 - arrivals[i].0);
                    prop_assert!(sum <= allowed, "window {i}..={j}: {sum} > {allowed}");
                }
            }
        }

        /// Metered on a clock that reads the time of the last tick, a limit
        /// that qualifies for it ([`Limit::with_clock`]) admits at most the
        /// bound plus one tick's refill, and under a demand that exceeds it
        /// the bound less one tick's refill.
        #[test]
        fn the_coarse_clock_keeps_the_bound_and_the_rate(
            rate in 1u64..=1_000_000,
            burst in 1u64..=100_000,
            tick_ms in 1u64..=10,
            gap_ns in 10_000u64..2_000_000,
        ) {
            let tick = tick_ms * 1_000_000;
            let limit = Limit::new(rate, burst, UNIT_PACKETS).with_clock(tick);
            prop_assume!(limit.clock == CLOCK_COARSE);
            let start = 5 * NS_PER_SEC;
            let end = start + (200_000 * NS_PER_SEC / rate).min(3 * NS_PER_SEC);
            let mut tat = 0;
            let mut admitted: Vec<(u64, u128)> = Vec::new();
            let mut total = 0u128;
            let mut t = start;
            while t <= end {
                let coarse = t / tick * tick;
                while let Some(next) = admit(tat, ticks_from_ns(coarse), 1, &limit) {
                    tat = next;
                    total += 1;
                }
                admitted.push((t, total));
                t += gap_ns;
            }
            // Over every window from the start: at most the bound.
            for &(t, total) in &admitted {
                prop_assert!(total <= bound(rate, burst, t - start + tick), "{total} at {t}");
            }
            let expected = bound(rate, burst, end - start);
            // One tick of refill, one gap, the interval's rounding, the unit filling.
            let slack = u128::from(rate) * u128::from(tick + gap_ns) / u128::from(NS_PER_SEC)
                + expected * u128::from(rate) / u128::from(TICKS_PER_SEC)
                + 2;
            prop_assert!(total + slack >= expected, "admitted {total}, bound {expected}");
        }

        /// Under a demand that always exceeds the limit, the admitted total
        /// reaches the bound (less the rounding of the interval and the unit
        /// that is still filling).
        #[test]
        fn admits_the_bound_when_demand_exceeds_it(
            rate in 1u64..=MAX_RATE,
            burst in 1u64..=100_000,
            elapsed_ms in 0u64..10_000,
        ) {
            let limit = Limit::new(rate, burst, UNIT_PACKETS);
            let start = 5 * NS_PER_SEC;
            // At most 200 000 units of refill, so that the unit-by-unit
            // demand below stays quick.
            let elapsed = (elapsed_ms * 1_000_000).min(200_000 * NS_PER_SEC / rate);
            let end = start + elapsed;
            let expected = bound(rate, burst, end - start);
            // A flood: at every arrival, more than fits is offered; arrivals
            // come faster than the rate refills, from start to end.
            let gap = (NS_PER_SEC / (2 * rate)).max(1);
            let mut tat = 0;
            let mut total = 0u128;
            let mut t = start;
            while t <= end {
                while let Some(next) = admit(tat, ticks_from_ns(t), 1, &limit) {
                    tat = next;
                    total += 1;
                }
                t += gap;
            }
            prop_assert!(total <= expected);
            // The rounding of the interval costs at most rate/TICKS_PER_SEC of
            // the rate; add the unit still filling and the one refilled in
            // the last gap.
            let slack = expected * u128::from(rate) / u128::from(TICKS_PER_SEC) + 2;
            prop_assert!(total + slack >= expected, "admitted {total}, bound {expected}");
        }

        /// A change of rate or burst keeps a source's state: a source that has
        /// spent its burst does not get a new one when the limit changes, and
        /// one that has spent part keeps that debt.
        #[test]
        fn a_change_of_limit_keeps_the_state(
            (rate, burst) in (MIN_RATE..=MAX_RATE, MIN_BURST..=10_000u64),
            (rate2, burst2) in (MIN_RATE..=MAX_RATE, MIN_BURST..=10_000u64),
            spent in 0u64..200,
        ) {
            let before = Limit::new(rate, burst, UNIT_PACKETS);
            let after = Limit::new(rate2, burst2, UNIT_PACKETS);
            let now = ticks_from_ns(7 * NS_PER_SEC);
            let spent = spent.min(burst);
            let mut tat = 0;
            for _ in 0..spent {
                tat = admit(tat, now, 1, &before).expect("within the burst");
            }
            // The debt, in time, is what it was, whatever the new limit.
            let debt = tat.saturating_sub(now);
            let mut admitted = 0u64;
            while let Some(next) = admit(tat, now, 1, &after) {
                tat = next;
                admitted += 1;
                if admitted > burst2 { break; }
            }
            let room = after.tolerance.saturating_sub(debt) / after.interval;
            prop_assert_eq!(admitted, room);
            if spent == burst && rate == rate2 && burst2 <= burst {
                // Exhausted under the old limit, still exhausted under the new.
                prop_assert_eq!(admitted, 0);
            }
        }
    }
}
