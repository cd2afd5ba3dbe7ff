//! A real HTTP/1.1 service whose latency grows with load, and the clients
//! that load it from other addresses.
//!
//! The [`Service`] has a fixed pool of workers behind a bounded queue: each
//! request costs a fixed amount of CPU (hashing, measured on the worker's own
//! CPU clock, so that CPU contention slows it down like any real work) and
//! then a fixed wait (a downstream call). Once every worker is busy, requests
//! wait in the queue, so the latency grows with the load; once the queue is
//! full, a request is refused at once with `503`. hyper serves the
//! connections (HTTP/1.1 keep-alive, or `Connection: close`) on a runtime of
//! its own; the workers are threads.
//!
//! [`Load`] runs clients in a namespace, each a task on one runtime, every
//! connection made from the client's own source address: [`Client::light`]
//! opens a new connection per request at a fixed pace, [`Client::heavy`]
//! keeps one connection busy back to back. Every exchange is recorded with
//! its outcome and latency.

use std::{
    convert::Infallible,
    mem,
    net::{IpAddr, SocketAddr, TcpListener},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, Receiver, SyncSender},
        Arc, Mutex, PoisonError,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    body::Incoming,
    header::{HeaderValue, CONNECTION, CONTENT_TYPE},
    server::conn::http1,
    service::service_fn,
    Request, Response, StatusCode, Version,
};
use hyper_util::rt::TokioIo;
use tokio::{
    runtime::Runtime,
    sync::{oneshot, watch},
    task::JoinSet,
};

use crate::{clock_ns, http, mono_ns, Netns};

/// How often idle workers look at their stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);
/// The `Host` the clients name.
const HOST: &str = "service";
/// Threads of the service's and of the clients' runtimes.
const RUNTIME_THREADS: usize = 2;

/// The shape of a [`Service`].
#[derive(Debug, Clone, Copy)]
pub struct ServiceConfig {
    /// TCP port, on every address of the namespace.
    pub port: u16,
    /// Requests worked on at once.
    pub workers: usize,
    /// Requests that may wait for a worker; one more is refused with 503.
    pub queue: usize,
    /// CPU time each request costs (hashing on the worker's CPU clock).
    pub cpu: Duration,
    /// Wall time each request then waits (a downstream call).
    pub wait: Duration,
}

/// What a [`Service`] answered so far.
#[derive(Debug, Default)]
struct ServiceStats {
    served: AtomicU64,
    refused: AtomicU64,
}

/// One request handed to a worker; the worker answers on `done`.
struct Job {
    done: oneshot::Sender<()>,
}

/// A running HTTP service in a namespace; its threads stop when it drops.
#[derive(Debug)]
pub struct Service {
    config: ServiceConfig,
    stop: Arc<AtomicBool>,
    shutdown: Option<oneshot::Sender<()>>,
    stats: Arc<ServiceStats>,
    threads: Vec<JoinHandle<()>>,
}

impl Service {
    /// Starts the service in `ns`, listening on `0.0.0.0:port` (the
    /// namespace's loopback included); returns once it accepts connections.
    #[must_use]
    pub fn start(ns: &Netns, config: ServiceConfig) -> Self {
        let listener = ns.run(|| {
            TcpListener::bind(("0.0.0.0", config.port))
                .unwrap_or_else(|e| panic!("bind the service to port {}: {e}", config.port))
        });
        Self::on(listener, config)
    }

    /// Starts the service on `listener`, in whatever namespace it was made.
    fn on(listener: TcpListener, config: ServiceConfig) -> Self {
        assert!(config.workers >= 1 && config.queue >= 1, "a service needs a worker and a queue");
        listener.set_nonblocking(true).expect("a non-blocking listener");
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(ServiceStats::default());
        let (jobs, queue) = mpsc::sync_channel::<Job>(config.queue);
        let queue = Arc::new(Mutex::new(queue));
        let mut threads: Vec<JoinHandle<()>> = (0..config.workers)
            .map(|i| {
                let (queue, stop) = (Arc::clone(&queue), Arc::clone(&stop));
                thread::Builder::new()
                    .name(format!("svc-worker-{i}"))
                    .spawn(move || work(&queue, &stop, config))
                    .expect("spawn a worker")
            })
            .collect();
        let (shutdown, stopped) = oneshot::channel();
        let http_stats = Arc::clone(&stats);
        threads.push(
            thread::Builder::new()
                .name("svc-http".to_owned())
                .spawn(move || {
                    let runtime = runtime("svc-http");
                    runtime.block_on(serve(listener, jobs, http_stats, stopped));
                    // Connections still open are dropped with the runtime.
                    runtime.shutdown_timeout(STOP_POLL);
                })
                .expect("spawn the service's runtime"),
        );
        Self { config, stop, shutdown: Some(shutdown), stats, threads }
    }

