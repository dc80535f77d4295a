//! The policy change feed: every write that affects enforcement appends a row here, in the same
//! transaction, so proxies can evict exactly what changed (see `proxy::cache`).

use chrono::Utc;
use entity::policy_change::{self, PolicyChangeOp};
use sea_orm::{ActiveModelTrait, ConnectionTrait, DbErr, Set};

/// Kinds of entities the feed reports: the proxy's own constants, so the two cannot drift.
pub use proxy::cache::kind;

/// Appends one change; call it inside the transaction that made the change.
pub async fn record<C: ConnectionTrait>(
    db: &C,
    entity_kind: &str,
    entity_id: impl ToString,
    op: PolicyChangeOp,
) -> Result<(), DbErr> {
    policy_change::ActiveModel {
        entity_kind: Set(entity_kind.to_owned()),
        entity_id: Set(entity_id.to_string()),
        op: Set(op),
        created_at: Set(Utc::now()),
        ..Default::default()
    }
    .insert(db)
    .await?;
    Ok(())
}
