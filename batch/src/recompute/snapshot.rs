//! Snapshot files: one Parquet file per (view, day, level), written from the
//! day's frame of groups (the plan's result, no per-group structs between),
//! and read back (for tests and tools; serving has its own
//! reader). The layout is [`tally_core::manifest`]'s.

use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, Decimal128Array, Float64Array, Int64Array, RecordBatch, StringArray,
    UInt64Array,
};
use arrow_schema::{DataType, Field, Schema};
use object_store::path::Path;
use object_store::ObjectStore;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::EnabledStatistics;
use parquet::schema::types::ColumnPath;
use polars::prelude::{Column, DataFrame};
use tally_core::agg::{Agg, AggKind};
use tally_core::hll::Hll;
use tally_core::manifest::columns;
use tally_core::view::ViewDef;
use tokio::io::AsyncWriteExt;

use super::{distinct, BatchError};
use crate::archive_file::{self, FileError};

/// The Arrow schema of a view's snapshot file (see [`tally_core::manifest`]).
/// The integer part of a sum: exact `i128` ([`tally_core::agg`]).
const SUM_INT_TYPE: DataType = DataType::Decimal128(38, 0);

pub fn snapshot_schema(view: &ViewDef) -> Arc<Schema> {
    let mut fields = vec![Field::new(columns::BUCKET, DataType::Int64, false)];
    for d in &view.dimensions {
        fields.push(Field::new(columns::dimension(d), DataType::Utf8, true));
    }
    for m in &view.measures {
        let names = columns::measure(m);
        match m.agg {
            AggKind::Count => fields.push(Field::new(&names[0], DataType::UInt64, false)),
            AggKind::Sum => {
                fields.push(Field::new(&names[0], SUM_INT_TYPE, false));
                fields.push(Field::new(&names[1], DataType::Float64, false));
            }
            AggKind::Min | AggKind::Max => {
                fields.push(Field::new(&names[0], DataType::Float64, true))
            }
            AggKind::Distinct => fields.push(Field::new(&names[0], DataType::Binary, false)),
        }
    }
    Arc::new(Schema::new(fields))
}

/// Write `frame`, one day's groups at one level as [`super::plan`] lays
/// them out, to `path`; returns the file's size. The frame's columns are
/// copied column by column into the snapshot's Arrow types.
pub async fn write(
    store: Arc<dyn ObjectStore>,
    path: &str,
    view: &ViewDef,
    frame: &DataFrame,
) -> Result<u64, BatchError> {
    let batch = batch_of(view, frame)?;
    let mut props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY);
    // A sketch is unique to its group: a dictionary never pays, and min/max
    // statistics of sketch bytes help no reader.
    for m in view.measures.iter().filter(|m| m.agg == AggKind::Distinct) {
        let c = ColumnPath::from(columns::measure(m)[0].as_str());
        props = props
            .set_column_dictionary_enabled(c.clone(), false)
            .set_column_statistics_enabled(c, EnabledStatistics::None);
    }
    let props = props.build();
    let mut bytes = Vec::new();
    let mut w = ArrowWriter::try_new(&mut bytes, batch.schema(), Some(props))?;
    w.write(&batch)?;
    w.close()?;
    let size = bytes.len() as u64;
    let mut out = object_store::buffered::BufWriter::new(store, Path::from(path));
    out.write_all(&bytes)
        .await
        .map_err(|e| BatchError::Task(format!("writing {path}: {e}")))?;
    out.shutdown()
        .await
        .map_err(|e| BatchError::Task(format!("writing {path}: {e}")))?;
    Ok(size)
}

