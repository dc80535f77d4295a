//! GraphQL shapes of routes.

use async_graphql::{Enum, InputObject, MaybeUndefined, SimpleObject};
use chrono::{DateTime, Utc};
use entity::route;
use uuid::Uuid;

use crate::{
    graphql::keys::types::{RateLimit, RateLimitInput},
    service::routes::{self, RouteChanges, RouteSpec},
};

/// A credential a route accepts.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
pub enum AuthMethod {
    /// `Authorization: Bearer pk_…` or `x-api-key`.
    ApiKey,
    /// An OIDC access token.
    Oidc,
    /// An incident-grant token.
    Grant,
    /// No credential.
    Anonymous,
}

impl AuthMethod {
    fn stored(self) -> &'static str {
        match self {
            Self::ApiKey => "api_key",
            Self::Oidc => "oidc",
            Self::Grant => "grant",
            Self::Anonymous => "anonymous",
        }
    }

    fn from_stored(name: &str) -> Option<Self> {
        match name {
            "api_key" => Some(Self::ApiKey),
            "oidc" => Some(Self::Oidc),
            "grant" => Some(Self::Grant),
            "anonymous" => Some(Self::Anonymous),
            _ => None,
        }
    }
}

fn stored(methods: Vec<AuthMethod>) -> Vec<String> {
    methods.into_iter().map(|m| m.stored().to_owned()).collect()
}

/// A credential the proxy injects into upstream requests.
#[derive(SimpleObject, Clone, Debug)]
pub struct UpstreamCredential {
    /// Secrets Manager id (ARN or name) of the credential.
    pub secret_id: String,
    /// Header it is sent in.
    pub header: String,
}

/// A credential the proxy injects into upstream requests.
#[derive(InputObject, Clone, Debug)]
pub struct UpstreamCredentialInput {
    /// Secrets Manager id (ARN or name).
    pub secret_id: String,
    /// Header to send it in, e.g. `authorization`.
    pub header: String,
}

