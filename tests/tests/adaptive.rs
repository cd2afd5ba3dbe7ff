//! End to end, as root: the adaptive controller protecting a real HTTP
//! service from one heavy client while light clients keep being served.
//!
//! The receiver namespace runs an HTTP/1.1 service whose latency grows with
//! load (a few workers doing real work per request behind a bounded queue that
//! refuses with 503 once full) and the daemon on its veth, metering only the
//! service's port, with an HTTP latency probe on the service over the
//! namespace's loopback and a p99 target. From the sender namespace, light
//! clients (one address each, a new connection per request, a few requests a
//! second) and one heavy client (one address, many kept-alive connections
//! asking back to back) load it several times over its capacity.
//!
//! The same scenario runs twice, each time on fresh namespaces, a fresh
//! service and a fresh daemon: with the controller on, then with it off
//! (`enabled = false`). With it on, the scale must fall, the heavy client's
//! admitted rate must be clearly lower, and the light clients must be served
//! at least as often (and nearly always) and faster at the 99th percentile.

use std::{fmt::Write as _, net::IpAddr, thread, time::Duration};

use serde_json::Value;
use throttle_tests::{
    mono_ns, report, require_root, secs_between,
    service::{percentile, Client, Exchange, Load, Outcome, Service, ServiceConfig},
    Checks, Daemon, VethPair,
};

/// The service's port: the only traffic the daemon meters.
const PORT: u16 = 8080;
/// 4 workers, 1 ms of CPU and 19 ms of waiting per request: 200 requests a
/// second at most, 0.2 CPU at that. 32 more may wait (160 ms of queue).
const SERVICE: ServiceConfig = ServiceConfig {
    port: PORT,
    workers: 4,
    queue: 32,
    cpu: Duration::from_millis(1),
    wait: Duration::from_millis(19),
};
/// Light clients, one address each.
const LIGHT: [&str; 6] =
    ["10.99.1.1/16", "10.99.1.2/16", "10.99.1.3/16", "10.99.1.4/16", "10.99.1.5/16", "10.99.1.6/16"];
/// Each light client asks this often (4 a second, about 20 packets a second
/// with a new connection each time).
const LIGHT_EVERY: Duration = Duration::from_millis(250);
/// The heavy client's address.
const HEAVY: &str = "10.99.2.1/16";
/// Its kept-alive connections, each asking back to back: more than the
/// service's workers and queue together.
const HEAVY_CONNECTIONS: usize = 48;
/// What a heavy connection waits after a 503 before asking again.
const HEAVY_PAUSE: Duration = Duration::from_millis(50);
/// The per-source base limit, in packets: far above a light client's rate,
/// even at the floor.
const RATE: u64 = 1_000;
const BURST: u64 = 200;
/// The controller's floor: RATE * FLOOR is still over twice a light
/// client's packet rate.
const FLOOR: f64 = 0.05;
/// The latency objective on the probe's p99, in milliseconds.
const TARGET_MS: f64 = 60.0;
/// Load before the measurement starts (the controller settles).
const WARMUP: Duration = Duration::from_secs(8);
/// The measured part of each phase.
const MEASURE: Duration = Duration::from_secs(16);

fn daemon_config(iface: &str, enabled: bool) -> String {
    format!(
        r#"[daemon]
interfaces = ["{iface}"]

[limits]
rate = {RATE}
burst = {BURST}
unit = "packets"

[scope]
ports = [{{ proto = "tcp", port = {PORT} }}]

[adaptive]
enabled = {enabled}
algorithm = "gradient"
floor = {FLOOR}
interval_ms = 500
window_ms = 2000
min_samples = 5
target_ms = {TARGET_MS}
target_percentile = 99
history = 200

[adaptive.source]
kind = "http"
url = "http://127.0.0.1:{PORT}/"
interval_ms = 50
timeout_ms = 500
"#
    )
}

fn ip(cidr: &str) -> IpAddr {
    cidr.split('/').next().and_then(|a| a.parse().ok()).expect("an address")
}

/// What one phase measured.
#[derive(Debug)]
struct Phase {
    name: &'static str,
    light_sent: usize,
    light_ok: usize,
    light_refused: usize,
    light_p50: f64,
    light_p99: f64,
    heavy_ok_per_s: f64,
    heavy_refused_per_s: f64,
    scale: f64,
    mean_scale: f64,
    decisions: usize,
    state: String,
    probe_p99: Option<f64>,
}

impl Phase {
    #[expect(clippy::cast_precision_loss, reason = "request counts of a test fit in f64's 52-bit mantissa")]
    fn light_ratio(&self) -> f64 {
        self.light_ok as f64 / self.light_sent.max(1) as f64
    }
}

