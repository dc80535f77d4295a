//! `routes`, `route`.

use async_graphql::{Context, Object};
use uuid::Uuid;

use super::types::RouteOut;
use crate::{
    graphql::{
        Conn, connection, error::ApiResult, guard::RequirePermission, list_complexity,
        page_request, services,
    },
    service::{management::ROUTES_READ, routes},
};

/// Route queries.
#[derive(Default)]
pub struct RouteQuery;

#[Object]
impl RouteQuery {
    /// Routes, oldest first.
    #[graphql(
        guard = "RequirePermission(ROUTES_READ)",
        complexity = "list_complexity(first, child_complexity)"
    )]
    async fn routes(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Conn<RouteOut>> {
        let page = page_request(first, after)?;
        let rows = routes::list(&services(ctx)?.db, &page).await?;
        Ok(connection(rows, |r| r.id.to_string(), RouteOut::from))
    }

    /// One route.
    #[graphql(guard = "RequirePermission(ROUTES_READ)")]
    async fn route(&self, ctx: &Context<'_>, id: Uuid) -> ApiResult<RouteOut> {
        Ok(routes::get(&services(ctx)?.db, id).await?.into())
    }
}
