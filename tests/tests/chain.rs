//! Another XDP program after throttle's (`--chain`), as root, with real
//! packets on veth pairs: what throttle passes, and only that, goes on
//! into a second program that counts it (`throttle_tests::chain`), through
//! a SIGKILL and the restart after it; a program that cannot follow is
//! refused at start, naming why, with nothing left behind.

use std::{net::IpAddr, path::PathBuf, thread, time::Duration};

use serde_json::Value;
use throttle_common::reason;
use throttle_tests::{
    chain::{CountingProgram, Flavour},
    daemon::ensure_bpffs,
    flood_once,
    measure::bucket_allowance,
    report, require_root, unique_id, Checks, Daemon, VethPair,
};

const PORT: u16 = 9000;
const QUIET: Duration = Duration::from_millis(300);
const RATE: u64 = 100;
const BURST: u64 = 100;

fn pin_path() -> PathBuf {
    ensure_bpffs();
    PathBuf::from(format!("/sys/fs/bpf/throttle-test-chain-{}", unique_id()))
}

/// What throttle passed on the receiving interface, every reason that
/// passes summed, from `GET /v1/stats`.
fn passed(stats: &Value) -> u64 {
    reason::ALL
        .iter()
        .zip(reason::NAMES)
        .filter(|(r, _)| !reason::drops(**r))
        .map(|(_, name)| stats["counters"][name].as_u64().unwrap_or(0))
        .sum()
}

/// The chained program's count and throttle's passed count, read again
/// until neither moves between the reads (a stray ARP packet may arrive).
fn settled(daemon: &Daemon, pair: &VethPair, chained: &CountingProgram) -> (u64, u64) {
    let mut last = (chained.count(), passed(&daemon.api_get(&pair.receiver, "/v1/stats")));
    for _ in 0..20 {
        thread::sleep(Duration::from_millis(100));
        let now = (chained.count(), passed(&daemon.api_get(&pair.receiver, "/v1/stats")));
        if now == last {
            return now;
        }
        last = now;
    }
    last
}

/// `n` datagrams from `src` at 100/s (under every limit here): how many
/// were sent, how many the chained program saw meanwhile, and how many
/// arrived.
fn trickle(pair: &VethPair, chained: &CountingProgram, src: IpAddr, n: u64) -> (u64, u64, u64) {
    let before = chained.count();
    let (report, arrivals) = flood_once(pair, src, PORT, 100, Duration::from_millis(10 * n), QUIET);
    (report.sent, chained.count() - before, arrivals.from_source(src))
}

