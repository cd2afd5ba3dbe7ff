//! UDP traffic: a flooder for the sender namespace and a counting receiver
//! for the receiver namespace.
//!
//! Every datagram carries a small header (magic, flow id, sequence number and
//! the `CLOCK_MONOTONIC` instant of its `send`), so the receiver can tell
//! which flow and which moment each arrival belongs to. XDP meters a frame
//! within microseconds of its `send` (in the sender's syscall for generic
//! XDP, in the receive queue's NAPI poll for native XDP on veth), so the
//! send instant is a close stand-in for the instant the bucket judged it.

use std::{
    collections::BTreeMap,
    io::ErrorKind,
    mem,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::AsRawFd,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Barrier,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use crate::{mono_ns, poll_until, secs_between, Netns};

/// First bytes of every datagram the flooder sends.
const MAGIC: u32 = 0x7468_726f; // "thro"
/// Magic, flow id (u32), sequence (u64), send instant (u64, ns).
const HEADER_LEN: usize = 4 + 4 + 8 + 8;
/// Payload length: the header and nothing else.
pub const PAYLOAD_LEN: usize = HEADER_LEN;
/// Receive buffer of the receiver's socket, forced past `rmem_max`: about
/// 100 000 small datagrams, far more than any admitted burst.
const RCVBUF_BYTES: libc::c_int = 64 << 20;
/// How long a paced sender sleeps when it is ahead of its schedule.
const PACING_NAP: Duration = Duration::from_micros(200);

/// One sending thread: one source address or several in turn, to one
/// destination.
#[derive(Debug, Clone)]
pub struct Flow {
    sources: Vec<IpAddr>,
    src_port: u16,
    dst: SocketAddr,
    cpu: Option<usize>,
    rate: Option<u64>,
}

impl Flow {
    /// A flow from `src` (an ephemeral port) to `dst`, as fast as it can.
    #[must_use]
    pub fn new(src: IpAddr, dst: SocketAddr) -> Self {
        Self::rotating(vec![src], dst)
    }

    /// A flow that sends from each of `sources` in turn, one datagram each.
    #[must_use]
    pub fn rotating(sources: Vec<IpAddr>, dst: SocketAddr) -> Self {
        assert!(!sources.is_empty(), "a flow needs a source");
        Self { sources, src_port: 0, dst, cpu: None, rate: None }
    }

    /// Sends from this UDP port (0, the default, picks an ephemeral one).
    #[must_use]
    pub fn src_port(mut self, port: u16) -> Self {
        self.src_port = port;
        self
    }

    /// Pins the sending thread to `cpu` (`sched_setaffinity`).
    #[must_use]
    pub fn pinned(mut self, cpu: usize) -> Self {
        self.cpu = Some(cpu);
        self
    }

    /// Paces the flow to `pps` datagrams per second (all its sources
    /// together); without it the flow sends as fast as it can.
    #[must_use]
    pub fn rate(mut self, pps: u64) -> Self {
        assert!(pps > 0, "a rate of 0 sends nothing");
        self.rate = Some(pps);
        self
    }
}

/// What one flow sent.
#[derive(Debug, Clone)]
pub struct FlowReport {
    /// The flow's index in the list given to [`Flood::start`]; arrivals carry it.
    pub id: u32,
    /// Each source socket's address (ephemeral ports resolved) and datagrams
    /// sent from it.
    pub sent_by_source: Vec<(SocketAddr, u64)>,
    /// Datagrams sent (accepted by `send`).
    pub sent: u64,
    /// `send` calls that failed (e.g. `ENOBUFS`); not in `sent`.
    pub send_errors: u64,
    /// Monotonic instant of the first successful send, ns.
    pub first_send_ns: u64,
    /// Monotonic instant of the last successful send, ns.
    pub last_send_ns: u64,
    /// The CPU the thread was pinned to.
    pub cpu: Option<usize>,
}

impl FlowReport {
    /// Seconds from the first send to the last.
    #[must_use]
    pub fn secs(&self) -> f64 {
        secs_between(self.first_send_ns, self.last_send_ns)
    }

    /// Datagrams per second offered.
    #[must_use]
    #[expect(clippy::cast_precision_loss, reason = "packet counts of a test fit in f64's 52-bit mantissa")]
    pub fn pps(&self) -> f64 {
        self.sent as f64 / self.secs().max(1e-9)
    }
}

/// Flows running in the sender namespace, one thread each.
#[derive(Debug)]
pub struct Flood {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<FlowReport>>,
}

impl Flood {
    /// Starts `flows` in `ns`, all at the same moment (sockets are bound and
    /// connected first), for `duration`, or until [`Flood::stop`] when it is
    /// `None`. Returns once every thread is about to send its first datagram.
    #[must_use]
    pub fn start(ns: &Netns, flows: Vec<Flow>, duration: Option<Duration>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let go = Arc::new(Barrier::new(flows.len() + 1));
        let threads = flows
            .into_iter()
            .enumerate()
            .map(|(id, flow)| {
                let id = u32::try_from(id).expect("fewer than 2^32 flows");
                let stop = Arc::clone(&stop);
                let go = Arc::clone(&go);
                ns.spawn(&format!("flow-{id}"), move || send_flow(id, &flow, duration, &stop, &go))
            })
            .collect();
        go.wait();
        Self { stop, threads }
    }

    /// Waits for the flows to end by themselves (they need a duration).
    #[must_use]
    pub fn join(mut self) -> Vec<FlowReport> {
        mem::take(&mut self.threads)
            .into_iter()
            .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    }

    /// Stops every flow now and returns what each sent.
    #[must_use]
    pub fn stop(self) -> Vec<FlowReport> {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }
}

impl Drop for Flood {
    fn drop(&mut self) {
        // A flood dropped without join/stop (a failing test) must not
        // outlive its namespace by much.
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn send_flow(
    id: u32,
    flow: &Flow,
    duration: Option<Duration>,
    stop: &AtomicBool,
    go: &Barrier,
) -> FlowReport {
    // Reach the barrier whatever happens, or start() would wait forever.
    let setup = std::panic::catch_unwind(|| {
        if let Some(cpu) = flow.cpu {
            pin_to_cpu(cpu);
        }
        flow.sources
            .iter()
            .map(|&src| {
                let sock = UdpSocket::bind((src, flow.src_port))
                    .unwrap_or_else(|e| panic!("bind {src}:{}: {e}", flow.src_port));
                sock.connect(flow.dst).unwrap_or_else(|e| panic!("connect {src} -> {}: {e}", flow.dst));
                sock
            })
            .collect::<Vec<_>>()
    });
    go.wait();
    let socks = setup.unwrap_or_else(|p| std::panic::resume_unwind(p));

    let mut sent_by_source = vec![0u64; socks.len()];
    let mut buf = [0u8; PAYLOAD_LEN];
    buf[0..4].copy_from_slice(&MAGIC.to_be_bytes());
    buf[4..8].copy_from_slice(&id.to_be_bytes());
    let (mut sent, mut send_errors, mut next) = (0u64, 0u64, 0usize);
    let (mut first_send_ns, mut last_send_ns) = (0u64, 0u64);
    let start = mono_ns();
    let end = duration.map(|d| start + u64::try_from(d.as_nanos()).expect("a sane duration"));
    loop {
        let now = mono_ns();
        if stop.load(Ordering::Relaxed) || end.is_some_and(|end| now >= end) {
            break;
        }
        if let Some(rate) = flow.rate {
            // Datagrams due by now at `rate`; nap when ahead of schedule.
            let due = u128::from(now - start) * u128::from(rate) / 1_000_000_000;
            if u128::from(sent + send_errors) >= due {
                thread::sleep(PACING_NAP);
                continue;
            }
        }
        buf[8..16].copy_from_slice(&sent.to_be_bytes());
        buf[16..24].copy_from_slice(&now.to_be_bytes());
        match socks[next].send(&buf) {
            Ok(_) => {
                if sent == 0 {
                    first_send_ns = now;
                }
                last_send_ns = now;
                sent += 1;
                sent_by_source[next] += 1;
            }
            Err(_) => send_errors += 1,
        }
        next = (next + 1) % socks.len();
    }
    FlowReport {
        id,
        sent_by_source: socks.iter().map(|s| s.local_addr().expect("bound")).zip(sent_by_source).collect(),
        sent,
        send_errors,
        first_send_ns,
        last_send_ns,
        cpu: flow.cpu,
    }
}

/// Pins the calling thread to one CPU.
pub fn pin_to_cpu(cpu: usize) {
    // SAFETY: cpu_set_t is plain data for which all zeroes is the empty set;
    // CPU_SET checks nothing but writes within the set for cpu < CPU_SETSIZE,
    // and sched_setaffinity reads `size_of::<cpu_set_t>()` bytes of it.
    let rc = unsafe {
        let mut set: libc::cpu_set_t = mem::zeroed();
        assert!(cpu < libc::CPU_SETSIZE as usize, "no CPU {cpu}");
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &raw const set)
    };
    assert_eq!(rc, 0, "sched_setaffinity to CPU {cpu}: {}", std::io::Error::last_os_error());
}

/// One datagram that reached the receiver.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    /// Its source address (IPv4 as IPv4, not mapped).
    pub src: IpAddr,
    /// Its source port.
    pub src_port: u16,
    /// The [`FlowReport::id`] of the flow that sent it.
    pub flow: u32,
    /// Its sequence number within the flow.
    pub seq: u64,
    /// When it was sent, monotonic ns.
    pub sent_ns: u64,
    /// When the receiver read it, monotonic ns.
    pub recv_ns: u64,
}

/// What a [`Receiver`] got.
#[derive(Debug, Clone, Default)]
pub struct Arrivals {
    /// Every flood datagram, in the order read.
    pub list: Vec<Arrival>,
    /// Datagrams without the flooder's header (counted, not kept).
    pub foreign: u64,
    /// The receiver namespace's UDP receive-buffer and input errors over the
    /// receiver's life: non-zero means the receiver lost datagrams itself.
    pub udp_drops: u64,
}

impl Arrivals {
    /// Datagrams per source address.
    #[must_use]
    pub fn by_source(&self) -> BTreeMap<IpAddr, u64> {
        let mut counts = BTreeMap::new();
        for a in &self.list {
            *counts.entry(a.src).or_default() += 1;
        }
        counts
    }

    /// Datagrams from `src`.
    #[must_use]
    pub fn from_source(&self, src: IpAddr) -> u64 {
        self.count(|a| a.src == src)
    }

    /// Datagrams for which `pred` holds.
    #[must_use]
    pub fn count(&self, pred: impl Fn(&Arrival) -> bool) -> u64 {
        self.list.iter().filter(|a| pred(a)).count() as u64
    }
}

/// A UDP receiver in the receiver namespace: one dual-stack socket on a
/// port, read on its own thread until [`Receiver::finish`].
#[derive(Debug)]
pub struct Receiver {
    stop: Arc<AtomicBool>,
    received: Arc<AtomicU64>,
    thread: Option<JoinHandle<Arrivals>>,
    port: u16,
}

impl Receiver {
    /// Binds `[::]:port` (IPv4 arrives too, as mapped addresses) in `ns` with a
    /// large receive buffer, and starts reading.
    #[must_use]
    pub fn start(ns: &Netns, port: u16) -> Self {
        let (sock, ns_drops_before) = ns.run(move || {
            let sock = UdpSocket::bind(("::", port)).unwrap_or_else(|e| panic!("bind [::]:{port}: {e}"));
            force_rcvbuf(&sock, RCVBUF_BYTES);
            sock.set_read_timeout(Some(Duration::from_millis(20))).expect("set a read timeout");
            (sock, udp_drops())
        });
        let stop = Arc::new(AtomicBool::new(false));
        let received = Arc::new(AtomicU64::new(0));
        let thread = {
            let stop = Arc::clone(&stop);
            let received = Arc::clone(&received);
            ns.spawn(&format!("recv-{port}"), move || {
                let mut arrivals = receive(&sock, &stop, &received);
                arrivals.udp_drops = udp_drops().saturating_sub(ns_drops_before);
                arrivals
            })
        };
        Self { stop, received, thread: Some(thread), port }
    }

    /// Datagrams read so far.
    #[must_use]
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Waits until nothing has arrived for `quiet` (at most 10 s), then stops
    /// and returns everything read.
    #[must_use]
    pub fn finish(mut self, quiet: Duration) -> Arrivals {
        let mut last = (self.received(), mono_ns());
        let settled = poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
            let now = (self.received(), mono_ns());
            if now.0 != last.0 {
                last = now;
                return None;
            }
            (secs_between(last.1, now.1) >= quiet.as_secs_f64()).then_some(())
        });
        if settled.is_none() {
            eprintln!("warning: receiver on port {} still receiving after 10 s", self.port);
        }
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().expect("finish runs once").join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        // Not finished (a failing test): let the thread end with the test.
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn receive(sock: &UdpSocket, stop: &AtomicBool, received: &AtomicU64) -> Arrivals {
    let mut arrivals = Arrivals::default();
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        match sock.recv_from(&mut buf) {
            Ok((len, from)) => {
                let recv_ns = mono_ns();
                received.fetch_add(1, Ordering::Relaxed);
                match parse(&buf[..len]) {
                    Some((flow, seq, sent_ns)) => arrivals.list.push(Arrival {
                        src: from.ip().to_canonical(),
                        src_port: from.port(),
                        flow,
                        seq,
                        sent_ns,
                        recv_ns,
                    }),
                    None => arrivals.foreign += 1,
                }
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("recv_from: {e}"),
        }
    }
    arrivals
}

/// The flow id, sequence number and send instant of a flood datagram.
fn parse(payload: &[u8]) -> Option<(u32, u64, u64)> {
    if payload.len() < HEADER_LEN || payload[0..4] != MAGIC.to_be_bytes() {
        return None;
    }
    let u32_at = |at: usize| u32::from_be_bytes(payload[at..at + 4].try_into().expect("4 bytes"));
    let u64_at = |at: usize| u64::from_be_bytes(payload[at..at + 8].try_into().expect("8 bytes"));
    Some((u32_at(4), u64_at(8), u64_at(16)))
}

/// Sets `SO_RCVBUFFORCE` (root may exceed `net.core.rmem_max`).
fn force_rcvbuf(sock: &UdpSocket, bytes: libc::c_int) {
    // SAFETY: a valid socket descriptor and a c_int option of its size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&raw const bytes).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
}

/// The calling thread's namespace's UDP receive errors so far: `Udp:
/// RcvbufErrors` and `InErrors` from `snmp`, and `Udp6RcvbufErrors` and
/// `Udp6InErrors` from `snmp6` (`InErrors` includes the buffer errors, so
/// only it is counted).
fn udp_drops() -> u64 {
    // /proc/thread-self/net follows the calling thread's namespace.
    let snmp = std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap_or_default();
    let mut lines = snmp.lines().filter(|l| l.starts_with("Udp: "));
    let v4 = match (lines.next(), lines.next()) {
        (Some(names), Some(values)) => names
            .split_whitespace()
            .zip(values.split_whitespace())
            .find(|(name, _)| *name == "InErrors")
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .unwrap_or(0),
        _ => 0,
    };
    let snmp6 = std::fs::read_to_string("/proc/thread-self/net/snmp6").unwrap_or_default();
    let v6 = snmp6
        .lines()
        .filter_map(|l| l.split_once(char::is_whitespace))
        .find(|(name, _)| *name == "Udp6InErrors")
        .and_then(|(_, v)| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    v4 + v6
}

/// One flow from `src`, a sender address of `pair`, to its receiver's
/// `port` at `pps` for `duration`: the flow's report, and what arrived
/// (once the receiver was quiet for `quiet`).
#[must_use]
pub fn flood_once(
    pair: &crate::VethPair,
    src: IpAddr,
    port: u16,
    pps: u64,
    duration: Duration,
    quiet: Duration,
) -> (FlowReport, Arrivals) {
    let receiver = Receiver::start(&pair.receiver, port);
    let report =
        Flood::start(&pair.sender, vec![Flow::new(src, pair.dst_for(src, port)).rate(pps)], Some(duration))
            .join()
            .remove(0);
    (report, receiver.finish(quiet))
}
