//! A small builder of Ethernet frames for the packet tests and the
//! benchmarks: the program is run on these through `BPF_PROG_TEST_RUN`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_ARP: u16 = 0x0806;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;

pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// IPv6 extension headers.
pub const NEXT_HOPOPTS: u8 = 0;
pub const NEXT_ROUTING: u8 = 43;
pub const NEXT_FRAGMENT: u8 = 44;
pub const NEXT_AH: u8 = 51;
pub const NEXT_DSTOPTS: u8 = 60;
pub const NEXT_NONE: u8 = 59;

/// L4 of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    Udp {
        dport: u16,
    },
    Tcp {
        dport: u16,
        flags: u8,
    },
    /// Another protocol number with a few bytes of payload.
    Other(u8),
}

impl L4 {
    fn proto(self) -> u8 {
        match self {
            Self::Udp { .. } => 17,
            Self::Tcp { .. } => 6,
            Self::Other(p) => p,
        }
    }

    fn bytes(self) -> Vec<u8> {
        match self {
            Self::Udp { dport } => {
                let mut h = vec![0x30, 0x39];
                h.extend(dport.to_be_bytes());
                h.extend([0, 8, 0, 0]);
                h
            }
            Self::Tcp { dport, flags } => {
                let mut h = vec![0x30, 0x39];
                h.extend(dport.to_be_bytes());
                h.extend([0; 8]); // sequence, acknowledgement
                h.extend([0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
                h
            }
            Self::Other(_) => vec![0; 8],
        }
    }
}

/// An IPv6 extension header to put before L4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ext {
    HopByHop,
    Routing,
    DestOpts,
    /// A fragment header with this offset (in 8-octet units).
    Fragment {
        offset: u16,
    },
    Ah,
}

impl Ext {
    fn number(self) -> u8 {
        match self {
            Self::HopByHop => NEXT_HOPOPTS,
            Self::Routing => NEXT_ROUTING,
            Self::DestOpts => NEXT_DSTOPTS,
            Self::Fragment { .. } => NEXT_FRAGMENT,
            Self::Ah => NEXT_AH,
        }
    }

    fn bytes(self, next: u8) -> Vec<u8> {
        match self {
            // 16 bytes: length field 1 (8-octet units beyond the first 8).
            Self::HopByHop | Self::DestOpts => {
                let mut h = vec![next, 1];
                h.extend([1, 12]); // PadN over the rest
                h.extend([0; 12]);
                h
            }
            Self::Routing => {
                let mut h = vec![next, 0, 0, 0];
                h.extend([0; 4]);
                h
            }
            Self::Fragment { offset } => {
                let mut h = vec![next, 0];
                h.extend((offset << 3).to_be_bytes());
                h.extend([0, 0, 0, 1]);
                h
            }
            // 16 bytes: (16 / 4) - 2 = 2.
            Self::Ah => {
                let mut h = vec![next, 2, 0, 0];
                h.extend([0; 12]);
                h
            }
        }
    }
}

/// A frame under construction.
#[derive(Debug, Clone)]
pub struct Frame {
    pub vlans: Vec<u16>,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub l4: L4,
    /// IPv4 options (padded to 4 bytes).
    pub options: Vec<u8>,
    /// IPv4 fragment offset (8-octet units).
    pub fragment_offset: u16,
    pub ext: Vec<Ext>,
    pub payload: usize,
}

impl Frame {
    #[must_use]
    pub fn udp(src: IpAddr, dport: u16) -> Self {
        let dst = match src {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        };
        Self {
            vlans: Vec::new(),
            src,
            dst,
            l4: L4::Udp { dport },
            options: Vec::new(),
            fragment_offset: 0,
            ext: Vec::new(),
            payload: 18,
        }
    }

    #[must_use]
    pub fn tcp(src: IpAddr, dport: u16, flags: u8) -> Self {
        Self { l4: L4::Tcp { dport, flags }, ..Self::udp(src, dport) }
    }

