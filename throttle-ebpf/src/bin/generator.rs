//! The benchmarks' traffic generator (`cargo xtask bench`, the `live` part):
//! an XDP program run on the sending end of a veth pair through
//! `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`. The kernel hands it
//! page-pool frames holding the bench's template (Ethernet, IPv4, UDP or TCP)
//! and acts on its verdict: `XDP_TX` becomes a redirect out of the sending
//! veth, so the peer receives `xdp_frame`s before any skb exists, as from a
//! NIC ([`bpf_test_run_xdp_live`](https://elixir.bootlin.com/linux/v6.18/source/net/bpf/test_run.c)).
//!
//! Per frame it writes the source address (the `n`-th frame of this CPU
//! comes from `base + (n * stride & mask)`: with `mask + 1` a power of two
//! and `stride` odd, every source once per `mask + 1` frames, in a scrambled
//! order), the destination port and, for TCP, the flags, fixes the IPv4
//! header checksum (the stack checks it in `ip_rcv`; a UDP checksum of 0 is
//! none), counts the frame, and returns the verdict the bench set. The frames
//! are recycled pages, so what it writes stays in them; it writes every field
//! that varies on every frame.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action::XDP_ABORTED,
    macros::{map, xdp},
    maps::{Array, PerCpuArray},
    programs::XdpContext,
};

/// The bench's parameters, slot 0: `[u32; PARAMS]` indexed by the `P_*`
/// constants (the bench writes them before each run).
#[map(name = "GEN_PARAMS")]
static GEN_PARAMS: Array<[u32; PARAMS]> = Array::with_max_entries(1, 0);

/// Frames generated, per CPU, in slot 0. It also numbers the frames, so it
/// carries on from run to run.
#[map(name = "GEN_SENT")]
static GEN_SENT: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Words of the parameter value.
const PARAMS: usize = 8;
/// The first source address, host byte order.
const P_SRC_BASE: usize = 0;
/// Sources less one: a power of two less one.
const P_SRC_MASK: usize = 1;
/// The odd multiplier that scrambles the order of the sources.
const P_SRC_STRIDE: usize = 2;
/// The destination port, host byte order.
const P_DST_PORT: usize = 3;
/// The TCP flags byte; 0 for a UDP template (left alone).
const P_TCP_FLAGS: usize = 4;
/// The verdict to return: `XDP_TX` to send, `XDP_DROP` to time the
/// generator alone.
const P_VERDICT: usize = 5;

const ETH_HLEN: usize = 14;
/// The IPv4 header (no options) and where its fields are.
const IPV4_HLEN: usize = 20;
const IPV4_CHECK: usize = ETH_HLEN + 10;
const IPV4_SADDR: usize = ETH_HLEN + 12;
const L4: usize = ETH_HLEN + IPV4_HLEN;
const L4_DPORT: usize = L4 + 2;
const TCP_FLAGS: usize = L4 + 13;
/// The bytes the generator touches: through the TCP flags.
const WRITTEN: usize = TCP_FLAGS + 1;

#[xdp]
#[expect(clippy::needless_pass_by_value, reason = "the #[xdp] macro's signature")]
pub fn generator(ctx: XdpContext) -> u32 {
    try_generate(&ctx).unwrap_or(XDP_ABORTED)
}

fn try_generate(ctx: &XdpContext) -> Option<u32> {
    let params = GEN_PARAMS.get(0)?;
    let sent = GEN_SENT.get_ptr_mut(0)?;
    // SAFETY: a pointer from a successful lookup into this CPU's slot, which
    // nothing else writes while this program runs on this CPU.
    let n = unsafe {
        let n = *sent;
        *sent = n + 1;
        n
    };
    #[expect(clippy::cast_possible_truncation, reason = "the low bits number the frame within a cycle")]
    let index = (n as u32).wrapping_mul(params[P_SRC_STRIDE]) & params[P_SRC_MASK];
    let source = params[P_SRC_BASE].wrapping_add(index);

    let (start, end) = (ctx.data(), ctx.data_end());
    if start + WRITTEN > end {
        return None;
    }
    let frame = start as *mut u8;
    // SAFETY: the check above puts all `WRITTEN` bytes inside the frame, and
    // every offset below lies within them; the loads and stores are
    // unaligned ones, which the target allows on packet memory.
    unsafe {
        frame.add(IPV4_SADDR).cast::<u32>().write_unaligned(source.to_be());
        #[expect(clippy::cast_possible_truncation, reason = "a port, written as u32 by the bench")]
        frame.add(L4_DPORT).cast::<u16>().write_unaligned((params[P_DST_PORT] as u16).to_be());
        if params[P_TCP_FLAGS] != 0 {
            #[expect(clippy::cast_possible_truncation, reason = "a flags byte, written as u32 by the bench")]
            frame.add(TCP_FLAGS).write(params[P_TCP_FLAGS] as u8);
        }
        frame.add(IPV4_CHECK).cast::<u16>().write_unaligned(0);
        let mut sum = 0u32;
        let mut i = 0;
        while i < IPV4_HLEN {
            sum += u32::from(frame.add(ETH_HLEN + i).cast::<u16>().read_unaligned());
            i += 2;
        }
        sum = (sum & 0xffff) + (sum >> 16);
        sum += sum >> 16;
        // The one's complement sum is the same in either byte order, so
        // the words are summed and the result stored as loaded.
        #[expect(clippy::cast_possible_truncation, reason = "folded to 16 bits above")]
        frame.add(IPV4_CHECK).cast::<u16>().write_unaligned(!(sum as u16));
    }
    Some(params[P_VERDICT])
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

/// The object's license: the crate's. The program calls no `gpl_only`
/// helper (see throttle's `LICENSE`).
// SAFETY: the object's only `license` section and only symbol of this name,
// read by the loader and by nothing else.
#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 18] = *b"MIT OR Apache-2.0\0";
