//! Aggregates as commutative monoids.
//!
//! Every measure's state is an [`Agg`] with an identity ([`Agg::empty`]) and an
//! associative, commutative [`Agg::merge`]: a bucket's value is the merge of any
//! split of its events. That is the one property the whole design leans on: the
//! serving layer merges the batch snapshot with per-epoch speed deltas, and rolls
//! minute buckets up into hours, with this operation alone.
//!
//! `sum` keeps integers exactly and floats apart (`f64`), so integer sums are
//! exact whatever the split; the value is their total. The integer part is an
//! `i128`: inputs are `i64`, so no stream of fewer than 2^64 events can
//! overflow it, and every layer (Redis as an `i64` field plus a carry, Parquet
//! as `Decimal128(38, 0)`) holds it exactly. An `i64` would wrap, and Redis's
//! `HINCRBY` would refuse, on two values of 6e18.

use serde::{Deserialize, Serialize};

use crate::hll::Hll;
use crate::quantile::QuantileSketch;

/// The aggregate functions a measure can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggKind {
    Count,
    Sum,
    Min,
    Max,
    Distinct,
    /// A quantile sketch of a numeric field ([`crate::quantile`]): queries
    /// ask for percentiles of it.
    Quantiles,
}

impl AggKind {
    pub const ALL: [AggKind; 6] = [
        AggKind::Count,
        AggKind::Sum,
        AggKind::Min,
        AggKind::Max,
        AggKind::Distinct,
        AggKind::Quantiles,
    ];

    pub fn name(self) -> &'static str {
        match self {
            AggKind::Count => "count",
            AggKind::Sum => "sum",
            AggKind::Min => "min",
            AggKind::Max => "max",
            AggKind::Distinct => "distinct",
            AggKind::Quantiles => "quantiles",
        }
    }

    /// Whether the measure reads a field (all but `count`).
    pub fn needs_field(self) -> bool {
        !matches!(self, AggKind::Count)
    }

    /// Whether the field must hold numbers.
    pub fn numeric(self) -> bool {
        matches!(
            self,
            AggKind::Sum | AggKind::Min | AggKind::Max | AggKind::Quantiles
        )
    }
}

/// A number as an aggregate input: integers stay exact.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Num {
    Int(i64),
    Float(f64),
}

impl Num {
    pub fn as_f64(self) -> f64 {
        match self {
            Num::Int(i) => i as f64,
            Num::Float(f) => f,
        }
    }
}

/// The state of one measure for one bucket and group.
#[derive(Debug, Clone, PartialEq)]
pub enum Agg {
    Count(u64),
    Sum { int: i128, float: f64 },
    Min(Option<f64>),
    Max(Option<f64>),
    Distinct(Hll),
    Quantiles(QuantileSketch),
}

impl Agg {
    /// The identity element for `kind`.
    pub fn empty(kind: AggKind) -> Agg {
        match kind {
            AggKind::Count => Agg::Count(0),
            AggKind::Sum => Agg::Sum { int: 0, float: 0.0 },
            AggKind::Min => Agg::Min(None),
            AggKind::Max => Agg::Max(None),
            AggKind::Distinct => Agg::Distinct(Hll::new()),
            AggKind::Quantiles => Agg::Quantiles(QuantileSketch::new()),
        }
    }

    pub fn kind(&self) -> AggKind {
        match self {
            Agg::Count(_) => AggKind::Count,
            Agg::Sum { .. } => AggKind::Sum,
            Agg::Min(_) => AggKind::Min,
            Agg::Max(_) => AggKind::Max,
            Agg::Distinct(_) => AggKind::Distinct,
            Agg::Quantiles(_) => AggKind::Quantiles,
        }
    }

    /// Fold one numeric input in (`sum`, `min`, `max`, `quantiles`; `count`
    /// counts it).
    pub fn add_num(&mut self, n: Num) {
        match self {
            Agg::Count(c) => *c += 1,
            Agg::Sum { int, float } => match n {
                Num::Int(i) => *int += i128::from(i),
                Num::Float(f) => *float += f,
            },
            Agg::Min(m) => *m = Some(m.map_or(n.as_f64(), |m| m.min(n.as_f64()))),
            Agg::Max(m) => *m = Some(m.map_or(n.as_f64(), |m| m.max(n.as_f64()))),
            Agg::Distinct(h) => h.add(num_text(n).as_bytes()),
            Agg::Quantiles(q) => q.add(n.as_f64()),
        }
    }

    /// Fold one distinct key in (`distinct`; `count` counts it).
    pub fn add_key(&mut self, key: &[u8]) {
        match self {
            Agg::Count(c) => *c += 1,
            Agg::Distinct(h) => h.add(key),
            _ => {}
        }
    }

    /// The monoid operation. Merging different kinds is a programming error
    /// and leaves `self` unchanged (debug builds assert).
    pub fn merge(&mut self, other: &Agg) {
        match (self, other) {
            (Agg::Count(a), Agg::Count(b)) => *a += b,
            (Agg::Sum { int, float }, Agg::Sum { int: i2, float: f2 }) => {
                *int += *i2;
                *float += f2;
            }
            (Agg::Min(a), Agg::Min(b)) => *a = opt(*a, *b, f64::min),
            (Agg::Max(a), Agg::Max(b)) => *a = opt(*a, *b, f64::max),
            (Agg::Distinct(a), Agg::Distinct(b)) => a.merge(b),
            (Agg::Quantiles(a), Agg::Quantiles(b)) => a.merge(b),
            (a, b) => debug_assert!(false, "merge of {:?} with {:?}", a.kind(), b.kind()),
        }
    }

