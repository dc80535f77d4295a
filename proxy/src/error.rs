//! Every way a proxied request can fail, and the one place they become HTTP responses.

use std::time::Duration;

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

use crate::{authn::AuthFailure, normalize::BadTarget, policy::Reason};

/// The first error of type `E` along `error`'s chain of sources (`error` itself included):
/// what a failure from deep inside hyper was caused by.
pub fn source_of<'e, E: std::error::Error + 'static>(
    error: &'e (dyn std::error::Error + 'static),
) -> Option<&'e E> {
    let mut source = Some(error);
    while let Some(e) = source {
        if let Some(found) = e.downcast_ref::<E>() {
            return Some(found);
        }
        source = e.source();
    }
    None
}

/// Why the proxy refused or could not complete a request.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The request target cannot be normalised unambiguously.
    #[error("bad request target: {0}")]
    BadTarget(#[from] BadTarget),
    /// Headers that make the request ambiguous (duplicate `Host`, conflicting credentials).
    #[error("ambiguous request: {0}")]
    AmbiguousRequest(&'static str),
    /// A method the proxy does not forward: `CONNECT` (a tunnel, including HTTP/2's extended
    /// CONNECT) has no path the upstream would see as the proxy does, and `TRACE` echoes the
    /// request, injected upstream credential included.
    #[error("CONNECT and TRACE are not proxied; WebSocket clients use the HTTP/1.1 upgrade")]
    MethodNotSupported,
    /// No route matches host, path and method.
    #[error("no route matches this request")]
    NoRoute,
    /// An IP rule refuses the client address.
    #[error("client address refused by an IP rule")]
    IpBlocked,
    /// No acceptable credential, or it did not verify. The reason is audited, never shown.
    #[error("authentication failed: {0:?}")]
    Unauthenticated(AuthFailure),
    /// Authenticated, but no binding or grant allows this request.
    #[error("forbidden: {0}")]
    Forbidden(Reason),
    /// The key's remaining-uses quota is used up.
    #[error("the key's usage quota is exhausted")]
    QuotaExhausted,
    /// Too many requests; retry after the given delay.
    #[error("rate limited")]
    RateLimited {
        /// When the next request would be admitted.
        retry_after: Duration,
        /// The bucket size (`RateLimit-Limit`).
        limit: u32,
        /// When the bucket is full again (`RateLimit-Reset`).
        reset: Duration,
    },
    /// The request body is larger than allowed.
    #[error("request body too large")]
    PayloadTooLarge,
    /// The client's request body broke off or was malformed (a bad chunk, fewer bytes than its
    /// `Content-Length`): the client's failure, not the upstream's.
    #[error("the request body could not be read")]
    BadRequestBody,
    /// A transfer coding other than `chunked`: hyper removes the chunking only, and the
    /// upstream, without the header, would take the still-coded bytes for the body.
    #[error("only the chunked transfer coding is accepted")]
    TransferCodingNotSupported,
    /// The client stopped sending its request body for longer than the upstream timeout.
    #[error("the request body stalled")]
    RequestBodyTimeout,
    /// Policy could not be refreshed for longer than the allowed staleness: fail closed.
    #[error("policy is stale: the database has been unreachable too long")]
    PolicyStale,
    /// The upstream refused the connection or broke it.
    #[error("upstream unavailable")]
    UpstreamUnavailable(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The route's upstream credential could not be read from the secret store.
    #[error("upstream credential unavailable")]
    UpstreamCredentialUnavailable,
    /// The upstream did not answer in time.
    #[error("upstream timed out")]
    UpstreamTimeout,
    /// A fault of ours (database error while authenticating, ...). Logged, never detailed.
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ProxyError {
    /// The stable, machine-readable code clients and audit records see.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadTarget(_) => "bad_request_target",
            Self::AmbiguousRequest(_) => "ambiguous_request",
            Self::MethodNotSupported => "method_not_supported",
            Self::NoRoute => "no_route",
            Self::IpBlocked => "ip_blocked",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::Forbidden(_) => "forbidden",
            Self::QuotaExhausted => "quota_exhausted",
            Self::RateLimited { .. } => "rate_limited",
            Self::PayloadTooLarge => "payload_too_large",
            Self::BadRequestBody => "bad_request_body",
            Self::TransferCodingNotSupported => "transfer_coding_not_supported",
            Self::RequestBodyTimeout => "request_body_timeout",
            Self::PolicyStale => "policy_stale",
            Self::UpstreamUnavailable(_) => "upstream_unavailable",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamCredentialUnavailable => "upstream_credential_unavailable",
            Self::Internal(_) => "internal",
        }
    }

    /// The HTTP status for this failure.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadTarget(_) | Self::AmbiguousRequest(_) | Self::BadRequestBody => {
                StatusCode::BAD_REQUEST
            }
            Self::MethodNotSupported | Self::TransferCodingNotSupported => {
                StatusCode::NOT_IMPLEMENTED
            }
            Self::NoRoute => StatusCode::NOT_FOUND,
            Self::IpBlocked | Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::QuotaExhausted | Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::RequestBodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::PolicyStale => StatusCode::SERVICE_UNAVAILABLE,
            Self::UpstreamUnavailable(_) | Self::UpstreamCredentialUnavailable => {
                StatusCode::BAD_GATEWAY
            }
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The message clients see. Deliberately vague for authentication: every 401 reads the
    /// same, so a caller cannot tell a revoked key from a mistyped one.
    fn public_message(&self) -> String {
        match self {
            Self::BadTarget(reason) => format!("the request target is not acceptable: {reason}"),
            Self::AmbiguousRequest(what) => format!("the request is ambiguous: {what}"),
            Self::Unauthenticated(_) => "a valid credential is required".into(),
            Self::Forbidden(_) => "the credential does not allow this request".into(),
            Self::Internal(_) => "internal error".into(),
            other => other.to_string(),
        }
    }

    /// The audit reason: precise, for operators (never contains a secret).
    pub fn audit_reason(&self) -> String {
        match self {
            Self::Unauthenticated(failure) => failure.code().to_owned(),
            // The code first (what dashboards and detectors match), then the binding, grant
            // or role involved when there is one.
            Self::Forbidden(reason) if reason.names_an_id() => {
                format!("{}: {reason}", reason.code())
            }
            Self::Forbidden(reason) => reason.code().to_owned(),
            Self::BadTarget(reason) => format!("bad_request_target: {reason}"),
            other => other.code().to_owned(),
        }
    }
}

/// Renders a failure as `{"error": {"code", "message", "request_id"}}` with the right status
/// and headers. The only place proxy errors become responses.
pub fn rescue(error: &ProxyError, request_id: &str) -> Response {
    match error {
        ProxyError::Internal(source) | ProxyError::UpstreamUnavailable(source) => {
            tracing::warn!(code = error.code(), error = %source, "request failed");
        }
        _ => {}
    }
    let body = json!({
        "error": { "code": error.code(), "message": error.public_message(), "request_id": request_id }
    });
    let mut response = (error.status(), Json(body)).into_response();
    let headers = response.headers_mut();
    match error {
        ProxyError::Unauthenticated(_) => {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"portcullis\""),
            );
        }
        ProxyError::RateLimited {
            retry_after,
            limit,
            reset,
        } => {
            let secs = retry_after.as_secs_f64().ceil().max(1.0) as u64;
            if let Ok(value) = HeaderValue::from_str(&secs.to_string()) {
                headers.insert(header::RETRY_AFTER, value);
            }
            crate::ratelimit::insert_headers(headers, *limit, 0, *reset);
        }
        _ => {}
    }
    response
}
