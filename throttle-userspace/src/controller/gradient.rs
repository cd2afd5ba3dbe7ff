//! The gradient algorithm: short-window latency against a slowly learnt
//! baseline, in the spirit of Netflix's Gradient2 and Envoy's adaptive
//! concurrency, moving a rate scale instead of a concurrency limit.

use super::{
    config::GradientParams,
    window::{Ema, Sorted},
    Proposal,
};

/// Gradient2 never cuts by more than half in one step.
const MIN_GRADIENT: f64 = 0.5;
/// While the latency is above tolerance the baseline learns this much slower.
const CONGESTED_SLOWDOWN: f64 = 0.1;

/// The gradient algorithm's state: its baseline.
#[derive(Debug, Default, Clone)]
pub struct Gradient {
    baseline: Ema,
}

impl Gradient {
    /// The learnt baseline, in milliseconds.
    #[must_use]
    pub fn baseline(&self) -> Option<f64> {
        self.baseline.value()
    }

    /// Learns from `window` and proposes a scale from `scale`.
    pub fn evaluate(&mut self, params: &GradientParams, window: &Sorted, scale: f64) -> Option<Proposal> {
        let short = window.percentile(params.percentile)?;
        let long = self.baseline.value().unwrap_or(short);
        let raw = if short > 0.0 { params.tolerance * long / short } else { 1.0 };
        let congested = raw < 1.0;
        self.baseline.update(short, params.long_window, if congested { CONGESTED_SLOWDOWN } else { 1.0 });
        let p = params.percentile;
        let (target, why) = if congested {
            let gradient = raw.max(MIN_GRADIENT);
            (
                scale * gradient,
                format!(
                    "p{p} {short:.1} ms is {:.2}x the baseline {long:.1} ms (tolerance {}): gradient {gradient:.2}",
                    short / long.max(f64::MIN_POSITIVE),
                    params.tolerance
                ),
            )
        } else {
            (
                scale * (1.0 + params.headroom),
                format!("p{p} {short:.1} ms within {}x the baseline {long:.1} ms", params.tolerance),
            )
        };
        let desired = (1.0 - params.smoothing) * scale + params.smoothing * target;
        Some(Proposal { desired, reason: why })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(ms: f64) -> Sorted {
        Sorted::new(vec![ms; 20])
    }

    #[test]
    fn grows_within_tolerance_and_cuts_beyond() {
        let params = GradientParams::default();
        let mut gradient = Gradient::default();
        let steady = gradient.evaluate(&params, &window(10.0), 0.5).unwrap();
        // 0.5 * (1 + 0.1), smoothed by half.
        assert!((steady.desired - 0.525).abs() < 1e-9, "{steady:?}");
        let slow = gradient.evaluate(&params, &window(30.0), 0.5).unwrap();
        // gradient 1.5 * 10 / 30 = 0.5, smoothed: 0.5 * 0.5 + 0.5 * 0.25.
        assert!((slow.desired - 0.375).abs() < 1e-9, "{slow:?}");
        assert!(slow.reason.contains("gradient 0.50"), "{}", slow.reason);
        // The baseline barely moved during congestion.
        assert!(gradient.baseline().unwrap() < 10.1);
    }

    #[test]
    fn zero_latency_is_no_trouble() {
        let mut gradient = Gradient::default();
        let p = gradient.evaluate(&GradientParams::default(), &window(0.0), 1.0).unwrap();
        assert!(p.desired >= 1.0);
        assert!(gradient.evaluate(&GradientParams::default(), &Sorted::default(), 1.0).is_none());
    }
}
