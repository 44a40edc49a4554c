//! `quantiles` in the plan: the same sketch as every layer's, from Polars
//! expressions and one pass in Rust.
//!
//! Each row's number is mapped to its bucket by core's own function
//! ([`tally_core::quantile::index_of`], as [`Bucket::code`]), element-wise,
//! so the streaming engine runs it per morsel and the bucket is the one the
//! speed layer computes for the same value, bit for bit (no second formula
//! to drift). The group-by collects each group's codes (an unordered
//! `implode`: four bytes per row, as `distinct` does), and [`codes`] and
//! [`counts`] reduce each list to the sketch: its occupied buckets in code
//! order and their counts, two aligned list columns. A roll-up gathers both
//! lists per coarser group and merges them again ([`merged_codes`],
//! [`merged_counts`]): counts add, the monoid of the sketch.

use polars::prelude::*;
use tally_core::agg::Num;
use tally_core::quantile::index_of;

use crate::promote::PropType;

/// Stands for a row without a number (no code is this low).
const NO_CODE: i32 = i32::MIN;

/// The code of a number, `None` for NaN (never accepted anyway).
fn code_of(n: Num) -> Option<i32> {
    index_of(n.as_f64()).map(|b| b.code())
}

/// A bucket code per row from the numeric columns of one field (an `Int`
/// and a `Float` column, at most one set per row); null where neither is.
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
    let mut out: Vec<Option<i32>> = vec![None; n];
    for (t, c) in types.iter().zip(cs) {
        let s = c.as_materialized_series();
        match t {
            PropType::Int => {
                for (o, v) in out.iter_mut().zip(s.i64()?.iter()) {
                    if let Some(v) = v {
                        *o = code_of(Num::Int(v));
                    }
                }
            }
            PropType::Float => {
                for (o, v) in out.iter_mut().zip(s.f64()?.iter()) {
                    if let Some(v) = v {
                        *o = code_of(Num::Float(v));
                    }
                }
            }
            PropType::Str | PropType::Bool => {}
        }
    }
    Ok(Int32Chunked::from_iter_options(PlSmallStr::EMPTY, out.into_iter()).into_series())
}

/// Each list of codes (one per row of a group) reduced to the sketch's
/// occupied buckets, in code order: the `b` side of the sketch.
pub(super) fn codes(list: Expr) -> Expr {
    list.map(
        |c: Column| {
            let (codes, _) = reduce_lists(c.list()?)?;
            Ok(codes.into_series().into())
        },
        |_, f| {
            Ok(Field::new(
                f.name().clone(),
                DataType::List(Box::new(DataType::Int32)),
            ))
        },
    )
}

/// The counts beside [`codes`]: the `n` side of the sketch.
pub(super) fn counts(list: Expr) -> Expr {
    list.map(
        |c: Column| {
            let (_, counts) = reduce_lists(c.list()?)?;
            Ok(counts.into_series().into())
        },
        |_, f| {
            Ok(Field::new(
                f.name().clone(),
                DataType::List(Box::new(DataType::UInt64)),
            ))
        },
    )
}

type Pair = (ListChunked, ListChunked);

fn builders(name: PlSmallStr, rows: usize, values: usize) -> (CodesBuilder, CountsBuilder) {
    (
        ListPrimitiveChunkedBuilder::new(name.clone(), rows, values, DataType::Int32),
        ListPrimitiveChunkedBuilder::new(name, rows, values, DataType::UInt64),
    )
}

type CodesBuilder = ListPrimitiveChunkedBuilder<Int32Type>;
type CountsBuilder = ListPrimitiveChunkedBuilder<UInt64Type>;

