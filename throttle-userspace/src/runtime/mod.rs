//! The daemon's runtime: the state its tasks share (the control plane, the
//! controller, readiness), the attach lifecycle, the bucket sampler and the
//! controller's scale sink. The HTTP layer serves over it; the daemon's main
//! loop starts and stops it.

mod capture;
mod events;
pub mod fleet;
mod interfaces;
mod lifecycle;
mod sampler;
mod sets;

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    time::{Duration, Instant},
};

pub use self::{
    capture::{forward_captures, wall_time, CaptureError, CaptureGuard},
    events::{forward_kernel_events, EventView, RECENT},
    interfaces::{check as check_interfaces, watch_interfaces},
    lifecycle::{attach_all, forward_ebpf_logs},
    sampler::sample_forever,
};
use crate::{control::Control, controller::ControllerHandle};

/// Everything the daemon's tasks share.
struct Shared {
    control: Arc<Mutex<Control>>,
    controller: Mutex<Option<ControllerHandle>>,
    ready: AtomicBool,
    /// The attached interfaces that are gone (deleted, or moved to another
    /// namespace) or that could not be attached again since they came
    /// back, with why not.
    missing: Mutex<std::collections::BTreeMap<String, Option<String>>>,
    started: Instant,
    sampled: Mutex<sampler::Sampled>,
    /// The writer of the set tries: one set change at a time.
    sets: Mutex<Option<Box<dyn crate::kernel::SetLoader>>>,
    events: Mutex<events::EventLog>,
    capture: Mutex<capture::Session>,
    /// Fleet mode, once joined.
    fleet: std::sync::OnceLock<Arc<fleet::Fleet>>,
}

/// A handle on the daemon's shared state; clones share it.
#[derive(Clone)]
pub struct Runtime(Arc<Shared>);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Runtime {
    #[must_use]
    pub fn new(mut control: Control) -> Self {
        let sets = Mutex::new(control.take_set_loader());
        Self(Arc::new(Shared {
            sets,
            events: Mutex::new(events::EventLog::default()),
            capture: Mutex::new(None),
            control: Arc::new(Mutex::new(control)),
            controller: Mutex::new(None),
            ready: AtomicBool::new(false),
            missing: Mutex::new(std::collections::BTreeMap::new()),
            started: Instant::now(),
            sampled: Mutex::new(sampler::Sampled::default()),
            fleet: std::sync::OnceLock::new(),
        }))
    }

    /// Hands the running controller over.
    pub fn set_controller(&self, handle: ControllerHandle) {
        *lock(&self.0.controller) = Some(handle);
    }

    #[must_use]
    pub fn controller(&self) -> Option<ControllerHandle> {
        lock(&self.0.controller).clone()
    }

    /// Every interface is attached: `/readyz` answers 200 from now on.
    pub fn set_ready(&self) {
        self.0.ready.store(true, Ordering::Release);
    }

    /// Ready: every interface was attached, and none is missing now.
    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.0.ready.load(Ordering::Acquire) && lock(&self.0.missing).is_empty()
    }

    /// Whether the program is attached to `iface` now (false while the
    /// interface is gone, until it is attached again).
    #[must_use]
    pub fn is_attached(&self, iface: &str) -> bool {
        !lock(&self.0.missing).contains_key(iface)
    }

    /// The interfaces attached to that are missing now.
    #[must_use]
    pub fn missing_interfaces(&self) -> Vec<String> {
        lock(&self.0.missing).keys().cloned().collect()
    }

    /// Runs `f` on the control plane on a blocking thread: map reads and
    /// writes are system calls, and a walk over a million buckets takes a
    /// while.
    pub async fn with_control<R, F>(&self, f: F) -> R
    where
        F: FnOnce(&mut Control) -> R + Send + 'static,
        R: Send + 'static,
    {
        let control = Arc::clone(&self.0.control);
        tokio::task::spawn_blocking(move || f(&mut lock(&control)))
            .await
            .unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()))
    }

    /// Runs `f` on the control plane on this thread (quick reads only).
    pub fn control<R>(&self, f: impl FnOnce(&mut Control) -> R) -> R {
        f(&mut lock(&self.0.control))
    }

    /// `passed` and `dropped` of the tracked buckets of each owner (a limit
    /// rule's id, or a class's limit), at the last sample.
    #[must_use]
    pub fn owner_counts(&self) -> std::collections::HashMap<u32, (u64, u64)> {
        lock(&self.0.sampled).owners.clone()
    }

    /// Sources tracked at the last sample.
    #[must_use]
    pub fn sources_tracked(&self) -> u64 {
        lock(&self.0.sampled).sources
    }

    #[must_use]
    pub fn uptime(&self) -> Duration {
        self.0.started.elapsed()
    }
}
