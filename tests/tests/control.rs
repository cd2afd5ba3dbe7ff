//! The control plane end to end, as root: the real daemon on a veth pair
//! under real traffic, driven through its admin API with the real client
//! (`throttle ...` run in the daemon's namespace) and with `curl`.
//!
//! Each test makes its own namespaces, so they run in parallel. What is
//! judged is behaviour: datagrams that reached the receiver (by the instant
//! each was sent), the verdict counters, the buckets, and the API's answers;
//! never how fast something went. Every figure is printed; each tolerance is
//! stated where it is used.

use std::{fs, net::IpAddr, path::Path, process::Stdio, thread, time::Duration};

use serde_json::Value;
use throttle_tests::{
    daemon::{self, throttle_bin, CliOutput},
    measure::bucket_allowance,
    mono_ns, require_root, secs_between, start_daemon, Arrivals, Checks, Daemon, Flood, Flow, FlowReport,
    Receiver, VethPair,
};

/// The UDP port every flood goes to.
const PORT: u16 = 9000;
/// How long the receiver must be quiet before it is done.
const QUIET: Duration = Duration::from_millis(300);
/// How far a count over a window of a second or more may stray from what
/// the bucket admits: the edges of a window and a loaded machine's pacing
/// move it by a few percent; a limit not applied moves it by tens.
const TOLERANCE: f64 = 0.10;
/// The client's exit codes (README, "Command-line client").
const EXIT_OK: i32 = 0;
const EXIT_API_ERROR: i32 = 1;
const EXIT_NOT_FOUND: i32 = 4;
/// Why a flow must offer what it does.
const OFFERED: &str = "the flow must offer what the test is built on";
/// The log line of a daemon that found pinned maps and took them over.
const ADOPTED_LINE: &str = "adopted the pinned maps";

/// Whether `ip -d link show` mentions XDP at all on the receiving end.
fn xdp_attached(pair: &VethPair) -> bool {
    pair.receiver.ip(["-d", "link", "show", "dev", &pair.rx_if]).contains("xdp")
}

/// The JSON a successful `--json` command printed. The client's own flags
/// (`--json`, `--admin`, `--token-file`) belong to the command they follow:
/// `throttle rules --json add ...`, `throttle limits --json set ...`.
fn json_of(out: &CliOutput) -> Value {
    serde_json::from_str(out.ok()).unwrap_or_else(|e| panic!("{out}\nis not JSON: {e}"))
}

/// `field` of `value` as a number; panics naming the whole value.
fn num(value: &Value, field: &str) -> u64 {
    value[field].as_u64().unwrap_or_else(|| panic!("no number `{field}` in {value}"))
}

/// `GET /v1/stats` on the daemon's loopback.
fn stats(pair: &VethPair, daemon: &Daemon) -> Value {
    daemon.api_get(&pair.receiver, "/v1/stats")
}

/// A verdict counter of a `/v1/stats` answer.
fn counter(stats: &Value, name: &str) -> u64 {
    stats["counters"][name].as_u64().unwrap_or_else(|| panic!("no counter {name:?} in {stats}"))
}

/// Every packet came in on the one interface: its own counters say what the
/// totals say, under its XDP mode.
fn check_interface_counters(
    checks: &mut Checks,
    pair: &VethPair,
    (before, after): (&Value, &Value),
    denied_total: u64,
) {
    let iface = pair.rx_if.as_str();
    let iface_denied = iface_counter(after, iface, "deny_rule") - iface_counter(before, iface, "deny_rule");
    checks.that(
        iface_denied == denied_total,
        &format!("{iface}'s own deny_rule moved {iface_denied}, the total {denied_total}: {after}"),
    );
    let mode = after["interfaces"][iface]["mode"].as_str().unwrap_or_default().to_owned();
    checks.that(
        mode == "native" || mode == "generic",
        &format!("{iface}'s counters name its XDP mode ({mode:?}; {}): {after}", pair.xdp_attachment()),
    );
}

/// A verdict counter of one interface in a `/v1/stats` answer.
fn iface_counter(stats: &Value, iface: &str, name: &str) -> u64 {
    stats["interfaces"][iface]["counters"][name]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {name:?} of {iface} in {stats}"))
}

/// `throttle source ADDR --json`: the source's bucket.
fn bucket(pair: &VethPair, daemon: &Daemon, src: IpAddr) -> Value {
    json_of(&daemon.cli(&pair.receiver, ["source", &src.to_string(), "--json"]))
}

/// How a client run ended, on one line: its exit code and its stderr.
fn brief(out: &CliOutput) -> String {
    let code = out.code.map_or_else(|| "killed by a signal".to_owned(), |c| format!("exit {c}"));
    let stderr = out.stderr.trim();
    if stderr.is_empty() {
        code
    } else {
        format!("{code}, {stderr:?}")
    }
}

/// A count as a float, for comparisons with allowances.
#[expect(clippy::cast_precision_loss, reason = "packet counts of a test fit in f64's 52-bit mantissa")]
fn as_f64(n: u64) -> f64 {
    n as f64
}

/// Arrivals from `src` sent in `[from, to)` (monotonic ns).
fn sent_between(arrivals: &Arrivals, src: IpAddr, from: u64, to: u64) -> u64 {
    arrivals.count(|a| a.src == src && a.sent_ns >= from && a.sent_ns < to)
}

