//! `role_binding`: grants a role to a principal (user, service account or group), optionally
//! until an expiry and under conditions.

use sea_orm::entity::prelude::*;

/// One row of `role_binding`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "role_binding")]
pub struct Model {
    /// Application-generated UUID v7.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// The role granted.
    pub role_id: Uuid,
    /// Who receives it; for a group, every member does.
    pub principal_id: Uuid,
    /// JSON object of extra conditions, e.g. `{"cidrs": ["10.0.0.0/8"]}`; `{}` = none.
    pub conditions: Json,
    /// The binding stops applying at this instant.
    pub expires_at: Option<DateTimeUtc>,
    /// Why the binding exists.
    pub reason: Option<String>,
    /// Principal who created it (no foreign key: the record outlives the creator).
    pub created_by: Option<Uuid>,
    /// When the row was created.
    pub created_at: DateTimeUtc,
}

/// Foreign keys of `role_binding`; both ON DELETE CASCADE.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// `role_id` → `role.id`.
    #[sea_orm(
        belongs_to = "super::role::Entity",
        from = "Column::RoleId",
        to = "super::role::Column::Id",
        on_delete = "Cascade",
        fk_name = "fk_role_binding_role_id"
    )]
    Role,
    /// `principal_id` → `principal.id`.
    #[sea_orm(
        belongs_to = "super::principal::Entity",
        from = "Column::PrincipalId",
        to = "super::principal::Column::Id",
        on_delete = "Cascade",
        fk_name = "fk_role_binding_principal_id"
    )]
    Principal,
}

impl Related<super::role::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Role.def()
    }
}

impl Related<super::principal::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Principal.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
