//! Unit tests of the controller's evaluation: holding, clamps, the floor and
//! the ceiling, the target, the app-limited guard, updates.

use std::time::Duration;

use super::*;

const BINDING: Usage =
    Usage { over_limit_drops: 100, peak_ratio: Some(1.0), limits: Vec::new(), born_clock: None };

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

fn controller(config: AdaptiveConfig) -> Controller {
    Controller::new(config).unwrap()
}

/// Feeds 20 samples of `ms` at `t` seconds and evaluates.
fn step(c: &mut Controller, t: u64, ms: f64, usage: &Usage) -> Option<Decision> {
    c.record_all(secs(t), &[ms; 20]);
    c.tick(secs(t), usage)
}

#[test]
fn it_holds_without_samples_and_says_why() {
    let mut c = controller(AdaptiveConfig::default());
    assert_eq!(c.tick(secs(1), &BINDING), None);
    assert_eq!(c.state(), State::Holding);
    assert_eq!(c.reason(), "no latency sample yet");
    c.record_all(secs(2), &[5.0; 4]);
    assert_eq!(c.tick(secs(2), &BINDING), None);
    assert!(c.reason().contains("4 latency samples in the last 5000 ms, 10 needed"), "{}", c.reason());
    assert_eq!(c.tick(secs(9), &BINDING), None);
    assert!(c.reason().contains("no latency sample for 7.0 s"), "{}", c.reason());
    assert!((c.scale() - 1.0).abs() < f64::EPSILON);
    let json = serde_json::to_value(c.status(secs(9))).unwrap();
    assert_eq!(json["state"], "holding");
    assert_eq!(json["samples"]["total"], 4);
    assert_eq!(json["samples"]["pending"], 0, "the samples expired");
}

#[test]
fn slow_latency_cuts_within_the_clamp_down_to_the_floor() {
    let mut c = controller(AdaptiveConfig::default());
    assert_eq!(step(&mut c, 1, 10.0, &BINDING), None, "healthy at the ceiling: nothing to do");
    assert_eq!(c.state(), State::Adjusting);
    let mut scale = 1.0;
    for t in 2..40 {
        if let Some(d) = step(&mut c, t, 1_000.0, &BINDING) {
            assert!((d.from - scale).abs() < f64::EPSILON);
            assert!(d.to >= scale * (1.0 - 0.3) - 1e-9, "{d:?}");
            assert!(d.to < scale);
            assert!(d.reason.contains("gradient"), "{}", d.reason);
            scale = d.to;
        }
    }
    assert!((c.scale() - 0.1).abs() < f64::EPSILON, "{}", c.scale());
    assert_eq!(step(&mut c, 41, 1_000.0, &BINDING), None, "not under the floor");
    let status = c.status(secs(41));
    assert!(status.decisions.len() <= 32);
    assert!(status.decisions.windows(2).all(|w| w[0].at_ms < w[1].at_ms));
    assert!((status.latency.unwrap().percentiles.p99 - 1_000.0).abs() < f64::EPSILON);
}

#[test]
fn growth_is_clamped_and_stops_at_the_ceiling() {
    let config = AdaptiveConfig { max_increase: 0.05, ..AdaptiveConfig::default() };
    let mut c = controller(config);
    step(&mut c, 1, 10.0, &BINDING);
    for t in 2..6 {
        step(&mut c, t, 1_000.0, &BINDING);
    }
    let mut scale = c.scale();
    assert!(scale < 0.5);
    for t in 6..100 {
        if let Some(d) = step(&mut c, t, 10.0, &BINDING) {
            assert!(d.to <= scale * 1.05 + 1e-9, "{d:?}");
            scale = d.to;
        }
    }
    assert!((c.scale() - 1.0).abs() < f64::EPSILON);
}

