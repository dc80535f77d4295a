//! Principals (users, groups, service accounts) and group membership.

use std::collections::HashMap;

use chrono::Utc;
use entity::{
    group_membership,
    policy_change::PolicyChangeOp,
    principal::{self, PrincipalKind},
};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, Set,
    TransactionTrait, sea_query::Query,
};
use serde_json::Value;
use uuid::Uuid;

use super::{
    feed::{self, kind},
    page::{self, Direction, Page, PageRequest},
    validate,
};
use crate::graphql::error::{ApiError, ApiResult, DbResultExt};

/// What [`create`] needs.
#[derive(Debug, Clone)]
pub struct NewPrincipal {
    /// User, group or service account.
    pub kind: PrincipalKind,
    /// Unique (per kind) handle.
    pub name: String,
    /// Shown in UIs; defaults to `name`.
    pub display_name: Option<String>,
    /// Contact address.
    pub email: Option<String>,
    /// OIDC issuer of the identity.
    pub oidc_issuer: Option<String>,
    /// OIDC subject.
    pub oidc_subject: Option<String>,
    /// For groups: the IdP group claim value.
    pub oidc_group: Option<String>,
    /// Free-form object.
    pub metadata: Option<Value>,
}

/// What [`update`] changes; `None` keeps the current value.
#[derive(Debug, Clone, Default)]
pub struct PrincipalChanges {
    /// New display name.
    pub display_name: Option<String>,
    /// New contact address (empty string clears it).
    pub email: Option<String>,
    /// Disable or enable.
    pub disabled: Option<bool>,
    /// Replaces the metadata.
    pub metadata: Option<Value>,
}

/// Filter of [`list`].
#[derive(Debug, Clone, Default)]
pub struct PrincipalFilter {
    /// Only this kind.
    pub kind: Option<PrincipalKind>,
    /// Name contains this text.
    pub name_contains: Option<String>,
}

/// Creates a principal.
#[tracing::instrument(skip_all, fields(name = %input.name))]
pub async fn create(db: &DatabaseConnection, input: NewPrincipal) -> ApiResult<principal::Model> {
    let name = validate::text("input.name", &input.name)?;
    let display_name = validate::optional_text("input.displayName", input.display_name.as_deref())?
        .unwrap_or_else(|| name.clone());
    let email = validate::optional_text("input.email", input.email.as_deref())?;
    let oidc_issuer = validate::optional_text("input.oidcIssuer", input.oidc_issuer.as_deref())?;
    let oidc_subject = validate::optional_text("input.oidcSubject", input.oidc_subject.as_deref())?;
    let oidc_group = validate::optional_text("input.oidcGroup", input.oidc_group.as_deref())?;
    if oidc_subject.is_some() != oidc_issuer.is_some() {
        return Err(ApiError::invalid(
            "input.oidcSubject",
            "oidcIssuer and oidcSubject go together",
        ));
    }
    if oidc_group.is_some() && input.kind != PrincipalKind::Group {
        return Err(ApiError::invalid(
            "input.oidcGroup",
            "only groups map an OIDC group claim",
        ));
    }
    let metadata = validate::metadata("input.metadata", input.metadata)?;
    let now = Utc::now();
    let txn = db.begin().await?;
    let principal = principal::ActiveModel {
        id: Set(Uuid::now_v7()),
        kind: Set(input.kind),
        name: Set(name.clone()),
        display_name: Set(display_name),
        email: Set(email),
        oidc_issuer: Set(oidc_issuer),
        oidc_subject: Set(oidc_subject),
        oidc_group: Set(oidc_group),
        disabled: Set(false),
        metadata: Set(metadata),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(&txn)
    .await
    .on_conflict(|| {
        format!("a principal of this kind named {name:?} or with this OIDC identity exists")
    })?;
    feed::record(&txn, kind::PRINCIPAL, principal.id, PolicyChangeOp::Upsert).await?;
    txn.commit().await?;
    Ok(principal)
}

/// Changes a principal.
#[tracing::instrument(skip_all, fields(principal_id = %id))]
pub async fn update(
    db: &DatabaseConnection,
    id: Uuid,
    changes: PrincipalChanges,
) -> ApiResult<principal::Model> {
    let display_name =
        validate::optional_text("input.displayName", changes.display_name.as_deref())?;
    let metadata = changes
        .metadata
        .map(|m| validate::metadata("input.metadata", Some(m)))
        .transpose()?;
    let txn = db.begin().await?;
    let current = get(&txn, id).await?;
    let mut active: principal::ActiveModel = current.into();
    if let Some(display_name) = display_name {
        active.display_name = Set(display_name);
    }
    if let Some(email) = changes.email {
        active.email = Set(validate::optional_text("input.email", Some(&email))?);
    }
    if let Some(disabled) = changes.disabled {
        active.disabled = Set(disabled);
    }
    if let Some(metadata) = metadata {
        active.metadata = Set(metadata);
    }
    active.updated_at = Set(Utc::now());
    let principal = active.update(&txn).await?;
    feed::record(&txn, kind::PRINCIPAL, principal.id, PolicyChangeOp::Upsert).await?;
    txn.commit().await?;
    Ok(principal)
}

/// Adds `member_id` to group `group_id`.
#[tracing::instrument(skip_all, fields(group_id = %group_id, member_id = %member_id))]
pub async fn add_member(db: &DatabaseConnection, group_id: Uuid, member_id: Uuid) -> ApiResult<()> {
    let txn = db.begin().await?;
    check_membership(&txn, group_id, member_id).await?;
    group_membership::ActiveModel {
        group_id: Set(group_id),
        member_id: Set(member_id),
        created_at: Set(Utc::now()),
    }
    .insert(&txn)
    .await
    .on_conflict(|| "the principal is already a member of the group".into())?;
    feed::record(&txn, kind::PRINCIPAL, member_id, PolicyChangeOp::Upsert).await?;
    txn.commit().await?;
    Ok(())
}

/// Removes `member_id` from group `group_id`.
#[tracing::instrument(skip_all, fields(group_id = %group_id, member_id = %member_id))]
pub async fn remove_member(
    db: &DatabaseConnection,
    group_id: Uuid,
    member_id: Uuid,
) -> ApiResult<()> {
    let txn = db.begin().await?;
    let deleted = group_membership::Entity::delete_many()
        .filter(group_membership::Column::GroupId.eq(group_id))
        .filter(group_membership::Column::MemberId.eq(member_id))
        .exec(&txn)
        .await?;
    if deleted.rows_affected == 0 {
        return Err(ApiError::not_found(
            "group membership",
            format!("{member_id} in {group_id}"),
        ));
    }
    feed::record(&txn, kind::PRINCIPAL, member_id, PolicyChangeOp::Upsert).await?;
    txn.commit().await?;
    Ok(())
}

async fn check_membership<C: sea_orm::ConnectionTrait>(
    db: &C,
    group_id: Uuid,
    member_id: Uuid,
) -> ApiResult<()> {
    let group = get(db, group_id).await?;
    if group.kind != PrincipalKind::Group {
        return Err(ApiError::invalid("groupId", "is not a group"));
    }
    let member = get(db, member_id).await?;
    if member.kind == PrincipalKind::Group {
        return Err(ApiError::invalid("memberId", "groups cannot be nested"));
    }
    Ok(())
}

/// Principal `id`.
pub async fn get<C: sea_orm::ConnectionTrait>(db: &C, id: Uuid) -> ApiResult<principal::Model> {
    principal::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| ApiError::not_found("principal", id))
}

