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
use tally_core::hll::pattern;

use crate::promote::PropType;

/// The entry of one value's text.
pub fn entry(text: &[u8]) -> u32 {
    let (index, rank) = pattern(text);
    ((index as u32) << 8) | u32::from(rank)
}

/// An entry per row from the value in `columns` (typed columns of one
/// field, at most one of them set per row); null where none is.
pub fn entries(columns: &[(PropType, String)], name: &str) -> Expr {
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

/// The registers of a group's entries, as sorted `(index, rank)` pairs with
/// the highest rank per index. Sorts `entries` in place.
pub fn registers(entries: &mut [u32]) -> Vec<(u32, u32)> {
    entries.sort_unstable();
    let mut out: Vec<(u32, u32)> = Vec::with_capacity(entries.len());
    for &e in entries.iter() {
        let (i, r) = (e >> 8, e & 0xff);
        match out.last_mut() {
            // Sorted ascending: a later entry of the same index has a higher rank.
            Some(last) if last.0 == i => last.1 = r,
            _ => out.push((i, r)),
        }
    }
    out
}

/// The register-wise maximum of two sorted register lists.
pub fn merge(a: &[(u32, u32)], b: &[(u32, u32)]) -> Vec<(u32, u32)> {
    let mut out = Vec::with_capacity(a.len().max(b.len()));
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
                out.push((a[i].0, a[i].1.max(b[j].1)));
                i += 1;
                j += 1;
            }
        }
    }
    out.extend_from_slice(&a[i..]);
    out.extend_from_slice(&b[j..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use tally_core::hll::{redis_bytes_of, Hll};

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
            // Split in two and merged: the same registers as whole.
            let (a, b) = entries.split_at_mut(n / 3);
            let regs = merge(&registers(a), &registers(b));
            assert_eq!(redis_bytes_of(&regs), direct.to_redis_bytes(), "{n}");
        }
    }
}
