//! Part 1: the cost per packet of every verdict path, through
//! `BPF_PROG_TEST_RUN`, each run next to the count-and-pass baseline.
//!
//! A test run with a repeat count runs the same frame again and again, so
//! each path is set up to stay on that path for the whole run:
//! - in budget: the source's bucket exists (a run of one packet makes it) and
//!   the limit (10^8/s, burst 10^9) cannot run out within a run;
//! - over budget: the bucket's TAT is pushed 10 s ahead before each run; the
//!   first packet clamps it to one burst (1 packet at 1/s) ahead, so every
//!   packet of a run shorter than a second is over budget;
//! - first seen, admitted: only the first repeat of a frame finds no bucket,
//!   so this path runs one packet per call on a fresh source each time, and
//!   the baseline is measured the same way (one packet per call);
//! - first seen, refused: the global first-seen budget's TAT is pushed ahead
//!   the same way, so every repeat misses the bucket map and is refused.
//!
//! After every run the counters must have moved by exactly the packets run,
//! all under the reason the row measures; a row that strays fails the part.
//!
//! The class rows run under three classes on ports of their own (one
//! limit; three limits; one limit and two prefix tiers), each in budget.
//! The set rows run under two deny sets of [`SET_PREFIXES`] prefixes each
//! (one IPv4, one IPv6): a source in a set (denied), and one in neither
//! (after both lookups missed, an in-budget pass).
//!
//! A repeated frame meters one bucket, which stays in the CPU's caches. A
//! flood from many sources does not: the spread measurement runs the
//! over-budget drop one packet per call over 65 536 tracked sources in a
//! random order, against the same calls on one source.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::{
    maps::{Array, Map, MapData, PerCpuArray},
    programs::Xdp,
    Ebpf,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;
use throttle::{
    kernel::{bucket_key, Dataplane, XdpMode},
    policy::{
        Action, Class, Limits, Policy, Proto, Rate, RuleSpec, Scope, ScopePort, SetContent, SetSpec,
        Target as RuleTarget,
    },
};
use throttle_common::{gcra::ticks_from_ns, map_name, reason, Bucket, BucketKey};
use throttle_tests::{
    frames::{arp, Frame},
    mono_ns,
    xdp::{self, XDP_DROP, XDP_PASS},
    Netns,
};

use crate::{
    baseline::{
        ATOMICS_PROGRAM, BASELINE_OBJECT, CLOCK_PROGRAM, COARSE_CLOCK_PROGRAM, COUNT_MAP, DROP_PROGRAM,
        LRU8_PROGRAM, LRU_PROGRAM, PASS_PROGRAM,
    },
    kernel::map_of,
    median, Progress, Rng,
};

/// The destination port of metered frames; the scoped set-up names it.
const PORT: u16 = 9000;
/// A port the scope does not name.
const OTHER_PORT: u16 = 80;
/// The ports of the class rows: one limit, three limits, one limit and two
/// tiers.
const CLASS_PORTS: [u16; 3] = [9101, 9102, 9103];
/// Prefixes of each set of the set rows.
pub const SET_PREFIXES: u32 = 1 << 20;
/// Filler rules per family in the large rule set.
pub const LARGE_RULES: usize = 10_000;
/// Bucket table size of the program under test: [`SPREAD_SOURCES`] fill an
/// eighth of it, where its first groups have room for every one.
const MAX_SOURCES: u32 = 1 << 19;
/// The fleet share of the shared rows: a third of the limit, as one of
/// three nodes that see a source alike holds.
const FLEET_SHARE: u32 = throttle_common::table::SHARE_ONE / 3;
/// How far ahead a TAT is pushed to keep a run on a drop path, ns.
const PUSH_AHEAD_NS: u64 = 10_000_000_000;

/// How much to measure.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Packets per test run.
    pub repeat: u32,
    /// Alternating rounds over every row.
    pub rounds: usize,
    /// Calls (one packet each, on a fresh source) per round for the
    /// first-seen row.
    pub fresh_calls: usize,
    /// Calls (one packet each) per round of the spread measurement, on one
    /// source and over [`SPREAD_SOURCES`].
    pub spread_calls: usize,
}

/// Tracked sources of the spread measurement: as many as the flood's.
pub const SPREAD_SOURCES: u32 = 65_536;

/// The rule set a row runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum RuleSet {
    /// No rules but those the row needs (allow and deny rows have theirs).
    Empty,
    /// [`LARGE_RULES`] limit rules per family that the row's source misses.
    Large,
}

impl RuleSet {
    pub fn label(self) -> &'static str {
        match self {
            Self::Empty => "empty",
            Self::Large => "10k",
        }
    }
}

/// The verdict path a row measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Path {
    NonIp,
    OutOfScope,
    AllowRule,
    DenyRule,
    InBudget,
    OverBudget,
    FirstSeen,
    FirstSeenRefused,
    ClassOne,
    ClassThree,
    ClassTiers,
    SetHit,
    SetMiss,
    /// The over-budget drop while a capture copies one in 100 drops.
    OverBudgetCaptured,
    /// The in-budget pass and the over-budget drop of a source with a fleet
    /// share of its limit in its bucket (fleet mode on, for that source).
    InBudgetShared,
    OverBudgetShared,
    /// The in-budget pass into a count-and-pass program that follows
    /// throttle's (`--chain`): the tail call and the next program's work.
    InBudgetChained,
}

