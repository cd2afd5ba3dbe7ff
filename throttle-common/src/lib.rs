//! Types shared by throttle's XDP program and its daemon, and the pure
//! rate-limit arithmetic both of them rely on.
//!
//! Every map key and value is `#[repr(C)]`, `Pod` (the derive rejects hidden
//! padding) and of a size pinned by a `const` assertion: the kernel and user
//! space read the same bytes. No `bool`, enum or `Option` crosses a map.
#![no_std]
#![allow(
    clippy::inline_always,
    reason = "the XDP program needs these inlined: BPF calls cost and limit the verifier"
)]
#![allow(clippy::pub_underscore_fields, reason = "explicit padding of map types, always zero")]

pub mod gcra;
pub mod table;

use bytemuck::{Pod, Zeroable};
pub use gcra::{admit, ceiling, Limit, CLOCK_COARSE, CLOCK_FINE, UNIT_BYTES, UNIT_PACKETS};

/// Version of the layout of every map below. A daemon refuses pinned maps of
/// another layout version; bump it whenever a key, a value or a map changes.
pub const LAYOUT_VERSION: u32 = 6;

/// Names of the maps in the XDP object (at most 15 bytes each: the kernel's
/// `BPF_OBJ_NAME_LEN` less the NUL).
pub mod map_name {
    pub const CONFIG: &str = "CONFIG";
    pub const RULES_V4: &str = "RULES_V4";
    pub const RULES_V6: &str = "RULES_V6";
    pub const CLASS_OF: &str = "CLASS_OF";
    pub const CLASSES: &str = "CLASSES";
    pub const BUCKETS: &str = "BUCKETS";
    pub const NEW_SOURCES: &str = "NEW_SOURCES";
    pub const COUNTERS: &str = "COUNTERS";
    pub const RULE_FILTER: &str = "RULE_FILTER";
    pub const IFACE_SLOT: &str = "IFACE_SLOT";
    pub const SETS_V4: &str = "SETS_V4";
    pub const SETS_V6: &str = "SETS_V6";
    pub const SET_RULES: &str = "SET_RULES";
    pub const EVENTS: &str = "EVENTS";
    pub const EVENT_STATS: &str = "EVENT_STATS";
    pub const EVENT_STATE: &str = "EVENT_STATE";
    pub const RULE_HITS: &str = "RULE_HITS";
    pub const CAPTURE: &str = "CAPTURE";
    pub const CAPTURED: &str = "CAPTURED";
    pub const RULE_COUNTS: &str = "RULE_COUNTS";
    pub const BUCKET_LOCKS: &str = "BUCKET_LOCKS";
    /// The program that passed packets continue into (`--chain`).
    pub const CHAIN: &str = "CHAIN";
    /// Every map an adoption needs, in the order the daemon pins and adopts
    /// them.
    pub const ALL: [&str; 21] = [
        CONFIG,
        RULES_V4,
        RULES_V6,
        CLASS_OF,
        CLASSES,
        BUCKETS,
        NEW_SOURCES,
        COUNTERS,
        RULE_FILTER,
        IFACE_SLOT,
        SETS_V4,
        SETS_V6,
        SET_RULES,
        EVENTS,
        EVENT_STATS,
        EVENT_STATE,
        RULE_HITS,
        CAPTURE,
        CAPTURED,
        RULE_COUNTS,
        BUCKET_LOCKS,
    ];
    /// Maps added since: pinned and adopted like the others, and made (and
    /// pinned) when the pins of a build without them are adopted, so that
    /// adopting those stays hitless.
    pub const ADDED: [&str; 1] = [CHAIN];

    /// Every map pinned: [`ALL`], then [`ADDED`].
    pub fn pinned() -> impl Iterator<Item = &'static str> {
        ALL.into_iter().chain(ADDED)
    }
}

/// Name of the XDP program.
pub const PROGRAM_NAME: &str = "throttle";

/// Default number of sources the bucket map tracks.
pub const DEFAULT_MAX_SOURCES: u32 = 1 << 20;
/// Entries the rule tries hold, per family.
pub const MAX_RULES: u32 = 16_384;
/// Entries the scope set accepts.
pub const MAX_SCOPE: u32 = 1_024;
/// Most IP sets, and so most rules naming a set.
pub const MAX_SETS: u32 = 8;
/// Most prefixes of one set (of both families together).
pub const MAX_SET_PREFIXES: u32 = 1 << 20;
/// Most limit classes, the default one (class 0, `[limits]`) included.
pub const MAX_CLASSES: u32 = 64;
/// Most limits of a class; a packet passes only when every one admits it.
pub const MAX_CLASS_LIMITS: u32 = 3;
/// Most prefix tiers of a class.
pub const MAX_TIERS: u32 = 2;
/// IPv6 extension headers walked before giving up on finding L4.
pub const MAX_IPV6_EXT_HEADERS: u32 = 8;
/// Compare-and-swap attempts on a contended bucket before the packet is
/// dropped as `contended`.
pub const CAS_ATTEMPTS: u32 = 4;

