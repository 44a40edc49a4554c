//! Why a record is not a valid event: one [`Reject`] per reason, each with a
//! stable code (the `tally.reason` dead-letter header and the metric label)
//! and a message that names the field.

use super::types::MAX_ABS_FLOAT;

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
    #[error("property `{key}` is {value}, beyond ±{MAX_ABS_FLOAT:e}: sums of such values could overflow")]
    NumberOutOfRange { key: String, value: String },
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
            Reject::NumberOutOfRange { .. } => "number_out_of_range",
        }
    }

    /// Every code, for metrics pre-registration and docs.
    pub const CODES: [&'static str; 13] = [
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
        "number_out_of_range",
    ];
}

/// A value quoted in a reject: at most 64 characters of it.
pub(super) fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}
