//! A day's inputs noted into its output cells: the rows of a snapshot day
//! file ([`Fold::day_file`]) and the cells of a speed slice
//! ([`Fold::slice`]), each at the level its piece of the plan reads.
//!
//! Each input's group is mapped once per source to its output group; its
//! counts, sums and extremes are merged into the output cell at once, its
//! distinct and quantile sketches only noted (in [`Day`]) for
//! [`Fold::finish_day`] to add up per cell.
//!
//! Guarantee: a cell is opened only while the answer stays within
//! `max_cells` cells ([`FoldError::TooManyCells`] past it), and the cancel
//! flag is looked at every few thousand inputs.

use std::sync::atomic::AtomicBool;

use tally_core::agg::{Agg, AggKind};

use super::{Day, Fold, FoldError, GroupMap, HashMap, Open, DROPPED};
use crate::query::cell_quantiles::Counts;
use crate::snapshot::day::{Column, DayData, Sketch};
use crate::speed::slice::SliceData;

impl Fold {
    /// Fold the rows of `data` whose bucket starts in `[from, to)` into `day`.
    pub fn day_file<'a>(
        &mut self,
        day: &mut Day<'a>,
        data: &'a DayData,
        from: i64,
        to: i64,
        cancel: &AtomicBool,
    ) -> Result<(), FoldError> {
        let mut map = GroupMap::new();
        let g = self.q.granularity;
        let rows = data.rows_in(from, to);
        for (bucket, rows) in data.buckets_in(rows) {
            let ob = g.bucket(bucket);
            self.tick(rows.len(), cancel)?;
            for r in rows {
                let og = self.mapped(&mut map, &data.groups, data.group_of[r]);
                if og == DROPPED {
                    continue;
                }
                let cell = self.open_cell(&mut day.open, ob, og)?;
                for (mi, col) in data.measures.iter().enumerate() {
                    let Some(Some(pos)) = self.slot.get(mi) else {
                        continue;
                    };
                    match col {
                        Column::Distinct(v) => day.sketches.push((cell.id, *pos, v.get(r))),
                        Column::Quantiles(v) if self.kinds[*pos] == AggKind::Quantiles => {
                            let (entries, held) = (v.get(r), v.held(r));
                            let row = Counts::Row {
                                entries,
                                zeros: 0,
                                held,
                            };
                            day.quantiles.push((cell.id, *pos, row))
                        }
                        col => merge_row(&mut cell.aggs[*pos], col, r),
                    }
                }
            }
        }
        Ok(())
    }

    /// Fold the cells of `slice` at level `level_ms` whose bucket starts in
    /// `[from, to)` into `day`.
    #[allow(clippy::too_many_arguments)]
    pub fn slice<'a>(
        &mut self,
        day: &mut Day<'a>,
        slice: &'a SliceData,
        level_ms: i64,
        from: i64,
        to: i64,
        map: &mut GroupMap,
        cancel: &AtomicBool,
    ) -> Result<(), FoldError> {
        let g = self.q.granularity;
        for (bucket, cells) in slice.cells_in(level_ms, from, to) {
            let ob = g.bucket(bucket);
            self.tick(cells.len(), cancel)?;
            for (&gid, aggs) in cells {
                let og = self.mapped(map, slice.groups(), gid);
                if og == DROPPED {
                    continue;
                }
                let cell = self.open_cell(&mut day.open, ob, og)?;
                for (mi, agg) in aggs.iter().enumerate() {
                    let Some(Some(pos)) = self.slot.get(mi) else {
                        continue;
                    };
                    match agg {
                        Agg::Distinct(h) if !h.is_empty() => {
                            day.sketches.push((cell.id, *pos, Sketch::Dense(h, None)))
                        }
                        Agg::Distinct(_) => {}
                        Agg::Quantiles(q) if self.kinds[*pos] == AggKind::Quantiles => {
                            let counts = match q.sparse_entries() {
                                Some((entries, zeros)) => Counts::Row {
                                    entries,
                                    zeros,
                                    held: q.count() - zeros,
                                },
                                None => Counts::Sketch(q),
                            };
                            day.quantiles.push((cell.id, *pos, counts))
                        }
                        agg if cell.aggs[*pos].kind() == agg.kind() => cell.aggs[*pos].merge(agg),
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// The open cell (output bucket `ob`, output group `og`) of a day's
    /// `open` cells, added if new while the answer stays within
    /// `max_cells` cells (those of days done are final already).
    fn open_cell<'d>(
        &self,
        open: &'d mut HashMap<(i64, u32), Open>,
        ob: i64,
        og: u32,
    ) -> Result<&'d mut Open, FoldError> {
        let len = open.len();
        match open.entry((ob, og)) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(e) => {
                if len + self.done >= self.max_cells {
                    return Err(FoldError::TooManyCells(self.max_cells));
                }
                Ok(e.insert(Open {
                    id: len as u32,
                    aggs: self.kinds.iter().map(|&k| Agg::empty(k)).collect(),
                }))
            }
        }
    }
}

/// Merge row `r` of `col` into `acc`.
fn merge_row(acc: &mut Agg, col: &Column, r: usize) {
    match (acc, col) {
        (Agg::Count(c), Column::Count(v)) => *c += v[r],
        (Agg::Sum { int, float }, Column::Sum { int: i, float: f }) => {
            *int += i.get(r);
            if let Some(f) = f {
                *float += f[r];
            }
        }
        (Agg::Min(m), Column::Extreme(v)) if !v[r].is_nan() => {
            *m = Some(m.map_or(v[r], |m| m.min(v[r])));
        }
        (Agg::Max(m), Column::Extreme(v)) if !v[r].is_nan() => {
            *m = Some(m.map_or(v[r], |m| m.max(v[r])));
        }
        _ => {}
    }
}
