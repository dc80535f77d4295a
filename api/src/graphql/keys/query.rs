//! `apiKeys`, `apiKey`.

use async_graphql::{Context, Object};
use uuid::Uuid;

use super::types::{ApiKeyFilter, ApiKeyOut};
use crate::{
    graphql::{
        Conn, connection, error::ApiResult, guard::RequirePermission, list_complexity,
        page_request, services,
    },
    service::{api_keys, management::KEYS_READ},
};

/// Key queries.
#[derive(Default)]
pub struct ApiKeyQuery;

#[Object]
impl ApiKeyQuery {
    /// API keys, oldest first, optionally by owner and state.
    #[graphql(
        guard = "RequirePermission(KEYS_READ)",
        complexity = "list_complexity(first, child_complexity)"
    )]
    async fn api_keys(
        &self,
        ctx: &Context<'_>,
        filter: Option<ApiKeyFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Conn<ApiKeyOut>> {
        let page = page_request(first, after)?;
        let filter = filter.unwrap_or_default().into();
        let keys = api_keys::list(&services(ctx)?.db, &filter, &page).await?;
        Ok(connection(keys, |k| k.id.to_string(), ApiKeyOut::from))
    }

    /// One API key.
    #[graphql(guard = "RequirePermission(KEYS_READ)")]
    async fn api_key(&self, ctx: &Context<'_>, id: Uuid) -> ApiResult<ApiKeyOut> {
        Ok(api_keys::get(&services(ctx)?.db, id).await?.into())
    }
}
