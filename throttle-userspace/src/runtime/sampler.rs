//! The bucket sampler: counts the tracked sources for the status, measures
//! each source's rate under the limits the controller moves (which its
//! `fair_share` mode shares the capacity out by) and how close the busiest
//! runs to its limit (which the app-limited guard needs); and the
//! controller's scale sink.

use std::{collections::HashMap, time::Duration};

use throttle_common::{reason, table, BucketKey};
use tokio::time::Instant;

use super::{lock, Runtime};
use crate::{
    controller::{
        fair::{LimitUsage, SourceRate},
        Newcomers, ScaleSink, Usage,
    },
    kernel::NewcomerShare,
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
    /// `passed` and `dropped` of every bucket at the previous sample.
    counts: HashMap<BucketKey, (u64, u64)>,
    peak_ratio: Option<f64>,
    /// The rates of the sources of every limit the controller moves, over
    /// the interval between the last two samples.
    limits: Vec<LimitUsage>,
    /// The data path's clock at the last sample, in units of the buckets'
    /// `born`.
    born_clock: Option<u32>,
    /// `passed` and `dropped` summed over the tracked buckets of each owner
    /// (the `rule` word of their keys: a limit rule, a class's limit).
    pub(super) owners: HashMap<u32, (u64, u64)>,
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
    /// Walks the buckets once: counts them and measures the rate of each
    /// source under a limit the controller moves, against its configured
    /// rate. Blocking.
    pub fn sample(&self) {
        let now = std::time::Instant::now();
        // Neither lock is held during the walk: `/v1/status` reads what the
        // last sample saw, and the API's handlers and the controller take
        // the control plane, while a walk over a million buckets runs.
        let (elapsed, previous) = {
            let mut sampled = lock(&self.0.sampled);
            (sampled.at.map(|at| now.duration_since(at).as_secs_f64()), std::mem::take(&mut sampled.counts))
        };
        let mut counts = HashMap::with_capacity(previous.len());
        let mut peak: Option<f64> = None;
        let mut sources = 0u64;
        let mut owners: HashMap<u32, (u64, u64)> = HashMap::new();
        let (walk, scaled, ticks, capacity) = self.control(|control| {
            (
                control.bucket_walk(),
                control.scaled_limits(),
                control.kernel().now_ticks(),
                control.kernel().max_sources(),
            )
        });
        // The limits in a stable order (by the `rule` word), each with its
        // sources.
        let mut order: Vec<u32> = scaled.keys().copied().collect();
        order.sort_unstable();
        let mut by_rule: HashMap<u32, LimitUsage> = scaled
            .iter()
            .map(|(&rule, (name, rate))| {
                (rule, LimitUsage { name: name.clone(), base: rate.per_sec(), sources: Vec::new() })
            })
            .collect();
        walk(&mut |key, bucket| {
            // A source counts once, and only when the walk had not met it
            // yet: one that moved to a slot further on while the walk went
            // by is met twice.
            if counts.insert(*key, (bucket.passed, bucket.dropped)).is_some() {
                return;
            }
            sources += 1;
            let owner = owners.entry(key.rule).or_default();
            owner.0 += bucket.passed;
            owner.1 += bucket.dropped;
            let (Some(secs), Some(limit)) = (elapsed, by_rule.get_mut(&key.rule)) else {
                return;
            };
            if secs <= 0.0 {
                return;
            }
            // A bucket not there at the previous sample was made since.
            let (passed, dropped) = previous.get(key).copied().unwrap_or_default();
            #[expect(clippy::cast_precision_loss, reason = "packet counts over one interval")]
            let (admitted, over) = (
                bucket.passed.saturating_sub(passed) as f64 / secs,
                bucket.dropped.saturating_sub(dropped) as f64 / secs,
            );
            limit.sources.push(SourceRate { offered: admitted + over, admitted, born: bucket.born });
            if limit.base > 0.0 {
                let ratio = admitted / limit.base;
                peak = Some(peak.map_or(ratio, |p: f64| p.max(ratio)));
            }
        });
        let limits = if elapsed.is_some() {
            order.iter().filter_map(|rule| by_rule.remove(rule)).collect()
        } else {
            Vec::new()
        };
        let mut sampled = lock(&self.0.sampled);
        sampled.counts = counts;
        // The walk is no snapshot: under churn, a source that left a slot
        // behind it and one that took a slot ahead of it are both met, and
        // the count can pass the table's capacity, which it cannot hold.
        sampled.sources = sources.min(u64::from(capacity));
        sampled.owners = owners;
        sampled.peak_ratio = if elapsed.is_some() { Some(peak.unwrap_or(0.0)) } else { None };
        sampled.limits = limits;
        sampled.born_clock = Some(table::born_of(ticks));
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
        Usage {
            over_limit_drops: delta,
            peak_ratio: sampled.peak_ratio,
            limits: sampled.limits.clone(),
            born_clock: sampled.born_clock,
        }
    }

    fn apply_scale(
        &self,
        scale: f64,
        newcomers: Option<Newcomers>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        let share = newcomers.map_or(NewcomerShare::default(), |n| NewcomerShare {
            known_before: n.known_before,
            share: share_q16(n.share),
        });
        let before = self.control(|c| c.scale());
        self.control(|c| {
            c.set_scale(scale)?;
            c.set_newcomers(share)
        })?;
        let held = newcomers.map_or(String::new(), |n| format!(", newcomers {:.3} of it", n.share));
        self.event(
            super::EventView::new("controller")
                .by("controller")
                .detail(format!("scale {before:.3} -> {scale:.3}{held}")),
        );
        Ok(())
    }
}

