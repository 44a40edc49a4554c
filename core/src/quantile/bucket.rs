//! Where a value lands in the quantile sketch: DDSketch's logarithmic
//! buckets, their codes (one `i32` that sorts as the values do, what a
//! snapshot column stores), their text (a Redis hash field) and the value a
//! bucket answers with. The one definition every layer maps values with.

/// The relative accuracy of every quantile: 1 %.
pub const ALPHA: f64 = 0.01;

/// The bucket growth factor, `(1 + α) / (1 − α)`.
pub const GAMMA: f64 = (1.0 + ALPHA) / (1.0 - ALPHA);

/// Magnitudes below this count as zero (as DDSketch's minimum indexable value).
pub const MIN_MAGNITUDE: f64 = 1e-9;

/// The largest bucket index: `γ^MAX_INDEX` passes core's `MAX_ABS_FLOAT`
/// (1e300), so every finite input Tally accepts has a bucket of its own.
pub const MAX_INDEX: i32 = 34_600;

/// Where a value lands: its sign and bucket, or zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Bucket {
    Negative(i32),
    Zero,
    Positive(i32),
}

impl Bucket {
    /// The stable text of a bucket in a Redis field or a column: `+i`, `-i`, `0`.
    pub fn encode(self) -> String {
        match self {
            Bucket::Negative(i) => format!("-{i}"),
            Bucket::Zero => "0".to_owned(),
            Bucket::Positive(i) => format!("+{i}"),
        }
    }

    pub fn parse(s: &str) -> Option<Bucket> {
        if s == "0" {
            return Some(Bucket::Zero);
        }
        let (sign, rest) = s.split_at_checked(1)?;
        let i: i32 = rest.parse().ok()?;
        if !(-MAX_INDEX..=MAX_INDEX).contains(&i) {
            return None;
        }
        match sign {
            "+" => Some(Bucket::Positive(i)),
            "-" => Some(Bucket::Negative(i)),
            _ => None,
        }
    }

    /// The bucket as one `i32` that sorts as the values do: `0` for zero,
    /// `i + MAX_INDEX + 1` for `Positive(i)`, its negation for `Negative(i)`.
    /// What the batch plan computes per row and a snapshot column stores
    /// (`b` in `List<Struct{b, n}>`).
    pub fn code(self) -> i32 {
        match self {
            Bucket::Zero => 0,
            Bucket::Positive(i) => i + MAX_INDEX + 1,
            Bucket::Negative(i) => -(i + MAX_INDEX + 1),
        }
    }

    /// The bucket of a [`Bucket::code`]; `None` outside the range.
    pub fn from_code(c: i32) -> Option<Bucket> {
        let i = c.checked_abs()? - MAX_INDEX - 1;
        if c == 0 {
            Some(Bucket::Zero)
        } else if !(-MAX_INDEX..=MAX_INDEX).contains(&i) {
            None
        } else if c > 0 {
            Some(Bucket::Positive(i))
        } else {
            Some(Bucket::Negative(i))
        }
    }

    /// The value the bucket answers with.
    pub fn value(self) -> f64 {
        match self {
            Bucket::Zero => 0.0,
            Bucket::Positive(i) => representative(i),
            Bucket::Negative(i) => -representative(i),
        }
    }
}

/// The bucket of `x`; `None` for NaN (which Tally never accepts anyway).
pub fn index_of(x: f64) -> Option<Bucket> {
    if x.is_nan() {
        return None;
    }
    let m = x.abs();
    if m < MIN_MAGNITUDE {
        return Some(Bucket::Zero);
    }
    let i = (m.ln() / GAMMA.ln()).ceil();
    let i = i.clamp(f64::from(-MAX_INDEX), f64::from(MAX_INDEX)) as i32;
    Some(if x > 0.0 {
        Bucket::Positive(i)
    } else {
        Bucket::Negative(i)
    })
}

/// The value bucket `i` answers with: within `α` of every value in it.
fn representative(i: i32) -> f64 {
    2.0 * GAMMA.powi(i) / (GAMMA + 1.0)
}
