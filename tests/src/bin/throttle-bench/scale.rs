//! Part 4: many tracked sources. The bucket map filled from user space with
//! distinct sources, then: the kernel memory it holds per source, and the
//! time to find the 20 sources with the most drops, the way the control
//! plane reads them (`Dataplane::for_each_bucket`, `BPF_MAP_LOOKUP_BATCH`:
//! many entries per syscall) and, as the slow reference, through
//! `Dataplane::buckets()` (two syscalls per entry).
//!
//! The admin API's figures (`GET /v1/sources?top=20`, `/metrics`, requests
//! per second on `/v1/status`) are in [`crate::admin`].

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    net::{IpAddr, Ipv4Addr},
    time::Instant,
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use serde::Serialize;
use throttle::kernel::{bucket_key, Dataplane};
use throttle_common::{map_name, Bucket, BucketKey};

use crate::{
    kernel::{map_memlock, map_of},
    Progress, Rng,
};

/// Sources in the top list.
pub const TOP: usize = 20;

/// How much to measure.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Sources to track (the bucket map is sized for exactly this many).
    pub sources: u32,
}

/// What part 4 found.
#[derive(Debug, Clone, Serialize)]
pub struct Results {
    /// The bucket map's capacity (`max_sources`).
    pub max_sources: u32,
    /// Distinct sources written.
    pub inserted: u32,
    /// Entries in the map afterwards (an LRU map may evict before it is full).
    pub tracked: u64,
    pub insert_secs: f64,
    /// The map's kernel memory (fdinfo `memlock`), bytes.
    pub memlock_bytes: u64,
    pub bytes_per_tracked_source: f64,
    /// Top 20 by dropped through `Dataplane::for_each_bucket` (batched).
    pub top_secs: f64,
    /// The same through `Dataplane::buckets()` (the slow reference).
    pub top_buckets_secs: f64,
    /// The `dropped` values of the top 20, highest first.
    pub top_dropped: Vec<u64>,
}

/// Steps [`run`] reports to the progress bar.
pub const STEPS: u64 = 4;

/// Writes `sources` distinct /32 sources (11.0.0.0 onwards) into a bucket
/// map, with counts drawn from `seed`.
pub fn fill(
    buckets: &mut BpfHashMap<MapData, BucketKey, Bucket>,
    sources: u32,
    seed: u64,
) -> Result<(), String> {
    let mut rng = Rng::new(seed);
    for i in 0..sources {
        let key = bucket_key(IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i)), 0, 32, 64);
        let bucket = Bucket {
            tat: 0,
            passed: rng.next_u64() % 1_000,
            dropped: rng.next_u64() % 1_000_000,
            over_since: 0,
        };
        buckets.insert(key, bucket, 0).map_err(|e| format!("inserting source {i}: {e}"))?;
    }
    Ok(())
}

pub fn run(settings: Settings, progress: &Progress, failures: &mut Vec<String>) -> Results {
    let max_sources = settings.sources;
    progress.message(&format!("scale: loading with max_sources = {max_sources}"));
    let dataplane =
        Dataplane::load(max_sources).unwrap_or_else(|e| panic!("loading throttle's program: {e}"));
    let data = map_of(dataplane.program(), map_name::BUCKETS);
    let memlock_bytes = map_memlock(&data);
    let mut buckets: BpfHashMap<MapData, BucketKey, Bucket> =
        BpfHashMap::try_from(Map::LruHashMap(data)).expect("BUCKETS is an LRU hash of buckets");
    progress.inc();

    progress.message(&format!("scale: writing {max_sources} sources"));
    let started = Instant::now();
    fill(&mut buckets, settings.sources, 0x0005_ca1e).unwrap_or_else(|e| panic!("{e}"));
    let insert_secs = started.elapsed().as_secs_f64();
    progress.inc();

    progress.message("scale: top 20 by dropped through Dataplane::for_each_bucket");
    let started = Instant::now();
    let mut dropped = Vec::with_capacity(max_sources as usize);
    dataplane.for_each_bucket(&mut |_, b| dropped.push(b.dropped));
    let (tracked, top_dropped) = top(dropped.into_iter());
    let top_secs = started.elapsed().as_secs_f64();
    progress.inc();

    progress.message("scale: top 20 by dropped through Dataplane::buckets()");
    let started = Instant::now();
    let (slow_tracked, slow_top) = top(dataplane.buckets().map(|(_, b)| b.dropped));
    let top_buckets_secs = started.elapsed().as_secs_f64();
    progress.inc();

    if tracked == 0 || slow_tracked != tracked || slow_top != top_dropped {
        failures.push(format!(
            "scale: the two reads disagree or found nothing: for_each_bucket {tracked} entries, top \
             {top_dropped:?}; buckets() {slow_tracked}, top {slow_top:?}"
        ));
    }
    #[expect(clippy::cast_precision_loss, reason = "bytes and entries")]
    let bytes_per_tracked_source = memlock_bytes as f64 / tracked.max(1) as f64;
    Results {
        max_sources,
        inserted: settings.sources,
        tracked,
        insert_secs,
        memlock_bytes,
        bytes_per_tracked_source,
        top_secs,
        top_buckets_secs,
        top_dropped,
    }
}

/// The number of values and the [`TOP`] highest, highest first.
fn top(values: impl Iterator<Item = u64>) -> (u64, Vec<u64>) {
    let mut heap = BinaryHeap::with_capacity(TOP + 1);
    let mut count = 0;
    for dropped in values {
        count += 1;
        heap.push(Reverse(dropped));
        if heap.len() > TOP {
            heap.pop();
        }
    }
    let mut top: Vec<u64> = heap.into_iter().map(|Reverse(d)| d).collect();
    top.sort_unstable_by(|a, b| b.cmp(a));
    (count, top)
}
