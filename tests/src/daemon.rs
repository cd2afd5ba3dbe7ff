//! The real `throttle daemon`, run in a namespace behind a guard.

use std::{
    ffi::CString,
    fs::{self, File, OpenOptions},
    io::{self, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::{
        fd::AsRawFd,
        unix::{fs::OpenOptionsExt as _, process::CommandExt},
    },
    path::{Path, PathBuf},
    process::{Child, ChildStderr, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread::{self, JoinHandle},
    time::Duration,
};

use crate::{mono_ns, poll_until, remove_dir, unique_id, Checks, Netns, VethPair};

/// Absolute path of the `throttle` binary under test.
pub const THROTTLE_BIN_ENV: &str = "THROTTLE_BIN";
/// How long a daemon may take to load and attach.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// The line the daemon logs once every interface is attached.
pub const READY_LINE: &str = "throttle is ready";
/// The line the daemon logs once a SIGHUP's configuration is in force.
pub const RELOADED_LINE: &str = "configuration reloaded";
/// The daemon's log filter (`tracing_subscriber::EnvFilter` syntax).
const LOG_FILTER_ENV: &str = "THROTTLE_LOG";
/// Where the host's bpffs lives; pin directories go under it.
const BPFFS: &str = "/sys/fs/bpf";
/// `BPF_FS_MAGIC` from `linux/magic.h`.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Serialises the bpffs check-and-mount among concurrent test processes.
const BPFFS_LOCK: &str = "/run/throttle-tests-bpffs.lock";
/// Default admin port; every daemon has its own namespace, hence loopback.
const ADMIN_PORT: u16 = 9840;
/// The client's variable naming the admin API.
const ADMIN_ENV: &str = "THROTTLE_ADMIN";
/// The client's variable holding a bearer token.
const TOKEN_ENV: &str = "THROTTLE_TOKEN";
/// How long a daemon gets to exit after SIGTERM before SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// How often the relay of a piped stderr looks whether it must close.
const RELAY_POLL_MS: libc::c_int = 20;

/// The `throttle` binary: `$THROTTLE_BIN`, else `target/debug/throttle` of
/// this workspace (or of `$CARGO_TARGET_DIR`). Panics when it is missing.
#[must_use]
pub fn throttle_bin() -> PathBuf {
    let path = std::env::var_os(THROTTLE_BIN_ENV).map_or_else(
        || {
            let target = std::env::var_os("CARGO_TARGET_DIR")
                .map_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"), PathBuf::from);
            target.join("debug/throttle")
        },
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "the throttle binary is not at {} : build it (`cargo build -p throttle-userspace`) \
         or point {THROTTLE_BIN_ENV} at it; `cargo xtask test` does both",
        path.display()
    );
    path
}

/// Makes sure a bpffs is mounted at `/sys/fs/bpf` in this mount namespace,
/// mounting one if not (many minimal machines have none). Safe to call from
/// concurrent tests and processes.
pub fn ensure_bpffs() {
    let lock = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(BPFFS_LOCK)
        .unwrap_or_else(|e| panic!("open {BPFFS_LOCK}: {e}"));
    // SAFETY: flock on a descriptor we own; released when `lock` closes.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock {BPFFS_LOCK}: {}", io::Error::last_os_error());
    if fs_magic(BPFFS) == Some(BPF_FS_MAGIC) {
        return;
    }
    let (src, dir, fstype) = (c"bpf", CString::new(BPFFS).expect("no NUL"), c"bpf");
    // SAFETY: NUL-terminated strings alive for the call; no data argument.
    let rc = unsafe { libc::mount(src.as_ptr(), dir.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    assert_eq!(rc, 0, "mount -t bpf bpf {BPFFS}: {}", io::Error::last_os_error());
}

/// The file system type magic of `path`.
fn fs_magic(path: &str) -> Option<i64> {
    let path = CString::new(path).ok()?;
    // SAFETY: statfs is plain data; all zeroes is a valid value.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a writable statfs.
    let rc = unsafe { libc::statfs(path.as_ptr(), &raw mut st) };
    #[allow(
        clippy::useless_conversion,
        reason = "f_type is i64 on x86_64 and aarch64 glibc, narrower elsewhere"
    )]
    (rc == 0).then(|| i64::from(st.f_type))
}

/// Builds a [`Daemon`].
#[derive(Debug)]
pub struct DaemonBuilder<'a> {
    ns: &'a Netns,
    ifaces: Vec<String>,
    config: Option<String>,
    args: Vec<String>,
    admin_ip: IpAddr,
    admin_port: u16,
    token: Option<String>,
    pin_dir: Option<PathBuf>,
    state_dir: Option<PathBuf>,
    user: Option<User>,
    stderr_pipe: bool,
    nofile: Option<u64>,
}

/// An unprivileged user a daemon runs as, and the capabilities it keeps.
#[derive(Debug, Clone)]
struct User {
    uid: u32,
    gid: u32,
    caps: Vec<String>,
}

impl DaemonBuilder<'_> {
    /// Keeps its state under `dir` instead of a directory of its own (a
    /// file system a test prepared).
    #[must_use]
    pub fn state_dir(mut self, dir: &Path) -> Self {
        self.state_dir = Some(dir.to_path_buf());
        self
    }

    /// Pins under `dir` instead of a directory of its own: the pin
    /// directory of an earlier daemon, to adopt what it left.
    #[must_use]
    pub fn pin_dir(mut self, dir: &Path) -> Self {
        self.pin_dir = Some(dir.to_path_buf());
        self
    }

    /// The daemon's stderr a pipe, relayed to the log until
    /// [`Daemon::close_stderr`] closes its read end (its stdout still goes
    /// to the log file).
    #[must_use]
    pub fn stderr_pipe(mut self) -> Self {
        self.stderr_pipe = true;
        self
    }

    /// Starts the daemon with `RLIMIT_NOFILE` at `limit`, soft and hard.
    #[must_use]
    pub fn nofile_limit(mut self, limit: u64) -> Self {
        self.nofile = Some(limit);
        self
    }

    /// Adds another `--iface`.
    #[must_use]
    pub fn iface(mut self, iface: &str) -> Self {
        self.ifaces.push(iface.to_owned());
        self
    }

    /// Writes `toml` to a file and passes it as `--config` (and SIGHUP
    /// re-reads it: see [`Daemon::write_config`]).
    #[must_use]
    pub fn config(mut self, toml: &str) -> Self {
        self.config = Some(toml.to_owned());
        self
    }

    /// Adds arguments after the harness's own.
    #[must_use]
    pub fn args(mut self, args: impl IntoIterator<Item = impl AsRef<str>>) -> Self {
        self.args.extend(args.into_iter().map(|arg| arg.as_ref().to_owned()));
        self
    }

    /// The admin API port on the namespace's loopback (9840 by default).
    #[must_use]
    pub fn admin_port(mut self, port: u16) -> Self {
        self.admin_port = port;
        self
    }

    /// The address the admin API listens on, in the daemon's namespace
    /// (the namespace's loopback by default). The daemon refuses any other
    /// address without a token: see [`DaemonBuilder::token`].
    #[must_use]
    pub fn admin_ip(mut self, ip: IpAddr) -> Self {
        self.admin_ip = ip;
        self
    }

    /// Runs the daemon as user `uid` and group `gid` with exactly the
    /// capabilities [`DAEMON_CAPS`] (through `setpriv`, as a service
    /// manager would); its pin, state and work directories are theirs.
    #[must_use]
    pub fn as_user(mut self, uid: u32, gid: u32) -> Self {
        self.user = Some(User { uid, gid, caps: DAEMON_CAPS.iter().map(|&c| c.to_owned()).collect() });
        self
    }

    /// With [`DaemonBuilder::as_user`]: these capabilities instead (`setpriv`
    /// names, such as `bpf`).
    #[must_use]
    pub fn caps(mut self, caps: &[&str]) -> Self {
        if let Some(user) = self.user.as_mut() {
            user.caps = caps.iter().map(|&c| c.to_owned()).collect();
        }
        self
    }

    /// Writes `token` to a file (mode 0600) in the daemon's work directory
    /// and passes it as `--token-file` (see [`Daemon::token_file`]).
    #[must_use]
    pub fn token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    /// Starts the daemon and waits until it is ready (at most
    /// [`READY_TIMEOUT`]; see [`Daemon::wait_ready`]).
    #[must_use]
    pub fn start_ready(self) -> Daemon {
        let mut daemon = self.start();
        daemon.wait_ready(READY_TIMEOUT);
        daemon
    }

    /// Starts the daemon (it is not ready yet: see [`Daemon::wait_ready`]).
    #[must_use]
    pub fn start(self) -> Daemon {
        ensure_bpffs();
        let id = unique_id();
        let workdir = std::env::temp_dir().join(format!("throttle-tests/{id}"));
        let state_dir = self.state_dir.clone().unwrap_or_else(|| workdir.join("state"));
        for dir in [&workdir, &state_dir] {
            fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        }
        let config_path = self.config.as_ref().map(|toml| {
            let path = workdir.join("throttle.toml");
            write_atomically(&path, toml);
            path
        });
        let token_file = self.token.as_ref().map(|token| {
            let path = workdir.join("token");
            let mut file = OpenOptions::new()
                .create(true)
                .truncate(true)
                .write(true)
                .mode(0o600)
                .open(&path)
                .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
            io::Write::write_all(&mut file, format!("{token}\n").as_bytes())
                .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
            path
        });
        let admin = SocketAddr::new(self.admin_ip, self.admin_port);
        let mut args = vec!["daemon".to_owned()];
        for iface in &self.ifaces {
            args.extend(["--iface".to_owned(), iface.clone()]);
        }
        let pin_dir = self.pin_dir.unwrap_or_else(|| PathBuf::from(BPFFS).join(format!("thr-test-{id}")));
        if let Some(user) = &self.user {
            fs::create_dir_all(&pin_dir).unwrap_or_else(|e| panic!("create {}: {e}", pin_dir.display()));
            for dir in [&workdir, &state_dir, &pin_dir] {
                std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid))
                    .unwrap_or_else(|e| panic!("chown {}: {e}", dir.display()));
            }
        }
        args.extend([
            "--pin-dir".to_owned(),
            pin_dir.display().to_string(),
            "--state-dir".to_owned(),
            state_dir.display().to_string(),
            "--admin".to_owned(),
            admin.to_string(),
        ]);
        if let Some(path) = &config_path {
            args.extend(["--config".to_owned(), path.display().to_string()]);
        }
        if let Some(path) = &token_file {
            args.extend(["--token-file".to_owned(), path.display().to_string()]);
        }
        args.extend(self.args);
        let mut daemon = Daemon {
            ns_name: self.ns.name().to_owned(),
            bin: throttle_bin(),
            args,
            log_path: workdir.join("daemon.log"),
            workdir,
            pin_dir,
            state_dir: state_dir.clone(),
            config_path,
            token_file,
            admin,
            child: None,
            started_at: 0,
            user: self.user,
            stderr_pipe: self.stderr_pipe,
            relay: None,
            nofile: self.nofile,
        };
        daemon.spawn(self.ns);
        daemon
    }
}

