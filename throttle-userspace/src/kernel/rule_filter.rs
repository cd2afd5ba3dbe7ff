//! The filter in front of the rule tries, built from a rule set
//! ([`throttle_common::rule_filter`] has the layout and why it never hides a
//! match).

use std::net::{Ipv4Addr, Ipv6Addr};

use throttle_common::rule_filter::{self, BITS_LOG2, REGION, WORDS};

/// One family's region of a bank: the mask word, then the bitmap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Region {
    words: Vec<u64>,
}

impl Default for Region {
    /// The region of no rules, as a new map holds it.
    fn default() -> Self {
        Self::from_words(vec![0; REGION as usize])
    }
}

impl Region {
    /// A region as the map holds it: the mask word, then the bitmap.
    #[must_use]
    pub fn from_words(words: Vec<u64>) -> Self {
        assert_eq!(words.len(), REGION as usize, "a region is {REGION} words");
        Self { words }
    }

    /// The region of a family whose rules are `prefixes`, as (the address
    /// as [`rule_filter::ipv4`] or [`rule_filter::ipv6`] reads it, prefix
    /// length), in a space of `width` bits (32 or 64).
    fn build(prefixes: &[(u64, u8)], width: u8) -> Self {
        let mut words = vec![0u64; REGION as usize];
        let shortest = prefixes.iter().map(|&(_, len)| len.min(width)).min().unwrap_or(0);
        let mask = leading_ones(shortest, width);
        words[0] = mask;
        for &(addr, _) in prefixes {
            let bit = rule_filter::bit(addr & mask);
            words[1 + (bit / 64) as usize] |= 1 << (bit % 64);
        }
        Self { words }
    }

    /// The region for IPv4 rules.
    #[must_use]
    pub fn ipv4(nets: impl IntoIterator<Item = (Ipv4Addr, u8)>) -> Self {
        let prefixes: Vec<(u64, u8)> =
            nets.into_iter().map(|(addr, len)| (u64::from(addr.to_bits()), len)).collect();
        Self::build(&prefixes, 32)
    }

    /// The region for IPv6 rules: their first 64 bits.
    #[must_use]
    pub fn ipv6(nets: impl IntoIterator<Item = (Ipv6Addr, u8)>) -> Self {
        let prefixes: Vec<(u64, u8)> =
            nets.into_iter().map(|(addr, len)| ((addr.to_bits() >> 64) as u64, len)).collect();
        Self::build(&prefixes, 64)
    }

    /// The words, as they go into the `RULE_FILTER` array from the region's
    /// first index.
    #[must_use]
    pub fn words(&self) -> &[u64] {
        &self.words
    }

    /// The region's byte of `Config::rule_filter_shifts`: its mask as the
    /// data path reads it.
    #[must_use]
    pub fn shift_byte(&self) -> u8 {
        rule_filter::shift_byte(self.words[0])
    }

    /// Whether a source (read as the data path reads it) gets past the
    /// filter: the data path's test, on the host, with the mask from
    /// [`Self::shift_byte`].
    #[must_use]
    pub fn may_match(&self, addr: u64) -> bool {
        let Some(mask) = rule_filter::mask_of(u32::from(self.shift_byte())) else {
            return true;
        };
        let bit = rule_filter::bit(addr & mask);
        self.words[1 + (bit / 64) as usize] >> (bit % 64) & 1 != 0
    }

    /// The share of the bitmap's bits that are set: the chance that a
    /// source no rule matches still walks the trie.
    #[must_use]
    pub fn fill(&self) -> f64 {
        let set: u32 = self.words[1..].iter().map(|w| w.count_ones()).sum();
        f64::from(set) / f64::from(WORDS * 64)
    }
}

/// The `len` leading bits of a `width`-bit value, set.
fn leading_ones(len: u8, width: u8) -> u64 {
    if len == 0 {
        return 0;
    }
    let all = if width == 64 { u64::MAX } else { (1u64 << width) - 1 };
    all & !all.checked_shr(u32::from(len)).unwrap_or(0)
}

const _: () = assert!(BITS_LOG2 >= 6);

#[cfg(test)]
mod tests {
    use super::*;
    use ipnet::{Ipv4Net, Ipv6Net};
    use proptest::prelude::*;

    fn v4(text: &str) -> (Ipv4Addr, u8) {
        let net: Ipv4Net = text.parse().expect("a prefix");
        (net.network(), net.prefix_len())
    }

    fn v6(text: &str) -> (Ipv6Addr, u8) {
        let net: Ipv6Net = text.parse().expect("a prefix");
        (net.network(), net.prefix_len())
    }

    fn src4(text: &str) -> u64 {
        u64::from(text.parse::<Ipv4Addr>().expect("an address").to_bits())
    }

    fn src6(text: &str) -> u64 {
        (text.parse::<Ipv6Addr>().expect("an address").to_bits() >> 64) as u64
    }

