//! The audit trail: one event per proxied request (and per management mutation), written in
//! batches off the hot path, chained by hash so that any edit or deletion is detectable.
//!
//! Loss is not an option: the queue is bounded, and when the writer falls behind (or the
//! database is down) senders wait — back-pressure — rather than events being dropped. Each
//! batch is retried until it is stored.
//!
//! Chain: `hash = SHA-256(prev_hash || canonical(record))`, hex-encoded; the first event links
//! to [`GENESIS`]. The database id is not hashed (it is assigned on insert); order is carried by
//! the `prev_hash` links instead, so deleting a row breaks the chain as surely as editing one.

use std::{collections::HashMap, time::Duration};

use aws_lc_rs::digest;
use chrono::{DateTime, SubsecRound, Utc};
use entity::audit_event::{self, AuditDecision, AuditEventKind};
use sea_orm::{
    ActiveValue::{NotSet, Set},
    ColumnTrait, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder,
    Statement, TransactionTrait,
    prelude::Expr,
};
use serde_json::Value;
use tokio::{
    sync::{Mutex, mpsc, oneshot},
    task::JoinHandle,
};
use uuid::Uuid;

/// `prev_hash` of the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Events per database transaction.
const BATCH_SIZE: usize = 512;

/// Serialises chain appends within this process (a chain has one tail). Across processes on
/// PostgreSQL an advisory transaction lock does the same.
static CHAIN_TAIL: Mutex<()> = Mutex::const_new(());
/// Arbitrary constant naming the PostgreSQL advisory lock that guards the chain tail.
const CHAIN_LOCK_KEY: i64 = 0x504f_5254_4155_4454; // "PORTAUDT"

/// One audit event before it is chained and stored.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// When it happened (truncated to microseconds, the precision both databases keep).
    pub occurred_at: DateTime<Utc>,
    /// What produced it.
    pub kind: AuditEventKind,
    /// Correlates with logs and the client's `x-request-id`.
    pub request_id: Option<String>,
    /// Acting principal.
    pub principal_id: Option<Uuid>,
    /// Key used.
    pub api_key_id: Option<Uuid>,
    /// Grant used.
    pub grant_id: Option<Uuid>,
    /// Client address.
    pub client_ip: Option<String>,
    /// HTTP method or GraphQL operation type.
    pub method: Option<String>,
    /// Normalised path or mutation name.
    pub path: Option<String>,
    /// Matched route.
    pub route_id: Option<Uuid>,
    /// Allow or deny.
    pub decision: Option<AuditDecision>,
    /// Why (binding that allowed, reason for denial).
    pub reason: String,
    /// HTTP status returned.
    pub status: Option<i32>,
    /// Latency in microseconds.
    pub latency_us: Option<i64>,
    /// Kind-specific details; must never contain a secret.
    pub detail: Value,
    /// The permission that allowed the request. Not stored in the audit row (and so not
    /// hashed): it feeds the per-permission usage counters written with the batch.
    pub permission_id: Option<Uuid>,
}

impl AuditRecord {
    /// A record stamped now, with everything else empty.
    pub fn new(kind: AuditEventKind, reason: impl Into<String>) -> Self {
        Self {
            occurred_at: Utc::now().trunc_subsecs(6),
            kind,
            request_id: None,
            principal_id: None,
            api_key_id: None,
            grant_id: None,
            client_ip: None,
            method: None,
            path: None,
            route_id: None,
            decision: None,
            reason: reason.into(),
            status: None,
            latency_us: None,
            detail: Value::Object(Default::default()),
            permission_id: None,
        }
    }

    /// Rebuilds the hashed content of a stored row.
    pub fn from_model(model: &audit_event::Model) -> Self {
        Self {
            occurred_at: model.occurred_at,
            kind: model.kind,
            request_id: model.request_id.clone(),
            principal_id: model.principal_id,
            api_key_id: model.api_key_id,
            grant_id: model.grant_id,
            client_ip: model.client_ip.clone(),
            method: model.method.clone(),
            path: model.path.clone(),
            route_id: model.route_id,
            decision: model.decision,
            reason: model.reason.clone(),
            status: model.status,
            latency_us: model.latency_us,
            detail: model.detail.clone(),
            permission_id: None,
        }
    }
}

