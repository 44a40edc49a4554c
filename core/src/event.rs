//! Event decoding and validation: the one definition of a valid event.
//!
//! Both layers decode every Kafka record with [`decode`]; a record is either an
//! [`Event`] borrowing from the record's bytes or a [`Reject`] whose
//! [`Reject::code`] becomes the dead-letter header. Because the allowed time range
//! is measured from the record's Kafka timestamp (not the wall clock), the verdict
//! for a record is the same in the speed layer, the archiver and any replay.
//!
//! Decoding is on the hot path: strings are borrowed from the input unless they
//! contain escapes, and unknown top-level fields are skipped without allocating.

use std::borrow::Cow;
use std::fmt;

use chrono::DateTime;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};

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

/// Limits applied by [`decode`], from the `[events]` section of the config.
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

/// Why a record is not a valid event. `code()` is stable: it is the
/// `tally.reason` dead-letter header and the `reason` metric label.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("record is empty")]
    Empty,
    #[error("record is {size} bytes, over the limit of {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("record is not valid UTF-8")]
    NotUtf8,
    #[error("record is not valid JSON: {0}")]
    NotJson(String),
    #[error("record is JSON but not an object")]
    NotObject,
    #[error("required field `{0}` is missing")]
    MissingField(&'static str),
    #[error("field `{field}` must be {expected}")]
    WrongType {
        field: &'static str,
        expected: &'static str,
    },
    #[error("field `{0}` is empty")]
    EmptyField(&'static str),
    #[error("field `{0}` appears twice")]
    DuplicateField(&'static str),
    #[error("timestamp `{0}` is neither RFC 3339 nor epoch milliseconds")]
    BadTimestamp(String),
    #[error(
        "timestamp {time_ms} is outside the allowed range [{min_ms}, {max_ms}] around the record's Kafka timestamp"
    )]
    TimestampOutOfRange {
        time_ms: i64,
        min_ms: i64,
        max_ms: i64,
    },
    #[error("property `{0}` is not a scalar (objects and arrays are not allowed)")]
    PropertyNotScalar(String),
}

impl Reject {
    /// Stable machine-readable code.
    pub fn code(&self) -> &'static str {
        match self {
            Reject::Empty => "empty",
            Reject::TooLarge { .. } => "too_large",
            Reject::NotUtf8 => "not_utf8",
            Reject::NotJson(_) => "not_json",
            Reject::NotObject => "not_object",
            Reject::MissingField(_) => "missing_field",
            Reject::WrongType { .. } => "wrong_type",
            Reject::EmptyField(_) => "empty_field",
            Reject::DuplicateField(_) => "duplicate_field",
            Reject::BadTimestamp(_) => "bad_timestamp",
            Reject::TimestampOutOfRange { .. } => "timestamp_out_of_range",
            Reject::PropertyNotScalar(_) => "property_not_scalar",
        }
    }

    /// Every code, for metrics pre-registration and docs.
    pub const CODES: [&'static str; 12] = [
        "empty",
        "too_large",
        "not_utf8",
        "not_json",
        "not_object",
        "missing_field",
        "wrong_type",
        "empty_field",
        "duplicate_field",
        "bad_timestamp",
        "timestamp_out_of_range",
        "property_not_scalar",
    ];
}

/// Decode and validate one record. `kafka_ts_ms` is the record's Kafka
/// timestamp, the reference for the allowed event-time range.
pub fn decode<'a>(bytes: &'a [u8], kafka_ts_ms: i64, limits: &Limits) -> Result<Event<'a>, Reject> {
    if bytes.is_empty() {
        return Err(Reject::Empty);
    }
    if bytes.len() > limits.max_bytes {
        return Err(Reject::TooLarge {
            size: bytes.len(),
            limit: limits.max_bytes,
        });
    }
    let text = std::str::from_utf8(bytes).map_err(|_| Reject::NotUtf8)?;
    let mut de = serde_json::Deserializer::from_str(text);
    let raw = match de.deserialize_any(RawVisitor) {
        Ok(Ok(raw)) => raw,
        Ok(Err(reject)) => return Err(reject),
        Err(e) => return Err(Reject::NotJson(e.to_string())),
    };
    if let Err(e) = de.end() {
        return Err(Reject::NotJson(e.to_string()));
    }
    raw.validate(kafka_ts_ms, limits)
}

