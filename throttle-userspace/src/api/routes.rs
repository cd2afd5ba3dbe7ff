//! The handlers, each with the annotation its part of the OpenAPI document
//! is generated from.

use std::{net::IpAddr, sync::Arc};

use axum::{
    extract::State,
    http::{header, HeaderMap, StatusCode},
    response::{IntoResponse, Response},
    Json,
};
use serde::{Deserialize, Serialize};
use throttle_common::reason;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};

use super::{
    error::{ApiError, Body, BodyKey, PathParam, Query},
    metrics, AppState, ErrorBody,
};
use crate::{
    control::{
        top_buckets, BanView, ChangeError, ExplainView, RankBy, RuleView, SetLoad, SetsView, SourceView,
    },
    controller::ParamsUpdate,
    kernel::{counters_label, explain::Probe, Chained, Counters, KernelError},
    policy::{
        self, Action, Class, ClassName, Limits, LimitsPatch, Proto, Rate, RuleSpec, Scope, SetName, Unmatched,
    },
};

/// What a change of the policy may also answer in fleet mode.
#[derive(utoipa::IntoResponses)]
#[expect(dead_code, reason = "the document's form of the answers; the errors are ApiError's")]
enum FleetErrors {
    /// `fleet_conflict`: another node's change came first;
    /// `error.current_version` is the version that won.
    #[response(status = 409)]
    Conflict(ErrorBody),
    /// `fleet_unavailable`: Redis did not take the change; nothing changed.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// What the controller's endpoints answer before it runs.
#[derive(utoipa::IntoResponses)]
#[expect(dead_code, reason = "the document's form of the answer; the error is ApiError's")]
enum NoController {
    /// `controller_unavailable`: the controller is not running yet.
    #[response(status = 503)]
    Unavailable(ErrorBody),
}

/// The key each body's fields are named under in errors.
macro_rules! body_keys {
    ($($body:ty => $key:literal),* $(,)?) => {
        $(impl BodyKey for $body {
            const KEY: &'static str = $key;
        })*
    };
}

body_keys! {
    Limits => "limits",
    LimitsPatch => "limits",
    Scope => "scope",
    // The list's own key is its field's: errors read `classes[0].limits[0].rate`.
    ClassList => "",
    ClassObject => "class",
    Unmatched => "unmatched",
    RuleSpec => "rule",
    ParamsUpdate => "",
    LatencySamples => "",
}

/// Most sources `GET /v1/sources` returns.
pub const MAX_TOP: usize = 10_000;
/// Sources `GET /v1/sources` returns unless told.
pub const DEFAULT_TOP: usize = 10;

pub(super) fn routes(router: OpenApiRouter<AppState>) -> OpenApiRouter<AppState> {
    router
        .routes(routes!(healthz))
        .routes(routes!(readyz))
        .routes(routes!(metrics_text))
        .routes(routes!(status))
        .routes(routes!(cluster))
        .routes(routes!(get_limits, put_limits, patch_limits))
        .routes(routes!(get_scope, put_scope))
        .routes(routes!(get_classes, put_classes))
        .routes(routes!(get_class, put_class, remove_class))
        .routes(routes!(get_unmatched, put_unmatched))
        .routes(routes!(list_sets))
        .routes(routes!(put_set, remove_set))
        .routes(routes!(list_rules, add_rule))
        .routes(routes!(remove_rule))
        .routes(routes!(top_sources))
        .routes(routes!(get_source, reset_source))
        .routes(routes!(explain_packet))
        .routes(routes!(list_bans))
        .routes(routes!(lift_ban))
        .routes(routes!(stats))
        .routes(routes!(list_events))
        .routes(routes!(capture))
        .routes(routes!(get_controller, put_controller))
        .routes(routes!(push_latency))
}

/// Alive: the process answers.
#[utoipa::path(get, path = "/healthz", tag = "health", security(()), responses((status = 200, body = String)))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// Ready: the program is attached to every interface, and none of them is
/// missing.
#[utoipa::path(
    get, path = "/readyz", tag = "health", security(()),
    responses((status = 200, body = String), (status = 503, body = String))
)]
async fn readyz(State(state): State<AppState>) -> (StatusCode, String) {
    if state.is_ready() {
        (StatusCode::OK, "ready\n".to_owned())
    } else if let missing @ [_, ..] = state.missing_interfaces().as_slice() {
        (StatusCode::SERVICE_UNAVAILABLE, format!("interface missing: {}\n", missing.join(", ")))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "attaching\n".to_owned())
    }
}

/// Prometheus metrics, text format.
#[utoipa::path(
    get, path = "/metrics", tag = "metrics",
    responses((status = 200, body = String, content_type = "application/openmetrics-text"))
)]
async fn metrics_text(State(state): State<AppState>) -> Response {
    let text = metrics::render(&state).await;
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], text)
        .into_response()
}

/// An interface the program is attached to.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InterfaceView {
    pub name: String,
    /// `native` or `generic`.
    pub mode: String,
    /// `attached`, or `missing` while no interface has that name (it was
    /// deleted or moved away): nothing is metered there until one comes
    /// back, and the daemon attaches to it again.
    #[serde(default)]
    pub state: String,
}

/// The daemon at a glance.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StatusView {
    /// The daemon's version.
    pub version: String,
    /// Bumped at every write of the configuration to the maps.
    pub config_version: u64,
    pub uptime_seconds: u64,
    pub ready: bool,
    pub interfaces: Vec<InterfaceView>,
    /// Sources with a bucket, at the last count (every few seconds).
    pub sources_tracked: u64,
    /// Capacity of the bucket map.
    pub max_sources: u32,
    pub rules: usize,
    pub dry_run: bool,
    /// The controller's factor on every rate.
    pub scale: f64,
    /// Fleet mode: the fleet's policy version this node runs and how it
    /// stands with the fleet; none when the daemon runs alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fleet: Option<FleetStatus>,
    /// The XDP program what throttle passes continues into (`--chain`);
    /// none: passed packets go to the stack.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chain: Option<Chained>,
}

