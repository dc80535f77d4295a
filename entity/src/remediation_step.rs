//! `remediation_step`: one idempotent action of a run, retried with backoff.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// Lifecycle of a [`Model`].
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(32))")]
#[serde(rename_all = "snake_case")]
pub enum RemediationStepStatus {
    /// Not started.
    #[sea_orm(string_value = "pending")]
    Pending,
    /// Started (or waiting for a retry at `next_attempt_at`).
    #[sea_orm(string_value = "running")]
    Running,
    /// Done.
    #[sea_orm(string_value = "succeeded")]
    Succeeded,
    /// Failed for good; see `last_error`.
    #[sea_orm(string_value = "failed")]
    Failed,
    /// Not needed (already in the desired state, or dry run).
    #[sea_orm(string_value = "skipped")]
    Skipped,
}

/// One row of `remediation_step`; unique per (`run_id`, `seq`).
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "remediation_step")]
pub struct Model {
    /// Application-generated UUID v7.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The run.
    pub run_id: Uuid,
    /// Position in the run, from 0.
    pub seq: i32,
    /// Action name, e.g. `block_ip`, `revoke_key`, `rotate_secret:create`.
    pub action: String,
    /// JSON object: the action's parameters.
    pub params: Json,
    /// Pending to a final state.
    pub status: RemediationStepStatus,
    /// How many times it was tried.
    pub attempts: i32,
    /// Error of the latest failed attempt.
    #[sea_orm(column_type = "Text", nullable)]
    pub last_error: Option<String>,
    /// JSON result of the action (ids created, versions staged, ...).
    pub output: Option<Json>,
    /// When to retry.
    pub next_attempt_at: Option<DateTimeUtc>,
    /// When the first attempt started.
    pub started_at: Option<DateTimeUtc>,
    /// When it reached a final state.
    pub finished_at: Option<DateTimeUtc>,
    /// When the row was created.
    pub created_at: DateTimeUtc,
}

/// Foreign keys of `remediation_step`.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// `run_id` → `remediation_run.id`, ON DELETE CASCADE.
    #[sea_orm(
        belongs_to = "super::remediation_run::Entity",
        from = "Column::RunId",
        to = "super::remediation_run::Column::Id",
        on_delete = "Cascade",
        fk_name = "fk_remediation_step_run_id"
    )]
    Run,
}

impl Related<super::remediation_run::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Run.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
