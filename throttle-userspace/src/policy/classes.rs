//! Limit classes: what a class matches (protocol, destination ports, SYN
//! only), how its sources are keyed, the limits that must all admit a
//! packet, the prefix tiers its sources also count against, and its ban.

use std::{collections::HashMap, fmt, str::FromStr, time::Duration};

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};

use super::{
    invalid::{check_burst, check_range, check_rate, key, refuse},
    narrow::{prefix_len, some_prefix_len},
    Invalid, Proto, Rate, Scope, Unit, DEFAULT_IPV4_PREFIX, DEFAULT_IPV6_PREFIX,
};

/// Most classes, the default one (`[limits]`) included.
pub const MAX_CLASSES: usize = throttle_common::MAX_CLASSES as usize;
/// Most limits of a class: a packet passes only when every one admits it.
pub const MAX_CLASS_LIMITS: usize = throttle_common::MAX_CLASS_LIMITS as usize;
/// Most prefix tiers of a class.
pub const MAX_TIERS: usize = throttle_common::MAX_TIERS as usize;
/// Longest time over a limit before a ban, and longest ban.
pub const MAX_BAN_AFTER: Duration = Duration::from_secs(24 * 3_600);
pub const MAX_BAN: Duration = Duration::from_secs(30 * 24 * 3_600);

/// The name of a class or of a set: `[a-z0-9_-]`, 1 to 32 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct Name(String);

/// A class's name.
pub type ClassName = Name;
/// An IP set's name.
pub type SetName = Name;

impl Name {
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a class name was refused.
const NAME_RULE: &str = "a name is 1 to 32 characters of a-z, 0-9, _ and -";

impl FromStr for Name {
    type Err = Invalid;

    fn from_str(name: &str) -> Result<Self, Invalid> {
        let ok = (1..=32).contains(&name.len())
            && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(name.to_owned()))
        } else {
            Err(Invalid::new("name", format!("{name:?}"), NAME_RULE))
        }
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let name = String::deserialize(deserializer)?;
        name.parse().map_err(|_| refuse(format!("{name:?}"), NAME_RULE))
    }
}

/// Destination ports: `first..=last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    /// Every port of the range.
    pub fn ports(self) -> impl Iterator<Item = u16> {
        self.first..=self.last
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// What a port range must be.
const PORTS_RULE: &str = "ports are 1 to 65535: a port, a range \"8000-8100\", or a list of those";

impl FromStr for PortRange {
    type Err = ();

    fn from_str(text: &str) -> Result<Self, ()> {
        let port = |t: &str| t.trim().parse::<u16>().ok().filter(|&p| p >= 1);
        let (first, last) = if let Some((a, b)) = text.split_once('-') {
            (port(a).ok_or(())?, port(b).ok_or(())?)
        } else {
            let p = port(text).ok_or(())?;
            (p, p)
        };
        (first <= last).then_some(Self { first, last }).ok_or(())
    }
}

/// The ports of a match: a port, a range, or a list of those.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ports(pub Vec<PortRange>);

impl Serialize for Ports {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_seq(self.0.iter().map(ToString::to_string))
    }
}

impl<'de> Deserialize<'de> for Ports {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        fn one<E: de::Error>(text: &str) -> Result<PortRange, E> {
            text.parse().map_err(|()| refuse(format!("{text:?}"), PORTS_RULE))
        }

        impl<'de> de::Visitor<'de> for Visitor {
            type Value = Ports;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port, a range \"8000-8100\", or a list of those")
            }

            fn visit_u64<E: de::Error>(self, port: u64) -> Result<Ports, E> {
                one(&port.to_string()).map(|r| Ports(vec![r]))
            }

            fn visit_i64<E: de::Error>(self, port: i64) -> Result<Ports, E> {
                one(&port.to_string()).map(|r| Ports(vec![r]))
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Ports, E> {
                one(text).map(|r| Ports(vec![r]))
            }

            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Ports, A::Error> {
                let mut ranges = Vec::new();
                while let Some(item) = seq.next_element::<PortItem>()? {
                    ranges.push(item.0);
                }
                Ok(Ports(ranges))
            }
        }

        /// One element of a list of ports.
        struct PortItem(PortRange);

        impl<'de> Deserialize<'de> for PortItem {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                let Ports(mut ranges) = deserializer.deserialize_any(ItemVisitor)?;
                Ok(Self(ranges.remove(0)))
            }
        }

        struct ItemVisitor;

        impl de::Visitor<'_> for ItemVisitor {
            type Value = Ports;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port or a range \"8000-8100\"")
            }

            fn visit_u64<E: de::Error>(self, port: u64) -> Result<Ports, E> {
                Visitor.visit_u64(port)
            }

            fn visit_i64<E: de::Error>(self, port: i64) -> Result<Ports, E> {
                Visitor.visit_i64(port)
            }

            fn visit_str<E: de::Error>(self, text: &str) -> Result<Ports, E> {
                Visitor.visit_str(text)
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

/// A string schema with a pattern, a description and an example.
fn string_schema(
    pattern: &str,
    description: &str,
    example: &str,
) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    ObjectBuilder::new()
        .schema_type(SchemaType::Type(Type::String))
        .pattern(Some(pattern))
        .description(Some(description))
        .examples([serde_json::Value::from(example)])
        .into()
}

