//! A day's frame of groups (the plan's result) as a snapshot file: the
//! frame's columns copied into the snapshot schema's Arrow types, no
//! per-group structs between, and written by the store's one writer
//! ([`tally_store::snapshot`], which owns the schema and the reader).

use std::sync::Arc;

use arrow_array::{Decimal128Array, Float64Array, Int64Array, StringArray, UInt64Array};
use object_store::ObjectStore;
use polars::prelude::{Column, DataFrame};
use tally_core::agg::AggKind;
use tally_core::view::ViewDef;
use tally_store::snapshot::{self, DayBatch, MeasureArray, SUM_INT_TYPE};

use super::{distinct, quantile, BatchError};

/// Write `frame`, one day's groups at one level as [`super::plan`] lays
/// them out, to `path`; returns the file's size. The conversion and the
/// Parquet encoding run on the blocking pool, so that a level is encoded
/// while the next one is rolled up.
pub(super) async fn write(
    store: Arc<dyn ObjectStore>,
    path: String,
    view: Arc<ViewDef>,
    frame: DataFrame,
) -> Result<u64, BatchError> {
    let named = path.clone();
    let bytes = tokio::task::spawn_blocking(move || {
        Ok::<_, BatchError>(snapshot::encode(&view, day_batch(&view, &frame)?, &named)?)
    })
    .await
    .map_err(|e| BatchError::Task(e.to_string()))??;
    Ok(snapshot::put(store, &path, &bytes).await?)
}

fn day_batch(view: &ViewDef, frame: &DataFrame) -> Result<DayBatch, BatchError> {
    let column = |name: &str| frame.column(name).map(Column::as_materialized_series);
    let bucket =
        Int64Array::from_iter_values(column("bucket")?.i64()?.iter().map(|v| v.unwrap_or(0)));
    let mut dimensions = Vec::with_capacity(view.dimensions.len());
    for d in 0..view.dimensions.len() {
        let s = column(&format!("d{d}"))?.str()?;
        dimensions.push(s.iter().collect::<StringArray>());
    }
    let mut measures = Vec::with_capacity(view.measures.len());
    for (k, m) in view.measures.iter().enumerate() {
        let name = format!("m{k}");
        measures.push(match m.agg {
            AggKind::Count => MeasureArray::Count(UInt64Array::from_iter_values(
                column(&name)?.u64()?.iter().map(|v| v.unwrap_or(0)),
            )),
            AggKind::Sum => {
                let ints = column(&format!("{name}:int"))?.i128()?;
                let floats = column(&format!("{name}:float"))?.f64()?;
                MeasureArray::Sum {
                    int: Decimal128Array::from_iter_values(ints.iter().map(|v| v.unwrap_or(0)))
                        .with_data_type(SUM_INT_TYPE),
                    float: Float64Array::from_iter_values(floats.iter().map(|v| v.unwrap_or(0.0))),
                }
            }
            AggKind::Min | AggKind::Max => {
                MeasureArray::Extreme(column(&name)?.f64()?.iter().collect::<Float64Array>())
            }
            AggKind::Distinct => {
                MeasureArray::Distinct(distinct::sketches(column(&name)?.list()?)?)
            }
            AggKind::Quantiles => {
                MeasureArray::Quantiles(quantile::sketches(column(&name)?.list()?)?)
            }
        });
    }
    Ok(DayBatch {
        bucket,
        dimensions,
        measures,
    })
}