#[test]
fn limits_changed_through_the_api_take_effect_within_a_second() {
    require_root!();
    let test = "limits_changed_through_the_api_take_effect_within_a_second";
    let mut checks = Checks::new(test);
    let (rate1, rate2, burst, offered) = (500, 2_000, 250, 4_000);
    // The longest the change may take to show in the arrivals.
    let settle = Duration::from_secs(1);
    let pair = VethPair::builder().sender_addr("10.99.1.1/16").build();
    let receiver = Receiver::start(&pair.receiver, PORT);
    let daemon = start_daemon(&pair, ["--rate", &rate1.to_string(), "--burst", &burst.to_string()], &checks);

    let src = pair.sender_ips()[0];
    let flood = Flood::start(&pair.sender, vec![Flow::new(src, pair.dst_for(src, PORT)).rate(offered)], None);
    // Measurement phases, not waits for a condition.
    thread::sleep(Duration::from_secs(2));
    let asked = mono_ns();
    let answer =
        json_of(&daemon.cli(&pair.receiver, ["limits", "--json", "set", "--rate", &rate2.to_string()]));
    let answered = mono_ns();
    thread::sleep(Duration::from_secs(3));
    let report = flood.stop().remove(0);
    let arrivals = receiver.finish(QUIET);

    checks.offered(&src.to_string(), &report, 0.75 * as_f64(offered), OFFERED);
    checks.note(&format!(
        "`throttle limits set --rate {rate2}` answered in {:.1} ms",
        secs_between(asked, answered) * 1e3
    ));
    let before = secs_between(report.first_send_ns, asked);
    checks.within(
        &format!("before the change: arrived over {before:.3} s (burst {burst} + {rate1} * t)"),
        bucket_allowance(rate1, burst, before),
        sent_between(&arrivals, src, 0, asked),
        TOLERANCE,
    );
    let settle_ns = u64::try_from(settle.as_nanos()).expect("a second fits");
    checks.note(&format!(
        "in the first second after the answer: {} arrived (at {rate1}/s it would be {rate1}, at {rate2}/s {rate2})",
        sent_between(&arrivals, src, answered, answered + settle_ns)
    ));
    let from = asked + settle_ns;
    let after = secs_between(from, report.last_send_ns);
    checks.within(
        &format!("from {settle:?} after the request: arrived over {after:.3} s ({rate2} * t)"),
        bucket_allowance(rate2, 0, after),
        sent_between(&arrivals, src, from, u64::MAX),
        TOLERANCE,
    );
    checks.that(
        answer["rate"] == rate2 && answer["burst"] == burst,
        &format!("`limits set` answered the limits in force: {answer}"),
    );
    let limits = json_of(&daemon.cli(&pair.receiver, ["limits", "--json"]));
    checks.that(
        limits["rate"] == rate2 && limits["burst"] == burst,
        &format!(
            "GET /v1/limits (`throttle limits --json`): rate {}, burst {}",
            limits["rate"], limits["burst"]
        ),
    );
    let state_file = daemon.state_dir().join("state.json");
    let state =
        fs::read_to_string(&state_file).unwrap_or_else(|e| panic!("read {}: {e}", state_file.display()));
    let saved: Value = serde_json::from_str(&state)
        .unwrap_or_else(|e| panic!("{} is not JSON ({e}): {state}", state_file.display()));
    checks.that(
        saved["limits"]["rate"] == rate2,
        &format!("{} saved the rate: {}", state_file.display(), saved["limits"]),
    );
    checks.receiver_lost_nothing(&arrivals);
    checks.assert_all();
}

#[test]
fn a_deny_rule_added_then_removed() {
    require_root!();
    let test = "a_deny_rule_added_then_removed";
    let mut checks = Checks::new(test);
    // A limit far above what each source sends: every drop is the rule's.
    let (rate, burst, offered) = (20_000, 20_000, 1_000);
    let phase = Duration::from_secs(2);
    let pair = VethPair::builder().sender_addrs(["10.99.1.1/16", "10.99.1.2/16"]).build();
    let receiver = Receiver::start(&pair.receiver, PORT);
    let daemon = start_daemon(&pair, ["--rate", &rate.to_string(), "--burst", &burst.to_string()], &checks);
    let (denied, other) = (pair.sender_ips()[0], pair.sender_ips()[1]);
    let cidr = format!("{denied}/32");

    let before = stats(&pair, &daemon);
    // A flow from each, `denied` first.
    let flood = Flood::start(&pair.sender, pair.flows(PORT, offered), None);
    thread::sleep(phase);
    let add_asked = mono_ns();
    let added = json_of(&daemon.cli(&pair.receiver, ["rules", "--json", "add", &cidr, "deny"]));
    let add_answered = mono_ns();
    let id = added["id"].as_u64().unwrap_or_else(|| panic!("`rules add` gave no id: {added}")).to_string();
    let listed = json_of(&daemon.cli(&pair.receiver, ["rules", "--json", "list"]));
    thread::sleep(phase);
    let during = stats(&pair, &daemon);
    let rm_asked = mono_ns();
    let removed = daemon.cli(&pair.receiver, ["rules", "rm", &id]);
    let rm_answered = mono_ns();
    let listed_after = json_of(&daemon.cli(&pair.receiver, ["rules", "--json", "list"]));
    thread::sleep(phase);
    let reports = flood.stop();
    let arrivals = receiver.finish(QUIET);
    let after = stats(&pair, &daemon);

    for report in &reports {
        checks.offered(&report.sent_by_source[0].0.ip().to_string(), report, 0.75 * as_f64(offered), OFFERED);
    }
    checks.note(&format!("`rules add {cidr} deny` answered {added}"));
    checks.that(
        listed["rules"].as_array().is_some_and(|rules| {
            rules.len() == 1
                && rules[0]["id"] == added["id"]
                && rules[0]["cidr"] == cidr.as_str()
                && rules[0]["action"] == "deny"
        }),
        &format!("`rules list` shows the rule: {listed}"),
    );
    let first = reports.iter().map(|r| r.first_send_ns).min().expect("two flows");
    let last = reports.iter().map(|r| r.last_send_ns).max().expect("two flows");
    let phases = [
        ("before the rule", first, add_asked, true, true),
        ("while the rule is in force", add_answered, rm_asked, false, true),
        ("after its removal", rm_answered, last, true, true),
    ];
    for (name, from, to, denied_arrives, other_arrives) in phases {
        let secs = secs_between(from, to);
        for (src, arrives) in [(denied, denied_arrives), (other, other_arrives)] {
            let got = sent_between(&arrivals, src, from, to);
            if arrives {
                checks.within(
                    &format!("{name}, {src}: arrived over {secs:.3} s ({offered} * t, all of it)"),
                    bucket_allowance(offered, 0, secs),
                    got,
                    TOLERANCE,
                );
            } else {
                checks.that(got == 0, &format!("{name}, {src}: {got} arrived over {secs:.3} s (none may)"));
            }
        }
    }
    checks.that(removed.exited(EXIT_OK), &format!("`rules rm {id}`: {}", brief(&removed)));
    checks.that(
        listed_after["rules"].as_array().is_some_and(Vec::is_empty),
        &format!("`rules list` after the removal is empty: {listed_after}"),
    );
    let moved = counter(&during, "deny_rule") - counter(&before, "deny_rule");
    checks.at_least(
        "deny_rule counter moved while the rule was in force by",
        0.5 * as_f64(offered) * phase.as_secs_f64(),
        as_f64(moved),
        "half what the denied source sent in that phase, at least",
    );
    // Every datagram of the denied source that did not arrive was denied.
    let sent_denied = reports[0].sent;
    let missing = sent_denied - arrivals.from_source(denied);
    let denied_total = counter(&after, "deny_rule") - counter(&before, "deny_rule");
    checks.within(
        &format!("deny_rule over the run, against {denied}'s {sent_denied} sent less those arrived"),
        as_f64(missing),
        denied_total,
        0.02,
    );
    check_interface_counters(&mut checks, &pair, (&before, &after), denied_total);
    checks.note(&format!(
        "over_limit over the run: {} (the limit is far above the load)",
        counter(&after, "over_limit") - counter(&before, "over_limit")
    ));
    checks.receiver_lost_nothing(&arrivals);
    checks.assert_all();
}