fn batch_of(view: &ViewDef, frame: &DataFrame) -> Result<RecordBatch, BatchError> {
    let schema = snapshot_schema(view);
    let column = |name: &str| frame.column(name).map(Column::as_materialized_series);
    let mut cols: Vec<ArrayRef> = Vec::new();
    cols.push(Arc::new(Int64Array::from_iter_values(
        column("bucket")?.i64()?.iter().map(|v| v.unwrap_or(0)),
    )));
    for d in 0..view.dimensions.len() {
        let s = column(&format!("d{d}"))?.str()?;
        cols.push(Arc::new(s.iter().collect::<StringArray>()));
    }
    for (k, m) in view.measures.iter().enumerate() {
        let name = format!("m{k}");
        match m.agg {
            AggKind::Count => cols.push(Arc::new(UInt64Array::from_iter_values(
                column(&name)?.u64()?.iter().map(|v| v.unwrap_or(0)),
            ))),
            AggKind::Sum => {
                let ints = column(&format!("{name}:int"))?.i128()?;
                let ints = Decimal128Array::from_iter_values(ints.iter().map(|v| v.unwrap_or(0)))
                    .with_data_type(SUM_INT_TYPE);
                let floats = column(&format!("{name}:float"))?.f64()?;
                cols.push(Arc::new(ints));
                cols.push(Arc::new(Float64Array::from_iter_values(
                    floats.iter().map(|v| v.unwrap_or(0.0)),
                )));
            }
            AggKind::Min | AggKind::Max => cols.push(Arc::new(
                column(&name)?.f64()?.iter().collect::<Float64Array>(),
            )),
            AggKind::Distinct => {
                let sketches = distinct::sketches(column(&name)?.list()?)?;
                cols.push(Arc::new(sketches));
            }
        }
    }
    Ok(RecordBatch::try_new(schema, cols)?)
}

/// Read one snapshot day file back into `(bucket, dims, aggs)` rows. For tests
/// and tools; the serving layer has its own reader.
pub async fn read_snapshot(
    store: Arc<dyn ObjectStore>,
    path: &str,
    view: &ViewDef,
) -> Result<Vec<(i64, Vec<Option<String>>, Vec<Agg>)>, BatchError> {
    let batches = archive_file::read_all(store, path).await?;
    let mut out = Vec::new();
    for b in &batches {
        let bucket = b
            .column_by_name(columns::BUCKET)
            .and_then(|c| c.as_any().downcast_ref::<Int64Array>())
            .ok_or_else(|| malformed(path, columns::BUCKET))?;
        let dims: Vec<&StringArray> = view
            .dimensions
            .iter()
            .map(|d| {
                let name = columns::dimension(d);
                b.column_by_name(&name)
                    .and_then(|c| c.as_any().downcast_ref::<StringArray>())
                    .ok_or_else(|| malformed(path, &name))
            })
            .collect::<Result<_, _>>()?;
        for r in 0..b.num_rows() {
            let mut aggs = Vec::new();
            for m in &view.measures {
                let names = columns::measure(m);
                let c = b
                    .column_by_name(&names[0])
                    .ok_or_else(|| malformed(path, &names[0]))?;
                let any = c.as_any();
                let agg = match m.agg {
                    AggKind::Count => Agg::Count(
                        any.downcast_ref::<arrow_array::UInt64Array>()
                            .ok_or_else(|| malformed(path, &names[0]))?
                            .value(r),
                    ),
                    AggKind::Sum => {
                        let int = if let Some(d) = any.downcast_ref::<Decimal128Array>() {
                            d.value(r)
                        } else {
                            // Snapshots written before exact i128 sums.
                            any.downcast_ref::<Int64Array>()
                                .ok_or_else(|| malformed(path, &names[0]))?
                                .value(r)
                                .into()
                        };
                        let f = b
                            .column_by_name(&names[1])
                            .and_then(|c| c.as_any().downcast_ref::<Float64Array>())
                            .ok_or_else(|| malformed(path, &names[1]))?;
                        Agg::Sum {
                            int,
                            float: f.value(r),
                        }
                    }
                    AggKind::Min | AggKind::Max => {
                        let f = any
                            .downcast_ref::<Float64Array>()
                            .ok_or_else(|| malformed(path, &names[0]))?;
                        let v = f.is_valid(r).then(|| f.value(r));
                        if m.agg == AggKind::Min {
                            Agg::Min(v)
                        } else {
                            Agg::Max(v)
                        }
                    }
                    AggKind::Distinct => {
                        let h = any
                            .downcast_ref::<arrow_array::BinaryArray>()
                            .ok_or_else(|| malformed(path, &names[0]))?;
                        Agg::Distinct(Hll::from_redis_bytes(h.value(r)).map_err(|e| {
                            FileError::Malformed {
                                path: path.to_owned(),
                                problem: e.to_string(),
                            }
                        })?)
                    }
                };
                aggs.push(agg);
            }
            out.push((
                bucket.value(r),
                dims.iter()
                    .map(|d| d.is_valid(r).then(|| d.value(r).to_owned()))
                    .collect(),
                aggs,
            ));
        }
    }
    Ok(out)
}

fn malformed(path: &str, col: &str) -> BatchError {
    BatchError::File(FileError::Malformed {
        path: path.to_owned(),
        problem: format!("column `{col}` is missing or mistyped"),
    })
}
