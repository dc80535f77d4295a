//! GraphQL shapes of audit and security events.

use async_graphql::{Enum, InputObject, Json, SimpleObject};
use chrono::{DateTime, Utc};
use entity::{
    audit_event::{self, AuditDecision, AuditEventKind},
    security_event::{self, SecurityEventStatus, Severity},
};
use serde_json::Value;
use uuid::Uuid;

use crate::service::audit::{Anchor, AuditFilter, ChainVerification, SecurityFilter};

/// What produced an audit event.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(name = "AuditEventKind")]
pub enum AuditKindOut {
    /// A proxied request.
    ProxyRequest,
    /// A management API mutation.
    Management,
    /// An inbound webhook.
    Webhook,
}

impl From<AuditEventKind> for AuditKindOut {
    fn from(k: AuditEventKind) -> Self {
        match k {
            AuditEventKind::ProxyRequest => Self::ProxyRequest,
            AuditEventKind::Management => Self::Management,
            AuditEventKind::Webhook => Self::Webhook,
        }
    }
}

impl From<AuditKindOut> for AuditEventKind {
    fn from(k: AuditKindOut) -> Self {
        match k {
            AuditKindOut::ProxyRequest => Self::ProxyRequest,
            AuditKindOut::Management => Self::Management,
            AuditKindOut::Webhook => Self::Webhook,
        }
    }
}

/// Allow or deny.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(name = "Decision")]
pub enum DecisionOut {
    /// Allowed.
    Allow,
    /// Refused.
    Deny,
}

impl From<AuditDecision> for DecisionOut {
    fn from(d: AuditDecision) -> Self {
        match d {
            AuditDecision::Allow => Self::Allow,
            AuditDecision::Deny => Self::Deny,
        }
    }
}

impl From<DecisionOut> for AuditDecision {
    fn from(d: DecisionOut) -> Self {
        match d {
            DecisionOut::Allow => Self::Allow,
            DecisionOut::Deny => Self::Deny,
        }
    }
}

/// Severity of a security event.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(name = "Severity")]
pub enum SeverityOut {
    /// Informational.
    Low,
    /// Worth a look.
    Medium,
    /// Act soon.
    High,
    /// Act now.
    Critical,
}

impl From<Severity> for SeverityOut {
    fn from(s: Severity) -> Self {
        match s {
            Severity::Low => Self::Low,
            Severity::Medium => Self::Medium,
            Severity::High => Self::High,
            Severity::Critical => Self::Critical,
        }
    }
}

impl From<SeverityOut> for Severity {
    fn from(s: SeverityOut) -> Self {
        match s {
            SeverityOut::Low => Self::Low,
            SeverityOut::Medium => Self::Medium,
            SeverityOut::High => Self::High,
            SeverityOut::Critical => Self::Critical,
        }
    }
}

/// One link of the tamper-evident audit chain.
#[derive(SimpleObject, Clone, Debug)]
#[graphql(name = "AuditEvent")]
pub struct AuditEventOut {
    /// Position in the chain.
    pub id: i64,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// What produced it.
    pub kind: AuditKindOut,
    /// Request id.
    pub request_id: Option<String>,
    /// Acting principal.
    pub principal_id: Option<Uuid>,
    /// Key used.
    pub api_key_id: Option<Uuid>,
    /// Grant used.
    pub grant_id: Option<Uuid>,
    /// Client address.
    pub client_ip: Option<String>,
    /// HTTP method, or `mutation`.
    pub method: Option<String>,
    /// Normalised path, or the mutation name.
    pub path: Option<String>,
    /// Matched route.
    pub route_id: Option<Uuid>,
    /// Allow or deny.
    pub decision: Option<DecisionOut>,
    /// Why.
    pub reason: String,
    /// HTTP status returned.
    pub status: Option<i32>,
    /// Latency in microseconds.
    pub latency_us: Option<i64>,
    /// Kind-specific details (management: the redacted arguments).
    pub detail: Json<Value>,
    /// Hash of the previous event.
    pub prev_hash: String,
    /// `SHA-256(prevHash ‖ canonical content)`.
    pub hash: String,
}

impl From<audit_event::Model> for AuditEventOut {
    fn from(e: audit_event::Model) -> Self {
        Self {
            id: e.id,
            occurred_at: e.occurred_at,
            kind: e.kind.into(),
            request_id: e.request_id,
            principal_id: e.principal_id,
            api_key_id: e.api_key_id,
            grant_id: e.grant_id,
            client_ip: e.client_ip,
            method: e.method,
            path: e.path,
            route_id: e.route_id,
            decision: e.decision.map(Into::into),
            reason: e.reason,
            status: e.status,
            latency_us: e.latency_us,
            detail: Json(e.detail),
            prev_hash: e.prev_hash,
            hash: e.hash,
        }
    }
}