#[test]
fn what_throttle_passes_and_only_that_goes_on_into_the_chained_program() {
    require_root!();
    let mut checks = Checks::new("what_throttle_passes_and_only_that_goes_on_into_the_chained_program");
    let chained = CountingProgram::load(&pin_path(), Flavour::Plain).expect("load the counting program");
    let pair = VethPair::builder().sender_addrs(["10.99.8.2/16", "10.99.8.3/16", "10.99.8.4/16"]).build();
    let mut daemon = Daemon::builder(&pair.receiver, &pair.rx_if)
        .config(&format!("[limits]\nrate = {RATE}\nburst = {BURST}\nnew_source_rate = 0\n"))
        .args(["--chain", chained.pin().to_str().expect("a UTF-8 path")])
        .start_ready();

    let status = daemon.api_get(&pair.receiver, "/v1/status");
    checks.that(
        status["chain"]["name"] == "chain_count"
            && status["chain"]["path"] == chained.pin().to_str().expect("a UTF-8 path"),
        &format!("/v1/status names the program that follows: {}", status["chain"]),
    );
    let cli = daemon.cli(&pair.receiver, ["status"]);
    checks.that(cli.ok().contains("chain_count"), &format!("`throttle status` names it:\n{}", cli.ok()));
    checks.that(
        daemon.log().contains("continues into XDP program"),
        "the start says what passed packets continue into",
    );

    // A flood of 2000/s for 2 s against 100/s, burst 100: throttle drops
    // most of it; the chained program sees exactly what throttle passed.
    let src: IpAddr = "10.99.8.2".parse().expect("an address");
    let (chained_before, passed_before) = settled(&daemon, &pair, &chained);
    let (offered, arrivals) = flood_once(&pair, src, PORT, 2_000, Duration::from_secs(2), QUIET);
    let arrived = arrivals.from_source(src);
    let (chained_after, passed_after) = settled(&daemon, &pair, &chained);
    let (chained_n, passed_n) = (chained_after - chained_before, passed_after - passed_before);
    let bound = bucket_allowance(RATE, BURST, offered.secs());
    report(&format!(
        "--chain: {} sent at 2000/s, throttle passed {passed_n}, the chained program counted {chained_n}, \
         {arrived} arrived (bound {bound:.0})",
        offered.sent
    ));
    #[expect(clippy::cast_precision_loss, reason = "packet counts")]
    let metered = (arrived as f64) <= bound + 1.0 && arrived >= BURST;
    checks.that(metered, &format!("the flood is metered: {arrived} arrived for a bound of {bound:.0}"));
    checks.that(
        chained_n == passed_n,
        &format!("the chained program counted what throttle passed: {chained_n} and {passed_n}"),
    );
    checks.that(
        chained_n >= arrived && chained_n <= arrived + 8,
        &format!("what it counted arrived ({chained_n} counted, {arrived} arrived): none of the dropped"),
    );

    // Killed, the daemon leaves its program attached, and the program keeps
    // the chain: it holds the program that follows.
    daemon.kill();
    let (sent, seen, arrived) = trickle(&pair, &chained, "10.99.8.3".parse().expect("an address"), 20);
    report(&format!(
        "--chain, no daemon running: {sent} sent, {arrived} arrived, the chained program saw {seen}"
    ));
    checks.that(
        arrived == sent && (sent..=sent + 4).contains(&seen),
        &format!(
            "with the daemon killed, what passes still goes on: {seen} seen, {arrived} of {sent} arrived"
        ),
    );
    daemon.start_again(&pair.receiver);
    daemon.wait_ready(Duration::from_secs(30));
    let (sent, seen, arrived) = trickle(&pair, &chained, "10.99.8.4".parse().expect("an address"), 20);
    checks.that(
        arrived == sent && (sent..=sent + 4).contains(&seen),
        &format!("started again, it chains again: {seen} seen, {arrived} of {sent} arrived"),
    );

    // Stopped, throttle detaches and the chain ends with it; the program
    // that followed is the user's, and stays pinned.
    checks.that(daemon.stop().is_some_and(|s| s.success()), "SIGTERM: a clean exit");
    let (sent, seen, arrived) = trickle(&pair, &chained, "10.99.8.4".parse().expect("an address"), 20);
    checks.that(
        arrived == sent && seen == 0,
        &format!("detached, nothing goes through either program: {seen} seen, {arrived} of {sent} arrived"),
    );
    checks.that(chained.pin().exists(), "the chained program's pin is left as it was");
    checks.assert_all();
}

#[test]
fn a_program_that_cannot_follow_is_refused_naming_why_and_nothing_is_left() {
    require_root!();
    let frags = CountingProgram::load(&pin_path(), Flavour::Frags).expect("load the counting program");
    let missing = pin_path();
    let cases: [(&str, PathBuf, &str); 2] = [
        ("a multi-buffer program", frags.pin().to_path_buf(), "xdp.frags"),
        ("no program at all", missing, "cannot open it as a pinned program"),
    ];
    for (what, path, expected) in cases {
        let pair = VethPair::builder().build();
        let mut daemon = Daemon::builder(&pair.receiver, &pair.rx_if)
            .args(["--chain", path.to_str().expect("a UTF-8 path")])
            .start();
        let status = daemon.wait_exit(Duration::from_secs(20));
        let log = daemon.log();
        report(&format!("--chain with {what}: {}", log.lines().last().unwrap_or_default()));
        assert!(status.is_some_and(|s| !s.success()), "{what}: the daemon must refuse to start: {log}");
        assert!(
            log.contains(&format!("--chain {}", path.display())) && log.contains(expected),
            "{what}: the error names the path and why ({expected:?}): {log}"
        );
        assert!(pair.xdp_attachment().is_empty(), "{what}: nothing attached: {}", pair.xdp_attachment());
        let left = std::fs::read_dir(daemon.pin_dir()).map_or(0, Iterator::count);
        assert_eq!(left, 0, "{what}: nothing pinned");
    }
}
