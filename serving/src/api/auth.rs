//! Who may call what: the read token (reads) and the admin token (admin
//! calls).
//!
//! Guarantees: reads need `Authorization: Bearer <read_token>` (or
//! `access_token=` in the query, for EventSource) when `[serve] read_token`
//! is set, else a 401 with `WWW-Authenticate: Bearer`; admin calls always
//! need the admin token (403 when none is configured). Tokens are compared
//! through a keyed hash, so timing reveals neither content nor length.

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

/// Whether `given` is the configured token, in a time that tells a caller
/// nothing about the token: neither where the first differing byte is nor
/// how long the token is. Both sides go through a keyed hash (SipHash under
/// this process's two random keys: 128 bits an attacker cannot choose
/// inputs against), and only the digests are compared, so the work on the
/// caller's side depends only on what the caller sent.
fn same_token(given: &str, token: &str) -> bool {
    use std::hash::BuildHasher;
    static KEYS: std::sync::OnceLock<[std::hash::RandomState; 2]> = std::sync::OnceLock::new();
    let keys = KEYS.get_or_init(|| [std::hash::RandomState::new(), std::hash::RandomState::new()]);
    let digest = |s: &str| keys.each_ref().map(|k| k.hash_one(s.as_bytes()));
    let (a, b) = (digest(given), digest(token));
    ((a[0] ^ b[0]) | (a[1] ^ b[1])) == 0
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
        if !given.is_some_and(|g| same_token(&g, token.expose())) {
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
    if !bearer(headers).is_some_and(|g| same_token(g, admin.expose())) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "admin calls need Authorization: Bearer <admin_token>",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::same_token;

    #[test]
    fn only_the_exact_token_matches() {
        let t = "0123456789abcdef0123";
        assert!(same_token(t, t));
        for other in [
            "",
            "0123456789abcdef012",
            "0123456789abcdef01234",
            "x123456789abcdef0123",
        ] {
            assert!(!same_token(other, t), "{other:?} matched");
        }
    }
}
