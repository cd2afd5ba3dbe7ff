//! One error for a refused value, and the validators every section uses.
//!
//! A value is refused with the key it came from (a dotted path such as
//! `limits.rate` or `rules[2].cidr`), the value as given, and the reason.
//! Values that do not even fit their type (a port of 65536, a prefix that is
//! no prefix) are refused the same way while they are parsed: the narrow
//! types' deserializers raise [`refuse`], and [`parse`] turns it into an
//! [`Invalid`] at the key where serde met it.

use std::fmt;

use serde::de::{self, DeserializeOwned};
use throttle_common::gcra::{MAX_BURST, MAX_RATE, MIN_BURST};

use super::{Rate, Unit};

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
    pub fn new(key: impl Into<String>, value: impl fmt::Display, reason: impl Into<String>) -> Self {
        Self { key: key.into(), value: value.to_string(), reason: reason.into() }
    }
}

/// `prefix.name`, or `name` alone at the top.
#[must_use]
pub fn key(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// `value` in `min..=max`.
pub fn check_range<T>(key: &str, value: T, min: T, max: T) -> Result<(), Invalid>
where
    T: PartialOrd + fmt::Display + Copy,
{
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(Invalid::new(key, value, format!("must be between {min} and {max}")))
    }
}

/// A rate the arithmetic holds to its bound: from 1/day to [`MAX_RATE`] a
/// second, and a rate of bytes at least one a second.
pub fn check_rate(key: &str, rate: Rate, unit: Unit) -> Result<(), Invalid> {
    if Rate::new(rate.count, rate.period).is_none() {
        return Err(Invalid::new(key, rate, format!("must be from 1/day to {MAX_RATE}/second")));
    }
    if unit == Unit::Bytes && rate.per_sec() < 1.0 {
        return Err(Invalid::new(key, rate, "a rate of bytes must be at least 1/second"));
    }
    Ok(())
}

/// A burst the arithmetic holds to its bound.
pub fn check_burst(key: &str, burst: u64) -> Result<(), Invalid> {
    check_range(key, burst, MIN_BURST, MAX_BURST)
}

/// `value` in `min..=max` and finite.
pub fn check_f64(key: &str, value: f64, min: f64, max: f64) -> Result<(), Invalid> {
    if value.is_finite() && (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(Invalid::new(key, value, format!("must be between {min} and {max}")))
    }
}

/// `value` strictly inside `min..max` and finite.
pub fn check_open(key: &str, value: f64, min: f64, max: f64) -> Result<(), Invalid> {
    if value.is_finite() && value > min && value < max {
        Ok(())
    } else {
        Err(Invalid::new(key, value, format!("must be over {min} and under {max}")))
    }
}

/// `value` in `0 < value <= 1`.
pub fn check_fraction(key: &str, value: f64) -> Result<(), Invalid> {
    if value.is_finite() && value > 0.0 && value <= 1.0 {
        Ok(())
    } else {
        Err(Invalid::new(key, value, "must be over 0 and at most 1"))
    }
}

/// Separates the value from the reason in the message of [`refuse`]; no
/// input reaches a message between two of them.
const MARK: char = '\u{1f}';

/// The error a narrow type's deserializer raises for a value it refuses:
/// [`parse`] reports it as an [`Invalid`] at the key being read.
pub fn refuse<E: de::Error>(value: impl fmt::Display, reason: impl fmt::Display) -> E {
    E::custom(format_args!("{MARK}{value}{MARK}{reason}{MARK}"))
}

/// Why a document did not parse.
#[derive(Debug, thiserror::Error)]
pub enum ParseError<E: std::error::Error + 'static> {
    /// A value its type refuses, at its key.
    #[error(transparent)]
    Invalid(Invalid),
    /// Not the document's shape: the format's own error, and where serde
    /// met it (empty at the top).
    #[error("{}{source}", if path.is_empty() { String::new() } else { format!("{path}: ") })]
    Format { path: String, source: E },
}

/// Deserializes a `T` (whose keys sit under `prefix`), turning a value that
/// a narrow type refused into an [`Invalid`] naming its key.
pub fn parse<'de, T, D>(deserializer: D, prefix: &str) -> Result<T, ParseError<D::Error>>
where
    T: DeserializeOwned,
    D: de::Deserializer<'de>,
    D::Error: std::error::Error + 'static,
{
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let path = err.path().to_string();
        let path = if path == "." { String::new() } else { path };
        let inner = err.into_inner();
        match refused(&inner.to_string()) {
            Some((value, reason)) => ParseError::Invalid(Invalid::new(key(prefix, &path), value, reason)),
            None => ParseError::Format { path, source: inner },
        }
    })
}

/// The value and the reason of a [`refuse`] in an error's message, which
/// the format may have wrapped in text of its own (before the first mark and
/// after the last).
fn refused(message: &str) -> Option<(String, String)> {
    let mut parts = message.split(MARK);
    let _before = parts.next()?;
    let value = parts.next()?;
    let reason = parts.next()?;
    // What follows the last mark is the format's (a position, say).
    parts.next()?;
    Some((value.to_owned(), reason.to_owned()))
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Deserialize)]
    struct Doc {
        #[expect(dead_code, reason = "only its parsing is tested")]
        inner: Vec<Inner>,
    }

    #[derive(Debug, Deserialize)]
    struct Inner {
        #[serde(deserialize_with = "odd")]
        #[expect(dead_code, reason = "only its parsing is tested")]
        n: u64,
    }

    fn odd<'de, D: de::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        let n = u64::deserialize(d)?;
        if n % 2 == 1 {
            Ok(n)
        } else {
            Err(refuse(n, "must be odd"))
        }
    }

    #[test]
    fn a_refused_value_is_named_by_its_key_in_json_and_toml() {
        let json = r#"{"inner": [{"n": 1}, {"n": 4}]}"#;
        let err = parse::<Doc, _>(&mut serde_json::Deserializer::from_str(json), "doc").unwrap_err();
        assert_eq!(err.to_string(), "invalid `doc.inner[1].n` = 4: must be odd");
        let toml = "[[inner]]\nn = 3\n[[inner]]\nn = 8\n";
        let err = parse::<Doc, _>(toml::Deserializer::new(toml), "").unwrap_err();
        assert_eq!(err.to_string(), "invalid `inner[1].n` = 8: must be odd");
    }

    #[test]
    fn other_errors_are_the_formats_own() {
        let err =
            parse::<Doc, _>(&mut serde_json::Deserializer::from_str(r#"{"inner": 5}"#), "").unwrap_err();
        assert!(matches!(&err, ParseError::Format { path, .. } if path == "inner"), "{err}");
    }
}
