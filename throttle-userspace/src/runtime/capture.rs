//! Captures of dropped packets: one at a time, started by `GET
//! /v1/capture`, which streams what the data path copies as a pcap file
//! until it has the packets asked for or its client goes away.

use std::time::{Duration, SystemTime};

use aya::maps::{MapData, RingBuf};
use throttle_common::{CaptureConfig, Captured};
use tokio::sync::mpsc;

use super::{lock, EventView, Runtime};
use crate::control::ChangeError;

/// Packets a capture's stream may fall behind by before the newest are
/// left out.
const BACKLOG: usize = 4_096;

/// A running capture: where its packets go.
pub(super) type Session = Option<mpsc::Sender<Captured>>;

/// Stops the capture it belongs to when dropped (the stream ended, or its
/// client went away).
pub struct CaptureGuard(Runtime);

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        self.0.stop_capture();
    }
}

/// Why a capture did not start.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("a capture runs already: one at a time")]
    Busy,
    #[error(transparent)]
    Change(#[from] ChangeError),
}

impl Runtime {
    /// Starts a capture of what `config` asks for: the packets, and a guard
    /// that stops it when dropped.
    pub fn start_capture(
        &self,
        config: CaptureConfig,
    ) -> Result<(mpsc::Receiver<Captured>, CaptureGuard), CaptureError> {
        let mut session = lock(&self.0.capture);
        if session.is_some() {
            return Err(CaptureError::Busy);
        }
        let (tx, rx) = mpsc::channel(BACKLOG);
        self.control(|c| c.set_capture(Some(config))).map_err(ChangeError::from)?;
        *session = Some(tx);
        drop(session);
        self.event(EventView::new("capture").detail("started"));
        Ok((rx, CaptureGuard(self.clone())))
    }

    fn stop_capture(&self) {
        if lock(&self.0.capture).take().is_none() {
            return;
        }
        if let Err(err) = self.control(|c| c.set_capture(None)) {
            tracing::error!("the capture could not be stopped in the data path: {err}");
        }
        self.event(EventView::new("capture").detail("stopped"));
    }
}

/// Hands what the data path captured to the capture running.
pub async fn forward_captures(runtime: Runtime, ring: RingBuf<MapData>) {
    super::events::read_ring(ring, "capture", |packet: Captured| {
        if let Some(tx) = lock(&runtime.0.capture).as_ref() {
            // A stream that lags behind loses the newest.
            let _ = tx.try_send(packet);
        }
    })
    .await;
}

/// The wall-clock time of a monotonic instant `at_ns`.
#[must_use]
pub fn wall_time(at_ns: u64) -> Duration {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    now.saturating_sub(Duration::from_nanos(crate::kernel::monotonic_ns().saturating_sub(at_ns)))
}
