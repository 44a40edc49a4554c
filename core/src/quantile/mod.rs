//! A mergeable quantile sketch with a relative-error guarantee (DDSketch's
//! logarithmic buckets).
//!
//! A positive value `x` falls in bucket `i = ceil(log_γ x)` with
//! `γ = (1 + α) / (1 − α)`, and the bucket answers for its values with
//! `2γ^i / (γ + 1)`, which is within a relative error `α` of every value in it.
//! Negative values use the same buckets on `|x|`, and zero has a count of its
//! own. The sketch is nothing but counts per bucket index, so:
//!
//! - merging is adding counts: a commutative monoid, exact whatever the split
//!   (the serving layer merges batch and speed sketches, and rolls buckets up);
//! - in Redis a sketch is a hash of plain counters (`HINCRBY` per bucket), so
//!   the speed layer stays effectively-once;
//! - every layer maps a value to its bucket with [`index_of`], the one
//!   definition, so the same events give the same sketch everywhere.
//!
//! A quantile answered from the sketch is within `α` (1 %) relative error of
//! the exact quantile of the same values under the same rank definition
//! ([`QuantileSketch::quantile`]). Buckets are sparse: a sketch holds one entry
//! per occupied bucket (about 350 for values spanning three orders of
//! magnitude), never more than [`MAX_INDEX`] a side.

mod answer;
mod bucket;
pub mod delta_log;
mod subtract;

pub use answer::Rows;
pub use bucket::{index_of, Bucket, ALPHA, GAMMA, MAX_INDEX, MIN_MAGNITUDE};

/// A sparse store's entry: (code, count). Counts are 32 bits wide, so an
/// entry is 8 bytes and a query that adds up hundreds of sketches reads half
/// the bytes; a sketch whose count of one bucket passes `u32::MAX` keeps a
/// dense run of 64-bit counts instead ([`Store::of_entries`]), so counts stay
/// exact at any size.
pub type Entry = (i32, u32);

/// Push (code, `n`) onto `out` as entries of at most `u32::MAX` each (several
/// of the same code when `n` is larger): how a list of 32-bit entries, such
/// as a snapshot row held for [`QuantileSketch::add_codes`], carries any count.
pub fn push_entry(out: &mut Vec<Entry>, code: i32, mut n: u64) {
    while n > 0 {
        let part = n.min(u64::from(u32::MAX));
        out.push((code, part as u32));
        n -= part;
    }
}

/// Whether (code, `n`) adds values to a sketch: a count of a bucket that
/// exists (other codes are ignored wherever entries are read).
fn counted(c: i32, n: u64) -> bool {
    n > 0 && c.unsigned_abs() <= (2 * MAX_INDEX + 1) as u32
}

