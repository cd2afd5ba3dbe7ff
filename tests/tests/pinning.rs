//! Pinning, as root: the maps and XDP links under a bpffs directory outlive
//! the process that made them, the next one adopts them, a clean stop
//! removes them, and pins that cannot be adopted are refused.
//!
//! Each test works in its own network namespace, with veth pairs that exist
//! only there, and its own pin directory under `/sys/fs/bpf`, removed by a
//! guard whatever happens. Attaching by name looks the interface up in the
//! calling thread's namespace, so whatever attaches runs in
//! [`Netns::run`]. Packets are run through the program with
//! `BPF_PROG_TEST_RUN`; the namespaces have IPv6 off and no addresses, so no
//! packet of their own reaches the program and the counters move only with
//! the test's frames.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    net::IpAddr,
    os::unix::process::ExitStatusExt as _,
    path::PathBuf,
    process::{Child, Stdio},
    sync::mpsc,
    thread,
    time::Duration,
};

use aya::{
    maps::{Array, Map, MapData},
    programs::{TestRun as _, TestRunOptions},
};
use throttle::{
    kernel::{bucket_key, counters_label, Dataplane, KernelError, Options, Presence, XdpMode},
    policy::{Period, Policy, Rate},
};
use throttle_common::{map_name, reason, Config, LAYOUT_VERSION};
use throttle_tests::{
    frames::Frame,
    remove_dir, require_root, unique_id,
    xdp::{self, verdict, XDP_DROP, XDP_PASS},
    Netns,
};

/// The limit of these tests: 1 packet per second after a burst of 5, so
/// that a source stays over its limit for the length of a test.
const RATE: u64 = 1;
const BURST: u64 = 5;
const MAX_SOURCES: u32 = 4_096;
/// Set for [`sigkill_child`] to the pin directory it is to use.
const CHILD_ENV: &str = "THROTTLE_PINNING_CHILD_DIR";
/// What [`sigkill_child`] prints once it is attached.
const CHILD_READY: &str = "pinning-child: attached";

/// A pin directory unique to one test (`/sys/fs/bpf/throttle-test-<pid>-<n>`),
/// removed with everything in it when the guard drops. Removing a link's pin
/// detaches it, unless its namespace went first and took the device.
struct PinDirGuard {
    path: PathBuf,
}

impl PinDirGuard {
    fn new() -> Self {
        Self { path: PathBuf::from(format!("/sys/fs/bpf/throttle-test-{}", unique_id())) }
    }

    fn options(&self, max_sources: u32) -> Options {
        Options { max_sources, pin_dir: Some(self.path.clone()) }
    }

    fn map(&self, name: &str) -> PathBuf {
        self.path.join("maps").join(name)
    }

    fn link(&self, iface: &str, mode: &str) -> PathBuf {
        self.path.join("links").join(mode).join(iface)
    }

    /// Every name under the pin directory, relative to it, sorted.
    fn list(&self) -> Vec<String> {
        throttle_tests::tree(&self.path)
    }
}

/// The names that the pinned maps and these links (interface, mode)
/// make, with the directories `modes` (which stay once made).
fn pinned_names(links: &[(&str, &str)], modes: &[&str]) -> Vec<String> {
    let mut names = vec!["maps".to_owned()];
    names.extend(map_name::pinned().map(|name| format!("maps/{name}")));
    if !modes.is_empty() {
        names.push("links".to_owned());
    }
    names.extend(modes.iter().map(|mode| format!("links/{mode}")));
    names.extend(links.iter().map(|(iface, mode)| format!("links/{mode}/{iface}")));
    names.sort();
    names
}

impl Drop for PinDirGuard {
    fn drop(&mut self) {
        remove_dir(&self.path);
    }
}

/// A network namespace with `pairs` veth pairs in it, `a0`/`b0`, `a1`/`b1`...,
/// up, with no address and IPv6 off: nothing sends on them by itself.
struct Lab {
    ns: Netns,
}

