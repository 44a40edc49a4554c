//! What generated traffic looks like. Every field has a default, so an empty
//! TOML file is a valid shape; unknown fields are errors. [`Shape::check`]
//! guarantees that a shape the generator accepts produces valid records only
//! inside the platform's accepted event-time range (`[events] max_past` /
//! `max_future` around the Kafka timestamp) and invalid ones only on purpose.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tally_core::config::Millis;
use tally_core::event::Limits;

use crate::malformed::MalformedKind;

/// A name and its relative weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Weighted {
    pub name: String,
    pub weight: f64,
}

impl Weighted {
    pub fn new(name: &str, weight: f64) -> Weighted {
        Weighted {
            name: name.to_owned(),
            weight,
        }
    }
}

/// An inclusive integer range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntRange {
    pub min: i64,
    pub max: i64,
}

/// The shape of generated traffic.
///
/// Properties by event type: every event has `page` (and `country` and
/// `mobile` most of the time); `page_view` and `click` have an integer
/// `duration` (seconds) and a float `latency_ms` (log-uniform, 0.1 ms to
/// 10 s: what quantile measures read); `page_view` has a float `scroll` (a
/// multiple of 0.25, so float sums are exact in any order); `purchase` has an integer `amount`
/// (cents). Numbers that views sum are integers, so sums compare exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Shape {
    /// Event types and their relative weights.
    pub event_types: Vec<Weighted>,
    /// Number of distinct pages (`/p0`, `/p1`, …).
    pub pages: u64,
    /// Zipf exponent of page popularity (0 = uniform).
    pub page_skew: f64,
    /// Number of distinct users (`u0`, `u1`, …).
    pub users: u64,
    /// Zipf exponent of user activity (0 = uniform).
    pub user_skew: f64,
    /// Share of events without a `user_id`.
    pub anonymous_share: f64,
    /// Countries and their weights.
    pub countries: Vec<Weighted>,
    /// Share of events without a `country` property.
    pub no_country_share: f64,
    /// `properties.duration`, seconds.
    pub duration: IntRange,
    /// `properties.amount`, cents.
    pub amount: IntRange,
    /// Share of events that arrive late: stamped up to `max_late` before
    /// their Kafka timestamp.
    pub late_share: f64,
    /// How late a late event may be (at most `[events] max_past`).
    pub max_late: Millis,
    /// Share of events out of order: stamped within `max_jitter` either side
    /// of their Kafka timestamp (never past `[events] max_future`).
    pub out_of_order_share: f64,
    pub max_jitter: Millis,
    /// Share of valid events whose timestamp is RFC 3339 text rather than
    /// epoch milliseconds.
    pub rfc3339_share: f64,
    /// Share of records that are a producer's retry: a copy of one of the
    /// last `retry_span` valid events (same event_id, key and bytes) sent
    /// again, stamped with the current Kafka time (where it is still valid).
    pub retry_share: f64,
    /// How many recent valid events a retry picks from.
    pub retry_span: u64,
    /// Share of records that are malformed on purpose.
    pub malformed_share: f64,
    /// The kinds of malformed records, chosen uniformly; empty means all.
    pub malformed_kinds: Vec<MalformedKind>,
    /// Seed used by `tally gen` when none is given on the command line.
    pub seed: u64,
    /// The platform's limits that decide validity (`[events]` in the config);
    /// not part of the TOML: set it with [`Shape::with_limits`].
    #[serde(skip)]
    pub limits: Limits,
}

impl Default for Shape {
    fn default() -> Self {
        Shape {
            event_types: vec![
                Weighted::new("page_view", 60.0),
                Weighted::new("click", 25.0),
                Weighted::new("purchase", 5.0),
                Weighted::new("signup", 3.0),
                Weighted::new("search", 7.0),
            ],
            pages: 200,
            page_skew: 1.1,
            users: 100_000,
            user_skew: 0.8,
            anonymous_share: 0.02,
            countries: vec![
                Weighted::new("us", 40.0),
                Weighted::new("de", 15.0),
                Weighted::new("fr", 10.0),
                Weighted::new("in", 15.0),
                Weighted::new("br", 10.0),
                Weighted::new("jp", 10.0),
            ],
            no_country_share: 0.1,
            duration: IntRange { min: 1, max: 600 },
            amount: IntRange {
                min: 100,
                max: 50_000,
            },
            late_share: 0.05,
            max_late: Millis(2 * 86_400_000),
            out_of_order_share: 0.2,
            max_jitter: Millis(60_000),
            rfc3339_share: 0.5,
            retry_share: 0.0,
            retry_span: 1000,
            malformed_share: 0.001,
            malformed_kinds: Vec::new(),
            seed: 1,
            limits: Limits::default(),
        }
    }
}

/// A shape that cannot be generated as asked.
#[derive(Debug, thiserror::Error)]
pub enum ShapeError {
    #[error("read shape file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("shape file {path}: {message}")]
    Parse { path: String, message: String },
    #[error("shape `{field}`: {problem}")]
    Invalid {
        field: &'static str,
        problem: String,
    },
}

