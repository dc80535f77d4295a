//! `me`, `simulateAccess`, `explainPrincipal`.

use async_graphql::{Context, Object};
use uuid::Uuid;

use super::types::{AccessDecision, Me, PrincipalExplanation, SimulateAccessInput};
use crate::{
    graphql::{
        caller,
        error::ApiResult,
        guard::{RequireAuthenticated, RequirePermission},
        services,
    },
    service::{
        access, auth,
        management::{PRINCIPALS_READ, SIMULATE},
        principals,
    },
};

/// Access queries.
#[derive(Default)]
pub struct AccessQuery;

#[Object]
impl AccessQuery {
    /// The calling principal and its effective management permissions.
    #[graphql(guard = "RequireAuthenticated")]
    async fn me(&self, ctx: &Context<'_>) -> ApiResult<Me> {
        let services = services(ctx)?;
        let caller = caller(ctx)?;
        let actor = caller.actor()?;
        let permissions = auth::management_permissions(services, caller).await?;
        Ok(Me {
            principal: principals::get(&services.db, actor.principal_id)
                .await?
                .into(),
            api_key_id: actor.key_id,
            permissions: permissions.into_iter().map(str::to_owned).collect(),
        })
    }

    /// What the proxy would decide for this request right now, computed by the proxy's own
    /// normalisation, route table, IP rules and evaluator over the current policy.
    #[graphql(guard = "RequirePermission(SIMULATE)")]
    async fn simulate_access(
        &self,
        ctx: &Context<'_>,
        input: SimulateAccessInput,
    ) -> ApiResult<AccessDecision> {
        let request = input.try_into()?;
        let services = services(ctx)?;
        Ok(access::simulate(&services.db, &services.normalize, request)
            .await?
            .into())
    }

    /// The effective permissions of principal `id`, each with the binding, group or grant it
    /// comes from.
    #[graphql(guard = "RequirePermission(PRINCIPALS_READ)")]
    async fn explain_principal(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
    ) -> ApiResult<PrincipalExplanation> {
        let db = &services(ctx)?.db;
        let principal = principals::get(db, id).await?.into();
        let permissions = access::explain(db, id).await?;
        Ok(PrincipalExplanation {
            principal,
            permissions: permissions.into_iter().map(Into::into).collect(),
        })
    }
}
