//! Pins: the maps and the XDP links under a bpffs directory, so that they
//! outlive the daemon, and the checks that decide whether pinned maps can be
//! adopted.
//!
//! ```text
//! DIR/maps/CONFIG, RULES_V4, RULES_V6, CLASS_OF, CLASSES, BUCKETS, BUCKET_LOCKS, NEW_SOURCES,
//!          COUNTERS, RULE_FILTER, IFACE_SLOT, ... (every map of `map_name::ALL`)
//! DIR/links/native/<iface>, DIR/links/generic/<iface>
//! ```
//!
//! The maps of a fresh start are pinned into a staging directory and renamed
//! to `maps/` in one step, so `maps/` never holds part of a set because a
//! daemon died while pinning. The maps are only adopted when their layout
//! version (the `layout` field of the `CONFIG` entry), types, key and value
//! sizes and capacities are the ones this build expects; the one exception
//! is the capacity of `BUCKETS`, which follows `max_sources` and may differ:
//! keeping every source's state wins over the new size.

use std::{
    fs, io,
    os::unix::ffi::OsStrExt as _,
    path::{Path, PathBuf},
};

use aya::{
    maps::{lpm_trie::Key, Array, MapData, MapError, MapInfo, MapType},
    programs::links::{LinkError, PinnedLink},
    sys::SyscallError,
    Ebpf,
};
use throttle_common::{
    class_of, event, map_name, reason, rule_filter, set_rules, table, table::Slot, CaptureConfig,
    ClassConfig, Config, Rule, SetRule, CAPTURE_RING_BYTES, IFACE_SLOTS, LAYOUT_VERSION, MAX_CLASSES,
    MAX_IFINDEX, MAX_RULES,
};

use super::{
    error::{map_err, pin_dir_err, KernelError},
    sys,
};

/// Under the pin directory: the pinned maps, by name.
pub(super) const MAPS_DIR: &str = "maps";
/// Under the pin directory: the pinned links, one per interface.
pub(super) const LINKS_DIR: &str = "links";
/// The XDP modes as attachments and link pins name them.
pub(super) const NATIVE: &str = "native";
pub(super) const GENERIC: &str = "generic";

/// A pin directory, and the directories this process made to have it.
#[derive(Debug, Clone)]
pub(super) struct PinDir {
    pub(super) dir: PathBuf,
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
pub(super) struct LinkPin {
    pub(super) iface: String,
    pub(super) mode: &'static str,
    pub(super) path: PathBuf,
}

pub(super) fn link_pin_name(iface: &str) -> String {
    iface.replace('.', ":")
}

pub(super) fn iface_of_pin(name: &str) -> String {
    name.replace(':', ".")
}

impl PinDir {
    /// Makes `dir` (and its missing parents) and checks that it is on a
    /// bpffs, where pins can live.
    pub(super) fn prepare(dir: &Path) -> Result<Self, KernelError> {
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
                    return Err(KernelError::DottedName { dir: path });
                }
                Err(source) => {
                    let _ = Self { dir: dir.to_path_buf(), created }.remove_dirs();
                    // Under a directory that is not a bpffs (as /sys/fs/bpf
                    // in the fresh sysfs of `ip netns exec`), say that.
                    if path.parent().is_some_and(|parent| matches!(sys::is_bpffs(parent), Ok(false))) {
                        return Err(KernelError::NotBpffs { dir: dir.to_path_buf() });
                    }
                    return Err(KernelError::PinDir { dir: path, source });
                }
            }
        }
        let pins = Self { dir: dir.to_path_buf(), created };
        if !sys::is_bpffs(dir).map_err(pin_dir_err(dir))? {
            // Leave nothing behind for a directory that cannot be used.
            let _ = pins.remove_dirs();
            return Err(KernelError::NotBpffs { dir: dir.to_path_buf() });
        }
        Ok(pins)
    }

    pub(super) fn maps(&self) -> PathBuf {
        self.dir.join(MAPS_DIR)
    }

    pub(super) fn links_dir(&self) -> PathBuf {
        self.dir.join(LINKS_DIR)
    }

    pub(super) fn mode_dir(&self, mode: &str) -> PathBuf {
        self.links_dir().join(mode)
    }

    /// The links pinned here, in interface order.
    pub(super) fn links(&self) -> Result<Vec<LinkPin>, KernelError> {
        let mut links = Vec::new();
        for mode in [NATIVE, GENERIC] {
            let dir = self.mode_dir(mode);
            let entries = match fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
                Err(source) => return Err(KernelError::PinDir { dir, source }),
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

    pub(super) fn has_links(&self) -> Result<bool, KernelError> {
        Ok(!self.links()?.is_empty())
    }

    /// Removes the (empty) directories: `links/` and its mode directories,
    /// `maps/`, the pin directory
    /// itself, and the parents this process made. The pin directory is
    /// throttle's own, whoever made it: a restarted daemon cannot know
    /// whether its predecessor did, and an empty one holds nothing.
    pub(super) fn remove_dirs(&self) -> Result<(), KernelError> {
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
                        result = Err(KernelError::PinDir { dir, source });
                    }
                }
            }
        }
        result
    }
}

