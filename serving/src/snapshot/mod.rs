//! Batch snapshots: manifests, and day files read on demand.
//!
//! A [`ViewSnapshot`] is one published manifest of a view, indexed by (day,
//! level): it holds no data. Queries read the day files they need through
//! the [`cache::DayCache`] (read by `tally_store::snapshot`, laid out for
//! queries by [`day::DayData`]), so memory follows
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

pub(crate) mod cache;
pub mod day;
mod measure;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use tally_core::time::Epoch;
use tally_core::view::ViewDef;
use tally_store::manifest::{DayFile, ManifestV2};
use tally_store::snapshot;
pub use tally_store::snapshot::SnapshotError;

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
        .map(|d| {
            let store = store.clone();
            async move { snapshot::check_footer(store, &d).await }
        })
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