// === chain ===

/// Appends `value` to `out` as JSON with object keys sorted, so the hash does not depend on
/// how a database (PostgreSQL `jsonb` reorders keys) or serde_json features order them.
fn canonical_json(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                canonical_json(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The chained hash of `record` after `prev_hash`.
pub fn chain_hash(prev_hash: &str, record: &AuditRecord) -> String {
    let opt = |v: &Option<String>| v.clone().map_or(Value::Null, Value::String);
    let id = |v: &Option<Uuid>| v.map_or(Value::Null, |id| Value::String(id.to_string()));
    let content = serde_json::json!({
        "occurred_at": record.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "kind": audit_kind_str(&record.kind),
        "request_id": opt(&record.request_id),
        "principal_id": id(&record.principal_id),
        "api_key_id": id(&record.api_key_id),
        "grant_id": id(&record.grant_id),
        "client_ip": opt(&record.client_ip),
        "method": opt(&record.method),
        "path": opt(&record.path),
        "route_id": id(&record.route_id),
        "decision": record.decision.as_ref().map_or(Value::Null, |d| Value::String(decision_str(d).into())),
        "reason": record.reason,
        "status": record.status,
        "latency_us": record.latency_us,
        "detail": record.detail,
    });
    let mut text = String::with_capacity(512);
    text.push_str(prev_hash);
    canonical_json(&content, &mut text);
    hex::encode(digest::digest(&digest::SHA256, text.as_bytes()))
}

fn audit_kind_str(kind: &AuditEventKind) -> &'static str {
    match kind {
        AuditEventKind::ProxyRequest => "proxy_request",
        AuditEventKind::Management => "management",
        AuditEventKind::Webhook => "webhook",
    }
}

fn decision_str(decision: &AuditDecision) -> &'static str {
    match decision {
        AuditDecision::Allow => "allow",
        AuditDecision::Deny => "deny",
    }
}

/// The first place where the stored chain does not verify.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    /// Id of the first row that fails.
    pub id: i64,
    /// What is wrong.
    pub problem: &'static str,
}

/// Verifies stored rows in id order; `expected_prev` is the hash the first row must link to
/// (`GENESIS` when starting at the beginning).
pub fn verify_rows<'a>(
    expected_prev: &str,
    rows: impl IntoIterator<Item = &'a audit_event::Model>,
) -> Result<usize, BrokenLink> {
    let mut prev = expected_prev.to_owned();
    let mut count = 0;
    for row in rows {
        if row.prev_hash != prev {
            return Err(BrokenLink {
                id: row.id,
                problem: "prev_hash does not match the previous event (a row was deleted or reordered)",
            });
        }
        if chain_hash(&row.prev_hash, &AuditRecord::from_model(row)) != row.hash {
            return Err(BrokenLink {
                id: row.id,
                problem: "hash does not match the content (the row was edited)",
            });
        }
        prev.clone_from(&row.hash);
        count += 1;
    }
    Ok(count)
}