    #[test]
    fn masks_follow_the_shortest_prefix() {
        assert_eq!(Region::ipv4([v4("10.0.0.0/8"), v4("192.0.2.0/24")]).words()[0], 0xff00_0000);
        assert_eq!(Region::ipv4([v4("192.0.2.1/32")]).words()[0], 0xffff_ffff);
        assert_eq!(Region::ipv4([v4("0.0.0.0/0")]).words()[0], 0);
        assert_eq!(Region::ipv6([v6("2001:db8::/32")]).words()[0], 0xffff_ffff_0000_0000);
        // Longer than 64 bits: the filter looks at the first 64.
        assert_eq!(Region::ipv6([v6("2001:db8::1/128")]).words()[0], u64::MAX);
    }

    #[test]
    fn sources_outside_every_rule_mostly_skip_the_trie() {
        let region = Region::ipv4([v4("100.64.0.0/16"), v4("100.65.1.0/24")]);
        assert!(region.may_match(src4("100.64.9.9")));
        assert!(region.may_match(src4("100.65.1.200")));
        assert!(!region.may_match(src4("10.0.0.1")));
        let region = Region::ipv6([v6("2001:db8:f000::/40"), v6("2001:db8:f100:1::/64")]);
        assert!(region.may_match(src6("2001:db8:f000:9::1")));
        assert!(!region.may_match(src6("2001:db8:3::1")));
        // A catch-all rule lets everything through.
        let region = Region::ipv4([v4("0.0.0.0/0"), v4("10.1.0.0/16")]);
        assert!(region.may_match(src4("203.0.113.1")));
    }

    #[test]
    fn each_bank_and_family_has_its_own_byte() {
        let mut shifts = 0;
        for (i, (bank, ipv6)) in [(0, false), (0, true), (1, false), (1, true)].into_iter().enumerate() {
            shifts = rule_filter::with_shift(shifts, bank, ipv6, 10 + i as u8);
        }
        for (i, (bank, ipv6)) in [(0, false), (0, true), (1, false), (1, true)].into_iter().enumerate() {
            assert_eq!(rule_filter::shift_of(shifts, bank, ipv6), 10 + i as u32);
        }
        let shifts = rule_filter::with_shift(shifts, 1, false, 0);
        assert_eq!(rule_filter::shift_of(shifts, 1, false), 0);
        assert_eq!(rule_filter::shift_of(shifts, 0, true), 11);
        assert_eq!(rule_filter::mask_of(0), None);
        assert_eq!(rule_filter::mask_of(65), None);
    }

    proptest! {
        /// The mask the data path rebuilds from the configuration's byte
        /// masks a source as the region's header word does.
        #[test]
        fn the_shift_byte_masks_as_the_header_word(len in 0u8..=64, wide in any::<bool>(), addr in any::<u64>()) {
            let width = if wide { 64 } else { 32 };
            let len = len.min(width);
            let addr = if wide { addr } else { addr & 0xffff_ffff };
            let header = leading_ones(len, width);
            let mask = rule_filter::mask_of(u32::from(rule_filter::shift_byte(header)));
            prop_assert_eq!(mask.map(|m| addr & m), (header != 0).then_some(addr & header));
        }

        /// Whatever the rules, a source that one of them matches always gets
        /// past the filter.
        #[test]
        fn never_hides_a_match_v4(
            rules in prop::collection::vec((any::<u32>(), 0u8..=32), 1..200),
            sources in prop::collection::vec(any::<u32>(), 1..50),
        ) {
            let nets: Vec<Ipv4Net> =
                rules.iter().map(|&(a, len)| Ipv4Net::new(Ipv4Addr::from(a), len).unwrap().trunc()).collect();
            let region = Region::ipv4(nets.iter().map(|n| (n.network(), n.prefix_len())));
            // Sources inside rules, and arbitrary ones.
            let inside = nets.iter().zip(&sources).map(|(n, s)| {
                let host = *s & !n.netmask().to_bits();
                Ipv4Addr::from(n.network().to_bits() | host)
            });
            for addr in inside.chain(sources.iter().map(|&s| Ipv4Addr::from(s))) {
                if nets.iter().any(|n| n.contains(&addr)) {
                    prop_assert!(region.may_match(u64::from(addr.to_bits())), "{addr} hidden");
                }
            }
        }

        #[test]
        fn never_hides_a_match_v6(
            rules in prop::collection::vec((any::<u128>(), 0u8..=128), 1..200),
            sources in prop::collection::vec(any::<u128>(), 1..50),
        ) {
            let nets: Vec<Ipv6Net> =
                rules.iter().map(|&(a, len)| Ipv6Net::new(Ipv6Addr::from(a), len).unwrap().trunc()).collect();
            let region = Region::ipv6(nets.iter().map(|n| (n.network(), n.prefix_len())));
            let inside = nets.iter().zip(&sources).map(|(n, s)| {
                let host = *s & !n.netmask().to_bits();
                Ipv6Addr::from(n.network().to_bits() | host)
            });
            for addr in inside.chain(sources.iter().map(|&s| Ipv6Addr::from(s))) {
                if nets.iter().any(|n| n.contains(&addr)) {
                    prop_assert!(region.may_match((addr.to_bits() >> 64) as u64), "{addr} hidden");
                }
            }
        }
    }
}
