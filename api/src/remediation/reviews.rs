//! Overdue access reviews: at a campaign's deadline every undecided item gets the campaign's
//! default decision, every `revoke` not yet applied takes effect (key revoked, binding
//! deleted, grant revoked, each through the change feed so proxies refuse it within a
//! second), and the campaign closes.
//!
//! [`apply_defaults`] does all of it in the caller's transaction, so a crash leaves the
//! campaign either untouched or closed with every effect in place, and running it again on a
//! closed campaign changes nothing.

use chrono::Utc;
use entity::{
    access_review::{self, AccessReviewStatus, ReviewDecision},
    access_review_item::{self, ReviewSubjectKind},
    api_key, incident_grant,
    policy_change::PolicyChangeOp,
    role_binding,
};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder,
    Set,
};
use serde_json::json;
use uuid::Uuid;

use super::{StepError, actions::Effect};
use crate::service::{
    feed::{self, kind},
    grants,
};

/// Open campaigns whose deadline has passed, oldest deadline first.
pub async fn overdue<C: ConnectionTrait>(db: &C) -> Result<Vec<access_review::Model>, DbErr> {
    access_review::Entity::find()
        .filter(access_review::Column::Status.eq(AccessReviewStatus::Open))
        .filter(access_review::Column::Deadline.lte(Utc::now()))
        .order_by_asc(access_review::Column::Deadline)
        .all(db)
        .await
}

/// Applies campaign `review_id`'s default decision to its undecided items, carries out every
/// pending revocation, and closes it. Skipped when the campaign is already closed (or still a
/// draft, which has no deadline in force).
pub async fn apply_defaults<C: ConnectionTrait>(
    db: &C,
    review_id: Uuid,
) -> Result<Effect, StepError> {
    let review = access_review::Entity::find_by_id(review_id)
        .one(db)
        .await?
        .ok_or_else(|| StepError::permanent(format!("access review {review_id} does not exist")))?;
    if review.status != AccessReviewStatus::Open {
        return Ok((true, json!({ "already": review.status })));
    }
    let now = Utc::now();
    let reason = format!("access review {:?}: revoked", review.name);
    let items = access_review_item::Entity::find()
        .filter(access_review_item::Column::ReviewId.eq(review_id))
        .order_by_asc(access_review_item::Column::CreatedAt)
        .all(db)
        .await?;
    let mut defaulted = 0;
    let mut revoked = Vec::new();
    let mut kept = 0;
    for item in items {
        let decision = match item.decision {
            Some(decision) => decision,
            None => {
                defaulted += 1;
                review.default_action
            }
        };
        let pending_revocation = decision == ReviewDecision::Revoke && item.applied_at.is_none();
        if decision == ReviewDecision::Keep {
            kept += 1;
        }
        if pending_revocation {
            revoke_subject(db, &item, &reason).await?;
            revoked.push(json!({ "kind": item.subject_kind, "id": item.subject_id }));
        }
        if item.decision.is_none() || pending_revocation {
            let mut active: access_review_item::ActiveModel = item.clone().into();
            if item.decision.is_none() {
                active.decision = Set(Some(decision));
                active.decided_at = Set(Some(now));
                // No decider: the campaign's default applied at the deadline.
                active.decided_by = Set(None);
            }
            if pending_revocation {
                active.applied_at = Set(Some(now));
            }
            active.update(db).await?;
        }
    }
    let mut active: access_review::ActiveModel = review.into();
    active.status = Set(AccessReviewStatus::Closed);
    active.closed_at = Set(Some(now));
    active.update(db).await?;
    Ok((
        false,
        json!({ "review_id": review_id, "defaulted": defaulted, "kept": kept, "revoked": revoked }),
    ))
}

/// Takes the access of one item away (a no-op when it is already gone).
async fn revoke_subject<C: ConnectionTrait>(
    db: &C,
    item: &access_review_item::Model,
    reason: &str,
) -> Result<(), DbErr> {
    let now = Utc::now();
    match item.subject_kind {
        ReviewSubjectKind::ApiKey => {
            if let Some(key) = api_key::Entity::find_by_id(item.subject_id).one(db).await?
                && key.revoked_at.is_none()
            {
                let id = key.id;
                let mut active: api_key::ActiveModel = key.into();
                active.revoked_at = Set(Some(now));
                active.revoked_reason = Set(Some(reason.to_owned()));
                active.updated_at = Set(now);
                active.update(db).await?;
                feed::record(db, kind::API_KEY, id, PolicyChangeOp::Upsert).await?;
            }
        }
        ReviewSubjectKind::RoleBinding => {
            if let Some(binding) = role_binding::Entity::find_by_id(item.subject_id)
                .one(db)
                .await?
            {
                role_binding::Entity::delete_by_id(binding.id)
                    .exec(db)
                    .await?;
                feed::record(
                    db,
                    kind::ROLE_BINDING,
                    binding.principal_id,
                    PolicyChangeOp::Delete,
                )
                .await?;
            }
        }
        ReviewSubjectKind::IncidentGrant => {
            if let Some(grant) = incident_grant::Entity::find_by_id(item.subject_id)
                .one(db)
                .await?
            {
                // One that already ran out is left as it ended, not rewritten as revoked.
                let grantee = grant.requester_id;
                if grants::revoke_if_open(db, grant, reason, now).await? {
                    feed::record(db, kind::INCIDENT_GRANT, grantee, PolicyChangeOp::Upsert).await?;
                }
            }
        }
    }
    Ok(())
}
