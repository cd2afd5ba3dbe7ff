//! The XDP program and its maps, from user space: load, attach, write the
//! policy, read the counters and the buckets.
//!
//! # Pinning, for restarts without a gap
//!
//! With a pin directory (`--pin-dir`, on a bpffs), the maps and the XDP
//! links outlive the daemon:
//!
//! ```text
//! DIR/maps/CONFIG, RULES_V4, RULES_V6, SCOPE, BUCKETS, NEW_SOURCES, COUNTERS, RULE_FILTER,
//!          IFACE_SLOT
//! DIR/links/native/<iface>, DIR/links/generic/<iface>
//! ```
//!
//! A pinned `bpf_link` keeps its program attached after every descriptor of it
//! is closed, so a daemon killed with SIGKILL leaves enforcement running with
//! the state in the pinned maps. The next [`Dataplane::open`] loads its own
//! program against those same maps (buckets, counters and the configuration
//! version carry on), and [`Dataplane::attach`] swaps the program on the
//! pinned link with `BPF_LINK_UPDATE`, in one step: every packet meets either
//! the old program or the new one, both metering against the same buckets.
//!
//! The maps of a fresh start are pinned into a staging directory and renamed
//! to `maps/` in one step, so `maps/` never holds part of a set because a
//! daemon died while pinning. The maps are only adopted when their layout
//! version (the `layout` field of the `CONFIG` entry), types, key and value
//! sizes and capacities are the ones this build expects; the one exception
//! is the capacity of `BUCKETS`, which follows `max_sources` and may differ:
//! keeping every source's state wins over the new size.

use std::{
    collections::{BTreeMap, HashSet},
    ffi::CString,
    fmt, fs, io,
    net::IpAddr,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use std::os::fd::{AsFd as _, AsRawFd as _};

use aya::{
    maps::{
        lpm_trie::Key, Array, HashMap, IterableMap as _, LpmTrie, Map, MapData, MapError, MapInfo, MapType,
        PerCpuArray, PerCpuValues,
    },
    pin::PinError,
    programs::{
        links::{FdLink, LinkError, PinnedLink},
        xdp::XdpLink,
        ProgramError, Xdp, XdpMode as AyaXdpMode,
    },
    sys::SyscallError,
    Ebpf, EbpfError, EbpfLoader,
};
use ipnet::IpNet;
use throttle_common::{
    flags, ipv4_mask, ipv6_mask, map_name, reason, rule_filter, scope, Bucket, BucketKey, Config, Limit,
    Rule, ACTION_ALLOW, ACTION_DENY, ACTION_LIMIT, FAMILY_V4, FAMILY_V6, IFACE_SLOTS, LAYOUT_VERSION,
    MAX_IFINDEX, MAX_RULES, PROGRAM_NAME,
};

use crate::config::{Action, Policy, XdpMode};

/// The XDP object, built for the BPF target by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/throttle-ebpf"));

/// The reader of the program's log records.
pub type ProgramLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// Under the pin directory: the pinned maps, by name.
const MAPS_DIR: &str = "maps";
/// Under the pin directory: the pinned links, one per interface.
const LINKS_DIR: &str = "links";
/// The XDP modes as attachments and link pins name them.
const NATIVE: &str = "native";
const GENERIC: &str = "generic";

/// What can go wrong between the daemon and the kernel.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("loading the XDP object: {0}")]
    Load(#[from] EbpfError),
    #[error("the XDP object has no {what} named {name}")]
    Missing { what: &'static str, name: &'static str },
    #[error("the XDP program: {0}")]
    Program(#[from] ProgramError),
    #[error("map {map}: {source}")]
    Map { map: &'static str, source: MapError },
    #[error("attaching to {iface} in {mode} mode: {source}")]
    Attach { iface: String, mode: &'static str, source: ProgramError },
    #[error("a rule has no id")]
    RuleWithoutId,
    #[error("the program is already attached to {iface}")]
    AlreadyAttached { iface: String },
    #[error("pin directory {}: {source}", dir.display())]
    PinDir { dir: PathBuf, source: io::Error },
    #[error(
        "pin directory {}: not on a BPF file system (bpffs); choose one under /sys/fs/bpf, \
         or mount one with `mount -t bpf bpf /sys/fs/bpf`",
        dir.display()
    )]
    NotBpffs { dir: PathBuf },
    #[error("pin directory {}: bpffs refuses names with a dot; choose one without", dir.display())]
    DottedName { dir: PathBuf },
    #[error(
        "the maps pinned in {} have layout version {}, and this daemon uses layout version {expected}: \
         they cannot be adopted. {}",
        dir.display(), Version(*found), replace_hint(dir)
    )]
    LayoutMismatch { dir: PathBuf, found: Option<u32>, expected: u32 },
    #[error(
        "map {map} pinned in {} has {property} {found} where this daemon (layout version {LAYOUT_VERSION}) \
         expects {expected}, so the maps there cannot be adopted. {}",
        dir.display(), replace_hint(dir)
    )]
    Incompatible { dir: PathBuf, map: &'static str, property: &'static str, found: String, expected: String },
    #[error(
        "{} holds only some of the pinned maps (present: {}; missing: {}), so they cannot be adopted. \
         Remove them with `rm -r {}` (the interfaces are unmetered until this daemon attaches) and start again",
        dir.display(), present.join(", "), missing.join(", "), dir.display()
    )]
    PartialPins { dir: PathBuf, present: Vec<&'static str>, missing: Vec<&'static str> },
    #[error("reading pinned map {}: {source}", path.display())]
    PinnedMap { path: PathBuf, source: MapError },
    #[error("pinning {}: {source}", path.display())]
    Pin { path: PathBuf, source: PinError },
    #[error("removing pin {}: {source}", path.display())]
    Unpin { path: PathBuf, source: io::Error },
    #[error("pinned link {}: {source}", path.display())]
    PinnedLink { path: PathBuf, source: LinkError },
    #[error("pinned link {}: {source}", path.display())]
    PinnedLinkInfo { path: PathBuf, source: io::Error },
    #[error("{} is pinned as an XDP link but is something else", path.display())]
    NotXdpLink { path: PathBuf },
    #[error(
        "several links are pinned for {iface} ({}): remove the stale one",
        paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    DuplicateLinks { iface: String, paths: Vec<PathBuf> },
    #[error(
        "the link pinned at {} is attached to interface index {pinned_ifindex}, but {iface} is index {ifindex} \
         here (renamed, or in another network namespace): give each namespace its own --pin-dir, \
         or remove that pin",
        path.display()
    )]
    LinkElsewhere { iface: String, path: PathBuf, pinned_ifindex: u32, ifindex: u32 },
    #[error("replacing the program on the link pinned at {}: {source}", path.display())]
    Replace { path: PathBuf, source: ProgramError },
    #[error("the attachment to {iface} is not a bpf_link, which is what can be pinned: {source}")]
    Unpinnable { iface: String, source: LinkError },
}

/// A layout version as read from pinned maps: `None` when the `CONFIG` map
/// is not even shaped so that it can be read.
struct Version(Option<u32>);

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(version) => write!(f, "{version}"),
            None => f.write_str("unknown (an unreadable CONFIG map)"),
        }
    }
}

/// How to get rid of pinned maps this daemon cannot adopt.
fn replace_hint(dir: &Path) -> String {
    format!(
        "To replace them, stop the daemon that owns them with SIGTERM (without --keep-on-exit), which \
         detaches and removes them; if none is running, remove them with `rm -r {}`. Either way the \
         interfaces are unmetered until this daemon attaches.",
        dir.display()
    )
}

fn map_err(map: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, source }
}

