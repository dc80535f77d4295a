//! GraphQL shapes of roles, permissions and bindings.

use async_graphql::{ComplexObject, Context, InputObject, SimpleObject};
use chrono::{DateTime, Utc};
use entity::{permission, role, role_binding};
use uuid::Uuid;

use crate::{
    graphql::{
        error::{ApiError, ApiResult},
        loaders::{load_principal, load_role},
        principals::types::PrincipalOut,
    },
    service::roles,
};

/// A named set of permissions.
#[derive(SimpleObject, Clone, Debug)]
#[graphql(name = "Role", complex)]
pub struct RoleOut {
    /// Role id.
    pub id: Uuid,
    /// Unique name.
    pub name: String,
    /// Free text.
    pub description: String,
    /// Managed by Portcullis (`portcullis-admin`, ...); cannot be changed or deleted.
    pub builtin: bool,
    /// Created at.
    pub created_at: DateTime<Utc>,
    /// Last change.
    pub updated_at: DateTime<Utc>,
}

#[ComplexObject]
impl RoleOut {
    /// The role's permissions.
    async fn permissions(&self, ctx: &Context<'_>) -> ApiResult<Vec<PermissionOut>> {
        let rows = crate::graphql::loaders(ctx)?
            .permissions
            .load_one(self.id)
            .await
            .map_err(ApiError::internal)?
            .unwrap_or_default();
        Ok(rows.into_iter().map(Into::into).collect())
    }
}

impl From<role::Model> for RoleOut {
    fn from(r: role::Model) -> Self {
        Self {
            id: r.id,
            name: r.name,
            description: r.description,
            builtin: r.builtin,
            created_at: r.created_at,
            updated_at: r.updated_at,
        }
    }
}

/// `service:action` on methods and a path pattern, optionally scoped to one route.
#[derive(SimpleObject, Clone, Debug)]
#[graphql(name = "Permission")]
pub struct PermissionOut {
    /// Permission id.
    pub id: Uuid,
    /// `service:action`.
    pub name: String,
    /// HTTP methods; empty means any.
    pub methods: Vec<String>,
    /// Path pattern (`*` one segment, `**` any).
    pub path_glob: String,
    /// Only requests routed to this route.
    pub route_id: Option<Uuid>,
}

impl From<permission::Model> for PermissionOut {
    fn from(p: permission::Model) -> Self {
        Self {
            id: p.id,
            name: p.name,
            methods: crate::service::routes::json_strings(&p.methods),
            path_glob: p.path_glob,
            route_id: p.route_id,
        }
    }
}

/// A permission of `createRole` / `updateRole`.
#[derive(InputObject, Clone, Debug)]
pub struct PermissionInput {
    /// `service:action`, e.g. `orders:read`.
    pub name: String,
    /// Uppercase HTTP methods; empty or absent means any.
    pub methods: Option<Vec<String>>,
    /// Path pattern, e.g. `/orders/**`.
    pub path_glob: String,
    /// Only requests routed to this route.
    pub route_id: Option<Uuid>,
}

impl From<PermissionInput> for roles::NewPermission {
    fn from(p: PermissionInput) -> Self {
        Self {
            name: p.name,
            methods: p.methods.unwrap_or_default(),
            path_glob: p.path_glob,
            route_id: p.route_id,
        }
    }
}

/// Input of `createRole`.
#[derive(InputObject, Clone, Debug)]
pub struct CreateRoleInput {
    /// Unique name (≤ 256 characters).
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Permissions (≤ 100).
    pub permissions: Vec<PermissionInput>,
}

impl From<CreateRoleInput> for roles::NewRole {
    fn from(input: CreateRoleInput) -> Self {
        Self {
            name: input.name,
            description: input.description,
            permissions: input.permissions.into_iter().map(Into::into).collect(),
        }
    }
}

/// Input of `updateRole`; absent fields are unchanged, `permissions` replaces them all.
#[derive(InputObject, Clone, Debug)]
pub struct UpdateRoleInput {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// Replacement permissions.
    pub permissions: Option<Vec<PermissionInput>>,
}

impl From<UpdateRoleInput> for roles::RoleChanges {
    fn from(input: UpdateRoleInput) -> Self {
        Self {
            name: input.name,
            description: input.description,
            permissions: input
                .permissions
                .map(|ps| ps.into_iter().map(Into::into).collect()),
        }
    }
}

/// A role granted to a principal or group.
#[derive(SimpleObject, Clone, Debug)]
#[graphql(name = "RoleBinding", complex)]
pub struct RoleBindingOut {
    /// Binding id.
    pub id: Uuid,
    /// The role.
    pub role_id: Uuid,
    /// The principal or group.
    pub principal_id: Uuid,
    /// Client networks it is limited to; empty = anywhere.
    pub cidrs: Vec<String>,
    /// End of validity.
    pub expires_at: Option<DateTime<Utc>>,
    /// Why it was granted.
    pub reason: Option<String>,
    /// Who granted it.
    pub created_by_id: Option<Uuid>,
    /// Granted at.
    pub created_at: DateTime<Utc>,
}

#[ComplexObject]
impl RoleBindingOut {
    /// The role.
    async fn role(&self, ctx: &Context<'_>) -> ApiResult<Option<RoleOut>> {
        load_role(ctx, self.role_id).await
    }

    /// The principal or group.
    async fn principal(&self, ctx: &Context<'_>) -> ApiResult<Option<PrincipalOut>> {
        load_principal(ctx, self.principal_id).await
    }
}

impl From<role_binding::Model> for RoleBindingOut {
    fn from(b: role_binding::Model) -> Self {
        Self {
            cidrs: roles::binding_cidrs(&b),
            id: b.id,
            role_id: b.role_id,
            principal_id: b.principal_id,
            expires_at: b.expires_at,
            reason: b.reason,
            created_by_id: b.created_by,
            created_at: b.created_at,
        }
    }
}

/// Filter of `roleBindings`.
#[derive(InputObject, Clone, Debug, Default)]
pub struct RoleBindingFilter {
    /// Only bindings of this principal.
    pub principal_id: Option<Uuid>,
    /// Only bindings of this role.
    pub role_id: Option<Uuid>,
}

impl From<RoleBindingFilter> for roles::BindingFilter {
    fn from(filter: RoleBindingFilter) -> Self {
        Self {
            principal_id: filter.principal_id,
            role_id: filter.role_id,
        }
    }
}