/// Starts a daemon on `pair`'s receiving end with `args`, waits until it is
/// ready and notes how XDP is attached.
#[must_use]
pub fn start_daemon(
    pair: &VethPair,
    args: impl IntoIterator<Item = impl AsRef<str>>,
    checks: &Checks,
) -> Daemon {
    let daemon = Daemon::builder(&pair.receiver, &pair.rx_if).args(args).start_ready();
    checks.note(&format!("daemon ready on {} ({})", pair.rx_if, pair.xdp_attachment()));
    daemon
}

/// The capabilities the daemon runs with as a service (`setpriv` names).
pub const DAEMON_CAPS: [&str; 2] = ["bpf", "net_admin"];

/// A running `throttle daemon` in a namespace. Its stdout and stderr go to a
/// log file, printed when a test fails. On drop: SIGTERM, SIGKILL after
/// 10 s, then its pin directory and work directory are removed.
#[derive(Debug)]
pub struct Daemon {
    ns_name: String,
    bin: PathBuf,
    args: Vec<String>,
    workdir: PathBuf,
    log_path: PathBuf,
    pin_dir: PathBuf,
    state_dir: PathBuf,
    config_path: Option<PathBuf>,
    token_file: Option<PathBuf>,
    admin: SocketAddr,
    child: Option<Child>,
    /// Length of the log when the current process was spawned.
    started_at: usize,
    /// The user and group it runs as, and its capabilities; `None`: root.
    user: Option<User>,
    /// Whether stderr is a pipe ([`DaemonBuilder::stderr_pipe`]).
    stderr_pipe: bool,
    /// The relay of a piped stderr into the log: set the flag to close it.
    relay: Option<(Arc<AtomicBool>, JoinHandle<()>)>,
    /// `RLIMIT_NOFILE` ([`DaemonBuilder::nofile_limit`]).
    nofile: Option<u64>,
}

