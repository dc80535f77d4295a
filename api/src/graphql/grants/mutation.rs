//! `requestIncidentGrant`, `approveIncidentGrant`, `denyIncidentGrant`, `revokeIncidentGrant`.

use async_graphql::{Context, Object};
use uuid::Uuid;

use super::{
    query::{Scope, scope},
    types::{IncidentGrantOut, RequestIncidentGrantInput, RequestedIncidentGrant},
};
use crate::{
    graphql::{
        caller,
        error::{ApiError, ApiResult},
        guard::RequirePermission,
        services,
    },
    service::{
        auth, grants,
        management::{GRANTS_APPROVE, GRANTS_BREAK_GLASS, GRANTS_REQUEST},
    },
};

/// Incident-grant mutations.
#[derive(Default)]
pub struct IncidentGrantMutation;

#[Object]
impl IncidentGrantMutation {
    /// Asks for time-boxed access for the caller. The response carries the grant token; it is
    /// never shown again. The token works once another principal approves the grant, or at
    /// once with `breakGlass`.
    #[graphql(guard = "RequirePermission(GRANTS_REQUEST)")]
    async fn request_incident_grant(
        &self,
        ctx: &Context<'_>,
        input: RequestIncidentGrantInput,
    ) -> ApiResult<RequestedIncidentGrant> {
        let services = services(ctx)?;
        let caller = caller(ctx)?;
        if input.break_glass {
            auth::authorize(services, caller, GRANTS_BREAK_GLASS).await?;
        }
        let (secret, grant) = grants::request(services, caller.actor()?, input.into()).await?;
        Ok(RequestedIncidentGrant {
            secret: secret.expose_secret().to_owned(),
            incident_grant: grant.into(),
        })
    }

    /// Approves pending grant `id`; it is active from now for its duration. The requester
    /// cannot approve their own grant.
    #[graphql(guard = "RequirePermission(GRANTS_APPROVE)")]
    async fn approve_incident_grant(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
    ) -> ApiResult<IncidentGrantOut> {
        let actor = caller(ctx)?.actor()?;
        Ok(grants::approve(services(ctx)?, actor, id).await?.into())
    }

    /// Refuses pending grant `id`; its token never works. Not by its requester, who withdraws
    /// with `revokeIncidentGrant`.
    #[graphql(guard = "RequirePermission(GRANTS_APPROVE)")]
    async fn deny_incident_grant(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        reason: String,
    ) -> ApiResult<IncidentGrantOut> {
        let actor = caller(ctx)?.actor()?;
        Ok(grants::deny(&services(ctx)?.db, actor, id, &reason)
            .await?
            .into())
    }

    /// Ends grant `id` now; the proxy refuses its token within a second. Approvers may end
    /// any grant, requesters their own.
    async fn revoke_incident_grant(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        reason: String,
    ) -> ApiResult<IncidentGrantOut> {
        let services = services(ctx)?;
        let scope = scope(ctx, &[GRANTS_APPROVE]).await?;
        if let Scope::Own(requester) = scope
            && grants::get(&services.db, id).await?.requester_id != requester
        {
            return Err(ApiError::Forbidden {
                permission: GRANTS_APPROVE.to_owned(),
            });
        }
        Ok(grants::revoke(&services.db, id, &reason).await?.into())
    }
}
