//! The daemon's XDP program run in-process on crafted frames (see
//! [`crate::frames`]) through `BPF_PROG_TEST_RUN`: what the packet tests,
//! the pinning tests and the cost benchmark share.

use std::collections::BTreeMap;

use aya::programs::{TestRun as _, TestRunOptions, TestRunResult, Xdp};
use throttle::{
    control::{ClassIds, RuleIds},
    kernel::{
        coarse_resolution_ns, compile,
        plan::{Ids, Plan},
        Dataplane, SetLoader as _, SetPlace,
    },
    policy::{Limits, Policy, Rate, SetContent, SetName},
};
use throttle_common::flags;

/// The verdict of a dropped frame.
pub const XDP_DROP: u32 = 1;
/// The verdict of a passed frame.
pub const XDP_PASS: u32 = 2;

/// Runs `frame` through `program` `repeat` times with `BPF_PROG_TEST_RUN`:
/// the last verdict and the kernel's mean time per run. Panics when the
/// kernel refuses the run.
#[must_use]
pub fn test_run(program: &Xdp, frame: &[u8], repeat: u32) -> TestRunResult {
    let options = TestRunOptions { data_in: Some(frame), repeat, ..TestRunOptions::default() };
    program.test_run(options).unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e}"))
}

/// The verdict of `program` on `frame`, run once.
#[must_use]
pub fn verdict(program: &Xdp, frame: &[u8]) -> u32 {
    test_run(program, frame, 1).return_value
}

/// A policy of one limit for every source, `rate` per second after a burst
/// of `burst`, with no first-seen budget, no scope and no rules.
#[must_use]
pub fn policy(rate: u64, burst: u64) -> Policy {
    Policy {
        limits: Limits { rate: Rate::per_second(rate), burst, new_source_rate: 0, ..Limits::default() },
        ..Policy::default()
    }
}

/// The ids of rules and classes, kept from one policy to the next as the
/// daemon keeps them.
#[derive(Debug, Default)]
pub struct PolicyIds {
    pub rules: RuleIds,
    pub classes: ClassIds,
    /// Where each set is loaded.
    pub sets: BTreeMap<SetName, SetPlace>,
}

/// Loads `content` into the set tries under `slot`, for the set `name` of
/// the next [`write`]; the content the slot held before is the caller's to
/// remove.
pub fn load_set(dataplane: &Dataplane, ids: &mut PolicyIds, name: &str, slot: u32, content: &SetContent) {
    let mut tries = dataplane.set_tries().expect("the set tries");
    tries.insert(slot, content).unwrap_or_else(|e| panic!("loading set {name}: {e}"));
    let families = if content.v4.is_empty() { 0 } else { flags::SETS_V4 }
        | if content.v6.is_empty() { 0 } else { flags::SETS_V6 };
    ids.sets.insert(name.parse().expect("a set name"), SetPlace { slot, families });
}

/// Compiles `policy` (its rules' and classes' ids from `ids`), writes the
/// plan into the maps, and checks that they hold exactly the plan.
pub fn write(dataplane: &mut Dataplane, ids: &mut PolicyIds, policy: &Policy) -> Plan {
    let rule_ids = ids.rules.resolve(policy).unwrap_or_else(|e| panic!("the policy: {e}"));
    let class_ids = ids.classes.resolve(&policy.classes);
    let plan = compile(
        policy,
        Ids { rules: &rule_ids, classes: &class_ids, sets: &ids.sets },
        1.0,
        coarse_resolution_ns(),
    );
    dataplane.write(&plan).unwrap_or_else(|e| panic!("writing the plan: {e}"));
    assert_eq!(dataplane.read_plan().expect("reading the maps"), plan, "the maps hold the plan");
    plan
}

/// The part of `union bpf_attr` of `BPF_PROG_TEST_RUN` (linux/bpf.h).
#[repr(C)]
#[derive(Default)]
pub struct TestRunAttr {
    pub prog_fd: u32,
    pub retval: u32,
    pub data_size_in: u32,
    pub data_size_out: u32,
    pub data_in: u64,
    pub data_out: u64,
    pub repeat: u32,
    pub duration: u32,
    pub ctx_size_in: u32,
    pub ctx_size_out: u32,
    pub ctx_in: u64,
    pub ctx_out: u64,
    pub flags: u32,
    pub cpu: u32,
    pub batch_size: u32,
    /// Padding, zero.
    pub pad: u32,
}

impl TestRunAttr {
    /// `BPF_PROG_TEST_RUN` with this attribute, which the kernel fills in
    /// (`retval`, `duration`).
    ///
    /// # Safety
    ///
    /// Every pointer of the attribute (`data_in`, `ctx_in`, and the output
    /// buffers if any) points at memory alive and large enough for the call.
    pub unsafe fn run(&mut self) -> std::io::Result<()> {
        const BPF_PROG_TEST_RUN: libc::c_long = 10;
        // SAFETY: the caller's contract.
        let rc =
            unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, &raw mut *self, size_of::<Self>()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

/// The verdict of the program behind `fd` on `frame`, run once: for
/// threads other than the one that holds the [`Dataplane`].
#[must_use]
pub fn run_fd(fd: &std::os::fd::OwnedFd, frame: &[u8]) -> u32 {
    use std::os::fd::AsRawFd as _;
    let mut attr = TestRunAttr {
        prog_fd: u32::try_from(fd.as_raw_fd()).expect("an open descriptor"),
        data_size_in: u32::try_from(frame.len()).expect("a frame"),
        data_in: frame.as_ptr() as u64,
        repeat: 1,
        ..TestRunAttr::default()
    };
    // SAFETY: the attribute points at `frame`, alive for the call, and asks
    // for no output buffer.
    unsafe { attr.run() }.unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN: {e}"));
    attr.retval
}