    /// Its configuration.
    #[must_use]
    pub fn config(&self) -> ServiceConfig {
        self.config
    }

    /// Requests answered 200 so far.
    #[must_use]
    pub fn served(&self) -> u64 {
        self.stats.served.load(Ordering::Relaxed)
    }

    /// Requests refused with 503 so far (the queue was full).
    #[must_use]
    pub fn refused(&self) -> u64 {
        self.stats.refused.load(Ordering::Relaxed)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        self.stop.store(true, Ordering::Relaxed);
        for thread in mem::take(&mut self.threads) {
            let _ = thread.join();
        }
    }
}

/// A multi-threaded tokio runtime; its threads are made by the calling
/// thread, in its network namespace.
fn runtime(name: &str) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(RUNTIME_THREADS)
        .thread_name(name)
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("a tokio runtime for {name}: {e}"))
}

/// A worker: takes jobs until told to stop.
fn work(queue: &Mutex<Receiver<Job>>, stop: &AtomicBool, config: ServiceConfig) {
    while !stop.load(Ordering::Relaxed) {
        let job = queue.lock().unwrap_or_else(PoisonError::into_inner).recv_timeout(STOP_POLL);
        let Ok(job) = job else { continue };
        burn_cpu(config.cpu);
        thread::sleep(config.wait);
        let _ = job.done.send(());
    }
}

/// Hashes until this thread has spent `cpu` on it.
fn burn_cpu(cpu: Duration) {
    let thread_cpu_ns = || clock_ns(libc::CLOCK_THREAD_CPUTIME_ID);
    let end = thread_cpu_ns() + u64::try_from(cpu.as_nanos()).unwrap_or(u64::MAX);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    while thread_cpu_ns() < end {
        for i in 0..256u64 {
            // FNV-1a over a counter.
            h = (h ^ i).wrapping_mul(0x0100_0000_01b3);
        }
        h = std::hint::black_box(h);
    }
}

/// Accepts connections until told to stop, and serves each on a task.
async fn serve(
    listener: TcpListener,
    jobs: SyncSender<Job>,
    stats: Arc<ServiceStats>,
    mut stop: oneshot::Receiver<()>,
) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("a listener for the runtime");
    loop {
        let stream = tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(_) => continue,
            },
        };
        let _ = stream.set_nodelay(true);
        let (jobs, stats) = (jobs.clone(), Arc::clone(&stats));
        tokio::spawn(async move {
            let answer = service_fn(move |request| answer(request, jobs.clone(), Arc::clone(&stats)));
            // A connection ends when the client closes it or asks to.
            let _ = http1::Builder::new().serve_connection(TokioIo::new(stream), answer).await;
        });
    }
}

/// Answers one request: 200 once a worker did it, or 503 at once when the
/// queue is full. A request body is not read: the service takes GETs.
async fn answer(
    request: Request<Incoming>,
    jobs: SyncSender<Job>,
    stats: Arc<ServiceStats>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (done, finished) = oneshot::channel();
    let served = match jobs.try_send(Job { done }) {
        Ok(()) => finished.await.is_ok(),
        Err(_) => false,
    };
    let (code, body) = if served {
        stats.served.fetch_add(1, Ordering::Relaxed);
        (StatusCode::OK, "ok\n")
    } else {
        stats.refused.fetch_add(1, Ordering::Relaxed);
        (StatusCode::SERVICE_UNAVAILABLE, "busy\n")
    };
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = code;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    if wants_close(&request) {
        // hyper closes the connection after this answer, and says so.
        response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    }
    Ok(response)
}

