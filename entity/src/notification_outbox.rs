//! `notification_outbox`: the transactional outbox of SNS notifications.
//!
//! Rows are written in the same transaction as the change they announce, then published by a
//! worker in `id` order; delivery is at least once, `dedup_id` lets subscribers drop repeats.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// Delivery state of a [`Model`].
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(32))")]
#[serde(rename_all = "snake_case")]
pub enum OutboxStatus {
    /// Waiting for (another) publish attempt at `next_attempt_at`.
    #[sea_orm(string_value = "pending")]
    Pending,
    /// Accepted by SNS (`sns_message_id`).
    #[sea_orm(string_value = "sent")]
    Sent,
    /// Gave up after too many attempts; see `last_error`.
    #[sea_orm(string_value = "failed")]
    Failed,
}

/// One row of `notification_outbox`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "notification_outbox")]
pub struct Model {
    /// Database-assigned, increasing delivery order. Leave it unset on insert.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// SNS topic to publish to.
    pub topic_arn: String,
    /// `MessageGroupId` for FIFO topics.
    pub message_group: Option<String>,
    /// Unique deduplication id (`uq_notification_outbox_dedup_id`); also the FIFO
    /// `MessageDeduplicationId`.
    pub dedup_id: String,
    /// Message attribute `event_type`, e.g. `key.revoked`.
    pub event_type: String,
    /// Message attribute `severity` (`low` … `critical`).
    pub severity: String,
    /// Principal the notification is about, if any, as text.
    pub principal: Option<String>,
    /// SNS `Subject`.
    pub subject: String,
    /// SNS `Message` body.
    #[sea_orm(column_type = "Text")]
    pub message: String,
    /// JSON object of extra string message attributes.
    pub attributes: Json,
    /// Pending, sent or failed.
    pub status: OutboxStatus,
    /// Publish attempts so far.
    pub attempts: i32,
    /// Error of the latest failed attempt.
    #[sea_orm(column_type = "Text", nullable)]
    pub last_error: Option<String>,
    /// When the next publish attempt is due.
    pub next_attempt_at: DateTimeUtc,
    /// `MessageId` returned by SNS.
    pub sns_message_id: Option<String>,
    /// When the row was created.
    pub created_at: DateTimeUtc,
    /// When SNS accepted it.
    pub sent_at: Option<DateTimeUtc>,
}

/// `notification_outbox` has no foreign keys.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
