//! Event timestamps: RFC 3339 text or epoch milliseconds, to epoch
//! milliseconds UTC. The common UTC form is parsed without chrono; chrono
//! decides everything else, and the two agree wherever both answer.

use chrono::DateTime;

use super::reject::truncate;
use super::{Reject, Scalar};

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
pub(super) fn rfc3339_utc_ms(b: &[u8]) -> Option<i64> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

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
}
