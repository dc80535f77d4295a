//! Inbound webhooks: endpoints that outside systems (AWS) call, authenticated by signature
//! rather than by API key.

pub mod sns;

use axum::{Router, extract::DefaultBodyLimit, routing::post};

use crate::AppState;

/// The webhook routes, merged into [`crate::router`].
pub fn router() -> Router<AppState> {
    Router::new().route(
        sns::PATH,
        post(sns::receive).layer(DefaultBodyLimit::max(sns::MAX_BODY_BYTES)),
    )
}
