//! `ip_rule`: allow or deny a CIDR, globally or on one route, optionally until an expiry.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// What an [`Model`] does to matching clients.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(32))")]
#[serde(rename_all = "snake_case")]
pub enum IpRuleAction {
    /// Let matching clients through this check.
    #[sea_orm(string_value = "allow")]
    Allow,
    /// Reject matching clients.
    #[sea_orm(string_value = "deny")]
    Deny,
}

/// Who created an [`Model`].
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(32))")]
#[serde(rename_all = "snake_case")]
pub enum IpRuleSource {
    /// An operator, through the management API.
    #[sea_orm(string_value = "manual")]
    Manual,
    /// A remediation run ("block IP for a period").
    #[sea_orm(string_value = "remediation")]
    Remediation,
}

/// One row of `ip_rule`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "ip_rule")]
pub struct Model {
    /// Application-generated UUID v7.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Route the rule applies to; `None` = every route.
    pub route_id: Option<Uuid>,
    /// IPv4 or IPv6 network in CIDR notation.
    pub cidr: String,
    /// Allow or deny.
    pub action: IpRuleAction,
    /// The rule lapses at this instant; `None` = permanent.
    pub expires_at: Option<DateTimeUtc>,
    /// Why the rule exists.
    pub reason: String,
    /// Manual or remediation.
    pub source: IpRuleSource,
    /// Who created it (a principal id, or `remediation:<run id>`).
    pub created_by: Option<String>,
    /// When the row was created.
    pub created_at: DateTimeUtc,
}

/// Foreign keys of `ip_rule`.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// `route_id` → `route.id`, ON DELETE CASCADE.
    #[sea_orm(
        belongs_to = "super::route::Entity",
        from = "Column::RouteId",
        to = "super::route::Column::Id",
        on_delete = "Cascade",
        fk_name = "fk_ip_rule_route_id"
    )]
    Route,
}

impl Related<super::route::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Route.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
