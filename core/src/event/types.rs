//! What a decoded event is, and the limits a record is checked against.

use std::borrow::Cow;

/// A scalar JSON value, as found in `properties` and the top-level fields.
#[derive(Debug, Clone, PartialEq)]
pub enum Scalar<'a> {
    Str(Cow<'a, str>),
    Int(i64),
    Float(f64),
    Bool(bool),
    Null,
}

impl Scalar<'_> {
    /// The value as a number, if it is one (measures `sum`, `min`, `max`).
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Scalar::Int(i) => Some(*i as f64),
            Scalar::Float(f) => Some(*f),
            _ => None,
        }
    }

    /// The value as a dimension or distinct key: its JSON text without quotes.
    /// Integers and floats print as JSON would, so both layers agree.
    pub fn write_text(&self, out: &mut String) {
        use std::fmt::Write;
        match self {
            Scalar::Str(s) => out.push_str(s),
            Scalar::Int(i) => {
                let _ = write!(out, "{i}");
            }
            Scalar::Float(f) => {
                let _ = write!(out, "{f}");
            }
            Scalar::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Scalar::Null => {}
        }
    }

    pub fn to_text(&self) -> String {
        let mut s = String::new();
        self.write_text(&mut s);
        s
    }

    pub fn into_owned(self) -> Scalar<'static> {
        match self {
            Scalar::Str(s) => Scalar::Str(Cow::Owned(s.into_owned())),
            Scalar::Int(i) => Scalar::Int(i),
            Scalar::Float(f) => Scalar::Float(f),
            Scalar::Bool(b) => Scalar::Bool(b),
            Scalar::Null => Scalar::Null,
        }
    }
}

/// A decoded, validated event. Borrows from the record it was decoded from.
#[derive(Debug, Clone, PartialEq)]
pub struct Event<'a> {
    pub event_id: Cow<'a, str>,
    pub event_type: Cow<'a, str>,
    /// Event time, epoch milliseconds (UTC).
    pub time_ms: i64,
    pub user_id: Option<Cow<'a, str>>,
    /// Properties in the order they appeared.
    pub properties: Vec<(Cow<'a, str>, Scalar<'a>)>,
}

impl<'a> Event<'a> {
    /// A property by name.
    pub fn property(&self, name: &str) -> Option<&Scalar<'a>> {
        self.properties
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
    }
}

/// Limits applied by [`decode`](super::decode), from the `[events]` section of the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest accepted record, in bytes.
    pub max_bytes: usize,
    /// How far before its Kafka timestamp an event may be stamped, in ms.
    pub max_past_ms: i64,
    /// How far after its Kafka timestamp an event may be stamped, in ms.
    pub max_future_ms: i64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_bytes: 64 * 1024,
            max_past_ms: 30 * 86_400_000,
            max_future_ms: 3_600_000,
        }
    }
}

/// The largest magnitude a fractional property may have. Float sums are
/// `f64`: with values below 1e300, no chunk of the speed layer, and no bucket
/// of fewer than about 1e8 events, can overflow, so both layers sum the same
/// finite values (integers are summed exactly, see [`crate::agg`]).
pub const MAX_ABS_FLOAT: f64 = 1e300;
