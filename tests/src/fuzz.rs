//! Differential fuzzing of the packet path, as root (`tests/fuzz.rs`, and
//! the bench's `fuzz` part for ten million): generated frames,
//! valid and mangled (VLAN tags, IPv4 options and fragments, IPv6 extension
//! chains, truncations, flipped bytes), through the real program with
//! `BPF_PROG_TEST_RUN`, each verdict compared with a reference model written
//! on the host: a parser of its own, then the policy's verdict as
//! `kernel::explain` works it out from the plan and the buckets. The policy
//! has classes (SYN-only, several limits, a tier, a ban), allow, deny and
//! limit rules, a deny set and the default class, and the counters are
//! compared every batch.
//!
//! A run is told how many frames and its seed; the same seed generates the
//! same frames again.

use std::{cell::RefCell, collections::HashMap, net::IpAddr, time::Instant};

use crate::{
    mono_ns,
    xdp::{load_set, policy, verdict, write, PolicyIds, XDP_DROP, XDP_PASS},
};
use throttle::{
    kernel::{
        explain::{explain, Probe},
        Dataplane,
    },
    policy::{parse_set, Action, Class, Policy, Rate, RuleSpec, SetSpec, Target, Unmatched, UnmatchedAction},
};
use throttle_common::{gcra::ticks_from_ns, reason, Bucket, BucketKey, Reason, MAX_IPV6_EXT_HEADERS};

/// The fragment offset bits of IPv4's flags and offset.
const IPV4_FRAGMENT_OFFSET: u16 = 0x1FFF;
/// Frames between two comparisons of the counters.
const BATCH: usize = 10_000;

/// xorshift64*.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// 0..n.
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }

    /// True with probability `percent` %.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[usize::try_from(self.below(items.len() as u64)).expect("an index")]
    }
}

const V4: [&str; 12] = [
    "192.0.2.10",
    "192.0.2.11",
    "192.0.2.200",
    "203.0.113.1",
    "198.51.100.9",
    "198.51.100.77",
    "10.9.9.9",
    "10.1.2.3",
    "172.16.5.5",
    "100.64.0.1",
    "192.0.2.129",
    "10.250.0.1",
];
const V6: [&str; 6] =
    ["2001:db8::1", "2001:db8:1::5", "2001:db8:2::9", "2001:db9::1", "fd00::7", "2001:db8::ff"];
const PORTS: [u16; 10] = [22, 53, 443, 8000, 8042, 8100, 8101, 9000, 1, 65_535];
/// IPv6 extension headers: hop-by-hop, routing, fragment, AH, destination.
const EXTENSIONS: [u8; 5] = [0, 43, 44, 51, 60];

/// An L4 header (TCP or UDP), or some bytes of another protocol.
fn l4(rng: &mut Rng, proto: u8) -> Vec<u8> {
    let port =
        if rng.chance(85) { *rng.pick(&PORTS) } else { u16::try_from(rng.below(65_536)).expect("a port") };
    let mut h = match proto {
        6 => vec![0u8; 20],
        17 => vec![0u8; 8],
        _ => (0..rng.below(12)).map(|_| rng.byte()).collect(),
    };
    if proto == 6 || proto == 17 {
        h[0..2].copy_from_slice(&u16::to_be_bytes(40_000 + u16::try_from(rng.below(1000)).expect("small")));
        h[2..4].copy_from_slice(&port.to_be_bytes());
    }
    if proto == 6 {
        h[12] = 0x50;
        let odd = rng.byte();
        h[13] = *rng.pick(&[0x02, 0x02, 0x12, 0x10, 0x18, 0x03, odd]);
    }
    h
}

