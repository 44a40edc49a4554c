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
//!
//! # Layout
//!
//! A record goes through one of two parsers into the same `Raw` (the
//! top-level fields as found), then through the one validation:
//!
//! - `types`: what a decoded event is ([`Event`], [`Scalar`]) and the
//!   [`Limits`] it is checked against.
//! - `reject`: why a record is not an event ([`Reject`], its stable codes).
//! - `fast`: a single-pass scanner for the common shape; it declines anything
//!   else rather than guess.
//! - `general`: the serde_json path for everything the scanner declines.
//! - `raw`: the fields as found and their validation, shared by both paths,
//!   so the verdict cannot depend on the path.
//! - `timestamp`: event timestamps (RFC 3339 or epoch milliseconds).

mod fast;
mod general;
mod raw;
mod reject;
#[cfg(test)]
mod tests;
mod timestamp;
mod types;

pub use reject::Reject;
pub use timestamp::parse_timestamp;
pub use types::{Event, Limits, Scalar, MAX_ABS_FLOAT};

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
    // Most records are plain: take the fast path, and the general parser only
    // for what the fast path declines. Both produce the same `Raw`, and
    // `validate` is shared, so the verdict cannot depend on the path.
    if let Some(raw) = fast::scan(text) {
        return raw.validate(kafka_ts_ms, limits);
    }
    decode_general(text, kafka_ts_ms, limits)
}

/// [`decode`] through serde_json alone, for any JSON input (after the size
/// and UTF-8 checks). Public for the differential tests and the benchmark.
#[doc(hidden)]
pub fn decode_general<'a>(
    text: &'a str,
    kafka_ts_ms: i64,
    limits: &Limits,
) -> Result<Event<'a>, Reject> {
    general::parse(text)?.validate(kafka_ts_ms, limits)
}
