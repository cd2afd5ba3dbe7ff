//! Serving the admin API: HTTP/1.1 over TCP, with limits that keep it
//! answering while connections are held open against it.
//!
//! Without them, a client that opens connections and never finishes a
//! request holds a descriptor each, for ever: enough of them exhaust the
//! daemon's descriptors and nobody else gets an answer. Here:
//!
//! - a request's head must arrive within [`HEADER_READ_TIMEOUT`] of the
//!   connection being ready for it (a new connection, or one kept alive
//!   after a response), and its body must never pause for longer than
//!   [`BODY_READ_TIMEOUT`];
//! - one peer holds at most [`MAX_CONNECTIONS_PER_PEER`] connections (an
//!   IPv4 address, or an IPv6 /64); more from it are closed at once;
//! - all peers together hold at most [`connection_cap`] connections; a new
//!   one beyond that takes the place of the oldest connection that has no
//!   request in progress, or is closed at once when every one has.

use std::{
    collections::{BTreeMap, HashMap},
    convert::Infallible,
    future::Future,
    net::{IpAddr, Ipv6Addr, SocketAddr},
    pin::{pin, Pin},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    body::{Body, Bytes, HttpBody},
    extract::{ConnectInfo, Request},
    Router,
};
use http_body_util::BodyExt as _;
use hyper::{
    body::{Frame, Incoming, SizeHint},
    server::conn::http1,
};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{watch, Notify},
    task::JoinSet,
};
use tower::ServiceExt as _;

/// How long a connection may take to send a request's head (the request
/// line and the headers), from when it is accepted or has had its last
/// response; then it is closed. An idle kept-alive connection counts.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request's body may go without sending anything, from its head
/// or from its last bytes; then the request fails. A gap, not a total: a
/// set's body may be 64 MiB, and takes as long as it takes while it flows.
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections held at once, at most, from all peers together.
pub const MAX_CONNECTIONS: usize = 512;
/// Connections held at once, at most, from one peer: an IPv4 address, or an
/// IPv6 /64 (what one host usually has to choose from).
pub const MAX_CONNECTIONS_PER_PEER: usize = 32;
/// The prefix length an IPv6 peer is counted by.
const IPV6_PEER_PREFIX: u32 = 64;
/// How long to wait after a failed `accept` (out of descriptors, mostly)
/// before the next.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Connections refused because their peer held its share, since start.
static REFUSED_PEER: AtomicU64 = AtomicU64::new(0);
/// Connections refused because every slot had a request in progress.
static REFUSED_FULL: AtomicU64 = AtomicU64::new(0);
/// Idle connections closed to make room for a new one.
static EVICTED: AtomicU64 = AtomicU64::new(0);

/// What the connection limits have done since the daemon started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionStats {
    /// New connections closed because their peer held
    /// [`MAX_CONNECTIONS_PER_PEER`].
    pub refused_peer: u64,
    /// New connections closed because every slot had a request in progress.
    pub refused_full: u64,
    /// Idle connections closed to make room for a new one.
    pub evicted: u64,
}

/// The counts of [`ConnectionStats`].
#[must_use]
pub fn connection_stats() -> ConnectionStats {
    ConnectionStats {
        refused_peer: REFUSED_PEER.load(Ordering::Relaxed),
        refused_full: REFUSED_FULL.load(Ordering::Relaxed),
        evicted: EVICTED.load(Ordering::Relaxed),
    }
}

/// The connection cap under a descriptor limit of `nofile`: at most
/// [`MAX_CONNECTIONS`], and at most half the limit, so the maps, the rings,
/// the state file and the fleet's client always have descriptors left.
#[must_use]
pub fn connection_cap(nofile: u64) -> usize {
    usize::try_from(nofile / 2).unwrap_or(usize::MAX).clamp(1, MAX_CONNECTIONS)
}

/// What one peer is counted as: its IPv4 address (an IPv4-mapped IPv6
/// address as that), or its IPv6 /64.
#[must_use]
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or_else(
            || IpAddr::V6(Ipv6Addr::from(u128::from(v6) & (u128::MAX << (128 - IPV6_PEER_PREFIX)))),
            IpAddr::V4,
        ),
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    /// Its peer holds its share already.
    Peer,
    /// Every slot has a request in progress.
    Full,
}

/// One connection held.
#[derive(Debug)]
struct Entry {
    peer: IpAddr,
    /// Requests in progress (their responses not yet sent in full).
    busy: usize,
    /// Notified when the connection must close to make room.
    evict: Arc<Notify>,
}

#[derive(Debug, Default)]
struct Table {
    next_id: u64,
    /// By id, so in the order they were accepted: the first idle is the
    /// oldest.
    open: BTreeMap<u64, Entry>,
    peers: HashMap<IpAddr, usize>,
}

impl Table {
    fn remove(&mut self, id: u64) -> Option<Entry> {
        let entry = self.open.remove(&id)?;
        if let Some(n) = self.peers.get_mut(&entry.peer) {
            *n -= 1;
            if *n == 0 {
                self.peers.remove(&entry.peer);
            }
        }
        Some(entry)
    }
}

