//! `principals`, `principal`.

use async_graphql::{Context, Object};
use uuid::Uuid;

use super::types::{PrincipalFilter, PrincipalOut};
use crate::{
    graphql::{
        Conn, connection, error::ApiResult, guard::RequirePermission, list_complexity,
        page_request, services,
    },
    service::{management::PRINCIPALS_READ, principals},
};

/// Principal queries.
#[derive(Default)]
pub struct PrincipalQuery;

#[Object]
impl PrincipalQuery {
    /// Principals, oldest first.
    #[graphql(
        guard = "RequirePermission(PRINCIPALS_READ)",
        complexity = "list_complexity(first, child_complexity)"
    )]
    async fn principals(
        &self,
        ctx: &Context<'_>,
        filter: Option<PrincipalFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Conn<PrincipalOut>> {
        let page = page_request(first, after)?;
        let filter = filter.unwrap_or_default().into();
        let rows = principals::list(&services(ctx)?.db, &filter, &page).await?;
        Ok(connection(rows, |p| p.id.to_string(), PrincipalOut::from))
    }

    /// One principal.
    #[graphql(guard = "RequirePermission(PRINCIPALS_READ)")]
    async fn principal(&self, ctx: &Context<'_>, id: Uuid) -> ApiResult<PrincipalOut> {
        Ok(principals::get(&services(ctx)?.db, id).await?.into())
    }
}
