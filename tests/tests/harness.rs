//! Checks of the harness itself, without the daemon: traffic through a veth
//! pair with no XDP program arrives whole.

use std::time::Duration;

use throttle_tests::{require_root, Checks, Flood, Flow, Receiver, VethPair};

const PORT: u16 = 9000;

#[test]
fn paced_flows_arrive_whole_without_xdp() {
    require_root!();
    let mut checks = Checks::new("paced_flows_arrive_whole_without_xdp");
    let pair =
        VethPair::builder().sender_addrs(["10.99.1.1/16", "10.99.1.2/16", "fd00:99:0:1::2/48"]).build();
    let receiver = Receiver::start(&pair.receiver, PORT);
    let reports = Flood::start(&pair.sender, pair.flows(PORT, 2_000), Some(Duration::from_secs(1))).join();
    let arrivals = receiver.finish(Duration::from_millis(200));
    for report in &reports {
        let (src, sent) = report.sent_by_source[0];
        checks.that(
            arrivals.from_source(src.ip()) == sent,
            &format!(
                "{src}: sent {sent} in {:.3} s ({:.0}/s), received {}",
                report.secs(),
                report.pps(),
                arrivals.from_source(src.ip())
            ),
        );
        checks.within(&format!("{src} pacing"), 2_000.0 * report.secs(), sent, 0.05);
    }
    checks.that(arrivals.udp_drops == 0, &format!("receiver drops: {}", arrivals.udp_drops));
    checks.assert_all();
}

#[test]
fn unpaced_rotating_flow_reaches_the_receiver() {
    require_root!();
    let mut checks = Checks::new("unpaced_rotating_flow_reaches_the_receiver");
    let pair = VethPair::builder()
        .queues(2)
        .xps_per_cpu()
        .sender_addrs(["fd00:99:0:7::1/48", "fd00:99:0:7::2/48", "fd00:99:0:7::3/48"])
        .build();
    let receiver = Receiver::start(&pair.receiver, PORT);
    let dst = pair.dst_for(pair.sender_ips()[0], PORT);
    let reports = Flood::start(
        &pair.sender,
        vec![
            Flow::rotating(pair.sender_ips(), dst).pinned(0),
            Flow::new(pair.sender_ips()[0], dst).pinned(1),
        ],
        Some(Duration::from_millis(500)),
    )
    .join();
    let arrivals = receiver.finish(Duration::from_millis(200));
    let sent: u64 = reports.iter().map(|r| r.sent).sum();
    checks.note(&format!(
        "sent {sent} ({:.0}/s and {:.0}/s), received {}, receiver drops {}",
        reports[0].pps(),
        reports[1].pps(),
        arrivals.list.len(),
        arrivals.udp_drops
    ));
    for (addr, n) in arrivals.by_source() {
        checks.note(&format!("{addr}: {n}"));
    }
    checks.that(!arrivals.list.is_empty(), "something arrived");
    checks.assert_all();
}