impl Path {
    pub fn label(self) -> &'static str {
        match self {
            Self::NonIp => "non-IP",
            Self::OutOfScope => "out of scope",
            Self::AllowRule => "allow rule",
            Self::DenyRule => "deny rule",
            Self::InBudget => "in-budget pass",
            Self::OverBudget => "over-budget drop",
            Self::FirstSeen => "first-seen source",
            Self::FirstSeenRefused => "first-seen, budget spent",
            Self::ClassOne => "class, 1 limit",
            Self::ClassThree => "class, 3 limits",
            Self::ClassTiers => "class, 1 limit + 2 tiers",
            Self::SetHit => "in a deny set (1M prefixes)",
            Self::SetMiss => "in no set (2 sets of 1M), pass",
            Self::OverBudgetCaptured => "over-budget drop, capture of 1/100 running",
            Self::InBudgetShared => "in-budget pass, source with a fleet share",
            Self::OverBudgetShared => "over-budget drop, source with a fleet share",
            Self::InBudgetChained => "in-budget pass into a chained count-and-pass",
        }
    }

    fn reason(self) -> throttle_common::Reason {
        match self {
            Self::NonIp => reason::NON_IP,
            Self::OutOfScope => reason::OUT_OF_SCOPE,
            Self::AllowRule => reason::ALLOW_RULE,
            Self::DenyRule | Self::SetHit => reason::DENY_RULE,
            Self::InBudget
            | Self::InBudgetShared
            | Self::InBudgetChained
            | Self::ClassOne
            | Self::ClassThree
            | Self::ClassTiers
            | Self::SetMiss => reason::PASSED,
            Self::OverBudget | Self::OverBudgetCaptured | Self::OverBudgetShared => reason::OVER_LIMIT,
            Self::FirstSeen => reason::NEW_SOURCE,
            Self::FirstSeenRefused => reason::NEW_SOURCE_LIMIT,
        }
    }

    fn verdict(self) -> u32 {
        if reason::drops(self.reason()) {
            XDP_DROP
        } else {
            XDP_PASS
        }
    }

    /// The program set-up that reaches this path.
    fn setup(self) -> Setup {
        match self {
            Self::NonIp | Self::InBudget | Self::InBudgetShared | Self::FirstSeen => Setup::Open,
            Self::OutOfScope => Setup::Scoped,
            Self::AllowRule | Self::DenyRule => Setup::Listed,
            Self::OverBudget | Self::OverBudgetShared => Setup::Tight,
            Self::FirstSeenRefused => Setup::NewSourceBudget,
            Self::ClassOne | Self::ClassThree | Self::ClassTiers => Setup::Classed,
            Self::SetHit | Self::SetMiss => Setup::Sets,
            Self::OverBudgetCaptured => Setup::Capturing,
            Self::InBudgetChained => Setup::Chained,
        }
    }
}

/// Program configurations, one loaded program each (per rule set).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Setup {
    /// Limit 10^8/s, burst 10^9; no scope; no first-seen budget.
    Open,
    /// As `Open`, with a scope of UDP port [`PORT`].
    Scoped,
    /// As `Open`, with an allow and a deny rule per family.
    Listed,
    /// Limit 1/s, burst 1.
    Tight,
    /// As `Open`, with a first-seen budget of 1/s, burst 1.
    NewSourceBudget,
    /// As `Open`, with the three classes of the class rows.
    Classed,
    /// As `Open`, with the two deny sets of the set rows.
    Sets,
    /// As `Tight`, with a capture of one in 100 drops running.
    Capturing,
    /// As `Open`, with the baseline's count-and-pass program chained.
    Chained,
}

const SETUPS: [Setup; 9] = [
    Setup::Open,
    Setup::Scoped,
    Setup::Listed,
    Setup::Tight,
    Setup::NewSourceBudget,
    Setup::Classed,
    Setup::Sets,
    Setup::Capturing,
    Setup::Chained,
];

/// One measured row.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub path: Path,
    pub label: String,
    /// "IPv4", "IPv6" or "-".
    pub family: &'static str,
    pub rules: RuleSet,
    /// Median ns per packet.
    pub ns: f64,
    /// Median ns per packet of the baseline, measured alternately with it.
    pub baseline_ns: f64,
    pub ratio: f64,
    /// Packets per call: the repeat count, or 1 for the first-seen row.
    pub packets_per_call: u32,
    pub samples_ns: Vec<f64>,
}

/// What part 1 found.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub repeat: u32,
    pub rounds: usize,
    pub large_rules_per_family: usize,
    /// Count-and-pass baseline, ns per packet (median over the whole run).
    pub baseline_pass_ns: f64,
    /// A bare `XDP_DROP`, ns per packet.
    pub baseline_drop_ns: f64,
    /// Instructions the verifier processed for throttle's program.
    pub verified_instructions: Option<u32>,
    /// Size of the program after verification, bytes of BPF (8 per instruction).
    pub xlated_bytes: Option<u32>,
    /// Size of its JIT-compiled machine code, bytes.
    pub jited_bytes: u32,
    pub rows: Vec<Row>,
    /// What some of the data path's steps cost alone, over count-and-pass.
    pub components: Vec<Component>,
    pub spread: Spread,
    /// Loading the sets of the set rows.
    pub sets: Vec<SetLoadStats>,
    pub failures: Vec<String>,
}

