//! IP rules: allow or deny networks, globally or per route, optionally until an expiry.

use chrono::{DateTime, Utc};
use entity::{
    ip_rule::{self, IpRuleAction, IpRuleSource},
    policy_change::PolicyChangeOp,
};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, Set,
    TransactionTrait,
};
use uuid::Uuid;

use super::{
    auth::Actor,
    feed::{self, kind},
    page::{self, Direction, Page, PageRequest},
    routes, validate,
};
use crate::graphql::error::{ApiError, ApiResult};

/// What [`create`] needs.
#[derive(Debug, Clone)]
pub struct NewIpRule {
    /// Network or address.
    pub cidr: String,
    /// Allow or deny.
    pub action: IpRuleAction,
    /// Only this route; `None` = every route.
    pub route_id: Option<Uuid>,
    /// Optional end of validity (in the future).
    pub expires_at: Option<DateTime<Utc>>,
    /// Why.
    pub reason: String,
}

/// Filter of [`list`].
#[derive(Debug, Clone, Default)]
pub struct IpRuleFilter {
    /// Only rules of this route.
    pub route_id: Option<Uuid>,
}

/// Creates a rule.
#[tracing::instrument(skip_all, fields(cidr = %input.cidr))]
pub async fn create(
    db: &DatabaseConnection,
    actor: &Actor,
    input: NewIpRule,
) -> ApiResult<ip_rule::Model> {
    let now = Utc::now();
    let cidr = validate::cidr("input.cidr", &input.cidr)?;
    let expires_at = validate::future("input.expiresAt", input.expires_at, now)?;
    let reason = validate::text("input.reason", &input.reason)?;
    let txn = db.begin().await?;
    if let Some(route_id) = input.route_id {
        routes::get(&txn, route_id).await?;
    }
    let rule = ip_rule::ActiveModel {
        id: Set(Uuid::now_v7()),
        route_id: Set(input.route_id),
        cidr: Set(cidr.to_string()),
        action: Set(input.action),
        expires_at: Set(expires_at),
        reason: Set(reason),
        source: Set(IpRuleSource::Manual),
        created_by: Set(Some(actor.principal_id.to_string())),
        created_at: Set(now),
    }
    .insert(&txn)
    .await?;
    feed::record(&txn, kind::IP_RULE, rule.id, PolicyChangeOp::Upsert).await?;
    txn.commit().await?;
    Ok(rule)
}

/// Deletes rule `id`.
#[tracing::instrument(skip_all, fields(rule_id = %id))]
pub async fn delete(db: &DatabaseConnection, id: Uuid) -> ApiResult<ip_rule::Model> {
    let txn = db.begin().await?;
    let rule = ip_rule::Entity::find_by_id(id)
        .one(&txn)
        .await?
        .ok_or_else(|| ApiError::not_found("ip rule", id))?;
    ip_rule::Entity::delete_by_id(id).exec(&txn).await?;
    feed::record(&txn, kind::IP_RULE, id, PolicyChangeOp::Delete).await?;
    txn.commit().await?;
    Ok(rule)
}

/// Rules matching `filter`, oldest first.
pub async fn list(
    db: &DatabaseConnection,
    filter: &IpRuleFilter,
    page: &PageRequest<Uuid>,
) -> ApiResult<Page<ip_rule::Model>> {
    let mut select = ip_rule::Entity::find();
    if let Some(route_id) = filter.route_id {
        select = select.filter(ip_rule::Column::RouteId.eq(route_id));
    }
    Ok(page::fetch(db, select, ip_rule::Column::Id, Direction::Ascending, page).await?)
}
