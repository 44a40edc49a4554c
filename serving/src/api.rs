//! The HTTP API: routes, handlers, auth, error shaping and the OpenAPI document.
//!
//! Routes (see [`router`]): `GET /api/v1/views`, `GET /api/v1/views/{view}/query`,
//! `GET /api/v1/views/{view}/stream` (the same query as server-sent events),
//! `GET /api/v1/status`, `POST /api/v1/recompute`, `GET /metrics`,
//! `GET /openapi.json`, `GET /` (dashboard).
//!
//! Guarantees: every non-2xx answer is JSON `{code, message}` (the
//! [`json_errors`] layer rewrites the bare answers of framework layers: 404,
//! 405, 413, rejections); a query runs under the configured request timeout
//! (then 408 `timeout`); reads need the read token when one is configured
//! (`Authorization: Bearer …` or `access_token=` for EventSource), admin calls
//! always need the admin token; a panic is caught and answered as 500 JSON.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, MatchedPath, Path, RawQuery, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::Stream;
use object_store::path::Path as StorePath;
use object_store::ObjectStoreExt;
use serde::Serialize;
use tally_core::manifest::{CutFile, ProgressFile};
use tally_core::paths;
use utoipa::{OpenApi, ToSchema};

use crate::cache::{Answer, QueryKey};
use crate::error::{code_for_status, ApiError, ErrorBody};
use crate::query::{execute, Point, Query, Series};
use crate::speed::SpeedRequest;
use crate::state::{now_ms, AppState, RecomputeRequest};

/// A measure of a view.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct MeasureInfo {
    pub name: String,
    /// count, sum, min, max or distinct.
    pub agg: String,
    pub field: Option<String>,
}

/// A view as the API describes it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ViewInfo {
    pub name: String,
    pub dimensions: Vec<String>,
    /// The base granularity; queries may use any multiple of it.
    pub granularity: String,
    pub measures: Vec<MeasureInfo>,
    /// The cut of the loaded snapshot (null: no batch run yet).
    pub cut: Option<i64>,
    pub snapshot_run_id: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ViewsResponse {
    pub views: Vec<ViewInfo>,
}

/// How fresh the data behind an answer is.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Freshness {
    /// The snapshot run merged in (null: none).
    pub snapshot_run_id: Option<String>,
    /// When that run was published, epoch ms.
    pub snapshot_created_ms: Option<i64>,
    /// When the speed layer was read, epoch ms (null: it was not).
    pub speed_read_ms: Option<i64>,
    /// Speed-layer slices (epoch ≥ cut, day in range) merged in.
    pub speed_slices: usize,
    /// Speed-layer fields that did not parse and were skipped.
    pub speed_skipped: usize,
}

