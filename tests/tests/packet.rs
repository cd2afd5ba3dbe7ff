//! Packet tests: the loaded XDP program run on crafted frames through
//! `BPF_PROG_TEST_RUN`, with verdicts and counters checked for every path.
//!
//! Loading a program needs root (or `CAP_BPF`). Each test starts with
//! [`require_root!`], which skips it loudly when not root, or fails it when
//! `THROTTLE_REQUIRE_PRIVILEGED=1` (set by `cargo xtask test` in CI).

use std::net::IpAddr;

use throttle::{
    kernel::{
        bucket_key,
        explain::{explain, Probe},
        plan::Plan,
        Dataplane,
    },
    policy::{
        parse_set, Action, Class, Limits, Period, Policy, Proto, Rate, RuleSpec, Scope, ScopePort,
        SetContent, SetSpec, Target, Unit, Unmatched, UnmatchedAction,
    },
};
use throttle_common::{reason, rule_filter, PROTO_TCP, PROTO_UDP};
use throttle_tests::{
    frames::{arp, Ext, Frame, L4, TCP_ACK, TCP_SYN},
    require_root,
    xdp::{load_set, policy, verdict, write, PolicyIds, XDP_DROP, XDP_PASS},
};

const ETH_HLEN: usize = 14;

/// A loaded program with `policy` applied, and its counters before a step.
struct Harness {
    dataplane: Dataplane,
    ids: PolicyIds,
    before: [u64; reason::COUNT as usize],
}

impl Harness {
    fn new(policy: &Policy) -> Self {
        let dataplane = Dataplane::load(4_096).expect("loading the program");
        let before = dataplane.counters().expect("counters");
        let mut harness = Self { dataplane, ids: PolicyIds::default(), before };
        let _ = harness.apply(policy);
        harness.before = harness.dataplane.counters().expect("counters");
        harness
    }

    /// Compiles `policy`, writes the plan, and checks that the maps hold
    /// exactly the plan.
    fn apply(&mut self, policy: &Policy) -> Plan {
        write(&mut self.dataplane, &mut self.ids, policy)
    }

    fn run(&self, frame: &[u8]) -> u32 {
        let verdict = verdict(self.dataplane.program(), frame);
        assert!(verdict == XDP_PASS || verdict == XDP_DROP, "verdict {verdict} for {frame:02x?}");
        verdict
    }

    /// Runs a frame and checks its verdict and the one reason it counted.
    #[track_caller]
    fn expect(&mut self, frame: &[u8], verdict: u32, why: throttle_common::Reason) {
        let got = self.run(frame);
        let delta = self.delta();
        let name = reason::NAMES[why.index()];
        assert_eq!(got, verdict, "verdict for {frame:02x?} (expected reason {name}), counted {delta:?}");
        let mut expected = vec![(name, 1)];
        if verdict == XDP_PASS && reason::drops(why) {
            expected.push(("dry_run_pass", 1));
        }
        expected.sort_unstable();
        assert_eq!(delta, expected, "counters for {frame:02x?}");
    }

    /// The counters that moved since the last call, by name.
    fn delta(&mut self) -> Vec<(&'static str, u64)> {
        let now = self.dataplane.counters().expect("counters");
        let mut moved: Vec<_> = (0..reason::COUNT as usize)
            .filter(|&i| now[i] != self.before[i])
            .map(|i| (reason::NAMES[i], now[i] - self.before[i]))
            .collect();
        moved.sort_unstable();
        self.before = now;
        moved
    }
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("an address")
}

fn udp_scope(port: u16) -> Scope {
    Scope { ports: vec![ScopePort { proto: Proto::Udp, port, syn_only: false }] }
}

#[test]
fn non_ip_passes() {
    require_root!();
    let mut h = Harness::new(&policy(1, 1));
    h.expect(&arp(), XDP_PASS, reason::NON_IP);
    // An unknown ethertype inside a VLAN tag.
    let mut tagged = arp();
    tagged.splice(12..12, [0x81, 0x00, 0x00, 0x07]);
    h.expect(&tagged, XDP_PASS, reason::NON_IP);
}

#[test]
fn every_truncated_header_passes_as_malformed() {
    require_root!();
    let mut h = Harness::new(&policy(1, 1));
    let frames = [
        Frame::udp(ip("10.0.0.1"), 53),
        Frame::udp(ip("10.0.0.1"), 53).vlan(7),
        Frame::udp(ip("10.0.0.1"), 53).vlan(7).vlan(8),
        Frame::udp(ip("10.0.0.1"), 53).options(&[0x94, 0x04, 0, 0, 1, 1, 1, 0]),
        Frame::udp(ip("2001:db8::1"), 53),
        Frame::udp(ip("2001:db8::1"), 53).vlan(9).vlan(10),
        Frame::udp(ip("2001:db8::1"), 53)
            .ext(Ext::HopByHop)
            .ext(Ext::Routing)
            .ext(Ext::Fragment { offset: 0 })
            .ext(Ext::Ah)
            .ext(Ext::DestOpts),
    ];
    for frame in frames {
        let bytes = frame.build();
        let l3_end = *frame.header_ends().last().expect("headers");
        // Every cut before the end of L3, at and between header boundaries.
        // (BPF_PROG_TEST_RUN, like every driver, runs nothing shorter than
        // an Ethernet header.)
        for len in ETH_HLEN..l3_end {
            h.expect(&bytes[..len], XDP_PASS, reason::MALFORMED);
        }
    }
    // A wrong IP version and an IHL under 5.
    let mut bad = Frame::udp(ip("10.0.0.1"), 53).build();
    bad[14] = 0x65;
    h.expect(&bad, XDP_PASS, reason::MALFORMED);
    bad[14] = 0x44;
    h.expect(&bad, XDP_PASS, reason::MALFORMED);
    // IHL claiming options that are not there.
    let mut short = Frame::udp(ip("10.0.0.1"), 53).payload(0).build();
    short[14] = 0x4F;
    h.expect(&short, XDP_PASS, reason::MALFORMED);
    let mut bad6 = Frame::udp(ip("2001:db8::1"), 53).build();
    bad6[14] = 0x45;
    h.expect(&bad6, XDP_PASS, reason::MALFORMED);
}

#[test]
fn a_truncated_l4_header_is_metered_by_protocol() {
    require_root!();
    let mut p = policy(1, 1);
    p.scope = udp_scope(53);
    let mut h = Harness::new(&p);
    let frame = Frame::udp(ip("10.0.0.1"), 53);
    let bytes = frame.build();
    let l3_end = *frame.header_ends().last().expect("headers");
    // The source is known, the port is not: in scope, since the scope names UDP.
    h.expect(&bytes[..l3_end + 2], XDP_PASS, reason::NEW_SOURCE);
    h.expect(&bytes[..l3_end + 3], XDP_DROP, reason::OVER_LIMIT);
    // A truncated TCP header, with only UDP in scope: out of scope.
    let tcp = Frame::tcp(ip("10.0.0.2"), 53, TCP_SYN);
    let end = *tcp.header_ends().last().expect("headers");
    h.expect(&tcp.build()[..end + 5], XDP_PASS, reason::OUT_OF_SCOPE);
}

#[test]
fn ipv4_options_are_skipped_to_reach_the_port() {
    require_root!();
    let mut p = policy(1, 1);
    p.scope = udp_scope(53);
    let mut h = Harness::new(&p);
    let options = [0x94, 0x04, 0, 0, 0x01, 0x01, 0x01, 0x00, 0x07, 0x03, 0x04, 0x00];
    let frame = |port| Frame::udp(ip("10.1.1.1"), port).options(&options).build();
    h.expect(&frame(54), XDP_PASS, reason::OUT_OF_SCOPE);
    h.expect(&frame(53), XDP_PASS, reason::NEW_SOURCE);
    h.expect(&frame(53), XDP_DROP, reason::OVER_LIMIT);
    // Maximum IHL: 40 bytes of options.
    let full = Frame::udp(ip("10.1.1.2"), 53).options(&[1; 40]).build();
    h.expect(&full, XDP_PASS, reason::NEW_SOURCE);
}

