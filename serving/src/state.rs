//! The shared state of the serving layer and the snapshot poller.
//!
//! [`AppState`] holds the configuration, the object store, the current
//! [`SnapshotSet`] (an `ArcSwap`: readers never block, a reload swaps the whole
//! set at once), the Redis reader and the metrics handle. [`AppState::refresh`]
//! polls every view's manifest and loads a run it has not loaded yet;
//! [`AppState::spawn_poller`] calls it every `poll_interval` until shutdown.
//!
//! Guarantee: a failed poll keeps the snapshot in use and records why in
//! [`StoreHealth`], which queries report as `"degraded": ["store"]`.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use object_store::ObjectStore;
use serde::Deserialize;
use tally_core::config::Config;
use tally_core::view::ViewDef;
use utoipa::ToSchema;

use crate::error::ServeError;
use crate::snapshot::{load_view, read_manifest, SnapshotSet, StoreHealth, ViewSnapshot};
use crate::speed::SpeedReader;

/// A recompute request (`POST /api/v1/recompute`).
#[derive(Debug, Clone, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RecomputeRequest {
    /// The view to recompute; all views when absent.
    pub view: Option<String>,
    /// Start of the event-time range: RFC 3339 text or epoch ms (integer).
    #[schema(schema_with = time_bound_schema)]
    pub from: Option<serde_json::Value>,
    /// End of the event-time range: RFC 3339 text or epoch ms (integer).
    #[schema(schema_with = time_bound_schema)]
    pub to: Option<serde_json::Value>,
}

/// `from`/`to` of a recompute: RFC 3339 text, epoch milliseconds, or null/absent.
fn time_bound_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, OneOfBuilder, SchemaFormat, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .description(Some(
                    "RFC 3339, e.g. 2024-01-01T00:00:00Z, or epoch ms as text",
                )),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
                .description(Some("epoch milliseconds")),
        )
        .item(ObjectBuilder::new().schema_type(Type::Null))
        .build()
        .into()
}

/// What the binary plugs in to run a recompute: returns a run description or
/// an error message. Without one, recompute answers 501 `not_available`.
pub type RecomputeHook = Arc<
    dyn Fn(RecomputeRequest) -> Pin<Box<dyn Future<Output = Result<String, String>> + Send>>
        + Send
        + Sync,
>;

/// Tunables that are not in `tally.toml`.
#[derive(Clone)]
pub struct ServeOptions {
    /// How often manifests are polled.
    pub poll_interval: Duration,
    /// Bound on each Redis round trip.
    pub redis_timeout: Duration,
    /// Largest request body accepted.
    pub body_limit: usize,
    pub recompute: Option<RecomputeHook>,
    /// How long a whole query answer is reused ([`crate::cache`]); zero
    /// disables the cache. Speed-layer writes show after at most this long.
    pub result_ttl: Duration,
    /// The process's Prometheus handle when the binary installed the recorder;
    /// otherwise serving installs one on first use ([`crate::metrics::handle`]).
    pub metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl std::fmt::Debug for ServeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeOptions")
            .field("poll_interval", &self.poll_interval)
            .field("redis_timeout", &self.redis_timeout)
            .field("body_limit", &self.body_limit)
            .field("recompute", &self.recompute.is_some())
            .field("result_ttl", &self.result_ttl)
            .finish()
    }
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            poll_interval: Duration::from_secs(3),
            redis_timeout: Duration::from_millis(1500),
            body_limit: 64 * 1024,
            recompute: None,
            result_ttl: Duration::from_millis(250),
            metrics: None,
        }
    }
}

pub(crate) struct Inner {
    pub(crate) cfg: Config,
    pub(crate) views: HashMap<String, ViewDef>,
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) snapshots: ArcSwap<SnapshotSet>,
    pub(crate) health: ArcSwap<StoreHealth>,
    pub(crate) speed: SpeedReader,
    pub(crate) opts: ServeOptions,
    pub(crate) metrics: metrics_exporter_prometheus::PrometheusHandle,
    pub(crate) started_ms: i64,
    pub(crate) cache: crate::cache::ResultCache,
    /// Bumped after every poll stored a snapshot set or store health: cached
    /// answers of an older generation are not reused.
    pub(crate) generation: std::sync::atomic::AtomicU64,
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

