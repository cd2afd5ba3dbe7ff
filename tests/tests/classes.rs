//! End to end, as root: limit classes in the real daemon, from its
//! configuration file, with real traffic from several sources at once.
//!
//! Every flood offers many times its bound, so what arrives is what the
//! buckets admit. For a class of several limits that is the smallest of
//! their allowances; for a prefix tier, one allowance shared by the sources
//! of the prefix. Counts must land within 10 % of that.

use std::time::Duration;

use throttle_tests::{
    measure::bucket_allowance, require_root, Checks, Daemon, Flood, Flow, Receiver, VethPair,
};

/// How far a count may stray from its allowance.
const TOLERANCE: f64 = 0.10;
/// Offered load of each flood.
const FLOOD_PPS: u64 = 4_000;
/// How long each flood lasts.
const FLOOD_TIME: Duration = Duration::from_secs(4);
/// How long the receivers must be quiet before they are done.
const QUIET: Duration = Duration::from_millis(300);

const DNS_PORT: u16 = 5353;
const GAME_PORTS: [u16; 2] = [27_001, 27_005];
const OTHER_PORT: u16 = 9000;

const CONFIG: &str = r#"
[limits]
rate = 300
burst = 100

[[classes]]
name = "dns"
match = [{ proto = "udp", ports = "5353" }]
limits = [{ rate = "400/second", burst = 100 }, { rate = "1200/minute", burst = 200 }]

[[classes]]
name = "game"
match = [{ proto = "udp", ports = "27000-27010" }]
limits = [{ rate = "50/s", burst = 50 }]
ipv4_prefix = 24
"#;

#[test]
fn classes_meter_their_ports_at_once_each_within_its_bound() {
    require_root!();
    let test = "classes_meter_their_ports_at_once_each_within_its_bound";
    let mut checks = Checks::new(test);
    let pair = VethPair::builder().sender_addrs(["10.99.5.1/16", "10.99.5.2/16", "10.99.5.3/16"]).build();
    let sources = pair.sender_ips();
    let receivers: Vec<(u16, Receiver)> = [DNS_PORT, GAME_PORTS[0], GAME_PORTS[1], OTHER_PORT]
        .into_iter()
        .map(|port| (port, Receiver::start(&pair.receiver, port)))
        .collect();
    // Alive until the checks are judged, so that a failure prints its log.
    let _daemon = Daemon::builder(&pair.receiver, &pair.rx_if).config(CONFIG).start_ready();
    checks.note(&format!("daemon ready on {} ({})", pair.rx_if, pair.xdp_attachment()));

    let flow = |src, port| Flow::new(src, pair.dst_for(src, port)).rate(FLOOD_PPS);
    let flows = vec![
        // One source on DNS: its per-minute limit binds.
        flow(sources[0], DNS_PORT),
        // Two sources of one /24 on the game ports: one tier of a bucket.
        flow(sources[1], GAME_PORTS[0]),
        flow(sources[2], GAME_PORTS[1]),
        // Unmatched traffic: the default class.
        flow(sources[0], OTHER_PORT),
    ];
    let reports = Flood::start(&pair.sender, flows, Some(FLOOD_TIME)).join();
    let arrivals: Vec<(u16, u64)> = receivers
        .into_iter()
        .map(|(port, receiver)| (port, receiver.finish(QUIET).count(|_| true)))
        .collect();
    let arrived = |port: u16| arrivals.iter().find(|(p, _)| *p == port).map_or(0, |(_, n)| *n);

    for report in &reports {
        checks.offered("a flood", report, 2_000.0, "far over every bound");
    }
    let secs = reports[0].secs();
    let dns = bucket_allowance(400, 100, secs).min(200.0 + 1_200.0 / 60.0 * secs);
    checks.within(
        &format!("dns from {}: the smaller of its two limits over {secs:.3} s", sources[0]),
        dns,
        arrived(DNS_PORT),
        TOLERANCE,
    );
    let game_secs = reports[1].secs().max(reports[2].secs());
    checks.within(
        &format!(
            "game from {} and {}: one bucket for their /24 over {game_secs:.3} s",
            sources[1], sources[2]
        ),
        bucket_allowance(50, 50, game_secs),
        arrived(GAME_PORTS[0]) + arrived(GAME_PORTS[1]),
        TOLERANCE,
    );
    let other_secs = reports[3].secs();
    checks.within(
        &format!("unmatched port {OTHER_PORT} from {}: the default limit over {other_secs:.3} s", sources[0]),
        bucket_allowance(300, 100, other_secs),
        arrived(OTHER_PORT),
        TOLERANCE,
    );
    checks.assert_all();
}

