//! `quantiles` in the plan: the same sketch as every layer's, from Polars
//! expressions and one pass in Rust.
//!
//! Each row's number is mapped to its bucket by core's own function
//! ([`tally_core::quantile::index_of`], as [`Bucket::code`]), element-wise,
//! so the streaming engine runs it per morsel and the bucket is the one the
//! speed layer computes for the same value, bit for bit (no second formula
//! to drift). The group-by collects each group's codes (an unordered
//! `implode`: four bytes per row, as `distinct` does), and [`sketch`]
//! reduces each list to the sketch, once: its occupied buckets in code
//! order with their counts, one `Int64` per bucket (the code in the high 32
//! bits, the count in the low 32; a count past `u32::MAX` takes several
//! entries of its code, as [`push_entry`] lays them out, so counts stay
//! exact). A roll-up reads the lists of a coarser group's finer rows and
//! merges them again ([`merged_rows`]): counts add, the monoid of the
//! sketch. One list column of 8-byte entries per measure, where a codes and
//! a counts column took 12 bytes a bucket, each reduced from the same
//! codes, and gathered twice.

use polars::prelude::*;
use tally_core::agg::Num;
use tally_core::quantile::{index_of, push_entry, Entry};

use super::list_rows::for_each_group;
use crate::promote::PropType;

/// Stands for a row without a number (no code is this low).
const NO_CODE: i32 = i32::MIN;

/// The code of a number, `None` for NaN (never accepted anyway).
fn code_of(n: Num) -> Option<i32> {
    index_of(n.as_f64()).map(|b| b.code())
}

/// A bucket code per row from the numeric columns of one field (an `Int`
/// and a `Float` column, at most one set per row); [`NO_CODE`] where
/// neither is (not null, as `distinct`'s entries: a list without nulls is
/// read in place).
/// Values of other types are ignored, as `sum`, `min` and `max` ignore them.
pub(super) fn entries(columns: &[(PropType, String)], name: &str) -> Expr {
    let numeric: Vec<(PropType, String)> = columns
        .iter()
        .filter(|(t, _)| matches!(t, PropType::Int | PropType::Float))
        .cloned()
        .collect();
    if numeric.is_empty() {
        return lit(NULL).cast(DataType::Int32).alias(name);
    }
    let types: Vec<PropType> = numeric.iter().map(|(t, _)| *t).collect();
    let first = col(numeric[0].1.as_str());
    let rest: Vec<Expr> = numeric[1..].iter().map(|(_, c)| col(c.as_str())).collect();
    first
        .map_many(
            move |cs: &mut [Column]| codes_of(&types, cs).map(Column::from),
            &rest,
            |_, fields| Ok(Field::new(fields[0].name().clone(), DataType::Int32)),
        )
        .alias(name)
}

fn codes_of(types: &[PropType], cs: &[Column]) -> PolarsResult<Series> {
    let n = cs.first().map_or(0, Column::len);
    let mut out: Vec<i32> = vec![NO_CODE; n];
    for (t, c) in types.iter().zip(cs) {
        let s = c.as_materialized_series();
        match t {
            PropType::Int => {
                for (o, v) in out.iter_mut().zip(s.i64()?.iter()) {
                    if let Some(v) = v {
                        *o = code_of(Num::Int(v)).unwrap_or(NO_CODE);
                    }
                }
            }
            PropType::Float => {
                for (o, v) in out.iter_mut().zip(s.f64()?.iter()) {
                    if let Some(v) = v {
                        *o = code_of(Num::Float(v)).unwrap_or(NO_CODE);
                    }
                }
            }
            PropType::Str | PropType::Bool => {}
        }
    }
    Ok(Int32Chunked::from_vec(PlSmallStr::EMPTY, out).into_series())
}

/// Each list of codes (one per row of a group) reduced to the sketch: its
/// occupied buckets in code order with their counts, packed ([`pack`]).
pub(super) fn sketch(list: Expr) -> Expr {
    list.map(
        |c: Column| Ok(reduce_lists(c.list()?)?.into_series().into()),
        |_, f| Ok(Field::new(f.name().clone(), entries_type())),
    )
}

