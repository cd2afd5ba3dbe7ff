//! Part 5: the admin API with many tracked sources. The real daemon on a
//! veth in a namespace, its bucket table filled from user space through its
//! pinned maps, then: the time of `GET /v1/sources?top=20` and `GET /metrics`
//! (curl, median of a few), the daemon's resident memory, and requests per
//! second and p99 of `GET /v1/status` and `GET /metrics` under wrk on the
//! namespace's loopback.

use std::fs;

use serde::Serialize;
use throttle::kernel::BucketTable;
use throttle_tests::{Daemon, Netns, VethPair};

use crate::{median, report, scale, Progress};

/// How much to measure.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Sources written into the daemon's bucket table (its `max_sources` is
    /// twice that: a full table holds about 89 % of its slots, a half full
    /// one nearly all it is given).
    pub sources: u32,
    /// curl requests per timed endpoint (the median is kept).
    pub requests: usize,
    /// Seconds of each wrk run.
    pub wrk_secs: u32,
}

/// One admin API figure.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub what: String,
    pub target: &'static str,
    /// The measured figure, with its unit; `None` when it could not be measured.
    pub value: Option<String>,
    /// `None` when there is no target or no figure.
    pub met: Option<bool>,
}

/// Why a row has no figure.
pub const NOT_MEASURED: &str = "not measured (see the run's failures)";

/// Steps [`run`] reports to the progress bar.
pub const STEPS: u64 = 5;

/// Sources as the rows name them: "1 M" for 2^20.
fn sources_label(n: u32) -> String {
    if n == 1 << 20 {
        "1 M".to_owned()
    } else {
        report::grouped(f64::from(n))
    }
}

pub fn run(settings: Settings, progress: &Progress, failures: &mut Vec<String>) -> Vec<Row> {
    let n = sources_label(settings.sources);
    let row = |what: String, target| Row { what, target, value: None, met: None };
    let mut rows = vec![
        row(format!("GET /v1/sources?top=20 with {n} sources"), "< 1 s"),
        row(format!("GET /metrics with {n} sources"), "-"),
        row(format!("daemon memory (RSS) with {n} sources"), "-"),
        row(format!("GET /v1/status under wrk ({n} sources)"), "> 10 000 requests/s"),
        row(format!("GET /metrics under wrk ({n} sources)"), "-"),
    ];

    progress.message("admin: starting the daemon");
    let pair = VethPair::builder().receiver_addrs(["10.98.0.1/16"]).sender_addr("10.98.0.2/16").build();
    let config = format!(
        "[daemon]\nxdp_mode = \"native\"\nmax_sources = {}\n\n[limits]\nrate = 100\nburst = 200\n",
        settings.sources * 2
    );
    let mut daemon = Daemon::builder(&pair.receiver, &pair.rx_if).config(&config).start_ready();
    let base = format!("http://{}", daemon.admin());
    progress.inc();

    progress.message(&format!("admin: writing {} sources into the daemon's bucket table", settings.sources));
    if let Err(e) = fill(&daemon, settings.sources) {
        failures.push(format!("admin: filling the daemon's bucket table: {e}"));
        return rows;
    }
    progress.inc();

    progress.message("admin: timing /v1/sources?top=20 and /metrics");
    for (row, path) in rows.iter_mut().zip(["/v1/sources?top=20", "/metrics"]) {
        match time_get(&pair.receiver, &format!("{base}{path}"), settings.requests) {
            Ok(secs) => {
                row.value = Some(format!("{secs:.3} s (median of {})", settings.requests));
                if row.target != "-" {
                    row.met = Some(secs < 1.0);
                }
            }
            Err(e) => failures.push(format!("admin: GET {path}: {e}")),
        }
    }
    progress.inc();

    match daemon.pid().ok_or_else(|| "the daemon is not running".to_owned()).and_then(rss_kib) {
        Ok(kib) => rows[2].value = Some(format!("{} MiB", kib >> 10)),
        Err(e) => failures.push(format!("admin: daemon RSS: {e}")),
    }

    for (i, path) in [(3, "/v1/status"), (4, "/metrics")] {
        progress.message(&format!("admin: wrk on {path} for {} s", settings.wrk_secs));
        match wrk(&pair.receiver, &format!("{base}{path}"), settings.wrk_secs) {
            Ok((rps, p99_ms)) => {
                rows[i].value = Some(format!("{rps:.0} requests/s, p99 {p99_ms:.2} ms"));
                if rows[i].target != "-" {
                    rows[i].met = Some(rps > 10_000.0);
                }
            }
            Err(e) => failures.push(format!("admin: wrk on {path}: {e}")),
        }
        progress.inc();
    }
    if let Some(status) = daemon.exit_status() {
        failures.push(format!("admin: the daemon exited during the run ({status}):\n{}", daemon.log()));
    }
    rows
}