/// Parse an event timestamp: RFC 3339 text or epoch milliseconds.
pub fn parse_timestamp(value: &Scalar<'_>) -> Result<i64, Reject> {
    match value {
        Scalar::Int(ms) => Ok(*ms),
        Scalar::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(*f as i64),
        Scalar::Str(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.timestamp_millis())
            .map_err(|_| Reject::BadTimestamp(truncate(s))),
        other => Err(Reject::BadTimestamp(truncate(&other.to_text()))),
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

/// Top-level fields as found, before validation.
#[derive(Default)]
struct Raw<'a> {
    event_id: Option<Field<'a>>,
    event_type: Option<Field<'a>>,
    timestamp: Option<Field<'a>>,
    user_id: Option<Field<'a>>,
    properties: Option<Result<Vec<(Cow<'a, str>, Scalar<'a>)>, Reject>>,
}

/// A top-level value: a scalar, or a marker that it was an object or array.
enum Field<'a> {
    Scalar(Scalar<'a>),
    Nested,
}

impl<'a> Raw<'a> {
    fn validate(self, kafka_ts_ms: i64, limits: &Limits) -> Result<Event<'a>, Reject> {
        let event_id = required_str("event_id", self.event_id)?;
        let event_type = required_str("event_type", self.event_type)?;
        let time_ms = match self.timestamp {
            None | Some(Field::Scalar(Scalar::Null)) => {
                return Err(Reject::MissingField("timestamp"))
            }
            Some(Field::Scalar(Scalar::Bool(_))) | Some(Field::Nested) => {
                return Err(Reject::WrongType {
                    field: "timestamp",
                    expected: "an RFC 3339 string or epoch milliseconds",
                })
            }
            Some(Field::Scalar(s)) => parse_timestamp(&s)?,
        };
        let min_ms = kafka_ts_ms.saturating_sub(limits.max_past_ms);
        let max_ms = kafka_ts_ms.saturating_add(limits.max_future_ms);
        if time_ms < min_ms || time_ms > max_ms {
            return Err(Reject::TimestampOutOfRange {
                time_ms,
                min_ms,
                max_ms,
            });
        }
        let user_id = match self.user_id {
            None | Some(Field::Scalar(Scalar::Null)) => None,
            Some(Field::Scalar(Scalar::Str(s))) => Some(s),
            // Numeric user ids are common; keep them as their JSON text.
            Some(Field::Scalar(s @ (Scalar::Int(_) | Scalar::Float(_)))) => {
                Some(Cow::Owned(s.to_text()))
            }
            Some(_) => {
                return Err(Reject::WrongType {
                    field: "user_id",
                    expected: "a string",
                })
            }
        };
        let properties = self.properties.transpose()?.unwrap_or_default();
        Ok(Event {
            event_id,
            event_type,
            time_ms,
            user_id,
            properties,
        })
    }
}

fn required_str<'a>(name: &'static str, field: Option<Field<'a>>) -> Result<Cow<'a, str>, Reject> {
    match field {
        None | Some(Field::Scalar(Scalar::Null)) => Err(Reject::MissingField(name)),
        Some(Field::Scalar(Scalar::Str(s))) if s.is_empty() => Err(Reject::EmptyField(name)),
        Some(Field::Scalar(Scalar::Str(s))) => Ok(s),
        Some(_) => Err(Reject::WrongType {
            field: name,
            expected: "a string",
        }),
    }
}

/// Visits the top-level value. Returns `Ok(Err(reject))` for well-formed JSON
/// that is not a valid event shape, so that syntax errors and shape errors
/// stay distinct.
struct RawVisitor;

impl<'de> Visitor<'de> for RawVisitor {
    type Value = Result<Raw<'de>, Reject>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut raw = Raw::default();
        let mut duplicate = None;
        while let Some(key) = map.next_key::<CowStr<'de>>()? {
            let slot = match key.0.as_ref() {
                "event_id" => Some(("event_id", &mut raw.event_id)),
                "event_type" => Some(("event_type", &mut raw.event_type)),
                "timestamp" => Some(("timestamp", &mut raw.timestamp)),
                "user_id" => Some(("user_id", &mut raw.user_id)),
                "properties" => {
                    let props = map.next_value_seed(PropertiesSeed)?;
                    if raw.properties.replace(props).is_some() {
                        duplicate.get_or_insert("properties");
                    }
                    None
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                    None
                }
            };
            if let Some((name, slot)) = slot {
                let value = map.next_value_seed(FieldSeed)?;
                if slot.replace(value).is_some() {
                    duplicate.get_or_insert(name);
                }
            }
        }
        Ok(match duplicate {
            Some(name) => Err(Reject::DuplicateField(name)),
            None => Ok(raw),
        })
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Err(Reject::NotObject))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Err(Reject::NotObject))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err(Reject::NotObject))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err(Reject::NotObject))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err(Reject::NotObject))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err(Reject::NotObject))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Err(Reject::NotObject))
    }
}