fn entries_type() -> DataType {
    DataType::List(Box::new(DataType::Int64))
}

fn builder(name: PlSmallStr, rows: usize, values: usize) -> EntriesBuilder {
    ListPrimitiveChunkedBuilder::new(name, rows, values, DataType::Int64)
}

type EntriesBuilder = ListPrimitiveChunkedBuilder<Int64Type>;

/// A bucket's entry as one `Int64`: the code in the high half (so packed
/// entries sort by code), the count in the low half.
fn pack((code, n): Entry) -> i64 {
    (i64::from(code) << 32) | i64::from(n)
}

fn unpack(v: i64) -> Entry {
    ((v >> 32) as i32, v as u32)
}

fn reduce_lists(lists: &ListChunked) -> PolarsResult<ListChunked> {
    let mut out = builder(lists.name().clone(), lists.len(), 0);
    let mut scratch: Vec<i32> = Vec::new();
    let mut pairs: Vec<(i32, u64)> = Vec::new();
    let mut entries: Vec<Entry> = Vec::new();
    let (values, offsets) = flat_i32(lists)?;
    for w in offsets.windows(2) {
        scratch.clear();
        scratch.extend(values[w[0]..w[1]].iter().filter(|&&c| c != NO_CODE));
        scratch.sort_unstable();
        pairs.clear();
        for &c in &scratch {
            add_to(&mut pairs, c, 1);
        }
        push(&mut out, &mut entries, &pairs);
    }
    Ok(out.finish())
}

/// Append `pairs` (code ascending) to `out` as one row of packed entries
/// (`entries` is scratch).
fn push(out: &mut EntriesBuilder, entries: &mut Vec<Entry>, pairs: &[(i32, u64)]) {
    entries.clear();
    for &(c, n) in pairs {
        push_entry(entries, c, n);
    }
    out.append_values_iter(entries.iter().map(|&e| pack(e)));
}

/// The values of a list column of `i32` (nulls as [`NO_CODE`]), and the row
/// offsets into them: row `r` is `values[offsets[r]..offsets[r + 1]]`.
fn flat_i32(lists: &ListChunked) -> PolarsResult<(Vec<i32>, Vec<usize>)> {
    let lists = lists.rechunk();
    let inner = lists.get_inner();
    let inner = inner.i32()?.fill_null_with_values(NO_CODE)?;
    let inner = inner.rechunk();
    Ok(rows_of(&lists, inner.cont_slice()?))
}

/// The values of a list column of packed entries (never null), and the
/// row offsets into them, as [`flat_i32`].
fn flat_i64(lists: &ListChunked) -> PolarsResult<(Vec<i64>, Vec<usize>)> {
    let lists = lists.rechunk();
    let inner = lists.get_inner();
    let inner = inner.i64()?.rechunk();
    Ok(rows_of(&lists, inner.cont_slice()?))
}

/// The part of `inner` (a rechunked list column's whole values buffer,
/// [`ListChunked::get_inner`]) its rows cover, and their offsets from 0.
/// A list column sliced out of a larger one (a day's rows of the plan's
/// frame) keeps the whole buffer and offsets that start past 0.
fn rows_of<T: Copy>(lists: &ListChunked, inner: &[T]) -> (Vec<T>, Vec<usize>) {
    debug_assert!(lists.chunks().len() <= 1, "rechunked");
    let Some(arr) = lists.downcast_iter().next() else {
        return (Vec::new(), vec![0]);
    };
    let o = arr.offsets().as_slice();
    let (first, last) = (o[0] as usize, o[o.len() - 1] as usize);
    (
        inner[first..last].to_vec(),
        o.iter().map(|&x| x as usize - first).collect(),
    )
}

/// A roll-up: each coarse group's rows of the finer level (row numbers, as
/// the group-by gathers them) merged into one sketch, their entries read
/// from `finer` (that level's sketches) where they lie.
pub(super) fn merged_rows(rows: Expr, finer: ListChunked) -> Expr {
    rows.map(
        move |c: Column| Ok(merge_groups(c.list()?, &finer)?.into_series().into()),
        |_, f| Ok(Field::new(f.name().clone(), entries_type())),
    )
}

