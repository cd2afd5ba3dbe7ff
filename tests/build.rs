//! With the `bench` feature, builds the benchmarks' XDP programs
//! (throttle-ebpf's `baseline` and `generator` binaries) for the BPF target
//! and leaves the objects in `OUT_DIR/baseline` and `OUT_DIR/generator`,
//! where `src/bin/throttle-bench/baseline.rs` embeds them. The tests need none of it: without the feature this does
//! nothing.

fn main() {
    #[cfg(feature = "bench")]
    throttle_ebpf_build::build(&["baseline", "generator"]);
    #[cfg(not(feature = "bench"))]
    println!("cargo:rerun-if-changed=build.rs");
}
