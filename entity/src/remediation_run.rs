//! `remediation_run`: one execution of a playbook (or a manual action), with its steps in
//! `remediation_step`. `idempotency_key` makes starting the same run twice a no-op.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// Lifecycle of a [`Model`].
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(32))")]
#[serde(rename_all = "snake_case")]
pub enum RemediationRunStatus {
    /// Created, not yet picked up.
    #[sea_orm(string_value = "pending")]
    Pending,
    /// Steps are executing (or waiting for a retry at `next_attempt_at`).
    #[sea_orm(string_value = "running")]
    Running,
    /// Every step succeeded or was skipped.
    #[sea_orm(string_value = "succeeded")]
    Succeeded,
    /// A step failed for good; see `error`.
    #[sea_orm(string_value = "failed")]
    Failed,
    /// Finished in dry-run mode: steps were planned, not executed.
    #[sea_orm(string_value = "dry_run")]
    DryRun,
    /// Not executed (duplicate, playbook disabled, diagnosis said no).
    #[sea_orm(string_value = "suppressed")]
    Suppressed,
}

/// One row of `remediation_run`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "remediation_run")]
pub struct Model {
    /// Application-generated UUID v7; also the Secrets Manager `ClientRequestToken` of rotations.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Playbook that started the run; `None` for manual runs or a deleted playbook.
    pub playbook_id: Option<Uuid>,
    /// What triggered it: `security_event`, `sns`, `graphql`, `schedule`.
    pub trigger_kind: String,
    /// Id of the trigger (security event id, SNS message id, ...).
    pub trigger_ref: Option<String>,
    /// Unique key (`uq_remediation_run_idempotency_key`) so a trigger starts at most one run.
    pub idempotency_key: String,
    /// Pending to a final state.
    pub status: RemediationRunStatus,
    /// Plan only, do nothing.
    pub dry_run: bool,
    /// JSON object: the trigger payload and diagnosis results the steps work from.
    pub context: Json,
    /// Final error, when failed.
    #[sea_orm(column_type = "Text", nullable)]
    pub error: Option<String>,
    /// How many times the run was picked up.
    pub attempts: i32,
    /// When a worker should pick it up again.
    pub next_attempt_at: Option<DateTimeUtc>,
    /// When the row was created.
    pub created_at: DateTimeUtc,
    /// When the row was last changed.
    pub updated_at: DateTimeUtc,
    /// When it reached a final state.
    pub finished_at: Option<DateTimeUtc>,
}

/// Foreign keys of `remediation_run`, and those pointing at it.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// `playbook_id` → `remediation_playbook.id`, ON DELETE SET NULL.
    #[sea_orm(
        belongs_to = "super::remediation_playbook::Entity",
        from = "Column::PlaybookId",
        to = "super::remediation_playbook::Column::Id",
        on_delete = "SetNull",
        fk_name = "fk_remediation_run_playbook_id"
    )]
    Playbook,
    /// Steps of the run (`remediation_step.run_id`).
    #[sea_orm(has_many = "super::remediation_step::Entity")]
    RemediationStep,
}

impl Related<super::remediation_playbook::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Playbook.def()
    }
}

impl Related<super::remediation_step::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::RemediationStep.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
