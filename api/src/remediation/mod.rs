//! The remediation engine: turns security events (and manual requests) into durable runs of
//! idempotent steps, and executes them with retries.
//!
//! * [`playbook`]: playbooks as typed data, and the builtin defaults.
//! * [`triggers`]: new security events → runs (one per matching playbook, after diagnosis).
//! * [`runs`]: planning and creating runs (one transaction, unique idempotency key), and the
//!   manual entry points ([`runs::report_leaked_key`], [`runs::rotate_secret`],
//!   [`runs::retry_run`]).
//! * [`worker`]: claims due runs, executes their steps in order, retries with backoff.
//! * [`actions`]: the step actions and the executors of database effects.
//! * [`schedule`]: playbooks with a schedule trigger, fired once per period.
//! * [`reviews`]: access reviews past their deadline (default decision, revocations).
//! * [`rotation`]: the Secrets Manager four-step rotation of an API key or an upstream
//!   credential.
//!
//! Runs are claimed with an atomic `UPDATE … WHERE attempts = <seen>` (works on SQLite's single
//! connection and on PostgreSQL) and hold a lease (`next_attempt_at`); a worker that dies
//! mid-run loses its lease and another one resumes at the first unfinished step.

pub mod actions;
pub mod anchors;
pub mod backoff;
pub mod playbook;
pub mod reviews;
pub mod rotation;
pub mod runs;
pub mod schedule;
pub mod triggers;
pub mod worker;

use std::{sync::Arc, time::Duration};

use proxy::keys::KeyHasher;
use sea_orm::{DatabaseConnection, DbErr};
use serde::Deserialize;
use tokio::{
    sync::{Notify, watch},
    task::JoinHandle,
};

pub use self::{
    playbook::seed_builtin_playbooks,
    rotation::{RotationEvent, handle_rotation_event},
    runs::{RemediationError, report_leaked_key, retry_run, rotate_secret},
};
use crate::{
    aws::{
        AwsClients,
        error::AwsError,
        secrets::{SecretStore, SecretsManagerStore},
        sns::{Notifier, SnsNotifier},
    },
    outbox::{Dispatcher, DispatcherConfig},
};

/// How often the worker looks for managed secrets due for scheduled rotation.
const SCHEDULE_SWEEP_INTERVAL: Duration = Duration::from_secs(60);

