//! The fleet's Redis: one connection (redis-rs's connection manager, which
//! reconnects with backoff by itself) or a Redis Cluster connection, the
//! scripts the fleet runs on it, and the subscription to policy changes.
//!
//! Every key of a fleet carries the fleet's name as its hash tag
//! (`{prod}:policy`, `{prod}:nodes`, `{prod}:src:...`), so on a Redis
//! Cluster they live on one shard and each script runs there whole.

use std::{sync::Arc, time::Duration};

use redis::{aio::ConnectionLike, AsyncCommands as _, Client, IntoConnectionInfo as _, Script};
use throttle_common::BucketKey;
use tokio::sync::OnceCell;

use super::FleetConfig;

/// How long one connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The longest pause between two connection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The compare-and-set of the policy document: written as the version
/// after ARGV[1] only if the document is still at ARGV[1]; published on
/// ARGV[3]. Returns `{1, new}` or `{0, current}`.
const CAS: &str = r"
local current = tonumber(redis.call('HGET', KEYS[1], 'version') or '0')
if current ~= tonumber(ARGV[1]) then
  return {0, current}
end
local version = current + 1
redis.call('HSET', KEYS[1], 'version', version, 'doc', ARGV[2], 'by', ARGV[4])
redis.call('PUBLISH', ARGV[3], version)
return {1, version}
";

/// Writes back a document at version ARGV[1] if the fleet holds none (a
/// Redis that restarted without its data): the first node to see that
/// restores the policy it runs. Returns 1 if it did.
const RESTORE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'doc', ARGV[2], 'by', ARGV[4])
redis.call('PUBLISH', ARGV[3], ARGV[1])
return 1
";

