//! End to end, as root: real packets through a veth pair into the real
//! daemon's XDP program, counted on the far side.
//!
//! Each test makes its own namespaces, so they run in parallel. Every flood
//! offers far more than the limit (at least ten times), so what arrives is
//! what the bucket admits: `burst + rate * t` over a send time `t`. Counts
//! must land within 10 % of that. Each test prints its figures.

use std::{thread, time::Duration};

use throttle_tests::{
    daemon::RELOADED_LINE, ethtool, measure::bucket_allowance, require_root, secs_between, start_daemon,
    Checks, Daemon, Flood, Flow, FlowReport, Receiver, VethPair,
};

/// The UDP port every flood goes to.
const PORT: u16 = 9000;
/// The default limit of these tests, per source.
const RATE: u64 = 500;
const BURST: u64 = 250;
/// How far a count may stray from the bucket's allowance.
const TOLERANCE: f64 = 0.10;
/// Offered load per source: 20 times the rate.
const FLOOD_PPS: u64 = 10_000;
/// Offered load below which a flood no longer tests the limit.
const MIN_OFFERED_PPS: f64 = 5_000.0;
/// How long each flood lasts.
const FLOOD_TIME: Duration = Duration::from_secs(3);
/// How long the receiver must be quiet before it is done.
const QUIET: Duration = Duration::from_millis(300);

fn rate_args() -> [String; 4] {
    ["--rate".to_owned(), RATE.to_string(), "--burst".to_owned(), BURST.to_string()]
}

/// Checks that a flow offered enough to test the limit.
fn check_offered(checks: &mut Checks, what: &str, report: &FlowReport) {
    checks.offered(what, report, MIN_OFFERED_PPS, "the flood must exceed the limit many times over");
}

/// Several sources flood at once; each gets its own bucket.
fn several_sources(test: &str, cidrs: &[&str]) {
    let mut checks = Checks::new(test);
    let pair = VethPair::builder().sender_addrs(cidrs.iter().copied()).build();
    let receiver = Receiver::start(&pair.receiver, PORT);
    // Alive until the checks are judged, so that a failure prints its log.
    let _daemon = start_daemon(&pair, rate_args(), &checks);

    let reports = Flood::start(&pair.sender, pair.flows(PORT, FLOOD_PPS), Some(FLOOD_TIME)).join();
    let arrivals = receiver.finish(QUIET);

    for report in &reports {
        let src = report.sent_by_source[0].0.ip();
        check_offered(&mut checks, &src.to_string(), report);
        checks.within(
            &format!("{src}: arrived over {:.3} s (burst {BURST} + rate {RATE} * t)", report.secs()),
            bucket_allowance(RATE, BURST, report.secs()),
            arrivals.from_source(src),
            TOLERANCE,
        );
    }
    checks.receiver_lost_nothing(&arrivals);
    checks.assert_all();
}

#[test]
fn several_sources_each_get_burst_plus_rate() {
    require_root!();
    several_sources(
        "several_sources_each_get_burst_plus_rate",
        &["10.99.1.1/16", "10.99.1.2/16", "10.99.1.3/16", "10.99.1.4/16"],
    );
}

#[test]
fn several_ipv6_sources_each_get_burst_plus_rate() {
    require_root!();
    // Each source in its own /64 (the default IPv6 prefix), all on link
    // through the /48.
    several_sources(
        "several_ipv6_sources_each_get_burst_plus_rate",
        &["fd00:99:0:1::2/48", "fd00:99:0:2::2/48", "fd00:99:0:3::2/48", "fd00:99:0:4::2/48"],
    );
}