#[test]
fn a_ban_starts_is_listed_and_ends() {
    require_root!();
    let test = "a_ban_starts_is_listed_and_ends";
    let mut checks = Checks::new(test);
    let pair = VethPair::builder().sender_addrs(["10.99.6.1/16"]).build();
    let src = pair.sender_ips()[0];
    let receiver = Receiver::start(&pair.receiver, 7777);
    let config = r#"
        [[classes]]
        name = "game"
        match = [{ proto = "udp", ports = "7777" }]
        limits = [{ rate = 10, burst = 10 }]
        ban = { after = "1s", duration = "3s" }
    "#;
    let daemon = Daemon::builder(&pair.receiver, &pair.rx_if).config(config).start_ready();
    // Over its limit for 2 s in a row: banned after the first.
    let flood = Flood::start(
        &pair.sender,
        vec![Flow::new(src, pair.dst_for(src, 7777)).rate(1_000)],
        Some(Duration::from_secs(2)),
    );
    let report = flood.join().remove(0);
    let bans = daemon.api_get(&pair.receiver, "/v1/bans");
    let listed: Vec<String> = bans["bans"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|b| {
                    format!("{} {}", b["source"].as_str().unwrap_or("?"), b["class"].as_str().unwrap_or("?"))
                })
                .collect()
        })
        .unwrap_or_default();
    checks.that(listed == [format!("{src} game")], &format!("/v1/bans lists {src} under game: {listed:?}"));
    let said = daemon.api_get(&pair.receiver, &format!("/v1/explain?source={src}&proto=udp&port=7777"));
    checks.that(
        said["verdict"] == "banned" && said["class"] == "game" && said["drops"] == true,
        &format!("explain says a packet of {src} to udp/7777 is banned by game: {said}"),
    );
    let events = daemon.api_get(&pair.receiver, "/v1/events?n=100");
    let of_src: Vec<String> = events["events"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|e| e["source"] == src.to_string())
        .map(|e| format!("{} {}", e["kind"].as_str().unwrap_or("?"), e["class"].as_str().unwrap_or("-")))
        .collect();
    checks.that(
        of_src == ["drop_start game", "ban_start game"],
        &format!("the events of {src}: it started being dropped, then was banned: {of_src:?}"),
    );
    let cli = daemon.cli(&pair.receiver, ["events", "-n", "100"]);
    checks.that(
        cli.code == Some(0) && cli.stdout.contains(&format!("ban_start source={src} class=game limit=0")),
        &format!("{} prints the ban: {}", cli.command, cli.stdout.lines().rev().nth(1).unwrap_or("")),
    );
    let stats = daemon.api_get(&pair.receiver, "/v1/stats");
    let banned = stats["counters"]["banned"].as_u64().unwrap_or(0);
    checks.that(banned > 0, &format!("packets counted as banned: {banned}"));
    // While banned nothing passes; before, the burst and 1 s of the rate did.
    let during = receiver.finish(Duration::from_millis(300)).from_source(src);
    let before_ban = bucket_allowance(10, 10, 1.0);
    checks.within(
        &format!(
            "arrived of {} offered over {:.3} s: the burst and the rate until the ban",
            report.sent_by_source[0].1,
            report.secs()
        ),
        before_ban,
        during,
        0.25,
    );
    // The ban ends after its 3 s: listed no more, and the source gets its burst again.
    std::thread::sleep(Duration::from_millis(3_200));
    let bans = daemon.api_get(&pair.receiver, "/v1/bans");
    checks.that(
        bans["bans"].as_array().is_some_and(Vec::is_empty),
        &format!("/v1/bans is empty once the ban ended: {bans}"),
    );
    let receiver = Receiver::start(&pair.receiver, 7777);
    let _ = Flood::start(
        &pair.sender,
        vec![Flow::new(src, pair.dst_for(src, 7777)).rate(200)],
        Some(Duration::from_millis(200)),
    )
    .join();
    let after = receiver.finish(Duration::from_millis(300)).from_source(src);
    checks.within(
        "arrived after the ban, in 0.2 s: the burst again",
        bucket_allowance(10, 10, 0.2),
        after,
        0.25,
    );
    let said = daemon.api_get(&pair.receiver, &format!("/v1/explain?source={src}&proto=udp&port=7777"));
    // Its burst was spent 0.3 s and more ago: refilled at 10/s since.
    let tokens = said["limits"][0]["tokens"].as_u64().unwrap_or(0);
    checks.that(
        said["verdict"] == "passed" && (2..10).contains(&tokens),
        &format!("explain agrees: passed again, the burst partly refilled ({tokens} tokens): {said}"),
    );
    checks.assert_all();
}

