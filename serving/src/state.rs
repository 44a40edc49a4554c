//! The shared state of the serving layer and its background loops.
//!
//! [`AppState`] holds the configuration, the object store, the current
//! [`SnapshotSet`] (an `ArcSwap`: readers never block, a reload swaps the
//! whole set at once), the day cache, the speed mirror, the merge pool's
//! permits, the lookup tables, the alert rules and the metrics handle.
//! [`AppState::refresh`] polls every view's manifest (and the lookup tables)
//! and adopts a new one; [`AppState::spawn_pollers`] runs it every
//! `poll_interval` and the speed sync every `speed_poll`, until shutdown
//! (the alert loop, which queries through this state, is
//! [`crate::alert::run`]'s).
//!
//! Guarantees: a failed poll keeps the snapshot in use and records why in
//! [`StoreHealth`], which queries report as `"degraded": ["store"]`; a
//! snapshot whose cut is below the speed copy's floor is published only
//! after the slices it needs are read; merges run on the blocking pool, at
//! most one per core at a time ([`AppState::blocking`]).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::http::StatusCode;
use object_store::ObjectStore;
use tally_core::config::{redact_url, Config, RedisMode};
use tally_core::view::ViewDef;
use tokio::sync::Semaphore;

use crate::alert::Alerts;
use crate::answer_cache::ResultCache;
use crate::dto::RecomputeRequest;
use crate::error::{ApiError, RecomputeError, ServeError};
use crate::lookup::Lookups;
use crate::query::Limits;
use crate::snapshot::cache::DayCache;
use crate::snapshot::{load_view, SnapshotSet, StoreHealth, ViewSnapshot};
use crate::speed::{RedisReader, SpeedMirror};

/// What the binary plugs in to run a recompute: returns a run description or
/// why not. Without one, recompute answers 501 `not_available`.
pub type RecomputeHook = Arc<
    dyn Fn(RecomputeRequest) -> Pin<Box<dyn Future<Output = Result<String, RecomputeError>> + Send>>
        + Send
        + Sync,
>;

/// What the binary plugs in so that `/readyz` shows its roles: each role's
/// name and whether it runs now (not waiting for a restart).
pub type RolesProbe = Arc<dyn Fn() -> Vec<(String, bool)> + Send + Sync>;

/// Tunables that are not in `tally.toml`.
#[derive(Clone)]
pub struct ServeOptions {
    /// How often manifests are polled.
    pub poll_interval: Duration,
    /// How often the speed copy is synced with Redis.
    pub speed_poll: Duration,
    /// A query older than this finds the speed copy stale and syncs first:
    /// an answer includes every flush applied this long before it.
    pub speed_max_age: Duration,
    /// Bound on each Redis round trip.
    pub redis_timeout: Duration,
    /// Largest request body accepted.
    pub body_limit: usize,
    pub recompute: Option<RecomputeHook>,
    pub roles: Option<RolesProbe>,
    /// The process's Prometheus handle when the binary installed the recorder;
    /// otherwise serving installs one on first use ([`crate::metrics::handle`]).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("poll_interval", &self.poll_interval)
            .field("speed_poll", &self.speed_poll)
            .field("speed_max_age", &self.speed_max_age)
            .field("redis_timeout", &self.redis_timeout)
            .field("body_limit", &self.body_limit)
            .field("recompute", &self.recompute.is_some())
            .field("roles", &self.roles.is_some())
            .finish()
    }
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            poll_interval: Duration::from_secs(3),
            speed_poll: Duration::from_millis(20),
            speed_max_age: Duration::from_millis(60),
            redis_timeout: Duration::from_millis(1500),
            body_limit: 64 * 1024,
            recompute: None,
            roles: None,
            metrics: None,
        }
    }
}

