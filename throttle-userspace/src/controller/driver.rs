//! Runs a [`Controller`] in the daemon: a task that evaluates it every
//! `interval_ms`, the latency source's task, and a [`ControllerHandle`] for
//! the admin API.

use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, SystemTime},
};

use tokio::{sync::mpsc, task::AbortHandle, time::Instant};

use super::{
    probe, AdaptiveConfig, Controller, Decision, Newcomers, ParamsUpdate, State, Status, UpdateError, Usage,
};
use crate::policy::Invalid;

/// Most samples one `POST /v1/latency` may carry.
pub const MAX_PUSHED_SAMPLES: usize = 10_000;
/// Largest latency sample accepted, in milliseconds (one hour).
pub const MAX_SAMPLE_MS: f64 = 3_600_000.0;
/// Samples a latency source may have in flight to the controller.
const CHANNEL: usize = 1_024;

/// What the controller acts on: the data path, seen from the daemon.
pub trait ScaleSink: Send + Sync {
    /// The traffic's usage since the previous call.
    fn usage(&self) -> Usage;
    /// Applies `scale` to every limit it moves (the effective rates reach
    /// the kernel), and holds the sources that came during an overload to
    /// their part of it (`newcomers`; None: nobody is told apart).
    fn apply_scale(
        &self,
        scale: f64,
        newcomers: Option<Newcomers>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>>;
}

struct Shared {
    controller: Mutex<Controller>,
    sink: Arc<dyn ScaleSink>,
    start: Instant,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Controller> {
        self.controller.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }
}

/// Applies `decision` through `sink`, or reverts it when that fails.
fn apply(controller: &mut Controller, sink: &dyn ScaleSink, decision: &Decision) {
    match sink.apply_scale(decision.to, decision.newcomers) {
        Ok(()) => tracing::info!(
            from = format_args!("{:.3}", decision.from),
            to = format_args!("{:.3}", decision.to),
            newcomers = format_args!("{:.3}", decision.newcomers.map_or(1.0, |n| n.share)),
            reason = decision.reason,
            "controller changed the scale"
        ),
        Err(err) => {
            tracing::error!(
                to = format_args!("{:.3}", decision.to),
                "controller could not apply the scale, it stays at {:.3}: {err}",
                decision.from
            );
            controller.revert(decision, &err.to_string());
        }
    }
}

/// Logs a change of state (holding, adjusting, disabled) once.
fn log_state(before: State, controller: &Controller) {
    let after = controller.state();
    if before == after {
        return;
    }
    match after {
        State::Holding => tracing::warn!(reason = controller.reason(), "controller holds the scale"),
        State::Adjusting => tracing::info!("controller adjusts the scale again"),
        State::Disabled => tracing::info!("controller turned off"),
    }
}

struct Tasks(Vec<AbortHandle>);

impl Drop for Tasks {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// The daemon's and the admin API's access to a running controller. Cloning
/// is cheap; when the last clone goes, its tasks stop.
#[derive(Clone)]
pub struct ControllerHandle {
    shared: Arc<Shared>,
    _tasks: Arc<Tasks>,
}

impl std::fmt::Debug for ControllerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControllerHandle").field("scale", &self.scale()).finish_non_exhaustive()
    }
}

/// Starts the controller of `config` and its latency source, acting on
/// `sink`. Needs a Tokio runtime. The scale starts at 1.0 and is not applied
/// until it changes.
pub fn spawn(config: AdaptiveConfig, sink: Arc<dyn ScaleSink>) -> Result<ControllerHandle, Invalid> {
    let source = config.source.clone();
    let controller = Controller::new(config)?.with_epoch(SystemTime::now());
    let shared = Arc::new(Shared { controller: Mutex::new(controller), sink, start: Instant::now() });
    let (tx, rx) = mpsc::channel(CHANNEL);
    let mut tasks = vec![
        tokio::spawn(evaluate(Arc::clone(&shared))).abort_handle(),
        tokio::spawn(receive(Arc::clone(&shared), rx)).abort_handle(),
    ];
    if let Some(task) = probe::spawn_source(&source, tx) {
        tasks.push(task.abort_handle());
    }
    Ok(ControllerHandle { shared, _tasks: Arc::new(Tasks(tasks)) })
}

