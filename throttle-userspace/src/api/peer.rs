//! Who calls the admin API from this host: the user that owns the calling
//! socket, found in the kernel's table of TCP sockets of the daemon's
//! network namespace (`/proc/net/tcp`, `/proc/net/tcp6`) by the peer's
//! address and port, as `ss -e` shows it. Without a token, a change over
//! loopback is only taken from root or from the user the daemon runs as:
//! on a shared host, another local user may look but not change.

use std::net::{IpAddr, SocketAddr};

/// The TCP state `LISTEN` in the table: a listening socket is no peer.
const TCP_LISTEN: &str = "0A";

/// The user owning the socket at `peer` (a client of ours), if the table
/// has it.
#[must_use]
pub fn uid_of(peer: SocketAddr) -> Option<u32> {
    let (table, wanted) = match peer.ip() {
        IpAddr::V4(ip) => {
            ("/proc/net/tcp", format!("{:08X}:{:04X}", u32::from_ne_bytes(ip.octets()), peer.port()))
        }
        IpAddr::V6(ip) => {
            let o = ip.octets();
            let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            let words = format!("{:08X}{:08X}{:08X}{:08X}", word(0), word(4), word(8), word(12));
            ("/proc/net/tcp6", format!("{words}:{:04X}", peer.port()))
        }
    };
    let text = std::fs::read_to_string(table).ok()?;
    uid_in(&text, &wanted)
}

/// The uid of the row of `table` whose local address is `local` (`ADDR:PORT`
/// in the table's hex), a socket that is not listening.
fn uid_in(table: &str, local: &str) -> Option<u32> {
    table.lines().skip(1).find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // sl local rem st tx:rx tr:when retrnsmt uid ...
        (fields.len() > 7 && fields[1].eq_ignore_ascii_case(local) && fields[3] != TCP_LISTEN)
            .then(|| fields[7].parse().ok())
            .flatten()
    })
}

/// Whether the user `uid` may change the policy without a token: root, or
/// the user the daemon runs as.
#[must_use]
pub fn may_change(uid: u32) -> bool {
    // SAFETY: geteuid cannot fail.
    uid == 0 || uid == unsafe { libc::geteuid() }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:2670 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1001 1 0000000000000000 100 0 0 10 0
   1: 0100007F:D431 0100007F:2670 01 00000000:00000000 00:00000000 00000000 65534        0 1002 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:2670 0100007F:D431 01 00000000:00000000 00:00000000 00000000     0        0 1003 1 0000000000000000 20 4 30 10 -1
";

    #[test]
    fn the_calling_socket_names_its_user() {
        // 127.0.0.1:54321 (0xD431) called the daemon on port 9840 (0x2670).
        let peer: SocketAddr = "127.0.0.1:54321".parse().unwrap();
        let IpAddr::V4(ip) = peer.ip() else { unreachable!() };
        let local = format!("{:08X}:{:04X}", u32::from_ne_bytes(ip.octets()), peer.port());
        assert_eq!(local, "0100007F:D431", "the table's byte order");
        assert_eq!(uid_in(TABLE, &local), Some(65_534));
        // The listening socket is no caller, and an unknown port none.
        assert_eq!(uid_in(TABLE, "0100007F:2670"), Some(0), "the accepted end, not the listener");
        assert_eq!(uid_in(TABLE, "0100007F:0001"), None);
        assert!(may_change(0));
        assert!(!may_change(65_534) || unsafe { libc::geteuid() } == 65_534);
    }
}
