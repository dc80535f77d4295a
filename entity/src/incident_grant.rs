//! `incident_grant`: time-boxed access for an on-call engineer during an incident.
//!
//! As with API keys, the grant token is NEVER STORED: only its `token_prefix` and `token_hash`.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// Lifecycle of a [`Model`].
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(32))")]
#[serde(rename_all = "snake_case")]
pub enum IncidentGrantStatus {
    /// Waiting for an approver.
    #[sea_orm(string_value = "pending")]
    Pending,
    /// Active until `expires_at` (or approved by break-glass).
    #[sea_orm(string_value = "approved")]
    Approved,
    /// Refused by an approver.
    #[sea_orm(string_value = "denied")]
    Denied,
    /// Ended early (`revoked_at`).
    #[sea_orm(string_value = "revoked")]
    Revoked,
    /// Ran out.
    #[sea_orm(string_value = "expired")]
    Expired,
}

/// One row of `incident_grant`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "incident_grant")]
pub struct Model {
    /// Application-generated UUID v7.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// External incident reference, e.g. `INC-1234`.
    pub incident_id: String,
    /// Who asked for access.
    pub requester_id: Uuid,
    /// Who approved or denied it (never the requester).
    pub approver_id: Option<Uuid>,
    /// Why access is needed.
    #[sea_orm(column_type = "Text")]
    pub justification: String,
    /// Role lent for the duration, if the grant is role-based.
    pub role_id: Option<Uuid>,
    /// JSON array of ad-hoc permissions: `[{"name", "methods", "path_glob"}]`.
    pub permissions: Json,
    /// Requested duration in seconds (capped by configuration).
    pub duration_seconds: i64,
    /// Pending, approved, denied, revoked or expired.
    pub status: IncidentGrantStatus,
    /// Self-approved emergency access; requires `follow_up_review_id`.
    pub break_glass: bool,
    /// Visible lookup id of the grant token; unique (`uq_incident_grant_token_prefix`).
    pub token_prefix: Option<String>,
    /// Hex HMAC-SHA-256 of the grant token.
    pub token_hash: Option<String>,
    /// When access was requested.
    pub requested_at: DateTimeUtc,
    /// When it was approved or denied.
    pub decided_at: Option<DateTimeUtc>,
    /// Access ends at this instant.
    pub expires_at: Option<DateTimeUtc>,
    /// When it was revoked early.
    pub revoked_at: Option<DateTimeUtc>,
    /// Why it was revoked.
    pub revoked_reason: Option<String>,
    /// Mandatory review after break-glass use.
    pub follow_up_review_id: Option<Uuid>,
    /// When the row was created.
    pub created_at: DateTimeUtc,
    /// When the row was last changed.
    pub updated_at: DateTimeUtc,
}

/// Foreign keys of `incident_grant`.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// `requester_id` → `principal.id`, ON DELETE CASCADE.
    #[sea_orm(
        belongs_to = "super::principal::Entity",
        from = "Column::RequesterId",
        to = "super::principal::Column::Id",
        on_delete = "Cascade",
        fk_name = "fk_incident_grant_requester_id"
    )]
    Requester,
    /// `approver_id` → `principal.id`, ON DELETE SET NULL.
    #[sea_orm(
        belongs_to = "super::principal::Entity",
        from = "Column::ApproverId",
        to = "super::principal::Column::Id",
        on_delete = "SetNull",
        fk_name = "fk_incident_grant_approver_id"
    )]
    Approver,
    /// `role_id` → `role.id`, ON DELETE SET NULL.
    #[sea_orm(
        belongs_to = "super::role::Entity",
        from = "Column::RoleId",
        to = "super::role::Column::Id",
        on_delete = "SetNull",
        fk_name = "fk_incident_grant_role_id"
    )]
    Role,
    /// `follow_up_review_id` → `access_review.id`, ON DELETE SET NULL.
    #[sea_orm(
        belongs_to = "super::access_review::Entity",
        from = "Column::FollowUpReviewId",
        to = "super::access_review::Column::Id",
        on_delete = "SetNull",
        fk_name = "fk_incident_grant_follow_up_review_id"
    )]
    FollowUpReview,
}

/// Both principal foreign keys point at `principal`; this one follows `requester_id`. Use
/// [`Relation::Approver`] for the approver.
impl Related<super::principal::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Requester.def()
    }
}

impl Related<super::role::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Role.def()
    }
}

impl Related<super::access_review::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::FollowUpReview.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