/// The number at `pointer` (`/latency/p99`) in `value`; NaN when there is none.
fn number(value: &Value, pointer: &str) -> f64 {
    value.pointer(pointer).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

/// The string `key` of `value`; `?` when there is none.
fn text<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key].as_str().unwrap_or("?")
}

/// The array `key` of `value`; empty when there is none.
fn list<'a>(value: &'a Value, key: &str) -> &'a [Value] {
    value[key].as_array().map_or(&[], Vec::as_slice)
}

/// Prints the first and last decisions of the controller and the busiest
/// sources.
fn note_controller(checks: &Checks, name: &str, status: &Value, sources: &Value) {
    let decisions = list(status, "decisions");
    let shown = if decisions.len() > 6 {
        [&decisions[..3], &decisions[decisions.len() - 3..]].concat()
    } else {
        decisions.to_vec()
    };
    for decision in &shown {
        checks.note(&format!(
            "{name}: decision at {:.1} s, {:.3} -> {:.3}: {}",
            number(decision, "/at_ms") / 1e3,
            number(decision, "/from"),
            number(decision, "/to"),
            text(decision, "reason")
        ));
    }
    for source in list(sources, "sources") {
        checks.note(&format!(
            "{name}: source {} passed {} dropped {}",
            text(source, "source"),
            number(source, "/passed"),
            number(source, "/dropped"),
        ));
    }
}

/// Runs the scenario on fresh namespaces with the controller on or off.
#[expect(clippy::cast_precision_loss, reason = "request counts of a test fit in f64's 52-bit mantissa")]
fn run_phase(checks: &Checks, name: &'static str, enabled: bool) -> Phase {
    let pair = VethPair::builder().sender_addrs(LIGHT.iter().copied().chain([HEAVY])).build();
    let service = Service::start(&pair.receiver, SERVICE);
    let daemon = Daemon::builder(&pair.receiver, &pair.rx_if)
        .config(&daemon_config(&pair.rx_if, enabled))
        .start_ready();
    let api_get = |path| daemon.api_get(&pair.receiver, path);
    let dst = pair.dst_for(ip(HEAVY), PORT);

    // The probe has measured the idle service before the load starts.
    thread::sleep(Duration::from_secs(2));
    let idle = api_get("/v1/controller");
    checks.note(&format!(
        "{name}: idle service, probe p50 {:.1} ms p99 {:.1} ms, state {}",
        number(&idle, "/latency/p50"),
        number(&idle, "/latency/p99"),
        text(&idle, "state")
    ));

    let light_count = u32::try_from(LIGHT.len()).expect("a few");
    let mut clients: Vec<Client> = LIGHT
        .iter()
        .zip(0u32..)
        .map(|(cidr, i)| Client::light(ip(cidr), dst, LIGHT_EVERY).after(LIGHT_EVERY * i / light_count))
        .collect();
    clients.extend((0..HEAVY_CONNECTIONS).map(|_| Client::heavy(ip(HEAVY), dst, HEAVY_PAUSE)));
    let load = Load::start(&pair.sender, clients);

    // The scale and the probe's p99 each second, to show the way there.
    let started = mono_ns();
    let total = WARMUP + MEASURE;
    let mut track = String::new();
    let mut from = None;
    let mut measured_scales = Vec::new();
    let mut second = 0u32;
    while secs_between(started, mono_ns()) < total.as_secs_f64() {
        second += 1;
        let at = started + u64::try_from(Duration::from_secs(second.into()).as_nanos()).expect("short");
        thread::sleep(Duration::from_nanos(at.saturating_sub(mono_ns())));
        if from.is_none() && Duration::from_secs(second.into()) >= WARMUP {
            from = Some(mono_ns());
        }
        let status = api_get("/v1/controller");
        let scale = number(&status, "/scale");
        if from.is_some() {
            measured_scales.push(scale);
        }
        let _ = write!(track, " {scale:.2}/{:.0}", number(&status, "/latency/p99"));
    }
    let to = mono_ns();
    let from = from.expect("the warm-up ends before the phase");
    let status = api_get("/v1/controller");
    let sources = api_get("/v1/sources?top=3");
    let exchanges = load.stop();
    checks.note(&format!("{name}: scale/probe p99 (ms) each second:{track}"));
    note_controller(checks, name, &status, &sources);
    checks.note(&format!(
        "{name}: service served {} refused {}; controller {}: {}",
        service.served(),
        service.refused(),
        text(&status, "state"),
        text(&status, "reason")
    ));
    drop(daemon);
    drop(service);

    let secs = secs_between(from, to);
    let in_window = |e: &&Exchange| e.start_ns >= from && e.start_ns < to;
    let light: Vec<&Exchange> = exchanges.iter().filter(|e| e.src != ip(HEAVY)).filter(in_window).collect();
    let heavy: Vec<&Exchange> = exchanges.iter().filter(|e| e.src == ip(HEAVY)).filter(in_window).collect();
    let light_ok: Vec<f64> =
        light.iter().filter(|e| e.outcome == Outcome::Ok).map(|e| e.latency_ms()).collect();
    let count = |list: &[&Exchange], outcome| list.iter().filter(|e| e.outcome == outcome).count();
    Phase {
        name,
        light_sent: light.len(),
        light_ok: light_ok.len(),
        light_refused: count(&light, Outcome::Refused),
        light_p50: percentile(&light_ok, 50.0),
        light_p99: percentile(&light_ok, 99.0),
        heavy_ok_per_s: count(&heavy, Outcome::Ok) as f64 / secs,
        heavy_refused_per_s: count(&heavy, Outcome::Refused) as f64 / secs,
        scale: number(&status, "/scale"),
        mean_scale: measured_scales.iter().sum::<f64>() / measured_scales.len().max(1) as f64,
        decisions: list(&status, "decisions").len(),
        state: text(&status, "state").to_owned(),
        probe_p99: status.pointer("/latency/p99").and_then(Value::as_f64),
    }
}

