//! Time buckets and ingest epochs.
//!
//! A [`Granularity`] is a whole number of seconds from 1 s to 1 d that divides a
//! day, so every bucket lies inside one UTC day and a coarser granularity that is
//! a multiple of a finer one rolls its buckets up exactly. An [`Epoch`] is the
//! ingest epoch of a record, `floor(kafka_timestamp / epoch_len)`: both layers
//! compute it from the same record, which is what the merge rule stands on.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

pub const MS_PER_DAY: i64 = 86_400_000;

/// A bucket width. Always divides a day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Granularity {
    ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GranularityError {
    #[error("`{0}` is not a duration: use a number and a unit, like 1s, 30s, 1m, 5m, 1h, 1d")]
    Syntax(String),
    #[error("`{0}` is out of range: a granularity is from 1s to 1d")]
    Range(String),
    #[error("`{0}` does not divide a day evenly: use one that does, like 1m, 5m, 15m, 1h, 6h")]
    NotDayDivisor(String),
}

impl Granularity {
    pub const SECOND: Granularity = Granularity { ms: 1000 };
    pub const MINUTE: Granularity = Granularity { ms: 60_000 };
    pub const HOUR: Granularity = Granularity { ms: 3_600_000 };
    pub const DAY: Granularity = Granularity { ms: MS_PER_DAY };

    pub fn from_ms(ms: i64) -> Result<Self, GranularityError> {
        let text = format_ms(ms);
        if !(1000..=MS_PER_DAY).contains(&ms) || ms % 1000 != 0 {
            return Err(GranularityError::Range(text));
        }
        if MS_PER_DAY % ms != 0 {
            return Err(GranularityError::NotDayDivisor(text));
        }
        Ok(Granularity { ms })
    }

    pub fn as_ms(self) -> i64 {
        self.ms
    }

    /// Start of the bucket holding `t_ms`.
    pub fn bucket(self, t_ms: i64) -> i64 {
        t_ms.div_euclid(self.ms) * self.ms
    }

    /// Whether buckets of `self` roll up into buckets of `coarser` exactly.
    pub fn divides(self, coarser: Granularity) -> bool {
        coarser.ms % self.ms == 0
    }

    /// Buckets per day.
    pub fn per_day(self) -> i64 {
        MS_PER_DAY / self.ms
    }
}

impl FromStr for Granularity {
    type Err = GranularityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let ms = parse_duration_ms(s).ok_or_else(|| GranularityError::Syntax(s.to_owned()))?;
        Granularity::from_ms(ms)
    }
}

impl TryFrom<String> for Granularity {
    type Error = GranularityError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Granularity> for String {
    fn from(g: Granularity) -> String {
        g.to_string()
    }
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&format_ms(self.ms))
    }
}

/// Parse `30s`, `5m`, `1h`, `1d`, `250ms` into milliseconds.
pub fn parse_duration_ms(s: &str) -> Option<i64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: i64 = num.parse().ok()?;
    let mult = match unit {
        "ms" => 1,
        "s" => 1000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => MS_PER_DAY,
        _ => return None,
    };
    n.checked_mul(mult)
}

/// Parse an instant as users write it on a command line or in a query:
/// RFC 3339 (`2024-01-01T00:00:00Z`) or epoch milliseconds.
pub fn parse_instant(s: &str) -> Option<i64> {
    let s = s.trim();
    if let Ok(ms) = s.parse::<i64>() {
        return Some(ms);
    }
    chrono::DateTime::parse_from_rfc3339(s)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// The shortest text for a millisecond duration (`90000` -> `90s`).
pub fn format_ms(ms: i64) -> String {
    for (unit, mult) in [
        ("d", MS_PER_DAY),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1000),
    ] {
        if ms != 0 && ms % mult == 0 {
            return format!("{}{unit}", ms / mult);
        }
    }
    format!("{ms}ms")
}

