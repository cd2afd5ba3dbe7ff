//! `throttle-bench`: throttle's benchmarks, run by `cargo xtask bench`.
//!
//! 1. cost per packet of every verdict path (`BPF_PROG_TEST_RUN`) against a
//!    count-and-pass program loaded in the same run;
//! 2. flood drop rate on a veth pair against the stack, a bare `XDP_DROP`,
//!    an nftables dynamic set and iptables `hashlimit`;
//! 3. the admitted rate per source under those floods;
//! 4. (`live`) floods from a NIC-like generator (an XDP program sending
//!    live frames out of the sending veth), the same references, and the
//!    verdict counts that show every limiter did the same work;
//! 5. the bucket map with many tracked sources: memory, top 20;
//! 6. the admin API of the real daemon with many tracked sources;
//! 7. (`kills`) ten SIGKILLs in a row under the live generator's flood at
//!    line rate: no frame unmetered, no fresh burst, exact counts;
//! 8. (`fuzz`) differential fuzzing of the packet path: ten million
//!    generated frames (`--quick`: 100 000), each verdict and the counters
//!    against the reference model of `throttle_tests::fuzz`; a
//!    disagreement fails the run;
//! 9. only when named (`--parts soak`, ten minutes): the daemon under
//!    churn, its memory, descriptors and API p99 by thirds, a leak failing
//!    the run.
//!
//! Prints the tables, writes `<out>/<timestamp>.json`, `<out>/latest.json`,
//! `<out>/latest.md` and `<out>/flood.svg`, and copies the chart to
//! `--chart-copy`. Exits non-zero when a part could not run as intended
//! (a counter that did not move, a limiter that dropped nothing); it judges
//! no figure. Needs root.
//!
//! ```text
//! throttle-bench [--quick] [--out DIR] [--chart-copy FILE] [--parts cost,flood,live,scale,admin,kills,fuzz,soak]
//! ```

mod admin;
mod baseline;
mod chart;
mod cost;
mod flood;
mod kernel;
mod kills;
mod live;
mod report;
mod scale;
mod soak;

