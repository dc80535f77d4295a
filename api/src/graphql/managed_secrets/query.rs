//! `managedSecrets`, `managedSecret`.

use async_graphql::{Context, Object};

use super::types::ManagedSecretOut;
use crate::{
    graphql::{
        Conn, connection, error::ApiResult, guard::RequirePermission, list_complexity,
        page_request, services,
    },
    service::{managed_secrets, management::REMEDIATION_READ},
};

/// Managed secret queries.
#[derive(Default)]
pub struct ManagedSecretQuery;

#[Object]
impl ManagedSecretQuery {
    /// Managed secrets, oldest first.
    #[graphql(
        guard = "RequirePermission(REMEDIATION_READ)",
        complexity = "list_complexity(first, child_complexity)"
    )]
    async fn managed_secrets(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Conn<ManagedSecretOut>> {
        let page = page_request(first, after)?;
        let rows = managed_secrets::list(&services(ctx)?.db, &page).await?;
        Ok(connection(
            rows,
            |r| r.id.to_string(),
            ManagedSecretOut::from,
        ))
    }

    /// Managed secret `secret_id` (as registered), or null.
    #[graphql(guard = "RequirePermission(REMEDIATION_READ)")]
    async fn managed_secret(
        &self,
        ctx: &Context<'_>,
        secret_id: String,
    ) -> ApiResult<Option<ManagedSecretOut>> {
        Ok(managed_secrets::get(&services(ctx)?.db, &secret_id)
            .await?
            .map(Into::into))
    }
}