impl utoipa::PartialSchema for Name {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        string_schema("^[a-z0-9_-]{1,32}$", NAME_RULE, "ssh")
    }
}

impl utoipa::ToSchema for Name {}

/// The pattern of one port or range.
const PORT_PATTERN: &str = r"^\s*[0-9]{1,5}\s*(-\s*[0-9]{1,5}\s*)?$";

impl utoipa::PartialSchema for Ports {
    /// Given as a port, a range or a list of those; shown as a list of
    /// strings (`["443", "8000-8100"]`).
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, SchemaType, Type};
        let port = || {
            ObjectBuilder::new()
                .schema_type(SchemaType::Type(Type::Integer))
                .minimum(Some(1))
                .maximum(Some(65_535))
                .description(Some("a port"))
        };
        let range = || {
            ObjectBuilder::new()
                .schema_type(SchemaType::Type(Type::String))
                .pattern(Some(PORT_PATTERN))
                .description(Some("a port or a range \"8000-8100\""))
        };
        let item = OneOfBuilder::new().item(port()).item(range());
        OneOfBuilder::new()
            .item(port())
            .item(range())
            .item(ArrayBuilder::new().items(item).min_items(Some(1)))
            .description(Some(PORTS_RULE))
            .examples([serde_json::json!(["443", "8000-8100"])])
            .into()
    }
}

impl utoipa::ToSchema for Ports {}

/// What a class matches: a protocol and its destination ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Match {
    pub proto: Proto,
    pub ports: Ports,
    /// TCP only: only connection attempts (SYN without ACK) belong to the
    /// class; the ports' other packets pass.
    #[serde(default)]
    pub syn_only: bool,
}

/// One limit of a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassLimit {
    pub rate: Rate,
    /// Units at once after a quiet spell; default: the rate's count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

impl ClassLimit {
    /// The burst, its default filled in.
    #[must_use]
    pub fn burst(&self) -> u64 {
        self.burst.unwrap_or(self.rate.default_burst()).max(1)
    }
}

/// A prefix tier: the class's sources also count against the bucket of
/// their masked prefix (a /24, a /48) at this limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Tier {
    /// The tier applies to IPv4 sources, aggregated to this prefix.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "some_prefix_len")]
    pub ipv4_prefix: Option<u8>,
    /// The tier applies to IPv6 sources, aggregated to this prefix.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "some_prefix_len")]
    pub ipv6_prefix: Option<u8>,
    pub rate: Rate,
    /// Default: the rate's count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
}

impl Tier {
    /// The tier's limit.
    #[must_use]
    pub fn limit(&self) -> ClassLimit {
        ClassLimit { rate: self.rate, burst: self.burst }
    }
}

/// A duration as people write it: `30s`, `15m`, `1h`, `500ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub Duration);

impl Serialize for Span {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&humantime::format_duration(self.0))
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map(Self).map_err(|e| {
            refuse(format!("{text:?}"), format_args!("not a duration like \"30s\" or \"15m\": {e}"))
        })
    }
}

impl utoipa::PartialSchema for Span {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        string_schema(
            r"^\s*([0-9]+\s*[a-zA-Zµ]+\s*)+$",
            "a duration: \"30s\", \"15m\", \"1h 30m\", \"500ms\"",
            "30s",
        )
    }
}

impl utoipa::ToSchema for Span {}

