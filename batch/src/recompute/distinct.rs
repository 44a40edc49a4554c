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
//! sketch's registers, and [`tally_core::hll::append_redis_bytes`] encodes them
//! byte for byte as Redis stores the sketch of the same values.

use polars::prelude::*;
use polars_arrow::array::Array;
use tally_core::hll::{append_redis_bytes, pattern, REGISTERS};

use super::list_rows::{for_each_group, inner};
use crate::promote::PropType;

/// The entry of one value's text.
pub(super) fn entry(text: &[u8]) -> u32 {
    let (index, rank) = pattern(text);
    ((index as u32) << 8) | u32::from(rank)
}

/// An entry per row from the value in `columns` (typed columns of one
/// field, at most one of them set per row); [`NO_ENTRY`] where none is. Not
/// null: a column without nulls gathers into lists without them, which
/// [`registers`] reads in place instead of copying to fill them.
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
    let mut out: Vec<u32> = vec![NO_ENTRY; n];
    let mut text = String::new();
    for (t, c) in types.iter().zip(cs) {
        let s = c.as_materialized_series();
        match t {
            PropType::Str => {
                for (o, v) in out.iter_mut().zip(s.str()?.iter()) {
                    if let Some(v) = v {
                        *o = entry(v.as_bytes());
                    }
                }
            }
            PropType::Int => {
                let mut buf = itoa_buf();
                for (o, v) in out.iter_mut().zip(s.i64()?.iter()) {
                    if let Some(v) = v {
                        *o = entry(format_int(&mut buf, v));
                    }
                }
            }
            PropType::Float => {
                for (o, v) in out.iter_mut().zip(s.f64()?.iter()) {
                    if let Some(v) = v {
                        use std::fmt::Write;
                        text.clear();
                        let _ = write!(text, "{v}");
                        *o = entry(text.as_bytes());
                    }
                }
            }
            PropType::Bool => {
                for (o, v) in out.iter_mut().zip(s.bool()?.iter()) {
                    if let Some(v) = v {
                        *o = entry(if v { b"true" } else { b"false" });
                    }
                }
            }
        }
    }
    Ok(UInt32Chunked::from_vec(PlSmallStr::EMPTY, out).into_series())
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

/// A roll-up's registers: each coarse group's rows of the finer level (row
/// numbers, as the group-by gathers them) reduced to one sketch's
/// registers, read from `finer` (that level's registers) where they lie.
pub(super) fn registers_of_rows(rows: Expr, finer: ListChunked) -> Expr {
    rows.map(
        move |c: Column| reduce_groups(c.list()?, &finer).map(Column::from),
        |_, f| {
            Ok(Field::new(
                f.name().clone(),
                DataType::List(Box::new(DataType::UInt32)),
            ))
        },
    )
}

fn reduce_groups(groups: &ListChunked, finer: &ListChunked) -> PolarsResult<Series> {
    let mut out = ListPrimitiveChunkedBuilder::<UInt32Type>::new(
        groups.name().clone(),
        groups.len(),
        finer.get_inner().len(),
        DataType::UInt32,
    );
    let mut scratch = Reducer::default();
    for_each_group(groups, finer, |entries: &mut [u32]| {
        out.append_slice(scratch.reduce(entries));
    })?;
    Ok(out.finish().into_series())
}

fn reduce_lists(c: &Column) -> PolarsResult<Series> {
    let lists = c.list()?;
    let mut out = ListPrimitiveChunkedBuilder::<UInt32Type>::new(
        lists.name().clone(),
        lists.len(),
        lists.get_inner().len() / 2,
        DataType::UInt32,
    );
    let mut scratch = Reducer::default();
    for_each_list(lists, |entries| {
        out.append_slice(scratch.reduce(entries));
    })?;
    Ok(out.finish().into_series())
}

/// Stands for a null entry (a row without a value): no entry is this high.
const NO_ENTRY: u32 = u32::MAX;

