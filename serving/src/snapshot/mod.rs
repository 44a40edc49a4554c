//! Batch snapshots: manifests, and day files read on demand.
//!
//! A [`ViewSnapshot`] is one published manifest of a view, indexed by (day,
//! level): it holds no data. Queries read the day files they need through
//! the [`cache::DayCache`] (decoded by [`day::DayData`]), so memory follows
//! the cache budget, not the history. [`SnapshotSet`] (every view's
//! snapshot) is swapped whole through an `ArcSwap`: a query that took a
//! snapshot reads only that manifest's files, so an answer never mixes two
//! snapshots, and the speed slices it merges are chosen by that manifest's
//! cut.
//!
//! Guarantees: a new manifest is adopted only once the footer of every file
//! it adds (paths the previous manifest did not list) has been read and
//! holds the bucket column; otherwise the previous snapshot keeps serving and
//! the failure is recorded in [`StoreHealth`] (reported as degraded). A
//! missing manifest means "no batch run yet": cut = minus infinity.

pub mod cache;
pub mod day;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
// `ParquetObjectReader` is deprecated upstream in favour of hand-written
// `AsyncFileReader`s; it is still the crate's reader over `object_store` and
// does ranged reads, which is all a footer check needs.
#[allow(deprecated)]
use parquet::arrow::async_reader::{ParquetObjectReader, ParquetRecordBatchStreamBuilder};
use tally_core::manifest::{columns, DayFile, Manifest, ManifestV2};
use tally_core::paths;
use tally_core::time::Epoch;
use tally_core::view::ViewDef;

/// Footers read at once when a manifest adds files.
const CHECK_CONCURRENCY: usize = 16;

/// The published snapshot of one view, indexed for queries.
#[derive(Debug, Clone, Default)]
pub struct ViewSnapshot {
    pub manifest: Option<ManifestV2>,
    /// Every file, by (day, level ms).
    pub files: BTreeMap<(i64, i64), DayFile>,
    /// Rows at the view's own level.
    pub rows: u64,
    /// Days with a file at the view's own level.
    pub days: usize,
    /// Whether the manifest's definition fingerprint matches the configured view.
    pub definition_matches: bool,
    pub loaded_ms: i64,
}

impl ViewSnapshot {
    /// The cut of this snapshot; `None` = no batch run yet (minus infinity).
    pub fn cut(&self) -> Option<Epoch> {
        self.manifest.as_ref().map(|m| m.cut)
    }

    /// The levels that have a file for `day`, finest first.
    pub fn levels_of(&self, day: i64) -> Vec<i64> {
        self.files
            .range((day, i64::MIN)..=(day, i64::MAX))
            .map(|((_, l), _)| *l)
            .collect()
    }

    /// The days with a file in `first..=last`.
    pub fn days_in(&self, first: i64, last: i64) -> impl Iterator<Item = i64> + '_ {
        let mut prev = None;
        self.files
            .range((first, i64::MIN)..=(last, i64::MAX))
            .filter_map(move |((d, _), _)| (prev.replace(*d) != Some(*d)).then_some(*d))
    }
}

/// All views' snapshots, swapped as one.
#[derive(Debug, Clone, Default)]
pub struct SnapshotSet {
    pub views: HashMap<String, Arc<ViewSnapshot>>,
}

impl SnapshotSet {
    /// Every file path the snapshots refer to.
    pub fn paths(&self) -> HashSet<&str> {
        self.views
            .values()
            .flat_map(|s| s.files.values().map(|f| f.path.as_str()))
            .collect()
    }
}

/// The object store as last seen by the poller.
#[derive(Debug, Clone, Default)]
pub struct StoreHealth {
    /// The last error per view (or `"*"`), cleared by a successful poll.
    pub errors: BTreeMap<String, String>,
    pub last_poll_ms: Option<i64>,
}

/// Why a snapshot or one of its files could not be read.
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

/// Index `manifest` for queries, after checking the files it adds to
/// `previous` (see the module documentation).
pub async fn load_view(
    store: Arc<dyn ObjectStore>,
    view: &ViewDef,
    manifest: Option<ManifestV2>,
    previous: Option<&ViewSnapshot>,
    now_ms: i64,
) -> Result<ViewSnapshot, SnapshotError> {
    let mut snap = ViewSnapshot {
        loaded_ms: now_ms,
        definition_matches: true,
        ..Default::default()
    };
    let Some(m) = manifest else {
        return Ok(snap);
    };
    let known: HashSet<&str> = previous
        .map(|p| p.files.values().map(|f| f.path.as_str()).collect())
        .unwrap_or_default();
    let finest = m.levels_ms.first().copied();
    let new: Vec<DayFile> = m
        .days
        .iter()
        .filter(|d| !known.contains(d.path.as_str()))
        .cloned()
        .collect();
    futures::stream::iter(new)
        .map(|d| check_footer(store.clone(), d))
        .buffer_unordered(CHECK_CONCURRENCY)
        .try_collect::<Vec<()>>()
        .await?;
    for d in &m.days {
        let level = d.level_ms.or(finest).unwrap_or(view.granularity.as_ms());
        if level == view.granularity.as_ms() {
            snap.rows += d.rows;
            snap.days += 1;
        }
        snap.files.insert((d.day, level), d.clone());
    }
    snap.definition_matches = m.definition == view.fingerprint();
    snap.manifest = Some(m);
    Ok(snap)
}

/// Read the footer of a day file and check it has the bucket column.
async fn check_footer(store: Arc<dyn ObjectStore>, file: DayFile) -> Result<(), SnapshotError> {
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

/// The bytes of one day file.
pub async fn fetch_day(
    store: &dyn ObjectStore,
    file: &DayFile,
) -> Result<bytes::Bytes, SnapshotError> {
    Ok(store
        .get(&Path::from(file.path.as_str()))
        .await?
        .bytes()
        .await?)
}
