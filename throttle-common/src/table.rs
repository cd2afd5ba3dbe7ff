//! The bucket table, `BUCKETS`: an array of [`Slot`]s that the program
//! keeps as a set-associative hash table of its own.
//!
//! A key lives in one of the [`WAYS`] slots of one of the two groups its
//! keyed hash picks ([`first_slots`]). A slot is one cache line (64 bytes: the key and
//! the GCRA state together, with no list or bucket head around it), so that
//! metering a tracked source reads one line, and the table costs 64 bytes
//! per source it can hold, where the kernel's LRU hash took about 128.
//!
//! Lookups take no lock: a slot is found by its [`Slot::tag`] and address,
//! and its TAT moves by compare-and-swap as before. The inserts of a key
//! are serialized by the bit of its first group in `BUCKET_LOCKS`, so a
//! source never holds two slots; two inserts of different keys that want
//! one slot are told apart by a compare-and-swap on its tag. A new source
//! takes a free slot of its first group, else of its second, or else the
//! slot of the two groups whose TAT is oldest: a full bucket (TAT in the past) holds no state a fresh one
//! lacks, so reusing it changes no verdict; only when every slot of the
//! group is still limiting does a source lose its state, as the LRU map
//! evicted one. A banned source's TAT carries [`crate::BAN_MARK`], above
//! every other, so it goes last.
//!
//! A slot changes hands in three steps: its tag becomes [`BUSY`] (lookups
//! stop matching it), the new key and state are written, the new tag is
//! published. A CPU metering the slot's old source checks the tag again
//! after reading the TAT, so its compare-and-swap cannot land on the new
//! source's state.

use bytemuck::{Pod, Zeroable};

use crate::{BucketKey, Family};

/// Slots of a group.
pub const WAYS: u32 = 4;
/// Groups whose insert locks share one word of `BUCKET_LOCKS` (a bit each).
pub const GROUPS_PER_LOCK: u32 = 64;
/// Tries at a group's insert lock before the packet is counted
/// `contended`.
pub const LOCK_TRIES: u32 = 16;

/// [`Slot::tag`] of a slot that holds a source, with [`tag`]'s owner and
/// family.
pub const LIVE: u64 = 1 << 63;
/// [`Slot::tag`] of a slot being filled.
pub const BUSY: u64 = 1 << 62;

/// A slot of `BUCKETS`: a tracked source's key and bucket, one cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Slot {
    /// The source's masked address ([`SlotKey::addr`]).
    pub addr: [u64; 2],
    /// 0: free; [`BUSY`]: being filled; else [`LIVE`] with the owner and
    /// family of the key ([`tag`]).
    pub tag: u64,
    /// The GCRA theoretical arrival time, in ticks ([`crate::gcra`]).
    pub tat: u64,
    /// Packets admitted. Counted without a locked add: two CPUs counting
    /// the same source at the same instant may lose one.
    pub passed: u64,
    /// Packets over the limit (dropped, or passed in dry-run); as `passed`.
    pub dropped: u64,
    /// Since when (ticks) every packet of the source was over its limit;
    /// 0 when the last one passed.
    pub over_since: u64,
    /// The part of its limit this host enforces for the source, in
    /// 1/[`SHARE_ONE`]ths (fleet mode: its share of a limit that holds for
    /// the fleet); 0: the whole limit. Written by the daemon.
    pub share: u32,
    /// When the source took this slot ([`born_of`]).
    pub born: u32,
}

const _: () = assert!(size_of::<Slot>() == 64);

/// [`Slot::share`] of the whole limit.
pub const SHARE_ONE: u32 = 1 << 16;

/// The unit of [`Slot::born`]: 2^30 ns (1.07 s), which a u32 counts for
/// 146 years of uptime.
pub const BORN_UNIT_NS: u64 = 1 << BORN_SHIFT;
const BORN_SHIFT: u32 = 30;

/// [`Slot::born`] of a time in ticks, in [`BORN_UNIT_NS`].
#[inline(always)]
#[must_use]
pub const fn born_of(ticks: u64) -> u32 {
    (ticks >> (BORN_SHIFT + crate::gcra::TICK_SHIFT)) as u32
}

