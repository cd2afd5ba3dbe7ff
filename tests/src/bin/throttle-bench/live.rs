//! The `live` part: floods on a veth pair from a NIC-like generator, against
//! each way of dropping them, with the same limits for every limiter.
//!
//! The generator (`throttle-ebpf/src/bin/generator.rs`) runs on the sending
//! veth through `BPF_PROG_TEST_RUN` with `BPF_F_TEST_XDP_LIVE_FRAMES`, from a
//! thread pinned to one CPU in the sender namespace: it writes a source, a
//! port and TCP flags into each page-pool frame and returns `XDP_TX`, which the
//! kernel turns into a redirect out of the sending veth. The receiving veth
//! gets `xdp_frame`s, before any skb exists, as from a NIC; its NAPI runs in
//! the generator's softirq on the same CPU, so the CPU time of that thread
//! (and of that CPU's ksoftirqd, should the softirq be deferred) per frame is
//! the cost of generating, transmitting and receiving one frame. The
//! generator's own share is measured alone (returning `XDP_DROP`), and is
//! the same in every row.
//!
//! Receiving ends, in turn in every round: a bare `XDP_DROP` (the ceiling);
//! throttle (the real daemon, native XDP); and, behind the baseline's
//! count-and-pass XDP program (a veth takes `xdp_frame`s only with an XDP
//! program), the stack alone, an nftables netdev-ingress dynamic set and
//! iptables `hashlimit` in the raw table. Every limiter of a flood gets the
//! same per-source limit and a table sized for twice its sources (hashlimit
//! caps its own at 1 048 576); throttle's first-seen budget is off, but in the
//! spoofed flood's second throttle, which shows what the budget buys.
//!
//! Every system's verdicts are counted (the receiving veth's XDP counters, the
//! rules' counters); a limiter whose share of dropped frames differs from the
//! median of the flood's limiters by more than 2 % of the frames did not do
//! the same work, and its figure is shown as invalid.

use std::{
    fmt::Write as _,
    fs,
    mem::size_of,
    net::Ipv4Addr,
    os::fd::{AsFd as _, AsRawFd as _},
    sync::atomic::{AtomicBool, Ordering},
    time::{Duration, Instant},
};

use aya::{
    maps::{Array, MapData, PerCpuArray},
    programs::Xdp,
    Ebpf,
};
use serde::Serialize;
use throttle_tests::{ethtool, xdp, Daemon, VethPair};

use crate::{
    baseline::{
        BASELINE_OBJECT, DROP_PROGRAM, GENERATOR_OBJECT, GENERATOR_PARAMS, GENERATOR_PROGRAM, GENERATOR_SENT,
        PASS_PROGRAM,
    },
    flood::{HashlimitRule, Meter, NftTable, Per, XdpProgram},
    median, Progress,
};

/// How much to measure.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Alternating rounds over every flood and system.
    pub rounds: usize,
    /// Each flood's quick frame count instead of its full one.
    pub quick: bool,
}

/// The receiver's address, and the sender's (on link).
const RECEIVER: &str = "10.99.0.1/16";
const SENDER: &str = "10.99.0.2/16";
/// The flooded destination: the receiver's address.
const DESTINATION: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
const UDP_PORT: u16 = 9000;
const TCP_PORT: u16 = 443;
const TCP_SYN: u8 = 0x02;
/// The frame size of the template (Ethernet, IPv4, UDP or TCP, padding).
const FRAME_LEN: usize = 60;
/// Frames per `BPF_PROG_TEST_RUN` call: the kernel averages its duration
/// per call; several calls per run show the run is steady.
pub const CALL_FRAMES: u32 = 1 << 20;
/// Frames handed to the program per batch (`batch_size`; the kernel's
/// default is 64 and its most 256).
const BATCH: u32 = 64;
/// The odd multiplier of the generator's source order.
const STRIDE: u32 = 0x9e37_79b1;
/// How long the daemon gets to attach.
const DAEMON_READY: Duration = Duration::from_secs(30);
/// `BPF_F_TEST_XDP_LIVE_FRAMES` (linux/bpf.h).
const BPF_F_TEST_XDP_LIVE_FRAMES: u32 = 1 << 1;
/// The verdicts the generator is told to return.
const XDP_DROP: u32 = 1;
pub const XDP_TX: u32 = 3;
/// The parity bound: the share of frames a limiter dropped may differ from
/// the median of its flood's limiters by this much.
const PARITY: f64 = 0.02;