impl Daemon {
    /// A builder for a daemon in `ns` on interface `iface`.
    #[must_use]
    pub fn builder<'a>(ns: &'a Netns, iface: &str) -> DaemonBuilder<'a> {
        DaemonBuilder {
            ns,
            ifaces: vec![iface.to_owned()],
            config: None,
            args: Vec::new(),
            admin_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            admin_port: ADMIN_PORT,
            token: None,
            pin_dir: None,
            state_dir: None,
            user: None,
            stderr_pipe: false,
            nofile: None,
        }
    }

    fn spawn(&mut self, ns: &Netns) {
        assert_eq!(ns.name(), self.ns_name, "a daemon stays in its namespace");
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log_path)
            .unwrap_or_else(|e| panic!("open {}: {e}", self.log_path.display()));
        let log2 = log.try_clone().expect("dup the log descriptor");
        let mut cmd = match &self.user {
            None => ns.command(&self.bin),
            Some(User { uid, gid, caps }) => {
                let caps: String = caps.iter().flat_map(|cap| [",+", cap.as_str()]).collect();
                let mut cmd = ns.command("setpriv");
                cmd.arg(format!("--reuid={uid}"))
                    .arg(format!("--regid={gid}"))
                    .arg("--clear-groups")
                    .arg(format!("--inh-caps=-all{caps}"))
                    .arg(format!("--ambient-caps=-all{caps}"))
                    .arg(format!("--bounding-set=-all{caps}"))
                    .arg(&self.bin);
                cmd
            }
        };
        cmd.args(&self.args).stdin(Stdio::null()).stdout(log);
        if self.stderr_pipe {
            cmd.stderr(Stdio::piped());
        } else {
            cmd.stderr(log2.try_clone().expect("dup the log descriptor"));
        }
        // The ready and reload lines are at info; keep a caller's own filter.
        if std::env::var_os(LOG_FILTER_ENV).is_none() {
            cmd.env(LOG_FILTER_ENV, "info");
        }
        // Plain text in the log file, not terminal colours.
        cmd.env("NO_COLOR", "1");
        // SAFETY: one async-signal-safe syscall between fork and exec.
        // PDEATHSIG fires when the spawning *thread* exits: the test's own
        // thread, which outlives this guard, so it only acts when the test
        // process dies without dropping it.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == 0 {
                    Ok(())
                } else {
                    Err(io::Error::last_os_error())
                }
            });
        }
        if let Some(limit) = self.nofile {
            let limit = libc::rlimit { rlim_cur: limit, rlim_max: limit };
            // SAFETY: one async-signal-safe syscall between fork and exec,
            // reading a plain value the closure owns.
            unsafe {
                cmd.pre_exec(move || {
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &raw const limit) == 0 {
                        Ok(())
                    } else {
                        Err(io::Error::last_os_error())
                    }
                });
            }
        }
        self.started_at = self.log_len();
        eprintln!("starting in {}: {} {}", self.ns_name, self.bin.display(), self.args.join(" "));
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {}: {e}", self.bin.display()));
        if let Some(pipe) = child.stderr.take() {
            let close = Arc::new(AtomicBool::new(false));
            let relay = {
                let close = Arc::clone(&close);
                thread::spawn(move || relay(pipe, log2, &close))
            };
            self.relay = Some((close, relay));
        }
        self.child = Some(child);
    }

    /// Closes the read end of the daemon's stderr pipe
    /// ([`DaemonBuilder::stderr_pipe`]), as a reader that goes away (`| tee`
    /// stopped by a Ctrl-C): its next write to stderr fails with `EPIPE`.
    /// Its log ends here.
    pub fn close_stderr(&mut self) {
        let (close, relay) = self.relay.take().expect("the daemon's stderr is a pipe: stderr_pipe()");
        close.store(true, Ordering::Relaxed);
        relay.join().expect("the stderr relay");
    }

    /// Waits until the daemon logs [`READY_LINE`] (after the last start);
    /// panics with its log when it exits first or `timeout` passes. Returns
    /// the monotonic instant it was seen.
    pub fn wait_ready(&mut self, timeout: Duration) -> u64 {
        self.wait_for_log(READY_LINE, self.started_at, timeout)
    }

    /// Waits for a log line containing `needle` at or after byte `since` of
    /// the log (see [`Daemon::log_len`]); returns the monotonic instant it was
    /// seen. Panics with the log when the daemon exits first or `timeout`
    /// passes.
    pub fn wait_for_log(&mut self, needle: &str, since: usize, timeout: Duration) -> u64 {
        let found = poll_until(timeout, Duration::from_millis(5), || {
            let log = self.log();
            if log.get(since..).is_some_and(|tail| tail.contains(needle)) {
                return Some(Ok(mono_ns()));
            }
            self.exit_status().map(Err)
        });
        match found {
            Some(Ok(at)) => at,
            Some(Err(status)) => {
                panic!("the daemon exited ({status}) before logging {needle:?}; its log:\n{}", self.log())
            }
            None => panic!("the daemon did not log {needle:?} within {timeout:?}; its log:\n{}", self.log()),
        }
    }

    /// Everything the daemon has written so far.
    #[must_use]
    pub fn log(&self) -> String {
        fs::read(&self.log_path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }

    /// The log's length now, a mark for [`Daemon::wait_for_log`].
    #[must_use]
    pub fn log_len(&self) -> usize {
        self.log().len()
    }

    /// Replaces the `--config` file (atomically, as an editor would).
    pub fn write_config(&self, toml: &str) {
        let path = self.config_path.as_ref().expect("the daemon was started with a config file");
        write_atomically(path, toml);
    }

    /// Sends SIGHUP: the daemon re-reads its config file and then logs
    /// [`RELOADED_LINE`]. Returns the monotonic instant just before the
    /// signal: taken after it, the instant could come after the whole reload,
    /// since `kill` may switch to the woken daemon before it returns.
    #[must_use = "the instant of the signal marks when the change began"]
    pub fn reload(&self) -> u64 {
        let at = mono_ns();
        self.signal(libc::SIGHUP);
        at
    }

    /// The admin API's address (on the namespace's loopback unless
    /// [`DaemonBuilder::admin_ip`] said otherwise).
    #[must_use]
    pub fn admin(&self) -> SocketAddr {
        self.admin
    }

    /// `GET path` on the admin API, from `ns` (the daemon's own namespace
    /// reaches its loopback); panics unless it answers 200 with JSON. No
    /// token is sent.
    #[must_use]
    pub fn api_get(&self, ns: &Netns, path: &str) -> serde_json::Value {
        crate::http::get_json(ns, self.admin, path)
    }

    /// The `--token-file`, when the daemon was given a token
    /// ([`DaemonBuilder::token`]).
    #[must_use]
    pub fn token_file(&self) -> Option<&Path> {
        self.token_file.as_deref()
    }

    /// Runs the client, `throttle <args>`, in `ns` against this daemon's
    /// admin API (through `THROTTLE_ADMIN`, so `args` need no `--admin`),
    /// and returns how it ended. No token is passed (`THROTTLE_TOKEN` is
    /// cleared): add `--token-file` to `args` for a daemon that wants one.
    #[must_use]
    pub fn cli<'s>(&self, ns: &Netns, args: impl IntoIterator<Item = &'s str>) -> CliOutput {
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        let out = ns
            .command(&self.bin)
            .args(&args)
            .env(ADMIN_ENV, self.admin.to_string())
            .env_remove(TOKEN_ENV)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run {} {}: {e}", self.bin.display(), args.join(" ")));
        CliOutput {
            command: format!("throttle {}", args.join(" ")),
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The directory the daemon pins its maps and links under.
    #[must_use]
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// The daemon's `--state-dir`.
    #[must_use]
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir.clone()
    }

    /// The daemon's process id, while it runs.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The exit status, if the daemon has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().expect("waitpid"))
    }

    /// Stops the daemon (SIGTERM, SIGKILL after a grace period) and returns
    /// how it exited. The pin and state directories stay, for a restart.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        send_signal(&child, libc::SIGTERM);
        let status = poll_until(STOP_GRACE, Duration::from_millis(10), || child.try_wait().expect("waitpid"));
        Some(status.unwrap_or_else(|| {
            eprintln!("warning: the daemon ignored SIGTERM for {STOP_GRACE:?}; killing it");
            let _ = child.kill();
            child.wait().expect("waitpid")
        }))
    }

    /// Stops the daemon and starts it again with the same arguments, pin
    /// directory and state directory (not ready yet: [`Daemon::wait_ready`]).
    pub fn restart(&mut self, ns: &Netns) -> Option<ExitStatus> {
        let status = self.stop();
        self.spawn(ns);
        status
    }

    /// Kills the daemon with SIGKILL, as a crash or the OOM killer would,
    /// and reaps it: it gets no chance to detach or unpin, so its program
    /// stays attached and its pin and state directories stay, for
    /// [`Daemon::start_again`]. Returns how it exited (None: not running).
    pub fn kill(&mut self) -> Option<ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        send_signal(&child, libc::SIGKILL);
        Some(child.wait().expect("waitpid"))
    }

    /// Starts the daemon again, with the same arguments, pin directory and
    /// state directory, after it exited or was stopped or killed (not ready
    /// yet: [`Daemon::wait_ready`]). Panics while it still runs.
    pub fn start_again(&mut self, ns: &Netns) {
        if let Some(child) = self.child.as_mut() {
            let exited = child.try_wait().expect("waitpid");
            assert!(exited.is_some(), "start_again: the daemon (pid {}) still runs", child.id());
        }
        self.spawn(ns);
    }

    /// Waits up to `timeout` for the daemon to exit by itself and returns how
    /// it did; None when it still runs (or was never running).
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.child.as_ref()?;
        poll_until(timeout, Duration::from_millis(10), || self.exit_status())
    }

    fn signal(&self, sig: libc::c_int) {
        let child = self.child.as_ref().expect("the daemon is running");
        send_signal(child, sig);
    }
}

