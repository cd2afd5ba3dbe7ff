//! The daemon as a service runs it, as root: an unprivileged user with
//! exactly `CAP_BPF` and `CAP_NET_ADMIN` (through `setpriv`,
//! as systemd's `AmbientCapabilities` gives them), metering real packets on
//! a veth pair, pinning, restarting hitlessly and answering its API; and
//! without one of them, refused with the capability named.

use std::{net::IpAddr, time::Duration};

use serde_json::json;
use throttle_tests::{report, require_root, Checks, Daemon, Flood, Flow, Receiver, VethPair, DAEMON_CAPS};

/// `nobody`: a user with no rights of its own.
const UID: u32 = 65_534;
const GID: u32 = 65_534;
const PORT: u16 = 9000;
const SOURCE: &str = "10.99.6.2";
const QUIET: Duration = Duration::from_millis(300);

/// The effective capabilities and user of a process, from its status.
fn credentials(pid: u32) -> (u64, u32) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the daemon's status");
    let field = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).map_or_else(|| panic!("{name}"), str::trim)
    };
    let caps = u64::from_str_radix(field("CapEff:"), 16).expect("a capability mask");
    let uid = field("Uid:").split_whitespace().nth(1).expect("the effective uid").parse().expect("a uid");
    (caps, uid)
}

/// Datagrams from [`SOURCE`] at `pps` for `secs`: sent, and arrived.
fn flood(pair: &VethPair, pps: u64, secs: f64) -> (u64, u64) {
    let src: IpAddr = SOURCE.parse().expect("an address");
    let (report, arrivals) =
        throttle_tests::flood_once(pair, src, PORT, pps, Duration::from_secs_f64(secs), QUIET);
    (report.sent, arrivals.from_source(src))
}

#[test]
fn the_daemon_runs_as_a_user_with_cap_bpf_and_cap_net_admin_only() {
    require_root!();
    let mut checks = Checks::new("the_daemon_runs_as_a_user_with_cap_bpf_and_cap_net_admin_only");
    let pair = VethPair::builder().sender_addr(&format!("{SOURCE}/16")).build();
    let mut daemon = Daemon::builder(&pair.receiver, &pair.rx_if)
        .config("[limits]\nrate = 10\nburst = 100\nnew_source_rate = 0\n")
        .as_user(UID, GID)
        .start_ready();
    let (caps, uid) = credentials(daemon.pid().expect("running"));
    // CAP_NET_ADMIN is 12, CAP_BPF 39: no CAP_PERFMON (38), whose absence
    // puts the verifier's Spectre v1 hardening on the program, nor
    // CAP_SYS_ADMIN (21).
    checks.that(
        uid == UID && caps == (1 << 12) | (1 << 39),
        &format!("the daemon runs as uid {uid} with capabilities {caps:#x} ({DAEMON_CAPS:?} only)"),
    );
    checks.that(
        std::fs::read_dir(daemon.pin_dir().join("maps")).is_ok_and(|d| d.count() > 0),
        &format!("its maps are pinned under {}", daemon.pin_dir().display()),
    );
    // Metering: 1000 a second for 2 s against 10 a second, burst 100.
    let (sent, arrived) = flood(&pair, 1_000, 2.0);
    report(&format!("as uid {UID}: {arrived} of {sent} arrived (bound 120)"));
    checks.that(
        (100..=125).contains(&arrived),
        &format!("{arrived} of {sent} arrived, about 100 + 10/s for 2 s"),
    );
    // The API: a rule written, persisted in the state directory it owns.
    let (code, body) = pair.receiver.curl(
        "POST",
        &format!("http://{}/v1/rules", daemon.admin()),
        &[],
        Some(&json!({"cidr": "198.51.100.0/24", "action": "deny"}).to_string()),
    );
    checks.that(code == 201 || code == 200, &format!("a rule is added through the API: {code} {body}"));
    // A hitless restart under a flood: killed and started again after 1 s
    // of 3, it adopts its own pins and the source's bucket with them, so
    // the 3 s admit 10/s and what refilled since the flood before (a few),
    // where a fresh bucket would add its burst of 100.
    let receiver = Receiver::start(&pair.receiver, PORT);
    let src: IpAddr = SOURCE.parse().expect("an address");
    let flow = Flow::new(src, pair.dst_for(src, PORT)).rate(1_000);
    let flood = Flood::start(&pair.sender, vec![flow], Some(Duration::from_secs(3)));
    std::thread::sleep(Duration::from_secs(1));
    daemon.kill();
    daemon.start_again(&pair.receiver);
    daemon.wait_ready(Duration::from_secs(30));
    let sent = flood.join()[0].sent;
    let arrived = receiver.finish(QUIET).from_source(src);
    report(&format!(
        "as uid {UID}, killed and started again under a flood: {arrived} of {sent} arrived (bound 30 and a refill)"
    ));
    checks.that(arrived <= 60, &format!("across the restart, no fresh burst: {arrived} of {sent} arrived"));
    checks.that(daemon.log().contains("adopted"), "started again, it adopts the maps it pinned");
    let rules = daemon.api_get(&pair.receiver, "/v1/rules");
    checks.that(rules.to_string().contains("198.51.100.0/24"), &format!("the rule is still there: {rules}"));
    checks.assert_all();
}

