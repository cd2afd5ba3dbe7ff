//! The per-source share of the fleet's limit: pure arithmetic, fed rates
//! and a clock by the sync task.
//!
//! Each node meters a source against the limit times its share: its part
//! of the traffic of that source the whole fleet offered over the last sync,
//! never less than a floor (a node that starts receiving a source must be
//! able to admit some of it, or its traffic would never show) and never
//! more than the whole limit. The shares are measured on the traffic
//! offered, not admitted: admitted counts are capped by the shares
//! themselves, so shares computed from them would never follow a shift of
//! the traffic between nodes.

use std::time::Duration;

/// A share of the whole limit, in 1/65536.
pub const FULL_SHARE: u32 = 1 << 16;

/// The floor of a node's share, as a part of an even share (1/nodes).
pub const FLOOR_OF_EVEN_SHARE: f64 = 0.25;

/// A node count as a float.
fn count(n: usize) -> f64 {
    u32::try_from(n).map_or(f64::from(u32::MAX), f64::from)
}

/// One node's traffic of one source over the last sync, per second.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Traffic {
    /// Offered: admitted and dropped.
    pub offered: f64,
    pub admitted: f64,
}

/// This node's share of a source's limit (in 1/65536), from its own traffic
/// and the fleet's (this node's included), with `nodes` live.
#[must_use]
pub fn local_share(local: f64, fleet: f64, nodes: usize) -> u32 {
    let nodes = count(nodes.max(1));
    let floor = FLOOR_OF_EVEN_SHARE / nodes;
    let part = if fleet.is_finite() && fleet > 0.0 && local.is_finite() {
        (local.max(0.0) / fleet).clamp(floor, 1.0)
    } else {
        // Nothing measured: an even share.
        1.0 / nodes
    };
    to_fixed(part)
}

/// The share every source gets once Redis has been unreachable for
/// longer than `hold_ms`: the limit divided by the last known node count.
#[must_use]
pub fn fallback_share(nodes: usize) -> u32 {
    to_fixed(1.0 / count(nodes.max(1)))
}

/// A fraction in 1/65536, at least 1 (never a blackhole) and at most the
/// whole limit.
#[must_use]
pub fn to_fixed(part: f64) -> u32 {
    #[expect(clippy::cast_sign_loss, reason = "clamped to 1..=65536 first")]
    let fixed = (part * f64::from(FULL_SHARE)).round().clamp(1.0, f64::from(FULL_SHARE)) as u32;
    fixed
}

/// Where the node stands with the fleet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// No sync has succeeded yet.
    Connecting,
    /// The last sync succeeded less than `hold` ago (or none was due).
    Synced,
    /// Redis unreachable: the last shares stay in force until `hold` is over.
    Holding,
    /// Redis unreachable for longer than `hold`: limit / last node count.
    Fallback,
}

impl Link {
    /// As the API and the metrics spell it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Synced => "synced",
            Self::Holding => "holding",
            Self::Fallback => "fallback",
        }
    }

    /// Every state, for the metrics.
    pub const ALL: [Self; 4] = [Self::Connecting, Self::Synced, Self::Holding, Self::Fallback];
}

/// The link's state from how long ago the last sync succeeded (`None`:
/// never), whether the last one failed, and `hold`.
#[must_use]
pub fn link(since_ok: Option<Duration>, last_failed: bool, hold: Duration) -> Link {
    match since_ok {
        None if last_failed => Link::Fallback,
        None => Link::Connecting,
        Some(_) if !last_failed => Link::Synced,
        Some(age) if age <= hold => Link::Holding,
        Some(_) => Link::Fallback,
    }
}

/// Whether a source is heavy on this node: offered at least an even
/// share of its limit (`rate` per second) over the last sync.
#[must_use]
pub fn heavy(offered: f64, rate: f64, nodes: usize) -> bool {
    rate > 0.0 && offered >= rate / count(nodes.max(1))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn part(fixed: u32) -> f64 {
        f64::from(fixed) / f64::from(FULL_SHARE)
    }

    #[test]
    fn even_and_skewed_traffic() {
        assert_eq!(local_share(100.0, 300.0, 3), to_fixed(1.0 / 3.0));
        assert!((part(local_share(80.0, 100.0, 3)) - 0.8).abs() < 1e-4);
        assert_eq!(local_share(100.0, 100.0, 1), FULL_SHARE);
        assert_eq!(local_share(500.0, 100.0, 3), FULL_SHARE, "never more than the limit");
    }

    #[test]
    fn a_node_that_starts_receiving_a_source_gets_the_floor() {
        let floor = to_fixed(FLOOR_OF_EVEN_SHARE / 4.0);
        assert_eq!(local_share(0.0, 1000.0, 4), floor);
        assert_eq!(local_share(1.0, 1_000_000.0, 4), floor);
    }

    #[test]
    fn nothing_measured_is_an_even_share_and_nothing_is_ever_zero() {
        assert_eq!(local_share(0.0, 0.0, 4), FULL_SHARE / 4);
        assert_eq!(local_share(f64::NAN, 10.0, 2), FULL_SHARE / 2);
        assert_eq!(local_share(1.0, f64::INFINITY, 2), FULL_SHARE / 2);
        assert_eq!(local_share(1.0, 1.0, 0), FULL_SHARE, "no node count: this node alone");
        assert_eq!(fallback_share(3), to_fixed(1.0 / 3.0));
        assert_eq!(fallback_share(0), FULL_SHARE);
        assert_eq!(to_fixed(0.0), 1);
        assert_eq!(to_fixed(-3.0), 1);
    }

    #[test]
    fn heavy_sources_use_an_even_share_or_more() {
        assert!(heavy(34.0, 100.0, 3));
        assert!(!heavy(33.0, 100.0, 3));
        assert!(!heavy(1e9, 0.0, 3), "a source without a limit is never heavy");
    }

    #[test]
    fn the_link_holds_then_falls_back_and_recovers() {
        let hold = Duration::from_secs(10);
        assert_eq!(link(None, false, hold), Link::Connecting);
        assert_eq!(link(None, true, hold), Link::Fallback, "never synced: nothing to hold");
        assert_eq!(link(Some(Duration::from_secs(1)), false, hold), Link::Synced);
        assert_eq!(link(Some(Duration::from_secs(9)), true, hold), Link::Holding);
        assert_eq!(link(Some(Duration::from_secs(11)), true, hold), Link::Fallback);
        assert_eq!(link(Some(Duration::from_millis(100)), false, hold), Link::Synced);
    }

    proptest! {
        /// The shares of the nodes of a fleet add up to the whole limit,
        /// plus at most a floor for each node, and none is zero.
        #[test]
        fn shares_add_up_to_the_limit_plus_the_floors(rates in prop::collection::vec(0.0f64..1e6, 1..12)) {
            let nodes = rates.len();
            let fleet: f64 = rates.iter().sum();
            let total: f64 = rates.iter().map(|&r| part(local_share(r, fleet, nodes))).sum();
            let allowance = FLOOR_OF_EVEN_SHARE + count(nodes) / f64::from(FULL_SHARE);
            prop_assert!(total <= 1.0 + allowance + 1e-9, "{total} for {rates:?}");
            prop_assert!(total >= 1.0 - count(nodes) / f64::from(FULL_SHARE), "{total} for {rates:?}");
            for &r in &rates {
                prop_assert!(local_share(r, fleet, nodes) >= 1);
            }
        }
    }
}
