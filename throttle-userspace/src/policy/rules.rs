//! Rules: what to do with the sources of a prefix or of a set.

use std::{collections::HashSet, fmt, str::FromStr};

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};

use super::{
    invalid::{check_burst, check_rate, key, refuse},
    parse_prefix, BadPrefix, Invalid, Rate, SetName, SetSpec, Unit,
};

/// Most rules per address family (the capacity of each rule trie).
pub const MAX_RULES: usize = throttle_common::MAX_RULES as usize;

/// The action of a rule.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Pass everything from the prefix, unmetered.
    Allow,
    /// Drop everything from the prefix.
    Deny,
    /// Meter every source of the prefix at the rule's own rate and burst.
    Limit,
}

impl Action {
    /// As the configuration and the API spell it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Allow => "allow",
            Self::Deny => "deny",
            Self::Limit => "limit",
        }
    }
}

/// What a rule applies to: the sources of a prefix, or of a set.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    Cidr(IpNet),
    Set(SetName),
}

impl Target {
    /// The key a rule names it under (`cidr` or `set`) and its value as an
    /// error quotes it.
    #[must_use]
    pub fn key_and_value(&self) -> (&'static str, String) {
        match self {
            Self::Cidr(net) => ("cidr", format!("{:?}", net.to_string())),
            Self::Set(name) => ("set", format!("{:?}", name.as_str())),
        }
    }

    /// A set target must name one of `sets`; `at` is the rule's key.
    pub fn check_known(&self, sets: &[SetSpec], at: &str) -> Result<(), Invalid> {
        match self {
            Self::Set(name) if !sets.iter().any(|s| &s.name == name) => {
                let (field, value) = self.key_and_value();
                Err(Invalid::new(
                    key(at, field),
                    value,
                    "no set has that name: the sets are listed by GET /v1/sets",
                ))
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Target {
    /// As the CLI takes it: `10.0.0.0/8`, or `@blocklist` for a set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cidr(net) => write!(f, "{net}"),
            Self::Set(name) => write!(f, "@{name}"),
        }
    }
}

impl FromStr for Target {
    type Err = String;

    /// A prefix, or `@NAME` for a set (as nftables writes a set).
    fn from_str(text: &str) -> Result<Self, String> {
        if let Some(name) = text.strip_prefix('@') {
            return name.parse().map(Self::Set).map_err(|err: Invalid| err.to_string());
        }
        parse_prefix(text).map(Self::Cidr).map_err(|err| match err {
            BadPrefix::LeadingZero { .. } => format!("{text:?} {err}"),
            BadPrefix::Malformed => {
                format!("{text:?} is not an address prefix like 10.0.0.0/8 or a set like @blocklist")
            }
        })
    }
}

/// A rule: what to do with the sources of a prefix or of a set. The body
/// of `POST /v1/rules`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// An address prefix without host bits: `10.0.0.0/8`, `2001:db8::/32`.
    #[serde(default, deserialize_with = "prefix", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, example = "10.0.0.0/8", pattern = "^((25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])(\\.(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])){3}/(3[0-2]|[12]?[0-9])|[0-9A-Fa-f:.]*:[0-9A-Fa-f:.]*/(12[0-8]|1[01][0-9]|[1-9]?[0-9]))$")]
    pub cidr: Option<IpNet>,
    /// Or the name of a set (`[[sets]]`, `/v1/sets`): the sources in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub set: Option<SetName>,
    /// `allow`, `deny` or `limit`.
    pub action: Action,
    /// `limit` only: per source, a number per second or
    /// `N/second|minute|hour|day`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate: Option<Rate>,
    /// `limit` only; defaults to one period's worth of the rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// `limit` only; defaults to packets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unit: Option<Unit>,
}

/// An address prefix, refused by its key when it is none.
fn prefix<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<IpNet>, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_prefix(&text).map(Some).map_err(|err| refuse::<D::Error>(format!("{text:?}"), err))
}

/// A rule's limit, with the defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleLimit {
    pub rate: Rate,
    pub burst: u64,
    pub unit: Unit,
}

