//! The one error type of the management API edge, and its mapping to `extensions.code`.
//!
//! Codes are part of the API contract (portals switch on them); NEVER RENAME ONE.

use std::sync::Arc;

use async_graphql::ErrorExtensions;
use sea_orm::{DbErr, SqlErr};
use thiserror::Error;

/// Everything a resolver can fail with. Internal failures are logged with their cause chain
/// and reach the client as a fixed message.
///
/// Resolvers return `Result<T, ApiError>`; async-graphql keeps the value as the error's
/// source, and the schema extension (`graphql::extension`) turns it into `extensions.code`
/// (and logs internal errors) in one place.
#[derive(Debug, Clone, Error)]
pub enum ApiError {
    /// No credential, or one that does not verify.
    #[error("authentication required: send `Authorization: Bearer <API key>`")]
    Unauthenticated,
    /// The caller lacks a management permission.
    #[error("missing permission {permission}")]
    Forbidden {
        /// The permission that was required, e.g. `portcullis:keys:write`.
        permission: String,
    },
    /// The caller holds the permission, but may not act on this object: separation of
    /// duties, e.g. approving one's own incident grant. Code `FORBIDDEN`.
    #[error("{0}")]
    SeparationOfDuties(String),
    /// The caller's API key has used up its remaining-uses quota (as at the proxy).
    #[error("the API key's usage quota is exhausted")]
    QuotaExhausted,
    /// An argument failed validation.
    #[error("{field}: {message}")]
    BadUserInput {
        /// Path of the offending input field, e.g. `input.expiresAt`.
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A referenced object does not exist.
    #[error("{what} {id} not found")]
    NotFound {
        /// Kind of object (`api key`, `principal`, ...).
        what: &'static str,
        /// The id that was asked for.
        id: String,
    },
    /// The write conflicts with existing data (a unique name, a duplicate membership).
    #[error("{0}")]
    Conflict(String),
    /// A subsystem this server was started without (e.g. the remediation engine).
    #[error("{0}")]
    Unavailable(String),
    /// An AWS call failed (throttled, denied, unreachable). Carries the operation and the
    /// AWS error code and message, never a secret value.
    #[error("{0}")]
    Aws(crate::aws::error::AwsError),
    /// Anything else: a database failure, a bug. Never shown to the client.
    #[error("internal error")]
    Internal(#[source] Arc<dyn std::error::Error + Send + Sync>),
}

/// Result of services and resolvers.
pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    /// The stable code exposed as `extensions.code`.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::Forbidden { .. } | Self::SeparationOfDuties(_) => "FORBIDDEN",
            Self::QuotaExhausted => "QUOTA_EXHAUSTED",
            Self::BadUserInput { .. } => "BAD_USER_INPUT",
            Self::NotFound { .. } => "NOT_FOUND",
            Self::Conflict(_) => "CONFLICT",
            Self::Unavailable(_) => "UNAVAILABLE",
            Self::Aws(_) => "AWS_ERROR",
            Self::Internal(_) => "INTERNAL",
        }
    }

    /// A validation failure of `field`.
    pub fn invalid(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::BadUserInput {
            field: field.into(),
            message: message.into(),
        }
    }

    /// `what` with `id` does not exist.
    pub fn not_found(what: &'static str, id: impl ToString) -> Self {
        Self::NotFound {
            what,
            id: id.to_string(),
        }
    }

    /// Wraps any failure the client must not see.
    pub fn internal(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Internal(Arc::new(error))
    }
}

impl From<DbErr> for ApiError {
    fn from(error: DbErr) -> Self {
        Self::internal(error)
    }
}

impl From<crate::aws::error::AwsError> for ApiError {
    fn from(error: crate::aws::error::AwsError) -> Self {
        Self::Aws(error)
    }
}

impl ErrorExtensions for ApiError {
    fn extend(&self) -> async_graphql::Error {
        async_graphql::Error::new(self.to_string()).extend_with(|_, ext| {
            ext.set("code", self.code());
            match self {
                Self::Forbidden { permission } => ext.set("permission", permission.as_str()),
                Self::BadUserInput { field, .. } => ext.set("field", field.as_str()),
                Self::Aws(error) => ext.set("awsCode", error.code.as_str()),
                _ => {}
            }
        })
    }
}

/// `error: cause: cause ...`, for logs.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// Turns database constraint violations into client errors; everything else stays internal.
pub trait DbResultExt<T> {
    /// A unique violation becomes [`ApiError::Conflict`] with `message`; a foreign-key
    /// violation becomes [`ApiError::NotFound`] of `what`.
    fn on_conflict(self, message: impl FnOnce() -> String) -> ApiResult<T>;
}

impl<T> DbResultExt<T> for Result<T, DbErr> {
    fn on_conflict(self, message: impl FnOnce() -> String) -> ApiResult<T> {
        self.map_err(|error| match error.sql_err() {
            Some(SqlErr::UniqueConstraintViolation(_)) => ApiError::Conflict(message()),
            _ => ApiError::from(error),
        })
    }
}
