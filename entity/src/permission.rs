//! `permission`: one `service:action` a role grants, on a method set and path pattern.

use sea_orm::entity::prelude::*;

/// One row of `permission`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "permission")]
pub struct Model {
    /// Application-generated UUID v7.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Owning role.
    pub role_id: Uuid,
    /// Permission name, `service:action`, e.g. `orders:read`.
    pub name: String,
    /// JSON array of uppercase HTTP methods; empty = any method.
    pub methods: Json,
    /// Path pattern the permission covers, e.g. `/orders/**`.
    pub path_glob: String,
    /// Restricts the permission to one route, if set.
    pub route_id: Option<Uuid>,
    /// When the row was created.
    pub created_at: DateTimeUtc,
}

/// Foreign keys of `permission`; both ON DELETE CASCADE.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// `role_id` → `role.id`.
    #[sea_orm(
        belongs_to = "super::role::Entity",
        from = "Column::RoleId",
        to = "super::role::Column::Id",
        on_delete = "Cascade",
        fk_name = "fk_permission_role_id"
    )]
    Role,
    /// `route_id` → `route.id`.
    #[sea_orm(
        belongs_to = "super::route::Entity",
        from = "Column::RouteId",
        to = "super::route::Column::Id",
        on_delete = "Cascade",
        fk_name = "fk_permission_route_id"
    )]
    Route,
}

impl Related<super::role::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Role.def()
    }
}

impl Related<super::route::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Route.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