/// Calls `f` with each list of `lists` (of `u32`) in order, a null list as
/// an empty one and nulls in a list as [`NO_ENTRY`]. Each chunk's values
/// are read in place; only a chunk whose values hold nulls is copied (with
/// the nulls filled), where rechunking and filling copied every entry.
fn for_each_list(lists: &ListChunked, mut f: impl FnMut(&[u32])) -> PolarsResult<()> {
    let mut filled: Vec<u32> = Vec::new();
    for arr in lists.downcast_iter() {
        let inner = inner::<u32>(arr, "a list of distinct entries")?;
        let values: &[u32] = match inner.validity().filter(|v| v.unset_bits() > 0) {
            None => inner.values().as_slice(),
            Some(valid) => {
                filled.clear();
                filled.extend(inner.values().iter().zip(valid.iter()).map(|(&v, ok)| {
                    if ok {
                        v
                    } else {
                        NO_ENTRY
                    }
                }));
                &filled
            }
        };
        let offsets = arr.offsets().as_slice();
        for (i, w) in offsets.windows(2).enumerate() {
            if arr.is_null(i) {
                f(&[]);
            } else {
                f(&values[w[0] as usize..w[1] as usize]);
            }
        }
    }
    Ok(())
}

/// Lists longer than this are reduced through a register array (a roll-up
/// gathers a coarse group's finer sketches: thousands of entries), shorter
/// ones by sorting (a base group holds a few events).
const SORT_UP_TO: usize = 256;

/// Reduces lists of entries to registers: sorted entries, one per register
/// index, with the highest rank. Keeps its buffers between lists.
#[derive(Default)]
struct Reducer {
    out: Vec<u32>,
    /// Highest rank per register index, all zero between lists.
    ranks: Vec<u8>,
    /// One bit per register index written to `ranks`, all zero between
    /// lists: the pass out reads only the words with a bit set, in index
    /// order, where a walk over all 16,384 ranks branched on each of them.
    written: Vec<u64>,
}

impl Reducer {
    /// The registers of `entries` ([`NO_ENTRY`]s skipped), ascending.
    fn reduce(&mut self, entries: &[u32]) -> &[u32] {
        self.out.clear();
        let kept = entries.iter().copied().filter(|&e| e != NO_ENTRY);
        if entries.len() <= SORT_UP_TO {
            self.out.extend(kept);
            sort_reduce(&mut self.out);
            return &self.out;
        }
        // One pass into the register array and one over the registers
        // written: linear, where sorting thousands of entries was the
        // batch's largest sort.
        if self.ranks.len() != REGISTERS {
            self.ranks = vec![0; REGISTERS];
            self.written = vec![0; REGISTERS / 64];
        }
        let mut in_range = true;
        for e in kept.clone() {
            let index = (e >> 8) as usize;
            match self.ranks.get_mut(index) {
                Some(r) => {
                    *r = (*r).max((e & 0xff) as u8);
                    self.written[index / 64] |= 1 << (index % 64);
                }
                None => in_range = false,
            }
        }
        for (k, word) in self.written.iter_mut().enumerate() {
            let mut bits = std::mem::take(word);
            while bits != 0 {
                let index = k * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let r = std::mem::take(&mut self.ranks[index]);
                self.out.push(((index as u32) << 8) | u32::from(r));
            }
        }
        if !in_range {
            // No entry `entry` makes has a register index this high; such a
            // list is reduced by sorting, as it was.
            self.out.clear();
            self.out.extend(kept);
            sort_reduce(&mut self.out);
        }
        &self.out
    }
}