impl RuleSpec {
    /// A rule of a prefix, without a limit.
    #[must_use]
    pub fn new(cidr: IpNet, action: Action) -> Self {
        Self::of(Target::Cidr(cidr), action)
    }

    /// A rule of a prefix or a set, without a limit.
    #[must_use]
    pub fn of(target: Target, action: Action) -> Self {
        let (cidr, set) = match target {
            Target::Cidr(net) => (Some(net), None),
            Target::Set(name) => (None, Some(name)),
        };
        Self { cidr, set, action, rate: None, burst: None, unit: None }
    }

    /// What the rule applies to; `None` until it validates.
    #[must_use]
    pub fn target(&self) -> Option<Target> {
        match (&self.cidr, &self.set) {
            (Some(net), None) => Some(Target::Cidr(*net)),
            (None, Some(name)) => Some(Target::Set(name.clone())),
            _ => None,
        }
    }

    /// Checks the rule.
    pub fn validate(&self, prefix: &str) -> Result<(), Invalid> {
        match (&self.cidr, &self.set) {
            (None, None) => {
                return Err(Invalid::new(
                    key(prefix, "cidr"),
                    "(missing)",
                    "a rule names a `cidr` or a `set`",
                ));
            }
            (Some(_), Some(_)) => {
                return Err(Invalid::new(
                    key(prefix, "set"),
                    "(set)",
                    "a rule names a `cidr` or a `set`, not both",
                ));
            }
            (Some(cidr), None) if cidr.trunc() != *cidr => {
                return Err(Invalid::new(
                    key(prefix, "cidr"),
                    format!("{:?}", cidr.to_string()),
                    format!("has host bits set; the prefix is {}", cidr.trunc()),
                ));
            }
            _ => {}
        }
        match self.action {
            Action::Limit => {
                let rate = self.rate.ok_or_else(|| {
                    Invalid::new(key(prefix, "rate"), "(missing)", "a limit rule needs a rate")
                })?;
                check_rate(&key(prefix, "rate"), rate, self.unit.unwrap_or_default())?;
                if let Some(burst) = self.burst {
                    check_burst(&key(prefix, "burst"), burst)?;
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
                            key(prefix, field),
                            "(set)",
                            "only a limit rule takes a rate, a burst or a unit",
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The rule's limit (a `limit` rule only): the burst defaults to one
    /// period's worth of the rate, the unit to packets.
    #[must_use]
    pub fn limit(&self) -> Option<RuleLimit> {
        if self.action != Action::Limit {
            return None;
        }
        let rate = self.rate.unwrap_or(Rate::per_second(1));
        Some(RuleLimit {
            rate,
            burst: self.burst.unwrap_or(rate.default_burst()),
            unit: self.unit.unwrap_or_default(),
        })
    }
}

/// Checks a whole rule set: each rule, no prefix or set twice, every set
/// one of `sets`, and no more than a trie holds.
pub fn validate_rules(rules: &[RuleSpec], sets: &[SetSpec], prefix: &str) -> Result<(), Invalid> {
    let mut seen = HashSet::new();
    for (i, rule) in rules.iter().enumerate() {
        let at = format!("{prefix}[{i}]");
        rule.validate(&at)?;
        let target = rule.target().expect("validated");
        target.check_known(sets, &at)?;
        let (field, value) = target.key_and_value();
        if !seen.insert(target) {
            let what = if field == "cidr" { "prefix" } else { "set" };
            return Err(Invalid::new(key(&at, field), value, format!("another rule has the same {what}")));
        }
    }
    for (family, v6) in [("IPv4", false), ("IPv6", true)] {
        let count = rules.iter().filter(|r| r.cidr.is_some_and(|c| matches!(c, IpNet::V6(_)) == v6)).count();
        if count > MAX_RULES {
            return Err(Invalid::new(
                prefix,
                format!("{count} {family} rules"),
                format!("at most {MAX_RULES} per family"),
            ));
        }
    }
    Ok(())
}
