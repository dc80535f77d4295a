//! Authentication: which credential the request presents, and whom it proves.
//!
//! Every failure answers the client with the same 401 (a caller learns nothing from probing);
//! the precise [`AuthFailure`] goes to the audit trail and the detectors.

use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderName, header};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use uuid::Uuid;

use crate::{
    cache::{CacheError, KeyEntry, PolicyCache},
    error::ProxyError,
    keys::{KeyHasher, PlainToken, TokenFormatError, TokenKind},
    routes::AuthMethod,
};

/// Why authentication failed (audited, never shown to the client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthFailure {
    /// No credential at all.
    MissingCredential,
    /// The credential is not well formed (bad prefix, length or checksum).
    MalformedKey(TokenFormatError),
    /// Well formed, but no key has this prefix.
    UnknownKey,
    /// The prefix exists but the secret does not match.
    WrongSecret,
    /// The key was revoked.
    KeyRevoked,
    /// The key is past its expiry.
    KeyExpired,
    /// The key is suspended.
    KeySuspended,
    /// The owner is disabled or gone.
    PrincipalDisabled,
    /// The route does not accept this kind of credential.
    MethodNotAccepted,
    /// An OIDC token did not verify (the reason is its `jwt_*`/`oidc_*` code).
    Oidc(crate::oidc::OidcError),
    /// A valid OIDC token for a subject no user principal is linked to (never auto-provisioned).
    OidcUnknownSubject,
    /// A well-formed grant token whose prefix matches no grant.
    UnknownGrant,
    /// The grant exists but is not approved, or was revoked, or has expired.
    GrantNotActive,
}

impl AuthFailure {
    /// Stable code for audit records and security events.
    pub fn code(&self) -> &'static str {
        match self {
            Self::MissingCredential => "missing_credential",
            Self::MalformedKey(_) => "malformed_key",
            Self::UnknownKey => "unknown_key",
            Self::WrongSecret => "wrong_secret",
            Self::KeyRevoked => "key_revoked",
            Self::KeyExpired => "key_expired",
            Self::KeySuspended => "key_suspended",
            Self::PrincipalDisabled => "principal_disabled",
            Self::MethodNotAccepted => "auth_method_not_accepted",
            Self::Oidc(error) => error.code(),
            Self::OidcUnknownSubject => "oidc_unknown_subject",
            Self::UnknownGrant => "unknown_grant",
            Self::GrantNotActive => "grant_not_active",
        }
    }
}

/// The credential a request presents, before verification.
#[derive(Debug, PartialEq, Eq)]
pub enum Presented<'a> {
    /// An API key from `Authorization: Bearer` or `x-api-key`.
    ApiKey(&'a str),
    /// An incident-grant token (`pg_…`).
    GrantToken(&'a str),
    /// Another bearer token (an OIDC JWT).
    Bearer(&'a str),
}

/// Reads the credential, refusing ambiguity: two `Authorization` headers, two `x-api-key`
/// headers, or both headers carrying different values.
pub fn presented(headers: &HeaderMap) -> Result<Option<Presented<'_>>, ProxyError> {
    let single = |name: HeaderName| -> Result<Option<&str>, ProxyError> {
        let mut values = headers.get_all(name).iter();
        let first = values.next();
        if values.next().is_some() {
            return Err(ProxyError::AmbiguousRequest(
                "more than one credential header",
            ));
        }
        first
            .map(|v| {
                v.to_str()
                    .map_err(|_| ProxyError::AmbiguousRequest("credential header is not ASCII"))
            })
            .transpose()
    };
    let authorization = single(header::AUTHORIZATION)?;
    let api_key = single(crate::forward::X_API_KEY)?.map(str::trim);
    let bearer = match authorization {
        Some(value) => match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Some(token.trim()),
            // Basic or other schemes are not ours to accept; treat as no usable credential.
            _ => None,
        },
        None => None,
    };
    match (bearer, api_key) {
        (Some(a), Some(b)) if a != b => {
            Err(ProxyError::AmbiguousRequest("two different credentials"))
        }
        (Some(token), _) | (None, Some(token)) if token.starts_with("pk_") => {
            Ok(Some(Presented::ApiKey(token)))
        }
        (None, Some(token)) => Ok(Some(Presented::ApiKey(token))),
        (Some(token), _) if token.starts_with("pg_") => Ok(Some(Presented::GrantToken(token))),
        (Some(token), _) => Ok(Some(Presented::Bearer(token))),
        (None, None) => Ok(None),
    }
}

