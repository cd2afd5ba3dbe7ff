//! A real HTTP/1.1 service whose latency grows with load, the clients that
//! load it from other addresses, and a plain client for the daemon's admin
//! API.
//!
//! The [`Service`] has a fixed pool of workers behind a bounded queue: each
//! request costs a fixed amount of CPU (hashing, measured on the worker's own
//! CPU clock, so that CPU contention slows it down like any real work) and
//! then a fixed wait (a downstream call). Once every worker is busy, requests
//! wait in the queue, so the latency grows with the load; once the queue is
//! full, a request is refused at once with `503`. One thread per connection
//! reads requests (HTTP/1.1 keep-alive, or `Connection: close`).
//!
//! [`Load`] runs clients in a namespace, one thread each, every socket bound
//! to its own source address: [`Client::light`] opens a new connection per
//! request at a fixed pace, [`Client::heavy`] keeps one connection busy
//! back to back. Every exchange is recorded with its outcome and latency.

use std::{
    io::{self, Read as _, Write as _},
    mem,
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        mpsc::{self, Receiver, SyncSender, TrySendError},
        Arc, Mutex, PoisonError,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use crate::{mono_ns, Netns};

/// How often blocked threads look at their stop flag.
const STOP_POLL: Duration = Duration::from_millis(100);
/// Largest request head the service reads.
const MAX_HEAD: usize = 16 * 1024;

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
    done: mpsc::Sender<()>,
}

/// A running HTTP service in a namespace; its threads stop when it drops.
#[derive(Debug)]
pub struct Service {
    config: ServiceConfig,
    stop: Arc<AtomicBool>,
    stats: Arc<ServiceStats>,
    threads: Vec<JoinHandle<()>>,
}

impl Service {
    /// Starts the service in `ns`, listening on `0.0.0.0:port` (the
    /// namespace's loopback included); returns once it accepts connections.
    #[must_use]
    pub fn start(ns: &Netns, config: ServiceConfig) -> Self {
        assert!(config.workers >= 1 && config.queue >= 1, "a service needs a worker and a queue");
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
        let listener = ns.run(|| {
            TcpListener::bind(("0.0.0.0", config.port))
                .unwrap_or_else(|e| panic!("bind the service to port {}: {e}", config.port))
        });
        let (accept_stop, accept_stats) = (Arc::clone(&stop), Arc::clone(&stats));
        threads.push(
            thread::Builder::new()
                .name("svc-accept".to_owned())
                .spawn(move || accept(&listener, &jobs, &accept_stop, &accept_stats))
                .expect("spawn the acceptor"),
        );
        Self { config, stop, stats, threads }
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
        self.stop.store(true, Ordering::Relaxed);
        for thread in mem::take(&mut self.threads) {
            let _ = thread.join();
        }
    }
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

/// Nanoseconds of CPU this thread has used.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the clock always exists.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts) };
    assert_eq!(rc, 0, "clock_gettime(CLOCK_THREAD_CPUTIME_ID) failed");
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// Hashes until this thread has spent `cpu` on it.
fn burn_cpu(cpu: Duration) {
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

/// Accepts connections until told to stop, a thread for each.
fn accept(listener: &TcpListener, jobs: &SyncSender<Job>, stop: &Arc<AtomicBool>, stats: &Arc<ServiceStats>) {
    let mut connections: Vec<JoinHandle<()>> = Vec::new();
    let timeout = i32::try_from(STOP_POLL.as_millis()).unwrap_or(100);
    while !stop.load(Ordering::Relaxed) {
        let mut pollfd = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, for the length given.
        let ready = unsafe { libc::poll(&raw mut pollfd, 1, timeout) };
        if ready <= 0 {
            continue;
        }
        let Ok((stream, _)) = listener.accept() else { continue };
        connections.retain(|c| !c.is_finished());
        let (jobs, stop, stats) = (jobs.clone(), Arc::clone(stop), Arc::clone(stats));
        connections.push(
            thread::Builder::new()
                .name("svc-conn".to_owned())
                .spawn(move || serve(stream, &jobs, &stop, &stats))
                .expect("spawn a connection thread"),
        );
    }
    for connection in connections {
        let _ = connection.join();
    }
}

/// Serves one connection's requests until the client closes it, asks to, or
/// the service stops.
fn serve(mut stream: TcpStream, jobs: &SyncSender<Job>, stop: &AtomicBool, stats: &ServiceStats) {
    let _ = stream.set_read_timeout(Some(STOP_POLL));
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    while let Some(close) = read_request(&mut stream, &mut buf, stop) {
        let (done, finished) = mpsc::channel();
        let served = match jobs.try_send(Job { done }) {
            Ok(()) => finished.recv().is_ok(),
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        };
        let (code, body) = if served {
            stats.served.fetch_add(1, Ordering::Relaxed);
            ("200 OK", "ok\n")
        } else {
            stats.refused.fetch_add(1, Ordering::Relaxed);
            ("503 Service Unavailable", "busy\n")
        };
        let response = format!(
            "HTTP/1.1 {code}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if stream.write_all(response.as_bytes()).is_err() || close {
            return;
        }
    }
}

/// Reads one request head (a request body is not read: the service takes
/// GETs); returns whether the connection closes after the answer, or None
/// when it closed, failed, or the service stops.
fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>, stop: &AtomicBool) -> Option<bool> {
    loop {
        if let Some(end) = find(buf, b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            buf.drain(..end + 4);
            let http10 = head.lines().next().is_some_and(|line| line.ends_with("http/1.0"));
            let close = head.lines().any(|line| line.replace(' ', "") == "connection:close")
                || (http10 && !head.lines().any(|line| line.replace(' ', "") == "connection:keep-alive"));
            return Some(close);
        }
        if buf.len() > MAX_HEAD {
            return None;
        }
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if is_timeout(&e) => {
                if stop.load(Ordering::Relaxed) {
                    return None;
                }
            }
            Err(_) => return None,
        }
    }
}

