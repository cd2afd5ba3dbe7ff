//! Parts 2 and 3: a UDP flood on a veth pair against each way of dropping it,
//! and how closely each limiter admits its configured rate meanwhile.
//!
//! trafgen (netsniff-ng) floods from the sender namespace, bound by itself to
//! CPU 0, one source or 65 536 random ones. On veth the receiving end's work
//! runs on the sending CPU (in the sender's `veth_xmit`, or in the NAPI poll
//! it schedules there when an XDP program is attached), so the rate that CPU
//! sustains measures the sender and the receiving path together: the cheaper
//! the receiving path, the more packets per second. The sender's own cost is
//! the same in every mode, so the differences between modes are the
//! receiving paths' differences; the ratios understate them.
//!
//! Modes, in turn within each round: the stack (no filter), a bare
//! `XDP_DROP`, throttle (the real daemon, native XDP), an nftables
//! netdev-ingress dynamic set, and iptables `hashlimit` in the raw table,
//! the last three with the same per-source limit. A UDP socket listens on
//! the flooded port in every mode and counts what arrives, by source.

use std::{
    collections::HashMap,
    fmt::Write as _,
    fs,
    io::Write as _,
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use aya::{
    programs::{Xdp, XdpMode},
    Ebpf,
};
use serde::Serialize;
use throttle_tests::{
    ethtool, mono_ns, netns::run_checked, remove_dir, unique_id, Daemon, Netns, Receiver, VethPair,
};

use crate::{
    baseline::{BASELINE_OBJECT, DROP_PROGRAM},
    kernel::{if_stats, kernel_cpu_ticks, ticks_per_sec},
    median, Progress,
};

/// The flooded UDP port.
const PORT: u16 = 9000;
/// Sources of the random-source flood: 10.100.0.0/16.
pub const MANY_SOURCES: u32 = 65_536;
/// The CPU trafgen binds its one sender to (it binds fork `i` to CPU `i`).
const SENDER_CPU: usize = 0;
/// Time for trafgen to set up its ring and reach full speed before the
/// measured interval.
const WARM_UP: Duration = Duration::from_millis(400);
/// How long the daemon gets to attach.
const DAEMON_READY: Duration = Duration::from_secs(20);
/// Times a flood is run again when its sender put nothing on the veth in the
/// measured interval. That is the sender stalling (a veth transmit queue
/// left stopped, seen once on a CI machine), not something the receiving
/// end did; a run that stalls every time fails the part.
const STALL_RETRIES: usize = 2;

/// How much to measure.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Measured seconds per flood.
    pub secs: f64,
    /// Alternating rounds over every mode.
    pub rounds: usize,
}

/// The flood's sources.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Shape {
    /// Every packet from 10.100.0.1.
    One,
    /// Each packet from a random one of [`MANY_SOURCES`] sources.
    Many,
}

impl Shape {
    pub const ALL: [Self; 2] = [Self::One, Self::Many];

    pub fn label(self) -> &'static str {
        match self {
            Self::One => "1 source",
            Self::Many => "65 536 sources",
        }
    }

    /// The per-source limit every limiter gets for this flood: below what
    /// each source offers, so that every source is over it throughout.
    /// Random sources offer a few packets per second each.
    pub fn limit(self) -> (u64, u64) {
        match self {
            Self::One => (1_000, 1_000),
            Self::Many => (1, 2),
        }
    }

    /// Time for the burst to be spent before the accuracy window opens.
    fn settle(self, secs: f64) -> f64 {
        match self {
            Self::One => 0.2_f64.min(secs / 4.0),
            Self::Many => 1.0_f64.min(secs / 3.0),
        }
    }
}

/// What drops the flood at the receiving end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Mode {
    Stack,
    XdpDrop,
    Throttle,
    Nftables,
    Hashlimit,
}

impl Mode {
    pub const ALL: [Self; 5] = [Self::Stack, Self::XdpDrop, Self::Throttle, Self::Nftables, Self::Hashlimit];

