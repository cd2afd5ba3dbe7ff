//! A sender and a receiver namespace joined by a veth pair.
//!
//! Notes on XDP and veth, for this kernel (6.18) and since about 5.x:
//! - Native (driver) XDP on the receiving veth works with nothing on the
//!   peer: attaching a program gives that veth its NAPI instances, and
//!   `veth_xmit` on the peer then hands each frame to the NAPI of the receive
//!   queue numbered like the transmit queue the sender used. (An XDP program
//!   or GRO on the *peer* is only needed to receive `XDP_REDIRECT`ed frames
//!   through `ndo_xdp_xmit`, which these tests do not do.)
//! - The kernel refuses native XDP on a veth with fewer receive queues than
//!   its peer has transmit queues (`veth_xdp_set`: "XDP expects number of rx
//!   queues not less than peer tx queues"), and with a peer MTU above a page
//!   worth of frame. Both ends here get the same queue count and MTU 1500.
//! - Without XPS a frame's transmit queue comes from the flow hash; with
//!   [`VethPairBuilder::xps_per_cpu`] queue `i` belongs to CPU `i`, so a sender
//!   thread pinned to CPU `i` lands on receive queue `i`, whose NAPI then runs
//!   on CPU `i`.
//!
//! Neighbours are static (`nud permanent`) on both sides: no ARP or neighbour
//! discovery runs during a test. ARP would pass XDP untouched, but ND is
//! `ICMPv6` and would be metered like any IPv6 packet.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr, UdpSocket},
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use ipnet::IpNet;

use crate::{poll_until, unique_id, Flow, Netns};

/// Longest interface name Linux takes (`IFNAMSIZ` less the NUL).
const IFNAME_MAX: usize = 15;
/// UDP port of the connectivity probe run once the pair is up (discard).
const PROBE_PORT: u16 = 9;

static NEXT_MAC: AtomicU32 = AtomicU32::new(0);

/// Builds a [`VethPair`].
#[derive(Debug, Clone)]
pub struct VethPairBuilder {
    queues: u32,
    xps: bool,
    sender: Vec<IpNet>,
    receiver: Vec<IpNet>,
}

impl Default for VethPairBuilder {
    fn default() -> Self {
        Self {
            queues: 1,
            xps: false,
            sender: Vec::new(),
            receiver: vec!["10.99.0.1/16".parse().expect("valid"), "fd00:99::1/48".parse().expect("valid")],
        }
    }
}

impl VethPairBuilder {
    /// Transmit and receive queues on each end (1 by default).
    #[must_use]
    pub fn queues(mut self, queues: u32) -> Self {
        assert!(queues >= 1, "a veth needs at least one queue");
        self.queues = queues;
        self
    }

    /// Maps the sender's transmit queue `i` to CPU `i` (XPS), so that what a
    /// thread pinned to CPU `i` sends arrives on receive queue `i`.
    #[must_use]
    pub fn xps_per_cpu(mut self) -> Self {
        self.xps = true;
        self
    }

    /// Adds an address with its prefix length (`"10.99.1.1/16"`) to the
    /// sender's end. The receiver's defaults are `10.99.0.1/16` and
    /// `fd00:99::1/48`, so sender addresses in `10.99.0.0/16` and
    /// `fd00:99::/48` are on link.
    #[must_use]
    pub fn sender_addr(mut self, cidr: &str) -> Self {
        self.sender.push(parse_cidr(cidr));
        self
    }

