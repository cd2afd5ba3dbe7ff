//! Latency sources: tasks that measure the protected service and send
//! samples (milliseconds) into a channel.
//!
//! - HTTP: a GET at each interval, each in its own task so that a slow
//!   answer does not delay the next probe. The sample is the time to the
//!   whole response; a timeout, a 5xx or any failure (a refused connection
//!   included) is a sample equal to the timeout: the service is slow, not
//!   silent.
//! - TCP: a connect at each interval, same rules.
//! - Prometheus: a scrape at each interval of a histogram; the sample is the
//!   quantile of the requests counted over the window (from the increase of
//!   the bucket counters). A failed scrape gives no sample.
//!
//! The HTTP client is hyper's, over the same hyper the admin API serves with:
//! plain HTTP/1.1, no TLS stack, no extra dependency tree.

use std::{
    collections::{BTreeMap, VecDeque},
    net::SocketAddr,
    sync::Arc,
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use tokio::{
    net::TcpStream,
    sync::{mpsc, Semaphore},
    task::JoinSet,
    time::{Instant, MissedTickBehavior},
};

use super::config::{HistogramUnit, HttpSource, PrometheusSource, SourceConfig, TcpSource};

/// Most probes in flight at once; past it a tick is skipped.
const MAX_IN_FLIGHT: usize = 64;
/// Largest metrics page read.
const MAX_SCRAPE_BYTES: usize = 16 << 20;

/// Why a scrape or a probe failed.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    #[error("request failed: {0}")]
    Request(#[from] hyper_util::client::legacy::Error),
    #[error("reading the body failed: {0}")]
    Body(Box<dyn std::error::Error + Send + Sync>),
    #[error("answered {0}")]
    Status(http::StatusCode),
    #[error("the body is not UTF-8")]
    NotText,
    #[error("no bucket of histogram `{0}` matches")]
    NoSeries(String),
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1_000.0
}

/// Starts the task of `source` (none for `push`), sending samples to `tx`.
/// The task ends when `tx`'s receiver is gone.
#[must_use = "the task stops when its handle is aborted"]
pub fn spawn_source(source: &SourceConfig, tx: mpsc::Sender<f64>) -> Option<tokio::task::JoinHandle<()>> {
    match source {
        SourceConfig::Http(http) => Some(tokio::spawn(run_http(http.clone(), tx))),
        SourceConfig::Tcp(tcp) => Some(tokio::spawn(run_tcp(tcp.clone(), tx))),
        SourceConfig::Prometheus(prom) => Some(tokio::spawn(run_prometheus(prom.clone(), tx))),
        SourceConfig::Push => None,
    }
}

/// Runs `probe` every `interval`, each in its own task, sending its sample.
async fn run_concurrent<F, Fut>(interval: Duration, tx: mpsc::Sender<f64>, probe: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = f64> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut running = JoinSet::new();
    loop {
        ticker.tick().await;
        while running.try_join_next().is_some() {}
        if tx.is_closed() {
            return;
        }
        let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
            continue;
        };
        let tx = tx.clone();
        let fut = probe();
        running.spawn(async move {
            let sample = fut.await;
            // A full channel drops the sample: the controller is behind.
            let _ = tx.try_send(sample);
            drop(permit);
        });
    }
}

async fn run_http(source: HttpSource, tx: mpsc::Sender<f64>) {
    let Ok(uri) = source.url.parse::<http::Uri>() else {
        tracing::error!(url = source.url, "latency probe: not a URL");
        return;
    };
    let client = client();
    let timeout = Duration::from_millis(source.timeout_ms);
    run_concurrent(Duration::from_millis(source.interval_ms), tx, || {
        let client = client.clone();
        let uri = uri.clone();
        async move { http_probe(&client, uri, timeout).await }
    })
    .await;
}

async fn run_tcp(source: TcpSource, tx: mpsc::Sender<f64>) {
    let Ok(addr) = source.address.parse::<SocketAddr>() else {
        tracing::error!(address = source.address, "latency probe: not an address");
        return;
    };
    let timeout = Duration::from_millis(source.timeout_ms);
    run_concurrent(Duration::from_millis(source.interval_ms), tx, || tcp_probe(addr, timeout)).await;
}

