//! The loaded program and typed handles on its maps: opening (or adopting)
//! them, and reading the counters, the buckets and what the maps hold.
//! Writing a plan is in `write.rs`, attaching in `links.rs`.
//!
//! With a pin directory, the maps and the XDP links outlive the daemon
//! (`pins.rs`). A pinned `bpf_link` keeps its program attached after every
//! descriptor of it is closed, so a daemon killed with SIGKILL leaves
//! enforcement running with the state in the pinned maps. The next
//! [`Dataplane::open`] loads its own program against those same maps
//! (buckets, counters and the configuration version carry on), and
//! [`Dataplane::attach`] swaps the program on the pinned link with
//! `BPF_LINK_UPDATE`, in one step: every packet meets either the old program
//! or the new one, both metering against the same buckets.

use std::{
    collections::{BTreeMap, HashSet},
    net::IpAddr,
    os::fd::{AsFd as _, AsRawFd as _},
    path::PathBuf,
};

use aya::{
    maps::{
        Array, IterableMap as _, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuValues, ProgramArray,
        RingBuf,
    },
    programs::{links::FdLink, Xdp},
    Ebpf, EbpfLoader,
};
use throttle_common::{
    class_of, event, flags, ipv4_mask, ipv6_mask, map_name, reason, rule_filter, set_rules, table, Bucket,
    BucketKey, CaptureConfig, ClassConfig, Config, Rule, SetRule, FAMILY_V4, FAMILY_V6, IFACE_SLOTS,
    MAX_CLASSES, MAX_IFINDEX, PROGRAM_NAME,
};

use super::{
    error::{map_err, syscall_err, KernelError},
    pins::{check_pinned, pin_added_maps, pin_exists, pin_new_maps, remove_pin, PinDir},
    plan::{Placement, Plan, TrieKey},
    rule_filter::Region,
    sets::SetTries,
    sys::{self, if_index},
    table::BucketTable,
    Attachment, Chained, Counters, NewcomerShare,
};

/// The XDP object, built for the BPF target by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/throttle-ebpf"));

/// The reader of the program's log records.
pub type ProgramLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// How the data path is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Capacity of the bucket map when it is created (pinned maps keep theirs).
    pub max_sources: u32,
    /// Where the maps and links are pinned; `None`: nothing outlives the daemon.
    pub pin_dir: Option<PathBuf>,
}

/// What became of the data path's events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct EventStats {
    pub sent: u64,
    /// Held back: over the program's budget of events.
    pub suppressed: u64,
    /// Lost: the ring was full.
    pub lost: u64,
    /// Dropped packets copied to a capture, and lost to its full ring.
    pub captured: u64,
    pub capture_lost: u64,
}

/// Reads every bucket of the bucket table through a mapping of its own
/// ([`Dataplane::bucket_walker`]).
pub struct BucketWalker {
    pub(super) table: BucketTable,
}

impl BucketWalker {
    /// Calls `f` for every tracked bucket, as [`Dataplane::for_each_bucket`].
    pub fn for_each(&self, f: &mut dyn FnMut(&BucketKey, &Bucket)) {
        self.table.for_each(f);
    }
}

