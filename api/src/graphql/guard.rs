//! Declarative authorization: `#[graphql(guard = "RequirePermission(KEYS_WRITE)")]` on a field
//! refuses it with `UNAUTHENTICATED` or `FORBIDDEN` (naming the permission) unless the caller
//! holds the management permission, decided by the proxy's RBAC evaluator.

use async_graphql::{Context, Guard};

use super::{caller, error::ApiError, services};
use crate::service::auth;

/// Requires one management permission (`portcullis:<area>:<action>`).
pub struct RequirePermission(pub &'static str);

impl Guard for RequirePermission {
    async fn check(&self, ctx: &Context<'_>) -> async_graphql::Result<()> {
        let result: Result<(), ApiError> =
            async { auth::authorize(services(ctx)?, caller(ctx)?, self.0).await }.await;
        result.map_err(Into::into)
    }
}

/// Requires an authenticated caller, whatever its permissions (for `me`).
pub struct RequireAuthenticated;

impl Guard for RequireAuthenticated {
    async fn check(&self, ctx: &Context<'_>) -> async_graphql::Result<()> {
        let result: Result<(), ApiError> = caller(ctx).and_then(|c| c.actor().map(|_| ()));
        result.map_err(Into::into)
    }
}