/// The generator's parameter slots (`generator.rs`).
const P_SRC_BASE: usize = 0;
const P_SRC_MASK: usize = 1;
const P_SRC_STRIDE: usize = 2;
const P_DST_PORT: usize = 3;
const P_TCP_FLAGS: usize = 4;
const P_VERDICT: usize = 5;

/// What the receiving end runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum System {
    /// The count-and-pass program, then the stack with no filter.
    Stack,
    XdpDrop,
    /// The daemon, first-seen budget off.
    Throttle,
    /// The daemon with its default first-seen budget.
    ThrottleBudget,
    Nftables,
    Hashlimit,
}

impl System {
    pub fn label(self) -> &'static str {
        match self {
            Self::Stack => "XDP_PASS, then the stack",
            Self::XdpDrop => "bare XDP_DROP",
            Self::Throttle => "throttle",
            Self::ThrottleBudget => "throttle, first-seen budget on",
            Self::Nftables => "XDP_PASS, then nftables set",
            Self::Hashlimit => "XDP_PASS, then hashlimit",
        }
    }
}

/// What a flood sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Proto {
    Udp,
    /// TCP with the SYN flag alone: connection attempts.
    TcpSyn,
}

/// One flood: its sources, its frames, the limit every limiter gets, and who
/// receives it.
#[derive(Debug, Clone, Serialize)]
pub struct Flood {
    pub label: &'static str,
    /// The first source; the sources are consecutive from it.
    pub base: Ipv4Addr,
    /// A power of two.
    pub sources: u32,
    pub proto: Proto,
    /// `rate` per `per` after a burst of `burst`, per source.
    pub rate: u64,
    pub per: Per,
    pub burst: u64,
    /// Frames per run, full and quick.
    pub frames: u64,
    pub quick_frames: u64,
    pub systems: &'static [System],
    /// Whose counts must agree.
    pub parity: &'static [System],
}

const ALL: &[System] =
    &[System::XdpDrop, System::Throttle, System::Stack, System::Nftables, System::Hashlimit];
const LIMITERS: &[System] = &[System::Throttle, System::Nftables, System::Hashlimit];
const SPOOFED: &[System] =
    &[System::XdpDrop, System::Throttle, System::ThrottleBudget, System::Nftables, System::Hashlimit];

/// The floods, in the order they run in each round.
///
/// The frame counts keep every limiter's verdicts comparable: in the floods
/// over a per-second limit each run of the slowest limiter lasts well under
/// a second (so no source earns a second packet, whatever the system's
/// speed, and each passes exactly its burst), and the million sources, which
/// on one CPU offer only a few frames a second each, get a limit of one a
/// minute, which they are far over.
pub fn floods() -> Vec<Flood> {
    let udp = |label, base, sources, (rate, per, burst), frames, quick_frames| Flood {
        label,
        base,
        sources,
        proto: Proto::Udp,
        rate,
        per,
        burst,
        frames,
        quick_frames,
        systems: ALL,
        parity: LIMITERS,
    };
    let net = Ipv4Addr::new(10, 128, 0, 0);
    vec![
        udp(
            "1 source, over 1000/s burst 2000",
            Ipv4Addr::new(10, 128, 0, 1),
            1,
            (1_000, Per::Second, 2_000),
            4 << 20,
            1 << 20,
        ),
        udp("65 536 sources, over 1/s burst 1", net, 1 << 16, (1, Per::Second, 1), 8 << 16, 4 << 16),
        udp("1 048 576 sources, over 1/minute burst 1", net, 1 << 20, (1, Per::Minute, 1), 4 << 20, 2 << 20),
        // 8 frames per source in a run (2 in the quick one): every one in budget.
        udp(
            "65 536 sources in budget (10/s burst 10)",
            net,
            1 << 16,
            (10, Per::Second, 10),
            8 << 16,
            2 << 16,
        ),
        // Every frame from a source not seen before in the run.
        Flood {
            label: "spoofed SYN flood, 1 048 576 new sources, 1/s burst 1",
            base: Ipv4Addr::new(10, 144, 0, 0),
            sources: 1 << 20,
            proto: Proto::TcpSyn,
            rate: 1,
            per: Per::Second,
            burst: 1,
            frames: 1 << 20,
            quick_frames: 1 << 20,
            systems: SPOOFED,
            parity: LIMITERS,
        },
    ]
}

impl Flood {
    /// The sources as a prefix.
    fn cidr(&self) -> String {
        format!("{}/{}", self.base, 32 - self.sources.trailing_zeros())
    }

    /// Table capacity for its sources, with headroom.
    fn entries(&self) -> u32 {
        (self.sources * 2).max(1_024)
    }

