//! Header parsing. Packet memory is read in place only at offsets fixed at
//! compile time ([`fixed`]: the common case, an untagged packet without IPv4
//! options or IPv6 extension headers); a header at an offset known only at
//! run time is copied out by the kernel ([`copied`]). Neither adds a
//! register to a packet pointer, which the verifier refuses a loader
//! without `CAP_PERFMON`. The headers are typed views over the bytes read,
//! with a named accessor for each field.

use core::{
    arch::asm,
    marker::PhantomData,
    mem::MaybeUninit,
    ptr::{addr_of, addr_of_mut},
};

use aya_ebpf::{
    bindings::xdp_md,
    helpers::{bpf_xdp_get_buff_len, bpf_xdp_load_bytes},
    programs::XdpContext,
};
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

/// What the metering needs of an IP packet. Without implicit padding, and
/// every byte written by [`packet`]: the verifier of a loader without
/// `CAP_PERFMON` refuses a read of stack bytes that were never written,
/// which a copy of padding is.
#[repr(C)]
pub struct Packet {
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: Family,
    /// The source address in packet byte order; IPv4 uses `src[0]`.
    pub src: [u32; 4],
    /// Offset of the L4 header, [`NO_L4`] when the packet carries none that
    /// can be read (a non-first fragment, or more IPv6 extension headers
    /// than [`MAX_IPV6_EXT_HEADERS`]).
    l4: u32,
    /// The L4 protocol (the last next-header for IPv6).
    pub proto: u8,
    // Padding made explicit, as scalars: a byte array of zeros would be
    // a call of `memset`.
    _pad: u8,
    _pad_word: u16,
}

// The protocol and the padding after it are one aligned word, the last
// ([`Packet::clear`] writes them as one).
const _: () = assert!(
    core::mem::offset_of!(Packet, proto) % 4 == 0
        && core::mem::offset_of!(Packet, proto) + 4 == size_of::<Packet>()
);

/// [`Packet::l4`] of a packet whose L4 header cannot be read: 0, where no
/// L4 header can be.
const NO_L4: u32 = 0;

impl Packet {
    /// Writes a whole packet into `out`: every byte of it.
    #[inline(always)]
    fn write(
        out: &mut MaybeUninit<Self>,
        family: Family,
        src: [u32; 4],
        proto: u8,
        l4: Option<usize>,
    ) -> &mut Self {
        out.write(Self { family, src, l4: l4_field(l4), proto, _pad: 0, _pad_word: 0 })
    }

    /// A packet of zeros in `out` (no family, no source, no L4 header), one
    /// store a field: for a global function, which the verifier wants to
    /// find every byte of its argument written, and which LLVM would make a
    /// call of `memset` of (a loop the verifier of a loader without
    /// `CAP_PERFMON` refuses) if written as one.
    #[inline(always)]
    fn clear(out: &mut MaybeUninit<Self>) -> &mut Self {
        let p = out.as_mut_ptr();
        // SAFETY: aligned fields of `out`, each written; then all of it is.
        unsafe {
            addr_of_mut!((*p).family).write_volatile(Family::NONE);
            addr_of_mut!((*p).src[0]).write_volatile(0);
            addr_of_mut!((*p).src[1]).write_volatile(0);
            addr_of_mut!((*p).src[2]).write_volatile(0);
            addr_of_mut!((*p).src[3]).write_volatile(0);
            addr_of_mut!((*p).l4).write_volatile(NO_L4);
            // The protocol and the padding after it: one aligned word.
            #[expect(clippy::cast_ptr_alignment, reason = "the word is aligned, as asserted after `Packet`")]
            addr_of_mut!((*p).proto).cast::<u32>().write_volatile(0);
            out.assume_init_mut()
        }
    }

    /// The offset of the L4 header, if it can be read.
    #[inline(always)]
    fn l4(&self) -> Option<usize> {
        (self.l4 != NO_L4).then_some(self.l4 as usize)
    }

    #[inline(always)]
    fn set_l4(&mut self, proto: u8, l4: Option<usize>) {
        self.proto = proto;
        self.l4 = l4_field(l4);
    }
}

/// [`Packet::l4`] for the L4 header at `l4`, if there is one. An L4 header
/// is never at 0, and offsets into a frame fit.
#[inline(always)]
fn l4_field(l4: Option<usize>) -> u32 {
    l4.map_or(NO_L4, |l4| l4 as u32)
}