/// One set of the set rows, loaded.
#[derive(Debug, Clone, Serialize)]
pub struct SetLoadStats {
    pub family: &'static str,
    pub prefixes: u32,
    /// Into the kernel, batched.
    pub load_ms: f64,
    /// The kernel's account (`memlock`) per prefix.
    pub memlock_bytes_per_prefix: f64,
    /// The kernel's slab memory (`/proc/meminfo`) grown per prefix.
    pub slab_bytes_per_prefix: f64,
}

/// The over-budget drop with the buckets of many sources in turn against
/// one bucket again and again: what the bucket lookup costs when the
/// bucket is not in the CPU's caches, as in a flood from many sources.
#[derive(Debug, Clone, Serialize)]
pub struct Spread {
    /// Tracked sources the spread calls go round, in a random order.
    pub sources: u32,
    /// Calls per round (one packet each).
    pub calls: usize,
    /// Median over rounds of the mean ns per call: one source throughout.
    pub one_source_ns: f64,
    /// The same, each call on the next source.
    pub many_sources_ns: f64,
    /// Count-and-pass, one packet per call, interleaved the same way.
    pub baseline_ns: f64,
}

/// A reference program that adds one step to count-and-pass.
#[derive(Debug, Clone, Serialize)]
pub struct Component {
    pub what: &'static str,
    /// Median ns per packet.
    pub ns: f64,
    /// Over the count-and-pass baseline.
    pub extra_ns: f64,
}

/// A row to measure.
struct Spec {
    path: Path,
    family: Option<bool>, // Some(true): IPv4
    rules: RuleSet,
}

impl Spec {
    fn source(&self, host: u8) -> IpAddr {
        let net = match self.path {
            Path::AllowRule => 1,
            Path::DenyRule => 2,
            Path::FirstSeen | Path::FirstSeenRefused => 5,
            Path::InBudgetShared | Path::OverBudgetShared => 7,
            Path::SetHit => return set_member(self.family == Some(true), 0x5_4321),
            _ => 3,
        };
        if self.family == Some(false) {
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, net, 0, 0, 0, 0, u16::from(host)))
        } else {
            IpAddr::V4(Ipv4Addr::new(10, net as u8, 0, host))
        }
    }

    fn frame(&self) -> Vec<u8> {
        match self.path {
            Path::NonIp => arp(),
            Path::OutOfScope => Frame::udp(self.source(1), OTHER_PORT).build(),
            Path::ClassOne => Frame::udp(self.source(1), CLASS_PORTS[0]).build(),
            Path::ClassThree => Frame::udp(self.source(1), CLASS_PORTS[1]).build(),
            Path::ClassTiers => Frame::udp(self.source(1), CLASS_PORTS[2]).build(),
            _ => Frame::udp(self.source(1), PORT).build(),
        }
    }

    fn family_label(&self) -> &'static str {
        match self.family {
            Some(true) => "IPv4",
            Some(false) => "IPv6",
            None => "-",
        }
    }
}

fn specs() -> Vec<Spec> {
    let mut specs = Vec::new();
    for rules in [RuleSet::Empty, RuleSet::Large] {
        specs.push(Spec { path: Path::NonIp, family: None, rules });
        for path in [
            Path::OutOfScope,
            Path::AllowRule,
            Path::DenyRule,
            Path::InBudget,
            Path::OverBudget,
            Path::FirstSeen,
            Path::FirstSeenRefused,
        ] {
            for v4 in [true, false] {
                specs.push(Spec { path, family: Some(v4), rules });
            }
        }
    }
    for path in [
        Path::ClassOne,
        Path::ClassThree,
        Path::ClassTiers,
        Path::SetHit,
        Path::SetMiss,
        Path::OverBudgetCaptured,
        Path::InBudgetShared,
        Path::OverBudgetShared,
        Path::InBudgetChained,
    ] {
        for v4 in [true, false] {
            specs.push(Spec { path, family: Some(v4), rules: RuleSet::Empty });
        }
    }
    specs
}

/// The `n`th member of the set of the set rows (`10.128.0.0/9` as /32s;
/// `2001:db8:8000::/33` as /64s, one a source's /64 aggregate).
fn set_member(v4: bool, n: u32) -> IpAddr {
    if v4 {
        IpAddr::V4(Ipv4Addr::from(0x0a80_0000 | n))
    } else {
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x8000 | (n >> 16) as u16, n as u16, 0, 0, 0, 1))
    }
}

/// The set of the set rows of one family.
fn set_content(v4: bool) -> SetContent {
    if v4 {
        let nets =
            (0..SET_PREFIXES).map(|n| Ipv4Net::new(Ipv4Addr::from(0x0a80_0000 | n), 32).expect("a /32"));
        SetContent::new(nets.collect(), Vec::new())
    } else {
        let nets = (0..SET_PREFIXES).map(|n| {
            let IpAddr::V6(a) = set_member(false, n) else { unreachable!("an IPv6 member") };
            Ipv6Net::new(a, 64).expect("a /64").trunc()
        });
        SetContent::new(Vec::new(), nets.collect())
    }
}