    fn meter(&self) -> Meter {
        Meter {
            sources: self.cidr(),
            rate: self.rate,
            per: self.per,
            burst: self.burst,
            entries: self.entries(),
        }
    }

    fn port(&self) -> u16 {
        match self.proto {
            Proto::Udp => UDP_PORT,
            Proto::TcpSyn => TCP_PORT,
        }
    }
}

/// One flood against one receiving end.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub flood: usize,
    pub system: System,
    pub round: usize,
    /// Frames the generator made (its own counter).
    pub sent: u64,
    /// Frames the receiving veth's XDP program got.
    pub received: u64,
    /// What the receiving end dropped (XDP and, behind it, the rule).
    pub dropped: u64,
    /// What went on into the stack: received less dropped.
    pub passed: u64,
    /// CPU time of the generating thread and the CPU's ksoftirqd, ns.
    pub cpu_ns: u64,
    /// The ksoftirqd's part of it, ns: the receiving softirq deferred.
    pub softirq_ns: u64,
    /// The kernel's own mean time per frame, weighted over the calls, ns.
    pub kernel_ns_per_frame: f64,
    pub wall_secs: f64,
}

impl Run {
    #[expect(clippy::cast_precision_loss, reason = "frame counts and nanoseconds")]
    pub fn ns_per_frame(&self) -> f64 {
        self.cpu_ns as f64 / self.sent.max(1) as f64
    }

    pub fn mpps(&self) -> f64 {
        1e3 / self.ns_per_frame().max(1e-9)
    }

    #[expect(clippy::cast_precision_loss, reason = "frame counts")]
    pub fn dropped_share(&self) -> f64 {
        self.dropped as f64 / self.received.max(1) as f64
    }
}

/// Medians over the rounds of one flood and system.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub flood: usize,
    pub system: System,
    pub mpps: f64,
    pub mpps_min: f64,
    pub mpps_max: f64,
    pub ns_per_frame: f64,
    /// Against the bare `XDP_DROP` of the same flood.
    pub vs_drop: Option<f64>,
    pub received: f64,
    pub passed: f64,
    pub dropped: f64,
    pub dropped_share: f64,
    /// `Some(false)`: its counts differ from the other limiters' by more
    /// than [`PARITY`]; `None`: not a parity system of this flood.
    pub parity: Option<bool>,
}

/// What the part found.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub rounds: usize,
    pub generator_cpu: usize,
    pub floods: Vec<Flood>,
    pub runs: Vec<Run>,
    pub summaries: Vec<Summary>,
    /// The generator alone (returning `XDP_DROP`), ns per frame, median.
    pub generator_ns: f64,
    /// The count-and-pass and bare-drop programs alone under
    /// `BPF_PROG_TEST_RUN` (not live), ns per frame.
    pub pass_program_ns: f64,
    pub drop_program_ns: f64,
    pub failures: Vec<String>,
}

/// Steps [`run`] reports to the progress bar.
pub fn steps(settings: &Settings) -> u64 {
    let runs: usize = floods().iter().map(|f| f.systems.len()).sum();
    (settings.rounds * runs) as u64 + 1
}

pub fn run(settings: &Settings, progress: &Progress) -> Results {
    let floods = floods();
    progress.message("live: making the veth pair, loading the generator");
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    // The generator on the last CPU; everything else (the daemon, nft,
    // iptables, this thread) on the others, where the machine has them.
    let generator_cpu = cpus - 1;
    let _affinity = Affinity::others(generator_cpu, cpus);
    let pair = VethPair::builder().receiver_addrs([RECEIVER]).sender_addr(SENDER).build();
    prepare(&pair);
    let mut generator = Generator::load(generator_cpu);
    let mut failures = Vec::new();
    let (pass_program_ns, drop_program_ns) = program_costs(&pair, &floods[0]);
    let mut generator_alone = Vec::new();
    progress.inc();

    let mut runs = Vec::new();
    for round in 0..settings.rounds {
        generator_alone.push(generator.alone(&pair, &floods[0], CALL_FRAMES.into()));
        for (index, flood) in floods.iter().enumerate() {
            for &system in flood.systems {
                progress.message(&format!(
                    "live, round {}/{}: {}, {}",
                    round + 1,
                    settings.rounds,
                    flood.label,
                    system.label()
                ));
                let frames = if settings.quick { flood.quick_frames } else { flood.frames };
                let run = flood_once(&pair, &mut generator, flood, system, frames);
                let run = Run { flood: index, round, ..run };
                check(flood, &run, &mut failures);
                runs.push(run);
                progress.inc();
            }
        }
    }
    let summaries = summarize(&floods, &runs);
    Results {
        rounds: settings.rounds,
        generator_cpu,
        floods,
        runs,
        summaries,
        generator_ns: median(&generator_alone),
        pass_program_ns,
        drop_program_ns,
        failures,
    }
}

