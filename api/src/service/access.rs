//! What-if questions answered by the proxy's own code: `simulateAccess` runs normalisation,
//! routing, IP rules, key state and the RBAC evaluator over freshly loaded policy (the same
//! loaders the proxy cache uses), and `explainPrincipal` lists effective permissions with
//! where each comes from.

use std::{collections::HashMap, net::IpAddr};

use chrono::{DateTime, Utc};
use entity::{incident_grant, permission, role};
use http::Method;
use proxy::{
    authn::AuthFailure,
    cache::{self, PrincipalEntry},
    normalize::{self, NormalizeOptions},
    policy::{self, Reason, RequestFacts, Subject},
    routes::{AuthMethod, ip_permitted},
};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder};
use uuid::Uuid;

use super::{
    api_keys::{self, KeyState},
    validate,
};
use crate::graphql::error::{ApiError, ApiResult};

/// Whose access to simulate.
#[derive(Debug, Clone, Copy)]
pub enum SimulatedCaller {
    /// A principal, as if it presented a valid credential the route accepts.
    Principal(Uuid),
    /// An API key, with its state (revoked, expired, suspended) taken into account.
    ApiKey(Uuid),
}

/// The request to simulate.
#[derive(Debug, Clone)]
pub struct SimulatedRequest {
    /// Who.
    pub caller: SimulatedCaller,
    /// HTTP method.
    pub method: String,
    /// Host header, if any (a port or a trailing dot is ignored, as by the proxy).
    pub host: Option<String>,
    /// Raw request path, normalised as the proxy would.
    pub path: String,
    /// Client address.
    pub source_ip: IpAddr,
}

/// The outcome, as the proxy would decide it.
#[derive(Debug, Clone)]
pub struct Simulation {
    /// Whether the proxy would forward the request.
    pub allowed: bool,
    /// Human-readable reason.
    pub reason: String,
    /// Stable code (`allowed_by_binding`, `no_route`, `ip_blocked`, `key_revoked`, ...).
    pub reason_code: String,
    /// The matched route (id, name).
    pub route: Option<(Uuid, String)>,
    /// The binding that allowed (or whose condition failed).
    pub binding_id: Option<Uuid>,
    /// The grant that allowed.
    pub grant_id: Option<Uuid>,
    /// The role of the deciding binding.
    pub role_id: Option<Uuid>,
    /// The path after normalisation.
    pub normalized_path: Option<String>,
}

impl Simulation {
    fn deny(code: &str, reason: impl Into<String>) -> Self {
        Self {
            allowed: false,
            reason: reason.into(),
            reason_code: code.to_owned(),
            route: None,
            binding_id: None,
            grant_id: None,
            role_id: None,
            normalized_path: None,
        }
    }
}

