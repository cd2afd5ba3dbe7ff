//! The scope: which traffic the limits apply to.

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use super::{
    invalid::{check_range, key},
    narrow::port,
    Invalid,
};

/// Most entries of the scope.
pub const MAX_SCOPE: usize = throttle_common::MAX_SCOPE as usize;

/// A transport protocol of the scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    /// The IP protocol number.
    #[must_use]
    pub const fn number(self) -> u8 {
        match self {
            Self::Tcp => throttle_common::PROTO_TCP,
            Self::Udp => throttle_common::PROTO_UDP,
        }
    }

    /// As the configuration and the API spell it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
        }
    }
}

/// One entry of the scope: a protocol and destination port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ScopePort {
    pub proto: Proto,
    #[serde(deserialize_with = "port")]
    pub port: u16,
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
            let at = format!("{}[{i}]", key(prefix, "ports"));
            check_range(&key(&at, "port"), entry.port, 1, u16::MAX)?;
            if entry.syn_only && entry.proto != Proto::Tcp {
                return Err(Invalid::new(key(&at, "syn_only"), true, "only a tcp port can be syn_only"));
            }
            if !seen.insert((entry.proto, entry.port)) {
                return Err(Invalid::new(key(&at, "port"), entry.port, "listed twice for the same protocol"));
            }
        }
        if self.ports.len() > MAX_SCOPE {
            return Err(Invalid::new(
                key(prefix, "ports"),
                format!("{} entries", self.ports.len()),
                format!("at most {MAX_SCOPE} entries"),
            ));
        }
        Ok(())
    }
}