/// The README's example classes without the SSH ban (a source that stays
/// over 3 a minute for 30 s is banned, after which the bound below no
/// longer applies: `a_ban_starts_is_listed_and_ends` covers bans).
const EXAMPLE: &str = r#"
[[classes]]
name = "ssh"
match = [{ proto = "tcp", ports = "22", syn_only = true }]
limits = [{ rate = "3/minute", burst = 5 }]

[[classes]]
name = "dns"
match = [{ proto = "udp", ports = "53" }]
limits = [{ rate = "50/second", burst = 100 }, { rate = "1000/minute" }]

[[classes]]
name = "web"
match = [{ proto = "tcp", ports = [443, "8000-8100"], syn_only = true }]
limits = [{ rate = "20/s", burst = 40 }]
tiers = [{ ipv4_prefix = 24, ipv6_prefix = 48, rate = "200/s", burst = 400 }]
"#;

/// How long the example's classes are flooded: over a minute, so that the
/// per-minute limits bind.
const EXAMPLE_TIME: Duration = Duration::from_secs(65);

#[test]
fn the_example_classes_at_once_over_a_minute_each_within_its_bound() {
    use throttle_tests::{
        frames::{Frame, TCP_SYN},
        raw::{send_paced, RawFlow, Tap},
    };
    require_root!();
    let test = "the_example_classes_at_once_over_a_minute_each_within_its_bound";
    let mut checks = Checks::new(test);
    let pair = VethPair::builder().build();
    let _daemon = Daemon::builder(&pair.receiver, &pair.rx_if).config(EXAMPLE).start_ready();
    let mac: Vec<u8> =
        pair.rx_mac.split(':').map(|b| u8::from_str_radix(b, 16).expect("a MAC address byte")).collect();
    let frame = |f: Frame| {
        let mut bytes = f.build();
        bytes[..6].copy_from_slice(&mac);
        bytes
    };
    let ip = |text: &str| -> std::net::IpAddr { text.parse().expect("an address") };
    let ssh: Vec<_> = ["10.98.1.1", "10.98.1.2"].map(ip).to_vec();
    let dns = ip("10.98.2.1");
    // Twelve sources of one /24 at 30 SYNs a second each: 20/s each gets past
    // the per-source limit, 240/s in all, over the tier's 200/s.
    let web: Vec<_> = (1..=12).map(|h| ip(&format!("10.98.3.{h}"))).collect();
    let mut flows = Vec::new();
    for &src in &ssh {
        flows.push(RawFlow { frame: frame(Frame::tcp(src, 22, TCP_SYN)), pps: 5.0 });
    }
    flows.push(RawFlow { frame: frame(Frame::udp(dns, 53)), pps: 200.0 });
    for &src in &web {
        flows.push(RawFlow { frame: frame(Frame::tcp(src, 443, TCP_SYN)), pps: 30.0 });
    }
    let tap = Tap::start(&pair.receiver, &pair.rx_if);
    let started = throttle_tests::mono_ns();
    let sent = send_paced(&pair.sender, &pair.tx_if, flows, EXAMPLE_TIME).join().expect("the sender");
    let secs = throttle_tests::secs_between(started, throttle_tests::mono_ns());
    let seen = tap.finish(QUIET);
    let arrived = |src, proto: u8, port: u16| {
        seen.iter().filter(|s| s.src == src && s.proto == proto && s.dport == port).count() as u64
    };
    checks.note(&format!("sent for {secs:.1} s: {sent:?}"));

    for &src in &ssh {
        checks.within(
            &format!("ssh SYNs from {src}: 5 + 3 a minute over {secs:.1} s"),
            5.0 + 3.0 * secs / 60.0,
            arrived(src, 6, 22),
            TOLERANCE,
        );
    }
    checks.within(
        &format!("dns from {dns}: the smaller of 100 + 50/s and 1000 + 1000/minute over {secs:.1} s"),
        bucket_allowance(50, 100, secs).min(1_000.0 + 1_000.0 / 60.0 * secs),
        arrived(dns, 17, 53),
        TOLERANCE,
    );
    let web_total: u64 = web.iter().map(|&src| arrived(src, 6, 443)).sum();
    checks.within(
        &format!("web SYNs from the 12 sources of 10.98.3.0/24: their tier's 400 + 200/s over {secs:.1} s"),
        bucket_allowance(200, 400, secs),
        web_total,
        TOLERANCE,
    );
    let most = web.iter().map(|&src| arrived(src, 6, 443)).max().unwrap_or(0);
    #[expect(clippy::cast_precision_loss, reason = "a packet count")]
    let most_f = most as f64;
    checks.that(
        most_f <= bucket_allowance(20, 40, secs) * (1.0 + TOLERANCE),
        &format!("no web source got past its own 40 + 20/s: the most was {most}"),
    );
    checks.assert_all();
}