fn merge_groups(groups: &ListChunked, finer: &ListChunked) -> PolarsResult<ListChunked> {
    let mut out = builder(groups.name().clone(), groups.len(), 0);
    let mut pairs: Vec<(i32, u64)> = Vec::new();
    let mut entries: Vec<Entry> = Vec::new();
    for_each_group(groups, finer, |gathered: &mut [i64]| {
        // Packed entries sort by code.
        gathered.sort_unstable();
        counts_by_code(gathered, &mut pairs);
        push(&mut out, &mut entries, &pairs);
    })?;
    Ok(out.finish())
}

/// `sorted` packed entries as (code, count) with the counts of a code added
/// (a code of no bucket or a count of 0 left out).
fn counts_by_code(sorted: &[i64], pairs: &mut Vec<(i32, u64)>) {
    pairs.clear();
    for &v in sorted {
        let (c, n) = unpack(v);
        if c == NO_CODE || n == 0 {
            continue;
        }
        add_to(pairs, c, u64::from(n));
    }
}

/// Add `n` to code `c`'s count in `pairs`, codes arriving ascending.
fn add_to(pairs: &mut Vec<(i32, u64)>, c: i32, n: u64) {
    match pairs.last_mut() {
        Some((last, total)) if *last == c => *total += n,
        _ => pairs.push((c, n)),
    }
}