/// Filter of `auditEvents`.
#[derive(InputObject, Clone, Debug, Default)]
pub struct AuditEventFilter {
    /// Acting principal.
    pub principal_id: Option<Uuid>,
    /// Key used.
    pub api_key_id: Option<Uuid>,
    /// Matched route.
    pub route_id: Option<Uuid>,
    /// Allow or deny.
    pub decision: Option<DecisionOut>,
    /// What produced it.
    pub kind: Option<AuditKindOut>,
    /// At or after.
    pub from: Option<DateTime<Utc>>,
    /// Before.
    pub to: Option<DateTime<Utc>>,
}

impl From<AuditEventFilter> for AuditFilter {
    fn from(f: AuditEventFilter) -> Self {
        Self {
            principal_id: f.principal_id,
            api_key_id: f.api_key_id,
            route_id: f.route_id,
            decision: f.decision.map(Into::into),
            kind: f.kind.map(Into::into),
            from: f.from,
            to: f.to,
        }
    }
}

/// Something a detector noticed.
#[derive(SimpleObject, Clone, Debug)]
#[graphql(name = "SecurityEvent")]
pub struct SecurityEventOut {
    /// Event id.
    pub id: Uuid,
    /// Detector kind.
    pub kind: String,
    /// Severity.
    pub severity: SeverityOut,
    /// When it happened.
    pub occurred_at: DateTime<Utc>,
    /// Principal involved.
    pub principal_id: Option<Uuid>,
    /// Key involved.
    pub api_key_id: Option<Uuid>,
    /// Client address.
    pub client_ip: Option<String>,
    /// Route involved.
    pub route_id: Option<Uuid>,
    /// Details.
    pub detail: Json<Value>,
    /// `new`, `handled` or `suppressed`.
    pub status: String,
    /// Remediation run that handled it.
    pub handled_by_run_id: Option<Uuid>,
}

impl From<security_event::Model> for SecurityEventOut {
    fn from(e: security_event::Model) -> Self {
        Self {
            id: e.id,
            kind: e.kind,
            severity: e.severity.into(),
            occurred_at: e.occurred_at,
            principal_id: e.principal_id,
            api_key_id: e.api_key_id,
            client_ip: e.client_ip,
            route_id: e.route_id,
            detail: Json(e.detail),
            status: match e.status {
                SecurityEventStatus::New => "new",
                SecurityEventStatus::Handled => "handled",
                SecurityEventStatus::Suppressed => "suppressed",
            }
            .into(),
            handled_by_run_id: e.handled_by_run_id,
        }
    }
}

/// Filter of `securityEvents`.
#[derive(InputObject, Clone, Debug, Default)]
pub struct SecurityEventFilter {
    /// Principal involved.
    pub principal_id: Option<Uuid>,
    /// Key involved.
    pub api_key_id: Option<Uuid>,
    /// Route involved.
    pub route_id: Option<Uuid>,
    /// Detector kind.
    pub kind: Option<String>,
    /// At least this severe.
    pub min_severity: Option<SeverityOut>,
    /// At or after.
    pub from: Option<DateTime<Utc>>,
    /// Before.
    pub to: Option<DateTime<Utc>>,
}

impl From<SecurityEventFilter> for SecurityFilter {
    fn from(f: SecurityEventFilter) -> Self {
        Self {
            principal_id: f.principal_id,
            api_key_id: f.api_key_id,
            route_id: f.route_id,
            kind: f.kind,
            min_severity: f.min_severity.map(Into::into),
            from: f.from,
            to: f.to,
        }
    }
}

/// A chain tail kept outside the database, from an SNS anchor (`event_type`
/// `audit_checkpoint`) or a `portcullis::audit::checkpoint` log line.
#[derive(InputObject, Clone, Debug)]
pub struct AuditAnchorInput {
    /// The anchored event's id.
    pub id: i64,
    /// Its hash at the time (64 lowercase hex digits).
    pub hash: String,
}

impl From<AuditAnchorInput> for Anchor {
    fn from(a: AuditAnchorInput) -> Self {
        Self {
            id: a.id,
            hash: a.hash,
        }
    }
}

/// Result of `verifyAuditChain`.
#[derive(SimpleObject, Clone, Debug)]
#[graphql(name = "AuditChainVerification")]
pub struct ChainVerificationOut {
    /// No broken link in the range, and every anchor matched.
    pub ok: bool,
    /// Events verified (before the first broken one).
    pub checked: i64,
    /// The last event read: one call verifies at most 100,000 events, so when `checked`
    /// reaches that, continue with `fromId` one more than this.
    pub last_checked_id: Option<i64>,
    /// Anchors whose event is stored with the anchored hash.
    pub anchors_matched: i64,
    /// Id of the first event that fails: a broken link, or an anchor whose event is missing
    /// or carries another hash.
    pub first_broken_id: Option<i64>,
    /// What is wrong with it.
    pub problem: Option<String>,
}

impl From<ChainVerification> for ChainVerificationOut {
    fn from(v: ChainVerification) -> Self {
        Self {
            ok: v.ok,
            checked: v.checked as i64,
            last_checked_id: v.last_checked_id,
            anchors_matched: v.anchors_matched as i64,
            first_broken_id: v.first_broken_id,
            problem: v.problem,
        }
    }
}