/// One frame: mostly valid, with every header a chance to be odd.
fn frame(rng: &mut Rng) -> Vec<u8> {
    let mut f: Vec<u8> = (0..12).map(|_| rng.byte()).collect();
    for _ in 0..*rng.pick(&[0, 0, 0, 0, 0, 1, 1, 2, 3]) {
        f.extend_from_slice(if rng.chance(50) { &[0x81, 0x00] } else { &[0x88, 0xA8] });
        f.extend_from_slice(&[rng.byte() & 0x0F, rng.byte()]);
    }
    let kind = rng.below(100);
    let odd = rng.byte();
    let proto = *rng.pick(&[6, 6, 6, 17, 17, 17, 1, 58, odd]);
    if kind < 50 {
        f.extend_from_slice(&[0x08, 0x00]);
        let ihl = if rng.chance(85) { 5 } else { u8::try_from(rng.below(16)).expect("a nibble") };
        let version = if rng.chance(97) { 4 } else { rng.byte() >> 4 };
        let mut h = vec![0u8; 20];
        h[0] = version << 4 | ihl;
        let fragment: u16 = if rng.chance(85) { 0 } else { u16::try_from(rng.below(0x4000)).expect("small") };
        h[6..8].copy_from_slice(&fragment.to_be_bytes());
        h[8] = 64;
        h[9] = proto;
        let src: std::net::Ipv4Addr = rng.pick(&V4).parse().expect("an address");
        h[12..16].copy_from_slice(&src.octets());
        h[16..20].copy_from_slice(&[10, 0, 0, 2]);
        f.extend_from_slice(&h);
        for _ in 0..usize::from(ihl.saturating_sub(5)) * 4 {
            f.push(rng.byte());
        }
        f.extend(l4(rng, proto));
    } else if kind < 90 {
        f.extend_from_slice(&[0x86, 0xDD]);
        let mut h = vec![0u8; 40];
        h[0] = if rng.chance(97) { 0x60 } else { rng.byte() };
        let src: std::net::Ipv6Addr = rng.pick(&V6).parse().expect("an address");
        h[8..24].copy_from_slice(&src.octets());
        h[24..40]
            .copy_from_slice(&"2001:db8:ffff::2".parse::<std::net::Ipv6Addr>().expect("an address").octets());
        let extensions = if rng.chance(70) { 0 } else { rng.below(u64::from(MAX_IPV6_EXT_HEADERS) + 3) };
        let mut chain: Vec<u8> = (0..extensions).map(|_| *rng.pick(&EXTENSIONS)).collect();
        chain.push(proto);
        h[6] = chain[0];
        f.extend_from_slice(&h);
        for pair in chain.windows(2) {
            let (this, next) = (pair[0], pair[1]);
            let len = rng.below(3);
            match this {
                44 => {
                    let offset: u16 =
                        if rng.chance(80) { 0 } else { u16::try_from(rng.below(0x2000)).expect("small") };
                    f.extend_from_slice(&[next, 0]);
                    f.extend_from_slice(&(offset << 3 | u16::from(rng.chance(50))).to_be_bytes());
                    f.extend_from_slice(&[0, 0, 0, 1]);
                }
                51 => {
                    let total = usize::try_from((len + 2) * 4).expect("small");
                    f.extend_from_slice(&[next, u8::try_from(len).expect("small")]);
                    f.extend((2..total).map(|_| rng.byte()));
                }
                _ => {
                    let total = usize::try_from((len + 1) * 8).expect("small");
                    f.extend_from_slice(&[next, u8::try_from(len).expect("small")]);
                    f.extend((2..total).map(|_| rng.byte()));
                }
            }
        }
        f.extend(l4(rng, proto));
    } else if kind < 95 {
        f.extend_from_slice(&[0x08, 0x06]);
        f.extend((0..28).map(|_| rng.byte()));
    } else {
        f.extend_from_slice(&[rng.byte(), rng.byte()]);
        f.extend((0..rng.below(60)).map(|_| rng.byte()));
    }
    f.extend((0..rng.below(24)).map(|_| rng.byte()));
    if rng.chance(15) {
        let keep = 14 + usize::try_from(rng.below((f.len() - 13) as u64)).expect("an index");
        f.truncate(keep);
    }
    if rng.chance(8) {
        for _ in 0..=rng.below(3) {
            let at = usize::try_from(rng.below(f.len() as u64)).expect("an index");
            f[at] = rng.byte();
        }
    }
    f
}

fn be16(f: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*f.get(at)?, *f.get(at + 1)?]))
}

