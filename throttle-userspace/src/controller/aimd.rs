//! The AIMD algorithm: multiply the scale by `backoff` on trouble (a short
//! latency far above the baseline), add `increase` otherwise.

use super::{
    config::AimdParams,
    window::{Ema, Sorted},
    Proposal,
};

/// While in trouble the baseline learns this much slower.
const TROUBLE_SLOWDOWN: f64 = 0.1;

/// The AIMD algorithm's state: its baseline.
#[derive(Debug, Default, Clone)]
pub struct Aimd {
    baseline: Ema,
}

impl Aimd {
    /// The learnt baseline, in milliseconds.
    #[must_use]
    pub fn baseline(&self) -> Option<f64> {
        self.baseline.value()
    }

    /// Learns from `window` and proposes a scale from `scale`.
    pub fn evaluate(&mut self, params: &AimdParams, window: &Sorted, scale: f64) -> Option<Proposal> {
        let short = window.percentile(params.percentile)?;
        let long = self.baseline.value().unwrap_or(short);
        let trouble = short > params.tolerance * long;
        self.baseline.update(short, params.long_window, if trouble { TROUBLE_SLOWDOWN } else { 1.0 });
        let p = params.percentile;
        Some(if trouble {
            Proposal {
                desired: scale * params.backoff,
                reason: format!(
                    "p{p} {short:.1} ms over {}x the baseline {long:.1} ms: backing off by {}",
                    params.tolerance, params.backoff
                ),
            }
        } else {
            Proposal {
                desired: scale + params.increase,
                reason: format!("p{p} {short:.1} ms within {}x the baseline {long:.1} ms", params.tolerance),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_and_multiplies() {
        let params = AimdParams::default();
        let mut aimd = Aimd::default();
        let w = |ms: f64| Sorted::new(vec![ms; 10]);
        assert!((aimd.evaluate(&params, &w(10.0), 0.5).unwrap().desired - 0.52).abs() < 1e-9);
        assert!((aimd.evaluate(&params, &w(19.0), 0.5).unwrap().desired - 0.52).abs() < 1e-9);
        let cut = aimd.evaluate(&params, &w(50.0), 0.5).unwrap();
        assert!((cut.desired - 0.4).abs() < 1e-9, "{cut:?}");
        assert!(aimd.baseline().unwrap() < 13.0);
    }
}