/// The loaded program and typed handles on its maps.
pub struct Dataplane {
    pub(super) ebpf: Ebpf,
    pub(super) config: Array<MapData, Config>,
    pub(super) rules_v4: LpmTrie<MapData, [u8; 4], Rule>,
    pub(super) rules_v6: LpmTrie<MapData, [u8; 16], Rule>,
    pub(super) class_of: Array<MapData, u32>,
    pub(super) classes: Array<MapData, ClassConfig>,
    pub(super) rule_filter: Array<MapData, u64>,
    pub(super) set_rules: Array<MapData, SetRule>,
    sets_v4: LpmTrie<MapData, [u8; 5], u8>,
    sets_v6: LpmTrie<MapData, [u8; 17], u8>,
    buckets: BucketTable,
    pub(super) counters: PerCpuArray<MapData, u64>,
    pub(super) iface_slot: Array<MapData, u32>,
    events: Option<RingBuf<MapData>>,
    event_stats: PerCpuArray<MapData, u64>,
    capture: Array<MapData, CaptureConfig>,
    captured: Option<RingBuf<MapData>>,
    rule_counts: PerCpuArray<MapData, u64>,
    /// The program passed packets continue into, in slot 0.
    pub(super) chain: ProgramArray<MapData>,
    /// What `chain` holds ([`Dataplane::set_chain`]).
    pub(super) chained: Option<Chained>,
    /// What the maps hold, which the next write is diffed against.
    pub(super) held: Held,
    /// Whether this daemon wrote a plan yet (before, the configuration is
    /// not rewritten when interfaces come and go).
    pub(super) written: bool,
    /// The counters' slot of each interface index, as `IFACE_SLOT` holds it.
    pub(super) slots: BTreeMap<u32, u32>,
    pub(super) logger: Option<ProgramLogger>,
    pub(super) attachments: Vec<Attachment>,
    /// Where the maps and links are pinned, if anywhere.
    pub(super) pins: Option<PinDir>,
    /// [`Config::default_share`], as the last [`Dataplane::set_shares`] set it.
    pub(super) default_share: u32,
    /// What the last [`Dataplane::set_newcomers`] set.
    pub(super) newcomers: NewcomerShare,
    /// The sources given a share of their own by the last
    /// [`Dataplane::set_shares`].
    shared: HashSet<BucketKey>,
    /// The pinned links this process holds, by interface. Closing them
    /// leaves the program attached: their pins hold the links.
    pub(super) links: Vec<(String, FdLink)>,
    /// The index each attached interface had when it was attached, which
    /// tells an interface made again under the same name from the one
    /// attached to.
    pub(super) ifindexes: BTreeMap<String, u32>,
    adopted: bool,
    max_sources: u32,
}

/// What the maps hold: a plan, where it is placed, and the rule filter the
/// bank not in use still holds.
#[derive(Debug, Clone, Default)]
pub(super) struct Held {
    pub(super) plan: Plan,
    pub(super) placement: Placement,
    /// The regions (IPv4, IPv6) of the bank not in use.
    pub(super) standby: (Region, Region),
}

/// Maps the bucket table, and makes sure the configuration entry holds its
/// geometry: the seed and group count the program hashes with. Adopted
/// maps keep their seed (every source stays where it is); a new table gets
/// a random one, so that no one can pick sources that crowd one group.
fn open_table(
    ebpf: &mut Ebpf,
    config: &mut Array<MapData, Config>,
    adopted: bool,
) -> Result<BucketTable, KernelError> {
    let data: MapData = match ebpf.take_map(map_name::BUCKETS) {
        Some(Map::Array(data)) => data,
        Some(_) => return Err(map_err(map_name::BUCKETS)(MapError::InvalidMapType { map_type: 0 })),
        None => return Err(KernelError::Missing { what: "map", name: map_name::BUCKETS }),
    };
    let slots = data.info().map_err(map_err(map_name::BUCKETS))?.max_entries();
    let mut current = config.get(&0, 0).map_err(map_err(map_name::CONFIG))?;
    let groups = table::groups(slots);
    if !(adopted && current.bucket_groups == groups) {
        current.bucket_seed = sys::random_u64().map_err(syscall_err(map_name::BUCKETS, "getrandom"))?;
        current.bucket_groups = groups;
        config.set(0, current, 0).map_err(map_err(map_name::CONFIG))?;
    }
    BucketTable::map(data, current.bucket_seed)
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(KernelError::Missing { what: "map", name })?;
    T::try_from(map).map_err(map_err(name))
}

/// Where the maps of a new [`Dataplane`] come from.
enum Origin {
    /// Created, pinned nowhere.
    Unpinned,
    /// Created, then pinned in this directory.
    Created(PinDir),
    /// The ones pinned in this directory.
    Adopted(PinDir),
}

impl Dataplane {
    /// Loads the program into the kernel with a bucket map of `max_sources`
    /// entries, pinning nothing. Nothing is attached yet.
    pub fn load(max_sources: u32) -> Result<Self, KernelError> {
        Self::open(&Options { max_sources, pin_dir: None })
    }

