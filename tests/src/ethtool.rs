//! A driver's statistics (`ethtool -S`) through the `SIOCETHTOOL` ioctl, so
//! the tests need no `ethtool` binary. veth reports per receive queue
//! `rx_queue_<i>_xdp_packets`: frames its NAPI handed to a native XDP program
//! on queue `i`, which shows which queues (and so which CPUs) carried a flow.

use std::{collections::BTreeMap, io, mem, net::UdpSocket, os::fd::AsRawFd};

use crate::Netns;

/// `ETHTOOL_GSSET_INFO`: sizes of string sets.
const ETHTOOL_GSSET_INFO: u32 = 0x37;
/// `ETHTOOL_GSTRINGS`: names of a string set.
const ETHTOOL_GSTRINGS: u32 = 0x1b;
/// `ETHTOOL_GSTATS`: the statistics' values.
const ETHTOOL_GSTATS: u32 = 0x1d;
/// `ETH_SS_STATS`: the string set of the statistics.
const ETH_SS_STATS: u32 = 1;
/// `ETH_GSTRING_LEN`: bytes per name.
const ETH_GSTRING_LEN: usize = 32;

/// `struct ethtool_sset_info` with room for one set.
#[repr(C)]
struct SsetInfo {
    cmd: u32,
    reserved: u32,
    sset_mask: u64,
    data: [u32; 1],
}

/// Every statistic of interface `ifname` in namespace `ns`, by name.
#[must_use]
pub fn stats(ns: &Netns, ifname: &str) -> BTreeMap<String, u64> {
    let ifname = ifname.to_owned();
    ns.run(move || stats_here(&ifname).unwrap_or_else(|e| panic!("ethtool statistics of {ifname}: {e}")))
}

/// Frames the native XDP program saw on each receive queue of a veth, by
/// queue index (`rx_queue_<i>_xdp_packets`).
#[must_use]
pub fn veth_xdp_packets_per_queue(ns: &Netns, ifname: &str) -> BTreeMap<u32, u64> {
    stats(ns, ifname)
        .into_iter()
        .filter_map(|(name, value)| {
            let queue = name.strip_prefix("rx_queue_")?.strip_suffix("_xdp_packets")?.parse().ok()?;
            Some((queue, value))
        })
        .collect()
}

fn stats_here(ifname: &str) -> io::Result<BTreeMap<String, u64>> {
    let sock = UdpSocket::bind("127.0.0.1:0").or_else(|_| UdpSocket::bind("[::1]:0"))?;

    let mut info = SsetInfo { cmd: ETHTOOL_GSSET_INFO, reserved: 0, sset_mask: 1 << ETH_SS_STATS, data: [0] };
    ioctl(&sock, ifname, (&raw mut info).cast())?;
    if info.sset_mask & (1 << ETH_SS_STATS) == 0 {
        return Ok(BTreeMap::new());
    }
    let count = info.data[0] as usize;

    // struct ethtool_gstrings { u32 cmd, string_set, len; u8 data[]; },
    // in u32 words so that it is aligned.
    let mut strings = vec![0u32; 3 + count * ETH_GSTRING_LEN / 4];
    strings[0] = ETHTOOL_GSTRINGS;
    strings[1] = ETH_SS_STATS;
    strings[2] = info.data[0];
    ioctl(&sock, ifname, strings.as_mut_ptr().cast())?;
    let names: Vec<String> = strings[3..]
        .iter()
        .flat_map(|w| w.to_ne_bytes())
        .collect::<Vec<u8>>()
        .chunks(ETH_GSTRING_LEN)
        .map(|raw| {
            let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
            String::from_utf8_lossy(&raw[..end]).into_owned()
        })
        .collect();

    // struct ethtool_stats { u32 cmd, n_stats; u64 data[]; }: the two u32
    // fill the first u64 word.
    let mut values = vec![0u64; 1 + count];
    let mut head = [0u8; 8];
    head[..4].copy_from_slice(&ETHTOOL_GSTATS.to_ne_bytes());
    head[4..].copy_from_slice(&info.data[0].to_ne_bytes());
    values[0] = u64::from_ne_bytes(head);
    ioctl(&sock, ifname, values.as_mut_ptr().cast())?;
    Ok(names.into_iter().zip(values[1..].iter().copied()).collect())
}

/// `ioctl(SIOCETHTOOL)` on `ifname` with `data` as `ifr_data`.
fn ioctl(sock: &UdpSocket, ifname: &str, data: *mut libc::c_char) -> io::Result<()> {
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { mem::zeroed() };
    let name = ifname.as_bytes();
    assert!(name.len() < req.ifr_name.len(), "interface name too long");
    for (dst, &src) in req.ifr_name.iter_mut().zip(name) {
        *dst = libc::c_char::from_ne_bytes([src]);
    }
    req.ifr_ifru.ifru_data = data;
    // SAFETY: `req` names the interface and points at a command buffer that
    // the caller sized for the command in it, alive for the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCETHTOOL, &raw mut req) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
