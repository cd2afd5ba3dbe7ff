//! The adaptive controller: it watches the protected service's latency and
//! sets one factor, between a floor and 1.0, that the daemon applies to the
//! rate of every limit it moves (the default limit, limit rules, classes
//! marked `adaptive`). Since only heavy sources ever reach their bucket's
//! limit, shrinking the per-source rate sheds the heaviest sources first.
//!
//! Two modes set the factor. `fair_share` (the default): the algorithm's
//! verdict on the latency moves an estimate of the capacity the service
//! sustains, and the factor is the max-min fair share of that capacity over
//! the per-source rates the daemon measured ([`fair`]); once the sources fit
//! in it again at their configured rates, the estimate is dropped and every
//! limit is back at its configured rate. `scale`: the algorithm walks the
//! factor itself, as below.
//!
//! [`Controller`] is a plain struct: the caller feeds it latency samples and
//! calls [`Controller::tick`] with the time since start and the [`Usage`] of
//! the last interval; it knows nothing of sockets or tasks. [`driver`] runs it
//! in the daemon with a latency source from [`probe`].
//!
//! Each evaluation of the `scale` mode, in order (`fair_share` is described
//! at `evaluate_fair` and in docs/adaptive.md):
//! 1. With fewer than `min_samples` samples newer than `window_ms`, hold.
//! 2. The algorithm (`gradient`, `vegas` or `aimd`) proposes a scale from
//!    the samples gathered since the previous evaluation.
//! 3. With a target, a percentile over it cuts the scale in proportion
//!    (`sqrt(target / observed)`, at most by half), one near it (over 80 %) stops
//!    any growth, and under that growth tapers off as the percentile nears
//!    80 % of the target (growth goes by the worst of the last 5 windows).
//! 4. App-limited guard: while no source reaches its limit the scale grows
//!    only up to what the busiest source uses (plus `app_limit_headroom`),
//!    and a cut starts from that use rather than from an idle scale.
//! 5. The step is clamped to `max_increase` / `max_decrease`, the scale to
//!    `floor..=1`.

pub mod aimd;
pub mod config;
pub mod driver;
pub mod fair;
pub mod gradient;
pub mod probe;
pub mod vegas;
pub mod window;

use std::{
    collections::VecDeque,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

use self::{
    aimd::Aimd,
    fair::{LevelView, LimitUsage},
    gradient::Gradient,
    vegas::Vegas,
    window::{Pending, Percentiles, Sorted},
};
pub use self::{
    config::{AdaptiveConfig, Algorithm, Mode, ParamsUpdate, SourceConfig, UpdateError},
    driver::{spawn, ControllerHandle, ScaleSink},
};
use crate::policy::Invalid;

/// The largest scale: every limit at its configured value.
pub const CEILING: f64 = 1.0;
/// Changes of the scale smaller than this are not made (they would only
/// rewrite the kernel's configuration).
pub const MIN_CHANGE: f64 = 0.001;
/// Changes of the newcomers' share smaller than this part of it are not
/// made.
const MIN_SHARE_CHANGE: f64 = 0.01;
/// Over the target, one evaluation cuts the scale by at most half.
const MIN_TARGET_GRADIENT: f64 = 0.5;
/// Above this share of the target the scale does not grow.
const NEAR_TARGET: f64 = 0.8;
/// `fair_share`: above this share of the target the capacity estimate does
/// not grow. Lower than for the scale: the level sheds exactly the excess,
/// so the service runs closer to its knee, where one window's percentile is
/// noisy.
const FAIR_NEAR_TARGET: f64 = 0.5;
/// Growth towards the target goes by the worst of this many last windows.
const TARGET_MEMORY: usize = 5;
/// `fair_share`: over the target, a median this much under the previous
/// window's says the queue drains, and the capacity is not cut again.
const DRAINING: f64 = 0.9;
/// `fair_share`: share of the way to a new water level that one evaluation
/// moves the level, between cuts.
const LEVEL_SMOOTHING: f64 = 0.5;
/// Seconds in a unit of the data path's clock of bucket births.
#[expect(clippy::cast_precision_loss, reason = "2^30 is exact in an f64")]
const BORN_UNIT_S: f64 = throttle_common::table::BORN_UNIT_NS as f64 / 1e9;
/// `fair_share`: the known sources of an overload are those whose buckets
/// were made before the oldest of this many evaluations that held nobody
/// back before it (a few seconds: the first evaluation over the target may
/// come a little after the overload began).
const CALM_MEMORY: usize = 3;

/// What the traffic did during the last interval, from the data path.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Usage {
    /// Packets dropped over their source's limit during the interval: more
    /// than zero means the limits bind.
    pub over_limit_drops: u64,
    /// The highest rate one source was admitted at during the interval, as a
    /// fraction of its base (unscaled) limit; None when not measured, in
    /// which case the guard goes by the drops alone.
    pub peak_ratio: Option<f64>,
    /// Every limit the controller moves, with its sources' rates, for the
    /// `fair_share` mode; empty when not measured, in which case that mode
    /// walks the scale as the `scale` mode does.
    pub limits: Vec<LimitUsage>,
    /// The data path's clock when the rates were measured, in the units of
    /// the sources' `born` ([`throttle_common::table::born_of`]); None when
    /// unknown, in which case known sources keep no reserve.
    pub born_clock: Option<u32>,
}

