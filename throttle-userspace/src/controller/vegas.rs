//! The Vegas algorithm: the share of the latency spent queueing, estimated
//! as `1 - baseline / short` with the baseline the lowest recent latency,
//! against two thresholds.

use super::{
    config::VegasParams,
    window::{Sorted, WindowedMin},
    Proposal,
};

/// The Vegas algorithm's state: the recent minima.
#[derive(Debug, Default, Clone)]
pub struct Vegas {
    baseline: WindowedMin,
}

impl Vegas {
    /// The current baseline, in milliseconds.
    #[must_use]
    pub fn baseline(&self) -> Option<f64> {
        self.baseline.value()
    }

    /// Learns from `window` and proposes a scale from `scale`.
    pub fn evaluate(&mut self, params: &VegasParams, window: &Sorted, scale: f64) -> Option<Proposal> {
        let short = window.percentile(params.percentile)?;
        let base = self.baseline.update(short, params.baseline_window);
        let queue = if short > 0.0 { (1.0 - base / short).max(0.0) } else { 0.0 };
        let p = params.percentile;
        let seen = format!("p{p} {short:.1} ms over the baseline {base:.1} ms: queueing share {queue:.2}");
        let proposal = if queue < params.alpha {
            Proposal {
                desired: scale * (1.0 + params.increase),
                reason: format!("{seen} under alpha {}", params.alpha),
            }
        } else if queue > params.beta {
            Proposal {
                desired: scale * (1.0 - params.decrease),
                reason: format!("{seen} over beta {}", params.beta),
            }
        } else {
            Proposal { desired: scale, reason: format!("{seen} between alpha and beta") }
        };
        Some(proposal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_holds_and_cuts_by_queueing_share() {
        let params = VegasParams::default();
        let mut vegas = Vegas::default();
        let w = |ms: f64| Sorted::new(vec![ms; 10]);
        assert!((vegas.evaluate(&params, &w(10.0), 0.5).unwrap().desired - 0.55).abs() < 1e-9);
        // share 1 - 10/15 = 0.33: hold.
        assert!((vegas.evaluate(&params, &w(15.0), 0.5).unwrap().desired - 0.5).abs() < 1e-9);
        // share 1 - 10/40 = 0.75: cut by 20 %.
        let cut = vegas.evaluate(&params, &w(40.0), 0.5).unwrap();
        assert!((cut.desired - 0.4).abs() < 1e-9, "{cut:?}");
        assert!(cut.reason.contains("over beta"), "{}", cut.reason);
        assert_eq!(vegas.baseline(), Some(10.0));
    }

    #[test]
    fn the_baseline_is_measured_again() {
        let params = VegasParams { baseline_window: 2, ..VegasParams::default() };
        let mut vegas = Vegas::default();
        let w = |ms: f64| Sorted::new(vec![ms; 10]);
        vegas.evaluate(&params, &w(10.0), 1.0);
        vegas.evaluate(&params, &w(20.0), 1.0);
        vegas.evaluate(&params, &w(20.0), 1.0);
        assert_eq!(vegas.baseline(), Some(20.0));
    }
}
