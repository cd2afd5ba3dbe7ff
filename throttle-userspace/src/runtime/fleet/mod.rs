//! Fleet mode (`[cluster]`): the daemons of a fleet share one policy and
//! one limit per source through Redis, while every packet is still judged
//! here, in XDP, without waiting for the network.
//!
//! Three tasks run beside the daemon's others:
//! - the policy watcher: at every change published on the fleet's channel,
//!   and every [`POLICY_CHECK_EVERY`] in case a message was missed, reads the
//!   fleet's policy version and puts a newer document in force
//!   ([`crate::control::Control::apply_fleet`]), or refuses it and keeps the
//!   running policy;
//! - the subscription to that channel, subscribed again with backoff;
//! - the sync: every `sync_ms` the node's heartbeat and its heavy sources'
//!   traffic in one round trip ([`link::Link::sync`]), the fleet's in
//!   return, and from them each heavy source's share of its limit
//!   ([`share`]). A sync that misses its deadline (one period) is skipped;
//!   with Redis unreachable the last shares stay for `hold_ms`, then every
//!   source gets the limit divided by the last known node count.
//!
//! API changes go to the fleet through [`RedisPublisher`], a compare-and-set
//! on the document's version, before they are made here.
//!
//! The shares are shown (`GET /v1/cluster`) and written to the buckets
//! after every sync (`Kernel::set_shares`, [`SharesView::enforced`] says
//! whether the last write held): each share in 1/65536 of the bucket's
//! limit; a bucket named meters against `rate * share / 65536` and `burst *
//! share / 65536` (at least one); a bucket not named (or no longer named)
//! against the default share (the whole limit while synced or holding,
//! `1 / nodes` of it in fallback). The write keeps every bucket's state,
//! and a packet of a bucket without a share of its own pays one load of
//! the cache line it reads anyway (the share is in the bucket's slot, the
//! default in `CONFIG`).

mod link;
pub mod share;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};
use throttle_common::{Bucket, BucketKey};
use tokio::sync::Notify;

pub use self::link::{Link, LinkError, SyncReply};
use self::share::{Traffic, FULL_SHARE};
use super::{lock, EventView, Runtime};
use crate::{
    control::{Applied, ChangeError, FleetDoc, PublishError, Publisher},
    controller::AdaptiveConfig,
};

/// The fleet's name unless `cluster.name` gives one.
pub const DEFAULT_NAME: &str = "throttle";
/// Between two syncs, unless `cluster.sync_ms` says otherwise.
pub const DEFAULT_SYNC_MS: u64 = 250;
pub const MIN_SYNC_MS: u64 = 50;
pub const MAX_SYNC_MS: u64 = 5_000;
/// How long the last shares stay when Redis is unreachable, by default.
pub const DEFAULT_HOLD_MS: u64 = 10_000;
pub const MAX_HOLD_MS: u64 = 3_600_000;
/// K: most sources a node reports at each sync, the heaviest first.
pub const HEAVY_SOURCES: usize = 512;
/// Sources of low-rate limits a node reports its debt of at most, in one
/// sync.
pub const LOW_RATE_SOURCES: usize = 512;

/// A limit under one a second (written per minute, hour or day): a share
/// of it would be a fraction of a packet a period, so the fleet merges its
/// GCRA debt instead.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LowRate {
    /// Microseconds between two packets at its rate.
    pub interval_us: f64,
    /// Its burst times that: how far ahead of now its TAT may run.
    pub tolerance_us: f64,
}

/// What a node reports of a source of a low-rate limit: the debt it ran up
/// on this node since the last sync (packets admitted times the interval)
/// and the limit's tolerance, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Debt {
    pub key: BucketKey,
    pub spent_us: f64,
    pub tolerance_us: f64,
}
/// A node not seen for this many sync periods has left.
pub const PERIODS_TO_LEAVE: u32 = 3;
/// Between two reads of the fleet's policy version (besides the messages).
pub const POLICY_CHECK_EVERY: Duration = Duration::from_millis(500);
/// Between two looks at whether the policy writer's connection is up.
const RETRY_CONNECTED: Duration = Duration::from_millis(50);
/// How long a read or a write of the policy may take.
pub const POLICY_DEADLINE: Duration = Duration::from_secs(1);

/// Fleet mode's settings, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FleetConfig {
    /// One URL (a single server), or the seeds of a Redis Cluster.
    pub seeds: Vec<String>,
    pub password_file: Option<PathBuf>,
    pub node: String,
    pub name: String,
    pub sync: Duration,
    pub hold: Duration,
}

/// Checks a Redis URL: `redis://`, `rediss://` (TLS) or `redis+unix://`
/// (a socket on this host), without a password (which would show in the
/// process list and the logs).
pub fn check_url(url: &str) -> Result<(), String> {
    if !["redis://", "rediss://", "redis+unix://"].iter().any(|scheme| url.starts_with(scheme)) {
        return Err(
            "not a Redis URL: redis://HOST:PORT/DB, rediss:// for TLS, redis+unix:///PATH for a socket"
                .to_owned(),
        );
    }
    let info =
        redis::IntoConnectionInfo::into_connection_info(url).map_err(|e| format!("not a Redis URL: {e}"))?;
    if info.redis_settings().password().is_some() {
        return Err(
            "holds a password: put it in `cluster.password_file` (the user may stay in the URL)".to_owned()
        );
    }
    Ok(())
}