/// Interfaces the verdict counters tell apart. `COUNTERS` holds
/// [`reason::COUNT`] slots per interface slot; interface slot 0 counts the
/// packets of any interface without a slot of its own.
pub const IFACE_SLOTS: u32 = 16;
/// Interface indexes the `IFACE_SLOT` array covers (index to slot); an
/// interface of a higher index counts in slot 0.
pub const MAX_IFINDEX: u32 = 65_536;

/// An address family, as stored in [`BucketKey::family`]: [`FAMILY_V4`] or
/// [`FAMILY_V6`] (0 only in a zeroed key).
#[repr(transparent)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct Family(u32);

impl Family {
    /// No family: a zeroed key, or a packet not parsed yet.
    pub const NONE: Self = Self(0);
}

pub const FAMILY_V4: Family = Family(4);
pub const FAMILY_V6: Family = Family(6);

const _: () = assert!(size_of::<Family>() == size_of::<u32>());

/// IP protocol numbers the scope knows.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// Bits of [`ClassConfig::flags`].
pub mod class_flags {
    /// The adaptive controller moves the class's limits: newcomers are
    /// held to [`super::Config::newcomer_share`] of them while a reserve
    /// for known sources is in force.
    pub const ADAPTIVE: u32 = 1 << 0;
}

/// Bits of [`Config::flags`].
pub mod flags {
    /// Pass what would be dropped, and count it as `dry_run_pass`.
    pub const DRY_RUN: u32 = 1 << 0;
    /// A class or the scope claims some (protocol, port): `CLASS_OF` is
    /// looked up.
    pub const CLAIMS: u32 = 1 << 1;
    /// Some TCP port is claimed: a TCP packet whose port cannot be read (a
    /// non-first fragment, a truncated header) is metered by the default
    /// class, so that fragments are no way around a limit.
    pub const CLAIMS_TCP: u32 = 1 << 2;
    /// The same for UDP.
    pub const CLAIMS_UDP: u32 = 1 << 3;
    /// The IPv4 rule trie is not empty.
    pub const RULES_V4: u32 = 1 << 4;
    /// The IPv6 rule trie is not empty.
    pub const RULES_V6: u32 = 1 << 5;
    /// First-seen sources draw on the global budget of
    /// [`super::Config::new_source_limit`].
    pub const NEW_SOURCE_LIMIT: u32 = 1 << 6;
    /// The IPv4 rule trie holds a `deny` rule: an out-of-scope packet is
    /// looked up in it all the same.
    pub const DENY_V4: u32 = 1 << 7;
    /// The same for IPv6.
    pub const DENY_V6: u32 = 1 << 8;
    /// The program is attached to one interface, whose counters slot is
    /// [`super::Config::iface_slot`]: no per-packet lookup of the slot.
    pub const ONE_IFACE: u32 = 1 << 9;
    /// A packet no class claims is metered by the default class (no scope,
    /// and `[unmatched] action = "limit"`); without it, it passes.
    pub const UNMATCHED_LIMIT: u32 = 1 << 10;
    /// A rule names a set that holds IPv4 prefixes.
    pub const SETS_V4: u32 = 1 << 11;
    /// A rule names a set that holds IPv6 prefixes.
    pub const SETS_V6: u32 = 1 << 12;
    /// A capture of dropped packets runs ([`crate::CaptureConfig`]).
    pub const CAPTURE: u32 = 1 << 13;
    /// A program follows (`--chain`): what passes is tail-called into slot
    /// 0 of `CHAIN`, and passes if that slot is empty.
    pub const CHAIN: u32 = 1 << 14;
}