    pub fn label(self) -> &'static str {
        match self {
            Self::Stack => "stack (no filter)",
            Self::XdpDrop => "bare XDP_DROP",
            Self::Throttle => "throttle",
            Self::Nftables => "nftables dynamic set",
            Self::Hashlimit => "iptables hashlimit",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Self::Stack => "stack",
            Self::XdpDrop => "XDP_DROP",
            Self::Throttle => "throttle",
            Self::Nftables => "nftables",
            Self::Hashlimit => "hashlimit",
        }
    }

    /// Whether it limits per source (and so has an admitted rate).
    pub fn limits(self) -> bool {
        matches!(self, Self::Throttle | Self::Nftables | Self::Hashlimit)
    }
}

/// One flood against one mode.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub shape: Shape,
    pub mode: Mode,
    pub round: usize,
    pub secs: f64,
    /// Frames the sender put on the veth.
    pub sent: u64,
    /// Frames the veth refused (its receive ring full).
    pub tx_dropped: u64,
    /// Frames the receiving end handled: sent less refused.
    pub handled: u64,
    /// The receiving interface's own count of frames received.
    pub rx_packets: u64,
    pub handled_pps: f64,
    /// Kernel CPU time (system, irq, softirq; every CPU) per handled frame.
    pub cpu_ns_per_packet: f64,
    /// What the mode's own counter says it dropped.
    pub dropped_by_mode: Option<u64>,
    /// Datagrams that reached the socket in the accuracy window.
    pub admitted_in_window: u64,
    pub window_secs: f64,
    /// Distinct sources that reached the socket during the flood.
    pub sources_admitted: usize,
    /// Admitted per second per source in the window.
    pub admitted_rate_per_source: f64,
    /// Admitted per second, all sources, in the window.
    pub admitted_pps: f64,
    /// Datagrams the receiving namespace's UDP layer dropped (a receiver
    /// that could not keep up): non-zero makes the admitted rate a floor.
    pub receiver_drops: u64,
}

/// Medians over the rounds of one shape and mode.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub shape: Shape,
    pub mode: Mode,
    pub handled_pps: f64,
    pub cpu_ns_per_packet: f64,
    /// What reached the socket, per second.
    pub admitted_pps: f64,
    /// For the limiters: configured rate per source, and admitted.
    pub configured_rate: Option<u64>,
    pub admitted_rate_per_source: Option<f64>,
    /// (admitted − configured) / configured, in %.
    pub rate_error_pct: Option<f64>,
}

/// Throttle against one reference, for one shape.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    pub shape: Shape,
    pub reference: Mode,
    /// throttle's packets per second over the reference's.
    pub pps: f64,
    /// throttle's CPU per packet over the reference's.
    pub cpu: f64,
}

/// What parts 2 and 3 found.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub secs: f64,
    pub rounds: usize,
    pub sender_cpu: usize,
    pub runs: Vec<Run>,
    pub summaries: Vec<Summary>,
    pub ratios: Vec<Ratio>,
    /// Floods run again because their sender stalled, with what was seen.
    pub stalls: Vec<String>,
    pub failures: Vec<String>,
}

impl Results {
    pub fn summary(&self, shape: Shape, mode: Mode) -> Option<&Summary> {
        self.summaries.iter().find(|s| s.shape == shape && s.mode == mode)
    }
}

/// Steps [`run`] reports to the progress bar.
pub fn steps(settings: &Settings) -> u64 {
    (settings.rounds * Shape::ALL.len() * Mode::ALL.len()) as u64 + 1
}