fn reduce_lists(lists: &ListChunked) -> PolarsResult<Pair> {
    let (mut bs, mut ns) = builders(lists.name().clone(), lists.len(), 0);
    let mut scratch: Vec<i32> = Vec::new();
    let mut pairs: Vec<(i32, u64)> = Vec::new();
    let (values, offsets) = flat_i32(lists)?;
    for w in offsets.windows(2) {
        scratch.clear();
        scratch.extend(values[w[0]..w[1]].iter().filter(|&&c| c != NO_CODE));
        scratch.sort_unstable();
        pairs.clear();
        for &c in &scratch {
            match pairs.last_mut() {
                Some((last, n)) if *last == c => *n += 1,
                _ => pairs.push((c, 1)),
            }
        }
        push(&mut bs, &mut ns, &pairs);
    }
    Ok((bs.finish(), ns.finish()))
}

fn push(bs: &mut CodesBuilder, ns: &mut CountsBuilder, pairs: &[(i32, u64)]) {
    let codes: Vec<i32> = pairs.iter().map(|p| p.0).collect();
    let counts: Vec<u64> = pairs.iter().map(|p| p.1).collect();
    bs.append_slice(&codes);
    ns.append_slice(&counts);
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

/// The values of a list column of `u64` (nulls as 0), and the row offsets
/// into them, as [`flat_i32`].
fn flat_u64(lists: &ListChunked) -> PolarsResult<(Vec<u64>, Vec<usize>)> {
    let lists = lists.rechunk();
    let inner = lists.get_inner();
    let inner = inner.u64()?.fill_null_with_values(0)?;
    let inner = inner.rechunk();
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

/// A roll-up: each row's gathered codes and counts (several sketches of a
/// coarser group, concatenated) merged into one sketch's codes.
pub(super) fn merged_codes(codes: Expr, counts: Expr) -> Expr {
    merged(codes, counts, false)
}

/// The counts beside [`merged_codes`].
pub(super) fn merged_counts(codes: Expr, counts: Expr) -> Expr {
    merged(codes, counts, true)
}

fn merged(codes: Expr, counts: Expr, want_counts: bool) -> Expr {
    let inner = if want_counts {
        DataType::UInt64
    } else {
        DataType::Int32
    };
    codes.map_many(
        move |cs: &mut [Column]| {
            let (bs, ns) = merge_lists(cs[0].list()?, cs[1].list()?)?;
            Ok(if want_counts {
                ns.into_series().into()
            } else {
                bs.into_series().into()
            })
        },
        &[counts],
        move |_, fields| {
            Ok(Field::new(
                fields[0].name().clone(),
                DataType::List(Box::new(inner.clone())),
            ))
        },
    )
}

fn merge_lists(codes: &ListChunked, counts: &ListChunked) -> PolarsResult<Pair> {
    let (bs_in, bo) = flat_i32(codes)?;
    let (ns_in, no) = flat_u64(counts)?;
    if bo != no {
        return Err(PolarsError::ComputeError(
            "quantile codes and counts are not aligned".into(),
        ));
    }
    let (mut bs, mut ns) = builders(codes.name().clone(), codes.len(), 0);
    let mut pairs: Vec<(i32, u64)> = Vec::new();
    for w in bo.windows(2) {
        pairs.clear();
        pairs.extend(
            bs_in[w[0]..w[1]]
                .iter()
                .zip(&ns_in[w[0]..w[1]])
                .filter(|(&c, &n)| c != NO_CODE && n > 0)
                .map(|(&c, &n)| (c, n)),
        );
        merge_pairs(&mut pairs);
        push(&mut bs, &mut ns, &pairs);
    }
    Ok((bs.finish(), ns.finish()))
}

/// The plan's codes and counts lists as the snapshot's quantiles column
/// ([`tally_store::snapshot::quantile_array`]), row by row.
pub(super) fn sketches(
    codes: &ListChunked,
    counts: &ListChunked,
) -> PolarsResult<arrow_array::ListArray> {
    let (bs, bo) = flat_i32(codes)?;
    let (ns, no) = flat_u64(counts)?;
    if bo != no {
        return Err(PolarsError::ComputeError(
            "quantile codes and counts are not aligned".into(),
        ));
    }
    Ok(tally_store::snapshot::quantile_array(
        bo.windows(2).map(|w| (&bs[w[0]..w[1]], &ns[w[0]..w[1]])),
    ))
}

/// Sort `pairs` by code and add the counts of equal codes.
fn merge_pairs(pairs: &mut Vec<(i32, u64)>) {
    pairs.sort_unstable_by_key(|p| p.0);
    let mut n = 0;
    for i in 0..pairs.len() {
        let (c, k) = pairs[i];
        if n > 0 && pairs[n - 1].0 == c {
            pairs[n - 1].1 += k;
        } else {
            pairs[n] = (c, k);
            n += 1;
        }
    }
    pairs.truncate(n);
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_core::quantile::{Bucket, QuantileSketch, GAMMA};

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
        let codes = |part: &[f64]| {
            let c: Vec<i32> = part
                .iter()
                .map(|&x| code_of(Num::Float(x)).unwrap())
                .collect();
            let (mut b, _) = builders("m".into(), 1, part.len());
            b.append_slice(&c);
            reduce_lists(&b.finish()).unwrap()
        };
        let (b1, n1) = codes(&xs[..cut]);
        let (b2, n2) = codes(&xs[cut..]);
        // Concatenated as a roll-up's explode does: one row holding both.
        let mut cb: Vec<i32> = flat_i32(&b1).unwrap().0;
        cb.extend(flat_i32(&b2).unwrap().0);
        let mut cn: Vec<u64> = flat_u64(&n1).unwrap().0;
        cn.extend(flat_u64(&n2).unwrap().0);
        let (mut lb, mut ln) = builders("m".into(), 1, cb.len());
        lb.append_slice(&cb);
        ln.append_slice(&cn);
        let (bs, ns) = merge_lists(&lb.finish(), &ln.finish()).unwrap();
        let (bs, _) = flat_i32(&bs).unwrap();
        let (ns, _) = flat_u64(&ns).unwrap();
        let mut got = QuantileSketch::new();
        for (c, n) in bs.iter().zip(&ns) {
            got.add_count(Bucket::from_code(*c).unwrap(), *n);
        }
        assert_eq!(got, direct);
        // Integers take the path of their f64.
        assert_eq!(code_of(Num::Int(600)), code_of(Num::Float(600.0)));
    }

    /// A day's rows are a slice of the plan's frame: its lists keep the
    /// whole values buffer, and each row must read its own codes only.
    #[test]
    fn a_sliced_list_column_reduces_its_own_rows() {
        let (mut b, mut n) = builders("m".into(), 3, 6);
        for (codes, counts) in [
            (&[5, 7][..], &[1u64, 2][..]),
            (&[9], &[3]),
            (&[1, 2, 3], &[1, 1, 4]),
        ] {
            b.append_slice(codes);
            n.append_slice(counts);
        }
        let (b, n) = (b.finish().slice(1, 2), n.finish().slice(1, 2));
        assert_eq!(flat_i32(&b).unwrap(), (vec![9, 1, 2, 3], vec![0, 1, 4]));
        assert_eq!(flat_u64(&n).unwrap(), (vec![3, 1, 1, 4], vec![0, 1, 4]));
        let (bs, ns) = merge_lists(&b, &n).unwrap();
        assert_eq!(flat_i32(&bs).unwrap(), (vec![9, 1, 2, 3], vec![0, 1, 4]));
        assert_eq!(flat_u64(&ns).unwrap(), (vec![3, 1, 1, 4], vec![0, 1, 4]));
        let mut codes =
            ListPrimitiveChunkedBuilder::<Int32Type>::new("m".into(), 3, 6, DataType::Int32);
        for c in [&[4, 4][..], &[8, 6, 8], &[2]] {
            codes.append_slice(c);
        }
        let (bs, ns) = reduce_lists(&codes.finish().slice(1, 2)).unwrap();
        assert_eq!(flat_i32(&bs).unwrap(), (vec![6, 8, 2], vec![0, 2, 3]));
        assert_eq!(flat_u64(&ns).unwrap(), (vec![1, 2, 1], vec![0, 2, 3]));
    }
}