fn is_timeout(err: &io::Error) -> bool {
    matches!(err.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A response: its status, whether the server closes the connection, and
/// its body.
#[derive(Debug)]
struct Response {
    status: u16,
    close: bool,
    body: Vec<u8>,
}

/// Reads one response (`Content-Length` bodies, or to the end of the
/// connection without one).
fn read_response(stream: &mut TcpStream) -> io::Result<Response> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(end) = find(&buf, b"\r\n\r\n") {
            break end;
        }
        if buf.len() > MAX_HEAD {
            return Err(bad("response head too long"));
        }
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before a response"));
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| bad("no status line"))?;
    let (mut length, mut close) = (None, false);
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            match name.trim() {
                "content-length" => length = value.trim().parse::<usize>().ok(),
                "connection" => close |= value.trim() == "close",
                "transfer-encoding" => return Err(bad("chunked bodies are not read")),
                _ => {}
            }
        }
    }
    let mut body = buf.split_off(end + 4);
    if let Some(length) = length {
        while body.len() < length {
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "body cut short"));
            }
            body.extend_from_slice(&chunk[..n]);
        }
        body.truncate(length);
    } else {
        stream.read_to_end(&mut body)?;
        close = true;
    }
    Ok(Response { status, close, body })
}

/// Sends `GET path` on `stream` and reads the answer.
fn get(stream: &mut TcpStream, path: &str, close: bool) -> io::Result<Response> {
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: service\r\n{}\r\n",
        if close { "Connection: close\r\n" } else { "" }
    );
    stream.write_all(request.as_bytes())?;
    read_response(stream)
}

/// `addr` as a socket address for the kernel.
fn sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data for which all zeroes is valid.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(v4) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: v4.port().to_be(),
                sin_addr: libc::in_addr { s_addr: u32::from_ne_bytes(v4.ip().octets()) },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in>().write(sin) };
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: v6.port().to_be(),
                sin6_flowinfo: v6.flowinfo(),
                sin6_addr: libc::in6_addr { s6_addr: v6.ip().octets() },
                sin6_scope_id: v6.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { (&raw mut storage).cast::<libc::sockaddr_in6>().write(sin6) };
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, libc::socklen_t::try_from(len).expect("a sockaddr's size fits socklen_t"))
}