/// The reference parser: what the program reads of `f`, or the reason it
/// stops (not IP, or a header it cannot read).
fn parse(f: &[u8]) -> Result<Probe, Reason> {
    let mut ethertype = be16(f, 12).ok_or(reason::MALFORMED)?;
    let mut l3 = 14;
    for _ in 0..2 {
        if ethertype != 0x8100 && ethertype != 0x88A8 {
            break;
        }
        ethertype = be16(f, l3 + 2).ok_or(reason::MALFORMED)?;
        l3 += 4;
    }
    let (source, proto, l4) = match ethertype {
        0x0800 => {
            let h = f.get(l3..l3 + 20).ok_or(reason::MALFORMED)?;
            let hlen = usize::from(h[0] & 0x0F) * 4;
            if h[0] >> 4 != 4 || hlen < 20 || (hlen > 20 && f.len() < l3 + hlen) {
                return Err(reason::MALFORMED);
            }
            let first = be16(h, 6).ok_or(reason::MALFORMED)? & IPV4_FRAGMENT_OFFSET == 0;
            let source = IpAddr::from([h[12], h[13], h[14], h[15]]);
            (source, h[9], first.then_some(l3 + hlen))
        }
        0x86DD => {
            let h = f.get(l3..l3 + 40).ok_or(reason::MALFORMED)?;
            if h[0] >> 4 != 6 {
                return Err(reason::MALFORMED);
            }
            let source = IpAddr::from(<[u8; 16]>::try_from(&h[8..24]).expect("16 bytes"));
            let mut next = h[6];
            let mut offset = l3 + 40;
            let mut l4 = None;
            for _ in 0..MAX_IPV6_EXT_HEADERS {
                match next {
                    0 | 43 | 60 => {
                        let e = f.get(offset..offset + 2).ok_or(reason::MALFORMED)?;
                        next = e[0];
                        offset += (usize::from(e[1]) + 1) * 8;
                    }
                    51 => {
                        let e = f.get(offset..offset + 2).ok_or(reason::MALFORMED)?;
                        next = e[0];
                        offset += (usize::from(e[1]) + 2) * 4;
                    }
                    44 => {
                        let e = f.get(offset..offset + 8).ok_or(reason::MALFORMED)?;
                        if be16(e, 2).ok_or(reason::MALFORMED)? >> 3 != 0 {
                            // A later fragment: no L4 header.
                            next = e[0];
                            break;
                        }
                        next = e[0];
                        offset += 8;
                    }
                    _ => {
                        l4 = Some(offset);
                        break;
                    }
                }
                if f.len() < offset {
                    return Err(reason::MALFORMED);
                }
            }
            (source, next, l4)
        }
        _ => return Err(reason::NON_IP),
    };
    let ports = l4.and_then(|at| match proto {
        6 => f.get(at..at + 14).map(|h| (u16::from_be_bytes([h[2], h[3]]), h[13] & 0x12 == 0x02)),
        17 => f.get(at..at + 4).map(|h| (u16::from_be_bytes([h[2], h[3]]), false)),
        _ => None,
    });
    Ok(Probe {
        source,
        proto,
        port: ports.map(|p| p.0),
        syn: ports.is_some_and(|p| p.1),
        len: f.len() as u64,
    })
}

fn classes() -> Vec<Class> {
    #[derive(serde::Deserialize)]
    struct Doc {
        classes: Vec<Class>,
    }
    let doc: Doc = toml::from_str(
        r#"
        [[classes]]
        name = "ssh"
        match = [{ proto = "tcp", ports = "22", syn_only = true }]
        limits = [{ rate = "3/minute", burst = 2 }]
        ban = { after = "1h", duration = "1h" }
        [[classes]]
        name = "dns"
        match = [{ proto = "udp", ports = "53" }]
        limits = [{ rate = "5/hour", burst = 4 }, { rate = "6/day" }]
        [[classes]]
        name = "web"
        match = [{ proto = "tcp", ports = [443, "8000-8100"], syn_only = true }]
        limits = [{ rate = "2/hour", burst = 3 }]
        tiers = [{ ipv4_prefix = 24, ipv6_prefix = 48, rate = "4/hour", burst = 5 }]
        adaptive = true
        "#,
    )
    .expect("classes");
    doc.classes
}

fn rule(cidr: &str, action: Action, per_hour: Option<u64>) -> RuleSpec {
    RuleSpec {
        rate: per_hour.map(|n| Rate::new(n, throttle::policy::Period::Hour).expect("a rate")),
        burst: per_hour.map(|_| 2),
        ..RuleSpec::new(cidr.parse().expect("a prefix"), action)
    }
}

/// What a run found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    pub seed: u64,
    /// Frames run through the program (fewer than asked when it stopped at
    /// a disagreement).
    pub frames: usize,
    pub secs: f64,
    /// The counters by reason, those that moved.
    pub by_reason: Vec<(String, u64)>,
    /// Frames judged on a token's edge: the model's two looks, before and
    /// after the run, differed, and either verdict is right.
    pub edges: u64,
    /// Frames whose verdict differs from the model's, hex, with the reason
    /// the model gave and the verdict (the run stops at 10).
    pub mismatches: Vec<String>,
    /// The first batch whose counters differ from the model's reasons (the
    /// run stops there).
    pub counters: Option<String>,
}

impl Outcome {
    /// Whether the program agreed with the model throughout.
    #[must_use]
    pub fn agreed(&self) -> bool {
        self.mismatches.is_empty() && self.counters.is_none()
    }
}

