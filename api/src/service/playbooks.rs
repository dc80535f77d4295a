//! Remediation playbooks (CRUD), runs (read) and the manual remediation requests, for the
//! GraphQL edge. Playbook JSON is validated by parsing it into the engine's typed structs.

use chrono::Utc;
use entity::{
    remediation_playbook,
    remediation_run::{self, RemediationRunStatus},
    remediation_step,
};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, Set,
    TransactionTrait,
};
use serde_json::Value;
use uuid::Uuid;

use super::{
    ServiceContext,
    page::{self, Direction, Page, PageRequest},
    validate,
};
use crate::{
    graphql::error::{ApiError, ApiResult, DbResultExt},
    remediation::{
        self, RemediationError,
        playbook::{self, ActionTemplate, Diagnose, NotifySpec, Trigger},
    },
};

/// What [`create`] needs.
#[derive(Debug, Clone)]
pub struct NewPlaybook {
    /// Unique name.
    pub name: String,
    /// What it is for.
    pub description: Option<String>,
    /// Starts runs (default true).
    pub enabled: Option<bool>,
    /// Plan only (default false).
    pub dry_run: Option<bool>,
    /// [`Trigger`] as JSON.
    pub trigger: Value,
    /// [`Diagnose`] as JSON (default: every check on).
    pub diagnose: Option<Value>,
    /// `[ActionTemplate]` as JSON.
    pub actions: Value,
    /// [`NotifySpec`] as JSON (default: notify).
    pub notify: Option<Value>,
}

/// What [`update`] changes; `None` = unchanged.
#[derive(Debug, Clone, Default)]
pub struct PlaybookPatch {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// Enable or disable.
    pub enabled: Option<bool>,
    /// Plan only.
    pub dry_run: Option<bool>,
    /// New trigger.
    pub trigger: Option<Value>,
    /// New diagnosis.
    pub diagnose: Option<Value>,
    /// New actions.
    pub actions: Option<Value>,
    /// New notification.
    pub notify: Option<Value>,
}

/// Filter of [`list_runs`].
#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    /// Only runs in this status.
    pub status: Option<RemediationRunStatus>,
    /// Only runs of this playbook.
    pub playbook_id: Option<Uuid>,
}

/// Parses `value` as `T`, or a `BAD_USER_INPUT` naming `field`.
fn parse<T: serde::de::DeserializeOwned>(field: &str, value: Value) -> ApiResult<T> {
    serde_json::from_value(value).map_err(|e| ApiError::invalid(field, e.to_string()))
}

/// Parses `value` as `T`, or a `BAD_USER_INPUT` naming `field`; returns the canonical JSON.
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(
    field: &str,
    value: Value,
) -> ApiResult<Value> {
    canonical(&parse::<T>(field, value)?)
}

fn canonical<T: serde::Serialize>(value: &T) -> ApiResult<Value> {
    serde_json::to_value(value).map_err(ApiError::internal)
}

/// The whole-playbook checks ([`playbook::check`]), reported against the input field at fault.
fn check(trigger: &Trigger, actions: &[ActionTemplate]) -> ApiResult<()> {
    playbook::check(trigger, actions)
        .map_err(|e| ApiError::invalid(format!("input.{}", e.column), e.message))
}

/// Playbooks, oldest first.
pub async fn list(
    db: &DatabaseConnection,
    page: &PageRequest<Uuid>,
) -> ApiResult<Page<remediation_playbook::Model>> {
    Ok(page::fetch(
        db,
        remediation_playbook::Entity::find(),
        remediation_playbook::Column::Id,
        Direction::Ascending,
        page,
    )
    .await?)
}

