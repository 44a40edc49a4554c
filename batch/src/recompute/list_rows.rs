//! A list column's rows read by row number, in place, whatever its chunks:
//! how a roll-up reaches the sketches of a coarser group's finer rows.
//!
//! A roll-up's group-by gathers each coarse group's row numbers (four bytes
//! a row) instead of the rows' sketches (a base row's registers are about
//! seventeen entries, so gathering them copied the whole column into a new
//! one only to read it once); the reduction then reads each row's sketch
//! where it lies.

use polars::prelude::*;
use polars_arrow::array::{Array, ListArray, PrimitiveArray};
use polars_arrow::types::NativeType;

/// The rows of a list column of `T` (no null values inside a list; a null
/// list reads as empty).
pub(super) struct ListRows<'a, T: NativeType> {
    chunks: Vec<(&'a ListArray<i64>, &'a [T])>,
    /// The row number each chunk starts at.
    starts: Vec<usize>,
}

impl<'a, T: NativeType> ListRows<'a, T> {
    pub(super) fn new(lists: &'a ListChunked) -> PolarsResult<Self> {
        let mut chunks = Vec::with_capacity(lists.chunks().len());
        let mut starts = Vec::with_capacity(lists.chunks().len());
        let mut at = 0;
        for arr in lists.downcast_iter() {
            let inner = inner::<T>(arr, "a sketch list")?;
            if inner.null_count() > 0 {
                polars_bail!(ComputeError: "a sketch list holds nulls");
            }
            chunks.push((arr, inner.values().as_slice()));
            starts.push(at);
            at += arr.len();
        }
        Ok(ListRows { chunks, starts })
    }

    /// Row `row`'s list.
    pub(super) fn get(&self, row: usize) -> PolarsResult<&'a [T]> {
        let c = self.starts.partition_point(|&s| s <= row).wrapping_sub(1);
        let Some(&(arr, values)) = self.chunks.get(c) else {
            polars_bail!(OutOfBounds: "row {row} of a sketch column")
        };
        let local = row - self.starts[c];
        if local >= arr.len() {
            polars_bail!(OutOfBounds: "row {row} of a sketch column");
        }
        if arr.is_null(local) {
            return Ok(&[]);
        }
        let o = arr.offsets().as_slice();
        Ok(&values[o[local] as usize..o[local + 1] as usize])
    }
}

/// The values of a list chunk's lists, all of them, as `T` (`what` names
/// the column in the error when they are another type).
pub(super) fn inner<'a, T: NativeType>(
    arr: &'a ListArray<i64>,
    what: &str,
) -> PolarsResult<&'a PrimitiveArray<T>> {
    arr.values()
        .as_any()
        .downcast_ref::<PrimitiveArray<T>>()
        .ok_or_else(|| polars_err!(ComputeError: "{what} holds another type"))
}

/// Calls `f` with the sketches each group's rows hold in `sketches`,
/// appended into one buffer (`f` may reorder it: it is the group's own).
/// `groups` lists each group's row numbers, as a group-by gathers them (a
/// null list as none).
pub(super) fn for_each_group<T: NativeType>(
    groups: &ListChunked,
    sketches: &ListChunked,
    mut f: impl FnMut(&mut [T]),
) -> PolarsResult<()> {
    let sketches = ListRows::<T>::new(sketches)?;
    let mut gathered: Vec<T> = Vec::new();
    for arr in groups.downcast_iter() {
        let rows = inner::<IdxSize>(arr, "a group's row numbers")?;
        let (rows, o) = (rows.values().as_slice(), arr.offsets().as_slice());
        for i in 0..arr.len() {
            gathered.clear();
            if !arr.is_null(i) {
                for &r in &rows[o[i] as usize..o[i + 1] as usize] {
                    gathered.extend_from_slice(sketches.get(r as usize)?);
                }
            }
            f(&mut gathered);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lists(rows: &[&[u32]]) -> ListChunked {
        let mut b = ListPrimitiveChunkedBuilder::<UInt32Type>::new(
            "s".into(),
            rows.len(),
            8,
            DataType::UInt32,
        );
        rows.iter().for_each(|r| b.append_slice(r));
        b.finish()
    }

    #[test]
    fn rows_read_across_chunks_and_slices() {
        let mut col = lists(&[&[1, 2], &[3]]);
        col.append(&lists(&[&[], &[4, 5, 6]])).unwrap();
        // A slice keeps the chunks' whole buffers and offsets past 0.
        let col = col.slice(1, 3);
        assert_eq!(col.chunks().len(), 2);
        let rows = ListRows::<u32>::new(&col).unwrap();
        assert_eq!(rows.get(0).unwrap(), &[3]);
        assert_eq!(rows.get(1).unwrap(), &[] as &[u32]);
        assert_eq!(rows.get(2).unwrap(), &[4, 5, 6]);
        assert!(rows.get(3).is_err());
    }

    #[test]
    fn groups_read_their_rows_sketches_in_order() {
        let mut sketches = lists(&[&[10], &[20, 21]]);
        sketches.append(&lists(&[&[30]])).unwrap();
        let mut groups = ListPrimitiveChunkedBuilder::<IdxType>::new("g".into(), 3, 4, IDX_DTYPE);
        groups.append_slice(&[2, 0]);
        groups.append_null();
        groups.append_slice(&[1]);
        let mut got: Vec<Vec<u32>> = Vec::new();
        for_each_group(&groups.finish(), &sketches, |g: &mut [u32]| {
            got.push(g.to_vec())
        })
        .unwrap();
        assert_eq!(got, [vec![30, 10], vec![], vec![20, 21]]);
    }
}
