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
//! Sketch measures slide instead: a distinct measure's window is a
//! [`Sliding`] union (each cell's registers enter once and leave once, in
//! the order the cell's union set them: never sorted; a point's estimate is
//! read off a histogram kept as the union changes), a
//! quantile measure's a running sum of the cells' sketches (a cell's counts
//! are added as it enters and taken back as it leaves: counts subtract
//! exactly). A point costs the sketches of the cells that move, where
//! re-merging its window cost every cell in it. A narrow window (at most
//! three buckets) unions its cells' registers afresh for each
//! point instead: that costs less than the moves of a sliding union.
//!
//! Guarantee: a point equals the fold of the events whose base bucket is in
//! its window, whichever layer or level they were read from (the monoid),
//! and costs at most `window / g` cell merges per scalar measure.

use tally_core::agg::{Agg, AggKind};
use tally_core::hll::{Sliding, Union};
use tally_core::quantile::QuantileSketch;

use super::parse::{Query, MAX_WINDOW_BUCKETS};
use crate::dto::{Final, Percentiles};

// A window's cells are distinct buckets of the query's granularity: no more
// of them than a sliding union can count.
const _: () = assert!(MAX_WINDOW_BUCKETS as usize <= Sliding::MAX_SKETCHES);

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
    /// `sliding` holds an empty [`Sliding`] per distinct measure (in the
    /// order of `kinds`), and is left empty.
    pub fn points(
        &self,
        cells: &[Cell],
        kinds: &[AggKind],
        sliding: &mut [Sliding],
        p: &Percentiles,
    ) -> Vec<(i64, Box<[Final]>)> {
        let direct = self.ms <= DIRECT_BUCKETS * self.g;
        let mut inside = Inside::new(kinds, sliding, direct);
        let mut out = Vec::new();
        // Cells in the window of `t` are cells[lo..hi].
        let (mut lo, mut hi) = (0, 0);
        let mut t = self.first;
        while t <= self.last {
            // Cells out of the window leave before new ones enter: the
            // unions never hold more than a window's cells.
            while lo < hi && cells[lo].t <= t - self.ms {
                inside.leave(&cells[lo]);
                lo += 1;
            }
            while hi < cells.len() && cells[hi].t <= t {
                inside.enter(&cells[hi]);
                hi += 1;
            }
            // None, unless a cell entered already out of the window.
            while lo < hi && cells[lo].t <= t - self.ms {
                inside.leave(&cells[lo]);
                lo += 1;
            }
            if lo == hi {
                // Nothing in this window: jump to the first point the next
                // cell reaches.
                match cells.get(hi) {
                    Some(next) => {
                        t = t.max(next.t);
                        continue;
                    }
                    None => break,
                }
            }
            let finals = inside.finals(&cells[lo..hi], p);
            if !finals.iter().all(Final::is_nothing) {
                out.push((t, finals));
            }
            t += self.g;
        }
        // Empty for the next group.
        while lo < hi {
            inside.leave(&cells[lo]);
            lo += 1;
        }
        out
    }
}

/// A closed cell: its output bucket, its aggregates (a distinct measure's
/// left empty) and, per measure, a distinct measure's registers as
/// `(index << 8) | value`, in any order (what [`Sliding`] takes).
#[derive(Debug)]
pub struct Cell {
    pub t: i64,
    pub aggs: Box<[Agg]>,
    pub registers: Box<[Vec<u32>]>,
}

/// Windows of at most this many buckets union their cells' registers
/// afresh for each point: a sliding union's move costs several times a
/// register added to a union and counted, and a point of such a window
/// adds at most this many cells (measured: about even at 6 buckets, the
/// sliding union far cheaper at 12).
const DIRECT_BUCKETS: i64 = 3;

/// The sketch measures of the cells inside a window as it moves over one
/// group: per distinct measure a sliding union (or, for a narrow window,
/// a union of the cells inside made for each point), per quantile measure
/// a running sum.
struct Inside<'a> {
    kinds: &'a [AggKind],
    distinct: Vec<usize>,
    sliding: &'a mut [Sliding],
    /// Narrow windows: no sliding union; each point unions its cells.
    direct: Option<Union>,
    quantiles: Vec<usize>,
    sums: Vec<QuantileSketch>,
}

impl<'a> Inside<'a> {
    fn new(kinds: &'a [AggKind], sliding: &'a mut [Sliding], direct: bool) -> Self {
        let of_kind =
            |kind| -> Vec<usize> { (0..kinds.len()).filter(|&pos| kinds[pos] == kind).collect() };
        let quantiles = of_kind(AggKind::Quantiles);
        Inside {
            kinds,
            distinct: of_kind(AggKind::Distinct),
            // A narrow window moves no sliding union.
            sliding: if direct { &mut [] } else { sliding },
            direct: direct.then(Union::default),
            sums: vec![QuantileSketch::new(); quantiles.len()],
            quantiles,
        }
    }

