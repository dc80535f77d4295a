//! DataLoaders: batch the per-row lookups of a list (`ApiKey.principal`, `RoleBinding.role`,
//! `Role.permissions`, ...) into one query per tick. Created per request, so nothing is cached across requests.

use std::{collections::HashMap, sync::Arc};

use async_graphql::dataloader::{DataLoader, Loader};
use entity::{permission, principal, role};
use sea_orm::{DatabaseConnection, DbErr};
use uuid::Uuid;

use crate::service;

/// Loads principals by id.
pub struct PrincipalLoader(DatabaseConnection);

impl Loader<Uuid> for PrincipalLoader {
    type Value = principal::Model;
    type Error = Arc<DbErr>;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, Self::Value>, Self::Error> {
        service::principals::load_many(&self.0, keys)
            .await
            .map_err(Arc::new)
    }
}

/// Loads roles by id.
pub struct RoleLoader(DatabaseConnection);

impl Loader<Uuid> for RoleLoader {
    type Value = role::Model;
    type Error = Arc<DbErr>;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, Self::Value>, Self::Error> {
        service::roles::load_many(&self.0, keys)
            .await
            .map_err(Arc::new)
    }
}

/// Loads the permissions of roles by role id.
pub struct PermissionsLoader(DatabaseConnection);

impl Loader<Uuid> for PermissionsLoader {
    type Value = Vec<permission::Model>;
    type Error = Arc<DbErr>;

    async fn load(&self, keys: &[Uuid]) -> Result<HashMap<Uuid, Self::Value>, Self::Error> {
        service::roles::permissions_of_many(&self.0, keys)
            .await
            .map_err(Arc::new)
    }
}

/// The loaders of one request.
pub struct Loaders {
    /// Principals by id.
    pub principals: DataLoader<PrincipalLoader>,
    /// Roles by id.
    pub roles: DataLoader<RoleLoader>,
    /// Permissions by role id.
    pub permissions: DataLoader<PermissionsLoader>,
}

impl Loaders {
    /// Fresh loaders over `db`.
    pub fn new(db: &DatabaseConnection) -> Self {
        Self {
            principals: DataLoader::new(PrincipalLoader(db.clone()), tokio::spawn),
            roles: DataLoader::new(RoleLoader(db.clone()), tokio::spawn),
            permissions: DataLoader::new(PermissionsLoader(db.clone()), tokio::spawn),
        }
    }
}

/// Principal `id` through the request's loader.
pub async fn load_principal(
    ctx: &async_graphql::Context<'_>,
    id: Uuid,
) -> crate::graphql::error::ApiResult<Option<crate::graphql::principals::types::PrincipalOut>> {
    let principal = super::loaders(ctx)?
        .principals
        .load_one(id)
        .await
        .map_err(crate::graphql::error::ApiError::internal)?;
    Ok(principal.map(Into::into))
}

/// Role `id` through the request's loader.
pub async fn load_role(
    ctx: &async_graphql::Context<'_>,
    id: Uuid,
) -> crate::graphql::error::ApiResult<Option<crate::graphql::roles::types::RoleOut>> {
    let role = super::loaders(ctx)?
        .roles
        .load_one(id)
        .await
        .map_err(crate::graphql::error::ApiError::internal)?;
    Ok(role.map(Into::into))
}
