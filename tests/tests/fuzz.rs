//! Differential fuzzing of the packet path, as root: a million generated
//! frames through the real program, each verdict and every batch's counters
//! against the reference model (`throttle_tests::fuzz`). The bench's `fuzz`
//! part runs ten million.
//!
//! `THROTTLE_FUZZ_FRAMES` (default 1 000 000) sets how many; the seed is
//! printed, and `THROTTLE_FUZZ_SEED` runs one again.

use throttle_tests::{fuzz, mono_ns, report, require_root};

#[test]
fn the_program_agrees_with_the_reference_model_on_generated_frames() {
    require_root!();
    let frames: usize =
        std::env::var("THROTTLE_FUZZ_FRAMES").ok().and_then(|n| n.parse().ok()).unwrap_or(1_000_000);
    let seed: u64 =
        std::env::var("THROTTLE_FUZZ_SEED").ok().and_then(|n| n.parse().ok()).unwrap_or_else(mono_ns) | 1;
    report(&format!("fuzzing {frames} frames, THROTTLE_FUZZ_SEED={seed}"));
    let outcome = fuzz::run(frames, seed);
    let by_reason: Vec<String> = outcome.by_reason.iter().map(|(name, n)| format!("{name} {n}")).collect();
    report(&format!(
        "fuzzed {} frames in {:.1} s (seed {seed}): {}; {} on a token's edge",
        outcome.frames,
        outcome.secs,
        by_reason.join(", "),
        outcome.edges
    ));
    assert!(
        outcome.mismatches.is_empty(),
        "verdicts that differ from the model (seed {seed}): {:#?}",
        outcome.mismatches
    );
    assert!(outcome.counters.is_none(), "seed {seed}: {}", outcome.counters.unwrap_or_default());
    assert_eq!(outcome.frames, frames, "every frame was run");
}
