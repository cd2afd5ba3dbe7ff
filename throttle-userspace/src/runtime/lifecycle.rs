//! Attaching to the configured interfaces at start, and the program's own
//! log records.

use tokio::io::unix::AsyncFd;

use super::{EventView, Runtime};
use crate::kernel::{KernelError, ProgramLogger, XdpMode};

/// Attaches to every interface (taking over pinned links), then detaches
/// what a previous daemon attached to interfaces no longer named.
pub async fn attach_all(runtime: &Runtime, interfaces: &[String], mode: XdpMode) -> Result<(), KernelError> {
    for iface in interfaces {
        let iface = iface.clone();
        let attachment = runtime.with_control(move |c| c.attach(&iface, mode)).await?;
        tracing::info!(
            iface = attachment.iface,
            mode = attachment.mode,
            adopted = attachment.adopted,
            "attached"
        );
        let how = if attachment.adopted { "took over its pinned link" } else { "attached" };
        runtime.event(
            EventView::new("attach").detail(format!("{}: {how}, {} mode", attachment.iface, attachment.mode)),
        );
    }
    let keep = interfaces.to_vec();
    let released = runtime.with_control(move |c| c.release_others(&keep)).await?;
    for iface in released {
        tracing::info!(iface, "detached: no longer configured");
        runtime.event(EventView::new("detach").detail(format!("{iface}: no longer configured")));
    }
    Ok(())
}

/// Forwards the XDP program's log records (rare events) to tracing.
pub async fn forward_ebpf_logs(logger: ProgramLogger) {
    // SAFETY: the logger owns its ring buffer's descriptor and keeps it open
    // for as long as the AsyncFd owns the logger.
    let Ok(mut fd) = (unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) })
    else {
        return;
    };
    loop {
        let Ok(mut guard) = fd.readable_mut().await else {
            return;
        };
        guard.get_inner_mut().flush();
        guard.clear_ready();
    }
}
