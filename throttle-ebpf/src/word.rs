//! The words of map values that several CPUs update at once: the one place
//! of atomics and of the raw pointers they need.

use core::intrinsics::{atomic_and, atomic_cxchg, atomic_or, atomic_xchg, AtomicOrdering};

use crate::maps::NEW_SOURCES;

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
    pub unsafe fn new(ptr: *mut u64) -> Self {
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

    /// One more, without a locked add: a load and a store. Two CPUs
    /// counting at the same instant may lose one; for the statistics of a
    /// source, which is cheaper than a locked add on every packet.
    #[inline(always)]
    pub fn bump(self) {
        // SAFETY: as in `load`.
        unsafe { self.ptr.write_volatile(self.ptr.read_volatile() + 1) };
    }

    /// `BPF_OR | BPF_FETCH`: sets `bits`, and returns the word before.
    #[inline(always)]
    pub fn fetch_or(self, bits: u64) -> u64 {
        // SAFETY: as in `load`; the kernel's atomic or is atomic on it.
        unsafe { atomic_or::<u64, u64, { AtomicOrdering::SeqCst }>(self.ptr, bits) }
    }

    /// `BPF_AND`: clears what `mask` does not keep.
    #[inline(always)]
    pub fn and(self, mask: u64) {
        // SAFETY: as in `fetch_or`.
        unsafe { atomic_and::<u64, u64, { AtomicOrdering::SeqCst }>(self.ptr, mask) };
    }

    /// `BPF_XCHG`: stores `value` with a full barrier.
    #[inline(always)]
    pub fn swap(self, value: u64) {
        // SAFETY: as in `fetch_or`.
        unsafe { atomic_xchg::<u64, { AtomicOrdering::SeqCst }>(self.ptr, value) };
    }
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
