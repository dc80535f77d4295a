//! `managed_secret`: a secret Portcullis keeps (and rotates) in AWS Secrets Manager.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// What a [`Model`] holds.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(32))")]
#[serde(rename_all = "snake_case")]
pub enum ManagedSecretKind {
    /// A Portcullis API key handed to a consumer through Secrets Manager.
    #[sea_orm(string_value = "api_key")]
    ApiKey,
    /// A credential the proxy injects into upstream requests.
    #[sea_orm(string_value = "upstream_credential")]
    UpstreamCredential,
}

/// One row of `managed_secret`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "managed_secret")]
pub struct Model {
    /// Application-generated UUID v7.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Secrets Manager ARN or name; unique (`uq_managed_secret_secret_id`).
    pub secret_id: String,
    /// API key or upstream credential.
    pub kind: ManagedSecretKind,
    /// The API key stored in the secret, if any.
    pub api_key_id: Option<Uuid>,
    /// The route whose upstream credential this is, if any.
    pub route_id: Option<Uuid>,
    /// Scheduled rotation period in days; `None` = rotate only on demand.
    pub rotation_interval_days: Option<i32>,
    /// When the last rotation finished.
    pub last_rotated_at: Option<DateTimeUtc>,
    /// When the row was created.
    pub created_at: DateTimeUtc,
    /// When the row was last changed.
    pub updated_at: DateTimeUtc,
}

/// Foreign keys of `managed_secret`; both ON DELETE SET NULL.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// `api_key_id` → `api_key.id`.
    #[sea_orm(
        belongs_to = "super::api_key::Entity",
        from = "Column::ApiKeyId",
        to = "super::api_key::Column::Id",
        on_delete = "SetNull",
        fk_name = "fk_managed_secret_api_key_id"
    )]
    ApiKey,
    /// `route_id` → `route.id`.
    #[sea_orm(
        belongs_to = "super::route::Entity",
        from = "Column::RouteId",
        to = "super::route::Column::Id",
        on_delete = "SetNull",
        fk_name = "fk_managed_secret_route_id"
    )]
    Route,
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
