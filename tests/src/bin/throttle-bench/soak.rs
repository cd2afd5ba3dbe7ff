//! Part 7, only with `--parts soak` (it is long): the real daemon under ten
//! minutes of churn (`--quick`: 30 s). Every few seconds a burst of new
//! sources (a million, `--quick` 65 536) is written into its bucket table
//! through its pinned maps and the burst before is removed, while two real
//! sources flood it over their limit (drops, their events, the counters)
//! and the API is polled all along (`/v1/status`, `/v1/sources?top=20`,
//! `/metrics`, `/v1/events`). The daemon's resident memory, its open
//! descriptors and the API's p99 are printed for the first, middle and last
//! third; memory or descriptors that grow from the middle to the end beyond
//! a margin are a leak, and fail the part.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use throttle::kernel::{bucket_key, BucketTable};
use throttle_common::{Bucket, BucketKey};
use throttle_tests::{Daemon, Flood, Flow, Netns, VethPair};

use crate::{admin::Row, Progress};

/// How long, and how big the bursts are.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub duration: Duration,
    pub sources: u32,
    pub burst_every: Duration,
}

impl Settings {
    /// Ten minutes of bursts of a million every 20 s; `quick`, 30 s of
    /// bursts of 65 536 every 5 s.
    pub fn of(quick: bool) -> Self {
        if quick {
            Self { duration: Duration::from_secs(30), sources: 1 << 16, burst_every: Duration::from_secs(5) }
        } else {
            Self {
                duration: Duration::from_secs(600),
                sources: 1 << 20,
                burst_every: Duration::from_secs(20),
            }
        }
    }
}

/// Steps [`run`] reports to the progress bar.
pub const STEPS: u64 = 3;

/// What a third of the run saw.
#[derive(Debug, Default, Clone, Copy)]
struct Third {
    rss_kib: u64,
    fds: usize,
    p99_ms: f64,
    requests: usize,
}

/// Resident memory (KiB) and open descriptors of `pid`.
fn resources(pid: u32) -> (u64, usize) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, Iterator::count);
    (rss, fds)
}

/// One GET of `url` in `ns`, its time in ms (None: it failed).
fn get_ms(ns: &Netns, url: &str) -> Option<f64> {
    let out = ns
        .command("curl")
        .args(["-s", "-o", "/dev/null", "--max-time", "10", "-w", "%{http_code} %{time_total}", url])
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let (code, secs) = text.trim().split_once(' ')?;
    (code == "200").then(|| secs.parse::<f64>().ok().map(|s| s * 1e3)).flatten()
}

/// Writes `sources` /32 sources new to the table (from an address that
/// moves on each `round`) into it, with a little traffic counted; the keys
/// it took.
fn fill(table: &BucketTable, sources: u32, round: u32) -> Vec<BucketKey> {
    let first = 0x0b00_0000_u32.wrapping_add(round.wrapping_mul(sources));
    let bucket = Bucket { tat: 0, passed: 3, dropped: 1, ..Bucket::default() };
    (0..sources)
        .map(|i| bucket_key(IpAddr::V4(first.wrapping_add(i).into()), 0, 32, 64))
        .filter(|key| table.insert(key, &bucket))
        .collect()
}

fn p99(mut times: Vec<f64>) -> f64 {
    if times.is_empty() {
        return f64::NAN;
    }
    times.sort_by(f64::total_cmp);
    let rank = (times.len() * 99).div_ceil(100).clamp(1, times.len());
    times[rank - 1]
}

