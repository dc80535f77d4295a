//! Roles, their permissions, and role bindings.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use entity::{permission, policy_change::PolicyChangeOp, role, role_binding, route};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    QueryFilter, QueryOrder, Set, TransactionTrait,
};
use serde_json::json;
use uuid::Uuid;

use super::{
    auth::Actor,
    feed::{self, kind},
    page::{self, Direction, Page, PageRequest},
    principals, validate,
};
use crate::graphql::error::{ApiError, ApiResult, DbResultExt};

/// One permission of a role, as given by the client.
#[derive(Debug, Clone)]
pub struct NewPermission {
    /// `service:action`.
    pub name: String,
    /// HTTP methods; empty = any.
    pub methods: Vec<String>,
    /// Path pattern.
    pub path_glob: String,
    /// Only requests routed to this route.
    pub route_id: Option<Uuid>,
}

/// What [`create`] needs.
#[derive(Debug, Clone)]
pub struct NewRole {
    /// Unique name.
    pub name: String,
    /// Free text.
    pub description: Option<String>,
    /// Its permissions.
    pub permissions: Vec<NewPermission>,
}

/// What [`update`] changes; `None` keeps the current value, `permissions` replaces them all.
#[derive(Debug, Clone, Default)]
pub struct RoleChanges {
    /// New name.
    pub name: Option<String>,
    /// New description.
    pub description: Option<String>,
    /// Replacement permissions.
    pub permissions: Option<Vec<NewPermission>>,
}

/// What [`bind`] needs.
#[derive(Debug, Clone)]
pub struct NewBinding {
    /// The role.
    pub role_id: Uuid,
    /// The principal or group.
    pub principal_id: Uuid,
    /// Optional expiry (in the future).
    pub expires_at: Option<DateTime<Utc>>,
    /// Client networks the binding is limited to; empty = anywhere.
    pub cidrs: Vec<String>,
    /// Why.
    pub reason: Option<String>,
}

/// Filter of [`list_bindings`].
#[derive(Debug, Clone, Default)]
pub struct BindingFilter {
    /// Only bindings of this principal.
    pub principal_id: Option<Uuid>,
    /// Only bindings of this role.
    pub role_id: Option<Uuid>,
}

/// Bounds the number of permissions per role.
const MAX_PERMISSIONS: usize = 100;

async fn validate_permissions<C: ConnectionTrait>(
    db: &C,
    permissions: &[NewPermission],
) -> ApiResult<Vec<(String, Vec<String>, String, Option<Uuid>)>> {
    if permissions.len() > MAX_PERMISSIONS {
        return Err(ApiError::invalid(
            "input.permissions",
            format!("at most {MAX_PERMISSIONS} permissions per role"),
        ));
    }
    let mut out = Vec::with_capacity(permissions.len());
    for (i, p) in permissions.iter().enumerate() {
        let field = |name: &str| format!("input.permissions.{i}.{name}");
        let name = validate::permission_name(&field("name"), &p.name)?;
        let methods = validate::methods(&field("methods"), &p.methods)?;
        let glob = validate::path_glob(&field("pathGlob"), &p.path_glob)?;
        if let Some(route_id) = p.route_id
            && route::Entity::find_by_id(route_id).one(db).await?.is_none()
        {
            return Err(ApiError::not_found("route", route_id));
        }
        out.push((name, methods, glob, p.route_id));
    }
    Ok(out)
}

async fn insert_permissions<C: ConnectionTrait>(
    db: &C,
    role_id: Uuid,
    permissions: Vec<(String, Vec<String>, String, Option<Uuid>)>,
) -> ApiResult<()> {
    let now = Utc::now();
    for (name, methods, path_glob, route_id) in permissions {
        permission::ActiveModel {
            id: Set(Uuid::now_v7()),
            role_id: Set(role_id),
            name: Set(name),
            methods: Set(json!(methods)),
            path_glob: Set(path_glob),
            route_id: Set(route_id),
            created_at: Set(now),
        }
        .insert(db)
        .await?;
    }
    Ok(())
}

