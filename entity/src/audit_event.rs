//! `audit_event`: the tamper-evident audit log of proxied requests, management mutations and
//! webhooks.
//!
//! Rows form a hash chain: `hash` = H(`prev_hash` ‖ canonical row), so editing or deleting a row
//! breaks every later link. Ids of principals, keys, grants and routes carry NO FOREIGN KEYS on
//! purpose: the audit trail must outlive what it talks about.

use sea_orm::entity::prelude::*;
use serde::{Deserialize, Serialize};

/// Which part of Portcullis recorded an [`Model`].
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(32))")]
#[serde(rename_all = "snake_case")]
pub enum AuditEventKind {
    /// A request through the proxy, allowed or denied.
    #[sea_orm(string_value = "proxy_request")]
    ProxyRequest,
    /// A management API mutation.
    #[sea_orm(string_value = "management")]
    Management,
    /// An inbound webhook (SNS).
    #[sea_orm(string_value = "webhook")]
    Webhook,
}

/// The access decision recorded in an [`Model`].
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, EnumIter, DeriveActiveEnum, Serialize, Deserialize,
)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(32))")]
#[serde(rename_all = "snake_case")]
pub enum AuditDecision {
    /// The request was let through.
    #[sea_orm(string_value = "allow")]
    Allow,
    /// The request was refused.
    #[sea_orm(string_value = "deny")]
    Deny,
}

/// One row of `audit_event`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "audit_event")]
pub struct Model {
    /// Database-assigned, increasing position in the chain. Leave it unset on insert.
    #[sea_orm(primary_key)]
    pub id: i64,
    /// When the audited thing happened (`idx_audit_event_occurred_at`).
    pub occurred_at: DateTimeUtc,
    /// Proxy request, management or webhook.
    pub kind: AuditEventKind,
    /// Request id (`x-request-id`) for correlation with logs.
    pub request_id: Option<String>,
    /// Acting principal, if identified (no foreign key).
    pub principal_id: Option<Uuid>,
    /// API key used, if any (no foreign key).
    pub api_key_id: Option<Uuid>,
    /// Incident grant used, if any (no foreign key).
    pub grant_id: Option<Uuid>,
    /// Client IP address.
    pub client_ip: Option<String>,
    /// HTTP method (or GraphQL operation type for management events).
    pub method: Option<String>,
    /// Normalised path (or mutation name for management events).
    pub path: Option<String>,
    /// Matched route, if any (no foreign key).
    pub route_id: Option<Uuid>,
    /// Allow or deny, where a decision was made.
    pub decision: Option<AuditDecision>,
    /// Why: the binding that allowed, or the reason for denial.
    pub reason: String,
    /// HTTP status returned to the client.
    pub status: Option<i32>,
    /// End-to-end latency in microseconds.
    pub latency_us: Option<i64>,
    /// JSON object with kind-specific details (mutation arguments, upstream status, ...).
    pub detail: Json,
    /// `hash` of the previous event; the first event links to a fixed genesis value.
    pub prev_hash: String,
    /// Hex hash of this event chained to `prev_hash` (not indexed: nothing looks rows up by
    /// hash, and an index on a random value costs a page write per audited request).
    pub hash: String,
}

/// `audit_event` has no foreign keys (see the module docs).
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