/// `url` with the password of its user part, if any, shown as `***`: how
/// a URL appears in errors and logs.
#[must_use]
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let Some((user, host)) = rest.rsplit_once('@') else {
        return url.to_owned();
    };
    match user.split_once(':') {
        Some((name, _)) => format!("{scheme}://{name}:***@{host}"),
        None => url.to_owned(),
    }
}

/// Checks a node's or a fleet's name: 1 to 64 of `A-Z a-z 0-9 . _ -`.
pub fn check_name(name: &str) -> Result<(), String> {
    if (1..=64).contains(&name.len())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        Ok(())
    } else {
        Err("1 to 64 letters, digits, `.`, `_` or `-`".to_owned())
    }
}

/// The host's name, this node's unless `cluster.node` names it.
pub fn host_name() -> std::io::Result<String> {
    Ok(std::fs::read_to_string("/proc/sys/kernel/hostname")?.trim().to_owned())
}

/// Why fleet mode could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot read `cluster.password_file` {}: {source}", path.display())]
    Password { path: PathBuf, source: std::io::Error },
    #[error("`cluster.password_file` {} is empty", path.display())]
    EmptyPassword { path: PathBuf },
    #[error("`cluster.redis`: {0}")]
    Client(#[from] redis::RedisError),
    #[error("starting the fleet's writer: {0}")]
    Thread(#[from] std::io::Error),
}

/// What a node writes at each heartbeat.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct NodeInfo {
    policy_version: u64,
    state: String,
    sources: u64,
    sync_ms: u64,
}

/// A node of the fleet, as `GET /v1/cluster` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct NodeView {
    pub node: String,
    /// How long ago it last synced, in milliseconds (Redis's clock).
    pub last_sync_ms_ago: u64,
    /// The version of the fleet's policy it runs.
    pub policy_version: u64,
    /// `synced`, `holding`, `fallback` (as it said at its last sync).
    pub state: String,
    /// Sources it tracks.
    pub sources: u64,
}

/// A heavy source's share of its limit on this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ShareView {
    /// The address or its aggregation prefix.
    pub source: String,
    /// The limit rule, or the class, whose limit it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub class: Option<String>,
    /// This node's share of the limit (0..=1).
    pub share: f64,
    /// The same in 1/65536 of the limit, as the data path takes it.
    pub share_q16: u32,
    /// This node's traffic of the source, per second, offered and admitted.
    pub offered: f64,
    pub admitted: f64,
    /// The fleet's (this node's included).
    pub fleet_offered: f64,
    pub fleet_admitted: f64,
    /// Nodes that reported it.
    pub nodes: usize,
}

/// The shares in force, as `GET /v1/cluster` shows them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SharesView {
    /// The share of every source not listed, in 1/65536 of its limit: the
    /// whole limit, or in fallback the limit divided by the last node count.
    pub default_q16: u32,
    pub sources: Vec<ShareView>,
    /// Whether the data path holds them: the last write of them to the
    /// buckets succeeded.
    pub enforced: bool,
    /// Sources of limits under one a second (per minute, hour or day),
    /// which the fleet meters by one merged debt rather than by shares,
    /// whose bucket here took the fleet's debt at the last sync.
    pub debts: usize,
}

/// The fleet as this node sees it: `GET /v1/cluster`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ClusterView {
    pub node: String,
    pub name: String,
    /// `connecting`, `synced`, `holding` or `fallback`.
    pub state: String,
    /// The version of the fleet's policy this node runs (0: none yet).
    pub policy_version: u64,
    /// The latest version the fleet holds, as last read.
    pub fleet_policy_version: u64,
    /// A version this node refused (it did not validate here), if the
    /// fleet still holds it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused_version: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused_reason: Option<String>,
    pub sync_ms: u64,
    pub hold_ms: u64,
    /// Since the last sync that succeeded, in seconds (none: never).
    pub sync_age_seconds: Option<f64>,
    /// The round trip of the last sync, in milliseconds.
    pub rtt_ms: Option<f64>,
    pub syncs: u64,
    pub sync_errors: u64,
    /// Syncs that missed their deadline.
    pub syncs_skipped: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// The live nodes at the last sync (this one included).
    pub nodes: Vec<NodeView>,
    /// The node count the fallback divides by.
    pub last_node_count: usize,
    pub shares: SharesView,
}

/// What the tasks found, shown by the API and the metrics.
#[derive(Debug)]
struct Status {
    joined: Instant,
    last_ok: Option<Instant>,
    last_failed: bool,
    last_error: Option<String>,
    link: share::Link,
    syncs: u64,
    errors: u64,
    skipped: u64,
    rtt: Option<Duration>,
    nodes: Vec<NodeView>,
    last_node_count: usize,
    fleet_policy_version: u64,
    refused: u64,
    refused_version: Option<u64>,
    refused_reason: Option<String>,
    default_share: u32,
    shares: Vec<(BucketKey, u32, Traffic, Traffic, usize)>,
    /// Whether the data path holds the shares above (the last write of them
    /// succeeded).
    enforced: bool,
    /// Sources of low-rate limits whose bucket took the fleet's debt at the
    /// last sync.
    debts: usize,
}