use std::{
    fs,
    path::PathBuf,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use indicatif::{ProgressBar, ProgressStyle};

use crate::{kernel::Machine, report::Report};

/// The parts, in the order they run.
const PARTS: [&str; 8] = ["cost", "flood", "live", "scale", "admin", "kills", "fuzz", "soak"];
/// Frames of the `fuzz` part, and with `--quick`.
const FUZZ_FRAMES: usize = 10_000_000;
const FUZZ_FRAMES_QUICK: usize = 100_000;

/// What to run and where to write.
#[expect(clippy::struct_excessive_bools, reason = "command-line switches")]
struct Options {
    quick: bool,
    out: PathBuf,
    chart_copy: Option<PathBuf>,
    cost: bool,
    flood: bool,
    live: bool,
    scale: bool,
    admin: bool,
    kills: bool,
    fuzz: bool,
    /// Only when named: it takes ten minutes.
    soak: bool,
}

fn options() -> Options {
    let mut options = Options {
        quick: false,
        out: PathBuf::from("target/bench"),
        chart_copy: None,
        cost: true,
        flood: true,
        live: true,
        scale: true,
        admin: true,
        kills: true,
        fuzz: true,
        soak: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().unwrap_or_else(|| usage(&format!("{name} needs a value")));
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--out" => options.out = PathBuf::from(value("--out")),
            "--chart-copy" => options.chart_copy = Some(PathBuf::from(value("--chart-copy"))),
            "--parts" => {
                let parts = value("--parts");
                let parts: Vec<&str> = parts.split(',').collect();
                for part in &parts {
                    if !PARTS.contains(part) {
                        usage(&format!("unknown part {part:?}"));
                    }
                }
                options.cost = parts.contains(&"cost");
                options.flood = parts.contains(&"flood");
                options.live = parts.contains(&"live");
                options.scale = parts.contains(&"scale");
                options.admin = parts.contains(&"admin");
                options.kills = parts.contains(&"kills");
                options.fuzz = parts.contains(&"fuzz");
                options.soak = parts.contains(&"soak");
            }
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    options
}

fn usage(problem: &str) -> ! {
    if !problem.is_empty() {
        eprintln!("error: {problem}");
    }
    eprintln!(
        "usage: throttle-bench [--quick] [--out DIR] [--chart-copy FILE] [--parts {}]",
        PARTS.join(",")
    );
    std::process::exit(2);
}

/// The progress bar (drawn only on a terminal) and a log of each step.
pub struct Progress {
    bar: ProgressBar,
}

impl Progress {
    fn new(steps: u64) -> Self {
        let bar = ProgressBar::new(steps);
        bar.set_style(
            ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {wide_msg}")
                .expect("a valid template")
                .progress_chars("=> "),
        );
        bar.enable_steady_tick(Duration::from_millis(200));
        Self { bar }
    }

    pub fn message(&self, message: &str) {
        if self.bar.is_hidden() {
            eprintln!("bench: {message}");
        }
        self.bar.set_message(message.to_owned());
    }

    /// A line above the bar.
    pub fn println(&self, line: &str) {
        self.bar.suspend(|| eprintln!("{line}"));
    }

    pub fn inc(&self) {
        self.bar.inc(1);
    }
}

/// xorshift64*: reproducible filler, no cryptography.
pub struct Rng(u64);

impl Rng {
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self(seed | 1)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

/// The median of `values` (0 for none).
pub fn median(values: &[f64]) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len() % 2 == 1 {
        v[mid]
    } else {
        f64::midpoint(v[mid - 1], v[mid])
    }
}

/// UTC now as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc_now() -> String {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days.cast_signed() + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3_600, rem / 60 % 60, rem % 60)
}

fn main() {
    let options = options();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("error: the benchmarks load XDP programs and make network namespaces: run them as root");
        std::process::exit(1);
    }
    let cost_settings = if options.quick {
        cost::Settings { repeat: 100_000, rounds: 2, fresh_calls: 200, spread_calls: 4_096 }
    } else {
        cost::Settings { repeat: 1_000_000, rounds: 5, fresh_calls: 2_000, spread_calls: 65_536 }
    };
    let flood_settings = if options.quick {
        flood::Settings { secs: 1.0, rounds: 1 }
    } else {
        flood::Settings { secs: 5.0, rounds: 3 }
    };
    let live_settings = if options.quick {
        live::Settings { rounds: 1, quick: true }
    } else {
        live::Settings { rounds: 5, quick: false }
    };
    let scale_settings = if options.quick {
        scale::Settings { sources: 1 << 17 }
    } else {
        scale::Settings { sources: 1 << 20 }
    };
    let admin_settings = if options.quick {
        admin::Settings { sources: 1 << 16, requests: 3, wrk_secs: 2 }
    } else {
        admin::Settings { sources: 1 << 20, requests: 5, wrk_secs: 5 }
    };

    let steps = [
        (options.cost, cost::steps(&cost_settings)),
        (options.flood, flood::steps(&flood_settings)),
        (options.live, live::steps(&live_settings)),
        (options.scale, scale::STEPS),
        (options.admin, admin::STEPS),
        (options.kills, kills::STEPS),
        (options.fuzz, 1),
        (options.soak, soak::STEPS),
    ];
    let steps = steps.iter().filter(|(on, _)| *on).map(|(_, n)| n).sum();
    let progress = Progress::new(steps);
    let started = Instant::now();
    let taken_at = utc_now();
    let machine = Machine::here();
    let mut failures = Vec::new();

    let cost = options.cost.then(|| cost::run(&cost_settings, &progress));
    if let Some(cost) = &cost {
        failures.extend(cost.failures.iter().cloned());
    }
    let flood = options.flood.then(|| {
        let results = flood::run(&flood_settings, &progress);
        for run in &results.runs {
            progress.println(&format!("  {}", flood::describe(run)));
        }
        results
    });
    if let Some(flood) = &flood {
        failures.extend(flood.failures.iter().cloned());
    }
    let live = options.live.then(|| run_live(&live_settings, &progress, &mut failures));
    let scale = options.scale.then(|| scale::run(scale_settings, &progress, &mut failures));
    let mut admin =
        if options.admin { admin::run(admin_settings, &progress, &mut failures) } else { Vec::new() };
    let kills = options.kills.then(|| {
        let settings = kills::Settings { kills: if options.quick { 3 } else { 10 } };
        kills::run(settings, &progress, &mut failures)
    });
    let fuzz = options.fuzz.then(|| run_fuzz(options.quick, &progress, &mut failures));
    if options.soak {
        admin.extend(soak::run(soak::Settings::of(options.quick), &progress, &mut failures));
    }
    progress.bar.finish_and_clear();

    let mut report = Report {
        taken_at: taken_at.clone(),
        quick: options.quick,
        machine,
        wall_secs: started.elapsed().as_secs_f64(),
        cost,
        flood,
        live,
        scale,
        admin,
        kills,
        fuzz,
        targets: Vec::new(),
        failures,
    };
    report.targets = report::targets(&report);
    println!("{}", report::plain(&report));
    write_outputs(&options, &report);

    if !report.failures.is_empty() {
        eprintln!("error: {} part(s) did not run as intended:", report.failures.len());
        for f in &report.failures {
            eprintln!("  - {f}");
        }
        std::process::exit(1);
    }
}