/// A failed system call on behalf of `map`, as a [`map_err`].
fn syscall_err(map: &'static str, call: &'static str) -> impl Fn(io::Error) -> DataplaneError {
    move |io_error| map_err(map)(MapError::SyscallError(SyscallError { call, io_error }))
}

fn pin_dir_err(dir: &Path) -> impl Fn(io::Error) -> DataplaneError + '_ {
    move |source| DataplaneError::PinDir { dir: dir.to_path_buf(), source }
}

/// How the data path is opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// Capacity of the bucket map when it is created (pinned maps keep theirs).
    pub max_sources: u32,
    /// Where the maps and links are pinned; `None`: nothing outlives the daemon.
    pub pin_dir: Option<PathBuf>,
}

/// An attachment of the program to an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub iface: String,
    /// "native" or "generic": what the kernel accepted.
    pub mode: &'static str,
    /// Whether a pinned link left by an earlier daemon was taken over (its
    /// program replaced in place) rather than a new one attached.
    pub adopted: bool,
}

/// Reads every bucket of the bucket map on its own descriptor
/// ([`Dataplane::bucket_walker`]).
pub struct BucketWalker {
    buckets: HashMap<MapData, BucketKey, Bucket>,
}

impl BucketWalker {
    /// Calls `f` for every tracked bucket, as [`Dataplane::for_each_bucket`].
    pub fn for_each(&self, f: &mut dyn FnMut(&BucketKey, &Bucket)) {
        walk_buckets(&self.buckets, f);
    }
}

/// Every bucket, in batches of many entries per system call where the kernel
/// has them, else one by one.
fn walk_buckets(buckets: &HashMap<MapData, BucketKey, Bucket>, f: &mut dyn FnMut(&BucketKey, &Bucket)) {
    let fd = buckets.map().fd().as_fd().as_raw_fd();
    if let Err(err) = batch::lookup_all::<BucketKey, Bucket>(fd, f) {
        tracing::debug!("batched lookup refused ({err}); walking the buckets one by one");
        for (key, bucket) in buckets.iter().filter_map(Result::ok) {
            f(&key, &bucket);
        }
    }
}

/// Verdict counters by [`reason`] slot.
pub type Counters = [u64; reason::COUNT as usize];

/// The interface and the XDP mode that counters of
/// [`Dataplane::counters_by_interface`] are reported under: `other`, with no
/// mode, for the packets of interfaces without counters of their own.
#[must_use]
pub fn counters_label(attachment: Option<&Attachment>) -> (String, String) {
    attachment.map_or_else(|| ("other".to_owned(), String::new()), |a| (a.iface.clone(), a.mode.to_owned()))
}

/// A rule as the data path holds it: its id and what it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelRule {
    pub id: u32,
    pub net: IpNet,
    pub action: Action,
    pub limit: Limit,
}