/// Global settings: the single entry of the `CONFIG` array.
///
/// `version` and `layout` lead the entry in every layout, so that a daemon
/// can read the layout version of pinned maps of any other layout and name
/// it when it refuses them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Config {
    /// Bumped by the daemon at every change.
    pub version: u64,
    /// [`LAYOUT_VERSION`] of the daemon that wrote it.
    pub layout: u32,
    /// [`flags`].
    pub flags: u32,
    /// The global budget of first-seen sources (cost: one per source).
    pub new_source_limit: Limit,
    /// The bank of `RULE_FILTER` in use, 0 or 1 ([`rule_filter`]).
    pub rule_filter_bank: u32,
    /// With [`flags::ONE_IFACE`]: the counters slot of the one interface.
    pub iface_slot: u32,
    /// The rule filter's masks, a byte per (bank, family)
    /// ([`rule_filter::shift_of`]), so that the data path reads a mask from
    /// the configuration instead of looking it up. 0: no mask, walk the
    /// trie.
    pub rule_filter_shifts: u32,
    /// How many set rules are in force: the first of the bank in use of
    /// `SET_RULES` ([`set_rules`]).
    pub set_rule_count: u16,
    /// The bank of `SET_RULES` in use, 0 or 1.
    pub set_rule_bank: u16,
    /// The bucket table's hash seed ([`table::hash`]), random per table.
    pub bucket_seed: u64,
    /// The bucket table's groups ([`table::groups`] of its slots).
    pub bucket_groups: u32,
    /// The part of its limit a source without a share of its own gets
    /// ([`table::Slot::share`]; 0: all of it). Fleet mode: the limit divided
    /// by the nodes while the fleet cannot be reached.
    pub default_share: u32,
    /// The adaptive controller's reserve for known sources: a bucket of a
    /// limit it moves that was made at or after this time
    /// ([`table::born_of`]) is a newcomer's, held to `newcomer_share` of
    /// the limit.
    pub known_before: u32,
    /// The part of a moved limit a newcomer gets, in 1/[`table::SHARE_ONE`]ths
    /// of it; 0: all of it, as every other source (no reserve in force).
    pub newcomer_share: u32,
}

const _: () = assert!(size_of::<Config>() == 80);

/// A limit class as the data path meters it: the `CLASSES` entry of its id
/// (0: the default class, `[limits]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct ClassConfig {
    /// The limits that must all admit a packet; the first `limit_count`.
    pub limits: [Limit; MAX_CLASS_LIMITS as usize],
    /// IPv4 aggregation mask of the class's sources, in packet byte order.
    pub ipv4_mask: u32,
    /// How many of `limits` are in force (1 to [`MAX_CLASS_LIMITS`]).
    pub limit_count: u32,
    /// IPv6 aggregation mask, in packet byte order.
    pub ipv6_mask: [u32; 4],
    /// The prefix tiers; the first `tier_count`.
    pub tiers: [TierConfig; MAX_TIERS as usize],
    /// How many of `tiers` are in force (0 to [`MAX_TIERS`]).
    pub tier_count: u32,
    /// [`class_flags`].
    pub flags: u32,
    /// The ban: a source over one of the class's limits for `ban_after`
    /// ticks in a row is denied for `ban_for` ticks; 0: no ban.
    pub ban_after: u64,
    pub ban_for: u64,
}

const _: () = assert!(size_of::<ClassConfig>() == 216);

/// A prefix tier of a class: its sources also count against the bucket of
/// their masked prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct TierConfig {
    pub limit: Limit,
    /// The tier's IPv6 prefix mask, in packet byte order.
    pub ipv6_mask: [u32; 4],
    /// The tier's IPv4 prefix mask, in packet byte order.
    pub ipv4_mask: u32,
    /// The families it applies to: [`TIER_V4`], [`TIER_V6`] or both.
    pub families: u32,
}

const _: () = assert!(size_of::<TierConfig>() == 48);

/// [`TierConfig::families`]: the tier applies to IPv4 sources.
pub const TIER_V4: u32 = 1 << 0;
/// [`TierConfig::families`]: the tier applies to IPv6 sources.
pub const TIER_V6: u32 = 1 << 1;
/// The `slot` of [`class_owner`] of a class's first tier (a limit's slot is
/// under it).
pub const TIER_SLOT: u32 = 8;

/// Actions of a rule.
pub const ACTION_ALLOW: u32 = 1;
pub const ACTION_DENY: u32 = 2;
pub const ACTION_LIMIT: u32 = 3;

/// Value of the rule tries (keyed by prefix length and address).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Rule {
    /// For [`ACTION_LIMIT`]: the rate and burst of every source it selects.
    pub limit: Limit,
    /// [`ACTION_ALLOW`], [`ACTION_DENY`] or [`ACTION_LIMIT`].
    pub action: u32,
    /// The rule's id, never 0 (0 is the default limit in a [`BucketKey`]).
    pub id: u32,
}

