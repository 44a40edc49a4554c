//! The one snapshot file reader: a footer check before a manifest is
//! adopted, the file's bytes, and its rows as [`DayBatch`]es in the schema's
//! types, whatever encoding the writer chose.
//!
//! Guarantees: see [`super`]. A file that does not follow the schema (no
//! bucket column, a column that cannot be read as its type) is a
//! [`SnapshotError`] naming the file and the column; a dimension or measure
//! column the file lacks reads as absent for every row (the identity of its
//! measure); rows are returned in file order (sorting is the caller's).

use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, BinaryArray, BooleanArray, Decimal128Array, Float64Array, Int64Array,
    ListArray, RecordBatch, StringArray, UInt64Array,
};
use arrow_cast::CastOptions;
use arrow_schema::DataType;
use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};
// `ParquetObjectReader` is deprecated upstream in favour of hand-written
// `AsyncFileReader`s; it is still the crate's reader over `object_store` and
// does ranged reads, which is all a footer check needs.
#[allow(deprecated)]
use parquet::arrow::async_reader::{ParquetObjectReader, ParquetRecordBatchStreamBuilder};
use tally_core::agg::{Agg, AggKind};
use tally_core::view::ViewDef;

use super::{
    columns, quantile_sketch, quantile_type, sketch, DayBatch, MeasureArray, SnapshotError,
    SUM_INT_TYPE,
};
use crate::manifest::DayFile;

/// Rows per decoded batch.
const BATCH_ROWS: usize = 65_536;

/// Read the footer of `file` and check it has the bucket column: what a
/// reader checks before adopting a manifest that lists the file.
pub async fn check_footer(
    store: Arc<dyn ObjectStore>,
    file: &DayFile,
) -> Result<(), SnapshotError> {
    #[allow(deprecated)]
    let mut reader = ParquetObjectReader::new(store, Path::from(file.path.as_str()));
    if let Some(size) = file.bytes {
        #[allow(deprecated)]
        {
            reader = reader.with_file_size(size);
        }
    }
    let builder = ParquetRecordBatchStreamBuilder::new(reader)
        .await
        .map_err(|source| SnapshotError::Parquet {
            path: file.path.clone(),
            source,
        })?;
    if builder.schema().field_with_name(columns::BUCKET).is_err() {
        return Err(SnapshotError::Column {
            path: file.path.clone(),
            column: columns::BUCKET.to_owned(),
            problem: "is missing".into(),
        });
    }
    Ok(())
}

/// The bytes of one snapshot file.
pub async fn fetch(store: &dyn ObjectStore, file: &DayFile) -> Result<Bytes, SnapshotError> {
    Ok(store
        .get(&Path::from(file.path.as_str()))
        .await?
        .bytes()
        .await?)
}

/// The rows of the snapshot file at `path` (its `bytes`) for `view`, batch
/// by batch.
pub fn decode(view: &ViewDef, path: &str, bytes: Bytes) -> Result<DayReader, SnapshotError> {
    let inner = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.with_batch_size(BATCH_ROWS).build())
        .map_err(|source| SnapshotError::Parquet {
            path: path.to_owned(),
            source,
        })?;
    Ok(DayReader {
        inner,
        view: view.clone(),
        path: path.to_owned(),
    })
}

/// The batches of one snapshot file (see [`decode`]).
#[derive(Debug)]
pub struct DayReader {
    inner: ParquetRecordBatchReader,
    view: ViewDef,
    path: String,
}

impl Iterator for DayReader {
    type Item = Result<DayBatch, SnapshotError>;

    fn next(&mut self) -> Option<Self::Item> {
        let batch = self.inner.next()?;
        Some(
            batch
                .map_err(|e| SnapshotError::Parquet {
                    path: self.path.clone(),
                    source: e.into(),
                })
                .and_then(|b| day_batch(&self.view, &b, &self.path)),
        )
    }
}

/// One row of a snapshot file: bucket, group, one aggregate per measure.
pub type Row = (i64, Vec<Option<String>>, Vec<Agg>);

/// Every row of the snapshot file at `path`, as aggregates: for tests and
/// tools (queries read columns through [`decode`]).
pub async fn read_rows(
    store: &dyn ObjectStore,
    path: &str,
    view: &ViewDef,
) -> Result<Vec<Row>, SnapshotError> {
    let bytes = store.get(&Path::from(path)).await?.bytes().await?;
    let mut out = Vec::new();
    for batch in decode(view, path, bytes)? {
        let b = batch?;
        for r in 0..b.rows() {
            let group = b
                .dimensions
                .iter()
                .map(|d| d.is_valid(r).then(|| d.value(r).to_owned()))
                .collect();
            let mut aggs = Vec::with_capacity(view.measures.len());
            for (m, values) in view.measures.iter().zip(&b.measures) {
                aggs.push(match values {
                    MeasureArray::Count(c) => Agg::Count(c.value(r)),
                    MeasureArray::Sum { int, float } => Agg::Sum {
                        int: int.value(r),
                        float: float.value(r),
                    },
                    MeasureArray::Extreme(v) => {
                        let v = v.is_valid(r).then(|| v.value(r));
                        if m.agg == AggKind::Min {
                            Agg::Min(v)
                        } else {
                            Agg::Max(v)
                        }
                    }
                    MeasureArray::Distinct(v) => {
                        Agg::Distinct(sketch(v, r).map_err(|e| SnapshotError::Column {
                            path: path.to_owned(),
                            column: columns::measure(m)[0].clone(),
                            problem: format!("row {r}: {e}"),
                        })?)
                    }
                    MeasureArray::Quantiles(v) => {
                        Agg::Quantiles(quantile_sketch(v, r).map_err(|e| {
                            SnapshotError::Column {
                                path: path.to_owned(),
                                column: columns::measure(m)[0].clone(),
                                problem: format!("row {r}: {e}"),
                            }
                        })?)
                    }
                });
            }
            out.push((b.bucket.value(r), group, aggs));
        }
    }
    Ok(out)
}

