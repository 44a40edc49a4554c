//! The top-level fields of a record as either parser found them, and their
//! validation into an [`Event`]: one function for both paths, so the fast
//! scanner can only change how fast a verdict comes, never which.

use std::borrow::Cow;

use super::reject::truncate;
use super::timestamp::parse_timestamp;
use super::{Event, Limits, Reject, Scalar, MAX_ABS_FLOAT};

/// Top-level fields as found, before validation.
#[derive(Default)]
pub(super) struct Raw<'a> {
    pub(super) event_id: Option<Field<'a>>,
    pub(super) event_type: Option<Field<'a>>,
    pub(super) timestamp: Option<Field<'a>>,
    pub(super) user_id: Option<Field<'a>>,
    pub(super) properties: Option<Props<'a>>,
}

/// `properties` as found: its scalars in order, or why it is not an object
/// of scalars.
pub(super) type Props<'a> = Result<Vec<(Cow<'a, str>, Scalar<'a>)>, Reject>;

/// A top-level value: a scalar, or a marker that it was an object or array.
pub(super) enum Field<'a> {
    Scalar(Scalar<'a>),
    Nested,
}

impl<'a> Raw<'a> {
    /// The one validation of both paths: required fields, types, the time
    /// range around the Kafka timestamp, property ranges.
    pub(super) fn validate(self, kafka_ts_ms: i64, limits: &Limits) -> Result<Event<'a>, Reject> {
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
        for (key, value) in &properties {
            if let Scalar::Float(f) = value {
                if f.is_nan() || f.abs() > MAX_ABS_FLOAT {
                    return Err(Reject::NumberOutOfRange {
                        key: truncate(key),
                        value: format!("{f:e}"),
                    });
                }
            }
        }
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
