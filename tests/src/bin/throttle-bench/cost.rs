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

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use aya::{
    maps::{Array, HashMap as BpfHashMap, Map, MapData, PerCpuArray},
    programs::{TestRun as _, TestRunOptions, Xdp},
    Ebpf,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::Serialize;
use throttle::{
    baseline::{
        ATOMICS_PROGRAM, BASELINE_OBJECT, CLOCK_PROGRAM, COARSE_CLOCK_PROGRAM, COUNT_MAP, DROP_PROGRAM,
        LRU8_PROGRAM, LRU_PROGRAM, PASS_PROGRAM,
    },
    config::{Action, Limits, Policy, Proto, Scope, ScopePort, XdpMode},
    dataplane::{bucket_key, Dataplane, KernelRule},
    frames::{arp, Frame},
};
use throttle_common::{gcra::ticks_from_ns, map_name, reason, Bucket, BucketKey, Limit, UNIT_PACKETS};
use throttle_tests::{mono_ns, Netns};

use crate::{kernel::map_of, median, Progress, Rng};

const XDP_DROP: u32 = 1;
const XDP_PASS: u32 = 2;
/// The destination port of metered frames; the scoped set-up names it.
const PORT: u16 = 9000;
/// A port the scope does not name.
const OTHER_PORT: u16 = 80;
/// Filler rules per family in the large rule set.
pub const LARGE_RULES: usize = 10_000;
/// Bucket map size of the program under test.
const MAX_SOURCES: u32 = 1 << 17;
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
}

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
        }
    }

    fn reason(self) -> u32 {
        match self {
            Self::NonIp => reason::NON_IP,
            Self::OutOfScope => reason::OUT_OF_SCOPE,
            Self::AllowRule => reason::ALLOW_RULE,
            Self::DenyRule => reason::DENY_RULE,
            Self::InBudget => reason::PASSED,
            Self::OverBudget => reason::OVER_LIMIT,
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
            Self::NonIp | Self::InBudget | Self::FirstSeen => Setup::Open,
            Self::OutOfScope => Setup::Scoped,
            Self::AllowRule | Self::DenyRule => Setup::Listed,
            Self::OverBudget => Setup::Tight,
            Self::FirstSeenRefused => Setup::NewSourceBudget,
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
}

const SETUPS: [Setup; 5] = [Setup::Open, Setup::Scoped, Setup::Listed, Setup::Tight, Setup::NewSourceBudget];

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
    pub failures: Vec<String>,
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
    specs
}

/// Steps [`run`] reports to the progress bar.
pub fn steps(settings: &Settings) -> u64 {
    (specs().len() * settings.rounds) as u64 + 1
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
    let options = TestRunOptions { data_in: Some(frame), repeat, ..TestRunOptions::default() };
    let result = program.test_run(options).unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e}"));
    #[expect(clippy::cast_precision_loss, reason = "nanoseconds per packet")]
    let ns = result.duration.as_nanos() as f64;
    (result.return_value, ns)
}

/// A loaded throttle program in one set-up, with the maps the runs steer.
struct Target {
    dataplane: Dataplane,
    buckets: BpfHashMap<MapData, BucketKey, Bucket>,
    new_sources: Array<MapData, u64>,
}

