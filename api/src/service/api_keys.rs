//! API keys: issuance (the secret leaves this module exactly once, in the return value),
//! rotation with a grace period, revocation, suspension and queries.

use chrono::{DateTime, Duration, Utc};
use entity::{api_key, policy_change::PolicyChangeOp, principal};
use proxy::keys::{PlainToken, TokenEnv, TokenKind};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, DatabaseConnection, EntityTrait, QueryFilter, Set,
    TransactionTrait,
};
use serde_json::Value;
use uuid::Uuid;

use super::{
    ServiceContext,
    auth::Actor,
    feed::{self, kind},
    page::{self, Direction, Page, PageRequest},
    validate,
};
use crate::graphql::error::{ApiError, ApiResult, DbResultExt};

/// Longest rotation grace period.
pub const MAX_GRACE_SECONDS: i64 = 30 * 24 * 3600;

/// Lifecycle state of a key, derived from its timestamps (revoked > expired > suspended).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    /// Usable.
    Active,
    /// Revoked for good.
    Revoked,
    /// Past its expiry.
    Expired,
    /// Temporarily disabled.
    Suspended,
}

/// The state of `key` at `now`.
pub fn state_of(key: &api_key::Model, now: DateTime<Utc>) -> KeyState {
    if key.revoked_at.is_some() {
        KeyState::Revoked
    } else if key.expires_at.is_some_and(|at| at <= now) {
        KeyState::Expired
    } else if key.suspended_at.is_some() {
        KeyState::Suspended
    } else {
        KeyState::Active
    }
}

/// What `issue` needs; validated by [`issue`].
#[derive(Debug, Clone)]
pub struct NewApiKey {
    /// Owner.
    pub principal_id: Uuid,
    /// Label.
    pub name: String,
    /// Optional expiry (must be in the future).
    pub expires_at: Option<DateTime<Utc>>,
    /// Requests per minute and burst.
    pub rate_limit: Option<(i64, i64)>,
    /// Usage quota.
    pub remaining_uses: Option<i64>,
    /// Quota refill: amount every interval (seconds).
    pub refill: Option<(i64, i64)>,
    /// Free-form object.
    pub metadata: Option<Value>,
    /// Environment marker of the generated key.
    pub environment: TokenEnv,
}

/// Filter of [`list`].
#[derive(Debug, Clone, Default)]
pub struct KeyFilter {
    /// Only keys of this principal.
    pub principal_id: Option<Uuid>,
    /// Only keys in this state.
    pub state: Option<KeyState>,
}

/// Issues a key; returns the secret (show it once, never store it) and the stored row.
#[tracing::instrument(skip_all, fields(principal_id = %input.principal_id))]
pub async fn issue(
    services: &ServiceContext,
    actor: &Actor,
    input: NewApiKey,
) -> ApiResult<(PlainToken, api_key::Model)> {
    let now = Utc::now();
    let name = validate::text("input.name", &input.name)?;
    let expires_at = validate::future("input.expiresAt", input.expires_at, now)?;
    let metadata = validate::metadata("input.metadata", input.metadata)?;
    let rate_limit = input
        .rate_limit
        .map(|(per_minute, burst)| {
            Ok::<_, ApiError>((
                validate::positive("input.rateLimit.perMinute", per_minute, 1_000_000)? as i32,
                validate::positive("input.rateLimit.burst", burst, 1_000_000)? as i32,
            ))
        })
        .transpose()?;
    let remaining_uses = input
        .remaining_uses
        .map(|uses| {
            if uses < 0 {
                Err(ApiError::invalid(
                    "input.remainingUses",
                    "must not be negative",
                ))
            } else {
                Ok(uses)
            }
        })
        .transpose()?;
    let refill = input
        .refill
        .map(|(amount, interval)| {
            Ok::<_, ApiError>((
                validate::positive("input.refill.amount", amount, i64::from(i32::MAX))?,
                validate::positive(
                    "input.refill.intervalSeconds",
                    interval,
                    i64::from(i32::MAX),
                )?,
            ))
        })
        .transpose()?;
    if refill.is_some() && remaining_uses.is_none() {
        return Err(ApiError::invalid(
            "input.refill",
            "a refill needs remainingUses",
        ));
    }

    let txn = services.db.begin().await?;
    principal::Entity::find_by_id(input.principal_id)
        .one(&txn)
        .await?
        .ok_or_else(|| ApiError::not_found("principal", input.principal_id))?;
    let token = PlainToken::generate(TokenKind::ApiKey, input.environment);
    let key = api_key::ActiveModel {
        expires_at: Set(expires_at),
        rate_limit_per_minute: Set(rate_limit.map(|r| r.0)),
        rate_limit_burst: Set(rate_limit.map(|r| r.1)),
        remaining_uses: Set(remaining_uses),
        refill_amount: Set(refill.map(|r| r.0)),
        refill_interval_seconds: Set(refill.map(|r| r.1)),
        last_refill_at: Set(refill.map(|_| now)),
        metadata: Set(metadata),
        created_by: Set(Some(actor.principal_id)),
        ..api_key::ActiveModel::new_key(api_key::NewKey {
            id: Uuid::now_v7(),
            principal_id: input.principal_id,
            name: &name,
            prefix: token.lookup_prefix(),
            hash: services.hasher.hash(token.as_parsed()).to_hex(),
            environment: input.environment.as_str(),
            now,
        })
    }
    .insert(&txn)
    .await
    .on_conflict(|| "a key with this prefix exists; retry".into())?;
    feed::record(&txn, kind::API_KEY, key.id, PolicyChangeOp::Upsert).await?;
    txn.commit().await?;
    Ok((token, key))
}