/// `fair_share` with `known_reserve`: the sources that came during an
/// overload, held to a part of the level of the sources known before it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Newcomers {
    /// A source whose bucket was made at or after this time (the data
    /// path's clock, [`throttle_common::table::born_of`]) is a newcomer.
    pub known_before: u32,
    /// Their level as a part of the known sources' (0 < share < 1).
    pub share: f64,
}

/// What `GET /v1/controller` shows of the newcomers.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct NewcomersView {
    /// Their level as a part of the known sources'.
    pub share: f64,
    /// How long before the latest measurement the known sources' buckets
    /// were made by, in seconds.
    pub known_for_s: f64,
}

/// A proposal of one algorithm.
#[derive(Debug, Clone, PartialEq)]
pub struct Proposal {
    /// The scale the algorithm would move to (before the target, the guard,
    /// the clamps).
    pub desired: f64,
    /// Why, for the status and the log.
    pub reason: String,
}

/// What the controller is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// It evaluates the latency and moves the scale.
    Adjusting,
    /// Too few latency samples: the scale stays where it is.
    Holding,
    /// Turned off: the scale is 1.0.
    Disabled,
}

/// One change of the scale.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Decision {
    /// Milliseconds since the controller started.
    pub at_ms: u64,
    /// Wall-clock time, milliseconds since the Unix epoch, when the
    /// controller knows its start time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unix_ms: Option<u64>,
    /// The scale before.
    pub from: f64,
    /// The scale after.
    pub to: f64,
    /// The newcomers' hold after, while there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newcomers: Option<Newcomers>,
    /// The newcomers' hold before.
    #[serde(skip)]
    pub newcomers_before: Option<Newcomers>,
    /// Why.
    pub reason: String,
}

/// Latency of the latest evaluated window.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencyReport {
    #[serde(flatten)]
    pub percentiles: Percentiles,
    /// Milliseconds since that window was evaluated.
    pub age_ms: u64,
}

/// Sample counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SampleCounts {
    /// Received since start.
    pub total: u64,
    /// Waiting for the next evaluation.
    pub pending: u64,
    /// Samples an evaluation needs.
    pub min_samples: u32,
    /// Milliseconds since the latest sample; None before the first.
    pub last_ms_ago: Option<u64>,
}

/// What `GET /v1/controller` shows.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Status {
    pub enabled: bool,
    pub mode: Mode,
    pub algorithm: Algorithm,
    /// The factor applied to every limit.
    pub scale: f64,
    pub floor: f64,
    pub state: State,
    /// Why it is in that state / what the latest evaluation found.
    pub reason: String,
    /// p50, p90, p99 of the latest evaluated window.
    pub latency: Option<LatencyReport>,
    /// The active algorithm's baseline latency, in milliseconds.
    pub baseline_ms: Option<f64>,
    /// `fair_share`: the capacity the service is estimated to sustain, in
    /// units of the limits per second, while the sources do not fit in it
    /// at their configured rates; None otherwise.
    pub capacity_per_s: Option<f64>,
    /// Each limit the controller moves, with its per-source level, as of
    /// the latest evaluation.
    pub levels: Vec<LevelView>,
    /// `fair_share`: while the sources known before the overload keep
    /// their reserve, the level of those that came since.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newcomers: Option<NewcomersView>,
    pub samples: SampleCounts,
    /// The latest decisions, oldest first.
    pub decisions: Vec<Decision>,
    /// Why the latest change of the scale could not be applied, until one is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub apply_error: Option<String>,
    /// Every parameter in force.
    pub params: AdaptiveConfig,
}

