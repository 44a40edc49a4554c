//! Answering a view query: snapshot ⊕ speed slices of epochs ≥ cut.
//!
//! The orchestration of [`super`]: the only part of the query path that
//! reads the serving state (snapshot in use, speed mirror, day cache,
//! lookup tables, blocking pool); the pieces it drives depend on none of it.
//!
//! [`execute`] takes the view's snapshot in use (one manifest: [`crate::snapshot`])
//! and, with its cut, the speed slices to merge ([`crate::speed`]); then,
//! day by day over the days that have data, it reads the day files the
//! level plan needs ([`super::plan`]) through the day cache and folds them with the
//! day's slices ([`super::fold`]) on the blocking pool, one day per task, at most
//! one task per core at a time (a day of at most `INLINE_WORK` input rows
//! and cells is folded in place: the hand-off would cost more). The last
//! day's task also ranks the groups ([`super::answer`]) and writes the JSON. A
//! rolling window ([`super::window`]) widens the read back by the window and makes
//! the points from the closed cells at the end. When the groups' totals of
//! sketch measures can be read at a coarser level than the cells (the whole
//! range is one bucket), each day's task also reads the totals' pieces
//! apart ([`super::fold`]).
//!
//! Guarantees:
//! - One answer reads one manifest and the slices chosen by its cut: never
//!   two snapshots, never a slice counted by both layers.
//! - The cost follows the buckets and groups asked for: the coarsest level
//!   that answers a span exactly is read, and a fold over `max_cells`
//!   output cells stops with `too_many_cells` (400).
//! - Dropping the future (the request timeout) stops the fold within a few
//!   thousand rows: the work stops with the request; no fold in place is
//!   longer than `INLINE_WORK` rows.
//! - A day file that cannot be read leaves its rows out and the answer says
//!   `"degraded": ["store"]`; a failed speed sync, `"degraded": ["redis"]`;
//!   speed slices of another view definition (not merged),
//!   `"degraded": ["speed_definition"]`; a lookup table never loaded,
//!   `"degraded": ["lookup"]`.
//! - A view with `dedup = "event_id"` answered with any speed slice says
//!   `"speed_may_hold_duplicates": true`: the speed layer's window is
//!   bounded, the batch is exact.
//! - A lookup (`dimension@lookup`) maps each source group once, through the
//!   one version of the table this answer took ([`crate::lookup`]); the
//!   answer names that version.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::body::Bytes;
use axum::http::StatusCode;
use futures::StreamExt;
use tally_core::agg::AggKind;
use tally_core::time::{day_of, MS_PER_DAY};
use tally_core::view::ViewDef;

use super::fold::{Day, Fold, FoldError, GroupMap};
use super::{answer, plan, Query};
use crate::dto::{Freshness, QueryResponse};
use crate::error::ApiError;
use crate::lookup::Table;
use crate::snapshot::day::DayData;
use crate::snapshot::ViewSnapshot;
use crate::speed::slice::Slice;
use crate::state::AppState;
/// Days whose files are fetched ahead of the fold.
const PREFETCH_DAYS: usize = 2;

/// Sets its flag when dropped: the blocking folds of a dropped query stop.
#[derive(Debug, Default)]
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// The day files one day needs: (data, from, to) per piece.
type DayInputs = Vec<(Arc<DayData>, i64, i64)>;