#[test]
fn ipv6_extension_headers_are_walked() {
    require_root!();
    let mut p = policy(1, 1);
    p.scope = udp_scope(53);
    let mut h = Harness::new(&p);
    let chains: [&[Ext]; 6] = [
        &[Ext::HopByHop],
        &[Ext::Routing],
        &[Ext::DestOpts],
        &[Ext::Fragment { offset: 0 }],
        &[Ext::Ah],
        &[Ext::HopByHop, Ext::DestOpts, Ext::Routing, Ext::Fragment { offset: 0 }, Ext::Ah, Ext::DestOpts],
    ];
    for (i, chain) in chains.iter().enumerate() {
        let src = ip(&format!("2001:db8:{i}::1"));
        let build = |port| chain.iter().fold(Frame::udp(src, port), |f, e| f.ext(*e)).build();
        h.expect(&build(54), XDP_PASS, reason::OUT_OF_SCOPE);
        h.expect(&build(53), XDP_PASS, reason::NEW_SOURCE);
        h.expect(&build(53), XDP_DROP, reason::OVER_LIMIT);
    }
    // More headers than the walk follows: source known, port not; in scope
    // because the scope names... nothing for an unknown protocol.
    let long = (0..9).fold(Frame::udp(ip("2001:db8:99::1"), 53), |f, _| f.ext(Ext::DestOpts)).build();
    h.expect(&long, XDP_PASS, reason::OUT_OF_SCOPE);
}

#[test]
fn non_first_fragments_are_in_scope_by_protocol() {
    require_root!();
    let mut p = policy(1, 1);
    p.scope = udp_scope(53);
    let mut h = Harness::new(&p);
    // IPv4: a non-first fragment has no ports; the scope names UDP.
    let frag = Frame::udp(ip("10.2.0.1"), 9999).fragment(100).build();
    h.expect(&frag, XDP_PASS, reason::NEW_SOURCE);
    h.expect(&frag, XDP_DROP, reason::OVER_LIMIT);
    // A first fragment (offset 0, more fragments) carries the port.
    let mut first = Frame::udp(ip("10.2.0.2"), 9999).build();
    first[20] = 0x20; // MF
    h.expect(&first, XDP_PASS, reason::OUT_OF_SCOPE);
    // IPv6.
    let frag6 = Frame::udp(ip("2001:db8:f::1"), 9999).ext(Ext::Fragment { offset: 3 }).build();
    h.expect(&frag6, XDP_PASS, reason::NEW_SOURCE);
    h.expect(&frag6, XDP_DROP, reason::OVER_LIMIT);
    // A TCP fragment when only UDP is in scope.
    let tcp_frag = Frame::tcp(ip("10.2.0.3"), 53, TCP_SYN).fragment(8).build();
    h.expect(&tcp_frag, XDP_PASS, reason::OUT_OF_SCOPE);
}

#[test]
fn one_and_two_vlan_tags() {
    require_root!();
    let mut p = policy(1, 1);
    p.scope = udp_scope(53);
    let mut h = Harness::new(&p);
    for (src, frame) in [
        ("10.3.0.1", Frame::udp(ip("10.3.0.1"), 53).vlan(100)),
        ("10.3.0.2", Frame::udp(ip("10.3.0.2"), 53).vlan(100).vlan(200)),
        ("2001:db8:3::1", Frame::udp(ip("2001:db8:3::1"), 53).vlan(100)),
        ("2001:db8:4::1", Frame::udp(ip("2001:db8:4::1"), 53).vlan(100).vlan(200)),
    ] {
        let bytes = frame.build();
        h.expect(&bytes, XDP_PASS, reason::NEW_SOURCE);
        h.expect(&bytes, XDP_DROP, reason::OVER_LIMIT);
        let out = frame.clone().l4(L4::Udp { dport: 54 }).build();
        h.expect(&out, XDP_PASS, reason::OUT_OF_SCOPE);
        assert!(src.parse::<IpAddr>().is_ok());
    }
    // Three tags: the third is not followed, so its ethertype is a tag.
    let three = Frame::udp(ip("10.3.0.3"), 53).vlan(1).vlan(2).vlan(3).build();
    h.expect(&three, XDP_PASS, reason::NON_IP);
}

fn rule(cidr: &str, action: Action, rate: Option<u64>, burst: Option<u64>) -> RuleSpec {
    RuleSpec {
        rate: rate.map(Rate::per_second),
        burst,
        ..RuleSpec::new(cidr.parse().expect("a prefix"), action)
    }
}

#[test]
fn rules_longest_prefix_wins_for_both_families() {
    require_root!();
    let mut p = policy(1, 1);
    p.rules = vec![
        rule("10.0.0.0/8", Action::Limit, Some(1), Some(3)),
        rule("10.1.0.0/16", Action::Deny, None, None),
        rule("10.1.2.0/24", Action::Allow, None, None),
        rule("2001:db8::/32", Action::Limit, Some(1), Some(3)),
        rule("2001:db8:1::/48", Action::Deny, None, None),
        rule("2001:db8:1:2::/64", Action::Allow, None, None),
    ];
    let mut h = Harness::new(&p);
    for (allowed, denied, limited, default) in [
        ("10.1.2.3", "10.1.9.9", "10.9.9.9", "192.0.2.9"),
        ("2001:db8:1:2::5", "2001:db8:1:3::5", "2001:db8:7::5", "2001:db9::5"),
    ] {
        for _ in 0..5 {
            h.expect(&Frame::udp(ip(allowed), 1).build(), XDP_PASS, reason::ALLOW_RULE);
            h.expect(&Frame::udp(ip(denied), 1).build(), XDP_DROP, reason::DENY_RULE);
        }
        // The limit rule's own burst of 3.
        let limited = Frame::udp(ip(limited), 1).build();
        h.expect(&limited, XDP_PASS, reason::NEW_SOURCE);
        h.expect(&limited, XDP_PASS, reason::PASSED);
        h.expect(&limited, XDP_PASS, reason::PASSED);
        h.expect(&limited, XDP_DROP, reason::OVER_LIMIT);
        // The default limit's burst of 1.
        let default = Frame::udp(ip(default), 1).build();
        h.expect(&default, XDP_PASS, reason::NEW_SOURCE);
        h.expect(&default, XDP_DROP, reason::OVER_LIMIT);
    }
    // The rule's bucket is keyed by its id.
    let key = bucket_key(ip("10.9.9.9"), 1, 32, 64);
    let bucket = h.dataplane.bucket(&key).unwrap().expect("tracked under the rule");
    assert_eq!((bucket.passed, bucket.dropped), (3, 1));
}

#[test]
fn the_rule_filter_follows_every_change_of_the_rules() {
    require_root!();
    let mut p = policy(1_000, 1_000);
    p.rules = vec![
        rule("10.1.2.0/24", Action::Deny, None, None),
        rule("2001:db8:1::1/128", Action::Deny, None, None),
    ];
    let mut h = Harness::new(&p);
    let deny = |h: &mut Harness, src| h.expect(&Frame::udp(ip(src), 1).build(), XDP_DROP, reason::DENY_RULE);
    let allow =
        |h: &mut Harness, src| h.expect(&Frame::udp(ip(src), 1).build(), XDP_PASS, reason::ALLOW_RULE);
    // The masks in force, as (IPv4, IPv6) bytes: 1 + the bits under the
    // shortest prefix (IPv6 looks at its first 64 bits only).
    let masks = |h: &Harness| {
        let config = h.dataplane.kernel_config().expect("the configuration");
        let bank = config.rule_filter_bank;
        [false, true].map(|ipv6| rule_filter::shift_of(config.rule_filter_shifts, bank, ipv6))
    };
    assert_eq!(masks(&h), [1 + 8, 1]);
    deny(&mut h, "10.1.2.3");
    deny(&mut h, "2001:db8:1::1");
    h.expect(&Frame::udp(ip("10.1.3.3"), 1).build(), XDP_PASS, reason::NEW_SOURCE);
    h.expect(&Frame::udp(ip("2001:db8:1::2"), 1).build(), XDP_PASS, reason::NEW_SOURCE);
    // Shorter prefixes: the filter looks at fewer bits, in the other bank.
    p.rules.push(rule("10.0.0.0/8", Action::Allow, None, None));
    p.rules.push(rule("2001::/16", Action::Allow, None, None));
    h.apply(&p);
    assert_eq!(masks(&h), [1 + 24, 1 + 48]);
    deny(&mut h, "10.1.2.3");
    deny(&mut h, "2001:db8:1::1");
    allow(&mut h, "10.200.0.1");
    allow(&mut h, "2001:db8:ffff::1");
    // The longer ones go: the filter narrows again, back in the first bank.
    p.rules.retain(|r| r.action == Action::Allow);
    h.apply(&p);
    assert_eq!(masks(&h), [1 + 24, 1 + 48]);
    allow(&mut h, "10.1.2.3");
    allow(&mut h, "2001:db8:1::1");
    // A change that leaves the filter as it is (a limit rule's rate).
    p.rules = vec![rule("192.0.2.0/24", Action::Limit, Some(5), Some(5))];
    h.apply(&p);
    p.rules[0].rate = Some(Rate::per_second(6));
    h.apply(&p);
    assert_eq!(masks(&h), [1 + 8, 0]);
    h.expect(&Frame::udp(ip("192.0.2.1"), 1).build(), XDP_PASS, reason::NEW_SOURCE);
    h.expect(&Frame::udp(ip("10.1.2.3"), 1).build(), XDP_PASS, reason::NEW_SOURCE);
    // No rules at all.
    p.rules.clear();
    h.apply(&p);
    h.expect(&Frame::udp(ip("192.0.2.1"), 1).build(), XDP_PASS, reason::NEW_SOURCE);
}

