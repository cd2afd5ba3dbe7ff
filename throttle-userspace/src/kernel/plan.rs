//! The policy compiler: from a policy, its rules' ids, the controller's
//! scale and the kernel's clock tick, everything the maps must hold, as a
//! value. Pure: it is tested without root, and the kernel layer does nothing
//! but write plans ([`super::Dataplane::write`]) and read them back
//! ([`super::Dataplane::read_plan`]).

use std::collections::BTreeMap;

use ipnet::IpNet;
use throttle_common::{
    class_flags, class_of, flags, gcra::ticks_from_ns, ipv4_mask, ipv6_mask, ClassConfig, Config, Limit,
    Rule, SetRule, TierConfig, ACTION_ALLOW, ACTION_DENY, ACTION_LIMIT, LAYOUT_VERSION, MAX_CLASSES,
    MAX_CLASS_LIMITS, MAX_TIERS, TIER_V4, TIER_V6, UNIT_BYTES, UNIT_PACKETS,
};

use super::rule_filter::Region;
use crate::policy::{Action, Class, Policy, Proto, Rate, SetName, Unit, UnmatchedAction};

/// A rule trie's key: prefix length and address bytes.
pub type TrieKey<const N: usize> = (u8, [u8; N]);

/// The global settings of a plan: the part of the `CONFIG` entry that the
/// policy decides. The writer adds the rest ([`Placement`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settings {
    /// [`flags`], less [`flags::ONE_IFACE`] (the attachments decide it),
    /// [`flags::CAPTURE`] (a capture's) and [`flags::CHAIN`] (`--chain`).
    pub flags: u32,
    pub new_source_limit: Limit,
}

/// Everything the maps must hold for a policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub settings: Settings,
    /// The `CLASS_OF` array, [`class_of::ENTRIES`] entries.
    pub class_of: Vec<u32>,
    /// The `CLASSES` array by class id, [`MAX_CLASSES`] entries; id 0 is the
    /// default class (`[limits]`).
    pub classes: Vec<ClassConfig>,
    pub rules_v4: BTreeMap<TrieKey<4>, Rule>,
    pub rules_v6: BTreeMap<TrieKey<16>, Rule>,
    /// The rule filter's region of each family, whichever bank it goes to.
    pub filter_v4: Region,
    pub filter_v6: Region,
    /// The rules that name a set, in order: a bank of `SET_RULES`.
    pub set_rules: Vec<SetRule>,
}

impl Default for Plan {
    /// What new maps hold: zeros everywhere.
    fn default() -> Self {
        Self {
            settings: Settings::default(),
            class_of: vec![0; class_of::ENTRIES as usize],
            classes: vec![ClassConfig::default(); MAX_CLASSES as usize],
            rules_v4: BTreeMap::new(),
            rules_v6: BTreeMap::new(),
            filter_v4: Region::default(),
            filter_v6: Region::default(),
            set_rules: Vec::new(),
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
    /// The bank of `SET_RULES` that holds the plan's set rules.
    pub set_bank: u32,
    /// Whether a capture of dropped packets runs.
    pub capture: bool,
}

impl Plan {
    /// The `CONFIG` entry of this plan, placed.
    #[must_use]
    pub fn config(&self, placement: Placement) -> Config {
        let s = &self.settings;
        Config {
            version: placement.version,
            layout: LAYOUT_VERSION,
            flags: s.flags
                | if placement.one_iface_slot.is_some() { flags::ONE_IFACE } else { 0 }
                | if placement.capture { flags::CAPTURE } else { 0 },
            new_source_limit: s.new_source_limit,
            rule_filter_bank: placement.bank,
            iface_slot: placement.one_iface_slot.unwrap_or(0),
            rule_filter_shifts: placement.shifts,
            set_rule_count: u16::try_from(self.set_rules.len()).expect("at most MAX_SETS set rules"),
            set_rule_bank: u16::from(placement.set_bank == 1),
            // The bucket table's geometry, the default share and the
            // newcomers' are the dataplane's, not the plan's: it fills them
            // in as it writes the entry.
            bucket_seed: 0,
            bucket_groups: 0,
            default_share: 0,
            known_before: 0,
            newcomer_share: 0,
        }
    }

    /// The plan's settings as a `CONFIG` entry holds them.
    #[must_use]
    pub fn settings_of(config: &Config) -> Settings {
        Settings {
            flags: config.flags & !(flags::ONE_IFACE | flags::CAPTURE | flags::CHAIN),
            new_source_limit: config.new_source_limit,
        }
    }
}

/// Where a set's prefixes are: the trie slot that holds them, and the
/// families it has prefixes of ([`flags::SETS_V4`], [`flags::SETS_V6`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SetPlace {
    pub slot: u32,
    pub families: u32,
}

/// The ids the buckets of a policy's rules and classes carry, one per rule
/// and one per class, in the policy's order; kept across changes so that a
/// change keeps the buckets of what it does not touch. And where the sets
/// the rules name are loaded.
#[derive(Debug, Clone, Copy)]
pub struct Ids<'a> {
    pub rules: &'a [u32],
    /// From 1 to [`MAX_CLASSES`] less one: 0 is the default class.
    pub classes: &'a [u32],
    pub sets: &'a BTreeMap<SetName, SetPlace>,
}

