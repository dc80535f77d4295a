//! GraphQL shapes of API keys. The secret appears only in [`IssuedApiKey`].

use async_graphql::{ComplexObject, Context, Enum, InputObject, Json, SimpleObject};
use chrono::{DateTime, Utc};
use entity::api_key;
use proxy::keys::TokenEnv;
use serde_json::Value;
use uuid::Uuid;

use crate::{
    graphql::{error::ApiResult, loaders, principals::types::PrincipalOut},
    service::api_keys::{self, KeyState},
};

/// Lifecycle state of a key.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(name = "ApiKeyState")]
pub enum ApiKeyStateOut {
    /// Usable.
    Active,
    /// Revoked for good.
    Revoked,
    /// Past its expiry.
    Expired,
    /// Temporarily disabled.
    Suspended,
}

impl From<KeyState> for ApiKeyStateOut {
    fn from(state: KeyState) -> Self {
        match state {
            KeyState::Active => Self::Active,
            KeyState::Revoked => Self::Revoked,
            KeyState::Expired => Self::Expired,
            KeyState::Suspended => Self::Suspended,
        }
    }
}

impl From<ApiKeyStateOut> for KeyState {
    fn from(state: ApiKeyStateOut) -> Self {
        match state {
            ApiKeyStateOut::Active => Self::Active,
            ApiKeyStateOut::Revoked => Self::Revoked,
            ApiKeyStateOut::Expired => Self::Expired,
            ApiKeyStateOut::Suspended => Self::Suspended,
        }
    }
}

/// Environment marker embedded in a key (`pk_live_…`, `pk_test_…`, `pk_dev_…`).
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum KeyEnvironment {
    /// Production.
    Live,
    /// Test or staging.
    Test,
    /// Local development.
    Dev,
}

impl From<KeyEnvironment> for TokenEnv {
    fn from(env: KeyEnvironment) -> Self {
        match env {
            KeyEnvironment::Live => Self::Live,
            KeyEnvironment::Test => Self::Test,
            KeyEnvironment::Dev => Self::Dev,
        }
    }
}

/// A rate limit.
#[derive(SimpleObject, Clone, Debug)]
pub struct RateLimit {
    /// Sustained requests per minute.
    pub per_minute: i64,
    /// Burst size.
    pub burst: i64,
}

/// A rate limit.
#[derive(InputObject, Clone, Debug)]
pub struct RateLimitInput {
    /// Sustained requests per minute (≥ 1).
    pub per_minute: i64,
    /// Burst size (≥ 1).
    pub burst: i64,
}

/// Periodic refill of a usage quota.
#[derive(SimpleObject, Clone, Debug)]
pub struct Refill {
    /// `remainingUses` is reset to this once the interval has passed (at the key's next use).
    pub amount: i64,
    /// Every this many seconds.
    pub interval_seconds: i64,
}

/// Periodic refill of a usage quota.
#[derive(InputObject, Clone, Debug)]
pub struct RefillInput {
    /// `remainingUses` is reset to this once the interval has passed (≥ 1).
    pub amount: i64,
    /// Every this many seconds (≥ 1).
    pub interval_seconds: i64,
}

