//! `cargo xtask run`: the daemon, as root, by default on a sandbox veth pair.

use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, ExitStatus},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use signal_hook::{
    consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM},
    iterator::Signals,
};

use crate::{
    build,
    cmd::{self, Privilege},
    out::{errln, outln},
};

/// How long the daemon gets to detach and unpin after SIGTERM, when xtask
/// itself stops it, before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How often a stopping daemon is asked whether it has exited.
const STOP_POLL: Duration = Duration::from_millis(20);

#[derive(clap::Args)]
pub struct Options {
    /// Build and run with the release profile.
    #[arg(long)]
    pub release: bool,
    /// Arguments for `throttle daemon`. Without `--iface` the daemon gets the
    /// root-namespace end of a sandbox veth pair.
    #[arg(last = true)]
    pub args: Vec<String>,
}

pub fn run(options: Options) -> Result<()> {
    let Options { release, args } = options;
    build::build(&build::Options { release })?;
    let privilege = Privilege::require("running the daemon (it loads an XDP program)")?;
    let binary = build::daemon_binary(release)?;

    // From here on a termination signal must not kill us before the sandbox
    // is gone: it is caught, and forwarded to the daemon once that runs.
    // SIGCHLD tells us when the daemon has exited.
    let mut signals =
        Signals::new([SIGINT, SIGTERM, SIGHUP, SIGCHLD]).context("installing the signal handlers")?;

    let sandbox =
        if has_flag(&args, "--iface") { None } else { Some(Sandbox::create(privilege, std::process::id())?) };
    let mut daemon = privilege.command(&binary);
    daemon.arg("daemon");
    if let Some(sandbox) = &sandbox {
        daemon.args(["--iface", &sandbox.host_if]);
        // The sandbox's own pins and state: a daemon on a real interface
        // keeps its own.
        if !has_flag(&args, "--pin-dir") {
            daemon.args(["--pin-dir", &format!("/sys/fs/bpf/{}", sandbox.netns)]);
        }
        if !has_flag(&args, "--state-dir") {
            daemon.arg("--state-dir").arg(build::target_dir()?.join("sandbox-state"));
        }
    }
    daemon.args(&args);

    outln!("the daemon logs what it attached to; stop it with Ctrl-C");
    if let Some(sandbox) = &sandbox {
        sandbox.describe();
    }
    let admin = flag_value(&args, "--admin").unwrap_or_else(|| "127.0.0.1:9840".to_owned());
    let client = binary.display();
    outln!("admin API:      http://{admin}  (curl http://{admin}/v1/status)");
    outln!("watch it:       {client} status; {client} top; {client} limits set --rate 100");

    if signals.pending().any(|signal| signal != SIGCHLD) {
        outln!("interrupted before the daemon started");
        return Ok(());
    }
    if privilege == Privilege::Sudo {
        // sudo cannot ask for a password from the daemon's background process
        // group: ask now, in the foreground.
        cmd::run(Command::new("sudo").arg("-v"))?;
    }
    let shown = cmd::display(&daemon);
    errln!("$ {shown}");
    // A process group of its own: a Ctrl-C at the terminal reaches only us,
    // and the daemon gets it forwarded exactly once.
    let child = daemon.process_group(0).spawn().with_context(|| format!("running `{shown}`"))?;
    // Dropped before the sandbox, however this function ends (an error, a
    // panic): the daemon is stopped and waited for, then the sandbox goes.
    let mut child = Supervised(child);
    let (status, signalled) = wait_forwarding_signals(&mut child.0, &mut signals)?;
    drop(child);
    drop(sandbox);
    if status.success() || signalled {
        outln!("daemon exited: {status}");
        Ok(())
    } else {
        bail!("`{shown}` failed: {status}")
    }
}

/// Waits for the daemon, forwarding the termination signals we get to it.
/// Returns its exit status and whether it was sent a signal.
fn wait_forwarding_signals(child: &mut Child, signals: &mut Signals) -> Result<(ExitStatus, bool)> {
    let pid = libc::pid_t::try_from(child.id()).context("the daemon's pid is out of range")?;
    let mut signalled = false;
    // The daemon may have exited before this loop first asks.
    if let Some(status) = child.try_wait().context("waiting for the daemon")? {
        return Ok((status, signalled));
    }
    for signal in signals.forever() {
        if signal == SIGCHLD {
            if let Some(status) = child.try_wait().context("waiting for the daemon")? {
                return Ok((status, signalled));
            }
            continue;
        }
        outln!("forwarding signal {signal} to the daemon");
        signalled = true;
        // SAFETY: kill has no memory-safety preconditions. The pid is our own
        // child's, not yet reaped, so it cannot have been reused.
        if unsafe { libc::kill(pid, signal) } != 0 {
            let e = std::io::Error::last_os_error();
            errln!("warning: forwarding signal {signal} to the daemon: {e}");
        }
    }
    bail!("the signal iterator ended before the daemon exited")
}

