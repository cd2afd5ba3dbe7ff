//! The XDP program and its maps, from user space: load, attach, write the
//! policy, read the counters and the buckets.

use std::{collections::HashSet, net::IpAddr};

use aya::{
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray},
    programs::{ProgramError, Xdp, XdpMode as AyaXdpMode},
    Ebpf, EbpfError, EbpfLoader,
};
use ipnet::IpNet;
use throttle_common::{
    flags, ipv4_mask, ipv6_mask, map_name, reason, Bucket, BucketKey, Config, Limit, Rule, ScopeEntry,
    ScopeKey, ACTION_ALLOW, ACTION_DENY, ACTION_LIMIT, FAMILY_V4, FAMILY_V6, LAYOUT_VERSION, PROGRAM_NAME,
};

use crate::config::{Action, Policy, XdpMode};

/// The XDP object, built for the BPF target by `build.rs`.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/throttle-ebpf"));

/// The reader of the program's log records.
pub type ProgramLogger = aya_log::EbpfLogger<&'static dyn log::Log>;

/// What can go wrong between the daemon and the kernel.
#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("loading the XDP object: {0}")]
    Load(#[from] EbpfError),
    #[error("the XDP object has no {what} named {name}")]
    Missing { what: &'static str, name: &'static str },
    #[error("the XDP program: {0}")]
    Program(#[from] ProgramError),
    #[error("map {map}: {source}")]
    Map { map: &'static str, source: MapError },
    #[error("attaching to {iface} in {mode} mode: {source}")]
    Attach { iface: String, mode: &'static str, source: ProgramError },
    #[error("a rule has no id")]
    RuleWithoutId,
}

fn map_err(map: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { map, source }
}

/// An attachment of the program to an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub iface: String,
    /// "native" or "generic": what the kernel accepted.
    pub mode: &'static str,
}

/// A rule as the data path holds it: its id and what it says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelRule {
    pub id: u32,
    pub net: IpNet,
    pub action: Action,
    pub limit: Limit,
}

/// The loaded program and typed handles on its maps.
pub struct Dataplane {
    ebpf: Ebpf,
    config: Array<MapData, Config>,
    rules_v4: LpmTrie<MapData, [u8; 4], Rule>,
    rules_v6: LpmTrie<MapData, [u8; 16], Rule>,
    scope: HashMap<MapData, ScopeKey, ScopeEntry>,
    buckets: HashMap<MapData, BucketKey, Bucket>,
    counters: PerCpuArray<MapData, u64>,
    logger: Option<ProgramLogger>,
    attachments: Vec<Attachment>,
    version: u64,
}

fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DataplaneError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(DataplaneError::Missing { what: "map", name })?;
    T::try_from(map).map_err(map_err(name))
}

