//! Request ids and request logging, shared by the proxy and the management API.
//!
//! An incoming `x-request-id` is kept when it is short and printable (so a caller can follow
//! its request through our logs); otherwise a UUIDv7 is generated. The id is echoed on the
//! response and recorded on the request's tracing span.

use axum::{Router, http::HeaderValue};
use http::{HeaderMap, HeaderName, Method, Request};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::Level;

/// The header carrying the request id, both ways.
pub static REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// A new UUIDv7 id (time-ordered, so logs sort naturally).
fn fresh() -> Option<HeaderValue> {
    let mut buf = uuid::Uuid::encode_buffer();
    let text = uuid::Uuid::now_v7().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(text).ok()
}

/// The request's id, fixed in `headers` so that everything after (the upstream included)
/// sees the same one: the caller's own when acceptable (short and printable), else a fresh
/// UUIDv7. [`layer`] calls it for the API; the proxy's pipeline calls it directly, with no
/// middleware on its hot path.
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

/// Echoes `id` on a response, unless the handler (or the upstream) already set one.
pub fn echo(response: &mut HeaderMap, id: HeaderValue) {
    response.entry(&REQUEST_ID).or_insert(id);
}

/// The span every request runs in.
pub fn span(service: &'static str, id: &str, method: &Method, path: &str) -> tracing::Span {
    tracing::info_span!(
        "request",
        service,
        request_id = %id,
        method = %method,
        // The raw target may carry secrets in the query string: log the path only.
        path = %path,
    )
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

/// [`assign`] on the way in, [`echo`] on the way out.
async fn with_id(
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let id = assign(request.headers_mut());
    let mut response = next.run(request).await;
    echo(response.headers_mut(), id);
    response
}

/// Adds request-id handling and one tracing span per request to `router`.
pub fn layer<S: Clone + Send + Sync + 'static>(
    router: Router<S>,
    service: &'static str,
) -> Router<S> {
    router
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(move |request: &Request<_>| {
                    let id = of_headers(request.headers()).unwrap_or("-");
                    span(service, id, request.method(), request.uri().path())
                })
                .on_request(())
                .on_response(DefaultOnResponse::new().level(Level::INFO)),
        )
        .layer(axum::middleware::from_fn(with_id))
}

/// The request id in a header map.
pub fn of_headers(headers: &http::HeaderMap) -> Option<&str> {
    headers.get(&REQUEST_ID).and_then(|v| v.to_str().ok())
}