/// Floods every mode with every shape, `settings.rounds` times, in turn.
pub fn run(settings: &Settings, progress: &Progress) -> Results {
    progress.message("flood: making the veth pair");
    let pair = VethPair::builder().receiver_addrs(["10.99.0.1/8"]).sender_addr("10.99.0.2/8").build();
    let workdir = std::env::temp_dir().join(format!("throttle-bench-{}", unique_id()));
    fs::create_dir_all(&workdir).unwrap_or_else(|e| panic!("create {}: {e}", workdir.display()));
    let _workdir = RemoveDir(workdir.clone());
    let configs: HashMap<&'static str, PathBuf> = Shape::ALL
        .iter()
        .map(|&shape| {
            let path = workdir.join(format!("{}.trafgen", shape.label().replace(' ', "-")));
            fs::write(&path, trafgen_config(shape, &pair.rx_mac, &pair.tx_mac))
                .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            (shape.label(), path)
        })
        .collect();
    progress.inc();

    let mut runs = Vec::new();
    let mut failures = Vec::new();
    let mut stalls = Vec::new();
    for round in 0..settings.rounds {
        for shape in Shape::ALL {
            for mode in Mode::ALL {
                progress.message(&format!(
                    "flood, round {}/{}: {}, {}",
                    round + 1,
                    settings.rounds,
                    shape.label(),
                    mode.label()
                ));
                let mut attempt = 0;
                let run = loop {
                    let run = flood(&pair, &configs[shape.label()], shape, mode, round, settings.secs);
                    if run.handled > 0 || attempt == STALL_RETRIES {
                        break run;
                    }
                    attempt += 1;
                    let stall = format!(
                        "flood {} / {} (round {}): the sender put nothing on the veth in {:.1} s \
                         (frames sent {}, refused {}, dropped by the mode {:?}); run again ({attempt} of \
                         {STALL_RETRIES})",
                        shape.label(),
                        mode.label(),
                        round + 1,
                        run.secs,
                        run.sent,
                        run.tx_dropped,
                        run.dropped_by_mode,
                    );
                    progress.println(&format!("warning: {stall}"));
                    stalls.push(stall);
                };
                check(&run, &mut failures);
                runs.push(run);
                progress.inc();
            }
        }
    }
    let summaries = summarize(&runs);
    let ratios = ratios(&summaries);
    Results {
        secs: settings.secs,
        rounds: settings.rounds,
        sender_cpu: SENDER_CPU,
        runs,
        summaries,
        ratios,
        stalls,
        failures,
    }
}

/// A run that did not do what its mode is for fails the part.
fn check(run: &Run, failures: &mut Vec<String>) {
    let what = format!("flood {} / {} (round {})", run.shape.label(), run.mode.label(), run.round + 1);
    if run.handled == 0 {
        failures.push(format!("{what}: nothing reached the receiving end"));
    }
    match (run.mode, run.dropped_by_mode) {
        (Mode::Stack, _) => {}
        (_, Some(n)) if n > 0 => {}
        (_, n) => failures.push(format!("{what}: the mode's drop counter did not move ({n:?})")),
    }
    if run.mode.limits() && run.sources_admitted == 0 {
        failures.push(format!("{what}: nothing was admitted"));
    }
}