/// Fleet mode's shared state.
pub struct Fleet {
    config: FleetConfig,
    /// This node's own controller configuration (`[adaptive]`), which the
    /// fleet's parameters go over until the controller runs.
    own_controller: Option<AdaptiveConfig>,
    link: Arc<Link>,
    status: Mutex<Status>,
    /// A policy change was published, or a sync saw a newer version.
    changed: Notify,
}

impl Fleet {
    #[must_use]
    pub fn config(&self) -> &FleetConfig {
        &self.config
    }

    /// The link's state now.
    #[must_use]
    pub fn state(&self) -> share::Link {
        lock(&self.status).link
    }

    /// Counters and gauges for `/metrics`.
    #[must_use]
    pub fn metrics(&self) -> FleetMetrics {
        let s = lock(&self.status);
        FleetMetrics {
            nodes: s.nodes.len(),
            sync_age: s.last_ok.unwrap_or(s.joined).elapsed(),
            rtt: s.rtt,
            syncs: s.syncs,
            errors: s.errors,
            skipped: s.skipped,
            refused: s.refused,
            fleet_policy_version: s.fleet_policy_version,
            link: s.link,
            heavy: s.shares.len(),
        }
    }
}

/// Fleet mode's figures for `/metrics`.
#[derive(Debug, Clone, Copy)]
pub struct FleetMetrics {
    pub nodes: usize,
    /// Since the last sync that succeeded, or since the node joined.
    pub sync_age: Duration,
    pub rtt: Option<Duration>,
    pub syncs: u64,
    pub errors: u64,
    pub skipped: u64,
    pub refused: u64,
    pub fleet_policy_version: u64,
    pub link: share::Link,
    pub heavy: usize,
}

/// A compare-and-set for the publisher's thread: the document, the
/// version expected, when the caller stops waiting, and where the answer goes.
type Job = (String, u64, Instant, std::sync::mpsc::SyncSender<Result<Result<u64, u64>, LinkError>>);

/// API changes, written to the fleet before they are made here.
///
/// The write runs on a thread of its own, with its own connection and
/// runtime: the caller holds the control plane, which the daemon's async
/// tasks also take, so the write must not need them to make progress.
struct RedisPublisher {
    fleet: Arc<Fleet>,
    jobs: tokio::sync::mpsc::UnboundedSender<Job>,
}

impl RedisPublisher {
    fn start(fleet: Arc<Fleet>, password: Option<String>) -> std::io::Result<Self> {
        let (jobs, mut queue) = tokio::sync::mpsc::unbounded_channel::<Job>();
        let config = fleet.config.clone();
        let link = Link::new(&config, password.as_deref()).map_err(std::io::Error::other)?;
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new().name("fleet-publish".into()).spawn(move || {
            runtime.block_on(async move {
                tokio::spawn({
                    let (link, config) = (Arc::clone(&link), config.clone());
                    async move { link.connect(&config, password.as_deref()).await }
                });
                while let Some((doc, expected, deadline, answer)) = queue.recv().await {
                    // A caller that gave up is not written for: its change
                    // was refused.
                    let result = loop {
                        let left = deadline.saturating_duration_since(Instant::now());
                        if left.is_zero() {
                            break Err(LinkError::Timeout(POLICY_DEADLINE));
                        }
                        match link.compare_and_set(&doc, expected, &config.node, left).await {
                            // Connecting still (a Redis Cluster): wait for it.
                            Err(LinkError::NotConnected) => {
                                tokio::time::sleep(left.min(RETRY_CONNECTED)).await;
                            }
                            result => break result,
                        }
                    };
                    let _ = answer.send(result);
                }
            });
        })?;
        Ok(Self { fleet, jobs })
    }
}

impl Publisher for RedisPublisher {
    fn publish(&self, doc: &FleetDoc, expected: u64) -> Result<u64, PublishError> {
        let text = serde_json::to_string(doc).expect("a document serialises");
        let (answer, result) = std::sync::mpsc::sync_channel(1);
        let deadline = Instant::now() + POLICY_DEADLINE;
        self.jobs
            .send((text, expected, deadline, answer))
            .map_err(|_| PublishError::Unavailable("the fleet's writer stopped".into()))?;
        // The writer answers by the deadline (its call has it too).
        match result.recv_timeout(POLICY_DEADLINE + Duration::from_millis(200)) {
            Ok(Ok(Ok(version))) => {
                tracing::info!(version, "fleet policy version {version} written");
                let mut s = lock(&self.fleet.status);
                s.fleet_policy_version = s.fleet_policy_version.max(version);
                Ok(version)
            }
            Ok(Ok(Err(current))) => Err(PublishError::Conflict { current }),
            Ok(Err(err)) => Err(PublishError::Unavailable(err.to_string())),
            Err(_) => {
                Err(PublishError::Unavailable(format!("Redis did not answer within {POLICY_DEADLINE:?}")))
            }
        }
    }
}

fn read_password(path: &std::path::Path) -> Result<String, StartError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| StartError::Password { path: path.to_owned(), source })?;
    let password = text.lines().next().unwrap_or_default().trim().to_owned();
    if password.is_empty() {
        return Err(StartError::EmptyPassword { path: path.to_owned() });
    }
    Ok(password)
}