#[test]
fn ipv6_rotating_within_a_64_share_one_bucket() {
    require_root!();
    let test = "ipv6_rotating_within_a_64_share_one_bucket";
    let mut checks = Checks::new(test);
    let cidrs: Vec<String> = (1..=8).map(|i| format!("fd00:99:0:7::{i:x}/48")).collect();
    let pair = VethPair::builder().sender_addrs(cidrs.iter().map(String::as_str)).build();
    let receiver = Receiver::start(&pair.receiver, PORT);
    // Alive until the checks are judged, so that a failure prints its log.
    let _daemon = start_daemon(&pair, rate_args(), &checks);

    // One thread, a datagram from each address in turn: 2 500/s from each,
    // 20 000/s from the /64.
    let sources = pair.sender_ips();
    let dst = pair.dst_for(sources[0], PORT);
    let reports = Flood::start(
        &pair.sender,
        vec![Flow::rotating(sources.clone(), dst).rate(2 * FLOOD_PPS)],
        Some(FLOOD_TIME),
    )
    .join();
    let arrivals = receiver.finish(QUIET);

    let report = &reports[0];
    check_offered(&mut checks, "fd00:99:0:7::/64", report);
    for (src, n) in arrivals.by_source() {
        checks.note(&format!("{src}: {n} arrived"));
    }
    let one_bucket = bucket_allowance(RATE, BURST, report.secs());
    let total = arrivals.count(|a| sources.contains(&a.src));
    checks.within(
        &format!(
            "fd00:99:0:7::/64 ({} addresses): arrived over {:.3} s, one bucket (8 would be {:.0})",
            sources.len(),
            report.secs(),
            8.0 * one_bucket
        ),
        one_bucket,
        total,
        TOLERANCE,
    );
    checks.receiver_lost_nothing(&arrivals);
    checks.assert_all();
}

#[test]
fn one_source_on_two_cpus_gets_one_limit() {
    require_root!();
    let test = "one_source_on_two_cpus_gets_one_limit";
    let mut checks = Checks::new(test);
    let cpus = thread::available_parallelism().map_or(1, std::num::NonZero::get);
    assert!(
        cpus >= 2,
        "{test} needs two CPUs to run one source's packets on two CPUs; this machine has {cpus}"
    );
    // Two queues, queue i sent from CPU i (XPS): a thread pinned to CPU i
    // sends on queue i, whose NAPI, and so the XDP program, runs on CPU i.
    let pair = VethPair::builder().queues(2).xps_per_cpu().sender_addr("10.99.1.1/16").build();
    let receiver = Receiver::start(&pair.receiver, PORT);
    // Native mode, where veth counts XDP frames per receive queue.
    let mut args = rate_args().to_vec();
    args.extend(["--xdp-mode".to_owned(), "native".to_owned()]);
    // Alive until the checks are judged, so that a failure prints its log.
    let _daemon = start_daemon(&pair, &args, &checks);

    let src = pair.sender_ips()[0];
    let dst = pair.dst_for(src, PORT);
    let before = ethtool::veth_xdp_packets_per_queue(&pair.receiver, &pair.rx_if);
    // Different source ports too, as a second way apart (the flow hash).
    let reports = Flood::start(
        &pair.sender,
        vec![
            Flow::new(src, dst).src_port(40_000).pinned(0).rate(5 * FLOOD_PPS),
            Flow::new(src, dst).src_port(40_001).pinned(1).rate(5 * FLOOD_PPS),
        ],
        Some(FLOOD_TIME),
    )
    .join();
    let arrivals = receiver.finish(QUIET);
    let after = ethtool::veth_xdp_packets_per_queue(&pair.receiver, &pair.rx_if);

    for report in &reports {
        check_offered(&mut checks, &format!("CPU {}", report.cpu.expect("pinned")), report);
    }
    // Both receive queues, so both CPUs, carried a fair share of the flood.
    let per_queue: Vec<(u32, u64)> =
        after.iter().map(|(q, n)| (*q, n - before.get(q).copied().unwrap_or(0))).collect();
    let seen: u64 = per_queue.iter().map(|(_, n)| n).sum();
    let sent: u64 = reports.iter().map(|r| r.sent).sum();
    checks.note(&format!("XDP frames per receive queue: {per_queue:?} (of {sent} sent)"));
    checks.that(per_queue.len() == 2, "the receiving veth has two queues");
    for (queue, n) in &per_queue {
        checks.that(
            *n * 4 >= seen,
            &format!("queue {queue} carried at least a quarter of the flood ({n} of {seen})"),
        );
    }
    for report in &reports {
        let port = report.sent_by_source[0].0.port();
        checks.note(&format!(
            "from CPU {} (port {port}): {} arrived",
            report.cpu.expect("pinned"),
            arrivals.count(|a| a.src_port == port)
        ));
    }
    let first = reports.iter().map(|r| r.first_send_ns).min().expect("two");
    let last = reports.iter().map(|r| r.last_send_ns).max().expect("two");
    let secs = secs_between(first, last);
    checks.within(
        &format!("{src} from two CPUs: arrived over {secs:.3} s, one bucket"),
        bucket_allowance(RATE, BURST, secs),
        arrivals.from_source(src),
        TOLERANCE,
    );
    checks.receiver_lost_nothing(&arrivals);
    checks.assert_all();
}

