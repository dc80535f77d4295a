//! The transactional outbox of SNS notifications.
//!
//! [`enqueue`] writes a `notification_outbox` row inside the caller's transaction, so a
//! notification exists if and only if the change it announces committed. [`Dispatcher`]
//! publishes pending rows with SNS `Publish`, oldest first, and marks them sent with the SNS
//! message id. Delivery is at least once (subscribers drop repeats by the `dedup_id`
//! attribute, FIFO topics by `MessageDeduplicationId`); ORDER IS KEPT PER `message_group`: a
//! row waiting for a retry holds back the later rows of its group, and only those.

use std::{collections::HashSet, sync::Arc, time::Duration};

use chrono::Utc;
use entity::{
    notification_outbox::{self, OutboxStatus},
    security_event::Severity,
};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, Set, sea_query::Expr,
};
use serde_json::json;

use crate::{
    aws::sns::{Notifier, Publication},
    remediation::backoff,
};

/// A notification to write.
#[derive(Debug, Clone)]
pub struct NewNotification {
    /// SNS topic ARN.
    pub topic_arn: String,
    /// FIFO group; also the unit of ordering. `None`: no ordering with other rows.
    pub message_group: Option<String>,
    /// Unique deduplication id.
    pub dedup_id: String,
    /// `event_type` attribute.
    pub event_type: String,
    /// `severity` attribute.
    pub severity: Severity,
    /// `principal` attribute.
    pub principal: Option<String>,
    /// `Subject`.
    pub subject: String,
    /// Body.
    pub message: String,
}

/// Writes `notification` to the outbox; call it inside the transaction of the change it
/// announces.
pub async fn enqueue<C: ConnectionTrait>(
    db: &C,
    notification: NewNotification,
) -> Result<notification_outbox::Model, DbErr> {
    let now = Utc::now();
    notification_outbox::ActiveModel {
        topic_arn: Set(notification.topic_arn),
        message_group: Set(notification.message_group),
        dedup_id: Set(notification.dedup_id),
        event_type: Set(notification.event_type),
        severity: Set(severity_str(notification.severity).to_owned()),
        principal: Set(notification.principal),
        subject: Set(notification.subject),
        message: Set(notification.message),
        attributes: Set(json!({})),
        status: Set(OutboxStatus::Pending),
        attempts: Set(0),
        last_error: Set(None),
        next_attempt_at: Set(now),
        sns_message_id: Set(None),
        created_at: Set(now),
        sent_at: Set(None),
        ..Default::default()
    }
    .insert(db)
    .await
}

/// The `severity` attribute value.
pub fn severity_str(severity: Severity) -> &'static str {
    match severity {
        Severity::Low => "low",
        Severity::Medium => "medium",
        Severity::High => "high",
        Severity::Critical => "critical",
    }
}

/// Dispatcher tuning.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// First retry delay.
    pub backoff_base: Duration,
    /// Longest retry delay.
    pub backoff_cap: Duration,
    /// Attempts before a PERMANENT error parks a row as `failed`; retryable errors (SNS down,
    /// throttling) are retried forever, so nothing is lost.
    pub max_attempts: i32,
    /// How many pending rows one pass looks at.
    pub batch: u64,
}

/// Publishes the outbox.
#[derive(Clone)]
pub struct Dispatcher {
    db: DatabaseConnection,
    notifier: Arc<dyn Notifier>,
    config: DispatcherConfig,
}

impl Dispatcher {
    /// A dispatcher over `db` publishing through `notifier`.
    pub fn new(
        db: DatabaseConnection,
        notifier: Arc<dyn Notifier>,
        config: DispatcherConfig,
    ) -> Self {
        Self {
            db,
            notifier,
            config,
        }
    }

