//! The batch run: every view recomputed from the master dataset up to the cut,
//! and published atomically.
//!
//! A run reads the cut `E`, lists the archive files of epochs `< E`, and for
//! each view decides which event-time days to recompute: all of them when the
//! run is `full`, the view has no snapshot yet, its definition or its levels
//! changed; otherwise the days touched (per the files' footers) by files the
//! previous snapshot did not cover, or that were rewritten since it was
//! planned (size, e-tag or last offset changed), plus any days asked for.
//! Those days are recomputed from *all* files touching them; the other days
//! are carried forward by reference to the previous run's files. An archive
//! file whose footer cannot be read is left out and reported
//! ([`inputs`], [`RunSummary::skipped`]) instead of failing the run.
//!
//! A day is recomputed by a Polars lazy plan on the streaming engine
//! ([`plan`]) over the day's files, fetched through the object store
//! ([`fetch`]: only the columns the view reads), de-duplicated on
//! (topic, partition, offset) where files overlap ([`inputs`]), and to one
//! row per event_id for a view with `dedup = "event_id"` ([`dedup`]). The plan's
//! result, a frame of the day's groups with each distinct measure's sketch
//! registers as a list column ([`distinct`]), is written as the snapshot at
//! the view's granularity ([`snapshot`]), and rolled up to each coarser
//! level of [`ViewDef::levels`] by one more `group_by` over those groups
//! ([`plan::rollup`]), not over the rows. Days run one after another, so memory follows a day's
//! groups, not the history.
//!
//! Publishing ([`publish`]): the snapshot files are written first under a
//! fresh run folder, then the manifest in one conditional put. A run that
//! dies before that put leaves the previous manifest, and so the previous
//! snapshot, serving; its files are garbage-collected later ([`gc`]): old
//! runs no manifest refers to are deleted once older than `batch.gc_grace`.

mod dedup;
mod distinct;
mod engine;
mod fetch;
mod gc;
mod group_key;
mod inputs;
mod list_rows;
mod plan;
mod publish;
mod quantile;
mod snapshot;

use std::sync::Arc;
use std::time::Instant;

use object_store::ObjectStore;
use tally_core::config::Config;
use tally_core::time::Epoch;
use tally_core::view::ViewDef;
use tally_store::manifest::SkippedFile;

use crate::archive_file::FileError;
use crate::lock::{BatchLock, LockError};
use tally_store::StoreError;

pub(crate) use gc::gc_view;

/// Why a batch run failed. Nothing is published by a failed run.
#[derive(Debug, thiserror::Error)]
pub enum BatchError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("object store: {0}")]
    ObjectStore(#[from] object_store::Error),
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error("arrow: {0}")]
    Arrow(#[from] arrow_schema::ArrowError),
    #[error("polars: {0}")]
    Polars(#[from] polars::error::PolarsError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error(transparent)]
    Snapshot(#[from] tally_store::snapshot::SnapshotError),
    #[error("writing `{path}`: {source}")]
    Write {
        path: String,
        source: std::io::Error,
    },
    #[error("snapshot file `{0}` was deleted during the run; the next run recomputes its day")]
    MissingFile(String),
    #[error("view `{0}` is not configured")]
    UnknownView(String),
    #[error("view `{0}`: another run published first")]
    Conflict(String),
    #[error("another batch run holds the lock (owner {owner}, until {until_ms})")]
    Locked { owner: String, until_ms: i64 },
    /// The run's lock was taken over while it worked (it stalled past
    /// `batch.lock_ttl`, or the lock object was overwritten): it published
    /// nothing more, since the new holder may have deleted its files.
    #[error("this run lost the batch lock to {} and published nothing more; the next run recomputes what it would have", .holder.as_deref().unwrap_or("nobody"))]
    LockLost { holder: Option<String> },
    #[error("background task: {0}")]
    Task(String),
    /// An archive file whose footer reads but whose pages do not: found when
    /// a day's plan fails. The run leaves it out and reports it, as it does
    /// a file with an unreadable footer ([`inputs`]).
    #[error("archive file `{path}` is unreadable: {reason}")]
    CorruptFile { path: String, reason: String },
    #[error("simulated crash (test hook)")]
    Crashed,
}

impl From<LockError> for BatchError {
    fn from(e: LockError) -> Self {
        match e {
            LockError::Lost { holder } => BatchError::LockLost { holder },
            LockError::Store(e) => BatchError::Store(e),
        }
    }
}

/// What to recompute.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Recompute every day of every selected view.
    pub full: bool,
    /// Only these views (all configured views when `None`).
    pub views: Option<Vec<String>>,
    /// Also recompute the UTC days overlapping `[from_ms, to_ms)`.
    pub range_ms: Option<(i64, i64)>,
    /// Testing: fail like a crash after writing this many snapshot files.
    #[doc(hidden)]
    pub crash_after_files: Option<usize>,
}
/// What a run did, per view.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ViewSummary {
    pub view: String,
    pub full: bool,
    pub days_recomputed: usize,
    pub days_carried: usize,
    pub files_read: usize,
    pub rows_read: u64,
    pub rows_written: u64,
    /// The view's manifest was not valid JSON: where it was copied before
    /// this run recomputed the view in full over it.
    pub corrupt_manifest: Option<String>,
}