impl Lab {
    fn new(pairs: usize) -> Self {
        let ns = Netns::new();
        ns.sh("echo 1 > /proc/sys/net/ipv6/conf/all/disable_ipv6 && \
             echo 1 > /proc/sys/net/ipv6/conf/default/disable_ipv6");
        for i in 0..pairs {
            let (a, b) = (format!("a{i}"), format!("b{i}"));
            ns.ip(["link", "add", &a, "type", "veth", "peer", "name", &b]);
            ns.ip(["link", "set", &a, "up"]);
            ns.ip(["link", "set", &b, "up"]);
        }
        Self { ns }
    }

    /// The XDP program on `iface`, as `ip link` tells it: its mode
    /// ("native" or "generic") and its id. `None` when there is none.
    fn xdp(&self, iface: &str) -> Option<(&'static str, u32)> {
        let out = self.ns.ip(["-d", "link", "show", "dev", iface]);
        let words: Vec<&str> = out.split_whitespace().collect();
        let mode = words.iter().find_map(|w| match *w {
            "xdp" | "xdpdrv" => Some("native"),
            "xdpgeneric" => Some("generic"),
            _ => None,
        })?;
        let at =
            words.iter().position(|w| *w == "prog/xdp").unwrap_or_else(|| panic!("no prog/xdp in {out}"));
        assert_eq!(words.get(at + 1), Some(&"id"), "prog/xdp without an id in {out}");
        let id = words[at + 2].parse().unwrap_or_else(|e| panic!("prog id in {out}: {e}"));
        Some((mode, id))
    }
}

fn policy() -> Policy {
    xdp::policy(RATE, BURST)
}

/// [`policy`] at one a minute: a source over it stays over it however long
/// a reload of the program takes.
fn slow_policy() -> Policy {
    let mut policy = policy();
    policy.limits.rate = Rate::new(1, Period::Minute).expect("a rate");
    policy
}

/// Writes the plan of `policy` into the maps.
fn write(dataplane: &mut Dataplane, policy: &Policy) {
    xdp::write(dataplane, &mut xdp::PolicyIds::default(), policy);
}

fn source() -> IpAddr {
    "10.7.0.1".parse().expect("an address")
}

fn frame() -> Vec<u8> {
    Frame::udp(source(), 53).build()
}

fn run(dataplane: &Dataplane, frame: &[u8]) -> u32 {
    verdict(dataplane.program(), frame)
}

/// The counters this test's frames move.
fn metered(dataplane: &Dataplane) -> [u64; 3] {
    let counters = dataplane.counters().expect("counters");
    [reason::NEW_SOURCE, reason::PASSED, reason::OVER_LIMIT].map(|slot| counters[slot.index()])
}

