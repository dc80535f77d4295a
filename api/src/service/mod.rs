//! Business operations shared by GraphQL resolvers, webhooks and jobs. Services own
//! transactions: every write that affects enforcement appends to the change feed
//! ([`feed::record`]) in the same transaction.

pub mod access;
pub mod api_keys;
pub mod audit;
pub mod auth;
pub mod feed;
pub mod grants;
pub mod ip_rules;
pub mod managed_secrets;
pub mod management;
pub mod notifications;
pub mod page;
pub mod playbooks;
pub mod principals;
pub mod roles;
pub mod routes;
pub mod validate;

use std::sync::Arc;

use proxy::{cache::PolicyCache, keys::KeyHasher, oidc::OidcVerifier};
use sea_orm::DatabaseConnection;

/// What services need besides their arguments; cheap to clone, one per process.
#[derive(Clone)]
pub struct ServiceContext {
    /// The database.
    pub db: DatabaseConnection,
    /// The proxy's policy cache, kept current from the change feed; authorizes management
    /// calls exactly as the proxy authorizes requests.
    pub cache: Arc<PolicyCache>,
    /// Hashes issued keys and verifies presented ones (server pepper).
    pub hasher: KeyHasher,
    /// Hashes incident-grant tokens (the token signing key, as the proxy verifies them).
    pub grant_hasher: KeyHasher,
    /// Verifies OIDC bearer tokens, when OIDC is configured.
    pub oidc: Option<Arc<OidcVerifier>>,
    /// How the proxies normalise request paths, so `simulateAccess` decides as they do.
    pub normalize: proxy::normalize::NormalizeOptions,
    /// Limits of incident grants.
    pub grants: grants::GrantsConfig,
    /// The SNS topic grant requests and approvals are announced on, when configured.
    pub notify_topic_arn: Option<String>,
    /// The remediation engine, when this process runs one (`portcullis dev`); `None` makes
    /// the remediation mutations answer `UNAVAILABLE`.
    pub remediation: Option<crate::remediation::Engine>,
}

impl ServiceContext {
    /// The remediation engine (and with it the secret store), or `UNAVAILABLE` when this
    /// process runs none.
    pub fn engine(&self) -> crate::graphql::error::ApiResult<&crate::remediation::Engine> {
        self.remediation.as_ref().ok_or_else(|| {
            crate::graphql::error::ApiError::Unavailable(
                "remediation and Secrets Manager are not available on this server (run \
                 `portcullis dev`, or the API with a remediation engine)"
                    .into(),
            )
        })
    }
}
