//! Settings: the TOML file and the command-line flags over it, turned into
//! the policy and the daemon's own settings.
//!
//! The file's sections are the policy's types ([`crate::policy`]); a bad
//! value is refused with an error that names its key and the value, and
//! nothing of a refused configuration is applied.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::{
    controller::AdaptiveConfig,
    kernel::XdpMode,
    policy::{
        self, Class, Invalid, Limits, LimitsPatch, ParseError, Policy, RuleSpec, Scope, SetSpec, Unmatched,
    },
    runtime::fleet::{self, FleetConfig},
};

/// Where the admin API listens unless told otherwise.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9840";
/// Where runtime changes are persisted.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/throttle";
/// Where maps and links are pinned (a bpffs directory).
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/throttle";
/// Largest number of tracked sources the bucket map may be sized for.
pub const MAX_SOURCES_LIMIT: u32 = 1 << 26;
/// Smallest bucket map.
pub const MIN_SOURCES: u32 = 1_024;

/// Why a configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {source}", path.display())]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{}: {source}", path.display())]
    Parse { path: PathBuf, source: Box<toml::de::Error> },
    #[error("{}: {source}", path.display())]
    InvalidInFile { path: PathBuf, source: Invalid },
    #[error(transparent)]
    Invalid(#[from] Invalid),
}

/// The `[daemon]` section.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonSection {
    pub interfaces: Vec<String>,
    pub xdp_mode: Option<XdpMode>,
    pub admin: Option<String>,
    pub state_dir: Option<PathBuf>,
    pub pin_dir: Option<PathBuf>,
    pub token_file: Option<PathBuf>,
    /// Capacity of the bucket map: how many sources are tracked at once.
    pub max_sources: Option<u32>,
    /// An XDP program pinned on bpffs that what throttle passes continues
    /// into.
    pub chain: Option<PathBuf>,
}

/// `redis` of `[cluster]`: one URL, or a list of seeds for Redis Cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum RedisSeeds {
    One(String),
    Seeds(Vec<String>),
}

/// The `[cluster]` section: fleet mode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSection {
    pub redis: Option<RedisSeeds>,
    /// The Redis password, read from this file (never on the command line).
    pub password_file: Option<PathBuf>,
    /// This node's name in the fleet [default: the host name].
    pub node: Option<String>,
    /// The fleet's name: the prefix of its keys.
    pub name: Option<String>,
    pub sync_ms: Option<u64>,
    pub hold_ms: Option<u64>,
}

/// The configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub daemon: DaemonSection,
    pub limits: Limits,
    pub scope: Scope,
    /// The `[[classes]]`: limit classes besides the default one.
    pub classes: Vec<Class>,
    /// The `[unmatched]` section: what no class (and no scope entry) matches.
    pub unmatched: Unmatched,
    /// The `[[sets]]`: IP sets, each read from its file (a path relative
    /// to the configuration file's directory).
    pub sets: Vec<SetSpec>,
    pub rules: Vec<RuleSpec>,
    /// The `[adaptive]` section: absent, the controller is not started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveConfig>,
    /// The `[cluster]` section: absent, the daemon runs alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterSection>,
}

impl FileConfig {
    /// Reads and parses a file (a value its type refuses is refused by its
    /// key; the rest is validated in [`Settings::merge`]).
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text).map_err(|err| match err {
            ParseError::Invalid(source) => ConfigError::InvalidInFile { path: path.to_owned(), source },
            ParseError::Format { source, .. } => {
                ConfigError::Parse { path: path.to_owned(), source: Box::new(source) }
            }
        })
    }

    /// Parses the text of a file.
    pub fn parse(text: &str) -> Result<Self, ParseError<toml::de::Error>> {
        policy::parse(toml::Deserializer::new(text), "")
    }
}

