//! Request ids and request logging, shared by the proxy and the management API.
//!
//! An incoming `x-request-id` is kept when it is short and printable (so a caller can follow
//! its request through our logs); otherwise a UUIDv7 is generated. The id is echoed on the
//! response and recorded on the request's tracing span.

use axum::{Router, http::HeaderValue};
use http::{HeaderMap, HeaderName, Request};
use tower_http::{
    request_id::{MakeRequestId, PropagateRequestIdLayer, RequestId, SetRequestIdLayer},
    trace::{DefaultOnResponse, TraceLayer},
};
use tracing::Level;

/// The header carrying the request id, both ways.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Generates UUIDv7 request ids (time-ordered, so logs sort naturally).
#[derive(Clone, Copy, Default)]
pub struct MakeUuidV7;

impl MakeRequestId for MakeUuidV7 {
    fn make_request_id<B>(&mut self, _request: &Request<B>) -> Option<RequestId> {
        fresh().map(RequestId::new)
    }
}

/// A new UUIDv7 id.
fn fresh() -> Option<HeaderValue> {
    let mut buf = uuid::Uuid::encode_buffer();
    let text = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(text).ok()
}

/// The request's id, fixed in `headers` so that everything after (the upstream included)
/// sees the same one: the caller's own when acceptable (short and printable), else a fresh
/// UUIDv7. What [`layer`] does, as one function for the proxy's hot path, where the three tower
/// layers cost more than the id itself.
pub fn assign(headers: &mut HeaderMap) -> HeaderValue {
    if let Some(value) = headers.get(&REQUEST_ID)
        && acceptable(value)
    {
        return value.clone();
    }
    let value = fresh().unwrap_or_else(|| HeaderValue::from_static("-"));
    headers.insert(REQUEST_ID.clone(), value.clone());
    value
}

/// Whether a client-supplied id is safe to keep and log.
fn acceptable(value: &HeaderValue) -> bool {
    let bytes = value.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 128
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
}

/// Drops an unacceptable incoming id so that [`SetRequestIdLayer`] generates a fresh one.
async fn sanitize(
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    if request
        .headers()
        .get(&REQUEST_ID)
        .is_some_and(|v| !acceptable(v))
    {
        request.headers_mut().remove(&REQUEST_ID);
    }
    next.run(request).await
}

/// Adds request-id handling and one tracing span per request to `router`.
pub fn layer<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    service: &'static str,
) -> Router<S> {
    router
        .layer(PropagateRequestIdLayer::new(REQUEST_ID.clone()))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(move |request: &Request<_>| {
                    let id = request
                        .headers()
                        .get(&REQUEST_ID)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("-");
                    tracing::info_span!(
                        "request",
                        service,
                        request_id = %id,
                        method = %request.method(),
                        // The raw target may carry secrets in the query string: log the path only.
                        path = %request.uri().path(),
                    )
                })
                .on_request(())
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(SetRequestIdLayer::new(REQUEST_ID.clone(), MakeUuidV7))
        .layer(axum::middleware::from_fn(sanitize))
}

/// The request id of a request that went through [`layer`].
pub fn of<B>(request: &Request<B>) -> Option<&str> {
    of_headers(request.headers())
}

/// The request id in a header map.
pub fn of_headers(headers: &http::HeaderMap) -> Option<&str> {
    headers.get(&REQUEST_ID).and_then(|v| v.to_str().ok())
}
