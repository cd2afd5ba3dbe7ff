//! Faults and hostile clients, as root, against the real daemon on a veth
//! pair: a stderr whose reader goes away, and a flood of connections that
//! never finish a request. What is judged is that the daemon keeps
//! enforcing, keeps answering and cleans up; never how fast.

use std::{
    io::{self, Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use serde_json::Value;
use throttle::api::{HEADER_READ_TIMEOUT, MAX_CONNECTIONS_PER_PEER};
use throttle_tests::{measure::bucket_allowance, poll_until, require_root, Checks, Daemon, Netns, VethPair};

/// The UDP port every flood goes to.
const PORT: u16 = 9000;
/// How long the receiver must be quiet before it is done.
const QUIET: Duration = Duration::from_millis(300);
/// How far the packets that arrived may stray from what the bucket admits
/// (the edges of the window and a loaded machine's pacing).
const TOLERANCE: f64 = 0.10;
/// How long any one answer of the API may take here, on a noisy machine.
const ANSWER: Duration = Duration::from_secs(5);
/// Half-sent requests held against the API from one peer: several times
/// what the daemon's descriptors allow under [`NOFILE`].
const FLOOD: usize = 1_500;
/// The daemon's descriptor limit (soft and hard) in the flood test: what a
/// modest service manager gives, and low enough that this test process can
/// hold more connections than the daemon has descriptors.
const NOFILE: u64 = 1_024;
/// What each flood connection sends: a request head without its end.
const HALF_REQUEST: &[u8] = b"GET /v1/status HTTP/1.1\r\nHost: throttle\r\nX-Slow: ";

/// Whether `ip -d link show` mentions XDP at all on the receiving end.
fn xdp_attached(pair: &VethPair) -> bool {
    pair.receiver.ip(["-d", "link", "show", "dev", &pair.rx_if]).contains("xdp")
}

/// A request with curl from `ns`, from source address `from` when given:
/// its status (0: no answer within [`ANSWER`]) and body.
fn curl(
    ns: &Netns,
    from: Option<IpAddr>,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let mut cmd = ns.command("curl");
    cmd.args(["-sS", "-X", method, "-w", "\n%{http_code}", "--max-time"]).arg(ANSWER.as_secs().to_string());
    if let Some(from) = from {
        cmd.args(["--interface", &from.to_string()]);
    }
    if let Some(token) = token {
        cmd.args(["-H", &format!("Authorization: Bearer {token}")]);
    }
    if let Some(body) = body {
        cmd.args(["-H", "content-type: application/json", "--data-binary", body]);
    }
    let out = cmd.arg(url).output().unwrap_or_else(|e| panic!("cannot run curl: {e}"));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    (status.trim().parse().unwrap_or(0), body.to_owned())
}

/// The value of counter `name` in a Prometheus text.
fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn a_closed_stderr_stops_neither_enforcement_nor_the_clean_exit() {
    require_root!();
    let test = "a_closed_stderr_stops_neither_enforcement_nor_the_clean_exit";
    let mut checks = Checks::new(test);
    let (rate, burst, offered) = (400, 200, 4_000);
    let pair = VethPair::builder().sender_addr("10.99.1.1/16").build();
    let src = pair.sender_ips()[0];
    let mut daemon = Daemon::builder(&pair.receiver, &pair.rx_if)
        .args(["--rate", "1000", "--burst", &burst.to_string()])
        .stderr_pipe()
        .start_ready();
    let base = format!("http://{}", daemon.admin());
    daemon.close_stderr();
    checks.note("the read end of the daemon's stderr is closed: every log line from now on fails with EPIPE");

    // Things the daemon logs: a change through the API, with the client...
    let set = daemon.cli(&pair.receiver, ["limits", "--json", "set", "--rate", &rate.to_string()]);
    checks.that(set.exited(0), &format!("a limit set through the API is answered: {set}"));
    // ...a SIGHUP (without --config: it logs that there is nothing to do)...
    let _ = daemon.reload();
    let exited = daemon.wait_exit(Duration::from_secs(2));
    checks.that(exited.is_none(), &format!("the daemon is still running after SIGHUP ({exited:?})"));
    // ...and the controller changed with a PUT, which must get its answer.
    let (status, body) = curl(
        &pair.receiver,
        None,
        "PUT",
        &format!("{base}/v1/controller"),
        None,
        Some(r#"{"enabled":false}"#),
    );
    checks.that(status == 200, &format!("PUT /v1/controller is answered: {status} {}", body.trim()));

    let (status, body) = curl(&pair.receiver, None, "GET", &format!("{base}/v1/status"), None, None);
    let ready = serde_json::from_str::<Value>(&body).is_ok_and(|v| v["ready"] == true);
    checks.that(status == 200 && ready, &format!("GET /v1/status: {status}, ready: {}", body.trim()));
    let (status, metrics) = curl(&pair.receiver, None, "GET", &format!("{base}/metrics"), None, None);
    let dropped = metric(&metrics, "throttle_log_write_errors_total");
    checks.that(
        status == 200 && dropped.is_some_and(|n| n > 0),
        &format!("the log lines it could not write are counted: {dropped:?}"),
    );

    // Still enforcing, at the limit set after stderr closed.
    let (report, arrivals) =
        throttle_tests::flood_once(&pair, src, PORT, offered, Duration::from_millis(1_500), QUIET);
    checks.within(
        &format!("arrived over {:.3} s with stderr closed (burst {burst} + {rate} * t)", report.secs()),
        bucket_allowance(rate, burst, report.secs()),
        arrivals.from_source(src),
        TOLERANCE,
    );

    let status = daemon.stop();
    checks.that(status.is_some_and(|s| s.success()), &format!("SIGTERM: a clean exit, 0 ({status:?})"));
    checks.that(
        !daemon.pin_dir().exists(),
        &format!("its pin directory {} is gone", daemon.pin_dir().display()),
    );
    checks.that(!xdp_attached(&pair), &format!("`ip -d link show {}` shows no XDP", pair.rx_if));
    checks.assert_all();
}

/// Raises this process's soft descriptor limit to its hard one, and
/// returns the soft limit in force: the flood holds [`FLOOD`] sockets.
fn raise_own_nofile() -> u64 {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes one rlimit, which `limit` is.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) }, 0, "getrlimit");
    limit.rlim_cur = limit.rlim_max;
    // SAFETY: setrlimit reads one rlimit, which `limit` is.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) } != 0 {
        // SAFETY: as above.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &raw mut limit) };
    }
    limit.rlim_cur
}

