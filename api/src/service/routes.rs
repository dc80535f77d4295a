//! Routes: what the proxy forwards where, and who may call it.

use chrono::Utc;
use entity::{policy_change::PolicyChangeOp, route};
use proxy::normalize::{NormalizeOptions, normalize_path};
use sea_orm::{ActiveModelTrait, DatabaseConnection, EntityTrait, Set, TransactionTrait};
use serde_json::json;
use uuid::Uuid;

use super::{
    feed::{self, kind},
    page::{self, Direction, Page, PageRequest},
    validate,
};
use crate::graphql::error::{ApiError, ApiResult, DbResultExt};

/// Stored names of the credentials a route accepts (`proxy::routes::AuthMethod::parse`).
pub const AUTH_METHODS: &[&str] = &["api_key", "oidc", "grant", "anonymous"];

/// A route as the client describes it (create), or the merged result (update).
#[derive(Debug, Clone, Default)]
pub struct RouteSpec {
    /// Unique name.
    pub name: String,
    /// Host the route is bound to; `None` = any.
    pub host: Option<String>,
    /// Normalised path prefix.
    pub path_prefix: String,
    /// Methods; empty = any.
    pub methods: Vec<String>,
    /// Absolute http(s) URL of the upstream.
    pub upstream_url: String,
    /// Remove the prefix before forwarding.
    pub strip_prefix: bool,
    /// Accepted credentials (stored names, see [`AUTH_METHODS`]).
    pub auth_methods: Vec<String>,
    /// Permission every caller must hold.
    pub required_permission: Option<String>,
    /// Requests per minute and burst.
    pub rate_limit: Option<(i64, i64)>,
    /// Upstream timeout.
    pub timeout_ms: Option<i64>,
    /// Secrets Manager id of a credential to inject.
    pub upstream_credential_secret_id: Option<String>,
    /// Header the credential goes into.
    pub upstream_credential_header: Option<String>,
    /// Disabled routes are not served.
    pub enabled: bool,
}

/// Changes of [`update`]; `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct RouteChanges {
    /// See [`RouteSpec`].
    pub name: Option<String>,
    /// `Some(None)` unbinds the host.
    pub host: Option<Option<String>>,
    /// See [`RouteSpec`].
    pub path_prefix: Option<String>,
    /// See [`RouteSpec`].
    pub methods: Option<Vec<String>>,
    /// See [`RouteSpec`].
    pub upstream_url: Option<String>,
    /// See [`RouteSpec`].
    pub strip_prefix: Option<bool>,
    /// See [`RouteSpec`].
    pub auth_methods: Option<Vec<String>>,
    /// `Some(None)` clears it.
    pub required_permission: Option<Option<String>>,
    /// `Some(None)` clears it.
    pub rate_limit: Option<Option<(i64, i64)>>,
    /// `Some(None)` clears it.
    pub timeout_ms: Option<Option<i64>>,
    /// `Some(None)` clears it.
    pub upstream_credential: Option<Option<(String, String)>>,
    /// See [`RouteSpec`].
    pub enabled: Option<bool>,
}

