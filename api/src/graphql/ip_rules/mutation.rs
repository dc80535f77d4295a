//! `createIpRule`, `deleteIpRule`.

use async_graphql::{Context, Object};
use uuid::Uuid;

use super::types::{CreateIpRuleInput, IpRuleOut};
use crate::{
    graphql::{caller, error::ApiResult, guard::RequirePermission, services},
    service::{ip_rules, management::IP_RULES_WRITE},
};

/// IP rule mutations.
#[derive(Default)]
pub struct IpRuleMutation;

#[Object]
impl IpRuleMutation {
    /// Creates an allow or deny rule; every proxy applies it within a second.
    #[graphql(guard = "RequirePermission(IP_RULES_WRITE)")]
    async fn create_ip_rule(
        &self,
        ctx: &Context<'_>,
        input: CreateIpRuleInput,
    ) -> ApiResult<IpRuleOut> {
        let actor = caller(ctx)?.actor()?;
        Ok(ip_rules::create(&services(ctx)?.db, actor, input.into())
            .await?
            .into())
    }

    /// Deletes rule `id`; returns what was deleted.
    #[graphql(guard = "RequirePermission(IP_RULES_WRITE)")]
    async fn delete_ip_rule(&self, ctx: &Context<'_>, id: Uuid) -> ApiResult<IpRuleOut> {
        Ok(ip_rules::delete(&services(ctx)?.db, id).await?.into())
    }
}