/// Opens `n` connections to `dst` from `src` in the calling thread's
/// namespace, each sending [`HALF_REQUEST`]; those that connected, as
/// non-blocking streams.
fn half_sent(src: IpAddr, dst: SocketAddr, n: usize) -> Vec<TcpStream> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    runtime.block_on(async {
        let mut connecting = tokio::task::JoinSet::new();
        for _ in 0..n {
            connecting.spawn(async move {
                let socket = tokio::net::TcpSocket::new_v4().ok()?;
                socket.bind(SocketAddr::new(src, 0)).ok()?;
                let stream = tokio::time::timeout(ANSWER, socket.connect(dst)).await.ok()?.ok()?;
                let stream = stream.into_std().ok()?;
                (&stream).write_all(HALF_REQUEST).ok()?;
                Some(stream)
            });
        }
        let mut streams = Vec::new();
        while let Some(stream) = connecting.join_next().await {
            streams.extend(stream.expect("a connecting task"));
        }
        streams
    })
}

/// Whether the server has closed `stream`: the end of the stream or a
/// reset (anything it sent first, such as a 408, is read and skipped).
fn closed_by_server(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

/// The flood's connections still open.
fn still_open(streams: &mut [TcpStream]) -> usize {
    streams.iter_mut().filter_map(|s| (!closed_by_server(s)).then_some(())).count()
}

#[test]
fn a_flood_of_idle_connections_leaves_the_api_answering() {
    require_root!();
    let test = "a_flood_of_idle_connections_leaves_the_api_answering";
    let mut checks = Checks::new(test);
    let own = raise_own_nofile();
    assert!(
        own > u64::try_from(FLOOD).expect("a count") + 256,
        "this test holds {FLOOD} connections and its process may open {own} descriptors: raise its hard limit"
    );
    let token = "token-of-the-flood-test";
    let pair = VethPair::builder().sender_addrs(["10.99.1.1/16", "10.99.1.2/16"]).build();
    let [flooder, other] = pair.sender_ips()[..] else { panic!("two sender addresses") };
    let listen = pair.receiver_ip_for(flooder);
    let daemon = Daemon::builder(&pair.receiver, &pair.rx_if)
        .admin_ip(listen)
        .token(token)
        .nofile_limit(NOFILE)
        .start_ready();
    let base = format!("http://{}", daemon.admin());
    let admin = daemon.admin();

    // Unauthenticated, from beyond loopback: requests that never end.
    let mut flood = pair.sender.run(|| half_sent(flooder, admin, FLOOD));
    let flood_held = Instant::now();
    assert!(
        flood.len() as u64 > NOFILE,
        "{} connections made, fewer than the daemon's {NOFILE} descriptors: the flood would prove nothing",
        flood.len()
    );
    checks.note(&format!(
        "{} of {FLOOD} connections from {flooder} sent half a request (the daemon has {NOFILE} descriptors)",
        flood.len()
    ));

    // Another peer is answered meanwhile: reads, the health check, a write.
    let get = |path: &str, token: Option<&str>| {
        curl(&pair.sender, Some(other), "GET", &format!("{base}{path}"), token, None)
    };
    let (status, body) = get("/v1/status", Some(token));
    checks.that(
        status == 200,
        &format!("GET /v1/status from {other} during the flood: {status} {}", body.trim()),
    );
    let (status, _) = get("/readyz", None);
    checks.that(status == 200, &format!("GET /readyz from {other} during the flood: {status}"));
    let (status, body) = curl(
        &pair.sender,
        Some(other),
        "PATCH",
        &format!("{base}/v1/limits"),
        Some(token),
        Some(r#"{"rate": 700}"#),
    );
    checks.that(
        status == 200,
        &format!("PATCH /v1/limits from {other} during the flood: {status} {}", body.trim()),
    );

    // Beyond its share, the flooding peer's connections are closed at once;
    // the rest when their head has not come within the header timeout.
    let refused = flood.len().saturating_sub(MAX_CONNECTIONS_PER_PEER);
    let open = poll_until(HEADER_READ_TIMEOUT / 2, Duration::from_millis(100), || {
        let open = still_open(&mut flood);
        (open <= MAX_CONNECTIONS_PER_PEER).then_some(open)
    });
    checks.that(
        open.is_some() && flood_held.elapsed() < HEADER_READ_TIMEOUT,
        &format!(
            "{refused} connections beyond {flooder}'s {MAX_CONNECTIONS_PER_PEER} closed well before the \
             header timeout ({HEADER_READ_TIMEOUT:?}): {} still open after {:.1} s",
            open.unwrap_or_else(|| still_open(&mut flood)),
            flood_held.elapsed().as_secs_f64()
        ),
    );
    let (_, metrics) = get("/metrics", Some(token));
    let counted = metric(&metrics, "throttle_api_connections_refused_peer_total");
    checks.that(
        counted.is_some_and(|n| n >= u64::try_from(refused).unwrap_or(u64::MAX)),
        &format!("the refused connections are counted: {counted:?} (at least {refused})"),
    );
    let all_closed = poll_until(HEADER_READ_TIMEOUT + ANSWER, Duration::from_millis(200), || {
        (still_open(&mut flood) == 0).then_some(())
    });
    checks.that(
        all_closed.is_some(),
        &format!(
            "every incomplete request closed by the server after the header timeout ({HEADER_READ_TIMEOUT:?}): \
             {} open after {:.1} s",
            still_open(&mut flood),
            flood_held.elapsed().as_secs_f64()
        ),
    );
    // The flooding peer is not shut out for good.
    let (status, _) =
        curl(&pair.sender, Some(flooder), "GET", &format!("{base}/v1/status"), Some(token), None);
    checks.that(status == 200, &format!("{flooder} is answered once its connections are gone: {status}"));
    checks.assert_all();
}