/// A share of a limit (0 to 1) in the data path's 1/`SHARE_ONE`ths, at
/// least one of them.
fn share_q16(share: f64) -> u32 {
    #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "clamped to 1..=SHARE_ONE")]
    let q16 = (share * f64::from(table::SHARE_ONE)).round().clamp(1.0, f64::from(table::SHARE_ONE)) as u32;
    q16
}

#[cfg(test)]
mod tests {
    use throttle_common::{class_owner, Bucket, CLASS_OWNER};

    use super::*;
    use crate::{
        control::{fake::FakeKernel, Control},
        kernel::bucket_key,
        policy::{Class, Policy, Rate, RuleSpec},
    };

    fn classes() -> Vec<Class> {
        crate::policy::classes_from_toml(
            r#"
            [[classes]]
            name = "dns"
            match = [{ proto = "udp", ports = "53" }]
            limits = [{ rate = "50/second" }]
            [[classes]]
            name = "web"
            match = [{ proto = "tcp", ports = "443" }]
            limits = [{ rate = "20/second" }, { rate = "600/minute" }]
            adaptive = true
            "#,
        )
        .unwrap()
    }

    fn set(kernel: &FakeKernel, key: BucketKey, passed: u64, dropped: u64) {
        let mut state = kernel.0.lock().unwrap();
        state.buckets.retain(|(k, _)| *k != key);
        state.buckets.push((key, Bucket { tat: 1, passed, dropped, ..Bucket::default() }));
    }

    #[test]
    fn every_scaled_limit_is_measured_at_its_own_rate_and_the_others_are_left_out() {
        let kernel = FakeKernel::default();
        let rule = RuleSpec {
            rate: Some(Rate::per_second(40)),
            ..RuleSpec::new("198.51.100.0/24".parse().unwrap(), crate::policy::Action::Limit)
        };
        let policy = Policy { classes: classes(), rules: vec![rule], ..Policy::default() };
        let control = Control::new(Box::new(kernel.clone()), policy, None).unwrap();
        let scaled = control.scaled_limits();
        let runtime = Runtime::new(control);
        let rule_id = runtime.control(|c| c.rules().first().map(|r| r.id)).unwrap();
        let web = scaled.iter().find(|(_, (name, _))| name == "web").map(|(&rule, _)| rule).unwrap();
        assert_eq!(scaled.len(), 3, "default, the rule and web, not dns: {scaled:?}");
        // The other class's first limit: not adaptive, not scaled.
        let web_id = (web & !CLASS_OWNER) >> 8;
        let dns = class_owner(if web_id == 1 { 2 } else { 1 }, 0);
        let addr = "192.0.2.1".parse().unwrap();
        let keys = [
            bucket_key(addr, 0, 32, 64),
            bucket_key(addr, web, 32, 64),
            bucket_key(addr, web | 1, 32, 64),
            bucket_key(addr, dns, 32, 64),
            bucket_key("198.51.100.7".parse().unwrap(), rule_id, 32, 64),
        ];
        for key in keys {
            set(&kernel, key, 0, 0);
        }
        runtime.sample();
        assert!(runtime.usage().limits.is_empty(), "one walk measures no rate yet");
        std::thread::sleep(Duration::from_millis(50));
        set(&kernel, keys[0], 10, 0);
        set(&kernel, keys[1], 30, 90);
        set(&kernel, keys[2], 30, 0);
        set(&kernel, keys[3], 500, 500);
        set(&kernel, keys[4], 20, 20);
        runtime.sample();
        let usage = runtime.usage();
        let names: Vec<&str> = usage.limits.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names.len(), 3, "{names:?}");
        let of = |name: &str| usage.limits.iter().find(|l| l.name == name).unwrap();
        assert!((of("web").base - 20.0).abs() < f64::EPSILON, "the class's rate, not the default's");
        assert!((of(&format!("rule {rule_id}")).base - 40.0).abs() < f64::EPSILON);
        let default = crate::policy::Limits::default().rate.per_sec();
        assert!((of("default").base - default).abs() < f64::EPSILON);
        // One source under web: its first limit's bucket only.
        let web = &of("web").sources;
        assert_eq!(web.len(), 1);
        assert!((web[0].offered / web[0].admitted - 4.0).abs() < 1e-9, "{web:?}");
        // The peak goes by each limit's own rate: web's source at 30 per
        // interval against 20/s is the busiest, not dns's 500.
        let peak = usage.peak_ratio.unwrap();
        assert!((peak - web[0].admitted / 20.0).abs() < 1e-9, "{peak}");
    }
}
