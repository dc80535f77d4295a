//! Step actions: the concrete, self-contained instructions stored in `remediation_step`
//! (`action` + `params`), and the executors of those whose effect is in our database.
//!
//! Every executor is idempotent: it first checks whether its effect is already there, and it
//! writes the effect, the change-feed entry and the step's completion in ONE transaction
//! ([`super::worker::complete_step`]), so a step is never half done.

use chrono::{Duration, Utc};
use entity::{
    api_key,
    incident_grant::{self, IncidentGrantStatus},
    ip_rule::{self, IpRuleAction, IpRuleSource},
    notification_outbox,
    policy_change::PolicyChangeOp,
    rate_limit_override, remediation_step, role_binding, route,
    security_event::Severity,
};
use sea_orm::{ActiveModelTrait, ColumnTrait, DatabaseTransaction, EntityTrait, QueryFilter, Set};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::StepError;
use crate::{
    outbox::{self, NewNotification},
    service::{
        feed::{self, kind},
        grants,
    },
};

/// One step of a run, as stored: `action` is the serde tag, the rest is `params`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum StepAction {
    /// Deny `cidr` on every route until `duration_secs` after the step runs.
    BlockIp {
        /// Network to deny, e.g. `203.0.113.7/32`.
        cidr: String,
        /// Length of the block.
        duration_secs: i64,
        /// Recorded on the IP rule.
        reason: String,
    },
    /// Remove the remediation blocks of `cidr`.
    UnblockIp {
        /// Network to release.
        cidr: String,
    },
    /// Suspend key `key_id`.
    SuspendKey {
        /// The key.
        key_id: Uuid,
        /// Recorded on the key.
        reason: String,
    },
    /// Revoke key `key_id` for good.
    RevokeKey {
        /// The key.
        key_id: Uuid,
        /// Recorded on the key.
        reason: String,
    },
    /// Let key `key_id` expire `grace_secs` after the step runs (rotation grace period).
    ExpireKey {
        /// The key.
        key_id: Uuid,
        /// Grace period.
        grace_secs: i64,
    },
    /// Delete the role bindings of `principal_id` (only those of `role_id`, when given).
    RevokeBindings {
        /// Whose bindings.
        principal_id: Uuid,
        /// Only this role.
        role_id: Option<Uuid>,
    },
    /// Revoke the active incident grants of `principal_id`.
    RevokeGrants {
        /// Whose grants.
        principal_id: Uuid,
        /// Recorded on the grant.
        reason: String,
    },
    /// Add a temporary rate-limit override: the subject's current limit times `factor`.
    TightenRateLimit {
        /// Principal subject.
        principal_id: Option<Uuid>,
        /// Key subject.
        api_key_id: Option<Uuid>,
        /// Route whose limit is the base, when the key has none.
        route_id: Option<Uuid>,
        /// Multiplier (0 < factor < 1 tightens).
        factor: f64,
        /// How long the override lasts.
        duration_secs: i64,
        /// Base limit when neither the key nor the route sets one (the proxy's default).
        default_per_minute: i32,
        /// Base burst when neither the key nor the route sets one.
        default_burst: i32,
    },
    /// Close overdue access review `review_id`: default decisions, revocations, status.
    ApplyReviewDefaults {
        /// The campaign.
        review_id: Uuid,
    },
    /// Secrets Manager rotation, step 1: stage a new key as `AWSPENDING`.
    #[serde(rename = "rotate_secret:create")]
    RotateCreate {
        /// Secret id (name or ARN).
        secret_id: String,
        /// The key being replaced.
        old_key_id: Uuid,
    },
    /// Rotation step 1 of an upstream credential: stage a freshly generated value as
    /// `AWSPENDING`.
    #[serde(rename = "rotate_secret:create_credential")]
    RotateCreateCredential {
        /// Secret id (name or ARN).
        secret_id: String,
    },
    /// Rotation step 2 (nothing to configure: the key is ours, and an upstream reads its
    /// shared credential from the same secret).
    #[serde(rename = "rotate_secret:set")]
    RotateSet {
        /// Secret id.
        secret_id: String,
    },
    /// Rotation step 3: the pending key verifies.
    #[serde(rename = "rotate_secret:test")]
    RotateTest {
        /// Secret id.
        secret_id: String,
    },
    /// Rotation step 4: `AWSCURRENT` moves to the new version.
    #[serde(rename = "rotate_secret:finish")]
    RotateFinish {
        /// Secret id.
        secret_id: String,
    },
    /// Write a notification to the outbox.
    Notify {
        /// SNS topic.
        topic_arn: String,
        /// `event_type` attribute.
        event_type: String,
        /// `severity` attribute.
        severity: Severity,
        /// `principal` attribute.
        principal: Option<String>,
        /// FIFO message group.
        group: Option<String>,
        /// `Subject`.
        subject: String,
        /// JSON body.
        message: Value,
    },
}

