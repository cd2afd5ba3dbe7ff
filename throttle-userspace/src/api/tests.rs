//! The router called in-process over an in-memory kernel: every endpoint,
//! and a table of bad inputs that must each get their status and error code
//! and change nothing.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::Arc,
    time::Duration,
};

use axum::{
    body::Body,
    http::{header, HeaderMap, Method, Request, StatusCode},
    Router,
};
use http_body_util::BodyExt as _;
use serde_json::{json, Value};
use throttle_common::Bucket;
use tower::ServiceExt as _;

use super::{router, AppState, Token};
use crate::{
    control::{fake::FakeKernel, Control},
    controller::{self, AdaptiveConfig},
    kernel::bucket_key,
    policy::Policy,
    runtime::Runtime,
    store::Store,
};

struct Api {
    router: Router,
    state: AppState,
    kernel: FakeKernel,
    dir: tempfile::TempDir,
}

impl Api {
    fn new(token: Option<&str>) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let kernel = FakeKernel::default();
        let control =
            Control::new(Box::new(kernel.clone()), Policy::default(), Some(Store::open(dir.path()).unwrap()))
                .unwrap();
        let state = AppState::in_process(Runtime::new(control), token.map(Token::from));
        let config = AdaptiveConfig { enabled: false, ..AdaptiveConfig::default() };
        state.set_controller(controller::spawn(config, Arc::new(Runtime::clone(&state))).unwrap());
        Self { router: router(state.clone()), state, kernel, dir }
    }

    async fn send(&self, request: Request<Body>) -> (StatusCode, Value, HeaderMap) {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        (status, value, headers)
    }

    async fn call(&self, method: Method, uri: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(uri);
        let body = match body {
            Some(body) => {
                request = request.header(header::CONTENT_TYPE, "application/json");
                Body::from(body.to_string())
            }
            None => Body::empty(),
        };
        let (status, value, _) = self.send(request.body(body).unwrap()).await;
        (status, value)
    }

    /// Everything a bad request must leave as it was.
    async fn snapshot(&self) -> Value {
        let mut controller = self.call(Method::GET, "/v1/controller", None).await.1;
        controller["params"].take();
        json!({
            "limits": self.call(Method::GET, "/v1/limits", None).await.1,
            "scope": self.call(Method::GET, "/v1/scope", None).await.1,
            "rules": self.call(Method::GET, "/v1/rules", None).await.1,
            "classes": self.call(Method::GET, "/v1/classes", None).await.1,
            "unmatched": self.call(Method::GET, "/v1/unmatched", None).await.1,
            "controller": self.state.controller().unwrap().config().floor,
            "kernel_writes": self.kernel.0.lock().unwrap().writes,
            "buckets": self.kernel.0.lock().unwrap().buckets.len(),
            "state_file": std::fs::read_to_string(self.dir.path().join("state.json")).ok(),
        })
    }

    fn track(&self, addr: IpAddr, passed: u64, dropped: u64) {
        let key = bucket_key(addr, 0, 32, 64);
        self.kernel
            .0
            .lock()
            .unwrap()
            .buckets
            .push((key, Bucket { tat: 1, passed, dropped, ..Bucket::default() }));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_answers_while_the_sampler_walks_the_buckets() {
    let api = Api::new(None);
    api.track("192.0.2.1".parse().unwrap(), 1, 5);
    let gate = Arc::new(std::sync::Barrier::new(2));
    api.kernel.0.lock().unwrap().walk_gate = Some(Arc::clone(&gate));
    let state = api.state.clone();
    let sampler = std::thread::spawn(move || state.sample());
    // The walk has started and is held. This thread is not one of the
    // runtime's workers: it waits on plain channels, so that a handler
    // stuck on a lock fails the test instead of hanging it.
    gate.wait();
    let (tx, rx) = std::sync::mpsc::channel();
    for (method, uri, body) in
        [(Method::GET, "/v1/status", None), (Method::PATCH, "/v1/limits", Some(json!({"rate": 77})))]
    {
        let router = api.router.clone();
        let mut request = Request::builder().method(method).uri(uri);
        if body.is_some() {
            request = request.header(header::CONTENT_TYPE, "application/json");
        }
        let request = request.body(body.map_or_else(Body::empty, |b| Body::from(b.to_string()))).unwrap();
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = tx.send((uri, router.oneshot(request).await.unwrap().status()));
        });
    }
    let answers: Vec<_> = (0..2).map(|_| rx.recv_timeout(Duration::from_secs(5))).collect();
    // Let the walk finish before judging.
    gate.wait();
    sampler.join().unwrap();
    for answer in answers {
        let (uri, status) = answer.expect("every request answers while the sampler walks");
        assert_eq!(status, StatusCode::OK, "{uri}");
    }
    api.kernel.0.lock().unwrap().walk_gate = None;
    let body = api.call(Method::GET, "/v1/status", None).await.1;
    assert_eq!(body["sources_tracked"], 1);
}

#[tokio::test]
async fn an_interface_gone_is_missing_until_it_is_attached_again() {
    use crate::kernel::Presence;
    let api = Api::new(None);
    api.state.control(|c| c.attach("veth0", crate::kernel::XdpMode::Generic)).unwrap();
    api.state.set_ready();
    let attached =
        |text: &str| text.lines().find(|l| l.starts_with("throttle_interface_attached{")).map(str::to_owned);
    let metrics = || async { api.call(Method::GET, "/metrics", None).await.1.as_str().unwrap().to_owned() };
    assert_eq!(api.call(Method::GET, "/readyz", None).await.0, StatusCode::OK);

    api.kernel.0.lock().unwrap().presence.insert("veth0".to_owned(), Presence::Missing);
    crate::runtime::check_interfaces(&api.state).await;
    let (status, body) = api.call(Method::GET, "/readyz", None).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(body, "interface missing: veth0\n");
    let status = api.call(Method::GET, "/v1/status", None).await.1;
    assert_eq!(
        (status["ready"].clone(), status["interfaces"][0]["state"].clone()),
        (json!(false), json!("missing"))
    );
    assert!(
        attached(&metrics().await).is_some_and(|l| l.ends_with(" 0")),
        "{:?}",
        attached(&metrics().await)
    );
    crate::runtime::check_interfaces(&api.state).await;
    let events = api.call(Method::GET, "/v1/events", None).await.1;
    let gone = events["events"].as_array().unwrap().iter().filter(|e| e["kind"] == "detach").count();
    assert_eq!(gone, 1, "one event for the gap, however many checks see it: {events}");

    api.kernel.0.lock().unwrap().presence.insert("veth0".to_owned(), Presence::Returned);
    crate::runtime::check_interfaces(&api.state).await;
    assert_eq!(api.call(Method::GET, "/readyz", None).await.0, StatusCode::OK);
    let status = api.call(Method::GET, "/v1/status", None).await.1;
    assert_eq!(status["interfaces"][0]["state"], "attached");
    assert!(attached(&metrics().await).is_some_and(|l| l.ends_with(" 1")));
}

