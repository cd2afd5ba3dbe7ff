//! Header parsing. Every read of packet memory goes through [`read`], which
//! checks the bounds the verifier wants to see; the headers are typed views
//! over the bytes it returns, with a named accessor for each field.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use throttle_common::{
    reason, Family, Reason, FAMILY_V4, FAMILY_V6, MAX_IPV6_EXT_HEADERS, PROTO_TCP, PROTO_UDP,
};

const ETH_HLEN: usize = 14;
/// Where the ethertype is in the Ethernet header, after the two addresses.
const ETH_TYPE_OFFSET: usize = 12;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
/// VLAN tags followed: 802.1ad outer and 802.1Q inner (`QinQ`).
const MAX_VLAN_TAGS: usize = 2;
/// A VLAN tag (802.1Q, 802.1ad): the TCI, then the encapsulated ethertype.
const VLAN_HLEN: usize = 4;
const VLAN_TYPE_OFFSET: usize = 2;

const IPV4_MIN_HLEN: usize = 20;
/// Fragment offset bits of the IPv4 flags/offset field.
const IPV4_OFFSET_MASK: u16 = 0x1FFF;
const IPV6_HLEN: usize = 40;
/// The fixed part of an IPv6 extension header: next header and length.
const IPV6_EXT_HLEN: usize = 2;
const IPV6_FRAG_HLEN: usize = 8;

/// IPv6 extension headers that may precede L4
/// (<https://www.rfc-editor.org/rfc/rfc8200#section-4.1>).
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;

/// The bytes of a TCP header up to its flags.
const TCP_THROUGH_FLAGS: usize = 14;
const UDP_THROUGH_DPORT: usize = 4;
const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;

/// What the metering needs of an IP packet.
pub struct Packet {
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: Family,
    /// The source address in packet byte order; IPv4 uses `src[0]`.
    pub src: [u32; 4],
    /// The L4 protocol (the last next-header for IPv6).
    pub proto: u8,
    /// Offset of the L4 header, `None` when the packet carries none that can
    /// be read (a non-first fragment, or more IPv6 extension headers than
    /// [`MAX_IPV6_EXT_HEADERS`]).
    pub l4: Option<usize>,
}

/// The L4 facts the scope looks at.
pub struct Ports {
    /// Destination port, host byte order.
    pub dst: u16,
    /// Whether this is a TCP SYN without ACK (a connection attempt).
    pub syn: bool,
}

/// A bounds-checked pointer to a `T` at `offset` bytes into the packet.
#[inline(always)]
fn ptr_at<T>(ctx: &XdpContext, offset: usize) -> Option<*const T> {
    let start = ctx.data();
    let end = ctx.data_end();
    if start + offset + size_of::<T>() > end {
        return None;
    }
    Some((start + offset) as *const T)
}

/// The `N` bytes at `offset`.
#[inline(always)]
fn read<const N: usize>(ctx: &XdpContext, offset: usize) -> Option<[u8; N]> {
    let ptr = ptr_at::<[u8; N]>(ctx, offset)?;
    // SAFETY: `ptr_at` checked that all `N` bytes lie inside the packet,
    // and a byte array needs no alignment.
    Some(unsafe { ptr.read_unaligned() })
}

/// Whether the packet holds the byte at `offset`: the end of a header of a
/// length read from the packet.
#[inline(always)]
fn holds(ctx: &XdpContext, offset: usize) -> bool {
    ptr_at::<u8>(ctx, offset).is_some()
}

#[inline(always)]
fn be16(bytes: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([bytes[at], bytes[at + 1]])
}

/// Four bytes as they are in the packet (an address word).
#[inline(always)]
fn word(bytes: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// A typed view over a header's bytes as [`read`] returns them, with an
/// accessor for each field that compiles to the load of the field's bytes.
macro_rules! header {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy)]
        #[repr(transparent)]
        struct $name([u8; $len]);

        impl $name {
            /// The header at `offset`, `None` when the packet ends first.
            #[inline(always)]
            fn at(ctx: &XdpContext, offset: usize) -> Option<Self> {
                read(ctx, offset).map(Self)
            }
        }
    };
}