/// A node's place in its fleet, as `GET /v1/status` shows it.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct FleetStatus {
    pub node: String,
    /// The version of the fleet's policy in force here (0: none yet).
    pub policy_version: u64,
    /// `connecting`, `synced`, `holding` or `fallback`.
    pub state: String,
}

#[utoipa::path(get, path = "/v1/status", tag = "status", responses((status = 200, body = StatusView)))]
async fn status(State(state): State<AppState>) -> Json<StatusView> {
    let sources_tracked = state.sources_tracked();
    let ready = state.is_ready();
    let uptime_seconds = state.uptime().as_secs();
    let fleet = state.fleet().map(|f| (f.config().node.clone(), f.state().name().to_owned()));
    Json(state.control(|c| {
        StatusView {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            config_version: c.kernel().version(),
            uptime_seconds,
            ready,
            interfaces: c
                .kernel()
                .attachments()
                .into_iter()
                .map(|a| {
                    let attached = state.is_attached(&a.iface);
                    InterfaceView {
                        state: if attached { "attached" } else { "missing" }.to_owned(),
                        name: a.iface,
                        mode: a.mode.to_owned(),
                    }
                })
                .collect(),
            sources_tracked,
            max_sources: c.kernel().max_sources(),
            rules: c.policy().rules.len(),
            dry_run: c.limits().dry_run,
            scale: c.scale(),
            fleet: fleet.map(|(node, state)| FleetStatus { node, policy_version: c.fleet_version(), state }),
            chain: c.kernel().chained(),
        }
    }))
}

/// The fleet as this node sees it: its state, the live nodes with their
/// last sync and policy version, and each heavy source's share here.
#[utoipa::path(
    get, path = "/v1/cluster", tag = "status",
    responses((status = 200, body = crate::runtime::fleet::ClusterView), (status = 404, body = ErrorBody))
)]
async fn cluster(
    State(state): State<AppState>,
) -> Result<Json<crate::runtime::fleet::ClusterView>, ApiError> {
    state.cluster_view().map(Json).ok_or_else(|| {
        ApiError::not_found(
            "no_cluster",
            "this daemon runs alone: fleet mode needs `[cluster]` or --cluster-redis",
        )
    })
}

/// The default limit and the settings every source shares.
#[utoipa::path(get, path = "/v1/limits", tag = "limits", responses((status = 200, body = Limits)))]
async fn get_limits(State(state): State<AppState>) -> Json<Limits> {
    Json(state.control(|c| c.limits().clone()))
}

/// Replaces every limit setting; a field left out takes its default.
#[utoipa::path(
    put, path = "/v1/limits", tag = "limits", request_body = Limits,
    responses(FleetErrors, (status = 200, body = Limits), (status = 400, body = ErrorBody))
)]
async fn put_limits(
    State(state): State<AppState>,
    Body(limits): Body<Limits>,
) -> Result<Json<Limits>, ApiError> {
    state
        .with_control(move |c| c.set_limits(&limits).map(|()| Json(c.limits().clone())))
        .await
        .map_err(Into::into)
}

/// Changes the fields given.
#[utoipa::path(
    patch, path = "/v1/limits", tag = "limits", request_body = LimitsPatch,
    responses(FleetErrors, (status = 200, body = Limits), (status = 400, body = ErrorBody))
)]
async fn patch_limits(
    State(state): State<AppState>,
    Body(patch): Body<LimitsPatch>,
) -> Result<Json<Limits>, ApiError> {
    state
        .with_control(move |c| c.patch_limits(&patch).map(|()| Json(c.limits().clone())))
        .await
        .map_err(Into::into)
}

/// The ports the limits apply to; none: all traffic.
#[utoipa::path(get, path = "/v1/scope", tag = "scope", responses((status = 200, body = Scope)))]
async fn get_scope(State(state): State<AppState>) -> Json<Scope> {
    Json(state.control(|c| c.scope().clone()))
}

#[utoipa::path(
    put, path = "/v1/scope", tag = "scope", request_body = Scope,
    responses(FleetErrors, (status = 200, body = Scope), (status = 400, body = ErrorBody))
)]
async fn put_scope(State(state): State<AppState>, Body(scope): Body<Scope>) -> Result<Json<Scope>, ApiError> {
    state
        .with_control(move |c| c.set_scope(scope).map(|()| Json(c.scope().clone())))
        .await
        .map_err(Into::into)
}

/// The limit classes, in order: the body of `GET` and `PUT /v1/classes`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassList {
    pub classes: Vec<Class>,
}

/// The body of `PUT /v1/classes/{name}`: a class whose `name` may be left
/// out (it is the path's). Read as an object first, so that the path's
/// name fills a missing one before the class is parsed.
#[derive(Debug, Deserialize)]
#[serde(transparent)]
pub struct ClassObject(serde_json::Map<String, serde_json::Value>);

fn class_name(text: &str) -> Result<ClassName, ApiError> {
    text.parse().map_err(|invalid: policy::Invalid| {
        let mut err = ApiError::bad_request("invalid_path", invalid.to_string());
        err.field = Some("name".into());
        err
    })
}

/// The limit classes, in order.
#[utoipa::path(get, path = "/v1/classes", tag = "classes", responses((status = 200, body = ClassList)))]
async fn get_classes(State(state): State<AppState>) -> Json<ClassList> {
    Json(ClassList { classes: state.control(|c| c.classes().to_vec()) })
}