/// What a run did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunSummary {
    pub run_id: String,
    /// `None` when no cut has been published yet: nothing to do.
    pub cut: Option<Epoch>,
    pub views: Vec<ViewSummary>,
    pub files_read: usize,
    pub rows_read: u64,
    pub seconds: f64,
    /// Archive files left out because they could not be read (each view's
    /// manifest lists those of its topics).
    pub skipped: Vec<SkippedFile>,
}

impl RunSummary {
    pub fn rows_per_second(&self) -> f64 {
        if self.seconds > 0.0 {
            self.rows_read as f64 / self.seconds
        } else {
            0.0
        }
    }
}

/// Progress events, for a progress bar.
#[derive(Debug, Clone, PartialEq)]
pub enum Progress {
    /// A view's plan: this many archive files to read.
    Planned {
        view: String,
        files: usize,
        days: usize,
    },
    /// One archive file read.
    FileRead { view: String, rows: u64 },
    /// One snapshot day written.
    DayWritten { view: String, day: i64, rows: u64 },
    /// The view's manifest is published.
    Published { view: String },
}

/// Run the batch for every configured view (see the module docs).
pub async fn run_batch(
    cfg: &Config,
    store: Arc<dyn ObjectStore>,
    opts: RunOptions,
) -> Result<RunSummary, BatchError> {
    run_batch_with(cfg, store, opts, &|_| {}).await
}

/// Recompute one view over `[from_ms, to_ms)` now (plus whatever the
/// incremental rule requires), reporting progress.
pub async fn recompute(
    cfg: &Config,
    store: Arc<dyn ObjectStore>,
    view: &str,
    from_ms: i64,
    to_ms: i64,
    full: bool,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<RunSummary, BatchError> {
    if cfg.view(view).is_none() {
        return Err(BatchError::UnknownView(view.to_owned()));
    }
    let opts = RunOptions {
        full,
        views: Some(vec![view.to_owned()]),
        range_ms: Some((from_ms, to_ms)),
        ..RunOptions::default()
    };
    run_batch_with(cfg, store, opts, progress).await
}

/// A new run id: UTC time and a random suffix; sorts by time.
pub(crate) fn new_run_id() -> String {
    let now = chrono::Utc::now();
    format!(
        "{}-{:04x}",
        now.format("%Y%m%dT%H%M%S%.3fZ"),
        rand::random::<u16>()
    )
}

/// [`run_batch`] with a progress callback.
pub async fn run_batch_with(
    cfg: &Config,
    store: Arc<dyn ObjectStore>,
    opts: RunOptions,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<RunSummary, BatchError> {
    run_leased(cfg, store, opts, progress, None).await
}

/// [`run_batch_with`] under `lock`, when given: each manifest is published
/// only after the lock is confirmed still held ([`BatchLock::confirm`]).
pub(crate) async fn run_leased(
    cfg: &Config,
    store: Arc<dyn ObjectStore>,
    opts: RunOptions,
    progress: &(dyn Fn(Progress) + Send + Sync),
    lock: Option<&BatchLock>,
) -> Result<RunSummary, BatchError> {
    let started = Instant::now();
    let planned_ms = chrono::Utc::now().timestamp_millis();
    let run_id = new_run_id();
    let mut summary = RunSummary {
        run_id: run_id.clone(),
        ..RunSummary::default()
    };
    let Some((stored_cut, _)) = tally_store::cut::get(store.as_ref()).await? else {
        return Ok(summary);
    };
    let cut = stored_cut.cut();
    summary.cut = Some(cut);
    let (mut inputs, mut skipped) = inputs::list(&store, cut).await?;
    let views: Vec<&ViewDef> = match &opts.views {
        None => cfg.views.iter().collect(),
        Some(names) => names
            .iter()
            .map(|n| {
                cfg.view(n)
                    .ok_or_else(|| BatchError::UnknownView(n.clone()))
            })
            .collect::<Result<_, _>>()?,
    };
    let mut written_files = 0usize;
    for view in views {
        let vs = loop {
            let attempt = publish::run_view(
                &store,
                view,
                cut,
                &inputs,
                &skipped,
                &opts,
                &run_id,
                planned_ms,
                progress,
                &mut written_files,
                lock,
            )
            .await;
            // A file found corrupt inside the plan is left out like one
            // found unreadable when listed, and the view computed again
            // without it (views already done read their columns of it).
            match attempt {
                Err(BatchError::CorruptFile { path, reason }) => {
                    let Some(at) = inputs.iter().position(|i| i.path == path) else {
                        return Err(BatchError::CorruptFile { path, reason });
                    };
                    let bad = inputs.remove(at);
                    tracing::error!(%path, %reason, "archive file unreadable; left out of this run, tried again next run");
                    skipped.push(inputs::skipped_file(&bad.meta, reason));
                    skipped.sort_by(|a, b| a.path.cmp(&b.path));
                }
                other => break other?,
            }
        };
        summary.files_read += vs.files_read;
        summary.rows_read += vs.rows_read;
        summary.views.push(vs);
    }
    summary.seconds = started.elapsed().as_secs_f64();
    summary.skipped = skipped;
    Ok(summary)
}