fn flood(pair: &VethPair, config: &PathBuf, shape: Shape, mode: Mode, round: usize, secs: f64) -> Run {
    let (rate, burst) = shape.limit();
    let active = Active::start(pair, mode, rate, burst);
    let receiver = Receiver::start(&pair.receiver, PORT);
    let dropped_before = active.dropped(pair);
    let trafgen = Trafgen::start(&pair.sender, &pair.tx_if, config);
    thread::sleep(WARM_UP);
    trafgen.check_running();

    let (tx0, rx0, cpu0, t0) = (
        if_stats(&pair.sender, &pair.tx_if),
        if_stats(&pair.receiver, &pair.rx_if),
        kernel_cpu_ticks(),
        mono_ns(),
    );
    let started = Instant::now();
    thread::sleep(Duration::from_secs_f64(secs));
    let (tx1, rx1, cpu1, t1) = (
        if_stats(&pair.sender, &pair.tx_if),
        if_stats(&pair.receiver, &pair.rx_if),
        kernel_cpu_ticks(),
        mono_ns(),
    );
    let elapsed = started.elapsed().as_secs_f64();
    trafgen.stop();
    let dropped_by_mode = active.dropped(pair).zip(dropped_before).map(|(after, before)| after - before);
    let arrivals = receiver.finish(Duration::from_millis(200));
    drop(active);

    let sent = tx1.tx_packets - tx0.tx_packets;
    let tx_dropped = tx1.tx_dropped - tx0.tx_dropped;
    let handled = sent.saturating_sub(tx_dropped);
    #[expect(clippy::cast_precision_loss, reason = "packet counts and CPU ticks")]
    let (handled_pps, cpu_ns_per_packet) =
        (handled as f64 / elapsed, (cpu1 - cpu0) as f64 / ticks_per_sec() * 1e9 / (handled as f64).max(1.0));
    let settle = shape.settle(secs);
    let from = t0 + Duration::from_secs_f64(settle).as_nanos() as u64;
    let admitted_in_window = arrivals.count(|a| a.recv_ns >= from && a.recv_ns <= t1);
    let sources_admitted = arrivals.by_source().len();
    #[expect(clippy::cast_precision_loss, reason = "nanoseconds of a run")]
    let window_secs = (t1 - from) as f64 / 1e9;
    #[expect(clippy::cast_precision_loss, reason = "packet counts")]
    let (admitted_rate_per_source, admitted_pps) = (
        admitted_in_window as f64 / window_secs / sources_admitted.max(1) as f64,
        admitted_in_window as f64 / window_secs,
    );
    Run {
        shape,
        mode,
        round,
        secs: elapsed,
        sent,
        tx_dropped,
        handled,
        rx_packets: rx1.rx_packets - rx0.rx_packets,
        handled_pps,
        cpu_ns_per_packet,
        dropped_by_mode,
        admitted_in_window,
        window_secs,
        sources_admitted,
        admitted_rate_per_source,
        admitted_pps,
        receiver_drops: arrivals.udp_drops,
    }
}

fn summarize(runs: &[Run]) -> Vec<Summary> {
    let mut out = Vec::new();
    for shape in Shape::ALL {
        for mode in Mode::ALL {
            let these: Vec<&Run> = runs.iter().filter(|r| r.shape == shape && r.mode == mode).collect();
            if these.is_empty() {
                continue;
            }
            let pick = |f: fn(&Run) -> f64| median(&these.iter().map(|r| f(r)).collect::<Vec<_>>());
            let (rate, _) = shape.limit();
            let admitted = mode.limits().then(|| pick(|r| r.admitted_rate_per_source));
            #[expect(clippy::cast_precision_loss, reason = "a configured rate")]
            let rate_error_pct = admitted.map(|a| (a - rate as f64) / rate as f64 * 100.0);
            out.push(Summary {
                shape,
                mode,
                handled_pps: pick(|r| r.handled_pps),
                cpu_ns_per_packet: pick(|r| r.cpu_ns_per_packet),
                admitted_pps: pick(|r| r.admitted_pps),
                configured_rate: mode.limits().then_some(rate),
                admitted_rate_per_source: admitted,
                rate_error_pct,
            });
        }
    }
    out
}

fn ratios(summaries: &[Summary]) -> Vec<Ratio> {
    let mut out = Vec::new();
    for shape in Shape::ALL {
        let Some(throttle) = summaries.iter().find(|s| s.shape == shape && s.mode == Mode::Throttle) else {
            continue;
        };
        for reference in [Mode::XdpDrop, Mode::Nftables, Mode::Hashlimit, Mode::Stack] {
            if let Some(r) = summaries.iter().find(|s| s.shape == shape && s.mode == reference) {
                out.push(Ratio {
                    shape,
                    reference,
                    pps: throttle.handled_pps / r.handled_pps.max(1.0),
                    cpu: throttle.cpu_ns_per_packet / r.cpu_ns_per_packet.max(1e-9),
                });
            }
        }
    }
    out
}

