//! Business operations shared by GraphQL resolvers, webhooks and jobs. Services own
//! transactions: every write that affects enforcement appends to the change feed
//! ([`feed::record`]) in the same transaction.

/// `simulateAccess` and `explainPrincipal`, on the proxy's own code.
pub mod access;
/// API keys.
pub mod api_keys;
/// Audit and security events.
pub mod audit;
/// Authentication and authorization of management calls.
pub mod auth;
/// The policy change feed.
pub mod feed;
/// IP rules.
pub mod ip_rules;
/// Management permissions and builtin roles.
pub mod management;
/// Keyset pagination.
pub mod page;
/// Principals and group membership.
pub mod principals;
/// Roles, permissions and bindings.
pub mod roles;
/// Routes.
pub mod routes;
/// Input validation that names the field.
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
    /// Verifies OIDC bearer tokens, when OIDC is configured.
    pub oidc: Option<Arc<OidcVerifier>>,
}