/// Issues a successor of key `id` (same owner and settings, `rotated_from` = `id`) and lets
/// the old key expire after `grace_seconds` (0 ..= 30 days): both work until then.
#[tracing::instrument(skip_all, fields(key_id = %id))]
pub async fn rotate(
    services: &ServiceContext,
    actor: &Actor,
    id: Uuid,
    grace_seconds: i64,
) -> ApiResult<(PlainToken, api_key::Model)> {
    if !(0..=MAX_GRACE_SECONDS).contains(&grace_seconds) {
        return Err(ApiError::invalid(
            "gracePeriodSeconds",
            format!("must be between 0 and {MAX_GRACE_SECONDS}"),
        ));
    }
    let now = Utc::now();
    let txn = services.db.begin().await?;
    let old = find(&txn, id).await?;
    if matches!(state_of(&old, now), KeyState::Revoked | KeyState::Expired) {
        return Err(ApiError::Conflict(
            "a revoked or expired key cannot be rotated".into(),
        ));
    }
    let environment = old.environment.parse().unwrap_or(TokenEnv::Live);
    let token = PlainToken::generate(TokenKind::ApiKey, environment);
    let grace_end = now + Duration::seconds(grace_seconds);
    let successor = api_key::ActiveModel {
        // A rotation does not lift an expiry or a suspension.
        expires_at: Set(old.expires_at),
        suspended_at: Set(old.suspended_at),
        suspended_reason: Set(old.suspended_reason.clone()),
        created_by: Set(Some(actor.principal_id)),
        ..api_key::ActiveModel::successor_of(
            &old,
            api_key::NewKey {
                id: Uuid::now_v7(),
                principal_id: old.principal_id,
                name: &old.name,
                prefix: token.lookup_prefix(),
                hash: services.hasher.hash(token.as_parsed()).to_hex(),
                environment: environment.as_str(),
                now,
            },
        )
    }
    .insert(&txn)
    .await
    .on_conflict(|| "a key with this prefix exists; retry".into())?;
    let old_expiry = old.expires_at;
    let mut old: api_key::ActiveModel = old.into();
    old.expires_at = Set(Some(old_expiry.map_or(grace_end, |at| at.min(grace_end))));
    old.updated_at = Set(now);
    let old = old.update(&txn).await?;
    feed::record(&txn, kind::API_KEY, old.id, PolicyChangeOp::Upsert).await?;
    feed::record(&txn, kind::API_KEY, successor.id, PolicyChangeOp::Upsert).await?;
    txn.commit().await?;
    Ok((token, successor))
}