const _: () = assert!(size_of::<Rule>() == 32);

/// Events: the data path's transitions, sent through the `EVENTS` ring
/// buffer, never one per packet.
pub mod event {
    use super::{Limit, UNIT_PACKETS};

    /// A source's bucket starts refusing it (it was admitted before).
    pub const DROP_START: u32 = 1;
    /// A source that was being refused is admitted again with half its
    /// burst to spare.
    pub const DROP_END: u32 = 2;
    /// A class bans a source.
    pub const BAN_START: u32 = 3;
    /// The first-seen budget refuses a new source, after admitting them.
    pub const BUDGET_DRY: u32 = 4;
    /// The first-seen budget admits a new source again.
    pub const BUDGET_RECOVERED: u32 = 5;
    /// A deny rule drops a packet, the first time in [`DENY_QUIET_NS`].
    pub const DENY_HIT: u32 = 6;
    /// As the API and the log name them, by kind.
    pub const NAMES: [&str; 7] =
        ["", "drop_start", "drop_end", "ban_start", "budget_dry", "budget_recovered", "deny_hit"];

    /// Most events the program sends: a flood cannot fill the ring, and
    /// what it holds back is counted.
    pub const LIMIT: Limit = Limit::new(1_000, 1_000, UNIT_PACKETS);
    /// Bytes of the ring buffer.
    pub const RING_BYTES: u32 = 256 * 1024;
    /// A deny rule's hit is an event again after this long without one.
    pub const DENY_QUIET_NS: u64 = 10_000_000_000;
    /// How often a deny rule's last hit is written down, at most.
    pub const HIT_WRITE_NS: u64 = 1_000_000_000;
    /// Slots of `RULE_HITS`, by rule id (rules whose ids share a slot share
    /// their quiet time: an event held back, never a false one).
    pub const HIT_SLOTS: u32 = 4_096;
    /// `EVENT_STATS`: per CPU, events sent, held back by [`LIMIT`], and
    /// lost to a full ring.
    pub const SENT: u32 = 0;
    pub const SUPPRESSED: u32 = 1;
    pub const LOST: u32 = 2;
    /// Dropped packets copied to the capture ring, and lost to a full one.
    pub const CAPTURED: u32 = 3;
    pub const CAPTURE_LOST: u32 = 4;
    pub const STATS: u32 = 5;
    /// `EVENT_STATE`: the GCRA state of [`LIMIT`], and whether the
    /// first-seen budget is dry (1) or not (0).
    pub const STATE_BUDGET: u32 = 0;
    pub const STATE_DRY: u32 = 1;
    pub const STATE: u32 = 2;
}

/// One event of the data path.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Event {
    /// `CLOCK_MONOTONIC`, ns.
    pub at_ns: u64,
    /// [`event`]'s kinds.
    pub kind: u32,
    /// The limit's owner ([`BucketKey::rule`]): a rule's id, a class's
    /// limit or tier; for a deny hit, the rule's id; 0 for the budget.
    pub owner: u32,
    /// The source (masked as its bucket's key is).
    pub addr: [u32; 4],
    pub family: Family,
    pub _pad: u32,
}

const _: () = assert!(size_of::<Event>() == 40);

/// Bytes of a dropped packet a capture copies at most.
pub const CAPTURE_SNAP: u32 = 128;
/// Bytes of the capture ring.
pub const CAPTURE_RING_BYTES: u32 = 1 << 20;

/// Which dropped packets a capture copies: the single entry of `CAPTURE`,
/// in force while [`flags::CAPTURE`] is set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct CaptureConfig {
    /// The verdict reasons, a bit each ([`Reason::slot`]).
    pub reasons: u32,
    /// One in `sample` matching packets, at random (1: every one).
    pub sample: u32,
    /// The class (its id plus one; 0: any).
    pub class: u32,
    /// Only sources of this family ([`FAMILY_V4`], [`FAMILY_V6`]; 0: any),
    /// and under the masked address.
    pub family: Family,
    pub addr: [u32; 4],
    pub mask: [u32; 4],
    /// Bytes copied of each, 1 to [`CAPTURE_SNAP`].
    pub snap: u32,
    pub _pad: u32,
}

const _: () = assert!(size_of::<CaptureConfig>() == 56);

