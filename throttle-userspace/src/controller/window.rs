//! Latency samples waiting for an evaluation, percentiles, and the two
//! baselines the algorithms learn (a moving average and a windowed minimum).

use std::{collections::VecDeque, time::Duration};

use serde::Serialize;

/// Most samples kept between two evaluations; past it the oldest go. A
/// percentile of this many samples is as good as one of more.
pub const MAX_PENDING: usize = 65_536;

/// The samples gathered since the previous evaluation, none older than the
/// window.
#[derive(Debug, Default)]
pub struct Pending {
    samples: VecDeque<(Duration, f64)>,
    /// When the most recent sample arrived.
    last_at: Option<Duration>,
    /// Samples received in all, used or not.
    total: u64,
}

impl Pending {
    /// Adds one sample (milliseconds) received at `now`. Values that are not
    /// finite or are negative are ignored.
    pub fn record(&mut self, now: Duration, ms: f64) {
        if !(ms.is_finite() && ms >= 0.0) {
            return;
        }
        if self.samples.len() >= MAX_PENDING {
            self.samples.pop_front();
        }
        self.samples.push_back((now, ms));
        self.last_at = Some(self.last_at.map_or(now, |last| last.max(now)));
        self.total += 1;
    }

    /// Forgets the samples received before `now - window`.
    pub fn expire(&mut self, now: Duration, window: Duration) {
        let oldest = now.saturating_sub(window);
        while self.samples.front().is_some_and(|&(at, _)| at < oldest) {
            self.samples.pop_front();
        }
    }

    /// How many samples wait.
    #[must_use]
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether none waits.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// When the latest sample arrived.
    #[must_use]
    pub fn last_at(&self) -> Option<Duration> {
        self.last_at
    }

    /// Samples received since start.
    #[must_use]
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Takes the waiting samples, sorted.
    pub fn take_sorted(&mut self) -> Sorted {
        let values = self.samples.drain(..).map(|(_, ms)| ms).collect();
        Sorted::new(values)
    }

    /// The waiting samples, sorted, left in place.
    #[must_use]
    pub fn peek_sorted(&self) -> Sorted {
        Sorted::new(self.samples.iter().map(|&(_, ms)| ms).collect())
    }
}

/// Finite samples in ascending order.
#[derive(Debug, Clone, Default)]
pub struct Sorted(Vec<f64>);

impl Sorted {
    /// Sorts `values`, dropping those that are not finite.
    #[must_use]
    pub fn new(mut values: Vec<f64>) -> Self {
        values.retain(|v| v.is_finite());
        values.sort_by(f64::total_cmp);
        Self(values)
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The nearest-rank percentile `p` (in percent, 0 < p <= 100): the
    /// smallest sample with at least p % of the samples at or under it.
    /// None when empty.
    #[must_use]
    pub fn percentile(&self, p: f64) -> Option<f64> {
        let n = self.0.len();
        if n == 0 {
            return None;
        }
        let p = if p.is_finite() { p.clamp(0.0, 100.0) } else { 100.0 };
        let rank = (p / 100.0 * count_f64(n)).ceil();
        // rank is in 0..=n: a float that is a whole number within usize.
        #[expect(clippy::cast_sign_loss, reason = "rank is not negative")]
        let index = (rank as usize).clamp(1, n) - 1;
        self.0.get(index).copied()
    }

    /// p50, p90 and p99.
    #[must_use]
    pub fn summary(&self) -> Option<Percentiles> {
        Some(Percentiles {
            p50: self.percentile(50.0)?,
            p90: self.percentile(90.0)?,
            p99: self.percentile(99.0)?,
            samples: self.0.len() as u64,
        })
    }
}

/// A count as a float; exact below 2^53.
#[expect(clippy::cast_precision_loss, reason = "sample counts are far below 2^53")]
#[must_use]
pub fn count_f64(n: usize) -> f64 {
    n as f64
}

/// Latency percentiles of one window, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    /// Samples in the window.
    pub samples: u64,
}

/// An exponential moving average over about `len` values.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ema {
    value: Option<f64>,
}

impl Ema {
    /// The average so far.
    #[must_use]
    pub fn value(&self) -> Option<f64> {
        self.value
    }