/// Command-line flags of `throttle daemon`, each overriding the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct DaemonArgs {
    /// TOML configuration file (flags override it).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Interface to attach to; repeat for several.
    #[arg(long = "iface", value_name = "IF")]
    pub interfaces: Vec<String>,
    /// auto: native, falling back to generic; native; generic.
    #[arg(long, value_enum, value_name = "MODE")]
    pub xdp_mode: Option<XdpMode>,
    /// Address of the admin API [default: 127.0.0.1:9840].
    #[arg(long, value_name = "ADDR")]
    pub admin: Option<String>,
    /// The limits, over the file's `[limits]`.
    #[command(flatten)]
    pub limits: LimitsPatch,
    /// Where runtime changes are persisted [default: /var/lib/throttle].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// bpffs directory for pinned maps and links [default: /sys/fs/bpf/throttle].
    #[arg(long, value_name = "DIR")]
    pub pin_dir: Option<PathBuf>,
    /// Bearer token the admin API requires (needed to listen beyond loopback).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Capacity of the bucket map: sources tracked at once [default: 1048576].
    #[arg(long, value_name = "N")]
    pub max_sources: Option<u32>,
    /// An XDP program pinned on bpffs (`bpftool prog load ... PATH`) that
    /// what throttle passes continues into, on every interface, instead of
    /// the stack.
    #[arg(long, value_name = "PINNED_PROG")]
    pub chain: Option<PathBuf>,
    /// Fleet mode on this Redis (`redis://HOST:PORT/DB`, `rediss://` for
    /// TLS), over `cluster.redis`; the password goes in `cluster.password_file`.
    #[arg(long, value_name = "URL")]
    pub cluster_redis: Option<String>,
    /// On SIGTERM, leave the program attached and its maps pinned, for the
    /// next daemon (an upgrade) to adopt.
    #[arg(long)]
    pub keep_on_exit: bool,
}

/// Everything the daemon runs with, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    pub interfaces: Vec<String>,
    pub xdp_mode: XdpMode,
    pub admin: SocketAddr,
    pub state_dir: PathBuf,
    pub pin_dir: PathBuf,
    pub token_file: Option<PathBuf>,
    pub max_sources: u32,
    /// The pinned XDP program what passes continues into.
    pub chain: Option<PathBuf>,
    pub policy: Policy,
    /// The adaptive controller's settings, when the file has `[adaptive]`.
    pub adaptive: Option<AdaptiveConfig>,
    /// Fleet mode, with `[cluster]` or `--cluster-redis`.
    pub cluster: Option<FleetConfig>,
}

