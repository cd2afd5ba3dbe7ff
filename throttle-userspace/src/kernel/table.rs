//! The bucket table as the daemon reads it: `BUCKETS`, an mmapable array,
//! mapped into the daemon's memory and read in place
//! ([`throttle_common::table`]). A walk over a million slots is a read of
//! 64 MiB with no system call; a lookup reads the four slots of one group.

use std::{
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
    ptr::NonNull,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};

use aya::maps::{Array, MapData};
use throttle_common::{
    map_name,
    table::{self, Slot, SlotKey, BUSY, LIVE, WAYS},
    Bucket, BucketKey, Config,
};

use super::error::{map_err, syscall_err, KernelError};

/// The words of a slot ([`Slot`]'s fields, in order).
const WORDS: usize = size_of::<Slot>() / size_of::<u64>();
const ADDR_LO: usize = 0;
const ADDR_HI: usize = 1;
const TAG: usize = 2;
const TAT: usize = 3;
const PASSED: usize = 4;
const DROPPED: usize = 5;
const OVER_SINCE: usize = 6;
/// [`Slot::share`] in the low half, [`Slot::born`] in the high half.
const SHARE_BORN: usize = 7;

/// `BUCKETS` mapped in; unmapped when the last [`BucketTable`] goes.
struct Mapping {
    base: NonNull<AtomicU64>,
    len: usize,
    slots: u32,
    /// The map's descriptor, kept open as long as it is mapped.
    _map: MapData,
}

// SAFETY: the mapping is shared memory that every access reads and writes
// through atomics; the pointer is valid until `drop`.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: the region `mmap` returned, unmapped once.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

/// The bucket table, mapped: cheap to clone (the sampler keeps one of its
/// own).
#[derive(Clone)]
pub struct BucketTable {
    mapping: Arc<Mapping>,
    seed: u64,
    groups: u32,
}

impl std::fmt::Debug for BucketTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BucketTable")
            .field("slots", &self.mapping.slots)
            .field("seed", &"(hidden)")
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

