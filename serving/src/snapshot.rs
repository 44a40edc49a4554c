//! Batch snapshots in memory: loading from the object store and swapping.
//!
//! For each configured view, [`load_view`] reads `views/<view>/_manifest.json`
//! and, when it names a run not yet loaded, every day file of that run through
//! the `parquet` crate's async reader over `object_store`, decoding the column
//! contract of [`tally_core::manifest`] into [`ViewSnapshot`]: cells (bucket,
//! interned group, one [`Agg`] per measure of the view) sorted by bucket within
//! each UTC day. [`SnapshotSet`] is swapped whole through an `ArcSwap`, so a
//! query sees either the old snapshot or the new one, never a mix.
//!
//! Guarantees: a manifest that cannot be read or a day file that cannot be
//! decoded never replaces a snapshot that works; the failure is recorded in
//! [`StoreHealth`] and reported as degraded. A missing manifest means "no batch
//! run yet": cut = minus infinity.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow_array::{
    Array, ArrayRef, BinaryArray, Decimal128Array, Float64Array, Int64Array, RecordBatch,
    StringArray, UInt64Array,
};
use arrow_schema::DataType;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
// `ParquetObjectReader` is deprecated upstream in favour of hand-written
// `AsyncFileReader`s; it is still the crate's reader over `object_store` and
// does ranged reads, which is all a snapshot load needs.
#[allow(deprecated)]
use parquet::arrow::async_reader::{ParquetObjectReader, ParquetRecordBatchStreamBuilder};
use tally_core::agg::{Agg, AggKind};
use tally_core::hll::Hll;
use tally_core::manifest::{columns, Manifest, ManifestV2};
use tally_core::paths;
use tally_core::time::Epoch;
use tally_core::view::ViewDef;

/// One (bucket, group) row of a snapshot.
#[derive(Debug, Clone)]
pub struct Cell {
    pub bucket_ms: i64,
    /// Index into [`ViewSnapshot::groups`].
    pub group: u32,
    /// One aggregate per measure of the view, in definition order.
    pub aggs: Box<[Agg]>,
}

/// The loaded snapshot of one view.
#[derive(Debug, Clone, Default)]
pub struct ViewSnapshot {
    pub manifest: Option<ManifestV2>,
    /// Distinct groups, one value per dimension.
    pub groups: Vec<Box<[Option<String>]>>,
    /// Cells by UTC day, sorted by bucket.
    pub days: BTreeMap<i64, Vec<Cell>>,
    pub rows: u64,
    /// Whether the manifest's definition fingerprint matches the configured view.
    pub definition_matches: bool,
    pub loaded_ms: i64,
}

impl ViewSnapshot {
    /// The cut of this snapshot; `None` = no batch run yet (minus infinity).
    pub fn cut(&self) -> Option<Epoch> {
        self.manifest.as_ref().map(|m| m.cut)
    }
}

/// All views' snapshots, swapped as one.
#[derive(Debug, Clone, Default)]
pub struct SnapshotSet {
    pub views: HashMap<String, Arc<ViewSnapshot>>,
}

/// The object store as last seen by the poller.
#[derive(Debug, Clone, Default)]
pub struct StoreHealth {
    /// The last error per view (or `"*"`), cleared by a successful poll.
    pub errors: BTreeMap<String, String>,
    pub last_poll_ms: Option<i64>,
}

/// Why a snapshot could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    #[error("manifest {path} is not a valid manifest: {source}")]
    Manifest {
        path: String,
        source: serde_json::Error,
    },
    #[error("snapshot file {path}: {source}")]
    Parquet {
        path: String,
        source: parquet::errors::ParquetError,
    },
    #[error("snapshot file {path}: column `{column}` {problem}")]
    Column {
        path: String,
        column: String,
        problem: String,
    },
}