/// No IPv6 (no router solicitations or reports cross the pair during a
/// run) and strict reverse-path filtering on the receiver: the flood's
/// sources have no route back, so what passes every filter ends in the
/// routing step of `ip_rcv`, the same way for every system, and no reply
/// goes back.
pub fn prepare(pair: &VethPair) {
    for ns in [&pair.sender, &pair.receiver] {
        ns.sh("sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1");
    }
    pair.receiver
        .sh(&format!("sysctl -qw net.ipv4.conf.all.rp_filter=1 net.ipv4.conf.{}.rp_filter=1", pair.rx_if));
}

/// The count-and-pass and bare-drop programs alone on the first flood's
/// template, through `BPF_PROG_TEST_RUN` (not live), ns per frame.
fn program_costs(pair: &VethPair, flood: &Flood) -> (f64, f64) {
    let frame = template(pair, flood);
    let mut ebpf = Ebpf::load(BASELINE_OBJECT).unwrap_or_else(|e| panic!("loading the baseline: {e}"));
    let mut cost = |name: &str| {
        let program: &mut Xdp =
            ebpf.program_mut(name).expect("a baseline program").try_into().expect("an XDP program");
        program.load().unwrap_or_else(|e| panic!("loading {name}: {e}"));
        let runs: Vec<f64> =
            (0..5).map(|_| xdp::test_run(program, &frame, 1_000_000).duration.as_secs_f64() * 1e9).collect();
        median(&runs)
    };
    (cost(PASS_PROGRAM), cost(DROP_PROGRAM))
}

/// A run that did not do what it is for fails the part.
fn check(flood: &Flood, run: &Run, failures: &mut Vec<String>) {
    let what = format!("live {} / {} (round {})", flood.label, run.system.label(), run.round + 1);
    // A frame the veth could not queue is lost before the receiving end.
    if run.received < run.sent - run.sent / 1_000 {
        failures.push(format!("{what}: sent {} frames, the receiving end got {}", run.sent, run.received));
    }
    match run.system {
        System::Stack if run.dropped != 0 => {
            failures.push(format!("{what}: count-and-pass dropped {}", run.dropped));
        }
        System::XdpDrop if run.dropped != run.received => {
            failures.push(format!("{what}: XDP_DROP dropped {} of {}", run.dropped, run.received));
        }
        System::Throttle | System::Nftables | System::Hashlimit
            if run.dropped == 0 && flood.burst * u64::from(flood.sources) < run.sent =>
        {
            failures.push(format!("{what}: dropped nothing of a flood over its limit"));
        }
        System::ThrottleBudget if run.dropped == 0 && BUDGET < run.sent => {
            failures.push(format!("{what}: the first-seen budget dropped nothing"));
        }
        _ => {}
    }
}

/// The Ethernet, IPv4 and UDP or TCP frame the generator starts from: from
/// the sender's MAC to the receiver's, to [`DESTINATION`], padded to
/// [`FRAME_LEN`]. The generator writes the source, the port, the flags and
/// the IPv4 checksum. The TCP checksum is left 0: no frame reaches TCP.
pub fn template(pair: &VethPair, flood: &Flood) -> Vec<u8> {
    let mac = |m: &str| -> Vec<u8> {
        m.split(':').map(|b| u8::from_str_radix(b, 16).expect("a MAC address")).collect()
    };
    let mut f = Vec::with_capacity(FRAME_LEN);
    f.extend(mac(&pair.rx_mac));
    f.extend(mac(&pair.tx_mac));
    f.extend(0x0800u16.to_be_bytes());
    let (proto, l4_len): (u8, u16) = match flood.proto {
        Proto::Udp => (17, 8),
        Proto::TcpSyn => (6, 20),
    };
    let payload: u16 = match flood.proto {
        Proto::Udp => 18,
        Proto::TcpSyn => 0,
    };
    // Version 4, 5 words; length; id 0; don't fragment; TTL 64.
    f.extend([0x45, 0]);
    f.extend((20 + l4_len + payload).to_be_bytes());
    f.extend([0, 0, 0x40, 0, 64, proto, 0, 0]);
    f.extend(flood.base.octets());
    f.extend(DESTINATION.octets());
    f.extend(40_000u16.to_be_bytes());
    f.extend(flood.port().to_be_bytes());
    match flood.proto {
        Proto::Udp => {
            f.extend((l4_len + payload).to_be_bytes());
            f.extend([0, 0]);
        }
        Proto::TcpSyn => {
            // Sequence 1, no acknowledgment, 5 words, SYN, window, checksum,
            // urgent pointer.
            f.extend(1u32.to_be_bytes());
            f.extend(0u32.to_be_bytes());
            f.extend([0x50, TCP_SYN]);
            f.extend(65_535u16.to_be_bytes());
            f.extend([0, 0, 0, 0]);
        }
    }
    f.resize(FRAME_LEN, 0);
    f
}

