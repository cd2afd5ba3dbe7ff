//! The daemon's XDP program run in-process on crafted frames (see
//! [`crate::frames`]) through `BPF_PROG_TEST_RUN`: what the packet tests,
//! the pinning tests and the cost benchmark share.

use aya::programs::{TestRun as _, TestRunOptions, TestRunResult, Xdp};
use throttle::{
    control::{ClassIds, RuleIds},
    kernel::{
        coarse_resolution_ns, compile,
        plan::{Ids, Plan},
        Dataplane,
    },
    policy::{Limits, Policy, Rate},
};

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
}

/// Compiles `policy` (its rules' and classes' ids from `ids`), writes the
/// plan into the maps, and checks that they hold exactly the plan.
pub fn write(dataplane: &mut Dataplane, ids: &mut PolicyIds, policy: &Policy) -> Plan {
    let rule_ids = ids.rules.resolve(policy).unwrap_or_else(|e| panic!("the policy: {e}"));
    let class_ids = ids.classes.resolve(&policy.classes);
    let plan = compile(policy, Ids { rules: &rule_ids, classes: &class_ids }, 1.0, coarse_resolution_ns());
    dataplane.write(&plan).unwrap_or_else(|e| panic!("writing the plan: {e}"));
    assert_eq!(dataplane.read_plan().expect("reading the maps"), plan, "the maps hold the plan");
    plan
}