/// One captured packet, as the `CAPTURED` ring holds it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Pod, Zeroable)]
pub struct Captured {
    /// `CLOCK_MONOTONIC`, ns.
    pub at_ns: u64,
    /// The frame's length, and how much of it `data` holds.
    pub len: u32,
    pub caplen: u32,
    /// Its verdict reason ([`Reason::slot`]).
    pub reason: u32,
    /// The interface it arrived on.
    pub ifindex: u32,
    pub data: [u8; CAPTURE_SNAP as usize],
}

const _: () = assert!(size_of::<Captured>() == 152);

/// A rule that names a set: the `SET_RULES` entries of the bank in use,
/// in the rules' order, the first whose set holds the source deciding.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct SetRule {
    pub rule: Rule,
    /// The trie slot that holds the set's prefixes now ([`set_rules`]).
    pub slot: u32,
    /// [`flags::SETS_V4`] and [`flags::SETS_V6`]: the families the set
    /// holds prefixes of.
    pub families: u32,
}

const _: () = assert!(size_of::<SetRule>() == 40);

/// IP sets: every set's prefixes live in the trie of their family
/// (`SETS_V4`, `SETS_V6`), under a key whose first byte is the set's slot
/// (so a set is one subtree), followed by the address. Each set has two
/// slots, `2 * index` and `2 * index + 1`: a new version of a set is
/// written into the slot not in use, then one write of the configuration
/// switches the `SET_RULES` bank (whose entries name the slots) to it, and
/// only after that is the old slot emptied. A packet meets the old set or
/// the new one, never a half-written one.
pub mod set_rules {
    use super::MAX_SETS;

    /// Entries of the `SET_RULES` array: two banks of [`MAX_SETS`] rules.
    pub const ENTRIES: u32 = 2 * MAX_SETS;
    /// Slots of the set tries: two per set.
    pub const SLOTS: u32 = 2 * MAX_SETS;
    /// Entries of each set trie: every set full, and one more being loaded.
    pub const TRIE_ENTRIES: u32 = (MAX_SETS + 1) * super::MAX_SET_PREFIXES;

    /// The `SET_RULES` index of rule `index` of `bank`.
    #[inline(always)]
    #[must_use]
    pub const fn entry(bank: u32, index: u32) -> u32 {
        (bank & 1) * MAX_SETS + index
    }
}

/// Which class claims a (protocol, destination port): the `CLASS_OF` array
/// of one u32 per TCP and per UDP port, so that a packet's class is one
/// array lookup, which the verifier turns into pointer arithmetic.
pub mod class_of {
    use super::{PROTO_TCP, PROTO_UDP};

    /// Entries: 2 protocols x 65 536 ports.
    pub const ENTRIES: u32 = 2 * 65_536;
    /// The port is claimed, by the class in [`CLASS`] (0: the default class,
    /// for a port the scope names).
    pub const CLAIMED: u32 = 1 << 31;
    /// Only TCP segments with SYN set and ACK clear belong to the class; the
    /// port's other segments pass.
    pub const SYN_ONLY: u32 = 1 << 30;
    /// The bits of the class id.
    pub const CLASS: u32 = 0xff;

    /// The entry of `port` under `proto` ([`PROTO_TCP`] or [`PROTO_UDP`]);
    /// `None` for any other protocol.
    #[inline(always)]
    #[must_use]
    pub const fn index(proto: u8, port: u16) -> Option<u32> {
        match proto {
            PROTO_TCP => Some(port as u32),
            PROTO_UDP => Some((1 << 16) | port as u32),
            _ => None,
        }
    }

    /// The entry that gives a port to `class`.
    #[inline(always)]
    #[must_use]
    pub const fn entry(class: u32, syn_only: bool) -> u32 {
        CLAIMED | (class & CLASS) | if syn_only { SYN_ONLY } else { 0 }
    }
}

/// The `rule` word of the bucket key of a class's limit `slot` (0 for the
/// default class's first limit, as for a bucket of the default limit
/// before classes): rule ids stay under [`CLASS_OWNER`].
pub const CLASS_OWNER: u32 = 1 << 31;

/// The `rule` word of [`BucketKey`] for limit `slot` of `class`.
#[inline(always)]
#[must_use]
pub const fn class_owner(class: u32, slot: u32) -> u32 {
    if class == 0 && slot == 0 {
        0
    } else {
        CLASS_OWNER | (class << 8) | slot
    }
}

