//! Audit chain anchors published to SNS.
//!
//! The audit chain's hash is unkeyed: whoever can write to the database can delete the newest
//! rows, or rewrite rows and recompute every hash after them, and the chain still verifies.
//! An anchor (the tail's id and hash) kept where those writers cannot reach reveals both.
//! Once per period (`audit_anchor_every_secs`, aligned to the Unix epoch) the worker writes
//! the tail to the notification outbox, and the dispatcher publishes it to the notification
//! topic with `event_type` `audit_checkpoint`, so an SNS subscription filter can route it to
//! an archive. An anchor goes out every period, even when the chain did not grow, so a
//! missing one is itself noticed. `verifyAuditChain(anchors: …)` checks a chain against them.

use chrono::{DateTime, SecondsFormat, Utc};
use entity::{notification_outbox, security_event::Severity};
use proxy::audit::Checkpoint;
use sea_orm::{ColumnTrait, DbErr, EntityTrait, QueryFilter, SqlErr};
use serde_json::json;

use super::Engine;
use crate::outbox::{self, NewNotification};

/// The `event_type` attribute of anchor notifications.
pub const EVENT_TYPE: &str = "audit_checkpoint";

/// The period this process last published (or found published) an anchor for, so a worker
/// polling every second writes at most one outbox row per period.
#[derive(Debug, Default)]
pub struct Published(Option<i64>);

/// The body of an anchor notification: the tail, when it was published, and the GraphQL
/// query that checks the chain against it.
pub fn anchor_message(tail: &Checkpoint, published_at: DateTime<Utc>) -> serde_json::Value {
    json!({
        "event_type": EVENT_TYPE,
        "id": tail.id,
        "hash": tail.hash,
        "published_at": published_at.to_rfc3339_opts(SecondsFormat::Secs, true),
        "verify": format!(
            "{{ verifyAuditChain(toId: {id}, anchors: [{{id: {id}, hash: \"{hash}\"}}]) \
             {{ ok checked lastCheckedId anchorsMatched firstBrokenId problem }} }}",
            id = tail.id,
            hash = tail.hash,
        ),
    })
}

/// Publishes the chain's tail if the current period has no anchor yet; `true` if this call
/// wrote one. Idempotent across processes: the outbox's unique `dedup_id` names the period.
pub async fn publish_due(engine: &Engine, published: &mut Published) -> Result<bool, DbErr> {
    let every = engine.config().audit_anchor_every_secs;
    let Some(topic_arn) = engine.topic_arn().filter(|_| every > 0) else {
        return Ok(false);
    };
    let every = i64::try_from(every).unwrap_or(i64::MAX);
    let period = Utc::now().timestamp().div_euclid(every);
    if published.0 == Some(period) {
        return Ok(false);
    }
    let dedup_id = format!("audit-anchor-{every}-{period}");
    let queued = notification_outbox::Entity::find()
        .filter(notification_outbox::Column::DedupId.eq(dedup_id.as_str()))
        .one(engine.db())
        .await?;
    if queued.is_some() {
        // Another worker, or an earlier Lambda tick, anchored this period.
        published.0 = Some(period);
        return Ok(false);
    }
    let Some(tail) = proxy::audit::checkpoint(engine.db()).await? else {
        // Nothing to anchor yet; look again next time.
        return Ok(false);
    };
    let message = anchor_message(&tail, Utc::now());
    let notification = NewNotification {
        topic_arn: topic_arn.to_owned(),
        message_group: Some("audit-chain".to_owned()),
        dedup_id,
        event_type: EVENT_TYPE.to_owned(),
        severity: Severity::Low,
        principal: None,
        subject: format!("Portcullis audit chain checkpoint: event {}", tail.id),
        message: message.to_string(),
    };
    let written = match outbox::enqueue(engine.db(), notification).await {
        Ok(_) => true,
        // Another worker anchored this period since the check above.
        Err(error) if matches!(error.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            false
        }
        Err(error) => return Err(error),
    };
    published.0 = Some(period);
    if written {
        tracing::info!(id = tail.id, hash = %tail.hash, "audit chain anchor queued for SNS");
        engine.wake_outbox();
    }
    Ok(written)
}
