//! Management permissions and the builtin roles that hold them.
//!
//! Management permissions are ordinary RBAC permissions in the reserved `portcullis`
//! namespace, matched on `POST /graphql`, so the API authorizes its callers with the proxy's
//! own evaluator ([`super::auth::authorize`]).

use chrono::Utc;
use entity::{permission, policy_change::PolicyChangeOp, role};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, Set,
    prelude::Uuid,
};
use serde_json::json;

use super::feed::{self, kind};

/// The path every management permission covers.
pub const GRAPHQL_PATH: &str = "/graphql";

/// Read API keys.
pub const KEYS_READ: &str = "portcullis:keys:read";
/// Issue, rotate, revoke, suspend and resume API keys.
pub const KEYS_WRITE: &str = "portcullis:keys:write";
/// Read principals and group memberships.
pub const PRINCIPALS_READ: &str = "portcullis:principals:read";
/// Create and update principals and group memberships.
pub const PRINCIPALS_WRITE: &str = "portcullis:principals:write";
/// Read roles and role bindings.
pub const ROLES_READ: &str = "portcullis:roles:read";
/// Create, update and delete roles; bind and unbind them.
pub const ROLES_WRITE: &str = "portcullis:roles:write";
/// Read routes.
pub const ROUTES_READ: &str = "portcullis:routes:read";
/// Create, update and delete routes.
pub const ROUTES_WRITE: &str = "portcullis:routes:write";
/// Read IP rules.
pub const IP_RULES_READ: &str = "portcullis:ip_rules:read";
/// Create and delete IP rules.
pub const IP_RULES_WRITE: &str = "portcullis:ip_rules:write";
/// Read audit and security events; verify the audit chain.
pub const AUDIT_READ: &str = "portcullis:audit:read";
/// Run `simulateAccess` and `explainPrincipal`-style what-ifs.
pub const SIMULATE: &str = "portcullis:simulate";
/// Read access reviews.
pub const REVIEWS_READ: &str = "portcullis:reviews:read";
/// Decide access review items.
pub const REVIEWS_DECIDE: &str = "portcullis:reviews:decide";
/// Request incident grants.
pub const GRANTS_REQUEST: &str = "portcullis:grants:request";
/// Approve, deny and revoke incident grants; read everyone's.
pub const GRANTS_APPROVE: &str = "portcullis:grants:approve";
/// Open one's own incident grant at once, without an approver (break-glass); a follow-up
/// access review is opened with it.
pub const GRANTS_BREAK_GLASS: &str = "portcullis:grants:break_glass";
/// Read remediation playbooks and runs.
pub const REMEDIATION_READ: &str = "portcullis:remediation:read";
/// Change playbooks and trigger remediation.
pub const REMEDIATION_WRITE: &str = "portcullis:remediation:write";

/// Every management permission, in documentation order.
pub const ALL: &[&str] = &[
    KEYS_READ,
    KEYS_WRITE,
    PRINCIPALS_READ,
    PRINCIPALS_WRITE,
    ROLES_READ,
    ROLES_WRITE,
    ROUTES_READ,
    ROUTES_WRITE,
    IP_RULES_READ,
    IP_RULES_WRITE,
    AUDIT_READ,
    SIMULATE,
    REVIEWS_READ,
    REVIEWS_DECIDE,
    GRANTS_REQUEST,
    GRANTS_APPROVE,
    GRANTS_BREAK_GLASS,
    REMEDIATION_READ,
    REMEDIATION_WRITE,
];

/// Full control of Portcullis.
pub const ADMIN_ROLE: &str = "portcullis-admin";
/// Reads audit evidence, reviews, principals and keys; changes nothing.
pub const AUDITOR_ROLE: &str = "portcullis-auditor";
/// Reads everything and manages API keys.
pub const OPERATOR_ROLE: &str = "portcullis-operator";

/// A builtin role: its name, description and permissions.
pub struct BuiltinRole {
    /// Unique role name.
    pub name: &'static str,
    /// Shown in the API.
    pub description: &'static str,
    /// Management permissions it holds (any method, path `/graphql`).
    pub permissions: &'static [&'static str],
}

/// The builtin roles, ensured at every API start.
pub const BUILTIN_ROLES: &[BuiltinRole] = &[
    BuiltinRole {
        name: ADMIN_ROLE,
        description: "Every management permission",
        permissions: ALL,
    },
    BuiltinRole {
        name: AUDITOR_ROLE,
        description: "Reads audit evidence, access reviews, principals and keys",
        permissions: &[AUDIT_READ, REVIEWS_READ, PRINCIPALS_READ, KEYS_READ],
    },
    BuiltinRole {
        name: OPERATOR_ROLE,
        description: "Reads everything and manages API keys",
        permissions: &[
            KEYS_READ,
            KEYS_WRITE,
            PRINCIPALS_READ,
            ROLES_READ,
            ROUTES_READ,
            IP_RULES_READ,
            AUDIT_READ,
            REVIEWS_READ,
            REMEDIATION_READ,
        ],
    },
];

/// Creates the builtin roles, or brings their permissions back to the definition (adding
/// missing ones, removing others). Idempotent; changes are announced on the change feed.
/// Returns the role ids by name.
pub async fn ensure_builtin_roles<C: ConnectionTrait>(
    db: &C,
) -> Result<Vec<(&'static str, Uuid)>, DbErr> {
    let now = Utc::now();
    let mut ids = Vec::with_capacity(BUILTIN_ROLES.len());
    for builtin in BUILTIN_ROLES {
        let mut changed = false;
        let role = match role::Entity::find()
            .filter(role::Column::Name.eq(builtin.name))
            .one(db)
            .await?
        {
            Some(existing) if existing.builtin => existing,
            Some(existing) => {
                let mut active: role::ActiveModel = existing.into();
                active.builtin = Set(true);
                active.updated_at = Set(now);
                changed = true;
                active.update(db).await?
            }
            None => {
                changed = true;
                role::ActiveModel {
                    id: Set(Uuid::now_v7()),
                    name: Set(builtin.name.to_owned()),
                    description: Set(builtin.description.to_owned()),
                    builtin: Set(true),
                    created_at: Set(now),
                    updated_at: Set(now),
                }
                .insert(db)
                .await?
            }
        };
        let existing = permission::Entity::find()
            .filter(permission::Column::RoleId.eq(role.id))
            .all(db)
            .await?;
        for stale in existing.iter().filter(|p| {
            !builtin.permissions.contains(&p.name.as_str())
                || p.path_glob != GRAPHQL_PATH
                || p.route_id.is_some()
                || p.methods != json!([])
        }) {
            permission::Entity::delete_by_id(stale.id).exec(db).await?;
            changed = true;
        }
        for name in builtin.permissions {
            let present = existing.iter().any(|p| {
                p.name == *name
                    && p.path_glob == GRAPHQL_PATH
                    && p.route_id.is_none()
                    && p.methods == json!([])
            });
            if !present {
                permission::ActiveModel {
                    id: Set(Uuid::now_v7()),
                    role_id: Set(role.id),
                    name: Set((*name).to_owned()),
                    methods: Set(json!([])),
                    path_glob: Set(GRAPHQL_PATH.to_owned()),
                    route_id: Set(None),
                    created_at: Set(now),
                }
                .insert(db)
                .await?;
                changed = true;
            }
        }
        if changed {
            feed::record(db, kind::ROLE, role.id, PolicyChangeOp::Upsert).await?;
        }
        ids.push((builtin.name, role.id));
    }
    Ok(ids)
}