#[test]
fn deny_rules_apply_outside_the_scope_and_limits_only_inside() {
    require_root!();
    let mut p = policy(1, 1);
    p.scope = udp_scope(53);
    p.rules = vec![
        rule("10.6.0.0/16", Action::Deny, None, None),
        rule("10.8.0.0/16", Action::Allow, None, None),
        rule("10.9.0.0/16", Action::Limit, Some(1), Some(1)),
        rule("2001:db8:6::/48", Action::Deny, None, None),
    ];
    let mut h = Harness::new(&p);
    h.expect(&Frame::udp(ip("10.6.0.1"), 9).build(), XDP_DROP, reason::DENY_RULE);
    h.expect(&Frame::udp(ip("2001:db8:6::1"), 9).build(), XDP_DROP, reason::DENY_RULE);
    h.expect(&Frame::udp(ip("10.7.0.1"), 9).build(), XDP_PASS, reason::OUT_OF_SCOPE);
    h.expect(&Frame::udp(ip("2001:db8:7::1"), 9).build(), XDP_PASS, reason::OUT_OF_SCOPE);
    // Out of scope, an allow or a limit rule changes nothing: the packet
    // passes as out of scope.
    h.expect(&Frame::udp(ip("10.8.0.1"), 9).build(), XDP_PASS, reason::OUT_OF_SCOPE);
    h.expect(&Frame::udp(ip("10.9.0.1"), 9).build(), XDP_PASS, reason::OUT_OF_SCOPE);
    // In scope, every rule applies.
    h.expect(&Frame::udp(ip("10.8.0.1"), 53).build(), XDP_PASS, reason::ALLOW_RULE);
    h.expect(&Frame::udp(ip("10.9.0.1"), 53).build(), XDP_PASS, reason::NEW_SOURCE);
    h.expect(&Frame::udp(ip("10.9.0.1"), 53).build(), XDP_DROP, reason::OVER_LIMIT);
    h.expect(&Frame::udp(ip("10.6.0.1"), 53).build(), XDP_DROP, reason::DENY_RULE);
    // Without a deny rule in a family, out of scope is out of scope.
    p.rules.retain(|r| r.action != Action::Deny || matches!(r.cidr, Some(ipnet::IpNet::V6(_))));
    h.apply(&p);
    h.expect(&Frame::udp(ip("10.6.0.1"), 9).build(), XDP_PASS, reason::OUT_OF_SCOPE);
    h.expect(&Frame::udp(ip("2001:db8:6::1"), 9).build(), XDP_DROP, reason::DENY_RULE);
}

#[test]
fn scope_changes_land_port_by_port() {
    require_root!();
    let mut p = policy(1_000, 1_000);
    let port = |proto, port, syn_only| ScopePort { proto, port, syn_only };
    // Neighbours in one word of the bitmap, its first and last slots, and
    // both protocols on one port.
    p.scope = Scope {
        ports: vec![
            port(Proto::Tcp, 80, true),
            port(Proto::Tcp, 81, false),
            port(Proto::Udp, 81, false),
            port(Proto::Tcp, 65_535, false),
            port(Proto::Udp, 1, false),
        ],
    };
    let mut h = Harness::new(&p);
    let src = ip("10.5.0.1");
    h.expect(&Frame::tcp(src, 80, TCP_SYN).build(), XDP_PASS, reason::NEW_SOURCE);
    h.expect(&Frame::tcp(src, 80, TCP_ACK).build(), XDP_PASS, reason::OUT_OF_SCOPE);
    h.expect(&Frame::tcp(src, 81, TCP_ACK).build(), XDP_PASS, reason::PASSED);
    h.expect(&Frame::udp(src, 81).build(), XDP_PASS, reason::PASSED);
    h.expect(&Frame::tcp(src, 65_535, TCP_ACK).build(), XDP_PASS, reason::PASSED);
    h.expect(&Frame::udp(src, 65_535).build(), XDP_PASS, reason::OUT_OF_SCOPE);
    h.expect(&Frame::udp(src, 1).build(), XDP_PASS, reason::PASSED);
    h.expect(&Frame::tcp(src, 1, TCP_ACK).build(), XDP_PASS, reason::OUT_OF_SCOPE);
    h.expect(&Frame::udp(src, 82).build(), XDP_PASS, reason::OUT_OF_SCOPE);
    // Port 80 loses SYN-only, 81/TCP leaves, 82/UDP arrives.
    p.scope = Scope {
        ports: vec![
            port(Proto::Tcp, 80, false),
            port(Proto::Udp, 81, false),
            port(Proto::Udp, 82, false),
            port(Proto::Tcp, 65_535, false),
            port(Proto::Udp, 1, false),
        ],
    };
    h.apply(&p);
    h.expect(&Frame::tcp(src, 80, TCP_ACK).build(), XDP_PASS, reason::PASSED);
    h.expect(&Frame::tcp(src, 81, TCP_ACK).build(), XDP_PASS, reason::OUT_OF_SCOPE);
    h.expect(&Frame::udp(src, 81).build(), XDP_PASS, reason::PASSED);
    h.expect(&Frame::udp(src, 82).build(), XDP_PASS, reason::PASSED);
    // Back to no scope: everything is metered, nothing is left in the bitmap.
    p.scope = Scope::default();
    h.apply(&p);
    h.expect(&Frame::tcp(src, 22, TCP_ACK).build(), XDP_PASS, reason::PASSED);
    p.scope = Scope { ports: vec![port(Proto::Udp, 9, false)] };
    h.apply(&p);
    for (proto_port, frame) in [
        ("80/tcp", Frame::tcp(src, 80, TCP_ACK).build()),
        ("81/udp", Frame::udp(src, 81).build()),
        ("65535/tcp", Frame::tcp(src, 65_535, TCP_ACK).build()),
    ] {
        assert_eq!(h.run(&frame), XDP_PASS, "{proto_port}");
        assert_eq!(h.delta(), vec![("out_of_scope", 1)], "{proto_port} left the scope");
    }
}

#[test]
fn scope_in_and_out_and_syn_only() {
    require_root!();
    let mut p = policy(1, 1);
    p.scope = Scope {
        ports: vec![
            ScopePort { proto: Proto::Tcp, port: 443, syn_only: true },
            ScopePort { proto: Proto::Tcp, port: 80, syn_only: false },
            ScopePort { proto: Proto::Udp, port: 53, syn_only: false },
        ],
    };
    let mut h = Harness::new(&p);
    let src = ip("10.4.0.1");
    h.expect(&Frame::tcp(src, 443, TCP_SYN | TCP_ACK).build(), XDP_PASS, reason::OUT_OF_SCOPE);
    h.expect(&Frame::tcp(src, 443, TCP_ACK).build(), XDP_PASS, reason::OUT_OF_SCOPE);
    h.expect(&Frame::udp(src, 443).build(), XDP_PASS, reason::OUT_OF_SCOPE);
    h.expect(&Frame::tcp(src, 22, TCP_SYN).build(), XDP_PASS, reason::OUT_OF_SCOPE);
    h.expect(&Frame::udp(src, 80).build(), XDP_PASS, reason::OUT_OF_SCOPE);
    h.expect(&Frame::udp(src, 9).l4(L4::Other(1)).build(), XDP_PASS, reason::OUT_OF_SCOPE);
    h.expect(&Frame::tcp(src, 443, TCP_SYN).build(), XDP_PASS, reason::NEW_SOURCE);
    h.expect(&Frame::tcp(src, 443, TCP_SYN).build(), XDP_DROP, reason::OVER_LIMIT);
    // Same source, same bucket, whichever port in scope.
    h.expect(&Frame::tcp(src, 80, TCP_ACK).build(), XDP_DROP, reason::OVER_LIMIT);
    h.expect(&Frame::udp(ip("10.4.0.2"), 53).build(), XDP_PASS, reason::NEW_SOURCE);
    // An empty scope meters everything, ICMP included.
    let mut h = Harness::new(&policy(1, 1));
    h.expect(&Frame::udp(src, 9).l4(L4::Other(1)).build(), XDP_PASS, reason::NEW_SOURCE);
    h.expect(&Frame::tcp(src, 22, TCP_ACK).build(), XDP_DROP, reason::OVER_LIMIT);
}

