//! The one snapshot file writer: a [`DayBatch`] checked against the view's
//! schema and encoded as Parquet ([`encode`], CPU work the caller places),
//! then put whole ([`put`]).
//!
//! Guarantees: a file written here has exactly [`super::schema`]'s columns
//! and types (columns that do not match are [`SnapshotError::Schema`] and
//! nothing is written); the object appears whole or not at all (one
//! buffered put; a failed upload leaves no partial object to read).

use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch};
use object_store::path::Path;
use object_store::ObjectStore;
use parquet::arrow::ArrowWriter;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use parquet::schema::types::ColumnPath;
use tally_core::agg::AggKind;
use tally_core::view::ViewDef;
use tokio::io::AsyncWriteExt;

use super::{columns, schema, DayBatch, MeasureArray, SnapshotError, SUM_INT_TYPE};

/// `batch`, one day's groups of `view` at one level sorted by bucket, as
/// the bytes of the snapshot file for `path` (named in errors). CPU work
/// only: a caller runs it off the async workers.
pub fn encode(view: &ViewDef, batch: DayBatch, path: &str) -> Result<Vec<u8>, SnapshotError> {
    let batch = record_batch(view, batch, path)?;
    let mut props =
        WriterProperties::builder().set_compression(parquet::basic::Compression::SNAPPY);
    // A sketch is unique to its group: a dictionary never pays, and min/max
    // statistics of sketch bytes help no reader.
    for m in view.measures.iter().filter(|m| m.agg == AggKind::Distinct) {
        let c = ColumnPath::from(columns::measure(m)[0].as_str());
        props = props
            .set_column_dictionary_enabled(c.clone(), false)
            .set_column_statistics_enabled(c, EnabledStatistics::None);
    }
    let parquet_err = |source| SnapshotError::Parquet {
        path: path.to_owned(),
        source,
    };
    let mut bytes = Vec::new();
    let mut w = ArrowWriter::try_new(&mut bytes, batch.schema(), Some(props.build()))
        .map_err(parquet_err)?;
    w.write(&batch).map_err(parquet_err)?;
    w.close().map_err(parquet_err)?;
    Ok(bytes)
}

/// Put `bytes` (from [`encode`]) at `path` in one buffered put; returns
/// their size.
pub async fn put(
    store: Arc<dyn ObjectStore>,
    path: &str,
    bytes: &[u8],
) -> Result<u64, SnapshotError> {
    let write_err = |source| SnapshotError::Write {
        path: path.to_owned(),
        source,
    };
    let mut out = object_store::buffered::BufWriter::new(store, Path::from(path));
    out.write_all(bytes).await.map_err(write_err)?;
    out.shutdown().await.map_err(write_err)?;
    Ok(bytes.len() as u64)
}

/// `batch` as a record batch of `view`'s schema.
fn record_batch(view: &ViewDef, batch: DayBatch, path: &str) -> Result<RecordBatch, SnapshotError> {
    let problem = |problem: String| SnapshotError::Schema {
        path: path.to_owned(),
        problem,
    };
    if batch.dimensions.len() != view.dimensions.len()
        || batch.measures.len() != view.measures.len()
    {
        return Err(problem(format!(
            "{} dimensions and {} measures for a view of {} and {}",
            batch.dimensions.len(),
            batch.measures.len(),
            view.dimensions.len(),
            view.measures.len()
        )));
    }
    let mut cols: Vec<ArrayRef> = vec![Arc::new(batch.bucket)];
    for d in batch.dimensions {
        cols.push(Arc::new(d));
    }
    for (m, values) in view.measures.iter().zip(batch.measures) {
        match (m.agg, values) {
            (AggKind::Count, MeasureArray::Count(c)) => cols.push(Arc::new(c)),
            (AggKind::Sum, MeasureArray::Sum { int, float }) => {
                cols.push(Arc::new(int.with_data_type(SUM_INT_TYPE)));
                cols.push(Arc::new(float));
            }
            (AggKind::Min | AggKind::Max, MeasureArray::Extreme(v)) => cols.push(Arc::new(v)),
            (AggKind::Distinct, MeasureArray::Distinct(v)) => cols.push(Arc::new(v)),
            (AggKind::Quantiles, MeasureArray::Quantiles(v)) => cols.push(Arc::new(v)),
            (kind, _) => {
                return Err(problem(format!(
                    "measure `{}` ({kind:?}) got another kind of column",
                    m.name
                )))
            }
        }
    }
    RecordBatch::try_new(schema(view), cols).map_err(|e| problem(e.to_string()))
}
