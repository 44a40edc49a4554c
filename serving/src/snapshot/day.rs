//! One snapshot file (one UTC day at one roll-up level) decoded for queries.
//!
//! [`DayData::decode`] reads the Parquet bytes of a day file (the column
//! contract of [`tally_core::manifest`]) into columns: the rows sorted by
//! bucket and indexed by bucket runs, each row's group as an index into the
//! file's own group dictionary, and one column per measure. A query folds the
//! rows of a bucket range straight from these columns.
//!
//! Guarantees: a file that does not follow the contract (a missing bucket
//! column, a column of the wrong type, a sketch that is not a Redis
//! HyperLogLog) is a [`SnapshotError`] naming the file and the column, never
//! a panic; a dimension or measure column the file lacks reads as absent for
//! every row (the identity of its measure). [`DayData::bytes`] is what the
//! day cache counts against its budget.

use arrow_array::{
    Array, ArrayRef, BinaryArray, Decimal128Array, Float64Array, Int64Array, RecordBatch,
    StringArray, UInt64Array,
};
use arrow_schema::DataType;
use bytes::Bytes;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use tally_core::agg::AggKind;
use tally_core::hll::Hll;
use tally_core::manifest::columns;
use tally_core::view::ViewDef;

use super::SnapshotError;
use crate::group::{Group, GroupDict};

/// Row `r` of an optional column, `None` when absent or null.
macro_rules! value {
    ($col:expr, $r:expr) => {
        $col.as_ref()
            .filter(|a| !a.is_null($r))
            .map(|a| a.value($r))
    };
}

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

    fn of(v: Vec<i128>) -> Ints {
        match v.iter().map(|&x| i64::try_from(x)).collect() {
            Ok(narrow) => Ints::Narrow(narrow),
            Err(_) => {
                let mut v = v;
                v.shrink_to_fit();
                Ints::Wide(v)
            }
        }
    }

    fn bytes(&self) -> usize {
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
    fn push(&mut self, h: Hll) {
        match h.sparse_registers() {
            Some(regs) => self.regs.extend_from_slice(regs),
            None => {
                let count = h.count();
                self.dense.push((self.ends.len() as u32, h, count));
            }
        }
        self.ends.push(self.regs.len() as u32);
    }

    fn shrink_to_fit(&mut self) {
        self.regs.shrink_to_fit();
        self.ends.shrink_to_fit();
        self.dense.shrink_to_fit();
    }

    /// The rows in the order `order` gives.
    fn permuted(&self, order: &[u32]) -> Sketches {
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

    fn bytes(&self) -> usize {
        self.regs.len() * 4
            + self.ends.len() * 4
            + self
                .dense
                .iter()
                .map(|(_, h, _)| 16 + std::mem::size_of::<Hll>() + h.heap_bytes())
                .sum::<usize>()
    }
}

/// A decoded day file.
#[derive(Debug)]
pub struct DayData {
    /// Bucket width of the rows, ms.
    pub level_ms: i64,
    /// The file's distinct groups.
    pub groups: Vec<Group>,
    /// Runs of rows with one bucket: (bucket start, first row), by bucket.
    pub runs: Vec<(i64, u32)>,
    /// Number of rows.
    pub rows: usize,
    /// Each row's group: an index into [`DayData::groups`].
    pub group_of: Vec<u32>,
    /// One column per measure of the view, in definition order.
    pub measures: Vec<Column>,
    /// Heap bytes held (about).
    pub bytes: usize,
}

impl DayData {
    /// The rows whose bucket starts in `[from, to)`.
    pub fn rows_in(&self, from: i64, to: i64) -> std::ops::Range<usize> {
        let start = self.runs.partition_point(|&(b, _)| b < from);
        let end = self.runs.partition_point(|&(b, _)| b < to);
        let row = |i: usize| self.runs.get(i).map_or(self.rows, |&(_, r)| r as usize);
        row(start)..row(end)
    }

    /// The bucket of each row in `rows`, as (bucket, rows of it).
    pub fn buckets_in(
        &self,
        rows: std::ops::Range<usize>,
    ) -> impl Iterator<Item = (i64, std::ops::Range<usize>)> + '_ {
        // The run holding the first row (it may start before it).
        let first = self
            .runs
            .partition_point(|&(_, r)| (r as usize) <= rows.start)
            .saturating_sub(1);
        self.runs[first..]
            .iter()
            .enumerate()
            .take_while(move |(_, &(_, r))| (r as usize) < rows.end)
            .map(move |(i, &(b, r))| {
                let next = self
                    .runs
                    .get(first + i + 1)
                    .map_or(self.rows, |&(_, n)| n as usize);
                (b, (r as usize).max(rows.start)..next.min(rows.end))
            })
            .filter(|(_, rs)| !rs.is_empty())
    }

    /// Decode the Parquet file at `path` (its bytes) for `view`.
    pub fn decode(
        view: &ViewDef,
        level_ms: i64,
        path: &str,
        bytes: Bytes,
    ) -> Result<DayData, SnapshotError> {
        let err = |source| SnapshotError::Parquet {
            path: path.to_owned(),
            source,
        };
        let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
            .map_err(err)?
            .with_batch_size(65_536)
            .build()
            .map_err(err)?;
        let mut out = Builder::new(view);
        for batch in reader {
            out.batch(view, &batch.map_err(|e| err(e.into()))?, path)?;
        }
        Ok(out.finish(level_ms))
    }
}