/// The kernel's slab memory, bytes.
fn slab_bytes() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines().find_map(|l| {
                l.strip_prefix("Slab:").and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            })
        })
        .map_or(0, |kb: u64| kb * 1024)
}

/// The `memlock` of the map named `name` of `program`'s maps, bytes.
fn memlock_of(dataplane: &Dataplane, name: &str) -> u64 {
    use std::os::fd::{AsFd as _, AsRawFd as _};
    let map = map_of(dataplane.program(), name);
    let fd = map.fd().as_fd().as_raw_fd();
    std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .ok()
        .and_then(|i| i.lines().find_map(|l| l.strip_prefix("memlock:").and_then(|v| v.trim().parse().ok())))
        .unwrap_or(0)
}

/// Steps [`run`] reports to the progress bar.
pub fn steps(settings: &Settings) -> u64 {
    ((specs().len() + 1) * settings.rounds) as u64 + 1
}

/// The reference programs.
struct Baseline {
    ebpf: Ebpf,
}

impl Baseline {
    fn load() -> Self {
        let mut ebpf =
            Ebpf::load(BASELINE_OBJECT).unwrap_or_else(|e| panic!("loading the baseline object: {e}"));
        for name in [
            PASS_PROGRAM,
            DROP_PROGRAM,
            CLOCK_PROGRAM,
            COARSE_CLOCK_PROGRAM,
            LRU_PROGRAM,
            LRU8_PROGRAM,
            ATOMICS_PROGRAM,
        ] {
            let program: &mut Xdp = ebpf
                .program_mut(name)
                .unwrap_or_else(|| panic!("no program {name} in the baseline object"))
                .try_into()
                .unwrap_or_else(|e| panic!("{name} is not XDP: {e}"));
            program.load().unwrap_or_else(|e| panic!("loading {name}: {e}"));
        }
        Self { ebpf }
    }

    fn program(&self, name: &str) -> &Xdp {
        self.ebpf.program(name).and_then(|p| <&Xdp>::try_from(p).ok()).expect("loaded above")
    }

    fn count(&self) -> u64 {
        let map = self.ebpf.map(COUNT_MAP).expect("the baseline's counter");
        let counts = PerCpuArray::<&MapData, u64>::try_from(map).expect("a per-CPU array");
        counts.get(&0, 0).expect("slot 0").iter().sum()
    }

    /// ns per packet of count-and-pass over `repeat` packets, checked.
    fn pass(&self, frame: &[u8], repeat: u32, failures: &mut Vec<String>) -> f64 {
        self.counting(PASS_PROGRAM, frame, repeat, failures)
    }

    /// ns per packet of a program that counts each packet once and passes it.
    fn counting(&self, name: &str, frame: &[u8], repeat: u32, failures: &mut Vec<String>) -> f64 {
        let before = self.count();
        let (verdict, ns) = test_run(self.program(name), frame, repeat);
        let moved = self.count() - before;
        if verdict != XDP_PASS || moved != u64::from(repeat) {
            failures.push(format!("{name}: verdict {verdict}, counter moved {moved} for {repeat} packets"));
        }
        ns
    }

    fn drop_ns(&self, frame: &[u8], repeat: u32, failures: &mut Vec<String>) -> f64 {
        let (verdict, ns) = test_run(self.program(DROP_PROGRAM), frame, repeat);
        if verdict != XDP_DROP {
            failures.push(format!("baseline drop: verdict {verdict}"));
        }
        ns
    }
}

/// Runs `frame` `repeat` times; the verdict and the kernel's mean ns per run.
fn test_run(program: &Xdp, frame: &[u8], repeat: u32) -> (u32, f64) {
    let result = xdp::test_run(program, frame, repeat);
    #[expect(clippy::cast_precision_loss, reason = "nanoseconds per packet")]
    let ns = result.duration.as_nanos() as f64;
    (result.return_value, ns)
}

/// A loaded throttle program in one set-up, with the maps the runs steer.
struct Target {
    dataplane: Dataplane,
    new_sources: Array<MapData, u64>,
    /// What a capture copied, drained before each run.
    captured: Option<aya::maps::RingBuf<MapData>>,
}