/// The connections held, against the caps.
#[derive(Debug)]
struct Slots {
    cap: usize,
    per_peer: usize,
    table: Mutex<Table>,
}

/// A connection's place among the [`Slots`], given back on drop.
#[derive(Debug)]
struct Slot {
    slots: Arc<Slots>,
    id: u64,
    evict: Arc<Notify>,
}

/// A request in progress on a [`Slot`]'s connection, until dropped.
#[derive(Debug)]
struct Busy {
    slots: Arc<Slots>,
    id: u64,
}

impl Slots {
    fn new(cap: usize, per_peer: usize) -> Arc<Self> {
        Arc::new(Self { cap, per_peer, table: Mutex::new(Table::default()) })
    }

    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a new connection from `peer`, making room by evicting the
    /// oldest idle connection when all are taken.
    fn admit(self: &Arc<Self>, peer: IpAddr) -> Result<Slot, Refused> {
        let peer = peer_key(peer);
        let mut table = self.table();
        if table.peers.get(&peer).copied().unwrap_or(0) >= self.per_peer {
            return Err(Refused::Peer);
        }
        if table.open.len() >= self.cap {
            let idle = table.open.iter().find(|(_, entry)| entry.busy == 0).map(|(&id, _)| id);
            let evicted = idle.and_then(|id| table.remove(id)).ok_or(Refused::Full)?;
            evicted.evict.notify_one();
            EVICTED.fetch_add(1, Ordering::Relaxed);
        }
        let id = table.next_id;
        table.next_id += 1;
        let evict = Arc::new(Notify::new());
        table.open.insert(id, Entry { peer, busy: 0, evict: Arc::clone(&evict) });
        *table.peers.entry(peer).or_default() += 1;
        Ok(Slot { slots: Arc::clone(self), id, evict })
    }

    #[cfg(test)]
    fn held(&self) -> usize {
        self.table().open.len()
    }
}

impl Slot {
    /// Marks a request in progress on this connection: it is not evicted
    /// until the [`Busy`] drops.
    fn busy(&self) -> Busy {
        if let Some(entry) = self.slots.table().open.get_mut(&self.id) {
            entry.busy += 1;
        }
        Busy { slots: Arc::clone(&self.slots), id: self.id }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.table().remove(self.id);
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        if let Some(entry) = self.slots.table().open.get_mut(&self.id) {
            entry.busy -= 1;
        }
    }
}