impl Target {
    fn load(setup: Setup, filler: &[KernelRule]) -> Self {
        let mut dataplane =
            Dataplane::load(MAX_SOURCES).unwrap_or_else(|e| panic!("loading throttle's program: {e}"));
        let open =
            Limits { rate: 100_000_000, burst: 1_000_000_000, new_source_rate: 0, ..Limits::default() };
        let limits = match setup {
            Setup::Open | Setup::Scoped | Setup::Listed => open,
            Setup::Tight => Limits { rate: 1, burst: 1, ..open },
            Setup::NewSourceBudget => Limits { new_source_rate: 1, new_source_burst: 1, ..open },
        };
        let scope = if setup == Setup::Scoped {
            Scope { ports: vec![ScopePort { proto: Proto::Udp, port: u64::from(PORT), syn_only: false }] }
        } else {
            Scope::default()
        };
        let mut rules = filler.to_vec();
        if setup == Setup::Listed {
            let limit = Limit::new(1, 1, UNIT_PACKETS);
            for (id, cidr, action) in [
                (1, "10.1.0.0/16", Action::Allow),
                (2, "10.2.0.0/16", Action::Deny),
                (3, "2001:db8:1::/48", Action::Allow),
                (4, "2001:db8:2::/48", Action::Deny),
            ] {
                rules.push(KernelRule { id, net: cidr.parse().expect("a prefix"), action, limit });
            }
        }
        let policy = Policy { limits, scope, rules: Vec::new() };
        dataplane.apply(&policy, &rules).unwrap_or_else(|e| panic!("applying the policy: {e}"));
        let buckets = BpfHashMap::try_from(Map::LruHashMap(map_of(dataplane.program(), map_name::BUCKETS)))
            .expect("BUCKETS is an LRU hash of buckets");
        let new_sources = Array::try_from(Map::Array(map_of(dataplane.program(), map_name::NEW_SOURCES)))
            .expect("NEW_SOURCES is an array of u64");
        Self { dataplane, buckets, new_sources }
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
        let want = spec.path.reason() as usize;
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
            Path::InBudget => {
                // Makes the bucket if there is none (a first-seen packet).
                let _ = test_run(self.dataplane.program(), frame, 1);
            }
            Path::OverBudget => {
                let _ = test_run(self.dataplane.program(), frame, 1);
                let key = bucket_key(spec.source(1), 0, 32, 64);
                let mut bucket = self
                    .buckets
                    .get(&key, 0)
                    .unwrap_or_else(|e| panic!("the over-budget source has no bucket ({e})"));
                bucket.tat = push();
                self.buckets.insert(key, bucket, 0).unwrap_or_else(|e| panic!("writing a bucket: {e}"));
            }
            Path::FirstSeenRefused => {
                self.new_sources.set(0, push(), 0).unwrap_or_else(|e| panic!("writing NEW_SOURCES: {e}"));
            }
            _ => {}
        }
    }
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
fn filler(count: usize, rng: &mut Rng) -> Vec<KernelRule> {
    let limit = Limit::new(1_000, 1_000, UNIT_PACKETS);
    let mut seen = std::collections::HashSet::new();
    let mut rules = Vec::with_capacity(2 * count);
    let mut id = 1_000;
    while rules.len() < count {
        let len = 16 + (rng.next_u64() % 17) as u8;
        let addr = Ipv4Addr::from(0x6440_0000 | (rng.next_u64() as u32 & 0x003f_ffff));
        let net = IpNet::V4(Ipv4Net::new(addr, len).expect("a prefix length").trunc());
        if seen.insert(net) {
            rules.push(KernelRule { id, net, action: Action::Limit, limit });
            id += 1;
        }
    }
    while rules.len() < 2 * count {
        let len = 40 + (rng.next_u64() % 25) as u8;
        let bits = (0x2001_0db8_f000_0000_u128 << 64) | (u128::from(rng.next_u64()) << 36 >> 36 << 64);
        let net = IpNet::V6(Ipv6Net::new(Ipv6Addr::from(bits), len).expect("a prefix length").trunc());
        if seen.insert(net) {
            rules.push(KernelRule { id, net, action: Action::Limit, limit });
            id += 1;
        }
    }
    rules
}

/// throttle's program once per set-up and rule set.
///
/// Each is attached to an interface of its own (a veth in `ns`, generic
/// mode), as a daemon on one interface runs it: its counters' slot then
/// comes with the configuration. `BPF_PROG_TEST_RUN` runs it all the same.
fn load_targets(ns: &Netns) -> Vec<((Setup, RuleSet), Target)> {
    let mut rng = Rng::new(0x7468_726f_7474_6c65);
    let large = filler(LARGE_RULES, &mut rng);
    let mut targets = Vec::new();
    for rules in [RuleSet::Empty, RuleSet::Large] {
        for setup in SETUPS {
            let filler = if rules == RuleSet::Large { &large[..] } else { &[] };
            let mut target = Target::load(setup, filler);
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
    let mut targets = load_targets(&ns);
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
    }

    let rows = specs
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
                packets_per_call: if spec.path == Path::FirstSeen { 1 } else { settings.repeat },
                samples_ns: if spec.path == Path::FirstSeen { Vec::new() } else { samples },
            }
        })
        .collect();
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
        failures,
    }
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