pub(crate) struct Inner {
    pub(crate) cfg: Config,
    pub(crate) views: HashMap<String, Arc<ViewDef>>,
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) snapshots: ArcSwap<SnapshotSet>,
    pub(crate) health: ArcSwap<StoreHealth>,
    pub(crate) days: DayCache,
    pub(crate) speed: SpeedMirror,
    /// One permit per core: the merges running at once.
    pub(crate) merges: Arc<Semaphore>,
    /// One permit per stream that may be open.
    pub(crate) streams: Arc<Semaphore>,
    /// Turns true when the server shuts down (streams end).
    stopping: tokio::sync::watch::Receiver<bool>,
    stop: tokio::sync::watch::Sender<bool>,
    pub(crate) opts: ServeOptions,
    pub(crate) metrics: metrics_exporter_prometheus::PrometheusHandle,
    pub(crate) started_ms: i64,
    pub(crate) answers: ResultCache,
    /// The lookup tables in use, refreshed with the manifests.
    pub(crate) lookups: Lookups,
    /// The threshold rules, their states and webhook queue.
    pub(crate) alerts: Alerts,
    /// Bumped after every poll stored a snapshot set or store health: cached
    /// answers of an older generation are not reused.
    generation: AtomicU64,
}

impl Inner {
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }
}

/// Everything a handler needs; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub(crate) inner: Arc<Inner>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("views", &self.inner.views.len())
            .field("opts", &self.inner.opts)
            .finish()
    }
}

pub(crate) use tally_core::time::now_ms;

impl AppState {
    /// Build the state. Connects to nothing yet: Redis lazily, the store at the
    /// first [`AppState::refresh`].
    pub fn new(
        cfg: Config,
        store: Arc<dyn ObjectStore>,
        opts: ServeOptions,
    ) -> Result<AppState, ServeError> {
        let redis = RedisReader::new(&cfg.redis, opts.redis_timeout).map_err(|source| {
            ServeError::RedisUrl {
                url: match cfg.redis.mode {
                    RedisMode::Single => redact_url(&cfg.redis.url),
                    RedisMode::Cluster => {
                        let nodes: Vec<String> =
                            cfg.redis.nodes.iter().map(|n| redact_url(n)).collect();
                        nodes.join(", ")
                    }
                },
                source,
            }
        })?;
        let metrics = opts.metrics.clone().unwrap_or_else(crate::metrics::handle);
        let views: HashMap<String, Arc<ViewDef>> = cfg
            .views
            .iter()
            .map(|v| (v.name.clone(), Arc::new(v.clone())))
            .collect();
        let mut ordered: Vec<Arc<ViewDef>> = views.values().cloned().collect();
        ordered.sort_by(|a, b| a.name.cmp(&b.name));
        // Longer than any query runs: a query holds the slices it took.
        let retire_after = cfg.serve.request_timeout.as_duration() * 2 + Duration::from_secs(5);
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let (stop, stopping) = tokio::sync::watch::channel(false);
        let alerts = Alerts::new(&cfg, redis.clone());
        Ok(AppState {
            inner: Arc::new(Inner {
                views,
                store,
                snapshots: ArcSwap::from_pointee(SnapshotSet::default()),
                health: ArcSwap::from_pointee(StoreHealth::default()),
                days: DayCache::new(usize::try_from(cfg.serve.cache_bytes.0).unwrap_or(usize::MAX)),
                speed: SpeedMirror::new(redis, ordered, retire_after),
                merges: Arc::new(Semaphore::new(cores)),
                streams: Arc::new(Semaphore::new(cfg.serve.max_streams)),
                stopping,
                stop,
                metrics,
                started_ms: now_ms(),
                answers: ResultCache::new(cfg.serve.answer_ttl.as_duration()),
                lookups: Lookups::default(),
                alerts,
                generation: AtomicU64::new(0),
                opts,
                cfg,
            }),
        })
    }

    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    /// What bounds a query's parameters.
    pub(crate) fn limits(&self) -> Limits {
        Limits {
            max_buckets: self.inner.cfg.serve.max_buckets,
            max_filters: self.inner.cfg.serve.max_filters,
        }
    }

    /// The snapshot of `view` in use.
    pub fn snapshot(&self, view: &str) -> Option<Arc<ViewSnapshot>> {
        self.inner.snapshots.load().views.get(view).cloned()
    }