impl Target {
    fn load(setup: Setup, filler: &[RuleSpec], sets: &mut Vec<SetLoadStats>) -> Self {
        let mut dataplane =
            Dataplane::load(MAX_SOURCES).unwrap_or_else(|e| panic!("loading throttle's program: {e}"));
        let open = Limits {
            rate: Rate::per_second(100_000_000),
            burst: 1_000_000_000,
            new_source_rate: 0,
            ..Limits::default()
        };
        let limits = match setup {
            Setup::Open | Setup::Scoped | Setup::Listed | Setup::Classed | Setup::Sets | Setup::Chained => {
                open
            }
            Setup::Tight | Setup::Capturing => Limits { rate: Rate::per_second(1), burst: 1, ..open },
            Setup::NewSourceBudget => Limits { new_source_rate: 1, new_source_burst: 1, ..open },
        };
        let scope = if setup == Setup::Scoped {
            Scope { ports: vec![ScopePort { proto: Proto::Udp, port: PORT, syn_only: false }] }
        } else {
            Scope::default()
        };
        let mut rules = filler.to_vec();
        if setup == Setup::Listed {
            for (cidr, action) in [
                ("10.1.0.0/16", Action::Allow),
                ("10.2.0.0/16", Action::Deny),
                ("2001:db8:1::/48", Action::Allow),
                ("2001:db8:2::/48", Action::Deny),
            ] {
                rules.push(RuleSpec::new(cidr.parse().expect("a prefix"), action));
            }
        }
        let mut ids = xdp::PolicyIds::default();
        let mut policy = Policy { limits, scope, rules, ..Policy::default() };
        match setup {
            Setup::Classed => policy.classes = bench_classes(),
            Setup::Sets => {
                for (slot, v4, name) in [(0, true, "feed4"), (2, false, "feed6")] {
                    let content = set_content(v4);
                    let (slab, started) = (slab_bytes(), std::time::Instant::now());
                    xdp::load_set(&dataplane, &mut ids, name, slot, &content);
                    let load_ms = started.elapsed().as_secs_f64() * 1e3;
                    let slab_grown = slab_bytes().saturating_sub(slab);
                    let memlock =
                        memlock_of(&dataplane, if v4 { map_name::SETS_V4 } else { map_name::SETS_V6 });
                    let n = f64::from(SET_PREFIXES);
                    #[expect(clippy::cast_precision_loss, reason = "byte counts")]
                    sets.push(SetLoadStats {
                        family: if v4 { "IPv4" } else { "IPv6" },
                        prefixes: SET_PREFIXES,
                        load_ms,
                        memlock_bytes_per_prefix: memlock as f64 / n,
                        slab_bytes_per_prefix: slab_grown as f64 / n,
                    });
                    policy.sets.push(SetSpec { name: name.parse().expect("a set name"), file: None });
                    policy
                        .rules
                        .push(RuleSpec::of(RuleTarget::Set(name.parse().expect("a set name")), Action::Deny));
                }
            }
            _ => {}
        }
        xdp::write(&mut dataplane, &mut ids, &policy);
        if setup == Setup::Chained {
            chain_count_and_pass(&mut dataplane);
        }
        let new_sources = Array::try_from(Map::Array(map_of(dataplane.program(), map_name::NEW_SOURCES)))
            .expect("NEW_SOURCES is an array of u64");
        let captured = (setup == Setup::Capturing).then(|| {
            let every_drop = (0..reason::COUNT)
                .filter(|&r| reason::drops(reason::ALL[r as usize]))
                .fold(0, |m, r| m | 1 << r);
            let capture = throttle_common::CaptureConfig {
                reasons: every_drop,
                sample: 100,
                snap: throttle_common::CAPTURE_SNAP,
                ..throttle_common::CaptureConfig::default()
            };
            dataplane.set_capture(Some(capture)).unwrap_or_else(|e| panic!("starting a capture: {e}"));
            dataplane.take_captures().expect("the capture ring")
        });
        Self { dataplane, new_sources, captured }
    }

    fn counters(&self) -> [u64; reason::COUNT as usize] {
        self.dataplane.counters().unwrap_or_else(|e| panic!("reading the counters: {e}"))
    }

    /// Runs `frame` `repeat` times and checks that exactly `repeat` packets
    /// went under `path`'s reason with its verdict; ns per packet.
    fn measured(&self, spec: &Spec, frame: &[u8], repeat: u32, failures: &mut Vec<String>) -> f64 {
        let before = self.counters();
        let (verdict, ns) = test_run(self.dataplane.program(), frame, repeat);
        let after = self.counters();
        let want = spec.path.reason().index();
        let strays: Vec<String> = (0..reason::COUNT as usize)
            .filter(|&i| after[i] != before[i] && i != want)
            .map(|i| format!("{} +{}", reason::NAMES[i], after[i] - before[i]))
            .collect();
        let moved = after[want] - before[want];
        if verdict != spec.path.verdict() || moved != u64::from(repeat) || !strays.is_empty() {
            failures.push(format!(
                "{} ({}, {} rules): verdict {verdict} (want {}), {} moved {moved} for {repeat} packets, \
                 other counters: [{}]",
                spec.path.label(),
                spec.family_label(),
                spec.rules.label(),
                spec.path.verdict(),
                reason::NAMES[want],
                strays.join(", ")
            ));
        }
        ns
    }

    /// Puts the run on the path `spec` measures (see the module's notes).
    fn prepare(&mut self, spec: &Spec, frame: &[u8]) {
        let push = || ticks_from_ns(mono_ns() + PUSH_AHEAD_NS);
        match spec.path {
            Path::InBudget
            | Path::InBudgetChained
            | Path::ClassOne
            | Path::ClassThree
            | Path::ClassTiers
            | Path::SetMiss => {
                // Makes the bucket if there is none (a first-seen packet).
                let _ = test_run(self.dataplane.program(), frame, 1);
            }
            Path::OverBudget | Path::OverBudgetCaptured | Path::OverBudgetShared => {
                if let Some(ring) = &mut self.captured {
                    while ring.next().is_some() {}
                }
                let _ = test_run(self.dataplane.program(), frame, 1);
                let key = bucket_key(spec.source(1), 0, 32, 64);
                let table = self.dataplane.table();
                let mut bucket =
                    table.get(&key).unwrap_or_else(|| panic!("the over-budget source has no bucket"));
                bucket.tat = push();
                if spec.path == Path::OverBudgetShared {
                    bucket.share = FLEET_SHARE;
                }
                assert!(table.put(&key, &bucket), "writing a bucket");
            }
            Path::InBudgetShared => {
                let _ = test_run(self.dataplane.program(), frame, 1);
                let key = bucket_key(spec.source(1), 0, 32, 64);
                assert!(self.dataplane.table().set_share(&key, FLEET_SHARE), "the source has a bucket");
            }
            Path::FirstSeenRefused => {
                self.new_sources.set(0, push(), 0).unwrap_or_else(|e| panic!("writing NEW_SOURCES: {e}"));
            }
            _ => {}
        }
    }
}