/// The controller.
#[derive(Debug)]
pub struct Controller {
    config: AdaptiveConfig,
    scale: f64,
    pending: Pending,
    gradient: Gradient,
    vegas: Vegas,
    aimd: Aimd,
    state: State,
    reason: String,
    latest: Option<(Duration, Percentiles)>,
    decisions: VecDeque<Decision>,
    apply_error: Option<String>,
    /// The target percentile of the last windows.
    recent: VecDeque<f64>,
    epoch: Option<SystemTime>,
    /// `fair_share`: the estimated capacity while the sources exceed it.
    capacity: Option<f64>,
    /// The limits of the latest evaluation, for the status.
    levels: Vec<LevelView>,
    /// `fair_share`: the median of the previous window.
    last_p50: Option<f64>,
    /// `fair_share`: what was admitted during the latest window within the
    /// target before the sources were held.
    sustained: Option<f64>,
    /// The newcomers' hold in force.
    newcomers: Option<Newcomers>,
    /// `fair_share`: the data path's clock at the last evaluations that held
    /// nobody back, oldest first.
    calm: VecDeque<u32>,
    /// `fair_share`: while sources are held, the time before which the
    /// known sources' buckets were made.
    known_before: Option<u32>,
    /// The data path's clock at the latest measurement.
    clock: Option<u32>,
}