impl Settings {
    /// The file (if any) under the flags, validated.
    pub fn load(args: &DaemonArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => {
                let mut file = FileConfig::read(path)?;
                // Set files are found beside the configuration file.
                let dir = path.parent().unwrap_or_else(|| Path::new("."));
                for set in &mut file.sets {
                    set.file = set.file.take().map(|f| dir.join(f));
                }
                file
            }
            None => FileConfig::default(),
        };
        Self::merge(file, args).map_err(|source| match &args.config {
            Some(path) => ConfigError::InvalidInFile { path: path.clone(), source },
            None => ConfigError::Invalid(source),
        })
    }

    /// The file's values under the flags'.
    pub fn merge(file: FileConfig, args: &DaemonArgs) -> Result<Self, Invalid> {
        let FileConfig { daemon, limits, scope, classes, unmatched, sets, rules, adaptive, cluster } = file;
        let cluster = cluster_config(cluster, args.cluster_redis.as_deref())?;
        let limits = args.limits.over(&limits);
        for (i, set) in sets.iter().enumerate() {
            if set.file.is_none() {
                return Err(Invalid::new(
                    format!("sets[{i}].file"),
                    "(missing)",
                    "a set of the configuration file names the file it is read from",
                ));
            }
        }
        let policy = Policy { limits, scope, classes, unmatched, sets, rules };
        policy.validate()?;
        if let Some(adaptive) = &adaptive {
            adaptive.validate("adaptive")?;
        }

        let interfaces = if args.interfaces.is_empty() { daemon.interfaces } else { args.interfaces.clone() };
        for (i, name) in interfaces.iter().enumerate() {
            // IFNAMSIZ less the NUL.
            if name.is_empty() || name.len() > 15 || name.contains(['/', ' ', '\0']) {
                return Err(Invalid::new(
                    format!("daemon.interfaces[{i}]"),
                    format!("{name:?}"),
                    "not an interface name",
                ));
            }
        }
        let admin_text = args.admin.clone().or(daemon.admin).unwrap_or_else(|| DEFAULT_ADMIN.to_owned());
        let admin: SocketAddr = admin_text.parse().map_err(|_| {
            Invalid::new("daemon.admin", format!("{admin_text:?}"), "not an address:port like 127.0.0.1:9840")
        })?;
        let max_sources =
            args.max_sources.or(daemon.max_sources).unwrap_or(throttle_common::DEFAULT_MAX_SOURCES);
        if !(MIN_SOURCES..=MAX_SOURCES_LIMIT).contains(&max_sources) {
            return Err(Invalid::new(
                "daemon.max_sources",
                max_sources,
                format!("must be between {MIN_SOURCES} and {MAX_SOURCES_LIMIT}"),
            ));
        }
        let chain = args.chain.clone().or(daemon.chain);
        if let Some(path) = &chain {
            let text = path.to_string_lossy();
            if text.is_empty() || text.contains('\0') {
                return Err(Invalid::new(
                    "daemon.chain",
                    format!("{text:?}"),
                    "not the path of a pinned program",
                ));
            }
        }
        Ok(Self {
            interfaces,
            xdp_mode: args.xdp_mode.or(daemon.xdp_mode).unwrap_or_default(),
            admin,
            state_dir: args
                .state_dir
                .clone()
                .or(daemon.state_dir)
                .unwrap_or_else(|| DEFAULT_STATE_DIR.into()),
            pin_dir: args.pin_dir.clone().or(daemon.pin_dir).unwrap_or_else(|| DEFAULT_PIN_DIR.into()),
            token_file: args.token_file.clone().or(daemon.token_file),
            max_sources,
            chain,
            policy,
            adaptive,
            cluster,
        })
    }
}

