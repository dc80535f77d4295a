//! GraphQL shapes of playbooks, runs and steps.

use async_graphql::{ComplexObject, Context, Enum, InputObject, Json, SimpleObject};
use chrono::{DateTime, Utc};
use entity::{
    remediation_playbook,
    remediation_run::{self, RemediationRunStatus},
    remediation_step::{self, RemediationStepStatus},
};
use serde_json::Value;
use uuid::Uuid;

use crate::{
    graphql::{error::ApiResult, services},
    service::playbooks,
};

/// A remediation playbook: trigger → diagnose → actions → notify.
#[derive(SimpleObject, Clone, Debug)]
#[graphql(name = "Playbook")]
pub struct PlaybookOut {
    /// Playbook id.
    pub id: Uuid,
    /// Unique name.
    pub name: String,
    /// What it is for.
    pub description: String,
    /// Disabled playbooks never start runs.
    pub enabled: bool,
    /// Record what would be done, do nothing.
    pub dry_run: bool,
    /// Shipped with Portcullis: may be edited or disabled, not deleted.
    pub builtin: bool,
    /// What starts a run, e.g. `{"kind": "security_event", "event_kinds": ["key_leaked"]}`.
    pub trigger: Json<Value>,
    /// Checks that suppress false positives.
    pub diagnose: Json<Value>,
    /// The actions, in order, e.g. `[{"action": "block_ip", "duration_secs": 900}]`.
    pub actions: Json<Value>,
    /// Who is told.
    pub notify: Json<Value>,
    /// Created at.
    pub created_at: DateTime<Utc>,
    /// Last changed at.
    pub updated_at: DateTime<Utc>,
}