/// Revokes key `id` for good.
#[tracing::instrument(skip_all, fields(key_id = %id))]
pub async fn revoke(db: &DatabaseConnection, id: Uuid, reason: &str) -> ApiResult<api_key::Model> {
    let reason = validate::text("reason", reason)?;
    update_state(db, id, |key, now| {
        if key.revoked_at.is_some() {
            return Err(ApiError::Conflict("the key is already revoked".into()));
        }
        let mut active: api_key::ActiveModel = key.clone().into();
        active.revoked_at = Set(Some(now));
        active.revoked_reason = Set(Some(reason.clone()));
        Ok(active)
    })
    .await
}

/// Suspends key `id` until [`resume`].
#[tracing::instrument(skip_all, fields(key_id = %id))]
pub async fn suspend(db: &DatabaseConnection, id: Uuid, reason: &str) -> ApiResult<api_key::Model> {
    let reason = validate::text("reason", reason)?;
    update_state(db, id, |key, now| {
        if key.revoked_at.is_some() {
            return Err(ApiError::Conflict("the key is revoked".into()));
        }
        let mut active: api_key::ActiveModel = key.clone().into();
        active.suspended_at = Set(Some(now));
        active.suspended_reason = Set(Some(reason.clone()));
        Ok(active)
    })
    .await
}

/// Lifts the suspension of key `id`.
#[tracing::instrument(skip_all, fields(key_id = %id))]
pub async fn resume(db: &DatabaseConnection, id: Uuid) -> ApiResult<api_key::Model> {
    update_state(db, id, |key, _| {
        if key.revoked_at.is_some() {
            return Err(ApiError::Conflict("the key is revoked".into()));
        }
        let mut active: api_key::ActiveModel = key.clone().into();
        active.suspended_at = Set(None);
        active.suspended_reason = Set(None);
        Ok(active)
    })
    .await
}

async fn update_state(
    db: &DatabaseConnection,
    id: Uuid,
    change: impl FnOnce(&api_key::Model, DateTime<Utc>) -> ApiResult<api_key::ActiveModel>,
) -> ApiResult<api_key::Model> {
    let now = Utc::now();
    let txn = db.begin().await?;
    let key = find(&txn, id).await?;
    let mut active = change(&key, now)?;
    active.updated_at = Set(now);
    let key = active.update(&txn).await?;
    feed::record(&txn, kind::API_KEY, key.id, PolicyChangeOp::Upsert).await?;
    txn.commit().await?;
    Ok(key)
}

async fn find<C: sea_orm::ConnectionTrait>(db: &C, id: Uuid) -> ApiResult<api_key::Model> {
    api_key::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| ApiError::not_found("api key", id))
}

/// Key `id`.
pub async fn get(db: &DatabaseConnection, id: Uuid) -> ApiResult<api_key::Model> {
    find(db, id).await
}

/// Keys matching `filter`, oldest first.
pub async fn list(
    db: &DatabaseConnection,
    filter: &KeyFilter,
    page: &PageRequest<Uuid>,
) -> ApiResult<Page<api_key::Model>> {
    let now = Utc::now();
    let mut select = api_key::Entity::find();
    if let Some(principal_id) = filter.principal_id {
        select = select.filter(api_key::Column::PrincipalId.eq(principal_id));
    }
    let unexpired = Condition::any()
        .add(api_key::Column::ExpiresAt.is_null())
        .add(api_key::Column::ExpiresAt.gt(now));
    select = match filter.state {
        None => select,
        Some(KeyState::Revoked) => select.filter(api_key::Column::RevokedAt.is_not_null()),
        Some(KeyState::Expired) => select
            .filter(api_key::Column::RevokedAt.is_null())
            .filter(api_key::Column::ExpiresAt.lte(now)),
        Some(KeyState::Suspended) => select
            .filter(api_key::Column::RevokedAt.is_null())
            .filter(api_key::Column::SuspendedAt.is_not_null())
            .filter(unexpired),
        Some(KeyState::Active) => select
            .filter(api_key::Column::RevokedAt.is_null())
            .filter(api_key::Column::SuspendedAt.is_null())
            .filter(unexpired),
    };
    Ok(page::fetch(db, select, api_key::Column::Id, Direction::Ascending, page).await?)
}
