//! `GET /api/v1/alerts`: every threshold rule's state and the webhook
//! delivery counts ([`crate::alert`]).

use axum::extract::State;
use axum::Json;

use crate::alert::AlertsResponse;
use crate::error::ErrorBody;
use crate::state::AppState;

/// The alert rules (`[[alert]]`): state, last value, deliveries.
#[utoipa::path(get, path = "/api/v1/alerts", security((), ("bearer" = [])),
    responses((status = 200, body = AlertsResponse), (status = 401, body = ErrorBody)))]
pub async fn alerts(State(state): State<AppState>) -> Json<AlertsResponse> {
    Json(state.inner.alerts.status())
}
