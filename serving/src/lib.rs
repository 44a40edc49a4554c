//! # tally-serving: the merged query API and the live dashboard
//!
//! The serving layer answers a query on a view by merging, per (bucket, group),
//! the batch snapshot with the speed layer's deltas of every ingest epoch at
//! or after the snapshot's cut, as `docs/ARCHITECTURE.md` states:
//! `value = snapshot ⊕ Σ_{epoch ≥ cut} speed`. Its memory follows a budget,
//! not the history, and the cost of a query follows what it asks for.
//!
//! ## Layout
//!
//! - [`snapshot`]: manifests (indexed, swapped atomically) and the day files
//!   read on demand per (view, day, level) through a byte-budgeted cache.
//! - `speed`: an in-memory copy of the speed layer's slices at or above the
//!   cut, with roll-up levels, kept current by reading only what each flush
//!   changed (versions in Redis).
//! - [`query`]: parameters, the level plan (the coarsest level that answers
//!   exactly), the fold on the blocking pool, the ranked answer.
//! - [`api`]: routes and layers; handlers one file per endpoint family;
//!   auth; OpenAPI. [`dto`]: the wire types.
//! - [`alert`]: threshold rules (`[[alert]]`) evaluated through the query
//!   path, and their webhooks (bounded outbox, retries with backoff); the
//!   states and undelivered notifications kept in Redis across restarts,
//!   one evaluating process at a time (a lease).
//! - `answer_cache`: optional reuse of whole answers for a short TTL.
//! - [`lookup`]: lookup tables (`[[lookup]]`) read from the object store
//!   and applied at query time (`group_by=properties.page@section`).
//! - [`state`]: [`AppState`] and the background loops (manifest poll, speed sync).
//! - `group`: groups in memory. `dashboard`: the page at `/`.
//!   `metrics`: the Prometheus recorder. [`error`]: [`ApiError`] and [`ServeError`].
//!
//! ## Entry points
//!
//! [`serve`] runs everything until a shutdown future resolves; [`router`]
//! gives the bare `axum::Router` for tests.

pub mod alert;
mod answer_cache;
pub mod api;
mod dashboard;
pub mod dto;
pub mod error;
mod group;
pub mod lookup;
mod metrics;
pub mod query;
pub mod snapshot;
mod speed;
pub mod state;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use object_store::ObjectStore;
use tally_core::config::Config;

pub use api::openapi::openapi_doc;
pub use api::router;
pub use dto::{QueryResponse, RecomputeRequest};
pub use error::{ApiError, RecomputeError, ServeError};
pub use state::{AppState, RecomputeHook, RolesProbe, ServeOptions};

/// How long the first manifest poll and speed sync may delay the API.
const FIRST_LOAD: Duration = Duration::from_secs(30);

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

/// Every background loop of a serving role: the manifest poll and the
/// speed sync ([`AppState::spawn_pollers`]) and the alert rules
/// ([`alert::run`]), until the server stops.
pub fn spawn_loops(state: &AppState) -> tokio::task::JoinHandle<()> {
    let pollers = state.spawn_pollers();
    let alerts = alert::run::spawn(state);
    tokio::spawn(async move {
        let _ = tokio::join!(pollers, alerts);
    })
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
    // A first load before answering, bounded: a slow store or Redis must
    // not keep the API down (queries then say what is degraded).
    let _ = tokio::time::timeout(FIRST_LOAD, state.refresh()).await;
    let _ = tokio::time::timeout(FIRST_LOAD, state.inner.speed.sync()).await;
    let pollers = spawn_loops(&state);
    if let Ok(a) = listener.local_addr() {
        tracing::info!(addr = %a, "serving");
    }
    let app = router(state.clone());
    let stopping = state.clone();
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            // Streams and pollers end; graceful shutdown then waits for the
            // requests in flight only.
            stopping.stop();
        })
        .await
        .map_err(ServeError::Http);
    state.stop();
    let _ = pollers.await;
    result
}
