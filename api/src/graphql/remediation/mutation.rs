//! `createPlaybook`, `updatePlaybook`, `deletePlaybook`, `reportLeakedKey`, `rotateSecret`,
//! `retryRemediationRun`.

use async_graphql::{Context, Object};
use uuid::Uuid;

use super::types::{CreatePlaybookInput, PlaybookOut, RemediationRunOut, UpdatePlaybookInput};
use crate::{
    graphql::{error::ApiResult, guard::RequirePermission, services},
    service::{management::REMEDIATION_WRITE, playbooks},
};

/// Remediation mutations.
#[derive(Default)]
pub struct RemediationMutation;

#[Object]
impl RemediationMutation {
    /// Creates a playbook; `trigger`, `diagnose`, `actions` and `notify` are validated
    /// against the engine's playbook format.
    #[graphql(guard = "RequirePermission(REMEDIATION_WRITE)")]
    async fn create_playbook(
        &self,
        ctx: &Context<'_>,
        input: CreatePlaybookInput,
    ) -> ApiResult<PlaybookOut> {
        Ok(playbooks::create(&services(ctx)?.db, input.into())
            .await?
            .into())
    }

    /// Changes playbook `id` (builtin playbooks too, e.g. to disable one).
    #[graphql(guard = "RequirePermission(REMEDIATION_WRITE)")]
    async fn update_playbook(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        input: UpdatePlaybookInput,
    ) -> ApiResult<PlaybookOut> {
        Ok(playbooks::update(&services(ctx)?.db, id, input.into())
            .await?
            .into())
    }

    /// Deletes playbook `id`; returns what was deleted. Builtin playbooks: `CONFLICT`.
    #[graphql(guard = "RequirePermission(REMEDIATION_WRITE)")]
    async fn delete_playbook(&self, ctx: &Context<'_>, id: Uuid) -> ApiResult<PlaybookOut> {
        Ok(playbooks::delete(&services(ctx)?.db, id).await?.into())
    }

    /// Reports key `api_key_id` leaked: it is revoked at once (every proxy within a second),
    /// rotated into its managed secret if one holds it, and subscribers are notified.
    #[graphql(guard = "RequirePermission(REMEDIATION_WRITE)")]
    async fn report_leaked_key(
        &self,
        ctx: &Context<'_>,
        api_key_id: Uuid,
    ) -> ApiResult<RemediationRunOut> {
        Ok(playbooks::report_leaked_key(services(ctx)?, api_key_id)
            .await?
            .into())
    }

    /// Rotates managed secret `secret_id` (Secrets Manager's four-step protocol, the run id
    /// as `ClientRequestToken`). An API key's old key keeps working for the configured grace
    /// period; an upstream credential gets a fresh random value that every proxy injects as
    /// soon as the rotation finishes.
    #[graphql(guard = "RequirePermission(REMEDIATION_WRITE)")]
    async fn rotate_secret(
        &self,
        ctx: &Context<'_>,
        secret_id: String,
    ) -> ApiResult<RemediationRunOut> {
        Ok(playbooks::rotate_secret(services(ctx)?, &secret_id)
            .await?
            .into())
    }

    /// Retries failed run `id` from its failed steps; completed steps are not repeated.
    #[graphql(guard = "RequirePermission(REMEDIATION_WRITE)")]
    async fn retry_remediation_run(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
    ) -> ApiResult<RemediationRunOut> {
        Ok(playbooks::retry_run(services(ctx)?, id).await?.into())
    }
}