/// Answer `q` on `view`: the JSON of a [`QueryResponse`].
pub async fn execute(state: &AppState, view: &Arc<ViewDef>, q: Query) -> Result<Bytes, ApiError> {
    let inner = &state.inner;
    let serve = &inner.cfg.serve;
    let snap = state.snapshot(&view.name).unwrap_or_default();
    let cut = snap.cut();
    let mut degraded: BTreeSet<&'static str> = BTreeSet::new();
    if inner.health.load().errors.contains_key(&view.name) {
        degraded.insert("store");
    }
    let base = view.granularity.as_ms();
    let g_ms = q.granularity.as_ms();
    // With a window, the read starts a window before the first point.
    let (from, to) = q.read_range(base);
    let (first_day, last_day) = (day_of(from), day_of(to - 1));
    inner.speed.ensure_fresh(inner.opts.speed_max_age).await;
    let speed = inner.speed.view(&view.name, cut, first_day, last_day);
    if speed.degraded {
        degraded.insert("redis");
    }
    if speed.other_definition {
        degraded.insert("speed_definition");
    }
    let mut days: BTreeSet<i64> = if from < to {
        snap.days_in(first_day, last_day).collect()
    } else {
        BTreeSet::new()
    };
    days.extend(speed.slices.iter().map(|s| s.day));
    let speed_levels: Vec<i64> = view.levels().iter().map(|g| g.as_ms()).collect();
    // The totals cover the range as one bucket: when that reads a coarser
    // level somewhere than the cells do, the sketch measures' totals are
    // read apart (their merges are the cost; other measures' are not).
    let sketches = (q.measures.iter())
        .any(|&m| matches!(view.measures[m].agg, AggKind::Distinct | AggKind::Quantiles));
    let totals_apart = sketches
        && plan::pieces(&speed_levels, MS_PER_DAY, from, to)
            != plan::pieces(&speed_levels, g_ms, from, to);

    let (tables, lookups) = lookup_tables(state, &q);
    if lookups.values().any(Option::is_none) {
        degraded.insert("lookup");
    }

    let manifest = snap.manifest.as_ref();
    let mut response = QueryResponse {
        view: view.name.clone(),
        from_ms: q.from_ms,
        to_ms: q.to_ms,
        granularity: q.granularity.to_string(),
        window: q.window_ms.map(tally_core::time::format_ms),
        read_from_ms: q.window_ms.map(|_| from),
        group_by: q
            .group_by
            .iter()
            .map(|c| c.name(view, &inner.cfg.lookups))
            .collect(),
        lookups,
        measures: q
            .measures
            .iter()
            .map(|&m| view.measures[m].name.clone())
            .collect(),
        cut,
        freshness: Freshness {
            snapshot_run_id: manifest.map(|m| m.run_id.clone()),
            snapshot_created_ms: manifest.map(|m| m.created_ms),
            speed_read_ms: speed.synced_ms,
            speed_slices: speed.slices.len(),
            speed_skipped: speed.skipped,
        },
        degraded: Vec::new(),
        speed_may_hold_duplicates: view.dedups() && !speed.slices.is_empty(),
        groups_total: 0,
        groups_returned: 0,
        overflow: false,
        series: Vec::new(),
        totals: Default::default(),
    };
    let max_groups = serve.max_groups;

    let cancel = CancelOnDrop::default();
    let mut fold = Fold::new(view, q.clone(), serve.max_cells, tables, totals_apart);
    let n_days = days.len();
    let loads = futures::stream::iter(days.iter().copied())
        .map(|day| day_inputs(state, view, &snap, day, (g_ms, totals_apart), from, to))
        .buffered(PREFETCH_DAYS);
    futures::pin_mut!(loads);
    let mut done = 0;
    while let Some((day, files, total_files, missing)) = loads.next().await {
        if missing {
            degraded.insert("store");
        }
        done += 1;
        let slices: Vec<Arc<Slice>> = speed
            .slices
            .iter()
            .filter(|s| s.day == day)
            .cloned()
            .collect();
        let (a, b) = (from.max(day * MS_PER_DAY), to.min((day + 1) * MS_PER_DAY));
        let speed_pieces = plan::pieces(&speed_levels, g_ms, a, b);
        let total_pieces = match totals_apart {
            true => plan::pieces(&speed_levels, MS_PER_DAY, a, b),
            false => Vec::new(),
        };
        // The last day's task also writes the answer: one task per day.
        let last = (done == n_days).then(|| {
            response.degraded = degraded.iter().map(|d| (*d).to_owned()).collect();
            std::mem::take(&mut response)
        });
        let task = DayTask {
            fold,
            files,
            total_files,
            slices,
            pieces: speed_pieces,
            total_pieces,
            cancel: cancel.0.clone(),
            answer: last.map(|r| (r, max_groups)),
        };
        // A small day is folded in place: handing it to the pool would cost
        // more than the fold, and it cannot hold a worker for long.
        let step = if task.work() <= INLINE_WORK {
            task.run()
        } else {
            state.blocking(move || task.run()).await?
        }
        .map_err(fold_error)?;
        match step {
            Step::Fold(f) => fold = *f,
            Step::Answer(json) => return json,
        }
    }
    // No day with data.
    response.degraded = degraded.iter().map(|d| (*d).to_owned()).collect();
    encode(fold, response, max_groups)
}

