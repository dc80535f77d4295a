//! The policy change feed: every write that affects enforcement appends a row here, in the same
//! transaction, so proxies can evict exactly what changed (see `proxy::cache`).

use chrono::Utc;
use entity::policy_change::{self, PolicyChangeOp};
use sea_orm::{ActiveModelTrait, ConnectionTrait, DbErr, Set};

/// Kinds of entities the feed reports; the proxy's cache matches on these strings.
pub mod kind {
    /// An API key (entity id = key id).
    pub const API_KEY: &str = "api_key";
    /// A principal or its group memberships (entity id = principal id).
    pub const PRINCIPAL: &str = "principal";
    /// A role binding (entity id = principal id it binds, so the proxy reloads that principal).
    pub const ROLE_BINDING: &str = "role_binding";
    /// A role or its permissions (entity id = role id).
    pub const ROLE: &str = "role";
    /// A route (entity id = route id).
    pub const ROUTE: &str = "route";
    /// An IP rule (entity id = rule id).
    pub const IP_RULE: &str = "ip_rule";
    /// An incident grant (entity id = principal id of the grantee).
    pub const INCIDENT_GRANT: &str = "incident_grant";
}

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