/// One HTTP probe: the milliseconds to the whole answer, or `timeout` for a
/// timeout, a 5xx or a failure.
pub async fn http_probe(client: &HttpClient, uri: http::Uri, timeout: Duration) -> f64 {
    let start = Instant::now();
    let exchange = async {
        let response = client.get(uri).await?;
        let status = response.status();
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            frame.map_err(|err| ProbeError::Body(Box::new(err)))?;
        }
        if status.is_server_error() {
            return Err(ProbeError::Status(status));
        }
        Ok::<_, ProbeError>(())
    };
    match tokio::time::timeout(timeout, exchange).await {
        Ok(Ok(())) => ms(start.elapsed()).min(ms(timeout)),
        Ok(Err(err)) => {
            tracing::debug!("latency probe: {err}; counted as {timeout:?}");
            ms(timeout)
        }
        Err(_) => ms(timeout),
    }
}

/// One TCP connect probe: the milliseconds to connect, or `timeout` for a
/// timeout or a failure.
pub async fn tcp_probe(addr: SocketAddr, timeout: Duration) -> f64 {
    let start = Instant::now();
    match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => {
            let took = ms(start.elapsed());
            drop(stream);
            took.min(ms(timeout))
        }
        Ok(Err(err)) => {
            tracing::debug!(%addr, "latency probe: {err}; counted as {timeout:?}");
            ms(timeout)
        }
        Err(_) => ms(timeout),
    }
}

/// GETs `uri` and returns its body as text (a 2xx only).
pub async fn fetch_text(
    client: &HttpClient,
    uri: http::Uri,
    timeout: Duration,
) -> Result<String, ProbeError> {
    let exchange = async {
        let response = client.get(uri).await?;
        let status = response.status();
        if !status.is_success() {
            return Err(ProbeError::Status(status));
        }
        let body = Limited::new(response.into_body(), MAX_SCRAPE_BYTES)
            .collect()
            .await
            .map_err(ProbeError::Body)?
            .to_bytes();
        String::from_utf8(body.to_vec()).map_err(|_| ProbeError::NotText)
    };
    tokio::time::timeout(timeout, exchange).await.map_err(|_| ProbeError::Timeout(timeout))?
}

async fn run_prometheus(source: PrometheusSource, tx: mpsc::Sender<f64>) {
    let Ok(uri) = source.url.parse::<http::Uri>() else {
        tracing::error!(url = source.url, "latency scrape: not a URL");
        return;
    };
    let client = client();
    let timeout = Duration::from_millis(source.timeout_ms);
    let mut window = HistogramWindow::new(Duration::from_millis(source.window_ms));
    let mut ticker = tokio::time::interval(Duration::from_millis(source.interval_ms));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut failing = false;
    loop {
        ticker.tick().await;
        if tx.is_closed() {
            return;
        }
        let scraped = fetch_text(&client, uri.clone(), timeout)
            .await
            .and_then(|text| parse_histogram(&text, &source.metric, &source.labels));
        match scraped {
            Ok(buckets) => {
                if failing {
                    tracing::info!(url = source.url, "latency scrape works again");
                    failing = false;
                }
                if let Some(q) = window.push(Instant::now(), buckets, source.quantile) {
                    let sample = match source.unit {
                        HistogramUnit::Seconds => q * 1_000.0,
                        HistogramUnit::Milliseconds => q,
                    };
                    let _ = tx.try_send(sample);
                }
            }
            Err(err) => {
                if !failing {
                    tracing::warn!(url = source.url, "latency scrape failed: {err}");
                    failing = true;
                }
            }
        }
    }
}

/// Cumulative bucket counts of a histogram: `(le, count)` ascending by `le`.
pub type Buckets = Vec<(f64, f64)>;

/// Reads the `<metric>_bucket` series of a Prometheus text page whose labels
/// include every `matchers` pair, and adds their buckets up by `le`.
pub fn parse_histogram(
    text: &str,
    metric: &str,
    matchers: &BTreeMap<String, String>,
) -> Result<Buckets, ProbeError> {
    let name = format!("{metric}_bucket");
    let mut sums: Buckets = Vec::new();
    for line in text.lines() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((series, labels, value)) = parse_line(line) else {
            continue;
        };
        if series != name || !matchers.iter().all(|(k, v)| labels.iter().any(|(lk, lv)| lk == k && lv == v)) {
            continue;
        }
        let Some(le) = labels.iter().find(|(k, _)| k == "le").and_then(|(_, v)| parse_value(v)) else {
            continue;
        };
        if le.is_nan() || !value.is_finite() {
            continue;
        }
        match sums.iter_mut().find(|(b, _)| b.total_cmp(&le).is_eq()) {
            Some((_, count)) => *count += value,
            None => sums.push((le, value)),
        }
    }
    if sums.is_empty() {
        return Err(ProbeError::NoSeries(metric.to_owned()));
    }
    sums.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(sums)
}