impl Runtime {
    /// Fleet mode's state, when the daemon runs in a fleet.
    #[must_use]
    pub fn fleet(&self) -> Option<Arc<Fleet>> {
        self.0.fleet.get().cloned()
    }

    /// Joins the fleet of `config`: takes the fleet's policy if Redis
    /// answers within a few seconds (else the node starts on its own and
    /// takes it once Redis answers), routes API changes through the fleet,
    /// and starts the fleet's tasks.
    ///
    /// `own_controller` is this node's `[adaptive]`, which the fleet's
    /// controller parameters go over (its latency source stays its own).
    pub async fn join_fleet(
        &self,
        config: FleetConfig,
        own_controller: Option<AdaptiveConfig>,
    ) -> Result<Arc<Fleet>, StartError> {
        let password = config.password_file.as_deref().map(read_password).transpose()?;
        let link = Link::new(&config, password.as_deref())?;
        let fleet = Arc::new(Fleet {
            link: Arc::clone(&link),
            status: Mutex::new(Status {
                joined: Instant::now(),
                last_ok: None,
                last_failed: false,
                last_error: None,
                link: share::Link::Connecting,
                syncs: 0,
                errors: 0,
                skipped: 0,
                rtt: None,
                nodes: Vec::new(),
                last_node_count: 1,
                fleet_policy_version: 0,
                refused: 0,
                refused_version: None,
                refused_reason: None,
                default_share: FULL_SHARE,
                shares: Vec::new(),
                enforced: false,
                debts: 0,
            }),
            changed: Notify::new(),
            config,
            own_controller,
        });
        let _ = self.0.fleet.set(Arc::clone(&fleet));
        let publisher = RedisPublisher::start(Arc::clone(&fleet), password.clone())?;
        let connect = {
            let (link, config) = (Arc::clone(&link), fleet.config.clone());
            tokio::spawn(async move { link.connect(&config, password.as_deref()).await })
        };
        // The fleet's policy before anything is attached, if Redis answers.
        let _ = tokio::time::timeout(Duration::from_secs(2), connect).await;
        self.control(|c| c.join_fleet(Box::new(publisher), 0));
        if let Err(err) = self.check_policy(&fleet).await {
            tracing::warn!(
                "the fleet's policy could not be read, starting on this node's own until it can: {err}"
            );
        }
        tokio::spawn(watch_policy(self.clone(), Arc::clone(&fleet)));
        tokio::spawn(subscribe(Arc::clone(&fleet)));
        tokio::spawn(sync_forever(self.clone(), Arc::clone(&fleet)));
        tracing::info!(
            node = %fleet.config.node,
            name = %fleet.config.name,
            sync_ms = fleet.config.sync.as_millis(),
            "fleet mode"
        );
        Ok(fleet)
    }

    /// Puts the fleet's policy in force if it is newer than the running
    /// one; a document that does not validate is refused, once per version.
    async fn check_policy(&self, fleet: &Fleet) -> Result<(), LinkError> {
        let version = fleet.link.policy_version(POLICY_DEADLINE).await?;
        // The control plane before the status, never inside it: a change
        // being written holds the control plane and then takes the status.
        let running = self.control(|c| c.fleet_version());
        let refused = {
            let mut s = lock(&fleet.status);
            s.fleet_policy_version = s.fleet_policy_version.max(version);
            s.refused_version
        };
        if version == 0 && running > 0 {
            // The fleet lost its document (a Redis restarted without its
            // data): the policy the nodes run is written back.
            let doc = serde_json::to_string(&self.control(|c| c.fleet_doc())).expect("a document serialises");
            if fleet.link.restore(&doc, running, &fleet.config.node, POLICY_DEADLINE).await? {
                tracing::warn!(
                    version = running,
                    "the fleet held no policy: wrote back version {running}, the one in force here"
                );
                lock(&fleet.status).fleet_policy_version = running;
            }
            return Ok(());
        }
        if version == running || refused == Some(version) || version == 0 {
            return Ok(());
        }
        let (version, text) = fleet.link.policy(POLICY_DEADLINE).await?;
        let Some(text) = text else {
            return Err(LinkError::Garbled(format!("policy version {version} without a document")));
        };
        let doc = match FleetDoc::parse(&text) {
            Ok(doc) => doc,
            Err(invalid) => {
                self.refuse(fleet, version, &ChangeError::Invalid(invalid));
                return Ok(());
            }
        };
        let handle = self.controller();
        let base = match &handle {
            Some(handle) => handle.config(),
            None => self
                .control(|c| c.saved_controller().cloned())
                .or_else(|| fleet.own_controller.clone())
                .unwrap_or_else(|| AdaptiveConfig { enabled: false, ..AdaptiveConfig::default() }),
        };
        let params = doc.controller.clone();
        match self.with_control(move |c| c.apply_fleet(&doc, version, &base)).await {
            Ok(Applied::Changed) => {
                if let (Some(handle), Some(params)) = (handle, params) {
                    // Validated over the same configuration just now.
                    if let Err(err) = handle.update(&params) {
                        tracing::error!(version, "the controller refused the fleet's parameters: {err}");
                    }
                }
                tracing::info!(version, "fleet policy version {version} in force");
                self.event(
                    EventView::new("fleet").by("fleet").detail(format!("policy version {version} in force")),
                );
                let mut s = lock(&fleet.status);
                s.refused_version = None;
                s.refused_reason = None;
            }
            Ok(Applied::Current) => {}
            Err(err @ ChangeError::Invalid(_)) => self.refuse(fleet, version, &err),
            Err(err) => {
                // The kernel or the state file: tried again at the next check.
                tracing::error!(version, "fleet policy version {version} could not be put in force: {err}");
            }
        }
        Ok(())
    }

