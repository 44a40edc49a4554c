//! The batch run: every view recomputed from the master dataset up to the cut,
//! and published atomically.
//!
//! A run reads the cut `E`, lists the archive files of epochs `< E`, and for
//! each view decides which event-time days to recompute: all of them when the
//! run is `full`, the view has no snapshot yet or its definition changed;
//! otherwise the days touched (per the files' footers) by files the previous
//! snapshot did not cover, or that were rewritten since it was planned, plus any
//! days asked for. Those days are recomputed from *all* files touching them;
//! the other days are carried forward by reference to the previous run's files.
//!
//! Per day set, rows are read (files decoding ahead of the fold) and
//! folded straight into per-group states, with the same extraction the speed
//! layer uses (`FieldPath::get`, `MeasureDef::input`, the view's filter):
//! count, sum, min and max through the shared monoid operations
//! (`Agg::add_num`); `distinct` as each group's HyperLogLog registers (index,
//! highest rank), written as Redis-compatible sketches byte for byte. Rows are
//! de-duplicated on `(topic, partition, offset)` as they are read: archive
//! files hold runs of consecutive offsets, so the offsets seen are a few
//! ranges per partition and the first copy of a record wins. Group keys are
//! dictionary codes: a row costs two small hash lookups and no allocation, and
//! memory grows with the number of groups, not of rows. (Polars did this as
//! a group-by over one row per event; BENCHMARKS.md, "Batch recompute", has
//! the before and after.)
//!
//! The fold runs in shards, one per core, each on a thread of its own:
//! partitions are spread over the shards by size, and each shard folds and
//! de-duplicates only its partitions' rows (de-duplication is per partition,
//! so no state is shared). A file that holds rows of partitions owned by
//! different shards (written by hand, not by the archiver) goes to each of
//! them. The shards' group states are then merged: count, sum, min and max by
//! the monoid (`Agg::merge`), registers by their maximum, keys through their
//! dimension texts, since each shard has its own dictionary codes.
//!
//! Publishing: the snapshot files are written first under a fresh run folder,
//! then the manifest in one conditional put. A run that dies before that put
//! leaves the previous manifest, and so the previous snapshot, serving; its
//! files are garbage-collected later. Old runs no manifest refers to are
//! deleted once older than `batch.gc_grace`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use arrow_array::builder::{
    BinaryBuilder, Decimal128Builder, Float64Builder, Int64Builder, StringBuilder, UInt64Builder,
};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Decimal128Array, Float64Array, Int32Array, Int64Array,
    ListArray, RecordBatch, StringArray, StructArray,
};
use arrow_schema::{DataType, Field, Schema};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore};
use rustc_hash::FxHashMap;
// `ParquetObjectReader` is deprecated in parquet 60 in favour of a hand-written
// `AsyncFileReader`; it still does what we need (ranged reads, footer only).
#[allow(deprecated)]
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::arrow::{AsyncArrowWriter, ParquetRecordBatchStreamBuilder, ProjectionMask};
use std::borrow::Cow;
use tally_core::agg::{Agg, AggKind};
use tally_core::config::Config;
use tally_core::event::{Event, Scalar};
use tally_core::hll::{murmurhash64a, redis_bytes_of, Hll, P, REGISTERS};
use tally_core::manifest::{columns, CutFile, DayFile, InputFile, Manifest, ManifestV2};
use tally_core::paths;
use tally_core::time::{day_of, Epoch};
use tally_core::view::{FieldPath, Input, ScalarRef, ViewDef};