/// The answer to a view query.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct QueryResponse {
    pub view: String,
    /// Base buckets starting in [from_ms, to_ms) are included.
    pub from_ms: i64,
    pub to_ms: i64,
    pub granularity: String,
    pub group_by: Vec<String>,
    pub measures: Vec<String>,
    /// Speed slices of epochs ≥ cut are merged with the snapshot (null: no snapshot, all slices).
    pub cut: Option<i64>,
    pub freshness: Freshness,
    /// Components that were down or failed: `redis`, `store`. Empty when complete.
    pub degraded: Vec<String>,
    /// Groups with data; `series` holds at most max_groups of them.
    pub groups_total: usize,
    pub groups_returned: usize,
    /// True when groups were cut to max_groups (largest first by the first measure).
    pub overflow: bool,
    pub series: Vec<Series>,
    /// Every group over the whole range (distinct: HyperLogLog union).
    #[schema(value_type = BTreeMap<String, Option<f64>>)]
    pub totals: BTreeMap<String, serde_json::Value>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct ViewStatus {
    pub name: String,
    pub cut: Option<i64>,
    pub last_run_id: Option<String>,
    pub last_run_created_ms: Option<i64>,
    /// now - last_run_created_ms.
    pub snapshot_age_ms: Option<i64>,
    pub snapshot_rows: u64,
    pub snapshot_days: usize,
    /// False when the snapshot was computed with another view definition.
    pub definition_matches: bool,
    /// Speed-layer slices present in Redis (any epoch).
    pub speed_slices: Option<u64>,
    pub store_error: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct PartitionStatus {
    pub topic: String,
    pub partition: i32,
    /// Offsets below this are in the master dataset.
    pub archived_to: i64,
    /// The end offset the archiver last saw.
    pub high_watermark: i64,
    pub observed_ms: i64,
    /// Next offset the speed layer applies (from Redis).
    pub speed_offset: Option<i64>,
    /// high_watermark - speed_offset: how far the speed layer trails (estimate).
    pub speed_lag: Option<i64>,
    pub archive_lag: i64,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct StatusResponse {
    pub now_ms: i64,
    pub started_ms: i64,
    pub degraded: Vec<String>,
    /// The archiver's published cut (archive/cut.json).
    pub archive_cut: Option<i64>,
    pub archive_cut_decided_ms: Option<i64>,
    pub views: Vec<ViewStatus>,
    pub partitions: Vec<PartitionStatus>,
    /// Speed-layer offsets per `topic/partition`.
    pub speed_offsets: BTreeMap<String, i64>,
    pub last_manifest_poll_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RecomputeResponse {
    pub accepted: bool,
    pub detail: String,
}

#[derive(OpenApi)]
#[openapi(
    info(title = "Tally serving API", description = "Batch snapshot ⊕ speed-layer deltas, per query."),
    paths(list_views, query_view, stream_view, status, recompute, metrics_text),
    components(schemas(ErrorBody, ViewsResponse, ViewInfo, MeasureInfo, QueryResponse, Freshness, Series, Point, StatusResponse, ViewStatus, PartitionStatus, RecomputeRequest, RecomputeResponse)),
    modifiers(&Security)
)]
struct ApiDoc;

struct Security;
impl utoipa::Modify for Security {
    fn modify(&self, api: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let c = api.components.get_or_insert_with(Default::default);
        c.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document, generated from the handlers and types.
pub fn openapi_doc() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// The router with every route and layer.
pub fn router(state: AppState) -> Router {
    let body_limit = state.inner.opts.body_limit;
    let reads = Router::new()
        .route("/api/v1/views", get(list_views))
        .route("/api/v1/views/{view}/query", get(query_view))
        .route("/api/v1/views/{view}/stream", get(stream_view))
        .route("/api/v1/status", get(status))
        .route("/metrics", get(metrics_text))
        .route_layer(from_fn_with_state(state.clone(), require_read));
    Router::new()
        .merge(reads)
        .route("/api/v1/recompute", post(recompute))
        .route("/openapi.json", get(openapi_json))
        .route("/", get(dashboard))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(from_fn(json_errors))
        .layer(from_fn(track))
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            panic_response,
        ))
        .with_state(state)
}

fn panic_response(_: Box<dyn std::any::Any + Send + 'static>) -> Response {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        "the server hit a bug answering this request",
    )
    .into_response()
}

async fn not_found() -> ApiError {
    ApiError::not_found("not_found", "no such endpoint: see /openapi.json")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take that method: see /openapi.json",
    )
}

/// Rewrite any non-JSON error answer (from a framework layer) into `{code, message}`.
async fn json_errors(req: Request, next: Next) -> Response {
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) {
        return resp;
    }
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if is_json {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let mut message = String::from_utf8_lossy(&text).trim().to_owned();
    if message.is_empty() {
        message = status.canonical_reason().unwrap_or("error").to_owned();
    }
    let mut out = (
        status,
        Json(ErrorBody {
            code: code_for_status(status).to_owned(),
            message,
        }),
    )
        .into_response();
    for (k, v) in parts.headers.iter() {
        if k != header::CONTENT_TYPE && k != header::CONTENT_LENGTH {
            out.headers_mut().insert(k.clone(), v.clone());
        }
    }
    out
}