/// Replaces the whole list of classes (checked whole, with the scope).
#[utoipa::path(
    put, path = "/v1/classes", tag = "classes", request_body = ClassList,
    responses(FleetErrors, (status = 200, body = ClassList), (status = 400, body = ErrorBody))
)]
async fn put_classes(
    State(state): State<AppState>,
    Body(list): Body<ClassList>,
) -> Result<Json<ClassList>, ApiError> {
    state
        .with_control(move |c| {
            c.set_classes(list.classes).map(|()| Json(ClassList { classes: c.classes().to_vec() }))
        })
        .await
        .map_err(Into::into)
}

/// One class.
#[utoipa::path(
    get, path = "/v1/classes/{name}", tag = "classes", params(("name" = policy::Name, Path, description = "The class's name")),
    responses((status = 200, body = Class), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
async fn get_class(
    State(state): State<AppState>,
    PathParam(name): PathParam,
) -> Result<Json<Class>, ApiError> {
    let name = class_name(&name)?;
    state.control(|c| c.class(&name).cloned()).map(Json).map_err(Into::into)
}

/// Creates the class (`201`) or replaces it where it stands (`200`); the
/// others are left as they are. The body's `name` may be left out; given,
/// it must be the path's.
#[utoipa::path(
    put, path = "/v1/classes/{name}", tag = "classes", params(("name" = policy::Name, Path, description = "The class's name")),
    request_body = Class,
    responses(FleetErrors, (status = 200, body = Class), (status = 201, body = Class), (status = 400, body = ErrorBody))
)]
async fn put_class(
    State(state): State<AppState>,
    PathParam(name): PathParam,
    Body(ClassObject(mut object)): Body<ClassObject>,
) -> Result<Response, ApiError> {
    let name = class_name(&name)?;
    object.entry("name").or_insert_with(|| name.as_str().into());
    let class: Class = policy::parse(serde_json::Value::Object(object), ClassObject::KEY)?;
    let (created, class) = state
        .with_control(move |c| {
            let created = c.put_class_at(&name, class)?;
            Ok::<_, ChangeError>((created, c.class(&name)?.clone()))
        })
        .await?;
    let location = format!("/v1/classes/{}", class.name);
    Ok(put_answer(created, location, Json(class)))
}

/// What a `PUT` of a named thing answers: `201` with its location when it
/// made it, else `200`; the thing in the body either way.
fn put_answer(created: bool, location: String, body: impl IntoResponse) -> Response {
    if created {
        (StatusCode::CREATED, [(header::LOCATION, location)], body).into_response()
    } else {
        body.into_response()
    }
}

/// Removes a class; the others keep their order.
#[utoipa::path(
    delete, path = "/v1/classes/{name}", tag = "classes", params(("name" = policy::Name, Path, description = "The class's name")),
    responses(FleetErrors, (status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
async fn remove_class(
    State(state): State<AppState>,
    PathParam(name): PathParam,
) -> Result<StatusCode, ApiError> {
    let name = class_name(&name)?;
    state.with_control(move |c| c.remove_class(&name)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Most events `GET /v1/events` returns.
pub const MAX_EVENTS: usize = crate::runtime::RECENT;

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// How many of the last events (1..=1000, default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub n: Option<usize>,
}

/// The last events, and what became of the data path's.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventsView {
    pub events: Vec<crate::runtime::EventView>,
    pub data_path: crate::kernel::EventStats,
}

/// The last events as JSON; with `Accept: text/event-stream`, a live
/// Server-Sent Events stream: the last `n` (default none), then every new
/// one as it happens, each a `data:` line of the event's JSON with its
/// `seq` as the `id:`.
#[utoipa::path(
    get, path = "/v1/events", tag = "events", params(EventsQuery),
    responses(
        (
            status = 200,
            description = "The events as JSON; with `Accept: text/event-stream`, a live stream of them",
            content((EventsView = "application/json"), (String = "text/event-stream"))
        ),
        (status = 400, body = ErrorBody)
    )
)]
async fn list_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(query): Query<EventsQuery>,
) -> Result<Response, ApiError> {
    let n = query.n.unwrap_or(100);
    if !(1..=MAX_EVENTS).contains(&n) {
        let mut err = ApiError::bad_request("invalid_query", format!("n={n}: from 1 to {MAX_EVENTS}"));
        err.field = Some("n".into());
        return Err(err);
    }
    let stream = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("text/event-stream"));
    if !stream {
        let data_path = state.control(|c| c.kernel().event_stats()).map_err(ChangeError::from)?;
        return Ok(Json(EventsView { events: state.recent_events(n), data_path }).into_response());
    }
    // Subscribed first, so that nothing falls between the backlog and the
    // live events; the backlog only when asked for.
    let live = state.subscribe_events();
    let backlog = if query.n.is_some() { state.recent_events(n) } else { Vec::new() };
    let last = backlog.last().map_or(0, |e| e.seq);
    let sse = |event: &crate::runtime::EventView| {
        axum::response::sse::Event::default()
            .id(event.seq.to_string())
            .json_data(event)
            .expect("an event serialises")
    };
    let backlog = futures_util::stream::iter(
        backlog.iter().map(sse).map(Ok::<_, std::convert::Infallible>).collect::<Vec<_>>(),
    );
    let live = futures_util::stream::unfold(live, move |mut live| async move {
        loop {
            match live.recv().await {
                Ok(event) if event.seq > last => return Some((Ok(sse(&event)), live)),
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Ok(axum::response::sse::Sse::new(futures_util::StreamExt::chain(backlog, live))
        .keep_alive(axum::response::sse::KeepAlive::default())
        .into_response())
}

/// What `GET /v1/capture` copies.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct CaptureQuery {
    /// Drop reasons, comma-separated (`over_limit,deny_rule`; default:
    /// every drop reason).
    pub reason: Option<String>,
    /// Only sources in this prefix (`192.0.2.0/24`, `2001:db8::/32`).
    #[param(
        pattern = "^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}/(3[0-2]|[12]?[0-9])|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))$"
    )]
    pub source: Option<String>,
    /// Only packets of this class (`default` for `[limits]`).
    pub class: Option<String>,
    /// Stop after this many packets (default: when the client goes away).
    #[param(minimum = 1)]
    pub count: Option<u64>,
    /// One in N matching packets, at random (`1/N` or `N`; default 1).
    pub sample: Option<String>,
    /// Bytes kept of each packet, 14 to 128 (default 128).
    #[param(minimum = 14, maximum = 128)]
    pub snap: Option<u32>,
}