impl Dataplane {
    /// Loads the program into the kernel with a bucket map of `max_sources`
    /// entries. Nothing is attached yet.
    pub fn load(max_sources: u32) -> Result<Self, DataplaneError> {
        let mut ebpf = EbpfLoader::new().map_max_entries(map_name::BUCKETS, max_sources).load(OBJECT)?;
        let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
            Ok(logger) => Some(logger),
            Err(err) => {
                // The program logs only rare events; run without them.
                tracing::debug!("no eBPF logger: {err}");
                None
            }
        };
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(DataplaneError::Missing { what: "program", name: PROGRAM_NAME })?
            .try_into()?;
        program.load()?;
        Ok(Self {
            config: take(&mut ebpf, map_name::CONFIG)?,
            rules_v4: take(&mut ebpf, map_name::RULES_V4)?,
            rules_v6: take(&mut ebpf, map_name::RULES_V6)?,
            scope: take(&mut ebpf, map_name::SCOPE)?,
            buckets: take(&mut ebpf, map_name::BUCKETS)?,
            counters: take(&mut ebpf, map_name::COUNTERS)?,
            ebpf,
            logger,
            attachments: Vec::new(),
            version: 0,
        })
    }

    /// The reader of the program's log records (rare events only), for the
    /// daemon to poll.
    pub fn take_logger(&mut self) -> Option<ProgramLogger> {
        self.logger.take()
    }

    /// The XDP program, for `test_run`.
    #[must_use]
    pub fn program(&self) -> &Xdp {
        self.ebpf
            .program(PROGRAM_NAME)
            .and_then(|p| <&Xdp>::try_from(p).ok())
            .expect("the program was checked at load")
    }

    fn program_mut(&mut self) -> &mut Xdp {
        self.ebpf
            .program_mut(PROGRAM_NAME)
            .and_then(|p| <&mut Xdp>::try_from(p).ok())
            .expect("the program was checked at load")
    }

    /// Attaches to `iface`. In auto mode, native first and generic when the
    /// driver refuses; the mode obtained is returned and kept.
    pub fn attach(&mut self, iface: &str, mode: XdpMode) -> Result<&Attachment, DataplaneError> {
        let attempts: &[(AyaXdpMode, &'static str)] = match mode {
            XdpMode::Auto => &[(AyaXdpMode::Driver, "native"), (AyaXdpMode::Skb, "generic")],
            XdpMode::Native => &[(AyaXdpMode::Driver, "native")],
            XdpMode::Generic => &[(AyaXdpMode::Skb, "generic")],
        };
        let mut last = None;
        for &(aya_mode, name) in attempts {
            match self.program_mut().attach(iface, aya_mode) {
                Ok(_) => {
                    self.attachments.push(Attachment { iface: iface.to_owned(), mode: name });
                    return Ok(self.attachments.last().expect("just pushed"));
                }
                Err(source @ ProgramError::UnknownInterface { .. }) => {
                    return Err(DataplaneError::Attach { iface: iface.to_owned(), mode: name, source });
                }
                Err(source) => {
                    if last.is_some() || attempts.len() == 1 {
                        return Err(DataplaneError::Attach { iface: iface.to_owned(), mode: name, source });
                    }
                    tracing::info!(iface, "native XDP refused ({source}); trying generic");
                    last = Some(source);
                }
            }
        }
        unreachable!("every attempt returns")
    }

    /// Where the program is attached.
    #[must_use]
    pub fn attachments(&self) -> &[Attachment] {
        &self.attachments
    }

    /// The version of the configuration last written.
    #[must_use]
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Writes `policy` to the maps: new and changed rules and scope entries
    /// first, then the global settings, then the removal of what is no
    /// longer there. Buckets are never touched: every source keeps its state.
    pub fn apply(&mut self, policy: &Policy, rules: &[KernelRule]) -> Result<(), DataplaneError> {
        let mut config_flags = 0;
        // Scope.
        let mut scope_keys = HashSet::new();
        for entry in &policy.scope.ports {
            let key = ScopeKey { port: entry.port as u16, proto: entry.proto.number(), _pad: 0 };
            let value = ScopeEntry { syn_only: u32::from(entry.syn_only) };
            self.scope.insert(key, value, 0).map_err(map_err(map_name::SCOPE))?;
            scope_keys.insert(key);
            config_flags |= flags::SCOPE
                | match entry.proto {
                    crate::config::Proto::Tcp => flags::SCOPE_TCP,
                    crate::config::Proto::Udp => flags::SCOPE_UDP,
                };
        }
        // Rules.
        let mut v4 = HashSet::new();
        let mut v6 = HashSet::new();
        for rule in rules {
            let value = Rule {
                limit: rule.limit,
                action: match rule.action {
                    Action::Allow => ACTION_ALLOW,
                    Action::Deny => ACTION_DENY,
                    Action::Limit => ACTION_LIMIT,
                },
                id: rule.id,
            };
            match rule.net {
                IpNet::V4(net) => {
                    let key = Key::new(u32::from(net.prefix_len()), net.addr().octets());
                    self.rules_v4.insert(&key, value, 0).map_err(map_err(map_name::RULES_V4))?;
                    v4.insert((net.prefix_len(), net.addr().octets()));
                    config_flags |= flags::RULES_V4;
                }
                IpNet::V6(net) => {
                    let key = Key::new(u32::from(net.prefix_len()), net.addr().octets());
                    self.rules_v6.insert(&key, value, 0).map_err(map_err(map_name::RULES_V6))?;
                    v6.insert((net.prefix_len(), net.addr().octets()));
                    config_flags |= flags::RULES_V6;
                }
            }
        }
        // Global settings.
        let limits = &policy.limits;
        if limits.dry_run {
            config_flags |= flags::DRY_RUN;
        }
        if limits.new_source_rate > 0 {
            config_flags |= flags::NEW_SOURCE_LIMIT;
        }
        self.version += 1;
        let config = Config {
            version: self.version,
            layout: LAYOUT_VERSION,
            flags: config_flags,
            default_limit: Limit::new(limits.rate, limits.burst, limits.unit.kernel()),
            new_source_limit: Limit::new(
                limits.new_source_rate,
                limits.new_source_burst,
                throttle_common::UNIT_PACKETS,
            ),
            ipv4_mask: ipv4_mask(limits.ipv4_prefix as u8),
            _pad: 0,
            ipv6_mask: ipv6_mask(limits.ipv6_prefix as u8),
        };
        self.config.set(0, config, 0).map_err(map_err(map_name::CONFIG))?;
        // Removals, now that nothing refers to them.
        let stale: Vec<ScopeKey> =
            self.scope.keys().filter_map(Result::ok).filter(|k| !scope_keys.contains(k)).collect();
        for key in stale {
            self.scope.remove(&key).map_err(map_err(map_name::SCOPE))?;
        }
        let stale: Vec<Key<[u8; 4]>> = self
            .rules_v4
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !v4.contains(&(k.prefix_len() as u8, k.data())))
            .collect();
        for key in stale {
            self.rules_v4.remove(&key).map_err(map_err(map_name::RULES_V4))?;
        }
        let stale: Vec<Key<[u8; 16]>> = self
            .rules_v6
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !v6.contains(&(k.prefix_len() as u8, k.data())))
            .collect();
        for key in stale {
            self.rules_v6.remove(&key).map_err(map_err(map_name::RULES_V6))?;
        }
        Ok(())
    }

    /// The verdict counters, summed over the CPUs, by [`reason`] slot.
    pub fn counters(&self) -> Result<[u64; reason::COUNT as usize], DataplaneError> {
        let mut out = [0u64; reason::COUNT as usize];
        for (slot, total) in out.iter_mut().enumerate() {
            let values = self.counters.get(&(slot as u32), 0).map_err(map_err(map_name::COUNTERS))?;
            *total = values.iter().sum();
        }
        Ok(out)
    }

    /// The bucket of `key`, if tracked.
    pub fn bucket(&self, key: &BucketKey) -> Result<Option<Bucket>, DataplaneError> {
        match self.buckets.get(key, 0) {
            Ok(bucket) => Ok(Some(bucket)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(DataplaneError::Map { map: map_name::BUCKETS, source }),
        }
    }

    /// Every tracked bucket.
    pub fn buckets(&self) -> impl Iterator<Item = (BucketKey, Bucket)> + '_ {
        self.buckets.iter().filter_map(Result::ok)
    }
}

/// The bucket key of `addr` under the default limit, masked as `policy` says.
#[must_use]
pub fn bucket_key(addr: IpAddr, rule: u32, ipv4_prefix: u8, ipv6_prefix: u8) -> BucketKey {
    match addr {
        IpAddr::V4(a) => BucketKey {
            addr: [u32::from_ne_bytes(a.octets()) & ipv4_mask(ipv4_prefix), 0, 0, 0],
            rule,
            family: FAMILY_V4,
        },
        IpAddr::V6(a) => {
            let o = a.octets();
            let m = ipv6_mask(ipv6_prefix);
            let word =
                |i: usize| u32::from_ne_bytes([o[i * 4], o[i * 4 + 1], o[i * 4 + 2], o[i * 4 + 3]]) & m[i];
            BucketKey { addr: [word(0), word(1), word(2), word(3)], rule, family: FAMILY_V6 }
        }
    }
}
