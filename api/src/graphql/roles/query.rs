//! `roles`, `role`, `roleBindings`.

use async_graphql::{Context, Object};
use uuid::Uuid;

use super::types::{RoleBindingFilter, RoleBindingOut, RoleOut};
use crate::{
    graphql::{
        Conn, connection, error::ApiResult, guard::RequirePermission, list_complexity,
        page_request, services,
    },
    service::{management::ROLES_READ, roles},
};

/// Role queries.
#[derive(Default)]
pub struct RoleQuery;

#[Object]
impl RoleQuery {
    /// Roles, oldest first.
    #[graphql(
        guard = "RequirePermission(ROLES_READ)",
        complexity = "list_complexity(first, child_complexity)"
    )]
    async fn roles(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Conn<RoleOut>> {
        let page = page_request(first, after)?;
        let rows = roles::list(&services(ctx)?.db, &page).await?;
        Ok(connection(rows, |r| r.id.to_string(), RoleOut::from))
    }

    /// One role.
    #[graphql(guard = "RequirePermission(ROLES_READ)")]
    async fn role(&self, ctx: &Context<'_>, id: Uuid) -> ApiResult<RoleOut> {
        Ok(roles::get(&services(ctx)?.db, id).await?.into())
    }

    /// Role bindings, oldest first, optionally by principal or role.
    #[graphql(
        guard = "RequirePermission(ROLES_READ)",
        complexity = "list_complexity(first, child_complexity)"
    )]
    async fn role_bindings(
        &self,
        ctx: &Context<'_>,
        filter: Option<RoleBindingFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Conn<RoleBindingOut>> {
        let page = page_request(first, after)?;
        let filter = filter.unwrap_or_default().into();
        let rows = roles::list_bindings(&services(ctx)?.db, &filter, &page).await?;
        Ok(connection(rows, |b| b.id.to_string(), RoleBindingOut::from))
    }
}