fn bad_query(field: &str, message: String) -> ApiError {
    let mut err = ApiError::bad_request("invalid_query", message);
    err.field = Some(field.into());
    err
}

/// The data path's form of a capture query.
fn capture_config(state: &AppState, q: &CaptureQuery) -> Result<throttle_common::CaptureConfig, ApiError> {
    use throttle_common::{ipv4_mask, ipv6_mask, CaptureConfig, CAPTURE_SNAP, FAMILY_V4, FAMILY_V6};
    let drops: Vec<usize> = (0..reason::COUNT as usize).filter(|&i| reason::drops(reason::ALL[i])).collect();
    let mut reasons = 0u32;
    match &q.reason {
        None => drops.iter().for_each(|&i| reasons |= 1 << i),
        Some(list) => {
            for name in list.split(',').map(str::trim) {
                let i =
                    reason::NAMES.iter().position(|n| *n == name).filter(|i| drops.contains(i)).ok_or_else(
                        || {
                            let names: Vec<&str> = drops.iter().map(|&i| reason::NAMES[i]).collect();
                            bad_query(
                                "reason",
                                format!("reason {name:?}: not a drop reason, which are {}", names.join(", ")),
                            )
                        },
                    )?;
                reasons |= 1 << i;
            }
        }
    }
    let sample = match &q.sample {
        None => 1,
        Some(text) => text
            .strip_prefix("1/")
            .unwrap_or(text)
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=1_000_000).contains(n))
            .ok_or_else(|| bad_query("sample", format!("sample {text:?}: 1/N or N, N from 1 to 1000000")))?,
    };
    let snap = q.snap.unwrap_or(CAPTURE_SNAP);
    if !(14..=CAPTURE_SNAP).contains(&snap) {
        return Err(bad_query("snap", format!("snap {snap}: from 14 to {CAPTURE_SNAP} bytes")));
    }
    if q.count == Some(0) {
        return Err(bad_query("count", "count 0: at least 1".to_owned()));
    }
    let mut config = CaptureConfig { reasons, sample, snap, ..CaptureConfig::default() };
    if let Some(text) = &q.source {
        let net = policy::parse_prefix(text).map_err(|bad| {
            let why = match bad {
                policy::BadPrefix::LeadingZero { .. } => bad.to_string(),
                policy::BadPrefix::Malformed => "not a prefix like 192.0.2.0/24".to_owned(),
            };
            bad_query("source", format!("source {text:?}: {why}"))
        })?;
        let key = |addr, v4: u8, v6: u8| crate::kernel::masked_key(addr, 0, ipv4_mask(v4), &ipv6_mask(v6));
        match net {
            ipnet::IpNet::V4(n) => {
                config.family = FAMILY_V4;
                config.mask = [ipv4_mask(n.prefix_len()), 0, 0, 0];
                config.addr = key(net.addr(), n.prefix_len(), 0).addr;
            }
            ipnet::IpNet::V6(n) => {
                config.family = FAMILY_V6;
                config.mask = ipv6_mask(n.prefix_len());
                config.addr = key(net.addr(), 0, n.prefix_len()).addr;
            }
        }
    }
    if let Some(name) = &q.class {
        let id = state
            .control(|c| c.class_id(name))
            .ok_or_else(|| bad_query("class", format!("class {name:?}: no such class (GET /v1/classes)")))?;
        config.class = id + 1;
    }
    Ok(config)
}

/// A `Write` into a buffer the stream takes each record's bytes from.
#[derive(Clone, Default)]
struct Chunks(Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Chunks {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Chunks {
    fn take(&self) -> Vec<u8> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner))
    }
}

/// Captures dropped packets and streams them as a pcap file (Ethernet,
/// microsecond timestamps): the first `snap` bytes of the drops that match,
/// until `count` or until the client goes away. One capture at a time
/// (`409` while one runs). While none runs, the data path pays one test on
/// its drop path.
#[utoipa::path(
    get, path = "/v1/capture", tag = "events", params(CaptureQuery),
    responses(
        (status = 200, description = "a pcap file", content_type = "application/vnd.tcpdump.pcap"),
        (status = 400, body = ErrorBody), (status = 409, body = ErrorBody)
    )
)]
async fn capture(
    State(state): State<AppState>,
    Query(query): Query<CaptureQuery>,
) -> Result<Response, ApiError> {
    use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
    let config = capture_config(&state, &query)?;
    let (packets, guard) = state.start_capture(config).map_err(|err| match err {
        crate::runtime::CaptureError::Busy => {
            ApiError::new(StatusCode::CONFLICT, "capture_running", err.to_string())
        }
        crate::runtime::CaptureError::Change(err) => err.into(),
    })?;
    let chunks = Chunks::default();
    let header = PcapHeader {
        snaplen: config.snap,
        endianness: pcap_file::Endianness::native(),
        ..PcapHeader::default()
    };
    let writer = PcapWriter::with_header(chunks.clone(), header).expect("writing to memory");
    let head = chunks.take();
    let remaining = query.count.unwrap_or(u64::MAX);
    let body =
        futures_util::stream::once(
            async move { Ok::<_, std::convert::Infallible>(bytes::Bytes::from(head)) },
        );
    let rest = futures_util::stream::unfold(
        (packets, writer, chunks, remaining, guard),
        |(mut packets, mut writer, chunks, remaining, guard)| async move {
            if remaining == 0 {
                return None;
            }
            let packet = packets.recv().await?;
            let caplen = (packet.caplen as usize).min(packet.data.len());
            let record =
                PcapPacket::new(crate::runtime::wall_time(packet.at_ns), packet.len, &packet.data[..caplen]);
            writer.write_packet(&record).expect("writing to memory");
            Some((Ok(bytes::Bytes::from(chunks.take())), (packets, writer, chunks, remaining - 1, guard)))
        },
    );
    let body = axum::body::Body::from_stream(futures_util::StreamExt::chain(body, rest));
    Ok(([(header::CONTENT_TYPE, "application/vnd.tcpdump.pcap")], body).into_response())
}

