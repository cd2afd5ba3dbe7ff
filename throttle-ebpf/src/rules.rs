//! Rules (longest-prefix match on the source) and the scope set.

use aya_ebpf::{maps::lpm_trie::Key, programs::XdpContext};
use throttle_common::{
    flags, rule_filter, scope, Config, Limit, Rule, ACTION_ALLOW, ACTION_DENY, FAMILY_V4, PROTO_TCP,
    PROTO_UDP,
};

use crate::{
    maps::{RULES_V4, RULES_V6, RULE_FILTER, SCOPE},
    parse::{self, Packet},
};

/// What the rules say of a source.
pub enum Selected<'a> {
    Allow,
    Deny,
    /// Meter it against this limit, in the bucket of this rule id (0: the
    /// default limit).
    Limit(&'a Limit, u32),
}

/// The rule whose prefix is the longest match of the source, if any. An
/// empty trie is not looked up at all, nor is one that the filter says
/// cannot match.
#[inline(always)]
fn lookup(packet: &Packet, config: &Config) -> Option<&'static Rule> {
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
    let s = packet.src;
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

/// What the rules say of the packet's source: its rule, or the default limit.
#[inline(always)]
pub fn select<'a>(packet: &Packet, config: &'a Config) -> Selected<'a> {
    match lookup(packet, config) {
        None => Selected::Limit(&config.default_limit, 0),
        Some(rule) => match rule.action {
            ACTION_ALLOW => Selected::Allow,
            ACTION_DENY => Selected::Deny,
            _ => Selected::Limit(&rule.limit, rule.id),
        },
    }
}

/// Whether a `deny` rule matches the source. The trie is only looked up when
/// the family has a deny rule at all.
#[inline(always)]
pub fn denied(packet: &Packet, config: &Config) -> bool {
    let deny = if packet.family == FAMILY_V4 { flags::DENY_V4 } else { flags::DENY_V6 };
    if config.flags & deny == 0 {
        return false;
    }
    matches!(lookup(packet, config), Some(rule) if rule.action == ACTION_DENY)
}

/// Whether the scope set names this packet. Only called when the set is not
/// empty.
///
/// A TCP or UDP packet whose destination port cannot be read (a non-first
/// fragment, a truncated L4 header) is in scope when the set names its
/// protocol at all: fragments must not be a way around the limit.
#[inline(always)]
pub fn in_scope(ctx: &XdpContext, packet: &Packet, config_flags: u32) -> bool {
    let proto_flag = match packet.proto {
        PROTO_TCP => flags::SCOPE_TCP,
        PROTO_UDP => flags::SCOPE_UDP,
        _ => return false,
    };
    let Some(ports) = parse::ports(ctx, packet) else {
        return config_flags & proto_flag != 0;
    };
    let Some((word, shift)) = scope::slot(packet.proto, ports.dst) else {
        return false;
    };
    let Some(bits) = SCOPE.get(word) else {
        return false;
    };
    let bits = *bits >> shift;
    bits & scope::IN_SCOPE != 0 && (bits & scope::SYN_ONLY == 0 || ports.syn)
}
