//! Scheduled playbooks: a playbook with `{"kind": "schedule", "every_secs": N}` is planned
//! once per period. Periods are aligned to the Unix epoch, and the run's idempotency key
//! names the playbook and the period, so however many workers (or Lambda invocations) look,
//! each period starts at most one run. A period whose plan has nothing to do (no overdue
//! review, say) records no run at all, which keeps the run history readable.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sea_orm::DbErr;
use serde_json::json;
use uuid::Uuid;

use super::{
    Engine,
    actions::StepAction,
    playbook::{self, Playbook},
    runs::{self, PlannedRun, Subject},
};

/// The periods each scheduled playbook was last planned for by this process, so a worker
/// polling every few hundred milliseconds plans each period once.
#[derive(Debug, Default)]
pub struct Planned(HashMap<Uuid, i64>);

/// Plans every enabled scheduled playbook whose current period has not been planned yet;
/// returns how many runs were created.
pub async fn fire_due(engine: &Engine, planned: &mut Planned) -> Result<usize, DbErr> {
    let playbooks = playbook::load_enabled(engine.db()).await?;
    let now = Utc::now().timestamp();
    let mut created = 0;
    for playbook in &playbooks {
        let Some(every) = playbook.schedule_period() else {
            continue;
        };
        let every = i64::try_from(every.max(1)).unwrap_or(i64::MAX);
        let period = now.div_euclid(every);
        if planned.0.get(&playbook.id) == Some(&period) {
            continue;
        }
        if fire(engine, playbook, period, every).await? {
            created += 1;
        }
        planned.0.insert(playbook.id, period);
    }
    if created > 0 {
        engine.wake();
    }
    Ok(created)
}

/// Plans `playbook` for `period`; `true` if a run was created.
async fn fire(
    engine: &Engine,
    playbook: &Playbook,
    period: i64,
    every: i64,
) -> Result<bool, DbErr> {
    let started = DateTime::from_timestamp(period.saturating_mul(every), 0).unwrap_or_default();
    let subject = Subject {
        trigger_kind: "schedule".into(),
        trigger_ref: Some(started.to_rfc3339()),
        event_kind: "schedule".into(),
        detail: json!({ "every_secs": every, "period_start": started }),
        ..Subject::default()
    };
    let (steps, unresolved) = runs::plan_steps(engine.db(), engine, playbook, &subject).await?;
    if !unresolved.is_empty() {
        tracing::warn!(playbook = %playbook.name, ?unresolved, "scheduled actions left out");
    }
    if steps
        .iter()
        .all(|step| matches!(step, StepAction::Notify { .. }))
    {
        return Ok(false);
    }
    let (_, created) = runs::create(
        engine,
        PlannedRun {
            playbook_id: Some(playbook.id),
            idempotency_key: format!("schedule:{}:{period}", playbook.id),
            dry_run: playbook.dry_run,
            suppressed: None,
            subject,
            name: playbook.name.clone(),
            steps,
        },
    )
    .await?;
    if created {
        tracing::info!(playbook = %playbook.name, period_start = %started, "scheduled playbook started a run");
    }
    Ok(created)
}
