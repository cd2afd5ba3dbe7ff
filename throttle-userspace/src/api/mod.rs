//! The admin API: JSON under `/v1`, Prometheus text at `/metrics`,
//! `/healthz` and `/readyz`, and the OpenAPI document at `/v1/openapi.json`,
//! generated from the handlers' annotations.
//!
//! [`router`] builds it from an [`AppState`], so tests call it in-process.

mod error;
mod metrics;
pub mod peer;
mod routes;
pub mod serve;
#[cfg(test)]
mod tests;

use std::{
    net::SocketAddr,
    path::Path,
    sync::{Arc, OnceLock},
};

use axum::{
    extract::{DefaultBodyLimit, MatchedPath, Request, State},
    http::{header, HeaderValue, Method, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    Router,
};
pub use error::{ApiError, ErrorBody, ErrorDetail};
use prometheus_client::metrics::{counter::Counter, family::Family};
pub use routes::ClassList;
pub use serve::{
    connection_cap, serve, BODY_READ_TIMEOUT, HEADER_READ_TIMEOUT, MAX_CONNECTIONS, MAX_CONNECTIONS_PER_PEER,
};
use subtle::ConstantTimeEq as _;
use utoipa::OpenApi as _;
use utoipa_axum::router::OpenApiRouter;

use crate::runtime::Runtime;

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

/// Everything the handlers share: the daemon's runtime, the token, and the
/// requests counted for `/metrics`.
pub struct Shared {
    runtime: Runtime,
    token: Option<Token>,
    /// Whether, without a token, a change is checked for who makes it
    /// ([`peer`]); not for requests made in the daemon's own process.
    check_callers: bool,
    requests: Family<RequestLabels, Counter>,
}

/// The state of the router; it reads as the [`Runtime`] it serves.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    #[must_use]
    pub fn new(runtime: Runtime, token: Option<Token>) -> Self {
        Self(Arc::new(Shared { runtime, token, check_callers: true, requests: Family::default() }))
    }

    /// The state of a router called in the daemon's own process (the
    /// in-process tests): its requests come from no socket, so no caller
    /// is checked; the token still is.
    #[must_use]
    pub fn in_process(runtime: Runtime, token: Option<Token>) -> Self {
        Self(Arc::new(Shared { runtime, token, check_callers: false, requests: Family::default() }))
    }
}

impl std::ops::Deref for AppState {
    type Target = Runtime;

