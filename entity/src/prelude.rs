//! Every entity under its table's name (`Principal`, `ApiKey`, ...) and every enumerated column
//! type, for `use entity::prelude::*;`.

pub use super::{
    access_review::{AccessReviewStatus, Entity as AccessReview, ReviewDecision},
    access_review_item::{Entity as AccessReviewItem, ReviewSubjectKind},
    api_key::Entity as ApiKey,
    audit_event::{AuditDecision, AuditEventKind, Entity as AuditEvent},
    group_membership::Entity as GroupMembership,
    incident_grant::{Entity as IncidentGrant, IncidentGrantStatus},
    ip_rule::{Entity as IpRule, IpRuleAction, IpRuleSource},
    managed_secret::{Entity as ManagedSecret, ManagedSecretKind},
    notification_outbox::{Entity as NotificationOutbox, OutboxStatus},
    permission::Entity as Permission,
    policy_change::{Entity as PolicyChange, PolicyChangeOp},
    principal::{Entity as Principal, PrincipalKind},
    rate_limit_override::Entity as RateLimitOverride,
    remediation_playbook::Entity as RemediationPlaybook,
    remediation_run::{Entity as RemediationRun, RemediationRunStatus},
    remediation_step::{Entity as RemediationStep, RemediationStepStatus},
    role::Entity as Role,
    role_binding::Entity as RoleBinding,
    route::Entity as Route,
    security_event::{Entity as SecurityEvent, SecurityEventStatus, Severity},
    sns_message::Entity as SnsMessage,
    usage_counter::Entity as UsageCounter,
};