impl From<remediation_playbook::Model> for PlaybookOut {
    fn from(p: remediation_playbook::Model) -> Self {
        Self {
            id: p.id,
            name: p.name,
            description: p.description,
            enabled: p.enabled,
            dry_run: p.dry_run,
            builtin: p.builtin,
            trigger: Json(p.trigger),
            diagnose: Json(p.diagnose),
            actions: Json(p.actions),
            notify: Json(p.notify),
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

/// Input of `createPlaybook`.
#[derive(InputObject, Clone, Debug)]
pub struct CreatePlaybookInput {
    /// Unique name.
    pub name: String,
    /// What it is for.
    pub description: Option<String>,
    /// Starts runs (default true).
    pub enabled: Option<bool>,
    /// Plan only (default false).
    pub dry_run: Option<bool>,
    /// `{"kind": "security_event", "event_kinds": [...], "min_severity": "high"}`,
    /// `{"kind": "schedule", "every_secs": 3600}` or `{"kind": "manual"}`.
    pub trigger: Json<Value>,
    /// `{"suppress_if_key_revoked", "suppress_if_ip_allowed", "suppress_if_incident_grant"}`
    /// (default: all true).
    pub diagnose: Option<Json<Value>>,
    /// Array of `{"action": "block_ip" | "suspend_key" | "revoke_key" | "rotate_key" |
    /// "revoke_bindings" | "revoke_grants" | "tighten_rate_limit", ...}`.
    pub actions: Json<Value>,
    /// `{"enabled", "event_type", "severity", "topic_arn"}` (default: notify).
    pub notify: Option<Json<Value>>,
}

impl From<CreatePlaybookInput> for playbooks::NewPlaybook {
    fn from(input: CreatePlaybookInput) -> Self {
        Self {
            name: input.name,
            description: input.description,
            enabled: input.enabled,
            dry_run: input.dry_run,
            trigger: input.trigger.0,
            diagnose: input.diagnose.map(|j| j.0),
            actions: input.actions.0,
            notify: input.notify.map(|j| j.0),
        }
    }
}

/// Input of `updatePlaybook`; absent fields stay unchanged.
#[derive(InputObject, Clone, Debug, Default)]
pub struct UpdatePlaybookInput {
    /// New unique name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// Plan only.
    pub dry_run: Option<bool>,
    /// New trigger (as in `createPlaybook`).
    pub trigger: Option<Json<Value>>,
    /// New diagnosis.
    pub diagnose: Option<Json<Value>>,
    /// New actions.
    pub actions: Option<Json<Value>>,
    /// New notification.
    pub notify: Option<Json<Value>>,
}

impl From<UpdatePlaybookInput> for playbooks::PlaybookPatch {
    fn from(input: UpdatePlaybookInput) -> Self {
        Self {
            name: input.name,
            description: input.description,
            enabled: input.enabled,
            dry_run: input.dry_run,
            trigger: input.trigger.map(|j| j.0),
            diagnose: input.diagnose.map(|j| j.0),
            actions: input.actions.map(|j| j.0),
            notify: input.notify.map(|j| j.0),
        }
    }
}

/// State of a run.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(name = "RemediationRunStatus")]
pub enum RunStatusOut {
    /// Waiting for a worker.
    Pending,
    /// A worker is executing it.
    Running,
    /// Every step succeeded.
    Succeeded,
    /// A step failed for good; `retryRemediationRun` resumes it.
    Failed,
    /// Planned only (dry-run playbook).
    DryRun,
    /// Diagnosis suppressed it.
    Suppressed,
}

impl From<RemediationRunStatus> for RunStatusOut {
    fn from(s: RemediationRunStatus) -> Self {
        match s {
            RemediationRunStatus::Pending => Self::Pending,
            RemediationRunStatus::Running => Self::Running,
            RemediationRunStatus::Succeeded => Self::Succeeded,
            RemediationRunStatus::Failed => Self::Failed,
            RemediationRunStatus::DryRun => Self::DryRun,
            RemediationRunStatus::Suppressed => Self::Suppressed,
        }
    }
}

impl From<RunStatusOut> for RemediationRunStatus {
    fn from(s: RunStatusOut) -> Self {
        match s {
            RunStatusOut::Pending => Self::Pending,
            RunStatusOut::Running => Self::Running,
            RunStatusOut::Succeeded => Self::Succeeded,
            RunStatusOut::Failed => Self::Failed,
            RunStatusOut::DryRun => Self::DryRun,
            RunStatusOut::Suppressed => Self::Suppressed,
        }
    }
}

/// State of a step.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(name = "RemediationStepStatus")]
pub enum StepStatusOut {
    /// Not done yet.
    Pending,
    /// Being executed.
    Running,
    /// Done.
    Succeeded,
    /// Failed after its attempts.
    Failed,
    /// Not executed (dry run or suppressed).
    Skipped,
}

impl From<RemediationStepStatus> for StepStatusOut {
    fn from(s: RemediationStepStatus) -> Self {
        match s {
            RemediationStepStatus::Pending => Self::Pending,
            RemediationStepStatus::Running => Self::Running,
            RemediationStepStatus::Succeeded => Self::Succeeded,
            RemediationStepStatus::Failed => Self::Failed,
            RemediationStepStatus::Skipped => Self::Skipped,
        }
    }
}

/// A remediation run: a durable state machine of ordered steps.
#[derive(SimpleObject, Clone, Debug)]
#[graphql(name = "RemediationRun", complex)]
pub struct RemediationRunOut {
    /// Run id.
    pub id: Uuid,
    /// The playbook that started it, if any.
    pub playbook_id: Option<Uuid>,
    /// `security_event`, `graphql`, `schedule`, `lambda`, ...
    pub trigger_kind: String,
    /// Id of what triggered it.
    pub trigger_ref: Option<String>,
    /// State.
    pub status: RunStatusOut,
    /// Planned only.
    pub dry_run: bool,
    /// What the run is about (subject, evidence, suppression reason).
    pub context: Json<Value>,
    /// Why it failed, when it did.
    pub error: Option<String>,
    /// Created at.
    pub created_at: DateTime<Utc>,
    /// Last changed at.
    pub updated_at: DateTime<Utc>,
    /// Finished at.
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<remediation_run::Model> for RemediationRunOut {
    fn from(r: remediation_run::Model) -> Self {
        Self {
            id: r.id,
            playbook_id: r.playbook_id,
            trigger_kind: r.trigger_kind,
            trigger_ref: r.trigger_ref,
            status: r.status.into(),
            dry_run: r.dry_run,
            context: Json(r.context),
            error: r.error,
            created_at: r.created_at,
            updated_at: r.updated_at,
            finished_at: r.finished_at,
        }
    }
}

#[ComplexObject]
impl RemediationRunOut {
    /// The steps, in order.
    async fn steps(&self, ctx: &Context<'_>) -> ApiResult<Vec<RemediationStepOut>> {
        Ok(playbooks::steps(&services(ctx)?.db, self.id)
            .await?
            .into_iter()
            .map(Into::into)
            .collect())
    }
}

/// One idempotent step of a run.
#[derive(SimpleObject, Clone, Debug)]
#[graphql(name = "RemediationStep")]
pub struct RemediationStepOut {
    /// Position in the run, from 0.
    pub seq: i32,
    /// Action name, e.g. `revoke_key`, `rotate_create`, `notify`.
    pub action: String,
    /// The action's parameters.
    pub params: Json<Value>,
    /// State.
    pub status: StepStatusOut,
    /// Attempts so far.
    pub attempts: i32,
    /// Error of the last failed attempt (for AWS: operation, code and message).
    pub last_error: Option<String>,
    /// What the step produced.
    pub output: Option<Json<Value>>,
    /// Finished at.
    pub finished_at: Option<DateTime<Utc>>,
}

impl From<remediation_step::Model> for RemediationStepOut {
    fn from(s: remediation_step::Model) -> Self {
        Self {
            seq: s.seq,
            action: s.action,
            params: Json(s.params),
            status: s.status.into(),
            attempts: s.attempts,
            last_error: s.last_error,
            output: s.output.map(Json),
            finished_at: s.finished_at,
        }
    }
}

/// Filter of `remediationRuns`.
#[derive(InputObject, Clone, Debug, Default)]
pub struct RemediationRunFilter {
    /// Only runs in this state.
    pub status: Option<RunStatusOut>,
    /// Only runs of this playbook.
    pub playbook_id: Option<Uuid>,
}

impl From<RemediationRunFilter> for playbooks::RunFilter {
    fn from(f: RemediationRunFilter) -> Self {
        Self {
            status: f.status.map(Into::into),
            playbook_id: f.playbook_id,
        }
    }
}