/// A class's ban: a source over one of its limits for `after` in a row is
/// denied for `duration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Ban {
    pub after: Span,
    pub duration: Span,
}

/// A limit class.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Class {
    pub name: ClassName,
    #[serde(rename = "match")]
    pub matches: Vec<Match>,
    pub limits: Vec<ClassLimit>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tiers: Vec<Tier>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ban: Option<Ban>,
    /// The adaptive controller scales this class's limits.
    #[serde(default)]
    pub adaptive: bool,
    #[serde(default)]
    pub unit: Unit,
    /// The class's IPv4 sources are aggregated to this prefix.
    #[serde(default = "default_ipv4_prefix", deserialize_with = "prefix_len")]
    pub ipv4_prefix: u8,
    /// The class's IPv6 sources are aggregated to this prefix.
    #[serde(default = "default_ipv6_prefix", deserialize_with = "prefix_len")]
    pub ipv6_prefix: u8,
}

const fn default_ipv4_prefix() -> u8 {
    DEFAULT_IPV4_PREFIX
}

const fn default_ipv6_prefix() -> u8 {
    DEFAULT_IPV6_PREFIX
}

impl Class {
    /// Checks the class on its own; `prefix` names it (`classes[2]`).
    pub fn validate(&self, prefix: &str) -> Result<(), Invalid> {
        if self.matches.is_empty() {
            return Err(Invalid::new(
                key(prefix, "match"),
                "[]",
                "a class matches at least one protocol and port",
            ));
        }
        for (i, m) in self.matches.iter().enumerate() {
            let at = format!("{}[{i}]", key(prefix, "match"));
            if m.ports.0.is_empty() {
                return Err(Invalid::new(key(&at, "ports"), "[]", "at least one port"));
            }
            if m.syn_only && m.proto != Proto::Tcp {
                return Err(Invalid::new(key(&at, "syn_only"), true, "only a tcp port can be syn_only"));
            }
        }
        if !(1..=MAX_CLASS_LIMITS).contains(&self.limits.len()) {
            return Err(Invalid::new(
                key(prefix, "limits"),
                format!("{} limits", self.limits.len()),
                format!("a class has 1 to {MAX_CLASS_LIMITS} limits"),
            ));
        }
        for (i, limit) in self.limits.iter().enumerate() {
            let at = format!("{}[{i}]", key(prefix, "limits"));
            check_rate(&key(&at, "rate"), limit.rate, self.unit)?;
            check_burst(&key(&at, "burst"), limit.burst())?;
        }
        if self.tiers.len() > MAX_TIERS {
            return Err(Invalid::new(
                key(prefix, "tiers"),
                format!("{} tiers", self.tiers.len()),
                format!("a class has at most {MAX_TIERS} tiers"),
            ));
        }
        for (i, tier) in self.tiers.iter().enumerate() {
            let at = format!("{}[{i}]", key(prefix, "tiers"));
            if tier.ipv4_prefix.is_none() && tier.ipv6_prefix.is_none() {
                return Err(Invalid::new(at, "(no prefix)", "a tier names ipv4_prefix, ipv6_prefix or both"));
            }
            if let Some(len) = tier.ipv4_prefix {
                check_range(&key(&at, "ipv4_prefix"), len, 1, 32)?;
            }
            if let Some(len) = tier.ipv6_prefix {
                check_range(&key(&at, "ipv6_prefix"), len, 1, 128)?;
            }
            check_rate(&key(&at, "rate"), tier.rate, self.unit)?;
            check_burst(&key(&at, "burst"), tier.limit().burst())?;
        }
        if let Some(ban) = &self.ban {
            let at = key(prefix, "ban");
            for (field, span, max) in
                [("after", ban.after, MAX_BAN_AFTER), ("duration", ban.duration, MAX_BAN)]
            {
                if span.0.is_zero() || span.0 > max {
                    return Err(Invalid::new(
                        key(&at, field),
                        format!("{:?}", humantime::format_duration(span.0).to_string()),
                        format!("must be over 0 and at most {}", humantime::format_duration(max)),
                    ));
                }
            }
        }
        check_range(&key(prefix, "ipv4_prefix"), self.ipv4_prefix, 1, 32)?;
        check_range(&key(prefix, "ipv6_prefix"), self.ipv6_prefix, 1, 128)
    }
}