#[test]
fn a_killed_daemon_leaves_enforcement_running_and_the_next_adopts_it() {
    require_root!();
    let lab = Lab::new(1);
    let pins = PinDirGuard::new();
    let key = bucket_key(source(), 0, 32, 64);

    // The first daemon: fresh maps, a new link, a source over its limit.
    let (mode, counters, bucket, version) = lab.ns.run(|| {
        let mut dataplane = Dataplane::open(&pins.options(MAX_SOURCES)).expect("open with a pin dir");
        assert!(!dataplane.adopted(), "nothing was pinned yet");
        write(&mut dataplane, &policy());
        let attachment = dataplane.attach("a0", XdpMode::Auto).expect("attach").clone();
        assert!(!attachment.adopted, "no link was pinned yet: {attachment:?}");
        assert_eq!(lab.xdp("a0").map(|(mode, _)| mode), Some(attachment.mode));
        for i in 0..BURST {
            assert_eq!(run(&dataplane, &frame()), XDP_PASS, "packet {i} of the burst");
        }
        assert_eq!(run(&dataplane, &frame()), XDP_DROP, "the packet after the burst");
        let bucket = dataplane.bucket(&key).expect("bucket").expect("the source is tracked");
        let counters = metered(&dataplane);
        assert_eq!(counters, [1, BURST - 1, 1]);
        // Dropped without shutdown: what SIGKILL leaves.
        (attachment.mode, counters, bucket, dataplane.version())
    });

    let (running, old_program) = lab.xdp("a0").expect("the program stays attached after its process is gone");
    assert_eq!(running, mode);
    assert_eq!(pins.list(), pinned_names(&[("a0", mode)], &[mode]), "the pins are all there");

    // The next daemon adopts the maps, then the link.
    lab.ns.run(|| {
        let mut dataplane = Dataplane::open(&pins.options(MAX_SOURCES)).expect("open again");
        assert!(dataplane.adopted(), "the pinned maps are adopted");
        assert_eq!(dataplane.version(), version, "the configuration version carries on");
        assert_eq!(metered(&dataplane), counters, "the counters carry on");
        assert_eq!(dataplane.bucket(&key).expect("bucket"), Some(bucket), "the bucket carries on");
        assert_eq!(lab.xdp("a0"), Some((mode, old_program)), "the old program runs until attach");
        write(&mut dataplane, &policy());
        assert_eq!(dataplane.version(), version + 1);

        let attachment = dataplane.attach("a0", XdpMode::Auto).expect("attach to the pinned link").clone();
        assert!(attachment.adopted, "the pinned link is taken over: {attachment:?}");
        assert_eq!(attachment.mode, mode, "in the mode it was made with");
        let (running, new_program) = lab.xdp("a0").expect("still attached");
        assert_eq!(running, mode);
        assert_ne!(new_program, old_program, "the program on the link was replaced");
        assert_eq!(pins.list(), pinned_names(&[("a0", mode)], &[mode]), "the same pins");

        // The source's bucket kept its count: one more packet adds to it.
        let verdict = run(&dataplane, &frame());
        let after = dataplane.bucket(&key).expect("bucket").expect("still tracked");
        assert_eq!(
            after.passed + after.dropped,
            bucket.passed + bucket.dropped + 1,
            "one more packet on the carried bucket {bucket:?}, now {after:?} (verdict {verdict})"
        );
        let moved = metered(&dataplane);
        assert_eq!(moved[0], counters[0], "the source is not new to the adopted bucket map");
        assert_eq!(moved[1] + moved[2], counters[1] + counters[2] + 1);

        // Resetting one source.
        assert!(dataplane.remove_bucket(&key).expect("remove"), "the source was tracked");
        assert_eq!(dataplane.bucket(&key).expect("bucket"), None);
        assert!(!dataplane.remove_bucket(&key).expect("remove again"), "nothing left to remove");
        assert_eq!(run(&dataplane, &frame()), XDP_PASS, "a reset source starts with a full burst");

        dataplane.shutdown(false).expect("a clean stop");
    });
    assert_eq!(lab.xdp("a0"), None, "a clean stop detaches");
    assert!(!pins.path.exists(), "a clean stop removes the pins and the directory: {:?}", pins.list());
}

#[test]
fn keep_pins_leaves_everything_for_the_next_daemon_in_the_mode_it_had() {
    require_root!();
    let lab = Lab::new(1);
    let pins = PinDirGuard::new();
    lab.ns.run(|| {
        let mut dataplane = Dataplane::open(&pins.options(MAX_SOURCES)).expect("open");
        let attachment = dataplane.attach("a0", XdpMode::Generic).expect("attach").clone();
        assert_eq!(attachment.mode, "generic");
        dataplane.shutdown(true).expect("stop, keeping the pins");
    });
    assert_eq!(lab.xdp("a0").map(|(mode, _)| mode), Some("generic"), "still attached");
    assert_eq!(pins.list(), pinned_names(&[("a0", "generic")], &["generic"]));

    lab.ns.run(|| {
        // Another capacity is asked for: the pinned bucket map wins.
        let mut dataplane = Dataplane::open(&pins.options(2 * MAX_SOURCES)).expect("open again");
        assert!(dataplane.adopted());
        assert_eq!(dataplane.max_sources(), MAX_SOURCES, "the pinned bucket map keeps its capacity");
        // Auto would pick native on a veth: the pinned link says generic.
        let attachment = dataplane.attach("a0", XdpMode::Auto).expect("attach").clone();
        assert!(attachment.adopted);
        assert_eq!(attachment.mode, "generic", "the mode is recovered from the pin");
        assert_eq!(lab.xdp("a0").map(|(mode, _)| mode), Some("generic"));
        dataplane.shutdown(false).expect("a clean stop");
    });
    assert_eq!(lab.xdp("a0"), None);
    assert!(!pins.path.exists(), "left behind: {:?}", pins.list());
}