/// The generator, loaded, with its maps.
pub struct Generator {
    _ebpf: Ebpf,
    fd: i32,
    params: Array<MapData, [u32; 8]>,
    sent: PerCpuArray<MapData, u64>,
    cpu: usize,
    /// The generating CPU's ksoftirqd, which gets the receiving softirq
    /// when the kernel defers it.
    ksoftirqd: u32,
}

/// What one generator run did.
struct Generated {
    frames: u64,
    cpu_ns: u64,
    softirq_ns: u64,
    kernel_ns_per_frame: f64,
    wall_secs: f64,
}

impl Generator {
    pub fn load(cpu: usize) -> Self {
        let mut ebpf = Ebpf::load(GENERATOR_OBJECT).unwrap_or_else(|e| panic!("loading the generator: {e}"));
        let program: &mut Xdp = ebpf
            .program_mut(GENERATOR_PROGRAM)
            .expect("the generator program")
            .try_into()
            .expect("an XDP program");
        program.load().unwrap_or_else(|e| panic!("loading {GENERATOR_PROGRAM}: {e}"));
        let fd = program.fd().expect("a loaded program").as_fd().as_raw_fd();
        let params = Array::try_from(ebpf.take_map(GENERATOR_PARAMS).expect("the generator's parameters"))
            .expect("an array");
        let sent = PerCpuArray::try_from(ebpf.take_map(GENERATOR_SENT).expect("the generator's counter"))
            .expect("a per-CPU array");
        Self { _ebpf: ebpf, fd, params, sent, cpu, ksoftirqd: ksoftirqd(cpu) }
    }

    pub fn sent(&self) -> u64 {
        self.sent.get(&0, 0).unwrap_or_else(|e| panic!("reading {GENERATOR_SENT}: {e}")).iter().sum()
    }

    /// The generator alone: its frames dropped where they are made, ns per
    /// frame.
    fn alone(&mut self, pair: &VethPair, flood: &Flood, frames: u64) -> f64 {
        let generated = self.generate(pair, flood, frames, XDP_DROP);
        #[expect(clippy::cast_precision_loss, reason = "frame counts and nanoseconds")]
        let ns = generated.cpu_ns as f64 / generated.frames.max(1) as f64;
        ns
    }

    /// Sends frames of `flood` out of the sending veth, [`CALL_FRAMES`] at a
    /// time, from a thread in the sender namespace pinned to the
    /// generator's CPU, until `stop` is set: how many it sent.
    pub fn send_until(&mut self, pair: &VethPair, flood: &Flood, stop: &AtomicBool) -> u64 {
        self.set_params(flood, XDP_TX);
        let frame = template(pair, flood);
        let (fd, cpu, tx_if) = (self.fd, self.cpu, pair.tx_if.clone());
        let sent_before = self.sent();
        pair.sender.run(move || {
            pin_thread(cpu);
            let ifindex = ifindex(&tx_if);
            while !stop.load(Ordering::Relaxed) {
                live_test_run(fd, &frame, ifindex, CALL_FRAMES)
                    .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN with live frames on {tx_if}: {e}"));
            }
        });
        self.sent() - sent_before
    }

    fn set_params(&mut self, flood: &Flood, verdict: u32) {
        let mut params = [0u32; 8];
        params[P_SRC_BASE] = u32::from(flood.base);
        params[P_SRC_MASK] = flood.sources - 1;
        params[P_SRC_STRIDE] = STRIDE;
        params[P_DST_PORT] = flood.port().into();
        params[P_TCP_FLAGS] = match flood.proto {
            Proto::Udp => 0,
            Proto::TcpSyn => TCP_SYN.into(),
        };
        params[P_VERDICT] = verdict;
        self.params.set(0, params, 0).unwrap_or_else(|e| panic!("writing {GENERATOR_PARAMS}: {e}"));
    }