/// trafgen's packet: Ethernet, IPv4 (checksum computed per packet), UDP
/// without checksum, and the test harness's 24-byte header (magic, flow 0,
/// sequence 0, send time 0) so that the receiver counts it by source.
fn trafgen_config(shape: Shape, rx_mac: &str, tx_mac: &str) -> String {
    let mac = |m: &str| m.split(':').map(|b| format!("0x{b}")).collect::<Vec<_>>().join(", ");
    let source = match shape {
        Shape::One => "0, 1".to_owned(),
        // Two random bytes per packet: one of 65 536 sources.
        Shape::Many => "drnd(2)".to_owned(),
    };
    let mut c = String::new();
    let _ = writeln!(c, "{{");
    let _ = writeln!(c, "  {},", mac(rx_mac));
    let _ = writeln!(c, "  {},", mac(tx_mac));
    let _ = writeln!(c, "  c16(0x0800),");
    // 20 bytes of IPv4 + 8 of UDP + 24 of payload = 52.
    let _ = writeln!(c, "  0x45, 0x00, c16(52), c16(0), 0x40, 0x00, 64, 17, csumip(14, 33),");
    let _ = writeln!(c, "  10, 100, {source},");
    let _ = writeln!(c, "  10, 99, 0, 1,");
    let _ = writeln!(c, "  c16(40000), c16({PORT}), c16(32), c16(0),");
    let _ = writeln!(c, "  0x74, 0x68, 0x72, 0x6f, c32(0), c32(0), c32(0), c32(0), c32(0),");
    let _ = writeln!(c, "}}");
    c
}

/// trafgen flooding from a namespace; interrupted (and reaped) on drop.
struct Trafgen {
    child: Option<Child>,
    log: PathBuf,
}