/// A float in the exposition format (`+Inf`, `-Inf`, `NaN` included).
fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        "NaN" => Some(f64::NAN),
        _ => text.parse().ok(),
    }
}

/// The labels of a series, as written.
type Labels = Vec<(String, String)>;

/// `name{k="v",...} value [timestamp]`.
fn parse_line(line: &str) -> Option<(&str, Labels, f64)> {
    let end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let (name, mut rest) = line.split_at(end);
    let mut labels = Vec::new();
    if let Some(body) = rest.strip_prefix('{') {
        let mut chars = body.char_indices().peekable();
        let close = loop {
            while chars.next_if(|(_, c)| c.is_whitespace() || *c == ',').is_some() {}
            let &(start, c) = chars.peek()?;
            if c == '}' {
                break start;
            }
            let mut key_end = start;
            while let Some(&(i, c)) = chars.peek() {
                if c == '=' || c.is_whitespace() {
                    key_end = i;
                    break;
                }
                chars.next();
            }
            let key = body.get(start..key_end)?.to_owned();
            while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
            chars.next_if(|(_, c)| *c == '=')?;
            while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
            chars.next_if(|(_, c)| *c == '"')?;
            let mut value = String::new();
            loop {
                let (_, c) = chars.next()?;
                match c {
                    '"' => break,
                    '\\' => match chars.next()?.1 {
                        'n' => value.push('\n'),
                        other => value.push(other),
                    },
                    other => value.push(other),
                }
            }
            labels.push((key, value));
        };
        rest = body.get(close + 1..)?;
    }
    let value = parse_value(rest.split_whitespace().next()?)?;
    Some((name, labels, value))
}

/// The quantile `q` of cumulative `buckets` (as Prometheus'
/// `histogram_quantile`: linear within a bucket; in the `+Inf` bucket, the
/// largest finite bound). None without any request.
#[must_use]
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if !(total > 0.0 && q.is_finite()) {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total;
    let index = buckets.iter().position(|&(_, count)| count >= rank)?;
    let (le, count) = buckets[index];
    let (lower, below) = if index == 0 { (0.0_f64.min(le), 0.0) } else { buckets[index - 1] };
    if le.is_infinite() {
        return Some(if index == 0 { 0.0 } else { lower });
    }
    if count <= below {
        return Some(le);
    }
    Some(lower + (le - lower) * (rank - below) / (count - below))
}

/// Snapshots of a histogram over a time window, giving the quantile of the
/// requests counted within it.
#[derive(Debug)]
pub struct HistogramWindow {
    window: Duration,
    snapshots: VecDeque<(Instant, Buckets)>,
}

impl HistogramWindow {
    #[must_use]
    pub fn new(window: Duration) -> Self {
        Self { window, snapshots: VecDeque::new() }
    }

    /// Adds a scrape taken at `now` and returns the quantile `q` of the
    /// requests counted since the base scrape: the newest one at least the
    /// window old (the oldest kept, early on). None for the
    /// first scrape, when nothing was counted, or when a counter went
    /// backwards (the service restarted: the history starts over).
    pub fn push(&mut self, now: Instant, buckets: Buckets, q: f64) -> Option<f64> {
        while self.snapshots.len() > 1
            && self.snapshots.get(1).is_some_and(|(at, _)| now.saturating_duration_since(*at) >= self.window)
        {
            self.snapshots.pop_front();
        }
        let delta = self.snapshots.front().map(|(_, old)| {
            buckets
                .iter()
                .map(|&(le, count)| {
                    let before = old.iter().find(|(b, _)| b.total_cmp(&le).is_eq()).map_or(0.0, |&(_, c)| c);
                    (le, count - before)
                })
                .collect::<Buckets>()
        });
        let reset = delta.as_ref().is_some_and(|d| d.iter().any(|&(_, c)| c < 0.0));
        if reset {
            self.snapshots.clear();
        }
        self.snapshots.push_back((now, buckets));
        if reset {
            return None;
        }
        quantile(&delta?, q)
    }
}