    /// Adds several sender addresses (see [`VethPairBuilder::sender_addr`]).
    #[must_use]
    pub fn sender_addrs<'a>(mut self, cidrs: impl IntoIterator<Item = &'a str>) -> Self {
        self.sender.extend(cidrs.into_iter().map(parse_cidr));
        self
    }

    /// Replaces the receiver's addresses (one per family is enough).
    #[must_use]
    pub fn receiver_addrs<'a>(mut self, cidrs: impl IntoIterator<Item = &'a str>) -> Self {
        self.receiver = cidrs.into_iter().map(parse_cidr).collect();
        self
    }

    /// Creates both namespaces, the pair, the addresses and the neighbour
    /// entries, brings the links up, and checks that a datagram from every
    /// sender address reaches the receiver (before any XDP program is there).
    #[must_use]
    pub fn build(self) -> VethPair {
        let sender = Netns::new();
        let receiver = Netns::new();
        let id = unique_id();
        let tx_if = format!("tx{id}");
        let rx_if = format!("rx{id}");
        assert!(tx_if.len() <= IFNAME_MAX, "interface name {tx_if} too long");
        let mac = NEXT_MAC.fetch_add(1, Ordering::Relaxed);
        let [_, _, hi, lo] = mac.to_be_bytes();
        let tx_mac = format!("02:74:68:{hi:02x}:{lo:02x}:01");
        let rx_mac = format!("02:74:68:{hi:02x}:{lo:02x}:02");
        let pair = VethPair {
            sender,
            receiver,
            tx_if,
            rx_if,
            tx_mac,
            rx_mac,
            queues: self.queues,
            xps: self.xps,
            sender_addrs: self.sender,
            receiver_addrs: self.receiver,
        };
        pair.create();
        pair
    }
}
/// Two namespaces joined by a veth: [`VethPair::tx_if`] in
/// [`VethPair::sender`], [`VethPair::rx_if`] in [`VethPair::receiver`]. Both
/// namespaces (and with them the pair) go when this drops.
#[derive(Debug)]
pub struct VethPair {
    /// Where traffic comes from.
    pub sender: Netns,
    /// Where the daemon and the [`crate::Receiver`] run.
    pub receiver: Netns,
    /// The sender's end.
    pub tx_if: String,
    /// The receiver's end, where XDP attaches.
    pub rx_if: String,
    /// MAC address of the sender's end.
    pub tx_mac: String,
    /// MAC address of the receiver's end.
    pub rx_mac: String,
    /// Queues in each direction on each end.
    pub queues: u32,
    xps: bool,
    sender_addrs: Vec<IpNet>,
    receiver_addrs: Vec<IpNet>,
}

impl VethPair {
    /// A builder with one queue, no sender address yet, and the receiver at
    /// `10.99.0.1/16` and `fd00:99::1/48`.
    #[must_use]
    pub fn builder() -> VethPairBuilder {
        VethPairBuilder::default()
    }

    /// The sender's addresses, in the order they were added.
    #[must_use]
    pub fn sender_ips(&self) -> Vec<IpAddr> {
        self.sender_addrs.iter().map(IpNet::addr).collect()
    }

    /// The receiver's address of the same family as `src`.
    #[must_use]
    pub fn receiver_ip_for(&self, src: IpAddr) -> IpAddr {
        self.receiver_addrs
            .iter()
            .map(IpNet::addr)
            .find(|a| a.is_ipv4() == src.is_ipv4())
            .unwrap_or_else(|| panic!("the receiver has no address of {src}'s family"))
    }

    /// Where a flow from `src` to `port` goes: the receiver's address of the
    /// same family.
    #[must_use]
    pub fn dst_for(&self, src: IpAddr, port: u16) -> SocketAddr {
        SocketAddr::new(self.receiver_ip_for(src), port)
    }

    /// One flow from each sender address, paced to `pps`, to `port` on the
    /// receiver's address of its family.
    #[must_use]
    pub fn flows(&self, port: u16, pps: u64) -> Vec<Flow> {
        self.sender_ips().into_iter().map(|src| Flow::new(src, self.dst_for(src, port)).rate(pps)).collect()
    }

    /// The XDP programs `ip -d link` shows on the receiving end (`prog/xdp`
    /// gives `xdp`), comma-separated; empty when none is attached.
    #[must_use]
    pub fn xdp_attachment(&self) -> String {
        let link = self.receiver.ip(["-d", "link", "show", "dev", &self.rx_if]);
        link.split_whitespace().filter_map(|word| word.strip_prefix("prog/")).collect::<Vec<_>>().join(", ")
    }

    /// Deletes the pair (both ends go with either), as an operator or a
    /// network manager might under a running daemon.
    pub fn delete(&self) {
        self.receiver.ip(["link", "del", "dev", &self.rx_if]);
    }

    /// Makes the pair again after [`VethPair::delete`]: the same names,
    /// addresses, neighbours and queues (the interfaces get new indexes),
    /// up and checked as [`VethPairBuilder::build`] checks them.
    pub fn recreate(&self) {
        self.create();
    }