/// Chains a count-and-pass program of its own (the baseline's) after
/// `dataplane`'s, as `--chain` does: pinned for the moment the dataplane
/// takes it, which then holds it in its program array.
fn chain_count_and_pass(dataplane: &mut Dataplane) {
    let mut ebpf = Ebpf::load(BASELINE_OBJECT).unwrap_or_else(|e| panic!("loading the baseline object: {e}"));
    let program: &mut Xdp = ebpf
        .program_mut(PASS_PROGRAM)
        .expect("the count-and-pass program")
        .try_into()
        .expect("an XDP program");
    program.load().unwrap_or_else(|e| panic!("loading {PASS_PROGRAM}: {e}"));
    let pin = std::path::PathBuf::from(format!("/sys/fs/bpf/throttle-bench-chain-{}", std::process::id()));
    program.pin(&pin).unwrap_or_else(|e| panic!("pinning {PASS_PROGRAM} at {}: {e}", pin.display()));
    let chained = dataplane.set_chain(Some(&pin)).map(|c| c.is_some());
    let _ = std::fs::remove_file(&pin);
    assert!(chained.unwrap_or_else(|e| panic!("chaining {PASS_PROGRAM}: {e}")), "a program follows");
}

/// Over-budget drops from [`SPREAD_SOURCES`] tracked IPv4 sources
/// (10.6.0.0/16), one packet per call in a random order, against the same
/// calls on one source; each call next to a count-and-pass call on the same
/// frame, so that both sides see the same cache traffic between calls.
struct SpreadRun {
    frames: Vec<Vec<u8>>,
    keys: Vec<BucketKey>,
    order: Vec<usize>,
}

impl SpreadRun {
    fn new(rng: &mut Rng) -> Self {
        let sources: Vec<IpAddr> = (0..SPREAD_SOURCES)
            .map(|n| {
                let [_, _, hi, lo] = n.to_be_bytes();
                IpAddr::V4(Ipv4Addr::new(10, 6, hi, lo))
            })
            .collect();
        let frames = sources.iter().map(|&s| Frame::udp(s, PORT).build()).collect();
        let keys = sources.iter().map(|&s| bucket_key(s, 0, 32, 64)).collect();
        let mut order: Vec<usize> = (0..sources.len()).collect();
        for i in (1..order.len()).rev() {
            #[expect(clippy::cast_possible_truncation, reason = "an index below 65 536")]
            order.swap(i, (rng.next_u64() % (i as u64 + 1)) as usize);
        }
        Self { frames, keys, order }
    }

    /// Gives every source a bucket whose TAT is far ahead: each call is an
    /// over-budget drop on a tracked source.
    fn prepare(&self, target: &mut Target) {
        let bucket = Bucket {
            tat: ticks_from_ns(mono_ns() + PUSH_AHEAD_NS),
            passed: 0,
            dropped: 0,
            ..Bucket::default()
        };
        for key in &self.keys {
            assert!(target.dataplane.table().put(key, &bucket), "writing a bucket: its groups are full");
        }
    }

    /// One round on the tight set-up without rules: ns per call on one
    /// source, over every source, and the baseline's for each.
    fn round(
        &self,
        targets: &mut [((Setup, RuleSet), Target)],
        baseline: &Baseline,
        calls: usize,
        failures: &mut Vec<String>,
    ) -> (f64, f64, [f64; 2]) {
        let target = &mut targets
            .iter_mut()
            .find(|((setup, rules), _)| *setup == Setup::Tight && *rules == RuleSet::Empty)
            .expect("the tight set-up")
            .1;
        self.prepare(target);
        let (one, base_one) = self.measure(target, baseline, calls, false, failures);
        let (many, base_many) = self.measure(target, baseline, calls, true, failures);
        (one, many, [base_one, base_many])
    }

    /// Mean ns per call of `calls` calls: (throttle, baseline). `spread`
    /// goes round the sources; otherwise every call is on the first.
    fn measure(
        &self,
        target: &Target,
        baseline: &Baseline,
        calls: usize,
        spread: bool,
        failures: &mut Vec<String>,
    ) -> (f64, f64) {
        let before = target.counters();
        let (mut throttle_ns, mut baseline_ns) = (0.0, 0.0);
        for i in 0..calls {
            let frame = &self.frames[if spread { self.order[i % self.order.len()] } else { self.order[0] }];
            baseline_ns += baseline.pass(frame, 1, failures);
            let (verdict, ns) = test_run(target.dataplane.program(), frame, 1);
            if verdict != XDP_DROP {
                failures.push(format!("spread over-budget run: verdict {verdict}"));
                break;
            }
            throttle_ns += ns;
        }
        let after = target.counters();
        let over = reason::OVER_LIMIT.index();
        let moved = after[over] - before[over];
        let total: u64 = after.iter().sum::<u64>() - before.iter().sum::<u64>();
        if moved != calls as u64 || total != moved {
            failures.push(format!(
                "spread over-budget run ({} sources): {moved} over_limit of {total} counted for {calls} calls",
                if spread { SPREAD_SOURCES } else { 1 }
            ));
        }
        #[expect(clippy::cast_precision_loss, reason = "a call count")]
        let n = calls.max(1) as f64;
        (throttle_ns / n, baseline_ns / n)
    }
}