pub(super) fn pin_exists(path: &Path) -> Result<bool, KernelError> {
    match fs::symlink_metadata(path) {
        Ok(_) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(KernelError::PinDir { dir: path.to_path_buf(), source }),
    }
}

pub(super) fn create_dir_if_missing(dir: &Path) -> Result<(), KernelError> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(KernelError::PinDir { dir: dir.to_path_buf(), source }),
    }
}

pub(super) fn remove_pin(path: &Path) -> Result<(), KernelError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(KernelError::Unpin { path: path.to_path_buf(), source }),
    }
}

/// Detaches the link pinned at `path` and removes the pin. The link is
/// opened before its pin goes, so that the last reference is this
/// descriptor: closing it detaches at once, where dropping the last
/// reference through the pin would detach later, from a kernel work queue.
pub(super) fn unpin_link(path: &Path) -> Result<(), KernelError> {
    let link = match PinnedLink::from_pin(path) {
        Ok(link) => link,
        Err(LinkError::SyscallError(SyscallError { io_error, .. }))
            if io_error.kind() == io::ErrorKind::NotFound =>
        {
            return Ok(());
        }
        Err(source) => return Err(KernelError::PinnedLink { path: path.to_path_buf(), source }),
    };
    let link = link.unpin().map_err(|source| KernelError::Unpin { path: path.to_path_buf(), source })?;
    drop(link);
    Ok(())
}

/// What a map of this build looks like to the kernel.
struct Expected {
    name: &'static str,
    map_type: MapType,
    key_size: usize,
    value_size: usize,
    /// `None` for the bucket table and its locks, whose capacity is chosen
    /// at load.
    max_entries: Option<u32>,
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
        name: map_name::CLASS_OF,
        map_type: MapType::Array,
        key_size: size_of::<u32>(),
        value_size: size_of::<u32>(),
        max_entries: Some(class_of::ENTRIES),
    },
    Expected {
        name: map_name::CLASSES,
        map_type: MapType::Array,
        key_size: size_of::<u32>(),
        value_size: size_of::<ClassConfig>(),
        max_entries: Some(MAX_CLASSES),
    },
    Expected {
        name: map_name::BUCKETS,
        map_type: MapType::Array,
        key_size: size_of::<u32>(),
        value_size: size_of::<Slot>(),
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
    Expected {
        name: map_name::SETS_V4,
        map_type: MapType::LpmTrie,
        key_size: size_of::<Key<[u8; 5]>>(),
        value_size: size_of::<u8>(),
        max_entries: Some(set_rules::TRIE_ENTRIES),
    },
    Expected {
        name: map_name::SETS_V6,
        map_type: MapType::LpmTrie,
        key_size: size_of::<Key<[u8; 17]>>(),
        value_size: size_of::<u8>(),
        max_entries: Some(set_rules::TRIE_ENTRIES),
    },
    Expected {
        name: map_name::EVENTS,
        map_type: MapType::RingBuf,
        key_size: 0,
        value_size: 0,
        max_entries: Some(event::RING_BYTES),
    },
    Expected {
        name: map_name::EVENT_STATS,
        map_type: MapType::PerCpuArray,
        key_size: size_of::<u32>(),
        value_size: size_of::<u64>(),
        max_entries: Some(event::STATS),
    },
    Expected {
        name: map_name::EVENT_STATE,
        map_type: MapType::Array,
        key_size: size_of::<u32>(),
        value_size: size_of::<u64>(),
        max_entries: Some(event::STATE),
    },
    Expected {
        name: map_name::RULE_HITS,
        map_type: MapType::Array,
        key_size: size_of::<u32>(),
        value_size: size_of::<u64>(),
        max_entries: Some(event::HIT_SLOTS),
    },
    Expected {
        name: map_name::CAPTURE,
        map_type: MapType::Array,
        key_size: size_of::<u32>(),
        value_size: size_of::<CaptureConfig>(),
        max_entries: Some(1),
    },
    Expected {
        name: map_name::CAPTURED,
        map_type: MapType::RingBuf,
        key_size: 0,
        value_size: 0,
        max_entries: Some(CAPTURE_RING_BYTES),
    },
    Expected {
        name: map_name::RULE_COUNTS,
        map_type: MapType::PerCpuArray,
        key_size: size_of::<u32>(),
        value_size: size_of::<u64>(),
        max_entries: Some(event::HIT_SLOTS),
    },
    Expected {
        name: map_name::BUCKET_LOCKS,
        map_type: MapType::Array,
        key_size: size_of::<u32>(),
        value_size: size_of::<u64>(),
        max_entries: None,
    },
    Expected {
        name: map_name::SET_RULES,
        map_type: MapType::Array,
        key_size: size_of::<u32>(),
        value_size: size_of::<SetRule>(),
        max_entries: Some(set_rules::ENTRIES),
    },
];