/// The L4 facts the scope looks at.
pub struct Ports {
    /// Destination port, host byte order.
    pub dst: u16,
    /// Whether this is a TCP SYN without ACK (a connection attempt).
    pub syn: bool,
}

/// Where the L4 header is when there are no VLAN tags, no IPv4 options and
/// no IPv6 extension headers: the common case, read in place.
const L4_V4_UNTAGGED: usize = ETH_HLEN + IPV4_MIN_HLEN;
const L4_V6_UNTAGGED: usize = ETH_HLEN + IPV6_HLEN;

/// A header's bytes, where they were read: in the packet, or in a [`Room`]
/// on the stack that they were copied to. Each field is one load of its own
/// size at a constant offset, in inline assembly: LLVM, which the build
/// does not let assume misaligned access (it would join stack stores into
/// misaligned ones, which the verifier refuses), would otherwise read a
/// field of unknown alignment a byte at a time; and it cannot join two
/// loads, nor move one before the bounds check.
#[derive(Clone, Copy)]
struct Bytes<'a> {
    at: *const u8,
    _of: PhantomData<&'a [u8]>,
}

/// One load of `$width` (`u8`, `u16`, `u32`) at the constant offset `$at`
/// of `$bytes`, zero-extended into a `u64`.
macro_rules! load {
    ($bytes:expr, $width:literal, $at:expr) => {{
        let value: u64;
        // SAFETY: `Bytes` is made only over the checked bytes of a header
        // (in the packet, or in its `Room`), and each accessor reads inside
        // the header's length; the load only reads. In the packet the
        // verifier accepts a misaligned load where the CPU does; in a
        // `Room` every field is aligned.
        unsafe {
            asm!(
                concat!("{v} = *(", $width, " *)({p} + {at})"),
                v = out(reg) value,
                p = in(reg) $bytes.at,
                at = const $at,
                options(readonly, nostack, preserves_flags),
            );
        }
        value
    }};
}

impl Bytes<'_> {
    /// The byte at `AT`.
    #[inline(always)]
    fn u8<const AT: usize>(self) -> u8 {
        load!(self, "u8", AT) as u8
    }

    /// The big-endian `u16` at `AT`: a load and a byte swap.
    #[inline(always)]
    fn be16<const AT: usize>(self) -> u16 {
        u16::from_be(load!(self, "u16", AT) as u16)
    }

    /// Four bytes as they are in the packet (an address word).
    #[inline(always)]
    fn word<const AT: usize>(self) -> u32 {
        load!(self, "u32", AT) as u32
    }
}

/// Room on the stack for a header of `N` bytes copied out of the packet,
/// aligned so that each of its fields is at an offset its size divides.
#[repr(C, align(8))]
struct Room<const N: usize>(MaybeUninit<[u8; N]>);

impl<const N: usize> Room<N> {
    #[inline(always)]
    const fn new() -> Self {
        Self(MaybeUninit::uninit())
    }
}

/// The `N` bytes at the offset `OFF`, fixed at compile time, in place.
///
/// Packet memory is read only at constant offsets from the start of the
/// packet: the verifier of a loader without `CAP_PERFMON` (the Spectre v1
/// hardening) refuses a packet pointer plus a register. The start and the
/// end are read from the context afresh, volatile, so that the optimiser
/// cannot join two such reads into one at a register offset.
#[inline(always)]
fn fixed<const OFF: usize, const N: usize>(ctx: &XdpContext) -> Option<Bytes<'_>> {
    let md = ctx.ctx;
    // SAFETY: `md` is the program's context; the kernel turns these two
    // loads into the packet's bounds.
    let (start, end) = unsafe {
        (addr_of!((*md).data).read_volatile() as usize, addr_of!((*md).data_end).read_volatile() as usize)
    };
    if start + OFF + N > end {
        return None;
    }
    Some(Bytes { at: (start + OFF) as *const u8, _of: PhantomData })
}

/// The `N` bytes at `offset`, known only at run time, copied into `room` by
/// the kernel (`bpf_xdp_load_bytes`, which checks the bounds).
#[inline(always)]
fn copied<'a, const N: usize>(ctx: &XdpContext, offset: usize, room: &'a mut Room<N>) -> Option<Bytes<'a>> {
    let offset = u32::try_from(offset).ok()?;
    let to = room.0.as_mut_ptr();
    // SAFETY: `room` has space for the `N` bytes the helper writes.
    if unsafe { bpf_xdp_load_bytes(ctx.ctx, offset, to.cast(), N as u32) } != 0 {
        return None;
    }
    Some(Bytes { at: to.cast_const().cast(), _of: PhantomData })
}

