//! `GET /healthz` and `GET /readyz`: the probes an orchestrator or a load
//! balancer asks, open (no token) and free of secrets.
//!
//! Guarantees: `/healthz` answers 200 while the process serves HTTP at all
//! (liveness: restart me only if this fails). `/readyz` answers within about
//! two Redis timeouts whatever is down: 200 when Redis and the object store
//! answer and every role of the process (from the binary's supervisor, when
//! it gave one) is up, else 503; both list each check's state, so an
//! operator sees which dependency is missing. Operational endpoints, kept
//! out of the OpenAPI document of the query API.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use object_store::path::Path as StorePath;
use object_store::ObjectStoreExt;
use serde::Serialize;
use tally_store::paths;

use crate::state::AppState;

/// The answer of both probes.
#[derive(Debug, Clone, Serialize)]
pub struct Probe {
    /// `alive`, `ready` or `not_ready`.
    pub status: &'static str,
    /// Each check: `ok`, `up`, or what is wrong.
    pub checks: BTreeMap<String, String>,
}

/// Liveness: the process answers HTTP.
pub async fn healthz() -> Json<Probe> {
    Json(Probe {
        status: "alive",
        checks: BTreeMap::new(),
    })
}

/// Readiness: Redis, the object store and the process's roles.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let t = state.inner.opts.redis_timeout;
    let mut checks = BTreeMap::new();
    let redis = state.inner.speed.redis();
    let ping = redis.query::<(String,)>(redis::pipe().cmd("PING")).await;
    checks.insert(
        "redis".to_owned(),
        match ping {
            Ok(_) => "ok".to_owned(),
            Err(e) => format!("unavailable: {e}"),
        },
    );
    // The cut object: absent is fine (nothing archived yet), an error is not.
    let store = state.inner.store.clone();
    let head = tokio::time::timeout(t, store.head(&StorePath::from(paths::CUT))).await;
    checks.insert(
        "store".to_owned(),
        match head {
            Ok(Ok(_)) | Ok(Err(object_store::Error::NotFound { .. })) => "ok".to_owned(),
            Ok(Err(e)) => format!("unavailable: {e}"),
            Err(_) => format!("no answer within {} ms", t.as_millis()),
        },
    );
    if let Some(roles) = &state.inner.opts.roles {
        for (name, up) in roles() {
            let s = if up { "up" } else { "restarting" };
            checks.insert(format!("role:{name}"), s.to_owned());
        }
    }
    let ready = checks.values().all(|v| v == "ok" || v == "up");
    let (code, status) = if ready {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not_ready")
    };
    (code, Json(Probe { status, checks }))
}