impl BucketTable {
    /// Maps the table `map` whose hash seed is `seed`.
    pub fn map(map: MapData, seed: u64) -> Result<Self, KernelError> {
        let slots = map.info().map_err(map_err(map_name::BUCKETS))?.max_entries();
        // SAFETY: a query without side effects.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).unwrap_or(4096);
        let len = (slots as usize * size_of::<Slot>()).next_multiple_of(page);
        // SAFETY: a new shared mapping of the map's descriptor; the kernel
        // checks the length against the array's size.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                map.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(syscall_err(map_name::BUCKETS, "mmap")(std::io::Error::last_os_error()));
        }
        let base = NonNull::new(ptr.cast()).expect("mmap returns a non-null address");
        let mapping = Mapping { base, len, slots, _map: map };
        Ok(Self { mapping: Arc::new(mapping), seed, groups: table::groups(slots) })
    }

    /// The table pinned in `maps` (a pin directory's `maps/`), with the seed
    /// its `CONFIG` entry holds.
    pub fn from_pins(maps: &Path) -> Result<Self, KernelError> {
        let pinned = |name: &'static str| {
            let path = maps.join(name);
            MapData::from_pin(&path).map_err(|source| KernelError::PinnedMap { path, source })
        };
        let config: Array<MapData, Config> =
            Array::try_from(aya::maps::Map::Array(pinned(map_name::CONFIG)?))
                .map_err(map_err(map_name::CONFIG))?;
        let seed = config.get(&0, 0).map_err(map_err(map_name::CONFIG))?.bucket_seed;
        Self::map(pinned(map_name::BUCKETS)?, seed)
    }

    /// Slots the table has.
    #[must_use]
    pub fn slots(&self) -> u32 {
        self.mapping.slots
    }

    /// The hash seed.
    #[must_use]
    pub fn seed(&self) -> u64 {
        self.seed
    }

    fn word(&self, slot: u32, word: usize) -> &AtomicU64 {
        assert!(slot < self.mapping.slots, "slot {slot} of {}", self.mapping.slots);
        // SAFETY: in bounds (above) of a mapping that lives as long as
        // `self`; the kernel's words are aligned u64s, which AtomicU64 is.
        unsafe { &*self.mapping.base.as_ptr().add(slot as usize * WORDS + word) }
    }

    /// The source in slot `index`, if one is: its tag is read before and
    /// after the rest, so that a slot changing hands meanwhile reads as none.
    fn read(&self, index: u32) -> Option<(SlotKey, Bucket)> {
        let tag = self.word(index, TAG).load(Ordering::Acquire);
        if tag & LIVE == 0 {
            return None;
        }
        let load = |word| self.word(index, word).load(Ordering::Relaxed);
        let key = SlotKey { addr: [load(ADDR_LO), load(ADDR_HI)], tag };
        let share_born = load(SHARE_BORN);
        #[expect(clippy::cast_possible_truncation, reason = "the two halves of a word")]
        let bucket = Bucket {
            tat: load(TAT),
            passed: load(PASSED),
            dropped: load(DROPPED),
            over_since: load(OVER_SINCE),
            share: share_born as u32,
            born: (share_born >> 32) as u32,
        };
        (self.word(index, TAG).load(Ordering::Acquire) == tag).then_some((key, bucket))
    }

    /// The slot indexes of `key`'s two groups, in the order the program
    /// looks.
    fn group_of(&self, key: &SlotKey) -> impl Iterator<Item = u32> {
        let (one, two) = table::first_slots(key, self.seed, self.groups);
        (one..one + WAYS).chain(two..two + WAYS)
    }

    /// The bucket of `key`, if tracked (looked for in both its groups,
    /// where the program stops at a free slot of the first).
    #[must_use]
    pub fn get(&self, key: &BucketKey) -> Option<Bucket> {
        let key = SlotKey::of(key);
        self.group_of(&key).find_map(|index| self.read(index).filter(|(k, _)| *k == key).map(|(_, b)| b))
    }

    /// Calls `f` for every tracked source.
    pub fn for_each(&self, f: &mut dyn FnMut(&BucketKey, &Bucket)) {
        for index in 0..self.groups * WAYS {
            if let Some((key, bucket)) = self.read(index) {
                f(&key.bucket_key(), &bucket);
            }
        }
    }

    /// Forgets `key`'s bucket (its source starts over with a full burst).
    /// False when it was not tracked.
    #[must_use]
    pub fn remove(&self, key: &BucketKey) -> bool {
        let key = SlotKey::of(key);
        self.group_of(&key).any(|index| {
            self.read(index).is_some_and(|(k, _)| k == key)
                && self
                    .word(index, TAG)
                    .compare_exchange(key.tag, 0, Ordering::AcqRel, Ordering::Relaxed)
                    .is_ok()
        })
    }

    /// Sets the part of its limit this host enforces for `key`'s source
    /// ([`throttle_common::table::Slot::share`]; 0: all of it). False when
    /// it is not tracked: a source that comes back starts with all of it.
    #[must_use]
    pub fn set_share(&self, key: &BucketKey, share: u32) -> bool {
        let key = SlotKey::of(key);
        let Some(index) = self.group_of(&key).find(|&index| self.read(index).is_some_and(|(k, _)| k == key))
        else {
            return false;
        };
        let set = |share: u32| {
            let word = self.word(index, SHARE_BORN);
            let _ = word.fetch_update(Ordering::AcqRel, Ordering::Relaxed, |old| {
                Some(old & !u64::from(u32::MAX) | u64::from(share))
            });
        };
        set(share);
        if self.word(index, TAG).load(Ordering::Acquire) != key.tag {
            // The slot changed hands meanwhile: the new source starts with
            // all of its limit, as the program gave it.
            set(0);
            return false;
        }
        true
    }

    /// Raises the TAT of `key`'s bucket to `tat` when it is lower: the
    /// source spent that much more of its limit elsewhere (fleet mode's
    /// merged debt of a low-rate limit). A banned source's TAT, marked, is
    /// left as it is. False when it is not tracked.
    #[must_use]
    pub fn raise_tat(&self, key: &BucketKey, tat: u64) -> bool {
        let key = SlotKey::of(key);
        let Some(index) = self.group_of(&key).find(|&index| self.read(index).is_some_and(|(k, _)| k == key))
        else {
            return false;
        };
        let _ = self.word(index, TAT).fetch_update(Ordering::AcqRel, Ordering::Relaxed, |seen| {
            (seen & throttle_common::BAN_MARK == 0 && seen < tat).then_some(tat)
        });
        // A slot that changed hands meanwhile (a new source in it since the
        // look-up) may have been raised: it starts at most one debt behind.
        self.word(index, TAG).load(Ordering::Acquire) == key.tag
    }

    /// Writes `bucket` as the state of `key`: over its slot's if tracked,
    /// else as [`Self::insert`] does (for the tests and the benchmarks).
    /// False when it was not tracked and its groups are full.
    #[must_use]
    pub fn put(&self, key: &BucketKey, bucket: &Bucket) -> bool {
        let slot_key = SlotKey::of(key);
        let held =
            self.group_of(&slot_key).find(|&index| self.read(index).is_some_and(|(k, _)| k == slot_key));
        let Some(index) = held else {
            return self.insert(key, bucket);
        };
        let store = |word, value| self.word(index, word).store(value, Ordering::Relaxed);
        store(TAT, bucket.tat);
        store(PASSED, bucket.passed);
        store(DROPPED, bucket.dropped);
        store(OVER_SINCE, bucket.over_since);
        store(SHARE_BORN, u64::from(bucket.share) | u64::from(bucket.born) << 32);
        true
    }

    /// Tracks `key` with `bucket` in a free slot of its groups, first group
    /// first, the way the program would (for the tests and the benchmarks, which fill tables
    /// the program is not inserting the same sources into). False when its
    /// groups are full or it is tracked already.
    #[must_use]
    pub fn insert(&self, key: &BucketKey, bucket: &Bucket) -> bool {
        let key = SlotKey::of(key);
        if self.group_of(&key).any(|index| self.read(index).is_some_and(|(k, _)| k == key)) {
            return false;
        }
        self.group_of(&key).any(|index| {
            let tag = self.word(index, TAG);
            if tag.compare_exchange(0, BUSY, Ordering::AcqRel, Ordering::Relaxed).is_err() {
                return false;
            }
            let store = |word, value| self.word(index, word).store(value, Ordering::Relaxed);
            store(ADDR_LO, key.addr[0]);
            store(ADDR_HI, key.addr[1]);
            store(TAT, bucket.tat);
            store(PASSED, bucket.passed);
            store(DROPPED, bucket.dropped);
            store(OVER_SINCE, bucket.over_since);
            store(SHARE_BORN, u64::from(bucket.share) | u64::from(bucket.born) << 32);
            tag.store(key.tag, Ordering::Release);
            true
        })
    }
}
