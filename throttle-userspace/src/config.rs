//! Configuration: the TOML file, the command-line flags over it, and the
//! validation that every value goes through before it reaches the kernel.
//!
//! A bad value is refused with an error that names its key and the value;
//! nothing of a refused configuration is applied.

use std::{
    collections::HashSet,
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use throttle_common::gcra::{MAX_BURST, MAX_RATE, MIN_BURST, MIN_RATE};

use crate::controller::AdaptiveConfig;

/// Where the admin API listens unless told otherwise.
pub const DEFAULT_ADMIN: &str = "127.0.0.1:9840";
/// Where runtime changes are persisted.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/throttle";
/// Where maps and links are pinned (a bpffs directory).
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/throttle";
/// Default per-source rate, per second.
pub const DEFAULT_RATE: u64 = 1_000;
/// Default per-source burst.
pub const DEFAULT_BURST: u64 = 1_000;
/// Default global budget of first-seen sources, per second (and burst).
pub const DEFAULT_NEW_SOURCE_RATE: u64 = 10_000;
/// Largest number of tracked sources the bucket map may be sized for.
pub const MAX_SOURCES_LIMIT: u64 = 1 << 26;
/// Smallest bucket map.
pub const MIN_SOURCES: u64 = 1_024;

/// A value refused, with the key it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid `{key}` = {value}: {reason}")]
pub struct Invalid {
    /// The key, as a dotted path (`limits.rate`, `rules[2].cidr`).
    pub key: String,
    /// The value as given.
    pub value: String,
    /// What is wrong with it.
    pub reason: String,
}

impl Invalid {
    pub(crate) fn new(key: impl Into<String>, value: impl fmt::Display, reason: impl Into<String>) -> Self {
        Self { key: key.into(), value: value.to_string(), reason: reason.into() }
    }
}

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

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic when the driver has none.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (skb) mode: works everywhere, costs more per packet.
    Generic,
}

impl fmt::Display for XdpMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Native => "native",
            Self::Generic => "generic",
        })
    }
}

/// What a limit counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    #[default]
    Packets,
    /// Frame bytes as received, L2 header included.
    Bytes,
}

impl Unit {
    /// As the configuration and the API spell it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Packets => "packets",
            Self::Bytes => "bytes",
        }
    }

    #[must_use]
    pub const fn kernel(self) -> u32 {
        match self {
            Self::Packets => throttle_common::UNIT_PACKETS,
            Self::Bytes => throttle_common::UNIT_BYTES,
        }
    }
}

/// The action of a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Pass everything from the prefix, unmetered.
    Allow,
    /// Drop everything from the prefix.
    Deny,
    /// Meter every source of the prefix at the rule's own rate and burst.
    Limit,
}

/// A transport protocol of the scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    #[must_use]
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => throttle_common::PROTO_TCP,
            Self::Udp => throttle_common::PROTO_UDP,
        }
    }
}

/// The default limit and the settings every source shares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Per source, per second.
    pub rate: u64,
    /// Units a source may send at once after a quiet spell.
    pub burst: u64,
    pub unit: Unit,
    /// Sources are aggregated to this prefix (IPv4).
    pub ipv4_prefix: u64,
    /// Sources are aggregated to this prefix (IPv6: one host owns a /64).
    pub ipv6_prefix: u64,
    /// Count what would be dropped and pass it.
    pub dry_run: bool,
    /// Global budget of first-seen sources per second; 0 turns it off.
    pub new_source_rate: u64,
    /// Burst of the first-seen budget.
    pub new_source_burst: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            rate: DEFAULT_RATE,
            burst: DEFAULT_BURST,
            unit: Unit::Packets,
            ipv4_prefix: 32,
            ipv6_prefix: 64,
            dry_run: false,
            new_source_rate: DEFAULT_NEW_SOURCE_RATE,
            new_source_burst: DEFAULT_NEW_SOURCE_RATE,
        }
    }
}

fn check_rate(key: &str, rate: u64) -> Result<(), Invalid> {
    if (MIN_RATE..=MAX_RATE).contains(&rate) {
        Ok(())
    } else {
        Err(Invalid::new(key, rate, format!("must be between {MIN_RATE} and {MAX_RATE} per second")))
    }
}

fn check_burst(key: &str, burst: u64) -> Result<(), Invalid> {
    if (MIN_BURST..=MAX_BURST).contains(&burst) {
        Ok(())
    } else {
        Err(Invalid::new(key, burst, format!("must be between {MIN_BURST} and {MAX_BURST}")))
    }
}

fn check_prefix(key: &str, prefix: u64, max: u64) -> Result<(), Invalid> {
    if (1..=max).contains(&prefix) {
        Ok(())
    } else {
        Err(Invalid::new(key, prefix, format!("must be between 1 and {max}")))
    }
}

