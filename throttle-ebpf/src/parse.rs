//! Header parsing. Every read of packet memory goes through [`read`], which
//! checks the bounds the verifier wants to see.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use throttle_common::{reason, FAMILY_V4, FAMILY_V6, MAX_IPV6_EXT_HEADERS, PROTO_TCP, PROTO_UDP};

const ETH_HLEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
/// VLAN tags followed: 802.1ad outer and 802.1Q inner (`QinQ`).
const MAX_VLAN_TAGS: usize = 2;
const VLAN_HLEN: usize = 4;

const IPV4_MIN_HLEN: usize = 20;
/// Fragment offset bits of the IPv4 flags/offset field.
const IPV4_OFFSET_MASK: u16 = 0x1FFF;
const IPV6_HLEN: usize = 40;

/// IPv6 extension headers that may precede L4
/// (<https://www.rfc-editor.org/rfc/rfc8200#section-4.1>).
const IPPROTO_HOPOPTS: u8 = 0;
const IPPROTO_ROUTING: u8 = 43;
const IPPROTO_FRAGMENT: u8 = 44;
const IPPROTO_AH: u8 = 51;
const IPPROTO_DSTOPTS: u8 = 60;

const TCP_FLAG_SYN: u8 = 0x02;
const TCP_FLAG_ACK: u8 = 0x10;

/// What the metering needs of an IP packet.
pub struct Packet {
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: u32,
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

/// Reads a `T` (a byte array: no alignment needed) at `offset`.
#[inline(always)]
fn read<T: Copy>(ctx: &XdpContext, offset: usize) -> Option<T> {
    let ptr = ptr_at::<T>(ctx, offset)?;
    // SAFETY: `ptr_at` checked that the whole `T` lies inside the packet,
    // and the read makes no assumption about alignment.
    Some(unsafe { ptr.read_unaligned() })
}

#[inline(always)]
fn be16(bytes: [u8; 2]) -> u16 {
    u16::from_be_bytes(bytes)
}

#[inline(always)]
fn word(b: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Parses L2 and L3. `Err` carries the verdict reason of a packet that is not
/// IP ([`reason::NON_IP`]) or cannot be read ([`reason::MALFORMED`]).
#[inline(always)]
pub fn packet(ctx: &XdpContext) -> Result<Packet, u32> {
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
fn ethernet(ctx: &XdpContext) -> Result<(u16, usize), u32> {
    let mut ethertype = be16(read(ctx, ETH_HLEN - 2).ok_or(reason::MALFORMED)?);
    let mut offset = ETH_HLEN;
    for _ in 0..MAX_VLAN_TAGS {
        if ethertype != ETH_P_8021Q && ethertype != ETH_P_8021AD {
            break;
        }
        // A tag is the TCI (2 bytes) then the encapsulated ethertype.
        ethertype = be16(read(ctx, offset + 2).ok_or(reason::MALFORMED)?);
        offset += VLAN_HLEN;
    }
    Ok((ethertype, offset))
}

#[inline(always)]
fn ipv4(ctx: &XdpContext, l3: usize) -> Result<Packet, u32> {
    let h: [u8; IPV4_MIN_HLEN] = read(ctx, l3).ok_or(reason::MALFORMED)?;
    let ihl = usize::from(h[0] & 0x0F) * 4;
    if h[0] >> 4 != 4 || ihl < IPV4_MIN_HLEN {
        return Err(reason::MALFORMED);
    }
    // Options are legal; the whole header must be there.
    if ihl > IPV4_MIN_HLEN {
        read::<u8>(ctx, l3 + ihl - 1).ok_or(reason::MALFORMED)?;
    }
    let first_fragment = be16([h[6], h[7]]) & IPV4_OFFSET_MASK == 0;
    Ok(Packet {
        family: FAMILY_V4,
        src: [word(&h, 12), 0, 0, 0],
        proto: h[9],
        l4: if first_fragment { Some(l3 + ihl) } else { None },
    })
}

#[inline(always)]
fn ipv6(ctx: &XdpContext, l3: usize) -> Result<Packet, u32> {
    let h: [u8; IPV6_HLEN] = read(ctx, l3).ok_or(reason::MALFORMED)?;
    if h[0] >> 4 != 6 {
        return Err(reason::MALFORMED);
    }
    let src = [word(&h, 8), word(&h, 12), word(&h, 16), word(&h, 20)];
    let mut next = h[6];
    let mut offset = l3 + IPV6_HLEN;
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        match next {
            IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS => {
                // Next header, then the length in 8-octet units not counting
                // the first 8.
                let e: [u8; 2] = read(ctx, offset).ok_or(reason::MALFORMED)?;
                next = e[0];
                offset += (usize::from(e[1]) + 1) * 8;
            }
            IPPROTO_AH => {
                // The length is in 4-octet units, less 2
                // (<https://www.rfc-editor.org/rfc/rfc4302#section-2.2>).
                let e: [u8; 2] = read(ctx, offset).ok_or(reason::MALFORMED)?;
                next = e[0];
                offset += (usize::from(e[1]) + 2) * 4;
            }
            IPPROTO_FRAGMENT => {
                let e: [u8; 8] = read(ctx, offset).ok_or(reason::MALFORMED)?;
                if be16([e[2], e[3]]) >> 3 != 0 {
                    // A non-first fragment: no L4 header to read.
                    return Ok(Packet { family: FAMILY_V6, src, proto: e[0], l4: None });
                }
                next = e[0];
                offset += 8;
            }
            _ => return Ok(Packet { family: FAMILY_V6, src, proto: next, l4: Some(offset) }),
        }
        // The whole extension header must be there, not only its first bytes.
        read::<u8>(ctx, offset - 1).ok_or(reason::MALFORMED)?;
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
            // Ports, sequence and acknowledgement numbers, offset, flags.
            let h: [u8; 14] = read(ctx, l4)?;
            let flags = h[13];
            Some(Ports {
                dst: be16([h[2], h[3]]),
                syn: flags & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN,
            })
        }
        PROTO_UDP => {
            let h: [u8; 4] = read(ctx, l4)?;
            Some(Ports { dst: be16([h[2], h[3]]), syn: false })
        }
        _ => None,
    }
}