/// One measure's values while a file is read.
enum Staged {
    Count(Vec<u64>),
    Sum(Vec<i128>, Vec<f64>),
    Extreme(Vec<f64>),
    Distinct(Sketches),
}

/// The columns being filled, in file order.
struct Builder {
    buckets: Vec<i64>,
    dict: GroupDict,
    group_of: Vec<u32>,
    measures: Vec<Staged>,
}

impl Builder {
    fn new(view: &ViewDef) -> Builder {
        Builder {
            buckets: Vec::new(),
            dict: GroupDict::default(),
            group_of: Vec::new(),
            measures: view
                .measures
                .iter()
                .map(|m| match m.agg {
                    AggKind::Count => Staged::Count(Vec::new()),
                    AggKind::Sum => Staged::Sum(Vec::new(), Vec::new()),
                    AggKind::Min | AggKind::Max => Staged::Extreme(Vec::new()),
                    AggKind::Distinct => Staged::Distinct(Sketches::default()),
                })
                .collect(),
        }
    }

    fn batch(
        &mut self,
        view: &ViewDef,
        batch: &RecordBatch,
        path: &str,
    ) -> Result<(), SnapshotError> {
        let bucket: Int64Array = column(batch, columns::BUCKET, &DataType::Int64, path)?
            .ok_or_else(|| SnapshotError::Column {
                path: path.to_owned(),
                column: columns::BUCKET.to_owned(),
                problem: "is missing".into(),
            })?;
        let mut dims = Vec::with_capacity(view.dimensions.len());
        for d in &view.dimensions {
            dims.push(column::<StringArray>(
                batch,
                &columns::dimension(d),
                &DataType::Utf8,
                path,
            )?);
        }
        // Rows without a bucket are not rows of the contract: skipped.
        let keep: Vec<usize> = (0..batch.num_rows())
            .filter(|&r| !bucket.is_null(r))
            .collect();
        for &row in &keep {
            self.buckets.push(bucket.value(row));
            let values = dims
                .iter()
                .map(|d| d.as_ref().filter(|a| !a.is_null(row)).map(|a| a.value(row)));
            let g = self.dict.intern(values);
            self.group_of.push(g);
        }
        for (m, col) in view.measures.iter().zip(&mut self.measures) {
            let names = columns::measure(m);
            match col {
                Staged::Count(v) => {
                    let c: Option<UInt64Array> = column(batch, &names[0], &DataType::UInt64, path)?;
                    v.extend(keep.iter().map(|&r| value!(c, r).unwrap_or(0)));
                }
                Staged::Sum(int, float) => {
                    // Int64 in snapshots written before exact i128 sums: cast.
                    let i: Option<Decimal128Array> =
                        column(batch, &names[0], &DataType::Decimal128(38, 0), path)?;
                    let f: Option<Float64Array> =
                        column(batch, &names[1], &DataType::Float64, path)?;
                    int.extend(keep.iter().map(|&r| value!(i, r).unwrap_or(0)));
                    float.extend(keep.iter().map(|&r| value!(f, r).unwrap_or(0.0)));
                }
                Staged::Extreme(v) => {
                    let c: Option<Float64Array> =
                        column(batch, &names[0], &DataType::Float64, path)?;
                    v.extend(keep.iter().map(|&r| value!(c, r).unwrap_or(f64::NAN)));
                }
                Staged::Distinct(v) => {
                    let c: Option<BinaryArray> = column(batch, &names[0], &DataType::Binary, path)?;
                    for &r in &keep {
                        match c.as_ref().filter(|a| !a.is_null(r)) {
                            None => v.push(Hll::new()),
                            Some(a) => v.push(Hll::from_redis_bytes(a.value(r)).map_err(|e| {
                                SnapshotError::Column {
                                    path: path.to_owned(),
                                    column: names[0].clone(),
                                    problem: format!("row {r}: {e}"),
                                }
                            })?),
                        }
                    }
                }
            }
        }
        Ok(())
    }

