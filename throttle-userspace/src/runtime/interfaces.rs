//! Watching the interfaces attached to. The kernel detaches an XDP link
//! whose device goes away (deleted, or moved to another namespace) and
//! attaches nothing to a new device of the same name, so without a watch
//! an interface made again would pass every packet while the daemon says
//! it is attached. The watch reports the gap (`/readyz` 503, the status and
//! `throttle_interface_attached`, one log line and one event each way) and
//! attaches to the new interface in the mode the old one had; the buckets
//! live in the maps and carry on.
//!
//! It wakes on the kernel's link messages (`RTM_NEWLINK`, `RTM_DELLINK` on
//! a `NETLINK_ROUTE` socket in the `RTMGRP_LINK` group) and every
//! [`CHECK_EVERY`] besides, in case a message was lost (a full socket
//! buffer drops them): either way it compares each attachment with the
//! interface of its name now ([`crate::kernel::Kernel::presence`]).

use std::{
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

use tokio::io::unix::AsyncFd;

use super::{lock, EventView, Runtime};
use crate::kernel::Presence;

/// How often the attachments are checked when no link message came.
pub const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Watches the attached interfaces until the task is aborted.
pub async fn watch_interfaces(runtime: Runtime) {
    let events = match LinkEvents::open() {
        Ok(events) => Some(events),
        Err(err) => {
            tracing::warn!(
                "no link messages from the kernel ({err}): interfaces are checked every {CHECK_EVERY:?} only"
            );
            None
        }
    };
    let mut tick = tokio::time::interval(CHECK_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            changed = wait(events.as_ref()) => {
                if let Err(err) = changed {
                    tracing::warn!("reading link messages: {err}; checking every {CHECK_EVERY:?} only");
                    return Box::pin(checks_only(runtime, tick)).await;
                }
            }
        }
        check(&runtime).await;
    }
}

async fn checks_only(runtime: Runtime, mut tick: tokio::time::Interval) {
    loop {
        tick.tick().await;
        check(&runtime).await;
    }
}

async fn wait(events: Option<&LinkEvents>) -> io::Result<()> {
    match events {
        Some(events) => events.changed().await,
        None => std::future::pending().await,
    }
}

/// Compares every attachment with its interface, reports what went and
/// attaches again to what came back.
pub async fn check(runtime: &Runtime) {
    let presence = runtime.with_control(|c| c.presence()).await;
    for (iface, presence) in presence {
        match presence {
            Presence::Attached => {
                // The same device back (moved out of the namespace and in
                // again), with the program still on it.
                if lock(&runtime.0.missing).remove(&iface).is_some() {
                    tracing::info!(iface, "the interface is back, the program still attached");
                    runtime.event(EventView::new("attach").detail(format!("{iface}: back, still attached")));
                }
            }
            Presence::Missing => {
                if runtime.note_missing(&iface, None) {
                    tracing::warn!(
                        iface,
                        "the interface is gone: nothing is metered on it until one of that name comes back"
                    );
                    runtime.event(EventView::new("detach").detail(format!("{iface}: the interface is gone")));
                }
            }
            Presence::Returned => {
                let name = iface.clone();
                match runtime.with_control(move |c| c.reattach(&name)).await {
                    Ok(attachment) => {
                        lock(&runtime.0.missing).remove(&iface);
                        tracing::info!(
                            iface,
                            mode = attachment.mode,
                            "the interface is back: attached again"
                        );
                        runtime.event(
                            EventView::new("attach")
                                .detail(format!("{iface}: back, attached again in {} mode", attachment.mode)),
                        );
                    }
                    Err(err) => {
                        let err = err.to_string();
                        if runtime.note_missing(&iface, Some(err.clone())) {
                            tracing::warn!(
                                iface,
                                "the interface is back but could not be attached again: {err}; trying again"
                            );
                        }
                    }
                }
            }
        }
    }
}

impl Runtime {
    /// Notes `iface` as missing (`why`: the error of the last attempt to
    /// attach again). True when that is news: it was not missing, or for
    /// another reason.
    fn note_missing(&self, iface: &str, why: Option<String>) -> bool {
        let mut missing = lock(&self.0.missing);
        if missing.get(iface) == Some(&why) {
            return false;
        }
        missing.insert(iface.to_owned(), why);
        true
    }
}

/// A `NETLINK_ROUTE` socket subscribed to the link group of this network
/// namespace.
struct LinkEvents(AsyncFd<OwnedFd>);

impl LinkEvents {
    fn open() -> io::Result<Self> {
        // SAFETY: a plain socket(2); the descriptor is owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_ROUTE,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: socket(2) returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain data; all zeroes is a valid value.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = u16::try_from(libc::AF_NETLINK).expect("a small constant");
        addr.nl_groups = u32::try_from(libc::RTMGRP_LINK).expect("a small constant");
        let len = u32::try_from(size_of::<libc::sockaddr_nl>()).expect("a small struct");
        // SAFETY: `addr` is a sockaddr_nl of `len` bytes, alive for the call.
        let rc = unsafe { libc::bind(fd.as_raw_fd(), std::ptr::from_ref(&addr).cast(), len) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the AsyncFd owns the descriptor and keeps it open for as
        // long as it is registered.
        Ok(Self(unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }?))
    }

    /// Waits for link messages and reads every one there is. The group
    /// carries only link messages, each a reason to check, so they are not
    /// parsed; a lost one (`ENOBUFS`) is a reason too.
    async fn changed(&self) -> io::Result<()> {
        let mut buf = vec![0u8; 32 * 1024];
        loop {
            let mut guard = self.0.readable().await?;
            let mut any = false;
            loop {
                // SAFETY: `buf` is writable for its length for the call.
                let n = unsafe {
                    libc::recv(
                        self.0.get_ref().as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        libc::MSG_DONTWAIT,
                    )
                };
                if n >= 0 {
                    any = true;
                    continue;
                }
                let err = io::Error::last_os_error();
                match err.raw_os_error() {
                    Some(libc::EAGAIN) => {
                        guard.clear_ready();
                        break;
                    }
                    Some(libc::ENOBUFS) => any = true,
                    Some(libc::EINTR) => {}
                    _ => return Err(err),
                }
            }
            if any {
                return Ok(());
            }
        }
    }
}