/// The loaded program and typed handles on its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    config: Array<MapData, Config>,
    rules_v4: LpmTrie<MapData, [u8; 4], Rule>,
    rules_v6: LpmTrie<MapData, [u8; 16], Rule>,
    scope: Array<MapData, u64>,
    /// The words of the scope bitmap as the kernel holds them.
    scope_bits: Vec<u64>,
    /// Resolution of `CLOCK_MONOTONIC_COARSE`, ns (0: unknown): which limits
    /// the data path meters with the coarse clock ([`Limit::with_clock`]).
    coarse_resolution_ns: u64,
    rule_filter: Array<MapData, u64>,
    /// The words of `RULE_FILTER` as the kernel holds them.
    rule_filter_words: Vec<u64>,
    /// The bank of `RULE_FILTER` in use.
    rule_filter_bank: u32,
    /// `Config::rule_filter_shifts` as the kernel holds it.
    rule_filter_shifts: u32,
    buckets: HashMap<MapData, BucketKey, Bucket>,
    counters: PerCpuArray<MapData, u64>,
    iface_slot: Array<MapData, u32>,
    /// The counters' slot of each interface index, as `IFACE_SLOT` holds it.
    slots: BTreeMap<u32, u32>,
    /// The global settings last written.
    written: Option<Config>,
    logger: Option<ProgramLogger>,
    attachments: Vec<Attachment>,
    version: u64,
    /// Where the maps and links are pinned, if anywhere.
    pins: Option<PinDir>,
    /// The pinned links this process holds, by interface. Closing them
    /// leaves the program attached: their pins hold the links.
    links: Vec<(String, FdLink)>,
    adopted: bool,
    max_sources: u32,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DataplaneError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(DataplaneError::Missing { what: "map", name })?;
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
    pub fn load(max_sources: u32) -> Result<Self, DataplaneError> {
        Self::open(&Options { max_sources, pin_dir: None })
    }

    /// Loads the program. With a pin directory, it adopts the maps pinned
    /// there when they are all present and of this build's layout, and
    /// otherwise creates them and pins them. Nothing is attached yet: the
    /// links pinned there keep running the program they have until
    /// [`Dataplane::attach`] replaces it.
    pub fn open(options: &Options) -> Result<Self, DataplaneError> {
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
                // Nothing was pinned: leave no empty directory behind either.
                let _ = made.remove_dirs();
            });
        }
        if !missing.is_empty() {
            return Err(DataplaneError::PartialPins { dir: dir.to_path_buf(), present, missing });
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

    fn from_object(max_sources: u32, origin: Origin) -> Result<Self, DataplaneError> {
        let mut loader = EbpfLoader::new();
        loader.map_max_entries(map_name::BUCKETS, max_sources);
        if let Origin::Adopted(pins) = &origin {
            // aya opens a map pinned at the given path and relocates the
            // program to it, instead of creating one (`create_pinned_by_name`).
            for name in map_name::ALL {
                loader.map_pin_path(name, pins.maps().join(name));
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
            .ok_or(DataplaneError::Missing { what: "program", name: PROGRAM_NAME })?
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
            Origin::Adopted(pins) => (Some(pins), true),
        };
        let config: Array<MapData, Config> = take(&mut ebpf, map_name::CONFIG)?;
        let buckets: HashMap<MapData, BucketKey, Bucket> = take(&mut ebpf, map_name::BUCKETS)?;
        let max_sources = buckets.map().info().map_err(map_err(map_name::BUCKETS))?.max_entries();
        // The configuration version carries on from the adopted maps, so
        // that it keeps growing across restarts.
        let (version, rule_filter_bank, rule_filter_shifts) = if adopted {
            let config = config.get(&0, 0).map_err(map_err(map_name::CONFIG))?;
            (config.version, config.rule_filter_bank & 1, config.rule_filter_shifts)
        } else {
            (0, 0, 0)
        };
        let rule_filter: Array<MapData, u64> = take(&mut ebpf, map_name::RULE_FILTER)?;
        let rule_filter_words = if adopted {
            (0..rule_filter::TOTAL)
                .map(|word| rule_filter.get(&word, 0))
                .collect::<Result<Vec<u64>, MapError>>()
                .map_err(map_err(map_name::RULE_FILTER))?
        } else {
            vec![0; rule_filter::TOTAL as usize]
        };
        let scope: Array<MapData, u64> = take(&mut ebpf, map_name::SCOPE)?;
        let scope_bits = (0..scope::WORDS)
            .map(|word| scope.get(&word, 0))
            .collect::<Result<Vec<u64>, MapError>>()
            .map_err(map_err(map_name::SCOPE))?;
        let iface_slot: Array<MapData, u32> = take(&mut ebpf, map_name::IFACE_SLOT)?;
        let mut slots = BTreeMap::new();
        if adopted {
            let mut keep = |ifindex: &u32, slot: &u32| {
                if *slot != 0 {
                    slots.insert(*ifindex, *slot);
                }
            };
            let fd = iface_slot.map().fd().as_fd().as_raw_fd();
            if batch::lookup_all::<u32, u32>(fd, &mut keep).is_err() {
                for (ifindex, slot) in (0..).zip(iface_slot.iter()) {
                    keep(&ifindex, &slot.map_err(map_err(map_name::IFACE_SLOT))?);
                }
            }
        }
        Ok(Self {
            config,
            iface_slot,
            slots,
            written: None,
            rules_v4: take(&mut ebpf, map_name::RULES_V4)?,
            rules_v6: take(&mut ebpf, map_name::RULES_V6)?,
            scope,
            scope_bits,
            coarse_resolution_ns: coarse_resolution_ns(),
            rule_filter,
            rule_filter_words,
            rule_filter_bank,
            rule_filter_shifts,
            buckets,
            counters: take(&mut ebpf, map_name::COUNTERS)?,
            ebpf,
            logger,
            attachments: Vec::new(),
            version,
            pins,
            links: Vec::new(),
            adopted,
            max_sources,
        })
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

    fn program_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .and_then(|p| <&mut Xdp>::try_from(p).ok())
            .expect("the program was checked at load")
    }

    /// Attaches to `iface`. In auto mode, native first and generic when the
    /// driver refuses; the mode obtained is returned and kept.
    ///
    /// With a pin directory, a link pinned there for `iface` is taken over:
    /// its program is replaced by this one in place, and it keeps the mode
    /// it was created with, whatever `mode` asks. Otherwise a new link is
    /// attached and pinned.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<&Attachment, DataplaneError> {
        if self.attachments.iter().any(|a| a.iface == iface) {
            return Err(DataplaneError::AlreadyAttached { iface: iface.to_owned() });
        }
        // Its counters are told apart from its first packet on: a slot of
        // its own, and the configuration no longer naming one interface only.
        if let Some(ifindex) = if_index(iface) {
            self.give_slot(iface, ifindex)?;
        }
        if !self.attachments.is_empty() {
            self.rewrite_config(true)?;
        }
        let attached = match self.attach_inner(iface, mode) {
            Ok(attached) => attached.clone(),
            Err(err) => {
                self.rewrite_config(false)?;
                return Err(err);
            }
        };
        self.rewrite_config(false)?;
        Ok(self.attachments.iter().find(|a| **a == attached).expect("just attached"))
    }

    fn attach_inner(&mut self, iface: &str, mode: XdpMode) -> Result<&Attachment, DataplaneError> {
        if let Some(pins) = &self.pins {
            let mut found: Vec<LinkPin> = pins.links()?.into_iter().filter(|l| l.iface == iface).collect();
            if found.len() > 1 {
                return Err(DataplaneError::DuplicateLinks {
                    iface: iface.to_owned(),
                    paths: found.into_iter().map(|l| l.path).collect(),
                });
            }
            if let Some(pin) = found.pop() {
                if self.adopt_link(&pin, mode)? {
                    return Ok(self.attachments.last().expect("just pushed"));
                }
            }
        }
        let attempts: &[(AyaXdpMode, &'static str)] = match mode {
            XdpMode::Auto => &[(AyaXdpMode::Driver, NATIVE), (AyaXdpMode::Skb, GENERIC)],
            XdpMode::Native => &[(AyaXdpMode::Driver, NATIVE)],
            XdpMode::Generic => &[(AyaXdpMode::Skb, GENERIC)],
        };
        let mut last = None;
        for &(aya_mode, name) in attempts {
            match self.program_mut().attach(iface, aya_mode) {
                Ok(link_id) => {
                    if let Some(pins) = &self.pins {
                        let (links, dir) = (pins.links_dir(), pins.mode_dir(name));
                        let link = self.program_mut().take_link(link_id)?;
                        // An XDP attachment is a bpf_link unless aya fell back
                        // to netlink, which only kernels before 5.9 (no XDP
                        // links) make it do; those are below what this
                        // program needs anyway.
                        let link = FdLink::try_from(link).map_err(|source| DataplaneError::Unpinnable {
                            iface: iface.to_owned(),
                            source,
                        })?;
                        create_dir_if_missing(&links)?;
                        create_dir_if_missing(&dir)?;
                        let path = dir.join(link_pin_name(iface));
                        let pinned = link
                            .pin(&path)
                            .map_err(|source| DataplaneError::Pin { path: path.clone(), source })?;
                        self.links.push((iface.to_owned(), pinned.into()));
                    }
                    self.attachments.push(Attachment { iface: iface.to_owned(), mode: name, adopted: false });
                    return Ok(self.attachments.last().expect("just pushed"));
                }
                Err(source @ ProgramError::UnknownInterface { .. }) => {
                    return Err(DataplaneError::Attach { iface: iface.to_owned(), mode: name, source });
                }
                Err(source) => {
                    if last.is_some() || attempts.len() == 1 {
                        return Err(DataplaneError::Attach { iface: iface.to_owned(), mode: name, source });
                    }
                    tracing::info!(iface, "native XDP refused ({source}); trying generic");
                    last = Some(source);
                }
            }
        }
        unreachable!("every attempt returns")
    }

    /// Takes over the link pinned at `pin`: replaces its program with this
    /// one. False when the link is defunct (its interface was deleted): the
    /// pin is removed and the caller attaches anew.
    fn adopt_link(&mut self, pin: &LinkPin, mode: XdpMode) -> Result<bool, DataplaneError> {
        let ifindex = if_index(&pin.iface).ok_or_else(|| DataplaneError::Attach {
            iface: pin.iface.clone(),
            mode: pin.mode,
            source: ProgramError::UnknownInterface { name: pin.iface.clone() },
        })?;
        let pinned_ifindex = sys::xdp_link_ifindex(&pin.path)
            .map_err(|source| DataplaneError::PinnedLinkInfo { path: pin.path.clone(), source })?
            .ok_or_else(|| DataplaneError::NotXdpLink { path: pin.path.clone() })?;
        if pinned_ifindex == 0 {
            // The kernel detaches an XDP link whose device goes away and
            // reports interface index 0 for it from then on: an interface
            // of that name was deleted and made again since.
            tracing::warn!(iface = pin.iface, path = %pin.path.display(), "the pinned link is defunct; attaching anew");
            unpin_link(&pin.path)?;
            return Ok(false);
        }
        if pinned_ifindex != ifindex {
            return Err(DataplaneError::LinkElsewhere {
                iface: pin.iface.clone(),
                path: pin.path.clone(),
                pinned_ifindex,
                ifindex,
            });
        }
        let wanted = match mode {
            XdpMode::Auto => None,
            XdpMode::Native => Some(NATIVE),
            XdpMode::Generic => Some(GENERIC),
        };
        if wanted.is_some_and(|wanted| wanted != pin.mode) {
            // Changing the mode would mean detaching first: a gap. The
            // running mode stays until a clean stop.
            tracing::warn!(
                iface = pin.iface,
                pinned = pin.mode,
                requested = %mode,
                "the pinned link runs in {} mode and keeps it; stop the daemon (without --keep-on-exit) \
                 and start again to change it",
                pin.mode
            );
        }
        let link_err = |source| DataplaneError::PinnedLink { path: pin.path.clone(), source };
        let link = FdLink::from(PinnedLink::from_pin(&pin.path).map_err(link_err)?);
        let link = XdpLink::try_from(link).map_err(link_err)?;
        let link_id = self
            .program_mut()
            .attach_to_link(link)
            .map_err(|source| DataplaneError::Replace { path: pin.path.clone(), source })?;
        // Held apart from the program, like the links this process pins,
        // so that dropping the program never detaches it.
        let link = FdLink::try_from(self.program_mut().take_link(link_id)?).map_err(link_err)?;
        self.links.push((pin.iface.clone(), link));
        self.attachments.push(Attachment { iface: pin.iface.clone(), mode: pin.mode, adopted: true });
        Ok(true)
    }

    /// Detaches and unpins the links pinned for interfaces not in `keep`
    /// (those an earlier daemon attached to and this one no longer names),
    /// and returns the names of those interfaces. Without a pin directory
    /// there are none.
    pub fn release_others(&mut self, keep: &[String]) -> Result<Vec<String>, DataplaneError> {
        let Some(pins) = &self.pins else {
            return Ok(Vec::new());
        };
        let mut released = Vec::new();
        for pin in pins.links()? {
            if keep.contains(&pin.iface) {
                continue;
            }
            unpin_link(&pin.path)?;
            self.links.retain(|(iface, _)| *iface != pin.iface);
            self.attachments.retain(|a| a.iface != pin.iface);
            if let Some(ifindex) = if_index(&pin.iface) {
                self.take_slot(ifindex)?;
            }
            released.push(pin.iface);
        }
        self.rewrite_config(false)?;
        Ok(released)
    }

    /// Stops the data path. With `keep_pins`, everything stays attached and
    /// pinned, for the next daemon to adopt (an upgrade). Without, every
    /// link pinned in the pin directory is detached, and every pin and the
    /// directories are removed. Without a pin directory, the program is
    /// detached either way.
    pub fn shutdown(mut self, keep_pins: bool) -> Result<(), DataplaneError> {
        self.release(keep_pins)
    }

    /// What [`Dataplane::shutdown`] does, for an owner that cannot give the
    /// dataplane up: afterwards it holds no pins, and its links go with it.
    pub fn release(&mut self, keep_pins: bool) -> Result<(), DataplaneError> {
        let Some(pins) = self.pins.take() else {
            return Ok(());
        };
        if keep_pins {
            return Ok(());
        }
        // Every step is tried, so that one failure leaves as little behind
        // as possible; the first error is reported.
        let mut result = Ok(());
        let mut record = |step: Result<(), DataplaneError>| {
            if let Err(err) = step {
                tracing::warn!("{err}");
                if result.is_ok() {
                    result = Err(err);
                }
            }
        };
        match pins.links() {
            Ok(links) => {
                for pin in links {
                    record(unpin_link(&pin.path));
                }
            }
            Err(err) => record(Err(err)),
        }
        // The links this process holds whose pin is gone already.
        self.links.clear();
        let maps = pins.maps();
        for name in map_name::ALL {
            record(remove_pin(&maps.join(name)));
        }
        record(pins.remove_dirs());
        result
    }

    /// Where the program is attached.
    #[must_use]
    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// The version of the configuration last written.
    #[must_use]
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Writes `policy` to the maps: new and changed rules and the scope's
    /// additions first, then the global settings, then the removal of what
    /// is no longer there. Buckets are never touched: every source keeps its
    /// state.
    pub fn apply(&mut self, policy: &Policy, rules: &[KernelRule]) -> Result<(), DataplaneError> {
        let clock = self.coarse_resolution_ns;
        let mut config_flags = 0;
        // Scope: the words that gain bits take the union of old and new
        // now, and their final value after the global settings, so that
        // while the change lands a port is in scope if either policy says so.
        let mut scope_bits = vec![0u64; scope::WORDS as usize];
        for entry in &policy.scope.ports {
            let proto = entry.proto.number();
            let (word, shift) = scope::slot(proto, entry.port as u16).expect("the scope names TCP or UDP");
            let bits = scope::IN_SCOPE | if entry.syn_only { scope::SYN_ONLY } else { 0 };
            scope_bits[word as usize] |= bits << shift;
            config_flags |= flags::SCOPE
                | match entry.proto {
                    crate::config::Proto::Tcp => flags::SCOPE_TCP,
                    crate::config::Proto::Udp => flags::SCOPE_UDP,
                };
        }
        for (word, &bits) in scope_bits.iter().enumerate() {
            let old = self.scope_bits[word];
            if bits & !old != 0 {
                self.write_scope_word(word, old | bits)?;
            }
        }
        // Rules.
        let mut v4 = HashSet::new();
        let mut v6 = HashSet::new();
        for rule in rules {
            let value = Rule {
                limit: rule.limit.with_clock(clock),
                action: match rule.action {
                    Action::Allow => ACTION_ALLOW,
                    Action::Deny => ACTION_DENY,
                    Action::Limit => ACTION_LIMIT,
                },
                id: rule.id,
            };
            let deny = rule.action == Action::Deny;
            match rule.net {
                IpNet::V4(net) => {
                    let key = Key::new(u32::from(net.prefix_len()), net.addr().octets());
                    self.rules_v4.insert(&key, value, 0).map_err(map_err(map_name::RULES_V4))?;
                    v4.insert((net.prefix_len(), net.addr().octets()));
                    config_flags |= flags::RULES_V4 | if deny { flags::DENY_V4 } else { 0 };
                }
                IpNet::V6(net) => {
                    let key = Key::new(u32::from(net.prefix_len()), net.addr().octets());
                    self.rules_v6.insert(&key, value, 0).map_err(map_err(map_name::RULES_V6))?;
                    v6.insert((net.prefix_len(), net.addr().octets()));
                    config_flags |= flags::RULES_V6 | if deny { flags::DENY_V6 } else { 0 };
                }
            }
        }
        // The rule filter of the new rule set, in the bank not in use.
        let bank = self.write_rule_filter(rules)?;
        // Global settings.
        let limits = &policy.limits;
        if limits.dry_run {
            config_flags |= flags::DRY_RUN;
        }
        if limits.new_source_rate > 0 {
            config_flags |= flags::NEW_SOURCE_LIMIT;
        }
        self.version += 1;
        let config = Config {
            version: self.version,
            layout: LAYOUT_VERSION,
            flags: config_flags,
            default_limit: Limit::new(limits.rate, limits.burst, limits.unit.kernel()).with_clock(clock),
            new_source_limit: Limit::new(
                limits.new_source_rate,
                limits.new_source_burst,
                throttle_common::UNIT_PACKETS,
            )
            .with_clock(clock),
            ipv4_mask: ipv4_mask(limits.ipv4_prefix as u8),
            rule_filter_bank: bank,
            ipv6_mask: ipv6_mask(limits.ipv6_prefix as u8),
            iface_slot: 0,
            rule_filter_shifts: self.rule_filter_shifts,
        };
        self.write_config(config, false)?;
        self.rule_filter_bank = bank;
        // Removals, now that nothing refers to them.
        for (word, &bits) in scope_bits.iter().enumerate() {
            if self.scope_bits[word] != bits {
                self.write_scope_word(word, bits)?;
            }
        }
        let stale: Vec<Key<[u8; 4]>> = self
            .rules_v4
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !v4.contains(&(k.prefix_len() as u8, k.data())))
            .collect();
        for key in stale {
            self.rules_v4.remove(&key).map_err(map_err(map_name::RULES_V4))?;
        }
        let stale: Vec<Key<[u8; 16]>> = self
            .rules_v6
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !v6.contains(&(k.prefix_len() as u8, k.data())))
            .collect();
        for key in stale {
            self.rules_v6.remove(&key).map_err(map_err(map_name::RULES_V6))?;
        }
        Ok(())
    }

    /// Writes the rule filter of `rules` into the bank not in use and returns
    /// that bank, for the configuration to switch to; returns the bank in use
    /// when it already holds that filter.
    fn write_rule_filter(&mut self, rules: &[KernelRule]) -> Result<u32, DataplaneError> {
        let v4 = crate::rule_filter::Region::ipv4(rules.iter().filter_map(|r| match r.net {
            IpNet::V4(net) => Some((net.network(), net.prefix_len())),
            IpNet::V6(_) => None,
        }));
        let v6 = crate::rule_filter::Region::ipv6(rules.iter().filter_map(|r| match r.net {
            IpNet::V6(net) => Some((net.network(), net.prefix_len())),
            IpNet::V4(_) => None,
        }));
        let holds = |words: &[u64], bank: u32| {
            [(false, &v4), (true, &v6)].iter().all(|(ipv6, region)| {
                let start = rule_filter::region(bank, *ipv6) as usize;
                words[start..start + rule_filter::REGION as usize] == *region.words()
            })
        };
        if holds(&self.rule_filter_words, self.rule_filter_bank) {
            // Masks left at 0 by an earlier build's daemon are filled in.
            self.write_rule_filter_shifts(self.rule_filter_bank, &v4, &v6)?;
            return Ok(self.rule_filter_bank);
        }
        let bank = self.rule_filter_bank ^ 1;
        for (ipv6, region) in [(false, &v4), (true, &v6)] {
            let start = rule_filter::region(bank, ipv6);
            for (index, &word) in (start..).zip(region.words()) {
                if self.rule_filter_words[index as usize] != word {
                    self.rule_filter.set(index, word, 0).map_err(map_err(map_name::RULE_FILTER))?;
                    self.rule_filter_words[index as usize] = word;
                }
            }
        }
        self.write_rule_filter_shifts(bank, &v4, &v6)?;
        Ok(bank)
    }

    /// Puts the masks of `bank`'s regions in the configuration in force,
    /// which the program reads before it looks at the bitmap. The bank not
    /// in use changes before the switch to it, and the bank in use only
    /// from 0 (walk the trie, as after an earlier build), so that no packet
    /// pairs a bank with another filter's mask.
    fn write_rule_filter_shifts(
        &mut self,
        bank: u32,
        v4: &crate::rule_filter::Region,
        v6: &crate::rule_filter::Region,
    ) -> Result<(), DataplaneError> {
        let shifts = rule_filter::with_shift(
            rule_filter::with_shift(self.rule_filter_shifts, bank, false, v4.shift_byte()),
            bank,
            true,
            v6.shift_byte(),
        );
        if shifts == self.rule_filter_shifts {
            return Ok(());
        }
        let mut config = self.config.get(&0, 0).map_err(map_err(map_name::CONFIG))?;
        config.rule_filter_shifts = shifts;
        self.config.set(0, config, 0).map_err(map_err(map_name::CONFIG))?;
        if let Some(written) = &mut self.written {
            written.rule_filter_shifts = shifts;
        }
        self.rule_filter_shifts = shifts;
        Ok(())
    }

    /// Writes the global settings, with the counters slot of the interface
    /// when the program is attached to one only and no other is on its way
    /// (`attaching`): the program then skips looking the slot up.
    fn write_config(&mut self, mut config: Config, attaching: bool) -> Result<(), DataplaneError> {
        config.flags &= !flags::ONE_IFACE;
        config.iface_slot = 0;
        if let ([only], false) = (self.attachments.as_slice(), attaching) {
            if let Some(&slot) = if_index(&only.iface).and_then(|i| self.slots.get(&i)) {
                config.flags |= flags::ONE_IFACE;
                config.iface_slot = slot;
            }
        }
        self.config.set(0, config, 0).map_err(map_err(map_name::CONFIG))?;
        self.written = Some(config);
        Ok(())
    }

    /// Writes the last settings again, for the interfaces attached now.
    fn rewrite_config(&mut self, attaching: bool) -> Result<(), DataplaneError> {
        match self.written {
            Some(config) => self.write_config(config, attaching),
            None => Ok(()),
        }
    }

    /// Writes one word of the scope bitmap, and remembers it.
    fn write_scope_word(&mut self, word: usize, bits: u64) -> Result<(), DataplaneError> {
        let index = u32::try_from(word).expect("the bitmap has scope::WORDS words");
        self.scope.set(index, bits, 0).map_err(map_err(map_name::SCOPE))?;
        self.scope_bits[word] = bits;
        Ok(())
    }

    /// The global settings as the kernel holds them.
    pub fn kernel_config(&self) -> Result<Config, DataplaneError> {
        self.config.get(&0, 0).map_err(map_err(map_name::CONFIG))
    }

    /// The verdict counters, summed over the CPUs and the interfaces, by
    /// [`reason`] slot.
    pub fn counters(&self) -> Result<[u64; reason::COUNT as usize], DataplaneError> {
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
    pub fn counters_by_interface(&self) -> Result<Vec<(Option<Attachment>, Counters)>, DataplaneError> {
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
    fn slot_counters(&self, slot: u32) -> Result<Counters, DataplaneError> {
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
    fn give_slot(&mut self, iface: &str, ifindex: u32) -> Result<(), DataplaneError> {
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
    fn take_slot(&mut self, ifindex: u32) -> Result<(), DataplaneError> {
        if self.slots.remove(&ifindex).is_some() {
            self.iface_slot.set(ifindex, 0, 0).map_err(map_err(map_name::IFACE_SLOT))?;
        }
        Ok(())
    }

    /// The bucket of `key`, if tracked.
    pub fn bucket(&self, key: &BucketKey) -> Result<Option<Bucket>, DataplaneError> {
        match self.buckets.get(key, 0) {
            Ok(bucket) => Ok(Some(bucket)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(DataplaneError::Map { map: map_name::BUCKETS, source }),
        }
    }

    /// Every tracked bucket, one key at a time (two system calls each).
    pub fn buckets(&self) -> impl Iterator<Item = (BucketKey, Bucket)> + '_ {
        self.buckets.iter().filter_map(Result::ok)
    }

    /// Calls `f` for every tracked bucket, reading them in batches of
    /// thousands per system call (`BPF_MAP_LOOKUP_BATCH`): a million sources
    /// take a fraction of a second, where [`Dataplane::buckets`] takes
    /// seconds. Falls back to the one-by-one walk where batches are refused.
    pub fn for_each_bucket(&self, f: &mut dyn FnMut(&BucketKey, &Bucket)) {
        walk_buckets(&self.buckets, f);
    }

    /// A handle of its own on the bucket map (a duplicate descriptor), for
    /// walks that need nothing else and so can run beside every other use
    /// of the dataplane.
    pub fn bucket_walker(&self) -> Result<BucketWalker, DataplaneError> {
        let fd = self
            .buckets
            .map()
            .fd()
            .as_fd()
            .try_clone_to_owned()
            .map_err(syscall_err(map_name::BUCKETS, "dup"))?;
        let data = MapData::from_fd(fd).map_err(map_err(map_name::BUCKETS))?;
        let buckets = HashMap::try_from(Map::LruHashMap(data)).map_err(map_err(map_name::BUCKETS))?;
        Ok(BucketWalker { buckets })
    }

    /// Forgets the bucket of `key` (the source starts over with a full
    /// burst). False when it was not tracked.
    pub fn remove_bucket(&mut self, key: &BucketKey) -> Result<bool, DataplaneError> {
        match self.buckets.remove(key) {
            Ok(()) => Ok(true),
            Err(MapError::SyscallError(SyscallError { io_error, .. }))
                if io_error.raw_os_error() == Some(libc::ENOENT) =>
            {
                Ok(false)
            }
            Err(source) => Err(DataplaneError::Map { map: map_name::BUCKETS, source }),
        }
    }
}

/// The bucket key of `addr` under the default limit, masked as `policy` says.
#[must_use]
pub fn bucket_key(addr: IpAddr, rule: u32, ipv4_prefix: u8, ipv6_prefix: u8) -> BucketKey {
    match addr {
        IpAddr::V4(a) => BucketKey {
            addr: [u32::from_ne_bytes(a.octets()) & ipv4_mask(ipv4_prefix), 0, 0, 0],
            rule,
            family: FAMILY_V4,
        },
        IpAddr::V6(a) => {
            let o = a.octets();
            let m = ipv6_mask(ipv6_prefix);
            let word =
                |i: usize| u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]]) & m[i];
            BucketKey { addr: [word(0), word(1), word(2), word(3)], rule, family: FAMILY_V6 }
        }
    }
}

