//! Faults injected into the daemon and its environment, as root, with real
//! packets on veth pairs: ten SIGKILLs in a row under a flood, a state
//! directory that is full, a pin directory that is not on bpffs.

use std::{
    net::IpAddr,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use throttle_tests::{
    measure::bucket_allowance, report, require_root, Checks, Daemon, Flood, Flow, Receiver, VethPair,
};

const PORT: u16 = 9000;
const QUIET: Duration = Duration::from_millis(300);

#[test]
fn ten_sigkills_in_a_row_under_a_flood_leave_no_packet_unmetered_and_no_fresh_burst() {
    const KILLS: u32 = 10;
    const RATE: u64 = 100;
    const BURST: u64 = 100;
    const OFFERED: u64 = 5_000;
    require_root!();
    let mut checks =
        Checks::new("ten_sigkills_in_a_row_under_a_flood_leave_no_packet_unmetered_and_no_fresh_burst");
    let pair = VethPair::builder().sender_addr("10.99.7.2/16").build();
    let mut daemon = Daemon::builder(&pair.receiver, &pair.rx_if)
        .config(&format!("[limits]\nrate = {RATE}\nburst = {BURST}\nnew_source_rate = 0\n"))
        .start_ready();
    let src: IpAddr = "10.99.7.2".parse().expect("an address");
    let receiver = Receiver::start(&pair.receiver, PORT);
    let flood = Flood::start(&pair.sender, vec![Flow::new(src, pair.dst_for(src, PORT)).rate(OFFERED)], None);
    let started = Instant::now();
    thread::sleep(Duration::from_millis(500));
    for kill in 1..=KILLS {
        // Killed while it runs, and started again at once: each time the
        // next daemon adopts the pins of the one before.
        daemon.kill();
        checks.that(!pair.xdp_attachment().is_empty(), &format!("kill {kill}: XDP stays attached"));
        daemon.start_again(&pair.receiver);
        daemon.wait_ready(Duration::from_secs(30));
        thread::sleep(Duration::from_millis(300));
    }
    let reports = flood.stop();
    let secs = started.elapsed().as_secs_f64();
    let arrivals = receiver.finish(QUIET);
    let arrived = arrivals.from_source(src);
    let bound = bucket_allowance(RATE, BURST, secs);
    report(&format!(
        "{KILLS} SIGKILLs in {secs:.1} s under {} datagrams at {OFFERED}/s: {arrived} arrived, bound {bound:.0}",
        reports[0].sent
    ));
    // Every packet metered (none through unmetered), and no restart gave a
    // fresh burst: at most the bucket's bound over the whole run; at least
    // most of the rate, so the flood was really metered, not dropped.
    #[expect(clippy::cast_precision_loss, reason = "packet counts")]
    let arrived_f = arrived as f64;
    checks.that(
        arrived_f <= bound * 1.02 + 2.0,
        &format!("{arrived} arrived, within the bucket's bound of {bound:.0} over {secs:.1} s"),
    );
    checks.that(arrived_f >= 0.8 * bound, &format!("{arrived} arrived: the rate still went through"));
    checks.that(daemon.log().matches("adopted").count() >= KILLS as usize, "each start adopted the pins");
    checks.assert_all();
}

/// A file system mounted for a test: unmounted and removed on drop.
struct Unmount(std::path::PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The daemon's `/v1/rules` and `config_version`.
fn rules_and_version(pair: &VethPair, daemon: &Daemon) -> (Value, Value) {
    (
        daemon.api_get(&pair.receiver, "/v1/rules"),
        daemon.api_get(&pair.receiver, "/v1/status")["config_version"].clone(),
    )
}

#[test]
fn a_state_directory_that_is_full_refuses_changes_and_changes_nothing() {
    require_root!();
    let pair = VethPair::builder().build();
    // A state directory on a file system of its own, 1 MiB.
    let full = std::env::temp_dir().join(format!("throttle-tests/full-{}", throttle_tests::unique_id()));
    std::fs::create_dir_all(&full).expect("a directory");
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"]).arg(&full).status();
    assert!(mounted.is_ok_and(|s| s.success()), "mount a tmpfs on {}", full.display());
    let _unmount = Unmount(full.clone());
    let state = full.join("state");
    let daemon = Daemon::builder(&pair.receiver, &pair.rx_if).state_dir(&state).start_ready();
    let url = format!("http://{}/v1/rules", daemon.admin());
    let add = |cidr: &str| {
        pair.receiver.curl(
            "POST",
            &url,
            &["content-type: application/json"],
            Some(&json!({"cidr": cidr, "action": "deny"}).to_string()),
        )
    };
    assert_eq!(add("203.0.113.0/24").0, 201, "a change while there is room");
    // Fill it.
    let filler = full.join("filler");
    let _ = Command::new("dd")
        .args(["if=/dev/zero", &format!("of={}", filler.display()), "bs=64k", "count=64"])
        .output();
    let before = rules_and_version(&pair, &daemon);
    let (refused, why) = add("198.51.100.0/24");
    assert!((500..600).contains(&refused), "a change the disk cannot take: {refused} {why}");
    assert!(why.contains("state"), "the answer says what failed: {why}");
    assert_eq!(rules_and_version(&pair, &daemon), before, "nothing changed");
    assert!(daemon.api_get(&pair.receiver, "/v1/status").is_object(), "the daemon keeps running");
    // Room again: the same change goes in.
    std::fs::remove_file(&filler).expect("remove the filler");
    let (code, body) = add("198.51.100.0/24");
    assert_eq!(code, 201, "with room again: {body}");
    report(&format!(
        "a full state directory: the change answered {refused}, nothing changed; with room, 201"
    ));
}

#[test]
fn a_pin_directory_off_bpffs_is_refused_and_nothing_is_attached() {
    require_root!();
    let pair = VethPair::builder().build();
    let dir = std::env::temp_dir().join(format!("throttle-tests/notbpf-{}", throttle_tests::unique_id()));
    let mut daemon = Daemon::builder(&pair.receiver, &pair.rx_if).pin_dir(&dir.join("pins")).start();
    let status = daemon.wait_exit(Duration::from_secs(20));
    let log = daemon.log();
    assert!(status.is_some_and(|s| !s.success()), "it must refuse: {log}");
    assert!(log.contains("bpffs") || log.contains("bpf file system"), "the reason is named: {log}");
    assert!(pair.xdp_attachment().is_empty(), "nothing attached: {}", pair.xdp_attachment());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn sigkills_at_random_moments_of_the_start_leave_a_clean_start_after_them() {
    const TRIES: u64 = 12;
    require_root!();
    let mut checks = Checks::new("sigkills_at_random_moments_of_the_start_leave_a_clean_start_after_them");
    let pair = VethPair::builder().sender_addr("10.99.8.2/16").build();
    let mut daemon = Daemon::builder(&pair.receiver, &pair.rx_if)
        .config("[limits]\nrate = 100\nburst = 100\nnew_source_rate = 0\n")
        .start();
    // Killed 0 to 330 ms into each start: before the maps, while loading,
    // pinning, attaching, or once ready; each next start must cope.
    let mut seed = throttle_tests::mono_ns() | 1;
    let mut delays = Vec::new();
    for _ in 0..TRIES {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let delay = Duration::from_millis(seed % 330);
        thread::sleep(delay);
        daemon.kill();
        delays.push(delay.as_millis());
        daemon.start_again(&pair.receiver);
    }
    daemon.wait_ready(Duration::from_secs(30));
    let src: IpAddr = "10.99.8.2".parse().expect("an address");
    let (flow, arrivals) = throttle_tests::flood_once(&pair, src, PORT, 1_000, Duration::from_secs(2), QUIET);
    let arrived = arrivals.from_source(src);
    let bound = bucket_allowance(100, 100, flow.secs());
    report(&format!(
        "{TRIES} SIGKILLs {delays:?} ms into the starts, then a start: ready, {arrived} of {} arrived (bound {bound:.0})",
        flow.sent
    ));
    #[expect(clippy::cast_precision_loss, reason = "packet counts")]
    let arrived_f = arrived as f64;
    checks.that(
        arrived_f <= bound * 1.02 + 2.0 && arrived_f >= 0.8 * (bound - 100.0),
        &format!("metering: {arrived} arrived, bound {bound:.0}"),
    );
    checks.that(!pair.xdp_attachment().is_empty(), "attached");
    checks.that(
        daemon.api_get(&pair.receiver, "/v1/status")["interfaces"].as_array().is_some_and(|i| i.len() == 1),
        "the status shows the one interface",
    );
    checks.assert_all();
}
