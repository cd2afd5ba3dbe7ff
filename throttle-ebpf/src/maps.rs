//! The maps: configuration (written by the daemon), state and counters.

use aya_ebpf::{
    bindings::BPF_F_MMAPABLE,
    macros::map,
    maps::{lpm_trie::LpmTrie, Array, PerCpuArray, ProgramArray, RingBuf},
};
use throttle_common::{
    class_of, event, reason, rule_filter, set_rules, table, table::Slot, CaptureConfig, ClassConfig, Config,
    Rule, SetRule, CAPTURE_RING_BYTES, DEFAULT_MAX_SOURCES, IFACE_SLOTS, MAX_CLASSES, MAX_IFINDEX, MAX_RULES,
};

/// Global settings, one entry.
#[map(name = "CONFIG")]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

/// Rules by source prefix; the value says allow, deny or limit.
#[map(name = "RULES_V4")]
pub static RULES_V4: LpmTrie<[u8; 4], Rule> = LpmTrie::with_max_entries(MAX_RULES, 0);

#[map(name = "RULES_V6")]
pub static RULES_V6: LpmTrie<[u8; 16], Rule> = LpmTrie::with_max_entries(MAX_RULES, 0);

/// The IP sets' IPv4 prefixes: the key's first byte is the set's slot
/// ([`throttle_common::set_rules`]); the value means nothing.
#[map(name = "SETS_V4")]
pub static SETS_V4: LpmTrie<[u8; 5], u8> = LpmTrie::with_max_entries(set_rules::TRIE_ENTRIES, 0);

#[map(name = "SETS_V6")]
pub static SETS_V6: LpmTrie<[u8; 17], u8> = LpmTrie::with_max_entries(set_rules::TRIE_ENTRIES, 0);

/// The rules that name a set, two banks ([`throttle_common::set_rules`]).
#[map(name = "SET_RULES")]
pub static SET_RULES: Array<SetRule> = Array::with_max_entries(set_rules::ENTRIES, 0);

/// The class of each (protocol, destination port)
/// ([`throttle_common::class_of`]).
#[map(name = "CLASS_OF")]
pub static CLASS_OF: Array<u32> = Array::with_max_entries(class_of::ENTRIES, 0);

/// The limit classes by id; class 0, the default one, is in `CONFIG`.
#[map(name = "CLASSES")]
pub static CLASSES: Array<ClassConfig> = Array::with_max_entries(MAX_CLASSES, 0);

/// The filter in front of the rule tries ([`throttle_common::rule_filter`]).
#[map(name = "RULE_FILTER")]
pub static RULE_FILTER: Array<u64> = Array::with_max_entries(rule_filter::TOTAL, 0);

/// Per-source GCRA state: the bucket table ([`throttle_common::table`]).
/// The daemon sizes it at load time, and maps it to read it in place.
#[map(name = "BUCKETS")]
pub static BUCKETS: Array<Slot> = Array::with_max_entries(DEFAULT_MAX_SOURCES, BPF_F_MMAPABLE);

/// The bucket table's insert locks, a bit per group; sized with it.
#[map(name = "BUCKET_LOCKS")]
pub static BUCKET_LOCKS: Array<u64> =
    Array::with_max_entries(table::lock_words(table::groups(DEFAULT_MAX_SOURCES)), 0);

/// The GCRA state of the global first-seen budget, one entry shared by
/// every CPU.
#[map(name = "NEW_SOURCES")]
pub static NEW_SOURCES: Array<u64> = Array::with_max_entries(1, 0);

/// Packets by interface slot and verdict reason, per CPU.
#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(IFACE_SLOTS * reason::COUNT, 0);

/// The counters' slot of each interface, by interface index (0: none of its
/// own). Written by the daemon as it attaches.
#[map(name = "IFACE_SLOT")]
pub static IFACE_SLOT: Array<u32> = Array::with_max_entries(MAX_IFINDEX, 0);

/// The data path's events ([`throttle_common::Event`]), for the daemon.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(event::RING_BYTES, 0);

/// Events sent, held back and lost, per CPU ([`throttle_common::event`]).
#[map(name = "EVENT_STATS")]
pub static EVENT_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(event::STATS, 0);

/// The events' budget and the first-seen budget's dryness, shared by every
/// CPU.
#[map(name = "EVENT_STATE")]
pub static EVENT_STATE: Array<u64> = Array::with_max_entries(event::STATE, 0);

/// Packets each allow and deny rule (by id, modulo the slots) decided, per
/// CPU.
#[map(name = "RULE_COUNTS")]
pub static RULE_COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(event::HIT_SLOTS, 0);

/// When each deny rule (by id, modulo the slots) last dropped a packet, ns.
#[map(name = "RULE_HITS")]
pub static RULE_HITS: Array<u64> = Array::with_max_entries(event::HIT_SLOTS, 0);

/// The program passed packets continue into, in slot 0 (`--chain`).
#[map(name = "CHAIN")]
pub static CHAIN: ProgramArray = ProgramArray::with_max_entries(1, 0);

/// What a running capture copies ([`throttle_common::CaptureConfig`]).
#[map(name = "CAPTURE")]
pub static CAPTURE: Array<CaptureConfig> = Array::with_max_entries(1, 0);

/// The captured packets ([`throttle_common::Captured`]), for the daemon.
#[map(name = "CAPTURED")]
pub static CAPTURED: RingBuf = RingBuf::with_byte_size(CAPTURE_RING_BYTES, 0);
