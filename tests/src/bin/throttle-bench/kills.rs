//! The `kills` part: the daemon killed with SIGKILL ten times in a row
//! (`--quick`: three) under a flood at line rate from the live-frames
//! generator (the `live` part's), each time started again at once, and the
//! counts at the end: every frame the receiving veth ran an XDP program on
//! was counted by throttle's program (none passed unmetered while no daemon
//! ran or while the next one took over), and what passed is within one
//! bucket's bound over the whole run (no restart gave a fresh burst).
//!
//! The flood is the `live` part's first: one source, over 1000/s burst 2000.
//! Between kills the daemon runs for a moment; each kill lands while the
//! flood runs, and each start adopts the pins of the daemon before.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use serde::Serialize;
use serde_json::Value;
use throttle_common::reason;
use throttle_tests::{measure::bucket_allowance, Daemon, VethPair};

use crate::{
    live::{self, Affinity, Generator},
    Progress,
};

/// How long the daemon runs between two kills, and the flood before the
/// first and after the last.
const BETWEEN: Duration = Duration::from_millis(300);
const READY: Duration = Duration::from_secs(30);

/// How many kills.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub kills: u32,
}

/// What the part found.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    pub flood: String,
    pub kills: u32,
    /// From the first frame to the last.
    pub secs: f64,
    /// Frames the generator sent.
    pub generated: u64,
    /// Frames the receiving veth ran its XDP program on.
    pub received: u64,
    /// Frames throttle's program counted, every reason.
    pub counted: u64,
    /// Frames of the flood's source it admitted.
    pub passed: u64,
    /// One bucket's bound over the run: burst + rate * secs.
    pub bound: f64,
    /// What a fresh burst at each start would have added.
    pub fresh_bursts: u64,
    /// Starts after which the program was found detached.
    pub detached: u32,
}

/// Steps [`run`] reports to the progress bar.
pub const STEPS: u64 = 2;

/// Frames counted (every reason) and the flood's source admitted
/// (`passed`, `new_source`), from the daemon's `GET /v1/stats`.
fn counts(daemon: &Daemon, pair: &VethPair) -> (u64, u64) {
    let stats: Value = daemon.api_get(&pair.receiver, "/v1/stats");
    let read = |name: &str| stats["counters"][name].as_u64().unwrap_or(0);
    (reason::NAMES.iter().map(|name| read(name)).sum(), read("passed") + read("new_source"))
}

pub fn run(settings: Settings, progress: &Progress, failures: &mut Vec<String>) -> Results {
    progress.message("kills: making the veth pair, loading the generator");
    let flood = live::floods().remove(0);
    let cpus = thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let generator_cpu = cpus - 1;
    let _affinity = Affinity::others(generator_cpu, cpus);
    let pair = VethPair::builder().receiver_addrs(["10.99.0.1/16"]).sender_addr("10.99.0.2/16").build();
    live::prepare(&pair);
    let mut generator = Generator::load(generator_cpu);
    let mut daemon =
        Daemon::builder(&pair.receiver, &pair.rx_if).config(&live::throttle_config(&flood, false)).start();
    daemon.wait_ready(READY);
    progress.inc();

    progress.message(&format!("kills: {} SIGKILLs under {}", settings.kills, flood.label));
    let (received0, _) = live::xdp_counts(&pair);
    let (counted0, passed0) = counts(&daemon, &pair);
    let stop = AtomicBool::new(false);
    let mut detached = 0;
    let (generated, secs) = thread::scope(|scope| {
        let started = Instant::now();
        let sender = scope.spawn(|| generator.send_until(&pair, &flood, &stop));
        thread::sleep(BETWEEN);
        for _ in 0..settings.kills {
            daemon.kill();
            if pair.xdp_attachment().is_empty() {
                detached += 1;
            }
            daemon.start_again(&pair.receiver);
            daemon.wait_ready(READY);
            thread::sleep(BETWEEN);
        }
        stop.store(true, Ordering::Relaxed);
        let generated = sender.join().expect("the generator's thread");
        (generated, started.elapsed().as_secs_f64())
    });
    let (received1, _) = live::xdp_counts(&pair);
    let (counted1, passed1) = counts(&daemon, &pair);
    progress.inc();
    drop(daemon);

    let results = Results {
        flood: flood.label.to_owned(),
        kills: settings.kills,
        secs,
        generated,
        received: received1 - received0,
        counted: counted1 - counted0,
        passed: passed1 - passed0,
        bound: bucket_allowance(flood.rate, flood.burst, secs),
        fresh_bursts: flood.burst * u64::from(settings.kills),
        detached,
    };
    check(&results, failures);
    results
}

/// A run that did not keep the promises fails the part.
fn check(r: &Results, failures: &mut Vec<String>) {
    if r.detached > 0 {
        failures
            .push(format!("kills: the program was found detached after {} of {} kills", r.detached, r.kills));
    }
    if r.counted != r.received {
        failures.push(format!(
            "kills: throttle's program counted {} frames of the {} the receiving veth ran XDP on: {} unmetered",
            r.counted,
            r.received,
            r.received.abs_diff(r.counted)
        ));
    }
    #[expect(clippy::cast_precision_loss, reason = "frame counts")]
    let passed = r.passed as f64;
    if passed > r.bound + 1.0 {
        failures.push(format!(
            "kills: {} frames passed over {:.2} s, above one bucket's bound of {:.0}: a fresh burst",
            r.passed, r.secs, r.bound
        ));
    }
    if passed < r.bound / 2.0 {
        failures.push(format!(
            "kills: only {} frames passed over {:.2} s for a bound of {:.0}: the source was not metered as set",
            r.passed, r.secs, r.bound
        ));
    }
}
