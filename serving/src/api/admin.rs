//! `POST /api/v1/recompute`: an operator's recompute, through the hook the
//! binary plugs in ([`crate::RecomputeHook`]).
//!
//! Guarantees: the admin token is checked first; the body is validated
//! (known view, RFC 3339 or epoch-ms bounds) before the hook runs; without a
//! hook the answer is 501 `not_available`; the hook's [`RecomputeError`]
//! decides the rest: 400 for the request, 409 for another run's lock, 500
//! for a failed run.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;

use super::auth::require_admin;
use crate::dto::{RecomputeRequest, RecomputeResponse};
use crate::error::{code_for_status, ApiError, ErrorBody, RecomputeError};
use crate::query::parse_time;
use crate::state::AppState;

/// Trigger a recompute (admin token required). Answers 501 `not_available`
/// until the binary plugs a recompute hook into [`crate::ServeOptions`].
#[utoipa::path(post, path = "/api/v1/recompute", security(("bearer" = [])), request_body = RecomputeRequest,
    responses((status = 202, body = RecomputeResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), (status = 500, body = ErrorBody), (status = 501, body = ErrorBody)))]
pub async fn recompute(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<RecomputeRequest>, JsonRejection>,
) -> Result<(StatusCode, Json<RecomputeResponse>), ApiError> {
    require_admin(&state, &headers)?;
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
                parse_time(name, s)?;
            }
            Some(serde_json::Value::Number(n)) if n.as_i64().is_some() => {
                parse_time(name, &n.to_string())?;
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
        Err(e) => Err(match e {
            RecomputeError::BadRequest(m) => ApiError::bad("bad_request", m),
            RecomputeError::Busy(m) => ApiError::new(StatusCode::CONFLICT, "recompute_refused", m),
            RecomputeError::Failed(m) => {
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "recompute_failed", m)
            }
        }),
    }
}