#[test]
fn dry_run_passes_and_counts_what_it_would_drop() {
    require_root!();
    let mut p = policy(1, 1);
    p.limits.dry_run = true;
    p.rules = vec![rule("10.5.0.0/16", Action::Deny, None, None)];
    let mut h = Harness::new(&p);
    let frame = Frame::udp(ip("10.8.0.1"), 1).build();
    h.expect(&frame, XDP_PASS, reason::NEW_SOURCE);
    h.expect(&frame, XDP_PASS, reason::OVER_LIMIT);
    h.expect(&Frame::udp(ip("10.5.0.1"), 1).build(), XDP_PASS, reason::DENY_RULE);
    // Turning dry-run off keeps the bucket: the next packet drops.
    p.limits.dry_run = false;
    h.apply(&p);
    h.expect(&frame, XDP_DROP, reason::OVER_LIMIT);
}

#[test]
fn sources_are_aggregated_to_the_prefix() {
    require_root!();
    let mut p = policy(1, 2);
    p.limits.ipv4_prefix = 24;
    let mut h = Harness::new(&p);
    h.expect(&Frame::udp(ip("10.0.0.1"), 1).build(), XDP_PASS, reason::NEW_SOURCE);
    h.expect(&Frame::udp(ip("10.0.0.2"), 1).build(), XDP_PASS, reason::PASSED);
    h.expect(&Frame::udp(ip("10.0.0.3"), 1).build(), XDP_DROP, reason::OVER_LIMIT);
    h.expect(&Frame::udp(ip("10.0.1.1"), 1).build(), XDP_PASS, reason::NEW_SOURCE);
    // IPv6 defaults to /64: one host rotating inside its /64 has one bucket.
    h.expect(&Frame::udp(ip("2001:db8:5:6::1"), 1).build(), XDP_PASS, reason::NEW_SOURCE);
    h.expect(&Frame::udp(ip("2001:db8:5:6:ffff::9"), 1).build(), XDP_PASS, reason::PASSED);
    h.expect(&Frame::udp(ip("2001:db8:5:6:1234:5678:9abc:def0"), 1).build(), XDP_DROP, reason::OVER_LIMIT);
    h.expect(&Frame::udp(ip("2001:db8:5:7::1"), 1).build(), XDP_PASS, reason::NEW_SOURCE);
    let key = bucket_key(ip("10.0.0.77"), 0, 24, 64);
    let bucket = h.dataplane.bucket(&key).unwrap().expect("the /24's bucket");
    assert_eq!((bucket.passed, bucket.dropped), (2, 1));
}

#[test]
fn the_first_seen_budget_caps_new_sources() {
    require_root!();
    let mut p = policy(1, 1);
    p.limits.new_source_rate = 1;
    p.limits.new_source_burst = 3;
    let mut h = Harness::new(&p);
    for i in 1..=3 {
        h.expect(&Frame::udp(ip(&format!("10.10.0.{i}")), 1).build(), XDP_PASS, reason::NEW_SOURCE);
    }
    for i in 4..=8 {
        h.expect(&Frame::udp(ip(&format!("10.10.0.{i}")), 1).build(), XDP_DROP, reason::NEW_SOURCE_LIMIT);
        // Not tracked: a spoofed flood does not push real sources out.
        let key = bucket_key(ip(&format!("10.10.0.{i}")), 0, 32, 64);
        assert_eq!(h.dataplane.bucket(&key).unwrap(), None);
    }
    // Tracked sources are not affected by the spent budget.
    h.expect(&Frame::udp(ip("10.10.0.1"), 1).build(), XDP_DROP, reason::OVER_LIMIT);
    let mut p2 = p.clone();
    p2.limits.burst = 5;
    h.apply(&p2);
    h.expect(&Frame::udp(ip("10.10.0.1"), 1).build(), XDP_PASS, reason::PASSED);
}

#[test]
fn bytes_mode_costs_the_frame_length() {
    require_root!();
    let mut p = policy(1, 300);
    p.limits.unit = Unit::Bytes;
    let mut h = Harness::new(&p);
    let frame = Frame::udp(ip("10.11.0.1"), 1).payload(58).build();
    assert_eq!(frame.len(), 100);
    h.expect(&frame, XDP_PASS, reason::NEW_SOURCE);
    h.expect(&frame, XDP_PASS, reason::PASSED);
    h.expect(&frame, XDP_PASS, reason::PASSED);
    h.expect(&frame, XDP_DROP, reason::OVER_LIMIT);
    // A smaller frame still fits nowhere: the bucket is spent.
    h.expect(&Frame::udp(ip("10.11.0.1"), 1).payload(0).build(), XDP_DROP, reason::OVER_LIMIT);
    // Per rule: a packet-counted rule beside the byte-counted default.
    p.rules =
        vec![RuleSpec { unit: Some(Unit::Packets), ..rule("10.12.0.0/16", Action::Limit, Some(1), Some(2)) }];
    h.apply(&p);
    let big = Frame::udp(ip("10.12.0.1"), 1).payload(1000).build();
    h.expect(&big, XDP_PASS, reason::NEW_SOURCE);
    h.expect(&big, XDP_PASS, reason::PASSED);
    h.expect(&big, XDP_DROP, reason::OVER_LIMIT);
    // A frame larger than a byte burst never passes, and is tracked.
    let huge = Frame::udp(ip("10.11.0.2"), 1).payload(400).build();
    h.expect(&huge, XDP_DROP, reason::OVER_LIMIT);
}

#[test]
fn a_change_of_limit_keeps_every_bucket() {
    require_root!();
    let mut p = policy(1, 2);
    p.rules = vec![rule("10.13.0.0/16", Action::Limit, Some(1), Some(2))];
    let mut h = Harness::new(&p);
    for src in ["10.14.0.1", "10.13.0.1"] {
        let frame = Frame::udp(ip(src), 1).build();
        h.expect(&frame, XDP_PASS, reason::NEW_SOURCE);
        h.expect(&frame, XDP_PASS, reason::PASSED);
        h.expect(&frame, XDP_DROP, reason::OVER_LIMIT);
    }
    // A higher rate, the same burst, for the default and the rule: the
    // spent sources stay spent (a reset would give them 2 more at once).
    p.limits.rate = Rate::per_second(2);
    p.rules[0].rate = Some(Rate::per_second(2));
    p.scope = udp_scope(1);
    h.apply(&p);
    for src in ["10.14.0.1", "10.13.0.1"] {
        h.expect(&Frame::udp(ip(src), 1).build(), XDP_DROP, reason::OVER_LIMIT);
    }
    let bucket = h.dataplane.bucket(&bucket_key(ip("10.13.0.1"), 1, 32, 64)).unwrap().unwrap();
    assert_eq!((bucket.passed, bucket.dropped), (2, 2));
}

#[test]
fn no_frame_aborts() {
    require_root!();
    let mut p = policy(1_000_000, 1_000_000);
    p.scope = Scope {
        ports: vec![
            ScopePort { proto: Proto::Tcp, port: 80, syn_only: true },
            ScopePort { proto: Proto::Udp, port: 53, syn_only: false },
        ],
    };
    p.rules = vec![
        rule("10.0.0.0/8", Action::Limit, Some(5), Some(5)),
        rule("2001:db8::/32", Action::Deny, None, None),
    ];
    let h = Harness::new(&p);
    // A deterministic stream of frames: valid headers with random bytes
    // spliced in, and random garbage, of every length up to 256.
    let mut state = 0x9E37_79B9_7F4A_7C15_u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let templates = [
        Frame::udp(ip("10.0.0.1"), 53).options(&[1; 8]).build(),
        Frame::tcp(ip("2001:db8::1"), 80, TCP_SYN)
            .ext(Ext::HopByHop)
            .ext(Ext::Fragment { offset: 0 })
            .build(),
        Frame::udp(ip("192.0.2.1"), 53).vlan(1).vlan(2).build(),
    ];
    for i in 0..3_000 {
        let mut frame = if i % 4 == 0 {
            (0..(next() % 257)).map(|_| next() as u8).collect::<Vec<u8>>()
        } else {
            let mut f = templates[i % templates.len()].clone();
            for _ in 0..(next() % 4) {
                let at = (next() as usize) % f.len();
                f[at] = next() as u8;
            }
            f
        };
        frame.truncate((next() as usize) % 300);
        frame.resize(frame.len().max(ETH_HLEN), 0);
        h.run(&frame);
    }
}