/// Whether the client asked for the connection to close after the answer:
/// `Connection: close`, or HTTP/1.0 without `Connection: keep-alive`.
fn wants_close<B>(request: &Request<B>) -> bool {
    let has = |token: &str| {
        request.headers().get_all(CONNECTION).iter().any(|value| {
            value.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    has("close") || (request.version() == Version::HTTP_10 && !has("keep-alive"))
}

/// How one exchange ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A 200.
    Ok,
    /// A 503: the service's queue was full.
    Refused,
    /// Anything else: a timeout, a refused or reset connection, another
    /// status.
    Failed,
}

/// One request of a client, from the start of its connection (for a new
/// one) to the end of the answer.
#[derive(Debug, Clone, Copy)]
pub struct Exchange {
    pub src: IpAddr,
    /// Monotonic instants (see [`mono_ns`]).
    pub start_ns: u64,
    pub end_ns: u64,
    pub outcome: Outcome,
}

impl Exchange {
    /// The latency in milliseconds.
    #[must_use]
    #[expect(clippy::cast_precision_loss, reason = "latencies of a test fit in f64's 52-bit mantissa")]
    pub fn latency_ms(&self) -> f64 {
        self.end_ns.saturating_sub(self.start_ns) as f64 / 1e6
    }
}

/// How a client sends.
#[derive(Debug, Clone, Copy)]
enum Pace {
    /// A new connection per request, one request every `every` (or right
    /// after the previous one when that took longer).
    Light { every: Duration, after: Duration },
    /// One connection kept alive, requests back to back; after a 503 it waits
    /// `pause` before asking again.
    Heavy { pause: Duration },
}

/// One client: a task and a source address.
#[derive(Debug, Clone, Copy)]
pub struct Client {
    src: IpAddr,
    dst: SocketAddr,
    pace: Pace,
    timeout: Duration,
}

impl Client {
    /// A light client: from `src`, a new connection to `dst` per request,
    /// one request every `every`.
    #[must_use]
    pub fn light(src: IpAddr, dst: SocketAddr, every: Duration) -> Self {
        Self { src, dst, pace: Pace::Light { every, after: Duration::ZERO }, timeout: Duration::from_secs(2) }
    }

    /// One connection of a heavy client: from `src`, requests back to back on
    /// a kept-alive connection to `dst` (a new one when it fails), waiting
    /// `pause` after a 503.
    #[must_use]
    pub fn heavy(src: IpAddr, dst: SocketAddr, pause: Duration) -> Self {
        Self { src, dst, pace: Pace::Heavy { pause }, timeout: Duration::from_secs(2) }
    }

    /// Delays a light client's first request (to spread several out).
    #[must_use]
    pub fn after(mut self, delay: Duration) -> Self {
        if let Pace::Light { after, .. } = &mut self.pace {
            *after = delay;
        }
        self
    }

    /// How long connecting, and waiting for an answer, may take (2 s by
    /// default): past it the exchange failed.
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// A new connection from the client's address.
    async fn connect(&self) -> Result<http::Connection, http::Error> {
        http::connect(Some(self.src), self.dst, self.timeout).await
    }

    async fn run(self, mut stop: watch::Receiver<bool>) -> Vec<Exchange> {
        let mut log = Vec::new();
        match self.pace {
            Pace::Light { every, after } => {
                let every_ns = u64::try_from(every.as_nanos()).unwrap_or(u64::MAX);
                let mut next = mono_ns() + u64::try_from(after.as_nanos()).unwrap_or(0);
                while sleep_until(next, &mut stop).await {
                    let start_ns = mono_ns();
                    let outcome = match self.connect().await {
                        Ok(mut connection) => {
                            match http::get(&mut connection, HOST, "/", true, self.timeout).await {
                                Ok(response) => outcome_of(response.status),
                                Err(_) => Outcome::Failed,
                            }
                        }
                        Err(_) => Outcome::Failed,
                    };
                    let end_ns = mono_ns();
                    log.push(Exchange { src: self.src, start_ns, end_ns, outcome });
                    next = (next + every_ns).max(end_ns);
                }
            }
            Pace::Heavy { pause } => {
                let mut kept: Option<http::Connection> = None;
                while !*stop.borrow() {
                    let start_ns = mono_ns();
                    let connection = match kept.take() {
                        Some(connection) => Ok(connection),
                        None => self.connect().await,
                    };
                    let outcome = match connection {
                        Ok(mut connection) => {
                            match http::get(&mut connection, HOST, "/", false, self.timeout).await {
                                Ok(response) => {
                                    if !response.close {
                                        kept = Some(connection);
                                    }
                                    outcome_of(response.status)
                                }
                                Err(_) => Outcome::Failed,
                            }
                        }
                        Err(_) => Outcome::Failed,
                    };
                    log.push(Exchange { src: self.src, start_ns, end_ns: mono_ns(), outcome });
                    if outcome == Outcome::Refused {
                        tokio::time::sleep(pause).await;
                    }
                }
            }
        }
        log
    }
}

fn outcome_of(status: StatusCode) -> Outcome {
    match status {
        StatusCode::OK => Outcome::Ok,
        StatusCode::SERVICE_UNAVAILABLE => Outcome::Refused,
        _ => Outcome::Failed,
    }
}

/// Sleeps until monotonic instant `at`; false when told to stop first.
async fn sleep_until(at: u64, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return false;
    }
    let wait = Duration::from_nanos(at.saturating_sub(mono_ns()));
    tokio::select! {
        () = tokio::time::sleep(wait) => true,
        _ = stop.wait_for(|stopped| *stopped) => false,
    }
}

/// Runs `clients` until `stop` says so; every exchange, in no particular
/// order.
async fn run_clients(clients: Vec<Client>, stop: watch::Receiver<bool>) -> Vec<Exchange> {
    let mut tasks = JoinSet::new();
    for client in clients {
        tasks.spawn(client.run(stop.clone()));
    }
    let mut exchanges = Vec::new();
    while let Some(log) = tasks.join_next().await {
        exchanges.extend(log.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())));
    }
    exchanges
}