/// Runs `frames` generated frames from `seed` through the program, each
/// verdict against the model's, and the counters every 10 000 frames.
/// Panics when the program cannot be loaded or run (as root only).
#[must_use]
pub fn run(frames: usize, seed: u64) -> Outcome {
    let started = Instant::now();
    let mut dataplane = Dataplane::load(1 << 16).expect("loading the program");
    let mut ids = PolicyIds::default();
    let feed = parse_set(["198.51.100.77", "10.250.0.0/16", "2001:db8:2::/48"]).content;
    load_set(&dataplane, &mut ids, "feed", 0, &feed);
    // The default class: 1 an hour, burst 1.
    let mut p = Policy {
        classes: classes(),
        unmatched: Unmatched { action: UnmatchedAction::Limit },
        ..policy(1, 1)
    };
    p.limits.rate = Rate::new(1, throttle::policy::Period::Hour).expect("a rate");
    p.sets = vec![SetSpec { name: "feed".parse().expect("a name"), file: None }];
    p.rules = vec![
        RuleSpec::of(Target::Set("feed".parse().expect("a name")), Action::Deny),
        rule("203.0.113.0/24", Action::Deny, None),
        rule("198.51.100.0/24", Action::Limit, Some(3)),
        rule("192.0.2.128/25", Action::Allow, None),
        rule("2001:db8:1::/48", Action::Limit, Some(2)),
    ];
    let plan = write(&mut dataplane, &mut ids, &p);
    let in_set = |slot: u32, addr: IpAddr| {
        slot == 0
            && match addr {
                IpAddr::V4(a) => feed.v4.iter().any(|n| n.contains(&a)),
                IpAddr::V6(a) => feed.v6.iter().any(|n| n.contains(&a)),
            }
    };
    let table = dataplane.table().clone();
    let mut rng = Rng(seed);
    let mut before = dataplane.counters().expect("counters");
    let mut expected = [0u64; reason::COUNT as usize];
    let mut counted = [0u64; reason::COUNT as usize];
    let mut mismatches = Vec::new();
    let mut counters = None;
    let mut run = 0;
    let mut edges = 0u64;
    let drops = |r: Reason| if reason::drops(r) { XDP_DROP } else { XDP_PASS };
    for i in 0..frames {
        let f = frame(&mut rng);
        let (want, got) = match parse(&f) {
            Err(why) => (why, verdict(dataplane.program(), &f)),
            Ok(probe) => {
                // The buckets as they are before the run, kept, so that a
                // second look a moment later judges the same state.
                let looked: RefCell<HashMap<BucketKey, Option<Bucket>>> = RefCell::new(HashMap::new());
                let lookup =
                    |key: &BucketKey| *looked.borrow_mut().entry(*key).or_insert_with(|| table.get(key));
                let first = explain(&plan, &probe, &lookup, &in_set, ticks_from_ns(mono_ns())).reason;
                let got = verdict(dataplane.program(), &f);
                let second = explain(&plan, &probe, &lookup, &in_set, ticks_from_ns(mono_ns())).reason;
                if first == second {
                    (first, got)
                } else {
                    // A token came due between the two looks: either is right.
                    edges += 1;
                    (if drops(first) == got { first } else { second }, got)
                }
            }
        };
        expected[want.index()] += 1;
        run = i + 1;
        if drops(want) != got {
            mismatches
                .push(format!("{f:02x?}: the model {}, the program {got}", reason::NAMES[want.index()]));
            if mismatches.len() >= 10 {
                break;
            }
        }
        if run % BATCH == 0 || run == frames {
            counters = compare(&dataplane, &mut before, &mut expected, &mut counted, i).err();
            if counters.is_some() {
                break;
            }
        }
    }
    Outcome {
        seed,
        frames: run,
        secs: started.elapsed().as_secs_f64(),
        by_reason: (0..reason::COUNT as usize)
            .filter(|&i| counted[i] > 0)
            .map(|i| (reason::NAMES[i].to_owned(), counted[i]))
            .collect(),
        edges,
        mismatches,
        counters,
    }
}

/// The counters that moved since the last batch, against the reasons the
/// model expected for it: what differs, if anything.
fn compare(
    dataplane: &Dataplane,
    before: &mut [u64; reason::COUNT as usize],
    expected: &mut [u64; reason::COUNT as usize],
    seen: &mut [u64; reason::COUNT as usize],
    at: usize,
) -> Result<(), String> {
    let now = dataplane.counters().expect("counters");
    let moved: Vec<u64> = (0..reason::COUNT as usize).map(|i| now[i] - before[i]).collect();
    for i in 0..reason::COUNT as usize {
        seen[i] += moved[i];
    }
    let names = |counts: &[u64]| -> Vec<String> {
        (0..reason::COUNT as usize)
            .filter(|&i| counts[i] > 0)
            .map(|i| format!("{} {}", reason::NAMES[i], counts[i]))
            .collect()
    };
    if moved.as_slice() != expected.as_slice() {
        return Err(format!(
            "the counters of the batch ending at frame {at}: counted {:?}, the model {:?}",
            names(&moved),
            names(expected)
        ));
    }
    *before = now;
    *expected = [0; reason::COUNT as usize];
    Ok(())
}