#[test]
fn without_cap_bpf_the_daemon_names_it_and_leaves_nothing_behind() {
    require_root!();
    let pair = VethPair::builder().build();
    // A user with CAP_NET_ADMIN alone.
    let mut daemon =
        Daemon::builder(&pair.receiver, &pair.rx_if).as_user(UID, GID).caps(&["net_admin"]).start();
    let status = daemon.wait_exit(Duration::from_secs(20));
    let log = daemon.log();
    assert!(status.is_some_and(|s| !s.success()), "it must refuse to run: {log}");
    assert!(log.contains("lacks CAP_BPF"), "the missing capability is named: {log}");
    assert!(!log.contains("Verifier output"), "no verifier dump: {log}");
    let left = std::fs::read_dir(daemon.pin_dir()).map_or(0, Iterator::count);
    assert_eq!(left, 0, "nothing pinned");
}

/// `cargo xtask install` into a directory of the test's: every file where
/// a system looks for it, the unit's capabilities the daemon's own, and
/// the unit accepted by `systemd-analyze verify`.
#[test]
fn the_service_installs_and_its_unit_verifies() {
    require_root!();
    let dest = std::env::temp_dir().join(format!("throttle-tests/install-{}", throttle_tests::unique_id()));
    let status = std::process::Command::new("cargo")
        .args(["xtask", "install", "--debug", "--prefix", "/usr", "--destdir"])
        .arg(&dest)
        .status()
        .expect("run cargo xtask install");
    assert!(status.success(), "cargo xtask install: {status}");
    let file = |path: &str| dest.join(path);
    for path in [
        "usr/bin/throttle",
        "usr/lib/sysusers.d/throttle.conf",
        "etc/throttle/throttle.toml",
        "usr/share/man/man1/throttle.1",
        "usr/share/man/man1/throttle-daemon.1",
        "usr/share/bash-completion/completions/throttle",
        "usr/share/zsh/site-functions/_throttle",
        "usr/share/fish/vendor_completions.d/throttle.fish",
    ] {
        assert!(file(path).is_file(), "{path} installed");
    }
    let unit_path = file("usr/lib/systemd/system/throttle.service");
    let unit = std::fs::read_to_string(&unit_path).expect("the unit");
    assert!(unit.contains("ExecStart=/usr/bin/throttle daemon"), "the binary's path filled in:\n{unit}");
    let caps: Vec<String> = DAEMON_CAPS.iter().map(|c| format!("CAP_{}", c.to_uppercase())).collect();
    for key in ["AmbientCapabilities", "CapabilityBoundingSet"] {
        let line = unit.lines().find(|l| l.starts_with(key)).unwrap_or_else(|| panic!("{key} in the unit"));
        let mut named: Vec<&str> = line.split_once('=').map_or("", |(_, v)| v).split_whitespace().collect();
        named.sort_unstable();
        let mut wanted: Vec<&str> = caps.iter().map(String::as_str).collect();
        wanted.sort_unstable();
        assert_eq!(named, wanted, "{key}: the capabilities the daemon runs with");
    }
    for key in ["NoNewPrivileges=yes", "ProtectSystem=strict", "StateDirectory=throttle", "ExecReload="] {
        assert!(unit.contains(key), "{key} in the unit");
    }
    // The unit as installed, its binary at the test's copy of it.
    let check = dest.join("throttle.service");
    let binary = file("usr/bin/throttle");
    std::fs::write(&check, unit.replace("/usr/bin/throttle", &binary.display().to_string())).expect("write");
    let verify = std::process::Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(&check)
        .output()
        .expect("systemd-analyze (Debian's systemd; `cargo xtask setup` installs it)");
    let said = String::from_utf8_lossy(&verify.stderr);
    assert!(verify.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
    let help =
        std::process::Command::new(&binary).args(["generate", "completions", "bash"]).output().expect("run");
    assert!(String::from_utf8_lossy(&help.stdout).contains("_throttle"), "a bash completion script");
    let man = std::fs::read_to_string(file("usr/share/man/man1/throttle-daemon.1")).expect("the man page");
    assert!(man.contains(".TH") && man.contains(r"\-\-pin\-dir"), "a man page of the daemon's options");
    let _ = std::fs::remove_dir_all(&dest);
    report(&format!("installed into a scratch directory; {} verified", unit_path.display()));
}

/// Without a token, on loopback: any local user may look, only root (and
/// the daemon's own user) may change the policy.
#[test]
fn a_local_user_may_look_but_not_change_the_policy() {
    require_root!();
    let pair = VethPair::builder().build();
    let daemon = Daemon::builder(&pair.receiver, &pair.rx_if).start_ready();
    let url = |path: &str| format!("http://{}{path}", daemon.admin());
    let as_nobody = |method: &str, path: &str, body: Option<&str>| {
        let mut cmd = pair.receiver.command("setpriv");
        cmd.args([&format!("--reuid={UID}"), &format!("--regid={GID}"), "--clear-groups", "curl", "-sS"])
            .args(["--max-time", "10", "-o", "/dev/null", "-w", "%{http_code}", "-X", method]);
        if let Some(body) = body {
            cmd.args(["-H", "content-type: application/json", "-d", body]);
        }
        let out = cmd.arg(url(path)).output().expect("curl as nobody");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(as_nobody("GET", "/v1/limits", None), "200", "nobody may look");
    assert_eq!(
        as_nobody("PATCH", "/v1/limits", Some(r#"{"dry_run": true}"#)),
        "403",
        "nobody may not change"
    );
    let limits = daemon.api_get(&pair.receiver, "/v1/limits");
    assert_eq!(limits["dry_run"], false, "nothing changed: {limits}");
    let (code, body) = pair.receiver.curl(
        "PATCH",
        &url("/v1/limits"),
        &["content-type: application/json"],
        Some(r#"{"dry_run": true}"#),
    );
    assert_eq!(code, 200, "root may: {body}");
    report("without a token: nobody's change refused (403), root's taken");
}