/// Whether the packet holds the byte at `offset`: the end of a header of a
/// length read from the packet.
#[inline(always)]
fn holds(ctx: &XdpContext, offset: usize) -> bool {
    (offset as u64) < frame_len(ctx)
}

/// The frame's length in bytes. The kernel's count, not the distance
/// between the packet's bounds: a loader without `CAP_PERFMON` may not
/// subtract one packet pointer from another.
#[inline(always)]
pub fn frame_len(ctx: &XdpContext) -> u64 {
    // SAFETY: a helper that only reads the context.
    unsafe { bpf_xdp_get_buff_len(ctx.ctx) }
}

/// A typed view over a header's [`Bytes`], with an accessor for each field.
macro_rules! header {
    ($(#[$doc:meta])* $name:ident, $len:expr) => {
        $(#[$doc])*
        #[derive(Clone, Copy)]
        struct $name<'a>(Bytes<'a>);

        #[allow(dead_code, reason = "not every header is read both ways")]
        impl<'a> $name<'a> {
            /// The header at `OFF`, read in place; `None` when the packet
            /// ends first.
            #[inline(always)]
            fn fixed<const OFF: usize>(ctx: &'a XdpContext) -> Option<Self> {
                fixed::<OFF, { $len }>(ctx).map(Self)
            }

            /// The header at `offset`, copied into `room`; `None` when the
            /// packet ends first.
            #[inline(always)]
            fn copied(ctx: &XdpContext, offset: usize, room: &'a mut Room<{ $len }>) -> Option<Self> {
                copied(ctx, offset, room).map(Self)
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

impl EtherType<'_> {
    #[inline(always)]
    fn get(self) -> u16 {
        self.0.be16::<0>()
    }
}

header!(
    /// The fixed part of an IPv4 header
    /// (<https://www.rfc-editor.org/rfc/rfc791#section-3.1>).
    Ipv4Hdr,
    IPV4_MIN_HLEN
);

impl Ipv4Hdr<'_> {
    #[inline(always)]
    fn version(self) -> u8 {
        self.0.u8::<0>() >> 4
    }

    /// The header's length in 32-bit words, options included.
    #[inline(always)]
    fn ihl(self) -> u8 {
        self.0.u8::<0>() & 0x0F
    }

    /// The fragment offset, in 8-octet units (0: the first fragment).
    #[inline(always)]
    fn fragment_offset(self) -> u16 {
        self.0.be16::<6>() & IPV4_OFFSET_MASK
    }

    #[inline(always)]
    fn protocol(self) -> u8 {
        self.0.u8::<9>()
    }

    /// The source address in packet byte order.
    #[inline(always)]
    fn src(self) -> u32 {
        self.0.word::<12>()
    }
}

header!(
    /// The fixed IPv6 header (<https://www.rfc-editor.org/rfc/rfc8200#section-3>).
    Ipv6Hdr,
    IPV6_HLEN
);

impl Ipv6Hdr<'_> {
    #[inline(always)]
    fn version(self) -> u8 {
        self.0.u8::<0>() >> 4
    }

    #[inline(always)]
    fn next_header(self) -> u8 {
        self.0.u8::<6>()
    }

    /// The source address in packet byte order.
    #[inline(always)]
    fn src(self) -> [u32; 4] {
        [self.0.word::<8>(), self.0.word::<12>(), self.0.word::<16>(), self.0.word::<20>()]
    }
}

header!(
    /// The first 8 bytes of an IPv6 extension header: next header, then the
    /// length (<https://www.rfc-editor.org/rfc/rfc8200#section-4.3>), or a
    /// whole fragment header
    /// (<https://www.rfc-editor.org/rfc/rfc8200#section-4.5>).
    Ipv6FragHdr,
    IPV6_FRAG_HLEN
);

impl Ipv6FragHdr<'_> {
    #[inline(always)]
    fn next_header(self) -> u8 {
        self.0.u8::<0>()
    }

    /// The length field, in units that depend on the header.
    #[inline(always)]
    fn len_field(self) -> usize {
        usize::from(self.0.u8::<1>())
    }

    /// A fragment header's fragment offset, in 8-octet units (0: the first
    /// fragment).
    #[inline(always)]
    fn fragment_offset(self) -> u16 {
        self.0.be16::<2>() >> 3
    }
}

header!(
    /// A TCP header up to its flags: ports, sequence and acknowledgement
    /// numbers, data offset, flags.
    TcpHdr,
    TCP_THROUGH_FLAGS
);

impl TcpHdr<'_> {
    #[inline(always)]
    fn ports(self) -> Ports {
        Ports { dst: self.dst_port(), syn: self.flags() & (TCP_FLAG_SYN | TCP_FLAG_ACK) == TCP_FLAG_SYN }
    }

    #[inline(always)]
    fn dst_port(self) -> u16 {
        self.0.be16::<2>()
    }

    #[inline(always)]
    fn flags(self) -> u8 {
        self.0.u8::<13>()
    }
}