#[test]
fn release_others_detaches_the_interfaces_no_longer_named() {
    require_root!();
    let lab = Lab::new(2);
    let pins = PinDirGuard::new();
    lab.ns.run(|| {
        let mut dataplane = Dataplane::open(&pins.options(MAX_SOURCES)).expect("open");
        dataplane.attach("a0", XdpMode::Generic).expect("attach a0");
        dataplane.attach("a1", XdpMode::Generic).expect("attach a1");
        assert!(
            matches!(dataplane.attach("a1", XdpMode::Generic), Err(KernelError::AlreadyAttached { .. })),
            "attaching twice to one interface is refused"
        );
    });
    assert!(lab.xdp("a0").is_some() && lab.xdp("a1").is_some(), "both stay attached");

    lab.ns.run(|| {
        let mut dataplane = Dataplane::open(&pins.options(MAX_SOURCES)).expect("open again");
        assert!(dataplane.attach("a0", XdpMode::Auto).expect("attach a0").adopted);
        let released = dataplane.release_others(&["a0".to_owned()]).expect("release the others");
        assert_eq!(released, ["a1"]);
        assert_eq!(lab.xdp("a1"), None, "a1 is detached");
        assert!(lab.xdp("a0").is_some(), "a0 stays");
        assert_eq!(pins.list(), pinned_names(&[("a0", "generic")], &["generic"]), "a1's pin is gone");
        assert!(dataplane.release_others(&["a0".to_owned()]).expect("again").is_empty());
        // Dropped: a0 stays attached for the guard to clean up.
    });
    assert!(lab.xdp("a0").is_some());
    assert!(pins.link("a0", "generic").exists());
}

