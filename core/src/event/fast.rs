//! The fast path of [`decode`](super::decode): a single-pass scanner for the common shape
//! of an event.
//!
//! It accepts a strict subset of JSON: one object whose keys and string values
//! have no escapes, whose values are strings, non-negative integers of up to
//! 18 digits, numbers with a fraction or exponent, `true`, `false` or `null`,
//! and whose `properties` is an object of such scalars. It declines (returns
//! `None`) on anything else, including every malformed input and duplicate
//! envelope fields, so the general parser decides those and reports the
//! reason. For what it accepts it builds exactly the [`Raw`] the general
//! parser builds (numbers with a fraction or exponent are converted by
//! serde_json itself, so floats are bit-identical).

use std::borrow::Cow;

use super::raw::{Field, Raw};
use super::Scalar;

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
            i = one_or_more_digits(b, i + 1)?;
        }
        if let Some(b'e' | b'E') = b.get(i) {
            float = true;
            i += 1;
            if let Some(b'+' | b'-') = b.get(i) {
                i += 1;
            }
            i = one_or_more_digits(b, i)?;
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

/// The index after the run of ASCII digits at `i`, or `None` when there is
/// none (JSON wants at least one after `.` and after an exponent).
fn one_or_more_digits(b: &[u8], mut i: usize) -> Option<usize> {
    let start = i;
    while let Some(b'0'..=b'9') = b.get(i) {
        i += 1;
    }
    (i > start).then_some(i)
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
                    if r.is_multiple_of(11) {
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
