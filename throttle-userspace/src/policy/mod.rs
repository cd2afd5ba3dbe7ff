//! The policy: the domain types every other layer speaks (limits, rules,
//! scope), each as narrow as its values, and their validation.
//!
//! Nothing here knows about the kernel, HTTP or the file format: the TOML
//! file, the API's bodies and the client's requests are these types,
//! deserialized through [`parse`] so that a refused value names its key.

mod classes;
mod invalid;
mod limits;
mod narrow;
mod prefix;
mod rate;
mod rules;
mod scope;
mod sets;

use serde::{Deserialize, Serialize};

#[cfg(test)]
pub use self::classes::classes_from_toml;
pub use self::{
    classes::{
        validate_classes, Ban, Class, ClassLimit, ClassName, Match, Name, PortRange, Ports, SetName, Span,
        Tier, Unmatched, UnmatchedAction, MAX_CLASSES, MAX_CLASS_LIMITS, MAX_TIERS,
    },
    invalid::{
        check_burst, check_f64, check_fraction, check_open, check_range, check_rate, key, parse, refuse,
        Invalid, ParseError,
    },
    limits::{
        Limits, LimitsPatch, Unit, DEFAULT_BURST, DEFAULT_IPV4_PREFIX, DEFAULT_IPV6_PREFIX,
        DEFAULT_NEW_SOURCE_RATE, DEFAULT_RATE,
    },
    prefix::{parse_addr, parse_prefix, BadPrefix},
    rate::{BadRate, Period, Rate},
    rules::{validate_rules, Action, RuleLimit, RuleSpec, Target, MAX_RULES},
    scope::{Proto, Scope, ScopePort, MAX_SCOPE},
    sets::{
        parse as parse_set, validate_sets, Parsed, Refused, SetContent, SetSpec, MAX_SETS, MAX_SET_PREFIXES,
    },
};

/// The policy the data path enforces: the default class (`[limits]`, which
/// meters what `[scope]` names), the limit classes, what no class matches,
/// the IP sets (their names and sources; their prefixes are loaded beside
/// the policy) and the rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    pub limits: Limits,
    pub scope: Scope,
    pub classes: Vec<Class>,
    pub unmatched: Unmatched,
    pub sets: Vec<SetSpec>,
    pub rules: Vec<RuleSpec>,
}

impl Policy {
    /// Checks every section, naming the key of the first bad value.
    pub fn validate(&self) -> Result<(), Invalid> {
        self.limits.validate("limits")?;
        self.scope.validate("scope")?;
        validate_classes(&self.classes, &self.scope, "classes")?;
        validate_sets(&self.sets, "sets")?;
        validate_rules(&self.rules, &self.sets, "rules")
    }
}
