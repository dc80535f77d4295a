//! `registerManagedSecret`, `updateManagedSecret`, `deleteManagedSecret`.

use async_graphql::{Context, Object};

use super::types::{ManagedSecretOut, RegisterManagedSecretInput, UpdateManagedSecretInput};
use crate::{
    graphql::{error::ApiResult, guard::RequirePermission, services},
    service::{managed_secrets, management::REMEDIATION_WRITE},
};

/// Managed secret mutations.
#[derive(Default)]
pub struct ManagedSecretMutation;

#[Object]
impl ManagedSecretMutation {
    /// Registers an existing Secrets Manager secret for Portcullis to rotate (`rotateSecret`,
    /// or every `rotationIntervalDays`). Nothing is written to Secrets Manager.
    #[graphql(guard = "RequirePermission(REMEDIATION_WRITE)")]
    async fn register_managed_secret(
        &self,
        ctx: &Context<'_>,
        input: RegisterManagedSecretInput,
    ) -> ApiResult<ManagedSecretOut> {
        Ok(managed_secrets::register(services(ctx)?, input.into())
            .await?
            .into())
    }

    /// Changes managed secret `secret_id`.
    #[graphql(guard = "RequirePermission(REMEDIATION_WRITE)")]
    async fn update_managed_secret(
        &self,
        ctx: &Context<'_>,
        secret_id: String,
        input: UpdateManagedSecretInput,
    ) -> ApiResult<ManagedSecretOut> {
        Ok(
            managed_secrets::update(&services(ctx)?.db, &secret_id, input.into())
                .await?
                .into(),
        )
    }

    /// Stops managing `secret_id`; returns what was deleted. The secret itself stays in
    /// Secrets Manager.
    #[graphql(guard = "RequirePermission(REMEDIATION_WRITE)")]
    async fn delete_managed_secret(
        &self,
        ctx: &Context<'_>,
        secret_id: String,
    ) -> ApiResult<ManagedSecretOut> {
        Ok(managed_secrets::delete(&services(ctx)?.db, &secret_id)
            .await?
            .into())
    }
}