/// A string borrowed from the input when it has no escapes.
struct CowStr<'a>(Cow<'a, str>);

impl<'de> de::Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(V)
    }
}

/// Deserializes any value into a [`Field`].
struct FieldSeed;

impl<'de> DeserializeSeed<'de> for FieldSeed {
    type Value = Field<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(FieldVisitor)
    }
}

struct FieldVisitor;

impl<'de> Visitor<'de> for FieldVisitor {
    type Value = Field<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Field::Scalar(Scalar::Str(Cow::Borrowed(v))))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Field::Scalar(Scalar::Str(Cow::Owned(v.to_owned()))))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Field::Scalar(Scalar::Int(v)))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Field::Scalar(match i64::try_from(v) {
            Ok(i) => Scalar::Int(i),
            Err(_) => Scalar::Float(v as f64),
        }))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Field::Scalar(Scalar::Float(v)))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Field::Scalar(Scalar::Bool(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Field::Scalar(Scalar::Null))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Field::Nested)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(Field::Nested)
    }
}

/// Deserializes `properties`: an object of scalars.
struct PropertiesSeed;

type Props<'a> = Result<Vec<(Cow<'a, str>, Scalar<'a>)>, Reject>;

impl<'de> DeserializeSeed<'de> for PropertiesSeed {
    type Value = Props<'de>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for PropertiesSeed {
    type Value = Props<'de>;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object of scalars")
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut props = Vec::with_capacity(map.size_hint().unwrap_or(4));
        let mut bad = None;
        while let Some(key) = map.next_key::<CowStr<'de>>()? {
            match map.next_value_seed(FieldSeed)? {
                Field::Scalar(v) => props.push((key.0, v)),
                Field::Nested => {
                    bad.get_or_insert_with(|| key.0.into_owned());
                }
            }
        }
        Ok(match bad {
            Some(k) => Err(Reject::PropertyNotScalar(k)),
            None => Ok(props),
        })
    }
    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Ok(Vec::new()))
    }
    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(Err(wrong_properties()))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Self::Value, E> {
        Ok(Err(wrong_properties()))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Self::Value, E> {
        Ok(Err(wrong_properties()))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Self::Value, E> {
        Ok(Err(wrong_properties()))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Self::Value, E> {
        Ok(Err(wrong_properties()))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Self::Value, E> {
        Ok(Err(wrong_properties()))
    }
}

fn wrong_properties() -> Reject {
    Reject::WrongType {
        field: "properties",
        expected: "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KTS: i64 = 1_704_067_200_000; // 2024-01-01T00:00:00Z

    fn ok(json: &str) -> Event<'_> {
        decode(json.as_bytes(), KTS, &Limits::default()).expect("valid event")
    }

    fn rejected(json: &[u8]) -> Reject {
        decode(json, KTS, &Limits::default()).expect_err("rejected")
    }

    #[test]
    fn decodes_the_design_example_with_rfc3339() {
        let e = ok(
            r#"{"event_id":"evt_123","event_type":"page_view","timestamp":"2024-01-01T00:00:00Z",
            "user_id":"user_456","properties":{"page":"/home","duration":30}}"#,
        );
        assert_eq!(e.event_id, "evt_123");
        assert_eq!(e.event_type, "page_view");
        assert_eq!(e.time_ms, KTS);
        assert_eq!(e.user_id.as_deref(), Some("user_456"));
        assert_eq!(e.property("page"), Some(&Scalar::Str("/home".into())));
        assert_eq!(e.property("duration"), Some(&Scalar::Int(30)));
        assert!(
            matches!(e.event_id, Cow::Borrowed(_)),
            "no copy for plain strings"
        );
    }

    #[test]
    fn epoch_millis_and_rfc3339_with_offset_agree() {
        let a = ok(r#"{"event_id":"a","event_type":"t","timestamp":1704067200123}"#);
        let b =
            ok(r#"{"event_id":"a","event_type":"t","timestamp":"2024-01-01T01:00:00.123+01:00"}"#);
        assert_eq!(a.time_ms, 1_704_067_200_123);
        assert_eq!(a.time_ms, b.time_ms);
        assert_eq!(a.user_id, None);
        assert!(a.properties.is_empty());
    }

    #[test]
    fn escaped_strings_are_unescaped() {
        let e = ok(
            r#"{"event_id":"a\"b","event_type":"t","timestamp":1704067200000,"properties":{"p\u00e9":"x\ny"}}"#,
        );
        assert_eq!(e.event_id, "a\"b");
        assert_eq!(e.properties[0], ("pé".into(), Scalar::Str("x\ny".into())));
    }

    #[test]
    fn unknown_fields_are_ignored() {
        let e = ok(
            r#"{"extra":{"deep":[1,2,{"x":null}]},"event_id":"a","event_type":"t","timestamp":1704067200000}"#,
        );
        assert_eq!(e.event_id, "a");
    }

    #[test]
    fn each_reason_has_its_own_rejection() {
        let cases: Vec<(&[u8], &str)> = vec![
            (b"", "empty"),
            (b"\xff\xfe{}", "not_utf8"),
            (b"{\"event_id\":", "not_json"),
            (b"{\"event_id\":\"a\"} trailing", "not_json"),
            (b"[1,2]", "not_object"),
            (b"\"just a string\"", "not_object"),
            (br#"{"event_type":"t","timestamp":1704067200000}"#, "missing_field"),
            (br#"{"event_id":"a","event_type":"t"}"#, "missing_field"),
            (br#"{"event_id":7,"event_type":"t","timestamp":1704067200000}"#, "wrong_type"),
            (br#"{"event_id":"a","event_type":"t","timestamp":true}"#, "wrong_type"),
            (br#"{"event_id":"a","event_type":"t","timestamp":1704067200000,"properties":[1]}"#, "wrong_type"),
            (br#"{"event_id":"a","event_type":"t","timestamp":1704067200000,"user_id":{"x":1}}"#, "wrong_type"),
            (br#"{"event_id":"","event_type":"t","timestamp":1704067200000}"#, "empty_field"),
            (br#"{"event_id":"a","event_id":"b","event_type":"t","timestamp":1704067200000}"#, "duplicate_field"),
            (br#"{"event_id":"a","event_type":"t","timestamp":"yesterday"}"#, "bad_timestamp"),
            (br#"{"event_id":"a","event_type":"t","timestamp":"2024-13-01T00:00:00Z"}"#, "bad_timestamp"),
            (br#"{"event_id":"a","event_type":"t","timestamp":0}"#, "timestamp_out_of_range"),
            (br#"{"event_id":"a","event_type":"t","timestamp":"2030-01-01T00:00:00Z"}"#, "timestamp_out_of_range"),
            (br#"{"event_id":"a","event_type":"t","timestamp":1704067200000,"properties":{"p":{"x":1}}}"#, "property_not_scalar"),
        ];
        for (input, code) in cases {
            let r = rejected(input);
            assert_eq!(
                r.code(),
                code,
                "{:?} -> {r}",
                String::from_utf8_lossy(input)
            );
        }
        let big = format!(
            r#"{{"event_id":"a","event_type":"t","timestamp":1704067200000,"properties":{{"p":"{}"}}}}"#,
            "x".repeat(70_000)
        );
        assert_eq!(rejected(big.as_bytes()).code(), "too_large");
    }

    #[test]
    fn every_code_is_listed() {
        for code in Reject::CODES {
            assert!(!code.is_empty());
        }
        let mut codes = Reject::CODES.to_vec();
        codes.sort();
        codes.dedup();
        assert_eq!(codes.len(), Reject::CODES.len());
    }

    #[test]
    fn range_is_relative_to_the_kafka_timestamp() {
        let limits = Limits {
            max_past_ms: 1000,
            max_future_ms: 10,
            ..Limits::default()
        };
        let rec = br#"{"event_id":"a","event_type":"t","timestamp":1704067200000}"#;
        assert!(decode(rec, KTS + 1000, &limits).is_ok());
        assert!(decode(rec, KTS + 1001, &limits).is_err());
        assert!(decode(rec, KTS - 10, &limits).is_ok());
        assert!(decode(rec, KTS - 11, &limits).is_err());
    }

    #[test]
    fn numeric_user_ids_keep_their_text() {
        let e = ok(r#"{"event_id":"a","event_type":"t","timestamp":1704067200000,"user_id":42}"#);
        assert_eq!(e.user_id.as_deref(), Some("42"));
    }
}
