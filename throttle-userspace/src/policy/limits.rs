//! The default limit and the settings every source shares, and the patch
//! that changes some of them.

use serde::{Deserialize, Serialize};

use super::{
    invalid::{check_burst, check_range, check_rate, key},
    narrow::{prefix_len, some_prefix_len},
    rate::Rate,
    Invalid,
};

/// Default per-source rate, per second.
pub const DEFAULT_RATE: u64 = 1_000;
/// Default per-source burst.
pub const DEFAULT_BURST: u64 = 1_000;
/// Default global budget of first-seen sources, per second (and burst).
pub const DEFAULT_NEW_SOURCE_RATE: u64 = 10_000;
/// Default aggregation prefix of IPv4 sources: each address on its own.
pub const DEFAULT_IPV4_PREFIX: u8 = 32;
/// Default aggregation prefix of IPv6 sources: one host owns a /64.
pub const DEFAULT_IPV6_PREFIX: u8 = 64;

/// What a limit counts.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, clap::ValueEnum,
)]
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
}

/// The default limit and the settings every source shares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Per source: a number per second, or `"N/second|minute|hour|day"`.
    pub rate: Rate,
    /// Units a source may send at once after a quiet spell.
    pub burst: u64,
    pub unit: Unit,
    /// Sources are aggregated to this prefix (IPv4).
    #[serde(deserialize_with = "prefix_len")]
    pub ipv4_prefix: u8,
    /// Sources are aggregated to this prefix (IPv6: one host owns a /64).
    #[serde(deserialize_with = "prefix_len")]
    pub ipv6_prefix: u8,
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
            rate: Rate::per_second(DEFAULT_RATE),
            burst: DEFAULT_BURST,
            unit: Unit::Packets,
            ipv4_prefix: DEFAULT_IPV4_PREFIX,
            ipv6_prefix: DEFAULT_IPV6_PREFIX,
            dry_run: false,
            new_source_rate: DEFAULT_NEW_SOURCE_RATE,
            new_source_burst: DEFAULT_NEW_SOURCE_RATE,
        }
    }
}

impl Limits {
    /// Checks every field; `prefix` names the section (`limits`).
    pub fn validate(&self, prefix: &str) -> Result<(), Invalid> {
        check_rate(&key(prefix, "rate"), self.rate, self.unit)?;
        check_burst(&key(prefix, "burst"), self.burst)?;
        check_range(&key(prefix, "ipv4_prefix"), self.ipv4_prefix, 1, 32)?;
        check_range(&key(prefix, "ipv6_prefix"), self.ipv6_prefix, 1, 128)?;
        if self.new_source_rate != 0 {
            check_rate(
                &key(prefix, "new_source_rate"),
                Rate::per_second(self.new_source_rate),
                Unit::Packets,
            )?;
            check_burst(&key(prefix, "new_source_burst"), self.new_source_burst)?;
        }
        Ok(())
    }
}

/// Some fields of [`Limits`]: what `PATCH /v1/limits` and `throttle limits
/// set` send, the flags of `throttle daemon` over the configuration file,
/// and what the state file keeps (unset fields come from the file).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, clap::Args,
)]
#[serde(deny_unknown_fields)]
pub struct LimitsPatch {
    /// Per-source rate: a number per second, or N/second|minute|hour|day
    /// [default: 1000].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[arg(long, value_name = "RATE")]
    pub rate: Option<Rate>,
    /// Per-source burst: units a source may send at once [default: 1000].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[arg(long, value_name = "N")]
    pub burst: Option<u64>,
    /// What a limit counts [default: packets].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[arg(long, value_enum, value_name = "UNIT")]
    pub unit: Option<Unit>,
    /// IPv4 sources are aggregated to this prefix [default: 32].
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "some_prefix_len")]
    #[arg(long, value_name = "N")]
    pub ipv4_prefix: Option<u8>,
    /// IPv6 sources are aggregated to this prefix [default: 64].
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "some_prefix_len")]
    #[arg(long, value_name = "N")]
    pub ipv6_prefix: Option<u8>,
    /// Count what would be dropped, and pass it (`--dry-run`, or
    /// `--dry-run false` to stop).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    pub dry_run: Option<bool>,
    /// Global budget of first-seen sources per second; 0 turns it off
    /// [default: 10000].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[arg(long, value_name = "N")]
    pub new_source_rate: Option<u64>,
    /// Burst of the first-seen budget [default: 10000].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[arg(long, value_name = "N")]
    pub new_source_burst: Option<u64>,
}

impl LimitsPatch {
    /// Every field of `limits`.
    #[must_use]
    pub fn all(limits: &Limits) -> Self {
        Self {
            rate: Some(limits.rate),
            burst: Some(limits.burst),
            unit: Some(limits.unit),
            ipv4_prefix: Some(limits.ipv4_prefix),
            ipv6_prefix: Some(limits.ipv6_prefix),
            dry_run: Some(limits.dry_run),
            new_source_rate: Some(limits.new_source_rate),
            new_source_burst: Some(limits.new_source_burst),
        }
    }

    /// `base` with the fields of this patch over it.
    #[must_use]
    pub fn over(&self, base: &Limits) -> Limits {
        Limits {
            rate: self.rate.unwrap_or(base.rate),
            burst: self.burst.unwrap_or(base.burst),
            unit: self.unit.unwrap_or(base.unit),
            ipv4_prefix: self.ipv4_prefix.unwrap_or(base.ipv4_prefix),
            ipv6_prefix: self.ipv6_prefix.unwrap_or(base.ipv6_prefix),
            dry_run: self.dry_run.unwrap_or(base.dry_run),
            new_source_rate: self.new_source_rate.unwrap_or(base.new_source_rate),
            new_source_burst: self.new_source_burst.unwrap_or(base.new_source_burst),
        }
    }

    /// This patch with the fields of `newer` over it.
    #[must_use]
    pub fn then(&self, newer: &Self) -> Self {
        Self {
            rate: newer.rate.or(self.rate),
            burst: newer.burst.or(self.burst),
            unit: newer.unit.or(self.unit),
            ipv4_prefix: newer.ipv4_prefix.or(self.ipv4_prefix),
            ipv6_prefix: newer.ipv6_prefix.or(self.ipv6_prefix),
            dry_run: newer.dry_run.or(self.dry_run),
            new_source_rate: newer.new_source_rate.or(self.new_source_rate),
            new_source_burst: newer.new_source_burst.or(self.new_source_burst),
        }
    }

    /// Whether it sets nothing.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
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

    #[test]
    fn a_patch_overlays_only_its_fields() {
        let base = Limits::default();
        let patch = LimitsPatch { burst: Some(7), ..LimitsPatch::default() };
        let limits = patch.over(&base);
        assert_eq!((limits.rate, limits.burst), (base.rate, 7));
        let three = Rate::per_second(3);
        let both = patch.then(&LimitsPatch { rate: Some(three), ..LimitsPatch::default() });
        assert_eq!((both.rate, both.burst), (Some(three), Some(7)));
        assert_eq!(LimitsPatch::all(&base).over(&Limits { rate: Rate::per_second(1), ..base.clone() }), base);
    }
}
