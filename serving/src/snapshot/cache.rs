//! The day cache: decoded day files held within a byte budget.
//!
//! Queries ask for a day file by its path ([`DayCache::get_or_load`]); a miss
//! loads it once however many queries ask at the same time (single flight),
//! and the least recently used files are dropped once the decoded data passes
//! `serve.cache_bytes`. Snapshot paths are immutable (a run writes new paths;
//! a carried-forward day keeps its path), so an entry is never stale: a new
//! manifest only makes some paths unused, and [`DayCache::retain`] drops them.
//!
//! Guarantees: the budget bounds what the cache keeps, not what a query
//! holds: a file larger than the budget is loaded, used by the queries that
//! asked for it and not kept, so a budget smaller than one day still answers
//! exactly. A failed load is not cached; every waiter gets the error.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;

use super::day::DayData;

type Flight = Arc<OnceCell<Result<Arc<DayData>, String>>>;

#[derive(Debug)]
enum Slot {
    Ready { data: Arc<DayData>, tick: u64 },
    Loading(Flight),
}

#[derive(Debug, Default)]
struct Inner {
    slots: HashMap<Arc<str>, Slot>,
    /// Ready entries by last use: tick → path.
    lru: BTreeMap<u64, Arc<str>>,
    tick: u64,
    bytes: usize,
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct DayCache {
    budget: usize,
    inner: Mutex<Inner>,
}

/// Whether [`DayCache::get_or_load`] found the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lookup {
    Hit,
    Miss,
}

impl DayCache {
    pub(crate) fn new(budget: usize) -> DayCache {
        DayCache {
            budget,
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // A poisoned lock means a panic elsewhere with the maps intact.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Bytes of decoded data held now.
    pub(crate) fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// The file at `path`: from the cache, or from `load` (once for all
    /// concurrent callers).
    pub(crate) async fn get_or_load<F>(
        &self,
        path: &str,
        load: F,
    ) -> Result<(Arc<DayData>, Lookup), String>
    where
        F: Future<Output = Result<Arc<DayData>, String>>,
    {
        let flight = {
            let mut guard = self.lock();
            let inner = &mut *guard;
            inner.tick += 1;
            let tick = inner.tick;
            match inner.slots.get_mut(path) {
                Some(Slot::Ready { data, tick: t }) => {
                    let data = data.clone();
                    let old = std::mem::replace(t, tick);
                    if let Some(p) = inner.lru.remove(&old) {
                        inner.lru.insert(tick, p);
                    }
                    metrics::counter!("tally_serving_day_cache_hits_total").increment(1);
                    return Ok((data, Lookup::Hit));
                }
                Some(Slot::Loading(f)) => f.clone(),
                None => {
                    let f: Flight = Arc::new(OnceCell::new());
                    inner
                        .slots
                        .insert(Arc::from(path), Slot::Loading(f.clone()));
                    f
                }
            }
        };
        metrics::counter!("tally_serving_day_cache_misses_total").increment(1);
        let result = flight.get_or_init(|| load).await.clone();
        let mut guard = self.lock();
        let inner = &mut *guard;
        let ours =
            matches!(inner.slots.get(path), Some(Slot::Loading(f)) if Arc::ptr_eq(f, &flight));
        if ours {
            match &result {
                Ok(data) if data.bytes <= self.budget => {
                    inner.tick += 1;
                    let tick = inner.tick;
                    let key: Arc<str> = Arc::from(path);
                    inner.bytes += data.bytes;
                    inner.lru.insert(tick, key.clone());
                    inner.slots.insert(
                        key,
                        Slot::Ready {
                            data: data.clone(),
                            tick,
                        },
                    );
                    evict(inner, self.budget);
                }
                // Too large to keep, or failed: the next caller loads again.
                _ => {
                    inner.slots.remove(path);
                }
            }
        }
        metrics::gauge!("tally_serving_day_cache_bytes").set(inner.bytes as f64);
        result.map(|d| (d, Lookup::Miss))
    }

    /// Drop every cached file whose path is not in `keep` (the paths the
    /// current manifests refer to).
    pub(crate) fn retain(&self, keep: &HashSet<&str>) {
        let mut guard = self.lock();
        let inner = &mut *guard;
        let gone: Vec<(Arc<str>, u64, usize)> = inner
            .slots
            .iter()
            .filter(|(p, _)| !keep.contains(p.as_ref()))
            .filter_map(|(p, s)| match s {
                Slot::Ready { data, tick } => Some((p.clone(), *tick, data.bytes)),
                Slot::Loading(_) => None,
            })
            .collect();
        for (path, tick, bytes) in gone {
            inner.slots.remove(&path);
            inner.lru.remove(&tick);
            inner.bytes -= bytes;
        }
        metrics::gauge!("tally_serving_day_cache_bytes").set(inner.bytes as f64);
    }
}

/// Drop the least recently used entries until the budget holds.
fn evict(inner: &mut Inner, budget: usize) {
    while inner.bytes > budget {
        let Some((_, path)) = inner.lru.pop_first() else {
            break;
        };
        if let Some(Slot::Ready { data, .. }) = inner.slots.remove(&path) {
            inner.bytes -= data.bytes;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn day(bytes: usize) -> Arc<DayData> {
        Arc::new(DayData {
            level_ms: 60_000,
            groups: Vec::new(),
            runs: Vec::new(),
            rows: 0,
            group_of: Vec::new(),
            measures: Vec::new(),
            bytes,
        })
    }

    #[tokio::test]
    async fn keeps_within_the_budget_dropping_the_least_recently_used() {
        let cache = DayCache::new(250);
        let load = |n| async move { Ok(day(n)) };
        assert_eq!(
            cache.get_or_load("a", load(100)).await.unwrap().1,
            Lookup::Miss
        );
        assert_eq!(
            cache.get_or_load("b", load(100)).await.unwrap().1,
            Lookup::Miss
        );
        assert_eq!(
            cache.get_or_load("a", load(100)).await.unwrap().1,
            Lookup::Hit
        );
        // c pushes out b, the least recently used.
        cache.get_or_load("c", load(100)).await.unwrap();
        assert_eq!(cache.bytes(), 200);
        assert_eq!(
            cache.get_or_load("a", load(100)).await.unwrap().1,
            Lookup::Hit
        );
        assert_eq!(
            cache.get_or_load("b", load(100)).await.unwrap().1,
            Lookup::Miss
        );
        // Larger than the budget: answered, not kept.
        let (big, _) = cache.get_or_load("big", load(1000)).await.unwrap();
        assert_eq!(big.bytes, 1000);
        assert!(cache.bytes() <= 250);
        assert_eq!(
            cache.get_or_load("big", load(1000)).await.unwrap().1,
            Lookup::Miss
        );
        // Failures are not cached.
        assert!(cache
            .get_or_load("x", async { Err("no".to_owned()) })
            .await
            .is_err());
        assert_eq!(
            cache.get_or_load("x", load(10)).await.unwrap().1,
            Lookup::Miss
        );
        cache.retain(&HashSet::from(["x"]));
        assert_eq!(cache.bytes(), 10);
    }

    #[tokio::test]
    async fn concurrent_misses_load_once() {
        let cache = Arc::new(DayCache::new(1 << 20));
        let loads = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let (cache, loads) = (cache.clone(), loads.clone());
                tokio::spawn(async move {
                    cache
                        .get_or_load("p", async move {
                            loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                            Ok(day(5))
                        })
                        .await
                        .map(|(d, _)| d.bytes)
                })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), Ok(5));
        }
        assert_eq!(loads.load(std::sync::atomic::Ordering::SeqCst), 1);
    }
}