#[test]
fn a_full_table_gives_a_new_source_the_slot_of_a_full_bucket_and_keeps_the_limited_one() {
    require_root!();
    // One group of four slots: every source competes for them.
    let mut dataplane = Dataplane::load(4).expect("loading the program");
    let p = policy(1_000, 50);
    write(&mut dataplane, &mut PolicyIds::default(), &p);
    let mut h = Harness::new(&p);
    h.dataplane = dataplane;
    let limited = ip("10.20.0.1");
    for _ in 0..50 {
        assert_eq!(h.run(&Frame::udp(limited, 53).build()), XDP_PASS);
    }
    assert_eq!(h.run(&Frame::udp(limited, 53).build()), XDP_DROP, "its burst is spent");
    let key = bucket_key(limited, 0, 32, 64);
    let before = h.dataplane.bucket(&key).unwrap().expect("tracked");
    // Three sources send one packet each; 2 ms later their buckets are full
    // again (1000/s), then twenty new sources arrive, one after the other.
    for i in 2..5 {
        assert_eq!(h.run(&Frame::udp(ip(&format!("10.20.0.{i}")), 53).build()), XDP_PASS);
    }
    std::thread::sleep(std::time::Duration::from_millis(2));
    for i in 10..30 {
        let source = ip(&format!("10.20.0.{i}"));
        assert_eq!(h.run(&Frame::udp(source, 53).build()), XDP_PASS, "a new source gets its burst");
        assert!(h.dataplane.bucket(&bucket_key(source, 0, 32, 64)).unwrap().is_some(), "and a slot");
        let kept = h.dataplane.bucket(&key).unwrap().expect("the limited source keeps its slot");
        assert_eq!(kept, before, "and its state");
    }
    let mut tracked = 0;
    h.dataplane.for_each_bucket(&mut |_, _| tracked += 1);
    assert_eq!(tracked, 4);
}

#[test]
fn a_source_with_a_share_of_its_limit_gets_that_share_and_the_others_all_of_theirs() {
    require_root!();
    // 1/s with a burst of 100: what a source gets at once is its burst.
    let p = policy(1, 100);
    let mut h = Harness::new(&p);
    let (shared, whole) = (ip("10.30.0.1"), ip("10.30.0.2"));
    for source in [shared, whole] {
        assert_eq!(h.run(&Frame::udp(source, 53).build()), XDP_PASS);
    }
    let key = bucket_key(shared, 0, 32, 64);
    let quarter = throttle_common::table::SHARE_ONE / 4;
    let set = h.dataplane.set_shares(0, &[(key, quarter), (bucket_key(ip("10.30.0.3"), 0, 32, 64), quarter)]);
    assert_eq!(set.expect("setting shares"), 1, "one of the two is tracked");
    assert_eq!(h.dataplane.bucket(&key).unwrap().expect("tracked").share, quarter);
    let passed =
        |h: &Harness, source| (0..200).filter(|_| h.run(&Frame::udp(source, 53).build()) == XDP_PASS).count();
    // The first packet took one of 100; a quarter of the rest is 24.
    assert_eq!(passed(&h, shared), 24);
    assert_eq!(passed(&h, whole), 99);
    // The fleet out of reach: every source without a share of its own gets
    // half of its limit, and the one that had a share is one of them.
    h.dataplane.set_shares(throttle_common::table::SHARE_ONE / 2, &[]).expect("setting the default share");
    assert_eq!(h.dataplane.bucket(&key).unwrap().expect("tracked").share, 0, "its share is taken back");
    assert_eq!(passed(&h, ip("10.30.0.4")), 50, "a new source: half of its burst");
}

#[test]
fn new_sources_seen_on_two_cpus_at_once_get_one_slot_and_one_limit() {
    const SOURCES: u32 = 4_000;
    const TRIES: usize = 4;
    require_root!();
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    assert!(cpus >= 2, "two CPUs are needed to insert from two at once; this machine has {cpus}");
    // A burst of 3 at one a minute: nothing refills during the test.
    let mut p = policy(1, 3);
    p.limits.rate = Rate::new(1, Period::Minute).unwrap();
    let mut h = Harness::new(&p);
    // Room for every source in its first group.
    h.dataplane = Dataplane::load(1 << 16).expect("loading the program");
    write(&mut h.dataplane, &mut PolicyIds::default(), &p);
    let frames: std::sync::Arc<Vec<Vec<u8>>> = std::sync::Arc::new(
        (0..SOURCES)
            .map(|i| Frame::udp(IpAddr::V4(std::net::Ipv4Addr::from(0x0a50_0000 + i)), 53).build())
            .collect(),
    );
    let fd = || {
        use std::os::fd::AsFd as _;
        h.dataplane.program().fd().unwrap().as_fd().try_clone_to_owned().unwrap()
    };
    let start = std::sync::Arc::new(std::sync::Barrier::new(2));
    // Both CPUs send every source's packets in the same order, so that each
    // source's first packets meet on the two CPUs at about the same time.
    let senders: Vec<_> = (0..2)
        .map(|cpu| {
            let (frames, start, fd) = (std::sync::Arc::clone(&frames), std::sync::Arc::clone(&start), fd());
            std::thread::spawn(move || {
                throttle_tests::traffic::pin_to_cpu(cpu);
                start.wait();
                let mut passed = vec![0u32; frames.len()];
                for (i, frame) in frames.iter().enumerate() {
                    for _ in 0..TRIES {
                        if throttle_tests::xdp::run_fd(&fd, frame) == XDP_PASS {
                            passed[i] += 1;
                        }
                    }
                }
                passed
            })
        })
        .collect();
    let passed: Vec<Vec<u32>> = senders.into_iter().map(|t| t.join().unwrap()).collect();
    for (i, (a, b)) in passed[0].iter().zip(&passed[1]).enumerate() {
        assert_eq!(a + b, 3, "source {i}: exactly its burst over both CPUs");
    }
    let mut keys = Vec::new();
    h.dataplane.for_each_bucket(&mut |key, bucket| keys.push((*key, bucket.passed + bucket.dropped)));
    assert_eq!(keys.len(), SOURCES as usize, "one slot per source");
    keys.sort_unstable_by_key(|(k, _)| k.addr);
    keys.dedup_by_key(|(k, _)| k.addr);
    assert_eq!(keys.len(), SOURCES as usize, "no source twice");
    let counted: u64 = keys.iter().map(|(_, n)| n).sum();
    // The counts are plain adds: two CPUs on one source may lose a few.
    let sent = u64::from(SOURCES) * 2 * TRIES as u64;
    assert!(counted <= sent && counted >= sent * 99 / 100, "counted {counted} of {sent}");
}

#[test]
fn the_walk_of_the_table_reads_every_bucket_a_lookup_finds() {
    require_root!();
    let mut dataplane = Dataplane::load(1 << 20).expect("loading the program");
    let p = policy(1_000, 1_000);
    write(&mut dataplane, &mut PolicyIds::default(), &p);
    let mut h = Harness::new(&p);
    h.dataplane = dataplane;
    let mut sources: Vec<IpAddr> =
        (0..5_000u32).map(|i| IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + i))).collect();
    sources.extend((0..300u16).map(|i| format!("2001:db8:{i:x}::1").parse::<IpAddr>().unwrap()));
    for source in &sources {
        assert_eq!(h.run(&Frame::udp(*source, 53).build()), XDP_PASS);
    }
    let mut walked = Vec::new();
    h.dataplane.for_each_bucket(&mut |key, bucket| walked.push((*key, *bucket)));
    let mut looked_up: Vec<_> = sources
        .iter()
        .map(|source| {
            let key = bucket_key(*source, 0, 32, 64);
            (key, h.dataplane.bucket(&key).expect("a lookup").expect("the program tracks every source"))
        })
        .collect();
    walked.sort_unstable_by_key(|(k, _)| (k.family, k.addr, k.rule));
    looked_up.sort_unstable_by_key(|(k, _)| (k.family, k.addr, k.rule));
    assert_eq!(walked.len(), 5_300);
    assert_eq!(walked, looked_up);
    assert!(walked.iter().all(|(_, b)| b.passed == 1 && b.dropped == 0), "one packet each, passed");
}

/// The example classes: SSH SYNs at 3 a minute (burst 2), DNS at 5 a second
/// (burst 4) and 6 a minute, web SYNs on 443 and 8000-8100 at 2 a second.
/// Classes as the configuration file spells them.
fn parse_classes(text: &str) -> Vec<Class> {
    #[derive(serde::Deserialize)]
    struct Doc {
        classes: Vec<Class>,
    }
    toml::from_str::<Doc>(text).expect("classes").classes
}

