//! A mergeable quantile sketch with a relative-error guarantee (DDSketch's
//! logarithmic buckets).
//!
//! A positive value `x` falls in bucket `i = ceil(log_γ x)` with
//! `γ = (1 + α) / (1 − α)`, and the bucket answers for its values with
//! `2γ^i / (γ + 1)`, which is within a relative error `α` of every value in it.
//! Negative values use the same buckets on `|x|`, and zero has a count of its
//! own. The sketch is nothing but counts per bucket index, so:
//!
//! - merging is adding counts: a commutative monoid, exact whatever the split
//!   (the serving layer merges batch and speed sketches, and rolls buckets up);
//! - in Redis a sketch is a hash of plain counters (`HINCRBY` per bucket), so
//!   the speed layer stays effectively-once;
//! - every layer maps a value to its bucket with [`index_of`], the one
//!   definition, so the same events give the same sketch everywhere.
//!
//! A quantile answered from the sketch is within `α` (1 %) relative error of
//! the exact quantile of the same values under the same rank definition
//! ([`QuantileSketch::quantile`]). Buckets are sparse: a sketch holds one entry
//! per occupied bucket (about 350 for values spanning three orders of
//! magnitude), never more than [`MAX_INDEX`] a side.

use std::collections::BTreeMap;

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

/// Counts per bucket.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuantileSketch {
    counts: BTreeMap<Bucket, u64>,
}

impl QuantileSketch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add one value (NaN is ignored).
    pub fn add(&mut self, x: f64) {
        if let Some(b) = index_of(x) {
            self.add_count(b, 1);
        }
    }

    /// Add `n` values of bucket `b` (what a Redis counter or a column holds).
    pub fn add_count(&mut self, b: Bucket, n: u64) {
        if n > 0 {
            *self.counts.entry(b).or_default() += n;
        }
    }

    /// The monoid operation.
    pub fn merge(&mut self, other: &QuantileSketch) {
        for (&b, &n) in &other.counts {
            self.add_count(b, n);
        }
    }

    /// Values counted.
    pub fn count(&self) -> u64 {
        self.counts.values().sum()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Occupied buckets, in value order, with their counts.
    pub fn buckets(&self) -> impl Iterator<Item = (Bucket, u64)> + '_ {
        // `Bucket`'s derived order puts negatives first by index: larger
        // magnitudes (more negative values) have larger indexes, so walk the
        // negative side in reverse to go up in value.
        let neg = self
            .counts
            .iter()
            .filter(|(b, _)| matches!(b, Bucket::Negative(_)))
            .rev();
        let rest = self
            .counts
            .iter()
            .filter(|(b, _)| !matches!(b, Bucket::Negative(_)));
        neg.chain(rest).map(|(&b, &n)| (b, n))
    }

    /// The `q`-quantile (0 ≤ q ≤ 1): the value of rank `floor(q · (n − 1))`
    /// (0-based) in sorted order, within `α` relative error; `None` when empty
    /// or `q` is out of range.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if !(0.0..=1.0).contains(&q) {
            return None;
        }
        let n = self.count();
        if n == 0 {
            return None;
        }
        let rank = (q * (n - 1) as f64).floor() as u64;
        let mut seen = 0u64;
        for (b, c) in self.buckets() {
            seen += c;
            if seen > rank {
                return Some(b.value());
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn exact(sorted: &[f64], q: f64) -> f64 {
        sorted[(q * (sorted.len() - 1) as f64).floor() as usize]
    }

    fn sketch(xs: &[f64]) -> QuantileSketch {
        let mut s = QuantileSketch::new();
        for &x in xs {
            s.add(x);
        }
        s
    }

    fn within_alpha(got: f64, want: f64) -> bool {
        if want.abs() < MIN_MAGNITUDE {
            return got == 0.0;
        }
        (got - want).abs() <= ALPHA * want.abs() * (1.0 + 1e-12)
    }

    proptest! {
        /// Every quantile is within α of the exact one, latencies spanning
        /// six orders of magnitude, with either sign and zeros.
        #[test]
        fn quantiles_are_within_the_relative_error(
            xs in proptest::collection::vec(
                prop_oneof![
                    8 => (-3.0f64..6.0).prop_map(|e| 10f64.powf(e)),
                    1 => (-3.0f64..6.0).prop_map(|e| -10f64.powf(e)),
                    1 => Just(0.0),
                ],
                1..2_000,
            ),
            q in 0.0f64..=1.0,
        ) {
            let mut sorted = xs.clone();
            sorted.sort_by(f64::total_cmp);
            let s = sketch(&xs);
            let got = s.quantile(q).unwrap();
            let want = exact(&sorted, q);
            prop_assert!(within_alpha(got, want), "q {}: {} vs {}", q, got, want);
        }

        /// Merging the sketches of any split gives the sketch of the whole.
        #[test]
        fn any_split_merges_to_the_whole(
            xs in proptest::collection::vec(-1e6f64..1e6, 0..500),
            cut in 0usize..500,
        ) {
            let cut = cut.min(xs.len());
            let mut parts = sketch(&xs[cut..]);
            parts.merge(&sketch(&xs[..cut]));
            prop_assert_eq!(parts, sketch(&xs));
        }
    }

    #[test]
    fn buckets_round_trip_through_their_text() {
        for x in [1e-12, 0.5, 1.0, 37.2, 1e300, -1e300, -0.001] {
            let b = index_of(x).unwrap();
            assert_eq!(Bucket::parse(&b.encode()), Some(b));
            assert!(
                within_alpha(b.value(), if b == Bucket::Zero { 0.0 } else { x }),
                "{x}"
            );
        }
        assert_eq!(Bucket::parse("+99999999"), None);
        assert_eq!(Bucket::parse("x1"), None);
        assert_eq!(index_of(f64::NAN), None);
    }

    #[test]
    fn an_empty_sketch_has_no_quantile_and_q_is_checked() {
        assert_eq!(QuantileSketch::new().quantile(0.5), None);
        let s = sketch(&[1.0, 2.0, 3.0]);
        assert_eq!(s.quantile(1.5), None);
        assert!(within_alpha(s.quantile(0.0).unwrap(), 1.0));
        assert!(within_alpha(s.quantile(1.0).unwrap(), 3.0));
        assert!(within_alpha(s.quantile(0.5).unwrap(), 2.0));
    }
}
