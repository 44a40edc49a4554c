//! Time buckets and ingest epochs.
//!
//! A [`Granularity`] is a whole number of seconds from 1 s to 1 d that divides a
//! day, so every bucket lies inside one UTC day and a coarser granularity that is
//! a multiple of a finer one rolls its buckets up exactly. An [`Epoch`] is the
//! ingest epoch of a record, `floor(kafka_timestamp / epoch_len)`: both layers
//! compute it from the same record, which is what the merge rule stands on.
//!
//! A record's Kafka time is taken one way everywhere ([`kafka_time`]): the
//! record's own timestamp, never the wall clock (a record without one would
//! otherwise get a different epoch in each layer and each replay). Only
//! [`KAFKA_TIME_RANGE`] is accepted as an event's Kafka time; the decoder
//! rejects the rest with a reason. Arithmetic on instants, buckets and epochs
//! saturates, so even a record stamped `i64::MAX` cannot overflow anything.

use std::fmt;
use std::ops::RangeInclusive;
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

    /// Start of the bucket holding `t_ms` (`i64::MIN` for the few instants
    /// whose bucket starts before it).
    pub fn bucket(self, t_ms: i64) -> i64 {
        t_ms.div_euclid(self.ms).saturating_mul(self.ms)
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
/// (Never a record's time: see [`kafka_time`].)
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Kafka's own "no timestamp" (`RecordBatch.NO_TIMESTAMP`).
pub const NO_TIMESTAMP: i64 = -1;

/// The Kafka times an event may have: from 1970-01-01T00:00:00Z to
/// 9999-12-31T23:59:59.999Z, what RFC 3339 can write and every engine that
/// reads the master dataset can hold. Anything else is a producer's bug (a
/// timestamp in microseconds or seconds, an unset clock), and a record that
/// far out would live in Redis for centuries and never be batched.
pub const KAFKA_TIME_RANGE: RangeInclusive<i64> = 0..=253_402_300_799_999;

/// A record's Kafka time as every layer takes it: its timestamp (as rdkafka
/// reports it, `None` when it has none), else [`NO_TIMESTAMP`]. Never the
/// wall clock, so the speed layer, the archiver and every replay give a
/// record the same epoch and the same verdict; the decoder rejects
/// [`NO_TIMESTAMP`] and anything outside [`KAFKA_TIME_RANGE`].
pub fn kafka_time(timestamp: Option<i64>) -> i64 {
    timestamp.unwrap_or(NO_TIMESTAMP)
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

impl EpochGrid {
    pub fn new(len_ms: i64) -> Self {
        EpochGrid { len_ms }
    }

    pub fn epoch_of(self, kafka_ts_ms: i64) -> Epoch {
        kafka_ts_ms.div_euclid(self.len_ms)
    }

    /// The first instant of epoch `e` (saturating at the ends of `i64`).
    pub fn start(self, e: Epoch) -> i64 {
        e.saturating_mul(self.len_ms)
    }

    /// One past the last instant of epoch `e` (saturating at the ends of
    /// `i64`: the epoch of `i64::MAX` never ends).
    pub fn end(self, e: Epoch) -> i64 {
        e.saturating_add(1).saturating_mul(self.len_ms)
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
    fn nothing_overflows_at_the_ends_of_time() {
        let g = EpochGrid::new(3_600_000);
        for t in [i64::MIN, i64::MIN + 1, -1, 0, i64::MAX - 1, i64::MAX] {
            let e = g.epoch_of(t);
            assert!(g.start(e) <= t, "{t}");
            assert!(g.end(e) > t || g.end(e) == i64::MAX, "{t}");
            let b = Granularity::DAY.bucket(t);
            assert!(b <= t && (b == i64::MIN || t - b < MS_PER_DAY), "{t}");
            day_of(t);
        }
        assert_eq!(g.end(g.epoch_of(i64::MAX)), i64::MAX);
        assert_eq!(g.start(g.epoch_of(i64::MIN)), i64::MIN);
        assert_eq!(g.end(i64::MAX), i64::MAX);
        // Inside the range Kafka times may have, exact.
        let last = *KAFKA_TIME_RANGE.end();
        assert_eq!(g.end(g.epoch_of(last)), last + 1);
        assert_eq!(g.start(g.epoch_of(0)), 0);
        assert_eq!(Granularity::MINUTE.bucket(last), last + 1 - 60_000);
    }

    #[test]
    fn the_kafka_time_range_is_what_rfc3339_writes() {
        assert_eq!(
            parse_instant("9999-12-31T23:59:59.999Z"),
            Some(*KAFKA_TIME_RANGE.end())
        );
        assert_eq!(
            parse_instant("1970-01-01T00:00:00Z"),
            Some(*KAFKA_TIME_RANGE.start())
        );
        assert_eq!(kafka_time(None), NO_TIMESTAMP);
        assert_eq!(kafka_time(Some(5)), 5);
        assert!(!KAFKA_TIME_RANGE.contains(&NO_TIMESTAMP));
    }

    #[test]
    fn epochs_cover_time_without_gaps() {
        let c = EpochGrid::new(3_600_000);
        assert_eq!(c.epoch_of(3_599_999), 0);
        assert_eq!(c.epoch_of(3_600_000), 1);
        assert_eq!(c.end(0), c.start(1));
    }
}
