//! The security-event trigger: every `new` event starts one run per matching playbook (after
//! diagnosis), and is marked `handled` (or `suppressed`) with the run's id, all in one
//! transaction. The run's idempotency key (`security_event:<id>:<playbook>`) makes processing
//! an event twice harmless.

use chrono::Utc;
use entity::{
    api_key,
    incident_grant::{self, IncidentGrantStatus},
    ip_rule::{self, IpRuleAction},
    remediation_run::RemediationRunStatus,
    security_event::{self, SecurityEventStatus},
};
use sea_orm::{
    ActiveEnum, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, TransactionTrait, sea_query::Expr,
};

use super::{
    Engine,
    playbook::{self, Diagnose, Playbook},
    runs::{self, PlannedRun, Subject},
};

/// Handles up to 100 new security events; returns how many runs were created.
pub async fn process_security_events(engine: &Engine) -> Result<usize, DbErr> {
    let db = engine.db();
    let events = security_event::Entity::find()
        .filter(security_event::Column::Status.eq(SecurityEventStatus::New))
        .order_by_asc(security_event::Column::CreatedAt)
        .limit(100)
        .all(db)
        .await?;
    if events.is_empty() {
        return Ok(0);
    }
    let playbooks = playbook::load_enabled(db).await?;
    let mut created = 0;
    for event in events {
        created += handle_event(engine, &playbooks, &event).await?;
    }
    if created > 0 {
        engine.wake();
    }
    Ok(created)
}

async fn handle_event(
    engine: &Engine,
    playbooks: &[Playbook],
    event: &security_event::Model,
) -> Result<usize, DbErr> {
    let txn = engine.db().begin().await?;
    match start_runs(engine, &txn, playbooks, event).await {
        Ok(Some(created)) => {
            txn.commit().await?;
            if created > 0 {
                tracing::info!(event_id = %event.id, kind = %event.kind, runs = created, "security event handled");
            }
            Ok(created)
        }
        // Another worker handled it first.
        Ok(None) => {
            txn.rollback().await?;
            Ok(0)
        }
        // Another worker is creating the same run right now (its idempotency key won).
        Err(error)
            if matches!(
                error.sql_err(),
                Some(sea_orm::SqlErr::UniqueConstraintViolation(_))
            ) =>
        {
            txn.rollback().await?;
            Ok(0)
        }
        Err(error) => {
            txn.rollback().await?;
            Err(error)
        }
    }
}

/// Creates the runs for `event` and marks it, in `txn`; `None` if another worker marked it
/// first.
async fn start_runs(
    engine: &Engine,
    txn: &sea_orm::DatabaseTransaction,
    playbooks: &[Playbook],
    event: &security_event::Model,
) -> Result<Option<usize>, DbErr> {
    let subject = Subject {
        trigger_kind: "security_event".into(),
        trigger_ref: Some(event.id.to_string()),
        event_kind: event.kind.clone(),
        severity: Some(event.severity),
        principal_id: event.principal_id,
        api_key_id: event.api_key_id,
        client_ip: event.client_ip.clone(),
        route_id: event.route_id,
        detail: event.detail.clone(),
    };
    let mut first_run = None;
    let mut acted = false;
    let mut created = 0;
    for playbook in playbooks
        .iter()
        .filter(|p| p.matches_event(&event.kind, event.severity, &event.detail))
    {
        let suppressed = diagnose(txn, &playbook.diagnose, event).await?;
        let (steps, unresolved) = runs::plan_steps(txn, engine, playbook, &subject).await?;
        if !unresolved.is_empty() {
            tracing::info!(playbook = %playbook.name, event_id = %event.id, ?unresolved, "actions left out: the event lacks what they need");
        }
        let (run, new) = runs::insert_run(
            txn,
            PlannedRun {
                playbook_id: Some(playbook.id),
                idempotency_key: format!("security_event:{}:{}", event.id, playbook.name),
                dry_run: playbook.dry_run,
                suppressed,
                subject: subject.clone(),
                name: playbook.name.clone(),
                steps,
            },
        )
        .await?;
        if new {
            created += 1;
        }
        if run.status != RemediationRunStatus::Suppressed {
            // The event points at the run that acted on it, when one did.
            if !acted {
                first_run = Some(run.id);
            }
            acted = true;
        }
        first_run.get_or_insert(run.id);
    }
    let status = if acted {
        SecurityEventStatus::Handled
    } else {
        SecurityEventStatus::Suppressed
    };
    let updated = security_event::Entity::update_many()
        .col_expr(
            security_event::Column::Status,
            Expr::value(status.to_value()),
        )
        .col_expr(
            security_event::Column::HandledByRunId,
            Expr::value(first_run),
        )
        .filter(security_event::Column::Id.eq(event.id))
        .filter(security_event::Column::Status.eq(SecurityEventStatus::New))
        .exec(txn)
        .await?;
    Ok((updated.rows_affected == 1).then_some(created))
}

/// The diagnosis: why a run should NOT act on `event`, if a check says so.
pub async fn diagnose<C: ConnectionTrait>(
    db: &C,
    checks: &Diagnose,
    event: &security_event::Model,
) -> Result<Option<String>, DbErr> {
    let now = Utc::now();
    if checks.suppress_if_key_revoked
        && let Some(key_id) = event.api_key_id
        && let Some(key) = api_key::Entity::find_by_id(key_id).one(db).await?
        && key.revoked_at.is_some()
        && !key
            .revoked_reason
            .as_deref()
            .is_some_and(|r| r.starts_with("remediation") || r == "reported leaked")
    {
        return Ok(Some(format!("key {key_id} was already revoked on purpose")));
    }
    if checks.suppress_if_ip_allowed
        && let Some(ip) = event
            .client_ip
            .as_deref()
            .and_then(|ip| ip.parse::<std::net::IpAddr>().ok())
    {
        let allows = ip_rule::Entity::find()
            .filter(ip_rule::Column::Action.eq(IpRuleAction::Allow))
            .all(db)
            .await?;
        if let Some(rule) = allows.iter().find(|rule| {
            rule.expires_at.is_none_or(|at| at > now)
                && rule
                    .cidr
                    .parse::<ipnet::IpNet>()
                    .is_ok_and(|net| net.contains(&ip))
        }) {
            return Ok(Some(format!(
                "client IP {ip} is allow-listed by IP rule {}",
                rule.id
            )));
        }
    }
    if checks.suppress_if_incident_grant
        && let Some(principal_id) = event.principal_id
    {
        let grants = incident_grant::Entity::find()
            .filter(incident_grant::Column::RequesterId.eq(principal_id))
            .filter(incident_grant::Column::Status.eq(IncidentGrantStatus::Approved))
            .all(db)
            .await?;
        if let Some(grant) = grants
            .iter()
            .find(|g| g.expires_at.is_none_or(|at| at > now))
        {
            return Ok(Some(format!(
                "principal {principal_id} holds active incident grant {} ({})",
                grant.id, grant.incident_id
            )));
        }
    }
    Ok(None)
}
