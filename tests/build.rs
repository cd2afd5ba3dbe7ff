//! With the `bench` feature, builds the benchmarks' reference XDP programs
//! (throttle-ebpf's `baseline` binary) for the BPF target and leaves the
//! object in `OUT_DIR/baseline`, where `src/bin/throttle-bench/baseline.rs`
//! embeds it. The tests need none of it: without the feature this does
//! nothing.

fn main() {
    #[cfg(feature = "bench")]
    throttle_ebpf_build::build(&["baseline"]);
    #[cfg(not(feature = "bench"))]
    println!("cargo:rerun-if-changed=build.rs");
}