    /// Reports a document refused; the running policy stays.
    fn refuse(&self, fleet: &Fleet, version: u64, err: &ChangeError) {
        tracing::error!(version, "fleet policy version {version} refused, the running policy stays: {err}");
        self.event(
            EventView::new("fleet").by("fleet").detail(format!("policy version {version} refused: {err}")),
        );
        self.control(|c| c.refuse_fleet(version));
        let mut s = lock(&fleet.status);
        s.refused += 1;
        s.refused_version = Some(version);
        s.refused_reason = Some(err.to_string());
    }

    /// `GET /v1/cluster`.
    #[must_use]
    pub fn cluster_view(&self) -> Option<ClusterView> {
        let fleet = self.fleet()?;
        let policy_version = self.control(|c| c.fleet_version());
        let shares = lock(&fleet.status).shares.clone();
        let keys: Vec<(BucketKey, Bucket)> = shares.iter().map(|(k, ..)| (*k, Bucket::default())).collect();
        let views = self.control(|c| c.views(&keys));
        let s = lock(&fleet.status);
        let sources = shares
            .iter()
            .zip(views)
            .map(|((_, q16, local, fleet_traffic, nodes), view)| ShareView {
                source: view.source,
                rule: view.rule.filter(|_| view.class.is_none()),
                class: view.class,
                share: f64::from(*q16) / f64::from(FULL_SHARE),
                share_q16: *q16,
                offered: local.offered,
                admitted: local.admitted,
                fleet_offered: fleet_traffic.offered,
                fleet_admitted: fleet_traffic.admitted,
                nodes: *nodes,
            })
            .collect();
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Some(ClusterView {
            node: fleet.config.node.clone(),
            name: fleet.config.name.clone(),
            state: s.link.name().to_owned(),
            policy_version,
            fleet_policy_version: s.fleet_policy_version,
            refused_version: s.refused_version,
            refused_reason: s.refused_reason.clone(),
            sync_ms: ms(fleet.config.sync),
            hold_ms: ms(fleet.config.hold),
            sync_age_seconds: s.last_ok.map(|at| at.elapsed().as_secs_f64()),
            rtt_ms: s.rtt.map(|d| d.as_secs_f64() * 1e3),
            syncs: s.syncs,
            sync_errors: s.errors,
            syncs_skipped: s.skipped,
            last_error: s.last_error.clone(),
            nodes: s.nodes.clone(),
            last_node_count: s.last_node_count,
            shares: SharesView {
                default_q16: s.default_share,
                sources,
                enforced: s.enforced,
                debts: s.debts,
            },
        })
    }

    /// Leaves the fleet: the other nodes take this node's shares back at
    /// their next sync instead of after [`PERIODS_TO_LEAVE`] periods.
    pub async fn leave_fleet(&self) {
        if let Some(fleet) = self.fleet() {
            if let Err(err) = fleet.link.leave(&fleet.config.node, POLICY_DEADLINE).await {
                tracing::warn!("could not leave the fleet: {err}");
            }
        }
    }
}

/// Reads the fleet's policy version at each message and every
/// [`POLICY_CHECK_EVERY`].
async fn watch_policy(runtime: Runtime, fleet: Arc<Fleet>) {
    loop {
        tokio::select! {
            () = fleet.changed.notified() => {}
            () = tokio::time::sleep(POLICY_CHECK_EVERY) => {}
        }
        if let Err(err) = runtime.check_policy(&fleet).await {
            // The sync reports Redis's troubles; this only waits for it.
            tracing::debug!("reading the fleet's policy: {err}");
        }
    }
}