/// The `fuzz` part: frames through the program against the model, a
/// disagreement failing the run.
fn run_fuzz(quick: bool, progress: &Progress, failures: &mut Vec<String>) -> throttle_tests::fuzz::Outcome {
    let frames = if quick { FUZZ_FRAMES_QUICK } else { FUZZ_FRAMES };
    let seed = throttle_tests::mono_ns() | 1;
    progress.message(&format!("fuzz: {frames} frames against the model (seed {seed})"));
    let outcome = throttle_tests::fuzz::run(frames, seed);
    progress.inc();
    if !outcome.agreed() {
        failures.push(format!(
            "fuzz (seed {seed}): the program and the model disagree: {}{}",
            outcome.counters.clone().unwrap_or_default(),
            outcome.mismatches.join("; ")
        ));
    }
    outcome
}

/// The `live` part, its runs logged.
fn run_live(settings: &live::Settings, progress: &Progress, failures: &mut Vec<String>) -> live::Results {
    let results = live::run(settings, progress);
    for run in &results.runs {
        progress.println(&format!("  {}", live::describe(&results.floods, run)));
    }
    failures.extend(results.failures.iter().cloned());
    results
}

fn write_outputs(options: &Options, report: &Report) {
    let out = &options.out;
    fs::create_dir_all(out).unwrap_or_else(|e| panic!("create {}: {e}", out.display()));
    let json = serde_json::to_string_pretty(report).expect("the report serializes");
    let stamp = report.taken_at.replace([':', '-'], "");
    let write = |name: &str, text: &str| {
        let path = out.join(name);
        fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
        path
    };
    let stamped = write(&format!("{stamp}{}.json", if report.quick { "-quick" } else { "" }), &json);
    write("latest.json", &json);
    let md = write("latest.md", &report::markdown(report));
    println!("wrote {}, latest.json and {}", stamped.display(), md.display());
    if let Some(flood) = &report.flood {
        let subtitle = format!(
            "{}{} — {}",
            report.taken_at,
            if report.quick { " (quick run)" } else { "" },
            report.machine.describe()
        );
        let svg = chart::svg(flood, &subtitle);
        let chart = write("flood.svg", &svg);
        println!("wrote {}", chart.display());
        if let Some(copy) = &options.chart_copy {
            if let Some(dir) = copy.parent() {
                fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
            }
            fs::write(copy, &svg).unwrap_or_else(|e| panic!("write {}: {e}", copy.display()));
            println!("wrote {}", copy.display());
        }
    }
}