/// Read the manifest of `view`; `Ok(None)` when none was published yet.
pub async fn read_manifest(
    store: &dyn ObjectStore,
    view: &ViewDef,
) -> Result<Option<ManifestV2>, SnapshotError> {
    let path = paths::manifest(&view.name);
    let bytes = match store.get(&Path::from(path.as_str())).await {
        Ok(r) => r.bytes().await?,
        Err(object_store::Error::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let m: Manifest = serde_json::from_slice(&bytes).map_err(|source| SnapshotError::Manifest {
        path: path.clone(),
        source,
    })?;
    Ok(Some(m.into_current(view.granularity.as_ms())))
}

/// Load the snapshot of `view` that `manifest` describes.
pub async fn load_view(
    store: Arc<dyn ObjectStore>,
    view: &ViewDef,
    manifest: Option<ManifestV2>,
    now_ms: i64,
) -> Result<ViewSnapshot, SnapshotError> {
    let mut snap = ViewSnapshot {
        loaded_ms: now_ms,
        ..Default::default()
    };
    let Some(m) = manifest else {
        snap.definition_matches = true;
        return Ok(snap);
    };
    snap.definition_matches = m.definition == view.fingerprint();
    let mut interner: HashMap<Box<[Option<String>]>, u32> = HashMap::new();
    // The view's own level: roll-up levels are not read yet.
    for day in m.files_at(view.granularity.as_ms()) {
        let path = Path::from(day.path.as_str());
        #[allow(deprecated)]
        let reader = ParquetObjectReader::new(store.clone(), path);
        let err = |source| SnapshotError::Parquet {
            path: day.path.clone(),
            source,
        };
        let stream = ParquetRecordBatchStreamBuilder::new(reader)
            .await
            .map_err(err)?
            .build()
            .map_err(err)?;
        let batches: Vec<RecordBatch> = stream.try_collect().await.map_err(err)?;
        let mut cells = Vec::new();
        for batch in &batches {
            decode_batch(
                view,
                batch,
                &day.path,
                &mut snap.groups,
                &mut interner,
                &mut cells,
            )?;
        }
        snap.rows += cells.len() as u64;
        cells.sort_by_key(|c| c.bucket_ms);
        // A day file holds one UTC day; still, index each cell by its own day so
        // that a misfiled row is found where a query looks for it.
        for c in cells {
            snap.days
                .entry(tally_core::time::day_of(c.bucket_ms))
                .or_default()
                .push(c);
        }
    }
    for cells in snap.days.values_mut() {
        cells.sort_by_key(|c| c.bucket_ms);
    }
    snap.manifest = Some(m);
    Ok(snap)
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
    let col = if col.data_type() == to {
        col.clone()
    } else {
        arrow_cast(col, to).map_err(problem)?
    };
    col.as_any()
        .downcast_ref::<T>()
        .cloned()
        .map(Some)
        .ok_or_else(|| problem(format!("cannot be read as {to}")))
}

/// Cast the few encodings a writer may choose (large/view strings, signed
/// counts) to the canonical type.
fn arrow_cast(col: &ArrayRef, to: &DataType) -> Result<ArrayRef, String> {
    arrow_cast::cast::cast(col.as_ref(), to).map_err(|e| {
        format!(
            "has type {} and cannot be read as {to}: {e}",
            col.data_type()
        )
    })
}

fn decode_batch(
    view: &ViewDef,
    batch: &RecordBatch,
    path: &str,
    groups: &mut Vec<Box<[Option<String>]>>,
    interner: &mut HashMap<Box<[Option<String>]>, u32>,
    out: &mut Vec<Cell>,
) -> Result<(), SnapshotError> {
    let missing = |column: &str| SnapshotError::Column {
        path: path.to_owned(),
        column: column.to_owned(),
        problem: "is missing".into(),
    };
    let bucket: Int64Array = column(batch, columns::BUCKET, &DataType::Int64, path)?
        .ok_or_else(|| missing(columns::BUCKET))?;
    let mut dims = Vec::new();
    for d in &view.dimensions {
        let name = columns::dimension(d);
        // A dimension column absent from the file means "absent" for every row.
        dims.push(column::<StringArray>(batch, &name, &DataType::Utf8, path)?);
    }
    enum MCol {
        Count(Option<UInt64Array>),
        Sum(Option<Decimal128Array>, Option<Float64Array>),
        MinMax(Option<Float64Array>),
        Distinct(Option<BinaryArray>),
    }
    let mut mcols = Vec::new();
    for m in &view.measures {
        let names = columns::measure(m);
        mcols.push(match m.agg {
            AggKind::Count => MCol::Count(column(batch, &names[0], &DataType::UInt64, path)?),
            // Int64 in snapshots written before exact i128 sums: cast.
            AggKind::Sum => MCol::Sum(
                column(batch, &names[0], &DataType::Decimal128(38, 0), path)?,
                column(batch, &names[1], &DataType::Float64, path)?,
            ),
            AggKind::Min | AggKind::Max => {
                MCol::MinMax(column(batch, &names[0], &DataType::Float64, path)?)
            }
            AggKind::Distinct => MCol::Distinct(column(batch, &names[0], &DataType::Binary, path)?),
        });
    }
    let mut key: Vec<Option<String>> = Vec::with_capacity(dims.len());
    for row in 0..batch.num_rows() {
        if bucket.is_null(row) {
            continue;
        }
        key.clear();
        for d in &dims {
            key.push(
                d.as_ref()
                    .filter(|a| !a.is_null(row))
                    .map(|a| a.value(row).to_owned()),
            );
        }
        let gid = match interner.get(key.as_slice()) {
            Some(&g) => g,
            None => {
                let g = groups.len() as u32;
                let boxed: Box<[Option<String>]> = key.clone().into_boxed_slice();
                groups.push(boxed.clone());
                interner.insert(boxed, g);
                g
            }
        };
        let mut aggs = Vec::with_capacity(mcols.len());
        for (m, col) in view.measures.iter().zip(&mcols) {
            let agg = match col {
                MCol::Count(c) => Agg::Count(
                    c.as_ref()
                        .filter(|a| !a.is_null(row))
                        .map_or(0, |a| a.value(row)),
                ),
                MCol::Sum(i, f) => Agg::Sum {
                    int: i
                        .as_ref()
                        .filter(|a| !a.is_null(row))
                        .map_or(0, |a| a.value(row)),
                    float: f
                        .as_ref()
                        .filter(|a| !a.is_null(row))
                        .map_or(0.0, |a| a.value(row)),
                },
                MCol::MinMax(c) => {
                    let v = c.as_ref().filter(|a| !a.is_null(row)).map(|a| a.value(row));
                    if m.agg == AggKind::Min {
                        Agg::Min(v)
                    } else {
                        Agg::Max(v)
                    }
                }
                MCol::Distinct(c) => {
                    let bytes = c.as_ref().filter(|a| !a.is_null(row)).map(|a| a.value(row));
                    match bytes {
                        None => Agg::Distinct(Hll::new()),
                        Some(b) => Agg::Distinct(Hll::from_redis_bytes(b).map_err(|e| {
                            SnapshotError::Column {
                                path: path.to_owned(),
                                column: columns::measure(m)[0].clone(),
                                problem: format!("row {row}: {e}"),
                            }
                        })?),
                    }
                }
            };
            aggs.push(agg);
        }
        out.push(Cell {
            bucket_ms: bucket.value(row),
            group: gid,
            aggs: aggs.into_boxed_slice(),
        });
    }
    Ok(())
}
