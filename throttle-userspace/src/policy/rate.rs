//! Rates as people write them: `"3/minute"`, `"50/s"`, `"1000/hour"`, or a
//! bare number per second.

use std::{fmt, str::FromStr};

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use throttle_common::gcra::{MAX_RATE, TICKS_PER_SEC};

use super::invalid::refuse;

/// The period a rate counts over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Period {
    Second,
    Minute,
    Hour,
    Day,
}

impl Period {
    /// Every period, shortest first.
    pub const ALL: [Self; 4] = [Self::Second, Self::Minute, Self::Hour, Self::Day];

    /// Its length in seconds.
    #[must_use]
    pub const fn secs(self) -> u64 {
        match self {
            Self::Second => 1,
            Self::Minute => 60,
            Self::Hour => 3_600,
            Self::Day => 86_400,
        }
    }

    /// As a rate spells it.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Second => "second",
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "second" | "sec" | "s" => Self::Second,
            "minute" | "min" | "m" => Self::Minute,
            "hour" | "h" => Self::Hour,
            "day" | "d" => Self::Day,
            _ => return None,
        })
    }
}

/// A rate: `count` units every `period`, from 1 a day to
/// [`MAX_RATE`] a second.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Rate {
    pub count: u64,
    pub period: Period,
}

/// What a rate must be, as errors say it.
const RANGE: &str =
    "must be a count per second, minute, hour or day (\"50/second\", \"3/minute\") from 1/day \
                     to 100000000/second";

impl Rate {
    /// `count` per second.
    #[must_use]
    pub const fn per_second(count: u64) -> Self {
        Self { count, period: Period::Second }
    }

    /// `count` per `period`, when it is within the bounds.
    #[must_use]
    pub fn new(count: u64, period: Period) -> Option<Self> {
        let rate = Self { count, period };
        (count >= 1 && count <= MAX_RATE.saturating_mul(period.secs())).then_some(rate)
    }

    /// The rate per second, as a float (for ratios and displays).
    #[must_use]
    pub fn per_sec(self) -> f64 {
        #[expect(clippy::cast_precision_loss, reason = "a ratio; counts are at most 10^8 a day's worth")]
        let rate = self.count as f64 / self.period.secs() as f64;
        rate
    }

    /// Ticks of the GCRA clock between two units, rounded up so that the
    /// admitted rate never exceeds this one.
    #[must_use]
    pub fn interval_ticks(self) -> u64 {
        let exact = u128::from(TICKS_PER_SEC) * u128::from(self.period.secs());
        u64::try_from(exact.div_ceil(u128::from(self.count.max(1)))).unwrap_or(u64::MAX)
    }

    /// The rate of a limit of one unit every `interval` ticks, in the
    /// shortest period that counts it whole (to the nearest unit a day).
    #[must_use]
    pub fn from_interval_ticks(interval: u64) -> Self {
        let interval = interval.max(1);
        Period::ALL
            .into_iter()
            .find_map(|period| {
                let ticks = u128::from(TICKS_PER_SEC) * u128::from(period.secs());
                let count = ticks / u128::from(interval);
                // Whole within the rounding up of the interval.
                let exact = (ticks + u128::from(interval) / 2) / u128::from(interval);
                (count >= 1 && (ticks.div_ceil(exact.max(1)) == u128::from(interval)))
                    .then(|| Self { count: u64::try_from(exact).unwrap_or(u64::MAX), period })
            })
            .unwrap_or(Self { count: 1, period: Period::Day })
    }

    /// This rate times the controller's `scale` (at most 1), to the nearest
    /// count: in the same period while that leaves at least one, else in
    /// the first longer period that does (`3/minute * 0.1` is `18/hour`),
    /// never below 1/day.
    #[must_use]
    pub fn scaled(self, scale: f64) -> Self {
        if (scale - 1.0).abs() < f64::EPSILON {
            return self;
        }
        let per_sec = self.per_sec() * scale;
        Period::ALL
            .into_iter()
            .filter(|p| *p >= self.period)
            .find_map(|period| {
                #[expect(clippy::cast_precision_loss, reason = "periods are small")]
                let count = (per_sec * period.secs() as f64).round();
                #[expect(clippy::cast_possible_truncation, clippy::cast_sign_loss, reason = "at least 1")]
                (count >= 1.0).then_some(Self { count: count as u64, period })
            })
            .unwrap_or(Self { count: 1, period: Period::Day })
    }

    /// The burst a limit of this rate has unless told: one period's count.
    #[must_use]
    pub const fn default_burst(self) -> u64 {
        self.count
    }