    /// One pass: publishes every due row whose group is not held back by an earlier row.
    /// Returns how many rows were sent.
    pub async fn dispatch_once(&self) -> Result<usize, DbErr> {
        let now = Utc::now();
        let rows = notification_outbox::Entity::find()
            .filter(notification_outbox::Column::Status.eq(OutboxStatus::Pending))
            .order_by_asc(notification_outbox::Column::Id)
            .limit(self.config.batch)
            .all(&self.db)
            .await?;
        let mut held: HashSet<String> = HashSet::new();
        let mut sent = 0;
        for row in rows {
            let group = row.message_group.clone();
            if group.as_ref().is_some_and(|g| held.contains(g)) {
                continue;
            }
            if row.next_attempt_at > now {
                if let Some(group) = group {
                    held.insert(group);
                }
                continue;
            }
            // Claim: only one dispatcher publishes a given attempt.
            let claimed = notification_outbox::Entity::update_many()
                .col_expr(
                    notification_outbox::Column::Attempts,
                    Expr::value(row.attempts + 1),
                )
                .col_expr(
                    notification_outbox::Column::NextAttemptAt,
                    Expr::value(now + chrono::Duration::seconds(60)),
                )
                .filter(notification_outbox::Column::Id.eq(row.id))
                .filter(notification_outbox::Column::Attempts.eq(row.attempts))
                .filter(notification_outbox::Column::Status.eq(OutboxStatus::Pending))
                .exec(&self.db)
                .await?;
            if claimed.rows_affected != 1 {
                if let Some(group) = group {
                    held.insert(group);
                }
                continue;
            }
            let attempt = row.attempts + 1;
            let publication = Publication {
                topic_arn: row.topic_arn.clone(),
                subject: row.subject.clone(),
                message: row.message.clone(),
                attributes: attributes(&row),
                group_id: row.message_group.clone(),
                dedup_id: row.dedup_id.clone(),
            };
            match self.notifier.publish(&publication).await {
                Ok(message_id) => {
                    let mut active: notification_outbox::ActiveModel = row.into();
                    active.status = Set(OutboxStatus::Sent);
                    active.attempts = Set(attempt);
                    active.sns_message_id = Set(Some(message_id));
                    active.sent_at = Set(Some(Utc::now()));
                    active.last_error = Set(None);
                    active.update(&self.db).await?;
                    sent += 1;
                }
                Err(error) => {
                    tracing::warn!(outbox_id = row.id, attempt, %error, "SNS publish failed");
                    let give_up = !error.retryable && attempt >= self.config.max_attempts;
                    let delay =
                        backoff::delay(attempt, self.config.backoff_base, self.config.backoff_cap);
                    let mut active: notification_outbox::ActiveModel = row.into();
                    active.attempts = Set(attempt);
                    active.last_error = Set(Some(error.to_string()));
                    active.next_attempt_at = Set(Utc::now() + delay);
                    if give_up {
                        active.status = Set(OutboxStatus::Failed);
                    }
                    active.update(&self.db).await?;
                    if !give_up && let Some(group) = group {
                        held.insert(group);
                    }
                }
            }
        }
        Ok(sent)
    }

    /// Runs [`Dispatcher::dispatch_once`] every `interval` (sooner when woken) until `stop`.
    pub async fn run(
        self,
        interval: Duration,
        wake: Arc<tokio::sync::Notify>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            if *stop.borrow() {
                return;
            }
            if let Err(error) = self.dispatch_once().await {
                tracing::warn!(%error, "outbox dispatch failed");
            }
            tokio::select! {
                () = tokio::time::sleep(interval) => {}
                () = wake.notified() => {}
                _ = stop.changed() => {}
            }
        }
    }
}

/// `event_type`, `severity`, `principal` (when known), `dedup_id`, plus the row's extras.
fn attributes(row: &notification_outbox::Model) -> std::collections::BTreeMap<String, String> {
    let mut attributes = std::collections::BTreeMap::new();
    if let Some(extra) = row.attributes.as_object() {
        for (name, value) in extra {
            if let Some(value) = value.as_str() {
                attributes.insert(name.clone(), value.to_owned());
            }
        }
    }
    attributes.insert("event_type".into(), row.event_type.clone());
    attributes.insert("severity".into(), row.severity.clone());
    if let Some(principal) = &row.principal {
        attributes.insert("principal".into(), principal.clone());
    }
    attributes.insert("dedup_id".into(), row.dedup_id.clone());
    attributes
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::aws::sns::is_fifo;

    #[test]
    fn attributes_always_carry_event_type_severity_principal_and_dedup_id() {
        let now = Utc::now();
        let row = notification_outbox::Model {
            id: 1,
            topic_arn: "arn:aws:sns:us-east-1:1:t".into(),
            message_group: None,
            dedup_id: "d-1".into(),
            event_type: "key_leaked".into(),
            severity: "critical".into(),
            principal: Some("p".into()),
            subject: "s".into(),
            message: "{}".into(),
            // A stored extra cannot override the standard attributes.
            attributes: json!({ "team": "payments", "severity": "low" }),
            status: OutboxStatus::Pending,
            attempts: 0,
            last_error: None,
            next_attempt_at: now,
            sns_message_id: None,
            created_at: now,
            sent_at: None,
        };
        let attributes = attributes(&row);
        assert_eq!(attributes["event_type"], "key_leaked");
        assert_eq!(attributes["severity"], "critical");
        assert_eq!(attributes["principal"], "p");
        assert_eq!(attributes["dedup_id"], "d-1");
        assert_eq!(attributes["team"], "payments");
        assert!(is_fifo("arn:aws:sns:us-east-1:1:alerts.fifo"));
        assert!(!is_fifo("arn:aws:sns:us-east-1:1:alerts"));
    }
}