/// An API key. Never carries the secret or its hash.
#[derive(SimpleObject, Clone, Debug)]
#[graphql(name = "ApiKey", complex)]
pub struct ApiKeyOut {
    /// Key id.
    pub id: Uuid,
    /// Owner id.
    pub principal_id: Uuid,
    /// Label.
    pub name: String,
    /// Visible lookup prefix, e.g. `pk_live_AbC123xyz789`.
    pub prefix: String,
    /// `live`, `test` or `dev`.
    pub environment: String,
    /// State now.
    pub state: ApiKeyStateOut,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// When revoked.
    pub revoked_at: Option<DateTime<Utc>>,
    /// Why revoked.
    pub revoked_reason: Option<String>,
    /// When suspended.
    pub suspended_at: Option<DateTime<Utc>>,
    /// Why suspended.
    pub suspended_reason: Option<String>,
    /// Last accepted use (updated by the proxy's audit writer).
    pub last_used_at: Option<DateTime<Utc>>,
    /// Client address of that use.
    pub last_used_ip: Option<String>,
    /// Per-key rate limit.
    pub rate_limit: Option<RateLimit>,
    /// Remaining uses of a quota-limited key.
    pub remaining_uses: Option<i64>,
    /// Quota refill.
    pub refill: Option<Refill>,
    /// Free-form metadata.
    pub metadata: Json<Value>,
    /// The key this one replaced.
    pub rotated_from_id: Option<Uuid>,
    /// Who issued it.
    pub created_by_id: Option<Uuid>,
    /// Issued at.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

#[ComplexObject]
impl ApiKeyOut {
    /// The owner.
    async fn principal(&self, ctx: &Context<'_>) -> ApiResult<Option<PrincipalOut>> {
        loaders::load_principal(ctx, self.principal_id).await
    }
}

impl From<api_key::Model> for ApiKeyOut {
    fn from(key: api_key::Model) -> Self {
        let state = api_keys::state_of(&key, Utc::now()).into();
        Self {
            id: key.id,
            principal_id: key.principal_id,
            name: key.name,
            prefix: key.prefix,
            environment: key.environment,
            state,
            expires_at: key.expires_at,
            revoked_at: key.revoked_at,
            revoked_reason: key.revoked_reason,
            suspended_at: key.suspended_at,
            suspended_reason: key.suspended_reason,
            last_used_at: key.last_used_at,
            last_used_ip: key.last_used_ip,
            rate_limit: key.rate_limit_per_minute.map(|rate| RateLimit {
                per_minute: i64::from(rate),
                burst: i64::from(key.rate_limit_burst.unwrap_or(rate)),
            }),
            remaining_uses: key.remaining_uses,
            refill: match (key.refill_amount, key.refill_interval_seconds) {
                (Some(amount), Some(interval_seconds)) => Some(Refill {
                    amount,
                    interval_seconds,
                }),
                _ => None,
            },
            metadata: Json(key.metadata),
            rotated_from_id: key.rotated_from,
            created_by_id: key.created_by,
            created_at: key.created_at,
            updated_at: key.updated_at,
        }
    }
}

/// A newly issued key: `secret` is shown here and NOWHERE ELSE, ever.
#[derive(SimpleObject)]
pub struct IssuedApiKey {
    /// The full key; store it now, it cannot be retrieved again.
    pub secret: String,
    /// The stored key.
    pub api_key: ApiKeyOut,
}

/// Input of `issueApiKey`.
#[derive(InputObject, Clone, Debug)]
pub struct IssueApiKeyInput {
    /// Owner.
    pub principal_id: Uuid,
    /// Label (≤ 256 characters).
    pub name: String,
    /// Expiry, in the future.
    pub expires_at: Option<DateTime<Utc>>,
    /// Per-key rate limit.
    pub rate_limit: Option<RateLimitInput>,
    /// Usage quota.
    pub remaining_uses: Option<i64>,
    /// Quota refill (requires `remainingUses`).
    pub refill: Option<RefillInput>,
    /// Free-form JSON object (≤ 4 KiB).
    pub metadata: Option<Json<Value>>,
    /// Environment marker; default `LIVE`.
    pub environment: Option<KeyEnvironment>,
}

impl From<IssueApiKeyInput> for api_keys::NewApiKey {
    fn from(input: IssueApiKeyInput) -> Self {
        Self {
            principal_id: input.principal_id,
            name: input.name,
            expires_at: input.expires_at,
            rate_limit: input.rate_limit.map(|r| (r.per_minute, r.burst)),
            remaining_uses: input.remaining_uses,
            refill: input.refill.map(|r| (r.amount, r.interval_seconds)),
            metadata: input.metadata.map(|m| m.0),
            environment: input.environment.unwrap_or(KeyEnvironment::Live).into(),
        }
    }
}

/// Filter of `apiKeys`.
#[derive(InputObject, Clone, Debug, Default)]
pub struct ApiKeyFilter {
    /// Only keys of this principal.
    pub principal_id: Option<Uuid>,
    /// Only keys in this state.
    pub state: Option<ApiKeyStateOut>,
}

impl From<ApiKeyFilter> for api_keys::KeyFilter {
    fn from(filter: ApiKeyFilter) -> Self {
        Self {
            principal_id: filter.principal_id,
            state: filter.state.map(Into::into),
        }
    }
}
