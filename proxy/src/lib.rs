//! The data plane of Portcullis: the request pipeline that every proxied request goes through
//! (normalise, route, IP rules, authenticate, authorize, rate limit, quota, forward, audit),
//! the policy cache fed by the change feed, and the pure policy core (`policy`, `keys`,
//! `normalize`) that the management API reuses so that what it simulates is exactly what is
//! enforced.
//!
//! Depends on `entity` only; never on `api`. [`router`] is a plain function so the same router
//! runs under `axum::serve` and under `lambda_http`.

pub mod audit;
pub mod authn;
pub mod body_timeout;
pub mod cache;
mod config;
pub mod credentials;
pub mod detect;
pub mod error;
pub mod forward;
pub mod keys;
pub mod normalize;
pub mod oidc;
pub mod pipeline;
pub mod policy;
pub mod ratelimit;
pub mod request_id;
pub mod routes;
pub mod state;
#[cfg(test)]
mod test_rows;
pub mod tunnel;

use std::convert::Infallible;

use axum::{Router, body::Body, response::Response};
use hyper::body::Incoming;

pub use crate::{config::ProxyConfig, state::ProxyState};

/// Installs the process-wide rustls crypto provider (aws-lc-rs). Both aws-lc-rs and ring are
/// compiled into the binary (through different dependencies), so rustls cannot pick one
/// itself. Idempotent; whatever builds a rustls configuration calls it first.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The proxy as an axum router: every path, every method goes through [`pipeline::handle`].
/// For hosts that take a router (`lambda_http`); listeners serve [`service`] instead.
///
/// Serve it with `into_make_service_with_connect_info::<SocketAddr>()`: the client address
/// comes from the socket.
pub fn router(state: ProxyState) -> Router {
    // Request ids and the request span are handled inside the pipeline (`request_id::assign`)
    // rather than by `request_id::layer`: no tower layers on the hot path.
    Router::new().fallback(pipeline::handle).with_state(state)
}

/// The proxy as a hyper service for one client connection: every request goes straight
/// to [`pipeline::process`]. The pipeline does its own routing, so an axum `Router` in front
/// (route lookup, request extensions, boxed services) would only add work to every request:
/// about 8k instructions, measured with callgrind (BENCHMARKS.md).
pub fn service(
    state: ProxyState,
    connection: pipeline::Connection,
) -> impl hyper::service::Service<
    http::Request<Incoming>,
    Response = Response,
    Error = Infallible,
    Future = impl Future<Output = Result<Response, Infallible>> + Send + 'static,
> + Clone {
    hyper::service::service_fn(move |request: http::Request<Incoming>| {
        let state = state.clone();
        let connection = connection.clone();
        async move { Ok(pipeline::process(&state, &connection, request.map(Body::new)).await) }
    })
}