    /// Sends `frames` frames of `flood` (verdict `XDP_TX`) or makes and drops
    /// them (`XDP_DROP`), from a thread in the sender namespace pinned to the
    /// generator's CPU.
    fn generate(&mut self, pair: &VethPair, flood: &Flood, frames: u64, verdict: u32) -> Generated {
        self.set_params(flood, verdict);
        let frame = template(pair, flood);
        let (fd, cpu, tx_if) = (self.fd, self.cpu, pair.tx_if.clone());
        let sent_before = self.sent();
        let softirq_before = schedstat_ns(self.ksoftirqd);
        let (thread_ns, kernel_ns, wall_secs) = pair.sender.run(move || {
            pin_thread(cpu);
            let ifindex = ifindex(&tx_if);
            let (cpu0, wall0) = (thread_cpu_ns(), Instant::now());
            let mut kernel_ns = 0u64;
            let mut left = frames;
            while left > 0 {
                let repeat = u32::try_from(left).unwrap_or(CALL_FRAMES).min(CALL_FRAMES);
                let mean = live_test_run(fd, &frame, ifindex, repeat)
                    .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN with live frames on {tx_if}: {e}"));
                kernel_ns += u64::from(mean) * u64::from(repeat);
                left -= u64::from(repeat);
            }
            (thread_cpu_ns() - cpu0, kernel_ns, wall0.elapsed().as_secs_f64())
        });
        let softirq_ns = schedstat_ns(self.ksoftirqd) - softirq_before;
        let sent = self.sent() - sent_before;
        #[expect(clippy::cast_precision_loss, reason = "frame counts and nanoseconds")]
        let kernel_ns_per_frame = kernel_ns as f64 / sent.max(1) as f64;
        Generated { frames: sent, cpu_ns: thread_ns + softirq_ns, softirq_ns, kernel_ns_per_frame, wall_secs }
    }
}

/// Runs the program behind `fd` `repeat` times on live frames holding
/// `frame`, as received on `ifindex` (queue 0): the kernel's mean time per
/// frame, ns. Call it from the interface's namespace.
fn live_test_run(fd: i32, frame: &[u8], ifindex: u32, repeat: u32) -> std::io::Result<u32> {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
    // rx_queue_index, egress_ifindex. Live frames take no output buffers.
    let ctx: [u32; 6] = [0, u32::try_from(frame.len()).expect("a frame"), 0, ifindex, 0, 0];
    let mut attr = xdp::TestRunAttr {
        prog_fd: u32::try_from(fd).expect("an open descriptor"),
        data_size_in: u32::try_from(frame.len()).expect("a frame"),
        data_in: frame.as_ptr() as u64,
        repeat,
        ctx_size_in: u32::try_from(size_of::<[u32; 6]>()).expect("a small context"),
        ctx_in: ctx.as_ptr() as u64,
        flags: BPF_F_TEST_XDP_LIVE_FRAMES,
        batch_size: BATCH,
        ..xdp::TestRunAttr::default()
    };
    // SAFETY: the attribute points at `frame` and `ctx`, alive for the
    // call, and asks for no output.
    unsafe { attr.run() }?;
    Ok(attr.duration)
}

/// The index of `ifname` in the calling thread's namespace.
fn ifindex(ifname: &str) -> u32 {
    let name = std::ffi::CString::new(ifname).expect("no NUL");
    // SAFETY: a NUL-terminated string alive for the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    assert!(index != 0, "if_nametoindex({ifname}): {}", std::io::Error::last_os_error());
    index
}

/// CPU time of the calling thread, ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid clock and a writable timespec.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID)");
    u64::try_from(ts.tv_sec).expect("a time") * 1_000_000_000 + u64::try_from(ts.tv_nsec).expect("a time")
}

/// The pid of `ksoftirqd/<cpu>`.
fn ksoftirqd(cpu: usize) -> u32 {
    let wanted = format!("ksoftirqd/{cpu}");
    let dir = fs::read_dir("/proc").expect("read /proc");
    dir.filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == wanted))
        .unwrap_or_else(|| panic!("no {wanted} thread in /proc"))
}

/// The time `pid` has run, ns (the first field of its schedstat).
fn schedstat_ns(pid: u32) -> u64 {
    let path = format!("/proc/{pid}/schedstat");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    text.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or_else(|| panic!("{path}: {text:?}"))
}

/// Binds the calling thread to `cpu`.
fn pin_thread(cpu: usize) {
    // SAFETY: cpu_set_t is plain data; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below the machine's CPU count, within the set.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    set_affinity(&set);
}

fn set_affinity(set: &libc::cpu_set_t) {
    // SAFETY: pid 0 is the calling thread; `set` is a valid mask.
    let rc = unsafe { libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), set) };
    assert_eq!(rc, 0, "sched_setaffinity: {}", std::io::Error::last_os_error());
}