    /// Loads the program. With a pin directory, it adopts the maps pinned
    /// there when they are all present and of this build's layout, and
    /// otherwise creates them and pins them. Nothing is attached yet: the
    /// links pinned there keep running the program they have until
    /// [`Dataplane::attach`] replaces it.
    pub fn open(options: &Options) -> Result<Self, KernelError> {
        let Some(dir) = options.pin_dir.as_deref() else {
            return Self::from_object(options.max_sources, Origin::Unpinned);
        };
        let pins = PinDir::prepare(dir)?;
        let maps = pins.maps();
        let mut present = Vec::new();
        let mut missing = Vec::new();
        for name in map_name::ALL {
            if pin_exists(&maps.join(name))? {
                present.push(name);
            } else {
                missing.push(name);
            }
        }
        if present.is_empty() {
            if pins.has_links()? {
                tracing::warn!(
                    dir = %dir.display(),
                    "links are pinned without maps: the program on them will be replaced and every source \
                     starts over"
                );
            }
            let made = pins.clone();
            return Self::from_object(options.max_sources, Origin::Created(pins)).inspect_err(|_| {
                // Whatever this load pinned before it failed goes (there was
                // no map pinned here before it), and so do the directories.
                for name in map_name::pinned() {
                    let _ = remove_pin(&made.maps().join(name));
                }
                let _ = made.remove_dirs();
            });
        }
        if !missing.is_empty() {
            return Err(KernelError::PartialPins { dir: dir.to_path_buf(), present, missing });
        }
        check_pinned(dir, &maps)?;
        let dataplane = Self::from_object(options.max_sources, Origin::Adopted(pins))?;
        if dataplane.max_sources != options.max_sources {
            tracing::warn!(
                dir = %dir.display(),
                pinned = dataplane.max_sources,
                requested = options.max_sources,
                "the pinned bucket map holds {} sources, not the {} asked for: it is kept with every source's \
                 state; stop the daemon (without --keep-on-exit) and start again to resize it",
                dataplane.max_sources,
                options.max_sources
            );
        }
        Ok(dataplane)
    }