fn classes(unmatched: UnmatchedAction) -> Policy {
    let classes = parse_classes(
        r#"
        [[classes]]
        name = "ssh"
        match = [{ proto = "tcp", ports = "22", syn_only = true }]
        limits = [{ rate = "3/minute", burst = 2 }]
        [[classes]]
        name = "dns"
        match = [{ proto = "udp", ports = "53" }]
        limits = [{ rate = "5/second", burst = 4 }, { rate = "6/minute" }]
        [[classes]]
        name = "web"
        match = [{ proto = "tcp", ports = [443, "8000-8100"], syn_only = true }]
        limits = [{ rate = 2, burst = 2 }]
        ipv4_prefix = 24
        "#,
    );
    // The default: 1/s, burst 1, so that a slow run refills nothing.
    Policy { classes, unmatched: Unmatched { action: unmatched }, ..policy(1, 1) }
}

#[test]
fn each_class_meters_its_own_ports_with_its_own_limit() {
    require_root!();
    let mut h = Harness::new(&classes(UnmatchedAction::Limit));
    let src = ip("192.0.2.10");
    // SSH: 2 SYNs, then over; its ACKs are no SSH attempts and pass.
    let syn = Frame::tcp(src, 22, TCP_SYN).build();
    h.expect(&syn, XDP_PASS, reason::NEW_SOURCE);
    h.expect(&syn, XDP_PASS, reason::PASSED);
    h.expect(&syn, XDP_DROP, reason::OVER_LIMIT);
    h.expect(&Frame::tcp(src, 22, TCP_ACK).build(), XDP_PASS, reason::OUT_OF_SCOPE);
    // Web: its own bucket, keyed by the /24: another address of it shares it.
    let web = |a| Frame::tcp(ip(a), 8042, TCP_SYN).build();
    h.expect(&web("192.0.2.10"), XDP_PASS, reason::NEW_SOURCE);
    h.expect(&web("192.0.2.99"), XDP_PASS, reason::PASSED);
    h.expect(&web("192.0.2.200"), XDP_DROP, reason::OVER_LIMIT);
    // Unmatched traffic, whatever its port: the default class, burst 1.
    h.expect(&Frame::tcp(src, 8101, TCP_SYN).build(), XDP_PASS, reason::NEW_SOURCE);
    h.expect(&Frame::udp(src, 9999).build(), XDP_DROP, reason::OVER_LIMIT);
}

#[test]
fn a_packet_passes_only_when_every_limit_of_its_class_admits_it() {
    require_root!();
    let mut h = Harness::new(&classes(UnmatchedAction::Limit));
    // DNS: 4 at once by the per-second limit, then the per-minute one (6)
    // stops it once the first refills: 6 in all over these 2 s.
    let dns = Frame::udp(ip("198.51.100.7"), 53).build();
    h.expect(&dns, XDP_PASS, reason::NEW_SOURCE);
    for _ in 0..3 {
        h.expect(&dns, XDP_PASS, reason::PASSED);
    }
    h.expect(&dns, XDP_DROP, reason::OVER_LIMIT);
    std::thread::sleep(std::time::Duration::from_millis(1_200));
    let mut passed = 0;
    for _ in 0..6 {
        if h.run(&dns) == XDP_PASS {
            passed += 1;
        }
    }
    let delta = h.delta();
    assert_eq!(passed, 2, "the per-minute limit's burst of 6 is spent: {delta:?}");
    assert_eq!(delta, [("over_limit", 4), ("passed", 2)]);
}

#[test]
fn unmatched_traffic_passes_when_told_and_deny_rules_still_apply() {
    require_root!();
    let mut p = classes(UnmatchedAction::Pass);
    p.rules = vec![rule("203.0.113.0/24", Action::Deny, None, None)];
    let mut h = Harness::new(&p);
    let other = Frame::udp(ip("192.0.2.10"), 9999).build();
    for _ in 0..3 {
        h.expect(&other, XDP_PASS, reason::OUT_OF_SCOPE);
    }
    h.expect(&Frame::udp(ip("203.0.113.5"), 9999).build(), XDP_DROP, reason::DENY_RULE);
    h.expect(&Frame::udp(ip("203.0.113.5"), 53).build(), XDP_DROP, reason::DENY_RULE);
    // A class change keeps the other classes' buckets: SSH's budget stays spent.
    let syn = Frame::tcp(ip("192.0.2.10"), 22, TCP_SYN).build();
    h.expect(&syn, XDP_PASS, reason::NEW_SOURCE);
    h.expect(&syn, XDP_PASS, reason::PASSED);
    h.expect(&syn, XDP_DROP, reason::OVER_LIMIT);
    p.classes.retain(|c| c.name.as_str() != "dns");
    h.apply(&p);
    h.expect(&syn, XDP_DROP, reason::OVER_LIMIT);
    h.expect(&Frame::udp(ip("192.0.2.10"), 53).build(), XDP_PASS, reason::OUT_OF_SCOPE);
}

#[test]
fn a_prefix_tier_caps_the_sources_of_a_prefix_together() {
    require_root!();
    let classes = parse_classes(
        r#"
        [[classes]]
        name = "api"
        match = [{ proto = "udp", ports = "8443" }]
        limits = [{ rate = 1, burst = 2 }]
        tiers = [{ ipv4_prefix = 24, rate = 1, burst = 3 }]
        "#,
    );
    let mut h = Harness::new(&Policy { classes, ..policy(1_000, 1) });
    let from = |a: &str| Frame::udp(ip(a), 8443).build();
    // Each address has a burst of 2 of its own; their /24 has 3 in all.
    h.expect(&from("192.0.2.1"), XDP_PASS, reason::NEW_SOURCE);
    h.expect(&from("192.0.2.1"), XDP_PASS, reason::PASSED);
    h.expect(&from("192.0.2.2"), XDP_PASS, reason::NEW_SOURCE);
    h.expect(&from("192.0.2.2"), XDP_DROP, reason::OVER_LIMIT);
    h.expect(&from("192.0.2.3"), XDP_DROP, reason::OVER_LIMIT);
    // Another /24 has its own tier bucket; IPv6 has no tier here.
    h.expect(&from("198.51.100.1"), XDP_PASS, reason::NEW_SOURCE);
    h.expect(&from("198.51.100.1"), XDP_PASS, reason::PASSED);
    let v6 = Frame::udp(ip("2001:db8::1"), 8443).build();
    h.expect(&v6, XDP_PASS, reason::NEW_SOURCE);
    h.expect(&v6, XDP_PASS, reason::PASSED);
    h.expect(&v6, XDP_DROP, reason::OVER_LIMIT);
}

#[test]
fn a_source_over_its_limit_long_enough_is_banned_then_let_go() {
    require_root!();
    let classes = parse_classes(
        r#"
        [[classes]]
        name = "ssh"
        match = [{ proto = "tcp", ports = "22", syn_only = true }]
        limits = [{ rate = "1/minute", burst = 1 }]
        ban = { after = "400ms", duration = "1s" }
        "#,
    );
    let mut h = Harness::new(&Policy { classes: classes.clone(), ..policy(1_000, 1_000) });
    let syn = Frame::tcp(ip("192.0.2.66"), 22, TCP_SYN).build();
    let other = Frame::tcp(ip("192.0.2.67"), 22, TCP_SYN).build();
    h.expect(&syn, XDP_PASS, reason::NEW_SOURCE);
    h.expect(&syn, XDP_DROP, reason::OVER_LIMIT);
    h.expect(&syn, XDP_DROP, reason::OVER_LIMIT);
    std::thread::sleep(std::time::Duration::from_millis(500));
    // Over its limit for longer than `after`: banned from now on.
    h.expect(&syn, XDP_DROP, reason::BANNED);
    h.expect(&syn, XDP_DROP, reason::BANNED);
    // Another source of the class is not.
    h.expect(&other, XDP_PASS, reason::NEW_SOURCE);
    // A limit raised under the ban does not lift it.
    let mut raised = classes.clone();
    raised[0].limits[0].rate = "1000/s".parse().expect("a rate");
    h.apply(&Policy { classes: raised, ..policy(1_000, 1_000) });
    h.expect(&syn, XDP_DROP, reason::BANNED);
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    // The ban is over: the source starts again from its end, with its burst.
    h.expect(&syn, XDP_PASS, reason::PASSED);
}