#[test]
fn top_names_the_flooding_source() {
    require_root!();
    let test = "top_names_the_flooding_source";
    let mut checks = Checks::new(test);
    let (rate, burst, heavy_pps, light_pps) = (500, 250, 5_000, 100);
    let pair = VethPair::builder()
        .sender_addrs(["10.99.1.1/16", "10.99.1.2/16", "10.99.1.3/16", "10.99.1.4/16"])
        .build();
    let receiver = Receiver::start(&pair.receiver, PORT);
    let daemon = start_daemon(&pair, ["--rate", &rate.to_string(), "--burst", &burst.to_string()], &checks);
    let sources = pair.sender_ips();
    let heavy = sources[0];
    let flows = sources
        .iter()
        .map(|&src| {
            Flow::new(src, pair.dst_for(src, PORT)).rate(if src == heavy { heavy_pps } else { light_pps })
        })
        .collect();
    let flood = Flood::start(&pair.sender, flows, None);
    thread::sleep(Duration::from_secs(2));

    let top = json_of(&daemon.cli(&pair.receiver, ["top", "-n", "3", "--json"]));
    checks.note(&format!("`throttle top -n 3 --json`: {top}"));
    let listed = top["sources"].as_array().cloned().unwrap_or_default();
    let is_heavy = |s: &Value| s["source"] == heavy.to_string().as_str();
    checks.that(listed.len() == 3, &format!("top -n 3 lists 3 sources (got {})", listed.len()));
    checks.that(
        listed.first().is_some_and(|s| is_heavy(s) && num(s, "dropped") > 0),
        &format!("the first is the flooding source {heavy}, with drops"),
    );
    checks.that(
        listed.iter().skip(1).all(|s| !is_heavy(s) && num(s, "dropped") == 0),
        &format!(
            "the others are light sources under their limit ({light_pps}/s against {rate}/s), without drops"
        ),
    );
    let table = daemon.cli(&pair.receiver, ["top", "-n", "3"]);
    let first_row = table.ok().lines().nth(1).unwrap_or_default().to_owned();
    checks.that(
        first_row.split_whitespace().next() == Some(heavy.to_string().as_str()),
        &format!("`throttle top -n 3` names {heavy} on its first row: {first_row:?}"),
    );
    let before = bucket(&pair, &daemon, heavy);
    checks.that(
        is_heavy(&before)
            && num(&before, "passed") > 0
            && num(&before, "dropped") >= listed.first().map_or(1, |s| num(s, "dropped")),
        &format!("`throttle source {heavy}` shows it passed, and dropped at least what top said: {before}"),
    );

    let reset_asked = mono_ns();
    let reset = daemon.cli(&pair.receiver, ["source", &heavy.to_string(), "--reset"]);
    let reset_answered = mono_ns();
    checks.that(reset.exited(EXIT_OK), &format!("`throttle source {heavy} --reset`: {}", brief(&reset)));
    thread::sleep(Duration::from_secs(1));
    let fresh_at = mono_ns();
    let fresh = bucket(&pair, &daemon, heavy);
    thread::sleep(Duration::from_millis(500));
    let reports = flood.stop();
    let arrivals = receiver.finish(QUIET);
    let last = bucket(&pair, &daemon, heavy);

    checks.offered(&heavy.to_string(), &reports[0], 0.75 * as_f64(heavy_pps), OFFERED);
    checks.note(&format!("`throttle source {heavy}` 1 s after the reset: {fresh}"));
    let judged = |b: &Value| num(b, "passed") + num(b, "dropped");
    checks.that(
        judged(&fresh) < judged(&before),
        &format!(
            "the reset bucket counts afresh: {} judged 1 s after, {} before the reset",
            judged(&fresh),
            judged(&before)
        ),
    );
    let since = secs_between(reset_answered, fresh_at);
    checks.within(
        &format!("{heavy} arrived in the {since:.3} s after the reset (a fresh burst {burst} + {rate} * t)"),
        bucket_allowance(rate, burst, since),
        sent_between(&arrivals, heavy, reset_answered, fresh_at),
        TOLERANCE,
    );
    // The bucket's passed is exactly what arrived since it was made again.
    let passed = num(&last, "passed");
    let (low, high) = (
        sent_between(&arrivals, heavy, reset_answered, u64::MAX),
        sent_between(&arrivals, heavy, reset_asked, u64::MAX),
    );
    checks.that(
        low <= passed && passed <= high,
        &format!("the bucket's passed ({passed}) is what arrived since the reset ({low} to {high})"),
    );
    check_unknown_sources(&mut checks, &pair, &daemon);
    checks.receiver_lost_nothing(&arrivals);
    checks.assert_all();
}

/// A source never seen is not found (exit 4); a name that is no address is
/// refused with the API's message (exit 1).
fn check_unknown_sources(checks: &mut Checks, pair: &VethPair, daemon: &Daemon) {
    let missing = daemon.cli(&pair.receiver, ["source", "198.51.100.99"]);
    checks.that(
        missing.exited(EXIT_NOT_FOUND) && !missing.stderr.trim().is_empty(),
        &format!(
            "`throttle source 198.51.100.99` (never seen), exit {EXIT_NOT_FOUND} expected: {}",
            brief(&missing)
        ),
    );
    let bad = daemon.cli(&pair.receiver, ["source", "not-an-address"]);
    checks.that(
        bad.exited(EXIT_API_ERROR) && bad.stderr.contains("not an IP address"),
        &format!(
            "`throttle source not-an-address`, exit {EXIT_API_ERROR} and the API's message expected: {}",
            brief(&bad)
        ),
    );
}