#[test]
fn pinned_maps_of_another_layout_are_refused_with_a_way_out() {
    require_root!();
    let pins = PinDirGuard::new();
    drop(Dataplane::open(&pins.options(MAX_SOURCES)).expect("open"));

    // Written the way any BPF tool would, through the pin.
    let set_layout = |layout| {
        let data = MapData::from_pin(pins.map(map_name::CONFIG)).expect("the pinned CONFIG");
        let mut config: Array<MapData, Config> =
            Array::try_from(Map::Array(data)).expect("an array of Config");
        let current = config.get(&0, 0).expect("CONFIG[0]");
        config.set(0, Config { layout, ..current }, 0).expect("write CONFIG[0]");
        current.layout
    };
    let other = LAYOUT_VERSION + 1;
    assert_eq!(set_layout(other), LAYOUT_VERSION, "fresh maps are pinned with their layout version");
    let err = Dataplane::open(&pins.options(MAX_SOURCES)).err().expect("another layout is refused");
    let message = err.to_string();
    assert!(
        matches!(err, KernelError::LayoutMismatch { found: Some(found), expected, .. }
            if found == other && expected == LAYOUT_VERSION),
        "{err:?}"
    );
    let dir = pins.path.display().to_string();
    for part in [
        dir.as_str(),
        &format!("layout version {other}"),
        &format!("layout version {LAYOUT_VERSION}"),
        "SIGTERM",
        &format!("rm -r {dir}"),
        "unmetered until this daemon attaches",
    ] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
    assert_eq!(pins.list(), pinned_names(&[], &[]), "a refusal touches nothing");

    // The right layout, but a map of another type under a name.
    set_layout(LAYOUT_VERSION);
    let swap = pins.path.join("maps").join("swap");
    fs::rename(pins.map(map_name::CLASS_OF), &swap).expect("rename");
    fs::rename(pins.map(map_name::RULES_V4), pins.map(map_name::CLASS_OF)).expect("rename");
    fs::rename(&swap, pins.map(map_name::RULES_V4)).expect("rename");
    let err = Dataplane::open(&pins.options(MAX_SOURCES)).err().expect("a map of another type is refused");
    assert!(
        matches!(err, KernelError::Incompatible { map, property: "type", .. } if map == map_name::RULES_V4),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(message.contains(&dir) && message.contains("rm -r"), "{message}");
}

#[test]
fn partial_pins_are_refused() {
    require_root!();
    let pins = PinDirGuard::new();
    drop(Dataplane::open(&pins.options(MAX_SOURCES)).expect("open"));
    fs::remove_file(pins.map(map_name::BUCKETS)).expect("remove one pin");

    let err = Dataplane::open(&pins.options(MAX_SOURCES)).err().expect("partial pins are refused");
    assert!(
        matches!(&err, KernelError::PartialPins { missing, present, .. }
            if missing == &[map_name::BUCKETS] && present.len() == map_name::ALL.len() - 1),
        "{err:?}"
    );
    let message = err.to_string();
    let dir = pins.path.display().to_string();
    assert!(message.contains("missing: BUCKETS"), "{message}");
    assert!(message.contains(&format!("rm -r {dir}")), "{message}");
    let mut left = pinned_names(&[], &[]);
    left.retain(|name| name != "maps/BUCKETS");
    assert_eq!(pins.list(), left, "a refusal touches nothing");
}

#[test]
fn a_pin_dir_outside_bpffs_or_with_a_dot_is_refused_and_left_as_it_was() {
    require_root!();
    let dir = std::env::temp_dir().join(format!("throttle-test-{}", unique_id())).join("pins");
    let options = Options { max_sources: MAX_SOURCES, pin_dir: Some(dir.clone()) };
    let err = Dataplane::open(&options).err().expect("a directory outside bpffs is refused");
    assert!(matches!(&err, KernelError::NotBpffs { dir: d } if *d == dir), "{err:?}");
    assert!(err.to_string().contains("bpffs"), "{err}");
    assert!(!dir.parent().expect("a parent").exists(), "the directories made for it are removed");

    // bpffs refuses dots in names.
    let pins = PinDirGuard::new();
    let dotted = pins.path.join("v1.2");
    let options = Options { max_sources: MAX_SOURCES, pin_dir: Some(dotted.clone()) };
    let err = Dataplane::open(&options).err().expect("a dotted name is refused");
    assert!(matches!(&err, KernelError::DottedName { dir } if *dir == dotted), "{err:?}");
    assert!(!pins.path.exists(), "the directories made for it are removed");
}

#[test]
fn a_link_left_on_a_deleted_interface_is_replaced_by_a_new_one() {
    require_root!();
    let lab = Lab::new(1);
    let pins = PinDirGuard::new();
    lab.ns.run(|| {
        let mut dataplane = Dataplane::open(&pins.options(MAX_SOURCES)).expect("open");
        dataplane.attach("a0", XdpMode::Generic).expect("attach");
    });
    // The interface goes and comes back: the pinned link outlives its device.
    lab.ns.ip(["link", "del", "a0"]);
    lab.ns.ip(["link", "add", "a0", "type", "veth", "peer", "name", "b0"]);
    lab.ns.ip(["link", "set", "a0", "up"]);
    assert!(pins.link("a0", "generic").exists(), "the pin stays");
    assert_eq!(lab.xdp("a0"), None, "nothing runs on the new interface");

    lab.ns.run(|| {
        let mut dataplane = Dataplane::open(&pins.options(MAX_SOURCES)).expect("open again");
        assert!(dataplane.adopted(), "the maps are adopted");
        let attachment = dataplane.attach("a0", XdpMode::Native).expect("attach").clone();
        assert!(!attachment.adopted, "a defunct link is not adopted: {attachment:?}");
        assert_eq!(attachment.mode, "native", "the new link gets the mode asked for");
        assert_eq!(lab.xdp("a0").map(|(mode, _)| mode), Some("native"));
        assert!(!pins.link("a0", "generic").exists(), "the defunct link's pin is gone");
        assert!(pins.link("a0", "native").exists(), "the new link is pinned");
        dataplane.shutdown(false).expect("a clean stop");
    });
    assert_eq!(lab.xdp("a0"), None);
    assert!(!pins.path.exists(), "left behind: {:?}", pins.list());
}

/// A child process, killed with SIGKILL and reaped when the guard drops.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_process_killed_with_sigkill_leaves_the_program_enforcing() {
    require_root!();
    let lab = Lab::new(1);
    let pins = PinDirGuard::new();
    // This test binary again, running only `sigkill_child`, in the lab's
    // namespace and this mount namespace (where the bpffs is).
    let exe = std::env::current_exe().expect("the test binary");
    let mut child = ChildGuard(
        lab.ns
            .command(&exe)
            .args(["--exact", "sigkill_child", "--ignored", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, &pins.path)
            .stdout(Stdio::piped())
            .spawn()
            .expect("start the child"),
    );
    let stdout = child.0.stdout.take().expect("the child's stdout");
    let (ready_tx, ready) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // libtest prints the test's name and no newline before the test runs.
            if line.ends_with(CHILD_READY) {
                let _ = ready_tx.send(());
            }
        }
    });
    ready.recv_timeout(Duration::from_secs(60)).expect("the child attached and said so");
    let (mode, _) = lab.xdp("a0").expect("attached by the child");

    child.0.kill().expect("SIGKILL the child");
    let status = child.0.wait().expect("reap the child");
    assert_eq!(status.signal(), Some(libc::SIGKILL), "{status}");
    assert_eq!(lab.xdp("a0").map(|(mode, _)| mode), Some(mode), "the program stays attached");
    assert_eq!(pinned_names(&[("a0", mode)], &[mode]), pins.list());

    lab.ns.run(|| {
        let mut dataplane = Dataplane::open(&pins.options(MAX_SOURCES)).expect("open after the kill");
        assert!(dataplane.adopted());
        assert_eq!(dataplane.version(), 1, "the child applied its policy once");
        let bucket =
            dataplane.bucket(&bucket_key(source(), 0, 32, 64)).expect("bucket").expect("still tracked");
        assert_eq!((bucket.passed, bucket.dropped), (BURST, 1), "the child's packets are on the bucket");
        assert_eq!(metered(&dataplane), [1, BURST - 1, 1], "and on the counters");
        let attachment = dataplane.attach("a0", XdpMode::Auto).expect("attach").clone();
        assert!(attachment.adopted);
        assert_eq!(attachment.mode, mode);
        dataplane.shutdown(false).expect("a clean stop");
    });
    assert_eq!(lab.xdp("a0"), None);
    assert!(!pins.path.exists(), "left behind: {:?}", pins.list());
}

