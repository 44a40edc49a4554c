//! One view's run: which days to recompute, their snapshot files at every
//! level, and the manifest that publishes them in one conditional put.
//!
//! A day is carried forward only if all its files are still in the store
//! (checked when planning: a missing one makes the day recomputed; and again
//! before publishing: a file deleted meanwhile fails the run). Under the
//! batch lock, the lock is confirmed right before the manifest is put, so a
//! run that lost it publishes nothing.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tally_core::time::{day_of, Epoch};
use tally_core::view::ViewDef;

use super::engine::Engine;
use super::inputs::Input;
use super::plan;
use super::{snapshot, BatchError, Progress, RunOptions, ViewSummary};
use crate::lock::BatchLock;
use tally_store::manifest::{self, DayFile, InputFile, ManifestV2, SkippedFile};
use tally_store::object::{self as store, StoreError, Version};
use tally_store::paths;

/// Recompute and publish `view` (see the module docs of [`super`]).
#[allow(clippy::too_many_arguments)]
pub(super) async fn run_view(
    store: &Arc<dyn ObjectStore>,
    view: &ViewDef,
    cut: Epoch,
    all_inputs: &[Input],
    all_skipped: &[SkippedFile],
    opts: &RunOptions,
    run_id: &str,
    planned_ms: i64,
    progress: &(dyn Fn(Progress) + Send + Sync),
    written_files: &mut usize,
    lock: Option<&BatchLock>,
) -> Result<ViewSummary, BatchError> {
    let mpath = paths::manifest(&view.name);
    let mut corrupt_manifest = None;
    let (prev_m, prev_version) = match manifest::get(store.as_ref(), &view.name).await {
        Ok(Some((m, v))) => (Some(m.into_current(view.granularity.as_ms())), Some(v)),
        Ok(None) => (None, None),
        // Unreadable: kept aside, and the view recomputed in full over it.
        Err(StoreError::Json { source, .. }) => {
            let (kept, version) = keep_aside(store, &mpath, run_id).await?;
            tracing::error!(view = %view.name, error = %source, copy = %kept, "the view's manifest is not valid JSON; recomputing the view in full");
            corrupt_manifest = Some(kept);
            (None, Some(version))
        }
        Err(e) => return Err(e.into()),
    };
    let fingerprint = view.fingerprint();
    let inputs: Vec<&Input> = all_inputs
        .iter()
        .filter(|i| view.topics.is_empty() || view.topics.contains(&i.topic))
        .collect();
    let skipped: Vec<SkippedFile> = all_skipped
        .iter()
        .filter(|s| {
            view.topics.is_empty()
                || paths::parse_archive_file(&s.path)
                    .is_some_and(|f| view.topics.contains(&f.topic))
        })
        .cloned()
        .collect();
    let levels = view.levels();
    let levels_ms: Vec<i64> = levels.iter().map(|g| g.as_ms()).collect();
    let full = opts.full
        || prev_m
            .as_ref()
            .is_none_or(|p| p.definition != fingerprint || p.levels_ms != levels_ms);
    let mut days: BTreeSet<i64> = BTreeSet::new();
    if full {
        for i in &inputs {
            days.extend(i.days.iter().copied());
        }
    } else if let Some(p) = &prev_m {
        // An input is new, or was rewritten under the same name, unless the
        // manifest recorded it exactly as it is now (size, e-tag, last offset:
        // modification times are too coarse on S3 to tell).
        let covered: HashMap<&str, &InputFile> =
            p.inputs.iter().map(|i| (i.path.as_str(), i)).collect();
        for i in &inputs {
            if covered.get(i.path.as_str()) != Some(&&i.record()) {
                days.extend(i.days.iter().copied());
            }
        }
    }
    // Days whose files are gone (deleted by hand, or by another run's garbage
    // collection) cannot be carried: recompute them.
    if let Some(p) = prev_m.as_ref().filter(|_| !full) {
        let present = present(store, &view.name).await?;
        for d in &p.days {
            if !present.contains(&d.path) {
                tracing::warn!(view = %view.name, file = %d.path, "snapshot file missing; recomputing its day");
                days.insert(d.day);
            }
        }
    }
    if let Some((from, to)) = opts.range_ms {
        if to > from {
            let (a, b) = (day_of(from), day_of(to - 1));
            for i in &inputs {
                days.extend(i.days.iter().copied().filter(|d| (a..=b).contains(d)));
            }
        }
    }
    let to_read: Vec<&Input> = inputs
        .iter()
        .copied()
        .filter(|i| i.days.iter().any(|d| days.contains(d)))
        .collect();
    progress(Progress::Planned {
        view: view.name.clone(),
        files: to_read.len(),
        days: days.len(),
    });
    let mut vs = ViewSummary {
        view: view.name.clone(),
        full,
        files_read: to_read.len(),
        rows_read: to_read.iter().map(|i| i.rows()).sum(),
        corrupt_manifest,
        ..ViewSummary::default()
    };

    let mut engine = Engine::new(store.clone(), view, to_read, days.clone(), progress);
    let def = Arc::new(view.clone());
    let mut new_days: Vec<DayFile> = Vec::new();
    for &day in &days {
        let Some(mut frame) = engine.day(day).await? else {
            continue;
        };
        // Each level from the one before it (fewer groups to merge), rolled
        // up while the finer level is encoded and written: the two steps
        // keep two cores busy where one did both in turn. Writes still
        // running when the run fails are stopped with the set.
        let mut writes = tokio::task::JoinSet::new();
        for (n, level) in levels.iter().enumerate() {
            if n > 0 {
                let (finer, def, level_ms) = (frame, def.clone(), level.as_ms());
                frame = tokio::task::spawn_blocking(move || {
                    plan::rollup(&finer, &def, level_ms)?.collect()
                })
                .await
                .map_err(|e| BatchError::Task(e.to_string()))??;
            }
            let path = paths::snapshot_file(&view.name, run_id, *level, day);
            let file = DayFile {
                day,
                level_ms: Some(level.as_ms()),
                path: path.clone(),
                rows: frame.height() as u64,
                bytes: None,
            };
            let write = snapshot::write(store.clone(), path, def.clone(), frame.clone());
            writes.spawn(async move { (n, file, write.await) });
        }
        let mut files: Vec<(usize, DayFile)> = Vec::with_capacity(levels.len());
        while let Some(joined) = writes.join_next().await {
            let (n, mut file, written) = joined.map_err(|e| BatchError::Task(e.to_string()))?;
            file.bytes = Some(written?);
            *written_files += 1;
            if opts.crash_after_files.is_some_and(|n| *written_files >= n) {
                return Err(BatchError::Crashed);
            }
            files.push((n, file));
        }
        files.sort_by_key(|(n, _)| *n);
        new_days.extend(files.into_iter().map(|(_, f)| f));
        let base_rows = new_days[new_days.len() - levels.len()].rows;
        vs.rows_written += base_rows;
        progress(Progress::DayWritten {
            view: view.name.clone(),
            day,
            rows: base_rows,
        });
    }
    vs.days_recomputed = days.len();
    // Carry the other days forward.
    let mut all_days = new_days;
    if !full {
        if let Some(p) = &prev_m {
            let mut carried = BTreeSet::new();
            for d in &p.days {
                if !days.contains(&d.day) {
                    all_days.push(d.clone());
                    carried.insert(d.day);
                }
            }
            vs.days_carried = carried.len();
        }
    }
    all_days.sort_by_key(|d| (d.day, d.level_ms));
    // The lock first: a run that lost it may find its own files collected.
    if let Some(lock) = lock {
        lock.confirm().await?;
    }
    if vs.days_carried > 0 {
        let present = present(store, &view.name).await?;
        if let Some(gone) = all_days.iter().find(|d| !present.contains(&d.path)) {
            return Err(BatchError::MissingFile(gone.path.clone()));
        }
    }
    let published = ManifestV2 {
        view: view.name.clone(),
        run_id: run_id.to_owned(),
        cut,
        definition: fingerprint,
        created_ms: planned_ms,
        levels_ms,
        days: all_days,
        inputs: inputs.iter().map(|i| i.record()).collect(),
        rows_read: vs.rows_read,
        skipped,
    };
    match manifest::put_if(store.as_ref(), published, prev_version.as_ref()).await {
        Err(StoreError::Conflict(_)) => return Err(BatchError::Conflict(view.name.clone())),
        other => {
            other?;
        }
    }
    progress(Progress::Published {
        view: view.name.clone(),
    });
    Ok(vs)
}

/// The paths of the objects under the view's folder.
async fn present(store: &Arc<dyn ObjectStore>, view: &str) -> Result<HashSet<String>, BatchError> {
    Ok(store::list(store.as_ref(), &paths::view_dir(view))
        .await?
        .into_iter()
        .map(|o| o.location.to_string())
        .collect())
}

/// Copy the object at `path` to `quarantine/<path>.<run_id>` and return
/// that path and the object's version (to publish over it conditionally).
async fn keep_aside(
    store: &Arc<dyn ObjectStore>,
    path: &str,
    run_id: &str,
) -> Result<(String, Version), BatchError> {
    let from = Path::from(path);
    let meta = store.head(&from).await?;
    let to = format!("{}/{path}.{run_id}", paths::QUARANTINE_ROOT);
    store.copy(&from, &Path::from(to.as_str())).await?;
    Ok((
        to,
        Version {
            e_tag: meta.e_tag,
            version: meta.version,
        },
    ))
}