#[test]
fn config_change_under_traffic_keeps_buckets() {
    require_root!();
    let test = "config_change_under_traffic_keeps_buckets";
    let mut checks = Checks::new(test);
    let pair = VethPair::builder().sender_addr("10.99.1.1/16").build();
    let config = |rate: u64, burst: u64| {
        format!("[daemon]\ninterfaces = [\"{}\"]\n\n[limits]\nrate = {rate}\nburst = {burst}\n", pair.rx_if)
    };
    let (rate1, rate2) = (RATE, 2 * RATE);
    let receiver = Receiver::start(&pair.receiver, PORT);
    // Alive until the checks are judged, so that a failure prints its log.
    let mut daemon = Daemon::builder(&pair.receiver, &pair.rx_if).config(&config(rate1, BURST)).start_ready();
    checks.note(&format!("daemon ready ({})", pair.xdp_attachment()));

    let src = pair.sender_ips()[0];
    let flood =
        Flood::start(&pair.sender, vec![Flow::new(src, pair.dst_for(src, PORT)).rate(FLOOD_PPS)], None);
    // Measurement phases, not waits for a condition.
    thread::sleep(Duration::from_secs(2));
    daemon.write_config(&config(rate2, BURST));
    let mark = daemon.log_len();
    let hup = daemon.reload();
    let reloaded = daemon.wait_for_log(RELOADED_LINE, mark, Duration::from_secs(10));
    thread::sleep(Duration::from_secs(2));
    let report = flood.stop().remove(0);
    let arrivals = receiver.finish(QUIET);

    check_offered(&mut checks, &src.to_string(), &report);
    checks.note(&format!("SIGHUP to \"{RELOADED_LINE}\" seen: {:.1} ms", secs_between(hup, reloaded) * 1e3));
    let before_secs = secs_between(report.first_send_ns, hup);
    checks.within(
        &format!("before the change: arrived over {before_secs:.3} s (burst {BURST} + {rate1} * t)"),
        bucket_allowance(rate1, BURST, before_secs),
        arrivals.count(|a| a.sent_ns < hup),
        TOLERANCE,
    );
    checks.note(&format!(
        "between SIGHUP and the reload line: {} arrived",
        arrivals.count(|a| a.sent_ns >= hup && a.sent_ns < reloaded)
    ));
    let after_secs = secs_between(reloaded, report.last_send_ns);
    checks.within(
        &format!("after the change: arrived over {after_secs:.3} s ({rate2} * t, no new burst)"),
        bucket_allowance(rate2, 0, after_secs),
        arrivals.count(|a| a.sent_ns >= reloaded),
        TOLERANCE,
    );
    let mut sent_after: Vec<u64> = arrivals.list.iter().map(|a| a.sent_ns).filter(|&t| t >= hup).collect();
    sent_after.sort_unstable();
    let silence = sent_after
        .windows(2)
        .map(|w| w[1] - w[0])
        .chain(sent_after.first().map(|&t| t - hup))
        .max()
        .unwrap_or(0);
    checks.note(&format!(
        "longest silence after the SIGHUP: {:.1} ms (1/{rate2} s between admissions at the new rate)",
        secs_between(0, silence) * 1e3
    ));
    // Since the SIGHUP the bucket was empty and refilled at most at rate2:
    // a fresh burst at the change would add BURST on top.
    let since_hup = secs_between(hup, report.last_send_ns);
    checks.below(
        &format!("since the SIGHUP: arrived over {since_hup:.3} s"),
        bucket_allowance(rate2, 0, since_hup) + 0.5 * bucket_allowance(0, BURST, 0.0),
        arrivals.count(|a| a.sent_ns >= hup),
        &format!("{rate2} * t is the most an emptied bucket refills; a fresh burst would add {BURST}"),
    );
    checks.receiver_lost_nothing(&arrivals);
    checks.assert_all();
}