/// A filter in front of the rule tries, so that a source no rule can match
/// (most of the traffic, under a block list of any size) does not walk a
/// trie.
///
/// For each family, `L` is the shortest prefix length of its rules (at most
/// 32 for IPv4, 64 for IPv6), and the filter has one bit set for the first
/// `L` bits of every rule, hashed. A source that a rule matches shares the
/// rule's first `L` bits, so its bit is set: the filter never hides a match,
/// and a source whose bit is clear skips the trie. The `RULE_FILTER` array
/// holds two banks; the daemon writes the bank not in use, then switches
/// [`Config::rule_filter_bank`], so a packet never meets a half-written one.
/// Each (bank, family) region is a header word, the mask of the first `L`
/// bits, then the bitmap. The data path takes the mask from
/// [`Config::rule_filter_shifts`] instead, which saves it a dependent
/// lookup; the daemon writes a bank's byte there before it switches to the
/// bank, and the header word stays for a program of an earlier build that
/// runs on the same maps while a new daemon takes them over.
pub mod rule_filter {
    /// log2 of the bits of one bitmap.
    pub const BITS_LOG2: u32 = 18;
    /// Words of one bitmap.
    pub const WORDS: u32 = 1 << (BITS_LOG2 - 6);
    /// Words of one (bank, family) region: the mask, then the bitmap.
    pub const REGION: u32 = WORDS + 1;
    /// Words of the `RULE_FILTER` array: two banks of two families.
    pub const TOTAL: u32 = 4 * REGION;

    /// The (bank, family) pair's number, 0 to 3: `bank`'s low bit, then the
    /// family.
    #[inline(always)]
    #[must_use]
    const fn pair(bank: u32, ipv6: bool) -> u32 {
        (bank & 1) * 2 + ipv6 as u32
    }

    /// The first word of the region of `bank` (only its low bit counts) and
    /// a family.
    #[inline(always)]
    #[must_use]
    pub const fn region(bank: u32, ipv6: bool) -> u32 {
        pair(bank, ipv6) * REGION
    }

    /// The byte of [`super::Config::rule_filter_shifts`] that describes
    /// `mask`, a region's header word (its leading bits set): 0 for no
    /// mask (a rule of prefix length 0 matches every source), otherwise 1 +
    /// the number of trailing zero bits.
    #[must_use]
    pub const fn shift_byte(mask: u64) -> u8 {
        if mask == 0 {
            0
        } else {
            mask.trailing_zeros() as u8 + 1
        }
    }

    /// `shifts` with the byte of `bank` and a family set to `byte`.
    #[must_use]
    pub const fn with_shift(shifts: u32, bank: u32, ipv6: bool, byte: u8) -> u32 {
        let at = pair(bank, ipv6) * 8;
        (shifts & !(0xFF << at)) | ((byte as u32) << at)
    }

    /// The byte of `bank` and a family in `shifts`.
    #[inline(always)]
    #[must_use]
    pub const fn shift_of(shifts: u32, bank: u32, ipv6: bool) -> u32 {
        (shifts >> (pair(bank, ipv6) * 8)) & 0xFF
    }

    /// The mask a [`shift_byte`] stands for, `None` for none (walk the
    /// trie). For a source read by [`ipv4`] or [`ipv6`] it masks what the
    /// header word masks: the bits above the address's width are 0.
    #[inline(always)]
    #[must_use]
    pub const fn mask_of(byte: u32) -> Option<u64> {
        if byte == 0 || byte > 64 {
            return None;
        }
        Some(u64::MAX << (byte - 1))
    }

    /// The bit of a masked address: the leading bits of a Fibonacci hash.
    #[inline(always)]
    #[must_use]
    pub const fn bit(masked: u64) -> u32 {
        (masked.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - BITS_LOG2)) as u32
    }

    /// An IPv4 source (packet byte order) as the filter hashes it.
    #[inline(always)]
    #[must_use]
    pub const fn ipv4(src: u32) -> u64 {
        u32::from_be(src) as u64
    }

    /// An IPv6 source (packet byte order) as the filter hashes it: its
    /// first 64 bits.
    #[inline(always)]
    #[must_use]
    pub const fn ipv6(src: &[u32; 4]) -> u64 {
        ((u32::from_be(src[0]) as u64) << 32) | u32::from_be(src[1]) as u64
    }
}

/// A bucket's key: a source masked to the aggregation prefix, and the
/// rule that selected its limit (the table stores it as a
/// [`table::SlotKey`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Pod, Zeroable)]
pub struct BucketKey {
    /// The masked source address in packet byte order; IPv4 uses `addr[0]`.
    pub addr: [u32; 4],
    /// Whose limit the bucket meters: the id of a `limit` rule (under
    /// [`CLASS_OWNER`]), or a class's limit ([`class_owner`]; 0 for the
    /// default class's first limit).
    pub rule: u32,
    /// [`FAMILY_V4`] or [`FAMILY_V6`].
    pub family: Family,
}