/// Sort `entries` and keep, per register index, the highest rank.
fn sort_reduce(entries: &mut Vec<u32>) {
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
/// ([`append_redis_bytes`]): the snapshot's column, in one pass over the
/// lists, encoded straight into the column's buffer.
pub(super) fn sketches(lists: &ListChunked) -> PolarsResult<arrow_array::BinaryArray> {
    let mut values: Vec<u8> = Vec::new();
    let mut offsets: Vec<i32> = Vec::with_capacity(lists.len() + 1);
    offsets.push(0);
    let mut overflow = false;
    for_each_list(lists, |registers| {
        append_redis_bytes(registers, &mut values);
        match i32::try_from(values.len()) {
            Ok(end) => offsets.push(end),
            Err(_) => overflow = true,
        }
    })?;
    if overflow {
        polars_bail!(ComputeError: "a day's sketches take more than 2 GiB in one snapshot column");
    }
    let offsets = arrow_buffer::OffsetBuffer::new(offsets.into());
    Ok(arrow_array::BinaryArray::new(offsets, values.into(), None))
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
            let mut reducer = Reducer::default();
            let b = entries.split_off(n / 3);
            let mut parts = reducer.reduce(&entries).to_vec();
            parts.extend_from_slice(reducer.reduce(&b));
            let entries = reducer.reduce(&parts).to_vec();
            let mut bytes = Vec::new();
            append_redis_bytes(&entries, &mut bytes);
            assert_eq!(bytes, direct.to_redis_bytes(), "{n}");
        }
    }

    #[test]
    fn a_rollup_reads_the_registers_of_its_groups_rows() {
        // Three finer rows' registers; coarse groups of rows {2, 0, 1} and
        // {1}: each gives the sketch PFADD makes of its rows' values.
        let mut reducer = Reducer::default();
        let mut finer =
            ListPrimitiveChunkedBuilder::<UInt32Type>::new("m".into(), 3, 8, DataType::UInt32);
        let (mut all, mut one) = (Hll::new(), Hll::new());
        for part in 0..3 {
            let values: Vec<String> = (0..400)
                .map(|i| format!("u{}", i * (part + 1) % 997))
                .collect();
            let entries: Vec<u32> = values.iter().map(|v| entry(v.as_bytes())).collect();
            for v in &values {
                all.add(v.as_bytes());
                if part == 1 {
                    one.add(v.as_bytes());
                }
            }
            finer.append_slice(reducer.reduce(&entries));
        }
        let mut groups = ListPrimitiveChunkedBuilder::<IdxType>::new("g".into(), 2, 4, IDX_DTYPE);
        groups.append_slice(&[2, 0, 1]);
        groups.append_slice(&[1]);
        let out = reduce_groups(&groups.finish(), &finer.finish()).unwrap();
        let column = sketches(out.list().unwrap()).unwrap();
        let bytes: Vec<&[u8]> = column.iter().map(Option::unwrap).collect();
        assert_eq!(bytes, [all.to_redis_bytes(), one.to_redis_bytes()]);
    }

    #[test]
    fn a_row_without_the_value_is_no_entry_not_null() {
        let s = Series::new("u".into(), &[Some("a"), None, Some("b")]);
        let out = entries_of(&[PropType::Str], &[Column::from(s)]).unwrap();
        assert_eq!(out.null_count(), 0);
        let got: Vec<u32> = out.u32().unwrap().into_no_null_iter().collect();
        assert_eq!(got, [entry(b"a"), NO_ENTRY, entry(b"b")]);
        // And no register comes of it.
        assert_eq!(Reducer::default().reduce(&got).len(), 2);
    }

    #[test]
    fn long_and_short_lists_reduce_alike() {
        // Either side of the switch from sorting to the register array,
        // nulls and repeated registers in the lists: the same registers.
        let mut reducer = Reducer::default();
        for n in [0usize, 1, SORT_UP_TO - 1, SORT_UP_TO, SORT_UP_TO + 1, 5000] {
            let list: Vec<u32> = (0..n)
                .map(|i| match i % 11 {
                    3 => NO_ENTRY,
                    _ => entry(format!("v{n}-{}", i % (97 + n / 2)).as_bytes()),
                })
                .collect();
            let mut sorted: Vec<u32> = list.iter().copied().filter(|&e| e != NO_ENTRY).collect();
            sort_reduce(&mut sorted);
            assert_eq!(reducer.reduce(&list), sorted.as_slice(), "{n}");
            assert!(sorted.windows(2).all(|w| w[0] >> 8 < w[1] >> 8), "{n}");
        }
    }
}
