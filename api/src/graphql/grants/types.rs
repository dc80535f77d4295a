//! GraphQL shapes of incident grants. The token appears only in [`RequestedIncidentGrant`].

use async_graphql::{ComplexObject, Context, Enum, InputObject, SimpleObject};
use chrono::{DateTime, Utc};
use entity::incident_grant;
use uuid::Uuid;

use crate::{
    graphql::{
        error::ApiResult, guard::RequirePermission, keys::types::KeyEnvironment, loaders,
        principals::types::PrincipalOut, roles::types::RoleOut,
    },
    service::{
        grants::{self, GrantPermission, GrantState},
        management::{PRINCIPALS_READ, ROLES_READ},
    },
};

/// Where an incident grant stands.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(name = "IncidentGrantState")]
pub enum IncidentGrantStateOut {
    /// Waiting for an approver; the token does not work yet.
    Pending,
    /// Approved (or opened by break-glass) and not expired: the token works.
    Active,
    /// Refused by an approver.
    Denied,
    /// Ended early.
    Revoked,
    /// Ran out.
    Expired,
}

impl From<GrantState> for IncidentGrantStateOut {
    fn from(state: GrantState) -> Self {
        match state {
            GrantState::Pending => Self::Pending,
            GrantState::Active => Self::Active,
            GrantState::Denied => Self::Denied,
            GrantState::Revoked => Self::Revoked,
            GrantState::Expired => Self::Expired,
        }
    }
}

impl From<IncidentGrantStateOut> for GrantState {
    fn from(state: IncidentGrantStateOut) -> Self {
        match state {
            IncidentGrantStateOut::Pending => Self::Pending,
            IncidentGrantStateOut::Active => Self::Active,
            IncidentGrantStateOut::Denied => Self::Denied,
            IncidentGrantStateOut::Revoked => Self::Revoked,
            IncidentGrantStateOut::Expired => Self::Expired,
        }
    }
}

/// A permission lent by an incident grant.
#[derive(SimpleObject, InputObject, Clone, Debug)]
#[graphql(name = "GrantPermission", input_name = "GrantPermissionInput")]
pub struct GrantPermissionOut {
    /// `service:action`; never a management permission (`portcullis:…`).
    pub name: String,
    /// HTTP methods; empty = any.
    #[graphql(default)]
    pub methods: Vec<String>,
    /// Path pattern (`*` one segment, `**` any).
    pub path_glob: String,
}

impl From<GrantPermission> for GrantPermissionOut {
    fn from(p: GrantPermission) -> Self {
        Self {
            name: p.name,
            methods: p.methods,
            path_glob: p.path_glob,
        }
    }
}

impl From<GrantPermissionOut> for GrantPermission {
    fn from(p: GrantPermissionOut) -> Self {
        Self {
            name: p.name,
            methods: p.methods,
            path_glob: p.path_glob,
        }
    }
}

/// Time-boxed access for an on-call engineer. Never carries the token or its hash.
#[derive(SimpleObject, Clone, Debug)]
#[graphql(name = "IncidentGrant", complex)]
pub struct IncidentGrantOut {
    /// Grant id.
    pub id: Uuid,
    /// External incident reference, e.g. `INC-1234`.
    pub incident_id: String,
    /// Who asked for access (the grantee).
    pub requester_id: Uuid,
    /// Who approved or denied it; the requester for break-glass.
    pub approver_id: Option<Uuid>,
    /// Why access is needed.
    pub justification: String,
    /// Role lent for the duration.
    pub role_id: Option<Uuid>,
    /// Permissions lent for the duration, besides the role's.
    pub permissions: Vec<GrantPermissionOut>,
    /// How long the grant lasts once approved.
    pub duration_seconds: i64,
    /// State now.
    pub state: IncidentGrantStateOut,
    /// Opened by the requester without an approver.
    pub break_glass: bool,
    /// Visible lookup prefix of the token, e.g. `pg_live_AbC123xyz789`.
    pub token_prefix: Option<String>,
    /// Asked for at.
    pub requested_at: DateTime<Utc>,
    /// Approved or denied at.
    pub decided_at: Option<DateTime<Utc>>,
    /// Pending: the request lapses unapproved at this instant
    /// (`PORTCULLIS_API__GRANTS__PENDING_SECS` after it was made). Approved: access ends.
    pub expires_at: Option<DateTime<Utc>>,
    /// Revoked at.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Why it was denied or revoked.
    pub reason: Option<String>,
    /// The access review that follows up a break-glass grant.
    pub follow_up_review_id: Option<Uuid>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

#[ComplexObject]
impl IncidentGrantOut {
    /// The grantee (needs `portcullis:principals:read`).
    #[graphql(guard = "RequirePermission(PRINCIPALS_READ)")]
    async fn requester(&self, ctx: &Context<'_>) -> ApiResult<Option<PrincipalOut>> {
        loaders::load_principal(ctx, self.requester_id).await
    }