/// How often the worker looks for scheduled playbooks whose period began (they run at most
/// every [`playbook::MIN_SCHEDULE_SECS`]).
const SCHEDULE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Engine tuning (`PORTCULLIS_API__REMEDIATION__*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RemediationConfig {
    /// Run the background loops (security-event triggers, runs, outbox) in `portcullis dev`
    /// and `portcullis worker`. Off, nothing reacts to security events.
    pub enabled: bool,
    /// Attempts of one step before it fails for good.
    pub max_attempts: i32,
    /// First retry delay, in milliseconds.
    pub backoff_base_ms: u64,
    /// Longest retry delay, in milliseconds.
    pub backoff_cap_ms: u64,
    /// How often the worker looks for due runs, new security events and pending notifications.
    pub poll_interval_ms: u64,
    /// How long a claimed run stays with its worker before another may take it over.
    pub lease_secs: i64,
    /// Timeout of one AWS call, in milliseconds.
    pub aws_timeout_ms: u64,
    /// How long the old key keeps working after a scheduled or manual rotation.
    pub rotation_grace_secs: i64,
    /// Publish attempts before a notification with a permanent SNS error is parked.
    pub outbox_max_attempts: i32,
    /// The proxy's default rate limit (requests per minute), the base that
    /// `tighten_rate_limit` scales when neither key nor route sets one.
    pub default_rate_limit_per_minute: i32,
    /// The proxy's default burst.
    pub default_rate_limit_burst: i32,
    /// How often the audit chain's tail is published to the notification topic as an anchor
    /// (`event_type` `audit_checkpoint`), in seconds; 0 turns anchors off. See [`anchors`].
    pub audit_anchor_every_secs: u64,
}

impl Default for RemediationConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            max_attempts: 6,
            backoff_base_ms: 200,
            backoff_cap_ms: 30_000,
            poll_interval_ms: 200,
            lease_secs: 60,
            aws_timeout_ms: 5_000,
            rotation_grace_secs: 24 * 3600,
            outbox_max_attempts: 10,
            default_rate_limit_per_minute: 600,
            default_rate_limit_burst: 100,
            audit_anchor_every_secs: 300,
        }
    }
}

/// Why a step attempt failed; `retryable` decides between backoff and parking the run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct StepError {
    /// What went wrong (for AWS: operation, code and message; never a secret).
    pub message: String,
    /// Whether another attempt may succeed.
    pub retryable: bool,
}

impl StepError {
    /// A failure that retrying cannot fix.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retryable: false,
        }
    }
}

impl From<DbErr> for StepError {
    fn from(error: DbErr) -> Self {
        // Database hiccups (a lost connection, a lock timeout) are worth another attempt;
        // the attempt limit bounds the rest.
        Self {
            message: format!("database error: {error}"),
            retryable: true,
        }
    }
}

impl From<AwsError> for StepError {
    fn from(error: AwsError) -> Self {
        Self {
            retryable: error.retryable,
            message: error.to_string(),
        }
    }
}

/// The engine: database, ports and settings; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

struct Inner {
    db: DatabaseConnection,
    hasher: KeyHasher,
    secrets: Arc<dyn SecretStore>,
    notifier: Arc<dyn Notifier>,
    config: RemediationConfig,
    topic_arn: Option<String>,
    wake: Arc<Notify>,
    outbox_wake: Arc<Notify>,
}

impl Engine {
    /// An engine over explicit ports.
    pub fn new(
        db: DatabaseConnection,
        hasher: KeyHasher,
        secrets: Arc<dyn SecretStore>,
        notifier: Arc<dyn Notifier>,
        config: RemediationConfig,
        topic_arn: Option<String>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                db,
                hasher,
                secrets,
                notifier,
                config,
                topic_arn,
                wake: Arc::new(Notify::new()),
                outbox_wake: Arc::new(Notify::new()),
            }),
        }
    }

    /// An engine whose ports are the AWS SDK adapters over `aws`.
    pub fn from_aws(
        db: DatabaseConnection,
        hasher: KeyHasher,
        aws: &AwsClients,
        config: RemediationConfig,
        topic_arn: Option<String>,
    ) -> Self {
        let timeout = Duration::from_millis(config.aws_timeout_ms);
        Self::new(
            db,
            hasher,
            Arc::new(SecretsManagerStore::new(&aws.secrets, timeout)),
            Arc::new(SnsNotifier::new(&aws.sns, timeout)),
            config,
            topic_arn,
        )
    }

    /// The database.
    pub fn db(&self) -> &DatabaseConnection {
        &self.inner.db
    }

    /// The settings.
    pub fn config(&self) -> &RemediationConfig {
        &self.inner.config
    }

    /// The topic notifications go to, when configured.
    pub fn topic_arn(&self) -> Option<&str> {
        self.inner.topic_arn.as_deref()
    }

    pub(crate) fn hasher(&self) -> &KeyHasher {
        &self.inner.hasher
    }

    pub(crate) fn secrets(&self) -> &dyn SecretStore {
        self.inner.secrets.as_ref()
    }

    /// Asks the worker loop to look for due runs now (after a manual trigger).
    pub fn wake(&self) {
        self.inner.wake.notify_one();
        self.inner.outbox_wake.notify_one();
    }

    pub(crate) fn wake_outbox(&self) {
        self.inner.outbox_wake.notify_one();
    }

    /// The outbox dispatcher publishing through this engine's notifier.
    pub fn dispatcher(&self) -> Dispatcher {
        let config = &self.inner.config;
        Dispatcher::new(
            self.inner.db.clone(),
            self.inner.notifier.clone(),
            DispatcherConfig {
                backoff_base: Duration::from_millis(config.backoff_base_ms),
                backoff_cap: Duration::from_millis(config.backoff_cap_ms),
                max_attempts: config.outbox_max_attempts,
                batch: 200,
            },
        )
    }

    /// One pass of everything the background loops do, for environments without timers (a
    /// Lambda invoked by an EventBridge schedule): due scheduled work, new security events,
    /// due runs until none is due or `budget` passes (a run in backoff waits for the next
    /// pass), then one outbox dispatch.
    pub async fn tick(&self, budget: Duration) -> Result<TickReport, DbErr> {
        let started = std::time::Instant::now();
        let rotations = match runs::sweep_scheduled_rotations(self).await {
            Ok(started) => started,
            Err(runs::RemediationError::Database(error)) => return Err(error),
            Err(error) => {
                tracing::warn!(%error, "scheduled rotation sweep failed");
                0
            }
        };
        let scheduled = schedule::fire_due(self, &mut schedule::Planned::default()).await?;
        // An anchor that cannot be written must not hold up remediation: the next tick retries.
        let anchored = anchors::publish_due(self, &mut anchors::Published::default())
            .await
            .unwrap_or_else(|error| {
                tracing::warn!(%error, "audit chain anchor not queued");
                false
            });
        let triggered = triggers::process_security_events(self).await?;
        let steps = worker::work_while_due(self, budget.saturating_sub(started.elapsed())).await?;
        let notifications = self.dispatcher().dispatch_once().await?;
        Ok(TickReport {
            scheduled_rotations: rotations,
            scheduled_runs: scheduled,
            runs_triggered: triggered,
            audit_anchors: usize::from(anchored),
            steps_executed: steps,
            notifications_published: notifications,
        })
    }

    /// Starts the three background loops (security-event triggers, run executor, outbox
    /// dispatcher); [`Worker::shutdown`] stops them after their current iteration.
    pub fn spawn(&self) -> Worker {
        let (stop, stop_rx) = watch::channel(false);
        let interval = Duration::from_millis(self.inner.config.poll_interval_ms.max(10));
        let engine = self.clone();
        let mut rx = stop_rx.clone();
        let runs = tokio::spawn(async move {
            let mut last_sweep: Option<std::time::Instant> = None;
            let mut last_schedule_check: Option<std::time::Instant> = None;
            let mut planned = schedule::Planned::default();
            let mut anchored = anchors::Published::default();
            loop {
                if *rx.borrow() {
                    return;
                }
                if last_sweep.is_none_or(|at| at.elapsed() >= SCHEDULE_SWEEP_INTERVAL) {
                    last_sweep = Some(std::time::Instant::now());
                    if let Err(error) = runs::sweep_scheduled_rotations(&engine).await {
                        tracing::warn!(%error, "scheduled rotation sweep failed");
                    }
                }
                if last_schedule_check.is_none_or(|at| at.elapsed() >= SCHEDULE_CHECK_INTERVAL) {
                    last_schedule_check = Some(std::time::Instant::now());
                    if let Err(error) = schedule::fire_due(&engine, &mut planned).await {
                        tracing::warn!(%error, "scheduled playbooks not planned");
                    }
                    if let Err(error) = anchors::publish_due(&engine, &mut anchored).await {
                        tracing::warn!(%error, "audit chain anchor not queued");
                    }
                }
                if let Err(error) = triggers::process_security_events(&engine).await {
                    tracing::warn!(%error, "security event processing failed");
                }
                if let Err(error) = worker::work_once(&engine, usize::MAX, Some(&rx)).await {
                    tracing::warn!(%error, "remediation worker pass failed");
                }
                tokio::select! {
                    () = tokio::time::sleep(interval) => {}
                    () = engine.inner.wake.notified() => {}
                    _ = rx.changed() => {}
                }
            }
        });
        let outbox = tokio::spawn(self.dispatcher().run(
            interval,
            self.inner.outbox_wake.clone(),
            stop_rx,
        ));
        Worker {
            stop,
            tasks: vec![runs, outbox],
        }
    }
}

/// What one [`Engine::tick`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct TickReport {
    /// Rotation runs started because a managed secret was due.
    pub scheduled_rotations: usize,
    /// Runs started by scheduled playbooks.
    pub scheduled_runs: usize,
    /// Runs started by security events.
    pub runs_triggered: usize,
    /// Audit chain anchors queued for SNS (0 or 1).
    pub audit_anchors: usize,
    /// Steps executed.
    pub steps_executed: usize,
    /// Notifications handed to SNS.
    pub notifications_published: usize,
}

/// The running background loops of an [`Engine`].
pub struct Worker {
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Worker {
    /// Stops the loops: each finishes the step or publish in progress (so no lease is left
    /// dangling), then ends. Waits up to 10 s.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            if tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .is_err()
            {
                tracing::warn!("a remediation loop did not stop within 10 s");
            }
        }
    }
}
