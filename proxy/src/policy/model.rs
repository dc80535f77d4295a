//! The RBAC data model the evaluator works on: plain data, built by the policy cache (proxy)
//! or from database rows (API `simulateAccess`). No behaviour beyond small lookups.

use std::{collections::HashMap, fmt, net::IpAddr, sync::Arc};

use chrono::{DateTime, Utc};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::glob::{MethodSet, PathGlob};

macro_rules! id_newtype {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
        )]
        #[serde(transparent)]
        pub struct $name(pub Uuid);

        impl From<Uuid> for $name {
            fn from(id: Uuid) -> Self {
                Self(id)
            }
        }

        impl From<$name> for Uuid {
            fn from(id: $name) -> Self {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }
    };
}

id_newtype!(
    /// A user, service account or group.
    PrincipalId
);
id_newtype!(
    /// A role: a named set of permissions.
    RoleId
);
id_newtype!(
    /// A role binding: principal → role, with optional expiry and CIDR condition.
    BindingId
);
id_newtype!(
    /// An incident grant: time-boxed extra permissions.
    GrantId
);

/// `service:action` on a method set and path pattern, optionally scoped to one route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    /// Database id; reported in [`super::Reason`] evidence.
    pub id: Uuid,
    /// `service:action`, compared with a route's required permission.
    pub name: String,
    /// Methods covered.
    pub methods: MethodSet,
    /// Normalised paths covered.
    pub path: PathGlob,
    /// `None`: any route; `Some`: only requests routed to this route.
    pub route_id: Option<Uuid>,
}

/// A named set of permissions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Role {
    /// Database id.
    pub id: RoleId,
    /// Display name.
    pub name: String,
    /// Permissions, in a stable order (the first match is reported as evidence).
    pub permissions: Vec<Permission>,
}

/// Grants `role_id` to `principal_id` (a user, service account or group).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    /// Database id.
    pub id: BindingId,
    /// The role granted.
    pub role_id: RoleId,
    /// Who holds it; a group id applies to all members.
    pub principal_id: PrincipalId,
    /// The binding applies while `now < expires_at`; `None` never expires.
    pub expires_at: Option<DateTime<Utc>>,
    /// The client IP must be inside one of these; empty means any address.
    pub cidrs: Vec<IpNet>,
}

/// Time-boxed permissions issued during an incident; a role's permissions, explicit ones,
/// or both.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// Database id.
    pub id: GrantId,
    /// Who holds it (a group id applies to all members).
    pub principal_id: PrincipalId,
    /// A role whose permissions the grant includes.
    pub role_id: Option<RoleId>,
    /// Permissions granted in addition to the role's.
    pub permissions: Vec<Permission>,
    /// The grant applies while `now < expires_at`.
    pub expires_at: DateTime<Utc>,
    /// Revoked early by an operator.
    pub revoked: bool,
}

/// All roles, keyed by id: an immutable part of the policy snapshot, shared by `Arc`.
#[derive(Debug, Clone, Default)]
pub struct Roles {
    by_id: HashMap<RoleId, Arc<Role>>,
}

impl Roles {
    /// Builds the map; a later role with the same id replaces an earlier one.
    pub fn new(roles: impl IntoIterator<Item = Role>) -> Self {
        roles.into_iter().map(Arc::new).collect()
    }

    /// The role with this id.
    pub fn get(&self, id: RoleId) -> Option<&Role> {
        self.by_id.get(&id).map(Arc::as_ref)
    }

    /// The shared handle of the role with this id.
    pub fn get_arc(&self, id: RoleId) -> Option<&Arc<Role>> {
        self.by_id.get(&id)
    }

    /// Number of roles.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether there are no roles.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// All roles, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = &Arc<Role>> {
        self.by_id.values()
    }
}

impl FromIterator<Arc<Role>> for Roles {
    fn from_iter<I: IntoIterator<Item = Arc<Role>>>(iter: I) -> Self {
        Self {
            by_id: iter.into_iter().map(|role| (role.id, role)).collect(),
        }
    }
}

impl FromIterator<Role> for Roles {
    fn from_iter<I: IntoIterator<Item = Role>>(iter: I) -> Self {
        iter.into_iter().map(Arc::new).collect()
    }
}

/// Who is asking: the authenticated principal, its groups, and the bindings and grants the
/// cache loaded for them. Borrowed so the hot path copies nothing.
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    /// The authenticated user or service account.
    pub principal_id: PrincipalId,
    /// Groups the principal belongs to.
    pub group_ids: &'a [PrincipalId],
    /// The principal's own bindings and its groups' (others are ignored).
    pub bindings: &'a [Binding],
    /// Incident grants held by the principal or its groups (others are ignored).
    pub grants: &'a [Grant],
}

/// What is being asked for.
#[derive(Debug, Clone, Copy)]
pub struct RequestFacts<'a> {
    /// The request method.
    pub method: &'a http::Method,
    /// The normalised path ([`crate::normalize::normalize_path`]).
    pub path: &'a str,
    /// The route the request matched, if any.
    pub route_id: Option<Uuid>,
    /// The client address (socket, or trusted `X-Forwarded-For`).
    pub client_ip: IpAddr,
    /// The evaluation time; bindings and grants expiring at exactly `now` no longer apply.
    pub now: DateTime<Utc>,
    /// The route's required `service:action`, if it names one.
    pub required_permission: Option<&'a str>,
}

/// Names of the management API's permissions (`portcullis:keys:write`, ...). Such a
/// permission is stored as any method on `/graphql`; it covers management calls only, which
/// always name the permission they need, never a proxied request that happens to have that
/// path.
pub const MANAGEMENT_NAMESPACE: &str = "portcullis:";

impl Permission {
    /// Whether this permission covers the request. Cheapest checks first; the glob last.
    pub fn matches(&self, req: &RequestFacts<'_>) -> bool {
        self.methods.contains(req.method)
            && self
                .route_id
                .is_none_or(|route| req.route_id == Some(route))
            && match req.required_permission {
                Some(required) => self.name == required,
                None => !self.name.starts_with(MANAGEMENT_NAMESPACE),
            }
            && self.path.matches(req.path)
    }
}

impl Binding {
    /// Whether the binding has not expired at `now`.
    pub fn is_active_at(&self, now: DateTime<Utc>) -> bool {
        self.expires_at.is_none_or(|expires_at| now < expires_at)
    }

    /// Whether `ip` satisfies the CIDR condition (always, when there is none).
    /// IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, from dual-stack sockets) are compared
    /// as IPv4.
    pub fn allows_ip(&self, ip: IpAddr) -> bool {
        let ip = ip.to_canonical();
        self.cidrs.is_empty() || self.cidrs.iter().any(|net| net.contains(&ip))
    }
}

impl Grant {
    /// Whether the grant is not revoked and has not expired at `now`.
    pub fn is_active_at(&self, now: DateTime<Utc>) -> bool {
        !self.revoked && now < self.expires_at
    }
}
