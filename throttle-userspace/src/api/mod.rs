//! The admin API: JSON under `/v1`, Prometheus text at `/metrics`,
//! `/healthz` and `/readyz`, and the OpenAPI document at `/v1/openapi.json`,
//! generated from the handlers' annotations.
//!
//! [`router`] builds it from an [`AppState`], so tests call it in-process.

mod error;
mod metrics;
mod routes;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    net::SocketAddr,
    path::Path,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard, PoisonError,
    },
    time::{Duration, Instant},
};

use axum::{
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::{header, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    Router,
};
pub use error::{ApiError, ErrorBody, ErrorDetail};
use prometheus_client::metrics::{counter::Counter, family::Family};
use subtle::ConstantTimeEq as _;
use throttle_common::reason;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

use crate::{
    control::Control,
    controller::{ControllerHandle, ScaleSink, Usage},
};

/// Largest request body accepted, in bytes.
pub const MAX_BODY: usize = 64 * 1024;

/// Labels of `throttle_api_requests_total`.
type RequestLabels = Vec<(&'static str, String)>;

/// A bearer token, compared in constant time.
#[derive(Clone)]
pub struct Token(Arc<[u8]>);

impl Token {
    /// Reads the token from `path`: its first line, without surrounding
    /// white space; an empty one is refused.
    pub fn read(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| TokenError::Read { path: path.to_owned(), source })?;
        let token = text.lines().next().unwrap_or_default().trim();
        if token.is_empty() {
            return Err(TokenError::Empty { path: path.to_owned() });
        }
        Ok(Self(token.as_bytes().into()))
    }

    /// Whether an `Authorization` header value carries this token.
    fn admits(&self, header: Option<&HeaderValue>) -> bool {
        let Some(given) = header.and_then(|h| h.as_bytes().strip_prefix(b"Bearer ")) else {
            return false;
        };
        // Equal lengths are compared in constant time; the length itself is
        // no secret worth hiding.
        given.ct_eq(&self.0).into()
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl From<&str> for Token {
    fn from(token: &str) -> Self {
        Self(token.as_bytes().into())
    }
}

/// Why the token file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the token file {}: {source}", path.display())]
    Read { path: std::path::PathBuf, source: std::io::Error },
    #[error("the token file {} is empty", path.display())]
    Empty { path: std::path::PathBuf },
}

/// Refuses to serve beyond loopback without a token.
pub fn check_exposure(addr: SocketAddr, token: Option<&Token>) -> Result<(), String> {
    if addr.ip().is_loopback() || token.is_some() {
        Ok(())
    } else {
        Err(format!(
            "the admin API would listen on {addr}, beyond loopback, without a token: \
             pass --token-file FILE (a file holding the bearer token) or listen on 127.0.0.1"
        ))
    }
}

/// What the sampler saw last: the number of tracked sources and the traffic
/// the controller's app-limited guard needs.
#[derive(Debug, Default)]
struct Sampled {
    sources: u64,
    at: Option<Instant>,
    /// `over_limit` at the previous controller tick.
    over_limit_seen: u64,
    /// `passed` of every bucket at the previous sample.
    passed: HashMap<([u32; 4], u32, throttle_common::Family), u64>,
    peak_ratio: Option<f64>,
}

/// Everything the handlers share.
pub struct Shared {
    control: Arc<Mutex<Control>>,
    controller: Mutex<Option<ControllerHandle>>,
    token: Option<Token>,
    ready: AtomicBool,
    started: Instant,
    sampled: Mutex<Sampled>,
    requests: Family<RequestLabels, Counter>,
}

/// The state of the router.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl AppState {
    #[must_use]
    pub fn new(control: Control, token: Option<Token>) -> Self {
        Self(Arc::new(Shared {
            control: Arc::new(Mutex::new(control)),
            controller: Mutex::new(None),
            token,
            ready: AtomicBool::new(false),
            started: Instant::now(),
            sampled: Mutex::new(Sampled::default()),
            requests: Family::default(),
        }))
    }

    /// Hands the running controller to the API.
    pub fn set_controller(&self, handle: ControllerHandle) {
        *lock(&self.0.controller) = Some(handle);
    }

    #[must_use]
    pub fn controller(&self) -> Option<ControllerHandle> {
        lock(&self.0.controller).clone()
    }

    /// `/readyz` answers 200 from now on: every interface is attached.
    pub fn set_ready(&self) {
        self.0.ready.store(true, Ordering::Release);
    }

    #[must_use]
    pub fn is_ready(&self) -> bool {
        self.0.ready.load(Ordering::Acquire)
    }

    /// Runs `f` on the control plane on a blocking thread: map reads and
    /// writes are system calls, and a walk over a million buckets takes a
    /// while.
    pub async fn with_control<R, F>(&self, f: F) -> R
    where
        F: FnOnce(&mut Control) -> R + Send + 'static,
        R: Send + 'static,
    {
        let control = Arc::clone(&self.0.control);
        tokio::task::spawn_blocking(move || f(&mut lock(&control)))
            .await
            .unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()))
    }

    /// Runs `f` on the control plane on this thread (quick reads only).
    pub fn control<R>(&self, f: impl FnOnce(&mut Control) -> R) -> R {
        f(&mut lock(&self.0.control))
    }

    /// Walks the buckets once: counts them and measures how close the
    /// busiest source runs to its configured rate. Blocking; the daemon calls
    /// it periodically on a blocking thread.
    pub fn sample(&self) {
        let now = Instant::now();
        // Neither lock is held during the walk: `/v1/status` reads what the
        // last sample saw, and the API's handlers and the controller take
        // the control plane, while a walk over a million buckets runs.
        let (elapsed, previous) = {
            let mut sampled = lock(&self.0.sampled);
            (sampled.at.map(|at| now.duration_since(at).as_secs_f64()), std::mem::take(&mut sampled.passed))
        };
        let mut passed = HashMap::with_capacity(previous.len());
        let mut peak: Option<f64> = None;
        let mut sources = 0u64;
        let (walk, bytes, base_rates) = self.control(|control| {
            (control.bucket_walk(), control.limits().unit == crate::config::Unit::Bytes, control.base_rates())
        });
        let default_rate = base_rates.get(&0).copied().unwrap_or(1);
        walk(&mut |key, bucket| {
            sources += 1;
            let id = (key.addr, key.rule, key.family);
            passed.insert(id, bucket.passed);
            if let (Some(secs), Some(before)) = (elapsed, previous.get(&id)) {
                if secs > 0.0 && !bytes {
                    let base = base_rates.get(&key.rule).copied().unwrap_or(default_rate);
                    #[expect(clippy::cast_precision_loss, reason = "a ratio")]
                    let ratio = bucket.passed.saturating_sub(*before) as f64 / secs / base.max(1) as f64;
                    peak = Some(peak.map_or(ratio, |p: f64| p.max(ratio)));
                }
            }
        });
        let mut sampled = lock(&self.0.sampled);
        sampled.passed = passed;
        sampled.sources = sources;
        sampled.peak_ratio = if elapsed.is_some() { Some(peak.unwrap_or(0.0)) } else { None };
        sampled.at = Some(now);
    }

    /// Sources tracked at the last sample.
    #[must_use]
    pub fn sources_tracked(&self) -> u64 {
        lock(&self.0.sampled).sources
    }

    #[must_use]
    pub fn uptime(&self) -> Duration {
        self.0.started.elapsed()
    }
}

