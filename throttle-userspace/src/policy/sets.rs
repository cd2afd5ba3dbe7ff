//! IP sets: named lists of prefixes (threat feeds, allow lists) that rules
//! name, in the form of `FireHOL`'s `.netset` and `.ipset` files: one address or prefix a
//! line, `#` (and `;`) comments.

use std::{collections::HashSet, net::IpAddr, path::PathBuf};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use serde::{Deserialize, Serialize};

use super::{invalid::key, Invalid, SetName};

/// Most sets.
pub const MAX_SETS: usize = throttle_common::MAX_SETS as usize;
/// Most prefixes of one set.
pub const MAX_SET_PREFIXES: usize = throttle_common::MAX_SET_PREFIXES as usize;
/// How many refused lines a load names.
pub const REFUSED_SHOWN: usize = 10;

/// A set as the configuration names it: `[[sets]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetSpec {
    pub name: SetName,
    /// The file it is read from (and read again on SIGHUP); none: it was
    /// loaded through the API and is kept in the state directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>)]
    pub file: Option<PathBuf>,
}

/// The prefixes of a set, each family sorted and without duplicates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SetContent {
    pub v4: Vec<Ipv4Net>,
    pub v6: Vec<Ipv6Net>,
}

impl SetContent {
    /// The content of these prefixes.
    #[must_use]
    pub fn new(mut v4: Vec<Ipv4Net>, mut v6: Vec<Ipv6Net>) -> Self {
        v4.sort_unstable();
        v4.dedup();
        v6.sort_unstable();
        v6.dedup();
        Self { v4, v6 }
    }

    /// Prefixes of both families.
    #[must_use]
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a prefix of the set holds `addr`.
    #[must_use]
    pub fn contains(&self, addr: IpAddr) -> bool {
        match addr {
            IpAddr::V4(a) => self.v4.iter().any(|net| net.contains(&a)),
            IpAddr::V6(a) => self.v6.iter().any(|net| net.contains(&a)),
        }
    }

    /// Checks the size of the set named at `at`.
    pub fn validate(&self, at: &str) -> Result<(), Invalid> {
        if self.len() > MAX_SET_PREFIXES {
            return Err(Invalid::new(
                at,
                format!("{} prefixes", self.len()),
                format!("a set holds at most {MAX_SET_PREFIXES}"),
            ));
        }
        Ok(())
    }
}

/// A line that was not loaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Refused {
    /// From 1.
    pub line: usize,
    pub text: String,
    pub reason: String,
}

/// A set read from its text: the prefixes it holds and the lines refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Parsed {
    pub content: SetContent,
    /// How many lines were refused.
    pub refused: usize,
    /// The first [`REFUSED_SHOWN`] of them.
    pub first_refused: Vec<Refused>,
}

/// The prefix a line names, or why it names none.
fn prefix(text: &str) -> Result<IpNet, String> {
    let parsed =
        if text.contains('/') { super::parse_prefix(text) } else { super::parse_addr(text).map(IpNet::from) };
    match parsed {
        Ok(net) if net.trunc() != net => Err(format!("has host bits set; the prefix is {}", net.trunc())),
        Ok(net) => Ok(net),
        Err(err @ super::BadPrefix::LeadingZero { .. }) => Err(err.to_string()),
        Err(super::BadPrefix::Malformed) => {
            Err("not an address or a prefix like 192.0.2.0/24 or 2001:db8::/32".to_owned())
        }
    }
}

/// Reads a set from lines of text (the `.netset` form, or a JSON list,
/// one entry a line).
pub fn parse<'a>(lines: impl IntoIterator<Item = &'a str>) -> Parsed {
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    let mut parsed = Parsed::default();
    for (number, line) in (1..).zip(lines) {
        let text = line.split(['#', ';']).next().unwrap_or_default().trim();
        if text.is_empty() {
            continue;
        }
        match prefix(text) {
            Ok(IpNet::V4(net)) => v4.push(net),
            Ok(IpNet::V6(net)) => v6.push(net),
            Err(reason) => {
                parsed.refused += 1;
                if parsed.first_refused.len() < REFUSED_SHOWN {
                    parsed.first_refused.push(Refused { line: number, text: text.to_owned(), reason });
                }
            }
        }
    }
    parsed.content = SetContent::new(v4, v6);
    parsed
}

