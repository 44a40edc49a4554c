//! One measure's values in a decoded day file, laid out for folding: counts
//! and extremes as plain vectors, integer sums 64 bits wide while they fit,
//! sketches with the sparse ones' registers in one buffer, and quantile
//! sketches' (bucket, count) entries in one buffer.
//!
//! Guarantees: [`Sketches::get`] gives back each row's sketch as it was
//! pushed (a dense one with its estimate, counted once); the `bytes` of each
//! column is what it holds on the heap, for the day cache's budget.

use tally_core::hll::Hll;
use tally_core::quantile::{push_entry, Bucket, Entry};

/// One measure's values, one per row.
#[derive(Debug)]
pub enum Column {
    Count(Vec<u64>),
    /// `sum`: the integer part, and the float part unless it is all zero.
    Sum {
        int: Ints,
        float: Option<Vec<f64>>,
    },
    /// `min` or `max`; NaN where the row had no input (values are finite).
    Extreme(Vec<f64>),
    Distinct(Sketches),
    Quantiles(QuantileRows),
}

/// Quantile sketches, one per row: every row's entries in one buffer.
#[derive(Debug, Default)]
pub struct QuantileRows {
    /// (bucket code, count), row after row, codes ascending within a row
    /// (codes of buckets: pushed as [`Bucket`]s); 8 bytes an entry, a count
    /// past 32 bits split over entries of the same code ([`push_entry`]).
    entries: Vec<Entry>,
    /// Row `r`'s entries are `entries[ends[r - 1]..ends[r]]`.
    ends: Vec<u32>,
    /// Per row, the values its entries hold: counted once here, so that a
    /// query answering a row's percentiles without adding it up knows its
    /// size without a pass over it.
    held: Vec<u64>,
}

impl QuantileRows {
    /// Append the next row's entries, codes ascending whatever order the
    /// file held them in (the writer stores them ascending; a query adds a
    /// row up reading its span off its ends: `QuantileSketch::add_codes`).
    pub(super) fn push(&mut self, entries: &[(Bucket, u64)]) {
        let start = self.entries.len();
        let mut held = 0u64;
        for &(b, n) in entries {
            push_entry(&mut self.entries, b.code(), n);
            held = held.saturating_add(n);
        }
        self.held.push(held);
        let row = &mut self.entries[start..];
        if !row.is_sorted_by_key(|e| e.0) {
            row.sort_unstable_by_key(|e| e.0);
        }
        self.ends.push(self.entries.len() as u32);
    }

    /// Row `r`'s entries.
    pub fn get(&self, r: usize) -> &[Entry] {
        let start = r.checked_sub(1).map_or(0, |p| self.ends[p] as usize);
        &self.entries[start..self.ends[r] as usize]
    }

    /// The values row `r`'s entries hold (each entry is of a bucket).
    pub fn held(&self, r: usize) -> u64 {
        self.held[r]
    }

    /// The rows in the order `order` gives.
    pub(super) fn permuted(&self, order: &[u32]) -> QuantileRows {
        let mut out = QuantileRows::default();
        for &r in order {
            out.entries.extend_from_slice(self.get(r as usize));
            out.ends.push(out.entries.len() as u32);
            out.held.push(self.held[r as usize]);
        }
        out
    }

    pub(super) fn shrink_to_fit(&mut self) {
        self.entries.shrink_to_fit();
        self.ends.shrink_to_fit();
        self.held.shrink_to_fit();
    }

    pub(super) fn bytes(&self) -> usize {
        self.entries.len() * std::mem::size_of::<Entry>()
            + self.ends.len() * 4
            + self.held.len() * 8
    }
}

/// Integer sums: 64 bits each while every one fits.
#[derive(Debug)]
pub enum Ints {
    Narrow(Vec<i64>),
    Wide(Vec<i128>),
}

impl Ints {
    pub fn get(&self, r: usize) -> i128 {
        match self {
            Ints::Narrow(v) => i128::from(v[r]),
            Ints::Wide(v) => v[r],
        }
    }

    pub(super) fn of(v: Vec<i128>) -> Ints {
        match v.iter().map(|&x| i64::try_from(x)).collect() {
            Ok(narrow) => Ints::Narrow(narrow),
            Err(_) => {
                let mut v = v;
                v.shrink_to_fit();
                Ints::Wide(v)
            }
        }
    }

