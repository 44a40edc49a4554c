//! Percentiles answered from a [`QuantileSketch`]: one walk over its
//! buckets for every asked rank, from the top when every rank is in the
//! upper half (p90, p99: a few buckets).
//!
//! Guarantee: each answer is the value of the bucket holding the rank
//! `floor(q · (n − 1))` (0-based) of the sketch's values in sorted order,
//! so within `α` relative error of the exact quantile under the same rank
//! definition; whichever walk answers, the answers are those of
//! [`QuantileSketch::quantile`] asked one at a time.

use super::{Bucket, QuantileSketch, Store};

impl QuantileSketch {
    /// [`QuantileSketch::quantile`] of each of `qs` (ascending) in one pass
    /// over the buckets.
    pub fn quantiles(&self, qs: &[f64]) -> Vec<Option<f64>> {
        let n = self.count();
        let mut out = vec![None; qs.len()];
        if n == 0 {
            return out;
        }
        // (rank, position in `qs`), in rank order.
        // The asked ranks, sorted: on the stack for the usual few (a
        // serving answer asks for them once per cell).
        let asked = qs
            .iter()
            .enumerate()
            .filter(|(_, q)| (0.0..=1.0).contains(*q))
            .map(|(i, q)| ((q * (n - 1) as f64).floor() as u64, i));
        let (mut few, mut many) = ([(0u64, 0usize); 8], Vec::new());
        let ranks: &mut [(u64, usize)] = if qs.len() <= few.len() {
            let mut k = 0;
            for (slot, r) in few.iter_mut().zip(asked) {
                *slot = r;
                k += 1;
            }
            &mut few[..k]
        } else {
            many.extend(asked);
            &mut many
        };
        ranks.sort_unstable();
        if ranks.first().is_some_and(|&(rank, _)| rank >= n / 2) {
            // High percentiles (p90, p99): from the top, a few buckets.
            ranks.reverse();
            let (mut above, mut next) = (0u64, 0usize);
            self.walk_down(&mut |c, k| {
                // This bucket holds ranks n - above .. n - above + k.
                above += k;
                while let Some(&(rank, i)) = ranks.get(next) {
                    if rank < n - above {
                        break;
                    }
                    out[i] = Bucket::from_code(c).map(Bucket::value);
                    next += 1;
                }
                next < ranks.len()
            });
            return out;
        }
        let (mut seen, mut next) = (0u64, 0usize);
        self.walk(&mut |c, k| {
            seen += k;
            while let Some(&(rank, i)) = ranks.get(next) {
                if seen <= rank {
                    break;
                }
                out[i] = Bucket::from_code(c).map(Bucket::value);
                next += 1;
            }
            next < ranks.len()
        });
        out
    }

    /// Visit the occupied buckets in code order, zero included, until `f`
    /// returns false: [`QuantileSketch::by_code`] as one tight loop over
    /// the store, for a query's answers.
    fn walk(&self, f: &mut impl FnMut(i32, u64) -> bool) {
        let mut zero = self.zeros;
        let mut visit = |c: i32, n: u64| {
            if c > 0 && zero > 0 && !f(0, std::mem::take(&mut zero)) {
                return false;
            }
            f(c, n)
        };
        let done = match &self.store {
            Store::Sparse(v) => v.iter().any(|&(c, n)| !visit(c, u64::from(n))),
            Store::Dense { offset, counts } => counts
                .iter()
                .enumerate()
                .any(|(k, &n)| n > 0 && !visit(offset + k as i32, n)),
        };
        if !done && zero > 0 {
            f(0, zero);
        }
    }

    /// [`QuantileSketch::walk`] from the highest code down.
    fn walk_down(&self, f: &mut impl FnMut(i32, u64) -> bool) {
        let mut zero = self.zeros;
        let mut visit = |c: i32, n: u64| {
            if c < 0 && zero > 0 && !f(0, std::mem::take(&mut zero)) {
                return false;
            }
            f(c, n)
        };
        let done = match &self.store {
            Store::Sparse(v) => v.iter().rev().any(|&(c, n)| !visit(c, u64::from(n))),
            Store::Dense { offset, counts } => counts
                .iter()
                .enumerate()
                .rev()
                .any(|(k, &n)| n > 0 && !visit(offset + k as i32, n)),
        };
        if !done && zero > 0 {
            f(0, zero);
        }
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