/// One table per `[[lookup]]` for the fold (the loaded version, or an
/// empty one mapping every value to its `missing`), and the version of
/// each table `q` uses (null: never loaded).
fn lookup_tables(
    state: &AppState,
    q: &Query,
) -> (Vec<Arc<Table>>, BTreeMap<String, Option<String>>) {
    let configs = &state.inner.cfg.lookups;
    let set = state.inner.lookups.load();
    let tables: Vec<Arc<Table>> = configs
        .iter()
        .map(|c| match set.tables.get(&c.name) {
            Some(l) => l.table.clone(),
            None => Arc::new(Table {
                map: Default::default(),
                missing: c.missing.as_deref().map(Arc::from),
                version: String::new(),
            }),
        })
        .collect();
    let used = q.group_by.iter().chain(q.filters.keys());
    let versions = used
        .filter_map(|c| c.lookup)
        .filter_map(|l| configs.get(l))
        .map(|c| {
            let version = set.tables.get(&c.name).map(|l| l.table.version.clone());
            (c.name.clone(), version)
        })
        .collect();
    (tables, versions)
}

/// Input rows and cells below which a day is folded on the async worker.
const INLINE_WORK: usize = 2_000;

/// What a day's task hands back: the fold so far, or (the last day) the answer.
enum Step {
    Fold(Box<Fold>),
    Answer(Result<Bytes, ApiError>),
}

/// One day's fold: its inputs, and the answer to write when it is the last.
struct DayTask {
    fold: Fold,
    files: DayInputs,
    /// The day files of the totals' pieces (totals apart; else none).
    total_files: DayInputs,
    slices: Vec<Arc<Slice>>,
    /// The speed slices' level plan for the day: the cells', the totals'.
    pieces: Vec<(i64, i64, i64)>,
    total_pieces: Vec<(i64, i64, i64)>,
    cancel: Arc<AtomicBool>,
    answer: Option<(QueryResponse, usize)>,
}

impl DayTask {
    /// Input rows and cells the fold will visit.
    fn work(&self) -> usize {
        let rows: usize = (self.files.iter().chain(&self.total_files))
            .map(|(d, a, b)| d.rows_in(*a, *b).len())
            .sum();
        let cells: usize = self
            .slices
            .iter()
            .map(|s| {
                let data = s.read();
                (self.pieces.iter().chain(&self.total_pieces))
                    .flat_map(|&(l, a, b)| data.cells_in(l, a, b).map(|(_, c)| c.len()))
                    .sum::<usize>()
            })
            .sum();
        rows + cells
    }

    fn run(self) -> Result<Step, FoldError> {
        let DayTask {
            mut fold,
            files,
            total_files,
            slices,
            pieces,
            total_pieces,
            cancel,
            answer,
        } = self;
        let guards: Vec<_> = slices.iter().map(|s| s.read()).collect();
        let mut maps = vec![GroupMap::new(); guards.len()];
        let mut day = Day::default();
        for (data, a, b) in &files {
            fold.day_file(&mut day, data, *a, *b, &cancel)?;
        }
        for (data, map) in guards.iter().zip(&mut maps) {
            for &(l, a, b) in &pieces {
                fold.slice(&mut day, data, l, a, b, map, &cancel)?;
            }
        }
        fold.finish_day(day);
        for (data, a, b) in &total_files {
            fold.total_day_file(data, *a, *b, &cancel)?;
        }
        for (data, map) in guards.iter().zip(&mut maps) {
            for &(l, a, b) in &total_pieces {
                fold.total_slice(data, l, a, b, map, &cancel)?;
            }
        }
        Ok(match answer {
            Some((response, max_groups)) => Step::Answer(encode(fold, response, max_groups)),
            None => Step::Fold(Box::new(fold)),
        })
    }
}