impl Trafgen {
    fn start(ns: &Netns, dev: &str, config: &PathBuf) -> Self {
        let log = config.with_extension("log");
        let out = fs::File::create(&log).unwrap_or_else(|e| panic!("create {}: {e}", log.display()));
        let err = out.try_clone().expect("dup a descriptor");
        let child = ns
            .exec_command("trafgen")
            .args(["--dev", dev, "--cpus", "1", "--no-sock-mem", "--conf"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // Its own process group: trafgen stops on a SIGINT to the whole
            // group (as from a terminal), not to its first process alone.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run trafgen (`cargo xtask setup` installs netsniff-ng): {e}"));
        Self { child: Some(child), log }
    }

    fn check_running(&self) {
        let mut child = self.child.as_ref().map(Child::id);
        if let Some(pid) = child.take() {
            // SAFETY: kill with signal 0 only checks that the process exists.
            let alive = unsafe { libc::kill(pid.cast_signed(), 0) } == 0;
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            assert!(alive && !log.contains("rror"), "trafgen is not flooding; its output:\n{log}");
        }
    }

    fn stop(mut self) {
        self.interrupt();
    }

    fn interrupt(&mut self) {
        let Some(mut child) = self.child.take() else { return };
        // `ip netns exec` execs trafgen in place: the child leads trafgen's
        // process group, which holds its sending workers.
        let group = -libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
        // SAFETY: kill has no memory effects; the group is our unreaped
        // child's, so its id cannot have been reused.
        unsafe { libc::kill(group, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            thread::sleep(Duration::from_millis(10));
        }
        eprintln!("warning: trafgen ignored SIGINT for 5 s; killing its process group");
        // SAFETY: as above.
        unsafe { libc::kill(group, libc::SIGKILL) };
        let _ = child.wait();
    }
}

impl Drop for Trafgen {
    fn drop(&mut self) {
        self.interrupt();
    }
}

/// Removes a directory on drop.
struct RemoveDir(PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        remove_dir(&self.0);
    }
}

/// The receiving end's filter while it is in force; removed on drop (the
/// guards inside are held for that).
enum Active<'a> {
    Stack,
    Xdp(#[expect(dead_code, reason = "held until the run ends")] XdpProgram<'a>),
    Throttle(#[expect(dead_code, reason = "held until the run ends")] Box<Daemon>),
    Nftables(NftTable<'a>),
    Hashlimit(HashlimitRule<'a>),
}

impl<'a> Active<'a> {
    fn start(pair: &'a VethPair, mode: Mode, rate: u64, burst: u64) -> Self {
        match mode {
            Mode::Stack => Self::Stack,
            Mode::XdpDrop => Self::Xdp(XdpProgram::attach(&pair.receiver, &pair.rx_if, DROP_PROGRAM)),
            Mode::Throttle => {
                let config = format!(
                    "[daemon]\nxdp_mode = \"native\"\nmax_sources = {}\n\n\
                     [limits]\nrate = {rate}\nburst = {burst}\nnew_source_rate = 0\n",
                    MANY_SOURCES * 4
                );
                let mut daemon = Daemon::builder(&pair.receiver, &pair.rx_if).config(&config).start();
                daemon.wait_ready(DAEMON_READY);
                Self::Throttle(Box::new(daemon))
            }
            Mode::Nftables => Self::Nftables(NftTable::add(&pair.receiver, &pair.rx_if, &meter(rate, burst))),
            Mode::Hashlimit => Self::Hashlimit(HashlimitRule::add(&pair.receiver, &meter(rate, burst))),
        }
    }

    /// What the mode's own counter says it dropped so far.
    fn dropped(&self, pair: &VethPair) -> Option<u64> {
        match self {
            Self::Stack => None,
            Self::Xdp(_) | Self::Throttle(_) => Some(
                ethtool::stats(&pair.receiver, &pair.rx_if)
                    .iter()
                    .filter(|(name, _)| name.ends_with("_xdp_drops"))
                    .map(|(_, v)| v)
                    .sum(),
            ),
            Self::Nftables(table) => Some(table.dropped()),
            Self::Hashlimit(rule) => Some(rule.dropped()),
        }
    }
}

/// The per-source limit of the limiters of the random-source and one-source
/// floods: sources in 10.100.0.0/16, tables sized for four times the
/// sources.
fn meter(rate: u64, burst: u64) -> Meter {
    Meter { sources: "10.100.0.0/16".to_owned(), rate, per: Per::Second, burst, entries: MANY_SOURCES * 4 }
}

/// What the nftables and hashlimit references meter: the sources they match,
/// the per-source limit, and how many sources their tables hold.
#[derive(Debug, Clone)]
pub struct Meter {
    /// The sources as a prefix (`10.100.0.0/16`).
    pub sources: String,
    /// `rate` per `per`, after a burst of `burst` packets.
    pub rate: u64,
    pub per: Per,
    pub burst: u64,
    /// The table's capacity (hashlimit caps it at 1 048 576).
    pub entries: u32,
}

/// The period of a rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub enum Per {
    Second,
    Minute,
}

impl Per {
    /// As nftables spells it (`limit rate over 1/minute`).
    pub fn nft(self) -> &'static str {
        match self {
            Self::Second => "second",
            Self::Minute => "minute",
        }
    }

    /// As iptables spells it (`--hashlimit-above 1/min`).
    fn iptables(self) -> &'static str {
        match self {
            Self::Second => "sec",
            Self::Minute => "min",
        }
    }
}

/// One of the baseline's programs attached in native mode; detached on drop.
pub struct XdpProgram<'a> {
    ns: &'a Netns,
    ebpf: Option<Ebpf>,
}

impl<'a> XdpProgram<'a> {
    /// Loads `name` from the baseline's object and attaches it to `iface`
    /// in `ns`, native.
    pub fn attach(ns: &'a Netns, iface: &str, name: &'static str) -> Self {
        let iface = iface.to_owned();
        // The attachment's netlink socket must be in the interface's namespace.
        let ebpf = ns.run(move || {
            let mut ebpf =
                Ebpf::load(BASELINE_OBJECT).unwrap_or_else(|e| panic!("loading the baseline: {e}"));
            let program: &mut Xdp =
                ebpf.program_mut(name).expect("a baseline program").try_into().expect("an XDP program");
            program.load().unwrap_or_else(|e| panic!("loading {name}: {e}"));
            program
                .attach(&iface, XdpMode::Driver)
                .unwrap_or_else(|e| panic!("attaching {name} to {iface} (native): {e}"));
            ebpf
        });
        Self { ns, ebpf: Some(ebpf) }
    }
}

impl Drop for XdpProgram<'_> {
    fn drop(&mut self) {
        if let Some(ebpf) = self.ebpf.take() {
            // Detaching goes through netlink too, from the same namespace.
            self.ns.run(move || drop(ebpf));
        }
    }
}

