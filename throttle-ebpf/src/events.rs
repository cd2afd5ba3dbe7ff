//! The data path's events: transitions (a source starts or stops being
//! dropped, a ban starts, the first-seen budget runs dry or recovers, a
//! deny rule hits after a quiet while), sent through a ring buffer under a
//! budget of their own, so that a flood cannot fill the ring; what the
//! budget holds back and what a full ring loses are counted.

use core::ptr::addr_of_mut;

use aya_ebpf::helpers::{bpf_ktime_get_coarse_ns, bpf_ktime_get_ns};
use throttle_common::{admit, event, gcra::ticks_from_ns, table::SlotKey, Event, Family};

use crate::{
    maps::{EVENTS, EVENT_STATS, RULE_HITS},
    word,
};

/// Counts one under `stat` of `EVENT_STATS` on this CPU.
#[inline(always)]
pub fn count(stat: u32) {
    if let Some(slot) = EVENT_STATS.get_ptr_mut(stat) {
        // SAFETY: this CPU's slot, from a successful lookup; nothing else
        // writes it while we run.
        unsafe { *slot += 1 };
    }
}

/// Sends an event of `kind` about `addr` and `owner`, if the budget allows.
#[inline(never)]
fn send(kind: u32, addr: &[u32; 4], family: Family, owner: u32) {
    // SAFETY: a helper without arguments.
    let at_ns = unsafe { bpf_ktime_get_ns() };
    let Some(budget) = word::event_state(event::STATE_BUDGET) else {
        return;
    };
    // One try at the budget: an event that loses the race to another CPU's
    // is held back like one over the budget.
    let seen = budget.load();
    let admitted = admit(seen, ticks_from_ns(at_ns), 1, &event::LIMIT);
    if !admitted.is_some_and(|next| budget.compare_exchange(seen, next)) {
        count(event::SUPPRESSED);
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count(event::LOST);
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points at the reserved entry, an `Event`'s room; each
    // field is written in place (no copy of the whole on the stack, whose
    // room the call chain is short of).
    unsafe {
        addr_of_mut!((*e).at_ns).write(at_ns);
        addr_of_mut!((*e).kind).write(kind);
        addr_of_mut!((*e).owner).write(owner);
        addr_of_mut!((*e).addr).write(*addr);
        addr_of_mut!((*e).family).write(family);
        addr_of_mut!((*e)._pad).write(0);
    }
    entry.submit(0);
    count(event::SENT);
}

/// An event about the bucket `key`.
#[inline(always)]
pub fn of_bucket(kind: u32, key: &SlotKey) {
    send(kind, key.addr32_ref(), key.family(), key.owner());
}

/// The first-seen budget refused a source (`admitted` false) or admitted
/// one: an event when that changes whether it is dry.
#[inline(always)]
pub fn budget(admitted: bool, key: &SlotKey) {
    let Some(dry) = word::event_state(event::STATE_DRY) else {
        return;
    };
    let (from, to, kind) = if admitted { (1, 0, event::BUDGET_RECOVERED) } else { (0, 1, event::BUDGET_DRY) };
    if dry.load() == from && dry.compare_exchange(from, to) {
        send(kind, key.addr32_ref(), key.family(), 0);
    }
}

/// A deny rule (`id`) dropped a packet of `src`: an event when it had not
/// for [`event::DENY_QUIET_NS`]. Its last hit is written down at most once
/// a [`event::HIT_WRITE_NS`].
#[inline(always)]
pub fn deny_hit(id: u32, src: &[u32; 4], family: Family) {
    let Some(last) = RULE_HITS.get_ptr_mut(id % event::HIT_SLOTS) else {
        return;
    };
    // SAFETY: a helper without arguments.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // SAFETY: a value of the array, from a successful lookup. Racing
    // writers store about the same time; a lost write only repeats an event
    // a second later.
    let seen = unsafe { *last };
    let quiet = now.saturating_sub(seen);
    if quiet > event::HIT_WRITE_NS {
        // SAFETY: as above.
        unsafe { *last = now };
        if quiet > event::DENY_QUIET_NS {
            send(event::DENY_HIT, src, family, id);
        }
    }
}
