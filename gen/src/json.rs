//! A small JSON writer for the generator's hot path: escaped strings and
//! RFC 3339 timestamps appended to a byte buffer, no intermediate values.
//! Everything it writes parses back with any JSON parser to the same value.

use std::io::Write;

/// Append `s` as a JSON string literal (quotes included).
pub(crate) fn string(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    for c in s.chars() {
        match c {
            '"' => out.extend_from_slice(b"\\\""),
            '\\' => out.extend_from_slice(b"\\\\"),
            '\n' => out.extend_from_slice(b"\\n"),
            '\r' => out.extend_from_slice(b"\\r"),
            '\t' => out.extend_from_slice(b"\\t"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => {
                let mut buf = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
            }
        }
    }
    out.push(b'"');
}

/// Append epoch milliseconds as a quoted RFC 3339 UTC timestamp with
/// milliseconds (`"2024-01-01T00:00:00.000Z"`). Returns false, writing
/// nothing, for times outside the years 0000-9999.
pub(crate) fn rfc3339(out: &mut Vec<u8>, ms: i64) -> bool {
    let days = ms.div_euclid(86_400_000);
    let in_day = ms.rem_euclid(86_400_000);
    let (y, m, d) = civil_from_days(days);
    if !(0..=9999).contains(&y) {
        return false;
    }
    let (h, rest) = (in_day / 3_600_000, in_day % 3_600_000);
    let (min, rest) = (rest / 60_000, rest % 60_000);
    let (s, milli) = (rest / 1000, rest % 1000);
    let _ = write!(
        out,
        "\"{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{s:02}.{milli:03}Z\""
    );
    true
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_match_chrono() {
        for ms in [
            0i64,
            1_704_067_200_000,
            1_709_164_799_999, // 2024-02-28T23:59:59.999Z
            1_709_251_200_123, // 2024-03-01
            951_782_400_000,   // 2000-02-29
            -1,
        ] {
            let mut out = Vec::new();
            assert!(rfc3339(&mut out, ms));
            let text = std::str::from_utf8(&out).unwrap().trim_matches('"');
            let parsed = chrono_parse(text);
            assert_eq!(parsed, ms, "{text}");
        }
    }

    fn chrono_parse(text: &str) -> i64 {
        let s = tally_core::event::Scalar::Str(text.to_owned().into());
        tally_core::event::parse_timestamp(&s).unwrap()
    }

    #[test]
    fn strings_round_trip() {
        let mut out = Vec::new();
        string(&mut out, "a\"b\\c\nd\u{1}é");
        let back: String = serde_json::from_slice(&out).unwrap();
        assert_eq!(back, "a\"b\\c\nd\u{1}é");
    }
}