impl StepAction {
    /// `(action, params)` for the step row.
    pub fn to_columns(&self) -> (String, Value) {
        let mut value = serde_json::to_value(self).unwrap_or_else(|_| json!({}));
        let action = value
            .as_object_mut()
            .and_then(|o| o.remove("action"))
            .and_then(|a| a.as_str().map(str::to_owned))
            .unwrap_or_default();
        (action, value)
    }

    /// Parses a step row back.
    pub fn from_step(step: &remediation_step::Model) -> Result<Self, StepError> {
        let mut params = step.params.clone();
        if let Some(object) = params.as_object_mut() {
            object.insert("action".into(), Value::String(step.action.clone()));
        }
        serde_json::from_value(params)
            .map_err(|e| StepError::permanent(format!("invalid step {:?}: {e}", step.action)))
    }

    /// Whether the step calls AWS (and so runs outside a database transaction).
    pub fn is_rotation(&self) -> bool {
        matches!(
            self,
            Self::RotateCreate { .. }
                | Self::RotateCreateCredential { .. }
                | Self::RotateSet { .. }
                | Self::RotateTest { .. }
                | Self::RotateFinish { .. }
        )
    }
}

/// What a database action did: `(skipped, output)`.
pub type Effect = (bool, Value);

/// Applies a database action inside `txn` (the caller completes the step in the same
/// transaction). `run_id` tags what the action creates, which is how repeats are detected.
pub async fn apply(
    txn: &DatabaseTransaction,
    run_id: Uuid,
    seq: i32,
    action: &StepAction,
) -> Result<Effect, StepError> {
    let now = Utc::now();
    let creator = format!("remediation:{run_id}");
    match action {
        StepAction::BlockIp {
            cidr,
            duration_secs,
            reason,
        } => {
            let net: ipnet::IpNet = cidr
                .parse()
                .map_err(|e| StepError::permanent(format!("invalid cidr {cidr:?}: {e}")))?;
            let existing = ip_rule::Entity::find()
                .filter(ip_rule::Column::CreatedBy.eq(creator.as_str()))
                .filter(ip_rule::Column::Cidr.eq(net.to_string()))
                .one(txn)
                .await?;
            if let Some(rule) = existing {
                return Ok((false, json!({ "ip_rule_id": rule.id, "already": true })));
            }
            let expires_at = now + Duration::seconds(*duration_secs);
            let rule = ip_rule::ActiveModel {
                id: Set(Uuid::now_v7()),
                route_id: Set(None),
                cidr: Set(net.to_string()),
                action: Set(IpRuleAction::Deny),
                expires_at: Set(Some(expires_at)),
                reason: Set(reason.clone()),
                source: Set(IpRuleSource::Remediation),
                created_by: Set(Some(creator)),
                created_at: Set(now),
            }
            .insert(txn)
            .await?;
            feed::record(txn, kind::IP_RULE, rule.id, PolicyChangeOp::Upsert).await?;
            Ok((
                false,
                json!({ "ip_rule_id": rule.id, "expires_at": expires_at }),
            ))
        }
        StepAction::UnblockIp { cidr } => {
            let rules = ip_rule::Entity::find()
                .filter(ip_rule::Column::Cidr.eq(cidr.as_str()))
                .filter(ip_rule::Column::Source.eq(IpRuleSource::Remediation))
                .filter(ip_rule::Column::Action.eq(IpRuleAction::Deny))
                .all(txn)
                .await?;
            let mut removed = Vec::new();
            for rule in rules {
                ip_rule::Entity::delete_by_id(rule.id).exec(txn).await?;
                feed::record(txn, kind::IP_RULE, rule.id, PolicyChangeOp::Delete).await?;
                removed.push(rule.id);
            }
            Ok((removed.is_empty(), json!({ "removed": removed })))
        }
        StepAction::SuspendKey { key_id, reason } => {
            let key = find_key(txn, *key_id).await?;
            if key.revoked_at.is_some() {
                return Ok((true, json!({ "already": "revoked" })));
            }
            if key.suspended_at.is_some() {
                return Ok((true, json!({ "already": "suspended" })));
            }
            let mut active: api_key::ActiveModel = key.into();
            active.suspended_at = Set(Some(now));
            active.suspended_reason = Set(Some(reason.clone()));
            active.updated_at = Set(now);
            active.update(txn).await?;
            feed::record(txn, kind::API_KEY, *key_id, PolicyChangeOp::Upsert).await?;
            Ok((false, json!({ "suspended": key_id })))
        }
        StepAction::RevokeKey { key_id, reason } => {
            let key = find_key(txn, *key_id).await?;
            if key.revoked_at.is_some() {
                return Ok((false, json!({ "revoked": key_id, "already": true })));
            }
            let mut active: api_key::ActiveModel = key.into();
            active.revoked_at = Set(Some(now));
            active.revoked_reason = Set(Some(reason.clone()));
            active.updated_at = Set(now);
            active.update(txn).await?;
            feed::record(txn, kind::API_KEY, *key_id, PolicyChangeOp::Upsert).await?;
            Ok((false, json!({ "revoked": key_id })))
        }
        StepAction::ExpireKey { key_id, grace_secs } => {
            let key = find_key(txn, *key_id).await?;
            let grace_end = now + Duration::seconds(*grace_secs);
            if key.revoked_at.is_some() || key.expires_at.is_some_and(|at| at <= grace_end) {
                return Ok((
                    true,
                    json!({ "already": true, "expires_at": key.expires_at }),
                ));
            }
            let mut active: api_key::ActiveModel = key.into();
            active.expires_at = Set(Some(grace_end));
            active.updated_at = Set(now);
            active.update(txn).await?;
            feed::record(txn, kind::API_KEY, *key_id, PolicyChangeOp::Upsert).await?;
            Ok((false, json!({ "expires_at": grace_end })))
        }
        StepAction::RevokeBindings {
            principal_id,
            role_id,
        } => {
            let mut select = role_binding::Entity::find()
                .filter(role_binding::Column::PrincipalId.eq(*principal_id));
            if let Some(role_id) = role_id {
                select = select.filter(role_binding::Column::RoleId.eq(*role_id));
            }
            let bindings = select.all(txn).await?;
            let removed: Vec<Uuid> = bindings.iter().map(|b| b.id).collect();
            for binding in &bindings {
                role_binding::Entity::delete_by_id(binding.id)
                    .exec(txn)
                    .await?;
            }
            if !removed.is_empty() {
                feed::record(
                    txn,
                    kind::ROLE_BINDING,
                    *principal_id,
                    PolicyChangeOp::Delete,
                )
                .await?;
            }
            Ok((removed.is_empty(), json!({ "removed": removed })))
        }
        StepAction::RevokeGrants {
            principal_id,
            reason,
        } => {
            // Pending requests too: approved later, they would reopen access.
            let grants = incident_grant::Entity::find()
                .filter(incident_grant::Column::RequesterId.eq(*principal_id))
                .filter(
                    incident_grant::Column::Status
                        .is_in([IncidentGrantStatus::Approved, IncidentGrantStatus::Pending]),
                )
                .all(txn)
                .await?;
            let mut revoked = Vec::new();
            for grant in grants {
                let id = grant.id;
                if grants::revoke_if_open(txn, grant, reason, now).await? {
                    revoked.push(id);
                }
            }
            if !revoked.is_empty() {
                feed::record(
                    txn,
                    kind::INCIDENT_GRANT,
                    *principal_id,
                    PolicyChangeOp::Upsert,
                )
                .await?;
            }
            Ok((revoked.is_empty(), json!({ "revoked": revoked })))
        }
        StepAction::TightenRateLimit {
            principal_id,
            api_key_id,
            route_id,
            factor,
            duration_secs,
            default_per_minute,
            default_burst,
        } => {
            if let Some(existing) = rate_limit_override::Entity::find()
                .filter(rate_limit_override::Column::CreatedBy.eq(creator.as_str()))
                .one(txn)
                .await?
            {
                return Ok((
                    false,
                    json!({ "override_id": existing.id, "already": true }),
                ));
            }
            let mut base = (*default_per_minute, *default_burst);
            if let Some(key_id) = api_key_id
                && let Some(key) = api_key::Entity::find_by_id(*key_id).one(txn).await?
                && let (Some(rate), Some(burst)) = (key.rate_limit_per_minute, key.rate_limit_burst)
            {
                base = (rate, burst);
            } else if let Some(route_id) = route_id
                && let Some(route) = route::Entity::find_by_id(*route_id).one(txn).await?
                && let (Some(rate), Some(burst)) =
                    (route.rate_limit_per_minute, route.rate_limit_burst)
            {
                base = (rate, burst);
            }
            let scale = |v: i32| ((f64::from(v) * factor).floor() as i32).max(1);
            let (per_minute, burst) = (scale(base.0), scale(base.1));
            let expires_at = now + Duration::seconds(*duration_secs);
            let row = rate_limit_override::ActiveModel {
                id: Set(Uuid::now_v7()),
                principal_id: Set(*principal_id),
                api_key_id: Set(if principal_id.is_some() {
                    None
                } else {
                    *api_key_id
                }),
                route_id: Set(None),
                per_minute: Set(per_minute),
                burst: Set(burst),
                reason: Set(format!("remediation run {run_id}: traffic spike")),
                expires_at: Set(expires_at),
                created_by: Set(Some(creator)),
                created_at: Set(now),
            }
            .insert(txn)
            .await?;
            feed::record(
                txn,
                kind::RATE_LIMIT_OVERRIDE,
                row.id,
                PolicyChangeOp::Upsert,
            )
            .await?;
            Ok((
                false,
                json!({ "override_id": row.id, "per_minute": per_minute, "burst": burst, "expires_at": expires_at }),
            ))
        }
        StepAction::Notify {
            topic_arn,
            event_type,
            severity,
            principal,
            group,
            subject,
            message,
        } => {
            let dedup_id = format!("remediation:{run_id}:{seq}");
            if let Some(existing) = notification_outbox::Entity::find()
                .filter(notification_outbox::Column::DedupId.eq(dedup_id.as_str()))
                .one(txn)
                .await?
            {
                return Ok((false, json!({ "outbox_id": existing.id, "already": true })));
            }
            let row = outbox::enqueue(
                txn,
                NewNotification {
                    topic_arn: topic_arn.clone(),
                    message_group: group.clone(),
                    dedup_id,
                    event_type: event_type.clone(),
                    severity: *severity,
                    principal: principal.clone(),
                    subject: subject.clone(),
                    message: message.to_string(),
                },
            )
            .await?;
            Ok((false, json!({ "outbox_id": row.id })))
        }
        StepAction::ApplyReviewDefaults { review_id } => {
            super::reviews::apply_defaults(txn, *review_id).await
        }
        StepAction::RotateCreate { .. }
        | StepAction::RotateCreateCredential { .. }
        | StepAction::RotateSet { .. }
        | StepAction::RotateTest { .. }
        | StepAction::RotateFinish { .. } => Err(StepError::permanent(
            "rotation steps are not database actions".to_owned(),
        )),
    }
}