    /// Adds `x` with the weight of an average over `len` values, times
    /// `slowdown` (1 = normal, 0.1 = ten times slower). The first value
    /// is taken as is.
    pub fn update(&mut self, x: f64, len: u32, slowdown: f64) -> f64 {
        let alpha = 2.0 / (f64::from(len) + 1.0) * slowdown.clamp(0.0, 1.0);
        let next = match self.value {
            Some(old) if x.is_finite() => old + alpha.min(1.0) * (x - old),
            Some(old) => old,
            None => x,
        };
        self.value = Some(next);
        next
    }
}

/// The minimum of the last `len` values (a monotonic queue).
#[derive(Debug, Clone, Default)]
pub struct WindowedMin {
    seq: u64,
    queue: VecDeque<(u64, f64)>,
}

impl WindowedMin {
    /// Adds `x` and returns the minimum of the last `len` values.
    pub fn update(&mut self, x: f64, len: u32) -> f64 {
        self.seq += 1;
        let oldest = self.seq.saturating_sub(u64::from(len.max(1)));
        while self.queue.front().is_some_and(|&(seq, _)| seq <= oldest) {
            self.queue.pop_front();
        }
        if x.is_finite() {
            while self.queue.back().is_some_and(|&(_, v)| v >= x) {
                self.queue.pop_back();
            }
            self.queue.push_back((self.seq, x));
        }
        self.value().unwrap_or(x)
    }

    /// The current minimum.
    #[must_use]
    pub fn value(&self) -> Option<f64> {
        self.queue.front().map(|&(_, v)| v)
    }
}

#[cfg(test)]
#[expect(clippy::float_cmp, reason = "the values compared are exact")]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let sorted = Sorted::new((1..=100).map(f64::from).collect());
        assert_eq!(sorted.percentile(50.0), Some(50.0));
        assert_eq!(sorted.percentile(90.0), Some(90.0));
        assert_eq!(sorted.percentile(99.0), Some(99.0));
        assert_eq!(sorted.percentile(99.9), Some(100.0));
        assert_eq!(sorted.percentile(0.0), Some(1.0));
        assert_eq!(sorted.percentile(f64::NAN), Some(100.0));
        let one = Sorted::new(vec![7.0]);
        assert_eq!(one.percentile(1.0), Some(7.0));
        assert_eq!(one.percentile(99.0), Some(7.0));
        assert_eq!(Sorted::default().percentile(50.0), None);
        let summary = Sorted::new(vec![3.0, f64::NAN, 1.0, 2.0]).summary().unwrap();
        assert_eq!((summary.p50, summary.p99, summary.samples), (2.0, 3.0, 3));
    }

    #[test]
    fn pending_expires_old_samples_and_ignores_garbage() {
        let mut pending = Pending::default();
        for (at, ms) in [(0, 1.0), (1, 2.0), (2, f64::NAN), (3, -1.0), (4, f64::INFINITY), (5, 3.0)] {
            pending.record(Duration::from_secs(at), ms);
        }
        assert_eq!(pending.len(), 3);
        pending.expire(Duration::from_secs(6), Duration::from_secs(5));
        assert_eq!(pending.len(), 2);
        assert_eq!(pending.last_at(), Some(Duration::from_secs(5)));
        let sorted = pending.take_sorted();
        assert_eq!(sorted.percentile(100.0), Some(3.0));
        assert_eq!(pending.len(), 0);
        assert_eq!(pending.total(), 3);
    }

    #[test]
    fn pending_is_capped() {
        let mut pending = Pending::default();
        for i in 0..MAX_PENDING + 10 {
            pending.record(Duration::ZERO, count_f64(i));
        }
        assert_eq!(pending.len(), MAX_PENDING);
        assert_eq!(pending.peek_sorted().percentile(0.0), Some(10.0));
    }

    #[test]
    fn ema_and_windowed_min() {
        let mut ema = Ema::default();
        assert_eq!(ema.update(10.0, 9, 1.0), 10.0);
        assert!((ema.update(20.0, 9, 1.0) - 12.0).abs() < 1e-9);
        assert!((ema.update(20.0, 9, 0.1) - 12.16).abs() < 1e-9);
        assert!((ema.update(f64::NAN, 9, 1.0) - 12.16).abs() < 1e-9);

        let mut min = WindowedMin::default();
        assert_eq!(min.update(5.0, 3), 5.0);
        assert_eq!(min.update(7.0, 3), 5.0);
        assert_eq!(min.update(6.0, 3), 5.0);
        assert_eq!(min.update(9.0, 3), 6.0);
        assert_eq!(min.update(8.0, 3), 6.0);
        assert_eq!(min.update(9.0, 3), 8.0);
    }
}