#[test]
fn explain_agrees_with_the_program_packet_by_packet() {
    require_root!();
    let mut p = classes(UnmatchedAction::Limit);
    p.classes[0].ban = parse_classes(
        r#"
        [[classes]]
        name = "x"
        match = [{ proto = "udp", ports = 1 }]
        limits = [{ rate = 1 }]
        ban = { after = "250ms", duration = "1m" }
        "#,
    )[0]
    .ban;
    p.rules = vec![
        rule("203.0.113.0/24", Action::Deny, None, None),
        rule("198.51.100.0/24", Action::Limit, Some(2), Some(2)),
        rule("192.0.2.128/25", Action::Allow, None, None),
    ];
    let mut h = Harness::new(&p);
    let plan = h.apply(&p);
    let tcp = |src: &str, port, flags| {
        (Frame::tcp(ip(src), port, flags).build(), ip(src), PROTO_TCP, port, flags == TCP_SYN)
    };
    let udp = |src: &str, port| (Frame::udp(ip(src), port).build(), ip(src), PROTO_UDP, port, false);
    let mut sequence = Vec::new();
    for _ in 0..4 {
        sequence.push(tcp("192.0.2.10", 22, TCP_SYN));
        sequence.push(udp("192.0.2.10", 53));
        sequence.push(udp("198.51.100.9", 53));
        sequence.push(tcp("192.0.2.11", 8042, TCP_SYN));
        sequence.push(tcp("192.0.2.12", 8050, TCP_SYN));
        sequence.push(udp("192.0.2.10", 9999));
    }
    sequence.push(tcp("192.0.2.10", 22, TCP_ACK));
    sequence.push(udp("203.0.113.1", 53));
    sequence.push(udp("203.0.113.1", 9999));
    sequence.push(udp("192.0.2.200", 53));
    sequence.push(udp("2001:db8::1", 53));
    // Past the SSH class's ban's `after`: the source over its limit since
    // its third SYN is banned.
    let pause = sequence.len();
    sequence.push(tcp("192.0.2.10", 22, TCP_SYN));
    sequence.push(tcp("192.0.2.10", 22, TCP_SYN));
    for (i, (frame, source, proto, port, syn)) in sequence.into_iter().enumerate() {
        if i == pause {
            // Past the ban's `after` by far more than a tick of the coarse
            // clock the program meters this class on, and that `after` far
            // above the gaps of a loaded machine between the packets before.
            std::thread::sleep(std::time::Duration::from_millis(400));
        }
        let probe = Probe { source, proto, port: Some(port), syn, len: frame.len() as u64 };
        let now = throttle_common::gcra::ticks_from_ns(throttle_tests::mono_ns());
        let bucket = |key: &throttle_common::BucketKey| h.dataplane.bucket(key).expect("a bucket lookup");
        let said = explain(&plan, &probe, &bucket, &|_, _| false, now);
        let verdict = h.run(&frame);
        let counted = h.delta();
        let name = reason::NAMES[said.reason.index()];
        assert_eq!(
            counted,
            [(name, 1)],
            "{probe:?}: explain said {name} ({said:?}), the program counted {counted:?}"
        );
        assert_eq!(verdict == XDP_DROP, reason::drops(said.reason), "{probe:?}");
    }
}

fn set_spec(name: &str) -> SetSpec {
    SetSpec { name: name.parse().unwrap(), file: None }
}

fn set_rule(name: &str, action: Action) -> RuleSpec {
    RuleSpec::of(Target::Set(name.parse().unwrap()), action)
}

#[test]
fn set_rules_come_first_in_order_then_the_longest_prefix() {
    require_root!();
    let mut h = Harness::new(&policy(1_000, 1_000));
    let allow = parse_set(["192.0.2.128/25", "2001:db8:1::/48"]).content;
    let block = parse_set(["192.0.2.0/24", "198.51.100.7", "2001:db8::/32"]).content;
    load_set(&h.dataplane, &mut h.ids, "allow", 0, &allow);
    load_set(&h.dataplane, &mut h.ids, "block", 2, &block);
    let mut p = policy(1_000, 1_000);
    p.sets = vec![set_spec("allow"), set_spec("block")];
    p.rules = vec![
        set_rule("allow", Action::Allow),
        set_rule("block", Action::Deny),
        rule("198.51.100.0/24", Action::Allow, None, None),
        rule("203.0.113.0/24", Action::Limit, Some(1), Some(1)),
    ];
    let plan = h.apply(&p);
    assert_eq!(plan.set_rules.len(), 2);
    h.expect(&Frame::udp(ip("192.0.2.200"), 53).build(), XDP_PASS, reason::ALLOW_RULE);
    h.expect(&Frame::udp(ip("192.0.2.7"), 53).build(), XDP_DROP, reason::DENY_RULE);
    h.expect(&Frame::udp(ip("198.51.100.7"), 53).build(), XDP_DROP, reason::DENY_RULE);
    h.expect(&Frame::udp(ip("198.51.100.8"), 53).build(), XDP_PASS, reason::ALLOW_RULE);
    h.expect(&Frame::udp(ip("2001:db8:1::5"), 53).build(), XDP_PASS, reason::ALLOW_RULE);
    h.expect(&Frame::udp(ip("2001:db8:2::5"), 53).build(), XDP_DROP, reason::DENY_RULE);
    h.expect(&Frame::udp(ip("2001:db9::5"), 53).build(), XDP_PASS, reason::NEW_SOURCE);
    h.expect(&Frame::udp(ip("203.0.113.9"), 53).build(), XDP_PASS, reason::NEW_SOURCE);
    h.expect(&Frame::udp(ip("203.0.113.9"), 53).build(), XDP_DROP, reason::OVER_LIMIT);
    h.expect(&Frame::udp(ip("10.9.9.9"), 53).build(), XDP_PASS, reason::NEW_SOURCE);

    // A limit rule of a set meters each of its sources in a bucket of its own.
    let mut p2 = p.clone();
    p2.rules[1] =
        RuleSpec { rate: Some(Rate::per_second(1)), burst: Some(1), ..set_rule("block", Action::Limit) };
    h.apply(&p2);
    h.expect(&Frame::udp(ip("192.0.2.7"), 53).build(), XDP_PASS, reason::NEW_SOURCE);
    h.expect(&Frame::udp(ip("192.0.2.7"), 53).build(), XDP_DROP, reason::OVER_LIMIT);
    h.expect(&Frame::udp(ip("192.0.2.8"), 53).build(), XDP_PASS, reason::NEW_SOURCE);

    // Out of every class, a deny set still drops.
    let mut p3 = p.clone();
    p3.unmatched = Unmatched { action: UnmatchedAction::Pass };
    p3.scope = udp_scope(53);
    h.apply(&p3);
    h.expect(&Frame::udp(ip("192.0.2.7"), 9999).build(), XDP_DROP, reason::DENY_RULE);
    h.expect(&Frame::udp(ip("192.0.2.200"), 9999).build(), XDP_PASS, reason::OUT_OF_SCOPE);
    h.expect(&Frame::udp(ip("10.9.9.9"), 9999).build(), XDP_PASS, reason::OUT_OF_SCOPE);
}

/// A set of `count` /32s from `first` on, with `also` in it.
fn hosts(first: u32, count: u32, also: &[&str]) -> SetContent {
    let v4 = (first..first + count)
        .map(|a| ipnet::Ipv4Net::new(std::net::Ipv4Addr::from(a), 32).unwrap())
        .chain(also.iter().map(|s| s.parse().unwrap()))
        .collect();
    SetContent::new(v4, Vec::new())
}

#[test]
fn a_set_replaced_under_traffic_never_lets_through_what_both_versions_deny() {
    require_root!();
    let mut h = Harness::new(&policy(1_000_000, 1_000_000));
    // Both versions hold 192.0.2.0/24; each also holds 20 000 hosts the
    // other does not.
    let old = hosts(u32::from(std::net::Ipv4Addr::new(10, 0, 0, 0)), 20_000, &["192.0.2.0/24"]);
    let new = hosts(u32::from(std::net::Ipv4Addr::new(10, 1, 0, 0)), 20_000, &["192.0.2.0/24"]);
    load_set(&h.dataplane, &mut h.ids, "feed", 0, &old);
    let mut p = policy(1_000_000, 1_000_000);
    p.sets = vec![set_spec("feed")];
    p.rules = vec![set_rule("feed", Action::Deny)];
    h.apply(&p);

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let frames = [Frame::udp(ip("192.0.2.77"), 53).build(), Frame::udp(ip("192.0.2.1"), 53).build()];
    let program_fd = {
        use std::os::fd::AsFd as _;
        h.dataplane.program().fd().unwrap().as_fd().try_clone_to_owned().unwrap()
    };
    let watcher = {
        let stop = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut runs = 0u64;
            let mut passed = 0u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for frame in &frames {
                    if throttle_tests::xdp::run_fd(&program_fd, frame) != XDP_DROP {
                        passed += 1;
                    }
                    runs += 1;
                }
            }
            (runs, passed)
        })
    };
    let mut tries = h.dataplane.set_tries().unwrap();
    let versions = [(&old, 0u32), (&new, 1u32)];
    for round in 1..=6 {
        let (content, slot) = versions[round % 2];
        let (previous, previous_slot) = versions[(round + 1) % 2];
        load_set(&h.dataplane, &mut h.ids, "feed", slot, content);
        h.apply(&p);
        throttle::kernel::grace_period();
        throttle::kernel::SetLoader::remove(&mut tries, previous_slot, previous).unwrap();
        let inside = if slot == 0 { "10.0.0.9" } else { "10.1.0.9" };
        let outside = if slot == 0 { "10.1.0.9" } else { "10.0.0.9" };
        assert_eq!(h.run(&Frame::udp(ip(inside), 53).build()), XDP_DROP, "round {round}");
        assert_eq!(h.run(&Frame::udp(ip(outside), 53).build()), XDP_PASS, "round {round}");
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (runs, passed) = watcher.join().unwrap();
    eprintln!("{runs} packets from the prefix both versions deny during 6 replacements");
    assert!(runs > 100, "the watcher ran ({runs})");
    assert_eq!(passed, 0, "of {runs} packets from 192.0.2.0/24, {passed} passed while the set was replaced");
}

