//! Rolling windows at query time (`window=15m`).
//!
//! The fold reads the query's range widened back by the window's lead-in
//! ([`super::Query::read_range`]) and keeps each closed output cell's
//! aggregates. A point at output bucket `t` merges, per group, the cells in
//! `(t - window, t]`, i.e. the base buckets starting in
//! `[t + g - window, t + g)` (never past `to`: the fold read nothing
//! there): counts and sums added, min of minima, max of maxima, distinct
//! and quantile sketches unioned (the percentiles answered from the
//! union). Points are made for the buckets the plain query has (from the
//! bucket holding `from` to the one holding `to`), where the
//! window holds something; a window with every measure at its identity is
//! not shown, as an empty bucket is not.
//!
//! Guarantee: a point equals the fold of the events whose base bucket is in
//! its window, whichever layer or level they were read from (the monoid),
//! and costs at most `window / g` cell merges per measure.

use tally_core::agg::{Agg, AggKind};
use tally_core::hll::Union;

use super::parse::Query;
use crate::dto::{Final, Percentiles};

/// Which points a windowed query shows, and its window.
#[derive(Debug, Clone, Copy)]
pub struct Window {
    /// The window and the granularity, ms.
    ms: i64,
    g: i64,
    /// The first and the last point's bucket.
    first: i64,
    last: i64,
}

impl Window {
    /// The window of `q` on a view of base granularity `base_ms`, if any.
    pub fn of(q: &Query, base_ms: i64) -> Option<Window> {
        let ms = q.window_ms?;
        let (from, to) = super::plan::base_range(base_ms, q.from_ms, q.to_ms);
        Some(Window {
            ms,
            g: q.granularity.as_ms(),
            first: q.granularity.bucket(from),
            last: q.granularity.bucket(to - 1),
        })
    }

    /// The points of one group from its closed cells (in time order).
    pub fn points(
        &self,
        cells: &[(i64, Box<[Agg]>)],
        kinds: &[AggKind],
        union: &mut Union,
        p: &Percentiles,
    ) -> Vec<(i64, Box<[Final]>)> {
        let mut out = Vec::new();
        // Cells in the window of `t` are cells[lo..hi].
        let (mut lo, mut hi) = (0, 0);
        let mut t = self.first;
        while t <= self.last {
            while hi < cells.len() && cells[hi].0 <= t {
                hi += 1;
            }
            while lo < hi && cells[lo].0 <= t - self.ms {
                lo += 1;
            }
            if lo == hi {
                // Nothing in this window: jump to the first point the next
                // cell reaches.
                match cells.get(hi) {
                    Some(&(next, _)) => {
                        t = t.max(next);
                        continue;
                    }
                    None => break,
                }
            }
            let finals = merge(&cells[lo..hi], kinds, union, p);
            if !finals.iter().all(Final::is_nothing) {
                out.push((t, finals));
            }
            t += self.g;
        }
        out
    }
}

/// The final values of the cells of one window merged.
fn merge(
    cells: &[(i64, Box<[Agg]>)],
    kinds: &[AggKind],
    union: &mut Union,
    p: &Percentiles,
) -> Box<[Final]> {
    kinds
        .iter()
        .enumerate()
        .map(|(pos, &kind)| {
            if kind == AggKind::Distinct {
                union.clear();
                for (_, aggs) in cells {
                    if let Agg::Distinct(h) = &aggs[pos] {
                        union.add(h);
                    }
                }
                return Final::Distinct(union.count());
            }
            let mut acc = Agg::empty(kind);
            for (_, aggs) in cells {
                acc.merge(&aggs[pos]);
            }
            Final::of(&acc, p)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: i64 = 60_000;

    fn count(n: u64) -> Box<[Agg]> {
        vec![Agg::Count(n)].into()
    }

    #[test]
    fn each_point_merges_its_trailing_window_and_gaps_are_skipped() {
        let w = Window {
            ms: 3 * M,
            g: M,
            first: 10 * M,
            last: 30 * M,
        };
        // Cells before the first point count in its window.
        let cells = vec![(8 * M, count(1)), (10 * M, count(2)), (20 * M, count(5))];
        let got: Vec<(i64, u64)> = w
            .points(
                &cells,
                &[AggKind::Count],
                &mut Union::default(),
                &Percentiles::default(),
            )
            .into_iter()
            .map(|(t, f)| match f[0] {
                Final::Count(c) => (t / M, c),
                _ => unreachable!(),
            })
            .collect();
        assert_eq!(
            got,
            vec![(10, 3), (11, 2), (12, 2), (20, 5), (21, 5), (22, 5)]
        );
    }
}
