//! Who may call what: the read token (reads) and the admin token (admin
//! calls).
//!
//! Guarantees: reads need `Authorization: Bearer <read_token>` (or
//! `access_token=` in the query, for EventSource) when `[serve] read_token`
//! is set, else a 401 with `WWW-Authenticate: Bearer`; admin calls always
//! need the admin token (403 when none is configured). Tokens are compared
//! without an early exit.

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::AppState;

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

/// The read-token layer of the read routes.
pub async fn require_read(State(state): State<AppState>, req: Request, next: Next) -> Response {
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

/// Check an admin call's token.
pub fn require_admin(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(admin) = &state.inner.cfg.serve.admin_token else {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "admin_disabled",
            "admin calls are disabled: set [serve] admin_token",
        ));
    };
    if !bearer(headers).is_some_and(|g| same_token(g, admin)) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "admin calls need Authorization: Bearer <admin_token>",
        ));
    }
    Ok(())
}