/// What happens to a packet no class matches (and the scope does not name).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UnmatchedAction {
    /// Metered by `[limits]`, as without classes (when `[scope]` is empty).
    #[default]
    Limit,
    /// Passed, unmetered.
    Pass,
}

/// The `[unmatched]` section.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields, default)]
pub struct Unmatched {
    pub action: UnmatchedAction,
}

/// Who claims a (protocol, port): a class by its index, or the scope.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Claim {
    Scope(usize),
    Class(usize, usize),
}

/// Checks a class list with the scope: each class, unique names, and no
/// (protocol, port) claimed twice (by two classes, or by a class and the
/// scope), naming both.
pub fn validate_classes(classes: &[Class], scope: &Scope, prefix: &str) -> Result<(), Invalid> {
    if classes.len() + 1 > MAX_CLASSES {
        return Err(Invalid::new(
            prefix,
            format!("{} classes", classes.len()),
            format!("at most {} classes besides the default", MAX_CLASSES - 1),
        ));
    }
    let mut names: HashMap<&ClassName, usize> = HashMap::new();
    let mut claims: HashMap<(Proto, u16), Claim> = HashMap::new();
    for (i, entry) in scope.ports.iter().enumerate() {
        claims.insert((entry.proto, entry.port), Claim::Scope(i));
    }
    for (i, class) in classes.iter().enumerate() {
        let at = format!("{prefix}[{i}]");
        class.validate(&at)?;
        if let Some(first) = names.insert(&class.name, i) {
            return Err(Invalid::new(
                key(&at, "name"),
                format!("{:?}", class.name.as_str()),
                format!("classes[{first}] has the same name"),
            ));
        }
        for (m, matched) in class.matches.iter().enumerate() {
            for range in &matched.ports.0 {
                for port in range.ports() {
                    let claim = Claim::Class(i, m);
                    if let Some(other) = claims.insert((matched.proto, port), claim) {
                        let by = match other {
                            Claim::Scope(s) => format!("scope.ports[{s}]"),
                            Claim::Class(c, _) => {
                                format!("class {:?} (classes[{c}])", classes[c].name.as_str())
                            }
                        };
                        return Err(Invalid::new(
                            format!("{}[{m}].ports", key(&at, "match")),
                            format!("{}/{port}", matched.proto.name()),
                            format!("class {:?} and {by} both match it", class.name.as_str()),
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// The `[[classes]]` of a TOML text, for tests of every layer.
#[cfg(test)]
pub fn classes_from_toml(toml: &str) -> Result<Vec<Class>, String> {
    #[derive(Deserialize)]
    struct Doc {
        classes: Vec<Class>,
    }
    let doc: Doc = super::parse(toml::Deserializer::new(toml), "").map_err(|e| e.to_string())?;
    Ok(doc.classes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::ScopePort;

    fn classes(toml: &str) -> Result<Vec<Class>, String> {
        let classes = classes_from_toml(toml)?;
        validate_classes(&classes, &Scope::default(), "classes").map_err(|e| e.to_string())?;
        Ok(classes)
    }

    const EXAMPLE: &str = include_str!("../../../docs/examples/classes.toml");

    #[test]
    fn the_example_classes_parse() {
        let classes = classes(EXAMPLE).unwrap();
        assert_eq!(classes.len(), 3);
        let ssh = &classes[0];
        assert_eq!(ssh.limits[0].rate.to_string(), "3/minute");
        assert_eq!(ssh.limits[0].burst(), 5);
        assert_eq!(ssh.ban.unwrap().after.0, Duration::from_secs(30));
        assert_eq!(ssh.ban.unwrap().duration.0, Duration::from_secs(900));
        let dns = &classes[1];
        assert_eq!(dns.limits[1].burst(), 1000, "the burst defaults to the rate's count");
        let web = &classes[2];
        assert_eq!(
            web.matches[0].ports.0,
            [PortRange { first: 443, last: 443 }, PortRange { first: 8000, last: 8100 }]
        );
        assert_eq!(web.tiers[0].ipv4_prefix, Some(24));
        assert!(web.adaptive);
        assert_eq!((web.ipv4_prefix, web.ipv6_prefix), (32, 64));
        let json = serde_json::to_value(web).unwrap();
        assert_eq!(json["match"][0]["ports"], serde_json::json!(["443", "8000-8100"]));
        let again: Class = serde_json::from_value(json).unwrap();
        assert_eq!(&again, web);
    }

    #[test]
    fn bad_classes_name_their_key_and_value() {
        let one = |body: &str| format!("[[classes]]\nname = \"a\"\n{body}");
        for (text, needle) in [
            (r#"[[classes]]
name = "Bad Name"
match = [{ proto = "udp", ports = 53 }]
limits = [{ rate = 5 }]"#.to_owned(), "`classes[0].name` = \"Bad Name\""),
            (one("match = []\nlimits = [{ rate = 5 }]"), "`classes[0].match`"),
            (one("match = [{ proto = \"udp\", ports = \"0\" }]\nlimits = [{ rate = 5 }]"), "`classes[0].match[0].ports` = \"0\""),
            (one("match = [{ proto = \"udp\", ports = \"9-3\" }]\nlimits = [{ rate = 5 }]"), "`classes[0].match[0].ports` = \"9-3\""),
            (one("match = [{ proto = \"udp\", ports = 53, syn_only = true }]\nlimits = [{ rate = 5 }]"), "`classes[0].match[0].syn_only`"),
            (one("match = [{ proto = \"udp\", ports = 53 }]\nlimits = []"), "`classes[0].limits`"),
            (one("match = [{ proto = \"udp\", ports = 53 }]\nlimits = [{ rate = 1 }, { rate = 2 }, { rate = 3 }, { rate = 4 }]"), "1 to 3 limits"),
            (one("match = [{ proto = \"udp\", ports = 53 }]\nlimits = [{ rate = \"0/minute\" }]"), "`classes[0].limits[0].rate` = \"0/minute\""),
            (one("match = [{ proto = \"udp\", ports = 53 }]\nlimits = [{ rate = 5 }]\ntiers = [{ rate = 5 }]"), "`classes[0].tiers[0]`"),
            (one("match = [{ proto = \"udp\", ports = 53 }]\nlimits = [{ rate = 5 }]\ntiers = [{ ipv4_prefix = 33, rate = 5 }]"), "`classes[0].tiers[0].ipv4_prefix` = 33"),
            (one("match = [{ proto = \"udp\", ports = 53 }]\nlimits = [{ rate = 5 }]\nban = { after = \"soon\", duration = \"1m\" }"), "`classes[0].ban.after` = \"soon\""),
            (one("match = [{ proto = \"udp\", ports = 53 }]\nlimits = [{ rate = 5 }]\nban = { after = \"0s\", duration = \"1m\" }"), "`classes[0].ban.after`"),
            (one("match = [{ proto = \"udp\", ports = 53 }]\nlimits = [{ rate = 5 }]\nunit = \"bytes\"\nlimits2 = 1"), "unknown field `limits2`"),
        ] {
            let err = classes(&text).expect_err(&text);
            assert!(err.contains(needle), "{text:?}: {err:?} lacks {needle:?}");
        }
    }

    #[test]
    fn a_port_claimed_twice_is_refused_naming_both() {
        let err = classes(&format!(
            "{EXAMPLE}\n[[classes]]\nname = \"alt\"\nmatch = [{{ proto = \"tcp\", ports = \"8050-8060\" }}]\nlimits = [{{ rate = 5 }}]"
        ))
        .unwrap_err();
        assert!(err.contains("classes[3].match[0].ports"), "{err}");
        assert!(err.contains("tcp/8050") && err.contains("\"alt\"") && err.contains("\"web\""), "{err}");
        let dup = classes(&format!("{EXAMPLE}\n[[classes]]\nname = \"dns\"\nmatch = [{{ proto = \"udp\", ports = 5353 }}]\nlimits = [{{ rate = 5 }}]")).unwrap_err();
        assert!(dup.contains("`classes[3].name` = \"dns\"") && dup.contains("classes[1]"), "{dup}");
        // The same port for another protocol is another match.
        classes(&format!("{EXAMPLE}\n[[classes]]\nname = \"dns-tcp\"\nmatch = [{{ proto = \"tcp\", ports = 53 }}]\nlimits = [{{ rate = 5 }}]")).unwrap();
        let scope = Scope { ports: vec![ScopePort { proto: Proto::Udp, port: 53, syn_only: false }] };
        let parsed: Vec<Class> = classes(EXAMPLE).unwrap();
        let err = validate_classes(&parsed, &scope, "classes").unwrap_err().to_string();
        assert!(err.contains("scope.ports[0]") && err.contains("\"dns\""), "{err}");
    }
}