/// Count requests and their latency per route and status.
async fn track(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "other".to_owned(), |m| m.as_str().to_owned());
    let started = Instant::now();
    let resp = next.run(req).await;
    let status = resp.status().as_u16().to_string();
    metrics::counter!("tally_serving_requests_total", "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("tally_serving_request_seconds", "route" => route)
        .record(started.elapsed().as_secs_f64());
    resp
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

/// Compare without an early exit on the first differing byte.
fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

fn query_token(raw: Option<&str>) -> Option<String> {
    raw?.split('&').find_map(|p| {
        p.strip_prefix("access_token=").map(|v| {
            v.replace("%2B", "+")
                .replace("%2F", "/")
                .replace("%3D", "=")
        })
    })
}

async fn require_read(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &state.inner.cfg.serve.read_token {
        let given = bearer(req.headers())
            .map(str::to_owned)
            .or_else(|| query_token(req.uri().query()));
        if !given.is_some_and(|g| same_token(&g, token)) {
            let mut r = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "this server needs a read token: send Authorization: Bearer <token>",
            )
            .into_response();
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    next.run(req).await
}

fn view_info(state: &AppState, v: &tally_core::view::ViewDef) -> ViewInfo {
    let snap = state.snapshot(&v.name);
    ViewInfo {
        name: v.name.clone(),
        dimensions: v.dimensions.iter().map(|d| d.as_string()).collect(),
        granularity: v.granularity.to_string(),
        measures: v
            .measures
            .iter()
            .map(|m| MeasureInfo {
                name: m.name.clone(),
                agg: m.agg.name().to_owned(),
                field: m.field.as_ref().map(|f| f.as_string()),
            })
            .collect(),
        cut: snap.as_ref().and_then(|s| s.cut()),
        snapshot_run_id: snap
            .as_ref()
            .and_then(|s| s.manifest.as_ref())
            .map(|m| m.run_id.clone()),
    }
}

/// List the views and their measures.
#[utoipa::path(get, path = "/api/v1/views", security((), ("bearer" = [])),
    responses((status = 200, body = ViewsResponse), (status = 401, body = ErrorBody)))]
async fn list_views(State(state): State<AppState>) -> Json<ViewsResponse> {
    let views = state
        .inner
        .cfg
        .views
        .iter()
        .map(|v| view_info(&state, v))
        .collect();
    Json(ViewsResponse { views })
}

fn lookup_view<'a>(
    state: &'a AppState,
    view_name: &str,
) -> Result<&'a tally_core::view::ViewDef, ApiError> {
    state.inner.views.get(view_name).ok_or_else(|| {
        ApiError::not_found(
            "unknown_view",
            format!("no view `{view_name}`: GET /api/v1/views lists them"),
        )
    })
}

/// Run one query, uncached: snapshot ⊕ speed deltas of epochs ≥ cut.
pub async fn run_query(
    state: &AppState,
    view_name: &str,
    raw: Option<&str>,
) -> Result<QueryResponse, ApiError> {
    let view = lookup_view(state, view_name)?;
    let q = Query::parse(view, raw, now_ms(), state.inner.cfg.serve.max_buckets)?;
    Ok(merge_query(state, view, &q).await)
}

/// One query's answer through the result cache ([`crate::cache`]): the
/// response and its JSON, shared by the query endpoint and the SSE streams.
pub async fn cached_query(
    state: &AppState,
    view_name: &str,
    raw: Option<&str>,
) -> Result<Arc<Answer>, ApiError> {
    let view = lookup_view(state, view_name)?;
    let q = Query::parse(view, raw, now_ms(), state.inner.cfg.serve.max_buckets)?;
    // Read before the merge loads the snapshot (see ResultCache).
    let generation = state.inner.generation.load(Ordering::SeqCst);
    let key = QueryKey::new(view_name, &q);
    let st = state.clone();
    let name = view_name.to_owned();
    state
        .inner
        .cache
        .get_or_compute(key, generation, move || {
            Box::pin(async move {
                let view = lookup_view(&st, &name)?;
                let response = merge_query(&st, view, &q).await;
                let json = serde_json::to_vec(&response).map_err(|e| {
                    ApiError::new(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "internal",
                        format!("cannot encode the answer: {e}"),
                    )
                })?;
                metrics::counter!("tally_serving_query_merges_total").increment(1);
                Ok(Arc::new(Answer {
                    response,
                    json: json.into(),
                }))
            })
        })
        .await
}

