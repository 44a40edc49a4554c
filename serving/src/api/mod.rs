//! The HTTP API: routes, and the layers every answer passes through.
//!
//! Routes (see [`router`]): `GET /api/v1/views` ([`views`]),
//! `GET /api/v1/views/{view}/query` and `…/stream` ([`query`]),
//! `GET /api/v1/status` ([`status`]), `GET /api/v1/alerts` ([`alerts`]), `POST /api/v1/recompute` ([`admin`]),
//! `GET /metrics` and `GET /` ([`pages`]), `GET /openapi.json` ([`openapi`]),
//! `GET /healthz` and `GET /readyz` ([`probes`]); who may call them is
//! [`auth`].
//!
//! Guarantees: every non-2xx answer is JSON `{code, message}` (the
//! [`json_errors`] layer rewrites the bare answers of framework layers: 404,
//! 405, 413, rejections); a panic is caught and answered as 500 JSON.

pub mod admin;
pub mod alerts;
pub mod auth;
pub mod openapi;
pub mod pages;
pub mod probes;
pub mod query;
pub mod status;
pub mod views;

use std::time::Instant;

use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{header, StatusCode};
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};

use crate::error::{code_for_status, ApiError, ErrorBody};
use crate::state::AppState;

/// The router with every route and layer.
pub fn router(state: AppState) -> Router {
    let body_limit = state.inner.opts.body_limit;
    let reads = Router::new()
        .route("/api/v1/views", get(views::list_views))
        .route("/api/v1/views/{view}/query", get(query::query_view))
        .route("/api/v1/views/{view}/stream", get(query::stream_view))
        .route("/api/v1/status", get(status::status))
        .route("/api/v1/alerts", get(alerts::alerts))
        .route("/metrics", get(pages::metrics_text))
        .route_layer(from_fn_with_state(state.clone(), auth::require_read));
    Router::new()
        .merge(reads)
        .route("/api/v1/recompute", post(admin::recompute))
        .route("/openapi.json", get(openapi::openapi_json))
        .route("/healthz", get(probes::healthz))
        .route("/readyz", get(probes::readyz))
        .route("/", get(pages::dashboard))
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