/// A pin directory, and the directories this process made to have it.
#[derive(Debug, Clone)]
struct PinDir {
    dir: PathBuf,
    /// Made by this process, outermost first.
    created: Vec<PathBuf>,
}

/// A link pin: `links/<mode>/<iface>`.
///
/// The XDP mode of a link is recovered from where its pin is. bpffs holds no
/// regular files to write it to, the kernel's `bpf_link_info` for XDP carries
/// only the interface index, and netlink reports what a device runs rather
/// than what a given link was made with. The path is robust: it is given in
/// the same step that makes the link outlive its creator, and the mode of an
/// XDP link is fixed for its whole life (`BPF_LINK_UPDATE` swaps the program
/// and keeps the flags).
///
/// bpffs refuses names with a dot (`bpf_lookup` keeps them for the kernel's
/// own files), and an interface name may have one (`eth0.100`) but never a
/// colon (`dev_valid_name`): dots are written as colons.
#[derive(Debug)]
struct LinkPin {
    iface: String,
    mode: &'static str,
    path: PathBuf,
}

fn link_pin_name(iface: &str) -> String {
    iface.replace('.', ":")
}

fn iface_of_pin(name: &str) -> String {
    name.replace(':', ".")
}

impl PinDir {
    /// Makes `dir` (and its missing parents) and checks that it is on a
    /// bpffs, where pins can live.
    fn prepare(dir: &Path) -> Result<Self, DataplaneError> {
        let mut missing = Vec::new();
        let mut at = Some(dir);
        while let Some(path) = at {
            if path.as_os_str().is_empty() || pin_exists(path)? {
                break;
            }
            missing.push(path.to_path_buf());
            at = path.parent();
        }
        let mut created = Vec::new();
        for path in missing.into_iter().rev() {
            match fs::create_dir(&path) {
                Ok(()) => created.push(path),
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => {}
                Err(err)
                    if err.kind() == io::ErrorKind::PermissionDenied
                        && path.file_name().is_some_and(|name| name.as_bytes().contains(&b'.')) =>
                {
                    let _ = Self { dir: dir.to_path_buf(), created }.remove_dirs();
                    return Err(DataplaneError::DottedName { dir: path });
                }
                Err(source) => {
                    let _ = Self { dir: dir.to_path_buf(), created }.remove_dirs();
                    // Under a directory that is not a bpffs (as /sys/fs/bpf
                    // in the fresh sysfs of `ip netns exec`), say that.
                    if path.parent().is_some_and(|parent| matches!(sys::is_bpffs(parent), Ok(false))) {
                        return Err(DataplaneError::NotBpffs { dir: dir.to_path_buf() });
                    }
                    return Err(DataplaneError::PinDir { dir: path, source });
                }
            }
        }
        let pins = Self { dir: dir.to_path_buf(), created };
        if !sys::is_bpffs(dir).map_err(pin_dir_err(dir))? {
            // Leave nothing behind for a directory that cannot be used.
            let _ = pins.remove_dirs();
            return Err(DataplaneError::NotBpffs { dir: dir.to_path_buf() });
        }
        Ok(pins)
    }