/// An nftables netdev table with a per-source meter on the ingress hook of
/// one interface; deleted on drop.
pub struct NftTable<'a> {
    ns: &'a Netns,
    name: String,
}

impl<'a> NftTable<'a> {
    /// A dynamic set of `meter.entries` elements, each with its own limit.
    /// Its elements time out after a minute, unless `meter` says not to.
    pub fn add(ns: &'a Netns, iface: &str, meter: &Meter) -> Self {
        Self::add_with(ns, iface, meter, "\t\tflags dynamic,timeout\n\t\ttimeout 1m\n")
    }

    /// As [`NftTable::add`], with elements that never time out: no garbage
    /// collection walks the set during a run.
    pub fn add_without_timeout(ns: &'a Netns, iface: &str, meter: &Meter) -> Self {
        Self::add_with(ns, iface, meter, "\t\tflags dynamic\n")
    }

    fn add_with(ns: &'a Netns, iface: &str, meter: &Meter, flags: &str) -> Self {
        let name = format!("throttle_bench_{}", unique_id().replace('-', "_"));
        let Meter { sources, rate, per, burst, entries } = meter;
        let per = per.nft();
        let script = format!(
            "table netdev {name} {{\n\
             \tcounter dropped {{ }}\n\
             \tset persrc {{\n\
             \t\ttype ipv4_addr\n\
             \t\tsize {entries}\n\
             {flags}\
             \t}}\n\
             \tchain ingress {{\n\
             \t\ttype filter hook ingress device \"{iface}\" priority 0; policy accept;\n\
             \t\tip saddr {sources} update @persrc {{ ip saddr limit rate over {rate}/{per} burst {burst} packets }} counter name \"dropped\" drop\n\
             \t}}\n\
             }}\n",
        );
        nft(ns, &["-f", "-"], Some(&script));
        Self { ns, name }
    }

    /// Removes the rule and the set, then reads what the rule dropped: with
    /// the set gone, nft lists the counter at once, where a set of a million
    /// elements would hold it up for a minute.
    pub fn remove_rule_and_count(&self) -> u64 {
        nft(self.ns, &["flush", "chain", "netdev", &self.name, "ingress"], None);
        nft(self.ns, &["delete", "set", "netdev", &self.name, "persrc"], None);
        self.dropped()
    }

    /// What the rule dropped so far.
    pub fn dropped(&self) -> u64 {
        // The named counter alone; nft still fetches every element of the
        // set first.
        let listing = nft(self.ns, &["list", "counter", "netdev", &self.name, "dropped"], None);
        let words: Vec<&str> = listing.split_whitespace().collect();
        words
            .windows(2)
            .find(|w| w[0] == "packets")
            .and_then(|w| w[1].parse().ok())
            .unwrap_or_else(|| panic!("no counter in:\n{listing}"))
    }
}

impl Drop for NftTable<'_> {
    fn drop(&mut self) {
        let out = self.ns.exec_command("nft").args(["delete", "table", "netdev", &self.name]).output();
        if !out.is_ok_and(|o| o.status.success()) {
            eprintln!("warning: could not delete nft table netdev {} in {}", self.name, self.ns.name());
        }
    }
}

fn nft(ns: &Netns, args: &[&str], stdin: Option<&str>) -> String {
    let mut cmd = ns.exec_command("nft");
    cmd.args(args).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child =
        cmd.spawn().unwrap_or_else(|e| panic!("cannot run nft (`cargo xtask setup` installs it): {e}"));
    let mut input = child.stdin.take().expect("piped");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("write to nft");
    }
    drop(input);
    let out = child.wait_with_output().expect("wait for nft");
    assert!(
        out.status.success(),
        "nft {args:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        stdin.unwrap_or_default()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An iptables `hashlimit` rule in the raw table's PREROUTING chain (the
/// earliest iptables hook); deleted on drop.
pub struct HashlimitRule<'a> {
    ns: &'a Netns,
    spec: Vec<String>,
}

