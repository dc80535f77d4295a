//! `rate_limit_override`: a temporary rate limit for a principal, a key and/or a route, usually
//! set by remediation ("tighten rate limit").

use sea_orm::entity::prelude::*;

/// One row of `rate_limit_override`. The subject is the combination of the non-null ids.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "rate_limit_override")]
pub struct Model {
    /// Application-generated UUID v7.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Principal the override applies to, if any.
    pub principal_id: Option<Uuid>,
    /// API key the override applies to, if any.
    pub api_key_id: Option<Uuid>,
    /// Route the override applies to, if any.
    pub route_id: Option<Uuid>,
    /// Allowed requests per minute.
    pub per_minute: i32,
    /// Allowed burst.
    pub burst: i32,
    /// Why the override exists.
    pub reason: String,
    /// The override lapses at this instant (`idx_rate_limit_override_expires_at`).
    pub expires_at: DateTimeUtc,
    /// Who set it (a principal id, or `remediation:<run id>`).
    pub created_by: Option<String>,
    /// When the row was created.
    pub created_at: DateTimeUtc,
}

/// Foreign keys of `rate_limit_override`; all ON DELETE CASCADE.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// `principal_id` → `principal.id`.
    #[sea_orm(
        belongs_to = "super::principal::Entity",
        from = "Column::PrincipalId",
        to = "super::principal::Column::Id",
        on_delete = "Cascade",
        fk_name = "fk_rate_limit_override_principal_id"
    )]
    Principal,
    /// `api_key_id` → `api_key.id`.
    #[sea_orm(
        belongs_to = "super::api_key::Entity",
        from = "Column::ApiKeyId",
        to = "super::api_key::Column::Id",
        on_delete = "Cascade",
        fk_name = "fk_rate_limit_override_api_key_id"
    )]
    ApiKey,
    /// `route_id` → `route.id`.
    #[sea_orm(
        belongs_to = "super::route::Entity",
        from = "Column::RouteId",
        to = "super::route::Column::Id",
        on_delete = "Cascade",
        fk_name = "fk_rate_limit_override_route_id"
    )]
    Route,
}

impl Related<super::principal::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Principal.def()
    }
}

impl Related<super::api_key::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::ApiKey.def()
    }
}

impl Related<super::route::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Route.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
