//! Idempotent seeding for `portcullis dev`: a bootstrap administrator with its API key, bound
//! to the builtin `portcullis-admin` role, a demo route to the echo upstream that the
//! administrator may call, and the demo route's upstream credential as a managed secret.

use chrono::Utc;
use entity::{
    api_key,
    managed_secret::{self, ManagedSecretKind},
    permission,
    policy_change::PolicyChangeOp,
    principal::{self, PrincipalKind},
    role, role_binding, route,
};
use proxy::keys::{KeyHasher, ParsedToken};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, Set,
    TransactionTrait, prelude::Uuid,
};
use serde_json::json;

use crate::service::{
    feed::{self, kind},
    management,
};

/// Name of the seeded administrator (a service account).
pub const ADMIN_NAME: &str = "admin";
/// Name of the seeded demo route.
pub const DEMO_ROUTE: &str = "demo";
/// Path prefix of the seeded demo route.
pub const DEMO_PREFIX: &str = "/demo";
/// Role that may call the demo route.
pub const DEMO_ROLE: &str = "demo-caller";

/// Secrets Manager id of the demo route's upstream credential in development.
pub const DEMO_UPSTREAM_SECRET: &str = "portcullis-dev/demo-upstream-token";
/// Header the demo route injects it in (the echo upstream shows it back).
pub const DEMO_UPSTREAM_HEADER: &str = "x-demo-upstream-token";

/// What the seed left in place.
#[derive(Debug, Clone)]
pub struct Seeded {
    /// The administrator principal.
    pub admin_id: Uuid,
    /// The administrator's bootstrap key row.
    pub admin_key_id: Uuid,
}

/// Creates (or refreshes) the administrator, its key, its `portcullis-admin` binding, the
/// demo role, binding and route.
///
/// `admin_key` is the full bootstrap key; only its prefix and HMAC are stored. Re-running
/// with the same inputs changes nothing but the demo route's upstream address.
pub async fn seed_dev(
    db: &DatabaseConnection,
    hasher: &KeyHasher,
    admin_key: &ParsedToken,
    demo_upstream_url: &str,
) -> Result<Seeded, DbErr> {
    let txn = db.begin().await?;
    let now = Utc::now();

    let admin = match principal::Entity::find()
        .filter(principal::Column::Kind.eq(PrincipalKind::ServiceAccount))
        .filter(principal::Column::Name.eq(ADMIN_NAME))
        .one(&txn)
        .await?
    {
        Some(admin) => admin,
        None => {
            let admin = principal::ActiveModel {
                id: Set(Uuid::now_v7()),
                kind: Set(PrincipalKind::ServiceAccount),
                name: Set(ADMIN_NAME.into()),
                display_name: Set("Bootstrap administrator".into()),
                email: Set(None),
                oidc_issuer: Set(None),
                oidc_subject: Set(None),
                oidc_group: Set(None),
                disabled: Set(false),
                metadata: Set(json!({ "seeded_by": "portcullis dev" })),
                created_at: Set(now),
                updated_at: Set(now),
            }
            .insert(&txn)
            .await?;
            feed::record(&txn, kind::PRINCIPAL, admin.id, PolicyChangeOp::Upsert).await?;
            admin
        }
    };

    let route = match route::Entity::find()
        .filter(route::Column::Name.eq(DEMO_ROUTE))
        .one(&txn)
        .await?
    {
        Some(existing) if existing.upstream_url == demo_upstream_url => existing,
        Some(existing) => {
            let mut active: route::ActiveModel = existing.into();
            active.upstream_url = Set(demo_upstream_url.to_owned());
            active.updated_at = Set(now);
            let route = active.update(&txn).await?;
            feed::record(&txn, kind::ROUTE, route.id, PolicyChangeOp::Upsert).await?;
            route
        }
        None => {
            let route = route::ActiveModel {
                id: Set(Uuid::now_v7()),
                name: Set(DEMO_ROUTE.into()),
                host: Set(None),
                path_prefix: Set(DEMO_PREFIX.into()),
                methods: Set(json!([])),
                upstream_url: Set(demo_upstream_url.to_owned()),
                strip_prefix: Set(true),
                auth_methods: Set(json!(["api_key"])),
                required_permission: Set(None),
                rate_limit_per_minute: Set(None),
                rate_limit_burst: Set(None),
                upstream_credential_secret_id: Set(None),
                upstream_credential_header: Set(None),
                timeout_ms: Set(None),
                enabled: Set(true),
                created_at: Set(now),
                updated_at: Set(now),
            }
            .insert(&txn)
            .await?;
            feed::record(&txn, kind::ROUTE, route.id, PolicyChangeOp::Upsert).await?;
            route
        }
    };

    if role::Entity::find()
        .filter(role::Column::Name.eq(DEMO_ROLE))
        .one(&txn)
        .await?
        .is_none()
    {
        let demo_role = role::ActiveModel {
            id: Set(Uuid::now_v7()),
            name: Set(DEMO_ROLE.into()),
            description: Set("May call every method under /demo".into()),
            builtin: Set(false),
            created_at: Set(now),
            updated_at: Set(now),
        }
        .insert(&txn)
        .await?;
        permission::ActiveModel {
            id: Set(Uuid::now_v7()),
            role_id: Set(demo_role.id),
            name: Set("demo:call".into()),
            methods: Set(json!([])),
            path_glob: Set(format!("{DEMO_PREFIX}/**")),
            route_id: Set(Some(route.id)),
            created_at: Set(now),
        }
        .insert(&txn)
        .await?;
        role_binding::ActiveModel {
            id: Set(Uuid::now_v7()),
            role_id: Set(demo_role.id),
            principal_id: Set(admin.id),
            conditions: Set(json!({})),
            expires_at: Set(None),
            reason: Set(Some("seeded by portcullis dev".into())),
            created_by: Set(None),
            created_at: Set(now),
        }
        .insert(&txn)
        .await?;
        feed::record(&txn, kind::ROLE, demo_role.id, PolicyChangeOp::Upsert).await?;
        feed::record(&txn, kind::ROLE_BINDING, admin.id, PolicyChangeOp::Upsert).await?;
    }

    let builtin = management::ensure_builtin_roles(&txn).await?;
    let admin_role = builtin
        .iter()
        .find(|(name, _)| *name == management::ADMIN_ROLE)
        .map(|(_, id)| *id)
        .ok_or_else(|| DbErr::Custom("builtin admin role missing".into()))?;
    if role_binding::Entity::find()
        .filter(role_binding::Column::RoleId.eq(admin_role))
        .filter(role_binding::Column::PrincipalId.eq(admin.id))
        .one(&txn)
        .await?
        .is_none()
    {
        role_binding::ActiveModel {
            id: Set(Uuid::now_v7()),
            role_id: Set(admin_role),
            principal_id: Set(admin.id),
            conditions: Set(json!({})),
            expires_at: Set(None),
            reason: Set(Some("bootstrap administrator (portcullis dev)".into())),
            created_by: Set(None),
            created_at: Set(now),
        }
        .insert(&txn)
        .await?;
        feed::record(&txn, kind::ROLE_BINDING, admin.id, PolicyChangeOp::Upsert).await?;
    }

    let prefix = admin_key.lookup_prefix();
    let hash = hasher.hash(admin_key).to_hex();
    let key = match api_key::Entity::find()
        .filter(api_key::Column::Prefix.eq(prefix))
        .one(&txn)
        .await?
    {
        Some(existing) if existing.hash == hash => existing,
        Some(existing) => {
            // Same key, new pepper (the secrets file was deleted): store the new hash.
            let mut active: api_key::ActiveModel = existing.into();
            active.hash = Set(hash);
            active.updated_at = Set(now);
            let key = active.update(&txn).await?;
            feed::record(&txn, kind::API_KEY, key.id, PolicyChangeOp::Upsert).await?;
            key
        }
        None => {
            let key = api_key::ActiveModel {
                id: Set(Uuid::now_v7()),
                principal_id: Set(admin.id),
                name: Set("bootstrap admin key".into()),
                prefix: Set(prefix.to_owned()),
                hash: Set(hash),
                environment: Set(admin_key.env().as_str().to_owned()),
                scopes: Set(json!([])),
                expires_at: Set(None),
                revoked_at: Set(None),
                revoked_reason: Set(None),
                suspended_at: Set(None),
                suspended_reason: Set(None),
                last_used_at: Set(None),
                last_used_ip: Set(None),
                rate_limit_per_minute: Set(None),
                rate_limit_burst: Set(None),
                remaining_uses: Set(None),
                refill_amount: Set(None),
                refill_interval_seconds: Set(None),
                last_refill_at: Set(None),
                metadata: Set(json!({ "seeded_by": "portcullis dev" })),
                rotated_from: Set(None),
                created_by: Set(None),
                created_at: Set(now),
                updated_at: Set(now),
            }
            .insert(&txn)
            .await?;
            feed::record(&txn, kind::API_KEY, key.id, PolicyChangeOp::Upsert).await?;
            key
        }
    };

    txn.commit().await?;
    Ok(Seeded {
        admin_id: admin.id,
        admin_key_id: key.id,
    })
}