/// Creates a role with its permissions.
#[tracing::instrument(skip_all, fields(name = %input.name))]
pub async fn create(db: &DatabaseConnection, input: NewRole) -> ApiResult<role::Model> {
    let name = validate::text("input.name", &input.name)?;
    let description = validate::optional_text("input.description", input.description.as_deref())?
        .unwrap_or_default();
    let now = Utc::now();
    let txn = db.begin().await?;
    let permissions = validate_permissions(&txn, &input.permissions).await?;
    let role = role::ActiveModel {
        id: Set(Uuid::now_v7()),
        name: Set(name.clone()),
        description: Set(description),
        builtin: Set(false),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(&txn)
    .await
    .on_conflict(|| format!("a role named {name:?} exists"))?;
    insert_permissions(&txn, role.id, permissions).await?;
    feed::record(&txn, kind::ROLE, role.id, PolicyChangeOp::Upsert).await?;
    txn.commit().await?;
    Ok(role)
}

/// Changes a role; builtin roles cannot be changed.
#[tracing::instrument(skip_all, fields(role_id = %id))]
pub async fn update(
    db: &DatabaseConnection,
    id: Uuid,
    changes: RoleChanges,
) -> ApiResult<role::Model> {
    let name = changes
        .name
        .as_deref()
        .map(|n| validate::text("input.name", n))
        .transpose()?;
    let description = validate::optional_text("input.description", changes.description.as_deref())?;
    let txn = db.begin().await?;
    let current = get(&txn, id).await?;
    if current.builtin {
        return Err(ApiError::invalid("id", "builtin roles cannot be changed"));
    }
    if let Some(permissions) = &changes.permissions {
        let permissions = validate_permissions(&txn, permissions).await?;
        permission::Entity::delete_many()
            .filter(permission::Column::RoleId.eq(id))
            .exec(&txn)
            .await?;
        insert_permissions(&txn, id, permissions).await?;
    }
    let mut active: role::ActiveModel = current.into();
    if let Some(name) = name.clone() {
        active.name = Set(name);
    }
    if let Some(description) = description {
        active.description = Set(description);
    }
    active.updated_at = Set(Utc::now());
    let role = active
        .update(&txn)
        .await
        .on_conflict(|| format!("a role named {:?} exists", name.unwrap_or_default()))?;
    feed::record(&txn, kind::ROLE, role.id, PolicyChangeOp::Upsert).await?;
    txn.commit().await?;
    Ok(role)
}

/// Deletes a role, its permissions and its bindings; builtin roles cannot be deleted.
#[tracing::instrument(skip_all, fields(role_id = %id))]
pub async fn delete(db: &DatabaseConnection, id: Uuid) -> ApiResult<role::Model> {
    let txn = db.begin().await?;
    let role = get(&txn, id).await?;
    if role.builtin {
        return Err(ApiError::invalid("id", "builtin roles cannot be deleted"));
    }
    let bound: Vec<Uuid> = role_binding::Entity::find()
        .filter(role_binding::Column::RoleId.eq(id))
        .all(&txn)
        .await?
        .into_iter()
        .map(|b| b.principal_id)
        .collect();
    role_binding::Entity::delete_many()
        .filter(role_binding::Column::RoleId.eq(id))
        .exec(&txn)
        .await?;
    permission::Entity::delete_many()
        .filter(permission::Column::RoleId.eq(id))
        .exec(&txn)
        .await?;
    role::Entity::delete_by_id(id).exec(&txn).await?;
    feed::record(&txn, kind::ROLE, id, PolicyChangeOp::Delete).await?;
    for principal_id in bound {
        feed::record(
            &txn,
            kind::ROLE_BINDING,
            principal_id,
            PolicyChangeOp::Upsert,
        )
        .await?;
    }
    txn.commit().await?;
    Ok(role)
}

/// Binds a role to a principal or group.
#[tracing::instrument(skip_all, fields(role_id = %input.role_id, principal_id = %input.principal_id))]
pub async fn bind(
    db: &DatabaseConnection,
    actor: &Actor,
    input: NewBinding,
) -> ApiResult<role_binding::Model> {
    let now = Utc::now();
    let expires_at = validate::future("expiresAt", input.expires_at, now)?;
    let reason = validate::optional_text("reason", input.reason.as_deref())?;
    if input.cidrs.len() > 32 {
        return Err(ApiError::invalid("cidrs", "at most 32 networks"));
    }
    let cidrs = input
        .cidrs
        .iter()
        .enumerate()
        .map(|(i, c)| validate::cidr(&format!("cidrs.{i}"), c).map(|n| n.to_string()))
        .collect::<ApiResult<Vec<_>>>()?;
    let txn = db.begin().await?;
    get(&txn, input.role_id).await?;
    principals::get(&txn, input.principal_id).await?;
    let binding = role_binding::ActiveModel {
        id: Set(Uuid::now_v7()),
        role_id: Set(input.role_id),
        principal_id: Set(input.principal_id),
        conditions: Set(if cidrs.is_empty() {
            json!({})
        } else {
            json!({ "cidrs": cidrs })
        }),
        expires_at: Set(expires_at),
        reason: Set(reason),
        created_by: Set(Some(actor.principal_id)),
        created_at: Set(now),
    }
    .insert(&txn)
    .await?;
    feed::record(
        &txn,
        kind::ROLE_BINDING,
        binding.principal_id,
        PolicyChangeOp::Upsert,
    )
    .await?;
    txn.commit().await?;
    Ok(binding)
}

/// Removes binding `id`.
#[tracing::instrument(skip_all, fields(binding_id = %id))]
pub async fn unbind(db: &DatabaseConnection, id: Uuid) -> ApiResult<role_binding::Model> {
    let txn = db.begin().await?;
    let binding = role_binding::Entity::find_by_id(id)
        .one(&txn)
        .await?
        .ok_or_else(|| ApiError::not_found("role binding", id))?;
    role_binding::Entity::delete_by_id(id).exec(&txn).await?;
    feed::record(
        &txn,
        kind::ROLE_BINDING,
        binding.principal_id,
        PolicyChangeOp::Delete,
    )
    .await?;
    txn.commit().await?;
    Ok(binding)
}

/// Role `id`.
pub async fn get<C: ConnectionTrait>(db: &C, id: Uuid) -> ApiResult<role::Model> {
    role::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| ApiError::not_found("role", id))
}

