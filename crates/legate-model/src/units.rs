//! Durations and weights as operators write them, in mesh files and on command lines: one
//! parser each, so a mistake reads the same wherever it is made. Mesh fields use the serde
//! adapters here; the binaries' flags use the parsers as clap value parsers.

use std::fmt;
use std::time::Duration;

use serde::de::{self, Visitor};
use serde::{Deserializer, Serializer};

/// A duration that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DurationError {
    #[error("empty duration: expected one such as 500ms, 2s or 1m30s")]
    Empty,
    #[error("'{0}': a duration needs a unit, e.g. {0}s or {0}ms")]
    NoUnit(String),
    #[error("'{input}': unknown unit '{unit}' (use ms, s, m, h or d, e.g. 500ms, 2s or 1m30s)")]
    UnknownUnit { input: String, unit: String },
    #[error("'{0}': too large, or finer than a nanosecond")]
    OutOfRange(String),
    #[error("'{0}': expected a duration such as 500ms, 2s or 1m30s")]
    Invalid(String),
}

/// A duration such as `500ms`, `2s`, `1.5s`, `1m30s` or `1h` (humantime's units: `ns`, `us`,
/// `ms`, `s`/`sec`, `m`/`min`, `h`, `d`, ...). A number without a unit is refused rather
/// than guessed.
pub fn parse_duration(s: &str) -> Result<Duration, DurationError> {
    let input = s.trim();
    humantime::parse_duration(input).map_err(|e| match e {
        humantime::DurationError::Empty => DurationError::Empty,
        humantime::DurationError::UnknownUnit { unit, .. } if unit.is_empty() => {
            DurationError::NoUnit(input.to_owned())
        }
        humantime::DurationError::UnknownUnit { unit, .. } => DurationError::UnknownUnit {
            input: input.to_owned(),
            unit,
        },
        humantime::DurationError::NumberOverflow => DurationError::OutOfRange(input.to_owned()),
        humantime::DurationError::InvalidCharacter(_)
        | humantime::DurationError::NumberExpected(_) => DurationError::Invalid(input.to_owned()),
    })
}

/// A duration written the way mesh files are: one unit where one is exact (`2s`, `1500ms`,
/// `250us`), humantime's parts otherwise (`1m 30s`, `1h`); [`parse_duration`] reads it back.
pub fn format_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_owned();
    }
    if nanos.is_multiple_of(1_000_000_000) && d.as_secs() < 60 {
        format!("{}s", d.as_secs())
    } else if nanos.is_multiple_of(1_000_000_000) {
        humantime::format_duration(d).to_string()
    } else if nanos.is_multiple_of(1_000_000) {
        format!("{}ms", d.as_millis())
    } else if nanos.is_multiple_of(1_000) {
        format!("{}us", d.as_micros())
    } else {
        format!("{nanos}ns")
    }
}

/// serde adapter for required `Duration` mesh fields (`#[serde(with = "crate::units")]`),
/// read and written as [`option`] does.
pub fn serialize<S: Serializer>(value: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_duration(*value))
}

/// See [`serialize`].
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    option::deserialize(d)?.ok_or_else(|| de::Error::custom("a duration is required"))
}

/// serde adapter for `Option<Duration>` mesh fields
/// (`#[serde(default, with = "crate::units::option")]`): written by [`format_duration`];
/// read with [`parse_duration`], so a file reports the same message a flag does.
pub mod option {
    use super::*;

    pub fn serialize<S: Serializer>(value: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(d) => s.serialize_str(&format_duration(*d)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        d.deserialize_option(OptionVisitor)
    }

    struct OptionVisitor;

    impl<'de> Visitor<'de> for OptionVisitor {
        type Value = Option<Duration>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration such as 500ms, 2s or 1m30s")
        }

        fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }

        fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(DurationVisitor).map(Some)
        }
    }
}

struct DurationVisitor;

impl Visitor<'_> for DurationVisitor {
    type Value = Duration;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a duration such as 500ms, 2s or 1m30s")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Duration, E> {
        parse_duration(v).map_err(E::custom)
    }

    // `timeout: 5` in YAML is a number: the same refusal as `--drain-timeout 5`.
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Duration, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Duration, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Duration, E> {
        self.visit_str(&v.to_string())
    }
}

/// A weight that does not parse.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WeightError {
    #[error("'{0}': expected a weight, a whole number from 0 to 4294967295")]
    Invalid(String),
}

/// A weight (of a version, a weighted cluster or an endpoint): a whole number that fits 32
/// bits, as Envoy's weights do.
pub fn parse_weight(s: &str) -> Result<u32, WeightError> {
    let input = s.trim();
    input
        .parse()
        .map_err(|_| WeightError::Invalid(input.to_owned()))
}

/// serde adapter for `u32` weight fields (`#[serde(deserialize_with =
/// "crate::units::weight")]`): refused with [`parse_weight`]'s message, as
/// `legatectl set-weights` refuses it.
pub fn weight<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    d.deserialize_any(WeightVisitor)
}

struct WeightVisitor;

impl Visitor<'_> for WeightVisitor {
    type Value = u32;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a weight, a whole number from 0 to 4294967295")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u32, E> {
        parse_weight(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u32, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u32, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<u32, E> {
        self.visit_str(&v.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formatted_durations_are_compact_and_read_back() {
        for (d, text) in [
            (Duration::ZERO, "0s"),
            (Duration::from_secs(5), "5s"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_micros(250), "250us"),
            (Duration::from_nanos(7), "7ns"),
            (Duration::from_secs(90), "1m 30s"),
            (Duration::from_secs(3600), "1h"),
        ] {
            assert_eq!(format_duration(d), text);
            assert_eq!(parse_duration(text), Ok(d), "{text}");
        }
    }

    #[test]
    fn durations() {
        let ok = |s: &str, d: Duration| assert_eq!(parse_duration(s), Ok(d), "{s}");
        ok("250ms", Duration::from_millis(250));
        ok("2s", Duration::from_secs(2));
        ok(" 1.5s ", Duration::from_millis(1500));
        ok("1m30s", Duration::from_secs(90));
        ok("1m 30s", Duration::from_secs(90));
        ok("0s", Duration::ZERO);
        let err = |s: &str| parse_duration(s).expect_err(s).to_string();
        assert_eq!(
            err("5 parsecs"),
            "'5 parsecs': unknown unit 'parsecs' (use ms, s, m, h or d, e.g. 500ms, 2s or 1m30s)"
        );
        assert_eq!(err("3"), "'3': a duration needs a unit, e.g. 3s or 3ms");
        assert_eq!(
            err("fast"),
            "'fast': expected a duration such as 500ms, 2s or 1m30s"
        );
        assert_eq!(
            err("-1s"),
            "'-1s': expected a duration such as 500ms, 2s or 1m30s"
        );
        assert_eq!(
            err(""),
            "empty duration: expected one such as 500ms, 2s or 1m30s"
        );
        assert!(err("99999999999999999999y").contains("too large"));
    }

    #[test]
    fn weights() {
        assert_eq!(parse_weight("90"), Ok(90));
        assert_eq!(parse_weight("0"), Ok(0));
        assert_eq!(parse_weight("4294967295"), Ok(u32::MAX));
        for bad in ["many", "-1", "1.5", "4294967296", ""] {
            assert_eq!(
                parse_weight(bad),
                Err(WeightError::Invalid(bad.to_owned())),
                "{bad}"
            );
        }
    }
}
