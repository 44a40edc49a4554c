//! Percentiles answered from a [`QuantileSketch`], or from several sorted
//! rows read as the one sketch they add up to ([`Rows`]): one walk over the
//! buckets for every asked rank, from the top when every rank is in the
//! upper half (p90, p99: a few buckets).
//!
//! Guarantee: each answer is the value of the bucket holding the rank
//! `floor(q · (n − 1))` (0-based) of the values in sorted order, so within
//! `α` relative error of the exact quantile under the same rank definition;
//! whichever walk answers, and whether the rows were added up or not, the
//! answers are those of [`QuantileSketch::quantile`] asked one at a time of
//! the sketch that holds the same values.

use super::{counted, Bucket, Entry, QuantileSketch, Store};

/// Buckets visited in code order (which is value order), up or down, until
/// the visitor returns false; a code may be visited more than once.
trait Walk {
    fn count(&self) -> u64;
    fn walk(&self, f: &mut impl FnMut(i32, u64) -> bool);
    fn walk_down(&self, f: &mut impl FnMut(i32, u64) -> bool);
}

/// The percentiles `qs` (ascending) of what `w` holds, in one walk.
fn answer(w: &impl Walk, qs: &[f64]) -> Vec<Option<f64>> {
    let n = w.count();
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
        w.walk_down(&mut |c, k| {
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
    w.walk(&mut |c, k| {
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

impl QuantileSketch {
    /// [`QuantileSketch::quantile`] of each of `qs` (ascending) in one pass
    /// over the buckets.
    pub fn quantiles(&self, qs: &[f64]) -> Vec<Option<f64>> {
        answer(self, qs)
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

impl Walk for QuantileSketch {
    fn count(&self) -> u64 {
        QuantileSketch::count(self)
    }

    /// The occupied buckets, zero included: [`QuantileSketch::by_code`] as
    /// one tight loop over the store, for a query's answers.
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
}

/// Rows of (code, count) entries, codes ascending (snapshot rows, sparse
/// sketches' entries), and a count of the zero bucket beside them, read as
/// the one sketch they add up to without adding them up. A walk merges the
/// rows from the end it starts at, so a percentile near an end (p99, p1)
/// costs a few steps per row, where adding the rows up costs every entry.
#[derive(Debug, Clone, Copy)]
pub struct Rows<'a> {
    rows: &'a [&'a [Entry]],
    zeros: u64,
    n: u64,
}

impl<'a> Rows<'a> {
    /// `n` is the number of values `rows` and `zeros` hold, as adding them
    /// to a sketch counts them (an entry of no bucket holds none).
    pub fn new(rows: &'a [&'a [Entry]], zeros: u64, n: u64) -> Rows<'a> {
        Rows { rows, zeros, n }
    }

    /// [`QuantileSketch::quantiles`] of the sketch the rows add up to.
    pub fn quantiles(&self, qs: &[f64]) -> Vec<Option<f64>> {
        answer(self, qs)
    }

    /// Visit the rows' entries in code order (`DOWN`: from the highest),
    /// and the zero count where code 0 falls, until `f` returns false.
    fn merged<const DOWN: bool>(&self, f: &mut impl FnMut(i32, u64) -> bool) {
        // Each row's unread part and the code it starts (`DOWN`: ends)
        // with, past every code when the row is read: on the stack for the
        // usual few rows.
        let done = if DOWN { i64::MIN } else { i64::MAX };
        let head = |row: &[Entry], (lo, hi): (usize, usize)| match (lo < hi, DOWN) {
            (false, _) => done,
            (true, true) => i64::from(row[hi - 1].0),
            (true, false) => i64::from(row[lo].0),
        };
        let (mut few, mut many) = ([(0usize, 0usize, 0i64); 16], Vec::new());
        let parts: &mut [(usize, usize, i64)] = if self.rows.len() <= few.len() {
            &mut few[..self.rows.len()]
        } else {
            many.resize(self.rows.len(), (0, 0, 0));
            &mut many
        };
        for (part, row) in parts.iter_mut().zip(self.rows) {
            *part = (0, row.len(), head(row, (0, row.len())));
        }
        let mut zero = self.zeros;
        loop {
            // The row whose next entry comes first (no branch per row).
            let (mut first, mut k) = (done, 0);
            for (r, &(_, _, h)) in parts.iter().enumerate() {
                let before = if DOWN { h > first } else { h < first };
                first = if before { h } else { first };
                k = if before { r } else { k };
            }
            if first == done {
                break;
            }
            let past_zero = if DOWN { first < 0 } else { first > 0 };
            if zero > 0 && past_zero && !f(0, std::mem::take(&mut zero)) {
                return;
            }
            let (row, (lo, hi, h)) = (self.rows[k], &mut parts[k]);
            let (c, n) = if DOWN {
                *hi -= 1;
                row[*hi]
            } else {
                *lo += 1;
                row[*lo - 1]
            };
            *h = head(row, (*lo, *hi));
            if counted(c, u64::from(n)) && !f(c, u64::from(n)) {
                return;
            }
        }
        if zero > 0 {
            f(0, zero);
        }
    }
}

impl Walk for Rows<'_> {
    fn count(&self) -> u64 {
        self.n
    }

    fn walk(&self, f: &mut impl FnMut(i32, u64) -> bool) {
        self.merged::<false>(f)
    }

    fn walk_down(&self, f: &mut impl FnMut(i32, u64) -> bool) {
        self.merged::<true>(f)
    }
}
