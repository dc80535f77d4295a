//! GraphQL shapes of outbox notifications.

use async_graphql::{Enum, InputObject, Json, SimpleObject};
use chrono::{DateTime, Utc};
use entity::notification_outbox::{self, OutboxStatus};
use serde_json::Value;

use crate::service::notifications;

/// Delivery state of a notification.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(name = "NotificationStatus")]
pub enum NotificationStatusOut {
    /// Waiting for (another) publish attempt at `nextAttemptAt`.
    Pending,
    /// Accepted by SNS (`snsMessageId`).
    Sent,
    /// Given up after too many attempts; see `lastError`.
    Failed,
}

impl From<OutboxStatus> for NotificationStatusOut {
    fn from(s: OutboxStatus) -> Self {
        match s {
            OutboxStatus::Pending => Self::Pending,
            OutboxStatus::Sent => Self::Sent,
            OutboxStatus::Failed => Self::Failed,
        }
    }
}

impl From<NotificationStatusOut> for OutboxStatus {
    fn from(s: NotificationStatusOut) -> Self {
        match s {
            NotificationStatusOut::Pending => Self::Pending,
            NotificationStatusOut::Sent => Self::Sent,
            NotificationStatusOut::Failed => Self::Failed,
        }
    }
}

/// One SNS notification of the transactional outbox.
#[derive(SimpleObject, Clone, Debug)]
#[graphql(name = "Notification")]
pub struct NotificationOut {
    /// Position in delivery order.
    pub id: i64,
    /// SNS topic.
    pub topic_arn: String,
    /// `MessageGroupId` (FIFO topics).
    pub message_group: Option<String>,
    /// Deduplication id (the `dedup_id` attribute; FIFO `MessageDeduplicationId`).
    pub dedup_id: String,
    /// Message attribute `event_type`, e.g. `secret_rotated`.
    pub event_type: String,
    /// Message attribute `severity` (`low` … `critical`).
    pub severity: String,
    /// Message attribute `principal`, if any.
    pub principal: Option<String>,
    /// SNS `Subject`.
    pub subject: String,
    /// SNS `Message`: its JSON, or the text as a JSON string when it is not JSON.
    pub message: Json<Value>,
    /// Extra string message attributes.
    pub attributes: Json<Value>,
    /// Delivery state.
    pub status: NotificationStatusOut,
    /// Publish attempts so far.
    pub attempts: i32,
    /// Error of the latest failed attempt.
    pub last_error: Option<String>,
    /// When the next publish attempt is due (pending rows).
    pub next_attempt_at: DateTime<Utc>,
    /// `MessageId` returned by SNS.
    pub sns_message_id: Option<String>,
    /// Created at (with the change it announces).
    pub created_at: DateTime<Utc>,
    /// When SNS accepted it.
    pub sent_at: Option<DateTime<Utc>>,
}

impl From<notification_outbox::Model> for NotificationOut {
    fn from(n: notification_outbox::Model) -> Self {
        let message = serde_json::from_str(&n.message).unwrap_or(Value::String(n.message));
        Self {
            id: n.id,
            topic_arn: n.topic_arn,
            message_group: n.message_group,
            dedup_id: n.dedup_id,
            event_type: n.event_type,
            severity: n.severity,
            principal: n.principal,
            subject: n.subject,
            message: Json(message),
            attributes: Json(n.attributes),
            status: n.status.into(),
            attempts: n.attempts,
            last_error: n.last_error,
            next_attempt_at: n.next_attempt_at,
            sns_message_id: n.sns_message_id,
            created_at: n.created_at,
            sent_at: n.sent_at,
        }
    }
}

/// Filter of `notifications`.
#[derive(InputObject, Clone, Debug, Default)]
pub struct NotificationFilter {
    /// Only notifications in this state.
    pub status: Option<NotificationStatusOut>,
    /// Only this event type, e.g. `secret_rotated`.
    pub event_type: Option<String>,
    /// Only this topic.
    pub topic_arn: Option<String>,
}

impl From<NotificationFilter> for notifications::NotificationFilter {
    fn from(f: NotificationFilter) -> Self {
        Self {
            status: f.status.map(Into::into),
            event_type: f.event_type,
            topic_arn: f.topic_arn,
        }
    }
}