/// Decides `request` the way the proxy's pipeline would right now (after authentication):
/// normalise → route → IP rules → key state → principal → evaluate.
#[tracing::instrument(skip_all)]
pub async fn simulate(
    db: &DatabaseConnection,
    normalization: &NormalizeOptions,
    request: SimulatedRequest,
) -> ApiResult<Simulation> {
    let now = Utc::now();
    let method = Method::from_bytes(request.method.trim().as_bytes())
        .ok()
        .filter(|m| !m.as_str().bytes().any(|b| b.is_ascii_lowercase()))
        .ok_or_else(|| ApiError::invalid("input.method", "is not an uppercase HTTP method"))?;
    let host = validate::optional_text("input.host", request.host.as_deref())?;
    if request.path.chars().count() > 2048 {
        return Err(ApiError::invalid(
            "input.path",
            "must be at most 2048 characters",
        ));
    }
    // Resolve the caller first so unknown ids are NOT_FOUND rather than a decision.
    let (principal_id, key) = match request.caller {
        SimulatedCaller::Principal(id) => (id, None),
        SimulatedCaller::ApiKey(id) => {
            let key = api_keys::get(db, id).await?;
            (key.principal_id, Some(key))
        }
    };
    let principal = cache::load_principal(db, principal_id, now)
        .await?
        .ok_or_else(|| ApiError::not_found("principal", principal_id))?;

    let path = match normalize::normalize_path(&request.path, normalization) {
        Ok(path) => path,
        Err(error) => return Ok(Simulation::deny("bad_request_target", error.to_string())),
    };
    let snapshot = cache::load_snapshot(db).await?;
    let mut outcome = Simulation::deny("", "");
    outcome.normalized_path = Some(path.clone());
    // Matched as the proxy matches a `Host`: without a port or a trailing dot.
    let host_name = host.as_deref().map(proxy::pipeline::route_host);
    let Some(route) = snapshot.routes.find(host_name, &path, &method) else {
        outcome.reason_code = "no_route".into();
        outcome.reason = "no route matches the host, path and method".into();
        return Ok(outcome);
    };
    outcome.route = Some((route.id, route.name.clone()));
    if !ip_permitted(&snapshot.global_ip_rules, request.source_ip, now)
        || !ip_permitted(&route.ip_rules, request.source_ip, now)
    {
        outcome.reason_code = "ip_blocked".into();
        outcome.reason = "an IP rule refuses the source address".into();
        return Ok(outcome);
    }
    if let Some(key) = &key {
        let failure = if !route.auth_methods.contains(&AuthMethod::ApiKey) {
            Some(AuthFailure::MethodNotAccepted)
        } else {
            match api_keys::state_of(key, now) {
                KeyState::Active => None,
                KeyState::Revoked => Some(AuthFailure::KeyRevoked),
                KeyState::Expired => Some(AuthFailure::KeyExpired),
                KeyState::Suspended => Some(AuthFailure::KeySuspended),
            }
        };
        if let Some(failure) = failure {
            outcome.reason_code = failure.code().into();
            outcome.reason = format!("authentication fails: {}", failure.code());
            return Ok(outcome);
        }
    }
    if principal.disabled {
        outcome.reason_code = AuthFailure::PrincipalDisabled.code().into();
        outcome.reason = "the principal is disabled".into();
        return Ok(outcome);
    }
    let subject = subject(&principal);
    let facts = RequestFacts {
        method: &method,
        path: &path,
        route_id: Some(route.id),
        client_ip: request.source_ip,
        now,
        required_permission: route.required_permission.as_deref(),
    };
    let decision = policy::evaluate(&snapshot.roles, &subject, &facts);
    outcome.allowed = decision.allowed;
    outcome.reason = decision.reason.to_string();
    outcome.reason_code = decision.reason.code().into();
    match decision.reason {
        Reason::Binding {
            binding_id,
            role_id,
            ..
        } => {
            outcome.binding_id = Some(binding_id.0);
            outcome.role_id = Some(role_id.0);
        }
        Reason::Grant { grant_id, .. } => outcome.grant_id = Some(grant_id.0),
        Reason::BindingExpired { binding_id } | Reason::CidrConditionNotMet { binding_id } => {
            outcome.binding_id = Some(binding_id.0);
        }
        Reason::GrantExpired { grant_id } | Reason::GrantRevoked { grant_id } => {
            outcome.grant_id = Some(grant_id.0);
        }
        Reason::UnknownRole { role_id } => outcome.role_id = Some(role_id.0),
        Reason::NoBindings | Reason::NoMatchingPermission | Reason::OnlyExpiredBindings => {}
    }
    Ok(outcome)
}

fn subject(principal: &PrincipalEntry) -> Subject<'_> {
    Subject {
        principal_id: principal.id,
        group_ids: &principal.group_ids,
        bindings: &principal.bindings,
        grants: &principal.grants,
    }
}

/// One effective permission and where it comes from.
#[derive(Debug, Clone)]
pub struct EffectivePermission {
    /// `service:action`.
    pub name: String,
    /// Methods; empty = any.
    pub methods: Vec<String>,
    /// Path pattern.
    pub path_glob: String,
    /// Route scope.
    pub route_id: Option<Uuid>,
    /// The role that carries it, if any.
    pub role: Option<(Uuid, String)>,
    /// The binding that grants the role.
    pub binding_id: Option<Uuid>,
    /// The group the binding belongs to, when inherited.
    pub via_group_id: Option<Uuid>,
    /// The incident grant, when granted by one.
    pub grant_id: Option<Uuid>,
    /// When the binding or grant ends.
    pub expires_at: Option<DateTime<Utc>>,
    /// CIDR condition of the binding.
    pub cidrs: Vec<String>,
    /// Whether it applies right now (not expired).
    pub active: bool,
}

