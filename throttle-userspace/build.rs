//! Builds the XDP program (throttle-ebpf's `throttle-ebpf` binary) for the
//! BPF target and leaves the object in `OUT_DIR/throttle-ebpf`, where
//! `src/dataplane.rs` embeds it. The benchmarks' reference programs are not
//! built here: throttle-tests builds them for its `bench` feature.

fn main() {
    throttle_ebpf_build::build(&["throttle-ebpf"]);
}