    /// A bare number of units per second: an integer, or a fraction that is
    /// a whole count per minute, hour or day (`0.05` is `3/minute`).
    fn from_number(value: f64) -> Option<Self> {
        if !value.is_finite() || value <= 0.0 {
            return None;
        }
        Period::ALL.into_iter().find_map(|period| {
            #[expect(clippy::cast_precision_loss, reason = "periods are small")]
            let count = value * period.secs() as f64;
            let whole = count.round();
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "checked finite and positive"
            )]
            let rounded = whole as u64;
            ((count - whole).abs() < 1e-9 * count.max(1.0)).then_some(())?;
            Self::new(rounded, period)
        })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.count, self.period.name())
    }
}

/// Why a rate's text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} {RANGE}")]
pub struct BadRate(String);

impl FromStr for Rate {
    type Err = BadRate;

    fn from_str(text: &str) -> Result<Self, BadRate> {
        let bad = || BadRate(text.to_owned());
        let trimmed = text.trim();
        let (count, period) = match trimmed.split_once('/') {
            Some((count, period)) => (count.trim(), Period::parse(period.trim()).ok_or_else(bad)?),
            None => (trimmed, Period::Second),
        };
        if let Ok(count) = count.parse::<u64>() {
            return Self::new(count, period).ok_or_else(bad);
        }
        // A fraction per second ("0.05"), not per any other period.
        let value: f64 = count.parse().map_err(|_| bad())?;
        if period == Period::Second {
            Self::from_number(value).ok_or_else(bad)
        } else {
            Err(bad())
        }
    }
}

/// Digits, then optionally `/` and a period's name: the shape of a rate
/// whatever its numbers.
fn looks_like_a_rate(text: &str) -> bool {
    let (count, period) = text.trim().split_once('/').unwrap_or((text.trim(), "s"));
    let count = count.trim();
    !count.is_empty()
        && count.chars().all(|c| c.is_ascii_digit() || c == '.')
        && Period::parse(period.trim()).is_some()
}

impl Serialize for Rate {
    /// A number per second as the API always spelled it; otherwise the
    /// text people write (`"3/minute"`).
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.period {
            Period::Second => serializer.serialize_u64(self.count),
            _ => serializer.collect_str(self),
        }
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;

        impl de::Visitor<'_> for Visitor {
            type Value = Rate;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a rate: a number per second, or \"N/second|minute|hour|day\"")
            }

            fn visit_u64<E: de::Error>(self, value: u64) -> Result<Rate, E> {
                Rate::new(value, Period::Second).ok_or_else(|| refuse(value, RANGE))
            }

            fn visit_i64<E: de::Error>(self, value: i64) -> Result<Rate, E> {
                match u64::try_from(value) {
                    Ok(value) => self.visit_u64(value),
                    Err(_) => Err(E::invalid_value(de::Unexpected::Signed(value), &self)),
                }
            }

            /// A number no integer type holds is a type error, as it is
            /// for every integer of the API.
            fn visit_f64<E: de::Error>(self, value: f64) -> Result<Rate, E> {
                #[expect(clippy::cast_precision_loss, reason = "a bound")]
                if !value.is_finite() || value < 0.0 || value >= u64::MAX as f64 {
                    return Err(E::invalid_value(de::Unexpected::Float(value), &self));
                }
                Rate::from_number(value).ok_or_else(|| refuse(value, RANGE))
            }

            /// A rate's text out of bounds is refused by its key; text that
            /// is no rate at all is a type error.
            fn visit_str<E: de::Error>(self, text: &str) -> Result<Rate, E> {
                text.parse().map_err(|_| {
                    if looks_like_a_rate(text) {
                        refuse(format!("{text:?}"), RANGE)
                    } else {
                        E::invalid_value(de::Unexpected::Str(text), &self)
                    }
                })
            }
        }

        deserializer.deserialize_any(Visitor)
    }
}

impl utoipa::PartialSchema for Rate {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, SchemaType, Type};
        let one_of = OneOfBuilder::new()
            .item(
                ObjectBuilder::new()
                    .schema_type(SchemaType::Type(Type::Integer))
                    .minimum(Some(1))
                    .description(Some("per second")),
            )
            .item(
                ObjectBuilder::new()
                    .schema_type(SchemaType::Type(Type::String))
                    .pattern(Some(
                        r"^\s*[0-9]+(\.[0-9]+)?\s*(/\s*(second|sec|s|minute|min|m|hour|h|day|d)\s*)?$",
                    ))
                    .description(Some("N/second|minute|hour|day")),
            )
            .description(Some("A rate: a number per second, or \"N/second|minute|hour|day\""))
            .build();
        utoipa::openapi::RefOr::T(utoipa::openapi::schema::Schema::OneOf(one_of))
    }
}