/// Two sorted (code, count) lists as one, counts of a code added; `None`
/// when an added count passes `u32::MAX`.
fn merge_sorted(a: &[Entry], b: &[Entry]) -> Option<Vec<Entry>> {
    let mut out = Vec::with_capacity(a.len() + b.len());
    let (mut i, mut j) = (0, 0);
    while i < a.len() && j < b.len() {
        match a[i].0.cmp(&b[j].0) {
            std::cmp::Ordering::Less => {
                out.push(a[i]);
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                out.push(b[j]);
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                out.push((a[i].0, a[i].1.checked_add(b[j].1)?));
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    Some(out)
}

/// The first and last index of a non-zero count in a dense run, found
/// eight counts at a time: a run keeps spare zeros at its ends, and a
/// query's accumulator spans far more codes than one cell occupies.
fn occupied(counts: &[u64]) -> Option<(usize, usize)> {
    const W: usize = 8;
    let any = |c: &[u64]| c.iter().fold(0, |a, &n| a | n) != 0;
    let k = counts.chunks(W).position(any)?;
    let first = k * W + counts[k * W..].iter().position(|&n| n > 0)?;
    let k = counts.rchunks(W).position(any)?;
    let last = counts[..counts.len() - k * W]
        .iter()
        .rposition(|&n| n > 0)?;
    Some((first, last))
}

/// Codes of room a dense run gets on a side it grows.
const COVER_SPARE: usize = 32;

/// A sparse sketch turns dense past this many occupied buckets...
const DENSE_AFTER: usize = 48;
/// ...when its buckets span at most this many codes (32 KiB of counts),
/// and at least half the codes of that span are occupied: a dense count
/// and a sparse entry both take 8 bytes, so the dense run is at most twice
/// the list, and it merges as one array add instead of scattered ones. (A
/// query's accumulators are made dense regardless: [`QuantileSketch::cover`].)
const DENSE_SPAN: usize = 4096;

/// Counts per bucket, by [`Bucket::code`] (value order). Small sketches
/// (what the speed layer flushes, a cell of a few events) keep a sorted list
/// of their occupied buckets; larger ones a dense run of counts from their
/// lowest code, so that merging a row into a query's accumulator is one
/// array add per bucket. Equality is by content, whatever the store.
#[derive(Debug, Clone, Default)]
pub struct QuantileSketch {
    store: Store,
    /// Values in the zero bucket (code 0), kept beside the store as
    /// DDSketch does: code 0 sits far from every other code, so a store
    /// holding it could never be a short dense run.
    zeros: u64,
    /// Values counted (the sum of the counts).
    total: u64,
}

#[derive(Debug, Clone)]
enum Store {
    /// (code, count > 0), codes ascending.
    Sparse(Vec<Entry>),
    /// `counts[k]` is the count of code `offset + k` (zeros allowed).
    Dense { offset: i32, counts: Vec<u64> },
}

impl Default for Store {
    fn default() -> Self {
        Store::Sparse(Vec::new())
    }
}

impl Store {
    /// A store of `entries` ((code, count > 0), codes ascending): a sorted
    /// list when every count fits an [`Entry`], else a dense run over their
    /// span (at most the whole code range, about 1 MiB: only a sketch with
    /// more than `u32::MAX` values in one bucket ever needs it).
    fn of_entries(entries: Vec<(i32, u64)>) -> Store {
        if let Ok(narrow) = entries
            .iter()
            .map(|&(c, n)| u32::try_from(n).map(|n| (c, n)))
            .collect::<Result<Vec<Entry>, _>>()
        {
            return Store::Sparse(narrow);
        }
        let (lo, hi) = match (entries.first(), entries.last()) {
            (Some(a), Some(b)) => (a.0, b.0),
            _ => return Store::default(),
        };
        let mut counts = vec![0u64; (i64::from(hi) - i64::from(lo) + 1) as usize];
        for &(c, n) in &entries {
            counts[(c - lo) as usize] += n;
        }
        Store::Dense { offset: lo, counts }
    }
}

impl PartialEq for QuantileSketch {
    fn eq(&self, other: &Self) -> bool {
        self.total == other.total && self.by_code().eq(other.by_code())
    }
}

impl Eq for QuantileSketch {}

impl QuantileSketch {
    pub fn new() -> Self {
        Self::default()
    }

    /// Add one value (NaN is ignored).
    pub fn add(&mut self, x: f64) {
        if let Some(b) = index_of(x) {
            self.add_count(b, 1);
        }
    }

    /// Add `n` values of bucket `b` (what a Redis counter or a column holds).
    pub fn add_count(&mut self, b: Bucket, n: u64) {
        self.add_code(b.code(), n);
    }

    /// Add `n` values of the bucket of code `c` (a [`Bucket::code`]; a code
    /// of no bucket is ignored).
    pub fn add_code(&mut self, c: i32, n: u64) {
        if !counted(c, n) {
            return;
        }
        self.total += n;
        if c == 0 {
            self.zeros += n;
            return;
        }
        match &mut self.store {
            Store::Dense { offset, counts } => {
                let k = i64::from(c) - i64::from(*offset);
                if k >= 0 && (k as usize) < counts.len() {
                    counts[k as usize] += n;
                    return;
                }
                let lo = i64::from(*offset).min(i64::from(c));
                let hi = (i64::from(*offset) + counts.len() as i64 - 1).max(i64::from(c));
                if (hi - lo + 1) as usize <= DENSE_SPAN {
                    // Grow the run to cover `c` (with room to spare on that side).
                    let spare = 16i64;
                    let (lo, hi) = if k < 0 {
                        (lo - spare, hi)
                    } else {
                        (lo, hi + spare)
                    };
                    let mut grown = vec![0u64; (hi - lo + 1) as usize];
                    let shift = (i64::from(*offset) - lo) as usize;
                    grown[shift..shift + counts.len()].copy_from_slice(counts);
                    grown[(i64::from(c) - lo) as usize] += n;
                    *offset = lo as i32;
                    *counts = grown;
                } else {
                    // Too wide to keep dense: back to a sorted list.
                    let mut sparse = self.entries();
                    let at = sparse.partition_point(|e| e.0 < c);
                    sparse.insert(at, (c, n));
                    self.store = Store::of_entries(sparse);
                }
            }
            Store::Sparse(v) => {
                let fits = match v.binary_search_by_key(&c, |e| e.0) {
                    Ok(i) => match u32::try_from(u64::from(v[i].1) + n) {
                        Ok(sum) => {
                            v[i].1 = sum;
                            true
                        }
                        Err(_) => false,
                    },
                    Err(i) => match u32::try_from(n) {
                        Ok(n) => {
                            v.insert(i, (c, n));
                            true
                        }
                        Err(_) => false,
                    },
                };
                if !fits {
                    // A count past 32 bits: held in 64-bit counts.
                    let mut wide = self.entries();
                    match wide.binary_search_by_key(&c, |e| e.0) {
                        Ok(i) => wide[i].1 += n,
                        Err(i) => wide.insert(i, (c, n)),
                    }
                    self.store = Store::of_entries(wide);
                    return;
                }
                if v.len() > DENSE_AFTER {
                    self.densify();
                }
            }
        }
    }

    /// Add a row of (code, count) entries, codes ascending (a snapshot
    /// row, as [`push_entry`] lays it out: a code may repeat; codes of no
    /// bucket are ignored): the store is made one dense run covering the
    /// row's span once, then each entry is one array add. The span is read
    /// off the row's ends, not found by a pass over it.
    pub fn add_codes(&mut self, entries: &[Entry]) {
        let limit = 2 * MAX_INDEX + 1;
        debug_assert!(entries.is_sorted_by_key(|e| e.0), "codes ascending");
        // Code 0 (the zero bucket) is kept beside the store: not its span.
        let lo = entries.iter().find(|e| e.0 != 0).map(|e| e.0);
        let hi = entries.iter().rev().find(|e| e.0 != 0).map(|e| e.0);
        let covered = entries.len() >= 8
            && match (lo, hi) {
                (Some(lo), Some(hi)) => lo >= -limit && hi <= limit && self.cover(lo, hi),
                _ => true,
            };
        if !covered {
            entries
                .iter()
                .for_each(|&(c, n)| self.add_code(c, u64::from(n)));
            return;
        }
        let QuantileSketch {
            store,
            zeros,
            total,
        } = self;
        // Covered: the store is dense (or the row is all zeros). The
        // store's fields are read once, not per entry.
        let (at, counts): (i32, &mut [u64]) = match store {
            Store::Dense { offset, counts } => (*offset, counts.as_mut_slice()),
            Store::Sparse(_) => (0, &mut []),
        };
        let (mut added, mut zero) = (0u64, 0u64);
        for &(c, n) in entries {
            let n = u64::from(n);
            added += n;
            if c == 0 {
                zero += n;
            } else {
                counts[(c - at) as usize] += n;
            }
        }
        *total += added;
        *zeros += zero;
    }

    /// Make a sparse store dense when its span allows.
    fn densify(&mut self) {
        let Store::Sparse(v) = &self.store else {
            return;
        };
        let (Some(&(lo, _)), Some(&(hi, _))) = (v.first(), v.last()) else {
            return;
        };
        let span = (i64::from(hi) - i64::from(lo) + 1) as usize;
        if span > DENSE_SPAN || span > 2 * v.len() {
            return;
        }
        let mut counts = vec![0u64; span];
        for &(c, n) in v {
            counts[(c - lo) as usize] += u64::from(n);
        }
        self.store = Store::Dense { offset: lo, counts };
    }

    /// The store's occupied buckets as (code, count), codes ascending (the
    /// zero bucket is not in the store).
    fn entries(&self) -> Vec<(i32, u64)> {
        self.stored().collect()
    }

    /// The monoid operation. A dense `other` is added as one array add
    /// over its occupied run when `self` can hold that run densely (the
    /// common case: a query's accumulator taking a row or a cell), and
    /// sorted lists merge in one pass; otherwise one bucket at a time.
    pub fn merge(&mut self, other: &QuantileSketch) {
        if other.is_empty() {
            return;
        }
        if self.is_empty() && self.is_sparse() {
            *self = other.clone();
            return;
        }
        self.zeros += other.zeros;
        self.total += other.zeros;
        let stored = other.total - other.zeros;
        match (&mut self.store, &other.store) {
            (Store::Sparse(mine), Store::Sparse(theirs)) => {
                match merge_sorted(mine, theirs) {
                    Some(merged) => {
                        *mine = merged;
                        self.total += stored;
                        if mine.len() > DENSE_AFTER {
                            self.densify();
                        }
                    }
                    // A count past 32 bits: one bucket at a time.
                    None => theirs
                        .iter()
                        .for_each(|&(c, n)| self.add_code(c, u64::from(n))),
                }
            }
            (Store::Dense { .. }, Store::Sparse(theirs)) => {
                // Cover their span once, then one array add per entry.
                let (Some(&(lo, _)), Some(&(hi, _))) = (theirs.first(), theirs.last()) else {
                    return;
                };
                if self.cover(lo, hi) {
                    if let Store::Dense { offset, counts } = &mut self.store {
                        let (at, counts) = (*offset, counts.as_mut_slice());
                        for &(c, n) in theirs {
                            counts[(c - at) as usize] += u64::from(n);
                        }
                        self.total += stored;
                        return;
                    }
                }
                theirs
                    .iter()
                    .for_each(|&(c, n)| self.add_code(c, u64::from(n)));
            }
            (_, Store::Dense { offset, counts }) => {
                // Its occupied part: the scans stop at the first count from
                // each end, past the few spare zeros a grown run keeps, so
                // that `self` grows for data, never for spare room.
                let Some((f, l)) = occupied(counts) else {
                    return;
                };
                let run = &counts[f..=l];
                let lo = *offset + f as i32;
                if self.cover(lo, lo + (l - f) as i32) {
                    if let Store::Dense {
                        offset: at,
                        counts: mine,
                    } = &mut self.store
                    {
                        let start = (lo - *at) as usize;
                        for (a, &b) in mine[start..start + run.len()].iter_mut().zip(run) {
                            *a += b;
                        }
                        self.total += stored;
                        return;
                    }
                }
                for (k, &n) in run.iter().enumerate() {
                    self.add_code(lo + k as i32, n);
                }
            }
        }
    }

    /// Make the store a dense run covering `lo..=hi` and every bucket it
    /// holds, if that spans at most `DENSE_SPAN` codes; whether it did.
    fn cover(&mut self, lo: i32, hi: i32) -> bool {
        let (held_lo, held_hi) = match &self.store {
            Store::Dense { offset, counts } => (*offset, *offset + counts.len() as i32 - 1),
            Store::Sparse(v) => match (v.first(), v.last()) {
                (Some(a), Some(b)) => (a.0, b.0),
                _ => (lo, hi),
            },
        };
        let (new_lo, new_hi) = (held_lo.min(lo), held_hi.max(hi));
        let span = (i64::from(new_hi) - i64::from(new_lo) + 1) as usize;
        if span > DENSE_SPAN {
            return false;
        }
        if matches!(&self.store, Store::Dense { offset, counts }
            if *offset == new_lo && counts.len() == span)
        {
            return true;
        }
        // Growing: room to spare on each side that grew, so that the next
        // rows (of nearby spans) fit without another copy.
        let room = (DENSE_SPAN - span) / 2;
        let spare = COVER_SPARE.min(room) as i32;
        let new_lo = if new_lo < held_lo || self.is_sparse() {
            new_lo - spare
        } else {
            new_lo
        };
        let new_hi = if new_hi > held_hi || self.is_sparse() {
            new_hi + spare
        } else {
            new_hi
        };
        let span = (i64::from(new_hi) - i64::from(new_lo) + 1) as usize;
        let mut counts = vec![0u64; span];
        match &self.store {
            Store::Dense {
                offset,
                counts: held,
            } => {
                let at = (*offset - new_lo) as usize;
                counts[at..at + held.len()].copy_from_slice(held);
            }
            Store::Sparse(v) => {
                for &(c, n) in v {
                    counts[(c - new_lo) as usize] += u64::from(n);
                }
            }
        }
        self.store = Store::Dense {
            offset: new_lo,
            counts,
        };
        true
    }

    /// Empty the sketch but keep a dense store's room: a query reuses one
    /// sketch to add up each of its cells in turn, so the counts it adds
    /// into are already allocated and in the cache, where a fresh
    /// accumulator per cell is allocated and zeroed cold.
    pub fn clear(&mut self) {
        match &mut self.store {
            Store::Sparse(v) => v.clear(),
            Store::Dense { counts, .. } => counts.fill(0),
        }
        self.zeros = 0;
        self.total = 0;
    }

    /// Add this sketch to `into` and leave it empty, keeping a dense run's
    /// room as [`QuantileSketch::clear`] does: one pass over the occupied
    /// run that adds and zeroes, where a merge and then a clear went over
    /// it twice and zeroed its spare room as well.
    pub fn drain_into(&mut self, into: &mut QuantileSketch) {
        let run = match &self.store {
            Store::Dense { offset, counts } => {
                occupied(counts).map(|(f, l)| (f, l, *offset + f as i32))
            }
            Store::Sparse(_) => None,
        };
        let Some((f, l, lo)) = run else {
            into.merge(self);
            self.clear();
            return;
        };
        if into.cover(lo, lo + (l - f) as i32) {
            if let (
                Store::Dense {
                    offset: at,
                    counts: theirs,
                },
                Store::Dense { counts: mine, .. },
            ) = (&mut into.store, &mut self.store)
            {
                let start = (lo - *at) as usize;
                for (t, m) in theirs[start..start + (l - f) + 1]
                    .iter_mut()
                    .zip(&mut mine[f..=l])
                {
                    *t += *m;
                    *m = 0;
                }
                into.zeros += self.zeros;
                into.total += self.total;
                self.zeros = 0;
                self.total = 0;
                return;
            }
        }
        into.merge(self);
        self.clear();
    }

    fn is_sparse(&self) -> bool {
        matches!(self.store, Store::Sparse(_))
    }

    /// A sparse sketch's entries (codes ascending, the zero bucket not
    /// among them) and its zero bucket's count; `None` for a dense one. What
    /// [`QuantileSketch::add_codes`] and [`QuantileSketch::add_code`] take, so
    /// that a query can note where a small sketch's entries are while its
    /// fields are in the cache and add them later without reading it again.
    pub fn sparse_entries(&self) -> Option<(&[Entry], u64)> {
        match &self.store {
            Store::Sparse(v) => Some((v, self.zeros)),
            Store::Dense { .. } => None,
        }
    }

    /// Values counted.
    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// Occupied buckets, in [`Bucket::code`] order (which is value order),
    /// with their counts: the store's negative codes, the zero bucket, the
    /// store's positive codes.
    pub fn by_code(&self) -> impl Iterator<Item = (i32, u64)> + '_ {
        let zero = (self.zeros > 0).then_some((0, self.zeros));
        self.stored()
            .take_while(|e| e.0 < 0)
            .chain(zero)
            .chain(self.stored().skip_while(|e| e.0 < 0))
    }

    /// The store's occupied buckets (every one but zero), codes ascending.
    fn stored(&self) -> impl Iterator<Item = (i32, u64)> + '_ {
        let empty: &[u64] = &[];
        let (sparse, offset, dense): (&[Entry], i32, &[u64]) = match &self.store {
            Store::Sparse(v) => (v.as_slice(), 0, empty),
            Store::Dense { offset, counts } => (&[], *offset, counts.as_slice()),
        };
        sparse.iter().map(|&(c, n)| (c, u64::from(n))).chain(
            dense
                .iter()
                .enumerate()
                .filter(|e| *e.1 > 0)
                .map(move |(k, n)| (offset + k as i32, *n)),
        )
    }

    /// Occupied buckets, in value order, with their counts.
    pub fn buckets(&self) -> impl Iterator<Item = (Bucket, u64)> + '_ {
        self.by_code()
            .filter_map(|(c, n)| Bucket::from_code(c).map(|b| (b, n)))
    }
}

#[cfg(test)]
mod tests;