    fn from_object(max_sources: u32, origin: Origin) -> Result<Self, KernelError> {
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(map_name::BUCKETS, max_sources);
        loader.map_max_entries(map_name::BUCKET_LOCKS, table::lock_words(table::groups(max_sources)));
        if let Origin::Adopted(pins) = &origin {
            // aya opens a map pinned at the given path and relocates the
            // program to it, instead of creating one (`create_pinned_by_name`).
            for name in map_name::ALL {
                loader.map_pin_path(name, pins.maps().join(name));
            }
            for name in map_name::ADDED {
                let path = pins.maps().join(name);
                if pin_exists(&path)? {
                    loader.map_pin_path(name, path);
                }
            }
        }
        let mut ebpf = loader.load(OBJECT)?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(err) => {
                // The program logs only rare events; run without them.
                tracing::debug!("no eBPF logger: {err}");
                None
            }
        };
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(KernelError::Missing { what: "program", name: PROGRAM_NAME })?
            .try_into()?;
        program.load()?;
        let (pins, adopted) = match origin {
            Origin::Unpinned => (None, false),
            Origin::Created(pins) => {
                // Pinned only once the program has loaded: a program the
                // verifier refuses leaves nothing behind.
                pin_new_maps(&mut ebpf, &pins)?;
                (Some(pins), false)
            }
            Origin::Adopted(pins) => {
                pin_added_maps(&mut ebpf, &pins)?;
                (Some(pins), true)
            }
        };
        let mut config: Array<MapData, Config> = take(&mut ebpf, map_name::CONFIG)?;
        let buckets = open_table(&mut ebpf, &mut config, adopted)?;
        let max_sources = buckets.slots();
        let iface_slot: Array<MapData, u32> = take(&mut ebpf, map_name::IFACE_SLOT)?;
        let mut slots = BTreeMap::new();
        if adopted {
            let mut keep = |ifindex: &u32, slot: &u32| {
                if *slot != 0 {
                    slots.insert(*ifindex, *slot);
                }
            };
            let fd = iface_slot.map().fd().as_fd().as_raw_fd();
            if sys::lookup_all::<u32, u32>(fd, &mut keep).is_err() {
                for (ifindex, slot) in (0..).zip(iface_slot.iter()) {
                    keep(&ifindex, &slot.map_err(map_err(map_name::IFACE_SLOT))?);
                }
            }
        }
        let mut dataplane = Self {
            config,
            rules_v4: take(&mut ebpf, map_name::RULES_V4)?,
            rules_v6: take(&mut ebpf, map_name::RULES_V6)?,
            class_of: take(&mut ebpf, map_name::CLASS_OF)?,
            classes: take(&mut ebpf, map_name::CLASSES)?,
            rule_filter: take(&mut ebpf, map_name::RULE_FILTER)?,
            set_rules: take(&mut ebpf, map_name::SET_RULES)?,
            sets_v4: take(&mut ebpf, map_name::SETS_V4)?,
            sets_v6: take(&mut ebpf, map_name::SETS_V6)?,
            buckets,
            counters: take(&mut ebpf, map_name::COUNTERS)?,
            iface_slot,
            events: Some(take(&mut ebpf, map_name::EVENTS)?),
            event_stats: take(&mut ebpf, map_name::EVENT_STATS)?,
            capture: take(&mut ebpf, map_name::CAPTURE)?,
            captured: Some(take(&mut ebpf, map_name::CAPTURED)?),
            rule_counts: take(&mut ebpf, map_name::RULE_COUNTS)?,
            chain: take(&mut ebpf, map_name::CHAIN)?,
            chained: None,
            held: Held::default(),
            written: false,
            slots,
            ebpf,
            logger,
            attachments: Vec::new(),
            pins,
            default_share: 0,
            newcomers: NewcomerShare::default(),
            shared: HashSet::new(),
            links: Vec::new(),
            ifindexes: BTreeMap::new(),
            adopted,
            max_sources,
        };
        // What the maps hold is what the next write is diffed against: the
        // previous daemon's plan when adopted (its configuration version
        // carries on, so that it keeps growing across restarts), zeros
        // when new.
        dataplane.held = dataplane.read_held()?;
        Ok(dataplane)
    }

    /// Whether the maps were adopted from pins left by an earlier daemon.
    #[must_use]
    pub fn adopted(&self) -> bool {
        self.adopted
    }

    /// The capacity of the bucket map in use: a pinned one keeps its own.
    #[must_use]
    pub fn max_sources(&self) -> u32 {
        self.max_sources
    }

    /// The ring buffer of the data path's events, for the daemon to read.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Events the data path sent, held back under its budget, and lost to
    /// a full ring, summed over the CPUs.
    pub fn event_stats(&self) -> Result<EventStats, KernelError> {
        let sum = |stat: u32| -> Result<u64, KernelError> {
            Ok(self.event_stats.get(&stat, 0).map_err(map_err(map_name::EVENT_STATS))?.iter().sum())
        };
        Ok(EventStats {
            sent: sum(event::SENT)?,
            suppressed: sum(event::SUPPRESSED)?,
            lost: sum(event::LOST)?,
            captured: sum(event::CAPTURED)?,
            capture_lost: sum(event::CAPTURE_LOST)?,
        })
    }

    /// The packets each allow or deny rule of `ids` decided (rules whose
    /// ids share a slot share a count).
    pub fn rule_counts(&self, ids: &[u32]) -> Result<Vec<u64>, KernelError> {
        ids.iter()
            .map(|&id| {
                let slot = id % event::HIT_SLOTS;
                Ok(self.rule_counts.get(&slot, 0).map_err(map_err(map_name::RULE_COUNTS))?.iter().sum())
            })
            .collect()
    }

    /// The ring buffer of captured packets, for the daemon to read.
    pub fn take_captures(&mut self) -> Option<RingBuf<MapData>> {
        self.captured.take()
    }

    /// Starts a capture of dropped packets (`Some`: what to copy) or stops
    /// it; the policy is left as it is.
    pub fn set_capture(&mut self, capture: Option<CaptureConfig>) -> Result<(), KernelError> {
        if let Some(capture) = capture {
            self.capture.set(0, capture, 0).map_err(map_err(map_name::CAPTURE))?;
        }
        let placement = Placement { capture: capture.is_some(), ..self.held.placement };
        self.write_config(&self.held.plan.clone(), placement)
    }

    /// The reader of the program's log records (rare events only), for the
    /// daemon to poll.
    pub fn take_logger(&mut self) -> Option<ProgramLogger> {
        self.logger.take()
    }

    /// The XDP program, for `test_run`.
    #[must_use]
    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(PROGRAM_NAME)
            .and_then(|p| <&Xdp>::try_from(p).ok())
            .expect("the program was checked at load")
    }

    pub(super) fn program_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .and_then(|p| <&mut Xdp>::try_from(p).ok())
            .expect("the program was checked at load")
    }

    /// What the maps hold, read back: the plan in force (with the rule
    /// filter of the bank in use), for tests and tools to compare with the
    /// plan written.
    pub fn read_plan(&self) -> Result<Plan, KernelError> {
        Ok(self.read_held()?.plan)
    }

    fn read_held(&self) -> Result<Held, KernelError> {
        let config = self.config.get(&0, 0).map_err(map_err(map_name::CONFIG))?;
        let bank = config.rule_filter_bank & 1;
        let class_of = read_array(&self.class_of, class_of::ENTRIES, map_name::CLASS_OF)?;
        let classes = read_array(&self.classes, MAX_CLASSES, map_name::CLASSES)?;
        let region = |bank: u32, ipv6: bool| -> Result<Region, KernelError> {
            let start = rule_filter::region(bank, ipv6);
            (start..start + rule_filter::REGION)
                .map(|word| self.rule_filter.get(&word, 0))
                .collect::<Result<Vec<u64>, MapError>>()
                .map(Region::from_words)
                .map_err(map_err(map_name::RULE_FILTER))
        };
        let rules_v4 = read_trie(&self.rules_v4, map_name::RULES_V4)?;
        let rules_v6 = read_trie(&self.rules_v6, map_name::RULES_V6)?;
        let set_bank = u32::from(config.set_rule_bank & 1);
        let set_rules = (0..u32::from(config.set_rule_count).min(throttle_common::MAX_SETS))
            .map(|index| self.set_rules.get(&set_rules::entry(set_bank, index), 0))
            .collect::<Result<Vec<SetRule>, MapError>>()
            .map_err(map_err(map_name::SET_RULES))?;
        Ok(Held {
            plan: Plan {
                settings: Plan::settings_of(&config),
                class_of,
                classes,
                rules_v4,
                rules_v6,
                filter_v4: region(bank, false)?,
                filter_v6: region(bank, true)?,
                set_rules,
            },
            placement: Placement {
                version: config.version,
                bank,
                shifts: config.rule_filter_shifts,
                one_iface_slot: (config.flags & flags::ONE_IFACE != 0).then_some(config.iface_slot),
                set_bank,
                capture: config.flags & flags::CAPTURE != 0,
            },
            standby: (region(bank ^ 1, false)?, region(bank ^ 1, true)?),
        })
    }

    /// What the maps hold, as this daemon last wrote or read it.
    #[must_use]
    pub fn held_plan(&self) -> &Plan {
        &self.held.plan
    }

    /// A writer of the set tries on descriptors of its own.
    pub fn set_tries(&self) -> Result<SetTries, KernelError> {
        SetTries::new(&self.sets_v4, &self.sets_v6)
    }

    /// The version of the configuration last written.
    #[must_use]
    pub fn version(&self) -> u64 {
        self.held.placement.version
    }

    pub fn kernel_config(&self) -> Result<Config, KernelError> {
        self.config.get(&0, 0).map_err(map_err(map_name::CONFIG))
    }

    /// The verdict counters, summed over the CPUs and the interfaces, by
    /// [`reason`] slot.
    pub fn counters(&self) -> Result<[u64; reason::COUNT as usize], KernelError> {
        let mut out = [0u64; reason::COUNT as usize];
        for slot in 0..IFACE_SLOTS {
            for (total, count) in out.iter_mut().zip(self.slot_counters(slot)?) {
                *total += count;
            }
        }
        Ok(out)
    }

    /// The verdict counters of every interface the program is attached to,
    /// and of the packets of any other interface (`None`) when there are
    /// some (an interface beyond the slots, or of an index too high).
    pub fn counters_by_interface(&self) -> Result<Vec<(Option<Attachment>, Counters)>, KernelError> {
        let mut out = Vec::with_capacity(self.attachments.len() + 1);
        let mut counted = HashSet::new();
        for attachment in &self.attachments {
            let slot = if_index(&attachment.iface).and_then(|i| self.slots.get(&i).copied()).unwrap_or(0);
            if slot != 0 && counted.insert(slot) {
                out.push((Some(attachment.clone()), self.slot_counters(slot)?));
            }
        }
        let other = self.slot_counters(0)?;
        if other.iter().any(|&c| c != 0) {
            out.push((None, other));
        }
        Ok(out)
    }

    /// The counters of one interface slot, summed over the CPUs.
    fn slot_counters(&self, slot: u32) -> Result<Counters, KernelError> {
        let mut out = [0u64; reason::COUNT as usize];
        for (reason, total) in (0..).zip(out.iter_mut()) {
            let index = slot * reason::COUNT + reason;
            *total = self.counters.get(&index, 0).map_err(map_err(map_name::COUNTERS))?.iter().sum();
        }
        Ok(out)
    }

    /// Gives `iface` (index `ifindex`) a counters slot of its own: the one it
    /// had (adopted maps: its counters carry on), else a free one, zeroed.
    /// Past the slots, or at an index beyond the map, its packets count with
    /// any other interface's.
    pub(super) fn give_slot(&mut self, iface: &str, ifindex: u32) -> Result<(), KernelError> {
        if self.slots.contains_key(&ifindex) {
            return Ok(());
        }
        let used: HashSet<u32> = self.slots.values().copied().collect();
        let free = (1..IFACE_SLOTS).find(|slot| !used.contains(slot));
        let (Some(slot), true) = (free, ifindex < MAX_IFINDEX) else {
            tracing::warn!(
                iface,
                ifindex,
                "no counters of its own for this interface (at most {} interfaces, of index under \
                 {MAX_IFINDEX}): its packets count under interface=\"other\"",
                IFACE_SLOTS - 1
            );
            return Ok(());
        };
        let cpus_err = syscall_err(map_name::COUNTERS, "nr_cpus");
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| cpus_err(e))?;
        for reason in 0..reason::COUNT {
            let zeros = PerCpuValues::try_from(vec![0u64; cpus]).map_err(&cpus_err)?;
            self.counters
                .set(slot * reason::COUNT + reason, zeros, 0)
                .map_err(map_err(map_name::COUNTERS))?;
        }
        self.iface_slot.set(ifindex, slot, 0).map_err(map_err(map_name::IFACE_SLOT))?;
        self.slots.insert(ifindex, slot);
        Ok(())
    }

    /// Frees the counters slot of interface index `ifindex`.
    pub(super) fn take_slot(&mut self, ifindex: u32) -> Result<(), KernelError> {
        if self.slots.remove(&ifindex).is_some() {
            self.iface_slot.set(ifindex, 0, 0).map_err(map_err(map_name::IFACE_SLOT))?;
        }
        Ok(())
    }

    /// The bucket of `key`, if tracked.
    pub fn bucket(&self, key: &BucketKey) -> Result<Option<Bucket>, KernelError> {
        Ok(self.buckets.get(key))
    }

    /// Calls `f` for every tracked bucket, read in place from the mapped
    /// table: a million slots take a few milliseconds, and no system call.
    pub fn for_each_bucket(&self, f: &mut dyn FnMut(&BucketKey, &Bucket)) {
        self.buckets.for_each(f);
    }

    /// A handle of its own on the bucket table, for walks that need nothing
    /// else and so can run beside every other use of the dataplane.
    pub fn bucket_walker(&self) -> Result<BucketWalker, KernelError> {
        Ok(BucketWalker { table: self.buckets.clone() })
    }

    /// The seed and group count of the bucket table, which every `CONFIG`
    /// entry written carries.
    pub(super) fn table_geometry(&self) -> (u64, u32) {
        (self.buckets.seed(), table::groups(self.buckets.slots()))
    }

    /// Fleet mode: gives each source of `shares` that part of its limit (in
    /// 1/`SHARE_ONE`ths), every other source `default_share` of it, and
    /// the sources of the last call that are not in this one their whole
    /// limit back. How many of `shares` are tracked.
    pub fn set_shares(
        &mut self,
        default_share: u32,
        shares: &[(BucketKey, u32)],
    ) -> Result<usize, KernelError> {
        let default_share = if default_share >= table::SHARE_ONE { 0 } else { default_share };
        if default_share != self.default_share {
            let mut config = self.config.get(&0, 0).map_err(map_err(map_name::CONFIG))?;
            config.default_share = default_share;
            self.config.set(0, config, 0).map_err(map_err(map_name::CONFIG))?;
            self.default_share = default_share;
        }
        let listed: HashSet<BucketKey> = shares.iter().map(|(key, _)| *key).collect();
        for key in self.shared.difference(&listed) {
            let _ = self.buckets.set_share(key, 0);
        }
        let tracked = shares.iter().filter(|(key, share)| self.buckets.set_share(key, *share)).count();
        self.shared = listed;
        Ok(tracked)
    }

    /// Holds the sources that came at or after `known_before` to their
    /// share of the limits the controller moves ([`Kernel::set_newcomers`]).
    pub fn set_newcomers(&mut self, newcomers: NewcomerShare) -> Result<(), KernelError> {
        let newcomers = NewcomerShare {
            share: if newcomers.share >= table::SHARE_ONE { 0 } else { newcomers.share },
            ..newcomers
        };
        if newcomers != self.newcomers {
            let mut config = self.config.get(&0, 0).map_err(map_err(map_name::CONFIG))?;
            config.known_before = newcomers.known_before;
            config.newcomer_share = newcomers.share;
            self.config.set(0, config, 0).map_err(map_err(map_name::CONFIG))?;
            self.newcomers = newcomers;
        }
        Ok(())
    }

    /// The bucket table itself (its mapping), for tests and benchmarks.
    #[must_use]
    pub fn table(&self) -> &BucketTable {
        &self.buckets
    }

    /// Forgets the bucket of `key` (the source starts over with a full
    /// burst). False when it was not tracked.
    pub fn remove_bucket(&mut self, key: &BucketKey) -> Result<bool, KernelError> {
        Ok(self.buckets.remove(key))
    }
}

