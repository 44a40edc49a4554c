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
    #[error("property `{key}` is {value}, beyond ±{MAX_ABS_FLOAT:e}: sums of such values could overflow")]
    NumberOutOfRange { key: String, value: String },
}

/// The largest magnitude a fractional property may have. Float sums are
/// `f64`: with values below 1e300, no chunk of the speed layer, and no bucket
/// of fewer than about 1e8 events, can overflow, so both layers sum the same
/// finite values (integers are summed exactly, see [`crate::agg`]).
pub const MAX_ABS_FLOAT: f64 = 1e300;

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

/// The fast path of [`decode`]: a single-pass scanner for the common shape
/// of an event.
///
/// It accepts a strict subset of JSON: one object whose keys and string values
/// have no escapes, whose values are strings, non-negative integers of up to
/// 18 digits, numbers with a fraction or exponent, `true`, `false` or `null`,
/// and whose `properties` is an object of such scalars. It declines (returns
/// `None`) on anything else, including every malformed input and duplicate
/// envelope fields, so the general parser decides those and reports the
/// reason. For what it accepts it builds exactly the [`Raw`] the general
/// parser builds (numbers with a fraction or exponent are converted by
/// serde_json itself, so floats are bit-identical).
mod fast {
    use super::{Field, Raw, Scalar};
    use std::borrow::Cow;

    /// Bytes that end the scan of a string: the quote, a backslash (an
    /// escape: declined) and control characters (invalid in JSON strings).
    /// One table load per byte instead of three comparisons.
    static STOP: [bool; 256] = {
        let mut t = [false; 256];
        let mut b = 0;
        while b < 0x20 {
            t[b] = true;
            b += 1;
        }
        t[b'"' as usize] = true;
        t[b'\\' as usize] = true;
        t
    };

    /// Where the string starting at `rest[0]` stops: the first quote,
    /// backslash or control character. Eight bytes at a time: in the large
    /// inlined scanner a byte loop compiled to a dozen register spills per byte.
    #[inline(never)]
    fn string_len(rest: &[u8]) -> Option<usize> {
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        let mut chunks = rest.chunks_exact(8);
        let mut at = 0;
        for chunk in chunks.by_ref() {
            let mut word = [0u8; 8];
            word.copy_from_slice(chunk);
            let w = u64::from_le_bytes(word);
            // The classic "has zero byte" tests, for `"`, `\` and < 0x20
            // (bytes >= 0x80 never match). A borrow can only set bits above
            // a true match, so the lowest set bit is the first stop.
            let quote = w ^ (ONES * u64::from(b'"'));
            let slash = w ^ (ONES * u64::from(b'\\'));
            let hits = (quote.wrapping_sub(ONES) & !quote)
                | (slash.wrapping_sub(ONES) & !slash)
                | (w.wrapping_sub(ONES * 0x20) & !w);
            let hits = hits & HIGH;
            if hits != 0 {
                return Some(at + (hits.trailing_zeros() / 8) as usize);
            }
            at += 8;
        }
        chunks
            .remainder()
            .iter()
            .position(|&b| STOP[usize::from(b)])
            .map(|p| at + p)
    }

    #[cfg(test)]
    mod tests {
        use super::{string_len, STOP};

        fn byte_by_byte(rest: &[u8]) -> Option<usize> {
            rest.iter()
                .position(|&b| b == b'"' || b == b'\\' || b < 0x20)
        }