/// The IP sets, and the kernel memory their prefixes take.
#[utoipa::path(get, path = "/v1/sets", tag = "sets", responses((status = 200, body = SetsView)))]
async fn list_sets(State(state): State<AppState>) -> Json<SetsView> {
    Json(state.control(|c| c.sets()))
}

/// The largest body `PUT /v1/sets/{name}` reads: a million prefixes and
/// their comments.
pub const MAX_SET_BODY: usize = 64 << 20;

/// The JSON form of a set's body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetBody {
    /// One address or prefix each (a `#` comment allowed).
    pub prefixes: Vec<String>,
}

body_keys! { SetBody => "" }

/// Loads a set, new (`201`) or a new version of one (`200`): its prefixes
/// go into the slot not in use, then every packet switches to them at once.
/// The body is `text/plain`, one address or prefix a line (`#` comments),
/// or JSON `{"prefixes": [...]}`. Lines that are no prefix are refused,
/// counted and the first of them named; the rest is loaded.
#[utoipa::path(
    put, path = "/v1/sets/{name}", tag = "sets", params(("name" = policy::Name, Path, description = "The set's name")),
    request_body(content((String = "text/plain"), (SetBody = "application/json"))),
    responses(
        (status = 200, body = SetLoad), (status = 201, body = SetLoad), (status = 400, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody)
    )
)]
async fn put_set(
    State(state): State<AppState>,
    PathParam(name): PathParam,
    headers: HeaderMap,
    body: axum::body::Body,
) -> Result<Response, ApiError> {
    let name: SetName = class_name(&name)?;
    let bytes = axum::body::to_bytes(body, MAX_SET_BODY).await.map_err(|_| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("a set's body is at most {} MiB", MAX_SET_BODY >> 20),
        )
    })?;
    let kind = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("text/plain");
    let parsed = if kind.starts_with("application/json") {
        let body: SetBody = policy::parse(
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .map_err(|e| ApiError::bad_request("malformed_json", format!("the body is not JSON: {e}")))?,
            SetBody::KEY,
        )?;
        policy::parse_set(body.prefixes.iter().map(String::as_str))
    } else if kind.starts_with("text/plain") {
        let text = std::str::from_utf8(&bytes)
            .map_err(|e| ApiError::bad_request("invalid_body", format!("the body is not UTF-8 text: {e}")))?;
        policy::parse_set(text.lines())
    } else {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("a set's body is text/plain or application/json, not {kind}"),
        ));
    };
    let runtime: crate::runtime::Runtime = (*state).clone();
    let load = tokio::task::spawn_blocking(move || runtime.load_set(name, parsed))
        .await
        .unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()))?;
    let location = format!("/v1/sets/{}", load.name);
    Ok(put_answer(load.created, location, Json(load)))
}

/// Removes a set; refused (`409`) while a rule names it.
#[utoipa::path(
    delete, path = "/v1/sets/{name}", tag = "sets", params(("name" = policy::Name, Path, description = "The set's name")),
    responses((status = 204), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody))
)]
async fn remove_set(
    State(state): State<AppState>,
    PathParam(name): PathParam,
) -> Result<StatusCode, ApiError> {
    let name: SetName = class_name(&name)?;
    let runtime: crate::runtime::Runtime = (*state).clone();
    tokio::task::spawn_blocking(move || runtime.remove_set(&name))
        .await
        .unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()))?;
    Ok(StatusCode::NO_CONTENT)
}

/// What happens to a packet no class (and no scope entry) matches:
/// `limit`, metered by the default limit, or `pass`.
#[utoipa::path(get, path = "/v1/unmatched", tag = "classes", responses((status = 200, body = Unmatched)))]
async fn get_unmatched(State(state): State<AppState>) -> Json<Unmatched> {
    Json(state.control(|c| c.unmatched()))
}

#[utoipa::path(
    put, path = "/v1/unmatched", tag = "classes", request_body = Unmatched,
    responses(FleetErrors, (status = 200, body = Unmatched), (status = 400, body = ErrorBody))
)]
async fn put_unmatched(
    State(state): State<AppState>,
    Body(unmatched): Body<Unmatched>,
) -> Result<Json<Unmatched>, ApiError> {
    state
        .with_control(move |c| c.set_unmatched(unmatched).map(|()| Json(c.unmatched())))
        .await
        .map_err(Into::into)
}

/// The rules.
#[derive(Debug, Serialize, ToSchema)]
pub struct RulesView {
    pub rules: Vec<RuleView>,
}

#[utoipa::path(get, path = "/v1/rules", tag = "rules", responses((status = 200, body = RulesView)))]
async fn list_rules(State(state): State<AppState>) -> Json<RulesView> {
    Json(RulesView { rules: state.control(|c| c.rules()) })
}

/// The largest body `POST /v1/rules` reads: room for both families' rule
/// tries filled by one list.
pub const MAX_RULES_BODY: usize = 4 << 20;

