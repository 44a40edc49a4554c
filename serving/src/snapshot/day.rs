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
    Sum {
        int: Vec<i128>,
        float: Vec<f64>,
    },
    /// `min` or `max`; NaN where the row had no input (values are finite).
    Extreme(Vec<f64>),
    Distinct(Vec<Hll>),
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
        let first = self
            .runs
            .partition_point(|&(_, r)| (r as usize) < rows.start);
        self.runs[first..]
            .iter()
            .enumerate()
            .take_while(move |(_, &(_, r))| (r as usize) < rows.end)
            .map(move |(i, &(b, r))| {
                let next = self
                    .runs
                    .get(first + i + 1)
                    .map_or(self.rows, |&(_, n)| n as usize);
                (b, r as usize..next.min(rows.end))
            })
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

/// The columns being filled, in file order.
struct Builder {
    buckets: Vec<i64>,
    dict: GroupDict,
    group_of: Vec<u32>,
    measures: Vec<Column>,
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
                    AggKind::Count => Column::Count(Vec::new()),
                    AggKind::Sum => Column::Sum {
                        int: Vec::new(),
                        float: Vec::new(),
                    },
                    AggKind::Min | AggKind::Max => Column::Extreme(Vec::new()),
                    AggKind::Distinct => Column::Distinct(Vec::new()),
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
                Column::Count(v) => {
                    let c: Option<UInt64Array> = column(batch, &names[0], &DataType::UInt64, path)?;
                    v.extend(keep.iter().map(|&r| value!(c, r).unwrap_or(0)));
                }
                Column::Sum { int, float } => {
                    // Int64 in snapshots written before exact i128 sums: cast.
                    let i: Option<Decimal128Array> =
                        column(batch, &names[0], &DataType::Decimal128(38, 0), path)?;
                    let f: Option<Float64Array> =
                        column(batch, &names[1], &DataType::Float64, path)?;
                    int.extend(keep.iter().map(|&r| value!(i, r).unwrap_or(0)));
                    float.extend(keep.iter().map(|&r| value!(f, r).unwrap_or(0.0)));
                }
                Column::Extreme(v) => {
                    let c: Option<Float64Array> =
                        column(batch, &names[0], &DataType::Float64, path)?;
                    v.extend(keep.iter().map(|&r| value!(c, r).unwrap_or(f64::NAN)));
                }
                Column::Distinct(v) => {
                    let c: Option<BinaryArray> = column(batch, &names[0], &DataType::Binary, path)?;
                    for &r in &keep {
                        v.push(match c.as_ref().filter(|a| !a.is_null(r)) {
                            None => Hll::new(),
                            Some(a) => Hll::from_redis_bytes(a.value(r)).map_err(|e| {
                                SnapshotError::Column {
                                    path: path.to_owned(),
                                    column: names[0].clone(),
                                    problem: format!("row {r}: {e}"),
                                }
                            })?,
                        });
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
                    Column::Count(v) => *v = permute(v, &order),
                    Column::Sum { int, float } => {
                        *int = permute(int, &order);
                        *float = permute(float, &order);
                    }
                    Column::Extreme(v) => *v = permute(v, &order),
                    Column::Distinct(v) => *v = permute(v, &order),
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
        let mut bytes = self.dict.heap_bytes() + runs.len() * 16 + rows * 4;
        for col in &self.measures {
            bytes += match col {
                Column::Count(v) => v.len() * 8,
                Column::Sum { int, float } => int.len() * 16 + float.len() * 8,
                Column::Extreme(v) => v.len() * 8,
                Column::Distinct(v) => v
                    .iter()
                    .map(|h| std::mem::size_of::<Hll>() + h.heap_bytes())
                    .sum(),
            };
        }
        DayData {
            level_ms,
            groups: self.dict.into_groups(),
            runs,
            rows,
            group_of: self.group_of,
            measures: self.measures,
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
