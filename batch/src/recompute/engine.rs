//! One view's days, computed one after another: each day's files fetched
//! (kept while a later day still needs them), planned, run on Polars'
//! streaming engine off the async workers: a frame of the day's groups.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use polars::prelude::{DataFrame, Engine as PolarsEngine};
use tally_core::view::ViewDef;

use super::fetch::{self, Source};
use super::inputs::{self, Input};
use super::plan::{self, Needs};
use super::{BatchError, Progress};

/// Files fetched at once.
const FETCH_AHEAD: usize = 8;

/// The recompute of one view over some of its days.
pub(super) struct Engine<'a> {
    store: Arc<dyn ObjectStore>,
    view: Arc<ViewDef>,
    needs: Needs,
    inputs: Vec<&'a Input>,
    /// The days to compute.
    days: BTreeSet<i64>,
    /// Fetched files a later day still reads, by path, with that last day.
    fetched: HashMap<String, (Arc<Source>, i64)>,
    progress: &'a (dyn Fn(Progress) + Send + Sync),
}

impl std::fmt::Debug for Engine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine")
            .field("view", &self.view.name)
            .field("inputs", &self.inputs.len())
            .finish()
    }
}

impl<'a> Engine<'a> {
    /// An engine over `inputs`, the files that touch `days`, the days to
    /// compute.
    pub(super) fn new(
        store: Arc<dyn ObjectStore>,
        view: &ViewDef,
        inputs: Vec<&'a Input>,
        days: BTreeSet<i64>,
        progress: &'a (dyn Fn(Progress) + Send + Sync),
    ) -> Self {
        Engine {
            days,
            store,
            needs: Needs::of(view),
            view: Arc::new(view.clone()),
            inputs,
            fetched: HashMap::new(),
            progress,
        }
    }

    /// The groups of `day` at the view's granularity, sorted, as
    /// [`plan::plan`] lays them out; `None` when no file has rows of it.
    /// Days must come in ascending order.
    pub(super) async fn day(&mut self, day: i64) -> Result<Option<DataFrame>, BatchError> {
        let todays: Vec<&Input> = self
            .inputs
            .iter()
            .copied()
            .filter(|i| i.days.contains(&day) && i.rows() > 0)
            .collect();
        let missing: Vec<&Input> = todays
            .iter()
            .copied()
            .filter(|i| !self.fetched.contains_key(&i.path))
            .collect();
        // Owned futures: no borrow of the engine crosses an await.
        let fetches: Vec<_> = missing
            .iter()
            .map(|&i| {
                let (store, input, needs) = (self.store.clone(), i.clone(), self.needs.clone());
                async move {
                    let s = fetch::source(&store, &input, &needs.envelope, &needs.keys).await?;
                    Ok::<_, BatchError>((s, input.rows()))
                }
            })
            .collect();
        let got: Vec<(Source, u64)> = futures::stream::iter(fetches)
            .buffered(FETCH_AHEAD)
            .try_collect()
            .await?;
        for ((s, rows), i) in got.into_iter().zip(&missing) {
            (self.progress)(Progress::FileRead {
                view: self.view.name.clone(),
                rows,
            });
            let last = i
                .days
                .iter()
                .copied()
                .filter(|d| self.days.contains(d))
                .max();
            self.fetched
                .insert(s.path.clone(), (Arc::new(s), last.unwrap_or(day)));
        }
        let sources: Vec<Arc<Source>> = todays
            .iter()
            .filter_map(|i| self.fetched.get(&i.path).map(|(s, _)| s.clone()))
            .collect();
        let overlapping = inputs::overlapping(&todays);
        // Files no later day reads are let go.
        self.fetched.retain(|_, (_, last)| *last > day);
        if sources.is_empty() {
            return Ok(None);
        }
        let (view, needs) = (self.view.clone(), self.needs.clone());
        let planned = sources.clone();
        let result = tokio::task::spawn_blocking(move || {
            let lf = plan::plan(&view, &needs, day, &planned, &overlapping)?;
            let df = lf
                .collect_with_engine(PolarsEngine::Streaming)?
                .unwrap_single();
            Ok::<_, BatchError>((df.height() > 0).then_some(df))
        })
        .await
        .map_err(|e| BatchError::Task(e.to_string()))
        .and_then(|r| r);
        match result {
            // The plan does not say which file failed it: a file whose footer
            // read well can still hold a page that does not. Each of the
            // day's files is decoded alone to find it.
            Err(e @ (BatchError::Polars(_) | BatchError::Task(_))) => {
                let envelope = self.needs.envelope.clone();
                let found = tokio::task::spawn_blocking(move || {
                    sources.iter().find_map(|s| {
                        fetch::check(s, &envelope)
                            .err()
                            .map(|reason| (s.path.clone(), reason))
                    })
                })
                .await
                .map_err(|j| BatchError::Task(j.to_string()))?;
                match found {
                    Some((path, reason)) => Err(BatchError::CorruptFile { path, reason }),
                    None => Err(e),
                }
            }
            other => other,
        }
    }
}