    fn maps(&self) -> PathBuf {
        self.dir.join(MAPS_DIR)
    }

    fn links_dir(&self) -> PathBuf {
        self.dir.join(LINKS_DIR)
    }

    fn mode_dir(&self, mode: &str) -> PathBuf {
        self.links_dir().join(mode)
    }

    /// The links pinned here, in interface order.
    fn links(&self) -> Result<Vec<LinkPin>, DataplaneError> {
        let mut links = Vec::new();
        for mode in [NATIVE, GENERIC] {
            let dir = self.mode_dir(mode);
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(DataplaneError::PinDir { dir, source }),
            };
            for entry in entries {
                let entry = entry.map_err(pin_dir_err(&dir))?;
                let iface = iface_of_pin(&entry.file_name().to_string_lossy());
                links.push(LinkPin { iface, mode, path: entry.path() });
            }
        }
        links.sort_by(|a, b| a.iface.cmp(&b.iface));
        Ok(links)
    }

    fn has_links(&self) -> Result<bool, DataplaneError> {
        Ok(!self.links()?.is_empty())
    }

    /// Removes the (empty) directories: `links/` and its mode directories,
    /// `maps/`, the pin directory
    /// itself, and the parents this process made. The pin directory is
    /// throttle's own, whoever made it: a restarted daemon cannot know
    /// whether its predecessor did, and an empty one holds nothing.
    fn remove_dirs(&self) -> Result<(), DataplaneError> {
        let mut dirs = vec![
            self.mode_dir(NATIVE),
            self.mode_dir(GENERIC),
            self.links_dir(),
            self.maps(),
            self.dir.clone(),
        ];
        dirs.extend(self.created.iter().rev().filter(|d| **d != self.dir).cloned());
        // Each one is tried, whatever happened to the others.
        let mut result = Ok(());
        for dir in dirs {
            match fs::remove_dir(&dir) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    if result.is_ok() {
                        result = Err(DataplaneError::PinDir { dir, source });
                    }
                }
            }
        }
        result
    }
}

