//! `role`: a named set of permissions that can be bound to principals.

use sea_orm::entity::prelude::*;

/// One row of `role`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "role")]
pub struct Model {
    /// Application-generated UUID v7.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Unique name (`uq_role_name`), e.g. `orders-reader`.
    pub name: String,
    /// What the role is for.
    #[sea_orm(column_type = "Text")]
    pub description: String,
    /// Shipped with Portcullis (for example the management roles); not deletable.
    pub builtin: bool,
    /// When the row was created.
    pub created_at: DateTimeUtc,
    /// When the row was last changed.
    pub updated_at: DateTimeUtc,
}

/// Foreign keys pointing at `role`.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// Permissions of the role (`permission.role_id`).
    #[sea_orm(has_many = "super::permission::Entity")]
    Permission,
    /// Bindings of the role to principals (`role_binding.role_id`).
    #[sea_orm(has_many = "super::role_binding::Entity")]
    RoleBinding,
    /// Incident grants that lend this role (`incident_grant.role_id`).
    #[sea_orm(has_many = "super::incident_grant::Entity")]
    IncidentGrant,
}

impl Related<super::permission::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Permission.def()
    }
}

impl Related<super::role_binding::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::RoleBinding.def()
    }
}

impl Related<super::incident_grant::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::IncidentGrant.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