/// A request body that fails once [`BODY_READ_TIMEOUT`] passes without a
/// frame.
struct TimedBody {
    inner: Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

/// The error of a body that did not arrive in time.
#[derive(Debug, thiserror::Error)]
#[error("the request body sent nothing for {BODY_READ_TIMEOUT:?}")]
struct BodyTimeout;

impl HttpBody for TimedBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            if matches!(frame, Some(Ok(_))) {
                let next = tokio::time::Instant::now() + BODY_READ_TIMEOUT;
                self.deadline.as_mut().reset(next);
            }
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        if self.deadline.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Some(Err(BodyTimeout.into())));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Serves `router` on `listener` until `stop` turns true, holding at most
/// `cap` connections (see [`connection_cap`]); then asks every connection to
/// finish its response and close, and returns once all have.
pub async fn serve(listener: TcpListener, router: Router, cap: usize, stop: watch::Receiver<bool>) {
    let slots = Slots::new(cap, MAX_CONNECTIONS_PER_PEER);
    let mut connections = JoinSet::new();
    let mut failing = false;
    let mut stopped = stop.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = stopped.wait_for(|stop| *stop) => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        match accepted {
            Ok((stream, peer)) => {
                if failing {
                    tracing::info!("admin API: accepting connections again");
                    failing = false;
                }
                match slots.admit(peer.ip()) {
                    Ok(slot) => {
                        connections.spawn(connection(stream, peer, router.clone(), slot, stop.clone()));
                    }
                    // Closed as it drops.
                    Err(Refused::Peer) => _ = REFUSED_PEER.fetch_add(1, Ordering::Relaxed),
                    Err(Refused::Full) => _ = REFUSED_FULL.fetch_add(1, Ordering::Relaxed),
                }
            }
            Err(err) => {
                if !failing {
                    tracing::warn!("admin API: cannot accept connections ({err}); retrying");
                    failing = true;
                }
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
    drop(listener);
    while connections.join_next().await.is_some() {}
}

/// Serves one connection until it closes, is evicted or the server stops.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    slot: Slot,
    mut stop: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let evict = Arc::clone(&slot.evict);
    let slot = Arc::new(slot);
    let service = hyper::service::service_fn(move |request: hyper::Request<Incoming>| {
        let busy = slot.busy();
        let router = router.clone();
        async move {
            let (mut parts, body) = request.into_parts();
            parts.extensions.insert(ConnectInfo(peer));
            let deadline = Box::pin(tokio::time::sleep(BODY_READ_TIMEOUT));
            let request = Request::from_parts(parts, Body::new(TimedBody { inner: body, deadline }));
            let response = router.oneshot(request).await?;
            // Busy until the whole response is sent: a stream (`/v1/events`)
            // is never evicted.
            Ok::<_, Infallible>(response.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _ = &busy;
                    frame
                }))
            }))
        }
    });
    let mut conn = pin!(http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(stream), service));
    tokio::select! {
        _ = conn.as_mut() => return,
        // Dropped: the socket closes.
        () = evict.notified() => return,
        _ = stop.wait_for(|stop| *stop) => {}
    }
    conn.as_mut().graceful_shutdown();
    let _ = conn.await;
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    use axum::{routing::post, Router};
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::{TcpListener, TcpStream},
        sync::watch,
        time::Instant,
    };

    use super::{
        connection_cap, peer_key, serve, Refused, Slots, BODY_READ_TIMEOUT, HEADER_READ_TIMEOUT,
        MAX_CONNECTIONS,
    };

    /// A server of one route on loopback; stopped when the sender drops.
    async fn server() -> (SocketAddr, watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router =
            Router::new().route("/", post(|body: axum::body::Bytes| async move { body.len().to_string() }));
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(serve(listener, router, 8, stopped));
        (addr, stop)
    }

    /// Everything the server sends until it closes the connection.
    async fn until_closed(stream: &mut TcpStream) -> String {
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer).await;
        String::from_utf8_lossy(&answer).into_owned()
    }

    // The clock is paused: it jumps to the next timer whenever the runtime
    // has nothing else to do, so these take no real time.
    #[tokio::test(start_paused = true)]
    async fn an_incomplete_head_is_closed_after_the_header_timeout() {
        let (addr, _stop) = server().await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let sent = Instant::now();
        let answer = until_closed(&mut stream).await;
        // Taken after the connection was accepted: a second's slack.
        assert!(
            sent.elapsed() + std::time::Duration::from_secs(1) >= HEADER_READ_TIMEOUT,
            "{:?}",
            sent.elapsed()
        );
        assert!(!answer.contains("200 OK"), "{answer}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_fails_after_the_body_timeout() {
        let (addr, _stop) = server().await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream.write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n12").await.unwrap();
        let sent = Instant::now();
        let answer = until_closed(&mut stream).await;
        assert!(sent.elapsed() >= BODY_READ_TIMEOUT, "{:?}", sent.elapsed());
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_complete_request_is_answered() {
        let (addr, _stop) = server().await;
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nConnection: close\r\n\r\n12")
            .await
            .unwrap();
        let answer = until_closed(&mut stream).await;
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("\r\n\r\n2"), "{answer}");
    }

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    #[test]
    fn one_peer_gets_its_share_and_no_more() {
        let slots = Slots::new(10, 3);
        let held: Vec<_> = (0..3).map(|_| slots.admit(v4(1)).unwrap()).collect();
        assert_eq!(slots.admit(v4(1)).unwrap_err(), Refused::Peer);
        let other = slots.admit(v4(2)).expect("another peer has slots");
        drop(held);
        let again = slots.admit(v4(1)).expect("a closed connection gives its slot back");
        drop((other, again));
        assert_eq!(slots.held(), 0);
    }

    #[test]
    fn a_full_table_evicts_the_oldest_idle_connection() {
        let slots = Slots::new(3, 3);
        let oldest = slots.admit(v4(1)).unwrap();
        let busy = slots.admit(v4(2)).unwrap();
        let working = busy.busy();
        let newer = slots.admit(v4(3)).unwrap();
        let newest = slots.admit(v4(4)).expect("room is made");
        assert_eq!(slots.held(), 3);
        // The oldest idle one was told to close; the busy one was passed over.
        assert!(!slots.table().open.contains_key(&oldest.id));
        assert!(slots.table().open.contains_key(&busy.id));
        // All busy: a new one is refused.
        let (_b1, _b2) = (newer.busy(), newest.busy());
        assert_eq!(slots.admit(v4(5)).unwrap_err(), Refused::Full);
        drop(working);
        let _fifth = slots.admit(v4(5)).expect("the request ended: its connection may go");
        drop(oldest);
        assert_eq!(slots.held(), 3, "an evicted slot is not given back twice");
    }

    #[tokio::test]
    async fn an_evicted_connection_is_notified() {
        let slots = Slots::new(1, 1);
        let first = slots.admit(v4(1)).unwrap();
        let _second = slots.admit(v4(2)).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(5), first.evict.notified())
            .await
            .expect("the evicted connection hears of it");
    }

    #[test]
    fn ipv6_peers_are_counted_by_their_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(peer_key(a), peer_key(b));
        assert_ne!(peer_key(a), peer_key(c));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(peer_key(mapped), v4(1));
    }

    #[test]
    fn the_cap_leaves_half_the_descriptors() {
        assert_eq!(connection_cap(1_048_576), MAX_CONNECTIONS);
        assert_eq!(connection_cap(1_024), MAX_CONNECTIONS.min(512));
        assert_eq!(connection_cap(256), 128);
        assert_eq!(connection_cap(0), 1);
    }
}