impl ScaleSink for AppState {
    fn usage(&self) -> Usage {
        let over_limit = self
            .control(|c| c.kernel().counters())
            .map_or(0, |counters| counters[reason::OVER_LIMIT.index()]);
        let mut sampled = lock(&self.0.sampled);
        let delta = over_limit.saturating_sub(sampled.over_limit_seen);
        sampled.over_limit_seen = over_limit;
        Usage { over_limit_drops: delta, peak_ratio: sampled.peak_ratio }
    }

    fn apply_scale(&self, scale: f64) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        self.control(|c| c.set_scale(scale)).map_err(Into::into)
    }
}

/// The admin API's documentation object; the paths come from the handlers.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "throttle admin API", description = "Live control of the throttle daemon."),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
        openapi.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
    }
}

/// The router and its OpenAPI document.
fn parts() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    routes::routes(OpenApiRouter::with_openapi(ApiDoc::openapi())).split_for_parts()
}

/// The OpenAPI document of the API.
#[must_use]
pub fn openapi() -> utoipa::openapi::OpenApi {
    parts().1
}

/// The admin API over `state`.
pub fn router(state: AppState) -> Router {
    let (router, doc) = parts();
    let doc = Arc::new(doc.to_pretty_json().expect("the OpenAPI document serialises"));
    router
        .route(
            "/v1/openapi.json",
            axum::routing::get(move || {
                let doc = Arc::clone(&doc);
                async move { ([(header::CONTENT_TYPE, "application/json")], doc.as_str().to_owned()) }
            }),
        )
        .fallback(|| async { ApiError::not_found("not_found", "no such endpoint") })
        .method_not_allowed_fallback(|| async {
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this endpoint has no such method",
            )
        })
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// With a token set, every request but the health checks must carry it.
async fn authorize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let open = matches!(request.uri().path(), "/healthz" | "/readyz");
    match &state.0.token {
        Some(token) if !open && !token.admits(request.headers().get(header::AUTHORIZATION)) => {
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this endpoint needs `Authorization: Bearer <token>` with the daemon's token",
            )
            .into_response();
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            response
        }
        _ => next.run(request).await,
    }
}

/// Counts requests by route, method and status.
async fn count_requests(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let response = next.run(request).await;
    let labels =
        vec![("route", route), ("method", method), ("status", response.status().as_u16().to_string())];
    state.0.requests.get_or_create(&labels).inc();
    response
}