    /// The value a user sees: a count, a sum, a min or max (`None` when the
    /// bucket had no numeric input), a distinct estimate, or a quantile
    /// sketch's median (`None` when empty; queries ask for the percentiles
    /// they want instead).
    pub fn value(&self) -> Option<f64> {
        match self {
            Agg::Count(c) => Some(*c as f64),
            Agg::Sum { int, float } => Some(*int as f64 + float),
            Agg::Min(m) | Agg::Max(m) => *m,
            Agg::Distinct(h) => Some(h.count() as f64),
            Agg::Quantiles(q) => q.quantile(0.5),
        }
    }
}

fn opt(a: Option<f64>, b: Option<f64>, f: fn(f64, f64) -> f64) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(f(a, b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// The text a number is hashed by for `distinct` (its JSON form).
pub fn num_text(n: Num) -> String {
    match n {
        Num::Int(i) => i.to_string(),
        Num::Float(f) => f.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fold(kind: AggKind, xs: &[i64]) -> Agg {
        let mut a = Agg::empty(kind);
        for &x in xs {
            if kind == AggKind::Distinct {
                a.add_key(x.to_string().as_bytes());
            } else {
                a.add_num(Num::Int(x));
            }
        }
        a
    }

    proptest! {
        /// Merging the aggregates of any split equals aggregating the whole.
        #[test]
        fn any_split_merges_to_the_whole(
            xs in proptest::collection::vec(-1_000_000i64..1_000_000, 0..400),
            cuts in proptest::collection::vec(0usize..400, 0..6),
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(xs.len())).collect();
            cuts.push(0);
            cuts.push(xs.len());
            cuts.sort();
            for kind in AggKind::ALL {
                let whole = fold(kind, &xs);
                let mut merged = Agg::empty(kind);
                // Merge the parts in reverse order: commutativity as well as associativity.
                for w in cuts.windows(2).rev() {
                    merged.merge(&fold(kind, &xs[w[0]..w[1]]));
                }
                prop_assert_eq!(&merged, &whole, "{:?}", kind);
            }
        }

        /// The values are those of a plain computation.
        #[test]
        fn values_equal_a_plain_fold(xs in proptest::collection::vec(-1_000_000i64..1_000_000, 1..300)) {
            prop_assert_eq!(fold(AggKind::Count, &xs).value(), Some(xs.len() as f64));
            prop_assert_eq!(fold(AggKind::Sum, &xs).value(), Some(xs.iter().sum::<i64>() as f64));
            prop_assert_eq!(fold(AggKind::Min, &xs).value(), xs.iter().min().map(|&m| m as f64));
            prop_assert_eq!(fold(AggKind::Max, &xs).value(), xs.iter().max().map(|&m| m as f64));
            let exact = xs.iter().collect::<std::collections::HashSet<_>>().len() as f64;
            let est = fold(AggKind::Distinct, &xs).value().unwrap();
            // Registers can collide even for small sets: allow a few values plus 3 %.
            prop_assert!((est - exact).abs() <= 3.0 + exact * 0.03, "{} vs {}", est, exact);
        }

        /// Float sums merge within rounding of the whole.
        #[test]
        fn float_sums_merge_within_rounding(xs in proptest::collection::vec(-1e6f64..1e6, 0..200), cut in 0usize..200) {
            let cut = cut.min(xs.len());
            let sum = |s: &[f64]| { let mut a = Agg::empty(AggKind::Sum); for &x in s { a.add_num(Num::Float(x)); } a };
            let mut parts = sum(&xs[..cut]);
            parts.merge(&sum(&xs[cut..]));
            let whole = sum(&xs).value().unwrap();
            prop_assert!((parts.value().unwrap() - whole).abs() <= 1e-6 * (1.0 + whole.abs()));
        }
    }

    #[test]
    fn integer_sums_do_not_overflow_where_i64_would() {
        // The fault found in the wild: two values of 6e18 (bytes counters).
        let big = 6_000_000_000_000_000_000i64;
        let mut a = Agg::empty(AggKind::Sum);
        a.add_num(Num::Int(big));
        let mut b = Agg::empty(AggKind::Sum);
        b.add_num(Num::Int(big));
        b.add_num(Num::Int(1));
        a.merge(&b);
        assert_eq!(
            a,
            Agg::Sum {
                int: 12_000_000_000_000_000_001,
                float: 0.0
            }
        );
        let mut low = Agg::empty(AggKind::Sum);
        for _ in 0..3 {
            low.add_num(Num::Int(i64::MIN));
        }
        assert_eq!(
            low,
            Agg::Sum {
                int: 3 * i128::from(i64::MIN),
                float: 0.0
            }
        );
    }

    #[test]
    fn empty_is_the_identity() {
        for kind in AggKind::ALL {
            let x = fold(kind, &[3, -7, 12]);
            let mut left = Agg::empty(kind);
            left.merge(&x);
            let mut right = x.clone();
            right.merge(&Agg::empty(kind));
            assert_eq!(left, x);
            assert_eq!(right, x);
        }
        assert_eq!(Agg::empty(AggKind::Min).value(), None);
    }
}
