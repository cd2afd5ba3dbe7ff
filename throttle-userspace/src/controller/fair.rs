//! Fair share: from the per-source rates of the last interval and an
//! estimate of the capacity the service sustains, the per-source level that
//! sheds exactly the excess (max-min fairness, by water-filling).
//!
//! The limits the controller moves have different configured rates (the
//! default limit, limit rules, adaptive classes), so the level is one
//! fraction `level` of each limit's configured rate: a source of a limit of
//! configured rate `base` that sent `offered` keeps `min(offered, level *
//! base)`, and the level is the largest with the sum of those within the
//! capacity. A limit's share of the capacity is thus in proportion to its
//! configured rate, and within a limit every source is treated alike.
//!
//! With a reserve for known sources ([`reserved_levels`]), the sources whose
//! buckets were made before the overload began are guaranteed up to a part
//! of the capacity at a level of their own, and those that came since share
//! what is left, at a level no higher.

use serde::Serialize;

/// One source's rates over the last interval, per second.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct SourceRate {
    /// What it sent: admitted and dropped.
    pub offered: f64,
    /// What its bucket admitted.
    pub admitted: f64,
    /// When its bucket was made, on the data path's clock
    /// ([`throttle_common::table::born_of`]).
    pub born: u32,
}

/// Which sources a computation counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pool {
    /// Every source.
    All,
    /// Those whose buckets were made before this time (the known ones).
    Before(u32),
    /// Those whose buckets were made at or after it (the newcomers).
    Since(u32),
}

impl Pool {
    fn holds(self, source: &SourceRate) -> bool {
        match self {
            Self::All => true,
            Self::Before(at) => source.born < at,
            Self::Since(at) => source.born >= at,
        }
    }
}

/// The levels of the known sources and of the newcomers, as fractions of
/// each limit's configured rate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Split {
    pub known: f64,
    pub new: f64,
}

/// One limit the controller moves, with the rates of its sources.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LimitUsage {
    /// `default`, a class's name, or `rule N`.
    pub name: String,
    /// The configured (unscaled) rate, per second.
    pub base: f64,
    /// Every source it tracks.
    pub sources: Vec<SourceRate>,
}

/// A limit's level, as `GET /v1/controller` shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LevelView {
    /// `default`, a class's name, or `rule N`.
    pub limit: String,
    /// The configured rate, per second.
    pub configured_per_s: f64,
    /// The per-source rate in force, per second.
    pub level_per_s: f64,
    /// Sources seen during the last interval.
    pub sources: usize,
    /// Of those, how many sent more than their level.
    pub over_level: usize,
    /// While the sources known before the overload keep a reserve: the
    /// level of those that came since, per second.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newcomer_level_per_s: Option<f64>,
    /// And how many of the sources came since.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newcomers: Option<usize>,
}

fn usable(x: f64) -> f64 {
    if x.is_finite() && x > 0.0 {
        x
    } else {
        0.0
    }
}

/// What the sources of `limits` would keep at `level` (a fraction of each
/// limit's configured rate), per second.
#[must_use]
pub fn kept_at(limits: &[LimitUsage], level: f64) -> f64 {
    kept_in(limits, level, Pool::All)
}

/// [`kept_at`] for the sources of `pool` only.
#[must_use]
pub fn kept_in(limits: &[LimitUsage], level: f64, pool: Pool) -> f64 {
    limits
        .iter()
        .map(|l| {
            let cap = usable(l.base) * level;
            l.sources.iter().filter(|s| pool.holds(s)).map(|s| usable(s.offered).min(cap)).sum::<f64>()
        })
        .sum()
}

/// What the sources of `limits` were admitted, per second.
#[must_use]
pub fn admitted(limits: &[LimitUsage]) -> f64 {
    limits.iter().flat_map(|l| &l.sources).map(|s| usable(s.admitted)).sum()
}

/// The largest level in `0..=1` at which the sources of `limits` keep at
/// most `capacity` per second in all (water-filling); 1 when they fit at
/// their configured rates. The level of no capacity is 0.
#[must_use]
pub fn water_level(limits: &[LimitUsage], capacity: f64) -> f64 {
    water_level_in(limits, capacity, Pool::All)
}