fn validated(spec: RouteSpec) -> ApiResult<RouteSpec> {
    let name = validate::text("input.name", &spec.name)?;
    let host = validate::optional_text("input.host", spec.host.as_deref())?
        .map(|h| h.to_ascii_lowercase());
    if let Some(host) = &host
        && !host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-'))
    {
        return Err(ApiError::invalid(
            "input.host",
            "must be a host name without scheme or port",
        ));
    }
    let prefix = spec.path_prefix.trim().to_owned();
    let normalized = normalize_path(&prefix, &NormalizeOptions::default())
        .map_err(|e| ApiError::invalid("input.pathPrefix", e.to_string()))?;
    if normalized != prefix || prefix.contains('*') || prefix.chars().count() > validate::MAX_TEXT {
        return Err(ApiError::invalid(
            "input.pathPrefix",
            format!("must be a normalised path such as {normalized:?}, without wildcards"),
        ));
    }
    let methods = validate::methods("input.methods", &spec.methods)?;
    let upstream_url = spec.upstream_url.trim().to_owned();
    let uri: http::Uri = upstream_url
        .parse()
        .map_err(|_| ApiError::invalid("input.upstreamUrl", "is not a URL"))?;
    if !matches!(uri.scheme_str(), Some("http" | "https"))
        || uri.authority().is_none()
        || uri.query().is_some()
        || upstream_url.chars().count() > 2048
    {
        return Err(ApiError::invalid(
            "input.upstreamUrl",
            "must be an absolute http(s) URL without a query",
        ));
    }
    if spec.auth_methods.is_empty() {
        return Err(ApiError::invalid(
            "input.authMethods",
            "at least one method is required",
        ));
    }
    let mut auth_methods = spec.auth_methods;
    auth_methods.sort();
    auth_methods.dedup();
    let required_permission = spec
        .required_permission
        .as_deref()
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| validate::permission_name("input.requiredPermission", p))
        .transpose()?;
    if required_permission
        .as_deref()
        .is_some_and(|p| p.starts_with(proxy::policy::MANAGEMENT_NAMESPACE))
    {
        // Management roles would then open the route: keep the two apart.
        return Err(ApiError::invalid(
            "input.requiredPermission",
            "the portcullis: namespace is reserved for the management API",
        ));
    }
    let rate_limit = spec
        .rate_limit
        .map(|(rate, burst)| {
            Ok::<_, ApiError>((
                validate::positive("input.rateLimit.perMinute", rate, 1_000_000)?,
                validate::positive("input.rateLimit.burst", burst, 1_000_000)?,
            ))
        })
        .transpose()?;
    let timeout_ms = spec
        .timeout_ms
        .map(|ms| validate::positive("input.timeoutMs", ms, 300_000))
        .transpose()?;
    let secret_id = validate::optional_text(
        "input.upstreamCredential.secretId",
        spec.upstream_credential_secret_id.as_deref(),
    )?;
    let header = validate::optional_text(
        "input.upstreamCredential.header",
        spec.upstream_credential_header.as_deref(),
    )?
    .map(|h| h.to_ascii_lowercase());
    if secret_id.is_some() != header.is_some() {
        return Err(ApiError::invalid(
            "input.upstreamCredential",
            "secretId and header go together",
        ));
    }
    if let Some(header) = &header
        && http::HeaderName::from_bytes(header.as_bytes()).is_err()
    {
        return Err(ApiError::invalid(
            "input.upstreamCredential.header",
            "is not a valid header name",
        ));
    }
    Ok(RouteSpec {
        name,
        host,
        path_prefix: prefix,
        methods,
        upstream_url,
        strip_prefix: spec.strip_prefix,
        auth_methods,
        required_permission,
        rate_limit,
        timeout_ms,
        upstream_credential_secret_id: secret_id,
        upstream_credential_header: header,
        enabled: spec.enabled,
    })
}

fn apply(active: &mut route::ActiveModel, spec: RouteSpec) {
    active.name = Set(spec.name);
    active.host = Set(spec.host);
    active.path_prefix = Set(spec.path_prefix);
    active.methods = Set(json!(spec.methods));
    active.upstream_url = Set(spec.upstream_url);
    active.strip_prefix = Set(spec.strip_prefix);
    active.auth_methods = Set(json!(spec.auth_methods));
    active.required_permission = Set(spec.required_permission);
    active.rate_limit_per_minute = Set(spec.rate_limit.map(|r| r.0 as i32));
    active.rate_limit_burst = Set(spec.rate_limit.map(|r| r.1 as i32));
    active.timeout_ms = Set(spec.timeout_ms.map(|ms| ms as i32));
    active.upstream_credential_secret_id = Set(spec.upstream_credential_secret_id);
    active.upstream_credential_header = Set(spec.upstream_credential_header);
    active.enabled = Set(spec.enabled);
    active.updated_at = Set(Utc::now());
}

/// The stored form of `route` as a spec, for merging changes.
pub fn spec_of(route: &route::Model) -> RouteSpec {
    RouteSpec {
        name: route.name.clone(),
        host: route.host.clone(),
        path_prefix: route.path_prefix.clone(),
        methods: json_strings(&route.methods),
        upstream_url: route.upstream_url.clone(),
        strip_prefix: route.strip_prefix,
        auth_methods: json_strings(&route.auth_methods),
        required_permission: route.required_permission.clone(),
        rate_limit: route
            .rate_limit_per_minute
            .map(|r| (i64::from(r), i64::from(route.rate_limit_burst.unwrap_or(r)))),
        timeout_ms: route.timeout_ms.map(i64::from),
        upstream_credential_secret_id: route.upstream_credential_secret_id.clone(),
        upstream_credential_header: route.upstream_credential_header.clone(),
        enabled: route.enabled,
    }
}