/// The maps of [`map_name::ADDED`], checked when they are pinned.
const ADDED_EXPECTED: [Expected; map_name::ADDED.len()] = [Expected {
    name: map_name::CHAIN,
    map_type: MapType::ProgramArray,
    key_size: size_of::<u32>(),
    value_size: size_of::<u32>(),
    max_entries: Some(1),
}];

/// Checks that the maps pinned in `maps` (under `dir`) can be adopted: the
/// layout version first, since under another one nothing else need match,
/// then every map's type, key and value sizes and capacity.
pub(super) fn check_pinned(dir: &Path, maps: &Path) -> Result<(), KernelError> {
    let path = maps.join(map_name::CONFIG);
    let config =
        MapData::from_pin(&path).map_err(|source| KernelError::PinnedMap { path: path.clone(), source })?;
    let info = config.info().map_err(|source| KernelError::PinnedMap { path: path.clone(), source })?;
    let layout = read_layout(&config, &info).map_err(|source| KernelError::PinnedMap { path, source })?;
    if layout != Some(LAYOUT_VERSION) {
        return Err(KernelError::LayoutMismatch {
            dir: dir.to_path_buf(),
            found: layout,
            expected: LAYOUT_VERSION,
        });
    }
    for expected in &EXPECTED {
        check_map(dir, &maps.join(expected.name), expected)?;
    }
    for expected in &ADDED_EXPECTED {
        let path = maps.join(expected.name);
        if pin_exists(&path)? {
            check_map(dir, &path, expected)?;
        }
    }
    // The locks follow the table's capacity: a bit for each of its groups.
    let capacity = |name: &'static str| {
        let path = maps.join(name);
        MapInfo::from_pin(&path)
            .map(|info| info.max_entries())
            .map_err(|source| KernelError::PinnedMap { path, source })
    };
    let needed = table::lock_words(table::groups(capacity(map_name::BUCKETS)?));
    let locks = capacity(map_name::BUCKET_LOCKS)?;
    if locks < needed {
        return Err(KernelError::Incompatible {
            dir: dir.to_path_buf(),
            map: map_name::BUCKET_LOCKS,
            property: "capacity",
            found: locks.to_string(),
            expected: needed.to_string(),
        });
    }
    Ok(())
}

/// Checks one pinned map against what this build expects of it.
fn check_map(dir: &Path, path: &Path, expected: &Expected) -> Result<(), KernelError> {
    let info = MapInfo::from_pin(path)
        .map_err(|source| KernelError::PinnedMap { path: path.to_path_buf(), source })?;
    let mismatch = |property, found: String, wanted: String| KernelError::Incompatible {
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
        return Err(mismatch("value size", info.value_size().to_string(), expected.value_size.to_string()));
    }
    if let Some(max_entries) = expected.max_entries {
        if info.max_entries() != max_entries {
            return Err(mismatch("capacity", info.max_entries().to_string(), max_entries.to_string()));
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
pub(super) fn pin_new_maps(ebpf: &mut Ebpf, pins: &PinDir) -> Result<(), KernelError> {
    {
        let map = ebpf
            .map_mut(map_name::CONFIG)
            .ok_or(KernelError::Missing { what: "map", name: map_name::CONFIG })?;
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
        for name in map_name::pinned() {
            let map = ebpf.map(name).ok_or(KernelError::Missing { what: "map", name })?;
            let path = staging.join(name);
            map.pin(&path).map_err(|source| KernelError::Pin { path, source })?;
        }
        // Replaces an empty `maps/`; refuses one with anything in it.
        fs::rename(&staging, pins.maps()).map_err(pin_dir_err(&pins.maps()))
    })();
    if pinned.is_err() {
        let _ = fs::remove_dir_all(&staging);
    }
    pinned
}

/// Pins the maps of [`map_name::ADDED`] that adopted pins lack (left by a
/// build without them), beside the others.
pub(super) fn pin_added_maps(ebpf: &mut Ebpf, pins: &PinDir) -> Result<(), KernelError> {
    for name in map_name::ADDED {
        let path = pins.maps().join(name);
        if !pin_exists(&path)? {
            let map = ebpf.map(name).ok_or(KernelError::Missing { what: "map", name })?;
            map.pin(&path).map_err(|source| KernelError::Pin { path, source })?;
        }
    }
    Ok(())
}