    #[must_use]
    pub fn l4(mut self, l4: L4) -> Self {
        self.l4 = l4;
        self
    }

    #[must_use]
    pub fn vlan(mut self, id: u16) -> Self {
        self.vlans.push(id);
        self
    }

    #[must_use]
    pub fn options(mut self, options: &[u8]) -> Self {
        self.options = options.to_vec();
        while !self.options.len().is_multiple_of(4) {
            self.options.push(0);
        }
        self
    }

    #[must_use]
    pub fn fragment(mut self, offset: u16) -> Self {
        self.fragment_offset = offset;
        self
    }

    #[must_use]
    pub fn ext(mut self, ext: Ext) -> Self {
        self.ext.push(ext);
        self
    }

    #[must_use]
    pub fn payload(mut self, len: usize) -> Self {
        self.payload = len;
        self
    }

    /// The frame's bytes.
    #[must_use]
    pub fn build(&self) -> Vec<u8> {
        let mut out = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2];
        let ethertype = if self.src.is_ipv4() { ETH_P_IP } else { ETH_P_IPV6 };
        for (i, id) in self.vlans.iter().enumerate() {
            let tpid = if i == 0 && self.vlans.len() == 2 { ETH_P_8021AD } else { ETH_P_8021Q };
            out.extend(tpid.to_be_bytes());
            out.extend(id.to_be_bytes());
        }
        out.extend(ethertype.to_be_bytes());
        let mut l4 = self.l4.bytes();
        l4.extend(std::iter::repeat_n(0xAB, self.payload));
        match (self.src, self.dst) {
            (IpAddr::V4(src), IpAddr::V4(dst)) => {
                let ihl = 5 + self.options.len() / 4;
                let total = (ihl * 4 + l4.len()) as u16;
                out.push(0x40 | ihl as u8);
                out.push(0);
                out.extend(total.to_be_bytes());
                out.extend([0, 1]);
                out.extend(self.fragment_offset.to_be_bytes());
                out.extend([64, self.l4.proto(), 0, 0]);
                out.extend(src.octets());
                out.extend(dst.octets());
                out.extend(&self.options);
            }
            (IpAddr::V6(src), IpAddr::V6(dst)) => {
                let mut chain = Vec::new();
                for (i, ext) in self.ext.iter().enumerate() {
                    let next = self.ext.get(i + 1).map_or(self.l4.proto(), |e| e.number());
                    chain.extend(ext.bytes(next));
                }
                let first = self.ext.first().map_or(self.l4.proto(), |e| e.number());
                out.extend([0x60, 0, 0, 0]);
                out.extend(((chain.len() + l4.len()) as u16).to_be_bytes());
                out.extend([first, 64]);
                out.extend(src.octets());
                out.extend(dst.octets());
                out.extend(chain);
            }
            _ => panic!("source and destination of different families"),
        }
        out.extend(l4);
        out
    }

    /// Offsets at which the frame's headers end: truncating the frame at
    /// any offset below the last one cuts a header short.
    #[must_use]
    pub fn header_ends(&self) -> Vec<usize> {
        let mut ends = vec![14];
        let mut at = 14;
        for _ in &self.vlans {
            at += 4;
            ends.push(at);
        }
        match self.src {
            IpAddr::V4(_) => {
                at += 20;
                ends.push(at);
                if !self.options.is_empty() {
                    at += self.options.len();
                    ends.push(at);
                }
            }
            IpAddr::V6(_) => {
                at += 40;
                ends.push(at);
                for ext in &self.ext {
                    at += ext.bytes(0).len();
                    ends.push(at);
                }
            }
        }
        ends
    }
}

/// An ARP request: not IP.
#[must_use]
pub fn arp() -> Vec<u8> {
    let mut out = vec![0xff; 6];
    out.extend([0x02, 0, 0, 0, 0, 2]);
    out.extend(ETH_P_ARP.to_be_bytes());
    out.extend([0, 1, 8, 0, 6, 4, 0, 1]);
    out.extend([0; 20]);
    out
}
