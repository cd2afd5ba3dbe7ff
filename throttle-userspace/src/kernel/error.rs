//! What can go wrong between the daemon and the kernel: one error type for
//! the whole kernel layer, each variant naming what it was doing.

use std::{
    fmt, io,
    path::{Path, PathBuf},
};

use aya::{
    maps::MapError,
    pin::PinError,
    programs::{links::LinkError, ProgramError},
    sys::SyscallError,
    EbpfError,
};
use throttle_common::LAYOUT_VERSION;

/// What can go wrong between the daemon and the kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
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
    #[error("the program is already attached to {iface}")]
    AlreadyAttached { iface: String },
    #[error("the program was never attached to {iface}")]
    NotAttached { iface: String },
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
    #[error(transparent)]
    Chain(#[from] super::chain::ChainError),
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

pub(super) fn map_err(map: &'static str) -> impl Fn(MapError) -> KernelError {
    move |source| KernelError::Map { map, source }
}

/// A failed system call on behalf of `map`, as a [`map_err`].
pub(super) fn syscall_err(map: &'static str, call: &'static str) -> impl Fn(io::Error) -> KernelError {
    move |io_error| map_err(map)(MapError::SyscallError(SyscallError { call, io_error }))
}

pub(super) fn pin_dir_err(dir: &Path) -> impl Fn(io::Error) -> KernelError + '_ {
    move |source| KernelError::PinDir { dir: dir.to_path_buf(), source }
}