/// Keeps a subscription to the fleet's policy changes, with backoff.
async fn subscribe(fleet: Arc<Fleet>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let started = Instant::now();
        if let Err(err) = fleet.link.subscribe(&fleet.changed).await {
            tracing::debug!("the subscription to the fleet's policy changes: {err}");
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

/// The traffic of every source over the last period, per second.
fn traffic(
    now: &HashMap<BucketKey, (u64, u64)>,
    before: &HashMap<BucketKey, (u64, u64)>,
    secs: f64,
) -> HashMap<BucketKey, Traffic> {
    now.iter()
        .filter_map(|(key, &(passed, dropped))| {
            let (p0, d0) = before.get(key).copied().unwrap_or_default();
            let admitted = passed.saturating_sub(p0);
            let offered = admitted + dropped.saturating_sub(d0);
            #[expect(clippy::cast_precision_loss, reason = "packet counts over one period")]
            (offered > 0)
                .then(|| (*key, Traffic { offered: offered as f64 / secs, admitted: admitted as f64 / secs }))
        })
        .collect()
}

/// How much of the last period a source's smoothed traffic takes: an
/// exponential average over about three periods, so that one period's
/// scheduling jitter does not swing the shares.
const SMOOTHING: f64 = 0.5;
/// Smoothed traffic below this (per second) is forgotten.
const FORGET_BELOW: f64 = 0.5;

/// `current` averaged into `previous`: a source that sent nothing in the
/// last period decays towards zero, then is forgotten.
fn smooth(
    previous: &HashMap<BucketKey, Traffic>,
    current: &HashMap<BucketKey, Traffic>,
) -> HashMap<BucketKey, Traffic> {
    let mix = |old: Traffic, new: Traffic| Traffic {
        offered: old.offered + SMOOTHING * (new.offered - old.offered),
        admitted: old.admitted + SMOOTHING * (new.admitted - old.admitted),
    };
    let mut out: HashMap<BucketKey, Traffic> = current
        .iter()
        .map(|(key, &new)| (*key, previous.get(key).map_or(new, |&old| mix(old, new))))
        .collect();
    for (key, &old) in previous {
        if !current.contains_key(key) {
            let decayed = mix(old, Traffic::default());
            if decayed.offered >= FORGET_BELOW {
                out.insert(*key, decayed);
            }
        }
    }
    out
}

/// The sources a node reports: those heavy here (an even share of their
/// limit or more), and those it holds a share of that still send, at most
/// [`HEAVY_SOURCES`] of them, most admitted first.
#[must_use]
fn heavy_sources(
    traffic: &HashMap<BucketKey, Traffic>,
    rates: &HashMap<u32, f64>,
    held: &[BucketKey],
    nodes: usize,
    k: usize,
) -> Vec<(BucketKey, Traffic)> {
    let mut heavy: Vec<(BucketKey, Traffic)> = traffic
        .iter()
        .filter(|(key, t)| {
            rates.get(&key.rule).is_some_and(|&rate| share::heavy(t.offered, rate, nodes))
                || held.contains(key)
        })
        .map(|(k, t)| (*k, *t))
        .collect();
    heavy.sort_by(|a, b| b.1.admitted.total_cmp(&a.1.admitted).then(a.0.addr.cmp(&b.0.addr)));
    heavy.truncate(k);
    heavy
}

/// What this node reports of the sources of `low` (the low-rate limits)
/// that sent here during the last period: the debt each ran up, most sent
/// first, at most `k`.
fn debts(
    now: &HashMap<BucketKey, (u64, u64)>,
    before: &HashMap<BucketKey, (u64, u64)>,
    low: &HashMap<u32, LowRate>,
    k: usize,
) -> Vec<Debt> {
    let mut sent: Vec<(u64, Debt)> = now
        .iter()
        .filter_map(|(key, &(passed, dropped))| {
            let limit = low.get(&key.rule)?;
            let (p0, d0) = before.get(key).copied().unwrap_or_default();
            let admitted = passed.saturating_sub(p0);
            let offered = admitted + dropped.saturating_sub(d0);
            #[expect(clippy::cast_precision_loss, reason = "packet counts over one period")]
            let spent_us = admitted as f64 * limit.interval_us;
            (offered > 0).then_some((offered, Debt { key: *key, spent_us, tolerance_us: limit.tolerance_us }))
        })
        .collect();
    sent.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.key.addr.cmp(&b.1.key.addr)));
    sent.into_iter().take(k).map(|(_, debt)| debt).collect()
}

/// Syncs every `sync_ms`, skipping the periods a slow sync overran.
async fn sync_forever(runtime: Runtime, fleet: Arc<Fleet>) {
    let period = fleet.config.sync;
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut before: HashMap<BucketKey, (u64, u64)> = HashMap::new();
    let mut walked: Option<Instant> = None;
    let mut smoothed: HashMap<BucketKey, Traffic> = HashMap::new();
    loop {
        ticker.tick().await;
        let walk = runtime.control(|c| c.bucket_walk());
        let Ok(counts) = tokio::task::spawn_blocking(move || {
            let mut counts = HashMap::new();
            walk(&mut |key, bucket| {
                counts.insert(*key, (bucket.passed, bucket.dropped));
            });
            counts
        })
        .await
        else {
            return;
        };
        let now = Instant::now();
        let walked_before = walked.is_some();
        let secs = walked.map_or(period.as_secs_f64(), |at| now.duration_since(at).as_secs_f64()).max(1e-3);
        if walked.is_some() {
            smoothed = smooth(&smoothed, &traffic(&counts, &before, secs));
        }
        walked = Some(now);
        let sources = counts.len() as u64;
        let low = runtime.control(|c| c.low_rate_limits());
        let debts = if walked_before { debts(&counts, &before, &low, LOW_RATE_SOURCES) } else { Vec::new() };
        before = counts;
        runtime.sync_once(&fleet, &smoothed, &debts, sources).await;
        runtime.enforce_shares(&fleet);
    }
}

