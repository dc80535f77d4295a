//! `access_review`: a campaign asking reviewers to confirm or revoke access over a scope.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// Lifecycle of a [`Model`].
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(32))")]
#[serde(rename_all = "snake_case")]
pub enum AccessReviewStatus {
    /// Being prepared; items may still change.
    #[sea_orm(string_value = "draft")]
    Draft,
    /// Reviewers are deciding.
    #[sea_orm(string_value = "open")]
    Open,
    /// Decided (or defaulted at the deadline) and applied.
    #[sea_orm(string_value = "closed")]
    Closed,
}

/// A reviewer's verdict on an item, also the campaign's default at the deadline.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(32))")]
#[serde(rename_all = "snake_case")]
pub enum ReviewDecision {
    /// Access stays.
    #[sea_orm(string_value = "keep")]
    Keep,
    /// Access is revoked when the decision is applied.
    #[sea_orm(string_value = "revoke")]
    Revoke,
}

/// One row of `access_review`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "access_review")]
pub struct Model {
    /// Application-generated UUID v7.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Campaign name.
    pub name: String,
    /// JSON object describing what is reviewed (principals, roles, routes, ...).
    pub scope: Json,
    /// Draft, open or closed.
    pub status: AccessReviewStatus,
    /// Undecided items get `default_action` at this instant.
    pub deadline: DateTimeUtc,
    /// Decision applied to items still undecided at the deadline.
    pub default_action: ReviewDecision,
    /// Items unused for this many days are flagged dormant.
    pub dormant_days: i32,
    /// Principal who opened the campaign (no foreign key).
    pub created_by: Option<Uuid>,
    /// When the row was created.
    pub created_at: DateTimeUtc,
    /// When the campaign was closed.
    pub closed_at: Option<DateTimeUtc>,
}

/// Foreign keys pointing at `access_review`.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// Items of the campaign (`access_review_item.review_id`).
    #[sea_orm(has_many = "super::access_review_item::Entity")]
    AccessReviewItem,
    /// Break-glass grants whose follow-up review this is (`incident_grant.follow_up_review_id`).
    #[sea_orm(has_many = "super::incident_grant::Entity")]
    IncidentGrant,
}

impl Related<super::access_review_item::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::AccessReviewItem.def()
    }
}

impl Related<super::incident_grant::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::IncidentGrant.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