header!(
    /// An ethertype field: at [`ETH_TYPE_OFFSET`] of the Ethernet header, or
    /// at [`VLAN_TYPE_OFFSET`] of a VLAN tag, after its TCI. Read alone, it
    /// is one load.
    EtherType,
    2
);

impl EtherType {
    #[inline(always)]
    fn get(self) -> u16 {
        be16(&self.0, 0)
    }
}

header!(
    /// The fixed part of an IPv4 header
    /// (<https://www.rfc-editor.org/rfc/rfc791#section-3.1>).
    Ipv4Hdr,
    IPV4_MIN_HLEN
);

impl Ipv4Hdr {
    #[inline(always)]
    fn version(&self) -> u8 {
        self.0[0] >> 4
    }

    /// The header's length in 32-bit words, options included.
    #[inline(always)]
    fn ihl(&self) -> u8 {
        self.0[0] & 0x0F
    }

    /// The fragment offset, in 8-octet units (0: the first fragment).
    #[inline(always)]
    fn fragment_offset(&self) -> u16 {
        be16(&self.0, 6) & IPV4_OFFSET_MASK
    }

    #[inline(always)]
    fn protocol(&self) -> u8 {
        self.0[9]
    }

    /// The source address in packet byte order.
    #[inline(always)]
    fn src(&self) -> u32 {
        word(&self.0, 12)
    }
}

header!(
    /// The fixed IPv6 header (<https://www.rfc-editor.org/rfc/rfc8200#section-3>).
    Ipv6Hdr,
    IPV6_HLEN
);

impl Ipv6Hdr {
    #[inline(always)]
    fn version(&self) -> u8 {
        self.0[0] >> 4
    }

    #[inline(always)]
    fn next_header(&self) -> u8 {
        self.0[6]
    }

    /// The source address in packet byte order.
    #[inline(always)]
    fn src(&self) -> [u32; 4] {
        [word(&self.0, 8), word(&self.0, 12), word(&self.0, 16), word(&self.0, 20)]
    }
}

header!(
    /// The first two bytes of an IPv6 extension header: next header, then
    /// the length.
    Ipv6ExtHdr,
    IPV6_EXT_HLEN
);

impl Ipv6ExtHdr {
    #[inline(always)]
    fn next_header(self) -> u8 {
        self.0[0]
    }

    /// The length field, in units that depend on the header.
    #[inline(always)]
    fn len(self) -> usize {
        usize::from(self.0[1])
    }
}

header!(
    /// An IPv6 fragment header
    /// (<https://www.rfc-editor.org/rfc/rfc8200#section-4.5>).
    Ipv6FragHdr,
    IPV6_FRAG_HLEN
);

impl Ipv6FragHdr {
    #[inline(always)]
    fn next_header(self) -> u8 {
        self.0[0]
    }

    /// The fragment offset, in 8-octet units (0: the first fragment).
    #[inline(always)]
    fn fragment_offset(self) -> u16 {
        be16(&self.0, 2) >> 3
    }
}

header!(
    /// A TCP header up to its flags: ports, sequence and acknowledgement
    /// numbers, data offset, flags.
    TcpHdr,
    TCP_THROUGH_FLAGS
);

impl TcpHdr {
    #[inline(always)]
    fn dst_port(&self) -> u16 {
        be16(&self.0, 2)
    }

    #[inline(always)]
    fn flags(&self) -> u8 {
        self.0[13]
    }
}

header!(
    /// A UDP header's ports.
    UdpHdr,
    UDP_THROUGH_DPORT
);

impl UdpHdr {
    #[inline(always)]
    fn dst_port(self) -> u16 {
        be16(&self.0, 2)
    }
}

/// Parses L2 and L3. `Err` carries the verdict reason of a packet that is not
/// IP ([`reason::NON_IP`]) or cannot be read ([`reason::MALFORMED`]).
#[inline(always)]
pub fn packet(ctx: &XdpContext) -> Result<Packet, Reason> {
    let (ethertype, l3) = ethernet(ctx)?;
    match ethertype {
        ETH_P_IP => ipv4(ctx, l3),
        ETH_P_IPV6 => ipv6(ctx, l3),
        _ => Err(reason::NON_IP),
    }
}