const fn unit(unit: Unit) -> u32 {
    match unit {
        Unit::Packets => UNIT_PACKETS,
        Unit::Bytes => UNIT_BYTES,
    }
}

/// A limit of `rate` (scaled by the controller) and `burst`.
fn limit(rate: Rate, burst: u64, of: Unit, scale: f64, coarse_tick_ns: u64) -> Limit {
    Limit::from_interval(rate.scaled(scale).interval_ticks(), burst, unit(of)).with_clock(coarse_tick_ns)
}

/// The kernel form of a class.
fn class_config(class: &Class, scale: f64, coarse_tick_ns: u64) -> ClassConfig {
    let scale = if class.adaptive { scale } else { 1.0 };
    let mut limits = [Limit::default(); MAX_CLASS_LIMITS as usize];
    for (slot, l) in limits.iter_mut().zip(&class.limits) {
        *slot = limit(l.rate, l.burst(), class.unit, scale, coarse_tick_ns);
    }
    let mut tiers = [TierConfig::default(); MAX_TIERS as usize];
    for (slot, tier) in tiers.iter_mut().zip(&class.tiers) {
        let l = tier.limit();
        *slot = TierConfig {
            limit: limit(l.rate, l.burst(), class.unit, scale, coarse_tick_ns),
            ipv6_mask: ipv6_mask(tier.ipv6_prefix.unwrap_or(0)),
            ipv4_mask: ipv4_mask(tier.ipv4_prefix.unwrap_or(0)),
            families: if tier.ipv4_prefix.is_some() { TIER_V4 } else { 0 }
                | if tier.ipv6_prefix.is_some() { TIER_V6 } else { 0 },
        };
    }
    ClassConfig {
        limits,
        ipv4_mask: ipv4_mask(class.ipv4_prefix),
        limit_count: u32::try_from(class.limits.len()).expect("at most 3 limits"),
        ipv6_mask: ipv6_mask(class.ipv6_prefix),
        tiers,
        tier_count: u32::try_from(class.tiers.len()).expect("at most 2 tiers"),
        flags: if class.adaptive { class_flags::ADAPTIVE } else { 0 },
        ban_after: class.ban.map_or(0, |ban| ticks(ban.after.0)),
        ban_for: class.ban.map_or(0, |ban| ticks(ban.duration.0)),
    }
}

/// A duration in ticks of the GCRA clock.
fn ticks(duration: std::time::Duration) -> u64 {
    ticks_from_ns(u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX))
}

/// Gives (`proto`, `port`) to `class`.
fn claim(class_of: &mut [u32], flags: &mut u32, proto: Proto, port: u16, class: u32, syn_only: bool) {
    let index = class_of::index(proto.number(), port).expect("TCP or UDP");
    class_of[index as usize] = class_of::entry(class, syn_only);
    *flags |= flags::CLAIMS
        | match proto {
            Proto::Tcp => flags::CLAIMS_TCP,
            Proto::Udp => flags::CLAIMS_UDP,
        };
}