/// Chains and stores `records` in one transaction, after the current tail.
pub async fn append(db: &DatabaseConnection, records: &[AuditRecord]) -> Result<(), DbErr> {
    if records.is_empty() {
        return Ok(());
    }
    let _tail = CHAIN_TAIL.lock().await;
    let txn = db.begin().await?;
    if txn.get_database_backend() == sea_orm::DatabaseBackend::Postgres {
        txn.execute_raw(Statement::from_sql_and_values(
            sea_orm::DatabaseBackend::Postgres,
            "SELECT pg_advisory_xact_lock($1)",
            [CHAIN_LOCK_KEY.into()],
        ))
        .await?;
    }
    let mut prev = audit_event::Entity::find()
        .order_by_desc(audit_event::Column::Id)
        .one(&txn)
        .await?
        .map_or_else(|| GENESIS.to_owned(), |row| row.hash);
    let mut rows = Vec::with_capacity(records.len());
    for record in records {
        let hash = chain_hash(&prev, record);
        rows.push(audit_event::ActiveModel {
            id: NotSet,
            occurred_at: Set(record.occurred_at),
            kind: Set(record.kind),
            request_id: Set(record.request_id.clone()),
            principal_id: Set(record.principal_id),
            api_key_id: Set(record.api_key_id),
            grant_id: Set(record.grant_id),
            client_ip: Set(record.client_ip.clone()),
            method: Set(record.method.clone()),
            path: Set(record.path.clone()),
            route_id: Set(record.route_id),
            decision: Set(record.decision),
            reason: Set(record.reason.clone()),
            status: Set(record.status),
            latency_us: Set(record.latency_us),
            detail: Set(record.detail.clone()),
            prev_hash: Set(std::mem::replace(&mut prev, hash.clone())),
            hash: Set(hash),
        });
    }
    // Insert in chunks: SQLite limits bound parameters per statement.
    for chunk in rows.chunks(50) {
        audit_event::Entity::insert_many(chunk.to_vec())
            .exec_without_returning(&txn)
            .await?;
    }
    touch_keys(&txn, records).await?;
    count_usage(&txn, records).await?;
    txn.commit().await
}

/// Updates `api_key.last_used_at`/`last_used_ip` once per key per batch.
async fn touch_keys<C: ConnectionTrait>(db: &C, records: &[AuditRecord]) -> Result<(), DbErr> {
    let mut latest: HashMap<Uuid, &AuditRecord> = HashMap::new();
    for record in records
        .iter()
        .filter(|r| r.decision == Some(AuditDecision::Allow))
    {
        if let Some(key) = record.api_key_id {
            latest.insert(key, record);
        }
    }
    for (key, record) in latest {
        entity::api_key::Entity::update_many()
            .col_expr(
                entity::api_key::Column::LastUsedAt,
                Expr::value(record.occurred_at),
            )
            .col_expr(
                entity::api_key::Column::LastUsedIp,
                Expr::value(record.client_ip.clone()),
            )
            .filter(entity::api_key::Column::Id.eq(key))
            .exec(db)
            .await?;
    }
    Ok(())
}

/// Adds the batch's allowed requests to `usage_counter`, one row per (key or principal,
/// permission): what access reviews use to find permissions that are never exercised.
async fn count_usage<C: ConnectionTrait>(db: &C, records: &[AuditRecord]) -> Result<(), DbErr> {
    use entity::usage_counter;
    use sea_orm::sea_query::{ExprTrait, OnConflict};
    struct Usage {
        principal_id: Uuid,
        api_key_id: Option<Uuid>,
        permission_id: Uuid,
        route_id: Option<Uuid>,
        count: i64,
        first: DateTime<Utc>,
        last: DateTime<Utc>,
    }
    let mut usage: HashMap<String, Usage> = HashMap::new();
    for record in records
        .iter()
        .filter(|r| r.decision == Some(AuditDecision::Allow))
    {
        let (Some(principal_id), Some(permission_id)) = (record.principal_id, record.permission_id)
        else {
            continue;
        };
        let subject = match record.api_key_id {
            Some(key) => format!("key:{key}"),
            None => format!("principal:{principal_id}"),
        };
        let entry = usage
            .entry(format!("{subject}|perm:{permission_id}"))
            .or_insert(Usage {
                principal_id,
                api_key_id: record.api_key_id,
                permission_id,
                route_id: record.route_id,
                count: 0,
                first: record.occurred_at,
                last: record.occurred_at,
            });
        entry.count += 1;
        entry.last = Ord::max(entry.last, record.occurred_at);
        entry.route_id = record.route_id.or(entry.route_id);
    }
    for (scope_key, u) in usage {
        let row = usage_counter::ActiveModel {
            id: Set(Uuid::now_v7()),
            scope_key: Set(scope_key),
            principal_id: Set(u.principal_id),
            api_key_id: Set(u.api_key_id),
            permission_id: Set(Some(u.permission_id)),
            route_id: Set(u.route_id),
            request_count: Set(u.count),
            first_used_at: Set(u.first),
            last_used_at: Set(u.last),
        };
        usage_counter::Entity::insert(row)
            .on_conflict(
                OnConflict::column(usage_counter::Column::ScopeKey)
                    .value(
                        usage_counter::Column::RequestCount,
                        Expr::col((usage_counter::Entity, usage_counter::Column::RequestCount))
                            .add(u.count),
                    )
                    .value(usage_counter::Column::LastUsedAt, Expr::value(u.last))
                    .value(usage_counter::Column::RouteId, Expr::value(u.route_id))
                    .to_owned(),
            )
            .exec_without_returning(db)
            .await?;
    }
    Ok(())
}