fn pin_exists(path: &Path) -> Result<bool, DataplaneError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(DataplaneError::PinDir { dir: path.to_path_buf(), source }),
    }
}

fn create_dir_if_missing(dir: &Path) -> Result<(), DataplaneError> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(DataplaneError::PinDir { dir: dir.to_path_buf(), source }),
    }
}

fn remove_pin(path: &Path) -> Result<(), DataplaneError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(DataplaneError::Unpin { path: path.to_path_buf(), source }),
    }
}

/// Detaches the link pinned at `path` and removes the pin. The link is
/// opened before its pin goes, so that the last reference is this
/// descriptor: closing it detaches at once, where dropping the last
/// reference through the pin would detach later, from a kernel work queue.
fn unpin_link(path: &Path) -> Result<(), DataplaneError> {
    let link = match PinnedLink::from_pin(path) {
        Ok(link) => link,
        Err(LinkError::SyscallError(SyscallError { io_error, .. }))
            if io_error.kind() == io::ErrorKind::NotFound =>
        {
            return Ok(());
        }
        Err(source) => return Err(DataplaneError::PinnedLink { path: path.to_path_buf(), source }),
    };
    let link = link.unpin().map_err(|source| DataplaneError::Unpin { path: path.to_path_buf(), source })?;
    drop(link);
    Ok(())
}

/// The index of interface `name` in the calling thread's network namespace.
fn if_index(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // SAFETY: `name` is a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// What a map of this build looks like to the kernel.
struct Expected {
    name: &'static str,
    map_type: MapType,
    key_size: usize,
    value_size: usize,
    /// `None` for the bucket map, whose capacity is chosen at load.
    max_entries: Option<u32>,
}

/// The resolution of `CLOCK_MONOTONIC_COARSE` (the clock of
/// `bpf_ktime_get_coarse_ns`) in ns: one scheduler tick. 0 when it cannot be
/// read, which keeps every limit on the fine clock.
fn coarse_resolution_ns() -> u64 {
    let mut res = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `res` is a valid timespec for the call to fill.
    if unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &raw mut res) } != 0 {
        return 0;
    }
    u64::try_from(res.tv_sec).unwrap_or(0).saturating_mul(1_000_000_000)
        + u64::try_from(res.tv_nsec).unwrap_or(0)
}