/// Principals by id (for data loaders).
pub async fn load_many(
    db: &DatabaseConnection,
    ids: &[Uuid],
) -> Result<HashMap<Uuid, principal::Model>, DbErr> {
    Ok(principal::Entity::find()
        .filter(principal::Column::Id.is_in(ids.iter().copied()))
        .all(db)
        .await?
        .into_iter()
        .map(|p| (p.id, p))
        .collect())
}

/// The groups `id` belongs to, oldest first.
pub async fn groups_of(
    db: &DatabaseConnection,
    id: Uuid,
    page: &PageRequest<Uuid>,
) -> ApiResult<Page<principal::Model>> {
    related_through_membership(
        db,
        group_membership::Column::GroupId,
        group_membership::Column::MemberId,
        id,
        page,
    )
    .await
}

/// The members of group `id`, oldest first.
pub async fn members_of(
    db: &DatabaseConnection,
    id: Uuid,
    page: &PageRequest<Uuid>,
) -> ApiResult<Page<principal::Model>> {
    related_through_membership(
        db,
        group_membership::Column::MemberId,
        group_membership::Column::GroupId,
        id,
        page,
    )
    .await
}

/// Principals whose id is in `wanted` of the memberships where `known` is `id`.
async fn related_through_membership(
    db: &DatabaseConnection,
    wanted: group_membership::Column,
    known: group_membership::Column,
    id: Uuid,
    page: &PageRequest<Uuid>,
) -> ApiResult<Page<principal::Model>> {
    let ids = Query::select()
        .column(wanted)
        .from(group_membership::Entity)
        .and_where(known.eq(id))
        .to_owned();
    let select = principal::Entity::find().filter(principal::Column::Id.in_subquery(ids));
    Ok(page::fetch(
        db,
        select,
        principal::Column::Id,
        Direction::Ascending,
        page,
    )
    .await?)
}

/// Principals matching `filter`, oldest first.
pub async fn list(
    db: &DatabaseConnection,
    filter: &PrincipalFilter,
    page: &PageRequest<Uuid>,
) -> ApiResult<Page<principal::Model>> {
    let mut select = principal::Entity::find();
    if let Some(kind) = filter.kind {
        select = select.filter(principal::Column::Kind.eq(kind));
    }
    if let Some(text) = filter.name_contains.as_deref().filter(|t| !t.is_empty()) {
        select = select.filter(principal::Column::Name.contains(text));
    }
    Ok(page::fetch(
        db,
        select,
        principal::Column::Id,
        Direction::Ascending,
        page,
    )
    .await?)
}