    fn enter(&mut self, cell: &Cell) {
        for (s, &pos) in self.sliding.iter_mut().zip(&self.distinct) {
            if let Some(r) = cell.registers.get(pos) {
                s.enter(r);
            }
        }
        for (sum, &pos) in self.sums.iter_mut().zip(&self.quantiles) {
            if let Agg::Quantiles(q) = &cell.aggs[pos] {
                sum.merge(q);
            }
        }
    }

    /// The oldest cell inside leaves.
    fn leave(&mut self, cell: &Cell) {
        for (s, &pos) in self.sliding.iter_mut().zip(&self.distinct) {
            if let Some(r) = cell.registers.get(pos) {
                s.leave(r);
            }
        }
        for (sum, &pos) in self.sums.iter_mut().zip(&self.quantiles) {
            if let Agg::Quantiles(q) = &cell.aggs[pos] {
                sum.subtract(q);
            }
        }
    }

    /// The final values of the window (whose cells are `cells`): scalar
    /// measures merged from the cells, sketch measures from the union or
    /// sum kept as it moved.
    fn finals(&mut self, cells: &[Cell], p: &Percentiles) -> Box<[Final]> {
        let (mut unions, mut sums) = (self.sliding.iter(), self.sums.iter());
        let direct = &mut self.direct;
        self.kinds
            .iter()
            .enumerate()
            .map(|(pos, &kind)| match (kind, direct.as_mut()) {
                (AggKind::Distinct, Some(union)) => {
                    for c in cells {
                        if let Some(r) = c.registers.get(pos) {
                            union.add_registers(r);
                        }
                    }
                    Final::Distinct(union.drain())
                }
                (AggKind::Distinct, None) => {
                    Final::Distinct(unions.next().map_or(0, Sliding::count))
                }
                (AggKind::Quantiles, _) => match sums.next() {
                    Some(sum) => Final::of_quantiles(sum, p),
                    None => Final::of(&Agg::empty(kind), p),
                },
                _ => {
                    let mut acc = Agg::empty(kind);
                    for c in cells {
                        acc.merge(&c.aggs[pos]);
                    }
                    Final::of(&acc, p)
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_core::hll::Hll;

    const M: i64 = 60_000;

    fn count(t: i64, n: u64) -> Cell {
        Cell {
            t,
            aggs: vec![Agg::Count(n)].into(),
            registers: vec![Vec::new()].into(),
        }
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
        let cells = vec![count(8 * M, 1), count(10 * M, 2), count(20 * M, 5)];
        let got: Vec<(i64, u64)> = w
            .points(&cells, &[AggKind::Count], &mut [], &Percentiles::default())
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

    /// A sketch of users `range`.
    fn users(range: std::ops::Range<u32>) -> Hll {
        let mut h = Hll::new();
        for u in range {
            h.add(format!("user_{u}").as_bytes());
        }
        h
    }

    /// Windows of 3 buckets (each point unions its cells) and of 6 (a
    /// sliding union).
    #[test]
    fn distinct_points_count_the_union_of_their_window_group_after_group() {
        for buckets in [DIRECT_BUCKETS, 6] {
            distinct_points_of_windows_of(buckets);
        }
    }

    fn distinct_points_of_windows_of(buckets: i64) {
        let w = Window {
            ms: buckets * M,
            g: M,
            first: 10 * M,
            last: 30 * M,
        };
        let kinds = [AggKind::Count, AggKind::Distinct];
        // A cell's registers in the reverse of index order: the sliding
        // union must not rely on any order.
        let cell = |t: i64, r: std::ops::Range<u32>| -> (Cell, Hll) {
            let h = users(r);
            let cell = Cell {
                t: t * M,
                aggs: vec![Agg::Count(1), Agg::Distinct(Hll::new())].into(),
                registers: vec![Vec::new(), h.entries().into_iter().rev().collect()].into(),
            };
            (cell, h)
        };
        // Overlapping users (shared registers, equal and unequal), a gap
        // that empties the window, and a dense cell (2,000 users).
        let groups = [
            vec![
                cell(8, 0..300),
                cell(10, 200..500),
                cell(11, 250..260),
                cell(12, 1_000..3_000),
                cell(20, 100..150),
                cell(22, 140..400),
            ],
            vec![cell(10, 5_000..5_010), cell(13, 0..40)],
        ];
        // One sliding union for every group, as the fold passes it.
        let mut sliding = [Sliding::default()];
        for group in groups {
            let (cells, sketches): (Vec<Cell>, Vec<Hll>) = group.into_iter().unzip();
            let got = w.points(&cells, &kinds, &mut sliding, &Percentiles::default());
            assert!(!got.is_empty());
            for (t, finals) in got {
                let mut want = Hll::new();
                for (c, h) in cells.iter().zip(&sketches) {
                    if c.t <= t && c.t > t - w.ms {
                        want.merge(h);
                    }
                }
                assert!(
                    matches!(finals[1], Final::Distinct(n) if n == want.count()),
                    "point {}: {:?} vs {}",
                    t / M,
                    finals[1],
                    want.count()
                );
            }
            assert!(sliding[0].is_empty(), "the union is left empty");
        }
    }
}