pub fn run(settings: Settings, progress: &Progress, failures: &mut Vec<String>) -> Vec<Row> {
    progress.message("soak: starting the daemon");
    let pair = VethPair::builder()
        .receiver_addrs(["10.97.0.1/16"])
        .sender_addrs(["10.97.0.2/16", "10.97.0.3/16"])
        .build();
    let config = format!(
        "[daemon]\nxdp_mode = \"native\"\nmax_sources = {}\n\n[limits]\nrate = 100\nburst = 200\n",
        settings.sources * 4
    );
    let daemon = Daemon::builder(&pair.receiver, &pair.rx_if).config(&config).start_ready();
    let Some(pid) = daemon.pid() else {
        failures.push("soak: the daemon is not running".to_owned());
        return Vec::new();
    };
    let maps = daemon.pin_dir().join("maps");
    let table = match BucketTable::from_pins(&maps) {
        Ok(table) => table,
        Err(e) => {
            failures.push(format!("soak: open {}: {e}", maps.display()));
            return Vec::new();
        }
    };
    let flows: Vec<Flow> = pair
        .sender_ips()
        .iter()
        .map(|&src: &IpAddr| Flow::new(src, pair.dst_for(src, 9000)).rate(2_000))
        .collect();
    let flood = Flood::start(&pair.sender, flows, None);
    progress.inc();

    let base = format!("http://{}", daemon.admin());
    let urls = [
        format!("{base}/v1/status"),
        format!("{base}/v1/sources?top=20"),
        format!("{base}/metrics"),
        format!("{base}/v1/events?n=50"),
    ];
    let started = Instant::now();
    let third = settings.duration / 3;
    let mut thirds = [Third::default(); 3];
    let mut times: [Vec<f64>; 3] = Default::default();
    let mut burst: Vec<BucketKey> = Vec::new();
    let mut next_burst = started;
    let mut round = 0u32;
    let mut failed_requests = 0usize;
    progress.message(&format!("soak: {} s of churn", settings.duration.as_secs()));
    while started.elapsed() < settings.duration {
        if Instant::now() >= next_burst {
            for key in &burst {
                let _ = table.remove(key);
            }
            round += 1;
            burst = fill(&table, settings.sources, round);
            next_burst = Instant::now() + settings.burst_every;
        }
        let at = usize::try_from(started.elapsed().as_nanos() / third.as_nanos().max(1)).unwrap_or(2).min(2);
        for url in &urls {
            match get_ms(&pair.receiver, url) {
                Some(ms) => times[at].push(ms),
                None => failed_requests += 1,
            }
        }
        let (rss, fds) = resources(pid);
        thirds[at].rss_kib = thirds[at].rss_kib.max(rss);
        thirds[at].fds = thirds[at].fds.max(fds);
    }
    let _ = flood.stop();
    progress.inc();
    for (t, times) in thirds.iter_mut().zip(times) {
        t.requests = times.len();
        t.p99_ms = p99(times);
    }
    progress.inc();

    judge(thirds, &settings, round, failed_requests, failures)
}

/// The rows of the run's thirds, and the leak checks.
fn judge(
    thirds: [Third; 3],
    settings: &Settings,
    round: u32,
    failed_requests: usize,
    failures: &mut Vec<String>,
) -> Vec<Row> {
    let [start, middle, end] = thirds;
    let mib = |kib: u64| {
        #[expect(clippy::cast_precision_loss, reason = "memory sizes")]
        let m = kib as f64 / 1024.0;
        m
    };
    let leak_rss = end.rss_kib > middle.rss_kib + middle.rss_kib / 5 + 16 * 1024;
    let leak_fds = end.fds > middle.fds + 8;
    if leak_rss {
        failures.push(format!(
            "soak: the daemon's memory grew from {:.0} MiB in the middle third to {:.0} MiB in the last",
            mib(middle.rss_kib),
            mib(end.rss_kib)
        ));
    }
    if leak_fds {
        failures.push(format!("soak: open descriptors grew from {} to {}", middle.fds, end.fds));
    }
    if failed_requests > 0 {
        failures.push(format!("soak: {failed_requests} API requests failed"));
    }
    let label = format!(
        "{} s, bursts of {} sources every {} s",
        settings.duration.as_secs(),
        settings.sources,
        settings.burst_every.as_secs()
    );
    let thirds_of = |f: &dyn Fn(&Third) -> String| format!("{} / {} / {}", f(&start), f(&middle), f(&end));
    vec![
        Row {
            what: format!("soak ({label}, {round} bursts): daemon memory (RSS), first / middle / last third"),
            target: "no growth after the middle",
            value: Some(thirds_of(&|t| format!("{:.0} MiB", mib(t.rss_kib)))),
            met: Some(!leak_rss),
        },
        Row {
            what: "soak: open descriptors, first / middle / last third".to_owned(),
            target: "no growth after the middle",
            value: Some(thirds_of(&|t| t.fds.to_string())),
            met: Some(!leak_fds),
        },
        Row {
            what: "soak: API p99 (status, top 20, metrics, events), first / middle / last third".to_owned(),
            target: "-",
            value: Some(thirds_of(&|t| format!("{:.1} ms of {}", t.p99_ms, t.requests))),
            met: None,
        },
    ]
}