        #[test]
        fn string_len_finds_the_first_stop_like_a_byte_loop() {
            assert!(STOP[0] && STOP[0x1f] && !STOP[0x20] && STOP[usize::from(b'"')]);
            // Every stop and near-miss byte at every position of inputs up
            // to 24 bytes, over backgrounds that provoke borrows (0x00 is a
            // stop; 0x01, 0x21, 0x23, 0x5b, 0x5d, 0x80, 0xff are not).
            let probes = [
                0x00, 0x01, 0x1f, 0x20, 0x21, b'"', 0x23, b'\\', 0x5b, 0x5d, 0x7f, 0x80, 0xff,
            ];
            for len in 0..24 {
                for &background in &[b'a', 0x01, 0x21, 0x23, 0x5b, 0x5d, 0x80, 0xff] {
                    for at in 0..len {
                        for &probe in &probes {
                            let mut input = vec![background; len];
                            input[at] = probe;
                            assert_eq!(string_len(&input), byte_by_byte(&input), "{input:?}");
                            // And a second stop later on.
                            if at + 3 < len {
                                input[at + 3] = b'"';
                                assert_eq!(string_len(&input), byte_by_byte(&input), "{input:?}");
                            }
                        }
                    }
                }
            }
            // Random bytes, skewed towards the interesting ones.
            let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
            for _ in 0..20_000 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let len = (x % 40) as usize;
                let input: Vec<u8> = (0..len)
                    .map(|i| {
                        let r = x.rotate_left(i as u32 * 5);
                        if r % 11 == 0 {
                            probes[(r >> 8) as usize % probes.len()]
                        } else {
                            (r >> 16) as u8 | 0x20
                        }
                    })
                    .collect();
                assert_eq!(string_len(&input), byte_by_byte(&input), "{input:?}");
            }
        }
    }

    struct Scanner<'a> {
        text: &'a str,
        bytes: &'a [u8],
        pos: usize,
    }

    pub(super) fn scan(text: &str) -> Option<Raw<'_>> {
        let mut s = Scanner {
            text,
            bytes: text.as_bytes(),
            pos: 0,
        };
        let raw = s.object()?;
        s.ws();
        (s.pos == s.bytes.len()).then_some(raw)
    }

    impl<'a> Scanner<'a> {
        #[inline]
        fn ws(&mut self) {
            while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.bytes.get(self.pos) {
                self.pos += 1;
            }
        }

        #[inline]
        fn eat(&mut self, b: u8) -> Option<()> {
            self.ws();
            if self.bytes.get(self.pos) == Some(&b) {
                self.pos += 1;
                Some(())
            } else {
                None
            }
        }

        #[inline]
        fn peek(&mut self) -> Option<u8> {
            self.ws();
            self.bytes.get(self.pos).copied()
        }

        /// A string without escapes or control characters, borrowed.
        #[inline]
        fn string(&mut self) -> Option<&'a str> {
            self.eat(b'"')?;
            let start = self.pos;
            let rest = &self.bytes[start..];
            let len = string_len(rest)?;
            if rest[len] != b'"' {
                return None;
            }
            self.pos = start + len + 1;
            // Both ends are ASCII quote positions, so this is a char boundary.
            self.text.get(start..start + len)
        }

        /// A value the envelope or the properties may hold: a scalar, or
        /// `None` to decline (nested values, negative numbers, anything odd).
        /// Always inlined: returned through memory, its result was re-read
        /// with wider loads than it was written with (a store-forwarding
        /// stall per value, a fifth of the scanner's time).
        #[inline(always)]
        fn scalar(&mut self) -> Option<Scalar<'a>> {
            match self.peek()? {
                b'"' => self.string().map(|s| Scalar::Str(Cow::Borrowed(s))),
                b'0'..=b'9' => self.number(),
                b't' => self.literal(b"true", Scalar::Bool(true)),
                b'f' => self.literal(b"false", Scalar::Bool(false)),
                b'n' => self.literal(b"null", Scalar::Null),
                _ => None,
            }
        }

        fn literal(&mut self, word: &[u8], value: Scalar<'a>) -> Option<Scalar<'a>> {
            if self.bytes[self.pos..].starts_with(word) {
                self.pos += word.len();
                Some(value)
            } else {
                None
            }
        }

        /// A non-negative JSON number. Integers of up to 18 digits are exact
        /// `i64`s (as serde_json yields them); anything with a fraction or an
        /// exponent is handed to serde_json so the `f64` is the one it makes.
        #[inline]
        fn number(&mut self) -> Option<Scalar<'a>> {
            let start = self.pos;
            let b = self.bytes;
            let mut i = start;
            let mut int: i64 = 0;
            while let Some(d @ b'0'..=b'9') = b.get(i) {
                int = int * 10 + i64::from(d - b'0');
                i += 1;
                if i - start > 18 {
                    return None;
                }
            }
            if b[start] == b'0' && i - start > 1 {
                return None; // leading zero: invalid JSON
            }
            let mut float = false;
            if b.get(i) == Some(&b'.') {
                float = true;
                i += 1;
                let digits = i;
                while let Some(b'0'..=b'9') = b.get(i) {
                    i += 1;
                }
                if i == digits {
                    return None;
                }
            }
            if let Some(b'e' | b'E') = b.get(i) {
                float = true;
                i += 1;
                if let Some(b'+' | b'-') = b.get(i) {
                    i += 1;
                }
                let digits = i;
                while let Some(b'0'..=b'9') = b.get(i) {
                    i += 1;
                }
                if i == digits {
                    return None;
                }
            }
            self.pos = i;
            if float {
                serde_json::from_str::<f64>(self.text.get(start..i)?)
                    .ok()
                    .map(Scalar::Float)
            } else {
                Some(Scalar::Int(int))
            }
        }

        fn object(&mut self) -> Option<Raw<'a>> {
            self.eat(b'{')?;
            let mut raw = Raw::default();
            if self.eat(b'}').is_some() {
                return Some(raw);
            }
            loop {
                let key = self.string()?;
                self.eat(b':')?;
                let slot = match key {
                    "event_id" => &mut raw.event_id,
                    "event_type" => &mut raw.event_type,
                    "timestamp" => &mut raw.timestamp,
                    "user_id" => &mut raw.user_id,
                    "properties" => {
                        if raw.properties.is_some() {
                            return None; // duplicate: the general path names it
                        }
                        raw.properties = Some(Ok(self.properties()?));
                        if self.next_member()? {
                            continue;
                        }
                        return Some(raw);
                    }
                    _ => {
                        self.scalar()?;
                        if self.next_member()? {
                            continue;
                        }
                        return Some(raw);
                    }
                };
                if slot.is_some() {
                    return None; // duplicate: the general path names it
                }
                // Written in place: `Option::replace` moved the old value out
                // and was the costliest line of the scanner.
                *slot = Some(Field::Scalar(self.scalar()?));
                if !self.next_member()? {
                    return Some(raw);
                }
            }
        }

        /// After a member: `Some(true)` at `,`, `Some(false)` at the closing `}`.
        #[inline]
        fn next_member(&mut self) -> Option<bool> {
            match self.peek()? {
                b',' => {
                    self.pos += 1;
                    Some(true)
                }
                b'}' => {
                    self.pos += 1;
                    Some(false)
                }
                _ => None,
            }
        }

        fn properties(&mut self) -> Option<Vec<(Cow<'a, str>, Scalar<'a>)>> {
            self.eat(b'{')?;
            // Room for the usual handful without growing.
            let mut props = Vec::with_capacity(8);
            if self.eat(b'}').is_some() {
                return Some(props);
            }
            loop {
                let key = self.string()?;
                self.eat(b':')?;
                let value = self.scalar()?;
                props.push((Cow::Borrowed(key), value));
                if !self.next_member()? {
                    return Some(props);
                }
            }
        }
    }
}