/// Evaluates every `interval_ms` (read again each time, so that an update
/// takes effect at once).
async fn evaluate(shared: Arc<Shared>) {
    let mut next = Instant::now();
    loop {
        let interval = Duration::from_millis(shared.lock().config().interval_ms);
        next += interval;
        let now = Instant::now();
        if next < now {
            next = now;
        }
        tokio::time::sleep_until(next).await;
        let usage = shared.sink.usage();
        let now = shared.now();
        let mut controller = shared.lock();
        let before = controller.state();
        if let Some(decision) = controller.tick(now, &usage) {
            apply(&mut controller, &*shared.sink, &decision);
        }
        log_state(before, &controller);
    }
}

/// Records the samples of the latency source.
async fn receive(shared: Arc<Shared>, mut rx: mpsc::Receiver<f64>) {
    while let Some(sample) = rx.recv().await {
        let now = shared.now();
        shared.lock().record(now, sample);
    }
}

/// Checks the samples of a `POST /v1/latency` body (`samples_ms`).
pub fn validate_samples(samples: &[f64]) -> Result<(), Invalid> {
    if samples.is_empty() {
        return Err(Invalid::new("samples_ms", "[]", "needs at least one sample"));
    }
    if samples.len() > MAX_PUSHED_SAMPLES {
        return Err(Invalid::new(
            "samples_ms",
            format!("{} samples", samples.len()),
            format!("at most {MAX_PUSHED_SAMPLES} per request"),
        ));
    }
    for (i, &ms) in samples.iter().enumerate() {
        if !(ms.is_finite() && (0.0..=MAX_SAMPLE_MS).contains(&ms)) {
            return Err(Invalid::new(
                format!("samples_ms[{i}]"),
                ms,
                format!("a latency in milliseconds between 0 and {MAX_SAMPLE_MS}"),
            ));
        }
    }
    Ok(())
}

impl ControllerHandle {
    /// What `GET /v1/controller` shows.
    #[must_use]
    pub fn status(&self) -> Status {
        let now = self.shared.now();
        self.shared.lock().status(now)
    }

    /// The current scale.
    #[must_use]
    pub fn scale(&self) -> f64 {
        self.shared.lock().scale()
    }

    /// The parameters in force (to persist them).
    #[must_use]
    pub fn config(&self) -> AdaptiveConfig {
        self.shared.lock().config().clone()
    }

    /// `PUT /v1/controller`: validates and applies `update`; turning the
    /// controller off brings the scale back to 1.0 at once. Nothing changes
    /// when it is refused.
    pub fn update(&self, update: &ParamsUpdate) -> Result<Status, UpdateError> {
        let now = self.shared.now();
        let mut controller = self.shared.lock();
        let before = controller.state();
        if let Some(decision) = controller.update(now, update)? {
            apply(&mut controller, &*self.shared.sink, &decision);
        }
        log_state(before, &controller);
        tracing::info!(
            enabled = controller.config().enabled,
            algorithm = %controller.config().algorithm,
            "controller parameters changed"
        );
        Ok(controller.status(now))
    }