/// What a restart test saw of the daemon, and when (monotonic ns).
struct Restart {
    /// `/v1/stats` and the flooding source's bucket before the kill.
    stats1: Value,
    bucket1: Value,
    bucket1_at: u64,
    /// The daemon was reaped after its SIGKILL.
    dead_at: u64,
    /// The next daemon was started, then logged that it is ready.
    restarted_at: u64,
    ready_at: u64,
    /// `/v1/stats` and the bucket after the restart.
    stats2: Value,
    bucket2: Value,
    bucket2_at: u64,
}

#[test]
fn a_sigkill_and_restart_under_traffic_keeps_metering() {
    require_root!();
    let test = "a_sigkill_and_restart_under_traffic_keeps_metering";
    let mut checks = Checks::new(test);
    // The flags say rate 500; the API sets 1 000 before the flood, so a
    // restart that lost the saved state would show as a halved rate.
    let (flag_rate, rate, burst, offered, denied_pps) = (500, 1_000, 200, 5_000, 500);
    let pair = VethPair::builder().sender_addrs(["10.99.1.1/16", "10.99.1.2/16"]).build();
    let receiver = Receiver::start(&pair.receiver, PORT);
    let mut daemon =
        start_daemon(&pair, ["--rate", &flag_rate.to_string(), "--burst", &burst.to_string()], &checks);
    let (src, denied) = (pair.sender_ips()[0], pair.sender_ips()[1]);
    let _ = daemon.cli(&pair.receiver, ["limits", "set", "--rate", &rate.to_string()]).ok();
    let rule =
        json_of(&daemon.cli(&pair.receiver, ["rules", "--json", "add", &format!("{denied}/32"), "deny"]));

    let flood = Flood::start(
        &pair.sender,
        vec![
            Flow::new(src, pair.dst_for(src, PORT)).rate(offered),
            Flow::new(denied, pair.dst_for(denied, PORT)).rate(denied_pps),
        ],
        None,
    );
    // Measurement phases, not waits for a condition.
    thread::sleep(Duration::from_secs(2));
    let stats1 = stats(&pair, &daemon);
    let bucket1_at = mono_ns();
    let bucket1 = bucket(&pair, &daemon, src);
    let killed_at = mono_ns();
    let status = daemon.kill();
    let dead_at = mono_ns();
    checks.note(&format!(
        "SIGKILL: the daemon exited {status:?}, reaped {:.1} ms after the signal",
        secs_between(killed_at, dead_at) * 1e3
    ));
    let attached = pair.xdp_attachment();
    checks.that(!attached.is_empty(), &format!("with the daemon dead, XDP stays attached: {attached:?}"));
    thread::sleep(Duration::from_secs(2));
    let mark = daemon.log_len();
    let restarted_at = mono_ns();
    daemon.start_again(&pair.receiver);
    let ready_at = daemon.wait_ready(daemon::READY_TIMEOUT);
    checks.that(
        daemon.log().get(mark..).is_some_and(|log| log.contains(ADOPTED_LINE)),
        &format!("the restarted daemon logged {ADOPTED_LINE:?}"),
    );
    thread::sleep(Duration::from_secs(2));
    let stats2 = stats(&pair, &daemon);
    let bucket2_at = mono_ns();
    let bucket2 = bucket(&pair, &daemon, src);
    let limits = json_of(&daemon.cli(&pair.receiver, ["limits", "--json"]));
    let rules = json_of(&daemon.cli(&pair.receiver, ["rules", "--json", "list"]));
    let reports = flood.stop();
    let arrivals = receiver.finish(QUIET);
    let run =
        Restart { stats1, bucket1, bucket1_at, dead_at, restarted_at, ready_at, stats2, bucket2, bucket2_at };

    checks.offered(&src.to_string(), &reports[0], 0.75 * as_f64(offered), OFFERED);
    check_metered_throughout(&mut checks, &arrivals, &reports[0], &run, (rate, burst, offered));
    check_carried_over(&mut checks, &arrivals, src, &run);
    // The restarted daemon found the interface's counters where they were.
    let (i1, i2) = (
        iface_counter(&run.stats1, &pair.rx_if, "passed"),
        iface_counter(&run.stats2, &pair.rx_if, "passed"),
    );
    checks.that(
        i2 >= i1 && i1 > 0,
        &format!("{}'s own passed counter carried on: {i1} before the kill, {i2} after", pair.rx_if),
    );
    checks.that(
        arrivals.from_source(denied) == 0,
        &format!(
            "{denied}, denied by a rule added through the API: {} of {} arrived (none may, across the restart)",
            arrivals.from_source(denied),
            reports[1].sent
        ),
    );
    checks.that(
        limits["rate"] == rate && limits["burst"] == burst,
        &format!(
            "the limits set through the API are in force after the restart (flags say rate {flag_rate}): {limits}"
        ),
    );
    checks.that(
        rules["rules"]
            .as_array()
            .is_some_and(|r| r.len() == 1 && r[0]["id"] == rule["id"] && r[0]["action"] == "deny"),
        &format!(
            "the rule added through the API is still there after the restart, with its id {}: {rules}",
            rule["id"]
        ),
    );
    checks.receiver_lost_nothing(&arrivals);
    checks.assert_all();
}

/// The flooding source got one burst and then the rate over the whole run:
/// while no daemon ran, while the next one started, and after.
fn check_metered_throughout(
    checks: &mut Checks,
    arrivals: &Arrivals,
    report: &FlowReport,
    run: &Restart,
    (rate, burst, offered): (u64, u64, u64),
) {
    let src = report.sent_by_source[0].0.ip();
    // While dead: the pinned program meters alone, at the rate, not the flood.
    let dead = secs_between(run.dead_at, run.restarted_at);
    let got_dead = sent_between(arrivals, src, run.dead_at, run.restarted_at);
    checks.within(
        &format!("while the daemon was dead: arrived over {dead:.3} s ({rate} * t)"),
        bucket_allowance(rate, 0, dead),
        got_dead,
        TOLERANCE,
    );
    checks.below(
        "while the daemon was dead: arrived",
        0.5 * as_f64(offered) * dead,
        got_dead,
        "half the flood: an unmetered interface would let all of it through",
    );
    let starting = secs_between(run.restarted_at, run.ready_at);
    checks.note(&format!(
        "while the new daemon started ({starting:.3} s): {} arrived ({rate} * t = {:.0})",
        sent_between(arrivals, src, run.restarted_at, run.ready_at),
        bucket_allowance(rate, 0, starting)
    ));
    // From the restart on, the bucket was empty and refilled at the rate: a
    // fresh burst at the takeover would add `burst` on top.
    let since = secs_between(run.restarted_at, report.last_send_ns);
    let got_since = sent_between(arrivals, src, run.restarted_at, u64::MAX);
    checks.within(
        &format!("since the restart: arrived over {since:.3} s ({rate} * t)"),
        bucket_allowance(rate, 0, since),
        got_since,
        TOLERANCE,
    );
    checks.below(
        &format!("since the restart: arrived over {since:.3} s"),
        bucket_allowance(rate, 0, since) + 0.5 * bucket_allowance(0, burst, 0.0),
        got_since,
        &format!("{rate} * t is the most an emptied bucket refills; a fresh burst would add {burst}"),
    );
    // The limit held over the whole run: one burst, then the rate.
    checks.within(
        &format!("over the whole run: arrived over {:.3} s (burst {burst} + {rate} * t)", report.secs()),
        bucket_allowance(rate, burst, report.secs()),
        arrivals.from_source(src),
        0.05,
    );
}

