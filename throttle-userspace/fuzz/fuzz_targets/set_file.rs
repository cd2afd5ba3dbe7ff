//! Set files (`.netset`, `.ipset`: one address or prefix a line, `#` and `;`
//! comments), read as the daemon and `PUT /v1/sets/{name}` read them: no text
//! makes the reader panic, and what it returns is what the lines say:
//!
//! - each prefix is normalised (no host bits) and is the prefix its line
//!   names, read by the standard library's own parsers;
//! - a file is the sum of its lines: the prefixes of each line on its own,
//!   sorted and without duplicates, and the lines refused, counted and the
//!   first of them named with their number and text;
//! - a line whose address and length are spelled as the standard library
//!   writes them, with no host bits, is never refused;
//! - the set holds the address of every prefix in it.

#![no_main]

use std::net::IpAddr;

use ipnet::IpNet;
use libfuzzer_sys::fuzz_target;
use throttle::policy::{parse_set, SetContent};

/// How many refused lines a load names (`policy::sets::REFUSED_SHOWN`).
const REFUSED_SHOWN: usize = 10;

/// The part of a line that names a prefix: before any comment, trimmed.
fn entry(line: &str) -> &str {
    line.split(['#', ';']).next().unwrap_or_default().trim()
}

/// The prefix an entry names, by the standard library's parsers: the
/// address, and the length (none: the address alone).
fn std_prefix(text: &str) -> Option<(IpAddr, Option<u8>)> {
    match text.split_once('/') {
        Some((addr, len)) => Some((addr.parse().ok()?, Some(len.parse().ok()?))),
        None => Some((text.parse().ok()?, None)),
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let lines: Vec<&str> = text.lines().collect();
    let parsed = parse_set(lines.iter().copied());

    let (mut v4, mut v6) = (Vec::new(), Vec::new());
    let mut refused = Vec::new();
    for (number, line) in (1..).zip(&lines) {
        let entry = entry(line);
        let alone = parse_set([*line]);
        assert!(alone.content.len() + alone.refused <= 1, "{line:?}: {alone:?}");
        if entry.is_empty() {
            assert_eq!((alone.content.len(), alone.refused), (0, 0), "{line:?} is blank or a comment");
            continue;
        }
        let std = std_prefix(entry);
        let canonical = std.is_some_and(|(addr, len)| {
            len.is_none_or(|len| entry.split_once('/').is_some_and(|(_, l)| l == len.to_string()))
                && IpNet::new(addr, len.unwrap_or(if addr.is_ipv4() { 32 } else { 128 }))
                    .is_ok_and(|net| net.trunc() == net)
        });
        if alone.refused == 1 {
            assert!(!canonical, "line {number} {line:?} names a prefix, and was refused: {alone:?}");
            let named = &alone.first_refused[0];
            assert_eq!((named.line, named.text.as_str()), (1, entry), "{line:?}");
            assert!(!named.reason.is_empty());
            refused.push((number, entry));
            continue;
        }
        let net = alone.content.v4.first().map(|&n| IpNet::V4(n)).or(alone
            .content
            .v6
            .first()
            .map(|&n| IpNet::V6(n)));
        let net = net.unwrap_or_else(|| panic!("{line:?}: neither a prefix nor refused"));
        assert_eq!(net.trunc(), net, "{line:?} gave {net}, with host bits");
        let (addr, len) = std.unwrap_or_else(|| panic!("{line:?} gave {net}: no address by std's parser"));
        assert_eq!(net.addr(), addr, "{line:?} gave {net}");
        assert_eq!(net.prefix_len(), len.unwrap_or(net.max_prefix_len()), "{line:?} gave {net}");
        assert!(net.contains(&addr));
        match net {
            IpNet::V4(n) => v4.push(n),
            IpNet::V6(n) => v6.push(n),
        }
    }

    assert_eq!(parsed.content, SetContent::new(v4, v6), "the file is not the sum of its lines");
    assert_eq!(parsed.refused, refused.len());
    let shown: Vec<(usize, &str)> = parsed.first_refused.iter().map(|r| (r.line, r.text.as_str())).collect();
    assert_eq!(shown, refused.iter().copied().take(REFUSED_SHOWN).collect::<Vec<_>>());
    assert!(parsed.content.v4.windows(2).all(|w| w[0] < w[1]), "sorted, each once");
    assert!(parsed.content.v6.windows(2).all(|w| w[0] < w[1]), "sorted, each once");
    for net in &parsed.content.v4 {
        assert!(parsed.content.contains(IpAddr::V4(net.addr())));
    }
    for net in &parsed.content.v6 {
        assert!(parsed.content.contains(IpAddr::V6(net.addr())));
    }

    // The whole text as one entry of a JSON body's list: never a panic, and
    // at most one prefix.
    let one = parse_set([text]);
    assert!(one.content.len() + one.refused <= 1);
});
