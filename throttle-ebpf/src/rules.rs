//! Rules (the sets the source is in, then the longest-prefix match of the
//! source) and classes (which class a packet's protocol and destination
//! port belong to).

use aya_ebpf::{maps::lpm_trie::Key, programs::XdpContext};
use throttle_common::{
    class_of, flags, rule_filter, set_rules, Config, Limit, Rule, ACTION_ALLOW, ACTION_DENY, FAMILY_V4,
    MAX_SETS, PROTO_TCP, PROTO_UDP,
};

use crate::{
    maps::{CLASS_OF, RULES_V4, RULES_V6, RULE_FILTER, SETS_V4, SETS_V6, SET_RULES},
    parse::{self, Packet},
};

/// What the rules say of a source.
pub enum Selected {
    /// Pass it: this rule's id.
    Allow(u32),
    /// Drop it: this rule's id.
    Deny(u32),
    /// Meter it against this rule's limit, in the bucket of the rule's id.
    Rule(&'static Limit, u32),
    /// No rule: its class's limits.
    Class,
}

/// The rule of the source: the first set rule whose set holds it, else the
/// rule whose prefix is the longest match of it, if any.
#[inline(always)]
fn lookup(packet: &Packet, config: &Config) -> Option<&'static Rule> {
    let sets = if packet.family == FAMILY_V4 { flags::SETS_V4 } else { flags::SETS_V6 };
    if config.flags & sets != 0 {
        if let Some(rule) = in_sets(packet, config, sets) {
            return Some(rule);
        }
    }
    longest_prefix(packet, config)
}

/// The first set rule (of those whose set holds prefixes of the packet's
/// family) whose set holds the source: one trie lookup per such rule, under
/// the slot the rule names.
#[inline(never)]
fn in_sets(packet: &Packet, config: &Config, family: u32) -> Option<&'static Rule> {
    let bank = u32::from(config.set_rule_bank);
    let count = u32::from(config.set_rule_count);
    let s = packet.src;
    for index in 0..MAX_SETS {
        if index >= count {
            break;
        }
        let entry = SET_RULES.get(set_rules::entry(bank, index))?;
        if entry.families & family == 0 {
            continue;
        }
        // The slot is the key's first byte (slots are under 256).
        let slot = entry.slot as u8;
        // The key is built in place: its address bytes are not aligned.
        let hit = if family == flags::SETS_V4 {
            let mut key = Key::new(8 + 32, [slot, 0, 0, 0, 0]);
            put_word(&mut key.data, s[0]);
            SETS_V4.get(&key).is_some()
        } else {
            let mut key = Key::new(8 + 128, [0u8; 17]);
            key.data[0] = slot;
            put_words(&mut key.data, &s);
            SETS_V6.get(&key).is_some()
        };
        if hit {
            return Some(&entry.rule);
        }
    }
    None
}

/// Writes `word`'s bytes (in memory order) after the slot byte of a set
/// key, one byte at a time: the address is not aligned there, and the
/// verifier refuses a misaligned word on the stack, which a merged store
/// would be.
#[inline(always)]
fn put_word(data: &mut [u8; 5], word: u32) {
    put_bytes(data, 1, word);
}

/// [`put_word`] for the four words of an IPv6 address.
#[inline(always)]
fn put_words(data: &mut [u8; 17], words: &[u32; 4]) {
    put_bytes(data, 1, words[0]);
    put_bytes(data, 5, words[1]);
    put_bytes(data, 9, words[2]);
    put_bytes(data, 13, words[3]);
}

/// The four bytes of `word` at `at` of `data`, each a store at a constant
/// offset (the callers' `at` are constants, and the four stores are
/// written out): a stack pointer plus a register, as a loop would have,
/// is refused a loader without `CAP_PERFMON`.
#[inline(always)]
fn put_bytes<const N: usize>(data: &mut [u8; N], at: usize, word: u32) {
    assert!(at + 4 <= N);
    let bytes = word.to_ne_bytes();
    let to = data.as_mut_ptr();
    // SAFETY: `at + 3 < N`, inside `data`; volatile only so that the four
    // stores stay four.
    unsafe {
        core::ptr::write_volatile(to.add(at), bytes[0]);
        core::ptr::write_volatile(to.add(at + 1), bytes[1]);
        core::ptr::write_volatile(to.add(at + 2), bytes[2]);
        core::ptr::write_volatile(to.add(at + 3), bytes[3]);
    }
}

/// The rule whose prefix is the longest match of the source, if any. An
/// empty trie is not looked up at all, nor is one that the filter says
/// cannot match.
#[inline(always)]
fn longest_prefix(packet: &Packet, config: &Config) -> Option<&'static Rule> {
    if packet.family == FAMILY_V4 {
        if config.flags & flags::RULES_V4 == 0 || !may_match(config, false, rule_filter::ipv4(packet.src[0]))
        {
            return None;
        }
        return RULES_V4.get(Key::new(32, packet.src[0].to_ne_bytes()));
    }
    if config.flags & flags::RULES_V6 == 0 || !may_match(config, true, rule_filter::ipv6(&packet.src)) {
        return None;
    }
    trie_v6(&packet.src)
}

