//! `incidentGrants`, `incidentGrant`.

use async_graphql::{Context, Object};
use uuid::Uuid;

use super::types::{IncidentGrantFilter, IncidentGrantOut};
use crate::{
    graphql::{
        Conn, caller, connection,
        error::{ApiError, ApiResult},
        list_complexity, page_request, services,
    },
    service::{
        auth, grants,
        management::{GRANTS_APPROVE, GRANTS_REQUEST, REVIEWS_READ},
    },
};

/// Which grants a caller may see or end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// Everyone's.
    All,
    /// Only those this principal requested.
    Own(Uuid),
}

/// [`Scope::All`] for holders of any of `everyone`, [`Scope::Own`] for holders of
/// `portcullis:grants:request`; otherwise `FORBIDDEN` naming the first of `everyone`.
pub async fn scope(ctx: &Context<'_>, everyone: &[&'static str]) -> ApiResult<Scope> {
    let caller = caller(ctx)?;
    let held = auth::management_permissions(services(ctx)?, caller).await?;
    if everyone.iter().any(|p| held.contains(p)) {
        Ok(Scope::All)
    } else if held.contains(&GRANTS_REQUEST) {
        Ok(Scope::Own(caller.actor()?.principal_id))
    } else {
        Err(ApiError::Forbidden {
            permission: everyone[0].to_owned(),
        })
    }
}

/// Who may read every grant: approvers and auditors; requesters read their own.
const READ_ALL: &[&str] = &[GRANTS_APPROVE, REVIEWS_READ];

/// Incident-grant queries.
#[derive(Default)]
pub struct IncidentGrantQuery;

#[Object]
impl IncidentGrantQuery {
    /// Incident grants, newest first, optionally by requester, state and incident.
    /// Approvers and auditors see all; requesters see their own.
    #[graphql(complexity = "list_complexity(first, child_complexity)")]
    async fn incident_grants(
        &self,
        ctx: &Context<'_>,
        filter: Option<IncidentGrantFilter>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Conn<IncidentGrantOut>> {
        let mut filter: grants::GrantFilter = filter.unwrap_or_default().into();
        if let Scope::Own(me) = scope(ctx, READ_ALL).await? {
            if filter.requester_id.is_some_and(|id| id != me) {
                return Err(ApiError::Forbidden {
                    permission: GRANTS_APPROVE.to_owned(),
                });
            }
            filter.requester_id = Some(me);
        }
        let page = page_request(first, after)?;
        let grants = grants::list(&services(ctx)?.db, &filter, &page).await?;
        Ok(connection(
            grants,
            |g| g.id.to_string(),
            IncidentGrantOut::from,
        ))
    }

    /// One incident grant.
    async fn incident_grant(&self, ctx: &Context<'_>, id: Uuid) -> ApiResult<IncidentGrantOut> {
        let scope = scope(ctx, READ_ALL).await?;
        let grant = grants::get(&services(ctx)?.db, id).await?;
        if let Scope::Own(me) = scope
            && grant.requester_id != me
        {
            return Err(ApiError::Forbidden {
                permission: GRANTS_APPROVE.to_owned(),
            });
        }
        Ok(grant.into())
    }
}
