//! GraphQL shapes of principals.

use async_graphql::{ComplexObject, Context, Enum, InputObject, Json, SimpleObject};
use chrono::{DateTime, Utc};
use entity::principal::{self, PrincipalKind};
use serde_json::Value;
use uuid::Uuid;

use crate::{
    graphql::{
        Conn, connection, error::ApiResult, guard::RequirePermission, keys::types::ApiKeyOut,
        list_complexity, page_request, roles::types::RoleBindingOut, services,
    },
    service::{
        api_keys,
        management::{KEYS_READ, PRINCIPALS_READ, ROLES_READ},
        principals, roles,
    },
};

/// What kind of identity a principal is.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(name = "PrincipalKind")]
pub enum PrincipalKindOut {
    /// A human.
    User,
    /// A set of principals; its bindings apply to every member.
    Group,
    /// A non-human caller.
    ServiceAccount,
}

impl From<PrincipalKind> for PrincipalKindOut {
    fn from(kind: PrincipalKind) -> Self {
        match kind {
            PrincipalKind::User => Self::User,
            PrincipalKind::Group => Self::Group,
            PrincipalKind::ServiceAccount => Self::ServiceAccount,
        }
    }
}

impl From<PrincipalKindOut> for PrincipalKind {
    fn from(kind: PrincipalKindOut) -> Self {
        match kind {
            PrincipalKindOut::User => Self::User,
            PrincipalKindOut::Group => Self::Group,
            PrincipalKindOut::ServiceAccount => Self::ServiceAccount,
        }
    }
}

/// A user, group or service account.
#[derive(SimpleObject, Clone, Debug)]
#[graphql(name = "Principal", complex)]
pub struct PrincipalOut {
    /// Principal id.
    pub id: Uuid,
    /// User, group or service account.
    pub kind: PrincipalKindOut,
    /// Unique (per kind) handle.
    pub name: String,
    /// Display name.
    pub display_name: String,
    /// Contact address.
    pub email: Option<String>,
    /// OIDC issuer.
    pub oidc_issuer: Option<String>,
    /// OIDC subject.
    pub oidc_subject: Option<String>,
    /// For groups: the IdP group claim value.
    pub oidc_group: Option<String>,
    /// A disabled principal authenticates nowhere.
    pub disabled: bool,
    /// Free-form metadata.
    pub metadata: Json<Value>,
    /// Created at.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

#[ComplexObject]
impl PrincipalOut {
    /// Groups this principal belongs to.
    #[graphql(
        guard = "RequirePermission(PRINCIPALS_READ)",
        complexity = "list_complexity(first, child_complexity)"
    )]
    async fn groups(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Conn<PrincipalOut>> {
        let page = page_request(first, after)?;
        let groups = principals::groups_of(&services(ctx)?.db, self.id, &page).await?;
        Ok(connection(groups, |p| p.id.to_string(), PrincipalOut::from))
    }

    /// Members, for a group.
    #[graphql(
        guard = "RequirePermission(PRINCIPALS_READ)",
        complexity = "list_complexity(first, child_complexity)"
    )]
    async fn members(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Conn<PrincipalOut>> {
        let page = page_request(first, after)?;
        let members = principals::members_of(&services(ctx)?.db, self.id, &page).await?;
        Ok(connection(
            members,
            |p| p.id.to_string(),
            PrincipalOut::from,
        ))
    }

    /// The principal's API keys.
    #[graphql(
        guard = "RequirePermission(KEYS_READ)",
        complexity = "list_complexity(first, child_complexity)"
    )]
    async fn api_keys(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Conn<ApiKeyOut>> {
        let page = page_request(first, after)?;
        let filter = api_keys::KeyFilter {
            principal_id: Some(self.id),
            state: None,
        };
        let keys = api_keys::list(&services(ctx)?.db, &filter, &page).await?;
        Ok(connection(keys, |k| k.id.to_string(), ApiKeyOut::from))
    }

    /// The principal's own role bindings (not its groups').
    #[graphql(
        guard = "RequirePermission(ROLES_READ)",
        complexity = "list_complexity(first, child_complexity)"
    )]
    async fn role_bindings(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> ApiResult<Conn<RoleBindingOut>> {
        let page = page_request(first, after)?;
        let filter = roles::BindingFilter {
            principal_id: Some(self.id),
            role_id: None,
        };
        let bindings = roles::list_bindings(&services(ctx)?.db, &filter, &page).await?;
        Ok(connection(
            bindings,
            |b| b.id.to_string(),
            RoleBindingOut::from,
        ))
    }
}