impl Shape {
    /// Read a shape from a TOML file (every field optional).
    pub fn from_toml_file(path: &Path) -> Result<Shape, ShapeError> {
        let text = std::fs::read_to_string(path).map_err(|source| ShapeError::Read {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ShapeError::Parse {
            path: path.display().to_string(),
            message: e.to_string(),
        })
    }

    /// The traffic the drain benchmarks (speed and archive) have always
    /// measured: page views, clicks and signups (2:1:1) over 50 pages and
    /// 100,000 users, event times within 5 s of their Kafka time, nothing
    /// late or malformed. One name, so that their figures stay comparable.
    pub fn drain() -> Shape {
        Shape {
            event_types: vec![
                Weighted::new("page_view", 2.0),
                Weighted::new("click", 1.0),
                Weighted::new("signup", 1.0),
            ],
            pages: 50,
            users: 100_000,
            late_share: 0.0,
            out_of_order_share: 1.0,
            max_jitter: Millis(5_000),
            malformed_share: 0.0,
            ..Shape::default()
        }
    }

    /// The same shape judged against `limits` (the config's `[events]`).
    pub fn with_limits(mut self, limits: Limits) -> Shape {
        self.limits = limits;
        self
    }

    /// Lower `max_late` and `max_jitter` to what `limits` accept, for callers
    /// that want "as late as the platform allows" rather than an error.
    pub fn clamped_to_limits(mut self) -> Shape {
        self.max_late = Millis(self.max_late.0.min(self.limits.max_past_ms));
        self.max_jitter = Millis(self.max_jitter.0.min(self.limits.max_past_ms));
        self
    }

    /// Check that the shape can be generated and that what it calls valid
    /// the platform accepts.
    pub fn check(&self) -> Result<(), ShapeError> {
        let invalid =
            |field: &'static str, problem: String| Err(ShapeError::Invalid { field, problem });
        for (field, share) in [
            ("anonymous_share", self.anonymous_share),
            ("no_country_share", self.no_country_share),
            ("late_share", self.late_share),
            ("out_of_order_share", self.out_of_order_share),
            ("rfc3339_share", self.rfc3339_share),
            ("malformed_share", self.malformed_share),
            ("retry_share", self.retry_share),
        ] {
            if !(0.0..=1.0).contains(&share) {
                return invalid(field, format!("{share} is not a share: use 0.0 to 1.0"));
            }
        }
        if self.late_share + self.out_of_order_share > 1.0 {
            return invalid(
                "late_share",
                "late_share + out_of_order_share must be at most 1.0".into(),
            );
        }
        if !weights_ok(&self.event_types) {
            return invalid(
                "event_types",
                "list at least one type with a positive weight; weights are 0 or more".into(),
            );
        }
        if self.event_types.iter().any(|t| t.name.is_empty()) {
            return invalid("event_types", "an event type name is empty".into());
        }
        if !weights_ok(&self.countries) {
            return invalid(
                "countries",
                "list at least one country with a positive weight; weights are 0 or more".into(),
            );
        }
        if self.retry_share > 0.0 && self.retry_span == 0 {
            return invalid("retry_span", "must be at least 1 with retries".into());
        }
        if self.pages == 0 || self.users == 0 {
            return invalid("pages", "pages and users must be at least 1".into());
        }
        for (field, skew) in [("page_skew", self.page_skew), ("user_skew", self.user_skew)] {
            if !(0.0..=10.0).contains(&skew) {
                return invalid(field, format!("{skew} is out of range: use 0.0 to 10.0"));
            }
        }
        for (field, r) in [("duration", self.duration), ("amount", self.amount)] {
            if r.min > r.max || r.min.checked_neg().is_none() || r.max > i64::MAX / 1_000_000_000 {
                return invalid(field, format!("{r:?}: min must be at most max, both small"));
            }
        }
        if self.max_late.0 < 0 || self.max_late.0 > self.limits.max_past_ms {
            return invalid(
                "max_late",
                format!(
                    "{} is outside the accepted range: at most [events] max_past ({})",
                    String::from(self.max_late),
                    String::from(Millis(self.limits.max_past_ms))
                ),
            );
        }
        if self.max_jitter.0 < 0 || self.max_jitter.0 > self.limits.max_past_ms {
            return invalid(
                "max_jitter",
                "must be 0 or more and at most [events] max_past".into(),
            );
        }
        // The largest valid record must stay under the size limit.
        if self.limits.max_bytes < 1024 {
            return invalid(
                "limits",
                "[events] max_bytes below 1024 leaves no room for valid events".into(),
            );
        }
        let longest = self
            .event_types
            .iter()
            .chain(&self.countries)
            .map(|w| w.name.len())
            .max()
            .unwrap_or(0);
        if longest > 200 {
            return invalid("event_types", "names longer than 200 bytes".into());
        }
        Ok(())
    }
}

fn weights_ok(list: &[Weighted]) -> bool {
    list.iter().all(|w| w.weight >= 0.0 && w.weight.is_finite())
        && list.iter().any(|w| w.weight > 0.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_toml_is_the_default() {
        let s: Shape = toml::from_str("").unwrap();
        assert_eq!(s, Shape::default());
        s.check().unwrap();
    }

    #[test]
    fn fields_parse_and_typos_are_errors() {
        let s: Shape = toml::from_str(
            r#"
            late_share = 0.2
            max_late = "3d"
            malformed_kinds = ["not_json", "too_old"]
            event_types = [{ name = "page_view", weight = 1.0 }]
            duration = { min = -50, max = 1000 }
            "#,
        )
        .unwrap();
        assert_eq!(s.max_late, Millis(3 * 86_400_000));
        assert_eq!(s.malformed_kinds.len(), 2);
        assert!(toml::from_str::<Shape>("late_shares = 0.2").is_err());
    }

    #[test]
    fn lateness_must_stay_inside_max_past() {
        let limits = Limits {
            max_past_ms: 86_400_000,
            ..Limits::default()
        };
        let s = Shape::default().with_limits(limits);
        let err = s.check().unwrap_err().to_string();
        assert!(err.contains("max_late"), "{err}");
        let s = s.clamped_to_limits();
        s.check().unwrap();
        assert_eq!(s.max_late, Millis(86_400_000));
    }
}
