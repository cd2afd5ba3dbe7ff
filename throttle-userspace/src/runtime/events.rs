//! The event log: the data path's transitions (read from its ring buffer)
//! and the daemon's own events (changes through the API with who made them,
//! reloads, the controller's steps, attach and detach), each one line in the
//! log, the last [`RECENT`] kept for `GET /v1/events`, and every new one
//! sent to the live streams.

use std::{
    collections::VecDeque,
    time::{SystemTime, UNIX_EPOCH},
};

use aya::maps::{MapData, RingBuf};
use serde::Serialize;
use throttle_common::Event;
use tokio::{io::unix::AsyncFd, sync::broadcast};

use super::{lock, Runtime};

/// Events kept for `GET /v1/events`.
pub const RECENT: usize = 1_000;

/// One event, as the API and the log show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct EventView {
    /// From 1, in the order the daemon saw them.
    pub seq: u64,
    /// When it happened, milliseconds since the epoch.
    pub at_ms: u64,
    /// `drop_start`, `drop_end`, `ban_start`, `budget_dry`,
    /// `budget_recovered`, `deny_hit` (the data path's); `change`,
    /// `reload`, `controller`, `attach`, `detach` (the daemon's).
    pub kind: String,
    /// The source (or its aggregation prefix).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// Which of the class's limits (`0`..`2`, `tier:N`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<u32>,
    /// What happened, in words.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Who made a change: the API client's address, `sighup`, `controller`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
}

impl EventView {
    /// An event of `kind` with nothing else said yet.
    #[must_use]
    pub fn new(kind: &str) -> Self {
        Self {
            seq: 0,
            at_ms: 0,
            kind: kind.to_owned(),
            source: None,
            class: None,
            limit: None,
            rule: None,
            detail: None,
            by: None,
        }
    }

    #[must_use]
    pub fn detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    #[must_use]
    pub fn by(mut self, by: impl Into<String>) -> Self {
        self.by = Some(by.into());
        self
    }

    /// The event's fields after its kind, `key=value` each.
    #[must_use]
    pub fn fields(&self) -> String {
        let mut out = Vec::new();
        for (key, value) in [
            ("source", self.source.clone()),
            ("class", self.class.clone()),
            ("limit", self.limit.clone()),
            ("rule", self.rule.map(|r| r.to_string())),
            ("by", self.by.clone()),
        ] {
            if let Some(value) = value {
                out.push(format!("{key}={value}"));
            }
        }
        if let Some(detail) = &self.detail {
            out.push(format!("{detail:?}"));
        }
        out.join(" ")
    }
}

/// The events kept and the live streams.
pub(super) struct EventLog {
    seq: u64,
    recent: VecDeque<EventView>,
    live: broadcast::Sender<EventView>,
}

impl Default for EventLog {
    fn default() -> Self {
        Self { seq: 0, recent: VecDeque::with_capacity(RECENT), live: broadcast::channel(RECENT).0 }
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
}

impl Runtime {
    /// Records an event (stamped now unless it carries its own time): one
    /// log line, kept, and sent to the live streams.
    pub fn event(&self, mut event: EventView) {
        let mut log = lock(&self.0.events);
        log.seq += 1;
        event.seq = log.seq;
        if event.at_ms == 0 {
            event.at_ms = now_ms();
        }
        tracing::info!(target: "throttle::event", "{} {}", event.kind, event.fields());
        if log.recent.len() == RECENT {
            log.recent.pop_front();
        }
        log.recent.push_back(event.clone());
        // No stream listening is no error.
        let _ = log.live.send(event);
    }

    /// The last `n` events, oldest first.
    #[must_use]
    pub fn recent_events(&self, n: usize) -> Vec<EventView> {
        let log = lock(&self.0.events);
        log.recent.iter().skip(log.recent.len().saturating_sub(n)).cloned().collect()
    }

    /// Every event from now on (a receiver that falls more than
    /// [`RECENT`] behind skips what it missed).
    #[must_use]
    pub fn subscribe_events(&self) -> broadcast::Receiver<EventView> {
        lock(&self.0.events).live.subscribe()
    }

    /// The event of the data path's `event`, its owner named as the
    /// policy names it; stamped by its own clock.
    fn kernel_event(&self, event: &Event) -> EventView {
        let mut view = self.control(|c| c.event_view(event));
        let mono = crate::kernel::monotonic_ns();
        view.at_ms = now_ms().saturating_sub(mono.saturating_sub(event.at_ns) / 1_000_000);
        view
    }
}

/// Reads the records of a ring buffer of the data path (`what` names it in
/// the log) as they come, each a `T`, and hands them to `f`.
pub(super) async fn read_ring<T: bytemuck::Pod>(ring: RingBuf<MapData>, what: &str, mut f: impl FnMut(T)) {
    // SAFETY: the ring owns its map's descriptor and keeps it open for as
    // long as the AsyncFd owns the ring.
    let Ok(mut fd) = (unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }) else {
        tracing::warn!("the {what} ring cannot be read");
        return;
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() >= size_of::<T>() {
                let record: T = bytemuck::pod_read_unaligned(&item[..size_of::<T>()]);
                drop(item);
                f(record);
            }
        }
        guard.clear_ready();
    }
}

/// Reads the data path's events from its ring buffer into the log.
pub async fn forward_kernel_events(runtime: Runtime, ring: RingBuf<MapData>) {
    read_ring(ring, "event", |event: Event| {
        let view = runtime.kernel_event(&event);
        runtime.event(view);
    })
    .await;
}
