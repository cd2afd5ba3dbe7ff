//! The bucket table's lookups and inserts ([`throttle_common::table`]).

use core::ptr::addr_of_mut;

use throttle_common::table::{born_of, Slot, SlotKey, BUSY, GROUPS_PER_LOCK, LOCK_TRIES, WAYS};

use crate::{
    maps::{BUCKETS, BUCKET_LOCKS},
    word::Word,
};

/// A tracked source's slot, by its words. Made only from a successful
/// lookup of `BUCKETS`.
#[derive(Clone, Copy)]
pub struct SlotWords {
    slot: *mut Slot,
}

macro_rules! slot_word {
    ($name:ident, $field:ident) => {
        #[inline(always)]
        pub fn $name(self) -> Word {
            // SAFETY: `slot` comes from a successful lookup, and `Slot` is
            // `repr(C)` with aligned u64 fields; `addr_of_mut!` makes no
            // reference.
            unsafe { Word::new(addr_of_mut!((*self.slot).$field)) }
        }
    };
}

impl SlotWords {
    /// [`Slot::share`], as of now.
    #[inline(always)]
    pub fn share(self) -> u32 {
        // SAFETY: as in `slot_word!`: an aligned u32 of live map memory.
        unsafe { addr_of_mut!((*self.slot).share).read_volatile() }
    }

    /// When the source took the slot ([`table::born_of`]); written once,
    /// before the tag that publishes the slot.
    #[inline(always)]
    pub fn born(self) -> u32 {
        // SAFETY: as in `slot_word!`: an aligned u32 of live map memory.
        unsafe { addr_of_mut!((*self.slot).born).read_volatile() }
    }

    slot_word!(tag, tag);
    slot_word!(tat, tat);
    slot_word!(passed, passed);
    slot_word!(dropped, dropped);
    slot_word!(over_since, over_since);
}

/// The slot `index` of the table.
#[inline(always)]
fn slot(index: u32) -> Option<SlotWords> {
    BUCKETS.get_ptr_mut(index).map(|slot| SlotWords { slot })
}

/// The slot of the table that holds `key`, if any: one of the [`WAYS`] of
/// its first group (from slot `one`), or else of its second (from `two`).
/// A source goes to its second group only when its first is full, so a
/// free slot in the first ends the search: a miss at a low load reads one
/// slot. (The daemon freeing a slot of a full first group, as a reset does,
/// can leave a source of that group's overflow unseen: it then starts
/// again with a full burst, as if reset too.) An array lookup is inlined
/// by the verifier: a bound check and an add.
#[inline(always)]
pub fn find(key: &SlotKey, one: u32, two: u32) -> Option<SlotWords> {
    for index in 0..2 * WAYS {
        let at = if index < WAYS { one + index } else { two + index - WAYS };
        let slot = slot(at)?;
        // SAFETY: as in `SlotWords::tag`: live map memory. Plain loads: a
        // torn view of a slot changing hands cannot match, since its tag is
        // `BUSY` meanwhile and is checked again before any write.
        let (tag, matches) = unsafe {
            let s = slot.slot;
            let tag = addr_of_mut!((*s).tag).read_volatile();
            let matches = tag == key.tag
                && addr_of_mut!((*s).addr[0]).read_volatile() == key.addr[0]
                && addr_of_mut!((*s).addr[1]).read_volatile() == key.addr[1];
            (tag, matches)
        };
        if matches {
            return Some(slot);
        }
        if tag == 0 && index < WAYS {
            return None;
        }
    }
    None
}

/// What [`insert`] came to.
pub enum Insert {
    /// The key now holds a slot with the given state.
    Inserted,
    /// Another CPU inserted it first.
    Present,
    /// The group's insert lock stayed taken, or a slot changed under it.
    Contended,
}

