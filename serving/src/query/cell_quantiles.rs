//! One answer cell's quantile inputs, added up: each cell's snapshot rows
//! and speed sketches go into its group's total (unless the fold makes the
//! totals apart, from a coarser level), and the cell is answered from them.
//!
//! Two ways, the same answers: the inputs added up in one accumulator the
//! fold reuses from cell to cell (no sketch allocated per cell), answered
//! from it and drained into the total in one pass; or, when every asked
//! percentile is near an end (p99) and the inputs are rows, the rows added
//! straight into the total and the cell answered by walking the rows' ends
//! ([`Rows`]), a few steps for a p99, with no per-cell sketch at all.
//!
//! Guarantee: the group's total (when given) gains exactly the cell's
//! inputs, and the cell's percentiles are those of the sketch its inputs
//! add up to.

use tally_core::quantile::{Entry, QuantileSketch, Rows};

use crate::dto::{Final, Percentiles};

/// One quantile input of a cell.
#[derive(Debug, Clone, Copy)]
pub(super) enum Counts<'a> {
    /// (bucket code, count) entries, a count of the zero bucket beside
    /// them (`zeros`) and the values the entries hold (`held`, as adding
    /// them counts them): a snapshot row's (its zeros are among its
    /// entries), or a sparse speed sketch's, noted while its fields were in
    /// the cache (so the fold does not read the sketch again, a cache miss
    /// per cell).
    Row {
        entries: &'a [Entry],
        zeros: u64,
        held: u64,
    },
    /// A dense speed sketch.
    Sketch(&'a QuantileSketch),
}

/// Add a cell's `inputs` to its group's `total` (`None`: the fold makes
/// the totals apart) and answer the cell's percentiles `p`; for a cell a
/// rolling window keeps, copy its sketch to `kept` instead (the window
/// answers it) and answer nothing. `acc` is the
/// fold's reused accumulator (empty between calls); `rows` is room for the
/// walk, reused too; `ends`: every asked percentile is near an end
/// ([`Percentiles::near_an_end`]).
pub(super) fn add_cell<'a>(
    inputs: &[Counts<'a>],
    mut total: Option<&mut QuantileSketch>,
    acc: &mut QuantileSketch,
    rows: &mut Vec<&'a [Entry]>,
    kept: Option<&mut QuantileSketch>,
    p: &Percentiles,
    ends: bool,
) -> Option<Final> {
    let rows_alone = inputs.iter().all(|c| matches!(c, Counts::Row { .. }));
    if ends && rows_alone && kept.is_none() {
        rows.clear();
        let (mut zeros, mut n) = (0, 0);
        for c in inputs {
            if let Counts::Row {
                entries,
                zeros: z,
                held,
            } = *c
            {
                if let Some(total) = total.as_deref_mut() {
                    total.add_codes(entries);
                    total.add_code(0, z);
                }
                rows.push(entries);
                zeros += z;
                n += held + z;
            }
        }
        let read = Rows::new(rows, zeros, n);
        return Some(Final::quantiles(p, read.quantiles(&p.qs)));
    }
    for c in inputs {
        match *c {
            Counts::Row { entries, zeros, .. } => {
                acc.add_codes(entries);
                acc.add_code(0, zeros);
            }
            Counts::Sketch(q) => acc.merge(q),
        }
    }
    let answer = match kept {
        Some(k) => {
            k.clone_from(acc);
            None
        }
        None => Some(Final::of_quantiles(acc, p)),
    };
    match total {
        Some(total) => acc.drain_into(total),
        None => acc.clear(),
    }
    answer
}
