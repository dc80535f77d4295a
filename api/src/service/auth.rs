//! Who is calling the management API, and whether they may: the proxy's own key
//! verification and RBAC evaluator, applied to `POST /graphql` with a management permission.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use http::{HeaderMap, Method};
use proxy::{
    authn::{self, Presented},
    error::ProxyError,
    policy::{self, PrincipalId, RequestFacts, Subject},
};
use uuid::Uuid;

use super::{ServiceContext, management};
use crate::graphql::error::{ApiError, ApiResult};

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Actor {
    /// The principal acting.
    pub principal_id: Uuid,
    /// The API key used, when authenticated by key.
    pub key_id: Option<Uuid>,
    /// Groups the credential proves on top of the stored memberships (OIDC groups claim).
    pub extra_group_ids: Vec<PrincipalId>,
}

/// Everything known about the caller of one request; put into the GraphQL request data by
/// the HTTP handler.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The authenticated principal, if any.
    pub actor: Option<Actor>,
    /// Why authentication failed (for the audit trail), when it did.
    pub failure: Option<&'static str>,
    /// Why an authenticated caller is refused anyway (its key's quota is spent, or spending
    /// it failed): every field that needs the actor answers with this.
    pub refused: Option<ApiError>,
    /// The client's address (the socket peer).
    pub client_ip: IpAddr,
    /// The request id, for correlating audit events with logs.
    pub request_id: Option<String>,
}

impl Caller {
    /// The authenticated principal, or `UNAUTHENTICATED` (or why it is refused).
    pub fn actor(&self) -> ApiResult<&Actor> {
        if let Some(refused) = &self.refused {
            return Err(refused.clone());
        }
        self.actor.as_ref().ok_or(ApiError::Unauthenticated)
    }
}

/// Verifies the bearer credential in `headers` exactly as the proxy does: an API key, or
/// (when configured) an OIDC JWT mapped to its user principal and groups. A key with a
/// remaining-uses quota spends one use per request, as at the proxy; at zero the caller is
/// refused with `QUOTA_EXHAUSTED`.
pub async fn authenticate(
    services: &ServiceContext,
    headers: &HeaderMap,
    client_ip: IpAddr,
    now: DateTime<Utc>,
) -> Caller {
    let request_id = proxy::request_id::of_headers(headers).map(str::to_owned);
    let mut refused = None;
    let result = match authn::presented(headers) {
        Ok(None) => Err("missing_credential"),
        Ok(Some(Presented::ApiKey(raw))) => {
            match authn::verify_api_key(&services.cache, &services.hasher, raw, client_ip, now)
                .await
            {
                Ok(key) => {
                    if key.has_quota {
                        refused = match authn::spend_quota(&services.db, key.budget_id, now).await {
                            Ok(true) => None,
                            Ok(false) => Some(ApiError::QuotaExhausted),
                            // Fail closed: a use that cannot be counted is not granted.
                            Err(error) => Some(ApiError::internal(error)),
                        };
                    }
                    Ok(Actor {
                        principal_id: key.principal_id,
                        key_id: Some(key.id),
                        extra_group_ids: Vec::new(),
                    })
                }
                Err(refused) => Err(failure_code(&refused.error)),
            }
        }
        Ok(Some(Presented::Bearer(token))) => match &services.oidc {
            Some(verifier) => {
                match proxy::oidc::authenticate(verifier, &services.cache, token).await {
                    Ok(identity) => Ok(Actor {
                        principal_id: identity.principal_id,
                        key_id: None,
                        extra_group_ids: identity.extra_group_ids,
                    }),
                    Err(refused) => Err(failure_code(&refused.error)),
                }
            }
            _ => Err("auth_method_not_accepted"),
        },
        // Incident-grant tokens open proxied routes, never the management API.
        Ok(Some(Presented::GrantToken(_))) => Err("auth_method_not_accepted"),
        Err(error) => Err(failure_code(&error)),
    };
    let (actor, failure) = match result {
        Ok(actor) => (Some(actor), None),
        Err(failure) => (None, Some(failure)),
    };
    Caller {
        actor,
        failure,
        refused,
        client_ip,
        request_id,
    }
}

fn failure_code(error: &ProxyError) -> &'static str {
    match error {
        ProxyError::Unauthenticated(failure) => failure.code(),
        other => other.code(),
    }
}

/// Whether `caller` holds `permission`: `UNAUTHENTICATED`, `FORBIDDEN` naming the permission,
/// or `Ok`.
pub async fn authorize(
    services: &ServiceContext,
    caller: &Caller,
    permission: &str,
) -> ApiResult<()> {
    let actor = caller.actor()?;
    let now = Utc::now();
    if held(services, actor, caller.client_ip, now, &[permission])
        .await?
        .is_empty()
    {
        return Err(ApiError::Forbidden {
            permission: permission.to_owned(),
        });
    }
    Ok(())
}

/// The management permissions `actor` holds from `client_ip` right now.
pub async fn management_permissions(
    services: &ServiceContext,
    caller: &Caller,
) -> ApiResult<Vec<&'static str>> {
    let actor = caller.actor()?;
    held(
        services,
        actor,
        caller.client_ip,
        Utc::now(),
        management::ALL,
    )
    .await
}

/// The subset of `permissions` the policy cache grants to `actor` on `POST /graphql`.
async fn held<'p>(
    services: &ServiceContext,
    actor: &Actor,
    client_ip: IpAddr,
    now: DateTime<Utc>,
    permissions: &[&'p str],
) -> ApiResult<Vec<&'p str>> {
    let principal = services
        .cache
        .principal(actor.principal_id, now)
        .await
        .map_err(ApiError::internal)?;
    let Some(principal) = principal.filter(|p| !p.disabled) else {
        return Err(ApiError::Unauthenticated);
    };
    // Groups proven by the credential (OIDC groups claim) count for this request too.
    let principal = services
        .cache
        .with_extra_groups(principal, &actor.extra_group_ids, now)
        .await
        .map_err(ApiError::internal)?;
    let snapshot = services.cache.snapshot();
    // Incident grants open proxied APIs only, never the management API (`service::grants`).
    let subject = Subject {
        principal_id: principal.id,
        group_ids: &principal.group_ids,
        bindings: &principal.bindings,
        grants: &[],
    };
    let method = Method::POST;
    Ok(permissions
        .iter()
        .copied()
        .filter(|permission| {
            let facts = RequestFacts {
                method: &method,
                path: management::GRAPHQL_PATH,
                route_id: None,
                client_ip,
                now,
                required_permission: Some(permission),
            };
            policy::evaluate(&snapshot.roles, &subject, &facts).allowed
        })
        .collect())
}
