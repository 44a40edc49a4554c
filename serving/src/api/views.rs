//! `GET /api/v1/views`: the configured views, their measures and the cut of
//! the snapshot in use.

use std::sync::Arc;

use axum::extract::State;
use axum::Json;
use tally_core::view::ViewDef;

use crate::dto::{MeasureInfo, ViewInfo, ViewsResponse};
use crate::error::{ApiError, ErrorBody};
use crate::state::AppState;

fn view_info(state: &AppState, v: &ViewDef) -> ViewInfo {
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
pub async fn list_views(State(state): State<AppState>) -> Json<ViewsResponse> {
    let views = state
        .inner
        .cfg
        .views
        .iter()
        .map(|v| view_info(&state, v))
        .collect();
    Json(ViewsResponse { views })
}

/// The view named in a path, or 404 `unknown_view`.
pub fn lookup_view(state: &AppState, name: &str) -> Result<Arc<ViewDef>, ApiError> {
    state.inner.views.get(name).cloned().ok_or_else(|| {
        ApiError::not_found(
            "unknown_view",
            format!("no view `{name}`: GET /api/v1/views lists them"),
        )
    })
}