fn table(phases: &[&Phase]) -> String {
    let mut out = format!(
        "{:<14} {:>9} {:>9} {:>13} {:>10} {:>11} {:>11} {:>6} {:>10} {:>9}\n",
        "controller",
        "light p50",
        "light p99",
        "light ok",
        "refused",
        "heavy ok/s",
        "heavy 503/s",
        "scale",
        "mean scale",
        "decisions"
    );
    for p in phases {
        let _ = writeln!(
            out,
            "{:<14} {:>6.1} ms {:>6.1} ms {:>5}/{:<4} {:>2.0}% {:>10} {:>11.1} {:>11.1} {:>6.2} {:>10.2} {:>9}",
            p.name,
            p.light_p50,
            p.light_p99,
            p.light_ok,
            p.light_sent,
            p.light_ratio() * 100.0,
            p.light_refused,
            p.heavy_ok_per_s,
            p.heavy_refused_per_s,
            p.scale,
            p.mean_scale,
            p.decisions
        );
    }
    out
}

#[test]
fn the_controller_sheds_the_heavy_client_and_keeps_the_light_ones_fast() {
    require_root!();
    let test = "the_controller_sheds_the_heavy_client_and_keeps_the_light_ones_fast";
    let mut checks = Checks::new(test);
    let on = run_phase(&checks, "on", true);
    let off = run_phase(&checks, "off", false);
    report(&format!("\n{}", table(&[&on, &off])));
    checks.note(&format!(
        "probe p99: on {:?} ms, off {:?} ms; states {} / {}",
        on.probe_p99, off.probe_p99, on.state, off.state
    ));

    checks.that(
        on.scale < 1.0 && on.mean_scale < 0.9,
        &format!("on: the scale fell (now {:.3}, mean {:.3})", on.scale, on.mean_scale),
    );
    checks.that(on.decisions > 0, &format!("on: the controller decided ({} decisions)", on.decisions));
    checks.that(
        (off.scale - 1.0).abs() < f64::EPSILON,
        &format!("off: the scale stayed 1.0 ({:.3})", off.scale),
    );
    checks.that(
        on.heavy_ok_per_s < 0.7 * off.heavy_ok_per_s,
        &format!(
            "the heavy client's admitted rate with the controller ({:.1}/s) is under 70 % of without ({:.1}/s)",
            on.heavy_ok_per_s, off.heavy_ok_per_s
        ),
    );
    checks.that(
        on.light_ratio() >= 0.9,
        &format!(
            "on: the light clients were served {:.1} % of the time (at least 90 %)",
            on.light_ratio() * 100.0
        ),
    );
    checks.that(
        on.light_ratio() >= off.light_ratio(),
        &format!(
            "the light clients were served at least as often with the controller ({:.1} %) as without ({:.1} %)",
            on.light_ratio() * 100.0,
            off.light_ratio() * 100.0
        ),
    );
    checks.that(
        on.light_p99 < off.light_p99,
        &format!(
            "the light clients' p99 with the controller ({:.1} ms) is under without ({:.1} ms)",
            on.light_p99, off.light_p99
        ),
    );
    checks.assert_all();
}
