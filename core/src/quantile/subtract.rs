//! Taking a part's counts back out of a [`QuantileSketch`]: what a roll-up
//! does when a cell it holds changes, and what a rolling window's running
//! sum does when a cell leaves it.
//!
//! Guarantee: counts subtract exactly (saturating at zero); when the
//! sketch is a dense run holding at least the part's counts, in place.

use super::{occupied, QuantileSketch, Store, DENSE_AFTER};

impl QuantileSketch {
    /// Take `other`'s counts away again (saturating at zero; a bucket left
    /// empty is removed): what a roll-up does when a cell it holds changes.
    pub fn subtract(&mut self, other: &QuantileSketch) {
        if self.subtract_in_place(other) {
            return;
        }
        let mut left: Vec<(i32, u64)> = self.by_code().collect();
        for (c, n) in other.by_code() {
            if let Ok(i) = left.binary_search_by_key(&c, |e| e.0) {
                left[i].1 = left[i].1.saturating_sub(n);
            }
        }
        left.retain(|e| e.1 > 0);
        self.total = left.iter().map(|e| e.1).sum();
        self.zeros = left.iter().find(|e| e.0 == 0).map_or(0, |e| e.1);
        left.retain(|e| e.0 != 0);
        self.store = Store::of_entries(left);
        if let Store::Sparse(v) = &self.store {
            if v.len() > DENSE_AFTER {
                self.densify();
            }
        }
    }

    /// [`QuantileSketch::subtract`] without rebuilding the store, when it
    /// is a dense run that holds at least `other`'s count in each of
    /// `other`'s buckets (a rolling window's running sum taking back a cell
    /// it added): each count is taken from its slot. Whether it did; when it
    /// did not, nothing changed.
    fn subtract_in_place(&mut self, other: &QuantileSketch) -> bool {
        if other.zeros > self.zeros {
            return false;
        }
        let Store::Dense { offset, counts } = &mut self.store else {
            return false;
        };
        let at = *offset;
        let slot = |c: i32| usize::try_from(c - at).ok().filter(|&k| k < counts.len());
        match &other.store {
            Store::Sparse(theirs) => {
                let held = theirs
                    .iter()
                    .all(|&(c, n)| slot(c).is_some_and(|k| counts[k] >= u64::from(n)));
                if !held {
                    return false;
                }
                for &(c, n) in theirs {
                    counts[(c - at) as usize] -= u64::from(n);
                }
            }
            Store::Dense {
                offset: o,
                counts: theirs,
            } => {
                // Their occupied part against the same slots of ours: two
                // passes over two slices, which the compiler vectorises.
                if let Some((f, l)) = occupied(theirs) {
                    let run = &theirs[f..=l];
                    let (Some(start), Some(_)) = (slot(o + f as i32), slot(o + l as i32)) else {
                        return false;
                    };
                    let mine = &mut counts[start..start + run.len()];
                    if !mine.iter().zip(run).all(|(m, t)| m >= t) {
                        return false;
                    }
                    for (m, t) in mine.iter_mut().zip(run) {
                        *m -= t;
                    }
                }
            }
        }
        self.zeros -= other.zeros;
        self.total -= other.total;
        true
    }
}
