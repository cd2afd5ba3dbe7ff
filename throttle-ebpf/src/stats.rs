//! Per-CPU verdict counters.

use crate::maps::COUNTERS;

/// Counts one packet under `reason`. A per-CPU slot needs no atomic.
#[inline(always)]
pub fn count(reason: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(reason) {
        // SAFETY: the pointer comes from a successful lookup in this CPU's
        // slice of the array, which nothing else writes while we run.
        unsafe { *slot += 1 };
    }
}