    /// `POST /v1/latency`: validates and records `samples` (milliseconds);
    /// returns how many were taken.
    pub fn push_samples(&self, samples: &[f64]) -> Result<usize, Invalid> {
        validate_samples(samples)?;
        let now = self.shared.now();
        self.shared.lock().record_all(now, samples);
        Ok(samples.len())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;
    use crate::controller::config::SourceConfig;

    #[derive(Default)]
    struct Sink {
        applied: Mutex<Vec<f64>>,
        fail: std::sync::atomic::AtomicBool,
        drops: AtomicU64,
    }

    impl ScaleSink for Sink {
        fn usage(&self) -> Usage {
            Usage {
                over_limit_drops: self.drops.load(Ordering::Relaxed),
                peak_ratio: Some(1.0),
                ..Usage::default()
            }
        }

        fn apply_scale(
            &self,
            scale: f64,
            _newcomers: Option<Newcomers>,
        ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
            if self.fail.load(Ordering::Relaxed) {
                return Err("map update refused".into());
            }
            self.applied.lock().unwrap().push(scale);
            Ok(())
        }
    }

    fn config() -> AdaptiveConfig {
        AdaptiveConfig {
            interval_ms: 100,
            window_ms: 1_000,
            target_ms: Some(50.0),
            source: SourceConfig::Push,
            ..AdaptiveConfig::default()
        }
    }

    #[test]
    fn pushed_samples_are_validated_with_their_index() {
        for (samples, needle) in [
            (vec![], "`samples_ms` = []"),
            (vec![1.0, -1.0], "`samples_ms[1]` = -1"),
            (vec![f64::NAN], "`samples_ms[0]` = NaN"),
            (vec![1.0, 2.0, f64::INFINITY], "`samples_ms[2]` = inf"),
            (vec![4e6], "`samples_ms[0]` = 4000000"),
            (vec![1.0; MAX_PUSHED_SAMPLES + 1], "at most 10000"),
        ] {
            let err = validate_samples(&samples).expect_err(needle).to_string();
            assert!(err.contains(needle), "{err:?} lacks {needle:?}");
        }
        validate_samples(&[0.0, 12.5, MAX_SAMPLE_MS]).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_driver_moves_applies_and_reverts_the_scale() {
        let sink = Arc::new(Sink::default());
        sink.drops.store(10, Ordering::Relaxed);
        let handle = spawn(config(), Arc::clone(&sink) as Arc<dyn ScaleSink>).unwrap();
        assert!(handle.push_samples(&[]).is_err());
        // Slow samples every 100 ms: the scale goes down.
        for _ in 0..10 {
            handle.push_samples(&[500.0; 20]).unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let status = handle.status();
        assert!(status.scale < 0.5, "{status:?}");
        assert_eq!(status.state, State::Adjusting);
        let applied = sink.applied.lock().unwrap().clone();
        assert!(!applied.is_empty());
        assert!((applied.last().unwrap() - status.scale).abs() < f64::EPSILON);

        // Fast again, but the sink refuses: the scale stays.
        sink.fail.store(true, Ordering::Relaxed);
        let before = handle.scale();
        for _ in 0..8 {
            handle.push_samples(&[1.0; 20]).unwrap();
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!((handle.scale() - before).abs() < f64::EPSILON);
        let error = handle.status().apply_error.unwrap_or_default();
        assert!(error.contains("map update refused"), "{error:?}");
        sink.fail.store(false, Ordering::Relaxed);

        // Turned off: back to 1.0 at once.
        let off: ParamsUpdate = serde_json::from_str(r#"{"enabled": false}"#).unwrap();
        let status = handle.update(&off).unwrap();
        assert!((status.scale - 1.0).abs() < f64::EPSILON);
        assert_eq!(status.state, State::Disabled);
        assert!((sink.applied.lock().unwrap().last().unwrap() - 1.0).abs() < f64::EPSILON);

        // A bad update changes nothing.
        let bad: ParamsUpdate = serde_json::from_str(r#"{"enabled": true, "floor": 2}"#).unwrap();
        assert!(handle.update(&bad).unwrap_err().to_string().contains("`floor` = 2"));
        assert!(!handle.status().enabled);
    }

    #[tokio::test(start_paused = true)]
    async fn without_samples_it_holds() {
        let sink = Arc::new(Sink::default());
        let handle = spawn(config(), Arc::clone(&sink) as Arc<dyn ScaleSink>).unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let status = handle.status();
        assert_eq!(status.state, State::Holding);
        assert!(status.reason.contains("no latency sample"), "{}", status.reason);
        assert!((status.scale - 1.0).abs() < f64::EPSILON);
        assert!(sink.applied.lock().unwrap().is_empty());
    }
}
