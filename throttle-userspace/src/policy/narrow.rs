//! Deserializers for values narrower than the integers of JSON and TOML:
//! a value out of range is refused with [`refuse`] (an
//! [`Invalid`](super::Invalid) at its key), a negative number or a value of
//! another kind is a type error of the format.

use std::fmt;

use serde::de::{self, Unexpected, Visitor};

use super::invalid::refuse;

/// An integer in `min..=max`.
struct Bounded {
    min: u64,
    max: u64,
}

impl Visitor<'_> for Bounded {
    type Value = u64;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an integer between {} and {}", self.min, self.max)
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<u64, E> {
        if (self.min..=self.max).contains(&value) {
            Ok(value)
        } else {
            Err(refuse(value, format_args!("must be between {} and {}", self.min, self.max)))
        }
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<u64, E> {
        match u64::try_from(value) {
            Ok(value) => self.visit_u64(value),
            Err(_) => Err(E::invalid_value(Unexpected::Signed(value), &self)),
        }
    }
}

fn bounded<'de, D: de::Deserializer<'de>>(deserializer: D, min: u64, max: u64) -> Result<u64, D::Error> {
    deserializer.deserialize_u64(Bounded { min, max })
}

/// An address prefix length: at most 128 (each family checks its own
/// bound when the policy is validated).
pub fn prefix_len<'de, D: de::Deserializer<'de>>(deserializer: D) -> Result<u8, D::Error> {
    bounded(deserializer, 0, 128).map(|len| u8::try_from(len).expect("at most 128"))
}

/// [`prefix_len`], of a field that may be absent.
pub fn some_prefix_len<'de, D: de::Deserializer<'de>>(deserializer: D) -> Result<Option<u8>, D::Error> {
    prefix_len(deserializer).map(Some)
}

/// A TCP or UDP port, 1 to 65535.
pub fn port<'de, D: de::Deserializer<'de>>(deserializer: D) -> Result<u16, D::Error> {
    bounded(deserializer, 1, u64::from(u16::MAX)).map(|port| u16::try_from(port).expect("at most 65535"))
}
