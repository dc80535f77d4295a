//! The SNS notification outbox, read-only: what was (or will be) published, and how delivery
//! went.

use entity::notification_outbox::{self, OutboxStatus};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};

use super::page::{self, Direction, Page, PageRequest};
use crate::graphql::error::ApiResult;

/// Filter of [`list`].
#[derive(Debug, Clone, Default)]
pub struct NotificationFilter {
    /// Only rows in this delivery state.
    pub status: Option<OutboxStatus>,
    /// Only this `event_type`, e.g. `secret_rotated`.
    pub event_type: Option<String>,
    /// Only this topic.
    pub topic_arn: Option<String>,
}

/// Outbox rows matching `filter`, newest first (ids increase with delivery order).
pub async fn list(
    db: &DatabaseConnection,
    filter: &NotificationFilter,
    page: &PageRequest<i64>,
) -> ApiResult<Page<notification_outbox::Model>> {
    let mut select = notification_outbox::Entity::find();
    if let Some(status) = filter.status {
        select = select.filter(notification_outbox::Column::Status.eq(status));
    }
    if let Some(event_type) = &filter.event_type {
        select = select.filter(notification_outbox::Column::EventType.eq(event_type.as_str()));
    }
    if let Some(topic_arn) = &filter.topic_arn {
        select = select.filter(notification_outbox::Column::TopicArn.eq(topic_arn.as_str()));
    }
    Ok(page::fetch(
        db,
        select,
        notification_outbox::Column::Id,
        Direction::Descending,
        page,
    )
    .await?)
}