/// The process that the test above kills: attaches with pins, meters a
/// source past its burst, says so, and waits to be killed. On its own (no
/// [`CHILD_ENV`]) it does nothing.
#[test]
#[ignore = "the child process of a_process_killed_with_sigkill_leaves_the_program_enforcing"]
fn sigkill_child() {
    let Some(dir) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let mut dataplane =
        Dataplane::open(&Options { max_sources: MAX_SOURCES, pin_dir: Some(dir.into()) }).expect("open");
    write(&mut dataplane, &policy());
    dataplane.attach("a0", XdpMode::Auto).expect("attach");
    for _ in 0..=BURST {
        run(&dataplane, &frame());
    }
    let mut stdout = std::io::stdout().lock();
    writeln!(stdout, "{CHILD_READY}").and_then(|()| stdout.flush()).expect("write to stdout");
    loop {
        thread::sleep(Duration::from_secs(3_600));
    }
}

/// `frame` through the program as if it arrived on interface index
/// `ifindex` (queue 0), which must run the program in native mode.
fn run_on(dataplane: &Dataplane, ifindex: u32, frame: &[u8]) -> u32 {
    // struct xdp_md: data, data_end, data_meta, ingress_ifindex,
    // rx_queue_index, egress_ifindex.
    let len = u32::try_from(frame.len()).expect("a short frame");
    let ctx: Vec<u8> = [0, len, 0, ifindex, 0, 0].iter().flat_map(|w: &u32| w.to_ne_bytes()).collect();
    let options = TestRunOptions { data_in: Some(frame), ctx_in: Some(&ctx), ..TestRunOptions::default() };
    dataplane.program().test_run(options).expect("BPF_PROG_TEST_RUN on an interface").return_value
}