/// Copies what the daemon writes to `pipe` into `log` until `close` is set
/// or the pipe ends; the read end closes as `pipe` drops.
fn relay(mut pipe: ChildStderr, mut log: File, close: &AtomicBool) {
    let mut buf = [0u8; 8192];
    while !close.load(Ordering::Relaxed) {
        let mut fd = libc::pollfd { fd: pipe.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd, alive for the call.
        if unsafe { libc::poll(&raw mut fd, 1, RELAY_POLL_MS) } <= 0 {
            continue;
        }
        match pipe.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let _ = log.write_all(&buf[..n]);
            }
        }
    }
}

/// How one run of the client ended ([`Daemon::cli`]).
#[derive(Debug, Clone)]
pub struct CliOutput {
    /// The command line, for messages.
    pub command: String,
    /// The exit code (None: killed by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    /// Whether it exited with `code`.
    #[must_use]
    pub fn exited(&self, code: i32) -> bool {
        self.code == Some(code)
    }

    /// The stdout of a run that exited 0; panics with everything otherwise.
    #[must_use]
    pub fn ok(&self) -> &str {
        assert!(self.exited(0), "{self}");
        &self.stdout
    }
}

impl std::fmt::Display for CliOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let code = self.code.map_or_else(|| "killed by a signal".to_owned(), |c| format!("exit code {c}"));
        write!(
            f,
            "`{}`: {code}\n--- stdout ---\n{}--- stderr ---\n{}",
            self.command, self.stdout, self.stderr
        )
    }
}

