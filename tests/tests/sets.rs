//! End to end, as root: IP sets in the real daemon, from set files named by
//! its configuration file and through the CLI and the API, with real
//! traffic.
//!
//! Three sources flood at once while a set of 100 000 prefixes is replaced
//! by another of 100 000: one source is in both versions (not one of its
//! packets may pass), one in the new version only (it passes until the
//! switch and never after), one in neither (every packet passes).

use std::{
    fmt::Write as _,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use throttle_tests::{
    mono_ns, remove_dir, require_root, unique_id, Checks, Daemon, Flood, Flow, Receiver, VethPair,
};

const PORT: u16 = 7100;
/// Prefixes of each version of the replaced set.
const PREFIXES: u32 = 100_000;
/// Offered load of each source.
const PPS: u64 = 1_000;

/// A set file of `PREFIXES` /32s in 100.64.0.0/10 from `first` on, with
/// `members`, and a comment or two as threat feeds have.
fn feed(first: u32, members: &[IpAddr]) -> String {
    let mut text = String::from("# a feed\n");
    for n in first..first + PREFIXES {
        text.push_str(&std::net::Ipv4Addr::from(0x6440_0000 | n).to_string());
        text.push('\n');
    }
    for member in members {
        let _ = writeln!(text, "{member}/32 # listed");
    }
    text
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
}

/// A directory of set files, removed at the end.
struct SetDir(PathBuf);

impl Drop for SetDir {
    fn drop(&mut self) {
        remove_dir(&self.0);
    }
}

#[test]
fn a_set_replaced_under_traffic_then_read_again_on_sighup() {
    require_root!();
    let test = "a_set_replaced_under_traffic_then_read_again_on_sighup";
    let mut checks = Checks::new(test);
    let dir = SetDir(std::env::temp_dir().join(format!("throttle-sets-{}", unique_id())));
    std::fs::create_dir_all(&dir.0).expect("a directory for the set files");
    let pair = VethPair::builder().sender_addrs(["10.99.7.1/16", "10.99.7.2/16", "10.99.7.3/16"]).build();
    let [both, new_only, neither] = <[IpAddr; 3]>::try_from(pair.sender_ips()).expect("three sources");
    let feed_path = dir.0.join("feed.netset");
    let more_path = dir.0.join("more.netset");
    let next_path = dir.0.join("feed-next.netset");
    write(&feed_path, &feed(0, &[both]));
    write(&more_path, "# nothing yet\n");
    write(&next_path, &feed(PREFIXES, &[both, new_only]));
    let config = format!(
        r#"
        [limits]
        rate = 1000000
        burst = 1000000

        [[sets]]
        name = "feed"
        file = "{}"

        [[sets]]
        name = "more"
        file = "{}"

        [[rules]]
        set = "feed"
        action = "deny"

        [[rules]]
        set = "more"
        action = "deny"
        "#,
        feed_path.display(),
        more_path.display()
    );
    let receiver = Receiver::start(&pair.receiver, PORT);
    let mut daemon = Daemon::builder(&pair.receiver, &pair.rx_if).config(&config).start_ready();
    let sets = daemon.api_get(&pair.receiver, "/v1/sets");
    checks.that(
        sets["sets"][0]["prefixes"] == u64::from(PREFIXES) + 1 && sets["sets"][0]["rule"].is_u64(),
        &format!("the feed is loaded from its file, named by its rule: {}", sets["sets"][0]),
    );

    // The replacement, half-way through the floods.
    let flows =
        [both, new_only, neither].map(|src| Flow::new(src, pair.dst_for(src, PORT)).rate(PPS)).to_vec();
    let flood = Flood::start(&pair.sender, flows, Some(Duration::from_secs(4)));
    std::thread::sleep(Duration::from_millis(1_500));
    let switch_began = mono_ns();
    let load = daemon.cli(&pair.receiver, ["sets", "load", "feed", next_path.to_str().expect("a path")]);
    let switched = mono_ns();
    let reports = flood.join();
    let arrivals = receiver.finish(Duration::from_millis(300));
    checks.that(
        load.code == Some(0),
        &format!("{}: {} {}", load.command, load.stdout.trim(), load.stderr.trim()),
    );
    checks.note(&format!(
        "the new version was loaded and switched to in {:.0} ms",
        throttle_tests::secs_between(switch_began, switched) * 1e3
    ));
    for report in &reports {
        checks.offered("a source", report, 500.0, "every source floods");
    }
    let sent = |src: IpAddr| {
        reports.iter().find(|r| r.sent_by_source[0].0.ip() == src).map_or(0, |r| r.sent_by_source[0].1)
    };
    checks.that(
        arrivals.from_source(both) == 0,
        &format!(
            "of {} packets from {both}, in both versions, none passed: {}",
            sent(both),
            arrivals.from_source(both)
        ),
    );
    checks.that(
        arrivals.from_source(neither) + arrivals.udp_drops >= sent(neither),
        &format!(
            "of {} packets from {neither}, in neither, all passed: {} (the receiver lost {})",
            sent(neither),
            arrivals.from_source(neither),
            arrivals.udp_drops
        ),
    );
    let before = arrivals.count(|a| a.src == new_only && a.sent_ns < switch_began);
    let after = arrivals.count(|a| a.src == new_only && a.sent_ns > switched);
    checks.that(
        before > 1_000 && after == 0,
        &format!("{new_only}, in the new version only: {before} passed before the switch, {after} after it"),
    );

    read_again(&mut checks, &mut daemon, &pair, &more_path, new_only);
    checks.assert_all();
}

/// Removing a set a rule names is refused; SIGHUP reads the other set's
/// file again, which now holds the third source.
fn read_again(checks: &mut Checks, daemon: &mut Daemon, pair: &VethPair, more_path: &Path, new_only: IpAddr) {
    let neither = pair.sender_ips()[2];
    let rm = daemon.cli(&pair.receiver, ["sets", "rm", "feed"]);
    checks.that(
        rm.code != Some(0) && rm.stderr.contains("names set \"feed\""),
        &format!("{}: refused while a rule names it: {}", rm.command, rm.stderr.trim()),
    );

    write(more_path, &format!("{neither}\n"));
    let since = daemon.log_len();
    let _ = daemon.reload();
    daemon.wait_for_log("configuration reloaded", since, Duration::from_secs(10));
    let receiver = Receiver::start(&pair.receiver, PORT);
    let report = Flood::start(
        &pair.sender,
        vec![Flow::new(neither, pair.dst_for(neither, PORT)).rate(PPS)],
        Some(Duration::from_millis(500)),
    )
    .join()
    .remove(0);
    let arrived = receiver.finish(Duration::from_millis(300)).from_source(neither);
    checks.that(
        arrived == 0 && report.sent_by_source[0].1 > 100,
        &format!(
            "after SIGHUP, {neither} is in the set read again: {arrived} of {} passed",
            report.sent_by_source[0].1
        ),
    );
    let sets = daemon.api_get(&pair.receiver, "/v1/sets");
    let listed: Vec<String> = sets["sets"]
        .as_array()
        .map(|a| a.iter().map(|s| format!("{} {}", s["name"], s["prefixes"])).collect())
        .unwrap_or_default();
    checks.that(
        listed == [format!("\"feed\" {}", PREFIXES + 2), "\"more\" 1".to_owned()],
        &format!("/v1/sets: {listed:?}, {} bytes of kernel memory", sets["memory_bytes"]),
    );
    let said =
        daemon.api_get(&pair.receiver, &format!("/v1/explain?source={new_only}&proto=udp&port={PORT}"));
    checks.that(
        said["verdict"] == "deny_rule" && said["rule"]["set"] == "feed" && said["set"] == "feed",
        &format!("explain names the set's rule for {new_only}: {said}"),
    );
}