/// The body of `POST /v1/rules`: one rule, or a list of them.
#[derive(Deserialize, ToSchema)]
#[serde(untagged)]
#[expect(dead_code, reason = "the document's form of the body; the handler reads it itself")]
enum RuleOrList {
    One(RuleSpec),
    List(Vec<RuleSpec>),
}

/// What `POST /v1/rules` answers: the rule made, or the rules of a list.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
#[expect(dead_code, reason = "the document's form of the answer")]
enum RuleOrRules {
    One(RuleView),
    List(RulesView),
}

/// A list of rules as `POST /v1/rules` reads it, so that an item is named
/// `rules[3].cidr`.
#[derive(Deserialize)]
struct RuleList {
    rules: Vec<RuleSpec>,
}

/// Adds a rule, its id and a `Location` coming back; or a list of rules
/// (a JSON array), checked whole (the first bad one named by its index,
/// `rules[3].cidr`, and none added) and added in one change, the rules
/// made coming back in the list's order.
#[utoipa::path(
    post, path = "/v1/rules", tag = "rules", request_body = RuleOrList,
    responses(
        FleetErrors,
        (status = 201, body = RuleOrRules), (status = 400, body = ErrorBody),
        (status = 409, body = ErrorBody, description = "`conflict`: a rule covers that prefix or set already")
    )
)]
async fn add_rule(
    State(state): State<AppState>,
    request: axum::extract::Request,
) -> Result<Response, ApiError> {
    let bytes = super::error::json_bytes(request, MAX_RULES_BODY).await?;
    match super::error::first_byte(&bytes) {
        Some(b'[') => {
            let value: serde_json::Value = serde_json::from_slice(&bytes)
                .map_err(|e| ApiError::bad_request("malformed_json", format!("the body is not JSON: {e}")))?;
            let RuleList { rules } = policy::parse(serde_json::json!({ "rules": value }), "")?;
            let views = state
                .with_control(move |c| {
                    let ids = c.add_rules(rules)?;
                    let mut by_id: std::collections::HashMap<u32, RuleView> =
                        c.rules().into_iter().map(|r| (r.id, r)).collect();
                    Ok::<_, ChangeError>(
                        ids.iter().map(|id| by_id.remove(id).expect("just added")).collect::<Vec<_>>(),
                    )
                })
                .await?;
            Ok((StatusCode::CREATED, Json(RulesView { rules: views })).into_response())
        }
        Some(b'{') => {
            let mut deserializer = serde_json::Deserializer::from_slice(&bytes);
            let rule: RuleSpec = policy::parse(&mut deserializer, RuleSpec::KEY)?;
            deserializer.end().map_err(|source| {
                ApiError::from(policy::ParseError::Format { path: String::new(), source })
            })?;
            let view = state
                .with_control(move |c| {
                    let id = c.add_rule(rule)?;
                    Ok::<_, ChangeError>(c.rules().into_iter().find(|r| r.id == id).expect("just added"))
                })
                .await?;
            let location = format!("/v1/rules/{}", view.id);
            Ok((StatusCode::CREATED, [(header::LOCATION, location)], Json(view)).into_response())
        }
        _ => Err(ApiError::bad_request(
            "invalid_body",
            "the body must be a rule (a JSON object) or a list of them",
        )),
    }
}

fn rule_id(text: &str) -> Result<u32, ApiError> {
    text.parse().map_err(|_| {
        ApiError::bad_request(
            "invalid_path",
            format!("rule id {text:?} is not a number: ids are listed by GET /v1/rules"),
        )
    })
}

/// Removes a rule.
#[utoipa::path(
    delete, path = "/v1/rules/{id}", tag = "rules", params(("id" = u32, Path, description = "The rule's id")),
    responses(FleetErrors, (status = 204), (status = 404, body = ErrorBody))
)]
async fn remove_rule(
    State(state): State<AppState>,
    PathParam(id): PathParam,
) -> Result<StatusCode, ApiError> {
    let id = rule_id(&id)?;
    state.with_control(move |c| c.remove_rule(id)).await.map_err(ApiError::from)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Which sources `GET /v1/sources` returns.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TopQuery {
    /// How many (1..=10000, default 10).
    #[param(minimum = 1, maximum = 10_000)]
    pub top: Option<usize>,
    /// `dropped` (default) or `passed`.
    #[param(inline)]
    pub by: Option<RankBy>,
}

/// Sources, heaviest first.
#[derive(Debug, Serialize, ToSchema)]
pub struct SourcesView {
    pub by: &'static str,
    pub sources: Vec<SourceView>,
}

/// The tracked sources with the most packets dropped (or passed).
#[utoipa::path(
    get, path = "/v1/sources", tag = "sources", params(TopQuery),
    responses((status = 200, body = SourcesView), (status = 400, body = ErrorBody))
)]
async fn top_sources(
    State(state): State<AppState>,
    Query(query): Query<TopQuery>,
) -> Result<Json<SourcesView>, ApiError> {
    let n = query.top.unwrap_or(DEFAULT_TOP);
    if !(1..=MAX_TOP).contains(&n) {
        let mut err = ApiError::bad_request(
            "invalid_query",
            format!("invalid `top` = {n}: must be between 1 and {MAX_TOP}"),
        );
        err.field = Some("top".into());
        return Err(err);
    }
    let by = query.by.unwrap_or_default();
    // The walk holds no lock: the API and the controller go on meanwhile.
    let walk = state.control(|c| c.bucket_walk());
    let ranked = tokio::task::spawn_blocking(move || top_buckets(&walk, n, by))
        .await
        .unwrap_or_else(|err| std::panic::resume_unwind(err.into_panic()));
    let sources = state.control(|c| c.views(&ranked));
    Ok(Json(SourcesView { by: by.name(), sources }))
}