#[test]
fn the_app_limited_guard_grows_only_to_what_is_used() {
    let mut c = controller(AdaptiveConfig::default());
    step(&mut c, 1, 10.0, &BINDING);
    for t in 2..10 {
        step(&mut c, t, 1_000.0, &BINDING);
    }
    let low = c.scale();
    assert!(low < 0.2, "{low}");
    // Nothing binds and use is unknown: no growth however good the latency.
    let idle = Usage { over_limit_drops: 0, peak_ratio: None, limits: Vec::new(), born_clock: None };
    for t in 10..20 {
        assert_eq!(step(&mut c, t, 10.0, &idle), None);
    }
    assert!(c.reason().contains("app-limited"), "{}", c.reason());
    // The busiest source uses 0.2 of its base limit: up to 0.25, no further.
    let light = Usage { over_limit_drops: 0, peak_ratio: Some(0.2), limits: Vec::new(), born_clock: None };
    for t in 20..60 {
        step(&mut c, t, 10.0, &light);
    }
    assert!((c.scale() - 0.25).abs() < 1e-9, "{}", c.scale());
    // Binding again: it grows back to the ceiling.
    for t in 60..120 {
        step(&mut c, t, 10.0, &BINDING);
    }
    assert!((c.scale() - 1.0).abs() < f64::EPSILON);
}

#[test]
fn a_cut_starts_from_what_the_busiest_source_uses() {
    let mut c = controller(AdaptiveConfig::default());
    step(&mut c, 1, 10.0, &BINDING);
    let quiet = Usage { over_limit_drops: 0, peak_ratio: Some(0.4), limits: Vec::new(), born_clock: None };
    let d = step(&mut c, 2, 1_000.0, &quiet).unwrap();
    // gradient 0.5 smoothed by half: 0.75 of where the cut starts, which is
    // the use (0.4) but no lower than half the scale in one evaluation.
    assert!((d.to - 0.375).abs() < 1e-9, "{d:?}");
    assert!(d.reason.contains("busiest source"), "{}", d.reason);
    // A use under the floor is not trusted: the cut starts from the scale.
    let mut c = controller(AdaptiveConfig::default());
    step(&mut c, 1, 10.0, &BINDING);
    let stale = Usage { over_limit_drops: 0, peak_ratio: Some(0.0), limits: Vec::new(), born_clock: None };
    let d = step(&mut c, 2, 1_000.0, &stale).unwrap();
    assert!(d.to >= 0.7 - 1e-9, "{d:?}");
}

#[test]
fn the_target_cuts_in_proportion_and_stops_growth_near_it() {
    let mut c = controller(AdaptiveConfig { target_ms: Some(100.0), ..AdaptiveConfig::default() });
    step(&mut c, 1, 120.0, &BINDING);
    // sqrt(100 / 120).
    assert!((c.scale() - (100.0_f64 / 120.0).sqrt()).abs() < 1e-9, "{}", c.scale());
    assert!(c.status(secs(1)).decisions[0].reason.contains("over the 100 ms target"));
    // 90 ms: under the target but near it; the gradient would grow, the
    // target says no.
    assert_eq!(step(&mut c, 2, 90.0, &BINDING), None);
    assert!(c.reason().contains("near the 100 ms target"), "{}", c.reason());
    // 50 ms: well under, but growth waits until the last 5 windows are.
    for t in 3..7 {
        assert_eq!(step(&mut c, t, 50.0, &BINDING), None, "{t}");
    }
    let d = step(&mut c, 7, 50.0, &BINDING).unwrap();
    // Growth tapers: 50 ms is 62.5 % of the way to 80 ms.
    assert!(d.to <= d.from * (1.0 + 0.05 * (1.0 - 50.0 / 80.0)) + 1e-9, "{d:?}");
}

#[test]
fn every_algorithm_cuts_on_slow_latency_and_grows_back() {
    for algorithm in [Algorithm::Gradient, Algorithm::Vegas, Algorithm::Aimd] {
        let mut c = controller(AdaptiveConfig { algorithm, ..AdaptiveConfig::default() });
        for t in 1..5 {
            step(&mut c, t, 10.0, &BINDING);
        }
        for t in 5..10 {
            step(&mut c, t, 100.0, &BINDING);
        }
        let low = c.scale();
        assert!(low < 0.8, "{algorithm}: {low}");
        for t in 10..200 {
            step(&mut c, t, 10.0, &BINDING);
        }
        assert!((c.scale() - 1.0).abs() < f64::EPSILON, "{algorithm}: {}", c.scale());
    }
}

