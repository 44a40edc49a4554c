//! An optional short-lived cache of whole query answers, shared by the query
//! endpoint and every SSE stream (`serve.answer_ttl`; off by default: every
//! target in BENCHMARKS.md is met without it).
//!
//! A dashboard wall, many browser tabs and the SSE streams may ask the same
//! few queries again and again. [`ResultCache`] keeps the serialized answer
//! of each resolved query ([`QueryKey`]: view, `[from, to)`, granularity,
//! grouping, filters, measures) for at most `serve.answer_ttl`.
//!
//! Guarantees:
//! - Freshness: an answer is reused only while it is younger than the TTL
//!   *and* was computed in the current generation of the snapshot set and store
//!   health (a counter [`crate::AppState::refresh`] bumps after every poll), so
//!   a newly loaded snapshot or a store failure shows at once; speed-layer
//!   writes show within the TTL. The answer says when Redis was read
//!   (`freshness.speed_read_ms`).
//! - Single flight: concurrent requests for a key with no answer wait for one
//!   computation instead of each reading Redis (a `tokio::sync::OnceCell` per
//!   flight). A failed computation is not cached.
//! - Stale while revalidate: once an answer is older than the TTL, requests
//!   keep getting it (at most `MAX_STALE` old) while one background task
//!   recomputes it, so a slow merge never sits in the request path of a hot
//!   query. An answer is then at most TTL + one merge old.
//! - Bounded: at most `MAX_ENTRIES` keys; when full, stale entries are dropped,
//!   then everything.
//! - `answer_ttl = 0ms` disables it: every request merges afresh.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use tally_core::time::Granularity;

use crate::error::ApiError;
use crate::query::{Col, Query};

const MAX_ENTRIES: usize = 1024;

/// A resolved query: equal keys give equal answers from equal inputs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct QueryKey {
    pub view: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub granularity: Granularity,
    pub group_by: Vec<Col>,
    pub filters: BTreeMap<Col, Vec<String>>,
    pub measures: Vec<usize>,
    pub window_ms: Option<i64>,
    /// The percentiles asked, as their bits (ascending, no repeats).
    pub quantiles: Vec<u64>,
}

impl QueryKey {
    pub(crate) fn new(view: &str, q: &Query) -> QueryKey {
        QueryKey {
            view: view.to_owned(),
            from_ms: q.from_ms,
            to_ms: q.to_ms,
            granularity: q.granularity,
            group_by: q.group_by.clone(),
            filters: q.filters.clone(),
            measures: q.measures.clone(),
            window_ms: q.window_ms,
            quantiles: q.percentiles.qs.iter().map(|q| q.to_bits()).collect(),
        }
    }
}

#[derive(Debug)]
struct Entry {
    generation: u64,
    /// The last answer and when it was computed.
    answer: Option<(Instant, Bytes)>,
    /// The computation in flight, joined by concurrent callers.
    flight: Option<Arc<tokio::sync::OnceCell<Bytes>>>,
}

/// Boxed so the cache can run it on a background task.
pub(crate) type Compute =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Bytes, ApiError>> + Send + 'static>>;

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct ResultCache {
    ttl: Duration,
    entries: Arc<Mutex<HashMap<QueryKey, Entry>>>,
}

/// Past this age a stale answer is not served while refreshing: callers wait.
const MAX_STALE: Duration = Duration::from_secs(10);

impl ResultCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        ResultCache {
            ttl,
            entries: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// Whether answers are kept at all.
    pub(crate) fn enabled(&self) -> bool {
        !self.ttl.is_zero()
    }

    /// The answer for `key`: a fresh cached one; else a stale one (younger
    /// than `MAX_STALE`) while one background task recomputes it; else
    /// `compute`'s, shared with concurrent callers of the same key.
    /// `generation` must be read before `compute` loads the snapshot.
    pub(crate) async fn get_or_compute(
        &self,
        key: QueryKey,
        generation: u64,
        compute: impl FnOnce() -> Compute,
    ) -> Result<Bytes, ApiError> {
        if self.ttl.is_zero() {
            return compute().await;
        }
        let now = Instant::now();
        let flight = {
            // A poisoned lock only means another request panicked while holding
            // a plain map: the map is still usable.
            let mut map = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() >= MAX_ENTRIES && !map.contains_key(&key) {
                map.retain(|_, e| {
                    e.answer
                        .as_ref()
                        .is_some_and(|(t, _)| now.duration_since(*t) < self.ttl)
                });
                if map.len() >= MAX_ENTRIES {
                    map.clear();
                }
            }
            let e = map.entry(key.clone()).or_insert_with(|| Entry {
                generation,
                answer: None,
                flight: None,
            });
            if e.generation != generation {
                *e = Entry {
                    generation,
                    answer: None,
                    flight: None,
                };
            }
            match &e.answer {
                Some((t, a)) if now.duration_since(*t) < self.ttl => return Ok(a.clone()),
                Some((t, a)) if now.duration_since(*t) < MAX_STALE => {
                    let stale = a.clone();
                    if e.flight.is_none() {
                        let cell = Arc::new(tokio::sync::OnceCell::new());
                        e.flight = Some(cell.clone());
                        let fut = compute();
                        let entries = self.entries.clone();
                        tokio::spawn(async move {
                            let r = cell.get_or_try_init(|| fut).await.cloned();
                            finish(&entries, &key, generation, &cell, r.ok());
                        });
                    }
                    return Ok(stale);
                }
                _ => e
                    .flight
                    .get_or_insert_with(|| Arc::new(tokio::sync::OnceCell::new()))
                    .clone(),
            }
        };
        let r = flight.get_or_try_init(compute).await.cloned();
        finish(
            &self.entries,
            &key,
            generation,
            &flight,
            r.as_ref().ok().cloned(),
        );
        r
    }
}

/// Store a finished computation (once; later callers of the same flight find
/// it gone) and end the flight; a failure ends the flight without an answer.
fn finish(
    entries: &Mutex<HashMap<QueryKey, Entry>>,
    key: &QueryKey,
    generation: u64,
    flight: &Arc<tokio::sync::OnceCell<Bytes>>,
    answer: Option<Bytes>,
) {
    let mut map = entries.lock().unwrap_or_else(|p| p.into_inner());
    let Some(e) = map.get_mut(key) else { return };
    if e.generation != generation || !e.flight.as_ref().is_some_and(|f| Arc::ptr_eq(f, flight)) {
        return;
    }
    e.flight = None;
    if let Some(a) = answer {
        e.answer = Some((Instant::now(), a));
    }
}
