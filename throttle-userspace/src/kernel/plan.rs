//! The policy compiler: from a policy, its rules' ids, the controller's
//! scale and the kernel's clock tick, everything the maps must hold, as a
//! value. Pure: it is tested without root, and the kernel layer does nothing
//! but write plans ([`super::Dataplane::write`]) and read them back
//! ([`super::Dataplane::read_plan`]).

use std::collections::BTreeMap;

use ipnet::IpNet;
use throttle_common::{
    flags, ipv4_mask, ipv6_mask, scope, Config, Limit, Rule, ACTION_ALLOW, ACTION_DENY, ACTION_LIMIT,
    LAYOUT_VERSION, UNIT_BYTES, UNIT_PACKETS,
};

use super::rule_filter::Region;
use crate::policy::{Action, Policy, Proto, Unit};

/// A rule trie's key: prefix length and address bytes.
pub type TrieKey<const N: usize> = (u8, [u8; N]);

/// The global settings of a plan: the part of the `CONFIG` entry that the
/// policy decides. The writer adds the rest ([`Placement`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settings {
    /// [`flags`], less [`flags::ONE_IFACE`] (the attachments decide it).
    pub flags: u32,
    pub default_limit: Limit,
    pub new_source_limit: Limit,
    pub ipv4_mask: u32,
    pub ipv6_mask: [u32; 4],
}

/// Everything the maps must hold for a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub settings: Settings,
    /// The `SCOPE` bitmap, [`scope::WORDS`] words.
    pub scope: Vec<u64>,
    pub rules_v4: BTreeMap<TrieKey<4>, Rule>,
    pub rules_v6: BTreeMap<TrieKey<16>, Rule>,
    /// The rule filter's region of each family, whichever bank it goes to.
    pub filter_v4: Region,
    pub filter_v6: Region,
}

impl Default for Plan {
    /// What new maps hold: zeros everywhere.
    fn default() -> Self {
        Self {
            settings: Settings::default(),
            scope: vec![0; scope::WORDS as usize],
            rules_v4: BTreeMap::new(),
            rules_v6: BTreeMap::new(),
            filter_v4: Region::default(),
            filter_v6: Region::default(),
        }
    }
}

/// Where the writer put a plan: the parts of the `CONFIG` entry that are
/// not the policy's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Placement {
    pub version: u64,
    /// The bank of `RULE_FILTER` that holds the plan's filter.
    pub bank: u32,
    /// Both banks' masks ([`throttle_common::rule_filter::shift_of`]).
    pub shifts: u32,
    /// The counters slot of the one interface attached, if only one is.
    pub one_iface_slot: Option<u32>,
}

impl Plan {
    /// The `CONFIG` entry of this plan, placed.
    #[must_use]
    pub fn config(&self, placement: Placement) -> Config {
        let s = &self.settings;
        Config {
            version: placement.version,
            layout: LAYOUT_VERSION,
            flags: s.flags | if placement.one_iface_slot.is_some() { flags::ONE_IFACE } else { 0 },
            default_limit: s.default_limit,
            new_source_limit: s.new_source_limit,
            ipv4_mask: s.ipv4_mask,
            rule_filter_bank: placement.bank,
            ipv6_mask: s.ipv6_mask,
            iface_slot: placement.one_iface_slot.unwrap_or(0),
            rule_filter_shifts: placement.shifts,
        }
    }

    /// The plan's settings as a `CONFIG` entry holds them.
    #[must_use]
    pub fn settings_of(config: &Config) -> Settings {
        Settings {
            flags: config.flags & !flags::ONE_IFACE,
            default_limit: config.default_limit,
            new_source_limit: config.new_source_limit,
            ipv4_mask: config.ipv4_mask,
            ipv6_mask: config.ipv6_mask,
        }
    }
}

/// A rule of the policy with the id its buckets carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdRule {
    pub id: u32,
    pub net: IpNet,
}

const fn unit(unit: Unit) -> u32 {
    match unit {
        Unit::Packets => UNIT_PACKETS,
        Unit::Bytes => UNIT_BYTES,
    }
}

