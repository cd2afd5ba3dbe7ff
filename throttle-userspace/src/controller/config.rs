//! The `[adaptive]` section: which latency source to watch, which algorithm
//! moves the scale, and every parameter, each validated with its key.
//!
//! The same struct is what `GET /v1/controller` shows under `params`, and what
//! a [`ParamsUpdate`] (`PUT /v1/controller`, a merge patch) changes.

use std::{collections::BTreeMap, fmt, net::SocketAddr};

use serde::{Deserialize, Serialize};

use crate::policy::{self, check_f64, check_fraction, check_open, check_range, key, Invalid, ParseError};

/// Which algorithm moves the scale.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Algorithm {
    /// Short-window latency against a slowly learnt baseline (Gradient2-like).
    #[default]
    Gradient,
    /// Estimated queueing share of the latency against two thresholds.
    Vegas,
    /// Multiplicative decrease on trouble, additive increase otherwise.
    Aimd,
}

/// How the controller turns the latency into limits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The algorithm estimates the capacity the service sustains, and every
    /// source gets its max-min fair share of it (water-filling over the
    /// measured per-source rates): sources under the level keep all they
    /// send, sources over it get the level.
    #[default]
    FairShare,
    /// The algorithm walks one scale over every limit.
    Scale,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::FairShare => "fair_share",
            Self::Scale => "scale",
        })
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Gradient => "gradient",
            Self::Vegas => "vegas",
            Self::Aimd => "aimd",
        })
    }
}

/// Parameters of the `gradient` algorithm (`[adaptive.gradient]`).
///
/// Each evaluation compares the short-window latency (`percentile` of the
/// samples since the previous evaluation) with a long-window baseline (an
/// exponential moving average of the short latencies). The gradient is
/// `tolerance * baseline / short`, clamped to 0.5..=1: under 1 the scale is
/// cut by that factor; at 1 (latency within tolerance) it grows by `headroom`.
/// The result is smoothed with the previous scale.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GradientParams {
    /// Percentile of the window taken as the short latency, in percent
    /// (0 < p < 100). Default 50.
    pub percentile: f64,
    /// Length of the baseline's moving average, in evaluations (1..=100000).
    /// While the latency is above tolerance the baseline learns ten times
    /// slower, so that a long overload does not become the new normal.
    /// Default 60.
    pub long_window: u32,
    /// How much slower than the baseline the short latency may be before the
    /// scale is cut, as a factor (1..=10). Default 1.5.
    pub tolerance: f64,
    /// Weight of the new value against the previous scale (0 < s <= 1;
    /// 1 = no smoothing). Default 0.5.
    pub smoothing: f64,
    /// Growth tried when the latency is within tolerance, as a fraction of
    /// the scale per evaluation (0..=1). Default 0.1.
    pub headroom: f64,
}

impl Default for GradientParams {
    fn default() -> Self {
        Self { percentile: 50.0, long_window: 60, tolerance: 1.5, smoothing: 0.5, headroom: 0.1 }
    }
}

/// Parameters of the `vegas` algorithm (`[adaptive.vegas]`).
///
/// The baseline is the lowest short latency seen over the last
/// `baseline_window` evaluations; the queueing share of the latency is
/// `1 - baseline / short`. Under `alpha` the scale grows, over `beta` it is
/// cut, in between it holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VegasParams {
    /// Percentile of the window taken as the short latency, in percent
    /// (0 < p < 100). Default 50.
    pub percentile: f64,
    /// Evaluations over which the lowest latency is the baseline
    /// (1..=100000); older minima are forgotten, so the baseline is measured
    /// again now and then. Default 300.
    pub baseline_window: u32,
    /// Queueing share under which the scale grows (0 <= alpha < beta).
    /// Default 0.3.
    pub alpha: f64,
    /// Queueing share over which the scale is cut (alpha < beta < 1).
    /// Default 0.6.
    pub beta: f64,
    /// Growth per evaluation, as a fraction of the scale (0 < x <= 1).
    /// Default 0.1.
    pub increase: f64,
    /// Cut per evaluation, as a fraction of the scale (0 < x < 1).
    /// Default 0.2.
    pub decrease: f64,
}

