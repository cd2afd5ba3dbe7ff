//! `/metrics`: the verdict counters, the bucket map's fill, the rules, the
//! configuration version, the controller and the API's own requests, in the
//! Prometheus text format. The kernel's values are read at each scrape.

use prometheus_client::{
    encoding::text::encode,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use throttle_common::reason;

use super::AppState;
use crate::{
    controller::State,
    kernel::{counters_label, Attachment, Counters},
    policy::Action,
};

type Labels = Vec<(&'static str, String)>;

fn gauge(registry: &mut Registry, name: &str, help: &str, value: f64) {
    let metric = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    metric.set(value);
    registry.register(name, help, metric);
}

fn int_gauge(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let metric = Gauge::<i64>::default();
    metric.set(i64::try_from(value).unwrap_or(i64::MAX));
    registry.register(name, help, metric);
}

/// The metrics text of one scrape.
pub async fn render(state: &AppState) -> String {
    let mut registry = Registry::with_prefix("throttle");
    let sources = state.sources_tracked();
    let snapshot = state
        .with_control(|c| {
            let kernel = c.kernel();
            let mut rules = [0u64; 3];
            for rule in &c.policy().rules {
                rules[match rule.action {
                    Action::Allow => 0,
                    Action::Deny => 1,
                    Action::Limit => 2,
                }] += 1;
            }
            (
                kernel.counters_by_interface().ok(),
                kernel.attachments(),
                kernel.max_sources(),
                kernel.version(),
                rules,
                c.scale(),
                kernel.event_stats().ok(),
                c.sets(),
            )
        })
        .await;
    let (counters, attachments, capacity, version, rules, scale, events, sets) = snapshot;

    if let Some(by_interface) = counters {
        registry.register(
            "packets",
            "Packets seen by the XDP program, by interface, XDP mode and verdict reason",
            packets(&by_interface),
        );
    }
    let interfaces = Family::<Labels, Gauge>::default();
    for attachment in &attachments {
        interfaces
            .get_or_create(&vec![
                ("interface", attachment.iface.clone()),
                ("mode", attachment.mode.to_owned()),
            ])
            .set(i64::from(state.is_attached(&attachment.iface)));
    }
    registry.register(
        "interface_attached",
        "Interfaces the program is attached to, with the XDP mode: 0 while the interface is missing",
        interfaces,
    );
    int_gauge(&mut registry, "sources_tracked", "Sources with a bucket, at the last count", sources);
    int_gauge(
        &mut registry,
        "sources_capacity",
        "Capacity of the bucket map (an LRU map)",
        u64::from(capacity),
    );
    #[expect(clippy::cast_precision_loss, reason = "a ratio")]
    gauge(
        &mut registry,
        "sources_fill_ratio",
        "Sources tracked over the bucket map's capacity",
        sources as f64 / f64::from(capacity.max(1)),
    );
    let rule_family = Family::<Labels, Gauge>::default();
    for (action, count) in ["allow", "deny", "limit"].into_iter().zip(rules) {
        rule_family
            .get_or_create(&vec![("action", action.to_owned())])
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }
    registry.register("rules", "Rules in force, by action", rule_family);
    sets_and_events(&mut registry, &sets, events);
    int_gauge(&mut registry, "config_version", "Writes of the configuration to the maps", version);
    int_gauge(
        &mut registry,
        "ready",
        "1 once the program is attached to every interface, 0 while one is missing",
        u64::from(state.is_ready()),
    );
    int_gauge(&mut registry, "uptime_seconds", "Seconds since the daemon started", state.uptime().as_secs());
    gauge(&mut registry, "controller_scale", "The controller's factor on every rate (floor..1)", scale);
    controller(&mut registry, state);
    fleet(&mut registry, state);
    daemon_counters(&mut registry);
    registry.register(
        "api_requests",
        "Admin API requests by route, method and status",
        state.0.requests.clone(),
    );

    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}

/// The sets' gauges and the data path's event counters.
fn sets_and_events(
    registry: &mut Registry,
    sets: &crate::control::SetsView,
    events: Option<crate::kernel::EventStats>,
) {
    let set_family = Family::<Labels, Gauge>::default();
    for set in &sets.sets {
        set_family
            .get_or_create(&vec![("set", set.name.to_string())])
            .set(i64::try_from(set.prefixes).unwrap_or(i64::MAX));
    }
    registry.register("set_prefixes", "Prefixes of each IP set", set_family);
    int_gauge(
        registry,
        "set_memory_bytes",
        "The kernel's account of the set tries' memory",
        sets.memory_bytes,
    );
    if let Some(events) = events {
        let family = Family::<Labels, Counter>::default();
        for (outcome, count) in
            [("sent", events.sent), ("suppressed", events.suppressed), ("lost", events.lost)]
        {
            family.get_or_create(&vec![("outcome", outcome.to_owned())]).inc_by(count);
        }
        registry.register(
            "data_path_events",
            "Events of the data path: sent, held back by their budget, lost to a full ring",
            family,
        );
    }
}

/// The controller's gauges.
fn controller(registry: &mut Registry, state: &AppState) {
    let Some(handle) = state.controller() else {
        return;
    };
    let status = handle.status();
    int_gauge(
        registry,
        "controller_enabled",
        "1 when the controller moves the scale",
        u64::from(status.enabled),
    );
    int_gauge(
        registry,
        "controller_holding",
        "1 when the controller holds the scale for want of latency samples",
        u64::from(status.state == State::Holding),
    );
    gauge(registry, "controller_floor", "Lowest scale the controller may set", status.floor);
    if let Some(latency) = &status.latency {
        let family = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        for (quantile, value) in [
            ("0.5", latency.percentiles.p50),
            ("0.9", latency.percentiles.p90),
            ("0.99", latency.percentiles.p99),
        ] {
            family.get_or_create(&vec![("quantile", quantile.to_owned())]).set(value);
        }
        registry.register("latency_ms", "The protected service's latency over the short window", family);
    }
}

/// What the daemon dropped or refused to stay up: log lines, connections.
fn daemon_counters(registry: &mut Registry) {
    counter(
        registry,
        "log_write_errors",
        "Log lines the daemon could not write (its stderr closed or full) and dropped",
        crate::logging::write_errors(),
    );
    let connections = super::serve::connection_stats();
    counter(
        registry,
        "api_connections_refused_peer",
        "Admin API connections closed on arrival: their peer held its share",
        connections.refused_peer,
    );
    counter(
        registry,
        "api_connections_refused_full",
        "Admin API connections closed on arrival: every slot had a request in progress",
        connections.refused_full,
    );
    counter(
        registry,
        "api_connections_evicted",
        "Idle admin API connections closed to make room for a new one",
        connections.evicted,
    );
}

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let metric = Counter::<u64>::default();
    metric.inc_by(value);
    registry.register(name, help, metric);
}

/// Fleet mode's gauges and counters.
fn fleet(registry: &mut Registry, state: &AppState) {
    use crate::runtime::fleet::share::Link;
    let Some(fleet) = state.fleet() else {
        return;
    };
    let m = fleet.metrics();
    int_gauge(registry, "cluster_nodes", "Live nodes of the fleet at the last sync", m.nodes as u64);
    gauge(
        registry,
        "cluster_sync_age_seconds",
        "Seconds since the last sync with the fleet that succeeded (since the start if none has)",
        m.sync_age.as_secs_f64(),
    );
    if let Some(rtt) = m.rtt {
        gauge(
            registry,
            "cluster_sync_rtt_seconds",
            "Round trip of the last sync with Redis",
            rtt.as_secs_f64(),
        );
    }
    counter(registry, "cluster_syncs", "Syncs with the fleet that succeeded", m.syncs);
    counter(
        registry,
        "cluster_sync_errors",
        "Syncs with the fleet that failed (deadline missed included)",
        m.errors,
    );
    counter(registry, "cluster_syncs_skipped", "Syncs skipped for missing their deadline", m.skipped);
    counter(
        registry,
        "cluster_policy_refused",
        "Fleet policy documents refused here for not validating",
        m.refused,
    );
    int_gauge(
        registry,
        "cluster_policy_version",
        "The version of the fleet's policy in force on this node",
        state.control(|c| c.fleet_version()),
    );
    int_gauge(
        registry,
        "cluster_fleet_policy_version",
        "The latest version of the fleet's policy, as last read",
        m.fleet_policy_version,
    );
    int_gauge(
        registry,
        "cluster_heavy_sources",
        "Sources whose share was set at the last sync",
        m.heavy as u64,
    );
    let family = Family::<Labels, Gauge>::default();
    for link in Link::ALL {
        family.get_or_create(&vec![("state", link.name().to_owned())]).set(i64::from(link == m.link));
    }
    registry.register("cluster_state", "1 for the node's state with the fleet", family);
}

/// The verdict counters of each interface, labelled.
fn packets(by_interface: &[(Option<Attachment>, Counters)]) -> Family<Labels, Counter> {
    let packets = Family::<Labels, Counter>::default();
    for (attachment, counters) in by_interface {
        let (interface, mode) = counters_label(attachment.as_ref());
        for (slot, (&name, &count)) in reason::NAMES.iter().zip(counters).enumerate() {
            let verdict = if reason::drops(reason::ALL[slot]) { "drop" } else { "pass" };
            packets
                .get_or_create(&vec![
                    ("interface", interface.clone()),
                    ("mode", mode.clone()),
                    ("reason", name.to_owned()),
                    ("verdict", verdict.to_owned()),
                ])
                .inc_by(count);
        }
    }
    packets
}