#[test]
fn updates_turn_it_off_and_on_and_move_the_floor() {
    let mut c = controller(AdaptiveConfig::default());
    step(&mut c, 1, 10.0, &BINDING);
    step(&mut c, 2, 1_000.0, &BINDING);
    let cut = c.scale();
    assert!(cut < 1.0);

    let floor: ParamsUpdate = serde_json::from_str(r#"{"floor": 0.9}"#).unwrap();
    let d = c.update(secs(3), &floor).unwrap().unwrap();
    assert!((d.to - 0.9).abs() < f64::EPSILON && d.reason.contains("floor raised"), "{d:?}");

    let off: ParamsUpdate = serde_json::from_str(r#"{"enabled": false}"#).unwrap();
    let d = c.update(secs(4), &off).unwrap().unwrap();
    assert!((d.to - 1.0).abs() < f64::EPSILON);
    assert_eq!(c.state(), State::Disabled);
    // Off, latency is still shown, and the scale does not move.
    assert_eq!(step(&mut c, 5, 1_000.0, &BINDING), None);
    assert_eq!(c.status(secs(5)).latency.unwrap().percentiles.samples, 20);
    assert_eq!(c.state(), State::Disabled);

    let on: ParamsUpdate = serde_json::from_str(r#"{"enabled": true, "algorithm": "aimd"}"#).unwrap();
    assert_eq!(c.update(secs(6), &on).unwrap(), None);
    assert_eq!(c.state(), State::Holding);
    assert!(c.reason().starts_with("turned on"), "{}", c.reason());
    assert_eq!(c.config().algorithm, Algorithm::Aimd);

    let bad: ParamsUpdate = serde_json::from_str(r#"{"aimd": {"backoff": 1.5}}"#).unwrap();
    let err = c.update(secs(7), &bad).unwrap_err();
    assert!(matches!(&err, crate::policy::ParseError::Invalid(e) if e.key == "aimd.backoff"), "{err}");
    assert!((c.config().aimd.backoff - 0.8).abs() < f64::EPSILON, "refused: nothing changed");
}

#[test]
fn a_decision_that_could_not_be_applied_is_reverted() {
    let mut c = controller(AdaptiveConfig::default());
    step(&mut c, 1, 10.0, &BINDING);
    let d = step(&mut c, 2, 1_000.0, &BINDING).unwrap();
    c.revert(&d, "map update refused");
    assert!((c.scale() - 1.0).abs() < f64::EPSILON);
    assert!(c.status(secs(2)).decisions.is_empty());
    assert!(c.reason().contains("map update refused"));
    assert!(c.status(secs(2)).apply_error.unwrap().contains("map update refused"));
}

#[test]
fn garbage_in_never_panics() {
    let mut c = controller(AdaptiveConfig { min_samples: Some(1), ..AdaptiveConfig::default() });
    for (t, ms) in
        [(1, f64::NAN), (2, f64::INFINITY), (3, -5.0), (4, 0.0), (5, 0.0), (6, f64::MAX), (7, 1e-300)]
    {
        c.record(secs(t), ms);
        c.tick(
            secs(t),
            &Usage {
                over_limit_drops: u64::MAX,
                peak_ratio: Some(f64::NAN),
                limits: Vec::new(),
                born_clock: None,
            },
        );
        c.tick(
            secs(t),
            &Usage { over_limit_drops: 0, peak_ratio: Some(-1.0), limits: Vec::new(), born_clock: None },
        );
        c.tick(
            secs(t),
            &Usage {
                over_limit_drops: 0,
                peak_ratio: Some(f64::INFINITY),
                limits: Vec::new(),
                born_clock: None,
            },
        );
        let scale = c.scale();
        assert!(scale.is_finite() && (0.1..=1.0).contains(&scale), "{scale}");
    }
    // Time going backwards is no trouble either.
    c.record(secs(1), 5.0);
    c.tick(Duration::ZERO, &BINDING);
    assert!(Controller::new(AdaptiveConfig { floor: f64::NAN, ..AdaptiveConfig::default() }).is_err());
}

#[test]
fn a_probe_slower_than_min_samples_per_tick_waits_without_holding() {
    // 5 samples per evaluation where 10 are needed: every other tick waits.
    let mut c = controller(AdaptiveConfig::default());
    let mut states = Vec::new();
    for t in 1..20u64 {
        for i in 0..5 {
            c.record(Duration::from_millis(t * 1_000 + i * 200), 10.0);
        }
        c.tick(Duration::from_millis(t * 1_000 + 999), &BINDING);
        states.push(c.state());
    }
    // Before the first evaluation it holds: no window yet.
    assert!(!states[1..].contains(&State::Holding), "{states:?}");
}

/// A `fair_share` usage: 10 light sources at 5/s and `heavy` sources at
/// `rate`/s under a limit of 150/s, each admitted up to `level`/s.
fn fair_usage(heavy: usize, rate: f64, level: f64) -> Usage {
    let source = |offered: f64| fair::SourceRate { offered, admitted: offered.min(level), born: 0 };
    let mut sources = vec![source(5.0); 10];
    sources.extend(std::iter::repeat_n(source(rate), heavy));
    Usage {
        over_limit_drops: 0,
        peak_ratio: None,
        limits: vec![LimitUsage { name: "default".to_owned(), base: 150.0, sources }],
        born_clock: None,
    }
}

fn fair(config: AdaptiveConfig) -> Controller {
    controller(AdaptiveConfig { target_ms: Some(50.0), ..config })
}

#[test]
fn fair_share_sheds_the_excess_of_the_heavy_sources_only() {
    let mut c = fair(AdaptiveConfig::default());
    assert_eq!(c.config().mode, Mode::FairShare, "the default");
    assert_eq!(step(&mut c, 1, 10.0, &fair_usage(4, 20.0, 150.0)), None, "healthy: nothing held");
    // 4 sources at 400/s (over their limit: 150 counts) push the latency
    // over the target: the capacity is cut from what was admitted, 650/s,
    // towards the 130/s sustained before (by three cuts of 0.7 at most),
    // and the light ones keep their 50/s.
    let d = step(&mut c, 2, 200.0, &fair_usage(4, 400.0, 150.0)).unwrap();
    let capacity = c.status(secs(2)).capacity_per_s.unwrap();
    assert!((capacity - 650.0 * 0.7_f64.powi(3)).abs() < 1e-6, "{capacity}");
    let level = d.to * 150.0;
    assert!(((capacity - 50.0) / 4.0 - level).abs() < 1e-6, "{level} of {capacity}");
    assert!(level > 5.0, "over the light sources' rate: {level}");
    assert!(d.reason.contains("fair share"), "{}", d.reason);
    let status = c.status(secs(2));
    assert_eq!(status.levels.len(), 1);
    assert_eq!((status.levels[0].sources, status.levels[0].over_level), (14, 4));
    assert!((status.levels[0].level_per_s - level).abs() < 1e-9);
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["mode"], "fair_share");
    assert_eq!(json["levels"][0]["limit"], "default");
}

#[test]
fn fair_share_lets_go_as_soon_as_the_sources_fit() {
    let mut c = fair(AdaptiveConfig::default());
    step(&mut c, 1, 10.0, &fair_usage(4, 20.0, 150.0));
    for t in 2..6 {
        let level = c.scale() * 150.0;
        step(&mut c, t, 300.0, &fair_usage(4, 400.0, level));
    }
    assert!(c.scale() < 0.5, "{}", c.scale());
    // The heavy sources stop; the latency is good again at once, and the
    // light ones alone fit: every limit back at its rate in one step, with
    // no traffic to prove it (the guard is per source).
    let d = step(&mut c, 6, 10.0, &fair_usage(0, 0.0, 0.0)).unwrap();
    assert!((d.to - 1.0).abs() < f64::EPSILON, "{d:?}");
    assert!(d.reason.contains("fit in the capacity"), "{}", d.reason);
    assert_eq!(c.status(secs(6)).capacity_per_s, None);
}

#[test]
fn fair_share_holds_through_one_noisy_window_and_while_the_queue_drains() {
    let mut c = fair(AdaptiveConfig::default());
    step(&mut c, 1, 10.0, &fair_usage(4, 20.0, 150.0));
    step(&mut c, 2, 200.0, &fair_usage(4, 400.0, 150.0));
    let held = c.scale();
    // The median of the last windows is over the target, but the latency
    // falls fast: the cut works, no second one.
    c.record_all(secs(3), &[150.0; 20]);
    c.record_all(secs(3), &[5.0; 20]);
    let level = c.scale() * 150.0;
    c.tick(secs(3), &fair_usage(4, 400.0, level));
    assert!(c.scale() >= held * 0.99, "{} from {held}", c.scale());
    assert!(
        c.reason().contains("queue drains") || c.reason().contains("within the target"),
        "{}",
        c.reason()
    );
    for t in 4..10 {
        let level = c.scale() * 150.0;
        step(&mut c, t, 10.0, &fair_usage(4, 400.0, level));
    }
    let steady = c.scale();
    // One window over the target among good ones: not cut.
    step(&mut c, 10, 80.0, &fair_usage(4, 400.0, steady * 150.0));
    assert!(c.scale() >= steady * 0.95, "{} from {steady}", c.scale());
}

#[test]
fn fair_share_without_measured_rates_scales_and_says_so() {
    let mut c = fair(AdaptiveConfig::default());
    step(&mut c, 1, 10.0, &BINDING);
    let d = step(&mut c, 2, 1_000.0, &BINDING).unwrap();
    assert!(d.to < 1.0);
    assert!(d.reason.starts_with("no per-source rates measured"), "{}", d.reason);
}

#[test]
fn switching_the_mode_forgets_the_capacity() {
    let mut c = fair(AdaptiveConfig::default());
    step(&mut c, 1, 10.0, &fair_usage(4, 20.0, 150.0));
    step(&mut c, 2, 200.0, &fair_usage(4, 400.0, 150.0));
    assert!(c.status(secs(2)).capacity_per_s.is_some());
    let scale: ParamsUpdate = serde_json::from_str(r#"{"mode": "scale"}"#).unwrap();
    c.update(secs(3), &scale).unwrap();
    assert_eq!(c.status(secs(3)).capacity_per_s, None);
    assert_eq!(c.config().mode, Mode::Scale);
    let bad: ParamsUpdate = serde_json::from_str(r#"{"mode": "fair"}"#).unwrap();
    assert!(c.update(secs(4), &bad).unwrap_err().to_string().contains("unknown variant `fair`"));
}

#[test]
fn fair_share_does_not_cut_what_admits_nothing() {
    let mut c = fair(AdaptiveConfig::default());
    step(&mut c, 1, 10.0, &fair_usage(0, 0.0, 0.0));
    // The service is slow, but none of its traffic is metered.
    let idle = Usage {
        limits: vec![LimitUsage { name: "default".to_owned(), base: 150.0, sources: Vec::new() }],
        ..Usage::default()
    };
    for t in 2..5 {
        assert_eq!(step(&mut c, t, 500.0, &idle), None);
    }
    assert!(c.reason().contains("nothing admitted"), "{}", c.reason());
    assert_eq!(c.status(secs(4)).capacity_per_s, None);
    // The first sources then come in at their full rate, not at the floor.
    step(&mut c, 5, 10.0, &fair_usage(2, 20.0, 150.0));
    assert!((c.scale() - 1.0).abs() < f64::EPSILON, "{}", c.scale());
}

/// 10 light sources at 5/s whose buckets were made at 0, and `newcomers`
/// at `rate`/s made at 10, measured at the data path's clock `clock`; each
/// admitted up to its level as the controller has it.
fn usage_at(c: &Controller, clock: u32, newcomers: usize, rate: f64) -> Usage {
    let known = c.scale() * 150.0;
    let new = known * c.status(secs(0)).newcomers.map_or(1.0, |n| n.share);
    let mut usage = fair_usage(0, 0.0, known);
    let newcomer = fair::SourceRate { offered: rate, admitted: rate.min(new), born: 10 };
    usage.limits[0].sources.extend(std::iter::repeat_n(newcomer, newcomers));
    usage.born_clock = Some(clock);
    usage
}

/// Calm until second 5 (clock 6 to 10), then 1000 newcomers at 75/s keep
/// the latency over the target for `overload` evaluations.
fn botnet(c: &mut Controller, overload: u64) {
    for t in 1..=5 {
        let usage = usage_at(c, 5 + t as u32, 0, 0.0);
        step(c, t, 10.0, &usage);
    }
    for t in 6..6 + overload {
        let usage = usage_at(c, 5 + t as u32, 1_000, 75.0);
        step(c, t, 300.0, &usage);
    }
}

#[test]
fn known_sources_keep_their_reserve_and_newcomers_share_the_rest() {
    assert!((AdaptiveConfig::default().known_reserve - 0.5).abs() < f64::EPSILON, "the default");
    let mut c = fair(AdaptiveConfig { floor: 0.002, ..AdaptiveConfig::default() });
    botnet(&mut c, 15);
    let status = c.status(secs(20));
    let newcomers = status.newcomers.expect("newcomers held apart");
    let d = status.decisions.last().unwrap();
    // Known: made before the oldest of the last three calm evaluations.
    assert_eq!(d.newcomers.map(|n| n.known_before), Some(8), "{d:?}");
    let level = &status.levels[0];
    assert_eq!(level.newcomers, Some(1_000));
    assert!(level.level_per_s >= 5.0, "the light sources keep all they send: {level:?}");
    let new = level.newcomer_level_per_s.unwrap();
    assert!(new < 1.0 && (new - level.level_per_s * newcomers.share).abs() < 1e-9, "{level:?}");
    assert!(status.capacity_per_s.is_some_and(|c| c < 2_000.0), "{status:?}");
    assert!(d.reason.contains("known sources keep their reserve"), "{}", d.reason);
    let json = serde_json::to_value(&status).unwrap();
    assert!(json["newcomers"]["known_for_s"].as_f64().unwrap() > 10.0, "{json}");

    // The newcomers leave: every limit back at its rate, nobody held apart.
    let calm = usage_at(&c, 40, 0, 0.0);
    let d = step(&mut c, 30, 10.0, &calm).unwrap();
    assert!((d.to - 1.0).abs() < f64::EPSILON && d.newcomers.is_none(), "{d:?}");
    assert!(c.status(secs(30)).newcomers.is_none());
}

#[test]
fn without_a_reserve_every_source_gets_one_level() {
    let mut c = fair(AdaptiveConfig { known_reserve: 0.0, floor: 0.002, ..AdaptiveConfig::default() });
    botnet(&mut c, 15);
    let status = c.status(secs(20));
    assert!(status.newcomers.is_none() && status.decisions.iter().all(|d| d.newcomers.is_none()));
    assert!(status.levels[0].level_per_s < 5.0, "the light sources are cut too: {:?}", status.levels[0]);
    // Known before nothing: with no calm evaluation seen, nobody is told
    // apart either.
    let mut c = fair(AdaptiveConfig { floor: 0.002, ..AdaptiveConfig::default() });
    for t in 1..=15 {
        let usage = usage_at(&c, t as u32, 1_000, 75.0);
        step(&mut c, t, 300.0, &usage);
    }
    assert!(c.status(secs(15)).newcomers.is_none());
}