/// A route: host + path prefix + methods → upstream, with who may call it.
#[derive(SimpleObject, Clone, Debug)]
#[graphql(name = "Route")]
pub struct RouteOut {
    /// Route id.
    pub id: Uuid,
    /// Unique name.
    pub name: String,
    /// Host it is bound to; null = any.
    pub host: Option<String>,
    /// Normalised path prefix.
    pub path_prefix: String,
    /// Methods; empty = any.
    pub methods: Vec<String>,
    /// Upstream base URL.
    pub upstream_url: String,
    /// Whether the prefix is removed before forwarding.
    pub strip_prefix: bool,
    /// Accepted credentials.
    pub auth_methods: Vec<AuthMethod>,
    /// Permission every caller must hold.
    pub required_permission: Option<String>,
    /// Route rate limit.
    pub rate_limit: Option<RateLimit>,
    /// Upstream timeout in milliseconds.
    pub timeout_ms: Option<i64>,
    /// Injected upstream credential.
    pub upstream_credential: Option<UpstreamCredential>,
    /// Disabled routes are not served.
    pub enabled: bool,
    /// Created at.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

impl From<route::Model> for RouteOut {
    fn from(r: route::Model) -> Self {
        let spec = routes::spec_of(&r);
        Self {
            id: r.id,
            name: spec.name,
            host: spec.host,
            path_prefix: spec.path_prefix,
            methods: spec.methods,
            upstream_url: spec.upstream_url,
            strip_prefix: spec.strip_prefix,
            auth_methods: spec
                .auth_methods
                .iter()
                .filter_map(|m| AuthMethod::from_stored(m))
                .collect(),
            required_permission: spec.required_permission,
            rate_limit: spec
                .rate_limit
                .map(|(per_minute, burst)| RateLimit { per_minute, burst }),
            timeout_ms: spec.timeout_ms,
            upstream_credential: match (
                spec.upstream_credential_secret_id,
                spec.upstream_credential_header,
            ) {
                (Some(secret_id), Some(header)) => Some(UpstreamCredential { secret_id, header }),
                _ => None,
            },
            enabled: spec.enabled,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// Input of `createRoute`.
#[derive(InputObject, Clone, Debug)]
pub struct CreateRouteInput {
    /// Unique name.
    pub name: String,
    /// Bind to this host (no scheme, no port).
    pub host: Option<String>,
    /// Normalised path prefix, e.g. `/orders`.
    pub path_prefix: String,
    /// Methods; absent or empty = any.
    pub methods: Option<Vec<String>>,
    /// Absolute http(s) URL of the upstream.
    pub upstream_url: String,
    /// Remove the prefix before forwarding (default false).
    pub strip_prefix: Option<bool>,
    /// Accepted credentials (default `[API_KEY]`).
    pub auth_methods: Option<Vec<AuthMethod>>,
    /// Permission every caller must hold.
    pub required_permission: Option<String>,
    /// Route rate limit.
    pub rate_limit: Option<RateLimitInput>,
    /// Upstream timeout in milliseconds (1..=300000).
    pub timeout_ms: Option<i64>,
    /// Credential to inject upstream.
    pub upstream_credential: Option<UpstreamCredentialInput>,
    /// Serve the route (default true).
    pub enabled: Option<bool>,
}

impl From<CreateRouteInput> for RouteSpec {
    fn from(input: CreateRouteInput) -> Self {
        Self {
            name: input.name,
            host: input.host,
            path_prefix: input.path_prefix,
            methods: input.methods.unwrap_or_default(),
            upstream_url: input.upstream_url,
            strip_prefix: input.strip_prefix.unwrap_or(false),
            auth_methods: stored(input.auth_methods.unwrap_or(vec![AuthMethod::ApiKey])),
            required_permission: input.required_permission,
            rate_limit: input.rate_limit.map(|r| (r.per_minute, r.burst)),
            timeout_ms: input.timeout_ms,
            upstream_credential_secret_id: input
                .upstream_credential
                .as_ref()
                .map(|c| c.secret_id.clone()),
            upstream_credential_header: input.upstream_credential.map(|c| c.header),
            enabled: input.enabled.unwrap_or(true),
        }
    }
}

/// Input of `updateRoute`: absent fields are unchanged; `null` clears nullable ones.
#[derive(InputObject, Clone, Debug)]
pub struct UpdateRouteInput {
    /// New name.
    pub name: Option<String>,
    /// New host; `null` unbinds.
    pub host: MaybeUndefined<String>,
    /// New path prefix.
    pub path_prefix: Option<String>,
    /// New methods.
    pub methods: Option<Vec<String>>,
    /// New upstream.
    pub upstream_url: Option<String>,
    /// Strip the prefix.
    pub strip_prefix: Option<bool>,
    /// Accepted credentials.
    pub auth_methods: Option<Vec<AuthMethod>>,
    /// `null` clears it.
    pub required_permission: MaybeUndefined<String>,
    /// `null` clears it.
    pub rate_limit: MaybeUndefined<RateLimitInput>,
    /// `null` clears it.
    pub timeout_ms: MaybeUndefined<i64>,
    /// `null` clears it.
    pub upstream_credential: MaybeUndefined<UpstreamCredentialInput>,
    /// Serve or stop serving.
    pub enabled: Option<bool>,
}

fn change<T, U>(value: MaybeUndefined<T>, map: impl FnOnce(T) -> U) -> Option<Option<U>> {
    match value {
        MaybeUndefined::Undefined => None,
        MaybeUndefined::Null => Some(None),
        MaybeUndefined::Value(v) => Some(Some(map(v))),
    }
}

impl From<UpdateRouteInput> for RouteChanges {
    fn from(input: UpdateRouteInput) -> Self {
        Self {
            name: input.name,
            host: change(input.host, |h| h),
            path_prefix: input.path_prefix,
            methods: input.methods,
            upstream_url: input.upstream_url,
            strip_prefix: input.strip_prefix,
            auth_methods: input.auth_methods.map(stored),
            required_permission: change(input.required_permission, |p| p),
            rate_limit: change(input.rate_limit, |r| (r.per_minute, r.burst)),
            timeout_ms: change(input.timeout_ms, |t| t),
            upstream_credential: change(input.upstream_credential, |c| (c.secret_id, c.header)),
            enabled: input.enabled,
        }
    }
}
