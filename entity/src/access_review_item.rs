//! `access_review_item`: one piece of access (a key, a binding, a grant) under review.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

pub use super::access_review::ReviewDecision;

/// What kind of access an item reviews; `subject_id` is the id in the matching table.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(32))")]
#[serde(rename_all = "snake_case")]
pub enum ReviewSubjectKind {
    /// An `api_key`.
    #[sea_orm(string_value = "api_key")]
    ApiKey,
    /// A `role_binding`.
    #[sea_orm(string_value = "role_binding")]
    RoleBinding,
    /// An `incident_grant`.
    #[sea_orm(string_value = "incident_grant")]
    IncidentGrant,
}

/// One row of `access_review_item`; unique per (`review_id`, `subject_kind`, `subject_id`).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "access_review_item")]
pub struct Model {
    /// Application-generated UUID v7.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The campaign.
    pub review_id: Uuid,
    /// Key, binding or grant.
    pub subject_kind: ReviewSubjectKind,
    /// Id of the reviewed row (no foreign key: it may be deleted while the review runs).
    pub subject_id: Uuid,
    /// Principal holding the access.
    pub principal_id: Uuid,
    /// JSON array of flags: `dormant`, `over_privileged`, `expired`, `orphaned`.
    pub flags: Json,
    /// Principal asked to decide.
    pub reviewer_id: Option<Uuid>,
    /// Keep or revoke, once decided.
    pub decision: Option<ReviewDecision>,
    /// Who decided (a principal id; `None` with a decision = the default action).
    pub decided_by: Option<Uuid>,
    /// When it was decided.
    pub decided_at: Option<DateTimeUtc>,
    /// Reviewer's note.
    pub note: Option<String>,
    /// When the decision took effect (revocation done).
    pub applied_at: Option<DateTimeUtc>,
    /// When the row was created.
    pub created_at: DateTimeUtc,
}

/// Foreign keys of `access_review_item`.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// `review_id` → `access_review.id`, ON DELETE CASCADE.
    #[sea_orm(
        belongs_to = "super::access_review::Entity",
        from = "Column::ReviewId",
        to = "super::access_review::Column::Id",
        on_delete = "Cascade",
        fk_name = "fk_access_review_item_review_id"
    )]
    AccessReview,
}

impl Related<super::access_review::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::AccessReview.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
