//! `policy_change`: the change feed proxies poll to evict exactly what changed.
//!
//! Every API write that affects enforcement appends one row in the same transaction. `id` is
//! assigned by the database and only grows, so a proxy remembers the last id it applied and
//! asks for `id > last`.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// What happened to the entity named by a [`Model`].
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(32))")]
#[serde(rename_all = "snake_case")]
pub enum PolicyChangeOp {
    /// Created or modified: reload it.
    #[sea_orm(string_value = "upsert")]
    Upsert,
    /// Removed: evict it.
    #[sea_orm(string_value = "delete")]
    Delete,
}

/// One row of `policy_change`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "policy_change")]
pub struct Model {
    /// Database-assigned, strictly increasing position in the feed. Leave it unset on insert.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// Table or cache kind that changed, e.g. `api_key`, `route`.
    pub entity_kind: String,
    /// Id of the changed entity, as text.
    pub entity_id: String,
    /// Upsert or delete.
    pub op: PolicyChangeOp,
    /// When the change was recorded.
    pub created_at: DateTimeUtc,
}

/// `policy_change` has no foreign keys: it names entities that may be gone.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