    fn finish(mut self, level_ms: i64) -> DayData {
        // Files are written sorted by bucket; sort if one is not.
        if !self.buckets.is_sorted() {
            let mut order: Vec<u32> = (0..self.buckets.len() as u32).collect();
            order.sort_by_key(|&i| self.buckets[i as usize]);
            self.buckets = permute(&self.buckets, &order);
            self.group_of = permute(&self.group_of, &order);
            for col in &mut self.measures {
                match col {
                    Staged::Count(v) => *v = permute(v, &order),
                    Staged::Sum(int, float) => {
                        *int = permute(int, &order);
                        *float = permute(float, &order);
                    }
                    Staged::Extreme(v) => *v = permute(v, &order),
                    Staged::Distinct(v) => *v = v.permuted(&order),
                }
            }
        }
        let mut runs: Vec<(i64, u32)> = Vec::new();
        for (i, &b) in self.buckets.iter().enumerate() {
            if runs.last().is_none_or(|&(last, _)| last != b) {
                runs.push((b, i as u32));
            }
        }
        let rows = self.buckets.len();
        // Exact sizes: the cache budget counts lengths, and a day stays
        // cached long after it was read.
        self.group_of.shrink_to_fit();
        runs.shrink_to_fit();
        let measures: Vec<Column> = self
            .measures
            .into_iter()
            .map(|m| match m {
                Staged::Count(mut v) => {
                    v.shrink_to_fit();
                    Column::Count(v)
                }
                Staged::Sum(int, mut float) => Column::Sum {
                    int: Ints::of(int),
                    float: float.iter().any(|&f| f != 0.0).then(|| {
                        float.shrink_to_fit();
                        float
                    }),
                },
                Staged::Extreme(mut v) => {
                    v.shrink_to_fit();
                    Column::Extreme(v)
                }
                Staged::Distinct(mut v) => {
                    v.shrink_to_fit();
                    Column::Distinct(v)
                }
            })
            .collect();
        let mut bytes = self.dict.heap_bytes() + runs.len() * 16 + rows * 4;
        for col in &measures {
            bytes += match col {
                Column::Count(v) => v.len() * 8,
                Column::Sum { int, float } => {
                    int.bytes() + float.as_ref().map_or(0, |f| f.len() * 8)
                }
                Column::Extreme(v) => v.len() * 8,
                Column::Distinct(v) => v.bytes(),
            };
        }
        DayData {
            level_ms,
            groups: self.dict.into_groups(),
            runs,
            rows,
            group_of: self.group_of,
            measures,
            bytes,
        }
    }
}

fn permute<T: Clone>(v: &[T], order: &[u32]) -> Vec<T> {
    order.iter().map(|&i| v[i as usize].clone()).collect()
}