/// The classes of the class rows, every limit open (10^8/s).
fn bench_classes() -> Vec<Class> {
    let [one, three, tiers] = CLASS_PORTS;
    let open = serde_json::json!({ "rate": 100_000_000, "burst": 1_000_000_000 });
    let tier = |v4: u8, v6: u8| serde_json::json!({ "ipv4_prefix": v4, "ipv6_prefix": v6, "rate": 100_000_000, "burst": 1_000_000_000 });
    let classes = serde_json::json!([
        { "name": "one", "match": [{ "proto": "udp", "ports": one }], "limits": [open] },
        {
            "name": "three",
            "match": [{ "proto": "udp", "ports": three }],
            "limits": [
                open,
                { "rate": "1000000000/minute", "burst": 1_000_000_000 },
                { "rate": "6000000000/hour", "burst": 1_000_000_000 },
            ],
        },
        {
            "name": "tiers",
            "match": [{ "proto": "udp", "ports": tiers }],
            "limits": [open],
            "tiers": [tier(24, 48), tier(16, 32)],
        },
    ]);
    serde_json::from_value(classes).expect("the bench's classes")
}

/// The reference programs that add one step to count-and-pass.
const STEPS: [(&str, &str); 5] = [
    (CLOCK_PROGRAM, "count-and-pass + bpf_ktime_get_ns"),
    (COARSE_CLOCK_PROGRAM, "count-and-pass + bpf_ktime_get_coarse_ns"),
    (LRU_PROGRAM, "count-and-pass + LRU hash lookup (24-byte key, hit)"),
    (LRU8_PROGRAM, "count-and-pass + LRU hash lookup (8-byte key, hit)"),
    (ATOMICS_PROGRAM, "count-and-pass + compare-and-swap + locked add"),
];

/// Filler rules: `count` distinct limit prefixes per family, in ranges that
/// no measured source falls in (`100.64.0.0/10` and `2001:db8:f000::/36`).
fn filler(count: usize, rng: &mut Rng) -> Vec<RuleSpec> {
    let rule = |net| RuleSpec {
        rate: Some(Rate::per_second(1_000)),
        burst: Some(1_000),
        ..RuleSpec::new(net, Action::Limit)
    };
    let mut seen = std::collections::HashSet::new();
    let mut rules = Vec::with_capacity(2 * count);
    while rules.len() < count {
        let len = 16 + (rng.next_u64() % 17) as u8;
        let addr = Ipv4Addr::from(0x6440_0000 | (rng.next_u64() as u32 & 0x003f_ffff));
        let net = IpNet::V4(Ipv4Net::new(addr, len).expect("a prefix length").trunc());
        if seen.insert(net) {
            rules.push(rule(net));
        }
    }
    while rules.len() < 2 * count {
        let len = 40 + (rng.next_u64() % 25) as u8;
        let bits = (0x2001_0db8_f000_0000_u128 << 64) | (u128::from(rng.next_u64()) << 36 >> 36 << 64);
        let net = IpNet::V6(Ipv6Net::new(Ipv6Addr::from(bits), len).expect("a prefix length").trunc());
        if seen.insert(net) {
            rules.push(rule(net));
        }
    }
    rules
}

/// throttle's program once per set-up and rule set.
///
/// Each is attached to an interface of its own (a veth in `ns`, generic
/// mode), as a daemon on one interface runs it: its counters' slot then
/// comes with the configuration. `BPF_PROG_TEST_RUN` runs it all the same.
fn load_targets(ns: &Netns, sets: &mut Vec<SetLoadStats>) -> Vec<((Setup, RuleSet), Target)> {
    let mut rng = Rng::new(0x7468_726f_7474_6c65);
    let large = filler(LARGE_RULES, &mut rng);
    let mut targets = Vec::new();
    for rules in [RuleSet::Empty, RuleSet::Large] {
        for setup in SETUPS {
            if rules == RuleSet::Large && matches!(setup, Setup::Classed | Setup::Sets | Setup::Capturing) {
                continue;
            }
            let filler = if rules == RuleSet::Large { &large[..] } else { &[] };
            let mut target = Target::load(setup, filler, sets);
            let iface = format!("cost{}", targets.len());
            ns.ip(["link", "add", &iface, "type", "veth", "peer", "name", &format!("{iface}p")]);
            ns.ip(["link", "set", &iface, "up"]);
            ns.run(|| target.dataplane.attach(&iface, XdpMode::Generic).map(|_| ()))
                .unwrap_or_else(|e| panic!("attaching to {iface}: {e}"));
            targets.push(((setup, rules), target));
        }
    }
    targets
}