/// The verdict counters and the source's bucket went on from where they
/// were at the kill.
fn check_carried_over(checks: &mut Checks, arrivals: &Arrivals, src: IpAddr, run: &Restart) {
    for name in ["passed", "over_limit", "deny_rule", "new_source"] {
        let (c1, c2) = (counter(&run.stats1, name), counter(&run.stats2, name));
        checks.that(
            c2 >= c1,
            &format!("counter {name} carried on: {c1} before the kill, {c2} after the restart"),
        );
    }
    // `new_source` may move for another source (the sender's IPv6
    // link-local address, whose router solicitations and MLD reports come
    // when they come): the flood's own bucket is what must carry on, below.
    let (new1, new2) = (counter(&run.stats1, "new_source"), counter(&run.stats2, "new_source"));
    checks.note(&format!("new_source: {new1} before the kill, {new2} after the restart"));
    checks.note(&format!(
        "{src}'s bucket before the kill: {}; after the restart: {}",
        run.bucket1, run.bucket2
    ));
    let (p1, p2) = (num(&run.bucket1, "passed"), num(&run.bucket2, "passed"));
    let (d1, d2) = (num(&run.bucket1, "dropped"), num(&run.bucket2, "dropped"));
    checks.that(
        p2 >= p1 && d2 > d1,
        &format!("the bucket's passed ({p1} -> {p2}) and dropped ({d1} -> {d2}) carried on"),
    );
    // What the bucket passed between the two reads is what arrived then: a
    // bucket made afresh would have lost the first read's count.
    checks.within(
        &format!(
            "the bucket's passed between its two reads ({:.3} s apart), against the arrivals then",
            secs_between(run.bucket1_at, run.bucket2_at)
        ),
        as_f64(sent_between(arrivals, src, run.bucket1_at, run.bucket2_at)),
        p2.saturating_sub(p1),
        0.05,
    );
}

#[test]
fn the_token_is_enforced_beyond_loopback() {
    require_root!();
    let test = "the_token_is_enforced_beyond_loopback";
    let mut checks = Checks::new(test);
    let token = "s3cret-token-of-the-test";
    let pair = VethPair::builder().sender_addr("10.99.1.1/16").build();
    let listen = pair.receiver_ip_for(pair.sender_ips()[0]);
    let daemon = Daemon::builder(&pair.receiver, &pair.rx_if).admin_ip(listen).token(token).start_ready();
    let base = format!("http://{}", daemon.admin());
    checks.note(&format!("admin API on {base}, reached with curl from the sender's namespace"));
    let token_file = daemon.token_file().expect("a token was given").to_owned();

    let right = format!("Authorization: Bearer {token}");
    let basic = format!("Authorization: Basic {token}");
    let cases: [(&str, Vec<&str>, u16, Option<&str>); 7] = [
        ("/v1/status", vec![], 401, Some("unauthorized")),
        ("/v1/status", vec!["Authorization: Bearer not-the-token"], 401, Some("unauthorized")),
        ("/v1/status", vec![&basic], 401, Some("unauthorized")),
        ("/metrics", vec![], 401, Some("unauthorized")),
        ("/v1/status", vec![&right], 200, None),
        ("/healthz", vec![], 200, None),
        ("/readyz", vec![], 200, None),
    ];
    for (path, headers, want, code) in &cases {
        let (status, body) = pair.sender.curl("GET", &format!("{base}{path}"), headers, None);
        let shown = headers.first().map_or_else(|| "no token".to_owned(), |h| h.replace(token, "<token>"));
        let code_ok = code.is_none_or(|code| {
            serde_json::from_str::<Value>(&body)
                .is_ok_and(|v| v["error"]["code"] == code && v["error"]["message"].is_string())
        });
        checks.that(
            status == *want && code_ok,
            &format!(
                "GET {path} with {shown}: {status} (expected {want}{}); body {}",
                code.map_or(String::new(), |c| format!(", code {c:?}")),
                body.trim()
            ),
        );
        if status == 200 && *path == "/v1/status" {
            let view: Value = serde_json::from_str(&body).unwrap_or_default();
            checks.that(
                view["ready"] == true,
                &format!("the status with the token says ready: {}", body.trim()),
            );
        }
    }
    // The client from the sender's namespace: with the token file, and without.
    let client = |extra: &[&str]| {
        let mut cmd = pair.sender.command(throttle_bin());
        cmd.args(["status", "--json", "--admin", &daemon.admin().to_string()])
            .args(extra)
            .env_remove("THROTTLE_TOKEN");
        cmd.stdin(Stdio::null()).output().expect("run the client")
    };
    let with = client(&["--token-file", &token_file.display().to_string()]);
    checks.that(
        with.status.code() == Some(EXIT_OK),
        &format!(
            "`throttle status --token-file FILE` from the sender: {} {}",
            with.status,
            String::from_utf8_lossy(&with.stderr).trim()
        ),
    );
    let without = client(&[]);
    let stderr = String::from_utf8_lossy(&without.stderr);
    checks.that(
        without.status.code() == Some(EXIT_API_ERROR) && stderr.contains("Authorization: Bearer"),
        &format!(
            "`throttle status` without a token: {} with the API's message {:?}",
            without.status,
            stderr.trim()
        ),
    );
    drop(daemon);
    checks.that(!xdp_attached(&pair), "the first daemon stopped and detached");

    // Beyond loopback without a token: refused before anything is attached.
    let mut exposed = Daemon::builder(&pair.receiver, &pair.rx_if).admin_ip(listen).start();
    let exited = exposed.wait_exit(daemon::READY_TIMEOUT);
    let log = exposed.log();
    checks.that(
        exited.is_some_and(|s| !s.success()),
        &format!("a daemon on {} without --token-file exits with a failure: {exited:?}", exposed.admin()),
    );
    checks.that(log.contains("--token-file"), &format!("its message names --token-file: {:?}", log.trim()));
    checks.that(!xdp_attached(&pair), "it attached nothing");
    checks.that(
        !exposed.pin_dir().exists(),
        &format!("it pinned nothing ({} does not exist)", exposed.pin_dir().display()),
    );
    checks.assert_all();
}