/// The strings of a JSON array column.
pub fn json_strings(value: &serde_json::Value) -> Vec<String> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Creates a route.
#[tracing::instrument(skip_all, fields(name = %spec.name))]
pub async fn create(db: &DatabaseConnection, spec: RouteSpec) -> ApiResult<route::Model> {
    let spec = validated(spec)?;
    let name = spec.name.clone();
    let now = Utc::now();
    let mut active = route::ActiveModel {
        id: Set(Uuid::now_v7()),
        created_at: Set(now),
        ..Default::default()
    };
    apply(&mut active, spec);
    let txn = db.begin().await?;
    let route = active
        .insert(&txn)
        .await
        .on_conflict(|| format!("a route named {name:?} exists"))?;
    feed::record(&txn, kind::ROUTE, route.id, PolicyChangeOp::Upsert).await?;
    txn.commit().await?;
    Ok(route)
}

/// Changes route `id`.
#[tracing::instrument(skip_all, fields(route_id = %id))]
pub async fn update(
    db: &DatabaseConnection,
    id: Uuid,
    changes: RouteChanges,
) -> ApiResult<route::Model> {
    let txn = db.begin().await?;
    let current = get(&txn, id).await?;
    let mut spec = spec_of(&current);
    if let Some(v) = changes.name {
        spec.name = v;
    }
    if let Some(v) = changes.host {
        spec.host = v;
    }
    if let Some(v) = changes.path_prefix {
        spec.path_prefix = v;
    }
    if let Some(v) = changes.methods {
        spec.methods = v;
    }
    if let Some(v) = changes.upstream_url {
        spec.upstream_url = v;
    }
    if let Some(v) = changes.strip_prefix {
        spec.strip_prefix = v;
    }
    if let Some(v) = changes.auth_methods {
        spec.auth_methods = v;
    }
    if let Some(v) = changes.required_permission {
        spec.required_permission = v;
    }
    if let Some(v) = changes.rate_limit {
        spec.rate_limit = v;
    }
    if let Some(v) = changes.timeout_ms {
        spec.timeout_ms = v;
    }
    if let Some(v) = changes.upstream_credential {
        spec.upstream_credential_secret_id = v.as_ref().map(|c| c.0.clone());
        spec.upstream_credential_header = v.map(|c| c.1);
    }
    if let Some(v) = changes.enabled {
        spec.enabled = v;
    }
    let spec = validated(spec)?;
    let name = spec.name.clone();
    let mut active: route::ActiveModel = current.into();
    apply(&mut active, spec);
    let route = active
        .update(&txn)
        .await
        .on_conflict(|| format!("a route named {name:?} exists"))?;
    feed::record(&txn, kind::ROUTE, route.id, PolicyChangeOp::Upsert).await?;
    txn.commit().await?;
    Ok(route)
}

/// Deletes route `id` (its route-scoped permissions and IP rules go with it).
#[tracing::instrument(skip_all, fields(route_id = %id))]
pub async fn delete(db: &DatabaseConnection, id: Uuid) -> ApiResult<route::Model> {
    let txn = db.begin().await?;
    let route = get(&txn, id).await?;
    route::Entity::delete_by_id(id).exec(&txn).await?;
    feed::record(&txn, kind::ROUTE, id, PolicyChangeOp::Delete).await?;
    txn.commit().await?;
    Ok(route)
}

/// Route `id`.
pub async fn get<C: sea_orm::ConnectionTrait>(db: &C, id: Uuid) -> ApiResult<route::Model> {
    route::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| ApiError::not_found("route", id))
}

/// Routes, oldest first.
pub async fn list(
    db: &DatabaseConnection,
    page: &PageRequest<Uuid>,
) -> ApiResult<Page<route::Model>> {
    Ok(page::fetch(
        db,
        route::Entity::find(),
        route::Column::Id,
        Direction::Ascending,
        page,
    )
    .await?)
}