/// One record batch of a file in the schema's types (see the module doc).
fn day_batch(view: &ViewDef, batch: &RecordBatch, path: &str) -> Result<DayBatch, SnapshotError> {
    let bucket = batch
        .column_by_name(columns::BUCKET)
        .ok_or_else(|| SnapshotError::Column {
            path: path.to_owned(),
            column: columns::BUCKET.to_owned(),
            problem: "is missing".into(),
        })?;
    // Rows without a bucket are not rows of the contract: dropped.
    let filtered;
    let batch = match bucket.logical_nulls() {
        Some(nulls) if nulls.null_count() > 0 => {
            let keep = BooleanArray::new(nulls.inner().clone(), None);
            filtered = arrow_select::filter::filter_record_batch(batch, &keep).map_err(|e| {
                SnapshotError::Column {
                    path: path.to_owned(),
                    column: columns::BUCKET.to_owned(),
                    problem: e.to_string(),
                }
            })?;
            &filtered
        }
        _ => batch,
    };
    let rows = batch.num_rows();
    macro_rules! read {
        ($name:expr, $to:expr) => {
            column(batch, $name, $to, path)
        };
    }
    let bucket: Int64Array = read!(columns::BUCKET, &DataType::Int64)?
        .unwrap_or_else(|| Int64Array::from(Vec::<i64>::new()));
    let mut dimensions = Vec::with_capacity(view.dimensions.len());
    for d in &view.dimensions {
        dimensions.push(
            read!(&columns::dimension(d), &DataType::Utf8)?
                .unwrap_or_else(|| StringArray::new_null(rows)),
        );
    }
    let mut measures = Vec::with_capacity(view.measures.len());
    for m in &view.measures {
        let names = columns::measure(m);
        measures.push(match m.agg {
            AggKind::Count => {
                let c: UInt64Array = read!(&names[0], &DataType::UInt64)?
                    .unwrap_or_else(|| UInt64Array::from(vec![0; rows]));
                MeasureArray::Count(if c.null_count() > 0 {
                    c.iter().map(|v| Some(v.unwrap_or(0))).collect()
                } else {
                    c
                })
            }
            AggKind::Sum => {
                // Int64 in snapshots written before exact i128 sums: cast.
                let int: Decimal128Array = read!(&names[0], &SUM_INT_TYPE)?.unwrap_or_else(|| {
                    Decimal128Array::from(vec![0; rows]).with_data_type(SUM_INT_TYPE)
                });
                let float: Float64Array = read!(&names[1], &DataType::Float64)?
                    .unwrap_or_else(|| Float64Array::from(vec![0.0; rows]));
                MeasureArray::Sum {
                    int: if int.null_count() > 0 {
                        Decimal128Array::from_iter_values(int.iter().map(|v| v.unwrap_or(0)))
                            .with_data_type(SUM_INT_TYPE)
                    } else {
                        int
                    },
                    float: if float.null_count() > 0 {
                        float.iter().map(|v| Some(v.unwrap_or(0.0))).collect()
                    } else {
                        float
                    },
                }
            }
            AggKind::Min | AggKind::Max => MeasureArray::Extreme(
                read!(&names[0], &DataType::Float64)?
                    .unwrap_or_else(|| Float64Array::new_null(rows)),
            ),
            AggKind::Distinct => MeasureArray::Distinct(
                read!(&names[0], &DataType::Binary)?.unwrap_or_else(|| BinaryArray::new_null(rows)),
            ),
            AggKind::Quantiles => {
                let t = quantile_type();
                MeasureArray::Quantiles(
                    read!(&names[0], &t)?.unwrap_or_else(|| ListArray::new_null(item(&t), rows)),
                )
            }
        });
    }
    Ok(DayBatch {
        bucket,
        dimensions,
        measures,
    })
}

/// The item field of a list type.
fn item(t: &DataType) -> Arc<arrow_schema::Field> {
    match t {
        DataType::List(f) => f.clone(),
        _ => Arc::new(arrow_schema::Field::new("item", t.clone(), true)),
    }
}

/// The column `name` cast to `to` (from a compatible encoding), `None` when
/// absent.
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
        // signed counts, Int64 sums) read as the canonical type; a value
        // that does not convert (a negative count, text) is an error, not
        // a null.
        let strict = CastOptions {
            safe: false,
            ..CastOptions::default()
        };
        arrow_cast::cast::cast_with_options(col.as_ref(), to, &strict).map_err(|e| {
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
