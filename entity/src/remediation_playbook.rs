//! `remediation_playbook`: trigger → diagnose → actions → notify, as data.

use sea_orm::entity::prelude::*;

/// One row of `remediation_playbook`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "remediation_playbook")]
pub struct Model {
    /// Application-generated UUID v7.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Unique name (`uq_remediation_playbook_name`), e.g. `leaked-key`.
    pub name: String,
    /// What the playbook does and when.
    #[sea_orm(column_type = "Text")]
    pub description: String,
    /// Disabled playbooks never start runs.
    pub enabled: bool,
    /// Runs record what they would do without doing it.
    pub dry_run: bool,
    /// Shipped with Portcullis.
    pub builtin: bool,
    /// JSON object: which security events, webhooks or schedules start a run.
    pub trigger: Json,
    /// JSON object: checks that decide whether (and how hard) to act.
    pub diagnose: Json,
    /// JSON array of action steps (`block_ip`, `revoke_key`, `rotate_secret`, ...).
    pub actions: Json,
    /// JSON object: who is told, on which SNS topic, at which severity.
    pub notify: Json,
    /// When the row was created.
    pub created_at: DateTimeUtc,
    /// When the row was last changed.
    pub updated_at: DateTimeUtc,
}

/// Foreign keys pointing at `remediation_playbook`.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// Runs of this playbook (`remediation_run.playbook_id`).
    #[sea_orm(has_many = "super::remediation_run::Entity")]
    RemediationRun,
}

impl Related<super::remediation_run::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::RemediationRun.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