/// Parse an event timestamp: RFC 3339 text or epoch milliseconds.
pub fn parse_timestamp(value: &Scalar<'_>) -> Result<i64, Reject> {
    match value {
        Scalar::Int(ms) => Ok(*ms),
        Scalar::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => Ok(*f as i64),
        Scalar::Str(s) => match rfc3339_utc_ms(s.as_bytes()) {
            Some(ms) => Ok(ms),
            None => DateTime::parse_from_rfc3339(s)
                .map(|t| t.timestamp_millis())
                .map_err(|_| Reject::BadTimestamp(truncate(s))),
        },
        other => Err(Reject::BadTimestamp(truncate(&other.to_text()))),
    }
}

/// The common timestamp form, `YYYY-MM-DDTHH:MM:SS[.fraction]Z`, in epoch
/// milliseconds, without chrono (about a tenth of its cost). `None` for
/// anything else (offsets, leap seconds, out-of-range fields), which chrono
/// then decides; for what this accepts the result equals chrono's
/// `timestamp_millis` (the fraction is truncated to milliseconds).
fn rfc3339_utc_ms(b: &[u8]) -> Option<i64> {
    fn digits(b: &[u8]) -> Option<i64> {
        b.iter().try_fold(0i64, |acc, &d| {
            d.is_ascii_digit().then(|| acc * 10 + i64::from(d - b'0'))
        })
    }
    if b.len() < 20
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let (year, month, day) = (digits(&b[0..4])?, digits(&b[5..7])?, digits(&b[8..10])?);
    let (hour, minute, second) = (
        digits(&b[11..13])?,
        digits(&b[14..16])?,
        digits(&b[17..19])?,
    );
    let mut millis = 0;
    let rest = match b[19] {
        b'.' => {
            let frac = b.get(20..b.len() - 1)?;
            if frac.is_empty() || frac.len() > 9 || !frac.iter().all(u8::is_ascii_digit) {
                return None;
            }
            for i in 0..3 {
                millis = millis * 10 + frac.get(i).map_or(0, |d| i64::from(d - b'0'));
            }
            &b[b.len() - 1..]
        }
        _ => &b[19..],
    };
    if rest != b"Z" || !(1..=12).contains(&month) || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    if day < 1 || day > month_days[(month - 1) as usize] {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis)
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
    properties: Option<Props<'a>>,
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
        for (key, value) in &properties {
            if let Scalar::Float(f) = value {
                if !(f.abs() <= MAX_ABS_FLOAT) {
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
    fn floats_beyond_the_sum_range_are_rejected_and_big_integers_are_not() {
        let with = |v: &str| {
            format!(
                r#"{{"event_id":"e","event_type":"t","timestamp":{KTS},"properties":{{"bytes":{v}}}}}"#
            )
        };
        assert_eq!(
            ok(&with("6000000000000000000")).property("bytes"),
            Some(&Scalar::Int(6_000_000_000_000_000_000))
        );
        assert_eq!(
            ok(&with("1e300")).property("bytes"),
            Some(&Scalar::Float(1e300))
        );
        // (Beyond f64's range, 2e400, is not JSON a reader can take: `not_json`.)
        for v in ["1e301", "-1.5e308", "1.0000001e300"] {
            let r = rejected(with(v).as_bytes());
            assert_eq!(r.code(), "number_out_of_range", "{v}: {r}");
            assert!(r.to_string().contains("`bytes`"), "{r}");
        }
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

    mod fast_path {
        use super::*;
        use proptest::prelude::*;

        fn token() -> impl Strategy<Value = String> {
            prop::sample::select(vec![
                r#""plain""#,
                r#""""#,
                r#""with \"escape\"""#,
                r#""tab\there""#,
                r#""é ü""#,
                "0",
                "7",
                "30",
                "01",
                "-5",
                "-0",
                "1.5",
                "1.",
                ".5",
                "2e3",
                "2E-3",
                "1e400",
                "123456789012345678",
                "1234567890123456789",
                "18446744073709551616",
                "1704067200000",
                r#""2024-01-01T00:00:00Z""#,
                r#""2024-13-01T00:00:00Z""#,
                "true",
                "false",
                "null",
                "tru",
                "nul",
                "[]",
                "[1,2]",
                "{}",
                r#"{"a":1}"#,
                r#"{"page":"/a","n":1}"#,
                r#"{"p":{"x":1}}"#,
                r#"{"p":[1]}"#,
                r#"{"p":1.25,"q":null}"#,
            ])
            .prop_map(str::to_owned)
        }

        fn key() -> impl Strategy<Value = String> {
            prop::sample::select(vec![
                "event_id",
                "event_type",
                "timestamp",
                "user_id",
                "properties",
                "extra",
                r"event\u005fid",
                "",
            ])
            .prop_map(|k| format!("\"{k}\""))
        }

        fn ws() -> impl Strategy<Value = String> {
            prop::sample::select(vec!["", "", "", " ", "\n\t", "\r "]).prop_map(str::to_owned)
        }

        /// A valid event's members, each possibly replaced by a random key or
        /// value, plus random extra members, shuffled, then possibly damaged.
        fn record() -> impl Strategy<Value = Vec<u8>> {
            let valid = vec![
                (r#""event_id""#, r#""evt_1""#),
                (r#""event_type""#, r#""page_view""#),
                (r#""timestamp""#, "1704067200000"),
                (r#""user_id""#, r#""user_9""#),
                (
                    r#""properties""#,
                    r#"{"page":"/a","n":30,"r":0.5,"b":true,"z":null}"#,
                ),
            ];
            let members = prop::collection::vec((0..8u8, key(), token(), ws(), ws()), valid.len())
                .prop_map(move |choices| {
                    choices
                        .into_iter()
                        .zip(&valid)
                        .filter_map(|((roll, k, v, a, b), (vk, vv))| match roll {
                            0 => None,
                            1 => Some(format!("{a}{k}{b}:{vv}")),
                            2 => Some(format!("{a}{vk}:{b}{v}")),
                            _ => Some(format!("{a}{vk}{b}:{vv}")),
                        })
                        .collect::<Vec<_>>()
                });
            let extra = prop::collection::vec(
                (ws(), key(), token()).prop_map(|(a, k, v)| format!("{a}{k}:{v}")),
                0..2,
            );
            let object = (members, extra, ws(), ws())
                .prop_flat_map(|(mut m, extra, a, b)| {
                    m.extend(extra);
                    (Just(m).prop_shuffle(), Just(a), Just(b))
                })
                .prop_map(|(members, a, b)| format!("{a}{{{}}}{b}", members.join(",")));
            (
                object,
                prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0..3u8), 0..2),
            )
                .prop_map(|(text, damage)| {
                    let mut bytes = text.into_bytes();
                    for (at, byte, how) in damage {
                        if bytes.is_empty() {
                            break;
                        }
                        let i = at.index(bytes.len());
                        match how {
                            0 => {
                                bytes.remove(i);
                            }
                            1 => bytes.insert(i, byte),
                            _ => bytes[i] = b"{}[],:\"0-.e \\"[byte as usize % 12],
                        }
                    }
                    bytes
                })
        }

        fn general(bytes: &[u8]) -> Result<Event<'_>, Reject> {
            let text = std::str::from_utf8(bytes).map_err(|_| Reject::NotUtf8)?;
            decode_general(text, KTS, &Limits::default())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(20_000))]
            /// The fast path never changes a verdict: same event, same reason.
            #[test]
            fn same_verdict_as_the_general_parser(rec in record()) {
                prop_assume!(!rec.is_empty());
                prop_assert_eq!(decode(&rec, KTS, &Limits::default()), general(&rec));
            }
        }

        /// The differential test above is only worth something if the
        /// generated records exercise both paths and both verdicts.
        #[test]
        fn the_generator_covers_both_paths() {
            use proptest::strategy::ValueTree;
            let mut runner = proptest::test_runner::TestRunner::deterministic();
            let strategy = record();
            let (mut fast_ok, mut fast_rejected, mut declined) = (0, 0, 0);
            for _ in 0..5_000 {
                let rec = strategy.new_tree(&mut runner).unwrap().current();
                match std::str::from_utf8(&rec).ok().and_then(fast::scan) {
                    Some(raw) => match raw.validate(KTS, &Limits::default()) {
                        Ok(_) => fast_ok += 1,
                        Err(_) => fast_rejected += 1,
                    },
                    None => declined += 1,
                }
            }
            assert!(
                fast_ok > 100 && fast_rejected > 200 && declined > 1000,
                "fast ok {fast_ok}, fast rejected {fast_rejected}, declined {declined}"
            );
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(20_000))]
            /// The fast timestamp parser agrees with chrono wherever it answers.
            #[test]
            fn timestamps_agree_with_chrono(
                y in 0i64..10_000, mo in 0i64..14, d in 0i64..33, h in 0i64..25,
                mi in 0i64..61, s in 0i64..62, frac in prop::option::of("[0-9]{0,11}"),
                tail in prop::sample::select(vec!["Z", "z", "+00:00", "+01:30", ""]),
            ) {
                let text = match &frac {
                    Some(f) => format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{f}{tail}"),
                    None => format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{tail}"),
                };
                let chrono = DateTime::parse_from_rfc3339(&text).map(|t| t.timestamp_millis()).ok();
                if let Some(ms) = rfc3339_utc_ms(text.as_bytes()) {
                    prop_assert_eq!(Some(ms), chrono, "{}", text);
                }
                prop_assert_eq!(
                    parse_timestamp(&Scalar::Str(text.as_str().into())).ok(),
                    chrono
                );
            }
        }

        #[test]
        fn fast_timestamps_cover_the_common_forms() {
            for (text, ms) in [
                ("2024-01-01T00:00:00Z", 1_704_067_200_000),
                ("2024-01-01T00:00:00.123Z", 1_704_067_200_123),
                ("2024-01-01T00:00:00.1239999Z", 1_704_067_200_123),
                ("2024-02-29T23:59:59.5Z", 1_709_251_199_500),
                ("1969-12-31T23:59:59.999Z", -1),
            ] {
                assert_eq!(rfc3339_utc_ms(text.as_bytes()), Some(ms), "{text}");
            }
            for text in [
                "2023-02-29T00:00:00Z",
                "2024-01-01T00:00:00.",
                "2024-01-01T00:00:00.Z",
                "2024-01-01T00:00:00+00:00",
            ] {
                assert_eq!(rfc3339_utc_ms(text.as_bytes()), None, "{text}");
            }
        }

        #[test]
        fn the_common_shape_takes_the_fast_path_and_borrows() {
            let rec = r#"{"event_id":"evt_1","event_type":"page_view","timestamp":1704067200000,"user_id":"u","properties":{"page":"/p","duration":30,"ratio":0.25,"ok":true,"none":null}}"#;
            let raw = fast::scan(rec).expect("fast path");
            let e = raw.validate(KTS, &Limits::default()).unwrap();
            assert_eq!(e, general(rec.as_bytes()).unwrap());
            assert!(matches!(e.event_id, Cow::Borrowed(_)));
            assert_eq!(e.property("ratio"), Some(&Scalar::Float(0.25)));
        }

        #[test]
        fn declines_what_it_does_not_cover() {
            for rec in [
                r#"{"event_id":"a\"b"}"#,
                r#"{"event_id":"a","event_id":"b"}"#,
                r#"{"x":[1]}"#,
                r#"{"x":-1}"#,
                r#"{"x":01}"#,
                r#"{"x":1234567890123456789}"#,
                r#"{"properties":null}"#,
                r#"{"a":1} x"#,
                r#"[]"#,
            ] {
                assert!(fast::scan(rec).is_none(), "{rec}");
            }
        }
    }

    #[test]
    fn numeric_user_ids_keep_their_text() {
        let e = ok(r#"{"event_id":"a","event_type":"t","timestamp":1704067200000,"user_id":42}"#);
        assert_eq!(e.user_id.as_deref(), Some("42"));
    }
}