impl Runtime {
    /// Puts the shares the last sync left (or the fallback's default) in
    /// the buckets, where the data path meters against them.
    fn enforce_shares(&self, fleet: &Fleet) {
        let (default_share, shares): (u32, Vec<(BucketKey, u32)>) = {
            let s = lock(&fleet.status);
            (s.default_share, s.shares.iter().map(|(key, share, ..)| (*key, *share)).collect())
        };
        let written = self.control(|c| c.set_shares(default_share, &shares));
        let mut s = lock(&fleet.status);
        match written {
            Ok(_) => s.enforced = true,
            Err(err) => {
                if s.enforced {
                    tracing::warn!("fleet: the shares could not be written to the buckets: {err}");
                }
                s.enforced = false;
            }
        }
    }

    /// Each source of `debts` takes the fleet's debt of it (`debts_us`, how
    /// far ahead of now the fleet's TAT is): its bucket's TAT is raised to
    /// that on this node's clock, never lowered. How many are tracked.
    fn merge_debts(&self, debts: &[Debt], debts_us: &[u64]) -> usize {
        let now = self.control(|c| c.kernel().now_ticks());
        let tats: Vec<(BucketKey, u64)> = debts
            .iter()
            .zip(debts_us)
            .filter(|(_, &ahead)| ahead > 0)
            .map(|(debt, &ahead)| (debt.key, now.saturating_add(ticks_of_us(ahead))))
            .collect();
        self.control(|c| c.raise_tats(&tats))
    }

    /// One sync with the traffic of the last period.
    async fn sync_once(
        &self,
        fleet: &Fleet,
        traffic: &HashMap<BucketKey, Traffic>,
        debts: &[Debt],
        sources: u64,
    ) {
        let config = &fleet.config;
        let (mut rates, low, running) =
            self.control(|c| (c.limit_rates(), c.low_rate_limits(), c.fleet_version()));
        // The low-rate limits go by their merged debt, not by shares.
        rates.retain(|rule, _| !low.contains_key(rule));
        let (nodes, held, link_state) = {
            let s = lock(&fleet.status);
            (s.last_node_count, s.shares.iter().map(|(k, ..)| *k).collect::<Vec<_>>(), s.link)
        };
        let reports = heavy_sources(traffic, &rates, &held, nodes, HEAVY_SOURCES);
        let info = serde_json::to_string(&NodeInfo {
            policy_version: running,
            state: link_state.name().to_owned(),
            sources,
            sync_ms: u64::try_from(config.sync.as_millis()).unwrap_or(u64::MAX),
        })
        .expect("the node's info serialises");
        let ttl = config.sync * PERIODS_TO_LEAVE;
        let started = Instant::now();
        let result = fleet.link.sync(&config.node, &info, ttl, &reports, debts, config.sync).await;
        let rtt = started.elapsed();
        let merged = result.as_ref().map_or(0, |reply| self.merge_debts(debts, &reply.debts_us));
        let mut s = lock(&fleet.status);
        match result {
            Ok(reply) => {
                s.syncs += 1;
                s.rtt = Some(rtt);
                s.last_ok = Some(Instant::now());
                s.last_failed = false;
                s.last_error = None;
                s.nodes = node_views(&reply);
                s.last_node_count = s.nodes.len().max(1);
                s.fleet_policy_version = s.fleet_policy_version.max(reply.policy_version);
                if reply.policy_version != running {
                    fleet.changed.notify_one();
                }
                let live = s.last_node_count;
                s.shares = reports
                    .iter()
                    .zip(&reply.sources)
                    .map(|((key, local), fleet_traffic)| {
                        let total = fleet_traffic.iter().fold(Traffic::default(), |sum, (_, t)| Traffic {
                            offered: sum.offered + t.offered,
                            admitted: sum.admitted + t.admitted,
                        });
                        (
                            *key,
                            share::local_share(local.offered, total.offered, live),
                            *local,
                            total,
                            fleet_traffic.len(),
                        )
                    })
                    .collect();
                s.default_share = FULL_SHARE;
                s.debts = merged;
            }
            Err(err) => {
                s.errors += 1;
                if matches!(err, LinkError::Timeout(_)) {
                    s.skipped += 1;
                }
                s.last_failed = true;
                s.last_error = Some(err.to_string());
            }
        }
        let state = share::link(s.last_ok.map(|at| at.elapsed()), s.last_failed, config.hold);
        if state == share::Link::Fallback {
            s.shares.clear();
            s.default_share = share::fallback_share(s.last_node_count);
        }
        if state != s.link {
            let before = s.link;
            s.link = state;
            let detail = match state {
                share::Link::Holding => format!(
                    "Redis unreachable ({}): the last shares stay for {} ms",
                    s.last_error.as_deref().unwrap_or("no answer"),
                    config.hold.as_millis()
                ),
                share::Link::Fallback => format!(
                    "Redis unreachable for over {} ms: every source gets its limit / {} nodes",
                    config.hold.as_millis(),
                    s.last_node_count
                ),
                share::Link::Synced => format!("synced with the fleet ({} nodes)", s.nodes.len()),
                share::Link::Connecting => "connecting".to_owned(),
            };
            drop(s);
            if state == share::Link::Synced
                || before == share::Link::Connecting && state != share::Link::Fallback
            {
                tracing::info!(from = before.name(), to = state.name(), "fleet: {detail}");
            } else {
                tracing::warn!(from = before.name(), to = state.name(), "fleet: {detail}");
            }
            self.event(EventView::new("fleet").by("fleet").detail(detail));
        }
    }
}

