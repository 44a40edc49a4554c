//! # tally-serving: the merged query API and the live dashboard
//!
//! The serving layer answers a query on a view by merging, per (bucket, group),
//! the batch snapshot (loaded from the object store into memory) with the
//! speed layer's Redis deltas of every ingest epoch at or after the snapshot's
//! cut, as `DESIGN.md` states: `value = snapshot ⊕ Σ_{epoch ≥ cut} speed`.
//!
//! ## Layout
//!
//! - [`snapshot`]: manifests and Parquet day files → in-memory cells, by view and day.
//! - [`state`]: [`AppState`] (config, store, the `ArcSwap`ped snapshots, Redis
//!   reader) and the manifest poller.
//! - [`speed`]: pipelined, time-bounded reads of the speed layer's slices.
//! - [`query`]: parameter parsing and the merge/roll-up/group/filter fold.
//! - [`cache`]: whole answers reused for a short TTL, single-flight.
//! - [`api`]: routes, auth, JSON errors, SSE, status, OpenAPI.
//! - [`dashboard`]: the page at `/`, embedded in the binary.
//! - [`metrics`]: the Prometheus recorder behind `/metrics`.
//! - [`error`]: [`ApiError`] (`{code, message}`) and [`ServeError`].
//!
//! ## Entry points
//!
//! [`serve`] runs everything until a shutdown future resolves; [`router`]
//! gives the bare `axum::Router` for tests.

pub mod api;
pub mod cache;
pub mod dashboard;
pub mod error;
pub mod metrics;
pub mod query;
pub mod snapshot;
pub mod speed;
pub mod state;

use std::future::Future;
use std::sync::Arc;

use object_store::ObjectStore;
use tally_core::config::Config;

pub use api::{openapi_doc, router, run_query, QueryResponse};
pub use error::{ApiError, ServeError};
pub use state::{AppState, RecomputeHook, RecomputeRequest, ServeOptions};

/// Serve on `cfg.serve.listen` until `shutdown` resolves, with default options.
pub async fn serve(
    cfg: Config,
    store: Arc<dyn ObjectStore>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve_with(cfg, store, ServeOptions::default(), shutdown).await
}

/// [`serve`] with explicit [`ServeOptions`] (poll interval, recompute hook…).
pub async fn serve_with(
    cfg: Config,
    store: Arc<dyn ObjectStore>,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let addr = cfg.serve.listen.clone();
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|source| ServeError::Bind {
            addr: addr.clone(),
            source,
        })?;
    serve_on(listener, cfg, store, opts, shutdown).await
}

/// Serve on an already bound listener (tests bind `127.0.0.1:0`).
pub async fn serve_on(
    listener: tokio::net::TcpListener,
    cfg: Config,
    store: Arc<dyn ObjectStore>,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let state = AppState::new(cfg, store, opts)?;
    // A first load before answering, bounded: a slow store must not keep the
    // API down (queries then say "degraded": ["store"]).
    let _ = tokio::time::timeout(std::time::Duration::from_secs(30), state.refresh()).await;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let poller = state.spawn_poller(stop_rx);
    if let Ok(a) = listener.local_addr() {
        tracing::info!(addr = %a, "serving");
    }
    let app = router(state);
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ServeError::Http);
    let _ = stop_tx.send(true);
    let _ = poller.await;
    result
}