async fn find_key(txn: &DatabaseTransaction, id: Uuid) -> Result<api_key::Model, StepError> {
    api_key::Entity::find_by_id(id)
        .one(txn)
        .await?
        .ok_or_else(|| StepError::permanent(format!("api key {id} does not exist")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actions_round_trip_through_step_columns() {
        let actions = [
            StepAction::BlockIp {
                cidr: "192.0.2.1/32".into(),
                duration_secs: 900,
                reason: "burst".into(),
            },
            StepAction::RotateCreate {
                secret_id: "s".into(),
                old_key_id: Uuid::now_v7(),
            },
        ];
        for action in actions {
            let (name, params) = action.to_columns();
            let now = Utc::now();
            let step = remediation_step::Model {
                id: Uuid::now_v7(),
                run_id: Uuid::now_v7(),
                seq: 0,
                action: name,
                params,
                status: entity::remediation_step::RemediationStepStatus::Pending,
                attempts: 0,
                last_error: None,
                output: None,
                next_attempt_at: None,
                started_at: None,
                finished_at: None,
                created_at: now,
            };
            let parsed = StepAction::from_step(&step).unwrap_or_else(|e| panic!("{e:?}"));
            assert_eq!(parsed, action);
        }
        let (name, _) = StepAction::RotateTest {
            secret_id: "s".into(),
        }
        .to_columns();
        assert_eq!(name, "rotate_secret:test");
    }
}