fn source_addr(text: &str) -> Result<IpAddr, ApiError> {
    policy::parse_addr(text).map_err(|bad| {
        let message = match bad {
            policy::BadPrefix::LeadingZero { .. } => format!("{text:?} {bad}"),
            policy::BadPrefix::Malformed => format!(
                "{text:?} is not an IP address (a source is named by one address, like 192.0.2.7 or 2001:db8::7)"
            ),
        };
        let mut err = ApiError::bad_request("invalid_path", message);
        err.field = Some("addr".into());
        err
    })
}

/// The packet `GET /v1/explain` explains.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ExplainQuery {
    /// Its source address.
    #[param(
        pattern = "^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)$"
    )]
    pub source: String,
    /// `tcp` or `udp`; none: another protocol.
    pub proto: Option<Proto>,
    /// Its destination port.
    pub port: Option<u16>,
    /// A TCP SYN without ACK (default false).
    pub syn: Option<bool>,
}

/// What the data path would do with such a packet now: its class, its rule,
/// each limit and tier with its bucket's state, and the verdict.
#[utoipa::path(
    get, path = "/v1/explain", tag = "sources", params(ExplainQuery),
    responses((status = 200, body = ExplainView), (status = 400, body = ErrorBody))
)]
async fn explain_packet(
    State(state): State<AppState>,
    Query(query): Query<ExplainQuery>,
) -> Result<Json<ExplainView>, ApiError> {
    let source = source_addr(&query.source)?;
    let probe = Probe {
        source,
        proto: query.proto.map_or(0, Proto::number),
        port: query.port,
        syn: query.syn.unwrap_or(false),
        len: 64,
    };
    state.with_control(move |c| c.explain(&probe)).await.map(Json).map_err(Into::into)
}

/// The banned sources.
#[derive(Debug, Serialize, ToSchema)]
pub struct BansView {
    pub bans: Vec<BanView>,
}

/// The sources their class bans now, longest ban first.
#[utoipa::path(get, path = "/v1/bans", tag = "bans", responses((status = 200, body = BansView)))]
async fn list_bans(State(state): State<AppState>) -> Json<BansView> {
    // The walk holds no lock the rest of the API waits on.
    let bans = state.with_control(|c| c.bans()).await;
    Json(BansView { bans })
}

/// Lifts a source's bans: it starts afresh, with a full burst.
#[utoipa::path(
    delete, path = "/v1/bans/{addr}", tag = "bans", params(("addr" = String, Path, description = "An IPv4 or IPv6 address", pattern = "^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)$")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
async fn lift_ban(State(state): State<AppState>, PathParam(addr): PathParam) -> Result<StatusCode, ApiError> {
    let addr = source_addr(&addr)?;
    state.with_control(move |c| c.lift_ban(addr)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// One source's bucket.
#[utoipa::path(
    get, path = "/v1/sources/{addr}", tag = "sources", params(("addr" = String, Path, description = "An IPv4 or IPv6 address", pattern = "^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)$")),
    responses((status = 200, body = SourceView), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
async fn get_source(
    State(state): State<AppState>,
    PathParam(addr): PathParam,
) -> Result<Json<SourceView>, ApiError> {
    let addr = source_addr(&addr)?;
    state.with_control(move |c| c.source(addr)).await.map(Json).map_err(ApiError::from)
}

/// Forgets one source's bucket: it starts afresh, with a full burst.
#[utoipa::path(
    delete, path = "/v1/sources/{addr}", tag = "sources", params(("addr" = String, Path, description = "An IPv4 or IPv6 address", pattern = "^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*)$")),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody))
)]
async fn reset_source(
    State(state): State<AppState>,
    PathParam(addr): PathParam,
) -> Result<StatusCode, ApiError> {
    let addr = source_addr(&addr)?;
    state.with_control(move |c| c.reset_source(addr)).await.map_err(ApiError::from)?;
    Ok(StatusCode::NO_CONTENT)
}

/// The verdict counters since the program was first loaded.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct StatsView {
    /// Packets by verdict reason.
    pub counters: std::collections::BTreeMap<String, u64>,
    /// Every packet passed, whatever the reason.
    pub passed: u64,
    /// Every packet dropped (with dry-run on, none).
    pub dropped: u64,
    /// The same by interface; `other` for any interface without counters of
    /// its own.
    pub interfaces: std::collections::BTreeMap<String, InterfaceStats>,
    /// What each rule decided: the packets of an allow or deny rule (its
    /// set's, for a rule of a set), the passed and dropped of a limit
    /// rule's tracked sources.
    pub rules: Vec<RuleHits>,
    /// The passed and dropped of each class's tracked sources (`default`:
    /// `[limits]`), at the last sample.
    pub classes: Vec<ClassHits>,
}

/// What one rule decided.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct RuleHits {
    pub id: u32,
    /// Allow and deny rules: the packets they passed or dropped.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub packets: Option<u64>,
    /// Limit rules: their tracked sources' packets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub passed: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped: Option<u64>,
}

/// What one class's tracked sources sent.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ClassHits {
    pub name: String,
    pub passed: u64,
    pub dropped: u64,
}

/// One interface's verdict counters.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct InterfaceStats {
    /// `native` or `generic`; empty for `other`.
    pub mode: String,
    pub counters: std::collections::BTreeMap<String, u64>,
    pub passed: u64,
    pub dropped: u64,
}