/// The daemon's process; dropped while it still runs, it is sent SIGTERM, so
/// it detaches and removes its pins, and waited for (SIGKILL after
/// [`STOP_GRACE`]).
struct Supervised(Child);

impl Drop for Supervised {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(Some(_))) {
            return;
        }
        stop(&mut self.0, STOP_GRACE);
    }
}

/// SIGTERM to `child`, then up to `grace` for it to exit, then SIGKILL; it is
/// reaped either way.
fn stop(child: &mut Child, grace: Duration) {
    let Ok(pid) = libc::pid_t::try_from(child.id()) else {
        let _ = child.kill();
        let _ = child.wait();
        return;
    };
    errln!("stopping the daemon (pid {pid})");
    // SAFETY: kill has no memory-safety preconditions. The pid is our own
    // child's, not yet reaped, so it cannot have been reused.
    unsafe { libc::kill(pid, SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_)) | Err(_)) {
            return;
        }
        thread::sleep(STOP_POLL);
    }
    errln!("warning: the daemon did not exit within {grace:?} of SIGTERM; killing it");
    let _ = child.kill();
    let _ = child.wait();
}

/// The value of `--flag VALUE` or `--flag=VALUE` among `args`.
fn flag_value(args: &[String], flag: &str) -> Option<String> {
    let prefix = format!("{flag}=");
    args.iter().enumerate().find_map(|(i, arg)| {
        if arg == flag {
            args.get(i + 1).cloned()
        } else {
            arg.strip_prefix(&prefix).map(str::to_owned)
        }
    })
}

fn has_flag(args: &[String], flag: &str) -> bool {
    args.iter().any(|arg| arg == flag || arg.strip_prefix(flag).is_some_and(|rest| rest.starts_with('=')))
}

/// A veth pair with one end in a private network namespace, removed on drop.
struct Sandbox {
    privilege: Privilege,
    netns: String,
    /// The end in the root namespace, for the daemon.
    host_if: String,
    /// The end in `netns`, where traffic comes from.
    peer_if: String,
}

impl Sandbox {
    const HOST_V4: &'static str = "10.203.0.1/24";
    const PEER_V4: &'static str = "10.203.0.2/24";
    const HOST_V6: &'static str = "fd00:203::1/64";
    const PEER_V6: &'static str = "fd00:203::2/64";

    /// The sandbox's names for a process id. Interface names have at most 15
    /// bytes; a pid at most 7 digits (`pid_max` is at most 2^22).
    fn named(privilege: Privilege, pid: u32) -> Self {
        Self {
            privilege,
            netns: format!("throttle-sandbox-{pid}"),
            host_if: format!("tsbx{pid}"),
            peer_if: format!("tsbx{pid}-ns"),
        }
    }

    fn create(privilege: Privilege, pid: u32) -> Result<Self> {
        let sandbox = Self::named(privilege, pid);
        // What a killed run with the same pid left behind.
        sandbox.remove();
        // Dropped, and so removed, from here on if a step fails.
        for args in sandbox.setup_commands() {
            cmd::run(privilege.command("ip").args(&args))
                .context("creating the sandbox network namespace and veth pair")?;
        }
        Ok(sandbox)
    }

    fn setup_commands(&self) -> Vec<Vec<&str>> {
        let Self { netns, host_if, peer_if, .. } = self;
        let (netns, host, peer) = (netns.as_str(), host_if.as_str(), peer_if.as_str());
        vec![
            vec!["netns", "add", netns],
            vec!["link", "add", host, "type", "veth", "peer", "name", peer, "netns", netns],
            vec!["addr", "add", Self::HOST_V4, "dev", host],
            vec!["addr", "add", Self::HOST_V6, "dev", host, "nodad"],
            vec!["link", "set", host, "up"],
            vec!["-n", netns, "addr", "add", Self::PEER_V4, "dev", peer],
            vec!["-n", netns, "addr", "add", Self::PEER_V6, "dev", peer, "nodad"],
            vec!["-n", netns, "link", "set", peer, "up"],
            vec!["-n", netns, "link", "set", "lo", "up"],
        ]
    }

