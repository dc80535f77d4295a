//! `usage_counter`: how often a key/principal exercised a permission or route; feeds the
//! "dormant" and "over-privileged" flags of access reviews.
//!
//! Ids carry no foreign keys: counters are evidence and outlive what they count.

use sea_orm::entity::prelude::*;

/// One row of `usage_counter`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "usage_counter")]
pub struct Model {
    /// Application-generated UUID v7.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Unique key of what is counted, e.g. `key:<id>|perm:<id>` (`uq_usage_counter_scope_key`).
    pub scope_key: String,
    /// Principal that made the requests.
    pub principal_id: Uuid,
    /// API key used, if any.
    pub api_key_id: Option<Uuid>,
    /// Permission exercised, if any.
    pub permission_id: Option<Uuid>,
    /// Route used, if any.
    pub route_id: Option<Uuid>,
    /// Number of requests counted.
    pub request_count: i64,
    /// First counted request.
    pub first_used_at: DateTimeUtc,
    /// Latest counted request.
    pub last_used_at: DateTimeUtc,
}

/// `usage_counter` has no foreign keys (see the module docs).
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