impl Limits {
    /// Checks every field; `prefix` names the section (`limits`).
    pub fn validate(&self, prefix: &str) -> Result<(), Invalid> {
        check_rate(&format!("{prefix}.rate"), self.rate)?;
        check_burst(&format!("{prefix}.burst"), self.burst)?;
        check_prefix(&format!("{prefix}.ipv4_prefix"), self.ipv4_prefix, 32)?;
        check_prefix(&format!("{prefix}.ipv6_prefix"), self.ipv6_prefix, 128)?;
        if self.new_source_rate != 0 {
            check_rate(&format!("{prefix}.new_source_rate"), self.new_source_rate)?;
            check_burst(&format!("{prefix}.new_source_burst"), self.new_source_burst)?;
        }
        Ok(())
    }
}

/// One entry of the scope: a protocol and destination port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScopePort {
    pub proto: Proto,
    pub port: u64,
    /// TCP only: only connection attempts (SYN without ACK) are in scope.
    #[serde(default)]
    pub syn_only: bool,
}

/// What the limits apply to. Empty: everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Scope {
    pub ports: Vec<ScopePort>,
}

impl Scope {
    pub fn validate(&self, prefix: &str) -> Result<(), Invalid> {
        let mut seen = HashSet::new();
        for (i, entry) in self.ports.iter().enumerate() {
            let key = format!("{prefix}.ports[{i}]");
            if !(1..=65_535).contains(&entry.port) {
                return Err(Invalid::new(format!("{key}.port"), entry.port, "must be between 1 and 65535"));
            }
            if entry.syn_only && entry.proto != Proto::Tcp {
                return Err(Invalid::new(format!("{key}.syn_only"), true, "only a tcp port can be syn_only"));
            }
            if !seen.insert((entry.proto, entry.port)) {
                return Err(Invalid::new(
                    format!("{key}.port"),
                    entry.port,
                    "listed twice for the same protocol",
                ));
            }
        }
        if self.ports.len() > throttle_common::MAX_SCOPE as usize {
            return Err(Invalid::new(
                format!("{prefix}.ports"),
                format!("{} entries", self.ports.len()),
                format!("at most {} entries", throttle_common::MAX_SCOPE),
            ));
        }
        Ok(())
    }
}

/// A rule: what to do with the sources of a prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    pub cidr: String,
    pub action: Action,
    /// `limit` only: per source, per second.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<u64>,
    /// `limit` only; defaults to one second's worth of the rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// `limit` only; defaults to packets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<Unit>,
}

impl RuleSpec {
    /// Checks the rule and returns its network.
    pub fn validate(&self, prefix: &str) -> Result<IpNet, Invalid> {
        let net: IpNet = self.cidr.parse().map_err(|_| {
            Invalid::new(
                format!("{prefix}.cidr"),
                format!("{:?}", self.cidr),
                "not an address prefix like 10.0.0.0/8 or 2001:db8::/32",
            )
        })?;
        if net.trunc() != net {
            return Err(Invalid::new(
                format!("{prefix}.cidr"),
                format!("{:?}", self.cidr),
                format!("has host bits set; the prefix is {}", net.trunc()),
            ));
        }
        match self.action {
            Action::Limit => {
                let rate = self.rate.ok_or_else(|| {
                    Invalid::new(format!("{prefix}.rate"), "(missing)", "a limit rule needs a rate")
                })?;
                check_rate(&format!("{prefix}.rate"), rate)?;
                if let Some(burst) = self.burst {
                    check_burst(&format!("{prefix}.burst"), burst)?;
                }
            }
            Action::Allow | Action::Deny => {
                for (field, given) in [
                    ("rate", self.rate.is_some()),
                    ("burst", self.burst.is_some()),
                    ("unit", self.unit.is_some()),
                ] {
                    if given {
                        return Err(Invalid::new(
                            format!("{prefix}.{field}"),
                            "(set)",
                            "only a limit rule takes a rate, a burst or a unit",
                        ));
                    }
                }
            }
        }
        Ok(net)
    }

    /// The rule's limit in kernel form (a `limit` rule only).
    #[must_use]
    pub fn limit(&self) -> throttle_common::Limit {
        let rate = self.rate.unwrap_or(1);
        let burst = self.burst.unwrap_or(rate);
        throttle_common::Limit::new(rate, burst, self.unit.unwrap_or_default().kernel())
    }
}

/// Checks a whole rule set: each rule, and no prefix twice.
pub fn validate_rules(rules: &[RuleSpec], prefix: &str) -> Result<Vec<IpNet>, Invalid> {
    let mut seen = HashSet::new();
    let mut nets = Vec::with_capacity(rules.len());
    for (i, rule) in rules.iter().enumerate() {
        let key = format!("{prefix}[{i}]");
        let net = rule.validate(&key)?;
        if !seen.insert(net) {
            return Err(Invalid::new(
                format!("{key}.cidr"),
                format!("{:?}", rule.cidr),
                "another rule has the same prefix",
            ));
        }
        nets.push(net);
    }
    if nets.len() > throttle_common::MAX_RULES as usize {
        return Err(Invalid::new(
            prefix,
            format!("{} rules", nets.len()),
            format!("at most {} per family", throttle_common::MAX_RULES),
        ));
    }
    Ok(nets)
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
    pub max_sources: Option<u64>,
}

