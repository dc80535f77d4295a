//! `route`: maps host + path prefix + methods to an upstream, with its access rules.

use sea_orm::entity::prelude::*;

/// One row of `route`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "route")]
pub struct Model {
    /// Application-generated UUID v7.
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: Uuid,
    /// Unique name (`uq_route_name`).
    pub name: String,
    /// `Host` to match; `None` = any host.
    pub host: Option<String>,
    /// Normalised path prefix to match, e.g. `/orders`.
    pub path_prefix: String,
    /// JSON array of uppercase HTTP methods; empty = any method.
    pub methods: Json,
    /// Base URL requests are forwarded to.
    pub upstream_url: String,
    /// Remove `path_prefix` before forwarding.
    pub strip_prefix: bool,
    /// JSON array of accepted authentication methods: `api_key`, `oidc`, `grant`, `anonymous`.
    pub auth_methods: Json,
    /// Permission name every request must hold, if any (e.g. `orders:read`).
    pub required_permission: Option<String>,
    /// Route rate limit (requests per minute); `None` = the default.
    pub rate_limit_per_minute: Option<i32>,
    /// Route burst size; `None` = the default.
    pub rate_limit_burst: Option<i32>,
    /// Secrets Manager id of a credential injected into upstream requests.
    pub upstream_credential_secret_id: Option<String>,
    /// Header the upstream credential is injected into, e.g. `authorization`.
    pub upstream_credential_header: Option<String>,
    /// Upstream timeout in milliseconds; `None` = the default.
    pub timeout_ms: Option<i32>,
    /// A disabled route matches nothing.
    pub enabled: bool,
    /// When the row was created.
    pub created_at: DateTimeUtc,
    /// When the row was last changed.
    pub updated_at: DateTimeUtc,
}

/// Foreign keys pointing at `route`.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// Permissions restricted to this route (`permission.route_id`).
    #[sea_orm(has_many = "super::permission::Entity")]
    Permission,
    /// IP rules of this route (`ip_rule.route_id`).
    #[sea_orm(has_many = "super::ip_rule::Entity")]
    IpRule,
    /// Rate-limit overrides for this route (`rate_limit_override.route_id`).
    #[sea_orm(has_many = "super::rate_limit_override::Entity")]
    RateLimitOverride,
    /// Secrets Manager entries backing this route's upstream credential.
    #[sea_orm(has_many = "super::managed_secret::Entity")]
    ManagedSecret,
}

impl Related<super::permission::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Permission.def()
    }
}

impl Related<super::ip_rule::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::IpRule.def()
    }
}

impl Related<super::rate_limit_override::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::RateLimitOverride.def()
    }
}

impl Related<super::managed_secret::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::ManagedSecret.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
