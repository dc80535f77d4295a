//! Creating runs: a run and all its steps in one transaction, at most one run per
//! `idempotency_key`; and the manual entry points (report a leaked key, rotate a secret,
//! retry a failed run).

use chrono::Utc;
use entity::{
    api_key,
    managed_secret::{self, ManagedSecretKind},
    remediation_run::{self, RemediationRunStatus},
    remediation_step::{self, RemediationStepStatus},
    security_event::Severity,
};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, Set,
    TransactionTrait,
};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{
    Engine,
    actions::StepAction,
    playbook::{ActionTemplate, NotifySpec, Playbook},
};
use crate::outbox::severity_str;

/// Why a manual remediation request was refused.
#[derive(Debug, thiserror::Error)]
pub enum RemediationError {
    /// The thing named does not exist.
    #[error("{0} {1} not found")]
    NotFound(&'static str, String),
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// The database failed.
    #[error("database error")]
    Database(#[from] DbErr),
}

/// What triggered a run, as far as planning is concerned.
#[derive(Debug, Clone, Default)]
pub struct Subject {
    /// Trigger kind (`security_event`, `graphql`, `schedule`, `lambda`).
    pub trigger_kind: String,
    /// Trigger id (security event id, request id, ...).
    pub trigger_ref: Option<String>,
    /// Event kind, e.g. `failed_auth_burst` (also the default notification `event_type`).
    pub event_kind: String,
    /// Severity.
    pub severity: Option<Severity>,
    /// Principal involved.
    pub principal_id: Option<Uuid>,
    /// Key involved.
    pub api_key_id: Option<Uuid>,
    /// Client IP involved.
    pub client_ip: Option<String>,
    /// Route involved.
    pub route_id: Option<Uuid>,
    /// Evidence.
    pub detail: Value,
}

/// A run about to be created.
#[derive(Debug, Clone)]
pub struct PlannedRun {
    /// Playbook, if any.
    pub playbook_id: Option<Uuid>,
    /// Unique key: creating the same run twice is a no-op.
    pub idempotency_key: String,
    /// Plan only.
    pub dry_run: bool,
    /// Why diagnosis suppressed it, if it did.
    pub suppressed: Option<String>,
    /// What triggered it.
    pub subject: Subject,
    /// Name shown in notifications.
    pub name: String,
    /// The steps, in order.
    pub steps: Vec<StepAction>,
}

/// Resolves `playbook`'s action templates (and its notification) against `subject`.
/// Templates that need something the subject lacks (no IP for `block_ip`, ...) are left out
/// and listed under `unresolved` in the returned context.
pub async fn plan_steps<C: ConnectionTrait>(
    db: &C,
    engine: &Engine,
    playbook: &Playbook,
    subject: &Subject,
) -> Result<(Vec<StepAction>, Vec<String>), DbErr> {
    let mut steps = Vec::new();
    let mut unresolved = Vec::new();
    let reason = format!(
        "remediation playbook {}: {}",
        playbook.name, subject.event_kind
    );
    for template in &playbook.actions {
        match template {
            ActionTemplate::BlockIp { duration_secs } => match subject
                .client_ip
                .as_deref()
                .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
            {
                Some(ip) => steps.push(StepAction::BlockIp {
                    cidr: proxy::detect::client_subnet(ip).to_string(),
                    duration_secs: *duration_secs,
                    reason: reason.clone(),
                }),
                None => unresolved.push("block_ip".to_owned()),
            },
            ActionTemplate::SuspendKey => match subject.api_key_id {
                Some(key_id) => steps.push(StepAction::SuspendKey {
                    key_id,
                    reason: reason.clone(),
                }),
                None => unresolved.push("suspend_key".to_owned()),
            },
            ActionTemplate::RevokeKey => match subject.api_key_id {
                Some(key_id) => steps.push(StepAction::RevokeKey {
                    key_id,
                    reason: reason.clone(),
                }),
                None => unresolved.push("revoke_key".to_owned()),
            },
            ActionTemplate::RotateKey => match subject.api_key_id {
                Some(key_id) => match secret_holding(db, key_id).await? {
                    Some(secret) => steps.extend(rotation_steps(&secret.secret_id, key_id)),
                    // Nothing to rotate into: revocation (if the playbook has it) suffices.
                    None => {
                        unresolved.push("rotate_key (no managed secret holds the key)".to_owned())
                    }
                },
                None => unresolved.push("rotate_key".to_owned()),
            },
            ActionTemplate::RevokeBindings { role_id } => match subject.principal_id {
                Some(principal_id) => steps.push(StepAction::RevokeBindings {
                    principal_id,
                    role_id: *role_id,
                }),
                None => unresolved.push("revoke_bindings".to_owned()),
            },
            ActionTemplate::RevokeGrants => match subject.principal_id {
                Some(principal_id) => steps.push(StepAction::RevokeGrants {
                    principal_id,
                    reason: reason.clone(),
                }),
                None => unresolved.push("revoke_grants".to_owned()),
            },
            ActionTemplate::ApplyOverdueReviews => {
                for review in super::reviews::overdue(db).await? {
                    steps.push(StepAction::ApplyReviewDefaults {
                        review_id: review.id,
                    });
                }
            }
            ActionTemplate::RotateUpstreamCredential { secret_id } => {
                match upstream_secret(db, secret_id.as_deref(), subject.route_id).await? {
                    Some(secret) => steps.extend(credential_rotation_steps(&secret.secret_id)),
                    None => unresolved.push(
                        "rotate_upstream_credential (no managed upstream credential)".to_owned(),
                    ),
                }
            }
            ActionTemplate::TightenRateLimit {
                factor,
                duration_secs,
            } => {
                if subject.principal_id.is_none() && subject.api_key_id.is_none() {
                    unresolved.push("tighten_rate_limit".to_owned());
                } else {
                    steps.push(StepAction::TightenRateLimit {
                        principal_id: subject.principal_id,
                        api_key_id: subject.api_key_id,
                        route_id: subject.route_id,
                        factor: *factor,
                        duration_secs: *duration_secs,
                        default_per_minute: engine.config().default_rate_limit_per_minute,
                        default_burst: engine.config().default_rate_limit_burst,
                    });
                }
            }
        }
    }
    if let Some(notify) = notify_step(engine, &playbook.name, &playbook.notify, subject, &steps) {
        steps.push(notify);
    }
    Ok((steps, unresolved))
}

/// The four rotation steps of `secret_id`, replacing key `old_key_id`.
pub fn rotation_steps(secret_id: &str, old_key_id: Uuid) -> Vec<StepAction> {
    rotation_after(
        StepAction::RotateCreate {
            secret_id: secret_id.to_owned(),
            old_key_id,
        },
        secret_id,
    )
}

/// The four rotation steps of upstream credential `secret_id`.
pub fn credential_rotation_steps(secret_id: &str) -> Vec<StepAction> {
    rotation_after(
        StepAction::RotateCreateCredential {
            secret_id: secret_id.to_owned(),
        },
        secret_id,
    )
}

/// `create` followed by the steps every rotation shares.
fn rotation_after(create: StepAction, secret_id: &str) -> Vec<StepAction> {
    vec![
        create,
        StepAction::RotateSet {
            secret_id: secret_id.to_owned(),
        },
        StepAction::RotateTest {
            secret_id: secret_id.to_owned(),
        },
        StepAction::RotateFinish {
            secret_id: secret_id.to_owned(),
        },
    ]
}

/// The managed upstream credential named `secret_id`, or else the one of route `route_id`.
async fn upstream_secret<C: ConnectionTrait>(
    db: &C,
    secret_id: Option<&str>,
    route_id: Option<Uuid>,
) -> Result<Option<managed_secret::Model>, DbErr> {
    let select = managed_secret::Entity::find()
        .filter(managed_secret::Column::Kind.eq(ManagedSecretKind::UpstreamCredential));
    match (secret_id, route_id) {
        (Some(secret_id), _) => {
            select
                .filter(managed_secret::Column::SecretId.eq(secret_id))
                .one(db)
                .await
        }
        (None, Some(route_id)) => {
            select
                .filter(managed_secret::Column::RouteId.eq(route_id))
                .one(db)
                .await
        }
        (None, None) => Ok(None),
    }
}

/// The notify step closing a run, or `None` when notifications are off or no topic is set.
pub fn notify_step(
    engine: &Engine,
    name: &str,
    spec: &NotifySpec,
    subject: &Subject,
    steps: &[StepAction],
) -> Option<StepAction> {
    if !spec.enabled {
        return None;
    }
    let Some(topic_arn) = spec
        .topic_arn
        .clone()
        .or_else(|| engine.topic_arn().map(str::to_owned))
    else {
        tracing::warn!(
            playbook = name,
            "no notification topic configured; not notifying"
        );
        return None;
    };
    let event_type = spec
        .event_type
        .clone()
        .unwrap_or_else(|| subject.event_kind.clone());
    let severity = spec
        .severity
        .or(subject.severity)
        .unwrap_or(Severity::Medium);
    let group = subject
        .principal_id
        .map(|p| format!("principal:{p}"))
        .or_else(|| subject.client_ip.as_ref().map(|ip| format!("ip:{ip}")))
        .unwrap_or_else(|| "remediation".to_owned());
    let actions: Vec<String> = steps.iter().map(|s| s.to_columns().0).collect();
    Some(StepAction::Notify {
        topic_arn,
        subject: format!(
            "[portcullis] {name}: {event_type} ({})",
            severity_str(severity)
        ),
        event_type: event_type.clone(),
        severity,
        principal: subject.principal_id.map(|p| p.to_string()),
        group: Some(group),
        message: json!({
            "playbook": name,
            "event_type": event_type,
            "severity": severity_str(severity),
            "trigger": {
                "kind": subject.trigger_kind,
                "ref": subject.trigger_ref,
                "principal_id": subject.principal_id,
                "api_key_id": subject.api_key_id,
                "client_ip": subject.client_ip,
                "route_id": subject.route_id,
                "detail": subject.detail,
            },
            "actions": actions,
        }),
    })
}

/// The managed secret holding API key `key_id`, if any.
pub async fn secret_holding<C: ConnectionTrait>(
    db: &C,
    key_id: Uuid,
) -> Result<Option<managed_secret::Model>, DbErr> {
    managed_secret::Entity::find()
        .filter(managed_secret::Column::ApiKeyId.eq(key_id))
        .filter(managed_secret::Column::Kind.eq(ManagedSecretKind::ApiKey))
        .one(db)
        .await
}

/// Creates the run and its steps in `db` (a transaction); returns the existing run instead
/// when one has the same idempotency key (`true` = newly created).
pub async fn insert_run<C: ConnectionTrait>(
    db: &C,
    planned: PlannedRun,
) -> Result<(remediation_run::Model, bool), DbErr> {
    if let Some(existing) = find_by_key(db, &planned.idempotency_key).await? {
        return Ok((existing, false));
    }
    let now = Utc::now();
    let run_id = Uuid::now_v7();
    let (status, finished) = match (&planned.suppressed, planned.dry_run) {
        (Some(_), _) => (RemediationRunStatus::Suppressed, true),
        (None, true) => (RemediationRunStatus::DryRun, true),
        (None, false) => (RemediationRunStatus::Pending, false),
    };
    let subject = &planned.subject;
    let run = remediation_run::ActiveModel {
        id: Set(run_id),
        playbook_id: Set(planned.playbook_id),
        trigger_kind: Set(subject.trigger_kind.clone()),
        trigger_ref: Set(subject.trigger_ref.clone()),
        idempotency_key: Set(planned.idempotency_key.clone()),
        status: Set(status),
        dry_run: Set(planned.dry_run),
        context: Set(json!({
            "name": planned.name,
            "event_kind": subject.event_kind,
            "severity": subject.severity,
            "principal_id": subject.principal_id,
            "api_key_id": subject.api_key_id,
            "client_ip": subject.client_ip,
            "route_id": subject.route_id,
            "detail": subject.detail,
            "suppressed": planned.suppressed,
        })),
        error: Set(None),
        attempts: Set(0),
        next_attempt_at: Set(if finished { None } else { Some(now) }),
        created_at: Set(now),
        updated_at: Set(now),
        finished_at: Set(if finished { Some(now) } else { None }),
    }
    .insert(db)
    .await?;
    for (seq, action) in planned.steps.iter().enumerate() {
        let (name, params) = action.to_columns();
        let (status, output) = if let Some(reason) = &planned.suppressed {
            (
                RemediationStepStatus::Skipped,
                Some(json!({ "suppressed": reason })),
            )
        } else if planned.dry_run {
            (
                RemediationStepStatus::Skipped,
                Some(json!({ "dry_run": true, "would": { "action": name, "params": params } })),
            )
        } else {
            (RemediationStepStatus::Pending, None)
        };
        remediation_step::ActiveModel {
            id: Set(Uuid::now_v7()),
            run_id: Set(run_id),
            seq: Set(i32::try_from(seq).unwrap_or(i32::MAX)),
            action: Set(name),
            params: Set(params),
            status: Set(status),
            attempts: Set(0),
            last_error: Set(None),
            output: Set(output),
            next_attempt_at: Set(None),
            started_at: Set(None),
            finished_at: Set(if finished { Some(now) } else { None }),
            created_at: Set(now),
        }
        .insert(db)
        .await?;
    }
    Ok((run, true))
}

async fn find_by_key<C: ConnectionTrait>(
    db: &C,
    key: &str,
) -> Result<Option<remediation_run::Model>, DbErr> {
    remediation_run::Entity::find()
        .filter(remediation_run::Column::IdempotencyKey.eq(key))
        .one(db)
        .await
}

/// Creates `planned` in its own transaction (a concurrent duplicate returns the winner's
/// run); `true` = newly created.
pub(crate) async fn create(
    engine: &Engine,
    planned: PlannedRun,
) -> Result<(remediation_run::Model, bool), DbErr> {
    let key = planned.idempotency_key.clone();
    let txn = engine.db().begin().await?;
    match insert_run(&txn, planned).await {
        Ok((run, created)) => {
            txn.commit().await?;
            engine.wake();
            Ok((run, created))
        }
        Err(error) => {
            txn.rollback().await?;
            if matches!(
                error.sql_err(),
                Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
            ) && let Some(run) = find_by_key(engine.db(), &key).await?
            {
                return Ok((run, false));
            }
            Err(error)
        }
    }
}

/// `reportLeakedKey`: revokes key `key_id` at once, rotates it into its managed secret (if a
/// secret holds it) and notifies. `request_id` identifies the report: repeating it returns the
/// same run.
#[tracing::instrument(skip(engine))]
pub async fn report_leaked_key(
    engine: &Engine,
    key_id: Uuid,
    request_id: &str,
) -> Result<remediation_run::Model, RemediationError> {
    let key = api_key::Entity::find_by_id(key_id)
        .one(engine.db())
        .await?
        .ok_or_else(|| RemediationError::NotFound("api key", key_id.to_string()))?;
    let subject = Subject {
        trigger_kind: "graphql".into(),
        trigger_ref: Some(request_id.to_owned()),
        event_kind: "key_leaked".into(),
        severity: Some(Severity::Critical),
        principal_id: Some(key.principal_id),
        api_key_id: Some(key.id),
        client_ip: None,
        route_id: None,
        detail: json!({ "reported": "reportLeakedKey" }),
    };
    // Revoke first: the leaked key must stop working even while AWS is unavailable.
    let mut steps = vec![StepAction::RevokeKey {
        key_id,
        reason: "reported leaked".into(),
    }];
    if let Some(secret) = secret_holding(engine.db(), key_id).await? {
        steps.extend(rotation_steps(&secret.secret_id, key_id));
    }
    let spec = NotifySpec {
        severity: Some(Severity::Critical),
        ..NotifySpec::default()
    };
    steps.extend(notify_step(
        engine,
        "report-leaked-key",
        &spec,
        &subject,
        &steps,
    ));
    Ok(create(
        engine,
        PlannedRun {
            playbook_id: None,
            idempotency_key: format!("report_leaked_key:{key_id}:{request_id}"),
            dry_run: false,
            suppressed: None,
            subject,
            name: "report-leaked-key".into(),
            steps,
        },
    )
    .await?
    .0)
}

/// `rotateSecret`: rotates managed secret `secret_id` (four-step protocol) and notifies. An
/// API key's old key expires after the configured grace period; an upstream credential's new
/// value is picked up by every proxy through the change feed.
#[tracing::instrument(skip(engine))]
pub async fn rotate_secret(
    engine: &Engine,
    secret_id: &str,
    request_id: &str,
) -> Result<remediation_run::Model, RemediationError> {
    let secret = managed_secret::Entity::find()
        .filter(managed_secret::Column::SecretId.eq(secret_id))
        .one(engine.db())
        .await?
        .ok_or_else(|| RemediationError::NotFound("managed secret", secret_id.to_owned()))?;
    let mut subject = Subject {
        trigger_kind: "graphql".into(),
        trigger_ref: Some(request_id.to_owned()),
        event_kind: "secret_rotated".into(),
        severity: Some(Severity::Low),
        route_id: secret.route_id,
        detail: json!({ "secret_id": secret_id, "kind": secret.kind }),
        ..Subject::default()
    };
    let mut steps = match (secret.kind, secret.api_key_id) {
        (ManagedSecretKind::ApiKey, Some(old_key_id)) => {
            let key = api_key::Entity::find_by_id(old_key_id)
                .one(engine.db())
                .await?
                .ok_or_else(|| RemediationError::NotFound("api key", old_key_id.to_string()))?;
            subject.principal_id = Some(key.principal_id);
            subject.api_key_id = Some(key.id);
            let mut steps = rotation_steps(secret_id, old_key_id);
            steps.push(StepAction::ExpireKey {
                key_id: old_key_id,
                grace_secs: engine.config().rotation_grace_secs,
            });
            steps
        }
        (ManagedSecretKind::ApiKey, None) => {
            return Err(RemediationError::Conflict(format!(
                "managed secret {secret_id} holds no API key (was it revoked or deleted?)"
            )));
        }
        (ManagedSecretKind::UpstreamCredential, _) => credential_rotation_steps(secret_id),
    };
    steps.extend(notify_step(
        engine,
        "rotate-secret",
        &NotifySpec::default(),
        &subject,
        &steps,
    ));
    Ok(create(
        engine,
        PlannedRun {
            playbook_id: None,
            idempotency_key: format!("rotate_secret:{secret_id}:{request_id}"),
            dry_run: false,
            suppressed: None,
            subject,
            name: "rotate-secret".into(),
            steps,
        },
    )
    .await?
    .0)
}

/// `retryRemediationRun`: puts the failed steps of failed run `run_id` back to pending (with
/// fresh attempts) and the run back in the queue. Completed steps are not repeated.
#[tracing::instrument(skip(engine))]
pub async fn retry_run(
    engine: &Engine,
    run_id: Uuid,
) -> Result<remediation_run::Model, RemediationError> {
    let txn = engine.db().begin().await?;
    let run = remediation_run::Entity::find_by_id(run_id)
        .one(&txn)
        .await?
        .ok_or_else(|| RemediationError::NotFound("remediation run", run_id.to_string()))?;
    if run.status != RemediationRunStatus::Failed {
        return Err(RemediationError::Conflict(format!(
            "only failed runs can be retried (this one is {:?})",
            run.status
        )));
    }
    let failed = remediation_step::Entity::find()
        .filter(remediation_step::Column::RunId.eq(run_id))
        .filter(remediation_step::Column::Status.eq(RemediationStepStatus::Failed))
        .all(&txn)
        .await?;
    for step in failed {
        let mut active: remediation_step::ActiveModel = step.into();
        active.status = Set(RemediationStepStatus::Pending);
        active.attempts = Set(0);
        active.next_attempt_at = Set(None);
        active.finished_at = Set(None);
        active.update(&txn).await?;
    }
    let now = Utc::now();
    let mut active: remediation_run::ActiveModel = run.into();
    active.status = Set(RemediationRunStatus::Pending);
    active.error = Set(None);
    active.next_attempt_at = Set(Some(now));
    active.finished_at = Set(None);
    active.updated_at = Set(now);
    let run = active.update(&txn).await?;
    txn.commit().await?;
    engine.wake();
    Ok(run)
}

/// Scheduled rotation: starts a rotation run for every managed secret whose
/// `rotation_interval_days` have passed since its last rotation (or creation). The
/// idempotency key names the period's start, so each period rotates once however many workers
/// sweep. Returns how many runs were started.
pub async fn sweep_scheduled_rotations(engine: &Engine) -> Result<usize, RemediationError> {
    let now = Utc::now();
    let due: Vec<managed_secret::Model> = managed_secret::Entity::find()
        .filter(managed_secret::Column::RotationIntervalDays.is_not_null())
        // A key secret whose key is gone has nothing to rotate.
        .filter(
            sea_orm::Condition::any()
                .add(managed_secret::Column::Kind.eq(ManagedSecretKind::UpstreamCredential))
                .add(managed_secret::Column::ApiKeyId.is_not_null()),
        )
        .all(engine.db())
        .await?
        .into_iter()
        .filter(|secret| {
            let since = secret.last_rotated_at.unwrap_or(secret.created_at);
            secret
                .rotation_interval_days
                .is_some_and(|days| since + chrono::Duration::days(i64::from(days.max(1))) <= now)
        })
        .collect();
    let mut started = 0;
    for secret in due {
        let since = secret.last_rotated_at.unwrap_or(secret.created_at);
        let request = format!("schedule:{}", since.timestamp());
        match rotate_secret(engine, &secret.secret_id, &request).await {
            Ok(_) => started += 1,
            Err(error) => {
                tracing::warn!(secret_id = %secret.secret_id, %error, "scheduled rotation not started");
            }
        }
    }
    Ok(started)
}