/// The events waiting in the ring: (kind, owner, the source's first word).
fn events(ring: &mut aya::maps::RingBuf<aya::maps::MapData>) -> Vec<(&'static str, u32, IpAddr)> {
    let mut out = Vec::new();
    while let Some(item) = ring.next() {
        // SAFETY: the program writes whole `Event`s, plain data, into the
        // ring; the item is at least that long.
        assert!(item.len() >= size_of::<throttle_common::Event>());
        let e: throttle_common::Event =
            unsafe { item.as_ptr().cast::<throttle_common::Event>().read_unaligned() };
        let src = IpAddr::V4(std::net::Ipv4Addr::from(e.addr[0].to_ne_bytes()));
        out.push((throttle_common::event::NAMES[e.kind as usize], e.owner, src));
    }
    out
}

#[test]
fn transitions_are_events_and_packets_are_not() {
    use throttle_common::event;
    require_root!();
    let ban = parse_classes(
        r#"
        [[classes]]
        name = "game"
        match = [{ proto = "udp", ports = "7777" }]
        limits = [{ rate = "1/minute", burst = 1 }]
        ban = { after = "200ms", duration = "1m" }
        "#,
    );
    let mut p = Policy {
        limits: Limits {
            rate: Rate::per_second(2),
            burst: 2,
            new_source_rate: 1,
            new_source_burst: 2,
            ..Limits::default()
        },
        classes: ban,
        rules: vec![rule("203.0.113.0/24", Action::Deny, None, None)],
        ..Policy::default()
    };
    let mut h = Harness::new(&p);
    let mut ring = h.dataplane.take_events().expect("the event ring");
    let a = Frame::udp(ip("192.0.2.1"), 53).build();
    // Its burst, then over it: one event however many packets are dropped.
    for _ in 0..2 {
        h.run(&a);
    }
    for _ in 0..5 {
        assert_eq!(h.run(&a), XDP_DROP);
    }
    // A deny rule: one event for a run of hits.
    for _ in 0..5 {
        assert_eq!(h.run(&Frame::udp(ip("203.0.113.9"), 53).build()), XDP_DROP);
    }
    // The first-seen budget (burst 2, one taken by 192.0.2.1) runs dry.
    h.run(&Frame::udp(ip("192.0.2.2"), 53).build());
    for host in 3..6 {
        assert_eq!(h.run(&Frame::udp(ip(&format!("192.0.2.{host}")), 53).build()), XDP_DROP);
    }
    let deny_id = h.ids.rules.id(Target::Cidr("203.0.113.0/24".parse().unwrap()));
    assert_eq!(h.dataplane.rule_counts(&[deny_id]).unwrap(), [5], "the deny rule counts what it dropped");
    let seen = events(&mut ring);
    assert_eq!(
        seen,
        [
            ("drop_start", 0, ip("192.0.2.1")),
            ("deny_hit", h.ids.rules.id(Target::Cidr("203.0.113.0/24".parse().unwrap())), ip("203.0.113.9")),
            ("budget_dry", 0, ip("192.0.2.3")),
        ]
    );
    // A second later: the budget admits again, and the first source passes
    // with half its burst free: both transitions are events.
    std::thread::sleep(std::time::Duration::from_millis(1_100));
    h.run(&Frame::udp(ip("192.0.2.9"), 53).build());
    assert_eq!(h.run(&a), XDP_PASS);
    assert_eq!(
        events(&mut ring),
        [("budget_recovered", 0, ip("192.0.2.9")), ("drop_end", 0, ip("192.0.2.1"))]
    );
    // A ban starts: over its limit, then banned after 200 ms of it.
    let g = Frame::udp(ip("192.0.2.50"), 7777).build();
    p.limits.new_source_rate = 0;
    h.apply(&p);
    h.run(&g);
    h.run(&g);
    std::thread::sleep(std::time::Duration::from_millis(250));
    h.run(&g);
    h.run(&g);
    let kinds: Vec<&str> = events(&mut ring).iter().map(|e| e.0).collect();
    assert_eq!(kinds, ["drop_start", "ban_start"]);

    // A flood of transitions: 1500 sources going over their limit at once
    // send no more than the events' burst; the rest is counted, not sent.
    let before = h.dataplane.event_stats().unwrap();
    for n in 0..1_500u32 {
        let [_, _, hi, lo] = n.to_be_bytes();
        let frame = Frame::udp(IpAddr::V4(std::net::Ipv4Addr::new(10, 77, hi, lo)), 53).build();
        for _ in 0..3 {
            h.run(&frame);
        }
    }
    let after = h.dataplane.event_stats().unwrap();
    let sent = events(&mut ring).len() as u64;
    assert_eq!(sent, after.sent - before.sent, "every event sent is in the ring");
    assert!(sent <= event::LIMIT.burst() + 50, "{sent} events sent for 1500 transitions");
    assert!(after.suppressed - before.suppressed >= 1_500 - sent - 50, "{after:?}: the rest held back");
    assert_eq!(after.lost, 0);
}

#[test]
fn newcomers_get_their_share_of_the_limits_the_controller_moves_and_known_sources_all() {
    require_root!();
    // 1/s with a burst of 100 everywhere: what a source gets at once is its
    // burst. The default limit and `game` are moved by the controller,
    // `dns` is not.
    let mut p = policy(1, 100);
    p.classes = parse_classes(
        r#"
        [[classes]]
        name = "dns"
        match = [{ proto = "udp", ports = "53" }]
        limits = [{ rate = 1, burst = 100 }]
        [[classes]]
        name = "game"
        match = [{ proto = "udp", ports = "27015" }]
        limits = [{ rate = 1, burst = 100 }]
        adaptive = true
        "#,
    );
    let mut h = Harness::new(&p);
    let now = || {
        throttle_common::table::born_of(
            throttle_common::gcra::ticks_from_ns(throttle::kernel::monotonic_ns()),
        )
    };
    let ports = [9000, 53, 27015];
    // A known source: its buckets made three units before the overload.
    let known = ip("10.31.0.1");
    for port in ports {
        assert_eq!(h.run(&Frame::udp(known, port).build()), XDP_PASS);
    }
    let table = h.dataplane.table().clone();
    let mut aged = 0;
    table.for_each(&mut |key, bucket| {
        if key.addr == bucket_key(known, key.rule, 32, 64).addr {
            assert!(table.put(key, &throttle_common::Bucket { born: now() - 3, ..*bucket }));
            aged += 1;
        }
    });
    assert_eq!(aged, 3, "one bucket a port");
    let quarter = throttle_common::table::SHARE_ONE / 4;
    h.dataplane
        .set_newcomers(throttle::kernel::NewcomerShare { known_before: now(), share: quarter })
        .expect("holding the newcomers");
    let passed = |h: &Harness, source, port| {
        (0..200).filter(|_| h.run(&Frame::udp(source, port).build()) == XDP_PASS).count()
    };
    // The known source: the rest of its burst everywhere.
    for port in ports {
        assert_eq!(passed(&h, known, port), 99, "known, port {port}");
    }
    // Newcomers: their first packet at the whole limit, then a quarter of
    // the rest, under the limits the controller moves only.
    assert_eq!(passed(&h, ip("10.31.0.2"), 9000), 1 + 24, "the default limit");
    assert_eq!(passed(&h, ip("10.31.0.2"), 27015), 1 + 24, "an adaptive class");
    assert_eq!(passed(&h, ip("10.31.0.2"), 53), 100, "a class the controller leaves alone");
    // The hold lifted: a newcomer gets its whole burst again.
    h.dataplane.set_newcomers(throttle::kernel::NewcomerShare::default()).expect("lifting the hold");
    assert_eq!(passed(&h, ip("10.31.0.3"), 9000), 100);
}
