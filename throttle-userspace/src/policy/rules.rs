//! Rules: what to do with the sources of a prefix.

use std::collections::HashSet;

use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};

use super::{
    invalid::{check_burst, check_rate, key, refuse},
    Invalid, Rate, Unit,
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

/// A rule: what to do with the sources of a prefix. The body of `POST
/// /v1/rules` and the arguments of `throttle rules add`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct RuleSpec {
    /// An address prefix without host bits: `10.0.0.0/8`, `2001:db8::/32`.
    #[serde(deserialize_with = "prefix")]
    #[schema(value_type = String, example = "10.0.0.0/8")]
    #[arg(value_name = "CIDR")]
    pub cidr: IpNet,
    /// `allow`, `deny` or `limit`.
    #[arg(value_enum, value_name = "ACTION")]
    pub action: Action,
    /// `limit` only: per source, a number per second or
    /// `N/second|minute|hour|day`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[arg(long, value_name = "RATE")]
    pub rate: Option<Rate>,
    /// `limit` only; defaults to one period's worth of the rate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[arg(long, value_name = "N")]
    pub burst: Option<u64>,
    /// `limit` only; defaults to packets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[arg(long, value_enum, value_name = "UNIT")]
    pub unit: Option<Unit>,
}

/// An address prefix, refused by its key when it is none.
fn prefix<'de, D: Deserializer<'de>>(deserializer: D) -> Result<IpNet, D::Error> {
    let text = String::deserialize(deserializer)?;
    text.parse().map_err(|_| {
        refuse::<D::Error>(format!("{text:?}"), "not an address prefix like 10.0.0.0/8 or 2001:db8::/32")
    })
}

/// A rule's limit, with the defaults filled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RuleLimit {
    pub rate: Rate,
    pub burst: u64,
    pub unit: Unit,
}

impl RuleSpec {
    /// A rule without a limit.
    #[must_use]
    pub fn new(cidr: IpNet, action: Action) -> Self {
        Self { cidr, action, rate: None, burst: None, unit: None }
    }

    /// Checks the rule.
    pub fn validate(&self, prefix: &str) -> Result<(), Invalid> {
        if self.cidr.trunc() != self.cidr {
            return Err(Invalid::new(
                key(prefix, "cidr"),
                format!("{:?}", self.cidr.to_string()),
                format!("has host bits set; the prefix is {}", self.cidr.trunc()),
            ));
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

/// Checks a whole rule set: each rule, no prefix twice, and no more than a
/// trie holds.
pub fn validate_rules(rules: &[RuleSpec], prefix: &str) -> Result<(), Invalid> {
    let mut seen = HashSet::new();
    for (i, rule) in rules.iter().enumerate() {
        let at = format!("{prefix}[{i}]");
        rule.validate(&at)?;
        if !seen.insert(rule.cidr) {
            return Err(Invalid::new(
                key(&at, "cidr"),
                format!("{:?}", rule.cidr.to_string()),
                "another rule has the same prefix",
            ));
        }
    }
    for (family, v6) in [("IPv4", false), ("IPv6", true)] {
        let count = rules.iter().filter(|r| matches!(r.cidr, IpNet::V6(_)) == v6).count();
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
