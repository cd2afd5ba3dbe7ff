//! Addresses and prefixes as the configuration, the API and the CLI take
//! them: in their usual spelling, with no leading zeros. `010.0.0.0/8` is
//! refused rather than read: some tools read `010` as octal (8), others as
//! decimal (10), and iptables refuses it; a rule must not mean one thing
//! here and another in the tool it was copied from.

use std::net::IpAddr;

use ipnet::IpNet;

/// Why a text is no prefix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadPrefix {
    /// A number with a leading zero (`010`, `/08`).
    #[error("has a leading zero in `{part}`: write it without, as in {example}")]
    LeadingZero { part: String, example: String },
    /// Not an address, or a length out of range.
    #[error("not an address prefix like 10.0.0.0/8 or 2001:db8::/32")]
    Malformed,
}

/// A prefix (`10.0.0.0/8`, `2001:db8::/32`); host bits are left for the
/// caller to judge.
pub fn parse_prefix(text: &str) -> Result<IpNet, BadPrefix> {
    let (addr, len) = text.split_once('/').ok_or(BadPrefix::Malformed)?;
    let addr = parse_addr(addr)?;
    if len.len() > 1 && len.starts_with('0') {
        return Err(leading_zero(len, &format!("{addr}/{}", len.trim_start_matches('0'))));
    }
    if len.is_empty() || !len.bytes().all(|b| b.is_ascii_digit()) {
        return Err(BadPrefix::Malformed);
    }
    let len: u8 = len.parse().map_err(|_| BadPrefix::Malformed)?;
    IpNet::new(addr, len).map_err(|_| BadPrefix::Malformed)
}

/// An address (`192.0.2.7`, `2001:db8::7`).
pub fn parse_addr(text: &str) -> Result<IpAddr, BadPrefix> {
    // The dotted part: all of an IPv4 address, or the tail of an IPv6 one.
    // (IPv6's hextets may have leading zeros: `2001:0db8::` is usual.)
    let dotted = text.rsplit(':').next().unwrap_or(text);
    let zero_led = |o: &&str| o.len() > 1 && o.starts_with('0');
    if let Some(octet) = dotted.split('.').find(zero_led).filter(|_| dotted.contains('.')) {
        let fixed: Vec<String> =
            dotted.split('.').map(|o| o.trim_start_matches('0').to_owned()).map(zero_if_empty).collect();
        let example = format!("{}{}", &text[..text.len() - dotted.len()], fixed.join("."));
        return Err(leading_zero(octet, &example));
    }
    text.parse().map_err(|_| BadPrefix::Malformed)
}

fn zero_if_empty(octet: String) -> String {
    if octet.is_empty() {
        "0".to_owned()
    } else {
        octet
    }
}

fn leading_zero(part: &str, example: &str) -> BadPrefix {
    BadPrefix::LeadingZero { part: part.to_owned(), example: example.to_owned() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_in_their_usual_spelling_parse() {
        for text in
            ["10.0.0.0/8", "0.0.0.0/0", "192.0.2.7/32", "2001:db8::/32", "::/0", "::ffff:10.0.0.0/104"]
        {
            assert_eq!(parse_prefix(text).unwrap().to_string(), text, "{text}");
        }
    }

    #[test]
    fn leading_zeros_are_refused_naming_the_part() {
        let err = parse_prefix("010.000.000.000/8").unwrap_err();
        assert_eq!(err, leading_zero("010", "10.0.0.0"));
        assert_eq!(err.to_string(), "has a leading zero in `010`: write it without, as in 10.0.0.0");
        assert_eq!(parse_prefix("10.0.0.0/08").unwrap_err(), leading_zero("08", "10.0.0.0/8"));
        assert_eq!(parse_addr("192.0.2.07").unwrap_err(), leading_zero("07", "192.0.2.7"));
        assert_eq!(parse_addr("::ffff:10.00.0.1").unwrap_err(), leading_zero("00", "::ffff:10.0.0.1"));
    }

    #[test]
    fn ipv6_hextets_may_have_leading_zeros() {
        assert_eq!(parse_prefix("2001:0db8::/32").unwrap().to_string(), "2001:db8::/32");
    }

    #[test]
    fn what_is_no_prefix_is_malformed() {
        for text in ["10.0.0.0", "10.0.0.0/33", "10.0.0.0/", "10.0.0.0/+8", "/8", "2001:db8::/129", "x/8"] {
            assert_eq!(parse_prefix(text), Err(BadPrefix::Malformed), "{text}");
        }
    }
}