/// The configuration file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FileConfig {
    pub daemon: DaemonSection,
    pub limits: Limits,
    pub scope: Scope,
    pub rules: Vec<RuleSpec>,
    /// The `[adaptive]` section: absent, the controller is not started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adaptive: Option<AdaptiveConfig>,
}

impl FileConfig {
    /// Reads and parses a file (no validation yet).
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        toml::from_str(&text)
            .map_err(|source| ConfigError::Parse { path: path.to_owned(), source: Box::new(source) })
    }
}

/// The policy the data path enforces: limits, scope and rules, validated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub limits: Limits,
    pub scope: Scope,
    pub rules: Vec<RuleSpec>,
}

impl Policy {
    pub fn validate(&self) -> Result<Vec<IpNet>, Invalid> {
        self.limits.validate("limits")?;
        self.scope.validate("scope")?;
        validate_rules(&self.rules, "rules")
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
    /// Per-source rate, per second [default: 1000].
    #[arg(long, value_name = "N")]
    pub rate: Option<u64>,
    /// Per-source burst [default: 1000].
    #[arg(long, value_name = "N")]
    pub burst: Option<u64>,
    /// IPv4 sources are aggregated to this prefix [default: 32].
    #[arg(long, value_name = "N")]
    pub ipv4_prefix: Option<u64>,
    /// IPv6 sources are aggregated to this prefix [default: 64].
    #[arg(long, value_name = "N")]
    pub ipv6_prefix: Option<u64>,
    /// Count what would be dropped, and pass it.
    #[arg(long)]
    pub dry_run: bool,
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
    pub max_sources: Option<u64>,
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
    pub policy: Policy,
    /// The adaptive controller's settings, when the file has `[adaptive]`.
    pub adaptive: Option<AdaptiveConfig>,
}

impl Settings {
    /// The file (if any) under the flags, validated.
    pub fn load(args: &DaemonArgs) -> Result<Self, ConfigError> {
        let file = match &args.config {
            Some(path) => FileConfig::read(path)?,
            None => FileConfig::default(),
        };
        Self::merge(file, args).map_err(|source| match &args.config {
            Some(path) => ConfigError::InvalidInFile { path: path.clone(), source },
            None => ConfigError::Invalid(source),
        })
    }

    /// The file's values under the flags'.
    pub fn merge(file: FileConfig, args: &DaemonArgs) -> Result<Self, Invalid> {
        let FileConfig { daemon, mut limits, scope, rules, adaptive } = file;
        if let Some(rate) = args.rate {
            limits.rate = rate;
        }
        if let Some(burst) = args.burst {
            limits.burst = burst;
        }
        if let Some(prefix) = args.ipv4_prefix {
            limits.ipv4_prefix = prefix;
        }
        if let Some(prefix) = args.ipv6_prefix {
            limits.ipv6_prefix = prefix;
        }
        limits.dry_run |= args.dry_run;
        let policy = Policy { limits, scope, rules };
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
        let max_sources = args
            .max_sources
            .or(daemon.max_sources)
            .unwrap_or(u64::from(throttle_common::DEFAULT_MAX_SOURCES));
        if !(MIN_SOURCES..=MAX_SOURCES_LIMIT).contains(&max_sources) {
            return Err(Invalid::new(
                "daemon.max_sources",
                max_sources,
                format!("must be between {MIN_SOURCES} and {MAX_SOURCES_LIMIT}"),
            ));
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
            max_sources: max_sources as u32,
            policy,
            adaptive,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_are_named_as_they_are_spelled() {
        for unit in [Unit::Packets, Unit::Bytes] {
            assert_eq!(serde_json::to_string(&unit).expect("serializes"), format!("\"{}\"", unit.name()));
        }
    }

    fn parse(text: &str) -> Result<Settings, String> {
        let file: FileConfig = toml::from_str(text).map_err(|e| e.to_string())?;
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
        assert_eq!(settings.policy.limits.unit, Unit::Bytes);
        assert_eq!(settings.policy.scope.ports.len(), 2);
        assert_eq!(settings.policy.rules[0].limit().burst(), 100);
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

    #[test]
    fn flags_override_the_file() {
        let file: FileConfig = toml::from_str("[limits]\nrate = 5\nburst = 9\n").unwrap();
        let args = DaemonArgs { rate: Some(7), interfaces: vec!["veth1".into()], ..DaemonArgs::default() };
        let settings = Settings::merge(file, &args).unwrap();
        assert_eq!(settings.policy.limits.rate, 7);
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
    fn unknown_keys_and_bad_types_are_refused_with_their_line() {
        for (text, needle) in [
            ("[limits]\nrat = 5", "unknown field `rat`"),
            ("[limits]\nunit = \"furlongs\"", "unknown variant `furlongs`"),
            ("[[rules]]\ncidr = \"10.0.0.0/8\"\naction = \"block\"", "unknown variant `block`"),
            ("[scope]\nports = [{ proto = \"icmp\", port = 1 }]", "unknown variant `icmp`"),
            ("[limits]\nrate = -1", "line 2"),
            ("[nonsense]", "unknown field `nonsense`"),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(needle), "{text:?}: {err:?} lacks {needle:?}");
        }
    }
}
