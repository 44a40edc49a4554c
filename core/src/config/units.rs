//! Units written as text in `tally.toml`: durations (`100ms`, `5m`) and
//! sizes (`256MiB`), each read and printed back the same way, with an error
//! that says how to write it.

use serde::{Deserialize, Serialize};

use crate::time::{format_ms, parse_duration_ms};

/// A duration written as text in the config (`100ms`, `5m`, `1d`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Millis(pub i64);

impl TryFrom<String> for Millis {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        parse_duration_ms(&s)
            .map(Millis)
            .ok_or_else(|| format!("`{s}` is not a duration: use a number and a unit (ms, s, m, h, d), like 100ms or 5m"))
    }
}

impl From<Millis> for String {
    fn from(m: Millis) -> String {
        format_ms(m.0)
    }
}

impl Millis {
    pub fn as_duration(self) -> std::time::Duration {
        std::time::Duration::from_millis(self.0.max(0) as u64)
    }
}

/// A size in bytes written as text in the config (`256MiB`, `1GiB`, `500MB`)
/// or as a plain number of bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "ByteText", into = "String")]
pub struct ByteSize(pub u64);

/// What a [`ByteSize`] may be written as.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum ByteText {
    Number(u64),
    Text(String),
}

impl TryFrom<ByteText> for ByteSize {
    type Error = String;
    fn try_from(t: ByteText) -> Result<Self, String> {
        let s = match t {
            ByteText::Number(n) => return Ok(ByteSize(n)),
            ByteText::Text(s) => s,
        };
        let text = s.trim();
        let split = text
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(text.len());
        let (num, unit) = text.split_at(split);
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" => 1000,
            "KiB" => 1 << 10,
            "MB" => 1_000_000,
            "MiB" => 1 << 20,
            "GB" => 1_000_000_000,
            "GiB" => 1 << 30,
            _ => 0,
        };
        num.parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(mult))
            .filter(|_| mult > 0)
            .map(ByteSize)
            .ok_or_else(|| {
                format!("`{s}` is not a size: use a number and a unit (B, KiB, MiB, GiB, KB, MB, GB), like 256MiB")
            })
    }
}

impl From<ByteSize> for String {
    fn from(b: ByteSize) -> String {
        for (unit, mult) in [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)] {
            if b.0 != 0 && b.0.is_multiple_of(mult) {
                return format!("{}{unit}", b.0 / mult);
            }
        }
        format!("{}B", b.0)
    }
}