header!(
    /// A UDP header's ports.
    UdpHdr,
    UDP_THROUGH_DPORT
);

impl UdpHdr<'_> {
    #[inline(always)]
    fn ports(self) -> Ports {
        Ports { dst: self.dst_port(), syn: false }
    }

    #[inline(always)]
    fn dst_port(self) -> u16 {
        self.0.be16::<2>()
    }
}

/// Parses L2 and L3 into `packet`. `Err` carries the verdict reason of a
/// packet that is not IP ([`reason::NON_IP`]) or cannot be read
/// ([`reason::MALFORMED`]). An untagged packet's L3 header is read in
/// place, a tagged one's copied out.
#[inline(always)]
pub fn packet(ctx: &XdpContext, packet: &mut MaybeUninit<Packet>) -> Result<(), Reason> {
    let ethertype = EtherType::fixed::<ETH_TYPE_OFFSET>(ctx).ok_or(reason::MALFORMED)?.get();
    match ethertype {
        ETH_P_IP => ipv4(ctx, ETH_HLEN, Ipv4Hdr::fixed::<ETH_HLEN>(ctx), packet),
        ETH_P_IPV6 => ipv6(ctx, ETH_HLEN, Ipv6Hdr::fixed::<ETH_HLEN>(ctx), packet),
        ETH_P_8021Q | ETH_P_8021AD => outcome(tagged(ctx.ctx, Packet::clear(packet))),
        _ => Err(reason::NON_IP),
    }
}

/// What a global function of the parser returns for a packet it parsed;
/// otherwise the slot of the verdict reason.
const PARSED: u32 = u32::MAX;

/// The `Result` a global function's [`PARSED`] or reason slot stands for,
/// one constant on each path.
#[inline(always)]
fn outcome(slot: u32) -> Result<(), Reason> {
    match slot {
        PARSED => Ok(()),
        s if s == reason::NON_IP.slot() => Err(reason::NON_IP),
        _ => Err(reason::MALFORMED),
    }
}

/// A global function's return value for `result`.
#[inline(always)]
fn slot_of(result: Result<(), Reason>) -> u32 {
    match result {
        Ok(()) => PARSED,
        Err(verdict) => verdict.slot(),
    }
}

/// [`packet`] for a frame with a VLAN tag: up to [`MAX_VLAN_TAGS`] of them
/// (802.1ad outer, 802.1Q inner), each of whose ethertypes is at an offset
/// fixed at compile time.
///
/// A BPF global function (exported, so `BTF_FUNC_GLOBAL`), as the other
/// rare paths: the verifier checks it once on its own, not once on every
/// path that calls it. It sees a pointer argument as memory of its type's
/// size that may be NULL and whose contents it knows nothing of, and wants
/// a scalar back.
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn tagged(md: *mut xdp_md, packet: *mut Packet) -> u32 {
    // SAFETY: NULL or the caller's packet.
    let Some(packet) = (unsafe { packet.as_mut() }) else {
        return reason::MALFORMED.slot();
    };
    // SAFETY: a `Packet` is a `MaybeUninit<Packet>` that is initialised.
    let packet = unsafe { &mut *core::ptr::from_mut(packet).cast::<MaybeUninit<Packet>>() };
    slot_of(tagged_of(&XdpContext::new(md), packet))
}

