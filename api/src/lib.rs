//! The management plane of Portcullis: the GraphQL API, the SNS webhook, the remediation
//! engine, scheduled jobs and the AWS adapters.
//!
//! Depends on `entity` (data model) and `proxy` (policy evaluator, key hashing), never the
//! other way round. [`router`] is a plain function so the same router runs under `axum::serve`
//! and under `lambda_http`.

pub mod aws;
pub mod bootstrap;
mod config;
pub mod graphql;
mod health;
pub mod lambda;
pub mod metrics;
pub mod outbox;
pub mod remediation;
pub mod service;
pub mod state;
pub mod webhooks;

use axum::{Router, routing::get};
use tower_http::{cors::CorsLayer, limit::RequestBodyLimitLayer};

pub use crate::{
    config::{ApiConfig, SnsWebhookConfig},
    state::AppState,
};

/// The management API: `/graphql`, `/healthz`, `/readyz`, `/metrics`, `POST /webhooks/sns`.
pub fn router(state: AppState) -> Router {
    let cors = cors_layer(&state.config);
    // Each body-accepting route has its own limit: GraphQL requests are small, SNS envelopes
    // around a 256 KiB message are not.
    let body_limit = RequestBodyLimitLayer::new(state.config.max_request_bytes);
    let router = Router::new()
        .route(
            "/graphql",
            get(graphql::graphiql)
                .post(graphql::execute)
                .layer(body_limit),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(render_metrics))
        .merge(webhooks::router())
        .layer(cors)
        .with_state(state);
    proxy::request_id::layer(router, "api")
}

async fn render_metrics(axum::extract::State(state): axum::extract::State<AppState>) -> String {
    state.metrics.render()
}

/// CORS for the configured portal origins only; no origin configured means no CORS headers.
fn cors_layer(config: &ApiConfig) -> CorsLayer {
    let origins: Vec<http::HeaderValue> = config
        .cors_origins
        .iter()
        .filter_map(|origin| origin.parse().ok())
        .collect();
    CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([http::Method::GET, http::Method::POST])
        .allow_headers([http::header::AUTHORIZATION, http::header::CONTENT_TYPE])
}