/// Microseconds in ticks of the GCRA clock.
fn ticks_of_us(us: u64) -> u64 {
    throttle_common::gcra::ticks_from_ns(us.saturating_mul(1_000))
}

/// The live nodes of a sync's reply, as the API lists them.
fn node_views(reply: &SyncReply) -> Vec<NodeView> {
    let mut nodes: Vec<NodeView> = reply
        .nodes
        .iter()
        .map(|(node, at, info)| {
            let info: Option<NodeInfo> = serde_json::from_str(info).ok();
            NodeView {
                node: node.clone(),
                last_sync_ms_ago: reply.now_ms.saturating_sub(*at),
                policy_version: info.as_ref().map_or(0, |i| i.policy_version),
                state: info.as_ref().map_or_else(|| "unknown".to_owned(), |i| i.state.clone()),
                sources: info.as_ref().map_or(0, |i| i.sources),
            }
        })
        .collect();
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    nodes
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(last: u8, rule: u32) -> BucketKey {
        crate::kernel::bucket_key(std::net::IpAddr::from([192, 0, 2, last]), rule, 32, 64)
    }

    #[test]
    fn urls_and_names() {
        assert_eq!(check_url("redis://127.0.0.1:6379/0"), Ok(()));
        assert_eq!(check_url("rediss://user@redis.example:6380"), Ok(()));
        assert_eq!(check_url("redis+unix:///run/redis/redis.sock"), Ok(()));
        assert!(check_url("http://127.0.0.1").unwrap_err().contains("not a Redis URL"));
        assert!(check_url("redis://user:pw@127.0.0.1").unwrap_err().contains("password_file"));
        assert_eq!(redact("redis://user:pw@127.0.0.1:6379/0"), "redis://user:***@127.0.0.1:6379/0");
        assert_eq!(redact("rediss://:p@ss@h:1"), "rediss://:***@h:1");
        assert_eq!(redact("redis://user@h"), "redis://user@h");
        assert_eq!(redact("redis+unix:///run/redis.sock"), "redis+unix:///run/redis.sock");
        assert_eq!(check_name("web-3.prod_a"), Ok(()));
        assert!(
            check_name("").is_err() && check_name("a{b}").is_err() && check_name(&"a".repeat(65)).is_err()
        );
    }

    #[test]
    fn traffic_is_per_second_and_idle_sources_are_left_out() {
        let before = HashMap::from([(key(1, 0), (100, 10)), (key(2, 0), (5, 0))]);
        let now = HashMap::from([(key(1, 0), (150, 60)), (key(2, 0), (5, 0)), (key(3, 0), (4, 0))]);
        let t = traffic(&now, &before, 0.5);
        assert_eq!(t.len(), 2);
        assert_eq!(t[&key(1, 0)], Traffic { offered: 200.0, admitted: 100.0 });
        assert_eq!(t[&key(3, 0)], Traffic { offered: 8.0, admitted: 8.0 }, "new since: all of it");
    }

    #[test]
    fn traffic_is_smoothed_over_a_few_periods_and_idle_sources_fade_out() {
        let t = |offered: f64| Traffic { offered, admitted: offered };
        let first = smooth(&HashMap::new(), &HashMap::from([(key(1, 0), t(100.0))]));
        assert_eq!(first[&key(1, 0)], t(100.0), "a new source: its rate as measured");
        let jitter = smooth(&first, &HashMap::from([(key(1, 0), t(200.0)), (key(2, 0), t(0.8))]));
        assert_eq!(jitter[&key(1, 0)], t(150.0), "one period's burst moves it half way");
        let mut idle = jitter;
        for _ in 0..3 {
            idle = smooth(&idle, &HashMap::new());
        }
        assert_eq!(idle[&key(1, 0)], t(18.75));
        assert!(!idle.contains_key(&key(2, 0)), "faded below half a packet a second: forgotten");
    }

    #[test]
    fn heavy_sources_are_the_top_k_of_those_over_an_even_share() {
        let rates = HashMap::from([(0, 100.0), (7, 10.0)]);
        let t = |offered, admitted| Traffic { offered, admitted };
        let traffic = HashMap::from([
            (key(1, 0), t(60.0, 50.0)),
            (key(2, 0), t(40.0, 40.0)),
            (key(3, 0), t(20.0, 20.0)),
            (key(4, 7), t(5.0, 5.0)),
            (key(5, 9), t(1e6, 1e6)),
            (key(6, 0), t(1.0, 1.0)),
        ]);
        let heavy = heavy_sources(&traffic, &rates, &[key(6, 0)], 3, 10);
        let keys: Vec<BucketKey> = heavy.iter().map(|(k, _)| *k).collect();
        assert_eq!(
            keys,
            [key(1, 0), key(2, 0), key(4, 7), key(6, 0)],
            "a source of no known limit is left out"
        );
        assert_eq!(heavy_sources(&traffic, &rates, &[], 3, 2).len(), 2, "at most K");
        assert!(
            heavy_sources(&traffic, &rates, &[], 1, 10).is_empty(),
            "alone, only what is over its whole limit"
        );
    }
}
