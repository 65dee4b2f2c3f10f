//! Durations as operators write them: `1s`, `500ms`, `2m`, `1h`, `1m30s`.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A `std::time::Duration` that reads and prints as `1s`, `500ms`, `1m30s`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub const fn from_millis(ms: u64) -> Self {
        HumanDuration(Duration::from_millis(ms))
    }

    pub const fn from_secs(s: u64) -> Self {
        HumanDuration(Duration::from_secs(s))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration `{0}`: expected a number with a unit, like `1s`, `500ms`, `2m` or `1m30s` (units: ms, s, m, h)")]
pub struct DurationError(String);

const UNITS: [(&str, u64); 4] = [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)];

impl FromStr for HumanDuration {
    type Err = DurationError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let invalid = || DurationError(text.to_string());
        let mut rest = text.trim();
        if rest.is_empty() {
            return Err(invalid());
        }
        let mut total_ms: u64 = 0;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .ok_or_else(invalid)?;
            if digits == 0 {
                return Err(invalid());
            }
            let number: u64 = rest[..digits].parse().map_err(|_| invalid())?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            let (_, scale) = UNITS.iter().find(|(u, _)| *u == unit).ok_or_else(invalid)?;
            total_ms = number
                .checked_mul(*scale)
                .and_then(|ms| total_ms.checked_add(ms))
                .ok_or_else(invalid)?;
            rest = &rest[unit_len..];
        }
        Ok(HumanDuration(Duration::from_millis(total_ms)))
    }
}

impl fmt::Display for HumanDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut ms = self.0.as_millis();
        if ms == 0 {
            return f.write_str("0s");
        }
        for (unit, scale) in UNITS.iter().rev() {
            let scale = u128::from(*scale);
            if ms >= scale && (ms % scale == 0 || *unit != "ms") {
                let whole = ms / scale;
                if whole > 0 {
                    write!(f, "{whole}{unit}")?;
                    ms -= whole * scale;
                }
            }
        }
        Ok(())
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for HumanDuration {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_operator_durations() {
        for (text, ms, shown) in [
            ("1s", 1_000, "1s"),
            ("500ms", 500, "500ms"),
            ("2m", 120_000, "2m"),
            ("1m30s", 90_000, "1m30s"),
            ("1h", 3_600_000, "1h"),
            ("1500ms", 1_500, "1s500ms"),
            ("0s", 0, "0s"),
        ] {
            let d: HumanDuration = text.parse().unwrap();
            assert_eq!(d.0, Duration::from_millis(ms), "{text}");
            assert_eq!(d.to_string(), shown, "{text}");
        }
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for text in [
            "",
            "1",
            "s",
            "1 s",
            "1sec",
            "-1s",
            "1.5s",
            "99999999999999999999h",
        ] {
            assert!(text.parse::<HumanDuration>().is_err(), "{text:?} parsed");
        }
    }
}