/// A TCP connection from `src` (any port) to `dst`, made in the calling
/// thread's namespace; connecting, reading and writing each time out after
/// `timeout`. Nagle is off.
pub fn connect_from(src: IpAddr, dst: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let domain = if dst.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 };
    // SAFETY: socket has no memory effects; the descriptor is owned at once.
    let fd = unsafe { libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    // A blocking connect gives up after SO_SNDTIMEO.
    let tv = libc::timeval {
        tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
        tv_usec: libc::suseconds_t::from(timeout.subsec_micros()),
    };
    // SAFETY: a valid timeval, for its size.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            (&raw const tv).cast(),
            libc::socklen_t::try_from(size_of::<libc::timeval>()).expect("fits"),
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let (local, local_len) = sockaddr(SocketAddr::new(src, 0));
    // SAFETY: a valid socket address, for its length.
    if unsafe { libc::bind(sock.as_raw_fd(), (&raw const local).cast(), local_len) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let (remote, remote_len) = sockaddr(dst);
    // SAFETY: a valid socket address, for its length.
    if unsafe { libc::connect(sock.as_raw_fd(), (&raw const remote).cast(), remote_len) } != 0 {
        let err = io::Error::last_os_error();
        return Err(if err.raw_os_error() == Some(libc::EINPROGRESS) {
            io::Error::new(io::ErrorKind::TimedOut, format!("connect {src} -> {dst} timed out"))
        } else {
            err
        });
    }
    let stream = TcpStream::from(sock);
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.set_nodelay(true)?;
    Ok(stream)
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

/// One client: a thread and a source address.
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

    fn run(self, stop: &AtomicBool) -> Vec<Exchange> {
        let mut log = Vec::new();
        match self.pace {
            Pace::Light { every, after } => {
                let every_ns = u64::try_from(every.as_nanos()).unwrap_or(u64::MAX);
                let mut next = mono_ns() + u64::try_from(after.as_nanos()).unwrap_or(0);
                loop {
                    if !sleep_until(next, stop) {
                        break;
                    }
                    let start_ns = mono_ns();
                    let outcome = match connect_from(self.src, self.dst, self.timeout)
                        .and_then(|mut stream| get(&mut stream, "/", true))
                    {
                        Ok(response) => outcome_of(response.status),
                        Err(_) => Outcome::Failed,
                    };
                    let end_ns = mono_ns();
                    log.push(Exchange { src: self.src, start_ns, end_ns, outcome });
                    next = (next + every_ns).max(end_ns);
                }
            }
            Pace::Heavy { pause } => {
                let mut conn: Option<TcpStream> = None;
                while !stop.load(Ordering::Relaxed) {
                    let start_ns = mono_ns();
                    let result = match conn.take() {
                        Some(stream) => Ok(stream),
                        None => connect_from(self.src, self.dst, self.timeout),
                    }
                    .and_then(|mut stream| get(&mut stream, "/", false).map(|r| (stream, r)));
                    let outcome = match result {
                        Ok((stream, response)) => {
                            if !response.close {
                                conn = Some(stream);
                            }
                            outcome_of(response.status)
                        }
                        Err(_) => Outcome::Failed,
                    };
                    log.push(Exchange { src: self.src, start_ns, end_ns: mono_ns(), outcome });
                    if outcome == Outcome::Refused {
                        thread::sleep(pause);
                    }
                }
            }
        }
        log
    }
}

fn outcome_of(status: u16) -> Outcome {
    match status {
        200 => Outcome::Ok,
        503 => Outcome::Refused,
        _ => Outcome::Failed,
    }
}

/// Sleeps until monotonic instant `at`; false when told to stop first.
fn sleep_until(at: u64, stop: &AtomicBool) -> bool {
    loop {
        if stop.load(Ordering::Relaxed) {
            return false;
        }
        let now = mono_ns();
        if now >= at {
            return true;
        }
        thread::sleep(Duration::from_nanos(at - now).min(STOP_POLL));
    }
}

/// Clients running in a namespace, a thread each; they stop when this drops.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<Exchange>>>,
}