#[cfg(test)]
mod tests {
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpListener,
    };

    use super::*;

    /// A server on 127.0.0.1 answering each connection with `response` after
    /// `delay` (never, with `None`).
    async fn server(response: &'static str, delay: Option<Duration>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0_u8; 4096];
                    let _ = stream.read(&mut buf).await;
                    match delay {
                        Some(delay) => {
                            tokio::time::sleep(delay).await;
                            let _ = stream.write_all(response.as_bytes()).await;
                        }
                        None => tokio::time::sleep(Duration::from_secs(3600)).await,
                    }
                });
            }
        });
        addr
    }

    /// An address where nothing listens.
    async fn refused() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    }

    const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok";
    const UNAVAILABLE: &str =
        "HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
    const NOT_FOUND: &str = "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";

    fn uri(addr: SocketAddr) -> http::Uri {
        format!("http://{addr}/health").parse().unwrap()
    }

    #[tokio::test]
    async fn http_answers_are_timed_and_failures_are_slow() {
        let client = client();
        let timeout = Duration::from_millis(300);
        let fast = http_probe(&client, uri(server(OK, Some(Duration::ZERO)).await), timeout).await;
        assert!(fast < 300.0, "{fast}");
        let slowish =
            http_probe(&client, uri(server(OK, Some(Duration::from_millis(50))).await), timeout).await;
        assert!((50.0..300.0).contains(&slowish), "{slowish}");
        let not_found =
            http_probe(&client, uri(server(NOT_FOUND, Some(Duration::ZERO)).await), timeout).await;
        assert!(not_found < 300.0, "a 4xx is an answer: {not_found}");
        for (what, addr) in [
            ("5xx", server(UNAVAILABLE, Some(Duration::ZERO)).await),
            ("no answer", server(OK, None).await),
            ("refused", refused().await),
        ] {
            let sample = http_probe(&client, uri(addr), timeout).await;
            assert!((sample - 300.0).abs() < f64::EPSILON, "{what}: {sample}");
        }
    }

    #[tokio::test]
    async fn tcp_connects_are_timed_and_refusals_are_slow() {
        let timeout = Duration::from_millis(200);
        let ok = tcp_probe(server(OK, Some(Duration::ZERO)).await, timeout).await;
        assert!(ok < 200.0, "{ok}");
        let refused = tcp_probe(refused().await, timeout).await;
        assert!((refused - 200.0).abs() < f64::EPSILON, "{refused}");
    }

    #[tokio::test]
    async fn a_probe_source_sends_samples_until_its_receiver_goes() {
        let addr = server(OK, Some(Duration::ZERO)).await;
        let (tx, mut rx) = mpsc::channel(16);
        let source =
            SourceConfig::Tcp(TcpSource { address: addr.to_string(), interval_ms: 10, timeout_ms: 500 });
        let task = spawn_source(&source, tx).unwrap();
        for _ in 0..3 {
            let sample = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
            assert!(sample < 500.0);
        }
        drop(rx);
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();
        assert!(spawn_source(&SourceConfig::Push, mpsc::channel(1).0).is_none());
    }

    const PAGE: &str = r#"# HELP http_request_duration_seconds Request latency.