/// The merge of a parsed query.
async fn merge_query(
    state: &AppState,
    view: &tally_core::view::ViewDef,
    q: &Query,
) -> QueryResponse {
    let view_name = view.name.as_str();
    let serve = &state.inner.cfg.serve;
    let snap = state.snapshot(view_name);
    let cut = snap.as_ref().and_then(|s| s.cut());
    let mut degraded = Vec::new();
    if state.inner.health.load().errors.contains_key(view_name) {
        degraded.push("store".to_owned());
    }
    let req = SpeedRequest {
        view,
        cut,
        from_ms: q.from_ms,
        to_ms: q.to_ms,
        measures: &q.measures,
    };
    let started = Instant::now();
    let (read, speed_read_ms) = match state.inner.speed.read(&req).await {
        Ok(r) => (r, Some(now_ms())),
        Err(e) => {
            tracing::debug!(error = %e, "speed layer unavailable; answering from the snapshot");
            metrics::counter!("tally_serving_degraded_total", "component" => "redis").increment(1);
            degraded.push("redis".to_owned());
            (Default::default(), None)
        }
    };
    metrics::histogram!("tally_serving_redis_seconds").record(started.elapsed().as_secs_f64());
    let merged = execute(view, q, snap.as_deref(), &read.deltas, serve.max_groups);
    let manifest = snap.as_ref().and_then(|s| s.manifest.as_ref());
    QueryResponse {
        view: view.name.clone(),
        from_ms: q.from_ms,
        to_ms: q.to_ms,
        granularity: q.granularity.to_string(),
        group_by: q
            .group_by
            .iter()
            .map(|&d| view.dimensions[d].as_string())
            .collect(),
        measures: q
            .measures
            .iter()
            .map(|&m| view.measures[m].name.clone())
            .collect(),
        cut,
        freshness: Freshness {
            snapshot_run_id: manifest.map(|m| m.run_id.clone()),
            snapshot_created_ms: manifest.map(|m| m.created_ms),
            speed_read_ms,
            speed_slices: read.slices,
            speed_skipped: read.skipped,
        },
        degraded,
        groups_total: merged.groups_total,
        groups_returned: merged.series.len(),
        overflow: merged.series.len() < merged.groups_total,
        series: merged.series,
        totals: merged.totals,
    }
}

fn timeout(state: &AppState) -> Duration {
    state
        .inner
        .cfg
        .serve
        .request_timeout
        .as_duration()
        .max(Duration::from_millis(1))
}

/// Query a view over [from, to).
#[utoipa::path(get, path = "/api/v1/views/{view}/query", security((), ("bearer" = [])),
    params(
        ("view" = String, Path, description = "view name"),
        ("from" = Option<String>, Query, description = "start, RFC 3339 or epoch ms (default: to - last)"),
        ("last" = Option<String>, Query, description = "instead of from: the range length before `to`, e.g. 1h (default 24h)"),
        ("to" = Option<String>, Query, description = "end (exclusive), RFC 3339 or epoch ms (default: end of the current bucket)"),
        ("granularity" = Option<String>, Query, description = "a multiple of the view's granularity, e.g. 1h"),
        ("group_by" = Option<String>, Query, description = "comma list of the view's dimensions"),
        ("filter" = Option<Vec<String>>, Query, description = "dimension:value, repeatable (OR per dimension, AND across)"),
        ("measures" = Option<String>, Query, description = "comma list of measures (default: all)"),
    ),
    responses((status = 200, body = QueryResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 408, body = ErrorBody)))]
async fn query_view(
    State(state): State<AppState>,
    Path(view): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let t = timeout(&state);
    let r = tokio::time::timeout(t, cached_query(&state, &view, raw.as_deref()))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!("the query took longer than {t:?}: narrow the range or the grouping"),
            )
        })??;
    metrics::histogram!("tally_serving_query_seconds").record(started.elapsed().as_secs_f64());
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        r.json.clone(),
    )
        .into_response())
}