/// The column `name` as a `T` (cast from a compatible encoding), `None` when absent.
fn column<T: Array + Clone + 'static>(
    batch: &RecordBatch,
    name: &str,
    to: &DataType,
    path: &str,
) -> Result<Option<T>, SnapshotError> {
    let Some(col) = batch.column_by_name(name) else {
        return Ok(None);
    };
    let problem = |problem: String| SnapshotError::Column {
        path: path.to_owned(),
        column: name.to_owned(),
        problem,
    };
    let col: ArrayRef = if col.data_type() == to {
        col.clone()
    } else {
        // The few encodings a writer may choose (large or view strings,
        // signed counts, Int64 sums) read as the canonical type.
        arrow_cast::cast::cast(col.as_ref(), to).map_err(|e| {
            problem(format!(
                "has type {} and cannot be read as {to}: {e}",
                col.data_type()
            ))
        })?
    };
    col.as_any()
        .downcast_ref::<T>()
        .cloned()
        .map(Some)
        .ok_or_else(|| problem(format!("cannot be read as {to}")))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::builder::{BinaryBuilder, Int64Builder, StringBuilder, UInt64Builder};
    use arrow_array::ArrayRef;

    use super::*;

    fn view() -> ViewDef {
        serde_json::from_value(serde_json::json!({
            "name": "v", "granularity": "1m", "dimensions": ["properties.page"],
            "measures": [{"name": "n", "agg": "count"}, {"name": "u", "agg": "distinct", "field": "user_id"}]
        }))
        .unwrap()
    }

    fn sketch(users: std::ops::Range<u32>) -> Hll {
        let mut h = Hll::new();
        for u in users {
            h.add(format!("u{u}").as_bytes());
        }
        h
    }

    #[test]
    fn rows_out_of_order_are_sorted_with_their_values() {
        // (bucket, page, count, users): the dense one in the middle.
        let rows = [
            (120_000i64, "/b", 3u64, sketch(0..3)),
            (0, "/a", 1, sketch(10..11)),
            (60_000, "/a", 7, sketch(0..5_000)),
            (0, "/b", 2, Hll::new()),
        ];
        let (mut b, mut p, mut n, mut u) = (
            Int64Builder::new(),
            StringBuilder::new(),
            UInt64Builder::new(),
            BinaryBuilder::new(),
        );
        for (bucket, page, count, users) in &rows {
            b.append_value(*bucket);
            p.append_value(page);
            n.append_value(*count);
            u.append_value(users.to_redis_bytes());
        }
        let cols: Vec<(&str, ArrayRef)> = vec![
            ("bucket_ms", Arc::new(b.finish())),
            ("d:properties.page", Arc::new(p.finish())),
            ("m:n", Arc::new(n.finish())),
            ("m:u", Arc::new(u.finish())),
        ];
        let batch = RecordBatch::try_from_iter(cols).unwrap();
        let mut buf = Vec::new();
        let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
        let d = DayData::decode(&view(), 60_000, "x", Bytes::from(buf)).unwrap();
        assert_eq!(d.runs, vec![(0, 0), (60_000, 2), (120_000, 3)]);
        let (Column::Count(counts), Column::Distinct(users)) = (&d.measures[0], &d.measures[1])
        else {
            panic!("columns")
        };
        for r in 0..d.rows {
            let (bucket, page, count, want) = rows
                .iter()
                .find(|x| {
                    d.buckets_in(r..r + 1).next().map(|(b, _)| b) == Some(x.0)
                        && d.groups[d.group_of[r] as usize][0].as_deref() == Some(x.1)
                })
                .unwrap();
            assert_eq!(counts.get(r), Some(count), "{bucket} {page}");
            let got = match users.get(r) {
                Sketch::Registers(regs) => tally_core::hll::count_registers(regs),
                Sketch::Dense(h, _) => h.count(),
            };
            assert_eq!(got, want.count(), "{bucket} {page}");
        }
        assert_eq!(d.rows_in(60_000, 120_001), 2..4);
    }
}