/// The most entries (and buckets) hashlimit takes; it truncates larger
/// sizes to this (`HASHLIMIT_MAX_SIZE` in `xt_hashlimit.c`).
pub const HASHLIMIT_MAX: u32 = 1 << 20;

impl<'a> HashlimitRule<'a> {
    /// A table of `meter.entries` (at most [`HASHLIMIT_MAX`]) entries, half
    /// as many buckets, whose entries expire after a minute.
    pub fn add(ns: &'a Netns, meter: &Meter) -> Self {
        let entries = meter.entries.min(HASHLIMIT_MAX);
        Self::add_with(ns, meter, entries / 2, entries, &[])
    }

    /// A table of `meter.entries` entries and as many buckets (both at most
    /// [`HASHLIMIT_MAX`]), whose garbage collection runs once a minute, as
    /// often as entries can expire: not during a run.
    pub fn add_sized(ns: &'a Netns, meter: &Meter) -> Self {
        let entries = meter.entries.min(HASHLIMIT_MAX);
        Self::add_with(ns, meter, entries, entries, &["--hashlimit-htable-gcinterval", "60000"])
    }

    fn add_with(ns: &'a Netns, meter: &Meter, buckets: u32, entries: u32, extra: &[&str]) -> Self {
        let name = format!("thrb{}", unique_id());
        let (rate, burst) = (meter.rate, meter.burst);
        let spec: Vec<String> = [
            "PREROUTING",
            "-s",
            meter.sources.as_str(),
            "-m",
            "hashlimit",
            "--hashlimit-name",
            &name,
            "--hashlimit-mode",
            "srcip",
            "--hashlimit-above",
            &format!("{rate}/{}", meter.per.iptables()),
            "--hashlimit-burst",
            &burst.to_string(),
            "--hashlimit-htable-size",
            &buckets.to_string(),
            "--hashlimit-htable-max",
            &entries.to_string(),
            "--hashlimit-htable-expire",
            "60000",
        ]
        .into_iter()
        .chain(extra.iter().copied())
        .chain(["-j", "DROP"])
        .map(str::to_owned)
        .collect();
        run_checked(ns.exec_command("iptables").args(["-w", "-t", "raw", "-A"]).args(&spec));
        Self { ns, spec }
    }

    /// What the rule dropped so far.
    pub fn dropped(&self) -> u64 {
        let listing = run_checked(self.ns.exec_command("iptables").args([
            "-w",
            "-t",
            "raw",
            "-L",
            "PREROUTING",
            "-v",
            "-n",
            "-x",
        ]));
        listing
            .lines()
            // iptables shows a hashlimit match as "limit: above ... mode srcip".
            .find(|l| l.contains("limit: above"))
            .and_then(|l| l.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no hashlimit rule in:\n{listing}"))
    }
}

impl Drop for HashlimitRule<'_> {
    fn drop(&mut self) {
        let out = self.ns.exec_command("iptables").args(["-w", "-t", "raw", "-D"]).args(&self.spec).output();
        if !out.is_ok_and(|o| o.status.success()) {
            eprintln!("warning: could not delete the hashlimit rule in {}", self.ns.name());
        }
    }
}

/// Prints what a run did, for a reader of the log.
pub fn describe(run: &Run) -> String {
    format!(
        "{} / {}: {:.0} pps, {:.0} ns CPU/pkt, sent {}, refused {}, received {}, dropped by mode {:?}, \
         admitted {:.2}/s/source ({} sources), receiver drops {}",
        run.shape.label(),
        run.mode.short(),
        run.handled_pps,
        run.cpu_ns_per_packet,
        run.sent,
        run.tx_dropped,
        run.rx_packets,
        run.dropped_by_mode,
        run.admitted_rate_per_source,
        run.sources_admitted,
        run.receiver_drops
    )
}