const _: () = assert!(size_of::<BucketKey>() == 24);

/// A tracked source's bucket, as the daemon reads it: the state half of
/// its [`table::Slot`], whose fields say what each one holds.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
pub struct Bucket {
    /// [`table::Slot::tat`].
    pub tat: u64,
    /// [`table::Slot::passed`].
    pub passed: u64,
    /// [`table::Slot::dropped`].
    pub dropped: u64,
    /// [`table::Slot::over_since`].
    pub over_since: u64,
    /// [`table::Slot::share`].
    pub share: u32,
    /// [`table::Slot::born`].
    pub born: u32,
}

const _: () = assert!(size_of::<Bucket>() == 40);

/// A TAT with this bit is a ban: the source is denied until the TAT less the
/// bit. No TAT reaches it otherwise (2^63 ticks are 18 years), and neither
/// a rate change nor a shrinking limit lowers a marked TAT.
pub const BAN_MARK: u64 = 1 << 63;

/// A verdict reason: the counter a packet counts in, one of [`reason`]'s.
/// Each packet counts in exactly one, and in [`reason::DRY_RUN_PASS`] as
/// well when dry-run let a drop through.
#[repr(transparent)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Pod, Zeroable)]
pub struct Reason(u32);

const _: () = assert!(size_of::<Reason>() == size_of::<u32>());

impl Reason {
    /// The reason's slot among an interface's [`reason::COUNT`] counters: the
    /// per-CPU `COUNTERS` array counts it at
    /// `interface slot * reason::COUNT + slot`.
    #[inline(always)]
    #[must_use]
    pub const fn slot(self) -> u32 {
        self.0
    }

    /// [`Reason::slot`] as an index of an array of [`reason::COUNT`]
    /// counters or of [`reason::NAMES`]: always in bounds.
    #[inline(always)]
    #[must_use]
    pub const fn index(self) -> usize {
        self.0 as usize
    }
}

/// The verdict reasons.
pub mod reason {
    use super::Reason;

    /// Neither IPv4 nor IPv6: passed.
    pub const NON_IP: Reason = Reason(0);
    /// A header truncated or malformed before the source could be read: passed.
    pub const MALFORMED: Reason = Reason(1);
    /// Not in the scope set: passed.
    pub const OUT_OF_SCOPE: Reason = Reason(2);
    /// An `allow` rule matched: passed.
    pub const ALLOW_RULE: Reason = Reason(3);
    /// A `deny` rule matched: dropped.
    pub const DENY_RULE: Reason = Reason(4);
    /// Within its source's budget: passed.
    pub const PASSED: Reason = Reason(5);
    /// Over its source's budget: dropped.
    pub const OVER_LIMIT: Reason = Reason(6);
    /// The first packet of a source not tracked yet: passed.
    pub const NEW_SOURCE: Reason = Reason(7);
    /// A source not tracked yet, with the first-seen budget spent: dropped.
    pub const NEW_SOURCE_LIMIT: Reason = Reason(8);
    /// A bucket so contended that [`super::CAS_ATTEMPTS`] compare-and-swaps
    /// failed: dropped (its source is sending from several CPUs at once).
    pub const CONTENDED: Reason = Reason(9);
    /// Dry-run: a packet that one of the dropping reasons above would have
    /// dropped, passed.
    pub const DRY_RUN_PASS: Reason = Reason(10);
    /// An internal error (a map update failed): passed.
    pub const ERROR: Reason = Reason(11);
    /// A source its class banned, while the ban lasts: dropped.
    pub const BANNED: Reason = Reason(12);
    /// Number of reasons, and of counters per interface slot.
    pub const COUNT: u32 = 13;
    /// Not a verdict: what the program's lookup of a bucket returns for a
    /// source the table does not track, before it makes it a bucket. Never
    /// counted (its slot is past every counter) nor returned by the program.
    pub const UNTRACKED: Reason = Reason(u32::MAX);

    /// Every reason, by slot.
    pub const ALL: [Reason; COUNT as usize] = [
        NON_IP,
        MALFORMED,
        OUT_OF_SCOPE,
        ALLOW_RULE,
        DENY_RULE,
        PASSED,
        OVER_LIMIT,
        NEW_SOURCE,
        NEW_SOURCE_LIMIT,
        CONTENDED,
        DRY_RUN_PASS,
        ERROR,
        BANNED,
    ];