    /// The approver or denier (needs `portcullis:principals:read`).
    #[graphql(guard = "RequirePermission(PRINCIPALS_READ)")]
    async fn approver(&self, ctx: &Context<'_>) -> ApiResult<Option<PrincipalOut>> {
        match self.approver_id {
            Some(id) => loaders::load_principal(ctx, id).await,
            None => Ok(None),
        }
    }

    /// The lent role (needs `portcullis:roles:read`).
    #[graphql(guard = "RequirePermission(ROLES_READ)")]
    async fn role(&self, ctx: &Context<'_>) -> ApiResult<Option<RoleOut>> {
        match self.role_id {
            Some(id) => loaders::load_role(ctx, id).await,
            None => Ok(None),
        }
    }
}

impl From<incident_grant::Model> for IncidentGrantOut {
    fn from(grant: incident_grant::Model) -> Self {
        let state = grants::state_of(&grant, Utc::now()).into();
        let permissions = grants::permissions_of(&grant)
            .into_iter()
            .map(Into::into)
            .collect();
        Self {
            id: grant.id,
            incident_id: grant.incident_id,
            requester_id: grant.requester_id,
            approver_id: grant.approver_id,
            justification: grant.justification,
            role_id: grant.role_id,
            permissions,
            duration_seconds: grant.duration_seconds,
            state,
            break_glass: grant.break_glass,
            token_prefix: grant.token_prefix,
            requested_at: grant.requested_at,
            decided_at: grant.decided_at,
            expires_at: grant.expires_at,
            revoked_at: grant.revoked_at,
            reason: grant.revoked_reason,
            follow_up_review_id: grant.follow_up_review_id,
            updated_at: grant.updated_at,
        }
    }
}

/// A newly requested grant: `token` is shown here and NOWHERE ELSE, ever.
#[derive(SimpleObject)]
pub struct RequestedIncidentGrant {
    /// The grant token (`pg_…`); send it as `Authorization: Bearer` to proxied routes. It
    /// works while the grant is active. Store it now: it cannot be retrieved again.
    pub secret: String,
    /// The stored grant.
    pub incident_grant: IncidentGrantOut,
}

/// Input of `requestIncidentGrant`: a role, permissions, or both.
#[derive(InputObject, Clone, Debug)]
pub struct RequestIncidentGrantInput {
    /// External incident reference, e.g. `INC-1234` (≤ 256 characters).
    pub incident_id: String,
    /// Why access is needed (≤ 2,000 characters).
    pub justification: String,
    /// How long the grant lasts once approved (≥ 1; at most the configured maximum, 4 hours
    /// by default).
    pub duration_seconds: i64,
    /// A role to lend; roles holding management permissions are refused.
    pub role_id: Option<Uuid>,
    /// Permissions to lend (≤ 20).
    #[graphql(default)]
    pub permissions: Vec<GrantPermissionOut>,
    /// Open the grant at once, without an approver; needs `portcullis:grants:break_glass`
    /// and opens a follow-up access review.
    #[graphql(default)]
    pub break_glass: bool,
    /// Environment marker of the token; default `LIVE`.
    pub environment: Option<KeyEnvironment>,
}

impl From<RequestIncidentGrantInput> for grants::NewGrant {
    fn from(input: RequestIncidentGrantInput) -> Self {
        Self {
            incident_id: input.incident_id,
            justification: input.justification,
            duration_seconds: input.duration_seconds,
            role_id: input.role_id,
            permissions: input.permissions.into_iter().map(Into::into).collect(),
            break_glass: input.break_glass,
            environment: input.environment.unwrap_or(KeyEnvironment::Live).into(),
        }
    }
}

/// Filter of `incidentGrants`.
#[derive(InputObject, Clone, Debug, Default)]
pub struct IncidentGrantFilter {
    /// Only grants asked for by this principal.
    pub requester_id: Option<Uuid>,
    /// Only grants in this state.
    pub state: Option<IncidentGrantStateOut>,
    /// Only grants for this incident.
    pub incident_id: Option<String>,
}

impl From<IncidentGrantFilter> for grants::GrantFilter {
    fn from(filter: IncidentGrantFilter) -> Self {
        Self {
            requester_id: filter.requester_id,
            state: filter.state.map(Into::into),
            incident_id: filter.incident_id,
        }
    }
}