impl Load {
    /// Starts `clients` in `ns`.
    #[must_use]
    pub fn start(ns: &Netns, clients: Vec<Client>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = clients
            .into_iter()
            .enumerate()
            .map(|(i, client)| {
                let stop = Arc::clone(&stop);
                ns.spawn(&format!("client-{i}"), move || client.run(&stop))
            })
            .collect();
        Self { stop, threads }
    }

    /// Stops every client (each finishes the exchange it is in) and returns
    /// every exchange, in no particular order.
    #[must_use]
    pub fn stop(mut self) -> Vec<Exchange> {
        self.stop.store(true, Ordering::Relaxed);
        mem::take(&mut self.threads)
            .into_iter()
            .flat_map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in mem::take(&mut self.threads) {
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

/// `GET path` on the daemon's admin API at `admin` (on `ns`'s loopback);
/// panics unless it answers 200 with JSON.
#[must_use]
pub fn admin_get(ns: &Netns, admin: SocketAddr, path: &str) -> Json {
    let response = ns.run(|| {
        let mut stream = TcpStream::connect_timeout(&admin, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to the admin API at {admin}: {e}"));
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("set a timeout");
        get(&mut stream, path, true).unwrap_or_else(|e| panic!("GET {path} on {admin}: {e}"))
    });
    let body = String::from_utf8_lossy(&response.body);
    assert_eq!(response.status, 200, "GET {path}: {body}");
    Json::parse(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body}"))
}

/// A JSON value, enough to read the admin API's answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Json {
    Null,
    Bool(bool),
    Number(f64),
    String(String),
    Array(Vec<Json>),
    Object(Vec<(String, Json)>),
}

impl Json {
    /// Parses a whole JSON text.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parser = JsonParser { bytes: text.as_bytes(), at: 0 };
        let value = parser.value()?;
        parser.space();
        if parser.at == parser.bytes.len() {
            Ok(value)
        } else {
            Err(format!("trailing characters at byte {}", parser.at))
        }
    }

    /// The member `key` of an object.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<&Self> {
        match self {
            Self::Object(members) => members.iter().find(|(k, _)| k == key).map(|(_, v)| v),
            _ => None,
        }
    }

    /// The value at a path of object keys (`["latency", "p99"]`).
    #[must_use]
    pub fn at(&self, path: &[&str]) -> Option<&Self> {
        path.iter().try_fold(self, |value, key| value.get(key))
    }

    #[must_use]
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Self::Number(n) => Some(*n),
            _ => None,
        }
    }

    #[must_use]
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    #[must_use]
    pub fn as_array(&self) -> Option<&[Self]> {
        match self {
            Self::Array(items) => Some(items),
            _ => None,
        }
    }
}