# TYPE http_request_duration_seconds histogram
http_request_duration_seconds_bucket{route="/api",le="0.01"} 10
http_request_duration_seconds_bucket{route="/api",le="0.1"} 90
http_request_duration_seconds_bucket{route="/api",le="1"} 100
http_request_duration_seconds_bucket{route="/api",le="+Inf"} 100
http_request_duration_seconds_bucket{ le="0.01", route="/x\"y\\z" } 1000 1700000000000
http_request_duration_seconds_bucket{route="/x\"y\\z",le="+Inf"} 1000
http_request_duration_seconds_sum{route="/api"} 4.5
http_request_duration_seconds_count{route="/api"} 100
other_bucket{le="1"} 5
"#;

    #[test]
    fn histogram_lines_are_selected_by_labels_and_added_up() {
        let api = BTreeMap::from([("route".to_owned(), "/api".to_owned())]);
        let buckets = parse_histogram(PAGE, "http_request_duration_seconds", &api).unwrap();
        assert_eq!(buckets, vec![(0.01, 10.0), (0.1, 90.0), (1.0, 100.0), (f64::INFINITY, 100.0)]);
        let odd = BTreeMap::from([("route".to_owned(), "/x\"y\\z".to_owned())]);
        let buckets = parse_histogram(PAGE, "http_request_duration_seconds", &odd).unwrap();
        assert_eq!(buckets, vec![(0.01, 1000.0), (f64::INFINITY, 1000.0)]);
        let all = parse_histogram(PAGE, "http_request_duration_seconds", &BTreeMap::new()).unwrap();
        assert_eq!(all[0], (0.01, 1010.0));
        assert!(matches!(parse_histogram(PAGE, "missing", &BTreeMap::new()), Err(ProbeError::NoSeries(_))));
        // Garbage never panics.
        for line in [
            "x_bucket{",
            "x_bucket{le=\"1\"",
            "x_bucket{le=1} 2",
            "x_bucket{le=\"1\"} nope",
            "{}",
            "x_bucket{le=\"\\",
        ] {
            assert!(parse_histogram(line, "x", &BTreeMap::new()).is_err(), "{line}");
        }
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let buckets = [(0.01, 10.0), (0.1, 90.0), (1.0, 100.0), (f64::INFINITY, 100.0)];
        assert!((quantile(&buckets, 0.5).unwrap() - 0.055).abs() < 1e-9);
        assert!((quantile(&buckets, 0.05).unwrap() - 0.005).abs() < 1e-9);
        assert!((quantile(&buckets, 0.99).unwrap() - 0.91).abs() < 1e-9);
        let overflow = [(0.1, 1.0), (f64::INFINITY, 100.0)];
        assert_eq!(quantile(&overflow, 0.99), Some(0.1));
        assert_eq!(quantile(&[(0.1, 0.0), (f64::INFINITY, 0.0)], 0.5), None);
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn the_window_uses_increases_and_starts_over_on_a_reset() {
        let start = Instant::now();
        let at = |s: u64| start + Duration::from_secs(s);
        let mut window = HistogramWindow::new(Duration::from_secs(10));
        assert_eq!(window.push(at(0), vec![(0.1, 100.0), (1.0, 100.0)], 0.5), None);
        // 100 new requests, all between 0.1 and 1.
        let q = window.push(at(5), vec![(0.1, 100.0), (1.0, 200.0)], 0.5).unwrap();
        assert!((q - 0.55).abs() < 1e-9, "{q}");
        // The base is the newest scrape at least the window old: still the first.
        let q = window.push(at(12), vec![(0.1, 200.0), (1.0, 300.0)], 0.5).unwrap();
        assert!((q - 0.1).abs() < 1e-9, "{q}");
        assert_eq!(window.push(at(13), vec![(0.1, 1.0), (1.0, 1.0)], 0.5), None);
        assert_eq!(window.push(at(14), vec![(0.1, 1.0), (1.0, 1.0)], 0.5), None, "nothing counted");
    }

    #[tokio::test]
    async fn a_scrape_source_sends_the_windowed_quantile() {
        // Every scrape sees 100 more requests, all in the 0.1 s..1 s bucket.
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut n = 0_u64;
            while let Ok((mut stream, _)) = listener.accept().await {
                n += 100;
                let body = format!(
                    "lat_bucket{{le=\"0.1\"}} 0\nlat_bucket{{le=\"1\"}} {n}\nlat_bucket{{le=\"+Inf\"}} {n}\n"
                );
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let mut buf = [0_u8; 4096];
                let _ = stream.read(&mut buf).await;
                let _ = stream.write_all(response.as_bytes()).await;
            }
        });
        let (tx, mut rx) = mpsc::channel(4);
        let source = SourceConfig::Prometheus(PrometheusSource {
            url: format!("http://{addr}/metrics"),
            metric: "lat".into(),
            labels: BTreeMap::new(),
            quantile: 0.5,
            window_ms: 10_000,
            interval_ms: 100,
            timeout_ms: 1_000,
            unit: HistogramUnit::Seconds,
        });
        let _task = spawn_source(&source, tx).unwrap();
        let sample = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap().unwrap();
        assert!((sample - 550.0).abs() < 1e-6, "{sample}");
    }
}