/// `new_source` and `over_limit` of each interface, by name ("other" for
/// the rest).
fn by_interface(dataplane: &Dataplane) -> Vec<(String, u64, u64)> {
    let mut out: Vec<(String, u64, u64)> = dataplane
        .counters_by_interface()
        .expect("counters by interface")
        .into_iter()
        .map(|(attachment, c)| {
            let (name, _) = counters_label(attachment.as_ref());
            (name, c[reason::NEW_SOURCE.index()], c[reason::OVER_LIMIT.index()])
        })
        .collect();
    out.sort();
    out
}

#[test]
fn counters_are_told_apart_by_interface_and_carry_on_across_adoption() {
    require_root!();
    let lab = Lab::new(2);
    let pins = PinDirGuard::new();
    let ifindex = |iface: &str| -> u32 {
        // "5: a0@b0: <BROADCAST,...": the index leads.
        let text = lab.ns.ip(["-o", "link", "show", "dev", iface]);
        let index = text.split(':').next().unwrap_or_default().trim();
        index.parse().unwrap_or_else(|e| panic!("ifindex of {iface} in {text:?}: {e}"))
    };
    let (a0, a1) = (ifindex("a0"), ifindex("a1"));
    let frame = frame();
    lab.ns.run(|| {
        let mut dataplane = Dataplane::open(&pins.options(MAX_SOURCES)).expect("open");
        write(&mut dataplane, &slow_policy());
        // One interface: its slot comes from the configuration.
        dataplane.attach("a0", XdpMode::Native).expect("attach a0");
        assert_eq!(run_on(&dataplane, a0, &frame), XDP_PASS);
        assert_eq!(by_interface(&dataplane), [("a0".to_owned(), 1, 0)]);
        // Two: each packet's interface is looked up.
        dataplane.attach("a1", XdpMode::Native).expect("attach a1");
        for _ in 0..BURST {
            run_on(&dataplane, a1, &frame);
        }
        assert_eq!(run_on(&dataplane, a0, &frame), XDP_DROP);
        // A packet of an interface without a slot (loopback) counts as "other".
        assert_eq!(run(&dataplane, &frame), XDP_DROP);
        assert_eq!(
            by_interface(&dataplane),
            [("a0".to_owned(), 1, 1), ("a1".to_owned(), 0, 1), ("other".to_owned(), 0, 1)]
        );
        assert_eq!(dataplane.counters().expect("counters")[reason::OVER_LIMIT.index()], 3);
        // Left pinned, as after a SIGKILL.
    });
    lab.ns.run(|| {
        let mut dataplane = Dataplane::open(&pins.options(MAX_SOURCES)).expect("open again");
        write(&mut dataplane, &slow_policy());
        assert!(dataplane.attach("a0", XdpMode::Auto).expect("adopt a0").adopted);
        let released = dataplane.release_others(&["a0".to_owned()]).expect("release a1");
        assert_eq!(released, ["a1"]);
        // a0's counters carried on; one interface again.
        assert_eq!(run_on(&dataplane, a0, &frame), XDP_DROP);
        assert_eq!(by_interface(&dataplane), [("a0".to_owned(), 1, 2), ("other".to_owned(), 0, 1)]);
        dataplane.release(false).expect("release");
    });
    assert_eq!(lab.xdp("a0"), None);
}