impl Default for VegasParams {
    fn default() -> Self {
        Self { percentile: 50.0, baseline_window: 300, alpha: 0.3, beta: 0.6, increase: 0.1, decrease: 0.2 }
    }
}

/// Parameters of the `aimd` algorithm (`[adaptive.aimd]`).
///
/// Trouble is a short latency over `tolerance` times the baseline (an
/// exponential moving average, as for `gradient`): the scale is multiplied by
/// `backoff`. Otherwise `increase` is added.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AimdParams {
    /// Percentile of the window taken as the short latency, in percent
    /// (0 < p < 100). Default 90.
    pub percentile: f64,
    /// Length of the baseline's moving average, in evaluations (1..=100000).
    /// Default 60.
    pub long_window: u32,
    /// Short latency over this many times the baseline is trouble (1..=10).
    /// Default 2.
    pub tolerance: f64,
    /// Factor applied to the scale on trouble (0 < b < 1). Default 0.8.
    pub backoff: f64,
    /// Added to the scale per evaluation without trouble, in scale units
    /// (0 < x <= 1). Default 0.02.
    pub increase: f64,
}

impl Default for AimdParams {
    fn default() -> Self {
        Self { percentile: 90.0, long_window: 60, tolerance: 2.0, backoff: 0.8, increase: 0.02 }
    }
}

/// Unit of a Prometheus histogram's bucket bounds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HistogramUnit {
    /// `le` in seconds (the Prometheus convention, `*_seconds`).
    #[default]
    Seconds,
    /// `le` in milliseconds.
    Milliseconds,
}

/// Where latency samples come from (`[adaptive.source]`, tagged by `kind`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum SourceConfig {
    /// An HTTP GET at an interval. A timeout, a 5xx or a failed connection is
    /// a sample equal to the timeout: the service is slow, not silent.
    Http(HttpSource),
    /// A TCP connect to an address at an interval; same rules.
    Tcp(TcpSource),
    /// A latency histogram scraped from the service's Prometheus endpoint:
    /// each scrape gives one sample, the quantile over the last `window_ms`
    /// computed from the bucket counts' increase.
    Prometheus(PrometheusSource),
    /// Samples pushed by the service to `POST /v1/latency`; nothing runs.
    #[default]
    Push,
}

/// An HTTP probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSource {
    /// `http://host[:port]/path`; plain HTTP only.
    pub url: String,
    /// Time between probes, in milliseconds (10..=60000). Default 200.
    #[serde(default = "default_probe_interval")]
    pub interval_ms: u64,
    /// A probe not answered within this many milliseconds is a sample of
    /// this value (1..=60000). Default 1000.
    #[serde(default = "default_probe_timeout")]
    pub timeout_ms: u64,
}

/// A TCP connect probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TcpSource {
    /// `ip:port` to connect to.
    pub address: String,
    /// Time between probes, in milliseconds (10..=60000). Default 200.
    #[serde(default = "default_probe_interval")]
    pub interval_ms: u64,
    /// A connect not done within this many milliseconds (or refused) is a
    /// sample of this value (1..=60000). Default 1000.
    #[serde(default = "default_probe_timeout")]
    pub timeout_ms: u64,
}

