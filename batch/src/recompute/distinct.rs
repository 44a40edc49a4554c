//! `distinct` in the plan: a Redis-compatible HyperLogLog from Polars
//! expressions and one pass in Rust.
//!
//! Each row's value is hashed as Redis's `PFADD` hashes it (MurmurHash64A of
//! its text, [`tally_core::hll::pattern`]) into one `u32` entry, register
//! index and rank (`index << 8 | rank`): an element-wise function, so the
//! streaming engine runs it per morsel. The group-by collects each group's
//! entries (an unordered `implode`, a streaming reduction: about four bytes
//! per row, where a second group-by on (group, register) held a table row
//! per event). [`registers`] then keeps the highest rank per register, the
//! sketch's registers, and [`tally_core::hll::redis_bytes_of`] encodes them
//! byte for byte as Redis stores the sketch of the same values.

use polars::prelude::*;
use tally_core::hll::{pattern, redis_bytes_of};

use crate::promote::PropType;

/// The entry of one value's text.
pub(super) fn entry(text: &[u8]) -> u32 {
    let (index, rank) = pattern(text);
    ((index as u32) << 8) | u32::from(rank)
}

/// An entry per row from the value in `columns` (typed columns of one
/// field, at most one of them set per row); null where none is.
pub(super) fn entries(columns: &[(PropType, String)], name: &str) -> Expr {
    let types: Vec<PropType> = columns.iter().map(|(t, _)| *t).collect();
    let first = col(columns[0].1.as_str());
    let rest: Vec<Expr> = columns[1..].iter().map(|(_, c)| col(c.as_str())).collect();
    first
        .map_many(
            move |cs: &mut [Column]| entries_of(&types, cs).map(Column::from),
            &rest,
            |_, fields| Ok(Field::new(fields[0].name().clone(), DataType::UInt32)),
        )
        .alias(name)
}

fn entries_of(types: &[PropType], cs: &[Column]) -> PolarsResult<Series> {
    let n = cs.first().map_or(0, Column::len);
    let mut out: Vec<Option<u32>> = vec![None; n];
    let mut text = String::new();
    for (t, c) in types.iter().zip(cs) {
        let s = c.as_materialized_series();
        match t {
            PropType::Str => {
                for (o, v) in out.iter_mut().zip(s.str()?.iter()) {
                    if let Some(v) = v {
                        *o = Some(entry(v.as_bytes()));
                    }
                }
            }
            PropType::Int => {
                let mut buf = itoa_buf();
                for (o, v) in out.iter_mut().zip(s.i64()?.iter()) {
                    if let Some(v) = v {
                        *o = Some(entry(format_int(&mut buf, v)));
                    }
                }
            }
            PropType::Float => {
                for (o, v) in out.iter_mut().zip(s.f64()?.iter()) {
                    if let Some(v) = v {
                        use std::fmt::Write;
                        text.clear();
                        let _ = write!(text, "{v}");
                        *o = Some(entry(text.as_bytes()));
                    }
                }
            }
            PropType::Bool => {
                for (o, v) in out.iter_mut().zip(s.bool()?.iter()) {
                    if let Some(v) = v {
                        *o = Some(entry(if v { b"true" } else { b"false" }));
                    }
                }
            }
        }
    }
    Ok(UInt32Chunked::from_iter_options(PlSmallStr::EMPTY, out.into_iter()).into_series())
}

fn itoa_buf() -> [u8; 20] {
    [0; 20]
}

