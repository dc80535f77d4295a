//! Managed secrets: the Secrets Manager secrets Portcullis rotates. Registration checks the
//! secret exists in Secrets Manager (when this process has a secret store); reads of its
//! versions go live to Secrets Manager. Only ids and staging labels are ever read here, NEVER a
//! secret value.

use chrono::Utc;
use entity::managed_secret::{self, ManagedSecretKind};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, Set,
    TransactionTrait,
};
use uuid::Uuid;

use super::{
    ServiceContext, api_keys,
    page::{self, Direction, Page, PageRequest},
    routes, validate,
};
use crate::{
    aws::{error::AwsError, secrets::VersionStages},
    graphql::error::{ApiError, ApiResult, DbResultExt},
};

/// Longest scheduled rotation period, as Secrets Manager's own `AutomaticallyAfterDays`.
pub const MAX_ROTATION_INTERVAL_DAYS: i64 = 1000;

/// AWS's error code for a secret that does not exist.
const RESOURCE_NOT_FOUND: &str = "ResourceNotFoundException";

/// What [`register`] needs.
#[derive(Debug, Clone)]
pub struct NewManagedSecret {
    /// Secrets Manager name or ARN.
    pub secret_id: String,
    /// What the secret holds.
    pub kind: ManagedSecretKind,
    /// The API key it holds (`ApiKey` only, required there).
    pub api_key_id: Option<Uuid>,
    /// The route whose upstream credential it is (`UpstreamCredential` only, optional).
    pub route_id: Option<Uuid>,
    /// Scheduled rotation period; `None` = on demand only.
    pub rotation_interval_days: Option<i32>,
}

/// What [`update`] changes; `None` = unchanged, `Some(None)` = clear.
#[derive(Debug, Clone, Default)]
pub struct ManagedSecretPatch {
    /// New scheduled rotation period.
    pub rotation_interval_days: Option<Option<i32>>,
}

fn interval(days: Option<i32>) -> ApiResult<Option<i32>> {
    days.map(|d| {
        validate::positive(
            "input.rotationIntervalDays",
            i64::from(d),
            MAX_ROTATION_INTERVAL_DAYS,
        )
        .map(|_| d)
    })
    .transpose()
}

/// Which references `kind` takes: an API-key secret holds exactly one key and belongs to no
/// route; an upstream credential belongs to a route (or none) and holds no key.
fn check_references(input: &NewManagedSecret) -> ApiResult<()> {
    match input.kind {
        ManagedSecretKind::ApiKey if input.api_key_id.is_none() => Err(ApiError::invalid(
            "input.apiKeyId",
            "is required for an API_KEY secret",
        )),
        ManagedSecretKind::ApiKey if input.route_id.is_some() => Err(ApiError::invalid(
            "input.routeId",
            "must be absent for an API_KEY secret",
        )),
        ManagedSecretKind::UpstreamCredential if input.api_key_id.is_some() => {
            Err(ApiError::invalid(
                "input.apiKeyId",
                "must be absent for an UPSTREAM_CREDENTIAL secret",
            ))
        }
        _ => Ok(()),
    }
}

/// Registers a secret for Portcullis to manage. Nothing is written to Secrets Manager.
#[tracing::instrument(skip_all, fields(secret_id = %input.secret_id))]
pub async fn register(
    services: &ServiceContext,
    input: NewManagedSecret,
) -> ApiResult<managed_secret::Model> {
    let secret_id = validate::secret_id("input.secretId", &input.secret_id)?;
    let rotation_interval_days = interval(input.rotation_interval_days)?;
    check_references(&input)?;
    let db = &services.db;
    if let Some(key_id) = input.api_key_id {
        api_keys::get(db, key_id).await?;
    }
    if let Some(route_id) = input.route_id {
        routes::get(db, route_id).await?;
    }
    if let Some(store) = services.remediation.as_ref().map(|engine| engine.secrets()) {
        // A typo here would only surface at the first rotation, as a failed run.
        store
            .describe_stages(&secret_id)
            .await
            .map_err(|error| match error.code.as_str() {
                RESOURCE_NOT_FOUND => {
                    ApiError::invalid("input.secretId", "no such secret in Secrets Manager")
                }
                _ => ApiError::from(error),
            })?;
    }
    let now = Utc::now();
    managed_secret::ActiveModel {
        id: Set(Uuid::now_v7()),
        secret_id: Set(secret_id.clone()),
        kind: Set(input.kind),
        api_key_id: Set(input.api_key_id),
        route_id: Set(input.route_id),
        rotation_interval_days: Set(rotation_interval_days),
        last_rotated_at: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(db)
    .await
    .on_conflict(|| format!("secret {secret_id:?} is already managed"))
}

async fn find<C: sea_orm::ConnectionTrait>(
    db: &C,
    secret_id: &str,
) -> ApiResult<Option<managed_secret::Model>> {
    Ok(managed_secret::Entity::find()
        .filter(managed_secret::Column::SecretId.eq(secret_id))
        .one(db)
        .await?)
}

async fn existing<C: sea_orm::ConnectionTrait>(
    db: &C,
    secret_id: &str,
) -> ApiResult<managed_secret::Model> {
    find(db, secret_id)
        .await?
        .ok_or_else(|| ApiError::not_found("managed secret", secret_id))
}

/// Changes managed secret `secret_id`.
#[tracing::instrument(skip_all, fields(secret_id = %secret_id))]
pub async fn update(
    db: &DatabaseConnection,
    secret_id: &str,
    patch: ManagedSecretPatch,
) -> ApiResult<managed_secret::Model> {
    let txn = db.begin().await?;
    let mut active: managed_secret::ActiveModel = existing(&txn, secret_id).await?.into();
    if let Some(days) = patch.rotation_interval_days {
        active.rotation_interval_days = Set(interval(days)?);
    }
    active.updated_at = Set(Utc::now());
    let row = active.update(&txn).await?;
    txn.commit().await?;
    Ok(row)
}

/// Stops managing `secret_id`: removes our row only; the AWS secret is left as it is.
#[tracing::instrument(skip_all, fields(secret_id = %secret_id))]
pub async fn delete(db: &DatabaseConnection, secret_id: &str) -> ApiResult<managed_secret::Model> {
    let txn = db.begin().await?;
    let row = existing(&txn, secret_id).await?;
    managed_secret::Entity::delete_by_id(row.id)
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(row)
}

/// Managed secret `secret_id`, if registered.
pub async fn get(
    db: &DatabaseConnection,
    secret_id: &str,
) -> ApiResult<Option<managed_secret::Model>> {
    find(db, secret_id).await
}

/// Managed secrets, oldest first.
pub async fn list(
    db: &DatabaseConnection,
    page: &PageRequest<Uuid>,
) -> ApiResult<Page<managed_secret::Model>> {
    Ok(page::fetch(
        db,
        managed_secret::Entity::find(),
        managed_secret::Column::Id,
        Direction::Ascending,
        page,
    )
    .await?)
}

/// The versions of `secret_id` and their staging labels, live from Secrets Manager
/// (`DescribeSecret`, which returns no value).
pub async fn versions(services: &ServiceContext, secret_id: &str) -> ApiResult<VersionStages> {
    services
        .engine()?
        .secrets()
        .describe_stages(secret_id)
        .await
        .map_err(|error: AwsError| match error.code.as_str() {
            RESOURCE_NOT_FOUND => ApiError::not_found("Secrets Manager secret", secret_id),
            _ => ApiError::from(error),
        })
}