fn send_signal(child: &Child, sig: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
    // SAFETY: kill has no memory effects; the pid is our unreaped child, so
    // it cannot have been reused.
    let rc = unsafe { libc::kill(pid, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}): {}", io::Error::last_os_error());
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let crashed = self.exit_status();
        let status = self.stop();
        if let Some((close, relay)) = self.relay.take() {
            close.store(true, Ordering::Relaxed);
            let _ = relay.join();
        }
        if thread::panicking() || crashed.is_some() {
            eprintln!(
                "----- throttle daemon log ({}; {}) -----\n{}\n----- end of daemon log -----",
                self.log_path.display(),
                match (crashed, status) {
                    (Some(s), _) => format!("it had exited on its own: {s}"),
                    (None, Some(s)) => format!("stopped: {s}"),
                    (None, None) => "never started".to_owned(),
                },
                self.log()
            );
        }
        remove_dir(&self.pin_dir);
        remove_dir(&self.workdir);
    }
}

/// Writes `contents` to a temporary file beside `path` and renames it over
/// `path`, so a reader never sees half a file.
fn write_atomically(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    {
        let mut file = File::create(&tmp).unwrap_or_else(|e| panic!("create {}: {e}", tmp.display()));
        io::Write::write_all(&mut file, contents.as_bytes())
            .and_then(|()| file.sync_all())
            .unwrap_or_else(|e| panic!("write {}: {e}", tmp.display()));
    }
    fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename to {}: {e}", path.display()));
}
