//! Crafted frames on a veth: a paced sender of any frame (any source
//! address, any TCP flags: SYN floods from many sources) on the sending end,
//! and a tap on the receiving end that records what the XDP program let
//! into the stack (taps see a frame after XDP, and never one it dropped).

use std::{
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use crate::{mono_ns, Netns};

/// `ETH_P_ALL`, in network byte order as `socket(2)` and `bind(2)` want it.
const ETH_P_ALL_BE: u16 = (libc::ETH_P_ALL as u16).to_be();

/// A raw packet socket bound to `iface` (of the calling thread's namespace).
fn packet_socket(iface: &str) -> OwnedFd {
    // SAFETY: plain socket(2); the descriptor is owned at once.
    let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(ETH_P_ALL_BE)) };
    assert!(fd >= 0, "socket(AF_PACKET): {}", std::io::Error::last_os_error());
    // SAFETY: a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let name = std::ffi::CString::new(iface).expect("an interface name");
    // SAFETY: a NUL-terminated name alive for the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(index != 0, "no interface {iface}");
    // SAFETY: sockaddr_ll is plain data; zero is valid.
    let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    addr.sll_family = libc::AF_PACKET as u16;
    addr.sll_protocol = ETH_P_ALL_BE;
    addr.sll_ifindex = i32::try_from(index).expect("an interface index");
    // SAFETY: `addr` is a valid sockaddr_ll for the call.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            std::ptr::from_ref(&addr).cast(),
            u32::try_from(size_of::<libc::sockaddr_ll>()).expect("a small struct"),
        )
    };
    assert!(rc == 0, "bind(AF_PACKET, {iface}): {}", std::io::Error::last_os_error());
    fd
}

/// Frames sent again and again at a rate.
#[derive(Debug, Clone)]
pub struct RawFlow {
    pub frame: Vec<u8>,
    pub pps: f64,
}

/// Sends every flow at its rate on `iface` in `ns` for `duration`, paced
/// evenly; the frames each flow sent.
#[must_use = "join it for the counts sent"]
pub fn send_paced(ns: &Netns, iface: &str, flows: Vec<RawFlow>, duration: Duration) -> JoinHandle<Vec<u64>> {
    let iface = iface.to_owned();
    ns.spawn("raw-sender", move || {
        let fd = packet_socket(&iface);
        let start = Instant::now();
        let mut sent = vec![0u64; flows.len()];
        loop {
            // The flow whose next frame is due first.
            let (i, due) = flows
                .iter()
                .zip(&sent)
                .enumerate()
                .map(|(i, (flow, &n))| {
                    #[expect(clippy::cast_precision_loss, reason = "a frame count")]
                    let due = Duration::from_secs_f64(n as f64 / flow.pps);
                    (i, due)
                })
                .min_by_key(|&(_, due)| due)
                .expect("a flow");
            if due >= duration {
                return sent;
            }
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
            let frame = &flows[i].frame;
            // SAFETY: the frame's bytes are alive for the call.
            let rc = unsafe { libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
            if rc >= 0 {
                sent[i] += 1;
            } else {
                // A full queue: the frame is not sent, and is not counted.
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    })
}

/// A frame the tap saw: an IPv4 TCP or UDP packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Seen {
    pub src: IpAddr,
    /// 6 TCP, 17 UDP.
    pub proto: u8,
    pub dport: u16,
    /// A TCP SYN without ACK.
    pub syn: bool,
    /// When it was read, monotonic ns.
    pub at_ns: u64,
}

/// What an IPv4 frame carries, if it is TCP or UDP.
fn seen(frame: &[u8]) -> Option<Seen> {
    if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let header = usize::from(ip[0] & 0x0f) * 4;
    let l4 = ip.get(header..)?;
    let proto = ip[9];
    if !(proto == 6 || proto == 17) || l4.len() < 4 {
        return None;
    }
    let syn = proto == 6 && l4.get(13).is_some_and(|f| f & 0x12 == 0x02);
    Some(Seen {
        src: IpAddr::V4(Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15])),
        proto,
        dport: u16::from_be_bytes([l4[2], l4[3]]),
        syn,
        at_ns: mono_ns(),
    })
}

/// A tap on an interface: every IPv4 TCP and UDP frame it receives.
#[derive(Debug)]
pub struct Tap {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Vec<Seen>>,
}

impl Tap {
    /// Starts tapping `iface` in `ns`.
    #[must_use]
    pub fn start(ns: &Netns, iface: &str) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let iface = iface.to_owned();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let flag = Arc::clone(&stop);
        let thread = ns.spawn("raw-tap", move || {
            let fd = packet_socket(&iface);
            let timeout = libc::timeval { tv_sec: 0, tv_usec: 100_000 };
            // SAFETY: a timeval alive for the call.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    std::ptr::from_ref(&timeout).cast(),
                    u32::try_from(size_of::<libc::timeval>()).expect("a small struct"),
                );
            }
            let _ = ready_tx.send(());
            let mut out = Vec::new();
            let mut buf = [0u8; 2048];
            // SAFETY: sockaddr_ll is plain data; zero is valid.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            while !flag.load(Ordering::Relaxed) {
                let mut len = u32::try_from(size_of::<libc::sockaddr_ll>()).expect("a small struct");
                // SAFETY: `buf` and `from` are writable for their sizes.
                let n = unsafe {
                    libc::recvfrom(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr().cast(),
                        buf.len(),
                        0,
                        std::ptr::from_mut(&mut from).cast(),
                        &raw mut len,
                    )
                };
                let Ok(n) = usize::try_from(n) else { continue };
                // What the receiving end itself sends is not what arrived.
                if from.sll_pkttype == libc::PACKET_OUTGOING {
                    continue;
                }
                if let Some(s) = seen(&buf[..n]) {
                    out.push(s);
                }
            }
            out
        });
        ready_rx.recv().expect("the tap starts");
        Self { stop, thread }
    }

    /// Stops after `quiet` and returns what it saw.
    #[must_use]
    pub fn finish(self, quiet: Duration) -> Vec<Seen> {
        std::thread::sleep(quiet);
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the tap thread")
    }
}