#[inline(always)]
fn tagged_of(ctx: &XdpContext, packet: &mut MaybeUninit<Packet>) -> Result<(), Reason> {
    const INNER: usize = ETH_HLEN + VLAN_TYPE_OFFSET;
    const SECOND: usize = ETH_HLEN + VLAN_HLEN + VLAN_TYPE_OFFSET;
    let mut ethertype = EtherType::fixed::<INNER>(ctx).ok_or(reason::MALFORMED)?.get();
    let mut l3 = ETH_HLEN + VLAN_HLEN;
    if MAX_VLAN_TAGS > 1 && (ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD) {
        ethertype = EtherType::fixed::<SECOND>(ctx).ok_or(reason::MALFORMED)?.get();
        l3 += VLAN_HLEN;
    }
    match ethertype {
        ETH_P_IP => ipv4(ctx, l3, Ipv4Hdr::copied(ctx, l3, &mut Room::new()), packet),
        ETH_P_IPV6 => ipv6(ctx, l3, Ipv6Hdr::copied(ctx, l3, &mut Room::new()), packet),
        _ => Err(reason::NON_IP),
    }
}

/// An IPv4 packet whose header (`h`, as read) is at `l3`.
#[inline(always)]
fn ipv4(
    ctx: &XdpContext,
    l3: usize,
    h: Option<Ipv4Hdr<'_>>,
    packet: &mut MaybeUninit<Packet>,
) -> Result<(), Reason> {
    let h = h.ok_or(reason::MALFORMED)?;
    let hlen = usize::from(h.ihl()) * 4;
    if h.version() != 4 || hlen < IPV4_MIN_HLEN {
        return Err(reason::MALFORMED);
    }
    let first_fragment = h.fragment_offset() == 0;
    // Options are legal; the whole header must be there.
    if hlen > IPV4_MIN_HLEN && !holds(ctx, l3 + hlen - 1) {
        return Err(reason::MALFORMED);
    }
    Packet::write(packet, FAMILY_V4, [h.src(), 0, 0, 0], h.protocol(), first_fragment.then_some(l3 + hlen));
    Ok(())
}

/// An IPv6 packet whose fixed header (`h`, as read) is at `l3`.
#[inline(always)]
fn ipv6(
    ctx: &XdpContext,
    l3: usize,
    h: Option<Ipv6Hdr<'_>>,
    packet: &mut MaybeUninit<Packet>,
) -> Result<(), Reason> {
    let h = h.ok_or(reason::MALFORMED)?;
    if h.version() != 6 {
        return Err(reason::MALFORMED);
    }
    let src = h.src();
    let next = h.next_header();
    let offset = l3 + IPV6_HLEN;
    // Compared one by one, not through `is_extension`'s mask: the verifier
    // learns less from a mask, and walks more states after it.
    if !matches!(next, IPPROTO_HOPOPTS | IPPROTO_ROUTING | IPPROTO_DSTOPTS | IPPROTO_AH | IPPROTO_FRAGMENT) {
        Packet::write(packet, FAMILY_V6, src, next, Some(offset));
        return Ok(());
    }
    let packet = Packet::write(packet, FAMILY_V6, src, next, None);
    outcome(extensions(ctx.ctx, u32::from(next), offset as u32, packet))
}

/// Whether `next` is an IPv6 extension header that may precede L4.
#[inline(always)]
fn is_extension(next: u8) -> bool {
    const MASK: u64 = 1 << IPPROTO_HOPOPTS
        | 1 << IPPROTO_ROUTING
        | 1 << IPPROTO_FRAGMENT
        | 1 << IPPROTO_AH
        | 1 << IPPROTO_DSTOPTS;
    next < 64 && (MASK >> next) & 1 != 0
}

/// The walk over IPv6 extension headers from the one of type `next` at
/// `offset`: sets the packet's L4 protocol and where its header is (none
/// past a non-first fragment, or still in extension headers after
/// [`MAX_IPV6_EXT_HEADERS`] of them: the source is known, the ports are
/// not).
///
/// Every extension header is at least 8 bytes long, so each is read as its
/// first 8 (a fragment header whole), and its length worked out without a
/// branch: each branch of this loop is one more path for the verifier to
/// walk in every later turn of it, and the Spectre v1 hardening of a loader
/// without `CAP_PERFMON` walks both sides of the branches it can decide.
///
/// A global function, as [`tagged`].
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn extensions(md: *mut xdp_md, next: u32, offset: u32, packet: *mut Packet) -> u32 {
    // SAFETY: NULL or the caller's packet.
    let Some(packet) = (unsafe { packet.as_mut() }) else {
        return reason::MALFORMED.slot();
    };
    slot_of(extensions_of(&XdpContext::new(md), next as u8, offset as usize, packet))
}