    pub(super) fn bytes(&self) -> usize {
        match self {
            Ints::Narrow(v) => v.len() * 8,
            Ints::Wide(v) => v.len() * 16,
        }
    }
}

/// The sketches of a column: the registers of the sparse ones in one buffer
/// (a few bytes per row instead of an allocation each), the dense ones apart.
#[derive(Debug, Default)]
pub struct Sketches {
    /// Registers as `Hll::sparse_registers` gives them, row after row.
    regs: Vec<u32>,
    /// Row `r`'s registers are `regs[ends[r - 1]..ends[r]]` (from 0 for the
    /// first row); a dense row has an empty range and a place in `dense`.
    ends: Vec<u32>,
    /// (row, sketch, its estimate) of the dense rows, by row: a dense
    /// sketch is counted once here, not by every query that shows it.
    dense: Vec<(u32, Hll, u64)>,
}

/// One row's sketch.
#[derive(Debug, Clone, Copy)]
pub enum Sketch<'a> {
    /// Registers as `Hll::sparse_registers` gives them (maybe none).
    Registers(&'a [u32]),
    /// A dense sketch, and its estimate when known.
    Dense(&'a Hll, Option<u64>),
}

impl Sketches {
    /// Append the next row's sketch.
    pub(super) fn push(&mut self, h: Hll) {
        match h.sparse_registers() {
            Some(regs) => self.regs.extend_from_slice(regs),
            None => {
                let count = h.count();
                self.dense.push((self.ends.len() as u32, h, count));
            }
        }
        self.ends.push(self.regs.len() as u32);
    }

    pub(super) fn shrink_to_fit(&mut self) {
        self.regs.shrink_to_fit();
        self.ends.shrink_to_fit();
        self.dense.shrink_to_fit();
    }

    /// The rows in the order `order` gives.
    pub(super) fn permuted(&self, order: &[u32]) -> Sketches {
        let mut out = Sketches::default();
        for &r in order {
            match self.get(r as usize) {
                Sketch::Registers(regs) => {
                    out.regs.extend_from_slice(regs);
                    out.ends.push(out.regs.len() as u32);
                }
                Sketch::Dense(h, count) => {
                    let count = count.unwrap_or_else(|| h.count());
                    out.dense.push((out.ends.len() as u32, h.clone(), count));
                    out.ends.push(out.regs.len() as u32);
                }
            }
        }
        out
    }

    pub fn get(&self, r: usize) -> Sketch<'_> {
        let start = r.checked_sub(1).map_or(0, |p| self.ends[p] as usize);
        let end = self.ends[r] as usize;
        if start == end {
            if let Ok(i) = self
                .dense
                .binary_search_by_key(&(r as u32), |(row, _, _)| *row)
            {
                let (_, h, count) = &self.dense[i];
                return Sketch::Dense(h, Some(*count));
            }
        }
        Sketch::Registers(&self.regs[start..end])
    }

    pub(super) fn bytes(&self) -> usize {
        self.regs.len() * 4
            + self.ends.len() * 4
            + self
                .dense
                .iter()
                .map(|(_, h, _)| 16 + std::mem::size_of::<Hll>() + h.heap_bytes())
                .sum::<usize>()
    }
}

#[cfg(test)]
mod tests {
    use tally_core::quantile::QuantileSketch;

    use super::*;

    /// A row stored out of order (a file the writer did not write) is kept
    /// ascending, a query adds it up as its values one by one, and its size
    /// is the number of its values.
    #[test]
    fn a_row_out_of_order_is_kept_ascending_and_adds_up_exactly() {
        let values: Vec<f64> = (0..40).map(|i| f64::from((i * 37) % 500)).collect();
        let mut want = QuantileSketch::new();
        values.iter().for_each(|&x| want.add(x));
        let mut entries: Vec<(Bucket, u64)> = want.buckets().collect();
        entries.reverse();
        let mut rows = QuantileRows::default();
        rows.push(&[]);
        rows.push(&entries);
        let row = rows.get(1);
        assert!(row.is_sorted_by_key(|e| e.0), "{row:?}");
        let mut got = QuantileSketch::new();
        got.add_codes(row);
        assert_eq!(got, want);
        // Each row's size, as its values count, kept through a reorder.
        assert_eq!((rows.held(0), rows.held(1)), (0, values.len() as u64));
        let swapped = rows.permuted(&[1, 0]);
        assert_eq!((swapped.held(0), swapped.held(1)), (values.len() as u64, 0));
        assert_eq!(swapped.get(0), row);
    }
}