#[test]
fn abandon_removes_what_this_process_made_and_keeps_what_it_adopted() {
    require_root!();
    let lab = Lab::new(2);
    let pins = PinDirGuard::new();
    // A fresh start that fails: nothing stays.
    lab.ns.run(|| {
        let mut dataplane = Dataplane::open(&pins.options(MAX_SOURCES)).expect("open");
        write(&mut dataplane, &policy());
        dataplane.attach("a0", XdpMode::Generic).expect("attach a0");
        dataplane.abandon().expect("abandon");
        dataplane.release(false).expect("nothing left to release");
    });
    assert_eq!(lab.xdp("a0"), None, "what it attached is detached");
    assert!(!pins.path.exists(), "what it pinned is gone: {:?}", pins.list());

    // An earlier daemon's pins, adopted by a start that fails.
    lab.ns.run(|| {
        let mut dataplane = Dataplane::open(&pins.options(MAX_SOURCES)).expect("open");
        dataplane.attach("a0", XdpMode::Generic).expect("attach a0");
        // Left pinned, as after a SIGKILL.
    });
    let before = pins.list();
    lab.ns.run(|| {
        let mut dataplane = Dataplane::open(&pins.options(MAX_SOURCES)).expect("open again");
        assert!(dataplane.adopted());
        write(&mut dataplane, &policy());
        assert!(dataplane.attach("a0", XdpMode::Auto).expect("take a0 over").adopted);
        assert!(!dataplane.attach("a1", XdpMode::Generic).expect("attach a1").adopted);
        dataplane.abandon().expect("abandon");
    });
    assert_eq!(pins.list(), before, "the adopted pins stay as they were, a1's goes");
    assert_eq!(lab.xdp("a0").map(|(mode, _)| mode), Some("generic"), "the link taken over stays");
    assert_eq!(lab.xdp("a1"), None, "the link it made is detached");
}

#[test]
fn an_interface_made_again_is_attached_again_with_its_bucket_and_counters() {
    require_root!();
    let lab = Lab::new(1);
    let pins = PinDirGuard::new();
    let ifindex = || -> u32 {
        let text = lab.ns.ip(["-o", "link", "show", "dev", "a0"]);
        let index = text.split(':').next().unwrap_or_default().trim();
        index.parse().unwrap_or_else(|e| panic!("ifindex of a0 in {text:?}: {e}"))
    };
    let frame = frame();
    let old = ifindex();
    lab.ns.run(|| {
        let mut dataplane = Dataplane::open(&pins.options(MAX_SOURCES)).expect("open");
        write(&mut dataplane, &slow_policy());
        dataplane.attach("a0", XdpMode::Generic).expect("attach a0");
        assert_eq!(dataplane.presence(), [("a0".to_owned(), Presence::Attached)]);
        for i in 0..BURST - 1 {
            assert_eq!(run_on(&dataplane, old, &frame), XDP_PASS, "packet {i} of the burst");
        }

        lab.ns.ip(["link", "del", "a0"]);
        assert_eq!(dataplane.presence(), [("a0".to_owned(), Presence::Missing)]);
        lab.ns.ip(["link", "add", "a0", "type", "veth", "peer", "name", "b0"]);
        lab.ns.ip(["link", "set", "a0", "up"]);
        assert_eq!(lab.xdp("a0"), None, "nothing runs on the new interface");
        assert_eq!(dataplane.presence(), [("a0".to_owned(), Presence::Returned)]);

        let attachment = dataplane.reattach("a0").expect("attach again").clone();
        assert_eq!(attachment.mode, "generic", "in the mode it had");
        assert_eq!(lab.xdp("a0").map(|(mode, _)| mode), Some("generic"));
        assert_eq!(dataplane.presence(), [("a0".to_owned(), Presence::Attached)]);
        assert_eq!(pins.list(), pinned_names(&[("a0", "generic")], &["generic"]), "the new link is pinned");
        let new = ifindex();
        assert_ne!(new, old, "a new interface");
        // The source's bucket carried on: one packet of its burst is left.
        assert_eq!(run_on(&dataplane, new, &frame), XDP_PASS);
        assert_eq!(run_on(&dataplane, new, &frame), XDP_DROP);
        assert_eq!(by_interface(&dataplane), [("a0".to_owned(), 1, 1)], "a0's counters carried on");
        dataplane.shutdown(false).expect("a clean stop");
    });
    assert_eq!(lab.xdp("a0"), None);
    assert!(!pins.path.exists(), "left behind: {:?}", pins.list());
}