/// Whether the pin directory holds the bucket map and a link for `iface`.
fn pinned(pin_dir: &Path, iface: &str) -> bool {
    let link = ["native", "generic"].iter().any(|mode| pin_dir.join("links").join(mode).join(iface).exists());
    pin_dir.join("maps/BUCKETS").exists() && link
}

#[test]
fn a_clean_stop_removes_the_pins_and_keep_on_exit_keeps_them() {
    require_root!();
    let test = "a_clean_stop_removes_the_pins_and_keep_on_exit_keeps_them";
    let mut checks = Checks::new(test);
    let (rate, burst, offered) = (500, 250, 5_000);
    let limit = ["--rate", "500", "--burst", "250"];
    let pair = VethPair::builder().sender_addr("10.99.1.1/16").build();
    let src = pair.sender_ips()[0];

    // A plain stop: everything goes.
    let mut daemon = start_daemon(&pair, limit, &checks);
    checks.that(
        pinned(daemon.pin_dir(), &pair.rx_if),
        &format!("running, the maps and the link are pinned under {}", daemon.pin_dir().display()),
    );
    let status = daemon.stop();
    checks.that(
        status.is_some_and(|s| s.success()),
        &format!("SIGTERM: the daemon exits cleanly ({status:?})"),
    );
    checks.that(daemon.log().contains("detaching"), "it logged that it detaches");
    checks.that(
        !daemon.pin_dir().exists(),
        &format!("its pin directory {} is gone", daemon.pin_dir().display()),
    );
    checks.that(!xdp_attached(&pair), &format!("`ip -d link show {}` shows no XDP", pair.rx_if));
    drop(daemon);

    // With --keep-on-exit: everything stays, enforcing, for the next daemon.
    let mut args = limit.to_vec();
    args.push("--keep-on-exit");
    let mut daemon = start_daemon(&pair, &args, &checks);
    let status = daemon.stop();
    checks.that(
        status.is_some_and(|s| s.success()),
        &format!("SIGTERM with --keep-on-exit: a clean exit ({status:?})"),
    );
    checks.that(
        pinned(daemon.pin_dir(), &pair.rx_if),
        &format!("the maps and the link stay pinned under {}", daemon.pin_dir().display()),
    );
    let left = pair.xdp_attachment();
    checks.that(!left.is_empty(), &format!("XDP stays attached: {left:?}"));
    // With no daemon at all, the program left behind still meters.
    let (report, arrivals) =
        throttle_tests::flood_once(&pair, src, PORT, offered, Duration::from_millis(1_500), QUIET);
    checks.offered(&src.to_string(), &report, 0.75 * as_f64(offered), OFFERED);
    checks.within(
        &format!("with no daemon running: arrived over {:.3} s (burst {burst} + {rate} * t)", report.secs()),
        bucket_allowance(rate, burst, report.secs()),
        arrivals.from_source(src),
        TOLERANCE,
    );
    checks.receiver_lost_nothing(&arrivals);

    let mark = daemon.log_len();
    daemon.start_again(&pair.receiver);
    daemon.wait_ready(daemon::READY_TIMEOUT);
    checks.that(
        daemon.log().get(mark..).is_some_and(|log| log.contains(ADOPTED_LINE)),
        &format!("the next daemon logged {ADOPTED_LINE:?}"),
    );
    let status_json = json_of(&daemon.cli(&pair.receiver, ["status", "--json"]));
    checks.that(status_json["ready"] == true, &format!("it is ready and answers: {status_json}"));
    let adopted_bucket = bucket(&pair, &daemon, src);
    checks.that(
        num(&adopted_bucket, "passed") == arrivals.from_source(src),
        &format!(
            "{src}'s bucket, metered while no daemon ran, carried over: {adopted_bucket}, {} arrived",
            arrivals.from_source(src)
        ),
    );
    checks.that(!pair.xdp_attachment().is_empty(), &format!("XDP attached: {}", pair.xdp_attachment()));
    checks.assert_all();
}

/// Everything under `dir`, relative to it, sorted; empty when it is gone.
fn pin_list(dir: &Path) -> Vec<String> {
    throttle_tests::tree(dir)
}

/// The id of the XDP program `ip -d link` shows on `iface` in `ns`.
fn xdp_prog_id(ns: &throttle_tests::Netns, iface: &str) -> Option<u64> {
    let out = ns.ip(["-d", "link", "show", "dev", iface]);
    let words: Vec<&str> = out.split_whitespace().collect();
    let at = words.iter().position(|w| *w == "prog/xdp")?;
    words.get(at + 2).and_then(|id| id.parse().ok())
}

/// Waits for a daemon that is to fail its start; panics when it still runs.
fn failed_start(daemon: &mut Daemon, checks: &mut Checks, what: &str) {
    let exited = daemon.wait_exit(daemon::READY_TIMEOUT);
    checks.that(
        exited.is_some_and(|s| !s.success()),
        &format!("{what}: the daemon exits with a failure ({exited:?})"),
    );
}

