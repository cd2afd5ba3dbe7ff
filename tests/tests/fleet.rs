//! Fleet mode end to end, as root: three real daemons, each on its own veth
//! pair and namespaces, sharing one real `redis-server` (started by the test
//! on a loopback port and a Unix socket, with its own directory, and
//! stopped at the end) — and a Redis Cluster of three masters, driven
//! through the daemon's own client.
//!
//! Judged: the API's answers, real packets arriving (or not) on the far
//! side, the verdict counters, and what `/v1/cluster` and `/metrics` say.
//! Every figure is printed.

use std::{
    net::IpAddr,
    sync::{Arc, Barrier},
    thread,
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use throttle_tests::{
    poll_until, redis::RedisCluster, redis::RedisServer, report, require_root, Checks, Daemon, Flood, Flow,
    Netns, Receiver, VethPair,
};

/// The UDP port every flow goes to.
const PORT: u16 = 9000;
/// The one source every node sees (each pair's sender has it).
const SOURCE: &str = "10.99.3.7";
/// How long the receiver must be quiet before it is done.
const QUIET: Duration = Duration::from_millis(300);
/// The bound the fleet promises for a policy change to reach every node.
const PROPAGATION_BOUND: Duration = Duration::from_secs(1);

/// One node of the fleet: its pair and its daemon.
struct Node {
    name: String,
    pair: VethPair,
    daemon: Daemon,
}

impl Node {
    fn get(&self, path: &str) -> Value {
        self.daemon.api_get(&self.pair.receiver, path)
    }

    fn cluster(&self) -> Value {
        self.get("/v1/cluster")
    }

    fn call(&self, method: &str, path: &str, body: &Value) -> (u16, Value) {
        call(&self.pair.receiver, method, &format!("http://{}{path}", self.daemon.admin()), body)
    }

    fn metrics(&self) -> String {
        let (status, text) =
            self.pair.receiver.curl("GET", &format!("http://{}/metrics", self.daemon.admin()), &[], None);
        assert_eq!(status, 200, "GET /metrics: {text}");
        text
    }
}

/// A JSON request: its status and the JSON it answered (null when none).
fn call(ns: &Netns, method: &str, url: &str, body: &Value) -> (u16, Value) {
    let (status, text) = ns.curl(method, url, &[], Some(&body.to_string()));
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// The `[cluster]` section of a node.
fn cluster_section(redis: &RedisServer, fleet: &str, node: &str, sync_ms: u64, hold_ms: u64) -> String {
    format!(
        "[cluster]\nredis = \"{}\"\nnode = \"{node}\"\nname = \"{fleet}\"\nsync_ms = {sync_ms}\nhold_ms = {hold_ms}\n",
        redis.socket_url()
    )
}

/// `count` nodes of one fleet, each with the source [`SOURCE`] on its
/// sender and `limits` as its `[limits]`, all ready and seeing each other.
fn start_fleet(redis: &RedisServer, count: usize, sync_ms: u64, hold_ms: u64, limits: &str) -> Vec<Node> {
    let fleet = format!("t{}", throttle_tests::unique_id());
    let nodes: Vec<Node> = (0..count)
        .map(|i| {
            let name = ["a", "b", "c", "d"][i].to_owned();
            let pair = VethPair::builder().sender_addr(&format!("{SOURCE}/16")).build();
            let config =
                format!("{}\n[limits]\n{limits}\n", cluster_section(redis, &fleet, &name, sync_ms, hold_ms));
            let daemon = Daemon::builder(&pair.receiver, &pair.rx_if).config(&config).start_ready();
            Node { name, pair, daemon }
        })
        .collect();
    for node in &nodes {
        let seen = poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
            let view = node.cluster();
            (view["nodes"].as_array().map_or(0, Vec::len) == count && view["state"] == "synced")
                .then_some(view)
        });
        assert!(
            seen.is_some(),
            "node {} does not see {count} nodes: {}\n{}",
            node.name,
            node.cluster(),
            node.daemon.log()
        );
    }
    nodes
}