/// One sync: the node's heartbeat (KEYS[1], field ARGV[1], its info
/// ARGV[2]), entries older than ARGV[3] ms dropped; then for each of the
/// ARGV[4] sources KEYS[3..] this node's traffic (ARGV[5..], two numbers
/// each) and every fresh node's in return; then for each source of a
/// low-rate limit (the keys after) the GCRA debt this node ran up since
/// the last sync and the limit's tolerance (two numbers each, in
/// microseconds), added to the fleet's TAT of the source (at least now),
/// and how far ahead of now that is in return. The TAT may run past the
/// tolerance when nodes admitted at once what one bucket would not have:
/// that is paid back by waiting; it is kept under the tolerance once per
/// live node and once more, so that no report runs it away. Times are Redis's own clock, so the
/// nodes' clocks need not agree. Returns `{now_ms, policy version
/// (KEYS[2]), {node, "at info"...}, {{node, "at offered admitted"...}...},
/// {debt_us...}}`.
const SYNC: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[3])
local function fresh(key)
  local fields = redis.call('HGETALL', key)
  local out = {}
  for i = 1, #fields, 2 do
    local at = tonumber(string.match(fields[i + 1], '^(%d+)'))
    if at == nil or now - at > ttl then
      redis.call('HDEL', key, fields[i])
    else
      out[#out + 1] = fields[i]
      out[#out + 1] = fields[i + 1]
    end
  end
  return out
end
redis.call('HSET', KEYS[1], ARGV[1], string.format('%d %s', now, ARGV[2]))
local nodes = fresh(KEYS[1])
local sources = {}
local shared = tonumber(ARGV[4])
for k = 3, 2 + shared do
  local n = 5 + (k - 3) * 2
  redis.call('HSET', KEYS[k], ARGV[1], string.format('%d %s %s', now, ARGV[n], ARGV[n + 1]))
  redis.call('PEXPIRE', KEYS[k], ttl)
  sources[#sources + 1] = fresh(KEYS[k])
end
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local debts = {}
for k = 3 + shared, #KEYS do
  local n = 5 + 2 * shared + (k - 3 - shared) * 2
  local tolerance = tonumber(ARGV[n + 1])
  local tat = math.max(tonumber(redis.call('GET', KEYS[k]) or '0'), now_us) + tonumber(ARGV[n])
  tat = math.min(tat, now_us + tolerance * (1 + #nodes / 2))
  local ahead = tat - now_us
  redis.call('SET', KEYS[k], string.format('%.0f', tat), 'PX', math.floor(ahead / 1000) + ttl)
  debts[#debts + 1] = string.format('%.0f', ahead)
end
return {tostring(now), redis.call('HGET', KEYS[2], 'version') or '0', nodes, sources, debts}
";

/// Why a call to Redis failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    #[error("not connected to Redis yet")]
    NotConnected,
    #[error("Redis did not answer within {0:?}")]
    Timeout(Duration),
    #[error("Redis: {0}")]
    Redis(String),
    #[error("Redis answered what the fleet did not write: {0}")]
    Garbled(String),
}

impl From<redis::RedisError> for LinkError {
    fn from(err: redis::RedisError) -> Self {
        Self::Redis(err.to_string())
    }
}

/// A connection of either kind.
#[derive(Clone)]
enum Conn {
    Single(redis::aio::ConnectionManager),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// What one sync read back.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyncReply {
    /// Redis's clock, in milliseconds since the epoch.
    pub now_ms: u64,
    /// The fleet's policy version.
    pub policy_version: u64,
    /// Every live node: its name, when it last synced (Redis's clock) and
    /// the info it wrote.
    pub nodes: Vec<(String, u64, String)>,
    /// For each source reported, in order: each live node's traffic.
    pub sources: Vec<Vec<(String, super::share::Traffic)>>,
    /// For each source of a low-rate limit reported, in order: how far
    /// ahead of now the fleet's TAT of it is, in microseconds.
    pub debts_us: Vec<u64>,
}

/// The fleet's keys and its connection.
pub struct Link {
    policy_key: String,
    nodes_key: String,
    source_prefix: String,
    debt_prefix: String,
    channel: String,
    /// For the subscription (the first seed).
    client: Client,
    conn: OnceCell<Conn>,
    cas: Script,
    restore: Script,
    sync: Script,
}

/// The connection info of `url` with the password of `password`, if any.
fn info(url: &str, password: Option<&str>) -> redis::RedisResult<redis::ConnectionInfo> {
    let info = url.into_connection_info()?;
    Ok(match password {
        Some(password) => {
            let redis = info.redis_settings().clone().set_password(password);
            info.set_redis_settings(redis)
        }
        None => info,
    })
}

impl Link {
    /// The link of `config` (not connected yet: [`Self::connect`]).
    pub fn new(config: &FleetConfig, password: Option<&str>) -> redis::RedisResult<Arc<Self>> {
        let name = &config.name;
        let client = Client::open(info(&config.seeds[0], password)?)?;
        Ok(Arc::new(Self {
            policy_key: format!("{{{name}}}:policy"),
            nodes_key: format!("{{{name}}}:nodes"),
            source_prefix: format!("{{{name}}}:src:"),
            debt_prefix: format!("{{{name}}}:debt:"),
            channel: format!("{{{name}}}:policy:changed"),
            client,
            conn: OnceCell::new(),
            cas: Script::new(CAS),
            restore: Script::new(RESTORE),
            sync: Script::new(SYNC),
        }))
    }

    /// Connects, trying again with backoff until it succeeds: a single
    /// server through the connection manager, which from then on
    /// reconnects by itself; several seeds as a Redis Cluster.
    pub async fn connect(self: &Arc<Self>, config: &FleetConfig, password: Option<&str>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.try_connect(config, password).await {
                Ok(conn) => {
                    let _ = self.conn.set(conn);
                    return;
                }
                Err(err) => {
                    tracing::debug!("connecting to the fleet's Redis: {err}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    async fn try_connect(&self, config: &FleetConfig, password: Option<&str>) -> redis::RedisResult<Conn> {
        if config.seeds.len() == 1 {
            let manager = redis::aio::ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(config.sync.max(Duration::from_millis(500))))
                .set_max_delay(MAX_BACKOFF)
                .set_number_of_retries(1);
            let manager = redis::aio::ConnectionManager::new_lazy_with_config(self.client.clone(), manager)?;
            return Ok(Conn::Single(manager));
        }
        let seeds = config.seeds.iter().map(|s| info(s, password)).collect::<redis::RedisResult<Vec<_>>>()?;
        let client = redis::cluster::ClusterClient::builder(seeds)
            .connection_timeout(CONNECT_TIMEOUT)
            .response_timeout(config.sync.max(Duration::from_millis(500)))
            .retries(1)
            .build()?;
        let conn = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_connection())
            .await
            .map_err(|_| redis::RedisError::from((redis::ErrorKind::Io, "connection timed out")))??;
        Ok(Conn::Cluster(conn))
    }

    fn conn(&self) -> Result<Conn, LinkError> {
        self.conn.get().cloned().ok_or(LinkError::NotConnected)
    }

    /// The channel policy changes are published on.
    #[must_use]
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The key of a source's traffic.
    #[must_use]
    pub fn source_key(&self, key: &BucketKey) -> String {
        format!("{}{}", self.source_prefix, key_suffix(key))
    }

    /// The key of a source's merged debt under a low-rate limit.
    #[must_use]
    pub fn debt_key(&self, key: &BucketKey) -> String {
        format!("{}{}", self.debt_prefix, key_suffix(key))
    }

    /// The fleet's document and its version (0 and `None`: none yet).
    pub async fn policy(&self, deadline: Duration) -> Result<(u64, Option<String>), LinkError> {
        let mut conn = self.conn()?;
        let (version, doc): (Option<String>, Option<String>) = within(
            deadline,
            redis::cmd("HMGET").arg(&self.policy_key).arg("version").arg("doc").query_async(&mut conn),
        )
        .await?;
        Ok((parse_u64(version.as_deref().unwrap_or("0"), "the policy version")?, doc))
    }

    /// The fleet's policy version alone.
    pub async fn policy_version(&self, deadline: Duration) -> Result<u64, LinkError> {
        let mut conn = self.conn()?;
        let version: Option<String> = within(deadline, conn.hget(&self.policy_key, "version")).await?;
        parse_u64(version.as_deref().unwrap_or("0"), "the policy version")
    }

    /// Writes `doc` as the version after `expected`: `Ok(new)`, or
    /// `Err(current)` when another change came first.
    pub async fn compare_and_set(
        &self,
        doc: &str,
        expected: u64,
        node: &str,
        deadline: Duration,
    ) -> Result<Result<u64, u64>, LinkError> {
        let mut conn = self.conn()?;
        let mut call = self.cas.key(&self.policy_key);
        call.arg(expected).arg(doc).arg(&self.channel).arg(node);
        let (won, version): (i64, i64) = within(deadline, call.invoke_async(&mut conn)).await?;
        let version = u64::try_from(version).map_err(|_| LinkError::Garbled(format!("version {version}")))?;
        Ok(if won == 1 { Ok(version) } else { Err(version) })
    }

    /// Writes `doc` back as `version` if the fleet holds no document;
    /// whether it did.
    pub async fn restore(
        &self,
        doc: &str,
        version: u64,
        node: &str,
        deadline: Duration,
    ) -> Result<bool, LinkError> {
        let mut conn = self.conn()?;
        let mut call = self.restore.key(&self.policy_key);
        call.arg(version).arg(doc).arg(&self.channel).arg(node);
        let done: i64 = within(deadline, call.invoke_async(&mut conn)).await?;
        Ok(done == 1)
    }

    /// One sync: the heartbeat, `reports` (each source's key and this
    /// node's traffic) and `debts` (each source of a low-rate limit, the
    /// debt this node ran up since the last sync and the limit's tolerance)
    /// in one round trip, and what every live node wrote.
    pub async fn sync(
        &self,
        node: &str,
        info: &str,
        ttl: Duration,
        reports: &[(BucketKey, super::share::Traffic)],
        debts: &[super::Debt],
        deadline: Duration,
    ) -> Result<SyncReply, LinkError> {
        let mut conn = self.conn()?;
        let mut call = self.sync.prepare_invoke();
        call.key(&self.nodes_key).key(&self.policy_key);
        call.arg(node).arg(info).arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX)).arg(reports.len());
        for (key, traffic) in reports {
            call.key(self.source_key(key));
            call.arg(format!("{:.3}", traffic.offered)).arg(format!("{:.3}", traffic.admitted));
        }
        for debt in debts {
            call.key(self.debt_key(&debt.key));
            call.arg(format!("{:.0}", debt.spent_us)).arg(format!("{:.0}", debt.tolerance_us));
        }
        let (now, version, nodes, sources, debts_us): (
            String,
            String,
            Vec<String>,
            Vec<Vec<String>>,
            Vec<String>,
        ) = within(deadline, call.invoke_async(&mut conn)).await?;
        let nodes = pairs(&nodes)
            .map(|(name, value)| {
                let (at, info) = value.split_once(' ').unwrap_or((value, ""));
                Ok((name.to_owned(), parse_u64(at, "a heartbeat's time")?, info.to_owned()))
            })
            .collect::<Result<Vec<_>, LinkError>>()?;
        let sources = sources
            .iter()
            .map(|fields| {
                pairs(fields)
                    .map(|(name, value)| {
                        let mut words = value.split(' ').skip(1);
                        let mut number = || {
                            words
                                .next()
                                .and_then(|w| w.parse::<f64>().ok())
                                .filter(|v| v.is_finite() && *v >= 0.0)
                                .ok_or_else(|| LinkError::Garbled(format!("traffic {value:?}")))
                        };
                        let offered = number()?;
                        let admitted = number()?;
                        Ok((name.to_owned(), super::share::Traffic { offered, admitted }))
                    })
                    .collect::<Result<Vec<_>, LinkError>>()
            })
            .collect::<Result<Vec<_>, LinkError>>()?;
        if sources.len() != reports.len() || debts_us.len() != debts.len() {
            return Err(LinkError::Garbled(format!(
                "{} sources for {} reported, {} debts for {}",
                sources.len(),
                reports.len(),
                debts_us.len(),
                debts.len()
            )));
        }
        Ok(SyncReply {
            now_ms: parse_u64(&now, "Redis's time")?,
            policy_version: parse_u64(&version, "the policy version")?,
            nodes,
            sources,
            debts_us: debts_us.iter().map(|d| parse_u64(d, "a debt")).collect::<Result<_, _>>()?,
        })
    }

    /// Takes this node out of the fleet (it stops).
    pub async fn leave(&self, node: &str, deadline: Duration) -> Result<(), LinkError> {
        let mut conn = self.conn()?;
        let _: i64 = within(deadline, conn.hdel(&self.nodes_key, node)).await?;
        Ok(())
    }

    /// Calls `changed` at each policy change published, until the
    /// subscription breaks (the caller subscribes again).
    pub async fn subscribe(&self, changed: &tokio::sync::Notify) -> Result<(), LinkError> {
        let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, self.client.get_async_pubsub())
            .await
            .map_err(|_| LinkError::Timeout(CONNECT_TIMEOUT))??;
        pubsub.subscribe(&self.channel).await?;
        // A change may have come while not subscribed.
        changed.notify_one();
        let mut messages = pubsub.on_message();
        while futures_util::StreamExt::next(&mut messages).await.is_some() {
            changed.notify_one();
        }
        Err(LinkError::Redis("the subscription was closed".into()))
    }
}

async fn within<T>(
    deadline: Duration,
    call: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, LinkError> {
    match tokio::time::timeout(deadline, call).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(LinkError::Timeout(deadline)),
    }
}

/// A source's part of its keys: its limit's `rule` word, family and
/// address.
fn key_suffix(key: &BucketKey) -> String {
    let [a, b, c, d] = key.addr;
    let family = if key.family == throttle_common::FAMILY_V4 { 4 } else { 6 };
    format!("{:x}:{family}:{a:08x}{b:08x}{c:08x}{d:08x}", key.rule)
}

fn parse_u64(text: &str, what: &str) -> Result<u64, LinkError> {
    text.parse().map_err(|_| LinkError::Garbled(format!("{what} {text:?}")))
}

fn pairs(flat: &[String]) -> impl Iterator<Item = (&str, &str)> {
    flat.chunks_exact(2).map(|pair| (pair[0].as_str(), pair[1].as_str()))
}
