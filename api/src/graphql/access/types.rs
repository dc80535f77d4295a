//! GraphQL shapes of simulations and explanations.

use std::net::IpAddr;

use async_graphql::{InputObject, SimpleObject};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{
    graphql::{
        error::{ApiError, ApiResult},
        principals::types::PrincipalOut,
    },
    service::access::{EffectivePermission, SimulatedCaller, SimulatedRequest, Simulation},
};

/// The calling principal and its management permissions.
#[derive(SimpleObject, Clone, Debug)]
pub struct Me {
    /// Who is calling.
    pub principal: PrincipalOut,
    /// The API key used, if any.
    pub api_key_id: Option<Uuid>,
    /// Management permissions held from this client address right now.
    pub permissions: Vec<String>,
}

/// Input of `simulateAccess`: exactly one of `principalId` and `apiKeyId`.
#[derive(InputObject, Clone, Debug)]
pub struct SimulateAccessInput {
    /// Simulate as this principal (as if it presented a valid credential).
    pub principal_id: Option<Uuid>,
    /// Simulate as this key (its state counts: revoked, expired, suspended).
    pub api_key_id: Option<Uuid>,
    /// HTTP method, uppercase.
    pub method: String,
    /// Host header (without port).
    pub host: Option<String>,
    /// Raw request path; normalised as the proxy would.
    pub path: String,
    /// Client address; default `127.0.0.1`.
    pub source_ip: Option<String>,
}

impl TryFrom<SimulateAccessInput> for SimulatedRequest {
    type Error = ApiError;

    fn try_from(input: SimulateAccessInput) -> ApiResult<Self> {
        let caller = match (input.principal_id, input.api_key_id) {
            (Some(id), None) => SimulatedCaller::Principal(id),
            (None, Some(id)) => SimulatedCaller::ApiKey(id),
            _ => {
                return Err(ApiError::invalid(
                    "input.principalId",
                    "give exactly one of principalId and apiKeyId",
                ));
            }
        };
        let source_ip = match input.source_ip.as_deref().map(str::trim) {
            None | Some("") => IpAddr::from([127, 0, 0, 1]),
            Some(ip) => ip
                .parse()
                .map_err(|_| ApiError::invalid("input.sourceIp", "is not an IP address"))?,
        };
        Ok(Self {
            caller,
            method: input.method,
            host: input.host,
            path: input.path,
            source_ip,
        })
    }
}

/// A route, as named in a decision.
#[derive(SimpleObject, Clone, Debug)]
pub struct RouteRef {
    /// Route id.
    pub id: Uuid,
    /// Route name.
    pub name: String,
}

/// What the proxy would decide.
#[derive(SimpleObject, Clone, Debug)]
pub struct AccessDecision {
    /// Whether the request would be forwarded.
    pub allowed: bool,
    /// Human-readable reason.
    pub reason: String,
    /// Stable code: `allowed_by_binding`, `allowed_by_grant`, `no_route`, `ip_blocked`,
    /// `key_revoked`, `no_matching_permission`, ...
    pub reason_code: String,
    /// The matched route.
    pub route: Option<RouteRef>,
    /// The binding that decided.
    pub binding_id: Option<Uuid>,
    /// The grant that decided.
    pub grant_id: Option<Uuid>,
    /// The role of the deciding binding.
    pub role_id: Option<Uuid>,
    /// The path after normalisation.
    pub normalized_path: Option<String>,
}

impl From<Simulation> for AccessDecision {
    fn from(s: Simulation) -> Self {
        Self {
            allowed: s.allowed,
            reason: s.reason,
            reason_code: s.reason_code,
            route: s.route.map(|(id, name)| RouteRef { id, name }),
            binding_id: s.binding_id,
            grant_id: s.grant_id,
            role_id: s.role_id,
            normalized_path: s.normalized_path,
        }
    }
}

/// One effective permission and its source.
#[derive(SimpleObject, Clone, Debug)]
pub struct EffectivePermissionOut {
    /// `service:action`.
    pub name: String,
    /// Methods; empty = any.
    pub methods: Vec<String>,
    /// Path pattern.
    pub path_glob: String,
    /// Route scope.
    pub route_id: Option<Uuid>,
    /// Role carrying it.
    pub role_id: Option<Uuid>,
    /// Its name.
    pub role_name: Option<String>,
    /// The binding granting the role.
    pub binding_id: Option<Uuid>,
    /// The group the binding belongs to, when inherited.
    pub via_group_id: Option<Uuid>,
    /// The incident grant, when granted by one.
    pub grant_id: Option<Uuid>,
    /// When it ends.
    pub expires_at: Option<DateTime<Utc>>,
    /// CIDR condition.
    pub cidrs: Vec<String>,
    /// Applies right now.
    pub active: bool,
}

impl From<EffectivePermission> for EffectivePermissionOut {
    fn from(p: EffectivePermission) -> Self {
        Self {
            name: p.name,
            methods: p.methods,
            path_glob: p.path_glob,
            route_id: p.route_id,
            role_id: p.role.as_ref().map(|r| r.0),
            role_name: p.role.map(|r| r.1),
            binding_id: p.binding_id,
            via_group_id: p.via_group_id,
            grant_id: p.grant_id,
            expires_at: p.expires_at,
            cidrs: p.cidrs,
            active: p.active,
        }
    }
}

/// The effective permissions of a principal.
#[derive(SimpleObject, Clone, Debug)]
pub struct PrincipalExplanation {
    /// The principal.
    pub principal: PrincipalOut,
    /// Every permission it holds, with its source.
    pub permissions: Vec<EffectivePermissionOut>,
}