/// Who a verified credential speaks for.
#[derive(Debug, Clone)]
pub struct Authenticated {
    /// The principal.
    pub principal_id: Uuid,
    /// The key, when authenticated by API key.
    pub key_id: Option<Uuid>,
    /// The grant, when authenticated by grant token.
    pub grant_id: Option<Uuid>,
    /// How.
    pub method: AuthMethod,
    /// Per-key rate limit, if the key has one.
    pub key_rate_limit: Option<(u32, u32)>,
    /// Whether each use spends the remaining-uses quota of `budget_key_id`.
    pub has_quota: bool,
    /// The key whose rate-limit bucket and quota the request spends: the key itself, or the
    /// newest successor of a rotated key (see [`crate::cache::KeyEntry::budget_id`]).
    pub budget_key_id: Option<Uuid>,
    /// Groups the credential itself proves (OIDC groups claim), added to the stored
    /// memberships for this request only. Empty for API keys.
    pub extra_group_ids: Vec<crate::policy::PrincipalId>,
    /// When the credential itself stops being accepted: the key's expiry; for a JWT, the
    /// first whole second past `exp` plus the configured leeway.
    /// `None` for a grant token, whose grant's expiry is the principal's to report.
    pub expires_at: Option<DateTime<Utc>>,
}

/// An authentication failure that still identifies the key or principal (for audit).
#[derive(Debug)]
pub struct Refused {
    /// Why.
    pub error: ProxyError,
    /// The key involved, if it was found.
    pub key_id: Option<Uuid>,
    /// Its owner.
    pub principal_id: Option<Uuid>,
}

impl From<ProxyError> for Refused {
    fn from(error: ProxyError) -> Self {
        Self {
            error,
            key_id: None,
            principal_id: None,
        }
    }
}

impl From<CacheError> for ProxyError {
    fn from(error: CacheError) -> Self {
        match error {
            CacheError::Stale => ProxyError::PolicyStale,
            CacheError::LookupsLimited(decision) => ProxyError::RateLimited {
                retry_after: decision.retry_after.unwrap_or_default(),
                limit: decision.limit,
                reset: decision.reset,
            },
            // Cannot tell who is calling without the database: fail closed.
            CacheError::Database(e) => {
                tracing::warn!(error = %e, "policy lookup failed");
                ProxyError::PolicyStale
            }
        }
    }
}

fn unauthenticated(failure: AuthFailure) -> ProxyError {
    ProxyError::Unauthenticated(failure)
}

/// Verifies an API key: offline format check, cached lookup, constant-time HMAC comparison,
/// then state (revoked, expired, suspended).
pub async fn verify_api_key(
    cache: &PolicyCache,
    hasher: &KeyHasher,
    raw: &str,
    client: std::net::IpAddr,
    now: DateTime<Utc>,
) -> Result<std::sync::Arc<KeyEntry>, Refused> {
    let token =
        PlainToken::parse(raw).map_err(|e| unauthenticated(AuthFailure::MalformedKey(e)))?;
    if token.kind() != TokenKind::ApiKey {
        return Err(
            unauthenticated(AuthFailure::MalformedKey(TokenFormatError::UnknownProduct)).into(),
        );
    }
    let Some(entry) = cache
        .key(token.lookup_prefix(), client)
        .await
        .map_err(ProxyError::from)?
    else {
        return Err(unauthenticated(AuthFailure::UnknownKey).into());
    };
    let refuse = |failure| Refused {
        error: unauthenticated(failure),
        key_id: Some(entry.id),
        principal_id: Some(entry.principal_id),
    };
    if !hasher.verify(&token, &entry.hash) {
        return Err(refuse(AuthFailure::WrongSecret));
    }
    if entry.revoked {
        return Err(refuse(AuthFailure::KeyRevoked));
    }
    if entry.expires_at.is_some_and(|at| at <= now) {
        return Err(refuse(AuthFailure::KeyExpired));
    }
    if entry.suspended {
        return Err(refuse(AuthFailure::KeySuspended));
    }
    Ok(entry)
}

