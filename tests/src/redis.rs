//! A real `redis-server` (Debian's package) for the fleet tests: started on
//! a free loopback port and on a Unix socket (which the daemons in their
//! network namespaces reach through the file system), with a directory of
//! its own, and stopped (and its directory removed) on drop; a Redis Cluster
//! of several such servers.

use std::{
    net::{Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};

use crate::{poll_until, remove_dir, report, unique_id};

/// How long a server may take to answer its first PING.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A `redis-server` process.
#[derive(Debug)]
pub struct RedisServer {
    dir: PathBuf,
    port: u16,
    cluster: bool,
    extra: Vec<String>,
    child: Option<Child>,
}

/// A free TCP port on loopback (bound and released: another process may
/// take it in between, which the server's start then reports).
fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("no free loopback port: {e}"))
        .port()
}

/// Whether `redis-server` and `redis-cli` are installed; panics saying how
/// to install them when not (the fleet tests need them).
pub fn require_redis() {
    for tool in ["redis-server", "redis-cli"] {
        let found = Command::new(tool).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status();
        assert!(
            found.is_ok_and(|s| s.success()),
            "{tool} is not installed: `cargo xtask setup` installs Debian's redis-server"
        );
    }
}

impl RedisServer {
    /// Starts a server and waits until it answers.
    #[must_use]
    pub fn start() -> Self {
        Self::launch(false, &[])
    }

    /// Starts a server with these settings too (`--requirepass`, `--user`...).
    #[must_use]
    pub fn start_with(args: &[&str]) -> Self {
        Self::launch(false, args)
    }

    /// Starts a server with `cluster-enabled yes` (a Redis Cluster node).
    #[must_use]
    pub fn start_cluster_node() -> Self {
        Self::launch(true, &[])
    }

    fn launch(cluster: bool, extra: &[&str]) -> Self {
        require_redis();
        let dir = std::env::temp_dir().join(format!("throttle-tests/redis-{}", unique_id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let extra = extra.iter().map(|&a| a.to_owned()).collect();
        let mut server = Self { dir, port: free_port(), cluster, extra, child: None };
        server.spawn();
        server
    }

    /// Starts a server that also serves TLS on a port of its own, with a
    /// self-signed certificate for 127.0.0.1 made by `openssl req`: that
    /// port and the certificate (the CA to trust).
    #[must_use]
    pub fn start_tls() -> (Self, u16, PathBuf) {
        let dir = std::env::temp_dir().join(format!("throttle-tests/redis-tls-{}", unique_id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        let out = Command::new("openssl")
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
            .args(["-addext", "subjectAltName=IP:127.0.0.1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run openssl (`cargo xtask setup` installs it): {e}"));
        assert!(out.status.success(), "openssl req: {}", String::from_utf8_lossy(&out.stderr));
        let tls_port = free_port();
        let (tls_port_text, cert_text, key_text) =
            (tls_port.to_string(), cert.display().to_string(), key.display().to_string());
        let server = Self::launch(
            false,
            &[
                "--tls-port",
                &tls_port_text,
                "--tls-cert-file",
                &cert_text,
                "--tls-key-file",
                &key_text,
                "--tls-ca-cert-file",
                &cert_text,
                "--tls-auth-clients",
                "no",
            ],
        );
        // The certificate's directory goes with the server's.
        let kept = server.dir.join("cert.pem");
        std::fs::copy(&cert, &kept).unwrap_or_else(|e| panic!("copy {}: {e}", cert.display()));
        remove_dir(&dir);
        (server, tls_port, kept)
    }

    /// The password `redis-cli` gives, from `--requirepass`.
    fn password(&self) -> Option<&str> {
        let at = self.extra.iter().position(|a| a == "--requirepass")?;
        self.extra.get(at + 1).map(String::as_str)
    }

    fn spawn(&mut self) {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--unixsocket")
            .arg(self.socket())
            .args(["--unixsocketperm", "700", "--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(self.dir.join("redis.log"));
        if self.cluster {
            cmd.args(["--cluster-enabled", "yes", "--cluster-config-file"]).arg(self.dir.join("nodes.conf"));
        }
        cmd.args(&self.extra);
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn redis-server: {e}"));
        self.child = Some(child);
        let up = poll_until(START_TIMEOUT, Duration::from_millis(20), || {
            (self.cli(&["PING"]).trim() == "PONG").then_some(())
        });
        assert!(up.is_some(), "redis-server on port {} did not answer: {}", self.port, self.log());
    }

    /// The loopback port it listens on.
    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its Unix socket.
    #[must_use]
    pub fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    /// The URL of its socket, for the daemons in their namespaces.
    #[must_use]
    pub fn socket_url(&self) -> String {
        format!("redis+unix://{}", self.socket().display())
    }

    /// Runs `redis-cli` against it: its standard output.
    #[must_use]
    pub fn cli(&self, args: &[&str]) -> String {
        let mut cmd = Command::new("redis-cli");
        cmd.args(["-h", "127.0.0.1", "-p", &self.port.to_string()]);
        if let Some(password) = self.password() {
            cmd.args(["--no-auth-warning", "-a", password]);
        }
        let out =
            cmd.args(args).stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("run redis-cli: {e}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Its log so far.
    #[must_use]
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }

    /// Kills it (SIGKILL: no goodbye to its clients), keeping its directory.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_file(self.socket());
    }

    /// Starts it again on the same port and socket (empty: it keeps nothing).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }

    /// The directory it runs in.
    #[must_use]
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        remove_dir(&self.dir);
    }
}

/// A Redis Cluster of `masters` servers (no replicas), slots spread by
/// `redis-cli --cluster create`.
#[derive(Debug)]
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts the servers and joins them; `None`, with the reason printed,
    /// when `redis-cli --cluster create` fails here.
    #[must_use]
    pub fn start(masters: usize) -> Option<Self> {
        let nodes: Vec<RedisServer> = (0..masters).map(|_| RedisServer::start_cluster_node()).collect();
        let addrs: Vec<String> = nodes.iter().map(|n| format!("127.0.0.1:{}", n.port())).collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("run redis-cli --cluster create: {e}"));
        if !out.status.success() {
            report(&format!(
                "redis-cli --cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
            return None;
        }
        let ok = poll_until(Duration::from_secs(20), Duration::from_millis(100), || {
            nodes.iter().all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok")).then_some(())
        });
        assert!(
            ok.is_some(),
            "the cluster did not reach cluster_state:ok: {}",
            nodes[0].cli(&["CLUSTER", "INFO"])
        );
        Some(Self { nodes })
    }
}
