//! Classification of AWS SDK failures for the remediation engine and the outbox dispatcher:
//! retry (throttling, 5xx, timeouts, dispatch failures) or give up (everything else).

use std::fmt;

use aws_sdk_secretsmanager::{
    config::http::HttpResponse,
    error::{ProvideErrorMetadata, SdkError},
};

/// An AWS call failed. Carries the AWS error code and message, NEVER a secret value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{operation} failed ({}): {code}: {message}", if *.retryable { "retryable" } else { "permanent" })]
pub struct AwsError {
    /// The operation, e.g. `PutSecretValue`.
    pub operation: &'static str,
    /// AWS error code (`ThrottlingException`, `AccessDeniedException`, ...) or a transport
    /// class (`Timeout`, `Dispatch`).
    pub code: String,
    /// AWS error message.
    pub message: String,
    /// Whether trying again later may succeed.
    pub retryable: bool,
}

/// Error codes AWS uses for "slow down" or "our side failed": worth retrying.
const RETRYABLE_CODES: &[&str] = &[
    "ThrottlingException",
    "Throttling",
    "ThrottledException",
    "TooManyRequestsException",
    "RequestLimitExceeded",
    "RequestThrottled",
    "RequestThrottledException",
    "SlowDown",
    "ProvisionedThroughputExceededException",
    "InternalServiceError",
    "InternalServiceErrorException",
    "InternalFailure",
    "InternalError",
    "ServiceUnavailable",
    "ServiceUnavailableException",
    "KMSThrottlingException",
];

impl AwsError {
    /// A permanent error raised by our own checks (not by AWS).
    pub fn permanent(operation: &'static str, code: &str, message: impl Into<String>) -> Self {
        Self {
            operation,
            code: code.to_owned(),
            message: message.into(),
            retryable: false,
        }
    }

    /// Classifies any SDK error (both SDKs share the smithy error types).
    pub fn from_sdk<E>(operation: &'static str, error: &SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + fmt::Debug,
    {
        match error {
            SdkError::TimeoutError(_) => Self {
                operation,
                code: "Timeout".into(),
                message: "the request timed out".into(),
                retryable: true,
            },
            SdkError::DispatchFailure(failure) => Self {
                operation,
                code: "Dispatch".into(),
                message: format!("could not send the request: {failure:?}"),
                retryable: true,
            },
            SdkError::ResponseError(response) => Self {
                operation,
                code: "ResponseError".into(),
                message: format!(
                    "unreadable response (HTTP {})",
                    response.raw().status().as_u16()
                ),
                retryable: true,
            },
            SdkError::ServiceError(service) => {
                let status = service.raw().status().as_u16();
                let code = service.err().code().unwrap_or("Unknown").to_owned();
                let message = service.err().message().unwrap_or_default().to_owned();
                let retryable =
                    status >= 500 || status == 429 || RETRYABLE_CODES.contains(&code.as_str());
                Self {
                    operation,
                    code,
                    message,
                    retryable,
                }
            }
            SdkError::ConstructionFailure(_) => Self::permanent(
                operation,
                "ConstructionFailure",
                "the request could not be built",
            ),
            other => Self::permanent(operation, "Unknown", format!("{other:?}")),
        }
    }
}

/// A boxed, sendable future: what the object-safe port traits return.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
