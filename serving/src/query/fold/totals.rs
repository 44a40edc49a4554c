//! The group totals of sketch measures, made apart from the cells.
//!
//! A query's totals cover its whole range, so they may be read at a
//! coarser level than its cells: a 24-hour query by hour reads each
//! group's day as one row of the daily level for its totals, where the
//! cells read 24 hourly rows. [`Fold::total_day_file`] and
//! [`Fold::total_slice`] merge the distinct and quantile measures of such
//! rows and cells straight into the output groups' totals; the fold, made
//! with its totals apart, then counts each cell's sketches without merging
//! them into the totals. Counts, sums and extremes are not read here: they
//! still add up from the cells, at no cost worth saving.
//!
//! Guarantee: read over pieces that cover the same range as the cells'
//! (the level plan, [`crate::query::plan`]), the totals equal the union of
//! the cells' sketches (the roll-up levels are exact: registers are
//! maxima, counts per bucket add), through the same filters, lookups and
//! grouping.

use std::sync::atomic::AtomicBool;

use tally_core::agg::Agg;

use super::{Fold, FoldError, GroupMap, DROPPED};
use crate::snapshot::day::{Column, DayData, Sketch};
use crate::speed::slice::SliceData;

impl Fold {
    /// Merge the sketch measures of `data`'s rows whose bucket starts in
    /// `[from, to)` into the totals of their output groups.
    pub fn total_day_file(
        &mut self,
        data: &DayData,
        from: i64,
        to: i64,
        cancel: &AtomicBool,
    ) -> Result<(), FoldError> {
        let mut map = GroupMap::new();
        for (_, rows) in data.buckets_in(data.rows_in(from, to)) {
            self.tick(rows.len(), cancel)?;
            for r in rows {
                let og = self.mapped(&mut map, &data.groups, data.group_of[r]);
                if og == DROPPED {
                    continue;
                }
                for (mi, col) in data.measures.iter().enumerate() {
                    let Some(Some(pos)) = self.slot.get(mi) else {
                        continue;
                    };
                    match (&mut self.totals[og as usize][*pos], col) {
                        (Agg::Distinct(total), Column::Distinct(v)) => match v.get(r) {
                            Sketch::Registers(regs) => total.merge_registers(regs),
                            Sketch::Dense(h, _) => total.merge(h),
                        },
                        // A snapshot row's zeros are among its entries.
                        (Agg::Quantiles(total), Column::Quantiles(v)) => total.add_codes(v.get(r)),
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }

    /// Merge the sketch measures of `slice`'s cells at level `level_ms`
    /// whose bucket starts in `[from, to)` into the totals of their output
    /// groups; `map` is the slice's group map.
    pub fn total_slice(
        &mut self,
        slice: &SliceData,
        level_ms: i64,
        from: i64,
        to: i64,
        map: &mut GroupMap,
        cancel: &AtomicBool,
    ) -> Result<(), FoldError> {
        for (_, cells) in slice.cells_in(level_ms, from, to) {
            self.tick(cells.len(), cancel)?;
            for (&gid, aggs) in cells {
                let og = self.mapped(map, slice.groups(), gid);
                if og == DROPPED {
                    continue;
                }
                for (mi, agg) in aggs.iter().enumerate() {
                    let Some(Some(pos)) = self.slot.get(mi) else {
                        continue;
                    };
                    match (&mut self.totals[og as usize][*pos], agg) {
                        (Agg::Distinct(total), Agg::Distinct(h)) => total.merge(h),
                        (Agg::Quantiles(total), Agg::Quantiles(q)) => total.merge(q),
                        _ => {}
                    }
                }
            }
        }
        Ok(())
    }
}