/// Writes `sources` distinct /32 sources into the daemon's pinned bucket
/// table.
fn fill(daemon: &Daemon, sources: u32) -> Result<(), String> {
    let maps = daemon.pin_dir().join("maps");
    let table = BucketTable::from_pins(&maps).map_err(|e| format!("open {}: {e}", maps.display()))?;
    let written = scale::fill(&table, sources, 0x00ad_0001);
    // Half full, a few sources find both their groups full (measured: 4 in
    // 1 000).
    if written.len() < sources as usize * 99 / 100 {
        return Err(format!("the bucket table took {} of {sources} sources", written.len()));
    }
    Ok(())
}

/// The median `time_total` of `requests` curl GETs of `url` in `ns`.
fn time_get(ns: &Netns, url: &str, requests: usize) -> Result<f64, String> {
    let mut times = Vec::with_capacity(requests);
    for _ in 0..requests {
        let out = ns
            .command("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code} %{time_total}", url])
            .output()
            .map_err(|e| format!("cannot run curl: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let (code, secs) = text.trim().split_once(' ').ok_or_else(|| format!("curl said {text:?}"))?;
        if !out.status.success() || code != "200" {
            return Err(format!(
                "curl: {} (HTTP {code}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        times.push(secs.parse::<f64>().map_err(|e| format!("curl's time {secs:?}: {e}"))?);
    }
    Ok(median(&times))
}

/// `VmRSS` of process `pid`, KiB.
fn rss_kib(pid: u32) -> Result<u64, String> {
    let path = format!("/proc/{pid}/status");
    let text = fs::read_to_string(&path).map_err(|e| format!("read {path}: {e}"))?;
    text.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS line in {path}"))
}

/// Requests per second and p99 latency (ms) of `wrk -t2 -c16 --latency` on `url`.
fn wrk(ns: &Netns, url: &str, secs: u32) -> Result<(f64, f64), String> {
    let out = ns
        .command("wrk")
        .args(["-t2", "-c16", &format!("-d{secs}s"), "--latency", url])
        .output()
        .map_err(|e| format!("cannot run wrk (installed by `cargo xtask setup`): {e}"))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        return Err(format!("{}: {}{}", out.status, text, String::from_utf8_lossy(&out.stderr)));
    }
    if let Some(line) = text.lines().find(|l| l.contains("Non-2xx or 3xx responses")) {
        return Err(format!("{}:\n{text}", line.trim()));
    }
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or_else(|| format!("no Requests/sec in wrk's output:\n{text}"))?;
    let p99 = text
        .lines()
        .skip_while(|l| !l.contains("Latency Distribution"))
        .find_map(|l| l.trim().strip_prefix("99%"))
        .and_then(|v| duration_ms(v.trim()))
        .ok_or_else(|| format!("no 99% latency in wrk's output:\n{text}"))?;
    Ok((rps, p99))
}

/// A wrk duration ("812.00us", "1.23ms", "2.01s", "1.00m") in milliseconds.
fn duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let scale = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        "h" => 3_600e3,
        _ => return None,
    };
    Some(number * scale)
}