#[test]
fn a_start_that_fails_leaves_no_pins_and_attaches_nothing() {
    require_root!();
    let test = "a_start_that_fails_leaves_no_pins_and_attaches_nothing";
    let mut checks = Checks::new(test);

    // An interface that does not exist.
    let ns = throttle_tests::Netns::new();
    let mut daemon = Daemon::builder(&ns, "nosuch0").start();
    failed_start(&mut daemon, &mut checks, "--iface nosuch0");
    checks.note(&format!("its log: {}", daemon.log().trim()));
    checks.that(
        pin_list(daemon.pin_dir()).is_empty() && !daemon.pin_dir().exists(),
        &format!("--iface nosuch0 leaves no pins: {:?}", pin_list(daemon.pin_dir())),
    );
    drop(daemon);

    // A good interface and a bad one: both or neither.
    let pair = VethPair::builder().build();
    let mut daemon = Daemon::builder(&pair.receiver, &pair.rx_if).iface("nosuch0").start();
    failed_start(&mut daemon, &mut checks, &format!("--iface {} --iface nosuch0", pair.rx_if));
    checks.that(
        !daemon.pin_dir().exists(),
        &format!("a good and a bad interface leave no pins: {:?}", pin_list(daemon.pin_dir())),
    );
    checks.that(
        !xdp_attached(&pair),
        &format!("the good interface {} is left unattached: {:?}", pair.rx_if, pair.xdp_attachment()),
    );
    drop(daemon);

    // A state file that does not parse, found once the maps are loaded.
    let mut daemon = Daemon::builder(&pair.receiver, &pair.rx_if).start_ready();
    daemon.stop();
    fs::write(daemon.state_dir().join("state.json"), "{\"format\": 1, \"limits\": ")
        .expect("write the state file");
    daemon.start_again(&pair.receiver);
    failed_start(&mut daemon, &mut checks, "a corrupt state file");
    checks.that(
        daemon.log().contains("is corrupt"),
        &format!("it names the corrupt state file: {:?}", daemon.log().lines().last()),
    );
    checks.that(
        !daemon.pin_dir().exists(),
        &format!("a corrupt state file leaves no pins: {:?}", pin_list(daemon.pin_dir())),
    );
    checks.that(!xdp_attached(&pair), "and no XDP program");
    checks.assert_all();
}

#[test]
fn a_second_daemon_refused_an_interface_leaves_the_first_as_it_was() {
    require_root!();
    let test = "a_second_daemon_refused_an_interface_leaves_the_first_as_it_was";
    let mut checks = Checks::new(test);
    let pair = VethPair::builder().build();
    // Another interface of the receiver's namespace, free.
    let free = format!("fr{}", throttle_tests::unique_id());
    pair.receiver.ip(["link", "add", &free, "type", "veth", "peer", "name", &format!("{free}p")]);
    pair.receiver.ip(["link", "set", &free, "up"]);
    let first = start_daemon(&pair, ["--rate", "100", "--burst", "100"], &checks);
    let pins_before = pin_list(first.pin_dir());
    let prog_before = xdp_prog_id(&pair.receiver, &pair.rx_if);

    // The free interface first: it is attached before the busy one fails.
    let mut second = Daemon::builder(&pair.receiver, &free).iface(&pair.rx_if).admin_port(9841).start();
    failed_start(&mut second, &mut checks, &format!("a second daemon on {free} and {}", pair.rx_if));
    checks.note(&format!("its log: {}", second.log().trim()));
    checks.that(
        !second.pin_dir().exists(),
        &format!("the second daemon leaves no pins: {:?}", pin_list(second.pin_dir())),
    );
    checks.that(
        xdp_prog_id(&pair.receiver, &free).is_none(),
        &format!("{free}, which the second daemon attached first, is detached again"),
    );
    checks.that(
        pin_list(first.pin_dir()) == pins_before,
        &format!("the first daemon's pins are as they were: {:?}", pin_list(first.pin_dir())),
    );
    checks.that(
        xdp_prog_id(&pair.receiver, &pair.rx_if) == prog_before,
        &format!("the first daemon's program still runs on {} ({prog_before:?})", pair.rx_if),
    );
    let (ready, _) = pair.receiver.curl("GET", &format!("http://{}/readyz", first.admin()), &[], None);
    checks.that(ready == 200, &format!("the first daemon is still ready: {ready}"));
    checks.assert_all();
}

#[test]
fn a_failed_restart_leaves_the_adopted_pins_as_they_were() {
    require_root!();
    let test = "a_failed_restart_leaves_the_adopted_pins_as_they_were";
    let mut checks = Checks::new(test);
    let pair = VethPair::builder().build();
    let mut first = start_daemon(&pair, ["--rate", "100", "--burst", "100", "--keep-on-exit"], &checks);
    first.stop();
    let pins_before = pin_list(first.pin_dir());
    let prog_before = xdp_prog_id(&pair.receiver, &pair.rx_if);
    checks.that(prog_before.is_some() && !pins_before.is_empty(), "--keep-on-exit left the program attached");

    let mut next = Daemon::builder(&pair.receiver, &pair.rx_if)
        .iface("nosuch0")
        .pin_dir(first.pin_dir())
        .args(["--rate", "100", "--burst", "100"])
        .start();
    failed_start(&mut next, &mut checks, &format!("a restart on {} and nosuch0", pair.rx_if));
    checks.that(
        pin_list(first.pin_dir()) == pins_before,
        &format!("the pins it found are as they were: {:?}", pin_list(first.pin_dir())),
    );
    checks.that(
        xdp_prog_id(&pair.receiver, &pair.rx_if) == prog_before,
        &format!("the program it found still runs on {} ({prog_before:?})", pair.rx_if),
    );
    checks.assert_all();
}

/// Runs `chattr` on `path`; panics with its output when it fails.
fn chattr(flag: &str, path: &Path) {
    let out = std::process::Command::new("chattr")
        .args([flag, &path.display().to_string()])
        .output()
        .unwrap_or_else(|e| panic!("cannot run chattr (e2fsprogs): {e}"));
    assert!(
        out.status.success(),
        "chattr {flag} {}: {} (the test's state directory must be on a file system with the \
         immutable flag: ext4, xfs, btrfs, tmpfs)",
        path.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Clears the immutable flag of a file on drop, whatever happened.
struct Immutable<'a>(&'a Path);

impl Drop for Immutable<'_> {
    fn drop(&mut self) {
        let _ = std::process::Command::new("chattr").args(["-i", &self.0.display().to_string()]).status();
    }
}