/// Creates a playbook after validating its JSON.
#[tracing::instrument(skip_all, fields(name = %input.name))]
pub async fn create(
    db: &DatabaseConnection,
    input: NewPlaybook,
) -> ApiResult<remediation_playbook::Model> {
    let name = validate::text("input.name", &input.name)?;
    let description = validate::optional_text("input.description", input.description.as_deref())?
        .unwrap_or_default();
    let trigger = parse::<Trigger>("input.trigger", input.trigger)?;
    let actions = parse::<Vec<ActionTemplate>>("input.actions", input.actions)?;
    check(&trigger, &actions)?;
    let (trigger, actions) = (canonical(&trigger)?, canonical(&actions)?);
    let diagnose = typed::<Diagnose>(
        "input.diagnose",
        input
            .diagnose
            .unwrap_or_else(|| Value::Object(Default::default())),
    )?;
    let notify = typed::<NotifySpec>(
        "input.notify",
        input
            .notify
            .unwrap_or_else(|| Value::Object(Default::default())),
    )?;
    let now = Utc::now();
    remediation_playbook::ActiveModel {
        id: Set(Uuid::now_v7()),
        name: Set(name.clone()),
        description: Set(description),
        enabled: Set(input.enabled.unwrap_or(true)),
        dry_run: Set(input.dry_run.unwrap_or(false)),
        builtin: Set(false),
        trigger: Set(trigger),
        diagnose: Set(diagnose),
        actions: Set(actions),
        notify: Set(notify),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(db)
    .await
    .on_conflict(|| format!("a playbook named {name:?} already exists"))
}

/// Updates playbook `id` (builtins included).
#[tracing::instrument(skip_all, fields(playbook_id = %id))]
pub async fn update(
    db: &DatabaseConnection,
    id: Uuid,
    patch: PlaybookPatch,
) -> ApiResult<remediation_playbook::Model> {
    let txn = db.begin().await?;
    let row = remediation_playbook::Entity::find_by_id(id)
        .one(&txn)
        .await?
        .ok_or_else(|| ApiError::not_found("playbook", id))?;
    if patch.trigger.is_some() || patch.actions.is_some() {
        // Check the playbook as it will be, not just the part that changes.
        let trigger = parse::<Trigger>(
            "input.trigger",
            patch.trigger.clone().unwrap_or_else(|| row.trigger.clone()),
        )?;
        let actions = parse::<Vec<ActionTemplate>>(
            "input.actions",
            patch.actions.clone().unwrap_or_else(|| row.actions.clone()),
        )?;
        check(&trigger, &actions)?;
    }
    let mut active: remediation_playbook::ActiveModel = row.into();
    if let Some(name) = &patch.name {
        active.name = Set(validate::text("input.name", name)?);
    }
    if let Some(description) = &patch.description {
        active.description = Set(
            validate::optional_text("input.description", Some(description))?.unwrap_or_default(),
        );
    }
    if let Some(enabled) = patch.enabled {
        active.enabled = Set(enabled);
    }
    if let Some(dry_run) = patch.dry_run {
        active.dry_run = Set(dry_run);
    }
    if let Some(trigger) = patch.trigger {
        active.trigger = Set(typed::<Trigger>("input.trigger", trigger)?);
    }
    if let Some(diagnose) = patch.diagnose {
        active.diagnose = Set(typed::<Diagnose>("input.diagnose", diagnose)?);
    }
    if let Some(actions) = patch.actions {
        active.actions = Set(typed::<Vec<ActionTemplate>>("input.actions", actions)?);
    }
    if let Some(notify) = patch.notify {
        active.notify = Set(typed::<NotifySpec>("input.notify", notify)?);
    }
    active.updated_at = Set(Utc::now());
    let name = patch.name.unwrap_or_default();
    let row = active
        .update(&txn)
        .await
        .on_conflict(|| format!("a playbook named {name:?} already exists"))?;
    txn.commit().await?;
    Ok(row)
}

/// Deletes playbook `id`; builtin playbooks can only be disabled.
#[tracing::instrument(skip_all, fields(playbook_id = %id))]
pub async fn delete(db: &DatabaseConnection, id: Uuid) -> ApiResult<remediation_playbook::Model> {
    let txn = db.begin().await?;
    let row = remediation_playbook::Entity::find_by_id(id)
        .one(&txn)
        .await?
        .ok_or_else(|| ApiError::not_found("playbook", id))?;
    if row.builtin {
        return Err(ApiError::Conflict(format!(
            "playbook {:?} is builtin: disable it instead of deleting it",
            row.name
        )));
    }
    remediation_playbook::Entity::delete_by_id(id)
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(row)
}

/// Runs matching `filter`, newest first.
pub async fn list_runs(
    db: &DatabaseConnection,
    filter: &RunFilter,
    page: &PageRequest<Uuid>,
) -> ApiResult<Page<remediation_run::Model>> {
    let mut select = remediation_run::Entity::find();
    if let Some(status) = filter.status {
        select = select.filter(remediation_run::Column::Status.eq(status));
    }
    if let Some(playbook_id) = filter.playbook_id {
        select = select.filter(remediation_run::Column::PlaybookId.eq(playbook_id));
    }
    Ok(page::fetch(
        db,
        select,
        remediation_run::Column::Id,
        Direction::Descending,
        page,
    )
    .await?)
}

/// Run `id`, if it exists.
pub async fn get_run(
    db: &DatabaseConnection,
    id: Uuid,
) -> ApiResult<Option<remediation_run::Model>> {
    Ok(remediation_run::Entity::find_by_id(id).one(db).await?)
}

/// The steps of run `run_id`, in order.
pub async fn steps(
    db: &DatabaseConnection,
    run_id: Uuid,
) -> ApiResult<Vec<remediation_step::Model>> {
    Ok(remediation_step::Entity::find()
        .filter(remediation_step::Column::RunId.eq(run_id))
        .order_by_asc(remediation_step::Column::Seq)
        .all(db)
        .await?)
}

impl From<RemediationError> for ApiError {
    fn from(error: RemediationError) -> Self {
        match error {
            RemediationError::NotFound(what, id) => Self::NotFound { what, id },
            RemediationError::Conflict(message) => Self::Conflict(message),
            RemediationError::Database(error) => Self::from(error),
        }
    }
}

/// `reportLeakedKey`: one new run per report.
pub async fn report_leaked_key(
    services: &ServiceContext,
    key_id: Uuid,
) -> ApiResult<remediation_run::Model> {
    let request_id = Uuid::now_v7().to_string();
    Ok(remediation::report_leaked_key(services.engine()?, key_id, &request_id).await?)
}

/// `rotateSecret`: one new rotation run per request.
pub async fn rotate_secret(
    services: &ServiceContext,
    secret_id: &str,
) -> ApiResult<remediation_run::Model> {
    let request_id = Uuid::now_v7().to_string();
    Ok(remediation::rotate_secret(services.engine()?, secret_id, &request_id).await?)
}

/// `retryRemediationRun`.
pub async fn retry_run(
    services: &ServiceContext,
    run_id: Uuid,
) -> ApiResult<remediation_run::Model> {
    Ok(remediation::retry_run(services.engine()?, run_id).await?)
}