pub(crate) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

impl AppState {
    /// Build the state. Connects to nothing yet: Redis lazily, the store at the
    /// first [`AppState::refresh`].
    pub fn new(
        cfg: Config,
        store: Arc<dyn ObjectStore>,
        opts: ServeOptions,
    ) -> Result<AppState, ServeError> {
        let speed = SpeedReader::new(&cfg.redis.url, &cfg.redis.key_prefix, opts.redis_timeout)
            .map_err(|source| ServeError::RedisUrl {
                url: cfg.redis.url.clone(),
                source,
            })?;
        let metrics = opts.metrics.clone().unwrap_or_else(crate::metrics::handle);
        let views = cfg
            .views
            .iter()
            .map(|v| (v.name.clone(), v.clone()))
            .collect();
        Ok(AppState {
            inner: Arc::new(Inner {
                views,
                store,
                snapshots: ArcSwap::from_pointee(SnapshotSet::default()),
                health: ArcSwap::from_pointee(StoreHealth::default()),
                speed,
                metrics,
                started_ms: now_ms(),
                cache: crate::cache::ResultCache::new(opts.result_ttl),
                generation: std::sync::atomic::AtomicU64::new(0),
                opts,
                cfg,
            }),
        })
    }

    pub fn config(&self) -> &Config {
        &self.inner.cfg
    }

    /// The snapshot of `view` in use.
    pub fn snapshot(&self, view: &str) -> Option<Arc<ViewSnapshot>> {
        self.inner.snapshots.load().views.get(view).cloned()
    }

    /// Poll every view's manifest once and load the runs not loaded yet.
    /// Returns the number of views whose snapshot changed.
    pub async fn refresh(&self) -> usize {
        let current = self.inner.snapshots.load_full();
        let mut next = (*current).clone();
        let mut health = StoreHealth {
            last_poll_ms: Some(now_ms()),
            ..Default::default()
        };
        let mut changed = 0;
        let mut names: Vec<&String> = self.inner.views.keys().collect();
        names.sort();
        for name in names {
            let view = &self.inner.views[name];
            let manifest = match read_manifest(self.inner.store.as_ref(), view).await {
                Ok(m) => m,
                Err(e) => {
                    health.errors.insert(name.clone(), e.to_string());
                    continue;
                }
            };
            let same = current.views.get(name).is_some_and(|s| {
                s.manifest
                    .as_ref()
                    .map(|m| (&m.run_id, m.cut, m.created_ms))
                    == manifest.as_ref().map(|m| (&m.run_id, m.cut, m.created_ms))
            });
            if same {
                continue;
            }
            match load_view(self.inner.store.clone(), view, manifest, now_ms()).await {
                Ok(snap) => {
                    if let Some(m) = &snap.manifest {
                        metrics::gauge!("tally_serving_snapshot_cut", "view" => name.clone())
                            .set(m.cut as f64);
                        tracing::info!(view = %name, run = %m.run_id, cut = m.cut, rows = snap.rows, "snapshot loaded");
                    }
                    next.views.insert(name.clone(), Arc::new(snap));
                    changed += 1;
                }
                Err(e) => {
                    tracing::warn!(view = %name, error = %e, "snapshot not loaded; keeping the previous one");
                    health.errors.insert(name.clone(), e.to_string());
                }
            }
        }
        if changed > 0 {
            self.inner.snapshots.store(Arc::new(next));
        }
        let health_changed = self.inner.health.load().errors != health.errors;
        self.inner.health.store(Arc::new(health));
        // After the stores: a query that reads the new generation sees them.
        if changed > 0 || health_changed {
            self.inner
                .generation
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        changed
    }

    /// Poll manifests every `poll_interval` until `shutdown` fires.
    pub fn spawn_poller(
        &self,
        mut shutdown: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let state = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(state.inner.opts.poll_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => { state.refresh().await; }
                    _ = shutdown.changed() => break,
                }
            }
        })
    }
}