/// Clients running in a namespace, each a task of one runtime; they stop
/// when this drops.
#[derive(Debug)]
pub struct Load {
    stop: watch::Sender<bool>,
    thread: Option<JoinHandle<Vec<Exchange>>>,
}

impl Load {
    /// Starts `clients` in `ns`.
    #[must_use]
    pub fn start(ns: &Netns, clients: Vec<Client>) -> Self {
        let (stop, stopped) = watch::channel(false);
        // The runtime's threads are made in the namespace, and so are the
        // clients' sockets.
        let thread = ns.spawn("load", move || runtime("load").block_on(run_clients(clients, stopped)));
        Self { stop, thread: Some(thread) }
    }

    /// Stops every client (each finishes the exchange it is in) and returns
    /// every exchange, in no particular order.
    #[must_use]
    pub fn stop(mut self) -> Vec<Exchange> {
        self.stop.send_replace(true);
        let thread = self.thread.take().expect("stopped once");
        thread.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.send_replace(true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The nearest-rank percentile `p` (0..=100) of `values`; NaN when empty.
#[must_use]
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted.sort_by(f64::total_cmp);
    #[expect(clippy::cast_precision_loss, reason = "sample counts of a test fit in f64's 52-bit mantissa")]
    let rank = (p.clamp(0.0, 100.0) / 100.0 * sorted.len() as f64).ceil();
    #[expect(clippy::cast_sign_loss, reason = "rank is not negative")]
    let index = (rank as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    /// A service on this namespace's loopback, loaded by clients of its own:
    /// what the queue cannot hold is refused, the rest served in turn.
    #[test]
    fn the_service_serves_its_capacity_and_refuses_the_rest() {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the loopback");
        let dst = listener.local_addr().expect("bound");
        let config = ServiceConfig {
            port: dst.port(),
            workers: 1,
            queue: 1,
            cpu: Duration::ZERO,
            wait: Duration::from_millis(50),
        };
        let service = Service::on(listener, config);
        // Two sources on the loopback's 127/8: the light client and the heavy one.
        let (light, heavy) = (IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), IpAddr::V4(Ipv4Addr::LOCALHOST));
        let clients = vec![
            Client::light(light, dst, Duration::from_millis(100)),
            Client::heavy(heavy, dst, Duration::from_millis(10)),
            Client::heavy(heavy, dst, Duration::from_millis(10)),
            Client::heavy(heavy, dst, Duration::from_millis(10)),
        ];
        let (stop, stopped) = watch::channel(false);
        let runtime = runtime("test-load");
        let exchanges = runtime.block_on(async {
            let load = tokio::spawn(run_clients(clients, stopped));
            tokio::time::sleep(Duration::from_secs(1)).await;
            stop.send_replace(true);
            load.await.expect("the clients")
        });
        let count = |outcome| exchanges.iter().filter(|e| e.outcome == outcome).count();
        let (ok, refused, failed) = (count(Outcome::Ok), count(Outcome::Refused), count(Outcome::Failed));
        // One worker at 50 ms a request: about 20 a second, whoever asks.
        assert!((10..=25).contains(&ok), "{ok} served, {refused} refused, {failed} failed");
        assert!(refused > 0 && failed == 0, "{ok} served, {refused} refused, {failed} failed");
        assert_eq!((service.served(), service.refused()), (ok as u64, refused as u64));
        // The light client asked every 100 ms, on a new connection each time.
        let light: Vec<&Exchange> = exchanges.iter().filter(|e| e.src == light).collect();
        assert!((8..=11).contains(&light.len()), "{light:?}");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert!((percentile(&values, 50.0) - 50.0).abs() < f64::EPSILON);
        assert!((percentile(&values, 99.0) - 99.0).abs() < f64::EPSILON);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