/// A bucket key as the table stores and hashes it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SlotKey {
    /// [`BucketKey::addr`]'s bytes, as two words.
    pub addr: [u64; 2],
    /// [`tag`] of the key's owner and family.
    pub tag: u64,
}

const _: () = assert!(size_of::<SlotKey>() == 24);

/// The tag of a live slot of `owner` ([`BucketKey::rule`]) and `family`.
#[inline(always)]
#[must_use]
pub const fn tag(owner: u32, family: Family) -> u64 {
    LIVE | ((family.0 as u64) << 32) | owner as u64
}

impl SlotKey {
    /// The key of a masked address (packet byte order, IPv4 in `addr[0]`).
    #[inline(always)]
    #[must_use]
    pub const fn new(addr: &[u32; 4], owner: u32, family: Family) -> Self {
        Self {
            addr: [addr[0] as u64 | (addr[1] as u64) << 32, addr[2] as u64 | (addr[3] as u64) << 32],
            tag: tag(owner, family),
        }
    }

    /// The table key of `key`.
    #[inline(always)]
    #[must_use]
    pub const fn of(key: &BucketKey) -> Self {
        Self::new(&key.addr, key.rule, key.family)
    }

    /// The address as four words, as [`BucketKey::addr`] holds it.
    #[inline(always)]
    #[must_use]
    pub const fn addr32(&self) -> [u32; 4] {
        let [lo, hi] = self.addr;
        [lo as u32, (lo >> 32) as u32, hi as u32, (hi >> 32) as u32]
    }

    /// The address's bytes as four words (the same bytes as [`Self::addr`]).
    #[inline(always)]
    #[must_use]
    pub fn addr32_ref(&self) -> &[u32; 4] {
        bytemuck::cast_ref(&self.addr)
    }

    /// The owner ([`BucketKey::rule`]).
    #[inline(always)]
    #[must_use]
    pub const fn owner(&self) -> u32 {
        self.tag as u32
    }

    /// The family.
    #[inline(always)]
    #[must_use]
    pub const fn family(&self) -> Family {
        Family((self.tag >> 32) as u32 & 0xff)
    }

    /// The bucket key this is of.
    #[must_use]
    pub const fn bucket_key(&self) -> BucketKey {
        BucketKey { addr: self.addr32(), rule: self.owner(), family: self.family() }
    }
}

/// Odd constants of the hash: the fractional part of the golden ratio, and
/// the multipliers of `MurmurHash3`'s 64-bit finalizer.
const M0: u64 = 0x9e37_79b9_7f4a_7c15;
const M1: u64 = 0xff51_afd7_ed55_8ccd;
const M2: u64 = 0xc4ce_b9fe_1a85_ec53;

/// The key's hash under the table's `seed` (random per table, so that
/// sources cannot be picked to fall into one group). Three multiplies of
/// which two run side by side, then a finalizer: a dozen BPF instructions.
#[inline(always)]
#[must_use]
pub const fn hash(key: &SlotKey, seed: u64) -> u64 {
    let mut h = (key.addr[0] ^ seed).wrapping_mul(M0)
        ^ (key.addr[1] ^ key.tag ^ seed.rotate_left(32)).wrapping_mul(M1);
    h ^= h >> 32;
    h = h.wrapping_mul(M2);
    h ^ (h >> 29)
}

/// The first slots of `key`'s two groups in a table of `groups` groups:
/// each half of the hash scaled to the group count (a multiply and a
/// shift, for any count). A source lives in its first group while that has
/// room, else in its second: two choices keep a table nearly full with few
/// sources crowded out, and a lookup at a low load reads one group.
#[inline(always)]
#[must_use]
pub const fn first_slots(key: &SlotKey, seed: u64, groups: u32) -> (u32, u32) {
    let h = hash(key, seed);
    let one = ((h >> 32) * groups as u64) >> 32;
    let two = ((h & 0xffff_ffff) * groups as u64) >> 32;
    (one as u32 * WAYS, two as u32 * WAYS)
}

/// The groups of a table of `slots` slots.
#[must_use]
pub const fn groups(slots: u32) -> u32 {
    slots / WAYS
}

