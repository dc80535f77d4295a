//! `principal`: a user, a group or a service account: anyone a key, a role binding or a grant
//! can belong to.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// What kind of identity a [`Model`] is.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(32))")]
#[serde(rename_all = "snake_case")]
pub enum PrincipalKind {
    /// A human, usually signed in through OIDC.
    #[sea_orm(string_value = "user")]
    User,
    /// A named set of principals; bindings on the group apply to every member.
    #[sea_orm(string_value = "group")]
    Group,
    /// A non-human caller that authenticates with API keys.
    #[sea_orm(string_value = "service_account")]
    ServiceAccount,
}

/// One row of `principal`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "principal")]
pub struct Model {
    /// Application-generated UUID v7.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// User, group or service account.
    pub kind: PrincipalKind,
    /// Stable handle, unique per kind (`uq_principal_kind_name`).
    pub name: String,
    /// Human-readable name shown in the management API.
    pub display_name: String,
    /// Contact address, if known.
    pub email: Option<String>,
    /// OIDC `iss` of the identity this principal was provisioned from.
    pub oidc_issuer: Option<String>,
    /// OIDC `sub`; unique together with `oidc_issuer` (`uq_principal_oidc_issuer_oidc_subject`).
    pub oidc_subject: Option<String>,
    /// For groups: the IdP group claim value that makes a token holder a member.
    pub oidc_group: Option<String>,
    /// A disabled principal authenticates nowhere, whatever its keys and bindings say.
    pub disabled: bool,
    /// Free-form JSON object (team, cost centre, ...); never used for decisions.
    pub metadata: Json,
    /// When the row was created.
    pub created_at: DateTimeUtc,
    /// When the row was last changed.
    pub updated_at: DateTimeUtc,
}

/// Foreign keys that point at `principal`.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// API keys owned by this principal (`api_key.principal_id`).
    #[sea_orm(has_many = "super::api_key::Entity")]
    ApiKey,
    /// Memberships where this principal is the group (`group_membership.group_id`).
    #[sea_orm(
        has_many = "super::group_membership::Entity",
        via_rel = "Relation::Group"
    )]
    GroupMembers,
    /// Memberships where this principal is the member (`group_membership.member_id`).
    #[sea_orm(
        has_many = "super::group_membership::Entity",
        via_rel = "Relation::Member"
    )]
    MemberOf,
    /// Role bindings held by this principal (`role_binding.principal_id`).
    #[sea_orm(has_many = "super::role_binding::Entity")]
    RoleBinding,
    /// Rate-limit overrides for this principal (`rate_limit_override.principal_id`).
    #[sea_orm(has_many = "super::rate_limit_override::Entity")]
    RateLimitOverride,
    /// Incident grants this principal requested (`incident_grant.requester_id`).
    #[sea_orm(
        has_many = "super::incident_grant::Entity",
        via_rel = "Relation::Requester"
    )]
    RequestedGrants,
    /// Incident grants this principal approved (`incident_grant.approver_id`).
    #[sea_orm(
        has_many = "super::incident_grant::Entity",
        via_rel = "Relation::Approver"
    )]
    ApprovedGrants,
}

impl Related<super::api_key::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::ApiKey.def()
    }
}

impl Related<super::role_binding::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::RoleBinding.def()
    }
}

impl Related<super::rate_limit_override::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::RateLimitOverride.def()
    }
}

/// The grants a principal *requested*; use [`Relation::ApprovedGrants`] for the other side.
impl Related<super::incident_grant::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::RequestedGrants.def()
    }
}

/// From a group to its members: `group.find_linked(principal::GroupToMembers)`.
#[derive(Clone, Copy, Debug)]
pub struct GroupToMembers;

impl Linked for GroupToMembers {
    type FromEntity = Entity;
    type ToEntity = Entity;

    fn link(&self) -> Vec<RelationDef> {
        vec![
            super::group_membership::Relation::Group.def().rev(),
            super::group_membership::Relation::Member.def(),
        ]
    }
}

/// From a principal to the groups it belongs to: `user.find_linked(principal::MemberToGroups)`.
#[derive(Clone, Copy, Debug)]
pub struct MemberToGroups;

impl Linked for MemberToGroups {
    type FromEntity = Entity;
    type ToEntity = Entity;

    fn link(&self) -> Vec<RelationDef> {
        vec![
            super::group_membership::Relation::Member.def().rev(),
            super::group_membership::Relation::Group.def(),
        ]
    }
}

impl ActiveModelBehavior for ActiveModel {}

impl ActiveModel {
    /// A new enabled principal with no OIDC identity, e-mail or metadata; callers set the
    /// optional columns they need on the result.
    pub fn new_principal(
        id: Uuid,
        kind: PrincipalKind,
        name: &str,
        display_name: &str,
        now: DateTimeUtc,
    ) -> Self {
        use sea_orm::ActiveValue::Set;
        Self {
            id: Set(id),
            kind: Set(kind),
            name: Set(name.to_owned()),
            display_name: Set(display_name.to_owned()),
            email: Set(None),
            oidc_issuer: Set(None),
            oidc_subject: Set(None),
            oidc_group: Set(None),
            disabled: Set(false),
            metadata: Set(serde_json::json!({})),
            created_at: Set(now),
            updated_at: Set(now),
        }
    }
}