/// The wall clock in epoch milliseconds: the one place every role reads it.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The UTC day number (days since 1970-01-01) of `t_ms`.
pub fn day_of(t_ms: i64) -> i64 {
    t_ms.div_euclid(MS_PER_DAY)
}

/// An ingest epoch number: `floor(kafka_ts / epoch_len)`.
pub type Epoch = i64;

/// How time is cut into ingest epochs: a fixed grid of `len_ms`. Both
/// layers hold the same value from config. (It reads no clock: a record's
/// epoch comes from its Kafka timestamp.)
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EpochGrid {
    pub len_ms: i64,
}

/// The old name of [`EpochGrid`], for the code being rebuilt elsewhere
/// (`batch/src/archive_file.rs`, `speed/src/apply.rs`, the batch tests and
/// benchmark); remove once nothing uses it.
pub type EpochClock = EpochGrid;

impl EpochGrid {
    pub fn new(len_ms: i64) -> Self {
        EpochGrid { len_ms }
    }

    pub fn epoch_of(self, kafka_ts_ms: i64) -> Epoch {
        kafka_ts_ms.div_euclid(self.len_ms)
    }

    pub fn start(self, e: Epoch) -> i64 {
        e * self.len_ms
    }

    pub fn end(self, e: Epoch) -> i64 {
        (e + 1) * self.len_ms
    }
}

impl Default for EpochGrid {
    fn default() -> Self {
        EpochGrid::new(3_600_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_are_rfc3339_or_epoch_ms() {
        assert_eq!(parse_instant("1700000000000"), Some(1_700_000_000_000));
        assert_eq!(
            parse_instant("2024-01-01T00:00:00Z"),
            Some(1_704_067_200_000)
        );
        assert_eq!(
            parse_instant("2024-01-01T01:00:00+01:00"),
            Some(1_704_067_200_000)
        );
        assert_eq!(parse_instant("yesterday"), None);
    }

    #[test]
    fn parses_the_units() {
        assert_eq!("1s".parse::<Granularity>().unwrap().as_ms(), 1000);
        assert_eq!("5m".parse::<Granularity>().unwrap().as_ms(), 300_000);
        assert_eq!("6h".parse::<Granularity>().unwrap().as_ms(), 21_600_000);
        assert_eq!("1d".parse::<Granularity>().unwrap(), Granularity::DAY);
        assert_eq!("60m".parse::<Granularity>().unwrap(), Granularity::HOUR);
        assert_eq!(Granularity::HOUR.to_string(), "1h");
        assert_eq!("90s".parse::<Granularity>().unwrap().to_string(), "90s");
    }

    #[test]
    fn rejects_what_cannot_bucket_a_day() {
        assert!(matches!(
            "7m".parse::<Granularity>(),
            Err(GranularityError::NotDayDivisor(_))
        ));
        assert!(matches!(
            "2d".parse::<Granularity>(),
            Err(GranularityError::Range(_))
        ));
        assert!(matches!(
            "500ms".parse::<Granularity>(),
            Err(GranularityError::Range(_))
        ));
        assert!(matches!(
            "1w".parse::<Granularity>(),
            Err(GranularityError::Syntax(_))
        ));
        assert!(matches!(
            "m".parse::<Granularity>(),
            Err(GranularityError::Syntax(_))
        ));
    }

    #[test]
    fn buckets_floor_also_before_1970() {
        let m = Granularity::MINUTE;
        assert_eq!(m.bucket(119_999), 60_000);
        assert_eq!(m.bucket(-1), -60_000);
        assert_eq!(day_of(-1), -1);
        assert!(m.divides(Granularity::HOUR));
        assert!(!Granularity::HOUR.divides(m));
    }

    #[test]
    fn epochs_cover_time_without_gaps() {
        let c = EpochGrid::new(3_600_000);
        assert_eq!(c.epoch_of(3_599_999), 0);
        assert_eq!(c.epoch_of(3_600_000), 1);
        assert_eq!(c.end(0), c.start(1));
    }
}
