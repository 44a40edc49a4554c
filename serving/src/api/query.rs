//! `GET /api/v1/views/{view}/query` and its live form,
//! `GET /api/v1/views/{view}/stream` (server-sent events).
//!
//! Guarantees: a query runs under `serve.request_timeout` (then 408
//! `timeout`, and its fold stops); a bad query is a 4xx before any work; at
//! most `serve.max_streams` streams are open at once (then 429
//! `too_many_streams`); every stream ends when the server shuts down.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures::{Stream, StreamExt};
use tally_core::view::ViewDef;

use super::views::lookup_view;
use crate::answer_cache::QueryKey;
use crate::dto::QueryResponse;
use crate::error::{ApiError, ErrorBody};
use crate::query::execute::execute;
use crate::query::Query;
use crate::state::{now_ms, AppState};

/// Default refresh period of a stream.
const STREAM_INTERVAL: Duration = Duration::from_secs(2);

fn timeout(state: &AppState) -> Duration {
    state
        .inner
        .cfg
        .serve
        .request_timeout
        .as_duration()
        .max(Duration::from_millis(1))
}

/// The JSON answer of a parsed query, through the answer cache when it is on.
async fn answer(state: &AppState, view: &Arc<ViewDef>, q: Query) -> Result<Bytes, ApiError> {
    let cache = &state.inner.answers;
    if !cache.enabled() {
        return execute(state, view, q).await;
    }
    // Read before the merge loads the snapshot (see ResultCache).
    let generation = state.inner.generation();
    let key = QueryKey::new(&view.name, &q);
    let (st, view) = (state.clone(), view.clone());
    cache
        .get_or_compute(key, generation, move || {
            Box::pin(async move { execute(&st, &view, q).await })
        })
        .await
}

/// `answer` under the request timeout.
async fn answer_in_time(
    state: &AppState,
    view: &Arc<ViewDef>,
    raw: Option<&str>,
) -> Result<Bytes, ApiError> {
    let q = Query::parse(
        view,
        raw,
        now_ms(),
        state.limits(),
        &state.inner.cfg.lookups,
    )?;
    let t = timeout(state);
    tokio::time::timeout(t, answer(state, view, q))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "timeout",
                format!("the query took longer than {t:?} (serve.request_timeout): narrow the range or the grouping"),
            )
        })?
}

/// Query a view over [from, to).
#[utoipa::path(get, path = "/api/v1/views/{view}/query", security((), ("bearer" = [])),
    params(
        ("view" = String, Path, description = "view name"),
        ("from" = Option<String>, Query, description = "start, RFC 3339 or epoch ms (default: to - last)"),
        ("last" = Option<String>, Query, description = "instead of from: the range length before `to`, e.g. 1h (default 24h)"),
        ("to" = Option<String>, Query, description = "end (exclusive), RFC 3339 or epoch ms (default: end of the current bucket)"),
        ("granularity" = Option<String>, Query, description = "a multiple of the view's granularity, e.g. 1h"),
        ("group_by" = Option<String>, Query, description = "comma list of the view's dimensions, each optionally through a lookup table: `properties.page@section`"),
        ("filter" = Option<Vec<String>>, Query, description = "dimension:value or dimension@lookup:value, repeatable (OR per column, AND across)"),
        ("measures" = Option<String>, Query, description = "comma list of measures (default: all)"),
        ("window" = Option<String>, Query, description = "rolling window, a multiple of the granularity and at most 1440 of its buckets, e.g. 15m: each point aggregates the trailing window ending at the end of its bucket (read before `from` where needed); totals then cover every base bucket read, once"),
        ("quantiles" = Option<String>, Query, description = "comma list of percentiles in [0, 1] that quantiles measures answer (default 0.5,0.9,0.99; at most 32): each such measure's value is an object, percentile -> value, e.g. {\"0.5\": 12.1, \"0.99\": 80.3}"),
    ),
    responses((status = 200, body = QueryResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 408, body = ErrorBody)))]
pub async fn query_view(
    State(state): State<AppState>,
    Path(view): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let view = lookup_view(&state, &view)?;
    let json = answer_in_time(&state, &view, raw.as_deref()).await?;
    metrics::histogram!("tally_serving_query_seconds").record(started.elapsed().as_secs_f64());
    Ok((
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        json,
    )
        .into_response())
}

/// The same query, re-run every `interval` (default 2s) as server-sent events.
#[utoipa::path(get, path = "/api/v1/views/{view}/stream", security((), ("bearer" = [])),
    params(("view" = String, Path, description = "view name"),
        ("interval" = Option<String>, Query, description = "refresh period, 500ms to 1h (default 2s)")),
    responses((status = 200, description = "text/event-stream of QueryResponse (event `result`) or ErrorBody (event `error`)"),
        (status = 400, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn stream_view(
    State(state): State<AppState>,
    Path(view): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let view = lookup_view(&state, &view)?;
    // Validate once up front so a bad query is a 4xx, not an event.
    let q = Query::parse(
        &view,
        raw.as_deref(),
        now_ms(),
        state.limits(),
        &state.inner.cfg.lookups,
    )?;
    let permit = state
        .inner
        .streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_streams",
                format!(
                    "this server streams at most {} queries at once (serve.max_streams): close a stream, or poll the query endpoint",
                    state.inner.cfg.serve.max_streams
                ),
            )
        })?;
    let interval = q
        .interval_ms
        .map_or(STREAM_INTERVAL, |ms| Duration::from_millis(ms as u64));
    let stopped = state.until_stopped();
    let events = futures::stream::unfold(
        (state, view, raw, true, permit),
        move |(state, view, raw, first, permit)| async move {
            if !first {
                tokio::time::sleep(interval).await;
            }
            let ev = match answer_in_time(&state, &view, raw.as_deref()).await {
                Ok(json) => Ok(Event::default()
                    .event("result")
                    .data(String::from_utf8_lossy(&json))),
                Err(e) => Event::default().event("error").json_data(e.body()),
            };
            let ev = ev.unwrap_or_else(|_| Event::default().event("error").data("{}"));
            Some((Ok(ev), (state, view, raw, false, permit)))
        },
    )
    // Graceful shutdown waits for open connections: streams end first.
    .take_until(stopped);
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}