/// What the maps must hold for `policy` (validated), whose rules have the
/// ids `ids` (one per rule, in order), with every rate scaled by `scale`
/// (bursts stay as configured), metered with the coarse clock where its
/// tick (`coarse_tick_ns`, 0: unknown) allows.
#[must_use]
pub fn compile(policy: &Policy, ids: &[u32], scale: f64, coarse_tick_ns: u64) -> Plan {
    assert_eq!(ids.len(), policy.rules.len(), "one id per rule");
    let mut flags = 0;

    let mut scope_words = vec![0u64; scope::WORDS as usize];
    for entry in &policy.scope.ports {
        let (word, shift) =
            scope::slot(entry.proto.number(), entry.port).expect("the scope names TCP or UDP");
        let bits = scope::IN_SCOPE | if entry.syn_only { scope::SYN_ONLY } else { 0 };
        scope_words[word as usize] |= bits << shift;
        flags |= flags::SCOPE
            | match entry.proto {
                Proto::Tcp => flags::SCOPE_TCP,
                Proto::Udp => flags::SCOPE_UDP,
            };
    }

    let mut rules_v4 = BTreeMap::new();
    let mut rules_v6 = BTreeMap::new();
    for (spec, &id) in policy.rules.iter().zip(ids) {
        let limit = spec.limit().map_or_else(Limit::default, |l| {
            Limit::from_interval(l.rate.scaled(scale).interval_ticks(), l.burst, unit(l.unit))
                .with_clock(coarse_tick_ns)
        });
        let action = match spec.action {
            Action::Allow => ACTION_ALLOW,
            Action::Deny => ACTION_DENY,
            Action::Limit => ACTION_LIMIT,
        };
        let value = Rule { limit, action, id };
        let deny = spec.action == Action::Deny;
        match spec.cidr {
            IpNet::V4(net) => {
                rules_v4.insert((net.prefix_len(), net.addr().octets()), value);
                flags |= flags::RULES_V4 | if deny { flags::DENY_V4 } else { 0 };
            }
            IpNet::V6(net) => {
                rules_v6.insert((net.prefix_len(), net.addr().octets()), value);
                flags |= flags::RULES_V6 | if deny { flags::DENY_V6 } else { 0 };
            }
        }
    }
    let filter_v4 = Region::ipv4(policy.rules.iter().filter_map(|r| match r.cidr {
        IpNet::V4(net) => Some((net.network(), net.prefix_len())),
        IpNet::V6(_) => None,
    }));
    let filter_v6 = Region::ipv6(policy.rules.iter().filter_map(|r| match r.cidr {
        IpNet::V6(net) => Some((net.network(), net.prefix_len())),
        IpNet::V4(_) => None,
    }));

    let limits = &policy.limits;
    if limits.dry_run {
        flags |= flags::DRY_RUN;
    }
    if limits.new_source_rate > 0 {
        flags |= flags::NEW_SOURCE_LIMIT;
    }
    let settings = Settings {
        flags,
        default_limit: Limit::from_interval(
            limits.rate.scaled(scale).interval_ticks(),
            limits.burst,
            unit(limits.unit),
        )
        .with_clock(coarse_tick_ns),
        new_source_limit: Limit::new(limits.new_source_rate, limits.new_source_burst, UNIT_PACKETS)
            .with_clock(coarse_tick_ns),
        ipv4_mask: ipv4_mask(limits.ipv4_prefix),
        ipv6_mask: ipv6_mask(limits.ipv6_prefix),
    };
    Plan { settings, scope: scope_words, rules_v4, rules_v6, filter_v4, filter_v6 }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use throttle_common::{rule_filter, CLOCK_COARSE, CLOCK_FINE};

    use super::*;
    use crate::policy::{Limits, Period, Rate, RuleSpec, Scope, ScopePort};

    /// A jiffy of a kernel with HZ=250.
    const TICK_NS: u64 = 4_000_000;

    fn limit_rule(cidr: &str, rate: u64) -> RuleSpec {
        RuleSpec { rate: Some(Rate::per_second(rate)), ..RuleSpec::new(cidr.parse().unwrap(), Action::Limit) }
    }

    #[test]
    fn the_default_policy_meters_everything_at_the_default_limit() {
        let plan = compile(&Policy::default(), &[], 1.0, TICK_NS);
        let limits = Limits::default();
        assert_eq!(plan.settings.flags, flags::NEW_SOURCE_LIMIT);
        assert_eq!(plan.settings.default_limit.rate(), limits.rate.count);
        assert_eq!(plan.settings.default_limit.burst(), limits.burst);
        assert_eq!(plan.settings.ipv4_mask, u32::MAX);
        assert_eq!(plan.settings.ipv6_mask, [u32::MAX, u32::MAX, 0, 0]);
        assert!(plan.scope.iter().all(|&w| w == 0));
        assert!(plan.rules_v4.is_empty() && plan.rules_v6.is_empty());
        assert_eq!(plan.filter_v4.shift_byte(), rule_filter::shift_byte(0), "no rules: no mask");
    }

    #[test]
    fn the_scope_sets_two_bits_per_port_and_the_flags_of_its_protocols() {
        let policy = Policy {
            scope: Scope {
                ports: vec![
                    ScopePort { proto: Proto::Tcp, port: 443, syn_only: true },
                    ScopePort { proto: Proto::Udp, port: 53, syn_only: false },
                ],
            },
            ..Policy::default()
        };
        let plan = compile(&policy, &[], 1.0, 0);
        let bits = |proto, port| {
            let (word, shift) = scope::slot(proto, port).unwrap();
            (plan.scope[word as usize] >> shift) & 0b11
        };
        assert_eq!(bits(throttle_common::PROTO_TCP, 443), scope::IN_SCOPE | scope::SYN_ONLY);
        assert_eq!(bits(throttle_common::PROTO_UDP, 53), scope::IN_SCOPE);
        assert_eq!(bits(throttle_common::PROTO_TCP, 53), 0);
        assert_eq!(plan.scope.iter().map(|w| w.count_ones()).sum::<u32>(), 3);
        let want = flags::SCOPE | flags::SCOPE_TCP | flags::SCOPE_UDP;
        assert_eq!(plan.settings.flags & want, want);
    }

    #[test]
    fn rules_become_trie_entries_with_their_ids_and_flags() {
        let policy = Policy {
            rules: vec![
                RuleSpec::new("10.0.0.0/8".parse().unwrap(), Action::Deny),
                limit_rule("192.0.2.0/24", 100),
                RuleSpec::new("2001:db8::/32".parse().unwrap(), Action::Allow),
            ],
            ..Policy::default()
        };
        let plan = compile(&policy, &[7, 3, 9], 1.0, 0);
        let deny = plan.rules_v4[&(8, [10, 0, 0, 0])];
        assert_eq!((deny.action, deny.id), (ACTION_DENY, 7));
        let limit = plan.rules_v4[&(24, [192, 0, 2, 0])];
        assert_eq!(
            (limit.action, limit.id, limit.limit.rate(), limit.limit.burst()),
            (ACTION_LIMIT, 3, 100, 100)
        );
        let allow = plan.rules_v6[&(32, "2001:db8::".parse::<std::net::Ipv6Addr>().unwrap().octets())];
        assert_eq!((allow.action, allow.id), (ACTION_ALLOW, 9));
        let f = plan.settings.flags;
        assert_eq!(
            f & (flags::RULES_V4 | flags::DENY_V4 | flags::RULES_V6),
            flags::RULES_V4 | flags::DENY_V4 | flags::RULES_V6
        );
        assert_eq!(f & flags::DENY_V6, 0);
    }

    #[test]
    fn the_rule_filter_lets_every_rule_through() {
        let policy = Policy {
            rules: vec![limit_rule("10.1.0.0/16", 5), limit_rule("10.2.3.0/24", 5)],
            ..Policy::default()
        };
        let plan = compile(&policy, &[1, 2], 1.0, 0);
        for addr in [Ipv4Addr::new(10, 1, 200, 7), Ipv4Addr::new(10, 2, 3, 255)] {
            assert!(plan.filter_v4.may_match(rule_filter::ipv4(u32::from_ne_bytes(addr.octets()))), "{addr}");
        }
        assert!(plan.filter_v4.shift_byte() != 0, "a mask of the shortest prefix, /16");
    }

    #[test]
    fn the_scale_cuts_rates_never_bursts_and_never_below_one() {
        let policy = Policy { rules: vec![limit_rule("10.0.0.0/8", 100)], ..Policy::default() };
        let plan = compile(&policy, &[1], 0.5, 0);
        assert_eq!(plan.settings.default_limit.rate(), 500);
        assert_eq!(plan.settings.default_limit.burst(), 1_000);
        let rule = plan.rules_v4[&(8, [10, 0, 0, 0])];
        assert_eq!((rule.limit.rate(), rule.limit.burst()), (50, 100));
        assert_eq!(plan.settings.new_source_limit.rate(), Limits::default().new_source_rate, "not scaled");
    }

    #[test]
    fn a_rate_per_minute_is_an_interval_of_its_period_over_its_count() {
        let rule = RuleSpec {
            rate: Some(Rate { count: 3, period: Period::Minute }),
            burst: Some(5),
            ..RuleSpec::new("198.51.100.0/24".parse().unwrap(), Action::Limit)
        };
        let plan = compile(&Policy { rules: vec![rule], ..Policy::default() }, &[1], 1.0, TICK_NS);
        let limit = plan.rules_v4[&(24, [198, 51, 100, 0])].limit;
        assert_eq!(limit.interval, 20 * throttle_common::gcra::TICKS_PER_SEC);
        assert_eq!(limit.burst(), 5);
        assert_eq!(limit.clock, CLOCK_COARSE, "a burst of 100 s spans many ticks");
    }

    #[test]
    fn the_coarse_clock_only_where_the_burst_spans_many_ticks() {
        let limits = |rate, burst| Limits { rate: Rate::per_second(rate), burst, ..Limits::default() };
        let long = Policy { limits: limits(100, 100), ..Policy::default() };
        let short = Policy { limits: limits(100_000, 10), ..Policy::default() };
        assert_eq!(compile(&long, &[], 1.0, TICK_NS).settings.default_limit.clock, CLOCK_COARSE);
        assert_eq!(compile(&short, &[], 1.0, TICK_NS).settings.default_limit.clock, CLOCK_FINE);
        assert_eq!(compile(&long, &[], 1.0, 0).settings.default_limit.clock, CLOCK_FINE, "tick unknown");
    }

    #[test]
    fn a_placed_config_carries_the_writers_fields() {
        let plan = compile(&Policy::default(), &[], 1.0, 0);
        let placement = Placement { version: 9, bank: 1, shifts: 0x0102_0304, one_iface_slot: Some(3) };
        let config = plan.config(placement);
        assert_eq!((config.version, config.layout, config.rule_filter_bank), (9, LAYOUT_VERSION, 1));
        assert_eq!((config.iface_slot, config.rule_filter_shifts), (3, 0x0102_0304));
        assert_ne!(config.flags & flags::ONE_IFACE, 0);
        assert_eq!(Plan::settings_of(&config), plan.settings);
    }
}
