//! End to end, as root: `throttle capture` writes the dropped packets it is
//! asked for as a pcap file, which Debian's tshark reads back.

use std::{path::Path, process::Command, time::Duration};

use throttle_tests::{remove_dir, require_root, unique_id, Checks, Daemon, Flood, Flow, VethPair};

/// What tshark reads in `file`: one line of `ip.src udp.dstport` a packet.
fn tshark(file: &Path) -> Result<Vec<String>, String> {
    let out = Command::new("tshark")
        .args(["-n", "-r"])
        .arg(file)
        .args(["-T", "fields", "-e", "ip.src", "-e", "udp.dstport"])
        .output()
        .map_err(|e| format!("running tshark (cargo xtask setup installs it): {e}"))?;
    if !out.status.success() {
        return Err(format!("tshark -r {}: {}", file.display(), String::from_utf8_lossy(&out.stderr)));
    }
    Ok(String::from_utf8_lossy(&out.stdout).lines().map(str::to_owned).collect())
}

#[test]
fn captured_drops_open_in_tshark_filtered_by_reason_and_source() {
    require_root!();
    let test = "captured_drops_open_in_tshark_filtered_by_reason_and_source";
    let mut checks = Checks::new(test);
    let dir = std::env::temp_dir().join(format!("throttle-capture-{}", unique_id()));
    std::fs::create_dir_all(&dir).expect("a directory for the captures");
    let pair = VethPair::builder().sender_addrs(["10.99.10.1/16", "10.99.10.2/16"]).build();
    let [over, denied] = <[std::net::IpAddr; 2]>::try_from(pair.sender_ips()).expect("two sources");
    let config = format!(
        "[limits]\nrate = 100\nburst = 100\n\n[[rules]]\ncidr = \"{denied}/32\"\naction = \"deny\"\n"
    );
    let daemon = Daemon::builder(&pair.receiver, &pair.rx_if).config(&config).start_ready();
    let flows = [over, denied].map(|src| Flow::new(src, pair.dst_for(src, 9000)).rate(1_000)).to_vec();
    let flood = Flood::start(&pair.sender, flows, Some(Duration::from_secs(4)));
    std::thread::sleep(Duration::from_millis(500));

    let file = dir.join("over.pcap");
    let file_arg = file.to_str().expect("a path");
    let capture = daemon.cli(
        &pair.receiver,
        ["capture", "--reason", "over_limit", "--source", &format!("{over}/32"), "-c", "20", "-w", file_arg],
    );
    checks.that(capture.code == Some(0), &format!("{}: {}", capture.command, capture.stderr.trim()));
    match tshark(&file) {
        Ok(lines) => checks.that(
            lines.len() == 20 && lines.iter().all(|l| *l == format!("{over}\t9000")),
            &format!(
                "tshark reads 20 packets, all from {over} to udp/9000: {} lines, first {:?}",
                lines.len(),
                lines.first()
            ),
        ),
        Err(err) => checks.that(false, &err),
    }

    // To standard output, as `| tcpdump -r -` takes it, with a sample.
    let out = pair
        .receiver
        .command(throttle_tests::daemon::throttle_bin())
        .args(["capture", "--reason", "deny_rule", "--sample", "1/2", "-c", "5", "-w", "-"])
        .env("THROTTLE_ADMIN", daemon.admin().to_string())
        .output()
        .expect("throttle capture -w -");
    let piped = dir.join("denied.pcap");
    std::fs::write(&piped, &out.stdout).expect("writing the piped capture");
    match tshark(&piped) {
        Ok(lines) => checks.that(
            out.status.success()
                && lines.len() == 5
                && lines.iter().all(|l| l.starts_with(&denied.to_string())),
            &format!("piped: tshark reads 5 packets, all from the denied {denied}: {lines:?}"),
        ),
        Err(err) => checks.that(false, &err),
    }
    let bad = daemon.cli(&pair.receiver, ["capture", "--reason", "passed", "-w", file_arg]);
    checks.that(
        bad.code == Some(1) && bad.stderr.contains("not a drop reason"),
        &format!("{}: refused, naming the value: {}", bad.command, bad.stderr.trim()),
    );
    let _ = flood.join();
    let hits = daemon.api_get(&pair.receiver, "/v1/stats");
    let denied_packets = hits["rules"][0]["packets"].as_u64().unwrap_or(0);
    checks.that(
        denied_packets > 1_000,
        &format!("the deny rule's hit count in /v1/stats: {denied_packets} packets ({})", hits["rules"]),
    );
    let stats = daemon.api_get(&pair.receiver, "/v1/events?n=1");
    checks.that(
        stats["data_path"]["captured"].as_u64().is_some_and(|n| n >= 25),
        &format!("the data path counted what it copied: {}", stats["data_path"]),
    );
    remove_dir(&dir);
    checks.assert_all();
}