// === writer ===

/// The sending half: cheap to clone; `record` waits when the writer is behind.
#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<AuditRecord>,
}

impl AuditSink {
    /// Queues one event, waiting for room if the queue is full (never drops).
    pub async fn record(&self, record: AuditRecord) {
        if let Err(mpsc::error::SendError(record)) = self.tx.send(record).await {
            // Only after shutdown: the event is still not lost from the logs.
            tracing::error!(?record, "audit event after shutdown could not be queued");
        }
    }
}

impl AuditSink {
    /// A sink over a bare channel, for callers that consume events themselves (benchmarks,
    /// alternative writers). [`spawn`] is the production constructor.
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<AuditRecord>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        (Self { tx }, rx)
    }
}

/// The writer task; [`AuditWriter::shutdown`] flushes what is queued.
pub struct AuditWriter {
    stop: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

/// Starts the writer over `db`; `capacity` events may wait before senders block.
pub fn spawn(db: DatabaseConnection, capacity: usize) -> (AuditSink, AuditWriter) {
    let (tx, rx) = mpsc::channel(capacity.max(1));
    let (stop_tx, stop_rx) = oneshot::channel();
    let task = tokio::spawn(run(db, rx, stop_rx));
    (
        AuditSink { tx },
        AuditWriter {
            stop: stop_tx,
            task,
        },
    )
}

impl AuditWriter {
    /// Stops accepting events, writes everything queued, and returns when done.
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        if let Err(error) = self.task.await {
            tracing::error!(%error, "audit writer panicked");
        }
    }
}

async fn run(
    db: DatabaseConnection,
    mut rx: mpsc::Receiver<AuditRecord>,
    mut stop: oneshot::Receiver<()>,
) {
    let mut batch = Vec::with_capacity(BATCH_SIZE);
    let mut stopping = false;
    loop {
        let received = if stopping {
            rx.recv_many(&mut batch, BATCH_SIZE).await
        } else {
            tokio::select! {
                n = rx.recv_many(&mut batch, BATCH_SIZE) => n,
                _ = &mut stop => {
                    stopping = true;
                    // Refuse new events; everything already queued is still received.
                    rx.close();
                    continue;
                }
            }
        };
        if received == 0 {
            return;
        }
        write_with_retry(&db, &batch).await;
        metrics::counter!("portcullis_audit_events_written_total").increment(batch.len() as u64);
        batch.clear();
    }
}

/// Retries until the batch is stored: while it waits, the queue fills and senders wait.
async fn write_with_retry(db: &DatabaseConnection, batch: &[AuditRecord]) {
    let mut delay = Duration::from_millis(50);
    loop {
        match append(db, batch).await {
            Ok(()) => return,
            Err(error) => {
                tracing::error!(%error, events = batch.len(), "audit batch not stored yet; retrying");
                metrics::counter!("portcullis_audit_write_failures_total").increment(1);
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_ignores_json_key_order_but_not_content() {
        let mut a = AuditRecord::new(AuditEventKind::ProxyRequest, "ok");
        a.detail = serde_json::json!({"b": 1, "a": {"y": 2, "x": 3}});
        let mut b = a.clone();
        b.detail = serde_json::from_str(r#"{"a": {"x": 3, "y": 2}, "b": 1}"#).unwrap_or_default();
        assert_eq!(chain_hash(GENESIS, &a), chain_hash(GENESIS, &b));
        b.reason = "ok!".into();
        assert_ne!(chain_hash(GENESIS, &a), chain_hash(GENESIS, &b));
        assert_ne!(chain_hash(GENESIS, &a), chain_hash(&"1".repeat(64), &a));
    }
}
