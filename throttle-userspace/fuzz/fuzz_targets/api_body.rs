//! The admin API's write endpoints, driven through the real router
//! in-process (as `src/api/tests.rs` does) over an in-memory kernel, a fresh
//! daemon for every input.
//!
//! An input is one request or several, separated by a line `---`. Each
//! request is a request line from [`ENDPOINTS`] (`PATCH /v1/limits`), then
//! its body; for the `GET` endpoints (capture, explain) what follows is the
//! query string instead. An input whose request line is none of them is
//! skipped. For every request:
//!
//! - no panic, and no `5xx`;
//! - a refused request (`4xx`) answers `{"error": {"code", "message"}}` and
//!   changes nothing: the limits, the scope, the classes, what no class
//!   matches, the rules, the sets, the controller's parameters and the
//!   state file are as they were;
//! - a change taken (`PUT`/`PATCH` of the limits, the scope, the classes,
//!   what no class matches) answers what is in force after it.
//!
//! The daemon saves its changes in a state directory of its own; after the
//! last request a daemon started on it must show what was in force (of a
//! set, its prefixes: the lines refused are not kept).

#![no_main]

use std::{
    path::{Path, PathBuf},
    sync::{Arc, OnceLock},
};

use axum::{
    body::Body,
    http::{header, Request, StatusCode},
    Router,
};
use http_body_util::BodyExt as _;
use libfuzzer_sys::{fuzz_target, Corpus};
use serde_json::Value;
use throttle::{
    api::{router, AppState},
    control::{fake::FakeKernel, Control},
    controller::{self, AdaptiveConfig, Newcomers, ScaleSink, Usage},
    policy::Policy,
    runtime::Runtime,
    store::Store,
};
use tower::ServiceExt as _;

/// Most requests an input makes.
const MAX_REQUESTS: usize = 8;

/// The endpoints that take a body (or, for `GET`, a query): the request
/// line an input names one by, then the method, the path and the body's
/// content type.
const ENDPOINTS: &[(&str, &str, &str, Option<&str>)] = &[
    ("PUT /v1/limits", "PUT", "/v1/limits", Some("application/json")),
    ("PATCH /v1/limits", "PATCH", "/v1/limits", Some("application/json")),
    ("PUT /v1/scope", "PUT", "/v1/scope", Some("application/json")),
    ("PUT /v1/classes", "PUT", "/v1/classes", Some("application/json")),
    ("PUT /v1/classes/web", "PUT", "/v1/classes/web", Some("application/json")),
    ("DELETE /v1/classes/web", "DELETE", "/v1/classes/web", None),
    ("PUT /v1/unmatched", "PUT", "/v1/unmatched", Some("application/json")),
    ("POST /v1/rules", "POST", "/v1/rules", Some("application/json")),
    ("DELETE /v1/rules/1", "DELETE", "/v1/rules/1", None),
    ("PUT /v1/sets/feed text/plain", "PUT", "/v1/sets/feed", Some("text/plain")),
    ("PUT /v1/sets/feed application/json", "PUT", "/v1/sets/feed", Some("application/json")),
    ("DELETE /v1/sets/feed", "DELETE", "/v1/sets/feed", None),
    ("PUT /v1/controller", "PUT", "/v1/controller", Some("application/json")),
    ("POST /v1/latency", "POST", "/v1/latency", Some("application/json")),
    ("GET /v1/capture", "GET", "/v1/capture", None),
    ("GET /v1/explain", "GET", "/v1/explain", None),
];

/// The controller's view of the data path: none. (The daemon's runtime is
/// the real sink; it would hold the controller that holds it, and every
/// input's daemon would outlive it.)
struct NoTraffic;

impl ScaleSink for NoTraffic {
    fn usage(&self) -> Usage {
        Usage::default()
    }

    fn apply_scale(
        &self,
        _scale: f64,
        _newcomers: Option<Newcomers>,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        Ok(())
    }
}

struct Daemon {
    router: Router,
    state: AppState,
    /// Its state directory.
    dir: PathBuf,
}

impl Daemon {
    /// A daemon with the default policy and the controller off, as the
    /// in-process tests make one, over the state directory `dir`: what an
    /// earlier daemon saved there is restored, the controller's parameters
    /// too, as `throttle daemon` starts.
    fn start(dir: &Path) -> Self {
        let store = Store::open(dir).expect("the state directory");
        let control = Control::new(Box::new(FakeKernel::default()), Policy::default(), Some(store))
            .unwrap_or_else(|e| panic!("the daemon does not start on the state it saved: {e}"));
        let saved = control.saved_controller().cloned();
        let state = AppState::in_process(Runtime::new(control), None);
        let config = saved.unwrap_or_else(|| AdaptiveConfig { enabled: false, ..AdaptiveConfig::default() });
        state.set_controller(controller::spawn(config, Arc::new(NoTraffic)).expect("the controller starts"));
        Self { router: router(state.clone()), state, dir: dir.to_owned() }
    }

