//! `createRole`, `updateRole`, `deleteRole`, `bindRole`, `unbindRole`.

use async_graphql::{Context, Object};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::types::{CreateRoleInput, RoleBindingOut, RoleOut, UpdateRoleInput};
use crate::{
    graphql::{caller, error::ApiResult, guard::RequirePermission, services},
    service::{management::ROLES_WRITE, roles},
};

/// Role mutations.
#[derive(Default)]
pub struct RoleMutation;

#[Object]
impl RoleMutation {
    /// Creates a role with its permissions.
    #[graphql(guard = "RequirePermission(ROLES_WRITE)")]
    async fn create_role(&self, ctx: &Context<'_>, input: CreateRoleInput) -> ApiResult<RoleOut> {
        Ok(roles::create(&services(ctx)?.db, input.into())
            .await?
            .into())
    }

    /// Changes a role; `permissions`, when given, replaces all of them.
    #[graphql(guard = "RequirePermission(ROLES_WRITE)")]
    async fn update_role(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        input: UpdateRoleInput,
    ) -> ApiResult<RoleOut> {
        Ok(roles::update(&services(ctx)?.db, id, input.into())
            .await?
            .into())
    }

    /// Deletes a role with its permissions and bindings; returns what was deleted.
    #[graphql(guard = "RequirePermission(ROLES_WRITE)")]
    async fn delete_role(&self, ctx: &Context<'_>, id: Uuid) -> ApiResult<RoleOut> {
        Ok(roles::delete(&services(ctx)?.db, id).await?.into())
    }

    /// Grants role `roleId` to a principal or group, optionally until `expiresAt` and only
    /// from `cidrs`.
    #[graphql(guard = "RequirePermission(ROLES_WRITE)")]
    async fn bind_role(
        &self,
        ctx: &Context<'_>,
        role_id: Uuid,
        principal_id: Uuid,
        expires_at: Option<DateTime<Utc>>,
        cidrs: Option<Vec<String>>,
        reason: Option<String>,
    ) -> ApiResult<RoleBindingOut> {
        let actor = caller(ctx)?.actor()?;
        let input = roles::NewBinding {
            role_id,
            principal_id,
            expires_at,
            cidrs: cidrs.unwrap_or_default(),
            reason,
        };
        Ok(roles::bind(&services(ctx)?.db, actor, input).await?.into())
    }

    /// Removes binding `id`; the proxy stops honouring it within a second.
    #[graphql(guard = "RequirePermission(ROLES_WRITE)")]
    async fn unbind_role(&self, ctx: &Context<'_>, id: Uuid) -> ApiResult<RoleBindingOut> {
        Ok(roles::unbind(&services(ctx)?.db, id).await?.into())
    }
}
