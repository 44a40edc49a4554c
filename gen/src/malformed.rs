//! Records that the platform must reject, one kind per reason in core's
//! `Reject`. Each record written here has exactly one thing wrong with it,
//! so [`MalformedKind::code`] is the dead-letter reason it must get.

use std::io::Write;

use serde::{Deserialize, Serialize};
use tally_core::event::Limits;
use tally_core::time::{KAFKA_TIME_RANGE, NO_TIMESTAMP};

use crate::rng::Rng;

/// A kind of malformed record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MalformedKind {
    /// A zero-length record.
    Empty,
    /// Bytes that are not UTF-8.
    NotUtf8,
    /// A truncated JSON object.
    NotJson,
    /// JSON, but an array.
    NotObject,
    /// `event_id`, `event_type` or `timestamp` missing.
    MissingField,
    /// A required field of the wrong JSON type, or `properties` not an object.
    WrongType,
    /// `event_id` or `event_type` empty.
    EmptyField,
    /// `event_id` twice.
    DuplicateField,
    /// A timestamp that is neither RFC 3339 nor epoch milliseconds.
    BadTimestamp,
    /// Stamped before `max_past` of its Kafka timestamp.
    TooOld,
    /// Stamped after `max_future` of its Kafka timestamp.
    TooNew,
    /// Over `max_bytes`.
    TooLarge,
    /// A property that is an array.
    PropertyNotScalar,
    /// A fractional property beyond core's `MAX_ABS_FLOAT`.
    NumberOutOfRange,
    /// A valid event in a record without a Kafka timestamp.
    NoKafkaTimestamp,
    /// A valid event in a record whose Kafka timestamp is outside core's
    /// `KAFKA_TIME_RANGE`.
    KafkaTimestampOutOfRange,
}

impl MalformedKind {
    pub const ALL: [MalformedKind; 16] = [
        MalformedKind::Empty,
        MalformedKind::NotUtf8,
        MalformedKind::NotJson,
        MalformedKind::NotObject,
        MalformedKind::MissingField,
        MalformedKind::WrongType,
        MalformedKind::EmptyField,
        MalformedKind::DuplicateField,
        MalformedKind::BadTimestamp,
        MalformedKind::TooOld,
        MalformedKind::TooNew,
        MalformedKind::TooLarge,
        MalformedKind::PropertyNotScalar,
        MalformedKind::NumberOutOfRange,
        MalformedKind::NoKafkaTimestamp,
        MalformedKind::KafkaTimestampOutOfRange,
    ];

    /// The dead-letter reason (core's `Reject::code`) the record must get.
    pub fn code(self) -> &'static str {
        match self {
            MalformedKind::Empty => "empty",
            MalformedKind::NotUtf8 => "not_utf8",
            MalformedKind::NotJson => "not_json",
            MalformedKind::NotObject => "not_object",
            MalformedKind::MissingField => "missing_field",
            MalformedKind::WrongType => "wrong_type",
            MalformedKind::EmptyField => "empty_field",
            MalformedKind::DuplicateField => "duplicate_field",
            MalformedKind::BadTimestamp => "bad_timestamp",
            MalformedKind::TooOld | MalformedKind::TooNew => "timestamp_out_of_range",
            MalformedKind::TooLarge => "too_large",
            MalformedKind::PropertyNotScalar => "property_not_scalar",
            MalformedKind::NumberOutOfRange => "number_out_of_range",
            MalformedKind::NoKafkaTimestamp => "no_kafka_timestamp",
            MalformedKind::KafkaTimestampOutOfRange => "kafka_timestamp_out_of_range",
        }
    }

    /// The Kafka time a record of this kind is produced with, for Kafka
    /// time `now`: `now` unless the Kafka time is what is wrong with it.
    pub fn kafka_time(self, now: i64, rng: &mut Rng) -> i64 {
        match self {
            MalformedKind::NoKafkaTimestamp => NO_TIMESTAMP,
            MalformedKind::KafkaTimestampOutOfRange => match rng.below(4) {
                // Microseconds instead of milliseconds, the very end of
                // time, and before 1970.
                0 => now.saturating_mul(1000),
                1 => i64::MAX,
                2 => KAFKA_TIME_RANGE.end() + 1 + rng.below(1 << 40) as i64,
                _ => -2 - rng.below(1 << 40) as i64,
            },
            _ => now,
        }
    }
}