/// The fleet policy version a node runs, as `GET /v1/status` shows it.
fn running_version(node: &Node) -> u64 {
    let status = node.get("/v1/status");
    status["fleet"]["policy_version"].as_u64().unwrap_or_else(|| panic!("no fleet in the status: {status}"))
}

/// Sends `count` datagrams from [`SOURCE`] at `pps` to `node`; how many
/// arrived.
fn send(node: &Node, pps: u64, secs: f64) -> (u64, u64) {
    let receiver = Receiver::start(&node.pair.receiver, PORT);
    let src: IpAddr = SOURCE.parse().expect("an address");
    let flow = Flow::new(src, node.pair.dst_for(src, PORT)).rate(pps);
    let reports = Flood::start(&node.pair.sender, vec![flow], Some(Duration::from_secs_f64(secs))).join();
    let arrivals = receiver.finish(QUIET);
    (reports[0].sent, arrivals.from_source(src))
}

fn counter(node: &Node, name: &str) -> u64 {
    let stats = node.get("/v1/stats");
    stats["counters"][name].as_u64().unwrap_or_else(|| panic!("no counter {name} in {stats}"))
}

/// The calls Redis served so far, by command (`INFO commandstats`).
fn redis_calls(redis: &RedisServer) -> Vec<(String, u64)> {
    redis
        .cli(&["INFO", "commandstats"])
        .lines()
        .filter_map(|line| {
            let (name, rest) = line.strip_prefix("cmdstat_")?.split_once(':')?;
            let calls = rest.strip_prefix("calls=")?.split(',').next()?.parse().ok()?;
            Some((name.to_owned(), calls))
        })
        .filter(|(name, _)| name != "info")
        .collect()
}

/// The value of an unlabelled metric line `name value`.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn a_rule_added_on_one_node_is_in_force_on_every_node_within_a_second() {
    require_root!();
    let mut checks = Checks::new("a_rule_added_on_one_node_is_in_force_on_every_node_within_a_second");
    let redis = RedisServer::start();
    let nodes = start_fleet(&redis, 3, 100, 5_000, "rate = 10000\nburst = 10000");
    let (a, others) = nodes.split_first().expect("three nodes");

    for node in &nodes {
        let (sent, arrived) = send(node, 200, 0.2);
        checks.that(
            sent > 0 && arrived == sent,
            &format!("before the rule, {}: {arrived} of {sent} arrived", node.name),
        );
    }

    let started = Instant::now();
    let (status, body) = a.call("POST", "/v1/rules", &json!({"cidr": "10.99.3.0/24", "action": "deny"}));
    assert_eq!(status, 201, "POST /v1/rules on a: {body}");
    let version = running_version(a);
    checks.that(version >= 1, &format!("a runs fleet policy version {version}"));
    for node in others {
        let reached = poll_until(Duration::from_secs(5), Duration::from_millis(5), || {
            (running_version(node) == version).then(|| started.elapsed())
        });
        let Some(after) = reached else {
            panic!(
                "{} never ran version {version}: {}\n{}",
                node.name,
                node.get("/v1/status"),
                node.daemon.log()
            );
        };
        report(&format!(
            "fleet: the rule added on a was in force on {} after {:.0} ms",
            node.name,
            after.as_secs_f64() * 1e3
        ));
        checks.that(
            after <= PROPAGATION_BOUND,
            &format!("{} took it within {PROPAGATION_BOUND:?} ({after:?})", node.name),
        );
        let rules = node.get("/v1/rules");
        checks.that(rules["rules"][0]["cidr"] == "10.99.3.0/24", &format!("{}'s rules: {rules}", node.name));
    }
    for node in others {
        let denied = counter(node, "deny_rule");
        let (sent, arrived) = send(node, 200, 0.3);
        let denied = counter(node, "deny_rule") - denied;
        checks.that(
            sent > 0 && arrived == 0 && denied >= sent,
            &format!("after the rule, {}: {arrived} of {sent} arrived, {denied} denied", node.name),
        );
    }

    // A document that does not validate, written behind the fleet's back:
    // refused by every node, which keeps its policy and says so.
    let bad = json!({"format": 1, "limits": {"rate": 0}}).to_string();
    let key = format!("{{{}}}:policy", nodes[0].cluster()["name"].as_str().expect("a name"));
    let bad_version = (version + 1).to_string();
    let written = redis.cli(&["HSET", &key, "version", &bad_version, "doc", &bad]);
    assert!(written.trim().parse::<u64>().is_ok(), "HSET {key}: {written:?}");
    for node in &nodes {
        let refused = poll_until(Duration::from_secs(3), Duration::from_millis(20), || {
            let view = node.cluster();
            (view["refused_version"].as_u64() == Some(version + 1)).then_some(view)
        });
        let view = refused
            .unwrap_or_else(|| panic!("{} did not refuse the bad document: {}", node.name, node.cluster()));
        let reason = view["refused_reason"].as_str().unwrap_or_default().to_owned();
        checks.that(reason.contains("`fleet.limits.rate` = 0"), &format!("{} says why: {reason}", node.name));
        checks.that(running_version(node) == version, &format!("{} still runs version {version}", node.name));
        checks.that(
            metric(&node.metrics(), "throttle_cluster_policy_refused_total").is_some_and(|n| n >= 1.0),
            &format!("{}'s metrics count the refusal", node.name),
        );
        checks.that(
            node.daemon.log().contains("refused, the running policy stays"),
            &format!("{} logs it", node.name),
        );
    }
    // A change made on a node replaces it.
    let (status, body) = a.call("PATCH", "/v1/limits", &json!({"rate": 5000}));
    checks.that(status == 200, &format!("a change over the refused document: {status} {body}"));
    for node in &nodes {
        let took = poll_until(Duration::from_secs(3), Duration::from_millis(20), || {
            (node.get("/v1/limits")["rate"] == 5000).then_some(())
        });
        checks.that(took.is_some(), &format!("{} runs the change: {}", node.name, node.get("/v1/limits")));
    }
    // The controller's parameters travel too.
    let (status, body) = a.call("PUT", "/v1/controller", &json!({"floor": 0.3}));
    checks.that(status == 200, &format!("PUT /v1/controller on a: {status} {body}"));
    for node in others {
        let took = poll_until(PROPAGATION_BOUND, Duration::from_millis(20), || {
            (node.get("/v1/controller")["floor"] == 0.3).then_some(())
        });
        checks.that(
            took.is_some(),
            &format!("{}'s controller floor: {}", node.name, node.get("/v1/controller")["floor"]),
        );
    }
    checks.assert_all();
}

