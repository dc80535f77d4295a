//! Executes runs: claim a due run, run its unfinished steps in order, record every outcome.
//!
//! A step is `pending` → `running` (attempt counted) → `succeeded`/`skipped`, or back to
//! waiting (`running` with `next_attempt_at`) after a retryable error, or `failed`. Completing
//! a step is guarded by its attempt number, so a worker that lost its lease cannot record an
//! outcome over another worker's.

use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::{
    remediation_run::{self, RemediationRunStatus},
    remediation_step::{self, RemediationStepStatus},
};
use sea_orm::{
    ActiveEnum, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, PaginatorTrait, QueryFilter,
    QueryOrder, QuerySelect, TransactionTrait, sea_query::Expr,
};
use serde_json::Value;
use tokio::sync::watch;

use super::{Engine, StepError, actions, actions::StepAction, backoff, rotation};

/// What happened to one step attempt.
enum Attempt {
    /// Completed (succeeded or skipped).
    Done,
    /// Waiting for a retry at this instant.
    Retry(DateTime<Utc>),
    /// Failed for good.
    Failed(String),
    /// Another worker owns the step now.
    Lost,
}

/// One pass: claims every due run (oldest first) and executes at most `max_steps` steps in
/// total; stops early once `stop` is set. Returns how many steps were executed.
pub async fn work_once(
    engine: &Engine,
    max_steps: usize,
    stop: Option<&watch::Receiver<bool>>,
) -> Result<usize, DbErr> {
    let now = Utc::now();
    let due = remediation_run::Entity::find()
        .filter(
            remediation_run::Column::Status
                .is_in([RemediationRunStatus::Pending, RemediationRunStatus::Running]),
        )
        .filter(
            sea_orm::Condition::any()
                .add(remediation_run::Column::NextAttemptAt.is_null())
                .add(remediation_run::Column::NextAttemptAt.lte(now)),
        )
        .order_by_asc(remediation_run::Column::CreatedAt)
        .limit(50)
        .all(engine.db())
        .await?;
    let mut budget = max_steps;
    let mut executed = 0;
    for run in due {
        if budget == 0 || stop.is_some_and(|s| *s.borrow()) {
            break;
        }
        let done = process_run(engine, run, &mut budget, stop).await?;
        executed += done;
    }
    Ok(executed)
}

/// Runs [`work_once`] while it finds due work (or until `limit` passes). A run waiting for its
/// backoff is left for a later call: a scheduled Lambda invocation must not spend its time
/// sleeping through another run's retry delay.
pub async fn work_while_due(engine: &Engine, limit: Duration) -> Result<usize, DbErr> {
    let started = std::time::Instant::now();
    let mut total = 0;
    while started.elapsed() < limit {
        let executed = work_once(engine, usize::MAX, None).await?;
        if executed == 0 {
            break;
        }
        total += executed;
    }
    Ok(total)
}