#[utoipa::path(
    get, path = "/v1/stats", tag = "stats",
    responses((status = 200, body = StatsView), (status = 500, body = ErrorBody))
)]
async fn stats(State(state): State<AppState>) -> Result<Json<StatsView>, ApiError> {
    let kernel_error = |e: KernelError| {
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "kernel_error", format!("reading the counters: {e}"))
    };
    let (counters, by_interface, rules, class_ids) = state
        .with_control(|c| {
            let rules = c.rules();
            let decided: Vec<u32> =
                rules.iter().filter(|r| r.rule.action != Action::Limit).map(|r| r.id).collect();
            let counts = c.kernel().rule_counts(&decided)?;
            let class_ids: Vec<(String, u32)> = std::iter::once(("default".to_owned(), 0))
                .chain(
                    c.classes()
                        .iter()
                        .filter_map(|k| c.class_id(k.name.as_str()).map(|id| (k.name.to_string(), id))),
                )
                .collect();
            let owners = rules
                .iter()
                .map(|r| (r.id, r.rule.action, decided.iter().position(|&d| d == r.id).map(|i| counts[i])))
                .collect::<Vec<_>>();
            Ok::<_, KernelError>((
                c.kernel().counters()?,
                c.kernel().counters_by_interface()?,
                owners,
                class_ids,
            ))
        })
        .await
        .map_err(kernel_error)?;
    let sampled = state.owner_counts();
    let rules = rules
        .into_iter()
        .map(|(id, action, packets)| {
            let (passed, dropped) = sampled.get(&id).copied().unwrap_or_default();
            let limit = action == Action::Limit;
            RuleHits { id, packets, passed: limit.then_some(passed), dropped: limit.then_some(dropped) }
        })
        .collect();
    let classes = class_ids
        .into_iter()
        .map(|(name, id)| {
            let owner = if id == 0 { 0 } else { throttle_common::class_owner(id, 0) };
            let (passed, dropped) = sampled.get(&owner).copied().unwrap_or_default();
            ClassHits { name, passed, dropped }
        })
        .collect();
    let (counters, passed, dropped) = tally(&counters);
    let interfaces = by_interface
        .into_iter()
        .map(|(attachment, counters)| {
            let (name, mode) = counters_label(attachment.as_ref());
            let (counters, passed, dropped) = tally(&counters);
            (name, InterfaceStats { mode, counters, passed, dropped })
        })
        .collect();
    Ok(Json(StatsView { counters, passed, dropped, interfaces, rules, classes }))
}

/// The counters by name, and the packets passed and dropped among them. A
/// packet dry-run let through counts under its dropping reason and under
/// `dry_run_pass`: it is one passed.
fn tally(counters: &Counters) -> (std::collections::BTreeMap<String, u64>, u64, u64) {
    let (mut passed, mut dropped) = (0u64, 0u64);
    let mut named = std::collections::BTreeMap::new();
    for (slot, (&name, &count)) in reason::NAMES.iter().zip(counters).enumerate() {
        named.insert(name.to_owned(), count);
        if reason::drops(reason::ALL[slot]) {
            dropped += count;
        } else {
            passed += count;
        }
    }
    (named, passed, dropped.saturating_sub(counters[reason::DRY_RUN_PASS.index()]))
}

/// The configured and the effective (scaled) rate of a limit.
#[derive(Debug, Serialize, ToSchema)]
pub struct RateView {
    /// `default`, or the id of a limit rule.
    pub limit: String,
    pub configured: Rate,
    pub effective: Rate,
}

fn controller_view(state: &AppState) -> Result<serde_json::Value, ApiError> {
    let handle = state.controller().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "controller_unavailable",
            "the controller is not running yet",
        )
    })?;
    let status = handle.status();
    let rates: Vec<RateView> = state.control(|c| {
        c.effective_rates()
            .into_iter()
            .map(|(id, configured, effective)| RateView {
                limit: if id == 0 { "default".to_owned() } else { id.to_string() },
                configured,
                effective,
            })
            .collect()
    });
    let mut value = serde_json::to_value(status).expect("the status serialises");
    value["rates"] = serde_json::to_value(rates).expect("rates serialise");
    Ok(value)
}

/// The adaptive controller: algorithm, parameters, scale, latency, the last
/// decisions, and the configured and effective rates.
#[utoipa::path(
    get, path = "/v1/controller", tag = "controller",
    responses(NoController, (status = 200, body = serde_json::Value))
)]
async fn get_controller(State(state): State<AppState>) -> Result<Json<serde_json::Value>, ApiError> {
    controller_view(&state).map(Json)
}

/// Changes the controller's parameters (every field optional), or turns it
/// off with `{"enabled": false}`; saved in the state directory.
#[utoipa::path(
    put, path = "/v1/controller", tag = "controller", request_body = serde_json::Value,
    responses(FleetErrors, NoController, (status = 200, body = serde_json::Value), (status = 400, body = ErrorBody))
)]
async fn put_controller(
    State(state): State<AppState>,
    Body(update): Body<ParamsUpdate>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let handle = state.controller().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "controller_unavailable",
            "the controller is not running yet",
        )
    })?;
    let next = update.apply_to(&handle.config())?;
    state.with_control(move |c| c.save_controller(next)).await?;
    handle.update(&update)?;
    controller_view(&state).map(Json)
}

/// Latency samples pushed by the protected service.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LatencySamples {
    /// Milliseconds, each finite and between 0 and 3 600 000; at most 10 000.
    pub samples_ms: Vec<f64>,
}

/// How many samples were taken.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    pub accepted: usize,
}

#[utoipa::path(
    post, path = "/v1/latency", tag = "controller", request_body = LatencySamples,
    responses(NoController, (status = 202, body = Accepted), (status = 400, body = ErrorBody))
)]
async fn push_latency(
    State(state): State<AppState>,
    Body(body): Body<LatencySamples>,
) -> Result<(StatusCode, Json<Accepted>), ApiError> {
    let handle = state.controller().ok_or_else(|| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "controller_unavailable",
            "the controller is not running yet",
        )
    })?;
    let accepted = handle.push_samples(&body.samples_ms)?;
    Ok((StatusCode::ACCEPTED, Json(Accepted { accepted })))
}

/// Keeps `Action` in the document's schemas (rules refer to it).
#[allow(dead_code)]
fn _schemas(_: Action) {}