/// The median of the last `n` values of `recent` (the higher middle one of
/// an even count); None when empty.
fn median_of_last(recent: &VecDeque<f64>, n: usize) -> Option<f64> {
    let mut last: Vec<f64> = recent.iter().rev().take(n).copied().collect();
    last.sort_by(f64::total_cmp);
    last.get(last.len() / 2).copied()
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// `x` within `lo..=hi`; a NaN gives `fallback`.
fn bounded(x: f64, lo: f64, hi: f64, fallback: f64) -> f64 {
    if x.is_nan() {
        fallback
    } else {
        x.max(lo).min(hi)
    }
}

impl Controller {
    /// A controller at scale 1.0; `config` is validated (keys under
    /// `adaptive`).
    pub fn new(config: AdaptiveConfig) -> Result<Self, Invalid> {
        config.validate("adaptive")?;
        let (state, reason) = if config.enabled {
            (State::Holding, "no latency sample yet".to_owned())
        } else {
            (State::Disabled, "turned off".to_owned())
        };
        Ok(Self {
            config,
            scale: CEILING,
            pending: Pending::default(),
            gradient: Gradient::default(),
            vegas: Vegas::default(),
            aimd: Aimd::default(),
            state,
            reason,
            latest: None,
            decisions: VecDeque::new(),
            apply_error: None,
            recent: VecDeque::new(),
            epoch: None,
            capacity: None,
            levels: Vec::new(),
            last_p50: None,
            sustained: None,
            newcomers: None,
            calm: VecDeque::new(),
            known_before: None,
            clock: None,
        })
    }

    /// Stamps decisions with wall-clock time too, `start` being the instant
    /// that the `now` of every call counts from.
    #[must_use]
    pub fn with_epoch(mut self, start: SystemTime) -> Self {
        self.epoch = Some(start);
        self
    }

    /// The parameters in force.
    #[must_use]
    pub fn config(&self) -> &AdaptiveConfig {
        &self.config
    }

    /// The current scale.
    #[must_use]
    pub fn scale(&self) -> f64 {
        self.scale
    }

    /// The newcomers' hold in force, if any.
    #[must_use]
    pub fn newcomers(&self) -> Option<Newcomers> {
        self.newcomers
    }

    /// The current state.
    #[must_use]
    pub fn state(&self) -> State {
        self.state
    }

    /// Why it is in its state.
    #[must_use]
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// One latency sample in milliseconds, received at `now` (time since
    /// start). Not finite or negative: ignored.
    pub fn record(&mut self, now: Duration, ms: f64) {
        self.pending.record(now, ms);
    }

    /// Several samples received at `now`.
    pub fn record_all(&mut self, now: Duration, samples: &[f64]) {
        for &ms in samples {
            self.pending.record(now, ms);
        }
    }

    fn decide(&mut self, now: Duration, to: f64, newcomers: Option<Newcomers>, reason: String) -> Decision {
        let decision = Decision {
            at_ms: millis(now),
            unix_ms: self.epoch.and_then(|start| (start + now).duration_since(UNIX_EPOCH).ok()).map(millis),
            from: self.scale,
            to,
            newcomers,
            newcomers_before: self.newcomers,
            reason,
        };
        self.scale = to;
        self.newcomers = newcomers;
        self.apply_error = None;
        self.decisions.push_back(decision.clone());
        while self.decisions.len() > self.config.history as usize {
            self.decisions.pop_front();
        }
        decision
    }

    fn hold(&mut self, now: Duration) {
        let window = Duration::from_millis(self.config.window_ms);
        let need = self.config.min_samples();
        self.state = State::Holding;
        self.reason = match self.pending.last_at() {
            None => "no latency sample yet".to_owned(),
            Some(at) if now.saturating_sub(at) > window => {
                format!("no latency sample for {:.1} s", now.saturating_sub(at).as_secs_f64())
            }
            Some(_) => format!(
                "{} latency samples in the last {} ms, {need} needed",
                self.pending.len(),
                self.config.window_ms
            ),
        };
    }

    /// One evaluation at `now` (time since start) with the traffic's `usage`
    /// of the last interval. Returns a decision when the scale changed.
    pub fn tick(&mut self, now: Duration, usage: &Usage) -> Option<Decision> {
        self.clock = usage.born_clock.or(self.clock);
        self.pending.expire(now, Duration::from_millis(self.config.window_ms));
        let enough = self.pending.len() >= self.config.min_samples() as usize;
        if !self.config.enabled {
            if enough {
                let window = self.pending.take_sorted();
                self.latest = window.summary().map(|p| (now, p));
            }
            self.state = State::Disabled;
            "turned off".clone_into(&mut self.reason);
            return None;
        }
        if !enough {
            if self.pending.is_empty() || self.state == State::Holding {
                self.hold(now);
            } else {
                // Samples are coming, just not enough since the last
                // evaluation yet: wait for the next tick without holding.
                self.reason = format!(
                    "{} of {} latency samples for the next evaluation",
                    self.pending.len(),
                    self.config.min_samples()
                );
            }
            return None;
        }
        let window = self.pending.take_sorted();
        self.latest = window.summary().map(|p| (now, p));
        self.evaluate(now, &window, usage)
    }

    /// The active algorithm's proposal from `scale` (every algorithm learns
    /// from `window`, so that switching keeps the baselines), with the
    /// target applied (no growth once the worst of the last windows is over
    /// `near` of it), and with a target the target's own factor (1 within
    /// it); None when the window says nothing.
    fn propose(&mut self, window: &Sorted, scale: f64, near: f64) -> Option<(Proposal, Option<f64>)> {
        let config = &self.config;
        let gradient = self.gradient.evaluate(&config.gradient, window, scale);
        let vegas = self.vegas.evaluate(&config.vegas, window, scale);
        let aimd = self.aimd.evaluate(&config.aimd, window, scale);
        let Proposal { mut desired, mut reason } = match config.algorithm {
            Algorithm::Gradient => gradient,
            Algorithm::Vegas => vegas,
            Algorithm::Aimd => aimd,
        }?;
        if desired.is_nan() {
            desired = scale;
        }

        // With a target: the target's own factor over it, 1 under it.
        let mut over = None;
        if let Some(target) = config.target_ms {
            let tp = config.target_percentile;
            if let Some(observed) = window.percentile(tp) {
                over = Some(if observed > target {
                    (target / observed).sqrt().max(MIN_TARGET_GRADIENT)
                } else {
                    1.0
                });
                if self.recent.len() >= TARGET_MEMORY {
                    self.recent.pop_front();
                }
                self.recent.push_back(observed);
                // Growth goes by the worst of the last few windows: one good
                // window in a noisy series is no reason to grow.
                let worst = self.recent.iter().copied().fold(observed, f64::max);
                if observed > target {
                    let cut = scale * (target / observed).sqrt().max(MIN_TARGET_GRADIENT);
                    if cut < desired {
                        desired = cut;
                        reason = format!("p{tp} {observed:.1} ms over the {target} ms target");
                    }
                } else if worst > target * near && desired > scale {
                    desired = scale;
                    reason = format!(
                        "{reason}; p{tp} {worst:.1} ms in the last windows, near the {target} ms target: not growing"
                    );
                } else if desired > scale {
                    // Growth tapers off on the way to the target, so that it
                    // does not overshoot it.
                    let room = 1.0 - worst / (target * NEAR_TARGET);
                    let cap = scale * (1.0 + config.max_increase * room);
                    if desired > cap {
                        desired = cap;
                        reason = format!(
                            "{reason}; p{tp} {observed:.1} ms is {:.0} % of the {target} ms target",
                            observed / target * 100.0
                        );
                    }
                }
            }
        }

        Some((Proposal { desired, reason }, over))
    }

    fn evaluate(&mut self, now: Duration, window: &Sorted, usage: &Usage) -> Option<Decision> {
        if self.config.mode == Mode::FairShare && !usage.limits.is_empty() {
            return self.evaluate_fair(now, window, usage);
        }
        let scale = self.scale;
        let Some((Proposal { mut desired, mut reason }, _)) = self.propose(window, scale, NEAR_TARGET) else {
            self.hold(now);
            return None;
        };
        if self.config.mode == Mode::FairShare {
            reason = format!("no per-source rates measured, scaling: {reason}");
        }
        self.levels = fair::levels(&usage.limits, scale, None);
        let config = &self.config;
        let binding = usage.over_limit_drops > 0;
        let peak = usage.peak_ratio.filter(|r| r.is_finite() && *r >= 0.0);
        let mut from = scale;
        if !binding && desired > scale {
            match peak.map(|r| r * (1.0 + config.app_limit_headroom)) {
                Some(cap) if cap > scale => {
                    if desired > cap {
                        desired = cap;
                        reason = format!(
                            "{reason}; app-limited: the busiest source uses {:.2} of its base limit",
                            peak.unwrap_or(0.0)
                        );
                    }
                }
                _ => {
                    desired = scale;
                    reason = match peak {
                        Some(r) => format!(
                            "{reason}; app-limited: no source at its limit (the busiest uses {r:.2} of its base limit), not growing"
                        ),
                        None => format!("{reason}; app-limited: no source at its limit, not growing"),
                    };
                }
            }
        }
        if !binding && desired < scale {
            // A peak under the floor says nothing about the load (it may
            // predate it: the buckets are measured about once a second).
            if let Some(r) = peak.filter(|r| *r < scale && *r >= config.floor) {
                // The cut bites only under what the busiest source uses; at
                // most half the scale per evaluation, in case that use is
                // already out of date.
                let r = r.max(scale * 0.5);
                from = r;
                desired = from * desired / scale;
                reason = format!("{reason} (from the busiest source's use, {r:.2})");
            }
        }

        let high = scale * (1.0 + config.max_increase);
        let low = from * (1.0 - config.max_decrease);
        let desired = bounded(desired, low, high, scale);
        self.settle(now, desired, None, reason)
    }

    /// Moves the scale to `desired` (within the floor and the ceiling), and
    /// the newcomers' hold to `newcomers`, when that is a change worth
    /// making.
    fn settle(
        &mut self,
        now: Duration,
        desired: f64,
        newcomers: Option<Newcomers>,
        reason: String,
    ) -> Option<Decision> {
        let config = &self.config;
        let scale = self.scale;
        let desired = bounded(desired, config.floor, CEILING, scale);
        self.state = State::Adjusting;
        let at_bound = |x: f64| (x - CEILING).abs() < f64::EPSILON || (x - config.floor).abs() < f64::EPSILON;
        let held_changed = match (self.newcomers, newcomers) {
            (None, None) => false,
            (Some(was), Some(next)) => {
                // Relative: the newcomers' level is a small part of the
                // known sources' one.
                was.known_before != next.known_before
                    || (was.share - next.share).abs() >= MIN_SHARE_CHANGE * was.share.max(next.share)
            }
            _ => true,
        };
        let changed = (desired - scale).abs() >= MIN_CHANGE
            || (at_bound(desired) && (desired - scale).abs() > 0.0)
            || held_changed;
        if changed {
            self.reason.clone_from(&reason);
            Some(self.decide(now, desired, newcomers, reason))
        } else {
            self.reason = format!("{reason}; scale stays at {scale:.3}");
            None
        }
    }

    /// `fair_share`: the factor on the capacity estimate, from the
    /// algorithm's `factor` and, with a target, the target's own (`over`).
    fn fair_factor(
        &mut self,
        window: &Sorted,
        factor: f64,
        reason: String,
        over: Option<f64>,
    ) -> (f64, String) {
        let held = self.capacity.is_some();
        let mut factor = factor;
        let mut reason = reason;
        if let Some(target) = self.config.target_ms {
            // With a target, the target alone decides the cuts, in
            // proportion to how far over it the latency is: under it, the
            // algorithm's alarm only stops growth (a band that keeps the
            // level steady).
            let tp = self.config.target_percentile;
            // While the sources are held, one window over the target among
            // quiet ones is noise: the cut goes by the median of the last
            // three windows.
            let observed = if held { median_of_last(&self.recent, 3) } else { window.percentile(tp) };
            match (over, observed) {
                (Some(_), Some(observed)) if observed > target => {
                    factor = (target / observed).sqrt().max(MIN_TARGET_GRADIENT);
                    reason = if held {
                        format!(
                            "p{tp} {observed:.1} ms over the {target} ms target (median of the last windows)"
                        )
                    } else {
                        format!("p{tp} {observed:.1} ms over the {target} ms target")
                    };
                }
                (Some(f), _) if f < 1.0 => {
                    factor = 1.0;
                    reason = format!(
                        "{reason}; the median p{tp} of the last windows is within the target: not cutting"
                    );
                }
                _ if factor < 1.0 => {
                    factor = 1.0;
                    reason = format!("{reason}; within the target: not cutting");
                }
                _ => {}
            }
        }
        let config = &self.config;
        factor = bounded(factor, 1.0 - config.max_decrease, 1.0 + config.max_increase, 1.0);
        let p50 = window.percentile(50.0);
        let before = std::mem::replace(&mut self.last_p50, p50);
        if factor < 1.0 && held {
            if let (Some(now), Some(before)) = (p50, before) {
                if now < before * DRAINING {
                    // The queue drains: the last cut works, and cutting on
                    // a latency it has not caught up with yet overshoots.
                    factor = 1.0;
                    reason = format!(
                        "{reason}; p50 {now:.1} ms down from {before:.1} ms: the queue drains, not cutting"
                    );
                }
            }
        }
        (factor, reason)
    }

    /// `fair_share`: the latency moves the capacity estimate, the measured
    /// rates give the level.
    fn evaluate_fair(&mut self, now: Duration, window: &Sorted, usage: &Usage) -> Option<Decision> {
        // The algorithm's verdict as a factor: its proposal from 1.
        let Some((Proposal { desired: factor, reason }, over)) =
            self.propose(window, CEILING, FAIR_NEAR_TARGET)
        else {
            self.hold(now);
            return None;
        };
        let held = self.capacity.is_some();
        let (factor, reason) = self.fair_factor(window, factor, reason, over);
        let config = &self.config;
        let limits = &usage.limits;
        let admitted = fair::admitted(limits);
        let demand = fair::kept_at(limits, CEILING);
        // Under this the floor holds every source anyway: no use cutting
        // the estimate further (it would only slow the way back).
        let least = fair::kept_at(limits, config.floor);
        let sustained = self.sustained;
        let (capacity, why) = if factor < 1.0 && admitted <= 0.0 {
            // Nothing metered got through: cutting it cannot help the
            // service, and an estimate of nothing would hold the first
            // sources to come at the floor.
            (self.capacity, format!("{reason}; nothing admitted under the limits it moves: not cutting"))
        } else if factor < 1.0 {
            // The cut starts from what was admitted, not from an estimate
            // the traffic never reached; the first one goes down to what
            // the service sustained before, by at most three cuts at once.
            let from = self.capacity.map_or(admitted, |c| c.min(admitted));
            let mut capacity = from * factor;
            if let (false, Some(sustained)) = (held, sustained) {
                capacity = sustained.clamp(from * factor.powi(3), capacity);
            }
            let capacity = capacity.max(least);
            (Some(capacity), format!("{reason}: capacity {capacity:.0}/s ({from:.0}/s admitted)"))
        } else {
            match self.capacity {
                Some(c) if demand <= c * factor => (
                    None,
                    format!(
                        "{reason}; the sources fit in the capacity ({demand:.0}/s of {c:.0}/s): every limit at its configured rate"
                    ),
                ),
                // Back to what the service sustained within the target
                // before the overload: a cut on a latency that lagged
                // behind the cuts before it went too deep.
                Some(c) if factor > 1.0 && sustained.is_some_and(|s| s > c * factor) => {
                    let s = sustained.unwrap_or(c);
                    (Some(s), format!("{reason}: back to the {s:.0}/s sustained before"))
                }
                Some(c) if factor > 1.0 => {
                    let capacity = c * factor;
                    (Some(capacity), format!("{reason}: probing up, capacity {capacity:.0}/s"))
                }
                Some(c) => (Some(c), format!("{reason}: capacity stays {c:.0}/s")),
                None => (None, format!("{reason}; no source held back")),
            }
        };
        let cut = factor < 1.0;
        if !held && !cut && over.is_none_or(|f| f >= 1.0) {
            self.sustained = Some(admitted);
        }
        self.capacity = capacity;
        self.note_known(held, capacity.is_some(), usage.born_clock);
        let config = &self.config;
        let split = match (capacity, self.known_before) {
            (Some(c), Some(before)) if config.known_reserve > 0.0 => {
                fair::reserved_levels(limits, c, config.known_reserve, before)
            }
            (Some(c), _) => {
                let level = fair::water_level(limits, c);
                fair::Split { known: level, new: level }
            }
            (None, _) => fair::Split { known: CEILING, new: CEILING },
        };
        let mut level = split.known.max(config.floor);
        let mut new_level = split.new.max(config.floor).min(level);
        if held && capacity.is_some() && !cut {
            // The rates measured over one interval are noisy: between cuts
            // the levels move half way to the water level each time.
            let was_new = self.scale * self.newcomers.map_or(1.0, |n| n.share);
            level = self.scale + LEVEL_SMOOTHING * (level - self.scale);
            if self.newcomers.is_some() && split.new < split.known {
                // The known sources are a set fixed for the overload: what
                // lowers their level is a cut, not one second of noise in
                // the rates of a few of them.
                level = level.max(self.scale);
            }
            new_level = (was_new + LEVEL_SMOOTHING * (new_level - was_new)).min(level);
        }
        let newcomers = match self.known_before {
            Some(known_before) if capacity.is_some() && new_level < level * (1.0 - MIN_CHANGE) => {
                Some(Newcomers { known_before, share: new_level / level })
            }
            _ => None,
        };
        self.levels = fair::levels(limits, level, newcomers.map(|n| (n.known_before, new_level)));
        let reason = if capacity.is_some() {
            let held = self.levels.iter().map(|l| l.over_level).sum::<usize>();
            match newcomers {
                Some(n) => format!(
                    "{why}; known sources keep their reserve at {level:.3} of each limit, newcomers get {:.3} of that, {held} sources held",
                    n.share
                ),
                None => format!("{why}; fair share {level:.3} of each limit, {held} sources held to it"),
            }
        } else {
            why
        };
        self.settle(now, level, newcomers, reason)
    }

    /// `fair_share`: keeps the clock of the evaluations that hold nobody
    /// back, and when sources start being held (`holds` after `held`
    /// did not), fixes which ones are known: those made before the oldest
    /// of the last calm evaluations.
    fn note_known(&mut self, held: bool, holds: bool, clock: Option<u32>) {
        if !holds {
            self.known_before = None;
            if let Some(clock) = clock {
                if self.calm.len() >= CALM_MEMORY {
                    self.calm.pop_front();
                }
                self.calm.push_back(clock);
            }
        } else if !held {
            self.known_before = self.calm.front().copied();
            self.calm.clear();
        }
    }

    /// Applies a `PUT /v1/controller` body at `now`. Returns the decision when
    /// the scale changed (turned off: back to 1.0; a floor raised over it).
    pub fn update(&mut self, now: Duration, update: &ParamsUpdate) -> Result<Option<Decision>, UpdateError> {
        let next = update.apply_to(&self.config)?;
        let was_enabled = self.config.enabled;
        if !next.enabled || next.mode != self.config.mode {
            self.capacity = None;
            self.known_before = None;
        }
        self.config = next;
        while self.decisions.len() > self.config.history as usize {
            self.decisions.pop_front();
        }
        if !self.config.enabled {
            self.state = State::Disabled;
            "turned off".clone_into(&mut self.reason);
            if (self.scale - CEILING).abs() > 0.0 {
                return Ok(Some(self.decide(
                    now,
                    CEILING,
                    None,
                    "turned off: every limit back to its base".to_owned(),
                )));
            }
            return Ok(None);
        }
        if !was_enabled {
            self.hold(now);
            self.reason = format!("turned on; {}", self.reason);
        }
        if self.scale < self.config.floor {
            let floor = self.config.floor;
            let newcomers = self.newcomers;
            return Ok(Some(self.decide(now, floor, newcomers, format!("floor raised to {floor}"))));
        }
        Ok(None)
    }

    /// Undoes `decision` (the latest), which could not be applied: the scale
    /// goes back to what it was.
    pub fn revert(&mut self, decision: &Decision, error: &str) {
        self.scale = decision.from;
        self.newcomers = decision.newcomers_before;
        if self.decisions.back() == Some(decision) {
            self.decisions.pop_back();
        }
        self.reason = format!(
            "scale {:.3} could not be applied, staying at {:.3}: {error}",
            decision.to, decision.from
        );
        self.apply_error = Some(format!("scale {:.3}: {error}", decision.to));
    }

    /// The status at `now`.
    #[must_use]
    pub fn status(&self, now: Duration) -> Status {
        let config = &self.config;
        Status {
            enabled: config.enabled,
            mode: config.mode,
            algorithm: config.algorithm,
            scale: self.scale,
            floor: config.floor,
            state: self.state,
            reason: self.reason.clone(),
            latency: self.latest.map(|(at, percentiles)| LatencyReport {
                percentiles,
                age_ms: millis(now.saturating_sub(at)),
            }),
            baseline_ms: match config.algorithm {
                Algorithm::Gradient => self.gradient.baseline(),
                Algorithm::Vegas => self.vegas.baseline(),
                Algorithm::Aimd => self.aimd.baseline(),
            },
            capacity_per_s: self.capacity,
            levels: self
                .levels
                .iter()
                .map(|l| LevelView {
                    level_per_s: l.configured_per_s * self.scale,
                    newcomer_level_per_s: self.newcomers.map(|n| l.configured_per_s * self.scale * n.share),
                    ..l.clone()
                })
                .collect(),
            newcomers: self.newcomers.map(|n| NewcomersView {
                share: n.share,
                known_for_s: self
                    .clock
                    .map_or(0.0, |clock| f64::from(clock.saturating_sub(n.known_before)) * BORN_UNIT_S),
            }),
            samples: SampleCounts {
                total: self.pending.total(),
                pending: self.pending.len() as u64,
                min_samples: config.min_samples(),
                last_ms_ago: self.pending.last_at().map(|at| millis(now.saturating_sub(at))),
            },
            decisions: self.decisions.iter().cloned().collect(),
            apply_error: self.apply_error.clone(),
            params: config.clone(),
        }
    }
}

#[cfg(test)]
mod tests;