/// What the maps must hold for `policy` (validated), whose rules and classes
/// have the ids `ids`, with the rates of the default class, of the limit
/// rules and of the adaptive classes scaled by `scale` (bursts stay as
/// configured), metered with the coarse clock where its tick
/// (`coarse_tick_ns`, 0: unknown) allows.
#[must_use]
pub fn compile(policy: &Policy, ids: Ids<'_>, scale: f64, coarse_tick_ns: u64) -> Plan {
    assert_eq!(ids.rules.len(), policy.rules.len(), "one id per rule");
    assert_eq!(ids.classes.len(), policy.classes.len(), "one id per class");
    let mut plan = Plan::default();
    let mut flags = 0;

    for entry in &policy.scope.ports {
        claim(&mut plan.class_of, &mut flags, entry.proto, entry.port, 0, entry.syn_only);
    }
    for (class, &id) in policy.classes.iter().zip(ids.classes) {
        assert!(id > 0 && id < MAX_CLASSES, "class ids are 1 to {}", MAX_CLASSES - 1);
        for m in &class.matches {
            for port in m.ports.0.iter().flat_map(|range| range.ports()) {
                claim(&mut plan.class_of, &mut flags, m.proto, port, id, m.syn_only);
            }
        }
        plan.classes[id as usize] = class_config(class, scale, coarse_tick_ns);
    }
    if policy.scope.ports.is_empty() && policy.unmatched.action == UnmatchedAction::Limit {
        flags |= flags::UNMATCHED_LIMIT;
    }

    for (spec, &id) in policy.rules.iter().zip(ids.rules) {
        let limit = spec
            .limit()
            .map_or_else(Limit::default, |l| limit(l.rate, l.burst, l.unit, scale, coarse_tick_ns));
        let action = match spec.action {
            Action::Allow => ACTION_ALLOW,
            Action::Deny => ACTION_DENY,
            Action::Limit => ACTION_LIMIT,
        };
        let value = Rule { limit, action, id };
        let deny = spec.action == Action::Deny;
        if let Some(name) = &spec.set {
            let place = ids.sets.get(name).copied().unwrap_or_else(|| panic!("set {name} is loaded"));
            plan.set_rules.push(SetRule { rule: value, slot: place.slot, families: place.families });
            flags |= place.families;
            if deny && place.families & flags::SETS_V4 != 0 {
                flags |= flags::DENY_V4;
            }
            if deny && place.families & flags::SETS_V6 != 0 {
                flags |= flags::DENY_V6;
            }
            continue;
        }
        match spec.cidr.expect("validated: a cidr or a set") {
            IpNet::V4(net) => {
                plan.rules_v4.insert((net.prefix_len(), net.addr().octets()), value);
                flags |= flags::RULES_V4 | if deny { flags::DENY_V4 } else { 0 };
            }
            IpNet::V6(net) => {
                plan.rules_v6.insert((net.prefix_len(), net.addr().octets()), value);
                flags |= flags::RULES_V6 | if deny { flags::DENY_V6 } else { 0 };
            }
        }
    }
    plan.filter_v4 = Region::ipv4(policy.rules.iter().filter_map(|r| match r.cidr? {
        IpNet::V4(net) => Some((net.network(), net.prefix_len())),
        IpNet::V6(_) => None,
    }));
    plan.filter_v6 = Region::ipv6(policy.rules.iter().filter_map(|r| match r.cidr? {
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
    let mut default_limits = [Limit::default(); MAX_CLASS_LIMITS as usize];
    default_limits[0] = limit(limits.rate, limits.burst, limits.unit, scale, coarse_tick_ns);
    let default_class = ClassConfig {
        limits: default_limits,
        ipv4_mask: ipv4_mask(limits.ipv4_prefix),
        limit_count: 1,
        ipv6_mask: ipv6_mask(limits.ipv6_prefix),
        // The controller moves the default limit.
        flags: class_flags::ADAPTIVE,
        ..ClassConfig::default()
    };
    plan.classes[0] = default_class;
    plan.settings = Settings {
        flags,
        new_source_limit: Limit::new(limits.new_source_rate, limits.new_source_burst, UNIT_PACKETS)
            .with_clock(coarse_tick_ns),
    };
    plan
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use throttle_common::{rule_filter, CLOCK_COARSE, CLOCK_FINE};

    use super::*;
    use crate::policy::{Limits, Period, RuleSpec, Scope, ScopePort, Unmatched};

    /// A jiffy of a kernel with HZ=250.
    const TICK_NS: u64 = 4_000_000;

    static NO_SETS: BTreeMap<SetName, SetPlace> = BTreeMap::new();

    /// The ids of a policy of `rules` rules and no classes.
    fn ids(rules: &[u32]) -> Ids<'_> {
        Ids { rules, classes: &[], sets: &NO_SETS }
    }

    fn limit_rule(cidr: &str, rate: u64) -> RuleSpec {
        RuleSpec { rate: Some(Rate::per_second(rate)), ..RuleSpec::new(cidr.parse().unwrap(), Action::Limit) }
    }

    #[test]
    fn the_default_policy_meters_everything_at_the_default_limit() {
        let plan = compile(&Policy::default(), ids(&[]), 1.0, TICK_NS);
        let limits = Limits::default();
        assert_eq!(plan.settings.flags, flags::NEW_SOURCE_LIMIT | flags::UNMATCHED_LIMIT);
        let class = plan.classes[0];
        assert_eq!(class.limit_count, 1);
        assert_eq!(class.limits[0].rate(), limits.rate.count);
        assert_eq!(class.limits[0].burst(), limits.burst);
        assert_eq!(class.ipv4_mask, u32::MAX);
        assert_eq!(class.ipv6_mask, [u32::MAX, u32::MAX, 0, 0]);
        assert!(plan.class_of.iter().all(|&e| e == 0));
        assert!(plan.classes[1..].iter().all(|c| *c == ClassConfig::default()));
        assert!(plan.rules_v4.is_empty() && plan.rules_v6.is_empty());
        assert_eq!(plan.filter_v4.shift_byte(), rule_filter::shift_byte(0), "no rules: no mask");
    }

    #[test]
    fn the_scope_gives_its_ports_to_the_default_class_and_stops_metering_the_rest() {
        let policy = Policy {
            scope: Scope {
                ports: vec![
                    ScopePort { proto: Proto::Tcp, port: 443, syn_only: true },
                    ScopePort { proto: Proto::Udp, port: 53, syn_only: false },
                ],
            },
            ..Policy::default()
        };
        let plan = compile(&policy, ids(&[]), 1.0, 0);
        let entry = |proto, port| plan.class_of[class_of::index(proto, port).unwrap() as usize];
        assert_eq!(entry(throttle_common::PROTO_TCP, 443), class_of::entry(0, true));
        assert_eq!(entry(throttle_common::PROTO_UDP, 53), class_of::entry(0, false));
        assert_eq!(entry(throttle_common::PROTO_TCP, 53), 0);
        assert_eq!(plan.class_of.iter().filter(|&&e| e != 0).count(), 2);
        let want = flags::CLAIMS | flags::CLAIMS_TCP | flags::CLAIMS_UDP;
        assert_eq!(plan.settings.flags & want, want);
        assert_eq!(plan.settings.flags & flags::UNMATCHED_LIMIT, 0, "what the scope does not name passes");
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
        let plan = compile(&policy, ids(&[7, 3, 9]), 1.0, 0);
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
        let plan = compile(&policy, ids(&[1, 2]), 1.0, 0);
        for addr in [Ipv4Addr::new(10, 1, 200, 7), Ipv4Addr::new(10, 2, 3, 255)] {
            assert!(plan.filter_v4.may_match(rule_filter::ipv4(u32::from_ne_bytes(addr.octets()))), "{addr}");
        }
        assert!(plan.filter_v4.shift_byte() != 0, "a mask of the shortest prefix, /16");
    }

    #[test]
    fn the_scale_cuts_rates_never_bursts_and_never_below_one() {
        let policy = Policy { rules: vec![limit_rule("10.0.0.0/8", 100)], ..Policy::default() };
        let plan = compile(&policy, ids(&[1]), 0.5, 0);
        assert_eq!(plan.classes[0].limits[0].rate(), 500);
        assert_eq!(plan.classes[0].limits[0].burst(), 1_000);
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
        let plan = compile(&Policy { rules: vec![rule], ..Policy::default() }, ids(&[1]), 1.0, TICK_NS);
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
        assert_eq!(compile(&long, ids(&[]), 1.0, TICK_NS).classes[0].limits[0].clock, CLOCK_COARSE);
        assert_eq!(compile(&short, ids(&[]), 1.0, TICK_NS).classes[0].limits[0].clock, CLOCK_FINE);
        assert_eq!(compile(&long, ids(&[]), 1.0, 0).classes[0].limits[0].clock, CLOCK_FINE, "tick unknown");
    }

    #[test]
    fn a_placed_config_carries_the_writers_fields() {
        let plan = compile(&Policy::default(), ids(&[]), 1.0, 0);
        let placement = Placement {
            version: 9,
            bank: 1,
            shifts: 0x0102_0304,
            one_iface_slot: Some(3),
            set_bank: 1,
            capture: true,
        };
        let config = plan.config(placement);
        assert_eq!((config.version, config.layout, config.rule_filter_bank), (9, LAYOUT_VERSION, 1));
        assert_eq!((config.iface_slot, config.rule_filter_shifts), (3, 0x0102_0304));
        assert_ne!(config.flags & flags::ONE_IFACE, 0);
        assert_ne!(config.flags & flags::CAPTURE, 0);
        assert_eq!((config.set_rule_count, config.set_rule_bank), (0, 1));
        assert_eq!(Plan::settings_of(&config), plan.settings);
    }

    #[test]
    fn set_rules_name_their_slots_in_order_before_the_prefix_rules() {
        let set = |name: &str| crate::policy::SetSpec { name: name.parse().unwrap(), file: None };
        let policy = Policy {
            sets: vec![set("allow"), set("block")],
            rules: vec![
                RuleSpec::of(crate::policy::Target::Set("block".parse().unwrap()), Action::Deny),
                limit_rule("10.0.0.0/8", 5),
                RuleSpec::of(crate::policy::Target::Set("allow".parse().unwrap()), Action::Allow),
            ],
            ..Policy::default()
        };
        policy.validate().unwrap();
        let sets = BTreeMap::from([
            ("allow".parse().unwrap(), SetPlace { slot: 1, families: flags::SETS_V6 }),
            ("block".parse().unwrap(), SetPlace { slot: 6, families: flags::SETS_V4 | flags::SETS_V6 }),
        ]);
        let plan = compile(&policy, Ids { rules: &[4, 5, 6], classes: &[], sets: &sets }, 1.0, 0);
        let found: Vec<(u32, u32, u32, u32)> =
            plan.set_rules.iter().map(|r| (r.rule.id, r.rule.action, r.slot, r.families)).collect();
        assert_eq!(
            found,
            [(4, ACTION_DENY, 6, flags::SETS_V4 | flags::SETS_V6), (6, ACTION_ALLOW, 1, flags::SETS_V6)]
        );
        assert_eq!(plan.rules_v4.len(), 1, "the prefix rule in its trie");
        let want = flags::SETS_V4 | flags::SETS_V6 | flags::DENY_V4 | flags::DENY_V6 | flags::RULES_V4;
        assert_eq!(plan.settings.flags & want, want);
        assert_eq!(plan.config(Placement::default()).set_rule_count, 2);
    }

    fn example_classes() -> Vec<Class> {
        crate::policy::classes_from_toml(
            r#"
            [[classes]]
            name = "ssh"
            match = [{ proto = "tcp", ports = "22", syn_only = true }]
            limits = [{ rate = "3/minute", burst = 5 }]
            [[classes]]
            name = "dns"
            match = [{ proto = "udp", ports = "53" }]
            limits = [{ rate = "50/second", burst = 100 }, { rate = "1000/minute" }]
            ipv4_prefix = 24
            [[classes]]
            name = "web"
            match = [{ proto = "tcp", ports = [443, "8000-8100"], syn_only = true }]
            limits = [{ rate = "20/s", burst = 40 }]
            adaptive = true
            "#,
        )
        .unwrap()
    }

    #[test]
    fn classes_claim_their_ports_under_their_ids_with_their_limits() {
        let policy = Policy { classes: example_classes(), ..Policy::default() };
        policy.validate().unwrap();
        let plan = compile(&policy, Ids { rules: &[], classes: &[4, 2, 9], sets: &NO_SETS }, 0.5, TICK_NS);
        let entry = |proto, port| plan.class_of[class_of::index(proto, port).unwrap() as usize];
        assert_eq!(entry(throttle_common::PROTO_TCP, 22), class_of::entry(4, true));
        assert_eq!(entry(throttle_common::PROTO_UDP, 53), class_of::entry(2, false));
        for port in [443, 8000, 8050, 8100] {
            assert_eq!(entry(throttle_common::PROTO_TCP, port), class_of::entry(9, true), "{port}");
        }
        assert_eq!(entry(throttle_common::PROTO_TCP, 8101), 0);
        assert_eq!(plan.class_of.iter().filter(|&&e| e != 0).count(), 1 + 1 + 1 + 101);
        let dns = plan.classes[2];
        assert_eq!(dns.limit_count, 2);
        assert_eq!((dns.limits[0].rate(), dns.limits[0].burst()), (50, 100), "not adaptive: not scaled");
        assert_eq!(dns.limits[1].interval, throttle_common::gcra::TICKS_PER_SEC * 60 / 1000);
        assert_eq!(dns.limits[1].burst(), 1000);
        assert_eq!(dns.ipv4_mask, ipv4_mask(24));
        let web = plan.classes[9];
        assert_eq!(web.limits[0].rate(), 10, "adaptive: scaled");
        assert_eq!(plan.classes[4].limits[0].interval, 20 * throttle_common::gcra::TICKS_PER_SEC);
        assert_eq!(plan.classes.iter().filter(|c| c.limit_count > 0).count(), 1 + 3, "the default and three");
        assert_ne!(plan.settings.flags & flags::UNMATCHED_LIMIT, 0, "no scope: the rest is metered");
        let pass = Policy { unmatched: Unmatched { action: UnmatchedAction::Pass }, ..policy.clone() };
        let plan = compile(&pass, Ids { rules: &[], classes: &[4, 2, 9], sets: &NO_SETS }, 1.0, TICK_NS);
        assert_eq!(plan.settings.flags & flags::UNMATCHED_LIMIT, 0);
    }
}