struct JsonParser<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl JsonParser<'_> {
    fn space(&mut self) {
        while self.bytes.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    fn error(&self, what: &str) -> String {
        format!("{what} at byte {}", self.at)
    }

    fn eat(&mut self, byte: u8) -> Result<(), String> {
        self.space();
        if self.bytes.get(self.at) == Some(&byte) {
            self.at += 1;
            Ok(())
        } else {
            Err(self.error(&format!("expected {:?}", char::from(byte))))
        }
    }

    fn literal(&mut self, word: &str, value: Json) -> Result<Json, String> {
        if self.bytes[self.at..].starts_with(word.as_bytes()) {
            self.at += word.len();
            Ok(value)
        } else {
            Err(self.error("unexpected word"))
        }
    }

    fn value(&mut self) -> Result<Json, String> {
        self.space();
        match self.bytes.get(self.at) {
            None => Err(self.error("unexpected end")),
            Some(b'n') => self.literal("null", Json::Null),
            Some(b't') => self.literal("true", Json::Bool(true)),
            Some(b'f') => self.literal("false", Json::Bool(false)),
            Some(b'"') => self.string().map(Json::String),
            Some(b'[') => {
                self.at += 1;
                let mut items = Vec::new();
                self.space();
                if self.bytes.get(self.at) == Some(&b']') {
                    self.at += 1;
                    return Ok(Json::Array(items));
                }
                loop {
                    items.push(self.value()?);
                    self.space();
                    match self.bytes.get(self.at) {
                        Some(b',') => self.at += 1,
                        Some(b']') => {
                            self.at += 1;
                            return Ok(Json::Array(items));
                        }
                        _ => return Err(self.error("expected ',' or ']'")),
                    }
                }
            }
            Some(b'{') => {
                self.at += 1;
                let mut members = Vec::new();
                self.space();
                if self.bytes.get(self.at) == Some(&b'}') {
                    self.at += 1;
                    return Ok(Json::Object(members));
                }
                loop {
                    self.space();
                    let key = self.string()?;
                    self.eat(b':')?;
                    members.push((key, self.value()?));
                    self.space();
                    match self.bytes.get(self.at) {
                        Some(b',') => self.at += 1,
                        Some(b'}') => {
                            self.at += 1;
                            return Ok(Json::Object(members));
                        }
                        _ => return Err(self.error("expected ',' or '}'")),
                    }
                }
            }
            Some(_) => {
                let start = self.at;
                while self.bytes.get(self.at).is_some_and(|b| b"+-.eE0123456789".contains(b)) {
                    self.at += 1;
                }
                std::str::from_utf8(&self.bytes[start..self.at])
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .map(Json::Number)
                    .ok_or_else(|| self.error("not a JSON value"))
            }
        }
    }

    fn string(&mut self) -> Result<String, String> {
        self.eat(b'"')?;
        let mut out = Vec::new();
        loop {
            let Some(&byte) = self.bytes.get(self.at) else { return Err(self.error("unterminated string")) };
            self.at += 1;
            match byte {
                b'"' => return String::from_utf8(out).map_err(|_| self.error("not UTF-8")),
                b'\\' => {
                    let Some(&escape) = self.bytes.get(self.at) else { return Err(self.error("bad escape")) };
                    self.at += 1;
                    let c = match escape {
                        b'"' => '"',
                        b'\\' => '\\',
                        b'/' => '/',
                        b'b' => '\u{8}',
                        b'f' => '\u{c}',
                        b'n' => '\n',
                        b'r' => '\r',
                        b't' => '\t',
                        b'u' => {
                            let hex =
                                self.bytes.get(self.at..self.at + 4).ok_or_else(|| self.error("bad \\u"))?;
                            self.at += 4;
                            let code = std::str::from_utf8(hex)
                                .ok()
                                .and_then(|h| u32::from_str_radix(h, 16).ok())
                                .ok_or_else(|| self.error("bad \\u"))?;
                            char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER)
                        }
                        _ => return Err(self.error("bad escape")),
                    };
                    let mut utf8 = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut utf8).as_bytes());
                }
                _ => out.push(byte),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_reads_the_admin_apis_shapes() {
        let v = Json::parse(
            r#" {"enabled":true,"scale":0.25,"latency":{"p50":1.5e1,"p99":-2},"decisions":[{"reason":"a \"b\"\n\u00e9"},{}],"x":null} "#,
        )
        .unwrap();
        assert_eq!(v.get("enabled"), Some(&Json::Bool(true)));
        assert_eq!(v.get("scale").and_then(Json::as_f64), Some(0.25));
        assert_eq!(v.at(&["latency", "p50"]).and_then(Json::as_f64), Some(15.0));
        assert_eq!(v.at(&["latency", "p99"]).and_then(Json::as_f64), Some(-2.0));
        let decisions = v.get("decisions").and_then(Json::as_array).unwrap();
        assert_eq!(decisions.len(), 2);
        assert_eq!(decisions[0].get("reason").and_then(Json::as_str), Some("a \"b\"\n\u{e9}"));
        assert_eq!(v.get("x"), Some(&Json::Null));
        for bad in ["", "{", "[1,]", "{\"a\" 1}", "nul", "\"abc", "1 2"] {
            assert!(Json::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let values: Vec<f64> = (1..=100).map(f64::from).collect();
        assert!((percentile(&values, 50.0) - 50.0).abs() < f64::EPSILON);
        assert!((percentile(&values, 99.0) - 99.0).abs() < f64::EPSILON);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