/// Every map of the XDP object (`throttle-ebpf/src/maps.rs`), as the
/// adoption check compares it. The adoption tests open pins that the object
/// itself made, so this table cannot drift from it unnoticed.
const EXPECTED: [Expected; map_name::ALL.len()] = [
    Expected {
        name: map_name::CONFIG,
        map_type: MapType::Array,
        key_size: size_of::<u32>(),
        value_size: size_of::<Config>(),
        max_entries: Some(1),
    },
    Expected {
        name: map_name::RULES_V4,
        map_type: MapType::LpmTrie,
        key_size: size_of::<Key<[u8; 4]>>(),
        value_size: size_of::<Rule>(),
        max_entries: Some(MAX_RULES),
    },
    Expected {
        name: map_name::RULES_V6,
        map_type: MapType::LpmTrie,
        key_size: size_of::<Key<[u8; 16]>>(),
        value_size: size_of::<Rule>(),
        max_entries: Some(MAX_RULES),
    },
    Expected {
        name: map_name::SCOPE,
        map_type: MapType::Array,
        key_size: size_of::<u32>(),
        value_size: size_of::<u64>(),
        max_entries: Some(scope::WORDS),
    },
    Expected {
        name: map_name::BUCKETS,
        map_type: MapType::LruHash,
        key_size: size_of::<BucketKey>(),
        value_size: size_of::<Bucket>(),
        max_entries: None,
    },
    Expected {
        name: map_name::NEW_SOURCES,
        map_type: MapType::Array,
        key_size: size_of::<u32>(),
        value_size: size_of::<u64>(),
        max_entries: Some(1),
    },
    Expected {
        name: map_name::RULE_FILTER,
        map_type: MapType::Array,
        key_size: size_of::<u32>(),
        value_size: size_of::<u64>(),
        max_entries: Some(rule_filter::TOTAL),
    },
    Expected {
        name: map_name::COUNTERS,
        map_type: MapType::PerCpuArray,
        key_size: size_of::<u32>(),
        value_size: size_of::<u64>(),
        max_entries: Some(IFACE_SLOTS * reason::COUNT),
    },
    Expected {
        name: map_name::IFACE_SLOT,
        map_type: MapType::Array,
        key_size: size_of::<u32>(),
        value_size: size_of::<u32>(),
        max_entries: Some(MAX_IFINDEX),
    },
];

/// Checks that the maps pinned in `maps` (under `dir`) can be adopted: the
/// layout version first, since under another one nothing else need match,
/// then every map's type, key and value sizes and capacity.
fn check_pinned(dir: &Path, maps: &Path) -> Result<(), DataplaneError> {
    let path = maps.join(map_name::CONFIG);
    let config = MapData::from_pin(&path)
        .map_err(|source| DataplaneError::PinnedMap { path: path.clone(), source })?;
    let info = config.info().map_err(|source| DataplaneError::PinnedMap { path: path.clone(), source })?;
    let layout = read_layout(&config, &info).map_err(|source| DataplaneError::PinnedMap { path, source })?;
    if layout != Some(LAYOUT_VERSION) {
        return Err(DataplaneError::LayoutMismatch {
            dir: dir.to_path_buf(),
            found: layout,
            expected: LAYOUT_VERSION,
        });
    }
    for expected in &EXPECTED {
        let path = maps.join(expected.name);
        let info = MapInfo::from_pin(&path)
            .map_err(|source| DataplaneError::PinnedMap { path: path.clone(), source })?;
        let mismatch = |property, found: String, wanted: String| DataplaneError::Incompatible {
            dir: dir.to_path_buf(),
            map: expected.name,
            property,
            found,
            expected: wanted,
        };
        match info.map_type() {
            Ok(found) if found == expected.map_type => {}
            Ok(found) => {
                return Err(mismatch("type", format!("{found:?}"), format!("{:?}", expected.map_type)));
            }
            Err(_) => {
                return Err(mismatch("type", "an unknown one".to_owned(), format!("{:?}", expected.map_type)))
            }
        }
        if info.key_size() as usize != expected.key_size {
            return Err(mismatch("key size", info.key_size().to_string(), expected.key_size.to_string()));
        }
        if info.value_size() as usize != expected.value_size {
            return Err(mismatch(
                "value size",
                info.value_size().to_string(),
                expected.value_size.to_string(),
            ));
        }
        if let Some(max_entries) = expected.max_entries {
            if info.max_entries() != max_entries {
                return Err(mismatch("capacity", info.max_entries().to_string(), max_entries.to_string()));
            }
        }
    }
    Ok(())
}

/// The `layout` field of the pinned `CONFIG` entry, read as raw bytes so that
/// it can be read whatever the size of the rest of another layout's entry
/// (`version` and `layout` lead [`Config`] in every layout). `None` when the
/// map is not an array with a value long enough to hold it.
fn read_layout(config: &MapData, info: &MapInfo) -> Result<Option<u32>, MapError> {
    const LAYOUT_OFFSET: usize = std::mem::offset_of!(Config, layout);
    const LAYOUT_END: usize = LAYOUT_OFFSET + size_of::<u32>();
    if !matches!(info.map_type(), Ok(MapType::Array)) || info.key_size() != 4 || info.max_entries() == 0 {
        return Ok(None);
    }
    let value_size = info.value_size() as usize;
    if value_size < LAYOUT_END {
        return Ok(None);
    }
    let mut value = vec![0u8; value_size];
    sys::lookup(config.fd(), 0, &mut value)
        .map_err(|io_error| MapError::SyscallError(SyscallError { call: "bpf_map_lookup_elem", io_error }))?;
    let bytes: [u8; 4] = value[LAYOUT_OFFSET..LAYOUT_END].try_into().expect("four bytes");
    Ok(Some(u32::from_ne_bytes(bytes)))
}

/// Pins the maps of a fresh load under `pins`. The `CONFIG` entry gets this
/// build's layout version first, so that pinned maps always say which layout
/// they are. They are pinned into a staging directory that is then renamed
/// to `maps/`: whoever looks finds all of them or none.
fn pin_new_maps(ebpf: &mut Ebpf, pins: &PinDir) -> Result<(), DataplaneError> {
    {
        let map = ebpf
            .map_mut(map_name::CONFIG)
            .ok_or(DataplaneError::Missing { what: "map", name: map_name::CONFIG })?;
        let mut config: Array<&mut MapData, Config> =
            Array::try_from(map).map_err(map_err(map_name::CONFIG))?;
        let initial = Config { layout: LAYOUT_VERSION, ..Config::default() };
        config.set(0, initial, 0).map_err(map_err(map_name::CONFIG))?;
    }
    let staging = pins.dir.join(format!("maps-staging-{}", std::process::id()));
    if pin_exists(&staging)? {
        // Left by a process of the same id that died while pinning.
        fs::remove_dir_all(&staging).map_err(pin_dir_err(&staging))?;
    }
    fs::create_dir(&staging).map_err(pin_dir_err(&staging))?;
    let pinned = (|| {
        for name in map_name::ALL {
            let map = ebpf.map(name).ok_or(DataplaneError::Missing { what: "map", name })?;
            let path = staging.join(name);
            map.pin(&path).map_err(|source| DataplaneError::Pin { path, source })?;
        }
        // Replaces an empty `maps/`; refuses one with anything in it.
        fs::rename(&staging, pins.maps()).map_err(pin_dir_err(&pins.maps()))
    })();
    if pinned.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    pinned
}

