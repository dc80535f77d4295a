//! `security_event`: something a detector noticed (failed-auth burst, unknown IP for a key,
//! traffic spike, use of a revoked key); the remediation engine reacts to new ones.
//!
//! Principal, key and route ids carry no foreign keys: events outlive what they describe.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// How bad a [`Model`] is.
#[derive(
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    EnumIter,
    DeriveActiveEnum,
    Serialize,
    Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(32))")]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Informational.
    #[sea_orm(string_value = "low")]
    Low,
    /// Worth a look.
    #[sea_orm(string_value = "medium")]
    Medium,
    /// Needs action soon.
    #[sea_orm(string_value = "high")]
    High,
    /// Needs action now.
    #[sea_orm(string_value = "critical")]
    Critical,
}

/// Where a [`Model`] is in its handling.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(32))")]
#[serde(rename_all = "snake_case")]
pub enum SecurityEventStatus {
    /// Not yet looked at by the remediation engine.
    #[sea_orm(string_value = "new")]
    New,
    /// A remediation run was started for it (`handled_by_run_id`).
    #[sea_orm(string_value = "handled")]
    Handled,
    /// Deliberately ignored (duplicate fingerprint, playbook disabled, ...).
    #[sea_orm(string_value = "suppressed")]
    Suppressed,
}

/// One row of `security_event`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "security_event")]
pub struct Model {
    /// Application-generated UUID v7.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Detector kind, e.g. `failed_auth_burst`, `leaked_key`.
    pub kind: String,
    /// Low to critical.
    pub severity: Severity,
    /// When the detected behaviour happened.
    pub occurred_at: DateTimeUtc,
    /// Principal involved, if known (no foreign key).
    pub principal_id: Option<Uuid>,
    /// API key involved, if known (no foreign key).
    pub api_key_id: Option<Uuid>,
    /// Client IP involved, if known.
    pub client_ip: Option<String>,
    /// Route involved, if known (no foreign key).
    pub route_id: Option<Uuid>,
    /// Deduplication key: events with the same fingerprint describe the same incident.
    pub fingerprint: String,
    /// JSON object with detector-specific evidence.
    pub detail: Json,
    /// New, handled or suppressed.
    pub status: SecurityEventStatus,
    /// The `remediation_run` that handled it (no foreign key: runs may be pruned first).
    pub handled_by_run_id: Option<Uuid>,
    /// When the row was created.
    pub created_at: DateTimeUtc,
}

/// `security_event` has no foreign keys (see the module docs).
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