/// Registers [`DEMO_UPSTREAM_SECRET`] as a managed upstream credential of the demo route and,
/// the first time only, makes the route inject it as [`DEMO_UPSTREAM_HEADER`], so a developer
/// can watch `rotateSecret` change what the upstream receives. The managed-secret row marks
/// that this was done: a developer who later removes the credential from the route keeps it
/// removed. Returns whether anything was written.
pub async fn seed_dev_upstream_credential(db: &DatabaseConnection) -> Result<bool, DbErr> {
    let txn = db.begin().await?;
    let registered = managed_secret::Entity::find()
        .filter(managed_secret::Column::SecretId.eq(DEMO_UPSTREAM_SECRET))
        .one(&txn)
        .await?
        .is_some();
    let Some(route) = route::Entity::find()
        .filter(route::Column::Name.eq(DEMO_ROUTE))
        .one(&txn)
        .await?
    else {
        return Ok(false);
    };
    if registered {
        return Ok(false);
    }
    let now = Utc::now();
    managed_secret::ActiveModel {
        id: Set(Uuid::now_v7()),
        secret_id: Set(DEMO_UPSTREAM_SECRET.to_owned()),
        kind: Set(ManagedSecretKind::UpstreamCredential),
        api_key_id: Set(None),
        route_id: Set(Some(route.id)),
        rotation_interval_days: Set(None),
        last_rotated_at: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(&txn)
    .await?;
    if route.upstream_credential_secret_id.is_none() {
        let mut active: route::ActiveModel = route.into();
        active.upstream_credential_secret_id = Set(Some(DEMO_UPSTREAM_SECRET.to_owned()));
        active.upstream_credential_header = Set(Some(DEMO_UPSTREAM_HEADER.to_owned()));
        active.updated_at = Set(now);
        let route = active.update(&txn).await?;
        feed::record(&txn, kind::ROUTE, route.id, PolicyChangeOp::Upsert).await?;
    }
    txn.commit().await?;
    Ok(true)
}