impl utoipa::ToSchema for Rate {}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn rates_parse_as_people_write_them() {
        for (text, count, period) in [
            ("3/minute", 3, Period::Minute),
            ("3/min", 3, Period::Minute),
            ("3/m", 3, Period::Minute),
            ("50/second", 50, Period::Second),
            ("50/s", 50, Period::Second),
            (" 50 / sec ", 50, Period::Second),
            ("1000/hour", 1000, Period::Hour),
            ("1000/h", 1000, Period::Hour),
            ("1/day", 1, Period::Day),
            ("1/d", 1, Period::Day),
            ("1000", 1000, Period::Second),
            ("0.05", 3, Period::Minute),
            ("0.5", 30, Period::Minute),
            ("100000000/s", 100_000_000, Period::Second),
        ] {
            assert_eq!(text.parse::<Rate>(), Ok(Rate { count, period }), "{text}");
        }
    }

    #[test]
    fn rates_out_of_bounds_or_malformed_are_refused() {
        for text in
            ["0/s", "0", "-1", "100000001/s", "3/fortnight", "3/", "/s", "x/s", "1.5/minute", "", "NaN"]
        {
            assert!(text.parse::<Rate>().is_err(), "{text}");
        }
    }

    #[test]
    fn a_rate_prints_as_written_and_serialises_compatibly() {
        let minute = Rate { count: 3, period: Period::Minute };
        assert_eq!(minute.to_string(), "3/minute");
        assert_eq!(serde_json::to_string(&minute).unwrap(), "\"3/minute\"");
        assert_eq!(serde_json::to_string(&Rate::per_second(1000)).unwrap(), "1000");
        for json in ["1000", "\"1000/second\"", "\"3/minute\"", "0.05"] {
            let rate: Rate = serde_json::from_str(json).unwrap();
            let again: Rate = serde_json::from_str(&serde_json::to_string(&rate).unwrap()).unwrap();
            assert_eq!(rate, again, "{json}");
        }
    }

    #[test]
    fn the_interval_is_the_period_over_the_count_rounded_up() {
        assert_eq!(Rate::per_second(1).interval_ticks(), TICKS_PER_SEC);
        assert_eq!(Rate { count: 3, period: Period::Minute }.interval_ticks(), TICKS_PER_SEC * 20);
        assert_eq!(Rate { count: 1, period: Period::Day }.interval_ticks(), TICKS_PER_SEC * 86_400);
        assert_eq!(Rate::per_second(7).interval_ticks(), TICKS_PER_SEC.div_ceil(7));
    }

    #[test]
    fn a_limits_interval_reads_back_as_its_rate() {
        for text in
            ["3/minute", "50/second", "1000/minute", "1/day", "7/second", "100000000/second", "18/hour"]
        {
            let rate: Rate = text.parse().unwrap();
            assert_eq!(Rate::from_interval_ticks(rate.interval_ticks()), rate, "{text}");
        }
    }

    #[test]
    fn a_scaled_rate_moves_to_a_longer_period_rather_than_to_zero() {
        assert_eq!(Rate::per_second(1000).scaled(0.5), Rate::per_second(500));
        assert_eq!(Rate::per_second(3).scaled(1.0), Rate::per_second(3));
        assert_eq!(Rate::per_second(1).scaled(0.1), Rate { count: 6, period: Period::Minute });
        assert_eq!(
            Rate { count: 3, period: Period::Minute }.scaled(0.1),
            Rate { count: 18, period: Period::Hour }
        );
        assert_eq!(
            Rate { count: 1, period: Period::Day }.scaled(0.1),
            Rate { count: 1, period: Period::Day }
        );
    }

    proptest! {
        /// The interval never admits more than the rate: count intervals
        /// span at least the period.
        #[test]
        fn the_interval_never_admits_more_than_the_rate(count in 1u64..=100_000_000, p in 0usize..4) {
            let period = Period::ALL[p];
            let rate = Rate { count, period };
            let interval = rate.interval_ticks();
            prop_assert!(u128::from(interval) * u128::from(count) >= u128::from(TICKS_PER_SEC) * u128::from(period.secs()));
            prop_assert!(interval <= TICKS_PER_SEC * 86_400);
        }
    }
}