#[inline(always)]
fn extensions_of(
    ctx: &XdpContext,
    mut next: u8,
    mut offset: usize,
    packet: &mut Packet,
) -> Result<(), Reason> {
    for _ in 0..MAX_IPV6_EXT_HEADERS {
        if !is_extension(next) {
            packet.set_l4(next, Some(offset));
            return Ok(());
        }
        let mut room = Room::new();
        let e = Ipv6FragHdr::copied(ctx, offset, &mut room).ok_or(reason::MALFORMED)?;
        let fragment = usize::from(next == IPPROTO_FRAGMENT);
        if fragment != 0 && e.fragment_offset() != 0 {
            // A non-first fragment: no L4 header to read.
            packet.set_l4(e.next_header(), None);
            return Ok(());
        }
        // Hop-by-hop, routing and destination options: in 8-octet units not
        // counting the first 8; AH: in 4-octet units, less 2
        // (<https://www.rfc-editor.org/rfc/rfc4302#section-2.2>); a
        // fragment header: 8 bytes.
        let ah = usize::from(next == IPPROTO_AH);
        let units = e.len_field() + 1 + ah;
        offset += (1 - fragment) * (units << (3 - ah)) + fragment * IPV6_FRAG_HLEN;
        next = e.next_header();
        // The whole extension header must be there, not only its first bytes.
        if !holds(ctx, offset - 1) {
            return Err(reason::MALFORMED);
        }
    }
    packet.set_l4(next, None);
    Ok(())
}

/// The destination port (and SYN flag) of a TCP or UDP packet, `None` when
/// the packet is neither, carries no readable L4 header, or is truncated
/// within it. The header is read in place where it is in an untagged
/// packet without options or extension headers, and copied out by a call
/// of its own elsewhere: each path reads the fields it needs, so that no
/// pointer is either in the packet or on the stack, which a loader without
/// `CAP_PERFMON` could not keep across a helper call.
#[inline(always)]
pub fn ports(ctx: &XdpContext, packet: &Packet) -> Option<Ports> {
    let l4 = packet.l4()?;
    let tcp = match packet.proto {
        PROTO_TCP => true,
        PROTO_UDP => false,
        _ => return None,
    };
    match l4 {
        L4_V4_UNTAGGED => ports_in_place::<L4_V4_UNTAGGED>(ctx, tcp),
        L4_V6_UNTAGGED => ports_in_place::<L4_V6_UNTAGGED>(ctx, tcp),
        _ => Ports::unpack(ports_copied(ctx.ctx, l4 as u32, u32::from(tcp))),
    }
}

/// [`ports`] of a TCP (`tcp`) or UDP header at `OFF`.
#[inline(always)]
fn ports_in_place<const OFF: usize>(ctx: &XdpContext, tcp: bool) -> Option<Ports> {
    if tcp {
        TcpHdr::fixed::<OFF>(ctx).map(TcpHdr::ports)
    } else {
        UdpHdr::fixed::<OFF>(ctx).map(UdpHdr::ports)
    }
}

/// [`ports`] of a TCP (`tcp` 1) or UDP header at `l4`, copied out; packed
/// ([`Ports::pack`]). A global function, as [`tagged`].
#[unsafe(no_mangle)]
#[inline(never)]
extern "C" fn ports_copied(md: *mut xdp_md, l4: u32, tcp: u32) -> u32 {
    let ctx = &XdpContext::new(md);
    let ports = if tcp != 0 {
        TcpHdr::copied(ctx, l4 as usize, &mut Room::new()).map(TcpHdr::ports)
    } else {
        UdpHdr::copied(ctx, l4 as usize, &mut Room::new()).map(UdpHdr::ports)
    };
    Ports::pack(ports)
}

impl Ports {
    /// Bit of [`Ports::pack`] for a header that was read.
    const READ: u32 = 1 << 31;
    const SYN: u32 = 1 << 16;

    /// `ports` as a scalar: [`Ports::READ`] and [`Ports::SYN`] over the port.
    #[inline(always)]
    fn pack(ports: Option<Self>) -> u32 {
        ports.map_or(0, |p| Self::READ | if p.syn { Self::SYN } else { 0 } | u32::from(p.dst))
    }

    #[inline(always)]
    fn unpack(packed: u32) -> Option<Self> {
        (packed & Self::READ != 0).then_some(Self { dst: packed as u16, syn: packed & Self::SYN != 0 })
    }
}