/// `v` as decimal text (what `{v}` prints), without allocating.
fn format_int(buf: &mut [u8; 20], v: i64) -> &[u8] {
    let mut n = v.unsigned_abs();
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    if v < 0 {
        // 20 digits hold u64::MAX; an i64 has at most 19, so there is room.
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

/// Each list of entries reduced to its sketch's registers: sorted entries,
/// one per register index, with the highest rank. Element-wise over the
/// lists (one pass over a chunk's offsets, no Series per group), so it runs
/// per morsel inside the plan; a null list (or null entries) counts as none.
pub(super) fn registers(list: Expr) -> Expr {
    list.map(
        |c: Column| reduce_lists(&c).map(Column::from),
        |_, f| {
            Ok(Field::new(
                f.name().clone(),
                DataType::List(Box::new(DataType::UInt32)),
            ))
        },
    )
}

fn reduce_lists(c: &Column) -> PolarsResult<Series> {
    let lists = c.list()?;
    let mut out = ListPrimitiveChunkedBuilder::<UInt32Type>::new(
        lists.name().clone(),
        lists.len(),
        lists.get_inner().len() / 2,
        DataType::UInt32,
    );
    let mut scratch: Vec<u32> = Vec::new();
    for_each_list(lists, |entries| {
        scratch.clear();
        scratch.extend(entries.iter().filter(|&&e| e != NO_ENTRY));
        reduce(&mut scratch);
        out.append_slice(&scratch);
    })?;
    Ok(out.finish().into_series())
}

/// Stands for a null entry (a row without a value): no entry is this high.
const NO_ENTRY: u32 = u32::MAX;

/// Calls `f` with each list of `lists` (of `u32`) in order, nulls in them
/// as [`NO_ENTRY`], one pass over the offsets.
fn for_each_list(lists: &ListChunked, mut f: impl FnMut(&[u32])) -> PolarsResult<()> {
    let lists = lists.rechunk();
    let inner = lists.get_inner();
    let inner = inner.u32()?.fill_null_with_values(NO_ENTRY)?;
    let inner = inner.rechunk();
    let values: &[u32] = inner.cont_slice()?;
    for arr in lists.downcast_iter() {
        for w in arr.offsets().as_slice().windows(2) {
            f(&values[w[0] as usize..w[1] as usize]);
        }
    }
    Ok(())
}

/// Sort `entries` and keep, per register index, the highest rank.
pub(super) fn reduce(entries: &mut Vec<u32>) {
    entries.sort_unstable();
    // Sorted ascending: a later entry of the same index has a higher rank.
    let mut n = 0;
    for i in 0..entries.len() {
        let e = entries[i];
        if n > 0 && entries[n - 1] >> 8 == e >> 8 {
            entries[n - 1] = e;
        } else {
            entries[n] = e;
            n += 1;
        }
    }
    entries.truncate(n);
}

/// Each list of registers (as [`registers`] makes them) as the sketch's
/// bytes, byte for byte what Redis stores for the same values
/// ([`redis_bytes_of`]): the snapshot's column, in one pass over the lists.
pub(super) fn sketches(lists: &ListChunked) -> PolarsResult<arrow_array::BinaryArray> {
    let mut out = arrow_array::builder::BinaryBuilder::with_capacity(lists.len(), 0);
    let mut pairs: Vec<(u32, u32)> = Vec::new();
    for_each_list(lists, |registers| {
        pairs.clear();
        pairs.extend(registers.iter().map(|&e| (e >> 8, e & 0xff)));
        out.append_value(redis_bytes_of(&pairs));
    })?;
    Ok(out.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_core::hll::Hll;

    #[test]
    fn integers_print_as_display_does() {
        let mut buf = itoa_buf();
        for v in [0, 7, -7, 10, 1_000_000, i64::MAX, i64::MIN, -1] {
            assert_eq!(format_int(&mut buf, v), v.to_string().as_bytes());
        }
    }

    #[test]
    fn registers_of_entries_equal_pfadd() {
        for n in [0usize, 1, 10, 1000, 50_000] {
            let mut direct = Hll::new();
            let mut entries = Vec::new();
            for i in 0..n {
                let v = format!("user-{}", i * 7 % 3001);
                direct.add(v.as_bytes());
                entries.push(entry(v.as_bytes()));
            }
            // Reduced in two parts, then together (as a roll-up does): the
            // same registers as all at once.
            let mut b = entries.split_off(n / 3);
            reduce(&mut entries);
            reduce(&mut b);
            entries.extend(b);
            reduce(&mut entries);
            let regs: Vec<(u32, u32)> = entries.iter().map(|&e| (e >> 8, e & 0xff)).collect();
            assert_eq!(redis_bytes_of(&regs), direct.to_redis_bytes(), "{n}");
        }
    }
}