/// The `[cluster]` section under `--cluster-redis`, validated; `None`
/// without either.
fn cluster_config(
    section: Option<ClusterSection>,
    flag: Option<&str>,
) -> Result<Option<FleetConfig>, Invalid> {
    if section.is_none() && flag.is_none() {
        return Ok(None);
    }
    let section = section.unwrap_or_default();
    let (seeds, key) = match (flag, section.redis) {
        (Some(url), _) => (vec![url.to_owned()], "--cluster-redis"),
        (None, Some(RedisSeeds::One(url))) => (vec![url], "cluster.redis"),
        (None, Some(RedisSeeds::Seeds(urls))) => (urls, "cluster.redis"),
        (None, None) => {
            return Err(Invalid::new("cluster.redis", "(missing)", "fleet mode needs the URL of its Redis"));
        }
    };
    if seeds.is_empty() {
        return Err(Invalid::new(key, "[]", "name at least one Redis"));
    }
    for (i, url) in seeds.iter().enumerate() {
        let at = if seeds.len() > 1 { format!("{key}[{i}]") } else { key.to_owned() };
        fleet::check_url(url)
            .map_err(|reason| Invalid::new(at, format!("{:?}", fleet::redact(url)), reason))?;
    }
    let node = match section.node {
        Some(node) => node,
        None => fleet::host_name()
            .map_err(|e| Invalid::new("cluster.node", "(the host name)", format!("cannot be read: {e}")))?,
    };
    fleet::check_name(&node).map_err(|reason| Invalid::new("cluster.node", format!("{node:?}"), reason))?;
    let name = section.name.unwrap_or_else(|| fleet::DEFAULT_NAME.to_owned());
    fleet::check_name(&name).map_err(|reason| Invalid::new("cluster.name", format!("{name:?}"), reason))?;
    let sync_ms = section.sync_ms.unwrap_or(fleet::DEFAULT_SYNC_MS);
    policy::check_range("cluster.sync_ms", sync_ms, fleet::MIN_SYNC_MS, fleet::MAX_SYNC_MS)?;
    let hold_ms = section.hold_ms.unwrap_or(fleet::DEFAULT_HOLD_MS);
    policy::check_range("cluster.hold_ms", hold_ms, sync_ms, fleet::MAX_HOLD_MS)
        .map_err(|err| Invalid { reason: format!("{} (at least cluster.sync_ms)", err.reason), ..err })?;
    Ok(Some(FleetConfig {
        seeds,
        password_file: section.password_file,
        node,
        name,
        sync: std::time::Duration::from_millis(sync_ms),
        hold: std::time::Duration::from_millis(hold_ms),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Settings, String> {
        let file = FileConfig::parse(text).map_err(|e| e.to_string())?;
        Settings::merge(file, &DaemonArgs::default()).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults_without_a_file() {
        let settings = parse("").unwrap();
        assert_eq!(settings.admin.to_string(), DEFAULT_ADMIN);
        assert_eq!(settings.policy.limits, Limits::default());
        assert_eq!(settings.xdp_mode, XdpMode::Auto);
        assert_eq!(settings.max_sources, throttle_common::DEFAULT_MAX_SOURCES);
    }

    #[test]
    fn a_full_file() {
        let settings = parse(
            r#"
            [daemon]
            interfaces = ["eth0", "eth1"]
            xdp_mode = "generic"
            admin = "127.0.0.1:9999"
            max_sources = 65536
            [limits]
            rate = 500
            burst = 250
            unit = "bytes"
            ipv4_prefix = 24
            ipv6_prefix = 56
            dry_run = true
            new_source_rate = 0
            [scope]
            ports = [{ proto = "tcp", port = 443, syn_only = true }, { proto = "udp", port = 53 }]
            [[rules]]
            cidr = "10.0.0.0/8"
            action = "limit"
            rate = 100
            [[rules]]
            cidr = "2001:db8::/32"
            action = "deny"
            "#,
        )
        .unwrap();
        assert_eq!(settings.interfaces, ["eth0", "eth1"]);
        assert_eq!(settings.xdp_mode, XdpMode::Generic);
        assert_eq!(settings.max_sources, 65_536);
        assert_eq!(settings.policy.limits.unit, policy::Unit::Bytes);
        assert_eq!(settings.policy.scope.ports.len(), 2);
        assert_eq!(settings.policy.rules[0].limit().map(|l| l.burst), Some(100));
    }

    #[test]
    fn the_adaptive_section() {
        assert_eq!(parse("").unwrap().adaptive, None);
        let settings = parse(
            r#"
            [adaptive]
            algorithm = "vegas"
            floor = 0.2
            target_ms = 50.0
            [adaptive.vegas]
            beta = 0.6
            [adaptive.source]
            kind = "http"
            url = "http://127.0.0.1:8080/health"
            "#,
        )
        .unwrap();
        let adaptive = settings.adaptive.unwrap();
        assert_eq!(adaptive.algorithm, crate::controller::Algorithm::Vegas);
        assert_eq!(adaptive.target_ms, Some(50.0));
        assert!((adaptive.vegas.beta - 0.6).abs() < f64::EPSILON);
        let err = parse("[adaptive]\nflor = 0.5").unwrap_err();
        assert!(err.contains("unknown field `flor`"), "{err}");
    }

    /// The limit classes of the README's example.
    const CLASSES: &str = include_str!("../../docs/examples/classes.toml");

    #[test]
    fn the_classes_and_the_unmatched_section() {
        let settings = parse("").unwrap();
        assert!(settings.policy.classes.is_empty());
        assert_eq!(settings.policy.unmatched, Unmatched::default());
        let settings = parse(CLASSES).unwrap();
        let classes = &settings.policy.classes;
        let names: Vec<&str> = classes.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["ssh", "dns", "web"]);
        assert_eq!(classes[0].limits[0].rate.to_string(), "3/minute");
        assert_eq!(classes[0].ban.unwrap().duration.0, std::time::Duration::from_secs(15 * 60));
        assert_eq!(classes[1].limits[1].burst(), 1000, "the burst defaults to the rate's count");
        assert_eq!(classes[2].tiers[0].ipv6_prefix, Some(48));
        assert!(classes[2].adaptive && !classes[0].adaptive);
        assert_eq!(settings.policy.unmatched.action, policy::UnmatchedAction::Limit);
        let pass = parse(&CLASSES.replace(r#"action = "limit""#, r#"action = "pass""#)).unwrap();
        assert_eq!(pass.policy.unmatched.action, policy::UnmatchedAction::Pass);
    }

    #[test]
    fn bad_classes_name_their_key_and_value() {
        let class = |name: &str, m: &str, rest: &str| {
            format!("[[classes]]\nname = \"{name}\"\nmatch = [{m}]\nlimits = [{{ rate = 5 }}]\n{rest}\n")
        };
        let udp53 = r#"{ proto = "udp", ports = 53 }"#;
        for (text, needles) in [
            (
                format!("{CLASSES}\n{}", class("alt", r#"{ proto = "tcp", ports = "8050-8060" }"#, "")),
                &["`classes[3].match[0].ports` = tcp/8050", "\"alt\"", "\"web\""][..],
            ),
            (
                format!(
                    "{}{}",
                    class("a", udp53, ""),
                    class("b", r#"{ proto = "udp", ports = [5353, 53] }"#, "")
                ),
                &["`classes[1].match[0].ports` = udp/53", "\"a\"", "\"b\""],
            ),
            (
                format!("[scope]\nports = [{{ proto = \"udp\", port = 53 }}]\n{}", class("dns", udp53, "")),
                &["`classes[0].match[0].ports` = udp/53", "scope.ports[0]"],
            ),
            (
                format!("{}{}", class("a", udp53, ""), class("a", r#"{ proto = "udp", ports = 54 }"#, "")),
                &["`classes[1].name` = \"a\""],
            ),
            (class("Bad_Name", udp53, ""), &["`classes[0].name` = \"Bad_Name\""]),
            (class("a", r#"{ proto = "udp", ports = "0" }"#, ""), &["`classes[0].match[0].ports` = \"0\""]),
            (
                class("a", udp53, "limits = [{ rate = 1 }, { rate = 2 }, { rate = 3 }, { rate = 4 }]")
                    .replace("limits = [{ rate = 5 }]\n", ""),
                &["`classes[0].limits` = 4 limits"],
            ),
            (
                class("a", udp53, "").replace("rate = 5", "rate = \"0/minute\""),
                &["`classes[0].limits[0].rate` = \"0/minute\""],
            ),
            (
                class("a", udp53, "ban = { after = \"soon\", duration = \"1m\" }"),
                &["`classes[0].ban.after` = \"soon\""],
            ),
            (class("a", udp53, "tiers = [{ rate = 5 }]"), &["`classes[0].tiers[0]`"]),
            ("[unmatched]\naction = \"drop\"".to_owned(), &["unknown variant `drop`"]),
        ] {
            let err = parse(&text).expect_err(&text);
            for needle in needles {
                assert!(err.contains(needle), "{text:?}: {err:?} lacks {needle:?}");
            }
        }
    }

    #[test]
    fn flags_override_the_file() {
        let file = FileConfig::parse("[limits]\nrate = 5\nburst = 9\n").unwrap();
        let args = DaemonArgs {
            limits: LimitsPatch { rate: Some(policy::Rate::per_second(7)), ..LimitsPatch::default() },
            interfaces: vec!["veth1".into()],
            ..DaemonArgs::default()
        };
        let settings = Settings::merge(file, &args).unwrap();
        assert_eq!(settings.policy.limits.rate, policy::Rate::per_second(7));
        assert_eq!(settings.policy.limits.burst, 9);
        assert_eq!(settings.interfaces, ["veth1"]);
    }

    #[test]
    fn bad_values_name_their_key_and_value() {
        for (text, needle) in [
            ("[limits]\nrate = 0", "`limits.rate` = 0"),
            ("[limits]\nrate = 100000001", "`limits.rate` = 100000001"),
            ("[limits]\nburst = 0", "`limits.burst` = 0"),
            ("[limits]\nburst = 1000000001", "`limits.burst`"),
            ("[limits]\nipv4_prefix = 33", "`limits.ipv4_prefix` = 33"),
            ("[limits]\nipv4_prefix = 0", "`limits.ipv4_prefix` = 0"),
            ("[limits]\nipv6_prefix = 129", "`limits.ipv6_prefix` = 129"),
            ("[limits]\nnew_source_rate = 5\nnew_source_burst = 0", "`limits.new_source_burst` = 0"),
            ("[scope]\nports = [{ proto = \"udp\", port = 0 }]", "`scope.ports[0].port` = 0"),
            ("[scope]\nports = [{ proto = \"udp\", port = 65536 }]", "`scope.ports[0].port` = 65536"),
            ("[scope]\nports = [{ proto = \"udp\", port = 53, syn_only = true }]", "`scope.ports[0].syn_only`"),
            ("[scope]\nports = [{ proto = \"udp\", port = 53 }, { proto = \"udp\", port = 53 }]", "`scope.ports[1].port` = 53"),
            ("[[rules]]\ncidr = \"10.0.0.0/33\"\naction = \"deny\"", "`rules[0].cidr` = \"10.0.0.0/33\""),
            ("[[rules]]\ncidr = \"10.0.0.1/8\"\naction = \"deny\"", "host bits"),
            ("[[rules]]\ncidr = \"10.0.0.0/8\"\naction = \"limit\"", "`rules[0].rate`"),
            ("[[rules]]\ncidr = \"10.0.0.0/8\"\naction = \"deny\"\nrate = 5", "`rules[0].rate`"),
            ("[[rules]]\ncidr = \"10.0.0.0/8\"\naction = \"allow\"\n[[rules]]\ncidr = \"10.0.0.0/8\"\naction = \"deny\"", "`rules[1].cidr`"),
            ("[daemon]\nadmin = \"nowhere\"", "`daemon.admin` = \"nowhere\""),
            ("[daemon]\ninterfaces = [\"a-name-far-too-long\"]", "`daemon.interfaces[0]`"),
            ("[daemon]\nmax_sources = 10", "`daemon.max_sources` = 10"),
            ("[adaptive]\nfloor = 0.0", "`adaptive.floor` = 0"),
            ("[adaptive.gradient]\ntolerance = 0.1", "`adaptive.gradient.tolerance` = 0.1"),
            ("[adaptive.source]\nkind = \"tcp\"\naddress = \"nowhere\"", "`adaptive.source.address`"),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(needle), "{text:?}: {err:?} lacks {needle:?}");
        }
    }

    #[test]
    fn the_cluster_section_and_its_flag() {
        assert_eq!(parse("").unwrap().cluster, None);
        let settings = parse(
            r#"
            [cluster]
            redis = "redis://127.0.0.1:6379/0"
            password_file = "/etc/throttle/redis.pass"
            node = "web-3"
            name = "prod"
            sync_ms = 100
            hold_ms = 5000
            "#,
        )
        .unwrap();
        let cluster = settings.cluster.unwrap();
        assert_eq!(cluster.seeds, ["redis://127.0.0.1:6379/0"]);
        assert_eq!((cluster.node.as_str(), cluster.name.as_str()), ("web-3", "prod"));
        assert_eq!(cluster.sync, std::time::Duration::from_millis(100));
        assert_eq!(cluster.hold, std::time::Duration::from_secs(5));
        assert_eq!(cluster.password_file.as_deref(), Some(Path::new("/etc/throttle/redis.pass")));
        let seeds =
            parse("[cluster]\nredis = [\"redis://10.0.0.1:7000\", \"rediss://10.0.0.2:7000\"]\nnode = \"a\"")
                .unwrap()
                .cluster
                .unwrap();
        assert_eq!(seeds.seeds.len(), 2);
        assert_eq!(seeds.sync, std::time::Duration::from_millis(fleet::DEFAULT_SYNC_MS));
        let args =
            DaemonArgs { cluster_redis: Some("redis://127.0.0.1:7777".into()), ..DaemonArgs::default() };
        let file = FileConfig::parse("[cluster]\nredis = \"redis://127.0.0.1:6379\"\nnode = \"n1\"").unwrap();
        let cluster = Settings::merge(file, &args).unwrap().cluster.unwrap();
        assert_eq!(cluster.seeds, ["redis://127.0.0.1:7777"], "the flag over the file");
        let alone = Settings::merge(FileConfig::default(), &args).unwrap().cluster.unwrap();
        assert!(!alone.node.is_empty(), "the host name by default");
        assert_eq!(alone.name, fleet::DEFAULT_NAME);
        let bad =
            DaemonArgs { cluster_redis: Some("redis://:secret@127.0.0.1".into()), ..DaemonArgs::default() };
        let err = Settings::merge(FileConfig::default(), &bad).unwrap_err().to_string();
        assert!(err.contains("`--cluster-redis`") && err.contains("password_file"), "{err}");
        assert!(!err.contains("secret"), "the password is not repeated: {err}");
    }

    #[test]
    fn bad_cluster_values_name_their_key_and_value() {
        let with =
            |rest: &str| format!("[cluster]\nredis = \"redis://127.0.0.1:6379\"\nnode = \"n1\"\n{rest}");
        for (text, needle) in [
            ("[cluster]\nnode = \"n1\"".to_owned(), "`cluster.redis` = (missing)"),
            ("[cluster]\nredis = \"http://x\"".to_owned(), "`cluster.redis` = \"http://x\""),
            ("[cluster]\nredis = []".to_owned(), "`cluster.redis` = []"),
            ("[cluster]\nredis = [\"redis://a:1\", \"nope\"]".to_owned(), "`cluster.redis[1]` = \"nope\""),
            ("[cluster]\nredis = \"redis://:pw@127.0.0.1\"".to_owned(), "password_file"),
            (with("sync_ms = 49"), "`cluster.sync_ms` = 49"),
            (with("sync_ms = 5001"), "`cluster.sync_ms` = 5001"),
            (with("sync_ms = 500\nhold_ms = 100"), "`cluster.hold_ms` = 100"),
            (with("name = \"a{b}\""), "`cluster.name` = \"a{b}\""),
            (with("name = \"\""), "`cluster.name` = \"\""),
            (with("node = \"web 3\"").replace("node = \"n1\"\n", ""), "`cluster.node` = \"web 3\""),
            (with("sync = 5"), "unknown field `sync`"),
        ] {
            let err = parse(&text).expect_err(&text);
            assert!(err.contains(needle), "{text:?}: {err:?} lacks {needle:?}");
        }
    }

    #[test]
    fn unknown_keys_and_bad_types_are_refused_with_their_line() {
        for (text, needle) in [
            ("[limits]\nrat = 5", "unknown field `rat`"),
            ("[limits]\nunit = \"furlongs\"", "unknown variant `furlongs`"),
            ("[[rules]]\ncidr = \"10.0.0.0/8\"\naction = \"block\"", "unknown variant `block`"),
            ("[scope]\nports = [{ proto = \"icmp\", port = 1 }]", "unknown variant `icmp`"),
            ("[limits]\nrate = -1", "line 2"),
            ("[nonsense]", "unknown field `nonsense`"),
            ("[[classes]]\nname = \"a\"\nmatch = [{ proto = \"udp\", ports = 53 }]\nlimits = [{ rate = 5 }]\nlimit = 1", "unknown field `limit`"),
            ("[[classes]]\nname = \"a\"\nmatch = [{ proto = \"udp\", port = 53 }]\nlimits = [{ rate = 5 }]", "unknown field `port`"),
            ("[unmatched]\naction = \"pass\"\nlog = true", "unknown field `log`"),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(needle), "{text:?}: {err:?} lacks {needle:?}");
        }
    }
}