    /// Prints the sandbox and how to send traffic at the daemon from it.
    fn describe(&self) {
        let Self { netns, host_if, peer_if, privilege } = self;
        let host_v4 = address(Self::HOST_V4);
        let sudo = privilege.prefix();
        outln!(
            "sandbox: {host_if} ({}, {}) <-> {peer_if} ({}, {}) in network namespace {netns}",
            Self::HOST_V4,
            Self::HOST_V6,
            Self::PEER_V4,
            Self::PEER_V6,
        );
        outln!(
            "send UDP at it: {sudo}ip netns exec {netns} bash -c \
             'while :; do echo x >/dev/udp/{host_v4}/9; done'"
        );
        if let Ok(mac) = fs::read_to_string(format!("/sys/class/net/{host_if}/address")) {
            outln!(
                "flood it:       {sudo}ip netns exec {netns} trafgen --dev {peer_if} --cpus 1 \
                 '{{ eth(da={}), ipv4(daddr={host_v4}), udp(dp=9), fill(0, 18) }}'",
                mac.trim()
            );
        }
    }

    /// Removes the veth pair (deleting one end deletes both) and the
    /// namespace. Best effort: warns about what fails.
    fn remove(&self) {
        let mut steps = Vec::new();
        if Path::new("/sys/class/net").join(&self.host_if).exists() {
            steps.push(vec!["link", "del", self.host_if.as_str()]);
        }
        if Path::new("/run/netns").join(&self.netns).exists() {
            steps.push(vec!["netns", "del", self.netns.as_str()]);
        }
        for args in steps {
            if let Err(e) = cmd::run(self.privilege.command("ip").args(&args)) {
                errln!("warning: removing the sandbox: {e:#}");
            }
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.remove();
    }
}

/// The address of a CIDR.
fn address(cidr: &str) -> &str {
    cidr.split_once('/').map_or(cidr, |(address, _)| address)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|&arg| arg.to_owned()).collect()
    }

    #[test]
    fn flags_in_both_spellings() {
        let args = strings(&["--rate", "100", "--admin", "0.0.0.0:1", "--iface=eth0"]);
        assert!(has_flag(&args, "--iface"));
        assert!(has_flag(&args, "--admin"));
        assert!(!has_flag(&args, "--ifac"));
        assert!(!has_flag(&strings(&["--iface-mode=x"]), "--iface"));
    }

    #[test]
    fn a_dropped_daemon_is_stopped_and_reaped() {
        // A child that exits on SIGTERM, as the daemon does after detaching.
        let child = Command::new("sleep").arg("600").spawn().expect("spawn sleep");
        let pid = libc::pid_t::try_from(child.id()).unwrap();
        let started = Instant::now();
        drop(Supervised(child));
        assert!(started.elapsed() < STOP_GRACE, "stopped by SIGTERM, not by SIGKILL after the grace");
        // Reaped: no such process (a zombie would still answer kill 0).
        // SAFETY: kill with signal 0 only checks that the pid exists.
        let alive = unsafe { libc::kill(pid, 0) } == 0;
        assert!(!alive, "pid {pid} was reaped");
    }

    #[test]
    fn a_daemon_that_ignores_sigterm_is_killed() {
        let mut child = Command::new("sh")
            .args(["-c", "trap '' TERM; echo ready; exec sleep 600"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("spawn sh");
        // Wait until the trap is set.
        let mut ready = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().unwrap()), &mut ready)
            .unwrap();
        stop(&mut child, Duration::from_millis(200));
        assert!(child.try_wait().unwrap().is_some(), "killed and reaped");
    }

    #[test]
    fn sandbox_interface_names_fit_ifnamsiz() {
        // PID_MAX_LIMIT on 64-bit Linux is 2^22.
        let sandbox = Sandbox::named(Privilege::Root, 1 << 22);
        assert!(sandbox.host_if.len() <= 15, "{}", sandbox.host_if);
        assert!(sandbox.peer_if.len() <= 15, "{}", sandbox.peer_if);
        // Never created, so nothing to remove.
        std::mem::forget(sandbox);
    }
}
