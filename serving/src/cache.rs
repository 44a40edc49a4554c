//! A short-lived cache of whole query answers, shared by the query endpoint
//! and every SSE stream.
//!
//! A dashboard wall, many browser tabs and the SSE streams ask the same few
//! queries again and again; the merge (snapshot cells ⊕ every speed slice of
//! the range, read from Redis) is the expensive part, and its inputs change
//! slowly. [`ResultCache`] keeps the serialized answer of each resolved query
//! ([`QueryKey`]: view, `[from, to)`, granularity, grouping, filters,
//! measures) for at most `ServeOptions::result_ttl` (default 250 ms).
//!
//! Guarantees:
//! - Freshness: an answer is reused only while it is younger than the TTL
//!   *and* was computed in the current generation of the snapshot set and store
//!   health (a counter [`crate::AppState::refresh`] bumps after every poll), so
//!   a newly loaded snapshot or a store failure shows at once; speed-layer
//!   writes show within the TTL. The answer says when Redis was read
//!   (`freshness.speed_read_ms`).
//! - Single flight: concurrent requests for the same stale key wait for one
//!   computation instead of each reading Redis (a `tokio::sync::OnceCell` per
//!   entry). A failed computation (a 4xx) is not cached.
//! - Bounded: at most `MAX_ENTRIES` keys; when full, stale entries are dropped,
//!   then everything.
//! - `result_ttl = 0` disables it: every request merges afresh.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use tally_core::time::Granularity;

use crate::api::QueryResponse;
use crate::error::ApiError;
use crate::query::Query;

const MAX_ENTRIES: usize = 1024;

/// A resolved query: equal keys give equal answers from equal inputs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QueryKey {
    pub view: String,
    pub from_ms: i64,
    pub to_ms: i64,
    pub granularity: Granularity,
    pub group_by: Vec<usize>,
    pub filters: BTreeMap<usize, Vec<String>>,
    pub measures: Vec<usize>,
}

impl QueryKey {
    pub fn new(view: &str, q: &Query) -> QueryKey {
        QueryKey {
            view: view.to_owned(),
            from_ms: q.from_ms,
            to_ms: q.to_ms,
            granularity: q.granularity,
            group_by: q.group_by.clone(),
            filters: q.filters.clone(),
            measures: q.measures.clone(),
        }
    }
}

/// One computed answer and its JSON.
#[derive(Debug)]
pub struct Answer {
    pub response: QueryResponse,
    pub json: Bytes,
}

#[derive(Debug)]
struct Slot {
    born: Instant,
    generation: u64,
    cell: tokio::sync::OnceCell<Arc<Answer>>,
}

/// See the module documentation.
#[derive(Debug)]
pub struct ResultCache {
    ttl: Duration,
    slots: Mutex<HashMap<QueryKey, Arc<Slot>>>,
}

impl ResultCache {
    pub fn new(ttl: Duration) -> Self {
        ResultCache {
            ttl,
            slots: Mutex::new(HashMap::new()),
        }
    }

    /// The answer for `key`: a fresh cached one, or `compute()`'s (shared with
    /// concurrent callers of the same key). `generation` must be read before
    /// `compute` loads the snapshot.
    pub async fn get_or_compute<F, Fut>(
        &self,
        key: QueryKey,
        generation: u64,
        compute: F,
    ) -> Result<Arc<Answer>, ApiError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<Arc<Answer>, ApiError>>,
    {
        if self.ttl.is_zero() {
            return compute().await;
        }
        let now = Instant::now();
        let slot = {
            // A poisoned lock only means another request panicked mid-update
            // of a plain map: the map is still usable.
            let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
            let fresh =
                |s: &Slot| s.generation == generation && now.duration_since(s.born) < self.ttl;
            match slots.get(&key) {
                Some(s) if fresh(s) => s.clone(),
                _ => {
                    if slots.len() >= MAX_ENTRIES {
                        slots.retain(|_, s| fresh(s));
                        if slots.len() >= MAX_ENTRIES {
                            slots.clear();
                        }
                    }
                    let s = Arc::new(Slot {
                        born: now,
                        generation,
                        cell: tokio::sync::OnceCell::new(),
                    });
                    slots.insert(key, s.clone());
                    s
                }
            }
        };
        slot.cell.get_or_try_init(compute).await.cloned()
    }
}