/// The few BPF syscalls aya 0.14 does not offer on a descriptor or a path.
mod sys {
    use std::{
        ffi::CString,
        io,
        os::{
            fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd},
            unix::ffi::OsStrExt as _,
        },
        path::Path,
    };

    use aya::maps::MapFd;

    const BPF_MAP_LOOKUP_ELEM: libc::c_int = 1;
    const BPF_OBJ_GET: libc::c_int = 7;
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_int = 15;
    /// `enum bpf_link_type` in `include/uapi/linux/bpf.h`.
    const BPF_LINK_TYPE_XDP: u32 = 6;

    /// The part of `union bpf_attr` of `BPF_MAP_*_ELEM`.
    #[repr(C)]
    struct MapElemAttr {
        map_fd: u32,
        pad: u32,
        key: u64,
        value: u64,
        flags: u64,
    }

    /// The part of `union bpf_attr` of `BPF_OBJ_GET`.
    #[repr(C)]
    struct ObjAttr {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        pad: u32,
    }

    /// The part of `union bpf_attr` of `BPF_OBJ_GET_INFO_BY_FD`.
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }

    /// The head of `struct bpf_link_info` up to the `xdp` member of its
    /// union (which is 8-byte aligned). The kernel fills what fits.
    #[repr(C)]
    #[derive(Default)]
    struct XdpLinkInfo {
        link_type: u32,
        id: u32,
        prog_id: u32,
        pad: u32,
        ifindex: u32,
        pad2: u32,
    }

    /// # Safety
    /// `attr` must be the part of `union bpf_attr` that `cmd` reads, with
    /// every pointer in it valid for what `cmd` does with it.
    unsafe fn bpf<A>(cmd: libc::c_int, attr: &mut A) -> io::Result<libc::c_long> {
        // SAFETY: `attr` is valid for its size for the whole call; the
        // caller vouches for its contents.
        let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), size_of::<A>()) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }

    fn raw(fd: BorrowedFd<'_>) -> u32 {
        u32::try_from(fd.as_raw_fd()).expect("an open descriptor is not negative")
    }

    /// Reads the value at `key` of an array map into `value`, which must be
    /// exactly the map's value size.
    pub(super) fn lookup(map: &MapFd, key: u32, value: &mut [u8]) -> io::Result<()> {
        use std::os::fd::AsFd as _;
        let mut attr = MapElemAttr {
            map_fd: raw(map.as_fd()),
            pad: 0,
            key: std::ptr::from_ref(&key) as u64,
            value: value.as_mut_ptr() as u64,
            flags: 0,
        };
        // SAFETY: the key is a u32, the key size of an array, and the value
        // buffer holds the value size, as the caller checked.
        unsafe { bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) }.map(drop)
    }

    /// The interface index of the XDP link pinned at `path` (0 once its
    /// device is gone), or `None` when that pin is some other kind of link.
    pub(super) fn xdp_link_ifindex(path: &Path) -> io::Result<Option<u32>> {
        let path = CString::new(path.as_os_str().as_bytes())
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
        let mut attr =
            ObjAttr { pathname: path.as_ptr() as u64, bpf_fd: 0, file_flags: 0, path_fd: 0, pad: 0 };
        // SAFETY: `pathname` points to a NUL-terminated string alive for the call.
        let fd = unsafe { bpf(BPF_OBJ_GET, &mut attr) }?;
        // SAFETY: BPF_OBJ_GET returned a new descriptor that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(i32::try_from(fd).expect("a descriptor fits an int")) };
        let mut info = XdpLinkInfo::default();
        let mut attr = InfoAttr {
            bpf_fd: raw(std::os::fd::AsFd::as_fd(&fd)),
            info_len: u32::try_from(size_of::<XdpLinkInfo>()).expect("a small struct"),
            info: std::ptr::from_mut(&mut info) as u64,
        };
        // SAFETY: `info` is writable for `info_len` bytes for the call.
        unsafe { bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr) }?;
        Ok((info.link_type == BPF_LINK_TYPE_XDP).then_some(info.ifindex))
    }

    /// Whether `dir` is on a BPF file system.
    pub(super) fn is_bpffs(dir: &Path) -> io::Result<bool> {
        let path = CString::new(dir.as_os_str().as_bytes())
            .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
        // SAFETY: statfs is plain old data; zero is a valid value for it.
        let mut stats: libc::statfs = unsafe { std::mem::zeroed() };
        // SAFETY: `path` is NUL-terminated and `stats` writable, both for the call.
        if unsafe { libc::statfs(path.as_ptr(), &raw mut stats) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(stats.f_type == libc::BPF_FS_MAGIC)
    }
}

/// `BPF_MAP_LOOKUP_BATCH`, which aya 0.14 does not wrap.
mod batch {
    use std::{io, mem::MaybeUninit, os::fd::RawFd};

    /// `BPF_MAP_LOOKUP_BATCH` in `enum bpf_cmd` (linux/bpf.h).
    const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
    /// Entries read per system call.
    const CHUNK: usize = 4096;

    /// The `batch` member of `union bpf_attr` (linux/bpf.h).
    #[repr(C)]
    #[derive(Default)]
    struct BatchAttr {
        in_batch: u64,
        out_batch: u64,
        keys: u64,
        values: u64,
        count: u32,
        map_fd: u32,
        elem_flags: u64,
        flags: u64,
    }

    /// Reads every entry of the hash map `fd` (keys `K`, values `V`) and
    /// calls `f` on each. An error before the first entry means batches are
    /// not supported here; the caller walks the map instead.
    pub fn lookup_all<K: aya::Pod, V: aya::Pod>(fd: RawFd, f: &mut dyn FnMut(&K, &V)) -> io::Result<()> {
        let mut keys: Vec<MaybeUninit<K>> = Vec::with_capacity(CHUNK);
        let mut values: Vec<MaybeUninit<V>> = Vec::with_capacity(CHUNK);
        // The position token: a u32 bucket index for hash maps; room to spare.
        let mut token = [0u64; 4];
        let mut first = true;
        loop {
            let mut attr = BatchAttr {
                in_batch: if first { 0 } else { token.as_ptr() as u64 },
                out_batch: token.as_mut_ptr() as u64,
                keys: keys.as_mut_ptr() as u64,
                values: values.as_mut_ptr() as u64,
                count: CHUNK as u32,
                map_fd: fd.cast_unsigned(),
                ..BatchAttr::default()
            };
            // SAFETY: the attribute points at buffers of CHUNK keys and values
            // and at a token larger than any the kernel writes; the kernel
            // writes at most `count` entries and sets `count` to how many.
            let rc = unsafe {
                libc::syscall(libc::SYS_bpf, BPF_MAP_LOOKUP_BATCH, &raw mut attr, size_of::<BatchAttr>())
            };
            let err = (rc < 0).then(io::Error::last_os_error);
            let done = match &err {
                None => false,
                // The last batch: `count` entries were still written.
                Some(e) if e.raw_os_error() == Some(libc::ENOENT) => true,
                Some(e) => {
                    if first {
                        return Err(io::Error::new(e.kind(), e.to_string()));
                    }
                    // Mid-walk failures (the map changing under us) end the
                    // walk with what was read.
                    tracing::debug!("batched lookup stopped: {e}");
                    true
                }
            };
            let count = (attr.count as usize).min(CHUNK);
            for i in 0..count {
                // SAFETY: the kernel initialised the first `count` entries of
                // both buffers; K and V are plain data.
                let (key, value) = unsafe {
                    (keys.as_ptr().add(i).cast::<K>().read(), values.as_ptr().add(i).cast::<V>().read())
                };
                f(&key, &value);
            }
            if done {
                return Ok(());
            }
            first = false;
        }
    }
}