/// [`water_level`] over the sources of `pool` only.
#[must_use]
pub fn water_level_in(limits: &[LimitUsage], capacity: f64, pool: Pool) -> f64 {
    let capacity = usable(capacity);
    if kept_in(limits, 1.0, pool) <= capacity {
        return 1.0;
    }
    // Each source's demand as a fraction of its limit's rate, with that
    // rate: under the level a source keeps its demand, over it the level
    // times its rate.
    let mut points: Vec<(f64, f64, f64)> = limits
        .iter()
        .filter(|l| usable(l.base) > 0.0)
        .flat_map(|l| {
            l.sources.iter().filter(move |s| pool.holds(s)).map(move |s| {
                let offered = usable(s.offered);
                (offered / l.base, offered, l.base)
            })
        })
        .collect();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut below = 0.0;
    let mut weight: f64 = points.iter().map(|p| p.2).sum();
    for &(x, offered, base) in &points {
        // Between the previous point and this one, the sources keep
        // `below + level * weight`.
        if below + x.min(1.0) * weight >= capacity {
            break;
        }
        below += offered;
        weight -= base;
    }
    if weight <= 0.0 {
        return 1.0;
    }
    ((capacity - below) / weight).clamp(0.0, 1.0)
}

/// The levels at which `limits` keep at most `capacity` in all, with up to
/// `reserve` of it (a fraction, 0 to 1) guaranteed to the sources whose
/// buckets were made before `known_before`: one level for every source
/// while that already gives the known ones their reserve (or all they
/// send, if less); else the known sources are water-filled over their
/// guarantee, and the newcomers over what is left, at a level no higher.
#[must_use]
pub fn reserved_levels(limits: &[LimitUsage], capacity: f64, reserve: f64, known_before: u32) -> Split {
    let level = water_level(limits, capacity);
    let known = Pool::Before(known_before);
    let guaranteed = kept_in(limits, 1.0, known).min(usable(reserve).min(1.0) * usable(capacity));
    if kept_in(limits, level, known) >= guaranteed * (1.0 - 1e-9) {
        return Split { known: level, new: level };
    }
    let known_level = water_level_in(limits, guaranteed, known);
    let rest = (usable(capacity) - kept_in(limits, known_level, known)).max(0.0);
    let new = water_level_in(limits, rest, Pool::Since(known_before)).min(known_level);
    Split { known: known_level, new }
}