#[test]
fn throttle_events_follow_prints_each_change_with_who_made_it() {
    require_root!();
    let test = "throttle_events_follow_prints_each_change_with_who_made_it";
    let mut checks = Checks::new(test);
    let pair = VethPair::builder().build();
    let daemon = Daemon::builder(&pair.receiver, &pair.rx_if).start_ready();
    let mut follow = pair
        .receiver
        .command(throttle_tests::daemon::throttle_bin())
        .args(["events", "--follow"])
        .env("THROTTLE_ADMIN", daemon.admin().to_string())
        .env_remove("THROTTLE_TOKEN")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("throttle events --follow");
    let stdout = follow.stdout.take().expect("its stdout");
    let (lines_tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead as _;
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = lines_tx.send(line);
        }
    });
    // It prints the last events first (the attach), then follows: the
    // stream is open once the attach shows; then a change must follow it.
    let first = lines.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
    checks.that(first.contains(" attach "), &format!("the backlog comes first: {first:?}"));
    let set = daemon.cli(&pair.receiver, ["limits", "set", "--rate", "500"]);
    checks.that(set.code == Some(0), &format!("{}: {}", set.command, set.stderr.trim()));
    let mut seen = None;
    while let Ok(line) = lines.recv_timeout(Duration::from_secs(5)) {
        if line.contains(" change ") {
            seen = Some(line);
            break;
        }
    }
    let _ = follow.kill();
    let _ = follow.wait();
    let line = seen.unwrap_or_default();
    checks.that(
        line.contains("change by=api 127.0.0.1:") && line.contains("PATCH /v1/limits 200"),
        &format!("throttle events --follow printed the change and who made it: {line:?}"),
    );
    checks.assert_all();
}

#[test]
fn throttle_top_watch_shows_the_flooding_source_with_its_drop_rate() {
    require_root!();
    let test = "throttle_top_watch_shows_the_flooding_source_with_its_drop_rate";
    let mut checks = Checks::new(test);
    let pair = VethPair::builder().sender_addrs(["10.99.9.1/16"]).build();
    let src = pair.sender_ips()[0];
    let config = "[limits]\nrate = 100\nburst = 100\n";
    let daemon = Daemon::builder(&pair.receiver, &pair.rx_if).config(config).start_ready();
    let flood = Flood::start(
        &pair.sender,
        vec![Flow::new(src, pair.dst_for(src, 9000)).rate(2_000)],
        Some(Duration::from_secs(3)),
    );
    std::thread::sleep(Duration::from_millis(500));
    // The client's flags before the subcommand, as after it.
    let watch = daemon.cli(&pair.receiver, ["--json", "status"]);
    checks.that(
        watch.code == Some(0) && watch.stdout.trim_start().starts_with('{'),
        &format!("{}: JSON: {}", watch.command, watch.stdout.lines().next().unwrap_or("")),
    );
    let top = daemon.cli(&pair.receiver, ["top", "--watch", "--interval", "0.5", "--count", "3", "-n", "5"]);
    let _ = flood.join();
    // The last refresh: the flood's source, dropped at about 2000 - 100 a second.
    let last = top.stdout.rsplit("\x1b[2J\x1b[H").next().unwrap_or("");
    let row = last.lines().find(|l| l.starts_with(&src.to_string())).unwrap_or("");
    let drop_rate: f64 = row.split_whitespace().nth(3).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    checks.that(
        top.code == Some(0) && (1_000.0..3_000.0).contains(&drop_rate),
        &format!(
            "{}: the flood's source dropped at {drop_rate:.0}/s in the last refresh: {row:?}",
            top.command
        ),
    );
    checks.assert_all();
}
