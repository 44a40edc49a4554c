//! One snapshot file (one UTC day at one roll-up level) decoded for queries.
//!
//! [`DayData::decode`] takes the rows of a day file as the store's reader
//! gives them ([`tally_store::snapshot::decode`], which owns the schema and
//! its tolerance) and lays them out for queries: the rows sorted by bucket
//! and indexed by bucket runs, each row's group as an index into the file's
//! own group dictionary, and one column per measure (`measure.rs`). A query
//! folds the rows of a bucket range straight from these columns.
//!
//! Guarantees: a file the reader refuses, or a sketch that is not a Redis
//! HyperLogLog, is a [`SnapshotError`] naming the file and the column, never
//! a panic. [`DayData::bytes`] is what the day cache counts against its
//! budget.

use arrow_array::Array;
use bytes::Bytes;
use tally_core::agg::AggKind;
use tally_core::view::ViewDef;
use tally_store::snapshot::{self, columns, DayBatch, MeasureArray};

pub use super::measure::{Column, Ints, QuantileRows, Sketch, Sketches};
use super::SnapshotError;
use crate::group::{Group, GroupDict};

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
        let mut out = Builder::new(view);
        for batch in snapshot::decode(view, path, bytes)? {
            out.batch(view, &batch?, path)?;
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
    Quantiles(QuantileRows),
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
                    AggKind::Quantiles => Staged::Quantiles(QuantileRows::default()),
                })
                .collect(),
        }
    }

    fn batch(&mut self, view: &ViewDef, b: &DayBatch, path: &str) -> Result<(), SnapshotError> {
        for r in 0..b.rows() {
            self.buckets.push(b.bucket.value(r));
            let values = b
                .dimensions
                .iter()
                .map(|d| d.is_valid(r).then(|| d.value(r)));
            let g = self.dict.intern(values);
            self.group_of.push(g);
        }
        for ((m, values), col) in view
            .measures
            .iter()
            .zip(&b.measures)
            .zip(&mut self.measures)
        {
            // The reader gives counts and sums without nulls, extremes with
            // a null where there was no input.
            match (col, values) {
                (Staged::Count(v), MeasureArray::Count(c)) => v.extend(c.values().iter()),
                (Staged::Sum(int, float), MeasureArray::Sum { int: i, float: f }) => {
                    int.extend(i.values().iter());
                    float.extend(f.values().iter());
                }
                (Staged::Extreme(v), MeasureArray::Extreme(c)) => {
                    v.extend(c.iter().map(|x| x.unwrap_or(f64::NAN)))
                }
                (Staged::Distinct(v), MeasureArray::Distinct(c)) => {
                    for r in 0..c.len() {
                        v.push(snapshot::sketch(c, r).map_err(|e| SnapshotError::Column {
                            path: path.to_owned(),
                            column: columns::measure(m)[0].clone(),
                            problem: format!("row {r}: {e}"),
                        })?);
                    }
                }
                (Staged::Quantiles(v), MeasureArray::Quantiles(c)) => {
                    for r in 0..c.len() {
                        let entries = snapshot::quantile_entries(c, r).map_err(|e| {
                            SnapshotError::Column {
                                path: path.to_owned(),
                                column: columns::measure(m)[0].clone(),
                                problem: format!("row {r}: {e}"),
                            }
                        })?;
                        v.push(&entries);
                    }
                }
                _ => {
                    return Err(SnapshotError::Column {
                        path: path.to_owned(),
                        column: columns::measure(m)[0].clone(),
                        problem: "was read as another kind of measure".into(),
                    })
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
                    Staged::Quantiles(v) => *v = v.permuted(&order),
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
                Staged::Quantiles(mut v) => {
                    v.shrink_to_fit();
                    Column::Quantiles(v)
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
                Column::Quantiles(v) => v.bytes(),
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::builder::{BinaryBuilder, Int64Builder, StringBuilder, UInt64Builder};
    use arrow_array::{ArrayRef, RecordBatch};
    use tally_core::hll::Hll;

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