/// The level of each limit at `level`, and with `newcomers` (the time the
/// known sources' buckets were made before, and the level of the others)
/// the newcomers', for the status.
#[must_use]
pub fn levels(limits: &[LimitUsage], level: f64, newcomers: Option<(u32, f64)>) -> Vec<LevelView> {
    limits
        .iter()
        .map(|l| {
            let per_s = usable(l.base) * level;
            let new_per_s = newcomers.map(|(_, new)| usable(l.base) * new);
            let is_new = |s: &SourceRate| newcomers.is_some_and(|(at, _)| Pool::Since(at).holds(s));
            let level_of = |s: &SourceRate| if is_new(s) { new_per_s.unwrap_or(per_s) } else { per_s };
            LevelView {
                limit: l.name.clone(),
                configured_per_s: l.base,
                level_per_s: per_s,
                sources: l.sources.len(),
                over_level: l.sources.iter().filter(|s| usable(s.offered) > level_of(s)).count(),
                newcomer_level_per_s: new_per_s,
                newcomers: newcomers.map(|_| l.sources.iter().filter(|s| is_new(s)).count()),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(name: &str, base: f64, offered: &[f64]) -> LimitUsage {
        LimitUsage {
            name: name.to_owned(),
            base,
            sources: offered
                .iter()
                .map(|&o| SourceRate { offered: o, admitted: o.min(base), born: 0 })
                .collect(),
        }
    }

    #[test]
    fn sources_under_the_level_keep_all_and_those_over_it_get_the_level() {
        // 10 light at 5/s, 4 heavy at 100/s, limit 150/s, capacity 250/s:
        // the light keep 50, the heavy share 200 at 50 each.
        let mut offered = vec![5.0; 10];
        offered.extend([100.0; 4]);
        let limits = [limit("default", 150.0, &offered)];
        let level = water_level(&limits, 250.0);
        assert!((level * 150.0 - 50.0).abs() < 1e-9, "{}", level * 150.0);
        assert!((kept_at(&limits, level) - 250.0).abs() < 1e-9);
        let view = &levels(&limits, level, None)[0];
        assert_eq!((view.sources, view.over_level), (14, 4));
        // Too little for the light ones too: everybody gets the same.
        let level = water_level(&limits, 28.0);
        assert!((level * 150.0 - 2.0).abs() < 1e-9, "{}", level * 150.0);
    }

    #[test]
    fn enough_capacity_is_the_ceiling_and_none_is_zero() {
        let limits = [limit("default", 150.0, &[5.0, 200.0])];
        // 200 is over the limit: it counts as 150.
        assert!((water_level(&limits, 155.0) - 1.0).abs() < f64::EPSILON);
        assert!(water_level(&limits, 154.0) < 1.0);
        assert!(water_level(&limits, 0.0).abs() < f64::EPSILON);
        assert!(water_level(&limits, f64::NAN).abs() < f64::EPSILON);
        assert!((water_level(&[], 0.0) - 1.0).abs() < f64::EPSILON, "nothing to share");
    }

    #[test]
    fn limits_share_in_proportion_to_their_rates() {
        // A class of 20/s and the default of 200/s, one flood in each:
        // level 0.25 gives 5 and 50.
        let limits = [limit("web", 20.0, &[1_000.0]), limit("default", 200.0, &[1_000.0])];
        let level = water_level(&limits, 55.0);
        assert!((level - 0.25).abs() < 1e-9, "{level}");
        let garbage = [limit("x", f64::NAN, &[f64::INFINITY, -1.0]), limit("y", 10.0, &[f64::NAN, 20.0])];
        let level = water_level(&garbage, 5.0);
        assert!((level - 0.5).abs() < 1e-9, "{level}");
    }

    #[test]
    fn known_sources_keep_their_reserve_and_newcomers_share_the_rest() {
        // 40 known at 5/s (200/s) beside 1000 newcomers at 75/s, limit
        // 150/s, capacity 1000/s: one level would give each source under
        // 1/s. Half reserved: the known keep all they send, the newcomers
        // share the other 800/s at 0.8/s each.
        let mut limits = [limit("default", 150.0, &[5.0; 40])];
        limits[0].sources.extend((0..1_000).map(|_| SourceRate { offered: 75.0, admitted: 75.0, born: 10 }));
        let one = water_level(&limits, 1_000.0);
        assert!(one * 150.0 < 1.0, "{}", one * 150.0);
        let split = reserved_levels(&limits, 1_000.0, 0.5, 10);
        assert!((split.known - 1.0).abs() < 1e-9, "{split:?}");
        assert!((split.new * 150.0 - 0.8).abs() < 1e-9, "{split:?}");
        let kept =
            kept_in(&limits, split.known, Pool::Before(10)) + kept_in(&limits, split.new, Pool::Since(10));
        assert!((kept - 1_000.0).abs() < 1e-6, "{kept}");
        let view = &levels(&limits, split.known, Some((10, split.new)))[0];
        assert_eq!((view.newcomers, view.over_level), (Some(1_000), 1_000));
        // A reserve smaller than their need: the known share 10 % of the
        // capacity, 100/s at 2.5/s each; the newcomers 900/s.
        let split = reserved_levels(&limits, 1_000.0, 0.1, 10);
        assert!((split.known * 150.0 - 2.5).abs() < 1e-9, "{split:?}");
        assert!((split.new * 150.0 - 0.9).abs() < 1e-9, "{split:?}");
        // Few newcomers: the one level gives the known ones their reserve
        // already, and nobody is told apart.
        limits[0].sources.truncate(40 + 3);
        let split = reserved_levels(&limits, 300.0, 0.5, 10);
        let one = water_level(&limits, 300.0);
        assert_eq!(split, Split { known: one, new: one });
        // No reserve: the one level.
        let split = reserved_levels(&limits, 250.0, 0.0, 10);
        assert!((split.known - split.new).abs() < f64::EPSILON, "{split:?}");
    }
}
