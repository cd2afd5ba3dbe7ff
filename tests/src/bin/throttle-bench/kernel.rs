//! What the benchmarks read from the kernel beside the packet path: maps of a
//! loaded program by name, a map's locked memory, CPU time, interface
//! counters, the machine.

use std::{
    fs,
    os::fd::{AsFd as _, AsRawFd as _},
};

use aya::{maps::MapData, programs::Xdp};
use serde::Serialize;

/// The map named `name` among those `program` uses (a fresh handle on it).
/// Panics when the program has none of that name.
pub fn map_of(program: &Xdp, name: &str) -> MapData {
    let info = program.info().unwrap_or_else(|e| panic!("program info: {e}"));
    let ids = info
        .map_ids()
        .unwrap_or_else(|e| panic!("the program's map ids: {e}"))
        .expect("this kernel lists a program's maps");
    for id in ids {
        let data = MapData::from_id(id).unwrap_or_else(|e| panic!("map {id}: {e}"));
        let info = data.info().unwrap_or_else(|e| panic!("map {id} info: {e}"));
        if info.name_as_str() == Some(name) {
            return data;
        }
    }
    panic!("the program uses no map named {name}");
}

/// The kernel memory charged to a map: the `memlock` line of its fdinfo,
/// which since Linux 6.4 is the map's own account of what it allocated
/// (`map_mem_usage`), elements, buckets and per-CPU lists included.
pub fn map_memlock(map: &MapData) -> u64 {
    let fd = map.fd().as_fd().as_raw_fd();
    let path = format!("/proc/self/fdinfo/{fd}");
    let text = fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    text.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no memlock line in {path}:\n{text}"))
}

/// CPU time in kernel mode (system, irq and softirq) summed over every CPU,
/// in clock ticks (`USER_HZ`), from `/proc/stat`.
pub fn kernel_cpu_ticks() -> u64 {
    let stat = fs::read_to_string("/proc/stat").expect("read /proc/stat");
    let line = stat.lines().find(|l| l.starts_with("cpu ")).expect("a cpu line in /proc/stat");
    // cpu user nice system idle iowait irq softirq steal ...
    let f: Vec<u64> = line.split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    f[2] + f[5] + f[6]
}

/// Clock ticks per second of `/proc/stat`.
pub fn ticks_per_sec() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    assert!(hz > 0, "sysconf(_SC_CLK_TCK)");
    #[expect(clippy::cast_precision_loss, reason = "a tick rate")]
    let hz = hz as f64;
    hz
}

/// The machine a run was taken on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cpus: usize,
    pub kernel: String,
    pub memory_gib: f64,
}

impl Machine {
    pub fn here() -> Self {
        let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim()))
            .unwrap_or("unknown")
            .to_owned();
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned();
        let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let kib: u64 = meminfo
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0);
        #[expect(clippy::cast_precision_loss, reason = "memory size for display")]
        let memory_gib = (kib as f64 / (1 << 20) as f64 * 10.0).round() / 10.0;
        Self { cpu, cpus, kernel, memory_gib }
    }

    pub fn describe(&self) -> String {
        format!("{}, {} CPUs, {:.0} GiB, Linux {}", self.cpu, self.cpus, self.memory_gib, self.kernel)
    }
}

/// The packet counters of an interface, from `/proc/net/dev` of its namespace.
#[derive(Debug, Clone, Copy, Default)]
pub struct IfStats {
    pub rx_packets: u64,
    pub tx_packets: u64,
    pub tx_dropped: u64,
}

/// The counters of `ifname` in `ns`.
pub fn if_stats(ns: &throttle_tests::Netns, ifname: &str) -> IfStats {
    let ifname = ifname.to_owned();
    ns.run(move || {
        // /proc/thread-self/net follows the calling thread's namespace.
        let dev = fs::read_to_string("/proc/thread-self/net/dev").expect("read /proc/net/dev");
        let prefix = format!("{ifname}:");
        let line = dev
            .lines()
            .find_map(|l| l.trim_start().strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("{ifname} is not in /proc/net/dev"));
        let f: Vec<u64> = line.split_whitespace().filter_map(|v| v.parse().ok()).collect();
        // rx: bytes packets errs drop fifo frame compressed multicast;
        // tx: bytes packets errs drop fifo colls carrier compressed.
        IfStats { rx_packets: f[1], tx_packets: f[9], tx_dropped: f[11] }
    })
}
