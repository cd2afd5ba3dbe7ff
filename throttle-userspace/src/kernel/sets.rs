//! The set tries: every set's prefixes, under the key of its slot
//! ([`throttle_common::set_rules`]), written in batches of thousands of
//! prefixes per system call, on descriptors of their own so that loading a
//! million prefixes holds no lock that the API waits on.

use std::{
    fs,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::maps::{lpm_trie::Key, IterableMap as _, LpmTrie, Map, MapData};
use throttle_common::{map_name, set_rules};

use super::{
    error::{map_err, syscall_err, KernelError},
    sys,
};
use crate::policy::SetContent;

/// The value of every set entry: present.
const MEMBER: u8 = 1;

/// A set trie's key: the slot, then the address bytes.
type SetKey<const N: usize> = Key<[u8; N]>;

fn v4_key(slot: u32, net: ipnet::Ipv4Net) -> SetKey<5> {
    let a = net.network().octets();
    Key::new(8 + u32::from(net.prefix_len()), [slot_byte(slot), a[0], a[1], a[2], a[3]])
}

fn v6_key(slot: u32, net: &ipnet::Ipv6Net) -> SetKey<17> {
    let mut data = [0u8; 17];
    data[0] = slot_byte(slot);
    data[1..].copy_from_slice(&net.network().octets());
    Key::new(8 + u32::from(net.prefix_len()), data)
}

fn slot_byte(slot: u32) -> u8 {
    assert!(slot < set_rules::SLOTS, "slot {slot} out of range");
    u8::try_from(slot).expect("slots are under 256")
}

/// Writes the prefixes of sets into their slots. [`SetTries`] is the real
/// one; tests use an in-memory one.
pub trait SetLoader: Send {
    /// Adds `content` under `slot`.
    fn insert(&mut self, slot: u32, content: &SetContent) -> Result<(), KernelError>;
    /// Removes `content` from under `slot`.
    fn remove(&mut self, slot: u32, content: &SetContent) -> Result<(), KernelError>;
    /// Removes every prefix of a slot that `keep` refuses (what an earlier
    /// daemon left); how many.
    fn sweep(&mut self, keep: &dyn Fn(u32) -> bool) -> Result<usize, KernelError>;
    /// The kernel's account of the tries' memory (`memlock` of their
    /// descriptors), in bytes; 0 when unknown.
    fn memory_bytes(&self) -> u64;
}

/// The set tries, on descriptors of their own.
pub struct SetTries {
    v4: LpmTrie<MapData, [u8; 5], u8>,
    v6: LpmTrie<MapData, [u8; 17], u8>,
}

/// A handle of its own (a duplicate descriptor) on the trie `trie`.
fn duplicate<const N: usize>(
    trie: &LpmTrie<MapData, [u8; N], u8>,
    name: &'static str,
) -> Result<LpmTrie<MapData, [u8; N], u8>, KernelError> {
    let fd = trie.map().fd().as_fd().try_clone_to_owned().map_err(syscall_err(name, "dup"))?;
    let data = MapData::from_fd(fd).map_err(map_err(name))?;
    LpmTrie::try_from(Map::LpmTrie(data)).map_err(map_err(name))
}

impl SetTries {
    pub(super) fn new(
        v4: &LpmTrie<MapData, [u8; 5], u8>,
        v6: &LpmTrie<MapData, [u8; 17], u8>,
    ) -> Result<Self, KernelError> {
        Ok(Self { v4: duplicate(v4, map_name::SETS_V4)?, v6: duplicate(v6, map_name::SETS_V6)? })
    }
}

/// Writes `keys` into `trie` in batches, one by one where the kernel has
/// no batches.
fn update<const N: usize>(
    trie: &mut LpmTrie<MapData, [u8; N], u8>,
    keys: &[SetKey<N>],
    name: &'static str,
) -> Result<(), KernelError> {
    let fd = trie.map().fd().as_fd().as_raw_fd();
    let values = vec![MEMBER; keys.len().min(sys::BATCH)];
    match sys::update_batch(fd, keys, &values) {
        Ok(()) => Ok(()),
        Err(err) if err.raw_os_error() == Some(libc::EINVAL) || err.raw_os_error() == Some(524) => {
            tracing::debug!("batched update refused ({err}); one prefix at a time");
            keys.iter().try_for_each(|key| trie.insert(key, MEMBER, 0).map_err(map_err(name)))
        }
        Err(err) => Err(syscall_err(name, "BPF_MAP_UPDATE_BATCH")(err)),
    }
}

/// Deletes `keys` from `trie` in batches (one by one where the kernel has
/// no batches); keys already gone are not an error.
fn delete<const N: usize>(
    trie: &mut LpmTrie<MapData, [u8; N], u8>,
    keys: &[SetKey<N>],
    name: &'static str,
) -> Result<(), KernelError> {
    let fd = trie.map().fd().as_fd().as_raw_fd();
    if sys::delete_batch(fd, keys).is_ok() {
        return Ok(());
    }
    for key in keys {
        match trie.remove(key) {
            Ok(()) => {}
            Err(aya::maps::MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => {}
            Err(err) => return Err(map_err(name)(err)),
        }
    }
    Ok(())
}

/// The keys of `trie` under the slots `keep` refuses.
fn stale<const N: usize>(trie: &LpmTrie<MapData, [u8; N], u8>, keep: &dyn Fn(u32) -> bool) -> Vec<SetKey<N>> {
    trie.keys().filter_map(Result::ok).filter(|key| !keep(u32::from(key.data()[0]))).collect()
}

/// The kernel's account of a map's memory: `memlock` of its descriptor.
fn memlock<const N: usize>(trie: &LpmTrie<MapData, [u8; N], u8>) -> u64 {
    let fd = trie.map().fd().as_fd().as_raw_fd();
    fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))
        .ok()
        .and_then(|info| {
            info.lines().find_map(|line| line.strip_prefix("memlock:").and_then(|v| v.trim().parse().ok()))
        })
        .unwrap_or(0)
}

impl SetLoader for SetTries {
    fn insert(&mut self, slot: u32, content: &SetContent) -> Result<(), KernelError> {
        let v4: Vec<SetKey<5>> = content.v4.iter().map(|&net| v4_key(slot, net)).collect();
        update(&mut self.v4, &v4, map_name::SETS_V4)?;
        let v6: Vec<SetKey<17>> = content.v6.iter().map(|net| v6_key(slot, net)).collect();
        update(&mut self.v6, &v6, map_name::SETS_V6)
    }

    fn remove(&mut self, slot: u32, content: &SetContent) -> Result<(), KernelError> {
        let v4: Vec<SetKey<5>> = content.v4.iter().map(|&net| v4_key(slot, net)).collect();
        delete(&mut self.v4, &v4, map_name::SETS_V4)?;
        let v6: Vec<SetKey<17>> = content.v6.iter().map(|net| v6_key(slot, net)).collect();
        delete(&mut self.v6, &v6, map_name::SETS_V6)
    }

    fn sweep(&mut self, keep: &dyn Fn(u32) -> bool) -> Result<usize, KernelError> {
        let v4 = stale(&self.v4, keep);
        delete(&mut self.v4, &v4, map_name::SETS_V4)?;
        let v6 = stale(&self.v6, keep);
        delete(&mut self.v6, &v6, map_name::SETS_V6)?;
        Ok(v4.len() + v6.len())
    }

    fn memory_bytes(&self) -> u64 {
        memlock(&self.v4) + memlock(&self.v6)
    }
}