/// Every entry of an array map of `len` entries, in batches where the
/// kernel has them, else one by one.
fn read_array<V: aya::Pod + Default>(
    array: &Array<MapData, V>,
    len: u32,
    map: &'static str,
) -> Result<Vec<V>, KernelError> {
    let mut values = vec![V::default(); len as usize];
    let fd = array.map().fd().as_fd().as_raw_fd();
    let mut seen = 0u32;
    let batched = sys::lookup_all::<u32, V>(fd, &mut |&index, value| {
        if let Some(slot) = values.get_mut(index as usize) {
            *slot = *value;
            seen += 1;
        }
    });
    if batched.is_ok() && seen == len {
        return Ok(values);
    }
    (0..len).map(|index| array.get(&index, 0)).collect::<Result<_, MapError>>().map_err(map_err(map))
}

/// Every entry of a rule trie.
fn read_trie<const N: usize>(
    trie: &LpmTrie<MapData, [u8; N], Rule>,
    map: &'static str,
) -> Result<BTreeMap<TrieKey<N>, Rule>, KernelError> {
    trie.iter()
        .map(|entry| entry.map(|(key, rule)| ((key.prefix_len() as u8, key.data()), rule)))
        .collect::<Result<_, MapError>>()
        .map_err(map_err(map))
}

/// The bucket key of `addr` for the limit `rule` names, aggregated to
/// these prefixes.
#[must_use]
pub fn bucket_key(addr: IpAddr, rule: u32, ipv4_prefix: u8, ipv6_prefix: u8) -> BucketKey {
    masked_key(addr, rule, ipv4_mask(ipv4_prefix), &ipv6_mask(ipv6_prefix))
}

/// The bucket key of `addr` masked as the data path masks it
/// (`bucket::masked_key`): masks in packet byte order.
#[must_use]
pub fn masked_key(addr: IpAddr, rule: u32, ipv4_mask: u32, ipv6_mask: &[u32; 4]) -> BucketKey {
    match addr {
        IpAddr::V4(a) => {
            BucketKey { addr: [u32::from_ne_bytes(a.octets()) & ipv4_mask, 0, 0, 0], rule, family: FAMILY_V4 }
        }
        IpAddr::V6(a) => {
            let o = a.octets();
            let word = |i: usize| {
                u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]]) & ipv6_mask[i]
            };
            BucketKey { addr: [word(0), word(1), word(2), word(3)], rule, family: FAMILY_V6 }
        }
    }
}