/// The IPv6 trie's longest match of `s`: a call of its own, so that its
/// 20-byte key is not on the stack of the program's main frame, which its
/// deepest chain of calls has no room left in.
#[inline(never)]
fn trie_v6(s: &[u32; 4]) -> Option<&'static Rule> {
    let mut data = [0u8; 16];
    data[0..4].copy_from_slice(&s[0].to_ne_bytes());
    data[4..8].copy_from_slice(&s[1].to_ne_bytes());
    data[8..12].copy_from_slice(&s[2].to_ne_bytes());
    data[12..16].copy_from_slice(&s[3].to_ne_bytes());
    RULES_V6.get(Key::new(128, data))
}

/// Whether the rule filter lets `addr` through to the trie: false only when
/// no rule can match it. The mask comes with the configuration, so the one
/// lookup is the bitmap's word.
#[inline(always)]
fn may_match(config: &Config, ipv6: bool, addr: u64) -> bool {
    let bank = config.rule_filter_bank;
    let Some(mask) = rule_filter::mask_of(rule_filter::shift_of(config.rule_filter_shifts, bank, ipv6))
    else {
        return true;
    };
    let bit = rule_filter::bit(addr & mask);
    match RULE_FILTER.get(rule_filter::region(bank, ipv6) + 1 + bit / 64) {
        Some(word) => (*word >> (bit % 64)) & 1 != 0,
        None => true,
    }
}

/// What the rules say of the packet's source: its rule, or none.
#[inline(always)]
pub fn select(packet: &Packet, config: &Config) -> Selected {
    match lookup(packet, config) {
        None => Selected::Class,
        Some(rule) => match rule.action {
            ACTION_ALLOW => Selected::Allow(rule.id),
            ACTION_DENY => Selected::Deny(rule.id),
            _ => Selected::Rule(&rule.limit, rule.id),
        },
    }
}

/// Counts a packet an allow or deny rule (`id`) decided, on this CPU; for
/// a deny rule (`denied`: the packet; NULL for an allow rule), its hit is
/// an event after a quiet while. A call of its own: the main frame's stack
/// has no room for it. A BPF global function (exported, so
/// `BTF_FUNC_GLOBAL`): the verifier checks it once, and lets it test its
/// pointer for NULL, which it refuses of a pointer to the caller's stack
/// in a loader without `CAP_PERFMON`. It returns 0.
#[unsafe(no_mangle)]
#[inline(never)]
pub extern "C" fn decided(id: u32, denied: *const Packet) -> u32 {
    if let Some(slot) = crate::maps::RULE_COUNTS.get_ptr_mut(id % throttle_common::event::HIT_SLOTS) {
        // SAFETY: this CPU's slot, from a successful lookup.
        unsafe { *slot += 1 };
    }
    // SAFETY: NULL or the caller's packet.
    if let Some(packet) = unsafe { denied.as_ref() } {
        crate::events::deny_hit(id, &packet.src, packet.family);
    }
    0
}

/// The `deny` rule that matches the source, if one does. The rules are only
/// looked up when the family has a deny rule at all.
#[inline(always)]
pub fn denied(packet: &Packet, config: &Config) -> Option<u32> {
    let deny = if packet.family == FAMILY_V4 { flags::DENY_V4 } else { flags::DENY_V6 };
    if config.flags & deny == 0 {
        return None;
    }
    lookup(packet, config).filter(|rule| rule.action == ACTION_DENY).map(|rule| rule.id)
}

/// The class of the packet: the class that claims its protocol and
/// destination port, or the default class (0) for what no class claims when
/// the configuration meters that; `None` when it is in no class (out of
/// scope), and for the segments of a SYN-only port that are not SYNs.
///
/// A TCP or UDP packet whose destination port cannot be read (a non-first
/// fragment, a truncated L4 header) is in the default class when a port of
/// its protocol is claimed at all: fragments must not be a way around a
/// limit.
#[inline(always)]
pub fn classify(ctx: &XdpContext, packet: &Packet, config_flags: u32) -> Option<u32> {
    let unmatched = if config_flags & flags::UNMATCHED_LIMIT != 0 { Some(0) } else { None };
    if config_flags & flags::CLAIMS == 0 {
        return unmatched;
    }
    let proto_flag = match packet.proto {
        PROTO_TCP => flags::CLAIMS_TCP,
        PROTO_UDP => flags::CLAIMS_UDP,
        _ => return unmatched,
    };
    let Some(ports) = parse::ports(ctx, packet) else {
        return if config_flags & proto_flag != 0 { Some(0) } else { unmatched };
    };
    let Some(index) = class_of::index(packet.proto, ports.dst) else {
        return unmatched;
    };
    let Some(&entry) = CLASS_OF.get(index) else {
        return unmatched;
    };
    if entry & class_of::CLAIMED == 0 {
        return unmatched;
    }
    if entry & class_of::SYN_ONLY != 0 && !ports.syn {
        return None;
    }
    Some(entry & class_of::CLASS)
}
