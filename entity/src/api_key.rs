//! `api_key`: a long-lived credential of one principal.
//!
//! THE SECRET IS NEVER STORED: only its visible `prefix` (the lookup id) and `hash`, the hex
//! HMAC-SHA-256 of the full key under the server pepper.

use sea_orm::entity::prelude::*;

/// One row of `api_key`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "api_key")]
pub struct Model {
    /// Application-generated UUID v7.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Owner; the key acts with this principal's bindings.
    pub principal_id: Uuid,
    /// Label chosen at issuance.
    pub name: String,
    /// Visible, unique lookup id, e.g. `pk_live_AbC123xyz789` (`uq_api_key_prefix`).
    pub prefix: String,
    /// Hex HMAC-SHA-256(pepper, full key). Compare in constant time.
    pub hash: String,
    /// Environment the key was issued for (`live`, `test`, ...).
    pub environment: String,
    /// JSON array of permission-name strings the key is narrowed to; empty = no narrowing.
    pub scopes: Json,
    /// The key stops working at this instant.
    pub expires_at: Option<DateTimeUtc>,
    /// Set when revoked; a revoked key never works again.
    pub revoked_at: Option<DateTimeUtc>,
    /// Why it was revoked.
    pub revoked_reason: Option<String>,
    /// Set while suspended (for example by remediation); clearing it restores the key.
    pub suspended_at: Option<DateTimeUtc>,
    /// Why it was suspended.
    pub suspended_reason: Option<String>,
    /// Last time the proxy accepted the key (updated coarsely).
    pub last_used_at: Option<DateTimeUtc>,
    /// Client IP of that last use.
    pub last_used_ip: Option<String>,
    /// Per-key rate limit (requests per minute); `None` = the route's or the default.
    pub rate_limit_per_minute: Option<i32>,
    /// Per-key burst size; `None` = the route's or the default.
    pub rate_limit_burst: Option<i32>,
    /// Remaining number of requests for usage-capped keys; `None` = unlimited.
    pub remaining_uses: Option<i64>,
    /// `remaining_uses` is reset to this once `refill_interval_seconds` have passed since
    /// `last_refill_at` (at the key's next use).
    pub refill_amount: Option<i64>,
    /// Refill period in seconds.
    pub refill_interval_seconds: Option<i64>,
    /// When `remaining_uses` was last refilled.
    pub last_refill_at: Option<DateTimeUtc>,
    /// Free-form JSON object supplied at issuance.
    pub metadata: Json,
    /// The key this one replaced during a rotation (ON DELETE SET NULL).
    pub rotated_from: Option<Uuid>,
    /// Principal who issued the key (no foreign key: the record outlives the issuer).
    pub created_by: Option<Uuid>,
    /// When the key was issued.
    pub created_at: DateTimeUtc,
    /// When the row was last changed.
    pub updated_at: DateTimeUtc,
}

/// Foreign keys of `api_key`, and those pointing at it.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// `principal_id` → `principal.id`, ON DELETE CASCADE.
    #[sea_orm(
        belongs_to = "super::principal::Entity",
        from = "Column::PrincipalId",
        to = "super::principal::Column::Id",
        on_delete = "Cascade",
        fk_name = "fk_api_key_principal_id"
    )]
    Principal,
    /// `rotated_from` → `api_key.id`, ON DELETE SET NULL.
    #[sea_orm(
        belongs_to = "Entity",
        from = "Column::RotatedFrom",
        to = "Column::Id",
        on_delete = "SetNull",
        fk_name = "fk_api_key_rotated_from"
    )]
    RotatedFrom,
    /// Rate-limit overrides for this key (`rate_limit_override.api_key_id`).
    #[sea_orm(has_many = "super::rate_limit_override::Entity")]
    RateLimitOverride,
    /// Secrets Manager entries backing this key (`managed_secret.api_key_id`).
    #[sea_orm(has_many = "super::managed_secret::Entity")]
    ManagedSecret,
}

impl Related<super::principal::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Principal.def()
    }
}

impl Related<super::rate_limit_override::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::RateLimitOverride.def()
    }
}

impl Related<super::managed_secret::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::ManagedSecret.def()
    }
}

/// From a key to the key it replaced: `key.find_linked(api_key::RotatedFrom)`.
#[derive(Clone, Copy, Debug)]
pub struct RotatedFrom;

impl Linked for RotatedFrom {
    type FromEntity = Entity;
    type ToEntity = Entity;

    fn link(&self) -> Vec<RelationDef> {
        vec![Relation::RotatedFrom.def()]
    }
}

impl ActiveModelBehavior for ActiveModel {}

/// The columns every new key row needs; see [`ActiveModel::new_key`].
#[derive(Debug, Clone)]
pub struct NewKey<'a> {
    /// Row id (UUID v7).
    pub id: Uuid,
    /// Owner.
    pub principal_id: Uuid,
    /// Label.
    pub name: &'a str,
    /// Visible lookup prefix.
    pub prefix: &'a str,
    /// Hex HMAC of the secret.
    pub hash: String,
    /// Environment marker (`live`, `test`, `dev`).
    pub environment: &'a str,
    /// Creation time.
    pub now: DateTimeUtc,
}

impl ActiveModel {
    /// A new active key with no expiry, limits, quota, scopes or metadata; callers set the
    /// optional columns they need on the result.
    pub fn new_key(key: NewKey<'_>) -> Self {
        use sea_orm::ActiveValue::Set;
        Self {
            id: Set(key.id),
            principal_id: Set(key.principal_id),
            name: Set(key.name.to_owned()),
            prefix: Set(key.prefix.to_owned()),
            hash: Set(key.hash),
            environment: Set(key.environment.to_owned()),
            scopes: Set(serde_json::json!([])),
            expires_at: Set(None),
            revoked_at: Set(None),
            revoked_reason: Set(None),
            suspended_at: Set(None),
            suspended_reason: Set(None),
            last_used_at: Set(None),
            last_used_ip: Set(None),
            rate_limit_per_minute: Set(None),
            rate_limit_burst: Set(None),
            remaining_uses: Set(None),
            refill_amount: Set(None),
            refill_interval_seconds: Set(None),
            last_refill_at: Set(None),
            metadata: Set(serde_json::json!({})),
            rotated_from: Set(None),
            created_by: Set(None),
            created_at: Set(key.now),
            updated_at: Set(key.now),
        }
    }

    /// The successor of `old` in a rotation: a new secret (in `key`) that keeps the old key's
    /// scopes, limits, quota and metadata, and records `rotated_from`.
    pub fn successor_of(old: &Model, key: NewKey<'_>) -> Self {
        use sea_orm::ActiveValue::Set;
        Self {
            scopes: Set(old.scopes.clone()),
            rate_limit_per_minute: Set(old.rate_limit_per_minute),
            rate_limit_burst: Set(old.rate_limit_burst),
            remaining_uses: Set(old.remaining_uses),
            refill_amount: Set(old.refill_amount),
            refill_interval_seconds: Set(old.refill_interval_seconds),
            last_refill_at: Set(old.last_refill_at),
            metadata: Set(old.metadata.clone()),
            rotated_from: Set(Some(old.id)),
            ..Self::new_key(key)
        }
    }
}