    /// Run `f` on the blocking pool, at most one per core at a time. The
    /// permit goes with the task: a caller that stops waiting (a timeout)
    /// does not free a core the task still uses.
    pub(crate) async fn blocking<T, F>(&self, f: F) -> Result<T, ApiError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let internal =
            |what: String| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", what);
        let permit = self
            .inner
            .merges
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| internal("the merge pool is closed".into()))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            f()
        })
        .await
        .map_err(|e| internal(format!("a merge task failed: {e}")))
    }

    /// The server is stopping: streams end, background loops stop (the
    /// alert loop gives its lease up: another serving process takes over).
    pub fn stop(&self) {
        let _ = self.inner.stop.send(true);
    }

    /// Resolves once [`AppState::stop`] was called.
    pub(crate) fn until_stopped(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.inner.stopping.clone();
        async move {
            while !*rx.borrow_and_update() {
                if rx.changed().await.is_err() {
                    return;
                }
            }
        }
    }

    /// Poll every view's manifest once and adopt the new ones, and read the
    /// lookup tables that changed. Returns the number of views whose
    /// snapshot changed.
    pub async fn refresh(&self) -> usize {
        let tables_changed = self
            .inner
            .lookups
            .refresh(self.inner.store.as_ref(), &self.inner.cfg.lookups, now_ms())
            .await;
        let current = self.inner.snapshots.load_full();
        let mut next = (*current).clone();
        let mut health = StoreHealth {
            last_poll_ms: Some(now_ms()),
            ..Default::default()
        };
        let mut changed = 0;
        let mut lowered = false;
        let mut views: Vec<Arc<ViewDef>> = self.inner.views.values().cloned().collect();
        views.sort_by(|a, b| a.name.cmp(&b.name));
        for view in views {
            let name = &view.name;
            let manifest = match tally_store::manifest::read(self.inner.store.as_ref(), &view).await
            {
                Ok(m) => m,
                Err(e) => {
                    health.errors.insert(name.clone(), e.to_string());
                    continue;
                }
            };
            let previous = current.views.get(name);
            let same = previous.is_some_and(|s| {
                s.manifest
                    .as_ref()
                    .map(|m| (&m.run_id, m.cut, m.created_ms))
                    == manifest.as_ref().map(|m| (&m.run_id, m.cut, m.created_ms))
            });
            if same {
                continue;
            }
            let previous = previous.map(|p| p.as_ref());
            match load_view(
                self.inner.store.clone(),
                &view,
                manifest,
                previous,
                now_ms(),
            )
            .await
            {
                Ok(snap) => {
                    if let Some(m) = &snap.manifest {
                        metrics::gauge!("tally_serving_snapshot_cut", "view" => name.clone())
                            .set(m.cut as f64);
                        tracing::info!(view = %name, run = %m.run_id, cut = m.cut, rows = snap.rows, "snapshot adopted");
                    }
                    lowered |= self.inner.speed.set_floor(name, snap.cut());
                    next.views.insert(name.clone(), Arc::new(snap));
                    changed += 1;
                }
                Err(e) => {
                    tracing::warn!(view = %name, error = %e, "snapshot not adopted; keeping the previous one");
                    health.errors.insert(name.clone(), e.to_string());
                }
            }
        }
        if lowered {
            // The new cuts need slices the copy dropped: read them first.
            self.inner.speed.sync().await;
        }
        if changed > 0 {
            self.inner.days.retain(&next.paths());
            self.inner.snapshots.store(Arc::new(next));
        }
        let health_changed = self.inner.health.load().errors != health.errors;
        self.inner.health.store(Arc::new(health));
        // After the stores: a query that reads the new generation sees them.
        if changed > 0 || health_changed || tables_changed {
            self.inner.generation.fetch_add(1, Ordering::SeqCst);
        }
        changed
    }

    /// Poll manifests every `poll_interval` and sync the speed copy every
    /// `speed_poll`, until [`AppState::stop`].
    pub fn spawn_pollers(&self) -> tokio::task::JoinHandle<()> {
        let (a, b) = (self.clone(), self.clone());
        let manifests = tokio::spawn(async move {
            let stop = a.until_stopped();
            tokio::pin!(stop);
            let mut tick = interval(a.inner.opts.poll_interval);
            loop {
                tokio::select! {
                    _ = tick.tick() => { a.refresh().await; }
                    _ = &mut stop => break,
                }
            }
        });
        let speed = tokio::spawn(async move {
            let stop = b.until_stopped();
            tokio::pin!(stop);
            let period = b.inner.opts.speed_poll;
            let mut tick = interval(period);
            loop {
                tokio::select! {
                    _ = tick.tick() => b.inner.speed.ensure_fresh(period).await,
                    _ = &mut stop => break,
                }
            }
        });
        tokio::spawn(async move {
            let _ = tokio::join!(manifests, speed);
        })
    }
}

/// A ticker that skips the ticks a slow round missed.
fn interval(period: Duration) -> tokio::time::Interval {
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick
}