/// The same query, re-run every `interval` (default 2s) as server-sent events.
#[utoipa::path(get, path = "/api/v1/views/{view}/stream", security((), ("bearer" = [])),
    params(("view" = String, Path, description = "view name"),
        ("interval" = Option<String>, Query, description = "refresh period, 500ms to 1h (default 2s)")),
    responses((status = 200, description = "text/event-stream of QueryResponse (event `result`) or ErrorBody (event `error`)"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn stream_view(
    State(state): State<AppState>,
    Path(view): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // Validate once up front so a bad query is a 4xx, not an event.
    let v = state.inner.views.get(&view).ok_or_else(|| {
        ApiError::not_found(
            "unknown_view",
            format!("no view `{view}`: GET /api/v1/views lists them"),
        )
    })?;
    let q = Query::parse(
        v,
        raw.as_deref(),
        now_ms(),
        state.inner.cfg.serve.max_buckets,
    )?;
    let interval = Duration::from_millis(q.interval_ms.unwrap_or(2000) as u64);
    let stream = futures::stream::unfold(
        (state, view, raw, true),
        move |(state, view, raw, first)| async move {
            if !first {
                tokio::time::sleep(interval).await;
            }
            let t = timeout(&state);
            let ev =
                match tokio::time::timeout(t, cached_query(&state, &view, raw.as_deref())).await {
                    Ok(Ok(r)) => Ok(Event::default()
                        .event("result")
                        .data(String::from_utf8_lossy(&r.json))),
                    Ok(Err(e)) => Event::default().event("error").json_data(e.body()),
                    Err(_) => Event::default().event("error").json_data(ErrorBody {
                        code: "timeout".into(),
                        message: "query timed out".into(),
                    }),
                };
            let ev = ev.unwrap_or_else(|_| Event::default().event("error").data("{}"));
            Some((Ok(ev), (state, view, raw, false)))
        },
    );
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

/// Cut, last run, speed lag, archive progress, freshness.
#[utoipa::path(get, path = "/api/v1/status", security((), ("bearer" = [])),
    responses((status = 200, body = StatusResponse), (status = 401, body = ErrorBody)))]
async fn status(State(state): State<AppState>) -> Json<StatusResponse> {
    let now = now_ms();
    let mut degraded = Vec::new();
    let health = state.inner.health.load_full();
    if !health.errors.is_empty() {
        degraded.push("store".to_owned());
    }
    let store = state.inner.store.clone();
    let t = state.inner.opts.redis_timeout;
    // Archive cut and progress, bounded in time.
    let mut archive_cut = None;
    let mut partitions = Vec::new();
    let store_part = async {
        let mut store_ok = true;
        match store.get(&StorePath::from(paths::CUT)).await {
            Ok(r) => {
                if let Ok(b) = r.bytes().await {
                    if let Ok(CutFile::V1 { cut, decided_ms }) = serde_json::from_slice(&b) {
                        archive_cut = Some((cut, decided_ms));
                    }
                }
            }
            Err(object_store::Error::NotFound { .. }) => {}
            Err(_) => store_ok = false,
        }
        let listed: Result<Vec<_>, _> = {
            use futures::TryStreamExt;
            futures::StreamExt::take(
                store.list(Some(&StorePath::from(paths::ARCHIVE_PROGRESS_ROOT))),
                1024,
            )
            .try_collect()
            .await
        };
        match listed {
            Ok(objs) => {
                for o in objs {
                    if let Ok(r) = store.get(&o.location).await {
                        if let Ok(b) = r.bytes().await {
                            if let Ok(p) = serde_json::from_slice::<ProgressFile>(&b) {
                                partitions.push(p);
                            }
                        }
                    }
                }
            }
            Err(_) => store_ok = false,
        }
        store_ok
    };
    let store_ok = tokio::time::timeout(t * 2, store_part)
        .await
        .unwrap_or(false);
    if !store_ok && !degraded.iter().any(|d| d == "store") {
        degraded.push("store".to_owned());
    }
    // Speed offsets and slice counts in one pipeline.
    let keys = state.inner.speed.keys().clone();
    let mut names: Vec<&String> = state.inner.views.keys().collect();
    names.sort();
    let mut p = redis::pipe();
    p.cmd("HGETALL").arg(keys.offsets());
    for n in &names {
        p.cmd("ZCARD").arg(keys.slices(n));
    }
    let (offsets, slices): (BTreeMap<String, i64>, Vec<Option<u64>>) =
        match state.inner.speed.query::<Vec<redis::Value>>(&p).await {
            Ok(vals) => {
                let mut it = vals.into_iter();
                let offsets = it
                    .next()
                    .and_then(|v| redis::from_redis_value(v).ok())
                    .unwrap_or_default();
                (
                    offsets,
                    it.map(|v| redis::from_redis_value(v).ok()).collect(),
                )
            }
            Err(_) => {
                degraded.push("redis".to_owned());
                (BTreeMap::new(), vec![None; names.len()])
            }
        };
    let views = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let snap = state.snapshot(n);
            let m = snap.as_ref().and_then(|s| s.manifest.as_ref());
            ViewStatus {
                name: (*n).clone(),
                cut: m.map(|m| m.cut),
                last_run_id: m.map(|m| m.run_id.clone()),
                last_run_created_ms: m.map(|m| m.created_ms),
                snapshot_age_ms: m.map(|m| now - m.created_ms),
                snapshot_rows: snap.as_ref().map_or(0, |s| s.rows),
                snapshot_days: snap.as_ref().map_or(0, |s| s.days.len()),
                definition_matches: snap.as_ref().is_none_or(|s| s.definition_matches),
                speed_slices: slices.get(i).copied().flatten(),
                store_error: health.errors.get(*n).cloned(),
            }
        })
        .collect();
    let partitions = partitions
        .into_iter()
        .map(
            |ProgressFile::V1 {
                 topic,
                 partition,
                 archived_to,
                 high_watermark,
                 observed_ms,
                 ..
             }| {
                let speed_offset = offsets
                    .get(&tally_core::keys::Keys::offset_field(&topic, partition))
                    .copied();
                PartitionStatus {
                    speed_lag: speed_offset.map(|o| (high_watermark - o).max(0)),
                    archive_lag: (high_watermark - archived_to).max(0),
                    topic,
                    partition,
                    archived_to,
                    high_watermark,
                    observed_ms,
                    speed_offset,
                }
            },
        )
        .collect();
    Json(StatusResponse {
        now_ms: now,
        started_ms: state.inner.started_ms,
        degraded,
        archive_cut: archive_cut.map(|c| c.0),
        archive_cut_decided_ms: archive_cut.map(|c| c.1),
        views,
        partitions,
        speed_offsets: offsets,
        last_manifest_poll_ms: health.last_poll_ms,
    })
}