#[test]
fn a_change_the_state_file_refuses_is_never_enforced() {
    require_root!();
    let test = "a_change_the_state_file_refuses_is_never_enforced";
    let mut checks = Checks::new(test);
    let (changes, offered) = (40, 5_000);
    let pair = VethPair::builder().sender_addrs(["10.99.1.1/16"]).build();
    let receiver = Receiver::start(&pair.receiver, PORT);
    let daemon = start_daemon(&pair, ["--rate", "100000", "--burst", "100000"], &checks);
    let src = pair.sender_ips()[0];
    let url = |path: &str| format!("http://{}{path}", daemon.admin());

    // A first change, saved: the state file exists, then is made immutable.
    let allow = r#"{"cidr": "10.98.0.0/16", "action": "allow"}"#;
    let (status, body) = pair.receiver.curl("POST", &url("/v1/rules"), &[], Some(allow));
    assert_eq!(status, 201, "the first rule is added: {body}");
    let state_file = daemon.state_dir().join("state.json");
    let saved = fs::read(&state_file).unwrap_or_else(|e| panic!("read {}: {e}", state_file.display()));
    chattr("+i", &state_file);
    let immutable = Immutable(&state_file);
    let rules_before = daemon.api_get(&pair.receiver, "/v1/rules");
    let version_before = daemon.api_get(&pair.receiver, "/v1/status")["config_version"].clone();

    let flood = Flood::start(&pair.sender, vec![Flow::new(src, pair.dst_for(src, PORT)).rate(offered)], None);
    thread::sleep(Duration::from_millis(500));
    let before = stats(&pair, &daemon);
    let deny = format!(r#"{{"cidr": "{src}/32", "action": "deny"}}"#);
    let mut answers = Vec::new();
    for _ in 0..changes {
        answers.push(pair.receiver.curl("POST", &url("/v1/rules"), &[], Some(&deny)));
    }
    thread::sleep(Duration::from_millis(300));
    let after = stats(&pair, &daemon);
    let reports = flood.stop();
    let arrivals = receiver.finish(QUIET);
    drop(immutable);

    checks.offered(&src.to_string(), &reports[0], 0.5 * as_f64(offered), OFFERED);
    let refused = answers.iter().filter(|(status, _)| (500..600).contains(status)).count();
    checks.that(
        refused == changes,
        &format!("{refused} of {changes} changes were answered 5xx; the first: {:?}", answers.first()),
    );
    let denied = counter(&after, "deny_rule") - counter(&before, "deny_rule");
    checks.that(denied == 0, &format!("no packet met the refused deny rule: deny_rule moved {denied}"));
    let rules_after = daemon.api_get(&pair.receiver, "/v1/rules");
    checks.that(rules_after == rules_before, &format!("the rules are as they were: {rules_after}"));
    let version = daemon.api_get(&pair.receiver, "/v1/status")["config_version"].clone();
    checks.that(
        version == version_before,
        &format!("the maps were not written: configuration version {version} (was {version_before})"),
    );
    let now = fs::read(&state_file).unwrap_or_default();
    checks.that(now == saved, "the state file is as it was");
    let (health, _) = pair.receiver.curl("GET", &url("/healthz"), &[], None);
    checks.that(health == 200, &format!("the daemon keeps running: /healthz {health}"));
    checks.note(&format!("{} of {} sent arrived", arrivals.from_source(src), reports[0].sent));
    checks.assert_all();
}

/// The value of `throttle_interface_attached` for `iface` in `/metrics`.
fn attached_metric(pair: &VethPair, daemon: &Daemon) -> Option<String> {
    let (_, text) = pair.receiver.curl("GET", &format!("http://{}/metrics", daemon.admin()), &[], None);
    let label = format!("interface=\"{}\"", pair.rx_if);
    text.lines()
        .find(|l| l.starts_with("throttle_interface_attached{") && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next())
        .map(str::to_owned)
}

/// The `state` the status gives the receiving interface.
fn iface_state(pair: &VethPair, daemon: &Daemon) -> String {
    let status = daemon.api_get(&pair.receiver, "/v1/status");
    status["interfaces"]
        .as_array()
        .and_then(|ifaces| ifaces.iter().find(|i| i["name"] == pair.rx_if.as_str()))
        .map_or_else(
            || format!("not listed in {status}"),
            |i| i["state"].as_str().unwrap_or("none").to_owned(),
        )
}

#[test]
fn an_interface_deleted_and_made_again_is_reported_and_attached_again() {
    require_root!();
    let test = "an_interface_deleted_and_made_again_is_reported_and_attached_again";
    let mut checks = Checks::new(test);
    let (rate, burst, offered) = (100, 100, 1_000);
    let pair = VethPair::builder().sender_addr("10.99.1.1/16").build();
    let mut daemon =
        start_daemon(&pair, ["--rate", &rate.to_string(), "--burst", &burst.to_string()], &checks);
    let readyz = |daemon: &Daemon| {
        pair.receiver.curl("GET", &format!("http://{}/readyz", daemon.admin()), &[], None).0
    };
    let mode = daemon.api_get(&pair.receiver, "/v1/status")["interfaces"][0]["mode"].clone();
    checks.that(readyz(&daemon) == 200, "ready once attached");

    let mark = daemon.log_len();
    pair.delete();
    let gap = throttle_tests::poll_until(Duration::from_secs(15), Duration::from_millis(100), || {
        (readyz(&daemon) == 503).then_some(())
    });
    checks.that(gap.is_some(), &format!("/readyz answers 503 once {} is gone", pair.rx_if));
    let state = iface_state(&pair, &daemon);
    checks.that(state == "missing", &format!("the status says {} is missing: {state}", pair.rx_if));
    let metric = attached_metric(&pair, &daemon);
    checks.that(metric.as_deref() == Some("0"), &format!("throttle_interface_attached is 0: {metric:?}"));
    let gone_logged = daemon.log().get(mark..).is_some_and(|l| l.contains(&pair.rx_if) && l.contains("gone"));
    checks.that(gone_logged, "the daemon logged that the interface is gone");

    pair.recreate();
    let back = throttle_tests::poll_until(Duration::from_secs(15), Duration::from_millis(100), || {
        (readyz(&daemon) == 200 && xdp_attached(&pair)).then_some(())
    });
    checks.that(back.is_some(), &format!("attached again and ready: {:?}", pair.xdp_attachment()));
    let status = daemon.api_get(&pair.receiver, "/v1/status");
    checks.that(
        status["interfaces"][0]["mode"] == mode && status["interfaces"][0]["state"] == "attached",
        &format!("in the mode it had ({mode}): {status}"),
    );
    let metric = attached_metric(&pair, &daemon);
    checks.that(metric.as_deref() == Some("1"), &format!("throttle_interface_attached is 1: {metric:?}"));
    daemon.wait_for_log("attached again", mark, Duration::from_secs(5));

    // Metered again: a flood over the limit is held to it.
    let src = pair.sender_ips()[0];
    let (report, arrivals) =
        throttle_tests::flood_once(&pair, src, PORT, offered, Duration::from_secs(3), QUIET);
    checks.offered(&src.to_string(), &report, 0.75 * as_f64(offered), OFFERED);
    checks.within(
        &format!("after the return: arrived over {:.3} s (burst {burst} + {rate} * t)", report.secs()),
        bucket_allowance(rate, burst, report.secs()),
        arrivals.from_source(src),
        TOLERANCE,
    );
    checks.assert_all();
}