    /// Makes the pair, its addresses and neighbours, brings it up and
    /// checks that it carries datagrams.
    fn create(&self) {
        let queues = self.queues.to_string();
        self.sender.ip([
            "link",
            "add",
            "name",
            &self.tx_if,
            "numtxqueues",
            &queues,
            "numrxqueues",
            &queues,
            "address",
            &self.tx_mac,
            "mtu",
            "1500",
            "type",
            "veth",
            "peer",
            "name",
            &self.rx_if,
            "numtxqueues",
            &queues,
            "numrxqueues",
            &queues,
            "address",
            &self.rx_mac,
            "mtu",
            "1500",
            "netns",
            self.receiver.name(),
        ]);
        for (ns, ifname, addrs) in [
            (&self.sender, &self.tx_if, &self.sender_addrs),
            (&self.receiver, &self.rx_if, &self.receiver_addrs),
        ] {
            for addr in addrs {
                let cidr = addr.to_string();
                let mut args = vec!["addr", "add", &cidr, "dev", ifname.as_str()];
                if addr.addr().is_ipv6() {
                    // No duplicate address detection: the address is usable
                    // at once, and no ND packet crosses the pair.
                    args.push("nodad");
                }
                ns.ip(args);
            }
        }
        // Static neighbours both ways: no ARP or ND during a test.
        for (ns, ifname, addrs, mac) in [
            (&self.sender, &self.tx_if, &self.receiver_addrs, &self.rx_mac),
            (&self.receiver, &self.rx_if, &self.sender_addrs, &self.tx_mac),
        ] {
            for addr in addrs {
                ns.ip([
                    "neigh",
                    "replace",
                    &addr.addr().to_string(),
                    "lladdr",
                    mac,
                    "dev",
                    ifname,
                    "nud",
                    "permanent",
                ]);
            }
        }
        if self.xps {
            let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
            for queue in 0..self.queues as usize {
                let mask = 1u64 << (queue % cpus);
                self.sender
                    .sh(&format!("echo {mask:x} > /sys/class/net/{}/queues/tx-{queue}/xps_cpus", self.tx_if));
            }
        }
        self.sender.ip(["link", "set", &self.tx_if, "up"]);
        self.receiver.ip(["link", "set", &self.rx_if, "up"]);
        self.wait_carrier();
        self.probe();
    }

    /// Waits until both ends report carrier.
    fn wait_carrier(&self) {
        for (ns, ifname) in [(&self.sender, &self.tx_if), (&self.receiver, &self.rx_if)] {
            poll_until(Duration::from_secs(5), Duration::from_millis(10), || {
                ns.ip(["-o", "link", "show", "dev", ifname]).contains("LOWER_UP").then_some(())
            })
            .unwrap_or_else(|| panic!("{ifname} in {} never got carrier", ns.name()));
        }
    }

    /// Sends a datagram from every sender address until each one has been
    /// received once, proving addresses, routes and neighbours right.
    fn probe(&self) {
        let sink = self.receiver.run(|| {
            let sock = UdpSocket::bind(("::", PROBE_PORT)).expect("bind the probe sink");
            sock.set_read_timeout(Some(Duration::from_millis(50))).expect("set a read timeout");
            sock
        });
        let sources: Vec<(UdpSocket, SocketAddr)> = self.sender.run(|| {
            self.sender_ips()
                .into_iter()
                .map(|src| {
                    let sock = UdpSocket::bind((src, 0))
                        .unwrap_or_else(|e| panic!("bind {src} in the sender namespace: {e}"));
                    (sock, SocketAddr::new(self.receiver_ip_for(src), PROBE_PORT))
                })
                .collect()
        });
        let mut missing: BTreeSet<IpAddr> = self.sender_ips().into_iter().collect();
        let seen = poll_until(Duration::from_secs(5), Duration::ZERO, || {
            for (sock, dst) in &sources {
                if missing.contains(&sock.local_addr().expect("bound").ip()) {
                    sock.send_to(b"probe", dst).unwrap_or_else(|e| panic!("probe to {dst}: {e}"));
                }
            }
            let mut buf = [0u8; 64];
            while let Ok((_, from)) = sink.recv_from(&mut buf) {
                missing.remove(&from.ip().to_canonical());
            }
            missing.is_empty().then_some(())
        });
        assert!(
            seen.is_some(),
            "no probe datagram from {missing:?} reached the receiver through {} -> {}",
            self.tx_if,
            self.rx_if
        );
    }
}

fn parse_cidr(cidr: &str) -> IpNet {
    cidr.parse().unwrap_or_else(|e| panic!("{cidr:?} is not an address with a prefix length: {e}"))
}
