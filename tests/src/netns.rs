//! Network namespaces behind a guard, and ways to run things inside them.

use std::{
    ffi::OsStr,
    fs::File,
    io,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::PathBuf,
    process::{Command, Output, Stdio},
    thread::{self, JoinHandle},
};

use crate::unique_id;

/// Where `ip netns add` binds its namespaces.
const NETNS_RUN_DIR: &str = "/run/netns";

/// A uniquely named network namespace (`thr-<pid>-<counter>`), removed with
/// `ip netns del` when the guard drops. Deleting the namespace destroys the
/// interfaces in it, so a veth pair goes with it.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates the namespace and brings its loopback up (the admin API of a
    /// daemon in it listens there; a new namespace's `lo` is down).
    #[must_use]
    pub fn new() -> Self {
        let name = format!("thr-{}", unique_id());
        run_checked(Command::new("ip").args(["netns", "add", &name]));
        let ns = Self { name };
        ns.ip(["link", "set", "lo", "up"]);
        ns
    }

    /// The namespace's name, as `ip netns` knows it.
    #[must_use]
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The bind mount that holds the namespace open.
    #[must_use]
    pub fn path(&self) -> PathBuf {
        PathBuf::from(NETNS_RUN_DIR).join(&self.name)
    }

    /// Opens the namespace, for `setns`.
    fn open(&self) -> File {
        File::open(self.path()).unwrap_or_else(|e| panic!("open {}: {e}", self.path().display()))
    }

    /// Runs `ip -n <ns> <args>` and panics with its stderr when it fails.
    pub fn ip<I, S>(&self, args: I) -> String
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        run_checked(Command::new("ip").arg("-n").arg(&self.name).args(args))
    }

    /// `ip netns exec <ns> <program>`: a command in this namespace, with a
    /// `/sys` that shows this namespace's interfaces. `ip netns exec` also
    /// remounts `/sys` in a private mount namespace, which hides the bpffs at
    /// `/sys/fs/bpf`: use [`Netns::command`] for anything that pins.
    #[must_use]
    pub fn exec_command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }

    /// Runs a shell command line with [`Netns::exec_command`], panicking with
    /// its stderr when it fails.
    pub fn sh(&self, script: &str) {
        run_checked(self.exec_command("sh").args(["-c", script]));
    }

    /// A command that runs in this namespace and in the caller's mount
    /// namespace: the child joins the namespace with `setns` between fork
    /// and exec, so it sees the host's `/sys/fs/bpf` (where `ip netns exec`
    /// would show a fresh sysfs instead).
    #[must_use]
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let ns = self.open();
        let mut cmd = Command::new(program);
        // SAFETY: the closure runs in the forked child before exec and makes
        // one raw syscall, which is async-signal-safe; `ns` is owned by the
        // closure, so the descriptor stays open until the command is dropped
        // (its close-on-exec flag only closes it at exec, after the setns).
        unsafe {
            cmd.pre_exec(move || enter(&ns));
        }
        cmd
    }

    /// An HTTP request made with curl from this namespace: `method` on
    /// `url` with `headers` and a JSON `body`, if any. Its status and body;
    /// panics naming curl's output when there is no status.
    #[must_use]
    pub fn curl(&self, method: &str, url: &str, headers: &[&str], body: Option<&str>) -> (u16, String) {
        let mut cmd = self.command("curl");
        cmd.args(["-sS", "--max-time", "10", "-X", method, "-w", "\n%{http_code}"]);
        for header in headers {
            cmd.args(["-H", header]);
        }
        if let Some(body) = body {
            cmd.args(["-H", "content-type: application/json", "--data-binary", body]);
        }
        let out = cmd
            .arg(url)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run curl (`cargo xtask setup` installs it): {e}"));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        let status = status.trim().parse().unwrap_or_else(|_| {
            panic!(
                "curl {url} gave no HTTP status ({}): stdout {text:?}, stderr {:?}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (status, body.to_owned())
    }

    /// Runs `f` on a new thread that has joined this namespace, and returns
    /// what it returns. Sockets made there belong to the namespace for their
    /// whole life, whichever thread uses them later.
    pub fn run<R, F>(&self, f: F) -> R
    where
        R: Send,
        F: FnOnce() -> R + Send,
    {
        let ns = self.open();
        thread::scope(|scope| {
            thread::Builder::new()
                .name(format!("in-{}", self.name))
                .spawn_scoped(scope, move || {
                    enter(&ns).unwrap_or_else(|e| panic!("setns: {e}"));
                    drop(ns);
                    f()
                })
                .expect("spawn a thread")
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Spawns a thread named `name` that joins this namespace and runs `f`.
    pub fn spawn<R, F>(&self, name: &str, f: F) -> JoinHandle<R>
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        let ns = self.open();
        thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                enter(&ns).unwrap_or_else(|e| panic!("setns: {e}"));
                drop(ns);
                f()
            })
            .expect("spawn a thread")
    }
}

impl Default for Netns {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Only this namespace, by name: never `ip -all netns delete`.
        match Command::new("ip").args(["netns", "del", &self.name]).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "warning: ip netns del {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            ),
            Err(e) => eprintln!("warning: ip netns del {}: {e}", self.name),
        }
    }
}

/// Moves the calling thread into the network namespace open at `ns`. The
/// network namespace is per thread, so this affects no other thread.
fn enter(ns: &File) -> io::Result<()> {
    // SAFETY: setns takes a descriptor we own, open for the whole call.
    let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Runs `cmd` and returns its stdout; panics with the command line, status
/// and stderr when it cannot start or fails.
pub fn run_checked(cmd: &mut Command) -> String {
    let out: Output = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}): {}",
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}