/// Write a record of `kind` for Kafka time `kafka_ts` into `out` (cleared).
pub(crate) fn write(
    out: &mut Vec<u8>,
    kind: MalformedKind,
    id: &str,
    kafka_ts: i64,
    limits: &Limits,
    rng: &mut Rng,
) {
    out.clear();
    let t = kafka_ts;
    let _ = match kind {
        MalformedKind::Empty => Ok(()),
        MalformedKind::NotUtf8 => {
            let _ = write!(out, r#"{{"event_id":"{id}","event_type":""#);
            out.extend_from_slice(&[0xff, 0xfe]);
            write!(out, r#"","timestamp":{t}}}"#)
        }
        MalformedKind::NotJson => {
            let _ = write!(
                out,
                r#"{{"event_id":"{id}","event_type":"page_view","timestamp":{t},"properties":{{"page":"/p1""#
            );
            let keep = 1 + rng.below(out.len() as u64 - 1) as usize;
            out.truncate(keep);
            Ok(())
        }
        MalformedKind::NotObject => write!(out, r#"["{id}","page_view",{t}]"#),
        MalformedKind::MissingField => match rng.below(3) {
            0 => write!(out, r#"{{"event_type":"page_view","timestamp":{t}}}"#),
            1 => write!(out, r#"{{"event_id":"{id}","timestamp":{t}}}"#),
            _ => write!(out, r#"{{"event_id":"{id}","event_type":"page_view"}}"#),
        },
        MalformedKind::WrongType => match rng.below(5) {
            0 => write!(
                out,
                r#"{{"event_id":{t},"event_type":"page_view","timestamp":{t}}}"#
            ),
            1 => write!(
                out,
                r#"{{"event_id":"{id}","event_type":true,"timestamp":{t}}}"#
            ),
            2 => write!(
                out,
                r#"{{"event_id":"{id}","event_type":"click","timestamp":[{t}]}}"#
            ),
            3 => write!(
                out,
                r#"{{"event_id":"{id}","event_type":"click","timestamp":{t},"user_id":{{"id":1}}}}"#
            ),
            _ => write!(
                out,
                r#"{{"event_id":"{id}","event_type":"click","timestamp":{t},"properties":"page=/p1"}}"#
            ),
        },
        MalformedKind::EmptyField => match rng.below(2) {
            0 => write!(
                out,
                r#"{{"event_id":"","event_type":"click","timestamp":{t}}}"#
            ),
            _ => write!(
                out,
                r#"{{"event_id":"{id}","event_type":"","timestamp":{t}}}"#
            ),
        },
        MalformedKind::DuplicateField => write!(
            out,
            r#"{{"event_id":"{id}","event_type":"click","event_id":"{id}x","timestamp":{t}}}"#
        ),
        MalformedKind::BadTimestamp => match rng.below(3) {
            0 => write!(
                out,
                r#"{{"event_id":"{id}","event_type":"click","timestamp":"yesterday"}}"#
            ),
            1 => write!(
                out,
                r#"{{"event_id":"{id}","event_type":"click","timestamp":"2024-13-01T00:00:00Z"}}"#
            ),
            _ => write!(
                out,
                r#"{{"event_id":"{id}","event_type":"click","timestamp":{t}.5}}"#
            ),
        },
        MalformedKind::TooOld => {
            let ts = t
                .saturating_sub(limits.max_past_ms)
                .saturating_sub(1 + rng.below(86_400_000) as i64);
            write!(
                out,
                r#"{{"event_id":"{id}","event_type":"page_view","timestamp":{ts},"user_id":"u1"}}"#
            )
        }
        MalformedKind::TooNew => {
            let ts = t
                .saturating_add(limits.max_future_ms)
                .saturating_add(1 + rng.below(86_400_000) as i64);
            write!(
                out,
                r#"{{"event_id":"{id}","event_type":"page_view","timestamp":{ts},"user_id":"u1"}}"#
            )
        }
        MalformedKind::TooLarge => {
            let _ = write!(
                out,
                r#"{{"event_id":"{id}","event_type":"page_view","timestamp":{t},"properties":{{"blob":""#
            );
            let pad = limits.max_bytes.saturating_sub(out.len()) + 1 + rng.below(64) as usize;
            out.resize(out.len() + pad, b'x');
            write!(out, r#""}}}}"#)
        }
        MalformedKind::PropertyNotScalar => write!(
            out,
            r#"{{"event_id":"{id}","event_type":"click","timestamp":{t},"properties":{{"page":"/p1","tags":["a","b"]}}}}"#
        ),
        MalformedKind::NumberOutOfRange => write!(
            out,
            r#"{{"event_id":"{id}","event_type":"page_view","timestamp":{t},"properties":{{"page":"/p1","duration":-{}e305}}}}"#,
            1 + rng.below(9)
        ),
        // The payload is a valid event: the record's Kafka time is what is
        // wrong ([`MalformedKind::kafka_time`]).
        MalformedKind::NoKafkaTimestamp | MalformedKind::KafkaTimestampOutOfRange => write!(
            out,
            r#"{{"event_id":"{id}","event_type":"page_view","timestamp":{t},"user_id":"u1","properties":{{"page":"/p1"}}}}"#
        ),
    };
}