/// A Prometheus histogram scrape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrometheusSource {
    /// `http://host[:port]/metrics`; plain HTTP only.
    pub url: String,
    /// The histogram's name, without `_bucket`.
    pub metric: String,
    /// Only series with these label values count (exact match); the buckets
    /// of every matching series are added up.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Quantile computed from the buckets (0 < q < 1). Default 0.99.
    #[serde(default = "default_quantile")]
    pub quantile: f64,
    /// The quantile covers the requests of this many last milliseconds
    /// (at least twice `interval_ms`, at most 3600000). Default 10000.
    #[serde(default = "default_prometheus_window")]
    pub window_ms: u64,
    /// Time between scrapes, in milliseconds (100..=60000). Default 1000.
    #[serde(default = "default_scrape_interval")]
    pub interval_ms: u64,
    /// A scrape not done within this many milliseconds fails (and gives no
    /// sample) (1..=60000). Default 1000.
    #[serde(default = "default_probe_timeout")]
    pub timeout_ms: u64,
    /// Unit of the `le` bounds. Default seconds.
    #[serde(default)]
    pub unit: HistogramUnit,
}

const fn default_probe_interval() -> u64 {
    200
}
const fn default_probe_timeout() -> u64 {
    1_000
}
const fn default_scrape_interval() -> u64 {
    1_000
}
const fn default_prometheus_window() -> u64 {
    10_000
}
const fn default_quantile() -> f64 {
    0.99
}

impl SourceConfig {
    /// The time between two samples of a probe source, if it is one.
    #[must_use]
    pub fn sample_interval_ms(&self) -> Option<u64> {
        match self {
            Self::Http(http) => Some(http.interval_ms),
            Self::Tcp(tcp) => Some(tcp.interval_ms),
            Self::Prometheus(prom) => Some(prom.interval_ms),
            Self::Push => None,
        }
    }
}

/// The `[adaptive]` section, and the controller's parameters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdaptiveConfig {
    /// Whether the controller moves the scale. Off, the scale is 1.0 and the
    /// latency is still watched and shown. Default true.
    pub enabled: bool,
    /// `fair_share` (default) or `scale`.
    pub mode: Mode,
    /// `gradient` (default), `vegas` or `aimd`.
    pub algorithm: Algorithm,
    /// Lowest scale, applied to every limit (0 < floor <= 1). Default 0.1.
    pub floor: f64,
    /// Time between two evaluations, in milliseconds (100..=60000).
    /// Default 1000.
    pub interval_ms: u64,
    /// Samples older than this many milliseconds are not used
    /// (`interval_ms`..=600000); with none at all this recent the controller
    /// holds. Default 5000.
    pub window_ms: u64,
    /// Samples needed for an evaluation (1..=100000); fewer and it waits for
    /// more. Default 10, or 1 for a `prometheus` source (one sample per
    /// scrape).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub min_samples: Option<u32>,
    /// Latency objective in milliseconds: over it the scale is cut in
    /// proportion whatever the algorithm says, and near it (over 80 %) the
    /// scale does not grow. None: no objective. Default none.
    pub target_ms: Option<f64>,
    /// Percentile the objective applies to, in percent (0 < p < 100).
    /// Default 99.
    pub target_percentile: f64,
    /// Largest growth per evaluation, as a fraction of the scale (0 < x <= 1).
    /// Default 0.05.
    pub max_increase: f64,
    /// Largest cut per evaluation, as a fraction of the scale (0 < x < 1).
    /// Default 0.3.
    pub max_decrease: f64,
    /// While no source reaches its limit, the scale grows to at most the
    /// busiest source's share of its base rate times (1 + this) (0..=10).
    /// Default 0.25.
    pub app_limit_headroom: f64,
    /// `fair_share`: the part of the capacity (0..=1) guaranteed to the
    /// sources seen before an overload began, at a level of their own; the
    /// sources that came since share the rest, at a level no higher. 0:
    /// every source alike. Default 0.5.
    pub known_reserve: f64,
    /// Number of past decisions kept for the status (1..=1000). Default 32.
    pub history: u32,
    pub gradient: GradientParams,
    pub vegas: VegasParams,
    pub aimd: AimdParams,
    /// Where latency samples come from. Default `push`.
    pub source: SourceConfig,
}