    fn deref(&self) -> &Runtime {
        &self.0.runtime
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
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "The daemon's token (`--token-file`), needed by every endpoint but the \
                         health checks when the daemon has one; a daemon without one (which then \
                         listens on loopback only) needs none.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The router and its OpenAPI document.
fn parts() -> (Router<AppState>, utoipa::openapi::OpenApi) {
    let (router, mut doc) = routes::routes(OpenApiRouter::with_openapi(ApiDoc::openapi())).split_for_parts();
    document_common_answers(&mut doc);
    (router, doc)
}

/// What the extractors and the middleware answer on every operation of a
/// kind, written into each: the token (optional, as it is without one),
/// `401` without it, `400` for a bad parameter or body, `413` and `415` for
/// a body too large or not JSON, `500` when a change reaches the kernel or
/// the state file and fails there (nothing changed).
fn document_common_answers(doc: &mut utoipa::openapi::OpenApi) {
    use utoipa::openapi::{
        path::HttpMethod, security::SecurityRequirement, ContentBuilder, Ref, RefOr, ResponseBuilder,
    };
    let error = |description: &str| {
        RefOr::T(
            ResponseBuilder::new()
                .description(description)
                .content(
                    "application/json",
                    ContentBuilder::new().schema(Some(Ref::from_schema_name("ErrorBody"))).build(),
                )
                .build(),
        )
    };
    for item in doc.paths.paths.values_mut() {
        let operations = [
            (HttpMethod::Get, &mut item.get),
            (HttpMethod::Put, &mut item.put),
            (HttpMethod::Post, &mut item.post),
            (HttpMethod::Patch, &mut item.patch),
            (HttpMethod::Delete, &mut item.delete),
        ];
        for (method, operation) in operations {
            let Some(operation) = operation else { continue };
            let answers = &mut operation.responses.responses;
            // The health checks say `security(())`: open, token or not.
            if operation.security.is_none() {
                operation.security = Some(vec![
                    SecurityRequirement::default(),
                    SecurityRequirement::new("bearer", Vec::<String>::new()),
                ]);
                answers.entry("401".into()).or_insert_with(|| {
                    error("`unauthorized`: the daemon has a token, and the request did not carry it")
                });
            }
            let takes_input = operation.request_body.is_some()
                || operation.parameters.as_ref().is_some_and(|p| !p.is_empty());
            if takes_input {
                answers.entry("400".into()).or_insert_with(|| {
                    error("a parameter or the body refused, with its `code` and the `field` to blame")
                });
            }
            if operation.request_body.is_some() {
                answers.entry("413".into()).or_insert_with(|| error("`payload_too_large`"));
                answers.entry("415".into()).or_insert_with(|| {
                    error("`unsupported_media_type`: the body must be sent as `application/json`")
                });
            }
            if !matches!(method, HttpMethod::Get) {
                answers.entry("500".into()).or_insert_with(|| {
                    error(
                        "`kernel_error` or `store_error`: the maps or the state file refused the \
                         change; the previous policy stays in force",
                    )
                });
            }
        }
    }
}

/// The OpenAPI document of the API.
#[must_use]
pub fn openapi() -> utoipa::openapi::OpenApi {
    parts().1
}

/// The handlers' routes, before any state, and the OpenAPI document as
/// served: both come from the handlers' annotations alone, so they are made
/// once a process, however many routers are built over them (the
/// in-process tests and the fuzz targets build one a case).
fn stateless() -> &'static (Router<AppState>, Arc<String>) {
    static PARTS: OnceLock<(Router<AppState>, Arc<String>)> = OnceLock::new();
    PARTS.get_or_init(|| {
        let (router, doc) = parts();
        (router, Arc::new(doc.to_pretty_json().expect("the OpenAPI document serialises")))
    })
}

/// The admin API over `state`.
pub fn router(state: AppState) -> Router {
    let (router, doc) = stateless();
    let (router, doc) = (router.clone(), Arc::clone(doc));
    router
        .route(
            "/v1/openapi.json",
            axum::routing::get(move || {
                let doc = Arc::clone(&doc);
                async move { ([(header::CONTENT_TYPE, "application/json")], doc.as_str().to_owned()) }
            }),
        )
        .route("/", axum::routing::get(|| async { asset("index.html") }))
        .route(
            "/assets/{file}",
            axum::routing::get(|axum::extract::Path(file): axum::extract::Path<String>| async move {
                asset(&file)
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
        .layer(middleware::from_fn_with_state(state.clone(), record_changes))
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn_with_state(state.clone(), count_requests))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// The dashboard's files, built into the binary (no CDN: it works offline).
const ASSETS: [(&str, &str, &str); 5] = [
    ("index.html", "text/html; charset=utf-8", include_str!("dashboard/index.html")),
    ("dashboard.js", "text/javascript; charset=utf-8", include_str!("dashboard/dashboard.js")),
    ("dashboard.css", "text/css; charset=utf-8", include_str!("dashboard/dashboard.css")),
    (
        "uPlot.iife.min.js",
        "text/javascript; charset=utf-8",
        include_str!("dashboard/vendor/uPlot.iife.min.js"),
    ),
    ("uPlot.min.css", "text/css; charset=utf-8", include_str!("dashboard/vendor/uPlot.min.css")),
];

/// One of the dashboard's files. They hold no data: the page asks the API
/// for it, with the token when there is one.
fn asset(name: &str) -> Response {
    match ASSETS.iter().find(|(file, _, _)| *file == name) {
        Some((_, kind, body)) => ([(header::CONTENT_TYPE, *kind)], *body).into_response(),
        None => ApiError::not_found("not_found", "no such file").into_response(),
    }
}

/// With a token set, every request but the health checks and the
/// dashboard's files must carry it. Without one (on loopback), a change is
/// only taken from root or the daemon's own user ([`peer`]): any local
/// user may look, not every one may change.
async fn authorize(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let path = request.uri().path();
    let open = matches!(path, "/healthz" | "/readyz" | "/") || path.starts_with("/assets/");
    let reads = matches!(*request.method(), Method::GET | Method::HEAD | Method::OPTIONS);
    if state.0.token.is_none() && state.0.check_callers && !reads {
        let peer = request.extensions().get::<axum::extract::ConnectInfo<SocketAddr>>().map(|info| info.0);
        let uid = peer.and_then(peer::uid_of);
        if !uid.is_some_and(peer::may_change) {
            let who =
                uid.map_or_else(|| "a caller whose user is unknown".to_owned(), |uid| format!("uid {uid}"));
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "{who} may not change the policy: without a token, changes are taken from root and the \
                     daemon's own user only (run the client as one of them, or give the daemon --token-file)"
                ),
            )
            .into_response();
        }
    }
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

/// Every change made through the API is an event, with the client's
/// address (latency samples pushed to `/v1/latency` are no change).
async fn record_changes(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    if matches!(method, Method::GET | Method::HEAD | Method::OPTIONS) || request.uri().path() == "/v1/latency"
    {
        return next.run(request).await;
    }
    let path = request.uri().path().to_owned();
    let by = request
        .extensions()
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map_or_else(|| "api".to_owned(), |info| format!("api {}", info.0));
    let response = next.run(request).await;
    if response.status().is_success() {
        state.event(
            crate::runtime::EventView::new("change")
                .by(by)
                .detail(format!("{method} {path} {}", response.status().as_u16())),
        );
    }
    response
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