/// Measures every row in `settings.rounds` alternating rounds.
pub fn run(settings: &Settings, progress: &Progress) -> Results {
    let mut failures = Vec::new();
    progress.message("cost per packet: loading the programs");
    let baseline = Baseline::load();
    let ns = Netns::new();
    let mut sets = Vec::new();
    let mut targets = load_targets(&ns, &mut sets);
    let info = targets[0].1.dataplane.program().info().unwrap_or_else(|e| panic!("program info: {e}"));
    progress.inc();

    let specs = specs();
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); specs.len()];
    let mut baselines: Vec<Vec<f64>> = vec![Vec::new(); specs.len()];
    let mut all_pass = Vec::new();
    let mut all_drop = Vec::new();
    let mut steps: Vec<[f64; STEPS.len()]> = Vec::new();
    let mut fresh_host: u32 = 0;
    let reference_frame = Frame::udp(IpAddr::V4(Ipv4Addr::new(10, 3, 0, 1)), PORT).build();
    let spread_run = SpreadRun::new(&mut Rng::new(0x7370_7265_6164));
    let (mut spread_one, mut spread_many, mut spread_base) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..settings.rounds {
        for (i, spec) in specs.iter().enumerate() {
            progress.message(&format!(
                "cost per packet, round {}/{}: {} ({}, {} rules)",
                round + 1,
                settings.rounds,
                spec.path.label(),
                spec.family_label(),
                spec.rules.label()
            ));
            let target = &mut targets
                .iter_mut()
                .find(|((setup, rules), _)| *setup == spec.path.setup() && *rules == spec.rules)
                .expect("a target per set-up and rule set")
                .1;
            if spec.path == Path::FirstSeen {
                // One packet per call, each on a source never seen.
                for _ in 0..settings.fresh_calls {
                    fresh_host += 1;
                    let frame = Frame::udp(fresh_source(spec.family == Some(true), fresh_host), PORT).build();
                    baselines[i].push(baseline.pass(&frame, 1, &mut failures));
                    samples[i].push(target.measured(spec, &frame, 1, &mut failures));
                }
            } else {
                let frame = spec.frame();
                target.prepare(spec, &frame);
                let pass = baseline.pass(&frame, settings.repeat, &mut failures);
                baselines[i].push(pass);
                all_pass.push(pass);
                samples[i].push(target.measured(spec, &frame, settings.repeat, &mut failures));
            }
            progress.inc();
        }
        all_drop.push(baseline.drop_ns(&reference_frame, settings.repeat, &mut failures));
        steps.push(
            STEPS.map(|(name, _)| baseline.counting(name, &reference_frame, settings.repeat, &mut failures)),
        );
        progress.message(&format!(
            "cost per packet, round {}/{}: over-budget drop over {SPREAD_SOURCES} sources",
            round + 1,
            settings.rounds
        ));
        let (one, many, base) =
            spread_run.round(&mut targets, &baseline, settings.spread_calls, &mut failures);
        spread_one.push(one);
        spread_many.push(many);
        spread_base.extend(base);
        progress.inc();
    }

    let rows = rows(&specs, samples, baselines, settings.repeat);
    let baseline_pass_ns = median(&all_pass);
    let components = STEPS
        .iter()
        .enumerate()
        .map(|(i, &(_, what))| {
            let ns = median(&steps.iter().map(|s| s[i]).collect::<Vec<_>>());
            Component { what, ns, extra_ns: ns - baseline_pass_ns }
        })
        .collect();
    Results {
        repeat: settings.repeat,
        rounds: settings.rounds,
        large_rules_per_family: LARGE_RULES,
        baseline_pass_ns,
        baseline_drop_ns: median(&all_drop),
        verified_instructions: info.verified_instruction_count(),
        xlated_bytes: info.size_translated(),
        jited_bytes: info.size_jitted(),
        rows,
        components,
        spread: Spread {
            sources: SPREAD_SOURCES,
            calls: settings.spread_calls,
            one_source_ns: median(&spread_one),
            many_sources_ns: median(&spread_many),
            baseline_ns: median(&spread_base),
        },
        sets,
        failures,
    }
}

/// The rows from their samples and their baselines' (medians).
fn rows(specs: &[Spec], samples: Vec<Vec<f64>>, baselines: Vec<Vec<f64>>, repeat: u32) -> Vec<Row> {
    specs
        .iter()
        .zip(samples)
        .zip(baselines)
        .map(|((spec, samples), baselines)| {
            let ns = median(&samples);
            let baseline_ns = median(&baselines);
            Row {
                path: spec.path,
                label: spec.path.label().to_owned(),
                family: spec.family_label(),
                rules: spec.rules,
                ns,
                baseline_ns,
                ratio: ns / baseline_ns.max(0.5),
                packets_per_call: if spec.path == Path::FirstSeen { 1 } else { repeat },
                samples_ns: if spec.path == Path::FirstSeen { Vec::new() } else { samples },
            }
        })
        .collect()
}

fn fresh_source(v4: bool, n: u32) -> IpAddr {
    if v4 {
        let [_, _, hi, lo] = n.to_be_bytes();
        IpAddr::V4(Ipv4Addr::new(10, 5, hi, lo))
    } else {
        // A /64 apiece: IPv6 sources are aggregated to their /64.
        IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0x5000 | (n >> 16) as u16, n as u16, 0, 0, 0, 1))
    }
}
