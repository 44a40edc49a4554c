//! The batch run: every view recomputed from the master dataset up to the cut,
//! with Polars, and published atomically.
//!
//! A run reads the cut `E`, lists the archive files of epochs `< E`, and for
//! each view decides which event-time days to recompute: all of them when the
//! run is `full`, the view has no snapshot yet or its definition changed;
//! otherwise the days touched (per the files' footers) by files the previous
//! snapshot did not cover, or that were rewritten since it was planned, plus any
//! days asked for. Those days are recomputed from *all* files touching them;
//! the other days are carried forward by reference to the previous run's files.
//!
//! Per day set, rows are extracted with the same code the speed layer uses
//! (`ViewDef::accepts`, `group_of`, `MeasureDef::input`), de-duplicated on
//! `(topic, partition, offset)` and aggregated with Polars lazily: count, sum,
//! min and max directly; `distinct` as a group-by on the HyperLogLog register
//! index taking the maximum rank, which yields Redis-compatible sketches.
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
    BinaryBuilder, Float64Builder, Int64Builder, StringBuilder, UInt64Builder,
};
use arrow_array::{
    Array, ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, ListArray, RecordBatch,
    StringArray, StructArray,
};
use arrow_schema::{DataType, Field, Schema};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectMeta, ObjectStore};
// `ParquetObjectReader` is deprecated in parquet 60 in favour of a hand-written
// `AsyncFileReader`; it still does what we need (ranged reads, footer only).
#[allow(deprecated)]
use parquet::arrow::async_reader::ParquetObjectReader;
use parquet::arrow::{AsyncArrowWriter, ParquetRecordBatchStreamBuilder, ProjectionMask};
use polars::prelude as pl;
use polars::prelude::{col, IntoLazy};
use std::borrow::Cow;
use tally_core::agg::{Agg, AggKind};
use tally_core::config::Config;
use tally_core::event::{Event, Scalar};
use tally_core::hll::{murmurhash64a, Hll, P, REGISTERS};
use tally_core::manifest::{columns, CutFile, DayFile, Manifest, ManifestV1};
use tally_core::paths;
use tally_core::time::{day_of, Epoch};
use tally_core::view::{Input, ViewDef};

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
    #[error("polars: {0}")]
    Polars(#[from] pl::PolarsError),
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
        crash_after_files: None,
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
    meta: ObjectMeta,
    days: Vec<i64>,
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
            Ok::<_, BatchError>(Input0 {
                path,
                topic: f.topic,
                meta,
                days,
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
    let prev_v1 = prev.as_ref().map(|(m, _)| m.v1());
    let full = opts.full || prev_v1.is_none_or(|p| p.definition != fingerprint);
    let mut days: BTreeSet<i64> = BTreeSet::new();
    if full {
        for i in &inputs {
            days.extend(i.days.iter().copied());
        }
    } else if let Some(p) = prev_v1 {
        let covered: BTreeSet<&str> = p.inputs.iter().map(|s| s.as_str()).collect();
        for i in &inputs {
            let rewritten = i.meta.last_modified.timestamp_millis() > p.created_ms;
            if !covered.contains(i.path.as_str()) || rewritten {
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
    // Extract, de-duplicate and aggregate the days to recompute.
    let mut rows = Extracted::new(view);
    for i in &to_read {
        let n = rows.read_file(store, i, &days).await?;
        vs.rows_read += n;
        progress(Progress::FileRead {
            view: view.name.clone(),
            rows: n,
        });
    }
    let groups = aggregate(view, rows)?;

    // Write one file per day.
    let mut by_day: BTreeMap<i64, Vec<Group>> = BTreeMap::new();
    for g in groups {
        by_day.entry(day_of(g.bucket)).or_default().push(g);
    }
    let mut new_days: Vec<DayFile> = Vec::new();
    for (day, mut groups) in by_day {
        groups.sort_by(|a, b| (a.bucket, &a.dims).cmp(&(b.bucket, &b.dims)));
        let path = paths::snapshot_file(&view.name, run_id, day);
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
            path,
            rows: groups.len() as u64,
        });
    }
    vs.days_recomputed = days.len();
    // Carry the other days forward.
    let mut all_days = new_days;
    if !full {
        if let Some(p) = prev_v1 {
            for d in &p.days {
                if !days.contains(&d.day) {
                    all_days.push(d.clone());
                    vs.days_carried += 1;
                }
            }
        }
    }
    all_days.sort_by_key(|d| d.day);
    let manifest = Manifest::V1(ManifestV1 {
        view: view.name.clone(),
        run_id: run_id.to_owned(),
        cut,
        definition: fingerprint,
        created_ms: planned_ms,
        days: all_days,
        inputs: inputs.iter().map(|i| i.path.clone()).collect(),
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
        other => other?,
    }
    progress(Progress::Published {
        view: view.name.clone(),
    });
    Ok(vs)
}

/// One aggregated row of a snapshot.
#[derive(Debug, Clone)]
struct Group {
    bucket: i64,
    dims: Vec<Option<String>>,
    aggs: Vec<Agg>,
}

/// The columns extracted from the archive for one view, one entry per event.
struct Extracted<'v> {
    view: &'v ViewDef,
    filter: Vec<(tally_core::view::FieldPath, Vec<String>)>,
    topics: Vec<String>,
    t: Vec<u32>,
    p: Vec<i32>,
    o: Vec<i64>,
    bucket: Vec<i64>,
    dims: Vec<Vec<Option<String>>>,
    /// Per measure: the input columns.
    count: Vec<Vec<u32>>,
    int: Vec<Vec<Option<i64>>>,
    float: Vec<Vec<Option<f64>>>,
    idx: Vec<Vec<Option<u32>>>,
    rank: Vec<Vec<Option<u32>>>,
}

impl<'v> Extracted<'v> {
    fn new(view: &'v ViewDef) -> Self {
        let m = view.measures.len();
        Extracted {
            view,
            filter: view.parsed_filter(),
            topics: Vec::new(),
            t: Vec::new(),
            p: Vec::new(),
            o: Vec::new(),
            bucket: Vec::new(),
            dims: vec![Vec::new(); view.dimensions.len()],
            count: vec![Vec::new(); m],
            int: vec![Vec::new(); m],
            float: vec![Vec::new(); m],
            idx: vec![Vec::new(); m],
            rank: vec![Vec::new(); m],
        }
    }

    /// Read one archive file, keeping valid events of `days` the view accepts.
    async fn read_file(
        &mut self,
        store: &Arc<dyn ObjectStore>,
        input: &Input0,
        days: &BTreeSet<i64>,
    ) -> Result<u64, BatchError> {
        #[allow(deprecated)]
        let reader = ParquetObjectReader::new(store.clone(), Path::from(input.path.as_str()))
            .with_file_size(input.meta.size);
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
        let mut stream = builder.with_projection(mask).build()?;
        let mut n = 0u64;
        while let Some(batch) = stream.try_next().await? {
            n += batch.num_rows() as u64;
            self.push_batch(&batch, days, &input.path)?;
        }
        Ok(n)
    }

    fn push_batch(
        &mut self,
        b: &RecordBatch,
        days: &BTreeSet<i64>,
        path: &str,
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
        let mut text = String::new();
        for r in 0..b.num_rows() {
            if reject.is_valid(r)
                || time_ms.is_null(r)
                || event_id.is_null(r)
                || event_type.is_null(r)
            {
                continue;
            }
            let t = time_ms.value(r);
            if !days.contains(&day_of(t)) {
                continue;
            }
            let (s, e) = (offsets[r] as usize, offsets[r + 1] as usize);
            let mut properties = Vec::with_capacity(e - s);
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
                properties,
            };
            let tp = topic.value(r);
            if !self.view.accepts(tp, &event, &self.filter) {
                continue;
            }
            let ti = match self.topics.iter().position(|x| x == tp) {
                Some(i) => i,
                None => {
                    self.topics.push(tp.to_owned());
                    self.topics.len() - 1
                }
            };
            self.t.push(ti as u32);
            self.p.push(partition.value(r));
            self.o.push(offset.value(r));
            self.bucket.push(gran.bucket(t));
            for (d, v) in self.view.group_of(&event).into_iter().enumerate() {
                self.dims[d].push(v);
            }
            for (k, m) in self.view.measures.iter().enumerate() {
                let input = m.input(&event);
                match m.agg {
                    AggKind::Count => self.count[k].push(u32::from(input.is_some())),
                    AggKind::Sum | AggKind::Min | AggKind::Max => {
                        let (i, f) = match input {
                            Some(Input::Num(tally_core::agg::Num::Int(i))) => (Some(i), None),
                            Some(Input::Num(tally_core::agg::Num::Float(f))) => (None, Some(f)),
                            _ => (None, None),
                        };
                        if m.agg == AggKind::Sum {
                            self.int[k].push(i);
                            self.float[k].push(f);
                        } else {
                            self.float[k].push(f.or(i.map(|i| i as f64)));
                        }
                    }
                    AggKind::Distinct => {
                        let pat = match input {
                            Some(Input::Key(v)) => {
                                text.clear();
                                v.write_text(&mut text);
                                Some(pattern(text.as_bytes()))
                            }
                            Some(Input::Num(n)) => {
                                Some(pattern(tally_core::agg::num_text(n).as_bytes()))
                            }
                            _ => None,
                        };
                        self.idx[k].push(pat.map(|p| p.0));
                        self.rank[k].push(pat.map(|p| p.1));
                    }
                }
            }
        }
        Ok(())
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

/// A sketch from `(register, value)` pairs, through the dense Redis encoding.
fn hll_from_registers(regs: &[(u32, u32)]) -> Hll {
    const HEADER: usize = 16;
    let mut bytes = vec![0u8; HEADER + (REGISTERS * 6).div_ceil(8)];
    bytes[..4].copy_from_slice(b"HYLL");
    bytes[15] = 0x80;
    let body = &mut bytes[HEADER..];
    for &(reg, val) in regs {
        let bit = reg as usize * 6;
        let (byte, fb) = (bit / 8, bit & 7);
        let v = (val.min(63) as u16) << fb;
        body[byte] |= v as u8;
        if let Some(next) = body.get_mut(byte + 1) {
            *next |= (v >> 8) as u8;
        }
    }
    Hll::from_redis_bytes(&bytes).unwrap_or_default()
}

fn mcol(k: usize, suffix: &str) -> String {
    format!("_m{k}{suffix}")
}

/// De-duplicate and aggregate with Polars.
fn aggregate(view: &ViewDef, x: Extracted<'_>) -> Result<Vec<Group>, BatchError> {
    if x.t.is_empty() {
        return Ok(Vec::new());
    }
    let height = x.t.len();
    let dim_names: Vec<String> = (0..view.dimensions.len())
        .map(|d| format!("_d{d}"))
        .collect();
    let mut cols: Vec<pl::Column> = vec![
        pl::Column::new("_t".into(), x.t),
        pl::Column::new("_p".into(), x.p),
        pl::Column::new("_o".into(), x.o),
        pl::Column::new("_b".into(), x.bucket),
    ];
    for (name, values) in dim_names.iter().zip(x.dims) {
        cols.push(pl::Column::new(name.as_str().into(), values));
    }
    let mut aggs: Vec<pl::Expr> = Vec::new();
    let mut distinct: Vec<usize> = Vec::new();
    let (mut count, mut int, mut float, mut idx, mut rank) =
        (x.count, x.int, x.float, x.idx, x.rank);
    for (k, m) in view.measures.iter().enumerate() {
        match m.agg {
            AggKind::Count => {
                cols.push(pl::Column::new(
                    mcol(k, "").into(),
                    std::mem::take(&mut count[k]),
                ));
                aggs.push(
                    col(mcol(k, ""))
                        .cast(pl::DataType::UInt64)
                        .sum()
                        .alias(mcol(k, "")),
                );
            }
            AggKind::Sum => {
                cols.push(pl::Column::new(
                    mcol(k, "i").into(),
                    std::mem::take(&mut int[k]),
                ));
                cols.push(pl::Column::new(
                    mcol(k, "f").into(),
                    std::mem::take(&mut float[k]),
                ));
                aggs.push(col(mcol(k, "i")).sum().alias(mcol(k, "i")));
                aggs.push(col(mcol(k, "f")).sum().alias(mcol(k, "f")));
            }
            AggKind::Min | AggKind::Max => {
                cols.push(pl::Column::new(
                    mcol(k, "").into(),
                    std::mem::take(&mut float[k]),
                ));
                let e = col(mcol(k, ""));
                let e = if m.agg == AggKind::Min {
                    e.min()
                } else {
                    e.max()
                };
                aggs.push(e.alias(mcol(k, "")));
            }
            AggKind::Distinct => {
                cols.push(pl::Column::new(
                    mcol(k, "x").into(),
                    std::mem::take(&mut idx[k]),
                ));
                cols.push(pl::Column::new(
                    mcol(k, "r").into(),
                    std::mem::take(&mut rank[k]),
                ));
                distinct.push(k);
            }
        }
    }
    let df = pl::DataFrame::new(height, cols)?;
    // De-duplicate on the record's coordinates.
    let dedup = df
        .lazy()
        .unique(
            Some(pl::cols(["_t", "_p", "_o"])),
            pl::UniqueKeepStrategy::Any,
        )
        .collect()?;
    let mut keys: Vec<pl::Expr> = vec![col("_b")];
    keys.extend(dim_names.iter().map(|d| col(d.as_str())));
    if aggs.is_empty() {
        aggs.push(pl::len().alias("_n"));
    }
    let main = dedup
        .clone()
        .lazy()
        .group_by(keys.clone())
        .agg(aggs)
        .collect()?;
    let n = main.height();
    let bucket = main.column("_b")?.i64()?.clone();
    let mut dim_cols = Vec::new();
    for d in &dim_names {
        dim_cols.push(main.column(d)?.str()?.clone());
    }
    let key_of = |i: usize| -> (i64, Vec<Option<String>>) {
        (
            bucket.get(i).unwrap_or(0),
            dim_cols
                .iter()
                .map(|c| c.get(i).map(|s| s.to_owned()))
                .collect(),
        )
    };
    let mut groups: Vec<Group> = (0..n)
        .map(|i| {
            let (b, dims) = key_of(i);
            Group {
                bucket: b,
                dims,
                aggs: view.measures.iter().map(|m| Agg::empty(m.agg)).collect(),
            }
        })
        .collect();
    for (k, m) in view.measures.iter().enumerate() {
        match m.agg {
            AggKind::Count => {
                let c = main.column(&mcol(k, ""))?.u64()?;
                for (g, v) in groups.iter_mut().zip(c.iter()) {
                    g.aggs[k] = Agg::Count(v.unwrap_or(0));
                }
            }
            AggKind::Sum => {
                let ci = main.column(&mcol(k, "i"))?.i64()?;
                let cf = main.column(&mcol(k, "f"))?.f64()?;
                for ((g, i), f) in groups.iter_mut().zip(ci.iter()).zip(cf.iter()) {
                    g.aggs[k] = Agg::Sum {
                        int: i.unwrap_or(0),
                        float: f.unwrap_or(0.0),
                    };
                }
            }
            AggKind::Min | AggKind::Max => {
                let c = main.column(&mcol(k, ""))?.f64()?;
                for (g, v) in groups.iter_mut().zip(c.iter()) {
                    g.aggs[k] = if m.agg == AggKind::Min {
                        Agg::Min(v)
                    } else {
                        Agg::Max(v)
                    };
                }
            }
            AggKind::Distinct => {}
        }
    }
    if !distinct.is_empty() {
        let index: HashMap<(i64, Vec<Option<String>>), usize> =
            (0..n).map(|i| (key_of(i), i)).collect();
        for &k in &distinct {
            let mut kx = keys.clone();
            kx.push(col(mcol(k, "x")));
            let regs = dedup
                .clone()
                .lazy()
                .filter(col(mcol(k, "x")).is_not_null())
                .group_by(kx)
                .agg([col(mcol(k, "r")).max().alias(mcol(k, "r"))])
                .collect()?;
            let b = regs.column("_b")?.i64()?;
            let ds: Vec<_> = dim_names
                .iter()
                .map(|d| regs.column(d).and_then(|c| c.str()))
                .collect::<Result<_, _>>()?;
            let xs = regs.column(&mcol(k, "x"))?.u32()?;
            let rs = regs.column(&mcol(k, "r"))?.u32()?;
            let mut per_group: HashMap<usize, Vec<(u32, u32)>> = HashMap::new();
            for i in 0..regs.height() {
                let key = (
                    b.get(i).unwrap_or(0),
                    ds.iter()
                        .map(|c| c.get(i).map(|s| s.to_owned()))
                        .collect::<Vec<_>>(),
                );
                let (Some(&g), Some(x), Some(r)) = (index.get(&key), xs.get(i), rs.get(i)) else {
                    continue;
                };
                per_group.entry(g).or_default().push((x, r));
            }
            for (g, regs) in per_group {
                groups[g].aggs[k] = Agg::Distinct(hll_from_registers(&regs));
            }
        }
    }
    Ok(groups)
}

/// The Arrow schema of a view's snapshot file (see [`tally_core::manifest`]).
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
                fields.push(Field::new(&names[0], DataType::Int64, false));
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
                let mut i = Int64Builder::new();
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
                    match &g.aggs[k] {
                        Agg::Distinct(s) => h.append_value(s.to_redis_bytes()),
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
                        let i = any
                            .downcast_ref::<Int64Array>()
                            .ok_or_else(|| malformed(path, &names[0]))?;
                        let f = b
                            .column_by_name(&names[1])
                            .and_then(|c| c.as_any().downcast_ref::<Float64Array>())
                            .ok_or_else(|| malformed(path, &names[1]))?;
                        Agg::Sum {
                            int: i.value(r),
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
    let keep: BTreeSet<&str> = m.v1().days.iter().map(|d| d.path.as_str()).collect();
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
                let pairs: Vec<(u32, u32)> = regs.iter().map(|(a, b)| (*a, *b)).collect();
                assert_eq!(hll_from_registers(&pairs).registers(), direct.registers());
            }
        }
    }
}