    /// Names of the reasons by slot, as the API and the metrics show them.
    pub const NAMES: [&str; COUNT as usize] = [
        "non_ip",
        "malformed",
        "out_of_scope",
        "allow_rule",
        "deny_rule",
        "passed",
        "over_limit",
        "new_source",
        "new_source_limit",
        "contended",
        "dry_run_pass",
        "error",
        "banned",
    ];

    /// Whether a reason drops the packet (unless dry-run is on).
    #[inline(always)]
    #[must_use]
    pub const fn drops(reason: Reason) -> bool {
        matches!(reason, DENY_RULE | OVER_LIMIT | NEW_SOURCE_LIMIT | CONTENDED | BANNED)
    }
}

/// The IPv4 aggregation mask for a prefix length (clamped to 32), in packet
/// byte order as [`Config::ipv4_mask`] stores it.
#[must_use]
pub const fn ipv4_mask(prefix: u8) -> u32 {
    let bits: u32 = if prefix == 0 {
        0
    } else if prefix >= 32 {
        u32::MAX
    } else {
        u32::MAX << (32 - prefix as u32)
    };
    u32::from_ne_bytes(bits.to_be_bytes())
}

/// The IPv6 aggregation mask for a prefix length (clamped to 128), in packet
/// byte order as [`Config::ipv6_mask`] stores it.
#[must_use]
pub const fn ipv6_mask(prefix: u8) -> [u32; 4] {
    let mut out = [0u32; 4];
    let mut i = 0;
    while i < 4 {
        let start = (i * 32) as u8;
        let word_prefix = if prefix <= start {
            0
        } else if prefix - start >= 32 {
            32
        } else {
            prefix - start
        };
        out[i] = ipv4_mask(word_prefix);
        i += 1;
    }
    out
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: every type is `#[repr(C)]` and `bytemuck::Pod`, so any bit
    // pattern is valid and there is no padding.
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::ClassConfig {}
    unsafe impl aya::Pod for super::Rule {}
    unsafe impl aya::Pod for super::SetRule {}
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::CaptureConfig {}
    unsafe impl aya::Pod for super::Captured {}
    unsafe impl aya::Pod for super::BucketKey {}
    unsafe impl aya::Pod for super::Bucket {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_in_packet_byte_order() {
        assert_eq!(ipv4_mask(24).to_ne_bytes(), [255, 255, 255, 0]);
        assert_eq!(ipv4_mask(32), u32::MAX);
        assert_eq!(ipv4_mask(0), 0);
        assert_eq!(ipv4_mask(9).to_ne_bytes(), [255, 128, 0, 0]);
        let m = ipv6_mask(64);
        assert_eq!(m, [u32::MAX, u32::MAX, 0, 0]);
        let m = ipv6_mask(56);
        assert_eq!(m[1].to_ne_bytes(), [255, 255, 255, 0]);
        assert_eq!(ipv6_mask(128), [u32::MAX; 4]);
        assert_eq!(ipv6_mask(0), [0; 4]);
    }

    #[test]
    fn every_port_of_tcp_and_udp_has_an_entry_of_its_own() {
        extern crate std;
        let mut seen = std::vec![false; class_of::ENTRIES as usize];
        for proto in [PROTO_TCP, PROTO_UDP] {
            for port in 0..=u16::MAX {
                let index = class_of::index(proto, port).expect("TCP and UDP have entries");
                assert!(index < class_of::ENTRIES);
                assert!(!seen[index as usize], "{proto}/{port}");
                seen[index as usize] = true;
            }
        }
        assert!(seen.iter().all(|s| *s));
        assert_eq!(class_of::index(1, 80), None);
        let entry = class_of::entry(63, true);
        assert_eq!(
            (entry & class_of::CLASS, entry & class_of::SYN_ONLY != 0, entry & class_of::CLAIMED != 0),
            (63, true, true)
        );
        assert_eq!(class_owner(0, 0), 0, "the default limit's buckets keep their keys");
        assert!(class_owner(0, 1) >= CLASS_OWNER && class_owner(5, 0) != class_owner(5, 1));
    }

    #[test]
    fn reason_names_cover_every_slot() {
        assert_eq!(reason::NAMES.len(), reason::COUNT as usize);
        assert_eq!(reason::NAMES[reason::DRY_RUN_PASS.index()], "dry_run_pass");
        for (slot, reason) in reason::ALL.into_iter().enumerate() {
            assert_eq!(reason.index(), slot);
        }
        assert!(reason::drops(reason::OVER_LIMIT));
        assert!(!reason::drops(reason::PASSED));
    }
}