impl From<principal::Model> for PrincipalOut {
    fn from(p: principal::Model) -> Self {
        Self {
            id: p.id,
            kind: p.kind.into(),
            name: p.name,
            display_name: p.display_name,
            email: p.email,
            oidc_issuer: p.oidc_issuer,
            oidc_subject: p.oidc_subject,
            oidc_group: p.oidc_group,
            disabled: p.disabled,
            metadata: Json(p.metadata),
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

/// Input of `createPrincipal`.
#[derive(InputObject, Clone, Debug)]
pub struct CreatePrincipalInput {
    /// User, group or service account.
    pub kind: PrincipalKindOut,
    /// Unique (per kind) handle (≤ 256 characters).
    pub name: String,
    /// Display name; defaults to `name`.
    pub display_name: Option<String>,
    /// Contact address.
    pub email: Option<String>,
    /// OIDC issuer (with `oidcSubject`).
    pub oidc_issuer: Option<String>,
    /// OIDC subject (with `oidcIssuer`).
    pub oidc_subject: Option<String>,
    /// For groups: the IdP group claim value.
    pub oidc_group: Option<String>,
    /// Free-form JSON object.
    pub metadata: Option<Json<Value>>,
}

impl From<CreatePrincipalInput> for principals::NewPrincipal {
    fn from(input: CreatePrincipalInput) -> Self {
        Self {
            kind: input.kind.into(),
            name: input.name,
            display_name: input.display_name,
            email: input.email,
            oidc_issuer: input.oidc_issuer,
            oidc_subject: input.oidc_subject,
            oidc_group: input.oidc_group,
            metadata: input.metadata.map(|m| m.0),
        }
    }
}

/// Input of `updatePrincipal`; absent fields are unchanged.
#[derive(InputObject, Clone, Debug)]
pub struct UpdatePrincipalInput {
    /// New display name.
    pub display_name: Option<String>,
    /// New contact address (empty clears it).
    pub email: Option<String>,
    /// Disable (or re-enable) the principal everywhere.
    pub disabled: Option<bool>,
    /// Replaces the metadata.
    pub metadata: Option<Json<Value>>,
}

impl From<UpdatePrincipalInput> for principals::PrincipalChanges {
    fn from(input: UpdatePrincipalInput) -> Self {
        Self {
            display_name: input.display_name,
            email: input.email,
            disabled: input.disabled,
            metadata: input.metadata.map(|m| m.0),
        }
    }
}

/// Filter of `principals`.
#[derive(InputObject, Clone, Debug, Default)]
pub struct PrincipalFilter {
    /// Only this kind.
    pub kind: Option<PrincipalKindOut>,
    /// Name contains this text.
    pub name_contains: Option<String>,
}

impl From<PrincipalFilter> for principals::PrincipalFilter {
    fn from(filter: PrincipalFilter) -> Self {
        Self {
            kind: filter.kind.map(Into::into),
            name_contains: filter.name_contains,
        }
    }
}

/// Result of a membership change.
#[derive(SimpleObject, Clone, Debug)]
pub struct GroupMembership {
    /// The group.
    pub group: PrincipalOut,
    /// The member.
    pub member: PrincipalOut,
}
