//! `createRoute`, `updateRoute`, `deleteRoute`.

use async_graphql::{Context, Object};
use uuid::Uuid;

use super::types::{CreateRouteInput, RouteOut, UpdateRouteInput};
use crate::{
    graphql::{error::ApiResult, guard::RequirePermission, services},
    service::{management::ROUTES_WRITE, routes},
};

/// Route mutations.
#[derive(Default)]
pub struct RouteMutation;

#[Object]
impl RouteMutation {
    /// Creates a route; every proxy serves it within a second.
    #[graphql(guard = "RequirePermission(ROUTES_WRITE)")]
    async fn create_route(
        &self,
        ctx: &Context<'_>,
        input: CreateRouteInput,
    ) -> ApiResult<RouteOut> {
        Ok(routes::create(&services(ctx)?.db, input.into())
            .await?
            .into())
    }

    /// Changes route `id`.
    #[graphql(guard = "RequirePermission(ROUTES_WRITE)")]
    async fn update_route(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        input: UpdateRouteInput,
    ) -> ApiResult<RouteOut> {
        Ok(routes::update(&services(ctx)?.db, id, input.into())
            .await?
            .into())
    }

    /// Deletes route `id` with its route-scoped permissions and IP rules.
    #[graphql(guard = "RequirePermission(ROUTES_WRITE)")]
    async fn delete_route(&self, ctx: &Context<'_>, id: Uuid) -> ApiResult<RouteOut> {
        Ok(routes::delete(&services(ctx)?.db, id).await?.into())
    }
}