/// Trigger a recompute (admin token required). Answers 501 `not_available`
/// until the binary plugs a recompute hook into [`crate::ServeOptions`].
#[utoipa::path(post, path = "/api/v1/recompute", security(("bearer" = [])), request_body = RecomputeRequest,
    responses((status = 202, body = RecomputeResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), (status = 501, body = ErrorBody)))]
async fn recompute(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<RecomputeRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<RecomputeResponse>), ApiError> {
    let Some(admin) = &state.inner.cfg.serve.admin_token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "admin calls are disabled: set [serve] admin_token",
        ));
    };
    if !bearer(&headers).is_some_and(|g| same_token(g, admin)) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "admin calls need Authorization: Bearer <admin_token>",
        ));
    }
    let Json(req) = body.map_err(|e| {
        let status = e.status();
        let status = if status.is_client_error() {
            status
        } else {
            StatusCode::BAD_REQUEST
        };
        ApiError::new(status, code_for_status(status), e.body_text())
    })?;
    if let Some(v) = &req.view {
        if !state.inner.views.contains_key(v) {
            return Err(ApiError::bad("unknown_view", format!("no view `{v}`")));
        }
    }
    for (name, value) in [("from", &req.from), ("to", &req.to)] {
        match value {
            None => {}
            Some(serde_json::Value::String(s)) => {
                crate::query::parse_time(name, s)?;
            }
            Some(serde_json::Value::Number(n)) if n.as_i64().is_some() => {
                crate::query::parse_time(name, &n.to_string())?;
            }
            Some(_) => {
                return Err(ApiError::bad(
                    "bad_time",
                    format!("`{name}` must be RFC 3339 text or epoch ms"),
                ))
            }
        }
    }
    let Some(hook) = state.inner.opts.recompute.clone() else {
        return Err(ApiError::new(
            StatusCode::NOT_IMPLEMENTED,
            "not_available",
            "recompute is not available from this server: run `tally recompute`",
        ));
    };
    match hook(req).await {
        Ok(detail) => Ok((
            StatusCode::ACCEPTED,
            Json(RecomputeResponse {
                accepted: true,
                detail,
            }),
        )),
        Err(message) => Err(ApiError::new(
            StatusCode::CONFLICT,
            "recompute_refused",
            message,
        )),
    }
}

/// Prometheus metrics (text exposition format).
#[utoipa::path(get, path = "/metrics", security((), ("bearer" = [])),
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain"), (status = 401, body = ErrorBody)))]
async fn metrics_text(State(state): State<AppState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.inner.metrics.render(),
    )
}

/// The generated document, with the `view` path parameter narrowed to the
/// configured views (so clients and fuzzers know the valid names).
async fn openapi_json(State(state): State<AppState>) -> Response {
    let mut doc = match serde_json::to_value(openapi_doc()) {
        Ok(v) => v,
        Err(e) => {
            return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string())
                .into_response()
        }
    };
    let mut names: Vec<&String> = state.inner.views.keys().collect();
    names.sort();
    if let Some(paths) = doc.get_mut("paths").and_then(|p| p.as_object_mut()) {
        for (path, item) in paths.iter_mut() {
            if !path.contains("{view}") {
                continue;
            }
            let params = item
                .get_mut("get")
                .and_then(|op| op.get_mut("parameters"))
                .and_then(|p| p.as_array_mut());
            for p in params.into_iter().flatten() {
                if p.get("name").and_then(|n| n.as_str()) == Some("view") {
                    p["schema"] = serde_json::json!({"type": "string", "enum": names});
                }
            }
        }
    }
    Json(doc).into_response()
}

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from(crate::dashboard::PAGE),
    )
        .into_response()
}