#[test]
fn of_two_concurrent_changes_one_wins_and_the_other_gets_409_with_the_current_version() {
    require_root!();
    let mut checks =
        Checks::new("of_two_concurrent_changes_one_wins_and_the_other_gets_409_with_the_current_version");
    let redis = RedisServer::start();
    let nodes = start_fleet(&redis, 3, 100, 5_000, "rate = 10000\nburst = 10000");
    let nodes = Arc::new(nodes);
    let mut conflicts = 0;
    for round in 0..10u64 {
        let barrier = Arc::new(Barrier::new(2));
        let answers: Vec<(u16, Value)> = (0..2)
            .map(|i| {
                let (nodes, barrier) = (Arc::clone(&nodes), Arc::clone(&barrier));
                thread::spawn(move || {
                    let rate = 1000 + round * 10 + i;
                    barrier.wait();
                    nodes[usize::try_from(i).expect("small")].call(
                        "PATCH",
                        "/v1/limits",
                        &json!({"rate": rate}),
                    )
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().expect("a request thread"))
            .collect();
        let statuses = [answers[0].0, answers[1].0];
        let won = statuses.iter().filter(|&&s| s == 200).count();
        checks.that(won >= 1, &format!("round {round}: at least one change is made: {answers:?}"));
        if let Some((_, body)) = answers.iter().find(|(s, _)| *s == 409) {
            conflicts += 1;
            checks.that(
                body["error"]["code"] == "fleet_conflict",
                &format!("round {round}: the 409 says why: {body}"),
            );
            let current = body["error"]["current_version"].as_u64();
            let winner = nodes.iter().map(running_version).max();
            checks.that(
                current.is_some() && current <= winner,
                &format!("round {round}: the 409 names the version that won ({current:?}, the fleet at {winner:?})"),
            );
        } else {
            checks.that(statuses == [200, 200], &format!("round {round}: {answers:?}"));
        }
        // Every node ends on the same limits, those of the last change.
        let settled = poll_until(Duration::from_secs(3), Duration::from_millis(20), || {
            let rates: Vec<Value> = nodes.iter().map(|n| n.get("/v1/limits")["rate"].clone()).collect();
            rates.windows(2).all(|w| w[0] == w[1]).then_some(rates)
        });
        checks.that(settled.is_some(), &format!("round {round}: the nodes agree on the limits"));
    }
    report(&format!("fleet: {conflicts} of 10 rounds of two simultaneous changes had a loser (409)"));
    checks.that(conflicts >= 1, &format!("two simultaneous changes conflicted in {conflicts} of 10 rounds"));
    checks.assert_all();
}

/// Waits for `node` to fall back once Redis is gone (killed at `killed`),
/// and checks that it held the last shares for `hold` first and that its
/// status and metrics say so.
fn check_fallback(checks: &mut Checks, node: &Node, killed: Instant, hold: Duration) {
    let fallback = poll_until(hold + Duration::from_secs(3), Duration::from_millis(20), || {
        let view = node.cluster();
        (view["state"] == "fallback").then(|| (killed.elapsed(), view))
    });
    let Some((after, at_fallback)) = fallback else {
        panic!("{} never fell back: {}\n{}", node.name, node.cluster(), node.daemon.log());
    };
    // The hold runs from the last sync that succeeded, which on a loaded
    // machine may be well before the kill: what the node holds for is the
    // age of that sync when it falls back, not the time since the kill.
    let age = at_fallback["sync_age_seconds"].as_f64().unwrap_or(0.0);
    report(&format!(
        "fleet: {} fell back {:.0} ms after Redis was killed, its last sync {:.0} ms old (hold {hold:?})",
        node.name,
        after.as_secs_f64() * 1e3,
        age * 1e3
    ));
    checks.that(
        age >= hold.as_secs_f64(),
        &format!(
            "{} held the last shares for hold_ms first (last sync {age:.3} s old at the fallback)",
            node.name
        ),
    );
    let view = node.cluster();
    checks.that(
        view["shares"]["default_q16"] == 65_536 / 3 + 1 || view["shares"]["default_q16"] == 65_536 / 3,
        &format!("{}: every source gets the limit / 3: {}", node.name, view["shares"]),
    );
    checks.that(
        node.get("/v1/status")["fleet"]["state"] == "fallback",
        &format!("{}'s status says so", node.name),
    );
    let metrics = node.metrics();
    checks.that(
        metrics.contains("throttle_cluster_state{state=\"fallback\"} 1"),
        &format!("{}'s metrics say so", node.name),
    );
    checks.that(
        metric(&metrics, "throttle_cluster_sync_errors_total").is_some_and(|n| n > 0.0),
        &format!("{}'s metrics count the failed syncs", node.name),
    );
    checks.that(
        metric(&metrics, "throttle_cluster_sync_age_seconds").is_some_and(|age| age >= hold.as_secs_f64()),
        &format!("{}'s sync age grows", node.name),
    );
}

#[test]
fn with_redis_gone_the_nodes_hold_then_fall_back_and_resume_on_their_own_when_it_is_back() {
    require_root!();
    let mut checks =
        Checks::new("with_redis_gone_the_nodes_hold_then_fall_back_and_resume_on_their_own_when_it_is_back");
    let mut redis = RedisServer::start();
    let hold = Duration::from_millis(1_500);
    let nodes = start_fleet(&redis, 3, 100, 1_500, "rate = 10000\nburst = 10000");
    let (status, body) =
        nodes[0].call("POST", "/v1/rules", &json!({"cidr": "192.0.2.0/24", "action": "deny"}));
    assert_eq!(status, 201, "{body}");
    let version = running_version(&nodes[0]);
    let log_at: Vec<usize> = nodes.iter().map(|n| n.daemon.log_len()).collect();

    redis.kill();
    let killed = Instant::now();
    for node in &nodes {
        let holding = poll_until(Duration::from_secs(2), Duration::from_millis(10), || {
            let state = node.cluster()["state"].clone();
            (state == "holding" || state == "fallback").then_some(state)
        });
        checks.that(holding.is_some(), &format!("{} saw Redis go: {}", node.name, node.cluster()));
    }
    for node in &nodes {
        check_fallback(&mut checks, node, killed, hold);
    }
    for (node, &at) in nodes.iter().zip(&log_at) {
        let log = node.daemon.log();
        let lines = log[at..]
            .lines()
            .filter(|l| l.contains("throttle::runtime::fleet") && l.contains("every source gets its limit"))
            .count();
        checks.that(lines == 1, &format!("{} logged the fallback once ({lines} lines)", node.name));
        // Never a blackhole: traffic under the limit still arrives.
        let (sent, arrived) = send(node, 200, 0.3);
        checks.that(
            sent > 0 && arrived == sent,
            &format!("{} with Redis gone: {arrived} of {sent} arrived", node.name),
        );
    }

    redis.restart();
    let back = Instant::now();
    for node in &nodes {
        let synced = poll_until(Duration::from_secs(15), Duration::from_millis(20), || {
            let view = node.cluster();
            (view["state"] == "synced" && view["nodes"].as_array().map_or(0, Vec::len) == 3)
                .then(|| back.elapsed())
        });
        let Some(after) = synced else {
            panic!("{} did not resume: {}\n{}", node.name, node.cluster(), node.daemon.log());
        };
        report(&format!(
            "fleet: {} synced again {:.0} ms after Redis came back",
            node.name,
            after.as_secs_f64() * 1e3
        ));
    }
    // The restarted Redis was empty: the nodes wrote their policy back, and
    // changes go on from it.
    let restored = redis.cli(&[
        "HGET",
        &format!("{{{}}}:policy", nodes[0].cluster()["name"].as_str().unwrap_or("")),
        "version",
    ]);
    checks.that(
        restored.trim() == version.to_string(),
        &format!("the policy written back is version {version}: {restored:?}"),
    );
    let (status, body) = nodes[1].call(
        "DELETE",
        &format!("/v1/rules/{}", nodes[1].get("/v1/rules")["rules"][0]["id"]),
        &json!({}),
    );
    checks.that(status == 204, &format!("a change after Redis came back: {status} {body}"));
    for node in &nodes {
        let took = poll_until(Duration::from_secs(3), Duration::from_millis(20), || {
            node.get("/v1/rules")["rules"].as_array().is_some_and(Vec::is_empty).then_some(())
        });
        checks.that(took.is_some(), &format!("{} took the change made after Redis came back", node.name));
    }
    checks.assert_all();
}

#[test]
fn the_shares_of_one_source_follow_its_traffic_over_three_nodes() {
    require_root!();
    let mut checks = Checks::new("the_shares_of_one_source_follow_its_traffic_over_three_nodes");
    let redis = RedisServer::start();
    // 300/s: a node that sees 100/s or more of a source holds a share of it.
    let nodes = start_fleet(&redis, 3, 100, 5_000, "rate = 300\nburst = 300");
    for (label, split) in [("even", [400u64, 400, 400]), ("80/10/10", [960, 120, 120])] {
        let floods: Vec<Flood> = nodes
            .iter()
            .zip(split)
            .map(|(node, pps)| {
                let src: IpAddr = SOURCE.parse().expect("an address");
                let flow = Flow::new(src, node.pair.dst_for(src, PORT)).rate(pps);
                Flood::start(&node.pair.sender, vec![flow], None)
            })
            .collect();
        thread::sleep(Duration::from_secs(1));
        let (calls_before, at) = (redis_calls(&redis), Instant::now());
        let passed_before: Vec<u64> = nodes.iter().map(|node| counter(node, "passed")).collect();
        thread::sleep(Duration::from_secs(2));
        let passed_after: Vec<u64> = nodes.iter().map(|node| counter(node, "passed")).collect();
        let calls = redis_calls(&redis);
        let secs = at.elapsed().as_secs_f64();
        check_fleet_admits(&mut checks, label, &split, &passed_before, &passed_after, secs);
        for (command, count) in &calls {
            let before = calls_before.iter().find(|(c, _)| c == command).map_or(0, |(_, n)| *n);
            #[expect(clippy::cast_precision_loss, reason = "small counts")]
            let per_node = (count - before) as f64 / secs / 3.0;
            report(&format!("fleet, {label}: Redis load per node: {per_node:.1} {command}/s (sync_ms 100)"));
        }
        let total: u64 = split.iter().sum();
        for (node, pps) in nodes.iter().zip(split) {
            // The mean of five looks, 100 ms apart: each sync's share moves
            // with how the machine paced the senders over its last periods.
            let mut looks = Vec::new();
            for _ in 0..5 {
                let view = node.cluster();
                let found = view["shares"]["sources"]
                    .as_array()
                    .and_then(|s| s.iter().find(|s| s["source"] == SOURCE))
                    .cloned();
                match found {
                    Some(source) => looks.push(source),
                    None => checks
                        .that(false, &format!("{label}: {} holds no share of {SOURCE}: {view}", node.name)),
                }
                thread::sleep(Duration::from_millis(100));
            }
            let Some(source) = looks.last().cloned() else {
                continue;
            };
            #[expect(clippy::cast_precision_loss, reason = "at most five looks")]
            let mean = looks.iter().filter_map(|s| s["share"].as_f64()).sum::<f64>() / looks.len() as f64;
            #[expect(clippy::cast_precision_loss, reason = "small rates")]
            let expected = pps as f64 / total as f64;
            let share = mean;
            report(&format!(
                "fleet, {label}: {} offered {pps}/s of {total}/s, mean share {share:.3} (expected {expected:.3}), \
                 fleet offered {:.0}/s by {} nodes",
                node.name, source["fleet_offered"], source["nodes"]
            ));
            checks.that(
                (share - expected).abs() <= 0.08,
                &format!("{label}: {}'s share {share:.3} near {expected:.3}", node.name),
            );
            checks.that(source["nodes"] == 3, &format!("{label}: three nodes report {SOURCE}: {source}"));
        }
        for flood in floods {
            let _ = flood.stop();
        }
        thread::sleep(Duration::from_millis(500));
    }
    checks.assert_all();
}

#[test]
fn a_per_minute_limit_holds_for_the_fleet_by_one_merged_debt() {
    // 30 a minute with a burst of 1: one packet every 2 s for the fleet.
    const RATE: f64 = 0.5;
    const BURST: f64 = 1.0;
    const SECS: f64 = 15.0;
    require_root!();
    let mut checks = Checks::new("a_per_minute_limit_holds_for_the_fleet_by_one_merged_debt");
    let redis = RedisServer::start();
    let nodes = start_fleet(&redis, 3, 100, 5_000, "rate = \"30/minute\"\nburst = 1");
    // One source flooding the three nodes at once, evenly.
    let arrived: Vec<(u64, u64)> = thread::scope(|scope| {
        let floods: Vec<_> = nodes.iter().map(|node| scope.spawn(|| send(node, 50, SECS))).collect();
        floods.into_iter().map(|f| f.join().expect("a flood")).collect()
    });
    let admitted: u64 = arrived.iter().map(|&(_, got)| got).sum();
    let bound = BURST + RATE * SECS;
    // Nodes that see the fleet's bucket admit again at the same moment each
    // admit one: up to (nodes - 1) bursts over the bound at that moment,
    // paid back by the wait that follows; one sync period (100 ms) more of
    // the rate per node.
    let allowance = 2.0 * BURST + 3.0 * RATE * 0.1;
    let alone = 3.0 * bound;
    #[expect(clippy::cast_precision_loss, reason = "small counts")]
    let admitted_f = admitted as f64;
    report(&format!(
        "fleet, a limit of 30/minute: the fleet admitted {admitted} in {SECS} s (one bucket: {bound:.1}, \
         allowed up to {:.1}); three nodes on their own would have admitted {alone:.1}; each node: {arrived:?}",
        bound + allowance
    ));
    checks.that(
        admitted_f <= bound + allowance && admitted_f >= bound - 2.0,
        &format!("the fleet admitted {admitted} of a source under 30/minute over {SECS} s, near {bound:.1}"),
    );
    for node in &nodes {
        let shared = node.cluster()["shares"]["sources"].as_array().map_or(0, Vec::len);
        checks.that(
            shared == 0,
            &format!("{}: a per-minute limit is not shared out ({shared} shares)", node.name),
        );
    }
    checks.assert_all();
}

/// What the three nodes admitted of the one source over `secs` (their
/// `passed` counters), once its shares had settled: the fleet's limit of
/// 300/s, within 10 % and one sync period (100 ms) of the limit per node,
/// where three nodes on their own would admit up to 300/s each.
fn check_fleet_admits(
    checks: &mut Checks,
    label: &str,
    split: &[u64; 3],
    before: &[u64],
    after: &[u64],
    secs: f64,
) {
    const RATE: f64 = 300.0;
    let admitted: u64 = before.iter().zip(after).map(|(b, a)| a - b).sum();
    #[expect(clippy::cast_precision_loss, reason = "small counts")]
    let admitted = admitted as f64;
    #[expect(clippy::cast_precision_loss, reason = "small rates")]
    let alone: f64 = split.iter().map(|&pps| (pps as f64).min(RATE)).sum::<f64>() * secs;
    let bound = RATE * secs;
    let slack = 0.1 * bound + 3.0 * RATE * 0.1;
    report(&format!(
        "fleet, {label}: the fleet admitted {admitted:.0} in {secs:.2} s (the fleet's limit: {bound:.0}, \
         allowed up to {:.0}); three nodes on their own would have admitted {alone:.0}",
        bound + slack
    ));
    checks.that(
        (admitted - bound).abs() <= slack,
        &format!("{label}: the fleet admitted {admitted:.0}, within {slack:.0} of {bound:.0} (300/s for {secs:.2} s)"),
    );
}

/// The daemon's own client against a Redis that requires a password: the
/// password from its file, an ACL user in the URL; a wrong one is refused.
#[test]
fn the_password_and_the_acl_user_reach_a_redis_that_requires_them() {
    use throttle::runtime::fleet::{FleetConfig, Link};
    let redis = RedisServer::start_with(&[
        "--requirepass",
        "s3cret",
        "--user",
        "fleet",
        "on",
        ">f1eet",
        "~*",
        "&*",
        "+@all",
    ]);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    for (url, password, works) in [
        (format!("redis://127.0.0.1:{}", redis.port()), "s3cret", true),
        (format!("redis://fleet@127.0.0.1:{}", redis.port()), "f1eet", true),
        (format!("redis://127.0.0.1:{}", redis.port()), "wrong", false),
        (format!("redis://fleet@127.0.0.1:{}", redis.port()), "s3cret", false),
    ] {
        let config = FleetConfig {
            seeds: vec![url.clone()],
            password_file: None,
            node: "a".into(),
            name: format!("p{}", throttle_tests::unique_id()),
            sync: Duration::from_millis(250),
            hold: Duration::from_secs(10),
        };
        let answer = runtime.block_on(async {
            let link = Link::new(&config, Some(password)).expect("a link");
            link.connect(&config, Some(password)).await;
            link.policy_version(Duration::from_secs(2)).await
        });
        report(&format!("fleet: {url} with password {password:?}: {answer:?}"));
        assert_eq!(answer.is_ok(), works, "{url} with {password:?}: {answer:?}");
    }
}

/// The daemon's own client over TLS (`rediss://`), the server's certificate
/// checked against a CA given the way OpenSSL takes one (`SSL_CERT_FILE`);
/// refused without it.
#[test]
fn tls_reaches_a_redis_whose_certificate_is_trusted() {
    use throttle::runtime::fleet::{FleetConfig, Link};
    let (redis, tls_port, cert) = RedisServer::start_tls();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    let config = FleetConfig {
        seeds: vec![format!("rediss://127.0.0.1:{tls_port}")],
        password_file: None,
        node: "a".into(),
        name: format!("s{}", throttle_tests::unique_id()),
        sync: Duration::from_millis(250),
        hold: Duration::from_secs(10),
    };
    let ask = || {
        runtime.block_on(async {
            let link = Link::new(&config, None).expect("a link");
            link.connect(&config, None).await;
            link.compare_and_set("{\"format\":1}", 0, "a", Duration::from_secs(3)).await
        })
    };
    let untrusted = ask();
    assert!(untrusted.is_err(), "a certificate no CA vouches for is refused: {untrusted:?}");
    // The only test of this binary that reaches for a CA.
    std::env::set_var("SSL_CERT_FILE", &cert);
    let trusted = ask();
    std::env::remove_var("SSL_CERT_FILE");
    report(&format!("fleet over TLS: without the CA {untrusted:?}, with it {trusted:?}"));
    assert_eq!(trusted, Ok(Ok(1)), "over TLS with the CA trusted");
    let key = format!("{{{}}}:policy", config.name);
    assert_eq!(redis.cli(&["HGET", &key, "version"]).trim(), "1", "written through TLS");
}

/// The daemon's own Redis client on a Redis Cluster of three masters: the
/// fleet's keys share one hash tag, so its scripts run on one shard.
#[test]
fn a_redis_cluster_of_three_masters_holds_a_fleet() {
    use throttle::runtime::fleet::{share::Traffic, Debt, FleetConfig, Link};
    let Some(cluster) = RedisCluster::start(3) else {
        panic!("redis-server's cluster mode does not run here: see the lines above");
    };
    let config = FleetConfig {
        seeds: cluster.nodes.iter().map(|n| format!("redis://127.0.0.1:{}", n.port())).collect(),
        password_file: None,
        node: "a".into(),
        name: format!("c{}", throttle_tests::unique_id()),
        sync: Duration::from_millis(250),
        hold: Duration::from_secs(10),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async {
        let link = Link::new(&config, None).expect("a link");
        tokio::time::timeout(Duration::from_secs(10), link.connect(&config, None)).await.expect("connected");
        let deadline = Duration::from_secs(2);
        assert_eq!(link.compare_and_set("{\"format\":1}", 0, "a", deadline).await.unwrap(), Ok(1));
        assert_eq!(
            link.compare_and_set("{\"format\":1}", 0, "b", deadline).await.unwrap(),
            Err(1),
            "the loser"
        );
        assert_eq!(link.policy(deadline).await.unwrap(), (1, Some("{\"format\":1}".to_owned())));
        let key = throttle::kernel::bucket_key(SOURCE.parse().expect("an address"), 0, 32, 64);
        let traffic = |offered| Traffic { offered, admitted: offered / 2.0 };
        let ttl = Duration::from_secs(1);
        // A per-minute limit's debt: b spent 2 s of it, a nothing; a reads
        // the fleet's, 2 s ahead of now less the time between.
        let debt = |spent_us| Debt { key, spent_us, tolerance_us: 10e6 };
        link.sync("b", "{}", ttl, &[(key, traffic(30.0))], &[debt(2e6)], deadline).await.expect("b's sync");
        let reply = link
            .sync("a", "{}", ttl, &[(key, traffic(10.0))], &[debt(0.0)], deadline)
            .await
            .expect("a's sync");
        assert!((1_500_000..=2_000_000).contains(&reply.debts_us[0]), "{reply:?}");
        assert_eq!(reply.policy_version, 1);
        assert_eq!(reply.nodes.len(), 2, "{reply:?}");
        let mut seen: Vec<(String, f64)> =
            reply.sources[0].iter().map(|(n, t)| (n.clone(), t.offered)).collect();
        seen.sort_by(|x, y| x.0.cmp(&y.0));
        assert_eq!(seen, [("a".to_owned(), 10.0), ("b".to_owned(), 30.0)]);
        let shard = cluster.nodes.iter().filter(|n| n.cli(&["DBSIZE"]).trim() != "0").count();
        report(&format!("fleet on a Redis Cluster of 3 masters: the fleet's keys are on {shard} shard(s)"));
        assert_eq!(shard, 1, "one hash tag, one shard");
    });
}