/// Verifies an incident-grant token: offline format check, cached lookup by prefix,
/// constant-time HMAC comparison, then the grant must be among the owner's active grants
/// (approved, not revoked, not expired at `now`).
pub async fn verify_grant_token(
    cache: &PolicyCache,
    hasher: &KeyHasher,
    raw: &str,
    client: std::net::IpAddr,
    now: DateTime<Utc>,
) -> Result<Authenticated, Refused> {
    let token =
        PlainToken::parse(raw).map_err(|e| unauthenticated(AuthFailure::MalformedKey(e)))?;
    if token.kind() != TokenKind::IncidentGrant {
        return Err(
            unauthenticated(AuthFailure::MalformedKey(TokenFormatError::UnknownProduct)).into(),
        );
    }
    let Some(entry) = cache
        .grant_token(token.lookup_prefix(), client)
        .await
        .map_err(ProxyError::from)?
    else {
        return Err(unauthenticated(AuthFailure::UnknownGrant).into());
    };
    let refuse = |failure| Refused {
        error: unauthenticated(failure),
        key_id: None,
        principal_id: Some(entry.principal_id),
    };
    if !hasher.verify(&token, &entry.hash) {
        return Err(refuse(AuthFailure::WrongSecret));
    }
    let owner = cache
        .principal(entry.principal_id, now)
        .await
        .map_err(ProxyError::from)?;
    let active = owner.is_some_and(|p| {
        !p.disabled
            && p.grants
                .iter()
                .any(|g| g.id == entry.grant_id && g.is_active_at(now))
    });
    if !active {
        return Err(refuse(AuthFailure::GrantNotActive));
    }
    Ok(Authenticated {
        principal_id: entry.principal_id,
        key_id: None,
        grant_id: Some(entry.grant_id.0),
        method: AuthMethod::Grant,
        key_rate_limit: None,
        has_quota: false,
        budget_key_id: None,
        extra_group_ids: Vec::new(),
        expires_at: None,
    })
}