/// The plan's lists of packed entries as the snapshot's quantiles column
/// ([`tally_store::snapshot::quantile_array`]), row by row.
pub(super) fn sketches(lists: &ListChunked) -> PolarsResult<arrow_array::ListArray> {
    let (values, offsets) = flat_i64(lists)?;
    let (mut codes, mut counts, mut at) = (Vec::new(), Vec::new(), vec![0]);
    let mut pairs: Vec<(i32, u64)> = Vec::new();
    for w in offsets.windows(2) {
        // Sorted as written; a count split over entries is added up again.
        counts_by_code(&values[w[0]..w[1]], &mut pairs);
        for &(c, n) in &pairs {
            codes.push(c);
            counts.push(n);
        }
        at.push(codes.len());
    }
    Ok(tally_store::snapshot::quantile_array(
        at.windows(2)
            .map(|w| (&codes[w[0]..w[1]], &counts[w[0]..w[1]])),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_core::quantile::{Bucket, QuantileSketch, GAMMA};

    fn codes_list(rows: &[&[i32]]) -> ListChunked {
        let mut b = ListPrimitiveChunkedBuilder::<Int32Type>::new(
            "m".into(),
            rows.len(),
            8,
            DataType::Int32,
        );
        rows.iter().for_each(|r| b.append_slice(r));
        b.finish()
    }

    fn entries_list(rows: &[&[Entry]]) -> ListChunked {
        let mut b = builder("m".into(), rows.len(), 8);
        rows.iter()
            .for_each(|r| b.append_values_iter(r.iter().map(|&e| pack(e))));
        b.finish()
    }

    /// Groups of row numbers, as a roll-up's group-by gathers them.
    fn groups(rows: &[&[IdxSize]]) -> ListChunked {
        let mut b =
            ListPrimitiveChunkedBuilder::<IdxType>::new("g".into(), rows.len(), 8, IDX_DTYPE);
        rows.iter().for_each(|r| b.append_slice(r));
        b.finish()
    }

    /// Each row's (code, count) pairs, counts of a code added.
    fn rows(lists: &ListChunked) -> (Vec<Vec<(i32, u64)>>, Vec<usize>) {
        let (values, offsets) = flat_i64(lists).unwrap();
        let rows = offsets
            .windows(2)
            .map(|w| {
                let mut pairs = Vec::new();
                counts_by_code(&values[w[0]..w[1]], &mut pairs);
                pairs
            })
            .collect();
        (rows, offsets)
    }

    /// The plan's reduction of per-row codes, then a roll-up's merge of two
    /// parts, gives core's sketch of the same values.
    #[test]
    fn codes_reduce_and_merge_to_cores_sketch() {
        // Edge values: bucket boundaries (powers of γ) and their neighbours,
        // integers, zero, negatives, tiny and huge magnitudes.
        let mut xs: Vec<f64> = vec![0.0, -0.0, 1e-12, 1.0, -1.0, 1e300, -1e300, 0.1, 600.0];
        for i in [-500, -3, -1, 1, 2, 100, 1000] {
            let b = GAMMA.powi(i);
            xs.extend([b, b.next_up(), b.next_down(), -b]);
        }
        xs.extend((1..=600).map(f64::from));
        let mut direct = QuantileSketch::new();
        xs.iter().for_each(|&x| direct.add(x));
        let cut = xs.len() / 3;
        let sketch_of = |part: &[f64]| {
            let c: Vec<i32> = part
                .iter()
                .map(|&x| code_of(Num::Float(x)).unwrap())
                .collect();
            reduce_lists(&codes_list(&[&c])).unwrap()
        };
        // Two finer rows, one coarse group of both (as a roll-up reads them).
        let mut finer = sketch_of(&xs[..cut]);
        finer.append(&sketch_of(&xs[cut..])).unwrap();
        let merged = merge_groups(&groups(&[&[1, 0]]), &finer).unwrap();
        let mut got = QuantileSketch::new();
        for &(c, n) in &rows(&merged).0[0] {
            got.add_count(Bucket::from_code(c).unwrap(), n);
        }
        assert_eq!(got, direct);
        // Integers take the path of their f64.
        assert_eq!(code_of(Num::Int(600)), code_of(Num::Float(600.0)));
    }

    /// A day's rows are a slice of the plan's frame: its lists keep the
    /// whole values buffer, and each row must read its own entries only.
    #[test]
    fn a_sliced_list_column_reduces_its_own_rows() {
        let lists =
            entries_list(&[&[(5, 1), (7, 2)], &[(9, 3)], &[(1, 1), (2, 1), (3, 4)]]).slice(1, 2);
        let want = (
            vec![vec![(9, 3)], vec![(1, 1), (2, 1), (3, 4)]],
            vec![0, 1, 4],
        );
        assert_eq!(rows(&lists), want);
        assert_eq!(
            rows(&merge_groups(&groups(&[&[0], &[1]]), &lists).unwrap()),
            want
        );
        let codes = codes_list(&[&[4, 4], &[8, 6, 8], &[2]]).slice(1, 2);
        assert_eq!(
            rows(&reduce_lists(&codes).unwrap()),
            (vec![vec![(6, 1), (8, 2)], vec![(2, 1)]], vec![0, 2, 3])
        );
    }

    #[test]
    fn a_count_past_32_bits_is_split_and_added_up_exactly() {
        let big = u64::from(u32::MAX) * 2 + 5;
        let mut out = builder("m".into(), 1, 4);
        let mut scratch = Vec::new();
        push(&mut out, &mut scratch, &[(-3, 1), (7, big)]);
        let lists = out.finish();
        // Three entries of 7: u32::MAX, u32::MAX and 5.
        assert_eq!(flat_i64(&lists).unwrap().1, [0, 4]);
        assert_eq!(rows(&lists).0, [vec![(-3, 1), (7, big)]]);
        // Merged with one more value of 7 in a roll-up.
        let mut finer = lists;
        finer.append(&entries_list(&[&[(7, 1)]])).unwrap();
        let merged = merge_groups(&groups(&[&[0, 1]]), &finer).unwrap();
        assert_eq!(rows(&merged).0, [vec![(-3, 1), (7, big + 1)]]);
    }

    #[test]
    fn a_row_without_a_number_is_no_code() {
        let ints = Series::new("i".into(), &[Some(5i64), None]);
        let floats = Series::new("f".into(), &[None, Some(f64::NAN)]);
        let out = codes_of(
            &[PropType::Int, PropType::Float],
            &[Column::from(ints), Column::from(floats)],
        )
        .unwrap();
        assert_eq!(out.null_count(), 0);
        let got: Vec<i32> = out.i32().unwrap().into_no_null_iter().collect();
        assert_eq!(got, [code_of(Num::Int(5)).unwrap(), NO_CODE]);
        // No bucket comes of it.
        let reduced = reduce_lists(&codes_list(&[&got])).unwrap();
        assert_eq!(rows(&reduced).0, [vec![(got[0], 1)]]);
    }
}