#[tokio::test]
async fn every_endpoint_answers() {
    let api = Api::new(None);
    assert_eq!(api.call(Method::GET, "/healthz", None).await.0, StatusCode::OK);
    assert_eq!(api.call(Method::GET, "/readyz", None).await.0, StatusCode::SERVICE_UNAVAILABLE);
    api.state.set_ready();
    assert_eq!(api.call(Method::GET, "/readyz", None).await.0, StatusCode::OK);

    let (status, body) = api.call(Method::GET, "/v1/status", None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["ready"], true);
    assert_eq!(body["version"], env!("CARGO_PKG_VERSION"));

    let (status, body) = api.call(Method::PUT, "/v1/limits", Some(json!({"rate": 50, "burst": 20}))).await;
    assert_eq!((status, &body["rate"], &body["burst"]), (StatusCode::OK, &json!(50), &json!(20)));
    let (status, body) =
        api.call(Method::PATCH, "/v1/limits", Some(json!({"burst": 30, "dry_run": true}))).await;
    assert_eq!(
        (status, &body["rate"], &body["burst"], &body["dry_run"]),
        (StatusCode::OK, &json!(50), &json!(30), &json!(true))
    );
    assert_eq!(api.kernel.0.lock().unwrap().plan.as_ref().unwrap().classes[0].limits[0].burst(), 30);

    let scope = json!({"ports": [{"proto": "tcp", "port": 443, "syn_only": true}, {"proto": "udp", "port": 53, "syn_only": false}]});
    let (status, body) = api.call(Method::PUT, "/v1/scope", Some(scope.clone())).await;
    assert_eq!((status, &body), (StatusCode::OK, &scope));
    assert_eq!(api.call(Method::GET, "/v1/scope", None).await.1, scope);

    let request = Request::post("/v1/rules")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(json!({"cidr": "10.0.0.0/8", "action": "limit", "rate": 5}).to_string()))
        .unwrap();
    let (status, body, headers) = api.send(request).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = body["id"].as_u64().unwrap();
    assert_eq!(headers[header::LOCATION], format!("/v1/rules/{id}"));
    let (_, rules) = api.call(Method::GET, "/v1/rules", None).await;
    assert_eq!(rules["rules"], json!([{"id": id, "cidr": "10.0.0.0/8", "action": "limit", "rate": 5}]));
    assert_eq!(api.call(Method::DELETE, &format!("/v1/rules/{id}"), None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(api.call(Method::GET, "/v1/rules", None).await.1["rules"], json!([]));

    for (i, dropped) in [5u64, 50, 0, 20].into_iter().enumerate() {
        api.track(IpAddr::V4(Ipv4Addr::new(192, 0, 2, i as u8 + 1)), 100 - dropped, dropped);
    }
    let (status, body) = api.call(Method::GET, "/v1/sources?top=2&by=dropped", None).await;
    assert_eq!(status, StatusCode::OK);
    let top: Vec<&str> =
        body["sources"].as_array().unwrap().iter().map(|s| s["source"].as_str().unwrap()).collect();
    assert_eq!(top, ["192.0.2.2", "192.0.2.4"]);
    let (_, body) = api.call(Method::GET, "/v1/sources?by=passed", None).await;
    assert_eq!(body["sources"][0]["source"], "192.0.2.3");
    let (status, body) = api.call(Method::GET, "/v1/sources/192.0.2.2", None).await;
    assert_eq!((status, &body["dropped"]), (StatusCode::OK, &json!(50)));
    assert_eq!(api.call(Method::DELETE, "/v1/sources/192.0.2.2", None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(api.call(Method::GET, "/v1/sources/192.0.2.2", None).await.0, StatusCode::NOT_FOUND);

    api.kernel.0.lock().unwrap().counters[throttle_common::reason::OVER_LIMIT.index()] = 7;
    let (status, body) = api.call(Method::GET, "/v1/stats", None).await;
    assert_eq!(
        (status, &body["counters"]["over_limit"], &body["dropped"]),
        (StatusCode::OK, &json!(7), &json!(7))
    );

    let (status, body) = api.call(Method::GET, "/v1/controller", None).await;
    assert_eq!((status, &body["enabled"], &body["scale"]), (StatusCode::OK, &json!(false), &json!(1.0)));
    assert_eq!(body["rates"][0], json!({"limit": "default", "configured": 50, "effective": 50}));
    let (status, body) =
        api.call(Method::PUT, "/v1/controller", Some(json!({"floor": 0.5, "algorithm": "aimd"}))).await;
    assert_eq!((status, &body["floor"], &body["algorithm"]), (StatusCode::OK, &json!(0.5), &json!("aimd")));
    let (status, body) =
        api.call(Method::POST, "/v1/latency", Some(json!({"samples_ms": [12.5, 40.1]}))).await;
    assert_eq!((status, body), (StatusCode::ACCEPTED, json!({"accepted": 2})));

    let (status, text) = api.call(Method::GET, "/metrics", None).await;
    assert_eq!(status, StatusCode::OK);
    let text = text.as_str().unwrap();
    for needle in [
        "throttle_packets_total{interface=\"veth0\",mode=\"generic\",reason=\"over_limit\",verdict=\"drop\"} 7",
        "throttle_sources_capacity 1048576",
        "throttle_config_version ",
        "throttle_rules{action=\"limit\"} 0",
        "throttle_controller_scale 1",
        "throttle_api_requests_total{route=\"/v1/stats\",method=\"GET\",status=\"200\"} 1",
    ] {
        assert!(text.contains(needle), "/metrics lacks {needle:?}:\n{text}");
    }
}

/// Fleet mode on a Redis that is not there (nothing listens on port 1).
fn unreachable_fleet() -> crate::runtime::fleet::FleetConfig {
    crate::runtime::fleet::FleetConfig {
        seeds: vec!["redis://127.0.0.1:1".into()],
        password_file: None,
        node: "n1".into(),
        name: "test".into(),
        sync: Duration::from_millis(50),
        hold: Duration::from_millis(100),
    }
}

#[tokio::test]
async fn the_cluster_view_alone_and_in_a_fleet_whose_redis_is_gone() {
    let api = Api::new(None);
    let (status, body) = api.call(Method::GET, "/v1/cluster", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "no_cluster");
    assert!(api.call(Method::GET, "/v1/status", None).await.1.get("fleet").is_none());
    api.state.join_fleet(unreachable_fleet(), None).await.unwrap();
    let mut view = Value::Null;
    for _ in 0..100 {
        view = api.call(Method::GET, "/v1/cluster", None).await.1;
        if view["state"] == "fallback" && view["shares"]["enforced"] == true {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(view["state"], "fallback", "never synced and failing: the fallback at once: {view}");
    assert_eq!(view["node"], "n1");
    assert_eq!(view["shares"]["default_q16"], 65_536, "alone: the whole limit");
    assert_eq!(view["shares"]["enforced"], true, "the fallback's share is in the buckets: {view}");
    assert!(view["sync_errors"].as_u64().unwrap() >= 1, "{view}");
    assert!(view["last_error"].as_str().unwrap().contains("Redis"), "{view}");
    let status = api.call(Method::GET, "/v1/status", None).await.1;
    assert_eq!(status["fleet"], json!({"node": "n1", "policy_version": 0, "state": "fallback"}));
    // A change the fleet cannot take is not made here either.
    let (code, body) = api.call(Method::PATCH, "/v1/limits", Some(json!({"rate": 7}))).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "fleet_unavailable");
    assert_ne!(api.call(Method::GET, "/v1/limits", None).await.1["rate"], 7);
}

/// The metrics the Grafana dashboard and the alerting rules use.
fn monitored_metrics() -> std::collections::BTreeSet<String> {
    let files = [
        include_str!("../../../docs/monitoring/alerts.yml"),
        include_str!("../../../docs/monitoring/grafana-dashboard.json"),
    ];
    let mut names = std::collections::BTreeSet::new();
    for text in files {
        for (at, _) in text.match_indices("throttle_") {
            let name: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            names.insert(name);
        }
    }
    names
}

#[tokio::test]
async fn every_metric_the_dashboard_and_the_alerts_use_is_served() {
    let api = Api::new(None);
    let on = json!({"enabled": true});
    assert_eq!(api.call(Method::PUT, "/v1/controller", Some(on)).await.0, StatusCode::OK);
    let samples: Vec<f64> = (0..200).map(|i| 10.0 + f64::from(i % 7)).collect();
    let (status, _) = api.call(Method::POST, "/v1/latency", Some(json!({ "samples_ms": samples }))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let feed = json!({"prefixes": ["192.0.2.0/24"]});
    assert_eq!(api.call(Method::PUT, "/v1/sets/feed", Some(feed)).await.0, StatusCode::CREATED);
    api.state.control(|c| c.attach("veth0", crate::kernel::XdpMode::Generic)).unwrap();
    api.state.join_fleet(unreachable_fleet(), None).await.unwrap();
    // The controller reports latency once it has taken the samples in.
    let mut text = String::new();
    for _ in 0..50 {
        text = api.call(Method::GET, "/metrics", None).await.1.as_str().unwrap().to_owned();
        if text.contains("throttle_latency_ms{") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // A metric is served when a sample or its family's type line names it
    // (a family of labels may have no sample yet: no interface attached).
    let mut served: std::collections::BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_owned)
        .collect();
    for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let mut parts = line.split(' ');
        if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
            served.insert(if kind == "counter" { format!("{name}_total") } else { name.to_owned() });
        }
    }
    let used = monitored_metrics();
    assert!(used.len() >= 12, "the files name the metrics: {used:?}");
    let missing: Vec<&String> = used.iter().filter(|m| !served.contains(*m)).collect();
    assert!(missing.is_empty(), "not in /metrics: {missing:?}\n{text}");
    let dashboard: Value =
        serde_json::from_str(include_str!("../../../docs/monitoring/grafana-dashboard.json")).unwrap();
    assert!(dashboard["panels"].as_array().is_some_and(|p| p.len() >= 8));
}

/// The README's example classes, as the API takes them.
fn example_classes() -> Value {
    json!({"classes": [
        {
            "name": "ssh",
            "match": [{"proto": "tcp", "ports": "22", "syn_only": true}],
            "limits": [{"rate": "3/minute", "burst": 5}],
            "ban": {"after": "30s", "duration": "15m"},
        },
        {
            "name": "dns",
            "match": [{"proto": "udp", "ports": "53"}],
            "limits": [{"rate": "50/second", "burst": 100}, {"rate": "1000/minute"}],
        },
        {
            "name": "web",
            "match": [{"proto": "tcp", "ports": [443, "8000-8100"], "syn_only": true}],
            "limits": [{"rate": "20/s", "burst": 40}],
            "tiers": [{"ipv4_prefix": 24, "ipv6_prefix": 48, "rate": "200/s", "burst": 400}],
            "adaptive": true,
        },
    ]})
}

#[tokio::test]
async fn the_classes_go_in_whole_and_come_back_as_written() {
    let api = Api::new(None);
    assert_eq!(api.call(Method::GET, "/v1/classes", None).await, (StatusCode::OK, json!({"classes": []})));
    let writes = api.kernel.0.lock().unwrap().writes;
    let (status, put) = api.call(Method::PUT, "/v1/classes", Some(example_classes())).await;
    assert_eq!(status, StatusCode::OK, "{put}");
    assert_eq!(api.kernel.0.lock().unwrap().writes, writes + 1, "compiled and written");
    let (status, got) = api.call(Method::GET, "/v1/classes", None).await;
    assert_eq!((status, &got), (StatusCode::OK, &put));
    let ssh = &got["classes"][0];
    assert_eq!(ssh["limits"][0], json!({"rate": "3/minute", "burst": 5}));
    assert_eq!(ssh["ban"], json!({"after": "30s", "duration": "15m"}));
    assert_eq!(got["classes"][1]["limits"][0]["rate"], 50, "a rate per second is a number, as elsewhere");
    assert_eq!(got["classes"][2]["match"][0]["ports"], json!(["443", "8000-8100"]));
    // What came back goes in again unchanged.
    assert_eq!(api.call(Method::PUT, "/v1/classes", Some(got.clone())).await, (StatusCode::OK, got.clone()));
    let store = Store::open(api.dir.path()).unwrap();
    let control = Control::new(Box::new(FakeKernel::default()), Policy::default(), Some(store)).unwrap();
    assert_eq!(serde_json::to_value(control.classes()).unwrap(), got["classes"], "saved");

    assert_eq!(
        api.call(Method::GET, "/v1/unmatched", None).await,
        (StatusCode::OK, json!({"action": "limit"}))
    );
    let pass = json!({"action": "pass"});
    assert_eq!(
        api.call(Method::PUT, "/v1/unmatched", Some(pass.clone())).await,
        (StatusCode::OK, pass.clone())
    );
    assert_eq!(api.call(Method::GET, "/v1/unmatched", None).await.1, pass);
}

#[tokio::test]
async fn one_class_is_put_read_and_removed_leaving_the_others() {
    let api = Api::new(None);
    let (_, before) = api.call(Method::PUT, "/v1/classes", Some(example_classes())).await;
    let ntp = json!({"match": [{"proto": "udp", "ports": 123}], "limits": [{"rate": "10/minute"}]});
    let request = Request::put("/v1/classes/ntp")
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(ntp.to_string()))
        .unwrap();
    let (status, body, headers) = api.send(request).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(headers[header::LOCATION], "/v1/classes/ntp");
    assert_eq!(body["name"], "ntp", "the path names a class whose body does not");
    assert_eq!(body["match"][0]["ports"], json!(["123"]));
    let (status, got) = api.call(Method::GET, "/v1/classes/ntp", None).await;
    assert_eq!((status, &got), (StatusCode::OK, &body));

    let mut dns = api.call(Method::GET, "/v1/classes/dns", None).await.1;
    dns["limits"] = json!([{"rate": 80}]);
    let (status, replaced) = api.call(Method::PUT, "/v1/classes/dns", Some(dns.clone())).await;
    assert_eq!((status, &replaced), (StatusCode::OK, &dns), "replaced, not created");
    let (_, all) = api.call(Method::GET, "/v1/classes", None).await;
    assert_eq!(
        all["classes"],
        json!([before["classes"][0], dns, before["classes"][2], got]),
        "in place, the others untouched"
    );

    assert_eq!(api.call(Method::DELETE, "/v1/classes/ssh", None).await.0, StatusCode::NO_CONTENT);
    let (status, body) = api.call(Method::GET, "/v1/classes/ssh", None).await;
    assert_eq!((status, &body["error"]["code"]), (StatusCode::NOT_FOUND, &json!("class_not_found")));
    assert!(body["error"]["message"].as_str().unwrap().contains("\"ssh\""), "{body}");
    let (_, all) = api.call(Method::GET, "/v1/classes", None).await;
    let names: Vec<&str> =
        all["classes"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["dns", "web", "ntp"]);
    assert_eq!(api.call(Method::DELETE, "/v1/classes/ssh", None).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_set_is_loaded_as_text_or_json_named_by_a_rule_and_removed_once_free() {
    let api = Api::new(None);
    let text = "# a feed\n192.0.2.0/24\n10.0.0.1/8\nnot-one\n2001:db8::/32\n";
    let request = Request::put("/v1/sets/feed")
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(text))
        .unwrap();
    let (status, body, headers) = api.send(request).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(headers[header::LOCATION], "/v1/sets/feed");
    assert_eq!((&body["loaded"], &body["refused"]), (&json!(2), &json!(2)));
    let lines: Vec<&Value> = body["first_refused"].as_array().unwrap().iter().map(|r| &r["line"]).collect();
    assert_eq!(lines, [&json!(3), &json!(4)]);

    let (status, body) =
        api.call(Method::PUT, "/v1/sets/feed", Some(json!({"prefixes": ["198.51.100.7", "# x"]}))).await;
    assert_eq!((status, &body["created"], &body["loaded"]), (StatusCode::OK, &json!(false), &json!(1)));
    let (status, rule) =
        api.call(Method::POST, "/v1/rules", Some(json!({"set": "feed", "action": "deny"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{rule}");
    let (_, sets) = api.call(Method::GET, "/v1/sets", None).await;
    assert_eq!(sets["sets"][0]["prefixes"], 1);
    assert_eq!(sets["sets"][0]["rule"], rule["id"]);
    assert_eq!(sets["max_sets"], 8);
    let plan = api.kernel.0.lock().unwrap().plan.clone().unwrap();
    assert_eq!(plan.set_rules.len(), 1, "the rule reaches the kernel");

    let (status, body) = api.call(Method::DELETE, "/v1/sets/feed", None).await;
    assert_eq!((status, &body["error"]["code"]), (StatusCode::CONFLICT, &json!("set_in_use")));
    let id = rule["id"].as_u64().unwrap();
    assert_eq!(api.call(Method::DELETE, &format!("/v1/rules/{id}"), None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(api.call(Method::DELETE, "/v1/sets/feed", None).await.0, StatusCode::NO_CONTENT);
    let (status, body) = api.call(Method::DELETE, "/v1/sets/feed", None).await;
    assert_eq!((status, &body["error"]["code"]), (StatusCode::NOT_FOUND, &json!("set_not_found")));

    let request = Request::put("/v1/sets/feed")
        .header(header::CONTENT_TYPE, "image/png")
        .body(Body::from("x"))
        .unwrap();
    assert_eq!(api.send(request).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let (status, body) = api.call(Method::PUT, "/v1/sets/Bad!", Some(json!({"prefixes": []}))).await;
    assert_eq!((status, &body["error"]["code"]), (StatusCode::BAD_REQUEST, &json!("invalid_path")));
    let (status, body) = api.call(Method::PUT, "/v1/sets/feed", Some(json!({"prefixes": [1]}))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(api.call(Method::GET, "/v1/sets", None).await.1["sets"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn changes_are_events_listed_and_streamed() {
    let api = Api::new(None);
    assert_eq!(api.call(Method::PATCH, "/v1/limits", Some(json!({"rate": 50}))).await.0, StatusCode::OK);
    assert_eq!(
        api.call(Method::PATCH, "/v1/limits", Some(json!({"rate": 0}))).await.0,
        StatusCode::BAD_REQUEST
    );
    let (status, body) = api.call(Method::GET, "/v1/events?n=10", None).await;
    assert_eq!(status, StatusCode::OK);
    let events = body["events"].as_array().unwrap();
    assert_eq!(events.len(), 1, "a refused change is no event: {body}");
    assert_eq!(
        (&events[0]["kind"], &events[0]["detail"], &events[0]["by"]),
        (&json!("change"), &json!("PATCH /v1/limits 200"), &json!("api"))
    );
    assert_eq!(body["data_path"]["suppressed"], 0);
    let (status, body) = api.call(Method::GET, "/v1/events?n=0", None).await;
    assert_eq!((status, &body["error"]["field"]), (StatusCode::BAD_REQUEST, &json!("n")));

    // The stream: the backlog asked for, then what happens next.
    let request = Request::get("/v1/events?n=1")
        .header(header::ACCEPT, "text/event-stream")
        .body(Body::empty())
        .unwrap();
    let response = api.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut body = response.into_body();
    api.state.event(crate::runtime::EventView::new("reload").by("sighup"));
    let mut text = String::new();
    while !text.contains("\"reload\"") {
        let frame =
            tokio::time::timeout(Duration::from_secs(5), body.frame()).await.unwrap().unwrap().unwrap();
        if let Some(data) = frame.data_ref() {
            text.push_str(&String::from_utf8_lossy(data));
        }
    }
    let data: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("data:")).collect();
    assert_eq!(data.len(), 2, "{text}");
    assert!(data[0].contains("PATCH /v1/limits") && data[1].contains("\"sighup\""), "{text}");
}

#[tokio::test]
async fn one_capture_at_a_time_and_bad_queries_are_named() {
    let api = Api::new(None);
    let request = Request::get("/v1/capture?reason=over_limit&count=5").body(Body::empty()).unwrap();
    let response = api.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/vnd.tcpdump.pcap");
    let mut body = response.into_body();
    let head = tokio::time::timeout(Duration::from_secs(5), body.frame()).await.unwrap().unwrap().unwrap();
    let head = head.into_data().unwrap();
    assert_eq!(head.len(), 24, "the pcap file's header first");
    assert_eq!(u32::from_ne_bytes(head[..4].try_into().unwrap()), 0xa1b2_c3d4);
    let (status, err) = api.call(Method::GET, "/v1/capture", None).await;
    assert_eq!((status, &err["error"]["code"]), (StatusCode::CONFLICT, &json!("capture_running")));
    drop(body);
    // The stream gone, the capture stops: another may start.
    let request = Request::get("/v1/capture?count=1").body(Body::empty()).unwrap();
    assert_eq!(api.router.clone().oneshot(request).await.unwrap().status(), StatusCode::OK);
    for (query, field) in [
        ("reason=passed", "reason"),
        ("source=10.0.0.1/33", "source"),
        ("class=nosuch", "class"),
        ("count=0", "count"),
        ("sample=1/0", "sample"),
        ("snap=2000", "snap"),
    ] {
        let (status, err) = api.call(Method::GET, &format!("/v1/capture?{query}"), None).await;
        assert_eq!(
            (status, &err["error"]["field"]),
            (StatusCode::BAD_REQUEST, &json!(field)),
            "{query}: {err}"
        );
    }
}

#[tokio::test]
async fn changes_are_saved_and_restored() {
    let api = Api::new(None);
    api.call(Method::PATCH, "/v1/limits", Some(json!({"rate": 77}))).await;
    let (_, rule) =
        api.call(Method::POST, "/v1/rules", Some(json!({"cidr": "2001:db8::/32", "action": "deny"}))).await;
    api.call(Method::PUT, "/v1/controller", Some(json!({"floor": 0.4}))).await;
    let store = Store::open(api.dir.path()).unwrap();
    let control = Control::new(Box::new(FakeKernel::default()), Policy::default(), Some(store)).unwrap();
    assert_eq!(control.limits().rate, crate::policy::Rate::per_second(77));
    assert_eq!(control.rules()[0].id, u32::try_from(rule["id"].as_u64().unwrap()).unwrap());
    assert!((control.saved_controller().unwrap().floor - 0.4).abs() < f64::EPSILON);
}

#[tokio::test]
async fn a_kernel_failure_is_a_500_and_changes_nothing() {
    let api = Api::new(None);
    let before = api.snapshot().await;
    api.kernel.0.lock().unwrap().fail_next_write = true;
    let (status, body) = api.call(Method::PATCH, "/v1/limits", Some(json!({"rate": 5}))).await;
    assert_eq!((status, &body["error"]["code"]), (StatusCode::INTERNAL_SERVER_ERROR, &json!("kernel_error")));
    let mut after = api.snapshot().await;
    // The failed write and the write back of the previous policy.
    after["kernel_writes"] = before["kernel_writes"].clone();
    assert_eq!(after, before);
    assert_eq!(
        api.kernel.0.lock().unwrap().plan.as_ref().unwrap().classes[0].limits[0].rate(),
        1000,
        "the old policy is back"
    );
}

#[tokio::test]
async fn the_openapi_document_lists_every_route() {
    let api = Api::new(None);
    let (status, doc) = api.call(Method::GET, "/v1/openapi.json", None).await;
    assert_eq!(status, StatusCode::OK);
    let mut paths: Vec<String> = doc["paths"].as_object().unwrap().keys().cloned().collect();
    paths.sort();
    assert_eq!(
        paths,
        [
            "/healthz",
            "/metrics",
            "/readyz",
            "/v1/bans",
            "/v1/bans/{addr}",
            "/v1/capture",
            "/v1/classes",
            "/v1/classes/{name}",
            "/v1/cluster",
            "/v1/controller",
            "/v1/events",
            "/v1/explain",
            "/v1/latency",
            "/v1/limits",
            "/v1/rules",
            "/v1/rules/{id}",
            "/v1/scope",
            "/v1/sets",
            "/v1/sets/{name}",
            "/v1/sources",
            "/v1/sources/{addr}",
            "/v1/stats",
            "/v1/status",
            "/v1/unmatched",
        ]
    );
    let one = &doc["paths"]["/v1/classes/{name}"];
    assert!(one["get"].is_object() && one["put"].is_object() && one["delete"].is_object());
    let schemas = &doc["components"]["schemas"];
    for (schema, property) in
        [("Class", "match"), ("Class", "tiers"), ("Match", "ports"), ("ClassLimit", "rate"), ("Ban", "after")]
    {
        assert!(schemas[schema]["properties"][property].is_object(), "{schema}.{property}");
    }
    assert_eq!(schemas["Ports"]["oneOf"].as_array().map(Vec::len), Some(3), "a port, a range, a list");
    assert_eq!(schemas["Span"]["type"], "string");
    assert_eq!(schemas["Name"]["type"], "string");
    let sets = &doc["paths"]["/v1/sets/{name}"];
    assert!(sets["put"]["requestBody"]["content"]["text/plain"].is_object(), "a set's body may be text");
    assert!(sets["put"]["requestBody"]["content"]["application/json"].is_object());
    assert!(sets["delete"].is_object() && doc["paths"]["/v1/sets"]["get"].is_object());
    assert!(schemas["RuleSpec"]["properties"]["set"].is_object());
    let limits = &doc["paths"]["/v1/limits"];
    assert!(limits["get"].is_object() && limits["put"].is_object() && limits["patch"].is_object());
    assert!(doc["components"]["schemas"]["Limits"]["properties"]["rate"].is_object());
}

/// Every `$ref` of `value` (a part of the document `doc`) that names no
/// schema of the document.
fn dangling_refs(doc: &Value, value: &Value, found: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            if let Some(Value::String(target)) = map.get("$ref") {
                let name = target.trim_start_matches("#/components/schemas/");
                if doc["components"]["schemas"].get(name).is_none() {
                    found.push(target.clone());
                }
            }
            map.values().for_each(|v| dangling_refs(doc, v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| dangling_refs(doc, v, found)),
        _ => {}
    }
}

#[tokio::test]
async fn the_openapi_document_says_what_the_server_does() {
    let api = Api::new(None);
    let doc = api.call(Method::GET, "/v1/openapi.json", None).await.1;
    let mut dangling = Vec::new();
    dangling_refs(&doc, &doc, &mut dangling);
    assert!(dangling.is_empty(), "references to no schema: {dangling:?}");

    // The token is optional (a daemon without one needs none), per
    // operation; the health checks never need it.
    assert!(doc.get("security").is_none(), "no security for the whole API: {}", doc["security"]);
    assert!(doc["components"]["securitySchemes"]["bearer"]["description"].is_string());
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let security = &operation["security"];
            if path == "/healthz" || path == "/readyz" {
                assert_eq!(security, &json!([{}]), "{method} {path}");
                continue;
            }
            assert_eq!(security, &json!([{}, {"bearer": []}]), "{method} {path}");
            let answers = &operation["responses"];
            assert!(answers["401"].is_object(), "{method} {path}: 401");
            if operation.get("requestBody").is_some() {
                for status in ["400", "413", "415"] {
                    assert!(answers[status].is_object(), "{method} {path}: {status}");
                }
            }
            if operation.get("parameters").is_some() {
                assert!(answers["400"].is_object(), "{method} {path}: 400");
            }
        }
    }

    let param = |path: &str, name: &str| {
        let operation = &doc["paths"][path]["get"]
            .as_object()
            .cloned()
            .unwrap_or_else(|| doc["paths"][path]["delete"].as_object().cloned().unwrap());
        operation["parameters"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("{path} has no parameter {name}"))
            .clone()
    };
    let top = param("/v1/sources", "top");
    assert_eq!((&top["schema"]["minimum"], &top["schema"]["maximum"]), (&json!(1), &json!(10_000)), "{top}");
    let by = param("/v1/sources", "by");
    assert_eq!(by["schema"]["enum"], json!(["dropped", "passed"]), "{by}");
    let n = param("/v1/events", "n");
    assert_eq!((&n["schema"]["minimum"], &n["schema"]["maximum"]), (&json!(1), &json!(1000)), "{n}");

    // Addresses and prefixes have a pattern, without leading zeros.
    let schemas = &doc["components"]["schemas"];
    let cidr = &schemas["RuleSpec"]["properties"]["cidr"];
    let prefix = cidr["pattern"].as_str().unwrap_or_else(|| panic!("RuleSpec.cidr has no pattern: {cidr}"));
    assert!(prefix.starts_with('^') && prefix.ends_with('$') && prefix.contains("[1-9]?[0-9]"), "{prefix}");
    assert_eq!(param("/v1/capture", "source")["schema"]["pattern"], prefix);
    for (path, name) in
        [("/v1/sources/{addr}", "addr"), ("/v1/bans/{addr}", "addr"), ("/v1/explain", "source")]
    {
        let pattern = &param(path, name)["schema"]["pattern"];
        assert!(pattern.as_str().is_some_and(|p| p.starts_with('^')), "{path} {name}: {pattern}");
    }

    // The metrics are OpenMetrics, as served.
    let metrics = &doc["paths"]["/metrics"]["get"]["responses"]["200"]["content"];
    assert!(metrics["application/openmetrics-text"].is_object(), "{metrics}");
    let request = Request::get("/metrics").body(Body::empty()).unwrap();
    let (_, _, headers) = api.send(request).await;
    assert!(headers[header::CONTENT_TYPE].to_str().unwrap().starts_with("application/openmetrics-text"));

    // A change of the policy may meet the fleet; the controller may not run yet.
    for (path, method, statuses) in [
        ("/v1/limits", "put", &["409", "503"][..]),
        ("/v1/rules", "post", &["409", "503"]),
        ("/v1/rules/{id}", "delete", &["409", "503"]),
        ("/v1/controller", "get", &["503"]),
        ("/v1/latency", "post", &["503"]),
    ] {
        let answers = &doc["paths"][path][method]["responses"];
        for status in statuses {
            assert!(answers[status].is_object(), "{method} {path}: {status} in {answers}");
        }
    }

    // The events are JSON or a stream, both answers of one 200.
    let events = &doc["paths"]["/v1/events"]["get"]["responses"]["200"]["content"];
    assert!(events["application/json"].is_object() && events["text/event-stream"].is_object(), "{events}");

    // A rule as listed: its fields and its id, in one object that admits
    // both (the rule's own schema admits no other field).
    let view = &schemas["RuleView"];
    assert!(view["properties"]["id"].is_object() && view["properties"]["cidr"].is_object(), "{view}");
    assert!(view["required"].as_array().unwrap().contains(&json!("id")), "{view}");
    assert!(view.get("allOf").is_none(), "{view}");

    // `POST /v1/rules` takes one rule or a list, and says what comes back.
    let post = &doc["paths"]["/v1/rules"]["post"];
    let body = &post["requestBody"]["content"]["application/json"]["schema"];
    let body = if let Some(name) = body["$ref"].as_str() {
        &schemas[name.trim_start_matches("#/components/schemas/")]
    } else {
        body
    };
    assert_eq!(body["oneOf"].as_array().map(Vec::len), Some(2), "one rule or a list: {body}");
}

#[tokio::test]
async fn a_list_of_rules_goes_in_whole_in_one_change_or_not_at_all() {
    let api = Api::new(None);
    let version = |api: &Api| api.kernel.0.lock().unwrap().writes;
    let rules: Vec<Value> = (0..1000u32)
        .map(|i| {
            let cidr = format!("10.{}.{}.0/24", i / 256, i % 256);
            if i % 2 == 0 {
                json!({"cidr": cidr, "action": "deny"})
            } else {
                json!({"cidr": cidr, "action": "limit", "rate": 5})
            }
        })
        .collect();

    // One bad item: nothing changes, and the item is named.
    let mut with_bad = rules.clone();
    with_bad[637] = json!({"cidr": "10.2.125.1/24", "action": "deny"});
    let before = api.snapshot().await;
    let (status, body) = api.call(Method::POST, "/v1/rules", Some(Value::Array(with_bad))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["field"], "rules[637].cidr", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("10.2.125.1/24"), "{body}");
    assert_eq!(api.snapshot().await, before, "a refused list changes nothing");

    // A thousand: one write of the maps, one version.
    let writes = version(&api);
    let status_before = api.call(Method::GET, "/v1/status", None).await.1;
    let (status, body) = api.call(Method::POST, "/v1/rules", Some(Value::Array(rules.clone()))).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(version(&api), writes + 1, "one write of the maps for the whole list");
    let status_after = api.call(Method::GET, "/v1/status", None).await.1;
    assert_eq!(
        status_after["config_version"].as_u64(),
        status_before["config_version"].as_u64().map(|v| v + 1),
        "one version"
    );
    assert_eq!(status_after["rules"], 1000);
    let made = body["rules"].as_array().unwrap();
    assert_eq!(made.len(), 1000);
    for (made, asked) in made.iter().zip(&rules) {
        assert_eq!(made["cidr"], asked["cidr"], "in the list's order");
        assert!(made["id"].as_u64().is_some());
    }
    let listed = api.call(Method::GET, "/v1/rules", None).await.1;
    assert_eq!(listed["rules"].as_array().unwrap().len(), 1000);

    // Saved whole: the state file holds all of them, as a restart loads it.
    let saved: Value =
        serde_json::from_str(&std::fs::read_to_string(api.dir.path().join("state.json")).unwrap()).unwrap();
    assert_eq!(saved["rules"].as_array().map(Vec::len), Some(1000), "the state file has the list");
    let restarted = Control::new(
        Box::new(FakeKernel::default()),
        Policy::default(),
        Some(Store::open(api.dir.path()).unwrap()),
    )
    .unwrap();
    assert_eq!(serde_json::to_value(restarted.rules()).unwrap(), listed["rules"], "a restart loads the same");

    // One already in force among new ones: refused whole, with its index.
    let (status, body) = api
        .call(
            Method::POST,
            "/v1/rules",
            Some(json!([{"cidr": "172.16.0.0/12", "action": "deny"}, rules[3].clone()])),
        )
        .await;
    assert_eq!((status, &body["error"]["field"]), (StatusCode::CONFLICT, &json!("rules[1].cidr")), "{body}");
    assert_eq!(api.call(Method::GET, "/v1/status", None).await.1["rules"], 1000);
}

#[tokio::test]
async fn sources_tracked_counts_each_source_once_and_never_past_the_capacity() {
    let api = Api::new(None);
    api.kernel.0.lock().unwrap().max_sources = Some(4);
    let a = "192.0.2.1".parse().unwrap();
    // A source met twice by one walk (it moved to a slot further on).
    api.track(a, 1, 0);
    api.track("192.0.2.2".parse().unwrap(), 1, 0);
    api.track(a, 2, 0);
    api.state.sample();
    let status = api.call(Method::GET, "/v1/status", None).await.1;
    assert_eq!(status["sources_tracked"], 2, "{status}");
    // A walk under churn meets more sources than the table holds at once.
    for i in 3..=8 {
        api.track(IpAddr::V4(Ipv4Addr::new(192, 0, 2, i)), 1, 0);
    }
    api.state.sample();
    let status = api.call(Method::GET, "/v1/status", None).await.1;
    assert_eq!((&status["sources_tracked"], &status["max_sources"]), (&json!(4), &json!(4)), "{status}");
    let metrics = api.call(Method::GET, "/metrics", None).await.1;
    let line =
        metrics.as_str().unwrap().lines().find(|l| l.starts_with("throttle_sources_tracked ")).unwrap();
    assert_eq!(line, "throttle_sources_tracked 4");
}

#[tokio::test]
async fn the_token_guards_everything_but_the_health_checks() {
    let api = Api::new(Some("s3cret"));
    let get = |uri: &str, auth: Option<&str>| {
        let mut request = Request::get(uri);
        if let Some(auth) = auth {
            request = request.header(header::AUTHORIZATION, auth);
        }
        request.body(Body::empty()).unwrap()
    };
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer s3cre"),
        Some("Bearer s3cret2"),
        Some("s3cret"),
        Some("Basic s3cret"),
    ] {
        let (status, body, headers) = api.send(get("/v1/status", auth)).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{auth:?}");
        assert_eq!(body["error"]["code"], "unauthorized");
        assert_eq!(headers[header::WWW_AUTHENTICATE], "Bearer");
    }
    assert_eq!(api.send(get("/metrics", None)).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(api.send(get("/v1/status", Some("Bearer s3cret"))).await.0, StatusCode::OK);
    assert_eq!(api.send(get("/healthz", None)).await.0, StatusCode::OK);
    assert_eq!(api.send(get("/readyz", None)).await.0, StatusCode::SERVICE_UNAVAILABLE);
}

#[test]
fn beyond_loopback_a_token_is_required() {
    let token = Token::from("t");
    assert!(super::check_exposure("127.0.0.1:9840".parse().unwrap(), None).is_ok());
    assert!(super::check_exposure("[::1]:9840".parse().unwrap(), None).is_ok());
    let err = super::check_exposure("0.0.0.0:9840".parse().unwrap(), None).unwrap_err();
    assert!(err.contains("--token-file"), "{err}");
    assert!(super::check_exposure("0.0.0.0:9840".parse().unwrap(), Some(&token)).is_ok());
}

/// One bad request: what is sent, and the status and code it must get.
struct Bad {
    method: Method,
    uri: &'static str,
    content_type: Option<&'static str>,
    body: String,
    status: StatusCode,
    code: &'static str,
    /// A piece of the message or of the field, when one value is to blame.
    names: Option<&'static str>,
}

fn bad(
    method: Method,
    uri: &'static str,
    body: &Value,
    status: u16,
    code: &'static str,
    names: &'static str,
) -> Bad {
    Bad {
        method,
        uri,
        content_type: Some("application/json"),
        body: body.to_string(),
        status: StatusCode::from_u16(status).unwrap(),
        code,
        names: (!names.is_empty()).then_some(names),
    }
}

fn raw(
    method: Method,
    uri: &'static str,
    ct: Option<&'static str>,
    body: &str,
    status: u16,
    code: &'static str,
) -> Bad {
    Bad {
        method,
        uri,
        content_type: ct,
        body: body.to_owned(),
        status: StatusCode::from_u16(status).unwrap(),
        code,
        names: None,
    }
}

/// A class of one UDP port (or range) at 5/second.
fn udp_class(name: &str, ports: &str) -> Value {
    json!({"name": name, "match": [{"proto": "udp", "ports": ports}], "limits": [{"rate": 5}]})
}

#[expect(clippy::too_many_lines, reason = "one line per bad input: a table")]
fn bad_inputs() -> Vec<Bad> {
    use Method as M;
    const JSON: Option<&str> = Some("application/json");
    vec![
        // Limits.
        bad(M::PUT, "/v1/limits", &json!({"rate": 0}), 400, "invalid_value", "limits.rate"),
        bad(M::PUT, "/v1/limits", &json!({"rate": 100_000_001}), 400, "invalid_value", "limits.rate"),
        bad(M::PUT, "/v1/limits", &json!({"rate": -1}), 400, "invalid_body", "rate"),
        // A fraction per second is a rate per minute, hour or day (1.5 is
        // 90/minute); one that is no whole count a day, or under 1/day, is not.
        bad(M::PUT, "/v1/limits", &json!({"rate": 0.000_001}), 400, "invalid_value", "limits.rate"),
        bad(M::PUT, "/v1/limits", &json!({"rate": "1.5/minute"}), 400, "invalid_value", "limits.rate"),
        bad(M::PUT, "/v1/limits", &json!({"rate": "3/fortnight"}), 400, "invalid_body", "rate"),
        raw(M::PUT, "/v1/limits", JSON, r#"{"rate": 18446744073709551616}"#, 400, "invalid_body"),
        bad(M::PUT, "/v1/limits", &json!({"burst": 0}), 400, "invalid_value", "limits.burst"),
        bad(M::PUT, "/v1/limits", &json!({"burst": 1_000_000_001u64}), 400, "invalid_value", "limits.burst"),
        bad(M::PUT, "/v1/limits", &json!({"ipv4_prefix": 33}), 400, "invalid_value", "limits.ipv4_prefix"),
        bad(M::PUT, "/v1/limits", &json!({"ipv4_prefix": 0}), 400, "invalid_value", "limits.ipv4_prefix"),
        bad(M::PUT, "/v1/limits", &json!({"ipv6_prefix": 129}), 400, "invalid_value", "limits.ipv6_prefix"),
        bad(M::PUT, "/v1/limits", &json!({"unit": "furlongs"}), 400, "invalid_body", "furlongs"),
        bad(M::PUT, "/v1/limits", &json!({"dry_run": "yes"}), 400, "invalid_body", "dry_run"),
        bad(M::PUT, "/v1/limits", &json!({"rat": 5}), 400, "invalid_body", "rat"),
        bad(M::PUT, "/v1/limits", &json!([1, 2]), 400, "invalid_body", ""),
        raw(M::PUT, "/v1/limits", JSON, "null\n", 400, "invalid_body"),
        raw(M::PUT, "/v1/limits", JSON, r#"{"rate": "#, 400, "malformed_json"),
        raw(M::PUT, "/v1/limits", JSON, "", 400, "malformed_json"),
        raw(M::PUT, "/v1/limits", JSON, r#"{"rate": 5}}"#, 400, "malformed_json"),
        raw(M::PUT, "/v1/limits", None, r#"{"rate": 5}"#, 415, "unsupported_media_type"),
        raw(M::PUT, "/v1/limits", Some("text/plain"), r#"{"rate": 5}"#, 415, "unsupported_media_type"),
        raw(
            M::PUT,
            "/v1/limits",
            JSON,
            &format!(r#"{{"rate": 5, "x": "{}"}}"#, "a".repeat(70_000)),
            413,
            "payload_too_large",
        ),
        bad(M::PATCH, "/v1/limits", &json!({"rate": 0}), 400, "invalid_value", "limits.rate"),
        bad(
            M::PATCH,
            "/v1/limits",
            &json!({"new_source_burst": 0}),
            400,
            "invalid_value",
            "limits.new_source_burst",
        ),
        bad(M::PATCH, "/v1/limits", &json!({"rate": "fast"}), 400, "invalid_body", "rate"),
        bad(M::PATCH, "/v1/limits", &json!({"bogus": 1}), 400, "invalid_body", "bogus"),
        // Scope.
        bad(
            M::PUT,
            "/v1/scope",
            &json!({"ports": [{"proto": "udp", "port": 0}]}),
            400,
            "invalid_value",
            "scope.ports[0].port",
        ),
        bad(
            M::PUT,
            "/v1/scope",
            &json!({"ports": [{"proto": "udp", "port": 65536}]}),
            400,
            "invalid_value",
            "scope.ports[0].port",
        ),
        bad(
            M::PUT,
            "/v1/scope",
            &json!({"ports": [{"proto": "udp", "port": -5}]}),
            400,
            "invalid_body",
            "port",
        ),
        bad(
            M::PUT,
            "/v1/scope",
            &json!({"ports": [{"proto": "icmp", "port": 1}]}),
            400,
            "invalid_body",
            "icmp",
        ),
        bad(
            M::PUT,
            "/v1/scope",
            &json!({"ports": [{"proto": "udp", "port": 53, "syn_only": true}]}),
            400,
            "invalid_value",
            "scope.ports[0].syn_only",
        ),
        bad(
            M::PUT,
            "/v1/scope",
            &json!({"ports": [{"proto": "tcp", "port": 80}, {"proto": "tcp", "port": 80}]}),
            400,
            "invalid_value",
            "scope.ports[1].port",
        ),
        bad(M::PUT, "/v1/scope", &json!({"ports": [{"port": 80}]}), 400, "invalid_body", "proto"),
        bad(M::PUT, "/v1/scope", &json!({"ports": "80"}), 400, "invalid_body", "ports"),
        // Rules.
        bad(
            M::POST,
            "/v1/rules",
            &json!({"cidr": "10.0.0.0/33", "action": "deny"}),
            400,
            "invalid_value",
            "rule.cidr",
        ),
        bad(
            M::POST,
            "/v1/rules",
            &json!({"cidr": "not-an-ip", "action": "deny"}),
            400,
            "invalid_value",
            "rule.cidr",
        ),
        bad(M::POST, "/v1/rules", &json!({"cidr": "", "action": "deny"}), 400, "invalid_value", "rule.cidr"),
        bad(
            M::POST,
            "/v1/rules",
            &json!({"cidr": "10.0.0.1/8", "action": "deny"}),
            400,
            "invalid_value",
            "host bits",
        ),
        bad(
            M::POST,
            "/v1/rules",
            &json!({"cidr": "10.0.0.0/8", "action": "block"}),
            400,
            "invalid_body",
            "block",
        ),
        bad(
            M::POST,
            "/v1/rules",
            &json!({"cidr": "10.0.0.0/8", "action": "limit"}),
            400,
            "invalid_value",
            "rule.rate",
        ),
        bad(
            M::POST,
            "/v1/rules",
            &json!({"cidr": "10.0.0.0/8", "action": "limit", "rate": 0}),
            400,
            "invalid_value",
            "rule.rate",
        ),
        bad(
            M::POST,
            "/v1/rules",
            &json!({"cidr": "10.0.0.0/8", "action": "limit", "rate": 5, "burst": 0}),
            400,
            "invalid_value",
            "rule.burst",
        ),
        bad(
            M::POST,
            "/v1/rules",
            &json!({"cidr": "10.0.0.0/8", "action": "deny", "rate": 5}),
            400,
            "invalid_value",
            "rule.rate",
        ),
        bad(M::POST, "/v1/rules", &json!({"action": "deny"}), 400, "invalid_value", "rule.cidr"),
        bad(
            M::POST,
            "/v1/rules",
            &json!({"set": "nosuch", "action": "deny"}),
            400,
            "invalid_value",
            "rule.set",
        ),
        bad(
            M::POST,
            "/v1/rules",
            &json!({"set": "Bad!", "action": "deny"}),
            400,
            "invalid_value",
            "rule.set",
        ),
        bad(
            M::POST,
            "/v1/rules",
            &json!({"cidr": "192.0.2.0/24", "action": "allow"}),
            409,
            "conflict",
            "192.0.2.0/24",
        ),
        // Leading zeros: refused, not read as decimal (or as octal).
        bad(
            M::POST,
            "/v1/rules",
            &json!({"cidr": "010.000.000.000/8", "action": "deny"}),
            400,
            "invalid_value",
            "010.000.000.000/8",
        ),
        bad(
            M::POST,
            "/v1/rules",
            &json!({"cidr": "10.0.0.0/08", "action": "deny"}),
            400,
            "invalid_value",
            "`08`",
        ),
        bad(M::GET, "/v1/sources/010.0.0.1", &json!(null), 400, "invalid_path", "leading zero"),
        bad(M::GET, "/v1/capture?source=010.0.0.0/8", &json!(null), 400, "invalid_query", "leading zero"),
        // Lists of rules: one bad item refuses them all, named by its index.
        bad(
            M::POST,
            "/v1/rules",
            &json!([{"cidr": "10.1.0.0/16", "action": "deny"}, {"cidr": "10.2.0.1/16", "action": "deny"}]),
            400,
            "invalid_value",
            "rules[1].cidr",
        ),
        bad(
            M::POST,
            "/v1/rules",
            &json!([{"cidr": "10.1.0.0/16", "action": "deny"}, {"cidr": "10.2.0.0/16", "action": "drop"}]),
            400,
            "invalid_body",
            "rules[1]",
        ),
        bad(
            M::POST,
            "/v1/rules",
            &json!([{"cidr": "10.1.0.0/16", "action": "deny"}, {"cidr": "10.1.0.0/16", "action": "allow"}]),
            400,
            "invalid_value",
            "`rules[0]` names it already",
        ),
        bad(
            M::POST,
            "/v1/rules",
            &json!([{"cidr": "10.1.0.0/16", "action": "deny"}, {"cidr": "192.0.2.0/24", "action": "deny"}]),
            409,
            "conflict",
            "rules[1].cidr",
        ),
        bad(
            M::POST,
            "/v1/rules",
            &json!([{"cidr": "10.1.0.0/16", "action": "limit", "rate": 5}, {"set": "nosuch", "action": "deny"}]),
            400,
            "invalid_value",
            "rules[1].set",
        ),
        bad(M::POST, "/v1/rules", &json!([]), 400, "invalid_value", "empty"),
        bad(M::POST, "/v1/rules", &json!([1]), 400, "invalid_body", "rules[0]"),
        bad(M::POST, "/v1/rules", &json!("10.0.0.0/8"), 400, "invalid_body", ""),
        raw(
            M::POST,
            "/v1/rules",
            JSON,
            r#"[{"cidr": "10.1.0.0/16", "action": "deny"}"#,
            400,
            "malformed_json",
        ),
        raw(M::POST, "/v1/rules", Some("text/plain"), "10.0.0.0/8 deny", 415, "unsupported_media_type"),
        raw(
            M::POST,
            "/v1/rules",
            None,
            r#"[{"cidr": "10.1.0.0/16", "action": "deny"}]"#,
            415,
            "unsupported_media_type",
        ),
        bad(M::DELETE, "/v1/rules/abc", &json!(null), 400, "invalid_path", "abc"),
        bad(M::DELETE, "/v1/rules/-1", &json!(null), 400, "invalid_path", "-1"),
        bad(M::DELETE, "/v1/rules/9999", &json!(null), 404, "rule_not_found", "9999"),
        // Classes ("dns" matches udp/53).
        bad(
            M::PUT,
            "/v1/classes/alt",
            &json!({"match": [{"proto": "udp", "ports": "50-60"}], "limits": [{"rate": 5}]}),
            400,
            "invalid_value",
            "udp/53",
        ),
        bad(
            M::PUT,
            "/v1/classes",
            &json!({"classes": [udp_class("a", "53"), udp_class("b", "5353,53")]}),
            400,
            "invalid_value",
            "5353,53",
        ),
        bad(
            M::PUT,
            "/v1/classes",
            &json!({"classes": [udp_class("a", "53"), udp_class("b", "50-60")]}),
            400,
            "invalid_value",
            "classes[1].match[0].ports",
        ),
        bad(
            M::PUT,
            "/v1/classes",
            &json!({"classes": [udp_class("Bad Name", "53")]}),
            400,
            "invalid_value",
            "classes[0].name",
        ),
        bad(
            M::PUT,
            "/v1/classes",
            &json!({"classes": [udp_class("a", "53"), udp_class("a", "54")]}),
            400,
            "invalid_value",
            "classes[1].name",
        ),
        bad(M::PUT, "/v1/classes/Bad%20Name", &udp_class("x", "54"), 400, "invalid_path", "Bad Name"),
        bad(
            M::GET,
            "/v1/classes/-x-far-too-long-for-a-class-name-",
            &json!(null),
            400,
            "invalid_path",
            "name",
        ),
        bad(
            M::PUT,
            "/v1/classes/a",
            &json!({"match": [{"proto": "udp", "ports": 54}], "limits": [{"rate": 1}, {"rate": 2}, {"rate": 3}, {"rate": 4}]}),
            400,
            "invalid_value",
            "class.limits",
        ),
        bad(
            M::PUT,
            "/v1/classes",
            &json!({"classes": [{"name": "a", "match": [{"proto": "udp", "ports": 54}], "limits": [{"rate": "0/minute"}]}]}),
            400,
            "invalid_value",
            "classes[0].limits[0].rate",
        ),
        bad(
            M::PUT,
            "/v1/classes/a",
            &json!({"match": [{"proto": "udp", "ports": 54}], "limits": [{"rate": 5}], "ban": {"after": "soon", "duration": "1m"}}),
            400,
            "invalid_value",
            "class.ban.after",
        ),
        bad(
            M::PUT,
            "/v1/classes/a",
            &json!({"match": [{"proto": "udp", "ports": 54}], "limits": [{"rate": 5}], "ban": {"after": "0s", "duration": "1m"}}),
            400,
            "invalid_value",
            "class.ban.after",
        ),
        bad(
            M::PUT,
            "/v1/classes/a",
            &json!({"match": [{"proto": "udp", "ports": 54}], "limits": [{"rate": 5}], "tiers": [{"rate": 5}]}),
            400,
            "invalid_value",
            "class.tiers[0]",
        ),
        bad(M::PUT, "/v1/classes/a", &udp_class("b", "54"), 400, "class_name_mismatch", "\"b\""),
        bad(
            M::PUT,
            "/v1/classes/a",
            &json!({"match": [], "limits": [{"rate": 5}]}),
            400,
            "invalid_value",
            "class.match",
        ),
        bad(
            M::PUT,
            "/v1/classes/a",
            &json!({"match": [{"proto": "udp", "ports": 54, "syn_only": true}], "limits": [{"rate": 5}]}),
            400,
            "invalid_value",
            "class.match[0].syn_only",
        ),
        bad(
            M::PUT,
            "/v1/classes/a",
            &json!({"match": [{"proto": "udp", "ports": 54}], "limits": [{"rate": 5}], "limitz": 1}),
            400,
            "invalid_body",
            "limitz",
        ),
        bad(M::PUT, "/v1/classes", &json!({"classes": [], "more": 1}), 400, "invalid_body", "more"),
        bad(M::PUT, "/v1/classes", &json!([]), 400, "invalid_body", ""),
        bad(M::GET, "/v1/classes/ghost", &json!(null), 404, "class_not_found", "ghost"),
        bad(M::DELETE, "/v1/classes/ghost", &json!(null), 404, "class_not_found", "ghost"),
        bad(M::PUT, "/v1/unmatched", &json!({"action": "drop"}), 400, "invalid_body", "drop"),
        bad(M::PUT, "/v1/unmatched", &json!({"action": "pass", "log": true}), 400, "invalid_body", "log"),
        // A scope entry a class already claims.
        bad(
            M::PUT,
            "/v1/scope",
            &json!({"ports": [{"proto": "udp", "port": 53}]}),
            400,
            "invalid_value",
            "scope.ports[0]",
        ),
        // Sources.
        bad(M::GET, "/v1/sources?top=0", &json!(null), 400, "invalid_query", "top"),
        bad(M::GET, "/v1/sources?top=10001", &json!(null), 400, "invalid_query", "top"),
        bad(M::GET, "/v1/sources?top=abc", &json!(null), 400, "invalid_query", "top"),
        bad(M::GET, "/v1/sources?by=bytes", &json!(null), 400, "invalid_query", "bytes"),
        bad(M::GET, "/v1/sources?foo=1", &json!(null), 400, "invalid_query", "foo"),
        bad(M::GET, "/v1/sources/not-an-ip", &json!(null), 400, "invalid_path", "not-an-ip"),
        bad(M::GET, "/v1/sources/10.0.0.300", &json!(null), 400, "invalid_path", "10.0.0.300"),
        bad(M::GET, "/v1/sources/198.51.100.1", &json!(null), 404, "source_not_tracked", "198.51.100.1"),
        bad(M::DELETE, "/v1/sources/198.51.100.1", &json!(null), 404, "source_not_tracked", "198.51.100.1"),
        bad(M::DELETE, "/v1/bans/198.51.100.1", &json!(null), 404, "not_banned", "198.51.100.1"),
        bad(M::DELETE, "/v1/bans/not-an-ip", &json!(null), 400, "invalid_path", "not-an-ip"),
        bad(M::GET, "/v1/sources/192.0.2.9", &json!(null), 404, "source_not_tracked", "allow"),
        // Controller and latency.
        bad(M::PUT, "/v1/controller", &json!({"floor": 0}), 400, "invalid_value", "floor"),
        bad(M::PUT, "/v1/controller", &json!({"floor": 1.5}), 400, "invalid_value", "floor"),
        bad(M::PUT, "/v1/controller", &json!({"algorithm": "pid"}), 400, "invalid_body", "pid"),
        bad(M::PUT, "/v1/controller", &json!({"interval_ms": 0}), 400, "invalid_value", "interval_ms"),
        bad(M::PUT, "/v1/controller", &json!({"enabled": "on"}), 400, "invalid_body", "enabled"),
        bad(M::PUT, "/v1/controller", &json!({"speed": 1}), 400, "invalid_body", "speed"),
        bad(M::POST, "/v1/latency", &json!({"samples_ms": []}), 400, "invalid_value", "samples_ms"),
        bad(M::POST, "/v1/latency", &json!({"samples_ms": [5, -1]}), 400, "invalid_value", "samples_ms[1]"),
        bad(M::POST, "/v1/latency", &json!({"samples_ms": ["x"]}), 400, "invalid_body", ""),
        bad(M::POST, "/v1/latency", &json!({}), 400, "invalid_body", "samples_ms"),
        // Routes.
        bad(M::GET, "/v1/nope", &json!(null), 404, "not_found", ""),
        bad(M::DELETE, "/v1/limits", &json!(null), 405, "method_not_allowed", ""),
        bad(M::POST, "/v1/status", &json!(null), 405, "method_not_allowed", ""),
    ]
}

/// Whether the OpenAPI document has `status` among the answers of `method`
/// on the route of `uri`; `None` when it has no such operation.
fn documented(doc: &Value, method: &Method, uri: &str, status: StatusCode) -> Option<bool> {
    let path = uri.split('?').next().unwrap_or(uri);
    let segments: Vec<&str> = path.split('/').collect();
    let (_, item) = doc["paths"].as_object()?.iter().find(|(template, _)| {
        let parts: Vec<&str> = template.split('/').collect();
        parts.len() == segments.len()
            && parts.iter().zip(&segments).all(|(part, segment)| part.starts_with('{') || part == segment)
    })?;
    let operation = item.get(method.as_str().to_ascii_lowercase())?;
    Some(operation["responses"].get(status.as_str()).is_some())
}

#[tokio::test]
async fn bad_inputs_get_a_4xx_naming_the_value_and_change_nothing() {
    let api = Api::new(None);
    // Something to conflict with and something to be looked up.
    let (status, _) =
        api.call(Method::POST, "/v1/rules", Some(json!({"cidr": "192.0.2.0/24", "action": "allow"}))).await;
    assert_eq!(status, StatusCode::CREATED);
    api.track(IpAddr::V4(Ipv4Addr::new(203, 0, 113, 1)), 5, 5);
    let (status, _) = api.call(Method::PUT, "/v1/classes/dns", Some(udp_class("dns", "53"))).await;
    assert_eq!(status, StatusCode::CREATED);
    let table = bad_inputs();
    assert!(table.len() >= 40, "{} bad inputs", table.len());
    let doc = api.call(Method::GET, "/v1/openapi.json", None).await.1;
    let before = api.snapshot().await;
    let mut failures = Vec::new();
    println!("{:<7} {:<28} {:<58} {:>6}  {:<24} message", "method", "uri", "body", "status", "code");
    for case in &table {
        let mut request = Request::builder().method(case.method.clone()).uri(case.uri);
        if let Some(ct) = case.content_type {
            request = request.header(header::CONTENT_TYPE, ct);
        }
        let body = if case.body == "null" { String::new() } else { case.body.clone() };
        let (status, answer, _) = api.send(request.body(Body::from(body)).unwrap()).await;
        let code = answer["error"]["code"].as_str().unwrap_or("(none)");
        let message = answer["error"]["message"].as_str().unwrap_or("(none)");
        let field = answer["error"]["field"].as_str().unwrap_or("");
        let shown: String = case.body.chars().take(56).collect();
        println!(
            "{:<7} {:<28} {:<58} {:>6}  {:<24} {message}",
            case.method,
            case.uri,
            shown,
            status.as_u16(),
            code
        );
        if status != case.status || code != case.code {
            failures.push(format!(
                "{} {} {}: got {status} {code} ({message}), want {} {}",
                case.method, case.uri, case.body, case.status, case.code
            ));
        } else if let Some(names) = case.names {
            if !message.contains(names) && !field.contains(names) {
                failures.push(format!(
                    "{} {} {}: {message:?} does not name {names:?}",
                    case.method, case.uri, case.body
                ));
            }
        }
        if documented(&doc, &case.method, case.uri, status) == Some(false) {
            failures.push(format!(
                "{} {} {}: {status} is not among the operation's answers in the OpenAPI document",
                case.method, case.uri, case.body
            ));
        }
        let after = api.snapshot().await;
        if after != before {
            failures.push(format!(
                "{} {} {}: changed the state:\n{before:#}\n{after:#}",
                case.method, case.uri, case.body
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} bad inputs went wrong:\n{}",
        failures.len(),
        table.len(),
        failures.join("\n")
    );
}

#[tokio::test]
async fn without_a_token_a_change_is_taken_from_the_daemons_own_user_and_not_from_nobody() {
    let dir = tempfile::tempdir().unwrap();
    let control = Control::new(
        Box::new(FakeKernel::default()),
        Policy::default(),
        Some(Store::open(dir.path()).unwrap()),
    )
    .unwrap();
    let router = router(AppState::new(Runtime::new(control), None));
    let patch = |peer: Option<std::net::SocketAddr>| {
        let mut request = Request::patch("/v1/limits")
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"dry_run": true}"#))
            .unwrap();
        if let Some(peer) = peer {
            request.extensions_mut().insert(axum::extract::ConnectInfo(peer));
        }
        request
    };
    // A caller on a socket of this process: this process's user.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
    let ours = router.clone().oneshot(patch(Some(client.local_addr().unwrap()))).await.unwrap();
    assert_eq!(ours.status(), StatusCode::OK, "the daemon's own user");
    // A caller whose socket is nowhere in the table: refused, and said why.
    let unknown = router.clone().oneshot(patch(Some("127.0.0.1:1".parse().unwrap()))).await.unwrap();
    assert_eq!(unknown.status(), StatusCode::FORBIDDEN);
    let body = unknown.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("--token-file"), "{body:?}");
    assert_eq!(router.clone().oneshot(patch(None)).await.unwrap().status(), StatusCode::FORBIDDEN);
    // Looking needs no one in particular.
    let look = Request::get("/v1/limits").body(Body::empty()).unwrap();
    assert_eq!(router.oneshot(look).await.unwrap().status(), StatusCode::OK);
}
