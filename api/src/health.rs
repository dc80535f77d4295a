//! Liveness (`/healthz`) and readiness (`/readyz`, which checks the database).

use axum::{Json, extract::State, http::StatusCode, response::IntoResponse};
use sea_orm::ConnectionTrait;
use serde_json::json;

use crate::state::AppState;

/// Answers as long as the process serves HTTP.
pub async fn healthz() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

/// Answers 200 only when the database answers a trivial query.
pub async fn readyz(State(state): State<AppState>) -> impl IntoResponse {
    let backend = state.db.get_database_backend();
    let statement = sea_orm::Statement::from_string(backend, "SELECT 1");
    match state.db.query_one_raw(statement).await {
        Ok(_) => (
            StatusCode::OK,
            Json(json!({ "status": "ready", "database": "ok" })),
        ),
        Err(error) => {
            tracing::warn!(%error, "readiness check failed: database unreachable");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable", "database": "unreachable" })),
            )
        }
    }
}