    async fn send(
        &self,
        method: &str,
        uri: &str,
        kind: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, Vec<u8>) {
        let mut request = Request::builder().method(method).uri(uri);
        if let Some(kind) = kind {
            request = request.header(header::CONTENT_TYPE, kind);
        }
        let request = request.body(Body::from(body)).expect("a request");
        let response = self.router.clone().oneshot(request).await.expect("the router answers");
        let status = response.status();
        if uri.starts_with("/v1/capture") && status.is_success() {
            // A stream of captured packets that ends with the client.
            return (status, Vec::new());
        }
        let bytes = response.into_body().collect().await.expect("the body is read").to_bytes();
        (status, bytes.to_vec())
    }

    /// What a refused request must leave as it was, in the form the `GET`
    /// endpoints show it.
    fn snapshot(&self) -> Value {
        let controller = self.state.controller().expect("a controller").config();
        let mut snapshot = self.state.control(|c| {
            serde_json::json!({
                "limits": c.limits(),
                "scope": c.scope(),
                "classes": { "classes": c.classes() },
                "unmatched": c.unmatched(),
                "rules": { "rules": c.rules() },
                "sets": c.sets(),
            })
        });
        snapshot["controller"] = serde_json::to_value(controller).expect("the parameters serialise");
        snapshot["state_file"] = std::fs::read_to_string(self.dir.join("state.json")).ok().into();
        snapshot
    }
}

/// What a restart keeps of a snapshot: all but the state file's text and,
/// of each set, when it was loaded and the lines refused then (a set is
/// kept as its prefixes).
fn kept(mut snapshot: Value) -> Value {
    snapshot["state_file"].take();
    for set in snapshot["sets"]["sets"].as_array_mut().into_iter().flatten() {
        set["loaded_at"].take();
        set["refused"].take();
    }
    snapshot
}

type Endpoint = (&'static str, &'static str, &'static str, Option<&'static str>);

/// The requests of an input: each one's endpoint and its body or query;
/// none when a request line is none of [`ENDPOINTS`].
fn requests(mut rest: &[u8]) -> Option<Vec<(&'static Endpoint, &[u8])>> {
    const SEPARATOR: &[u8] = b"\n---\n";
    let mut requests = Vec::new();
    loop {
        let (part, next) = match rest.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
            Some(at) => (&rest[..at], Some(&rest[at + SEPARATOR.len()..])),
            None => (rest, None),
        };
        let (line, body) = match part.iter().position(|&b| b == b'\n') {
            Some(at) => (&part[..at], &part[at + 1..]),
            None => (part, &[][..]),
        };
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let endpoint = ENDPOINTS.iter().find(|e| e.0.as_bytes() == line)?;
        requests.push((endpoint, body));
        match next {
            Some(next) if requests.len() < MAX_REQUESTS => rest = next,
            _ => return Some(requests),
        }
    }
}

/// One runtime for every input (its blocking threads are kept); each
/// input's daemon, and the controller's tasks with it, goes with the input.
fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime")
    })
}

fuzz_target!(|data: &[u8]| -> Corpus {
    let Some(requests) = requests(data) else {
        return Corpus::Reject;
    };
    // The state directory, on a tmpfs where there is one: the daemon syncs
    // every change it saves.
    let shm = Path::new("/dev/shm");
    let dir =
        if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.expect("a directory");
    runtime().block_on(async {
        let daemon = Daemon::start(dir.path());
        let mut before = daemon.snapshot();
        for ((line, method, path, kind), body) in requests {
            let (uri, body) = if *method == "GET" {
                // The query: what a URI may hold, else the request is skipped.
                let Ok(query) = std::str::from_utf8(body) else { continue };
                let uri = format!("{path}?{}", query.trim_end());
                if uri.parse::<axum::http::Uri>().is_err() {
                    continue;
                }
                (uri, Vec::new())
            } else {
                ((*path).to_owned(), body.to_vec())
            };
            let (status, answer) = daemon.send(method, &uri, *kind, body).await;
            assert!(!status.is_server_error(), "{line} {uri}: {status} {}", String::from_utf8_lossy(&answer));
            let after = daemon.snapshot();
            if status.is_client_error() {
                let error: Value = serde_json::from_slice(&answer)
                    .unwrap_or_else(|e| panic!("{line}: {status}, no JSON ({e}): {answer:?}"));
                assert!(
                    error["error"]["code"].is_string() && error["error"]["message"].is_string(),
                    "{line}: {status} {error}"
                );
                assert_eq!(before, after, "{line}: refused ({status} {error}), and something changed");
            }
            if status.is_success() && matches!(*method, "PUT" | "PATCH") {
                // What a change answers is what is in force after it.
                let section = path.trim_start_matches("/v1/");
                if let Some(now) =
                    ["limits", "scope", "classes", "unmatched"].contains(&section).then(|| &after[section])
                {
                    let answer: Value = serde_json::from_slice(&answer).expect("a JSON answer");
                    assert_eq!(&answer, now, "{line}: answered {answer}, and {now} is in force");
                }
            }
            before = after;
        }
        // A restart loads what was in force.
        drop(daemon);
        let again = Daemon::start(dir.path());
        let restored = again.snapshot();
        assert_eq!(kept(restored), kept(before), "a restart does not restore what was in force");
        // The daemon goes, its controller's tasks aborted: let the runtime
        // free them within this input.
        drop(again);
        for _ in 0..4 {
            tokio::task::yield_now().await;
        }
    });
    Corpus::Keep
});
