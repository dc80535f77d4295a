//! `issueApiKey`, `rotateApiKey`, `revokeApiKey`, `suspendApiKey`, `resumeApiKey`.

use async_graphql::{Context, Object};
use uuid::Uuid;

use super::types::{ApiKeyOut, IssueApiKeyInput, IssuedApiKey};
use crate::{
    graphql::{caller, error::ApiResult, guard::RequirePermission, services},
    service::{api_keys, management::KEYS_WRITE},
};

/// Key mutations.
#[derive(Default)]
pub struct ApiKeyMutation;

#[Object]
impl ApiKeyMutation {
    /// Issues a key. The response carries the secret; it is never shown again.
    #[graphql(guard = "RequirePermission(KEYS_WRITE)")]
    async fn issue_api_key(
        &self,
        ctx: &Context<'_>,
        input: IssueApiKeyInput,
    ) -> ApiResult<IssuedApiKey> {
        let actor = caller(ctx)?.actor()?;
        let (secret, key) = api_keys::issue(services(ctx)?, actor, input.into()).await?;
        Ok(IssuedApiKey {
            secret: secret.expose_secret().to_owned(),
            api_key: key.into(),
        })
    }

    /// Issues a successor of key `id`; the old key keeps working for `gracePeriodSeconds`
    /// (0 to 30 days), then expires.
    #[graphql(guard = "RequirePermission(KEYS_WRITE)")]
    async fn rotate_api_key(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        grace_period_seconds: i64,
    ) -> ApiResult<IssuedApiKey> {
        let actor = caller(ctx)?.actor()?;
        let (secret, key) =
            api_keys::rotate(services(ctx)?, actor, id, grace_period_seconds).await?;
        Ok(IssuedApiKey {
            secret: secret.expose_secret().to_owned(),
            api_key: key.into(),
        })
    }

    /// Revokes key `id` for good; the proxy refuses it within a second.
    #[graphql(guard = "RequirePermission(KEYS_WRITE)")]
    async fn revoke_api_key(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        reason: String,
    ) -> ApiResult<ApiKeyOut> {
        Ok(api_keys::revoke(&services(ctx)?.db, id, &reason)
            .await?
            .into())
    }

    /// Suspends key `id` until `resumeApiKey`.
    #[graphql(guard = "RequirePermission(KEYS_WRITE)")]
    async fn suspend_api_key(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        reason: String,
    ) -> ApiResult<ApiKeyOut> {
        Ok(api_keys::suspend(&services(ctx)?.db, id, &reason)
            .await?
            .into())
    }

    /// Lifts the suspension of key `id`.
    #[graphql(guard = "RequirePermission(KEYS_WRITE)")]
    async fn resume_api_key(&self, ctx: &Context<'_>, id: Uuid) -> ApiResult<ApiKeyOut> {
        Ok(api_keys::resume(&services(ctx)?.db, id).await?.into())
    }
}