use crate::archive_file::{self, FileError};
use crate::store::{self, StoreError};

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
    #[error(transparent)]
    File(#[from] FileError),
    #[error("archive file `{0}` has no `tally.days` footer metadata")]
    NoDays(String),
    #[error("view `{0}` is not configured")]
    UnknownView(String),
    #[error("view `{0}`: another run published first")]
    Conflict(String),
    #[error("another batch run holds the lock (owner {owner}, until {until_ms})")]
    Locked { owner: String, until_ms: i64 },
    #[error("reading an archive file: {0}")]
    Task(String),
    #[error("simulated crash (test hook)")]
    Crashed,
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
    /// Testing and benchmarks: fold in this many shards (default: the
    /// available parallelism, at most one per partition).
    #[doc(hidden)]
    pub fold_shards: Option<usize>,
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
pub fn new_run_id() -> String {
    let now = chrono::Utc::now();
    format!(
        "{}-{:04x}",
        now.format("%Y%m%dT%H%M%S%.3fZ"),
        rand::random::<u16>()
    )
}

/// An archive file of an epoch below the cut.
#[derive(Debug, Clone)]
struct Input0 {
    path: String,
    topic: String,
    /// The partition the file is named after (its rows' partition, unless
    /// the file was written by hand).
    partition: i32,
    meta: ObjectMeta,
    days: Vec<i64>,
    /// The footer's last offset.
    last_offset: Option<i64>,
}

impl Input0 {
    /// What the manifest records of this input.
    fn record(&self) -> InputFile {
        InputFile {
            path: self.path.clone(),
            size: self.meta.size,
            e_tag: self.meta.e_tag.clone(),
            last_offset: self.last_offset,
        }
    }
}

/// [`run_batch`] with a progress callback.
pub async fn run_batch_with(
    cfg: &Config,
    store: Arc<dyn ObjectStore>,
    opts: RunOptions,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<RunSummary, BatchError> {
    let started = Instant::now();
    let planned_ms = chrono::Utc::now().timestamp_millis();
    let run_id = new_run_id();
    let mut summary = RunSummary {
        run_id: run_id.clone(),
        ..RunSummary::default()
    };
    let Some((CutFile::V1 { cut, .. }, _)) =
        store::get_json::<CutFile>(store.as_ref(), paths::CUT).await?
    else {
        return Ok(summary);
    };
    summary.cut = Some(cut);
    let inputs = list_inputs(&store, cut).await?;
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
        let vs = run_view(
            cfg,
            &store,
            view,
            cut,
            &inputs,
            &opts,
            &run_id,
            planned_ms,
            progress,
            &mut written_files,
        )
        .await?;
        summary.files_read += vs.files_read;
        summary.rows_read += vs.rows_read;
        summary.views.push(vs);
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Archive files of epochs `< cut`, with the days each touches.
async fn list_inputs(store: &Arc<dyn ObjectStore>, cut: Epoch) -> Result<Vec<Input0>, BatchError> {
    let metas = store::list(store.as_ref(), paths::EVENTS_ROOT).await?;
    let candidates: Vec<(ObjectMeta, paths::ArchiveFile)> = metas
        .into_iter()
        .filter_map(|m| {
            let f = paths::parse_archive_file(m.location.as_ref())?;
            (f.epoch < cut).then_some((m, f))
        })
        .collect();
    let mut out: Vec<Input0> = futures::stream::iter(candidates.into_iter().map(|(meta, f)| {
        let store = store.clone();
        async move {
            let path = meta.location.to_string();
            #[allow(deprecated)]
            let reader =
                ParquetObjectReader::new(store, meta.location.clone()).with_file_size(meta.size);
            let builder = ParquetRecordBatchStreamBuilder::new(reader).await?;
            let days = archive_file::days_of(builder.metadata())
                .ok_or_else(|| BatchError::NoDays(path.clone()))?;
            let last_offset = archive_file::last_offset_in(builder.metadata());
            Ok::<_, BatchError>(Input0 {
                path,
                topic: f.topic,
                partition: f.partition,
                meta,
                days,
                last_offset,
            })
        }
    }))
    .buffer_unordered(16)
    .try_collect()
    .await?;
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
async fn run_view(
    cfg: &Config,
    store: &Arc<dyn ObjectStore>,
    view: &ViewDef,
    cut: Epoch,
    all_inputs: &[Input0],
    opts: &RunOptions,
    run_id: &str,
    planned_ms: i64,
    progress: &(dyn Fn(Progress) + Send + Sync),
    written_files: &mut usize,
) -> Result<ViewSummary, BatchError> {
    let _ = cfg;
    let mpath = paths::manifest(&view.name);
    let prev = store::get_json::<Manifest>(store.as_ref(), &mpath).await?;
    let fingerprint = view.fingerprint();
    let inputs: Vec<&Input0> = all_inputs
        .iter()
        .filter(|i| view.topics.is_empty() || view.topics.contains(&i.topic))
        .collect();
    let prev_m = prev
        .as_ref()
        .map(|(m, _)| m.clone().into_current(view.granularity.as_ms()));
    // The levels this run writes: the view's granularity only, so far.
    let levels = [view.granularity];
    let full = opts.full
        || prev_m.as_ref().is_none_or(|p| {
            p.definition != fingerprint
                || p.levels_ms != levels.iter().map(|g| g.as_ms()).collect::<Vec<_>>()
        });
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
    if let Some((from, to)) = opts.range_ms {
        if to > from {
            let (a, b) = (day_of(from), day_of(to - 1));
            for i in &inputs {
                days.extend(i.days.iter().copied().filter(|d| (a..=b).contains(d)));
            }
        }
    }
    let to_read: Vec<&Input0> = inputs
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
        ..ViewSummary::default()
    };
    // Extract, de-duplicate and aggregate the days to recompute, in shards
    // by partition on threads of their own, then merge the shards' groups.
    let shards = opts.fold_shards.unwrap_or_else(|| {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    });
    let (rows, n) = fold_files(store, view, &days, &to_read, shards, progress).await?;
    vs.rows_read = n;
    let groups = aggregate(view, rows)?;

    // Write one file per day.
    let mut by_day: BTreeMap<i64, Vec<Group>> = BTreeMap::new();
    for g in groups {
        by_day.entry(day_of(g.bucket)).or_default().push(g);
    }
    let mut new_days: Vec<DayFile> = Vec::new();
    for (day, mut groups) in by_day {
        groups.sort_by(|a, b| (a.bucket, &a.dims).cmp(&(b.bucket, &b.dims)));
        let path = paths::snapshot_file(&view.name, run_id, view.granularity, day);
        write_snapshot(store.clone(), &path, view, &groups).await?;
        *written_files += 1;
        if opts.crash_after_files.is_some_and(|n| *written_files >= n) {
            return Err(BatchError::Crashed);
        }
        vs.rows_written += groups.len() as u64;
        progress(Progress::DayWritten {
            view: view.name.clone(),
            day,
            rows: groups.len() as u64,
        });
        new_days.push(DayFile {
            day,
            level_ms: Some(view.granularity.as_ms()),
            path,
            rows: groups.len() as u64,
            bytes: None,
        });
    }
    vs.days_recomputed = days.len();
    // Carry the other days forward.
    let mut all_days = new_days;
    if !full {
        if let Some(p) = &prev_m {
            for d in &p.days {
                if !days.contains(&d.day) {
                    all_days.push(d.clone());
                    vs.days_carried += 1;
                }
            }
        }
    }
    all_days.sort_by_key(|d| (d.day, d.level_ms));
    let manifest = Manifest::V2(ManifestV2 {
        view: view.name.clone(),
        run_id: run_id.to_owned(),
        cut,
        definition: fingerprint,
        created_ms: planned_ms,
        levels_ms: levels.iter().map(|g| g.as_ms()).collect(),
        days: all_days,
        inputs: inputs.iter().map(|i| i.record()).collect(),
        rows_read: vs.rows_read,
    });
    match store::put_json_if(
        store.as_ref(),
        &mpath,
        &manifest,
        prev.as_ref().map(|(_, v)| v),
    )
    .await
    {
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

/// The columns a recompute reads from one archive file (not the raw bytes).
async fn read_columns(
    store: Arc<dyn ObjectStore>,
    path: String,
    size: u64,
) -> Result<Vec<RecordBatch>, BatchError> {
    #[allow(deprecated)]
    let reader = ParquetObjectReader::new(store, Path::from(path.as_str())).with_file_size(size);
    let builder = ParquetRecordBatchStreamBuilder::new(reader).await?;
    let wanted = [
        "topic",
        "partition",
        "offset",
        "reject",
        "event_id",
        "event_type",
        "time_ms",
        "user_id",
        "props",
    ];
    let roots: Vec<usize> = builder
        .schema()
        .fields()
        .iter()
        .enumerate()
        .filter(|(_, f)| wanted.contains(&f.name().as_str()))
        .map(|(i, _)| i)
        .collect();
    let mask = ProjectionMask::roots(builder.parquet_schema(), roots);
    // Larger batches than the default 1,024 rows: fewer, larger allocations
    // and less per-batch work in the fold.
    let stream = builder
        .with_projection(mask)
        .with_batch_size(16 * 1024)
        .build()?;
    Ok(stream.try_collect().await?)
}

/// A decoded archive file on its way to a fold shard.
#[derive(Debug)]
struct Job {
    batches: Arc<Vec<RecordBatch>>,
    path: Arc<str>,
    /// Fold only rows of these partitions (a file holding rows of partitions
    /// owned by different shards goes to each of them); all rows when `None`.
    only: Option<Arc<[i32]>>,
}

/// Read `to_read` and fold the rows of `days` into groups, in `shards`
/// shards by partition (at most one per partition). De-duplication is per
/// partition, so each shard de-duplicates its own rows, and the shards' group
/// states merge like the monoid they are. Returns the groups and the number
/// of rows read.
async fn fold_files(
    store: &Arc<dyn ObjectStore>,
    view: &ViewDef,
    days: &BTreeSet<i64>,
    to_read: &[&Input0],
    shards: usize,
    progress: &(dyn Fn(Progress) + Send + Sync),
) -> Result<(Extracted, u64), BatchError> {
    let mut plan = ShardPlan::new(shards, to_read);
    let view_arc = Arc::new(view.clone());
    let days = Arc::new(days.clone());
    let mut senders = Vec::new();
    let mut folds = Vec::new();
    for _ in 0..plan.shards() {
        // Two files queued per shard: enough to keep each fold busy while
        // the next is decoded, without holding many decoded files.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Job>(2);
        let (view, days) = (view_arc.clone(), days.clone());
        folds.push(tokio::task::spawn_blocking(move || {
            let mut x = Extracted::new(view);
            while let Some(job) = rx.blocking_recv() {
                x.push_file(&job.batches, &days, &job.path, job.only.as_deref())?;
            }
            Ok::<_, BatchError>(x)
        }));
        senders.push(tx);
    }
    // Files are decoded by tasks ahead of the folds, in listing order.
    let jobs: Vec<(String, u64)> = to_read
        .iter()
        .map(|i| (i.path.clone(), i.meta.size))
        .collect();
    let mut files = futures::stream::iter(jobs.into_iter().map(|(path, size)| {
        let store = store.clone();
        async move {
            tokio::spawn(read_columns(store, path, size))
                .await
                .map_err(|e| BatchError::Task(e.to_string()))?
        }
    }))
    .buffered(plan.shards() + 1);
    let mut rows = 0u64;
    let dispatched = async {
        let mut next = to_read.iter();
        while let Some(batches) = files.try_next().await? {
            let Some(i) = next.next() else { break };
            let n: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
            let batches = Arc::new(batches);
            let path: Arc<str> = Arc::from(i.path.as_str());
            for (shard, only) in plan.route(i, &batches)? {
                let job = Job {
                    batches: batches.clone(),
                    path: path.clone(),
                    only,
                };
                if senders[shard].send(job).await.is_err() {
                    // That fold stopped on an error, reported when joined.
                    return Ok(());
                }
            }
            rows += n;
            progress(Progress::FileRead {
                view: view.name.clone(),
                rows: n,
            });
        }
        Ok::<_, BatchError>(())
    }
    .await;
    drop(files);
    drop(senders);
    let mut error = dispatched.err();
    let mut done = Vec::new();
    for f in folds {
        match f.await {
            Ok(Ok(x)) => done.push(x),
            Ok(Err(e)) => {
                error.get_or_insert(e);
            }
            Err(e) => {
                error.get_or_insert(BatchError::Task(e.to_string()));
            }
        }
    }
    if let Some(e) = error {
        return Err(e);
    }
    // Merge into the shard with the most groups: the fewest insertions.
    done.sort_by_key(|x| std::cmp::Reverse(x.groups()));
    let mut done = done.into_iter();
    let mut all = done
        .next()
        .unwrap_or_else(|| Extracted::new(view_arc.clone()));
    if done.len() > 0 {
        all = tokio::task::spawn_blocking(move || {
            for x in done {
                all.absorb(x);
            }
            all
        })
        .await
        .map_err(|e| BatchError::Task(e.to_string()))?;
    }
    Ok((all, rows))
}

/// A shard a file goes to, and the partitions it takes from it (`None`: all).
type Route = (usize, Option<Arc<[i32]>>);

/// Which fold shard takes the rows of which partition. Partitions named by
/// the files are spread up front by size (largest first, to the least loaded
/// shard); a partition first met inside a file goes to the least loaded
/// shard then. A partition never changes shard, so its de-duplication state
/// is in one place.
#[derive(Debug)]
struct ShardPlan {
    owner: HashMap<i32, usize>,
    /// Bytes of archive files assigned to each shard.
    load: Vec<u64>,
    /// Reused: the partitions of the file being routed.
    parts: Vec<i32>,
}

impl ShardPlan {
    fn new(shards: usize, files: &[&Input0]) -> Self {
        let mut bytes: BTreeMap<i32, u64> = BTreeMap::new();
        for f in files {
            *bytes.entry(f.partition).or_default() += f.meta.size;
        }
        let shards = shards.min(bytes.len()).max(1);
        let mut by_size: Vec<(i32, u64)> = bytes.into_iter().collect();
        by_size.sort_by_key(|&(p, b)| (std::cmp::Reverse(b), p));
        let mut plan = ShardPlan {
            owner: HashMap::new(),
            load: vec![0; shards],
            parts: Vec::new(),
        };
        for (p, b) in by_size {
            plan.assign(p, b);
        }
        plan
    }

    fn shards(&self) -> usize {
        self.load.len()
    }

    fn assign(&mut self, partition: i32, bytes: u64) -> usize {
        if let Some(&s) = self.owner.get(&partition) {
            return s;
        }
        let s = (0..self.load.len())
            .min_by_key(|&s| self.load[s])
            .unwrap_or(0);
        self.load[s] += bytes;
        self.owner.insert(partition, s);
        s
    }

    /// The shards a decoded file goes to, each with the partitions it takes
    /// from it (`None`: all rows). Usually one shard and all rows: an archive
    /// file holds one partition.
    fn route(&mut self, file: &Input0, batches: &[RecordBatch]) -> Result<Vec<Route>, BatchError> {
        self.parts.clear();
        for b in batches {
            let col = b
                .column_by_name("partition")
                .and_then(|c| c.as_any().downcast_ref::<Int32Array>())
                .ok_or_else(|| malformed(&file.path, "partition"))?;
            let mut last = None;
            for p in col.iter().flatten() {
                if last != Some(p) && !self.parts.contains(&p) {
                    self.parts.push(p);
                }
                last = Some(p);
            }
        }
        let owned = file.meta.size / self.parts.len().max(1) as u64;
        let mut parts = std::mem::take(&mut self.parts);
        let shards: Vec<usize> = parts.iter().map(|&p| self.assign(p, owned)).collect();
        let out = match shards.first() {
            None => vec![(self.assign(file.partition, 0), None)],
            Some(&s) if shards.iter().all(|&x| x == s) => vec![(s, None)],
            Some(_) => {
                let mut out: Vec<Route> = Vec::new();
                let mut targets: Vec<usize> = shards.clone();
                targets.sort_unstable();
                targets.dedup();
                for t in targets {
                    let only: Vec<i32> = parts
                        .iter()
                        .zip(&shards)
                        .filter(|&(_, &s)| s == t)
                        .map(|(&p, _)| p)
                        .collect();
                    out.push((t, Some(Arc::from(only))));
                }
                out
            }
        };
        parts.clear();
        self.parts = parts;
        Ok(out)
    }
}

/// One aggregated row of a snapshot.
#[derive(Debug, Clone)]
struct Group {
    bucket: i64,
    dims: Vec<Option<String>>,
    /// One state per measure. A distinct measure's state is kept as its Redis
    /// encoding in `sketches` instead (building an [`Hll`] only to encode it
    /// again costs a pass over all 16,384 registers per group).
    aggs: Vec<Agg>,
    /// Per measure: the Redis encoding of a distinct measure's sketch, exactly
    /// what [`Hll::to_redis_bytes`] gives for its registers; empty otherwise.
    sketches: Vec<Vec<u8>>,
}

/// Marks an absent dimension value in a group key.
const ABSENT: u32 = u32::MAX;

/// The distinct texts of one dimension, each given a code: group keys are
/// short integer arrays, and each text is stored once however many rows have it.
#[derive(Debug, Default)]
struct Dict {
    codes: FxHashMap<String, u32>,
    values: Vec<String>,
}

impl Dict {
    fn code(&mut self, text: &str) -> u32 {
        if let Some(&c) = self.codes.get(text) {
            return c;
        }
        let c = self.values.len() as u32;
        self.values.push(text.to_owned());
        self.codes.insert(text.to_owned(), c);
        c
    }
}

/// Offsets of one partition already read: sorted, disjoint, inclusive ranges.
/// Archive files hold runs of consecutive offsets, so this stays a handful of
/// ranges however many records there are.
#[derive(Debug, Default)]
struct Seen {
    ranges: Vec<(i64, i64)>,
    /// The range extended last: where the next offset usually goes.
    last: usize,
}

impl Seen {
    /// Record `o`; false if it was already recorded (a duplicate record).
    fn insert(&mut self, o: i64) -> bool {
        if let Some(r) = self.ranges.get(self.last) {
            let next_start = self.ranges.get(self.last + 1).map_or(i64::MAX, |n| n.0);
            if r.1.checked_add(1) == Some(o) && o.saturating_add(1) < next_start {
                self.ranges[self.last].1 = o;
                return true;
            }
        }
        let i = self.ranges.partition_point(|r| r.1 < o);
        if self.ranges.get(i).is_some_and(|r| r.0 <= o) {
            return false;
        }
        let joins_prev = i > 0 && self.ranges[i - 1].1.checked_add(1) == Some(o);
        let joins_next = self
            .ranges
            .get(i)
            .is_some_and(|r| o.checked_add(1) == Some(r.0));
        match (joins_prev, joins_next) {
            (true, true) => {
                self.ranges[i - 1].1 = self.ranges[i].1;
                self.ranges.remove(i);
                self.last = i - 1;
            }
            (true, false) => {
                self.ranges[i - 1].1 = o;
                self.last = i - 1;
            }
            (false, true) => {
                self.ranges[i].0 = o;
                self.last = i;
            }
            (false, false) => {
                self.ranges.insert(i, (o, o));
                self.last = i;
            }
        }
        true
    }
}

/// The HyperLogLog registers of one distinct measure of one group, as
/// `(index << 8) | rank` entries (unsorted past `sorted`, compacted in
/// batches) while few, one byte per register once many.
#[derive(Debug, Clone)]
enum Regs {
    Sparse { entries: Vec<u32>, sorted: usize },
    Dense(Box<[u8]>),
}

/// Past this many registers a group's sketch is kept dense.
const DENSE_AT: usize = 2048;

impl Default for Regs {
    fn default() -> Self {
        Regs::Sparse {
            entries: Vec::new(),
            sorted: 0,
        }
    }
}

impl Regs {
    fn add(&mut self, index: u32, rank: u32) {
        match self {
            Regs::Dense(regs) => {
                let r = &mut regs[index as usize];
                *r = (*r).max(rank as u8);
            }
            Regs::Sparse { entries, sorted } => {
                entries.push((index << 8) | rank);
                if entries.len() >= (*sorted * 2).max(16) {
                    compact(entries);
                    *sorted = entries.len();
                    if entries.len() > DENSE_AT {
                        let mut regs = vec![0u8; REGISTERS].into_boxed_slice();
                        for &e in entries.iter() {
                            regs[(e >> 8) as usize] = (e & 0xff) as u8;
                        }
                        *self = Regs::Dense(regs);
                    }
                }
            }
        }
    }

    /// The register-wise maximum with `other` (the sketch of the union).
    fn merge(&mut self, other: Regs) {
        for (index, rank) in other.into_pairs() {
            self.add(index, rank);
        }
    }

    /// Non-zero registers as `(index, rank)`, sorted by index.
    fn into_pairs(self) -> Vec<(u32, u32)> {
        match self {
            Regs::Sparse { mut entries, .. } => {
                compact(&mut entries);
                entries.iter().map(|&e| (e >> 8, e & 0xff)).collect()
            }
            Regs::Dense(regs) => regs
                .iter()
                .enumerate()
                .filter(|(_, &r)| r != 0)
                .map(|(i, &r)| (i as u32, u32::from(r)))
                .collect(),
        }
    }
}

/// Sort entries and keep the highest rank per register.
fn compact(entries: &mut Vec<u32>) {
    entries.sort_unstable();
    let mut w = 0;
    for i in 0..entries.len() {
        let e = entries[i];
        if w > 0 && entries[w - 1] >> 8 == e >> 8 {
            entries[w - 1] = e; // sorted ascending: the later rank is the larger
        } else {
            entries[w] = e;
            w += 1;
        }
    }
    entries.truncate(w);
}

/// Per-measure columns (one value per group, in key order), taken to be
/// consumed group by group.
fn drain_columns<T>(columns: &mut [Vec<T>]) -> Vec<std::vec::IntoIter<T>> {
    columns
        .iter_mut()
        .map(|c| std::mem::take(c).into_iter())
        .collect()
}

/// A sketch from `(register, value)` pairs, through the Redis encoding.
#[cfg(test)]
fn hll_from_registers(regs: &[(u32, u32)]) -> Hll {
    Hll::from_redis_bytes(&redis_bytes_of(regs)).unwrap_or_default()
}

/// One view's aggregation over the archive rows of the days to recompute:
/// rows are folded straight into per-group states as they are read.
struct Extracted {
    view: Arc<ViewDef>,
    filter: Vec<(FieldPath, Vec<String>)>,
    topics: Vec<String>,
    /// Offsets taken so far per (topic index, partition): the de-duplication.
    seen: Vec<((u32, i32), Seen)>,
    dicts: Vec<Dict>,
    /// Group key (bucket as two words, then one code per dimension) to group id.
    index: FxHashMap<Vec<u32>, u32>,
    /// The same for keys of up to four words (up to two dimensions), packed
    /// into one integer: no allocation per group, no pointer to chase per row.
    packed: FxHashMap<u128, u32>,
    /// The number of groups.
    n: usize,
    /// Group keys by id, `2 + dimensions` words each.
    keys: Vec<u32>,
    /// Per measure, per group id: the state (distinct measures: unused).
    aggs: Vec<Vec<Agg>>,
    /// Per measure, per group id: the registers (distinct measures only).
    regs: Vec<Vec<Regs>>,
    key: Vec<u32>,
    text: String,
}

impl Extracted {
    fn new(view: Arc<ViewDef>) -> Self {
        let m = view.measures.len();
        Extracted {
            filter: view.parsed_filter(),
            topics: Vec::new(),
            seen: Vec::new(),
            dicts: (0..view.dimensions.len())
                .map(|_| Dict::default())
                .collect(),
            view,
            index: FxHashMap::default(),
            packed: FxHashMap::default(),
            n: 0,
            keys: Vec::new(),
            aggs: vec![Vec::new(); m],
            regs: vec![Vec::new(); m],
            key: Vec::new(),
            text: String::new(),
        }
    }

    fn groups(&self) -> usize {
        self.n
    }

    /// Fold one file's record batches in, keeping valid events of `days` the
    /// view accepts, and only rows of the partitions in `only` if given.
    fn push_file(
        &mut self,
        batches: &[RecordBatch],
        days: &BTreeSet<i64>,
        path: &str,
        only: Option<&[i32]>,
    ) -> Result<(), BatchError> {
        for b in batches {
            self.push_batch(b, days, path, only)?;
        }
        Ok(())
    }

    fn push_batch(
        &mut self,
        b: &RecordBatch,
        days: &BTreeSet<i64>,
        path: &str,
        only: Option<&[i32]>,
    ) -> Result<(), BatchError> {
        let bad = |c: &str| FileError::Malformed {
            path: path.to_owned(),
            problem: format!("column `{c}` is missing or mistyped"),
        };
        macro_rules! column {
            ($name:literal, $ty:ty) => {
                b.column_by_name($name)
                    .and_then(|c| c.as_any().downcast_ref::<$ty>())
                    .ok_or_else(|| bad($name))?
            };
        }
        let topic = column!("topic", StringArray);
        let partition = column!("partition", Int32Array);
        let offset = column!("offset", Int64Array);
        let reject = column!("reject", StringArray);
        let event_id = column!("event_id", StringArray);
        let event_type = column!("event_type", StringArray);
        let time_ms = column!("time_ms", Int64Array);
        let user_id = column!("user_id", StringArray);
        let props = column!("props", ListArray);
        let pv = props
            .values()
            .as_any()
            .downcast_ref::<StructArray>()
            .ok_or_else(|| bad("props"))?;
        let key = pv
            .column(0)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| bad("props.key"))?;
        let pstr = pv
            .column(1)
            .as_any()
            .downcast_ref::<StringArray>()
            .ok_or_else(|| bad("props.str"))?;
        let pint = pv
            .column(2)
            .as_any()
            .downcast_ref::<Int64Array>()
            .ok_or_else(|| bad("props.int"))?;
        let pflt = pv
            .column(3)
            .as_any()
            .downcast_ref::<Float64Array>()
            .ok_or_else(|| bad("props.float"))?;
        let pbool = pv
            .column(4)
            .as_any()
            .downcast_ref::<BooleanArray>()
            .ok_or_else(|| bad("props.bool"))?;
        let gran = self.view.granularity;
        let offsets = props.value_offsets();
        // Reused for every row: the properties of the row's event.
        let mut properties: Vec<(Cow<'_, str>, Scalar<'_>)> = Vec::new();
        let mut last_day = (i64::MIN, false);
        let mut seen_at = usize::MAX;
        for r in 0..b.num_rows() {
            // De-duplicate on (topic, partition, offset): the first copy read
            // is kept. Copies are the same record, so which one does not matter.
            let tp = topic.value(r);
            let p = partition.value(r);
            if only.is_some_and(|o| !o.contains(&p)) {
                continue; // another shard's partition
            }
            let fresh = match self.seen.get(seen_at) {
                Some(((t, sp), _)) if *sp == p && self.topics[*t as usize] == tp => {
                    self.seen[seen_at].1.insert(offset.value(r))
                }
                _ => {
                    let ti = self.topic_index(tp);
                    seen_at = match self.seen.iter().position(|(k, _)| *k == (ti, p)) {
                        Some(i) => i,
                        None => {
                            self.seen.push(((ti, p), Seen::default()));
                            self.seen.len() - 1
                        }
                    };
                    self.seen[seen_at].1.insert(offset.value(r))
                }
            };
            if !fresh
                || reject.is_valid(r)
                || time_ms.is_null(r)
                || event_id.is_null(r)
                || event_type.is_null(r)
            {
                continue;
            }
            let t = time_ms.value(r);
            let day = day_of(t);
            if day != last_day.0 {
                last_day = (day, days.contains(&day));
            }
            if !last_day.1 {
                continue;
            }
            let (s, e) = (offsets[r] as usize, offsets[r + 1] as usize);
            properties.clear();
            for j in s..e {
                let v = if pstr.is_valid(j) {
                    Scalar::Str(Cow::Borrowed(pstr.value(j)))
                } else if pint.is_valid(j) {
                    Scalar::Int(pint.value(j))
                } else if pflt.is_valid(j) {
                    Scalar::Float(pflt.value(j))
                } else if pbool.is_valid(j) {
                    Scalar::Bool(pbool.value(j))
                } else {
                    Scalar::Null
                };
                properties.push((Cow::Borrowed(key.value(j)), v));
            }
            let event = Event {
                event_id: Cow::Borrowed(event_id.value(r)),
                event_type: Cow::Borrowed(event_type.value(r)),
                time_ms: t,
                user_id: user_id.is_valid(r).then(|| Cow::Borrowed(user_id.value(r))),
                properties: std::mem::take(&mut properties),
            };
            if self
                .view
                .accepts_with(tp, &event, &self.filter, &mut self.text)
            {
                self.fold(gran.bucket(t), &event);
            }
            properties = event.properties;
        }
        Ok(())
    }

    fn topic_index(&mut self, tp: &str) -> u32 {
        match self.topics.iter().position(|x| x == tp) {
            Some(i) => i as u32,
            None => {
                self.topics.push(tp.to_owned());
                (self.topics.len() - 1) as u32
            }
        }
    }

    /// The id of the group whose key is in `self.key`, created if new.
    fn group(&mut self) -> usize {
        let g = self.n as u32;
        if self.key.len() <= 4 {
            let packed = self
                .key
                .iter()
                .fold(0u128, |acc, &w| (acc << 32) | u128::from(w));
            match self.packed.entry(packed) {
                std::collections::hash_map::Entry::Occupied(e) => return *e.get() as usize,
                std::collections::hash_map::Entry::Vacant(e) => e.insert(g),
            };
        } else {
            if let Some(&g) = self.index.get(self.key.as_slice()) {
                return g as usize;
            }
            self.index.insert(self.key.clone(), g);
        }
        self.n += 1;
        let g = g as usize;
        self.keys.extend_from_slice(&self.key);
        for (k, m) in self.view.measures.iter().enumerate() {
            if m.agg == AggKind::Distinct {
                self.regs[k].push(Regs::default());
            } else {
                self.aggs[k].push(Agg::empty(m.agg));
            }
        }
        g
    }

    /// Merge another shard's groups in. Dictionary codes are per shard, so
    /// the other's keys are translated through their texts first (a few
    /// hundred texts, against a million groups).
    fn absorb(&mut self, other: Extracted) {
        let width = 2 + self.view.dimensions.len();
        let Extracted {
            keys,
            dicts,
            mut aggs,
            mut regs,
            ..
        } = other;
        let codes: Vec<Vec<u32>> = dicts
            .iter()
            .zip(&mut self.dicts)
            .map(|(theirs, ours)| theirs.values.iter().map(|v| ours.code(v)).collect())
            .collect();
        let (mut aggs, mut regs) = (drain_columns(&mut aggs), drain_columns(&mut regs));
        let view = self.view.clone();
        for key in keys.chunks_exact(width) {
            self.key.clear();
            self.key.extend_from_slice(&key[..2]);
            for (&c, map) in key[2..].iter().zip(&codes) {
                self.key
                    .push(if c == ABSENT { ABSENT } else { map[c as usize] });
            }
            let g = self.group();
            for (k, m) in view.measures.iter().enumerate() {
                if m.agg == AggKind::Distinct {
                    if let Some(r) = regs[k].next() {
                        self.regs[k][g].merge(r);
                    }
                } else if let Some(a) = aggs[k].next() {
                    self.aggs[k][g].merge(&a);
                }
            }
        }
    }

    /// Fold one accepted event into its group.
    fn fold(&mut self, bucket: i64, event: &Event<'_>) {
        self.key.clear();
        self.key.push((bucket >> 32) as u32);
        self.key.push(bucket as u32);
        for (d, dim) in self.view.dimensions.iter().enumerate() {
            let code = match dim.get(event) {
                None => ABSENT,
                Some(ScalarRef::Str(s)) => self.dicts[d].code(s),
                Some(v) => {
                    self.text.clear();
                    v.write_text(&mut self.text);
                    self.dicts[d].code(&self.text)
                }
            };
            self.key.push(code);
        }
        let g = self.group();
        for (k, m) in self.view.measures.iter().enumerate() {
            let Some(input) = m.input(event) else {
                continue;
            };
            if m.agg == AggKind::Distinct {
                let (x, r) = match input {
                    Input::Key(ScalarRef::Str(s)) => pattern(s.as_bytes()),
                    Input::Key(v) => {
                        self.text.clear();
                        v.write_text(&mut self.text);
                        pattern(self.text.as_bytes())
                    }
                    Input::Num(n) => pattern(tally_core::agg::num_text(n).as_bytes()),
                    Input::One => continue,
                };
                self.regs[k][g].add(x, r);
                continue;
            }
            match (input, &mut self.aggs[k][g]) {
                (Input::One, Agg::Count(c)) => *c += 1,
                (Input::Num(n), agg) => agg.add_num(n),
                _ => {}
            }
        }
    }
}

/// Register index and rank of an element, as Redis's `hllPatLen` (and
/// [`Hll::add`]) computes them.
pub fn pattern(value: &[u8]) -> (u32, u32) {
    let hash = murmurhash64a(value, 0xadc8_3b19);
    let index = (hash & (REGISTERS as u64 - 1)) as u32;
    let rest = (hash >> P) | (1u64 << (64 - P));
    (index, rest.trailing_zeros() + 1)
}

/// The groups of a finished aggregation, with their keys decoded.
fn aggregate(view: &ViewDef, x: Extracted) -> Result<Vec<Group>, BatchError> {
    let n = x.groups();
    let width = 2 + view.dimensions.len();
    let Extracted {
        keys,
        dicts,
        mut aggs,
        mut regs,
        ..
    } = x;
    let (mut aggs, mut regs) = (drain_columns(&mut aggs), drain_columns(&mut regs));
    let mut groups = Vec::with_capacity(n);
    for key in keys.chunks_exact(width) {
        let bucket = (i64::from(key[0]) << 32) | i64::from(key[1]);
        let dims = key[2..]
            .iter()
            .zip(&dicts)
            .map(|(&c, d)| (c != ABSENT).then(|| d.values[c as usize].clone()))
            .collect();
        let mut g = Group {
            bucket,
            dims,
            aggs: Vec::with_capacity(view.measures.len()),
            sketches: vec![Vec::new(); view.measures.len()],
        };
        for (k, m) in view.measures.iter().enumerate() {
            if m.agg == AggKind::Distinct {
                let pairs = regs[k].next().unwrap_or_default().into_pairs();
                g.sketches[k] = redis_bytes_of(&pairs);
                g.aggs.push(Agg::empty(AggKind::Distinct));
            } else {
                g.aggs
                    .push(aggs[k].next().unwrap_or_else(|| Agg::empty(m.agg)));
            }
        }
        groups.push(g);
    }
    Ok(groups)
}

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

async fn write_snapshot(
    store: Arc<dyn ObjectStore>,
    path: &str,
    view: &ViewDef,
    groups: &[Group],
) -> Result<(), BatchError> {
    let schema = snapshot_schema(view);
    let mut cols: Vec<ArrayRef> = Vec::new();
    let mut b = Int64Builder::new();
    for g in groups {
        b.append_value(g.bucket);
    }
    cols.push(Arc::new(b.finish()));
    for d in 0..view.dimensions.len() {
        let mut s = StringBuilder::new();
        for g in groups {
            s.append_option(g.dims[d].as_deref());
        }
        cols.push(Arc::new(s.finish()));
    }
    for (k, m) in view.measures.iter().enumerate() {
        match m.agg {
            AggKind::Count => {
                let mut c = UInt64Builder::new();
                for g in groups {
                    c.append_value(match g.aggs[k] {
                        Agg::Count(n) => n,
                        _ => 0,
                    });
                }
                cols.push(Arc::new(c.finish()));
            }
            AggKind::Sum => {
                let mut i = Decimal128Builder::new().with_data_type(SUM_INT_TYPE);
                let mut f = Float64Builder::new();
                for g in groups {
                    let (a, b) = match g.aggs[k] {
                        Agg::Sum { int, float } => (int, float),
                        _ => (0, 0.0),
                    };
                    i.append_value(a);
                    f.append_value(b);
                }
                cols.push(Arc::new(i.finish()));
                cols.push(Arc::new(f.finish()));
            }
            AggKind::Min | AggKind::Max => {
                let mut f = Float64Builder::new();
                for g in groups {
                    f.append_option(match g.aggs[k] {
                        Agg::Min(v) | Agg::Max(v) => v,
                        _ => None,
                    });
                }
                cols.push(Arc::new(f.finish()));
            }
            AggKind::Distinct => {
                let mut h = BinaryBuilder::new();
                for g in groups {
                    match (&g.sketches[k], &g.aggs[k]) {
                        (bytes, _) if !bytes.is_empty() => h.append_value(bytes),
                        (_, Agg::Distinct(s)) => h.append_value(s.to_redis_bytes()),
                        _ => h.append_value(Hll::new().to_redis_bytes()),
                    }
                }
                cols.push(Arc::new(h.finish()));
            }
        }
    }
    let batch = RecordBatch::try_new(schema.clone(), cols)?;
    let out = object_store::buffered::BufWriter::new(store, Path::from(path));
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let mut w = AsyncArrowWriter::try_new(out, schema, Some(props))?;
    w.write(&batch).await?;
    w.close().await?;
    Ok(())
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

/// Delete snapshot files of `view` that its manifest does not refer to and
/// that are older than `grace_ms`. Returns how many objects were deleted.
pub async fn gc_view(
    store: &Arc<dyn ObjectStore>,
    view: &str,
    grace_ms: i64,
    now_ms: i64,
) -> Result<usize, BatchError> {
    let Some((m, _)) = store::get_json::<Manifest>(store.as_ref(), &paths::manifest(view)).await?
    else {
        return Ok(0);
    };
    let keep: BTreeSet<&str> = m.days().iter().map(|d| d.path.as_str()).collect();
    let mpath = paths::manifest(view);
    let doomed: Vec<Path> = store::list(store.as_ref(), &paths::view_dir(view))
        .await?
        .into_iter()
        .filter(|o| {
            let p = o.location.as_ref();
            p != mpath
                && !keep.contains(p)
                && o.last_modified.timestamp_millis() + grace_ms <= now_ms
        })
        .map(|o| o.location)
        .collect();
    let n = doomed.len();
    store::delete(store.as_ref(), doomed).await?;
    Ok(n)
}

/// The days of `[from_ms, to_ms)` as UTC day numbers.
pub fn days_between(from_ms: i64, to_ms: i64) -> std::ops::RangeInclusive<i64> {
    day_of(from_ms)..=day_of((to_ms - 1).max(from_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn regs_keep_the_highest_rank_per_register() {
        for (i, n) in [0usize, 5, 40, 1000, 5000, 50_000].into_iter().enumerate() {
            let mut x = (i as u64 + 7).wrapping_mul(0x2545_f491_4f6c_dd1d);
            let mut regs = Regs::default();
            let mut truth: BTreeMap<u32, u32> = BTreeMap::new();
            for _ in 0..n {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let (idx, rank) = ((x % REGISTERS as u64) as u32, 1 + ((x >> 20) % 20) as u32);
                regs.add(idx, rank);
                let e = truth.entry(idx).or_insert(0);
                *e = (*e).max(rank);
            }
            assert_eq!(
                regs.into_pairs(),
                truth.into_iter().collect::<Vec<_>>(),
                "{n}"
            );
        }
    }

    #[test]
    fn merged_regs_are_the_register_maximum_of_both() {
        for (n1, n2) in [
            (0usize, 0usize),
            (3, 0),
            (0, 7),
            (30, 40),
            (1500, 900),
            (5000, 20),
        ] {
            let mut x = (n1 * 31 + n2 + 1) as u64;
            let mut next = || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ((x % REGISTERS as u64) as u32, 1 + ((x >> 20) % 40) as u32)
            };
            let (mut a, mut b) = (Regs::default(), Regs::default());
            let mut truth: BTreeMap<u32, u32> = BTreeMap::new();
            for (regs, n) in [(&mut a, n1), (&mut b, n2)] {
                for _ in 0..n {
                    let (idx, rank) = next();
                    regs.add(idx, rank);
                    let e = truth.entry(idx).or_insert(0);
                    *e = (*e).max(rank);
                }
            }
            a.merge(b);
            assert_eq!(
                a.into_pairs(),
                truth.into_iter().collect::<Vec<_>>(),
                "{n1} {n2}"
            );
        }
    }

    #[test]
    fn seen_finds_exactly_the_repeated_offsets() {
        let mut seen = Seen::default();
        let mut truth = std::collections::HashSet::new();
        let mut x = 12345u64;
        // Runs of consecutive offsets in random places, overlapping sometimes:
        // how archive files look, including rewrites after a crash.
        for _ in 0..300 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let start = (x % 5_000) as i64;
            let len = (x >> 32) % 60;
            for o in start..start + len as i64 {
                assert_eq!(seen.insert(o), truth.insert(o), "offset {o}");
            }
        }
        for o in [i64::MAX, i64::MAX - 1, 0, -5] {
            assert_eq!(seen.insert(o), truth.insert(o), "offset {o}");
        }
        assert_eq!(
            seen.ranges
                .windows(2)
                .filter(|w| w[0].1 + 1 >= w[1].0)
                .count(),
            0
        );
    }

    #[test]
    fn pattern_sketches_equal_hll_add() {
        let mut direct = Hll::new();
        let mut regs: HashMap<u32, u32> = HashMap::new();
        for i in 0..20_000u32 {
            let v = format!("user-{i}");
            direct.add(v.as_bytes());
            let (x, r) = pattern(v.as_bytes());
            let e = regs.entry(x).or_insert(0);
            *e = (*e).max(r);
            if i == 10 || i == 19_999 {
                let mut pairs: Vec<(u32, u32)> = regs.iter().map(|(a, b)| (*a, *b)).collect();
                pairs.sort_unstable();
                assert_eq!(hll_from_registers(&pairs).registers(), direct.registers());
            }
        }
    }
}