/// The words of `BUCKET_LOCKS` a table of `groups` groups needs.
#[must_use]
pub const fn lock_words(groups: u32) -> u32 {
    groups.div_ceil(GROUPS_PER_LOCK)
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::{vec, vec::Vec};

    use proptest::prelude::*;

    use super::*;
    use crate::{FAMILY_V4, FAMILY_V6};

    proptest! {
        #[test]
        fn a_slot_key_gives_back_the_bucket_key(addr: [u32; 4], owner: u32, v6: bool) {
            let family = if v6 { FAMILY_V6 } else { FAMILY_V4 };
            let key = BucketKey { addr, rule: owner, family };
            let slot_key = SlotKey::of(&key);
            prop_assert_eq!(slot_key.bucket_key(), key);
            prop_assert_eq!(slot_key.addr32_ref(), &addr);
            prop_assert!(slot_key.tag & LIVE != 0 && slot_key.tag & BUSY == 0, "a key's tag is live, never busy");
        }

        #[test]
        fn both_groups_are_in_the_table(addr: [u32; 4], owner: u32, seed: u64, slots in 4u32..=1 << 24) {
            let key = SlotKey::new(&addr, owner, FAMILY_V6);
            let (one, two) = first_slots(&key, seed, groups(slots));
            prop_assert!(one % WAYS == 0 && two % WAYS == 0);
            prop_assert!(one + WAYS <= slots && two + WAYS <= slots, "{one} {two} of {slots}");
        }

        #[test]
        fn keys_that_differ_in_one_field_are_different_slots(addr: [u32; 4], owner: u32, bit in 0u32..128) {
            let key = SlotKey::new(&addr, owner, FAMILY_V6);
            let mut other = addr;
            other[(bit / 32) as usize] ^= 1 << (bit % 32);
            prop_assert_ne!(SlotKey::new(&other, owner, FAMILY_V6), key);
            prop_assert_ne!(SlotKey::new(&addr, owner ^ 1, FAMILY_V6), key);
            prop_assert_ne!(SlotKey::new(&addr, owner, FAMILY_V4), key);
        }
    }

    /// Sources placed as the program places them (first group while it
    /// has room, else the second): how many find no room at all.
    fn crowded_out(keys: impl Iterator<Item = SlotKey>, seed: u64, slots: u32) -> usize {
        let mut load = vec![0u32; groups(slots) as usize];
        let mut out = 0;
        for key in keys {
            let (one, two) = first_slots(&key, seed, groups(slots));
            let (one, two) = ((one / WAYS) as usize, (two / WAYS) as usize);
            if load[one] < WAYS {
                load[one] += 1;
            } else if load[two] < WAYS {
                load[two] += 1;
            } else {
                out += 1;
            }
        }
        out
    }

    #[test]
    fn a_table_holds_most_of_as_many_sources_as_it_has_slots() {
        // Consecutive addresses, the shape of a scan or of one network's
        // clients, under a few seeds.
        let slots = 1 << 16;
        for seed in [0, 1, 0x5eed, u64::MAX] {
            let keys =
                |n: u32| (0..n).map(|i| SlotKey::new(&[(0x0a00_0000 + i).to_be(), 0, 0, 0], 0, FAMILY_V4));
            // Measured: about 1 in 16 384 at a quarter, 135 in 32 768 at
            // half, 4 400 in 59 000 at 90 %; the bounds leave room.
            for (n, most) in [(slots / 4, 8), (slots / 2, slots / 100), (slots / 10 * 9, slots / 10)] {
                let out = crowded_out(keys(n), seed, slots);
                std::println!("{n} sources in {slots} slots, seed {seed}: {out} crowded out");
                assert!(out <= most as usize, "{n} sources in {slots} slots: {out} crowded out, seed {seed}");
            }
        }
    }

    #[test]
    fn sources_spread_over_the_groups() {
        // 65 536 sources over 16 384 groups: no first group gets many more
        // than the mean of 4.
        let slots = 1 << 16;
        let mut load: Vec<u32> = vec![0; groups(slots) as usize];
        for i in 0..slots {
            let key = SlotKey::new(&[(0x0a00_0000 + i).to_be(), 0, 0, 0], 7, FAMILY_V4);
            load[(first_slots(&key, 0x1234, groups(slots)).0 / WAYS) as usize] += 1;
        }
        let max = load.iter().copied().max().unwrap_or(0);
        assert!(max <= 16, "the busiest group has {max}");
    }
}