/// Checks the set list: no name twice, no more than [`MAX_SETS`].
pub fn validate_sets(sets: &[SetSpec], prefix: &str) -> Result<(), Invalid> {
    if sets.len() > MAX_SETS {
        return Err(Invalid::new(prefix, format!("{} sets", sets.len()), format!("at most {MAX_SETS}")));
    }
    let mut seen = HashSet::new();
    for (i, set) in sets.iter().enumerate() {
        if !seen.insert(&set.name) {
            return Err(Invalid::new(
                key(&format!("{prefix}[{i}]"), "name"),
                format!("{:?}", set.name.as_str()),
                "another set has the same name",
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_netset_with_comments_addresses_and_bad_lines() {
        let text = "# FireHOL level1\n\
                    192.0.2.0/24\n\
                    \n\
                    198.51.100.7   # one host\n\
                    203.0.113.0/24 ; SBL123\n\
                    2001:db8::/32\n\
                    10.0.0.1/8\n\
                    not-a-prefix\n\
                    192.0.2.0/24\n";
        let parsed = parse(text.lines());
        assert_eq!(
            parsed.content.v4,
            ["192.0.2.0/24", "198.51.100.7/32", "203.0.113.0/24"]
                .map(|s| s.parse::<Ipv4Net>().unwrap())
                .to_vec(),
            "sorted, the duplicate once"
        );
        assert_eq!(parsed.content.v6, vec!["2001:db8::/32".parse::<Ipv6Net>().unwrap()]);
        assert_eq!(parsed.refused, 2);
        assert_eq!(parsed.first_refused[0].line, 7);
        assert!(parsed.first_refused[0].reason.contains("10.0.0.0/8"), "{:?}", parsed.first_refused[0]);
        assert_eq!(
            (parsed.first_refused[1].line, parsed.first_refused[1].text.as_str()),
            (8, "not-a-prefix")
        );
    }

    #[test]
    fn only_the_first_refused_lines_are_named() {
        let lines: Vec<String> = (0..50).map(|i| format!("bad{i}")).collect();
        let parsed = parse(lines.iter().map(String::as_str));
        assert_eq!((parsed.refused, parsed.first_refused.len()), (50, REFUSED_SHOWN));
    }

    #[test]
    fn membership_and_size() {
        let parsed = parse(["192.0.2.0/24", "2001:db8::/32"]);
        assert!(parsed.content.contains("192.0.2.77".parse().unwrap()));
        assert!(!parsed.content.contains("192.0.3.1".parse().unwrap()));
        assert!(parsed.content.contains("2001:db8::1".parse().unwrap()));
        assert!(parsed.content.validate("sets.x").is_ok());
        let big = SetContent::new(
            (0..=u32::try_from(MAX_SET_PREFIXES).unwrap())
                .map(|i| Ipv4Net::new(std::net::Ipv4Addr::from(i), 32).unwrap())
                .collect(),
            Vec::new(),
        );
        let err = big.validate("sets.big").unwrap_err();
        assert!(err.to_string().contains("at most 1048576"), "{err}");
    }

    #[test]
    fn set_names_are_unique() {
        let set = |name: &str| SetSpec { name: name.parse().unwrap(), file: None };
        assert!(validate_sets(&[set("a"), set("b")], "sets").is_ok());
        let err = validate_sets(&[set("a"), set("a")], "sets").unwrap_err();
        assert!(err.to_string().contains("sets[1].name"), "{err}");
        let many: Vec<SetSpec> = (0..=MAX_SETS).map(|i| set(&format!("s{i}"))).collect();
        assert!(validate_sets(&many, "sets").is_err());
    }
}