/// The effective permissions of principal `id`: through its own and its groups' bindings,
/// and through its active incident grants.
#[tracing::instrument(skip_all, fields(principal_id = %id))]
pub async fn explain(db: &DatabaseConnection, id: Uuid) -> ApiResult<Vec<EffectivePermission>> {
    let now = Utc::now();
    let principal = cache::load_principal(db, id, now)
        .await?
        .ok_or_else(|| ApiError::not_found("principal", id))?;
    let mut role_ids: Vec<Uuid> = principal.bindings.iter().map(|b| b.role_id.0).collect();
    role_ids.extend(
        principal
            .grants
            .iter()
            .filter_map(|g| g.role_id.map(|r| r.0)),
    );
    let roles: HashMap<Uuid, role::Model> = role::Entity::find()
        .filter(role::Column::Id.is_in(role_ids.clone()))
        .all(db)
        .await?
        .into_iter()
        .map(|r| (r.id, r))
        .collect();
    let mut permissions: HashMap<Uuid, Vec<permission::Model>> = HashMap::new();
    for p in permission::Entity::find()
        .filter(permission::Column::RoleId.is_in(role_ids))
        .order_by_asc(permission::Column::Id)
        .all(db)
        .await?
    {
        permissions.entry(p.role_id).or_default().push(p);
    }
    let mut out = Vec::new();
    let push_role =
        |out: &mut Vec<EffectivePermission>, role_id: Uuid, base: &EffectivePermission| {
            for p in permissions.get(&role_id).into_iter().flatten() {
                out.push(EffectivePermission {
                    name: p.name.clone(),
                    methods: super::routes::json_strings(&p.methods),
                    path_glob: p.path_glob.clone(),
                    route_id: p.route_id,
                    role: roles.get(&role_id).map(|r| (r.id, r.name.clone())),
                    ..base.clone()
                });
            }
        };
    for binding in &principal.bindings {
        let base = EffectivePermission {
            name: String::new(),
            methods: Vec::new(),
            path_glob: String::new(),
            route_id: None,
            role: None,
            binding_id: Some(binding.id.0),
            via_group_id: (binding.principal_id != principal.id).then_some(binding.principal_id.0),
            grant_id: None,
            expires_at: binding.expires_at,
            cidrs: binding.cidrs.iter().map(ToString::to_string).collect(),
            active: binding.is_active_at(now),
        };
        push_role(&mut out, binding.role_id.0, &base);
    }
    let grant_rows: HashMap<Uuid, incident_grant::Model> = incident_grant::Entity::find()
        .filter(
            incident_grant::Column::Id
                .is_in(principal.grants.iter().map(|g| g.id.0).collect::<Vec<_>>()),
        )
        .all(db)
        .await?
        .into_iter()
        .map(|g| (g.id, g))
        .collect();
    for grant in &principal.grants {
        let base = EffectivePermission {
            name: String::new(),
            methods: Vec::new(),
            path_glob: String::new(),
            route_id: None,
            role: None,
            binding_id: None,
            via_group_id: None,
            grant_id: Some(grant.id.0),
            expires_at: Some(grant.expires_at),
            cidrs: Vec::new(),
            active: grant.is_active_at(now),
        };
        if let Some(role_id) = grant.role_id {
            push_role(&mut out, role_id.0, &base);
        }
        let explicit = grant_rows
            .get(&grant.id.0)
            .and_then(|g| g.permissions.as_array().cloned())
            .unwrap_or_default();
        for item in explicit {
            out.push(EffectivePermission {
                name: item
                    .get("name")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned(),
                methods: item
                    .get("methods")
                    .map(super::routes::json_strings)
                    .unwrap_or_default(),
                path_glob: item
                    .get("path_glob")
                    .and_then(|v| v.as_str())
                    .unwrap_or_default()
                    .to_owned(),
                ..base.clone()
            });
        }
    }
    Ok(out)
}