/// Rank the folded groups into `response` and write its JSON.
fn encode(fold: Fold, mut response: QueryResponse, max_groups: usize) -> Result<Bytes, ApiError> {
    let dims = response.group_by.clone();
    let names: Vec<&str> = response.measures.iter().map(String::as_str).collect();
    let merged = answer::answer(fold.into_parts(), &dims, &names, max_groups);
    response.groups_total = merged.groups_total;
    response.groups_returned = merged.series.len();
    response.overflow = merged.series.len() < merged.groups_total;
    response.series = merged.series;
    response.totals = merged.totals;
    serde_json::to_vec(&response).map(Bytes::from).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("cannot encode the answer: {e}"),
        )
    })
}

fn fold_error(e: FoldError) -> ApiError {
    match e {
        FoldError::TooManyCells(max) => ApiError::bad(
            "too_many_cells",
            format!(
                "the answer would hold more than {max} (bucket, group) cells, the limit (serve.max_cells): narrow the range, use a coarser granularity, group by fewer dimensions or filter"
            ),
        ),
        FoldError::Cancelled => ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            "the query was stopped: narrow the range or the grouping",
        ),
    }
}

/// The snapshot inputs of `day`: each piece of the level plan with its day
/// file (read once per file), the cells' and (`totals_apart`) the totals',
/// and whether a file was missing or unreadable.
async fn day_inputs(
    state: &AppState,
    view: &Arc<ViewDef>,
    snap: &ViewSnapshot,
    day: i64,
    (g_ms, totals_apart): (i64, bool),
    from: i64,
    to: i64,
) -> (i64, DayInputs, DayInputs, bool) {
    let (a, b) = (from.max(day * MS_PER_DAY), to.min((day + 1) * MS_PER_DAY));
    let mut levels = snap.levels_of(day);
    if levels.is_empty() || a >= b {
        return (day, Vec::new(), Vec::new(), false);
    }
    // The view's own level first: it answers the ragged edges.
    let base = view.granularity.as_ms();
    if levels[0] != base {
        levels.insert(0, base);
    }
    // Per level, the spans read there: the cells', the totals'.
    type Spans = Vec<(i64, i64)>;
    let mut by_level: BTreeMap<i64, (Spans, Spans)> = BTreeMap::new();
    for (l, a, b) in plan::pieces(&levels, g_ms, a, b) {
        by_level.entry(l).or_default().0.push((a, b));
    }
    if totals_apart {
        for (l, a, b) in plan::pieces(&levels, MS_PER_DAY, a, b) {
            by_level.entry(l).or_default().1.push((a, b));
        }
    }
    let (mut cells, mut totals) = (Vec::new(), Vec::new());
    let mut missing = false;
    for (level, (for_cells, for_totals)) in by_level {
        let Some(file) = snap.files.get(&(day, level)) else {
            missing = true;
            continue;
        };
        match load(state, view, file, level).await {
            Ok(data) => {
                cells.extend(for_cells.into_iter().map(|(a, b)| (data.clone(), a, b)));
                totals.extend(for_totals.into_iter().map(|(a, b)| (data.clone(), a, b)));
            }
            Err(e) => {
                tracing::warn!(path = %file.path, error = %e, "snapshot file not read; answering without it");
                missing = true;
            }
        }
    }
    (day, cells, totals, missing)
}

/// One day file through the day cache: fetched, then decoded on the
/// blocking pool.
async fn load(
    state: &AppState,
    view: &Arc<ViewDef>,
    file: &tally_store::manifest::DayFile,
    level: i64,
) -> Result<Arc<DayData>, String> {
    let inner = &state.inner;
    let fetch = async {
        let bytes = tally_store::snapshot::fetch(inner.store.as_ref(), file)
            .await
            .map_err(|e| e.to_string())?;
        let (view, path) = (view.clone(), file.path.clone());
        state
            .blocking(move || DayData::decode(&view, level, &path, bytes))
            .await
            .map_err(|e| e.message)?
            .map(Arc::new)
            .map_err(|e| e.to_string())
    };
    inner
        .days
        .get_or_load(&file.path, fetch)
        .await
        .map(|(data, _)| data)
}
