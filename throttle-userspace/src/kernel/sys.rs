//! The few system calls aya 0.14 does not offer: reads of a map or a link
//! by descriptor or path, batched lookups, the bpffs check, and the clock
//! and interface facts the kernel layer needs.

use std::{
    ffi::CString,
    io,
    mem::MaybeUninit,
    os::{
        fd::{AsRawFd as _, BorrowedFd, FromRawFd as _, OwnedFd, RawFd},
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
pub fn lookup(map: &MapFd, key: u32, value: &mut [u8]) -> io::Result<()> {
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
pub fn xdp_link_ifindex(path: &Path) -> io::Result<Option<u32>> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|err| io::Error::new(io::ErrorKind::InvalidInput, err))?;
    let mut attr = ObjAttr { pathname: path.as_ptr() as u64, bpf_fd: 0, file_flags: 0, path_fd: 0, pad: 0 };
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
pub fn is_bpffs(dir: &Path) -> io::Result<bool> {
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

/// The capabilities the daemon needs that this process lacks in its
/// effective set (`CapEff` in `/proc/self/status`): `CAP_BPF` to make the
/// maps and load the program (which `CAP_SYS_ADMIN` stands for on kernels
/// before 5.8) and `CAP_NET_ADMIN` to attach it. Not `CAP_PERFMON`: the
/// program passes the verifier's Spectre v1 hardening that its absence
/// turns on (docs/design.md, "Privileges"). Empty when the set cannot be
/// read: the kernel says then.
#[must_use]
pub fn missing_capabilities() -> Vec<&'static str> {
    const CAP_NET_ADMIN: u32 = 12;
    const CAP_SYS_ADMIN: u32 = 21;
    const CAP_BPF: u32 = 39;
    let effective = std::fs::read_to_string("/proc/self/status").ok().and_then(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("CapEff:"))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
    });
    let Some(effective) = effective else {
        return Vec::new();
    };
    let has = |cap: u32| effective & (1 << cap) != 0;
    let mut missing = Vec::new();
    if !has(CAP_BPF) && !has(CAP_SYS_ADMIN) {
        missing.push("CAP_BPF");
    }
    if !has(CAP_NET_ADMIN) {
        missing.push("CAP_NET_ADMIN");
    }
    missing
}

/// The index of interface `name` in the calling thread's network namespace.
#[must_use]
pub fn if_index(name: &str) -> Option<u32> {
    let name = CString::new(name).ok()?;
    // SAFETY: `name` is a NUL-terminated string that outlives the call.
    let index = unsafe { libc::if_nametoindex(name.as_ptr()) };
    (index != 0).then_some(index)
}

/// `CLOCK_MONOTONIC` in ns: the clock of `bpf_ktime_get_ns`.
#[must_use]
pub fn monotonic_ns() -> u64 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `now` is a valid timespec for the call to fill.
    if unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut now) } != 0 {
        return 0;
    }
    u64::try_from(now.tv_sec).unwrap_or(0).saturating_mul(1_000_000_000)
        + u64::try_from(now.tv_nsec).unwrap_or(0)
}

/// The resolution of `CLOCK_MONOTONIC_COARSE` (the clock of
/// `bpf_ktime_get_coarse_ns`) in ns: one scheduler tick. 0 when it cannot be
/// read, which keeps every limit on the fine clock.
#[must_use]
pub fn coarse_resolution_ns() -> u64 {
    let mut res = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `res` is a valid timespec for the call to fill.
    if unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &raw mut res) } != 0 {
        return 0;
    }
    u64::try_from(res.tv_sec).unwrap_or(0).saturating_mul(1_000_000_000)
        + u64::try_from(res.tv_nsec).unwrap_or(0)
}

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

/// `BPF_MAP_UPDATE_BATCH` and `BPF_MAP_DELETE_BATCH` in `enum bpf_cmd`.
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_MAP_DELETE_BATCH: libc::c_long = 27;
/// Entries written per system call.
pub const BATCH: usize = 16_384;

/// Runs the write batch `cmd` over `keys` (and `values`, as many or more
/// than a batch) of the map `fd`, a batch per system call.
fn write_batches<K: aya::Pod, V: aya::Pod>(
    cmd: libc::c_long,
    fd: RawFd,
    keys: &[K],
    values: Option<&[V]>,
) -> io::Result<()> {
    for chunk in keys.chunks(BATCH) {
        let mut done = 0usize;
        while done < chunk.len() {
            let rest = &chunk[done..];
            let mut attr = BatchAttr {
                keys: rest.as_ptr() as u64,
                values: values.map_or(0, |v| v.as_ptr() as u64),
                count: u32::try_from(rest.len()).expect("a batch fits a u32"),
                map_fd: fd.cast_unsigned(),
                ..BatchAttr::default()
            };
            // SAFETY: `keys` holds `count` keys and `values`, when given, at
            // least as many values (the caller's contract); the kernel only
            // reads them and writes `count`.
            let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, &raw mut attr, size_of::<BatchAttr>()) };
            if rc < 0 {
                let err = io::Error::last_os_error();
                // A key already gone is no failure of a delete: skip it.
                if cmd == BPF_MAP_DELETE_BATCH && err.raw_os_error() == Some(libc::ENOENT) {
                    done += attr.count as usize + 1;
                    continue;
                }
                return Err(err);
            }
            done += attr.count as usize;
            if attr.count == 0 {
                return Err(io::Error::other("the kernel wrote no entry of a batch"));
            }
        }
    }
    Ok(())
}

/// Inserts or replaces `keys` with `values` (at least a batch's worth, or
/// as many as the keys) in the map `fd`, in batches.
pub fn update_batch<K: aya::Pod, V: aya::Pod>(fd: RawFd, keys: &[K], values: &[V]) -> io::Result<()> {
    assert!(values.len() >= keys.len().min(BATCH), "a value for every key of a batch");
    write_batches(BPF_MAP_UPDATE_BATCH, fd, keys, Some(values))
}

/// Deletes `keys` from the map `fd`, in batches; keys not there are
/// skipped.
pub fn delete_batch<K: aya::Pod>(fd: RawFd, keys: &[K]) -> io::Result<()> {
    write_batches::<K, u8>(BPF_MAP_DELETE_BATCH, fd, keys, None)
}

/// `MEMBARRIER_CMD_GLOBAL` (linux/membarrier.h): returns after an RCU grace
/// period.
const MEMBARRIER_CMD_GLOBAL: libc::c_long = 1;

/// Waits until every run of the XDP program that began before the call has
/// ended (they run under RCU: a grace period), so that what no packet can
/// reach any more can be freed. Where the kernel refuses the call, waits
/// long enough instead.
pub fn grace_period() {
    // SAFETY: membarrier takes no pointer.
    let rc = unsafe { libc::syscall(libc::SYS_membarrier, MEMBARRIER_CMD_GLOBAL, 0, 0) };
    if rc != 0 {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Eight bytes from the kernel's random pool (`getrandom`).
pub fn random_u64() -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    // SAFETY: `bytes` is writable for its length.
    let got = unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), bytes.len(), 0) };
    if got != 8 {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from_ne_bytes(bytes))
}