/// Gives `key` a slot of its groups (from `one` and `two`) at `now`: a free
/// one, first group first, else the one of both with the oldest TAT (a full
/// bucket, or the stalest of the limited ones; banned ones last). Its first
/// packet moved the TAT to `fresh`, or did not fit (`None`: counted
/// dropped). Under its first group's insert lock, so that two CPUs seeing a
/// source's first packets give it one slot.
#[inline(always)]
pub fn insert(key: &SlotKey, one: u32, two: u32, fresh: Option<u64>, now: u64) -> Insert {
    let group = one / WAYS;
    let Some(lock) = BUCKET_LOCKS.get_ptr_mut(group / GROUPS_PER_LOCK) else {
        return Insert::Contended;
    };
    // SAFETY: a value of the array, from a successful lookup.
    let lock = unsafe { Word::new(lock) };
    let bit = 1u64 << (group % GROUPS_PER_LOCK);
    let mut locked = false;
    for _ in 0..LOCK_TRIES {
        if lock.fetch_or(bit) & bit == 0 {
            locked = true;
            break;
        }
    }
    if !locked {
        return Insert::Contended;
    }
    let inserted = insert_locked(key, one, two, fresh, now);
    lock.and(!bit);
    inserted
}

/// No slot chosen yet: above every slot index.
const NO_VICTIM: u32 = u32::MAX;

/// The slot an insert takes, as the walk over its groups stands.
struct Choice {
    victim: u32,
    tag: u64,
    oldest: u64,
}

const _: () = assert!(WAYS == 4, "Choice::consider is called once a way");

impl Choice {
    /// Looks at slot `at`: false ends the walk (a free slot, taken; or a
    /// slot out of the table, which leaves none chosen).
    #[inline(always)]
    fn consider(&mut self, at: u32) -> bool {
        let Some(slot) = slot(at) else {
            self.victim = NO_VICTIM;
            return false;
        };
        let tag = slot.tag().load();
        if tag == 0 {
            self.victim = at;
            self.tag = 0;
            return false;
        }
        if tag & BUSY != 0 {
            // The daemon is filling it.
            return true;
        }
        // A banned TAT has `BAN_MARK` (bit 63), above any other.
        let tat = slot.tat().load();
        if tat < self.oldest || self.victim == NO_VICTIM {
            self.oldest = tat;
            self.victim = at;
            self.tag = tag;
        }
        true
    }
}

/// [`insert`], the group's lock held.
#[inline(always)]
fn insert_locked(key: &SlotKey, one: u32, two: u32, fresh: Option<u64>, now: u64) -> Insert {
    if find(key, one, two).is_some() {
        return Insert::Present;
    }
    // The victim by its index and the tag it had: a pointer kept across
    // the walk would be one the verifier of a loader without `CAP_PERFMON`
    // sees unwritten on some paths. Looking it up again is a bound check
    // and an add. The walk is written out, one step a slot: as a loop, the
    // hardening's speculative paths lose its count and never end it.
    let mut choice = Choice { victim: NO_VICTIM, tag: 0, oldest: u64::MAX };
    let _walked_all = choice.consider(one)
        && choice.consider(one + 1)
        && choice.consider(one + 2)
        && choice.consider(one + 3)
        && choice.consider(two)
        && choice.consider(two + 1)
        && choice.consider(two + 2)
        && choice.consider(two + 3);
    let Choice { victim, tag, .. } = choice;
    if victim == NO_VICTIM {
        return Insert::Contended;
    }
    let Some(slot) = slot(victim) else {
        return Insert::Contended;
    };
    // Lookups stop matching it before its key changes.
    if !slot.tag().compare_exchange(tag, BUSY) {
        // The daemon freed or filled it meanwhile.
        return Insert::Contended;
    }
    let s = slot.slot;
    // SAFETY: live map memory, as in `find`; the slot is `BUSY`, which no
    // lookup matches and no other insert takes.
    let passed = u64::from(fresh.is_some());
    unsafe {
        addr_of_mut!((*s).addr).write_volatile(key.addr);
        addr_of_mut!((*s).tat).write_volatile(fresh.unwrap_or(0));
        addr_of_mut!((*s).passed).write_volatile(passed);
        addr_of_mut!((*s).dropped).write_volatile(1 - passed);
        addr_of_mut!((*s).over_since).write_volatile(0);
        addr_of_mut!((*s).share).write_volatile(0);
        addr_of_mut!((*s).born).write_volatile(born_of(now));
    }
    // Published last, by an atomic exchange (a full barrier): whoever
    // matches the tag sees the key and state above.
    slot.tag().swap(key.tag);
    Insert::Inserted
}