/// Roles by id (for data loaders).
pub async fn load_many(
    db: &DatabaseConnection,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, role::Model>, DbErr> {
    Ok(role::Entity::find()
        .filter(role::Column::Id.is_in(ids.iter().copied()))
        .all(db)
        .await?
        .into_iter()
        .map(|r| (r.id, r))
        .collect())
}

/// The permissions of role `id`, in creation order.
pub async fn permissions_of(
    db: &DatabaseConnection,
    id: Uuid,
) -> ApiResult<Vec<permission::Model>> {
    Ok(permission::Entity::find()
        .filter(permission::Column::RoleId.eq(id))
        .order_by_asc(permission::Column::Id)
        .all(db)
        .await?)
}

/// The permissions of each of `role_ids`, in creation order (for data loaders).
pub async fn permissions_of_many(
    db: &DatabaseConnection,
    role_ids: &[Uuid],
) -> Result<HashMap<Uuid, Vec<permission::Model>>, DbErr> {
    let mut out: HashMap<Uuid, Vec<permission::Model>> = HashMap::new();
    for p in permission::Entity::find()
        .filter(permission::Column::RoleId.is_in(role_ids.iter().copied()))
        .order_by_asc(permission::Column::Id)
        .all(db)
        .await?
    {
        out.entry(p.role_id).or_default().push(p);
    }
    Ok(out)
}

/// Roles, oldest first.
pub async fn list(
    db: &DatabaseConnection,
    page: &PageRequest<Uuid>,
) -> ApiResult<Page<role::Model>> {
    Ok(page::fetch(
        db,
        role::Entity::find(),
        role::Column::Id,
        Direction::Ascending,
        page,
    )
    .await?)
}

/// Bindings matching `filter`, oldest first.
pub async fn list_bindings(
    db: &DatabaseConnection,
    filter: &BindingFilter,
    page: &PageRequest<Uuid>,
) -> ApiResult<Page<role_binding::Model>> {
    let mut select = role_binding::Entity::find();
    if let Some(principal_id) = filter.principal_id {
        select = select.filter(role_binding::Column::PrincipalId.eq(principal_id));
    }
    if let Some(role_id) = filter.role_id {
        select = select.filter(role_binding::Column::RoleId.eq(role_id));
    }
    Ok(page::fetch(
        db,
        select,
        role_binding::Column::Id,
        Direction::Ascending,
        page,
    )
    .await?)
}

/// The CIDR condition of a binding, as stored.
pub fn binding_cidrs(binding: &role_binding::Model) -> Vec<String> {
    binding
        .conditions
        .get("cidrs")
        .and_then(|c| c.as_array())
        .map(|items| {
            items
                .iter()
                .filter_map(|c| c.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}
