//! Part 4: many tracked sources. The bucket map filled from user space with
//! distinct sources, then: the kernel memory it holds per source, and the
//! time to find the 20 sources with the most drops, the way the control
//! plane reads them today (`Dataplane::buckets()`, two syscalls per entry)
//! and with `BPF_MAP_LOOKUP_BATCH` (a few hundred entries per syscall).
//!
//! The admin API's figures (`GET /v1/sources?top=20`, `/metrics`, requests
//! per second on `/v1/status`) are in [`crate::admin`].

use std::{
    cmp::Reverse,
    collections::BinaryHeap,
    io,
    net::{IpAddr, Ipv4Addr},
    os::fd::{AsFd as _, AsRawFd as _},
    time::Instant,
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use serde::Serialize;
use throttle::dataplane::{bucket_key, Dataplane};
use throttle_common::{map_name, Bucket, BucketKey};

use crate::{
    kernel::{map_memlock, map_of},
    Progress, Rng,
};

/// Sources in the top list.
pub const TOP: usize = 20;
/// Entries per `BPF_MAP_LOOKUP_BATCH` call.
const BATCH: u32 = 4_096;

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
    /// Top 20 by dropped through `Dataplane::buckets()`.
    pub top_secs: f64,
    /// The same through `BPF_MAP_LOOKUP_BATCH`.
    pub top_batch_secs: f64,
    /// The `dropped` values of the top 20, highest first.
    pub top_dropped: Vec<u64>,
}

/// Steps [`run`] reports to the progress bar.
pub const STEPS: u64 = 4;

pub fn run(settings: Settings, progress: &Progress, failures: &mut Vec<String>) -> Results {
    let max_sources = settings.sources;
    progress.message(&format!("scale: loading with max_sources = {max_sources}"));
    let dataplane =
        Dataplane::load(max_sources).unwrap_or_else(|e| panic!("loading throttle's program: {e}"));
    let data = map_of(dataplane.program(), map_name::BUCKETS);
    let memlock_bytes = map_memlock(&data);
    let batch_handle = map_of(dataplane.program(), map_name::BUCKETS);
    let mut buckets: BpfHashMap<MapData, BucketKey, Bucket> =
        BpfHashMap::try_from(Map::LruHashMap(data)).expect("BUCKETS is an LRU hash of buckets");
    progress.inc();

    progress.message(&format!("scale: writing {max_sources} sources"));
    let mut rng = Rng::new(0x0005_ca1e);
    let started = Instant::now();
    for i in 0..settings.sources {
        // 11.0.0.0 onwards: one distinct /32 each.
        let key = bucket_key(IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + i)), 0, 32, 64);
        let bucket = Bucket { tat: 0, passed: rng.next_u64() % 1_000, dropped: rng.next_u64() % 1_000_000 };
        buckets.insert(key, bucket, 0).unwrap_or_else(|e| panic!("inserting source {i}: {e}"));
    }
    let insert_secs = started.elapsed().as_secs_f64();
    progress.inc();

    progress.message("scale: top 20 by dropped through Dataplane::buckets()");
    let started = Instant::now();
    let (tracked, top_dropped) = top(dataplane.buckets().map(|(_, b)| b.dropped));
    let top_secs = started.elapsed().as_secs_f64();
    progress.inc();

    progress.message("scale: top 20 by dropped through BPF_MAP_LOOKUP_BATCH");
    let started = Instant::now();
    let batch = lookup_batch(&batch_handle).unwrap_or_else(|e| panic!("BPF_MAP_LOOKUP_BATCH: {e}"));
    let (batch_tracked, batch_top) = top(batch.into_iter());
    let top_batch_secs = started.elapsed().as_secs_f64();
    progress.inc();

    if tracked == 0 || batch_tracked != tracked || batch_top != top_dropped {
        failures.push(format!(
            "scale: the two reads disagree or found nothing: {tracked} entries, top {top_dropped:?}; \
             batched {batch_tracked}, top {batch_top:?}"
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
        top_batch_secs,
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

/// `BPF_MAP_LOOKUP_BATCH` (`linux/bpf.h`).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Every bucket's `dropped`, read `BATCH` entries per syscall.
fn lookup_batch(map: &MapData) -> io::Result<Vec<u64>> {
    let fd = u32::try_from(map.fd().as_fd().as_raw_fd()).expect("a descriptor is not negative");
    let mut keys = vec![BucketKey::default(); BATCH as usize];
    let mut values = vec![Bucket::default(); BATCH as usize];
    // A hash map's batch cursor is a bucket index (u32).
    let (mut cursor_in, mut cursor_out) = (0u32, 0u32);
    let mut first = true;
    let mut out = Vec::new();
    loop {
        let mut attr = BatchAttr {
            in_batch: if first { 0 } else { (&raw const cursor_in) as u64 },
            out_batch: (&raw mut cursor_out) as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: BATCH,
            map_fd: fd,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` is the batch form of bpf_attr with buffers for
        // `count` keys and values and a u32 cursor each way, all alive for the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                (&raw mut attr).cast::<libc::c_void>(),
                size_of::<BatchAttr>(),
            )
        };
        let err = (rc != 0).then(io::Error::last_os_error);
        out.extend(values[..attr.count as usize].iter().map(|b| b.dropped));
        match err {
            None => {}
            Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(out),
            Some(e) => return Err(e),
        }
        first = false;
        cursor_in = cursor_out;
    }
}
