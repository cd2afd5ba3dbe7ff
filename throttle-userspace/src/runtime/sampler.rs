//! The bucket sampler: counts the tracked sources for the status and
//! measures how close the busiest source runs to its limit, which the
//! controller's app-limited guard needs; and the controller's scale sink.

use std::{collections::HashMap, time::Duration};

use throttle_common::{reason, BucketKey};
use tokio::time::Instant;

use super::{lock, Runtime};
use crate::{
    controller::{ScaleSink, Usage},
    policy::Unit,
};

/// Shortest pause between two walks over the buckets.
const SAMPLE_EVERY: Duration = Duration::from_secs(1);

/// What the sampler saw last.
#[derive(Debug, Default)]
pub(super) struct Sampled {
    pub(super) sources: u64,
    at: Option<std::time::Instant>,
    /// `over_limit` at the previous controller tick.
    over_limit_seen: u64,
    /// `passed` of every bucket at the previous sample.
    passed: HashMap<BucketKey, u64>,
    peak_ratio: Option<f64>,
}

/// Samples again and again; a walk over a big map takes a while, so the
/// pause grows with it.
pub async fn sample_forever(runtime: Runtime) {
    loop {
        let started = Instant::now();
        let walker = runtime.clone();
        if tokio::task::spawn_blocking(move || walker.sample()).await.is_err() {
            return;
        }
        tokio::time::sleep(SAMPLE_EVERY.max(started.elapsed() * 2)).await;
    }
}

impl Runtime {
    /// Walks the buckets once: counts them and measures how close the
    /// busiest source runs to its configured rate. Blocking.
    pub fn sample(&self) {
        let now = std::time::Instant::now();
        // Neither lock is held during the walk: `/v1/status` reads what the
        // last sample saw, and the API's handlers and the controller take
        // the control plane, while a walk over a million buckets runs.
        let (elapsed, previous) = {
            let mut sampled = lock(&self.0.sampled);
            (sampled.at.map(|at| now.duration_since(at).as_secs_f64()), std::mem::take(&mut sampled.passed))
        };
        let mut passed = HashMap::with_capacity(previous.len());
        let mut peak: Option<f64> = None;
        let mut sources = 0u64;
        let (walk, bytes, base_rates) = self.control(|control| {
            (control.bucket_walk(), control.limits().unit == Unit::Bytes, control.base_rates())
        });
        let default_rate = base_rates.get(&0).map_or(1.0, |r| r.per_sec());
        walk(&mut |key, bucket| {
            sources += 1;
            passed.insert(*key, bucket.passed);
            if let (Some(secs), Some(before)) = (elapsed, previous.get(key)) {
                if secs > 0.0 && !bytes {
                    let base = base_rates.get(&key.rule).map_or(default_rate, |r| r.per_sec());
                    #[expect(clippy::cast_precision_loss, reason = "a ratio")]
                    let ratio = bucket.passed.saturating_sub(*before) as f64 / secs / base;
                    peak = Some(peak.map_or(ratio, |p: f64| p.max(ratio)));
                }
            }
        });
        let mut sampled = lock(&self.0.sampled);
        sampled.passed = passed;
        sampled.sources = sources;
        sampled.peak_ratio = if elapsed.is_some() { Some(peak.unwrap_or(0.0)) } else { None };
        sampled.at = Some(now);
    }
}

impl ScaleSink for Runtime {
    fn usage(&self) -> Usage {
        let over_limit = self
            .control(|c| c.kernel().counters())
            .map_or(0, |counters| counters[reason::OVER_LIMIT.index()]);
        let mut sampled = lock(&self.0.sampled);
        let delta = over_limit.saturating_sub(sampled.over_limit_seen);
        sampled.over_limit_seen = over_limit;
        Usage { over_limit_drops: delta, peak_ratio: sampled.peak_ratio }
    }

    fn apply_scale(&self, scale: f64) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let before = self.control(|c| c.scale());
        self.control(|c| c.set_scale(scale))?;
        self.event(
            super::EventView::new("controller")
                .by("controller")
                .detail(format!("scale {before:.3} -> {scale:.3}")),
        );
        Ok(())
    }
}