/// The ethertype after up to [`MAX_VLAN_TAGS`] VLAN tags, and the offset of
/// the L3 header.
#[inline(always)]
fn ethernet(ctx: &XdpContext) -> Result<(u16, usize), Reason> {
    let mut ethertype = EtherType::at(ctx, ETH_TYPE_OFFSET).ok_or(reason::MALFORMED)?.get();
    let mut offset = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        ethertype = EtherType::at(ctx, offset + VLAN_TYPE_OFFSET).ok_or(reason::MALFORMED)?.get();
        offset += VLAN_HLEN;
    }
    Ok((ethertype, offset))
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, l3: usize) -> Result<Packet, Reason> {
    let h = Ipv4Hdr::at(ctx, l3).ok_or(reason::MALFORMED)?;
    let hlen = usize::from(h.ihl()) * 4;
    if h.version() != 4 || hlen < IPV4_MIN_HLEN {
        return Err(reason::MALFORMED);
    }
    let first_fragment = h.fragment_offset() == 0;
    // Options are legal; the whole header must be there.
    if hlen > IPV4_MIN_HLEN && !holds(ctx, l3 + hlen - 1) {
        return Err(reason::MALFORMED);
    }
    Ok(Packet {
        family: FAMILY_V4,
        src: [h.src(), 0, 0, 0],
        proto: h.protocol(),
        l4: if first_fragment { Some(l3 + hlen) } else { None },
    })
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, l3: usize) -> Result<Packet, Reason> {
    let h = Ipv6Hdr::at(ctx, l3).ok_or(reason::MALFORMED)?;
    if h.version() != 6 {
        return Err(reason::MALFORMED);
    }
    let src = h.src();
    let mut next = h.next_header();
    let mut offset = l3 + IPV6_HLEN;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                // The length is in 8-octet units not counting the first 8.
                let e = Ipv6ExtHdr::at(ctx, offset).ok_or(reason::MALFORMED)?;
                next = e.next_header();
                offset += (e.len() + 1) * 8;
            }
            IPPROTO_AH => {
                // The length is in 4-octet units, less 2
                // (<https://www.rfc-editor.org/rfc/rfc4302#section-2.2>).
                let e = Ipv6ExtHdr::at(ctx, offset).ok_or(reason::MALFORMED)?;
                next = e.next_header();
                offset += (e.len() + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let e = Ipv6FragHdr::at(ctx, offset).ok_or(reason::MALFORMED)?;
                if e.fragment_offset() != 0 {
                    // A non-first fragment: no L4 header to read.
                    return Ok(Packet { family: FAMILY_V6, src, proto: e.next_header(), l4: None });
                }
                next = e.next_header();
                offset += IPV6_FRAG_HLEN;
            }
            _ => return Ok(Packet { family: FAMILY_V6, src, proto: next, l4: Some(offset) }),
        }
        // The whole extension header must be there, not only its first bytes.
        if !holds(ctx, offset - 1) {
            return Err(reason::MALFORMED);
        }
    }
    // Still in extension headers after the bounded walk: the source is known,
    // the ports are not.
    Ok(Packet { family: FAMILY_V6, src, proto: next, l4: None })
}

/// The destination port (and SYN flag) of a TCP or UDP packet, `None` when
/// the packet is neither, carries no readable L4 header, or is truncated
/// within it.
#[inline(always)]
pub fn ports(ctx: &XdpContext, packet: &Packet) -> Option<Ports> {
    let l4 = packet.l4?;
    match packet.proto {
        PROTO_TCP => {
            let h = TcpHdr::at(ctx, l4)?;
            Some(Ports { dst: h.dst_port(), syn: h.flags() & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN })
        }
        PROTO_UDP => {
            let h = UdpHdr::at(ctx, l4)?;
            Some(Ports { dst: h.dst_port(), syn: false })
        }
        _ => None,
    }
}