/// Runs [`work_once`] until no run is open (or `limit` passes); for tests and the CLI.
pub async fn work_until_idle(engine: &Engine, limit: Duration) -> Result<usize, DbErr> {
    let started = std::time::Instant::now();
    let mut total = 0;
    while started.elapsed() < limit {
        total += work_once(engine, usize::MAX, None).await?;
        let open = remediation_run::Entity::find()
            .filter(
                remediation_run::Column::Status
                    .is_in([RemediationRunStatus::Pending, RemediationRunStatus::Running]),
            )
            .count(engine.db())
            .await?;
        if open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(total)
}

async fn process_run(
    engine: &Engine,
    run: remediation_run::Model,
    budget: &mut usize,
    stop: Option<&watch::Receiver<bool>>,
) -> Result<usize, DbErr> {
    let db = engine.db();
    let now = Utc::now();
    let lease = now + chrono::Duration::seconds(engine.config().lease_secs.max(1));
    let claimed = remediation_run::Entity::update_many()
        .col_expr(
            remediation_run::Column::Status,
            Expr::value(RemediationRunStatus::Running.to_value()),
        )
        .col_expr(
            remediation_run::Column::Attempts,
            Expr::value(run.attempts + 1),
        )
        .col_expr(remediation_run::Column::NextAttemptAt, Expr::value(lease))
        .col_expr(remediation_run::Column::UpdatedAt, Expr::value(now))
        .filter(remediation_run::Column::Id.eq(run.id))
        .filter(remediation_run::Column::Attempts.eq(run.attempts))
        .filter(
            remediation_run::Column::Status
                .is_in([RemediationRunStatus::Pending, RemediationRunStatus::Running]),
        )
        .exec(db)
        .await?;
    if claimed.rows_affected != 1 {
        return Ok(0);
    }
    let claim = run.attempts + 1;
    let steps = remediation_step::Entity::find()
        .filter(remediation_step::Column::RunId.eq(run.id))
        .order_by_asc(remediation_step::Column::Seq)
        .all(db)
        .await?;
    let mut executed = 0;
    for step in steps {
        match step.status {
            RemediationStepStatus::Succeeded | RemediationStepStatus::Skipped => continue,
            RemediationStepStatus::Failed => {
                let error = step.last_error.clone().unwrap_or_default();
                fail_run(db, run.id, claim, &step, &error).await?;
                return Ok(executed);
            }
            RemediationStepStatus::Pending | RemediationStepStatus::Running => {}
        }
        if let Some(at) = step.next_attempt_at
            && at > Utc::now()
        {
            release(db, run.id, claim, at).await?;
            return Ok(executed);
        }
        if *budget == 0 || stop.is_some_and(|s| *s.borrow()) {
            release(db, run.id, claim, Utc::now()).await?;
            return Ok(executed);
        }
        *budget -= 1;
        executed += 1;
        match execute_step(engine, &run, &step).await? {
            Attempt::Done => {}
            Attempt::Retry(at) => {
                release(db, run.id, claim, at).await?;
                return Ok(executed);
            }
            Attempt::Failed(error) => {
                fail_run(db, run.id, claim, &step, &error).await?;
                return Ok(executed);
            }
            Attempt::Lost => return Ok(executed),
        }
    }
    let now = Utc::now();
    remediation_run::Entity::update_many()
        .col_expr(
            remediation_run::Column::Status,
            Expr::value(RemediationRunStatus::Succeeded.to_value()),
        )
        .col_expr(
            remediation_run::Column::NextAttemptAt,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .col_expr(remediation_run::Column::FinishedAt, Expr::value(now))
        .col_expr(remediation_run::Column::UpdatedAt, Expr::value(now))
        .filter(remediation_run::Column::Id.eq(run.id))
        .filter(remediation_run::Column::Attempts.eq(claim))
        .exec(db)
        .await?;
    tracing::info!(run_id = %run.id, "remediation run succeeded");
    engine.wake_outbox();
    Ok(executed)
}

async fn release<C: ConnectionTrait>(
    db: &C,
    run_id: uuid::Uuid,
    claim: i32,
    at: DateTime<Utc>,
) -> Result<(), DbErr> {
    remediation_run::Entity::update_many()
        .col_expr(remediation_run::Column::NextAttemptAt, Expr::value(at))
        .col_expr(remediation_run::Column::UpdatedAt, Expr::value(Utc::now()))
        .filter(remediation_run::Column::Id.eq(run_id))
        .filter(remediation_run::Column::Attempts.eq(claim))
        .exec(db)
        .await?;
    Ok(())
}

async fn fail_run<C: ConnectionTrait>(
    db: &C,
    run_id: uuid::Uuid,
    claim: i32,
    step: &remediation_step::Model,
    error: &str,
) -> Result<(), DbErr> {
    let now = Utc::now();
    let message = format!("step {} ({}) failed: {error}", step.seq, step.action);
    tracing::warn!(%run_id, %message, "remediation run failed");
    remediation_run::Entity::update_many()
        .col_expr(
            remediation_run::Column::Status,
            Expr::value(RemediationRunStatus::Failed.to_value()),
        )
        .col_expr(remediation_run::Column::Error, Expr::value(message))
        .col_expr(
            remediation_run::Column::NextAttemptAt,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .col_expr(remediation_run::Column::FinishedAt, Expr::value(now))
        .col_expr(remediation_run::Column::UpdatedAt, Expr::value(now))
        .filter(remediation_run::Column::Id.eq(run_id))
        .filter(remediation_run::Column::Attempts.eq(claim))
        .exec(db)
        .await?;
    Ok(())
}

async fn execute_step(
    engine: &Engine,
    run: &remediation_run::Model,
    step: &remediation_step::Model,
) -> Result<Attempt, DbErr> {
    let db = engine.db();
    let now = Utc::now();
    let attempt = step.attempts + 1;
    let started = remediation_step::Entity::update_many()
        .col_expr(
            remediation_step::Column::Status,
            Expr::value(RemediationStepStatus::Running.to_value()),
        )
        .col_expr(remediation_step::Column::Attempts, Expr::value(attempt))
        .col_expr(
            remediation_step::Column::StartedAt,
            Expr::value(step.started_at.unwrap_or(now)),
        )
        .col_expr(
            remediation_step::Column::NextAttemptAt,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .filter(remediation_step::Column::Id.eq(step.id))
        .filter(remediation_step::Column::Attempts.eq(step.attempts))
        .exec(db)
        .await?;
    if started.rows_affected != 1 {
        return Ok(Attempt::Lost);
    }
    let result = match StepAction::from_step(step) {
        Err(error) => Err(error),
        Ok(action) if action.is_rotation() => {
            rotation::execute(engine, run.id, step, attempt, &action).await
        }
        Ok(action) => apply_in_transaction(engine, run.id, step, attempt, &action).await,
    };
    match result {
        Ok(true) => {
            tracing::info!(run_id = %run.id, seq = step.seq, action = %step.action, attempt, "remediation step done");
            Ok(Attempt::Done)
        }
        Ok(false) => Ok(Attempt::Lost),
        Err(error) => {
            let retry = error.retryable && attempt < engine.config().max_attempts;
            let message = error.message.clone();
            tracing::warn!(run_id = %run.id, seq = step.seq, action = %step.action, attempt, retry, error = %message, "remediation step attempt failed");
            let now = Utc::now();
            let mut update = remediation_step::Entity::update_many()
                .col_expr(
                    remediation_step::Column::LastError,
                    Expr::value(message.clone()),
                )
                .filter(remediation_step::Column::Id.eq(step.id))
                .filter(remediation_step::Column::Attempts.eq(attempt));
            let outcome = if retry {
                let config = engine.config();
                let at = now
                    + backoff::delay(
                        attempt,
                        Duration::from_millis(config.backoff_base_ms),
                        Duration::from_millis(config.backoff_cap_ms),
                    );
                update = update.col_expr(remediation_step::Column::NextAttemptAt, Expr::value(at));
                Attempt::Retry(at)
            } else {
                update = update
                    .col_expr(
                        remediation_step::Column::Status,
                        Expr::value(RemediationStepStatus::Failed.to_value()),
                    )
                    .col_expr(remediation_step::Column::FinishedAt, Expr::value(now));
                Attempt::Failed(message)
            };
            update.exec(db).await?;
            Ok(outcome)
        }
    }
}

async fn apply_in_transaction(
    engine: &Engine,
    run_id: uuid::Uuid,
    step: &remediation_step::Model,
    attempt: i32,
    action: &StepAction,
) -> Result<bool, StepError> {
    let txn = engine.db().begin().await?;
    let (skipped, output) = match actions::apply(&txn, run_id, step.seq, action).await {
        Ok(effect) => effect,
        Err(error) => {
            txn.rollback().await?;
            return Err(error);
        }
    };
    if complete_step(&txn, step.id, attempt, skipped, output).await? {
        txn.commit().await?;
        Ok(true)
    } else {
        txn.rollback().await?;
        Ok(false)
    }
}

/// Marks step `step_id` succeeded (or skipped) with `output`, if attempt `attempt` still owns
/// it. Call it in the transaction that wrote the step's effect; `false` means the step was
/// taken over, and the transaction must be rolled back.
pub async fn complete_step<C: ConnectionTrait>(
    db: &C,
    step_id: uuid::Uuid,
    attempt: i32,
    skipped: bool,
    output: Value,
) -> Result<bool, DbErr> {
    let status = if skipped {
        RemediationStepStatus::Skipped
    } else {
        RemediationStepStatus::Succeeded
    };
    let done = remediation_step::Entity::update_many()
        .col_expr(
            remediation_step::Column::Status,
            Expr::value(status.to_value()),
        )
        .col_expr(remediation_step::Column::Output, Expr::value(output))
        .col_expr(
            remediation_step::Column::FinishedAt,
            Expr::value(Utc::now()),
        )
        .col_expr(
            remediation_step::Column::NextAttemptAt,
            Expr::value(Option::<DateTime<Utc>>::None),
        )
        .filter(remediation_step::Column::Id.eq(step_id))
        .filter(remediation_step::Column::Attempts.eq(attempt))
        .filter(remediation_step::Column::Status.eq(RemediationStepStatus::Running))
        .exec(db)
        .await?;
    Ok(done.rows_affected == 1)
}