/// The calling thread bound to every CPU but the generator's while it
/// lives (what it starts inherits that), and its former affinity restored
/// on drop. On a machine of one CPU it changes nothing.
pub struct Affinity {
    saved: libc::cpu_set_t,
}

impl Affinity {
    pub fn others(cpu: usize, cpus: usize) -> Self {
        // SAFETY: cpu_set_t is plain data; all zeroes is the empty set.
        let mut saved: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: pid 0 is the calling thread; `saved` is writable.
        let rc = unsafe { libc::sched_getaffinity(0, size_of::<libc::cpu_set_t>(), &raw mut saved) };
        assert_eq!(rc, 0, "sched_getaffinity: {}", std::io::Error::last_os_error());
        if cpus > 1 {
            // SAFETY: as above.
            let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
            for other in (0..cpus).filter(|&c| c != cpu) {
                // SAFETY: `other` is below the machine's CPU count.
                unsafe { libc::CPU_SET(other, &mut set) };
            }
            set_affinity(&set);
        }
        Self { saved }
    }
}

impl Drop for Affinity {
    fn drop(&mut self) {
        set_affinity(&self.saved);
    }
}

/// The receiving end while it is in force; removed on drop.
enum Receiving<'a> {
    Drop(#[expect(dead_code, reason = "held until the run ends")] XdpProgram<'a>),
    Throttle(#[expect(dead_code, reason = "held until the run ends")] Box<Daemon>),
    Pass(#[expect(dead_code, reason = "held until the run ends")] XdpProgram<'a>, Filter<'a>),
}

/// What runs behind the count-and-pass program.
enum Filter<'a> {
    Stack,
    Nftables(NftTable<'a>),
    Hashlimit(HashlimitRule<'a>),
}

impl<'a> Receiving<'a> {
    fn start(pair: &'a VethPair, flood: &Flood, system: System) -> Self {
        let (ns, iface) = (&pair.receiver, pair.rx_if.as_str());
        match system {
            System::XdpDrop => Self::Drop(XdpProgram::attach(ns, iface, DROP_PROGRAM)),
            System::Throttle | System::ThrottleBudget => {
                let config = throttle_config(flood, system == System::ThrottleBudget);
                let mut daemon = Daemon::builder(ns, iface).config(&config).start();
                daemon.wait_ready(DAEMON_READY);
                Self::Throttle(Box::new(daemon))
            }
            System::Stack | System::Nftables | System::Hashlimit => {
                let pass = XdpProgram::attach(ns, iface, PASS_PROGRAM);
                let filter = match system {
                    System::Nftables => {
                        Filter::Nftables(NftTable::add_without_timeout(ns, iface, &flood.meter()))
                    }
                    System::Hashlimit => Filter::Hashlimit(HashlimitRule::add_sized(ns, &flood.meter())),
                    _ => Filter::Stack,
                };
                Self::Pass(pass, filter)
            }
        }
    }

    /// What the rule behind the count-and-pass program dropped so far.
    fn rule_dropped(&self) -> u64 {
        match self {
            Self::Pass(_, Filter::Nftables(table)) => table.dropped(),
            Self::Pass(_, Filter::Hashlimit(rule)) => rule.dropped(),
            _ => 0,
        }
    }

    /// What the rule dropped, once the run is over (the nftables rule and
    /// set are removed first: see [`NftTable::remove_rule_and_count`]).
    fn rule_dropped_at_end(&self) -> u64 {
        match self {
            Self::Pass(_, Filter::Nftables(table)) => table.remove_rule_and_count(),
            _ => self.rule_dropped(),
        }
    }
}

/// The daemon's configuration for `flood`: its limit for every source
/// (`[limits]`, which takes a rate per second; a rate per minute goes in a
/// class matching the flood's protocol and port), a bucket map sized for
/// twice the sources, and the first-seen budget off or at [`BUDGET`].
pub fn throttle_config(flood: &Flood, budget: bool) -> String {
    let budget = if budget {
        format!("new_source_rate = {BUDGET}\nnew_source_burst = {BUDGET}")
    } else {
        "new_source_rate = 0".to_owned()
    };
    let mut config =
        format!("[daemon]\nxdp_mode = \"native\"\nmax_sources = {}\n\n[limits]\n{budget}\n", flood.entries());
    match flood.per {
        Per::Second => {
            let _ = write!(config, "rate = {}\nburst = {}\n", flood.rate, flood.burst);
        }
        Per::Minute => {
            let proto = match flood.proto {
                Proto::Udp => "udp",
                Proto::TcpSyn => "tcp",
            };
            let _ = write!(
                config,
                "\n[[classes]]\nname = \"flood\"\nmatch = [{{ proto = \"{proto}\", ports = {} }}]\n\
                 limits = [{{ rate = \"{}/minute\", burst = {} }}]\n",
                flood.port(),
                flood.rate,
                flood.burst
            );
        }
    }
    config
}

/// The first-seen budget of the spoofed flood's second throttle: the
/// configuration's default.
const BUDGET: u64 = 10_000;

/// Frames the receiving veth's XDP program got, and dropped.
pub fn xdp_counts(pair: &VethPair) -> (u64, u64) {
    let stats = ethtool::stats(&pair.receiver, &pair.rx_if);
    let sum = |suffix: &str| stats.iter().filter(|(name, _)| name.ends_with(suffix)).map(|(_, v)| v).sum();
    (sum("_xdp_packets"), sum("_xdp_drops"))
}

fn flood_once(pair: &VethPair, generator: &mut Generator, flood: &Flood, system: System, frames: u64) -> Run {
    let receiving = Receiving::start(pair, flood, system);
    let ((received0, xdp_dropped0), rule0) = (xdp_counts(pair), receiving.rule_dropped());
    let generated = generator.generate(pair, flood, frames, XDP_TX);
    let ((received1, xdp_dropped1), rule1) = (xdp_counts(pair), receiving.rule_dropped_at_end());
    drop(receiving);
    let received = received1 - received0;
    let dropped = xdp_dropped1 - xdp_dropped0 + rule1 - rule0;
    Run {
        flood: 0,
        system,
        round: 0,
        sent: generated.frames,
        received,
        dropped,
        passed: received.saturating_sub(dropped),
        cpu_ns: generated.cpu_ns,
        softirq_ns: generated.softirq_ns,
        kernel_ns_per_frame: generated.kernel_ns_per_frame,
        wall_secs: generated.wall_secs,
    }
}

fn summarize(floods: &[Flood], runs: &[Run]) -> Vec<Summary> {
    let mut out = Vec::new();
    for (index, flood) in floods.iter().enumerate() {
        let mut rows: Vec<Summary> = Vec::new();
        for &system in flood.systems {
            let these: Vec<&Run> = runs.iter().filter(|r| r.flood == index && r.system == system).collect();
            if these.is_empty() {
                continue;
            }
            let pick = |f: &dyn Fn(&Run) -> f64| median(&these.iter().map(|r| f(r)).collect::<Vec<_>>());
            let mpps: Vec<f64> = these.iter().map(|r| r.mpps()).collect();
            #[expect(clippy::cast_precision_loss, reason = "frame counts")]
            let row = Summary {
                flood: index,
                system,
                mpps: median(&mpps),
                mpps_min: mpps.iter().copied().fold(f64::INFINITY, f64::min),
                mpps_max: mpps.iter().copied().fold(0.0, f64::max),
                ns_per_frame: pick(&Run::ns_per_frame),
                vs_drop: None,
                received: pick(&|r| r.received as f64),
                passed: pick(&|r| r.passed as f64),
                dropped: pick(&|r| r.dropped as f64),
                dropped_share: pick(&Run::dropped_share),
                parity: None,
            };
            rows.push(row);
        }
        let shares: Vec<f64> =
            rows.iter().filter(|r| flood.parity.contains(&r.system)).map(|r| r.dropped_share).collect();
        let reference = median(&shares);
        let drop_mpps = rows.iter().find(|r| r.system == System::XdpDrop).map(|r| r.mpps);
        for row in &mut rows {
            if flood.parity.contains(&row.system) {
                row.parity = Some((row.dropped_share - reference).abs() <= PARITY);
            }
            if row.system != System::XdpDrop {
                row.vs_drop = drop_mpps.map(|d| row.mpps / d.max(1e-9));
            }
        }
        out.extend(rows);
    }
    out
}

/// Prints what a run did, for a reader of the log.
pub fn describe(floods: &[Flood], run: &Run) -> String {
    format!(
        "{} / {}: {:.2} Mpps ({:.1} ns/frame CPU, of which ksoftirqd {} us; kernel {:.1} ns; {:.2} s), \
         sent {}, received {}, passed {}, dropped {}",
        floods[run.flood].label,
        run.system.label(),
        run.mpps(),
        run.ns_per_frame(),
        run.softirq_ns / 1_000,
        run.kernel_ns_per_frame,
        run.wall_secs,
        run.sent,
        run.received,
        run.passed,
        run.dropped
    )
}
