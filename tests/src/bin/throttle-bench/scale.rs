//! Part 4: many tracked sources. The bucket table filled from user space
//! with distinct sources, as many as it has slots, then: how many it holds,
//! the kernel memory per source it holds, and the time to find the 20
//! sources with the most drops the way the control plane reads them
//! (`Dataplane::for_each_bucket`: a walk of the mapped table) and to look up
//! every source by its key (`Dataplane::bucket`), checked against what was
//! written.
//!
//! The admin API's figures (`GET /v1/sources?top=20`, `/metrics`, requests
//! per second on `/v1/status`) are in [`crate::admin`].

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    net::{IpAddr, Ipv4Addr},
    time::Instant,
};

use serde::Serialize;
use throttle::kernel::{bucket_key, BucketTable, Dataplane};
use throttle_common::{map_name, Bucket};

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
    /// Sources the table holds afterwards (a source whose two groups are
    /// full is not written).
    pub tracked: u64,
    pub insert_secs: f64,
    /// The table's and its locks' kernel memory (fdinfo `memlock`), bytes.
    pub memlock_bytes: u64,
    pub bytes_per_tracked_source: f64,
    /// Top 20 by dropped through `Dataplane::for_each_bucket`.
    pub top_secs: f64,
    /// Every written source looked up by its key (`Dataplane::bucket`).
    pub top_buckets_secs: f64,
    /// The `dropped` values of the top 20, highest first.
    pub top_dropped: Vec<u64>,
}

/// Steps [`run`] reports to the progress bar.
pub const STEPS: u64 = 4;

/// Writes `sources` distinct /32 sources (11.0.0.0 onwards) into the bucket
/// table, with counts drawn from `seed`; the `dropped` counts of those it
/// took.
pub fn fill(table: &BucketTable, sources: u32, seed: u64) -> Vec<(u32, u64)> {
    let mut rng = Rng::new(seed);
    let mut taken = Vec::with_capacity(sources as usize);
    for i in 0..sources {
        let key = bucket_key(source(i), 0, 32, 64);
        let bucket = Bucket {
            tat: 0,
            passed: rng.next_u64() % 1_000,
            dropped: rng.next_u64() % 1_000_000,
            ..Bucket::default()
        };
        if table.insert(&key, &bucket) {
            taken.push((i, bucket.dropped));
        }
    }
    taken
}

fn source(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i))
}

pub fn run(settings: Settings, progress: &Progress, failures: &mut Vec<String>) -> Results {
    let max_sources = settings.sources;
    progress.message(&format!("scale: loading with max_sources = {max_sources}"));
    let dataplane =
        Dataplane::load(max_sources).unwrap_or_else(|e| panic!("loading throttle's program: {e}"));
    let memlock_bytes = map_memlock(&map_of(dataplane.program(), map_name::BUCKETS))
        + map_memlock(&map_of(dataplane.program(), map_name::BUCKET_LOCKS));
    progress.inc();

    progress.message(&format!("scale: writing {max_sources} sources"));
    let started = Instant::now();
    let written = fill(dataplane.table(), settings.sources, 0x0005_ca1e);
    let insert_secs = started.elapsed().as_secs_f64();
    progress.inc();

    progress.message("scale: top 20 by dropped through Dataplane::for_each_bucket");
    let started = Instant::now();
    let mut dropped = Vec::with_capacity(max_sources as usize);
    dataplane.for_each_bucket(&mut |_, b| dropped.push(b.dropped));
    let (tracked, top_dropped) = top(dropped.into_iter());
    let top_secs = started.elapsed().as_secs_f64();
    progress.inc();

    progress.message("scale: every source by its key through Dataplane::bucket");
    let started = Instant::now();
    let found = written
        .iter()
        .filter(|(i, dropped)| {
            let key = bucket_key(source(*i), 0, 32, 64);
            dataplane.bucket(&key).ok().flatten().is_some_and(|b| b.dropped == *dropped)
        })
        .count();
    let top_buckets_secs = started.elapsed().as_secs_f64();
    progress.inc();

    let (_, written_top) = top(written.iter().map(|(_, d)| *d));
    if tracked == 0 || tracked != written.len() as u64 || found != written.len() || written_top != top_dropped
    {
        failures.push(format!(
            "scale: the reads disagree with what was written ({} sources): the walk found {tracked}, top \
             {top_dropped:?}; lookups found {found}; written top {written_top:?}",
            written.len()
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