impl Default for AdaptiveConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            mode: Mode::FairShare,
            algorithm: Algorithm::Gradient,
            floor: 0.1,
            interval_ms: 1_000,
            window_ms: 5_000,
            min_samples: None,
            target_ms: None,
            target_percentile: 99.0,
            max_increase: 0.05,
            max_decrease: 0.3,
            app_limit_headroom: 0.25,
            known_reserve: 0.5,
            history: 32,
            gradient: GradientParams::default(),
            vegas: VegasParams::default(),
            aimd: AimdParams::default(),
            source: SourceConfig::Push,
        }
    }
}

/// Longest interval, timeout or window of a probe, in milliseconds.
const MAX_PROBE_MS: u64 = 60_000;

/// A plain-HTTP URL with a host.
fn check_http_url(prefix: &str, name: &str, url: &str) -> Result<http::Uri, Invalid> {
    let bad = |reason: &str| Invalid::new(key(prefix, name), format!("{url:?}"), reason);
    let uri: http::Uri = url.parse().map_err(|_| bad("not a URL like http://127.0.0.1:8080/health"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(bad("https is not supported: the probe speaks plain HTTP")),
        _ => return Err(bad("not a URL like http://127.0.0.1:8080/health")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    Ok(uri)
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl GradientParams {
    fn validate(&self, prefix: &str) -> Result<(), Invalid> {
        check_open(&key(prefix, "percentile"), self.percentile, 0.0, 100.0)?;
        check_range(&key(prefix, "long_window"), u64::from(self.long_window), 1, 100_000)?;
        check_f64(&key(prefix, "tolerance"), self.tolerance, 1.0, 10.0)?;
        check_fraction(&key(prefix, "smoothing"), self.smoothing)?;
        check_f64(&key(prefix, "headroom"), self.headroom, 0.0, 1.0)
    }
}

impl VegasParams {
    fn validate(&self, prefix: &str) -> Result<(), Invalid> {
        check_open(&key(prefix, "percentile"), self.percentile, 0.0, 100.0)?;
        check_range(&key(prefix, "baseline_window"), u64::from(self.baseline_window), 1, 100_000)?;
        check_f64(&key(prefix, "alpha"), self.alpha, 0.0, 1.0)?;
        check_open(&key(prefix, "beta"), self.beta, 0.0, 1.0)?;
        if self.beta <= self.alpha {
            return Err(Invalid::new(
                key(prefix, "beta"),
                self.beta,
                format!("must be over alpha ({})", self.alpha),
            ));
        }
        check_fraction(&key(prefix, "increase"), self.increase)?;
        check_open(&key(prefix, "decrease"), self.decrease, 0.0, 1.0)
    }
}

impl AimdParams {
    fn validate(&self, prefix: &str) -> Result<(), Invalid> {
        check_open(&key(prefix, "percentile"), self.percentile, 0.0, 100.0)?;
        check_range(&key(prefix, "long_window"), u64::from(self.long_window), 1, 100_000)?;
        check_f64(&key(prefix, "tolerance"), self.tolerance, 1.0, 10.0)?;
        check_open(&key(prefix, "backoff"), self.backoff, 0.0, 1.0)?;
        check_fraction(&key(prefix, "increase"), self.increase)
    }
}

impl SourceConfig {
    fn validate(&self, prefix: &str) -> Result<(), Invalid> {
        match self {
            Self::Http(http) => {
                check_http_url(prefix, "url", &http.url)?;
                check_range(&key(prefix, "interval_ms"), http.interval_ms, 10, MAX_PROBE_MS)?;
                check_range(&key(prefix, "timeout_ms"), http.timeout_ms, 1, MAX_PROBE_MS)
            }
            Self::Tcp(tcp) => {
                tcp.address.parse::<SocketAddr>().map_err(|_| {
                    Invalid::new(
                        key(prefix, "address"),
                        format!("{:?}", tcp.address),
                        "not an ip:port like 127.0.0.1:5432",
                    )
                })?;
                check_range(&key(prefix, "interval_ms"), tcp.interval_ms, 10, MAX_PROBE_MS)?;
                check_range(&key(prefix, "timeout_ms"), tcp.timeout_ms, 1, MAX_PROBE_MS)
            }
            Self::Prometheus(prom) => {
                check_http_url(prefix, "url", &prom.url)?;
                if !valid_metric_name(&prom.metric) {
                    return Err(Invalid::new(
                        key(prefix, "metric"),
                        format!("{:?}", prom.metric),
                        "not a Prometheus metric name",
                    ));
                }
                if prom.metric.ends_with("_bucket") {
                    return Err(Invalid::new(
                        key(prefix, "metric"),
                        format!("{:?}", prom.metric),
                        "name the histogram without its `_bucket` suffix",
                    ));
                }
                for name in prom.labels.keys() {
                    if !valid_label_name(name) || name == "le" {
                        return Err(Invalid::new(
                            key(prefix, &format!("labels.{name}")),
                            format!("{name:?}"),
                            "not a label name that can select a series (and not `le`)",
                        ));
                    }
                }
                check_open(&key(prefix, "quantile"), prom.quantile, 0.0, 1.0)?;
                check_range(&key(prefix, "interval_ms"), prom.interval_ms, 100, MAX_PROBE_MS)?;
                check_range(&key(prefix, "timeout_ms"), prom.timeout_ms, 1, MAX_PROBE_MS)?;
                check_range(
                    &key(prefix, "window_ms"),
                    prom.window_ms,
                    prom.interval_ms.saturating_mul(2),
                    3_600_000,
                )
            }
            Self::Push => Ok(()),
        }
    }
}

impl AdaptiveConfig {
    /// Samples an evaluation needs: `min_samples`, or its default for the
    /// source.
    #[must_use]
    pub fn min_samples(&self) -> u32 {
        self.min_samples.unwrap_or(match self.source {
            SourceConfig::Prometheus(_) => 1,
            _ => 10,
        })
    }

    /// Checks every value; `prefix` names the section (`adaptive` in the
    /// file, empty for the admin API's body).
    pub fn validate(&self, prefix: &str) -> Result<(), Invalid> {
        let floor = self.floor;
        if !(floor.is_finite() && floor > 0.0 && floor <= 1.0) {
            return Err(Invalid::new(key(prefix, "floor"), floor, "must be over 0 and at most 1"));
        }
        check_range(&key(prefix, "interval_ms"), self.interval_ms, 100, 60_000)?;
        check_range(&key(prefix, "window_ms"), self.window_ms, self.interval_ms, 600_000)?;
        if let Some(min) = self.min_samples {
            check_range(&key(prefix, "min_samples"), u64::from(min), 1, 100_000)?;
        }
        if let Some(target) = self.target_ms {
            if !(target.is_finite() && target > 0.0 && target <= 600_000.0) {
                return Err(Invalid::new(
                    key(prefix, "target_ms"),
                    target,
                    "must be over 0 and at most 600000",
                ));
            }
        }
        check_open(&key(prefix, "target_percentile"), self.target_percentile, 0.0, 100.0)?;
        check_fraction(&key(prefix, "max_increase"), self.max_increase)?;
        check_open(&key(prefix, "max_decrease"), self.max_decrease, 0.0, 1.0)?;
        check_f64(&key(prefix, "app_limit_headroom"), self.app_limit_headroom, 0.0, 10.0)?;
        check_f64(&key(prefix, "known_reserve"), self.known_reserve, 0.0, 1.0)?;
        check_range(&key(prefix, "history"), u64::from(self.history), 1, 1_000)?;
        self.gradient.validate(&key(prefix, "gradient"))?;
        self.vegas.validate(&key(prefix, "vegas"))?;
        self.aimd.validate(&key(prefix, "aimd"))?;
        self.source.validate(&key(prefix, "source"))?;
        // A probe gives one sample per interval: the window must be able to
        // hold the samples an evaluation needs.
        if let Some(every) = self.source.sample_interval_ms() {
            let fit = self.window_ms / every.max(1);
            if u64::from(self.min_samples()) > fit {
                return Err(Invalid::new(
                    key(prefix, "min_samples"),
                    self.min_samples(),
                    format!(
                        "the source gives one sample every {every} ms, so at most {fit} fit in window_ms ({})",
                        self.window_ms
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The body of `PUT /v1/controller`: a JSON merge patch (RFC 7386) of the
/// parameters. A field given replaces its value (an object merges field by
/// field, as `{"gradient": {"tolerance": 2}}`), `null` puts a field back to
/// its default (`{"target_ms": null}`: no objective), and a field left out
/// keeps its value. The latency source is not changed at run time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ParamsUpdate(pub serde_json::Map<String, serde_json::Value>);

/// Why an update was refused: a value out of range, named by its key, or a
/// body that is not the parameters' shape.
pub type UpdateError = ParseError<serde_json::Error>;

/// `target` with `patch` merged into it (RFC 7386).
fn merge(target: &mut serde_json::Value, patch: serde_json::Value) {
    let serde_json::Value::Object(patch) = patch else {
        *target = patch;
        return;
    };
    if !target.is_object() {
        *target = serde_json::Value::Object(serde_json::Map::new());
    }
    let fields = target.as_object_mut().expect("an object");
    for (key, value) in patch {
        if value.is_null() {
            fields.remove(&key);
        } else {
            merge(fields.entry(key).or_insert(serde_json::Value::Null), value);
        }
    }
}

impl ParamsUpdate {
    /// `current` with this update applied, validated; the error names the
    /// field as it appears in the body (`gradient.tolerance`).
    pub fn apply_to(&self, current: &AdaptiveConfig) -> Result<AdaptiveConfig, UpdateError> {
        if let Some(source) = self.0.get("source") {
            return Err(ParseError::Invalid(Invalid::new(
                "source",
                source,
                "the latency source is not changed at run time: change `[adaptive.source]` and restart",
            )));
        }
        let mut value = serde_json::to_value(current).expect("the parameters serialise");
        merge(&mut value, serde_json::Value::Object(self.0.clone()));
        let next: AdaptiveConfig = policy::parse(value, "")?;
        next.validate("").map_err(ParseError::Invalid)?;
        Ok(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AdaptiveConfig, String> {
        let config: AdaptiveConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.validate("adaptive").map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn defaults_are_valid() {
        let config = parse("").unwrap();
        assert_eq!(config, AdaptiveConfig::default());
        assert_eq!(config.min_samples(), 10);
        assert_eq!(config.mode, Mode::FairShare);
        assert_eq!(parse("mode = \"scale\"").unwrap().mode, Mode::Scale);
    }

    #[test]
    fn every_source_parses() {
        let http = parse(
            "[source]\nkind = \"http\"\nurl = \"http://127.0.0.1:8080/health\"\ninterval_ms = 100\ntimeout_ms = 500",
        )
        .unwrap();
        assert_eq!(
            http.source,
            SourceConfig::Http(HttpSource {
                url: "http://127.0.0.1:8080/health".into(),
                interval_ms: 100,
                timeout_ms: 500
            })
        );
        let tcp = parse("[source]\nkind = \"tcp\"\naddress = \"127.0.0.1:5432\"").unwrap();
        assert_eq!(tcp.source.sample_interval_ms(), Some(200));
        let prom = parse(
            "[source]\nkind = \"prometheus\"\nurl = \"http://127.0.0.1:9100/metrics\"\n\
             metric = \"http_request_duration_seconds\"\nlabels = { route = \"/api\" }\nquantile = 0.9",
        )
        .unwrap();
        assert_eq!(prom.min_samples(), 1);
        let SourceConfig::Prometheus(p) = &prom.source else { panic!("{prom:?}") };
        assert_eq!(p.labels["route"], "/api");
        assert_eq!(p.window_ms, 10_000);
        let push = parse("[source]\nkind = \"push\"").unwrap();
        assert_eq!(push.source, SourceConfig::Push);
    }

    #[test]
    fn bad_values_name_their_key() {
        for (text, needle) in [
            ("floor = 0.0", "`adaptive.floor` = 0"),
            ("floor = 1.5", "`adaptive.floor` = 1.5"),
            ("floor = nan", "`adaptive.floor` = NaN"),
            ("interval_ms = 5", "`adaptive.interval_ms` = 5"),
            ("window_ms = 500", "`adaptive.window_ms` = 500"),
            ("min_samples = 0", "`adaptive.min_samples` = 0"),
            ("target_ms = -1.0", "`adaptive.target_ms` = -1"),
            ("target_ms = inf", "`adaptive.target_ms` = inf"),
            ("target_percentile = 100.0", "`adaptive.target_percentile` = 100"),
            ("max_increase = 0.0", "`adaptive.max_increase` = 0"),
            ("max_decrease = 1.0", "`adaptive.max_decrease` = 1"),
            ("app_limit_headroom = -0.5", "`adaptive.app_limit_headroom`"),
            ("known_reserve = 1.5", "`adaptive.known_reserve` = 1.5"),
            ("known_reserve = nan", "`adaptive.known_reserve` = NaN"),
            ("history = 0", "`adaptive.history` = 0"),
            ("[gradient]\ntolerance = 0.5", "`adaptive.gradient.tolerance` = 0.5"),
            ("[gradient]\nsmoothing = 0.0", "`adaptive.gradient.smoothing` = 0"),
            ("[gradient]\npercentile = 0.0", "`adaptive.gradient.percentile` = 0"),
            ("[gradient]\nlong_window = 0", "`adaptive.gradient.long_window` = 0"),
            ("[vegas]\nalpha = 0.7", "`adaptive.vegas.beta` = 0.6"),
            ("[vegas]\ndecrease = 1.0", "`adaptive.vegas.decrease` = 1"),
            ("[aimd]\nbackoff = 1.0", "`adaptive.aimd.backoff` = 1"),
            ("[aimd]\nincrease = 2.0", "`adaptive.aimd.increase` = 2"),
            ("[source]\nkind = \"http\"\nurl = \"https://example.test/\"", "`adaptive.source.url`"),
            ("[source]\nkind = \"http\"\nurl = \"nonsense\"", "`adaptive.source.url` = \"nonsense\""),
            ("[source]\nkind = \"http\"\nurl = \"http://127.0.0.1/\"\ntimeout_ms = 0", "`adaptive.source.timeout_ms` = 0"),
            ("[source]\nkind = \"tcp\"\naddress = \"localhost\"", "`adaptive.source.address` = \"localhost\""),
            (
                "[source]\nkind = \"tcp\"\naddress = \"127.0.0.1:1\"\ninterval_ms = 1000",
                "`adaptive.min_samples` = 10",
            ),
            (
                "[source]\nkind = \"prometheus\"\nurl = \"http://127.0.0.1/metrics\"\nmetric = \"a_bucket\"",
                "`adaptive.source.metric`",
            ),
            (
                "[source]\nkind = \"prometheus\"\nurl = \"http://127.0.0.1/metrics\"\nmetric = \"1a\"",
                "`adaptive.source.metric` = \"1a\"",
            ),
            (
                "[source]\nkind = \"prometheus\"\nurl = \"http://127.0.0.1/metrics\"\nmetric = \"a\"\nlabels = { le = \"1\" }",
                "`adaptive.source.labels.le`",
            ),
            (
                "[source]\nkind = \"prometheus\"\nurl = \"http://127.0.0.1/metrics\"\nmetric = \"a\"\nquantile = 1.0",
                "`adaptive.source.quantile` = 1",
            ),
            (
                "[source]\nkind = \"prometheus\"\nurl = \"http://127.0.0.1/metrics\"\nmetric = \"a\"\nwindow_ms = 1000",
                "`adaptive.source.window_ms` = 1000",
            ),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(needle), "{text:?}: {err:?} lacks {needle:?}");
        }
    }

    #[test]
    fn unknown_keys_are_refused() {
        for (text, needle) in [
            ("flor = 0.5", "unknown field `flor`"),
            ("algorithm = \"pid\"", "unknown variant `pid`"),
            ("mode = \"fair\"", "unknown variant `fair`, expected `fair_share` or `scale`"),
            ("[gradient]\ntolerence = 2.0", "unknown field `tolerence`"),
            ("[source]\nkind = \"udp\"", "unknown variant `udp`"),
            (
                "[source]\nkind = \"http\"\nurl = \"http://127.0.0.1/\"\nmethod = \"HEAD\"",
                "unknown field `method`",
            ),
            ("[source]\nkind = \"http\"", "missing field `url`"),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(needle), "{text:?}: {err:?} lacks {needle:?}");
        }
    }

    #[test]
    fn an_update_changes_only_what_it_names() {
        let current = AdaptiveConfig { target_ms: Some(50.0), ..AdaptiveConfig::default() };
        let update: ParamsUpdate =
            serde_json::from_str(r#"{"algorithm": "vegas", "vegas": {"beta": 0.6}, "floor": 0.2}"#).unwrap();
        let next = update.apply_to(&current).unwrap();
        assert_eq!(next.algorithm, Algorithm::Vegas);
        assert!((next.vegas.beta - 0.6).abs() < f64::EPSILON);
        assert!((next.floor - 0.2).abs() < f64::EPSILON);
        assert_eq!(next.target_ms, Some(50.0));
        assert_eq!(next.gradient, current.gradient);

        let clear: ParamsUpdate = serde_json::from_str(r#"{"target_ms": null, "enabled": false}"#).unwrap();
        let next = clear.apply_to(&current).unwrap();
        assert_eq!(next.target_ms, None);
        assert!(!next.enabled);
        let empty: ParamsUpdate = serde_json::from_str("{}").unwrap();
        assert_eq!(empty.apply_to(&current).unwrap(), current);
    }

    #[test]
    fn a_bad_update_names_the_field_of_the_body() {
        let current = AdaptiveConfig::default();
        for (body, needle) in [
            (r#"{"floor": 0}"#, "`floor` = 0"),
            (r#"{"gradient": {"tolerance": 0.2}}"#, "`gradient.tolerance` = 0.2"),
            (r#"{"vegas": {"alpha": 0.9}}"#, "`vegas.beta`"),
            (r#"{"aimd": {"backoff": 0}}"#, "`aimd.backoff` = 0"),
            (r#"{"target_ms": 0}"#, "`target_ms` = 0"),
            (r#"{"interval_ms": 100000}"#, "`interval_ms` = 100000"),
        ] {
            let update: ParamsUpdate = serde_json::from_str(body).unwrap();
            let err = update.apply_to(&current).expect_err(body).to_string();
            assert!(err.contains(needle), "{body}: {err:?} lacks {needle:?}");
        }
        for (body, needle) in [
            (r#"{"flor": 0.5}"#, "unknown field `flor`"),
            (r#"{"source": {"kind": "push"}}"#, "`source`"),
            (r#"{"gradient": {"x": 1}}"#, "gradient.x: unknown field `x`"),
            (r#"{"algorithm": "pid"}"#, "unknown variant `pid`"),
            (r#"{"enabled": "on"}"#, "enabled: invalid type"),
        ] {
            let update: ParamsUpdate = serde_json::from_str(body).unwrap();
            let err = update.apply_to(&current).expect_err(body).to_string();
            assert!(err.contains(needle), "{body}: {err:?} lacks {needle:?}");
        }
    }
}