/// Spends one use of a quota-limited key, refilling it first when its period has passed.
/// Both statements are single atomic UPDATEs, so concurrent requests on any number of proxy
/// instances can never spend more uses than the key has.
pub async fn spend_quota(
    db: &DatabaseConnection,
    key_id: Uuid,
    now: DateTime<Utc>,
) -> Result<bool, sea_orm::DbErr> {
    let backend = db.get_database_backend();
    let (refill, spend) = match backend {
        DbBackend::Postgres => (
            "UPDATE api_key SET remaining_uses = refill_amount, last_refill_at = $1 \
             WHERE id = $2 AND refill_amount IS NOT NULL AND refill_interval_seconds IS NOT NULL \
             AND (last_refill_at IS NULL OR last_refill_at + make_interval(secs => refill_interval_seconds) <= $1)",
            "UPDATE api_key SET remaining_uses = remaining_uses - 1 WHERE id = $1 AND remaining_uses > 0",
        ),
        _ => (
            "UPDATE api_key SET remaining_uses = refill_amount, last_refill_at = ?1 \
             WHERE id = ?2 AND refill_amount IS NOT NULL AND refill_interval_seconds IS NOT NULL \
             AND (last_refill_at IS NULL OR julianday(last_refill_at) + refill_interval_seconds / 86400.0 <= julianday(?1))",
            "UPDATE api_key SET remaining_uses = remaining_uses - 1 WHERE id = ?1 AND remaining_uses > 0",
        ),
    };
    db.execute_raw(Statement::from_sql_and_values(
        backend,
        refill,
        [now.into(), key_id.into()],
    ))
    .await?;
    let spent = db
        .execute_raw(Statement::from_sql_and_values(
            backend,
            spend,
            [key_id.into()],
        ))
        .await?;
    Ok(spent.rows_affected() == 1)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    /// On SQLite and, with `TEST_DATABASE_URL`, PostgreSQL: a spent quota is reset to the
    /// refill amount once the interval has passed since the last refill, and not before.
    #[tokio::test]
    async fn a_quota_refills_once_its_interval_has_passed() {
        use entity::api_key;
        use sea_orm::{ActiveModelTrait, EntityTrait, Set};
        for db in migration::testing::TestDatabase::all().await {
            let db = db.migrated().await;
            let now = Utc::now();
            let key = api_key::ActiveModel {
                remaining_uses: Set(Some(0)),
                refill_amount: Set(Some(5)),
                refill_interval_seconds: Set(Some(60)),
                last_refill_at: Set(Some(now - chrono::Duration::seconds(30))),
                ..crate::test_rows::service_account_key(&db.conn, "pcl_test_quota", now).await
            }
            .insert(&db.conn)
            .await
            .expect("key")
            .id;
            let left = || async {
                api_key::Entity::find_by_id(key)
                    .one(&db.conn)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|row| row.remaining_uses)
            };
            // 30 s into a 60 s interval: nothing to spend.
            assert_eq!(spend_quota(&db.conn, key, now).await.ok(), Some(false));
            assert_eq!(left().await, Some(0));
            // 31 s later the interval has passed: reset to 5, one spent.
            let later = now + chrono::Duration::seconds(31);
            assert_eq!(spend_quota(&db.conn, key, later).await.ok(), Some(true));
            assert_eq!(left().await, Some(4));
            // The next interval counts from that refill.
            let again = later + chrono::Duration::seconds(59);
            assert_eq!(spend_quota(&db.conn, key, again).await.ok(), Some(true));
            assert_eq!(left().await, Some(3));
            db.drop_database().await;
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn bearer_and_x_api_key_are_both_accepted() {
        let h = headers(&[("authorization", "Bearer pk_live_abc")]);
        assert_eq!(
            presented(&h).ok().flatten(),
            Some(Presented::ApiKey("pk_live_abc"))
        );
        let h = headers(&[("x-api-key", "pk_live_abc")]);
        assert_eq!(
            presented(&h).ok().flatten(),
            Some(Presented::ApiKey("pk_live_abc"))
        );
        let h = headers(&[("authorization", "Bearer eyJhbGciOi")]);
        assert_eq!(
            presented(&h).ok().flatten(),
            Some(Presented::Bearer("eyJhbGciOi"))
        );
        assert_eq!(presented(&HeaderMap::new()).ok().flatten(), None);
    }

    #[test]
    fn duplicate_or_conflicting_credentials_are_ambiguous() {
        for h in [
            headers(&[
                ("authorization", "Bearer pk_a"),
                ("authorization", "Bearer pk_b"),
            ]),
            headers(&[("x-api-key", "pk_a"), ("x-api-key", "pk_a")]),
            headers(&[("authorization", "Bearer pk_a"), ("x-api-key", "pk_b")]),
        ] {
            assert!(
                matches!(presented(&h), Err(ProxyError::AmbiguousRequest(_))),
                "{h:?}"
            );
        }
        // The same key in both places is not ambiguous.
        let h = headers(&[("authorization", "Bearer pk_a"), ("x-api-key", "pk_a")]);
        assert_eq!(
            presented(&h).ok().flatten(),
            Some(Presented::ApiKey("pk_a"))
        );
    }
}
