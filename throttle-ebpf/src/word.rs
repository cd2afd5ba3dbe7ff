//! The words of map values that several CPUs update at once: the one place
//! of atomics and of the raw pointers they need.

use core::{
    intrinsics::{atomic_cxchg, atomic_xadd, AtomicOrdering},
    ptr::addr_of_mut,
};

use throttle_common::{Bucket, BucketKey};

use crate::maps::{BUCKETS, NEW_SOURCES};

/// An aligned u64 inside a map value, which other CPUs may read and write
/// while this program runs. Made only from a successful map lookup, below,
/// so that every access is to live map memory: the kernel keeps a value it
/// returned mapped until the program returns.
#[derive(Clone, Copy)]
pub struct Word {
    ptr: *mut u64,
}

impl Word {
    /// # Safety
    ///
    /// `ptr` points to an aligned u64 inside a value returned by a successful
    /// map lookup of this run of the program.
    #[inline(always)]
    unsafe fn new(ptr: *mut u64) -> Self {
        Self { ptr }
    }

    /// The word as of now. A relaxed atomic load does not lower on the BPF
    /// target; a volatile load of an aligned u64 is one instruction, which is
    /// as atomic as the hardware's.
    #[inline(always)]
    pub fn load(self) -> u64 {
        // SAFETY: `Word::new`'s contract: a live, aligned map word.
        unsafe { self.ptr.read_volatile() }
    }

    /// `BPF_CMPXCHG`: whether the word was `old` and is now `new`.
    #[inline(always)]
    pub fn compare_exchange(self, old: u64, new: u64) -> bool {
        // SAFETY: as in `load`; the kernel's cmpxchg is atomic on it.
        unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(self.ptr, old, new).1
        }
    }

    /// `BPF_ADD` with no fetch: a locked add.
    #[inline(always)]
    pub fn add(self, n: u64) {
        // SAFETY: as in `load`; the kernel's locked add is atomic on it.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(self.ptr, n) };
    }
}

/// A tracked source's [`Bucket`], by its words. Made only by [`bucket`],
/// from a successful lookup.
#[derive(Clone, Copy)]
pub struct BucketWords {
    bucket: *mut Bucket,
}

impl BucketWords {
    /// The GCRA theoretical arrival time.
    #[inline(always)]
    pub fn tat(self) -> Word {
        // SAFETY: `bucket` comes from a successful lookup, and `Bucket` is
        // `repr(C)` with aligned u64 fields; `addr_of_mut!` makes no
        // reference.
        unsafe { Word::new(addr_of_mut!((*self.bucket).tat)) }
    }

    #[inline(always)]
    pub fn passed(self) -> Word {
        // SAFETY: as in `tat`.
        unsafe { Word::new(addr_of_mut!((*self.bucket).passed)) }
    }

    #[inline(always)]
    pub fn dropped(self) -> Word {
        // SAFETY: as in `tat`.
        unsafe { Word::new(addr_of_mut!((*self.bucket).dropped)) }
    }

    /// Since when the source has been over its limit (0: it is not).
    #[inline(always)]
    pub fn over_since(self) -> Word {
        // SAFETY: as in `tat`.
        unsafe { Word::new(addr_of_mut!((*self.bucket).over_since)) }
    }
}

/// The bucket of `key`, if the map tracks it.
#[inline(always)]
pub fn bucket(key: &BucketKey) -> Option<BucketWords> {
    BUCKETS.get_ptr_mut(key).map(|bucket| BucketWords { bucket })
}

/// The GCRA state of the first-seen budget.
#[inline(always)]
pub fn new_sources() -> Option<Word> {
    let state = NEW_SOURCES.get_ptr_mut(0)?;
    // SAFETY: a pointer to the array's only value, from a successful lookup.
    Some(unsafe { Word::new(state) })
}

/// A shared word of `EVENT_STATE` ([`throttle_common::event`]).
#[inline(always)]
pub fn event_state(index: u32) -> Option<Word> {
    let state = crate::maps::EVENT_STATE.get_ptr_mut(index)?;
    // SAFETY: a pointer to a value of the array, from a successful lookup.
    Some(unsafe { Word::new(state) })
}
