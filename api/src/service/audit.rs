//! Audit and security events: filtered queries, chain verification, and the audit record of
//! every management mutation.

use chrono::{DateTime, Utc};
use entity::{
    audit_event::{self, AuditDecision, AuditEventKind},
    security_event::{self, Severity},
};
use proxy::audit::{self as chain, AuditRecord, GENESIS};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, QuerySelect};
use serde_json::Value;
use uuid::Uuid;

use super::{
    auth::Caller,
    page::{self, Direction, Page, PageRequest},
};
use crate::graphql::error::{ApiError, ApiResult};

/// Most rows one `verifyAuditChain` call checks.
pub const MAX_VERIFY_ROWS: u64 = 100_000;

/// Filter of [`list_events`].
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Acting principal.
    pub principal_id: Option<Uuid>,
    /// Key used.
    pub api_key_id: Option<Uuid>,
    /// Matched route.
    pub route_id: Option<Uuid>,
    /// Allow or deny.
    pub decision: Option<AuditDecision>,
    /// Proxy request, management, webhook.
    pub kind: Option<AuditEventKind>,
    /// At or after.
    pub from: Option<DateTime<Utc>>,
    /// Before.
    pub to: Option<DateTime<Utc>>,
}

/// Filter of [`list_security_events`].
#[derive(Debug, Clone, Default)]
pub struct SecurityFilter {
    /// Principal involved.
    pub principal_id: Option<Uuid>,
    /// Key involved.
    pub api_key_id: Option<Uuid>,
    /// Route involved.
    pub route_id: Option<Uuid>,
    /// Detector kind, e.g. `failed_auth_burst`.
    pub kind: Option<String>,
    /// At least this severe.
    pub min_severity: Option<Severity>,
    /// At or after.
    pub from: Option<DateTime<Utc>>,
    /// Before.
    pub to: Option<DateTime<Utc>>,
}

/// Audit events, newest first.
pub async fn list_events(
    db: &DatabaseConnection,
    filter: &AuditFilter,
    page: &PageRequest<i64>,
) -> ApiResult<Page<audit_event::Model>> {
    let mut select = audit_event::Entity::find();
    if let Some(v) = filter.principal_id {
        select = select.filter(audit_event::Column::PrincipalId.eq(v));
    }
    if let Some(v) = filter.api_key_id {
        select = select.filter(audit_event::Column::ApiKeyId.eq(v));
    }
    if let Some(v) = filter.route_id {
        select = select.filter(audit_event::Column::RouteId.eq(v));
    }
    if let Some(v) = filter.decision {
        select = select.filter(audit_event::Column::Decision.eq(v));
    }
    if let Some(v) = filter.kind {
        select = select.filter(audit_event::Column::Kind.eq(v));
    }
    if let Some(v) = filter.from {
        select = select.filter(audit_event::Column::OccurredAt.gte(v));
    }
    if let Some(v) = filter.to {
        select = select.filter(audit_event::Column::OccurredAt.lt(v));
    }
    Ok(page::fetch(
        db,
        select,
        audit_event::Column::Id,
        Direction::Descending,
        page,
    )
    .await?)
}

/// Security events, newest first.
pub async fn list_security_events(
    db: &DatabaseConnection,
    filter: &SecurityFilter,
    page: &PageRequest<Uuid>,
) -> ApiResult<Page<security_event::Model>> {
    let mut select = security_event::Entity::find();
    if let Some(v) = filter.principal_id {
        select = select.filter(security_event::Column::PrincipalId.eq(v));
    }
    if let Some(v) = filter.api_key_id {
        select = select.filter(security_event::Column::ApiKeyId.eq(v));
    }
    if let Some(v) = filter.route_id {
        select = select.filter(security_event::Column::RouteId.eq(v));
    }
    if let Some(v) = &filter.kind {
        select = select.filter(security_event::Column::Kind.eq(v.clone()));
    }
    if let Some(min) = filter.min_severity {
        let severities: Vec<Severity> = [
            Severity::Low,
            Severity::Medium,
            Severity::High,
            Severity::Critical,
        ]
        .into_iter()
        .filter(|s| *s >= min)
        .collect();
        select = select.filter(security_event::Column::Severity.is_in(severities));
    }
    if let Some(v) = filter.from {
        select = select.filter(security_event::Column::OccurredAt.gte(v));
    }
    if let Some(v) = filter.to {
        select = select.filter(security_event::Column::OccurredAt.lt(v));
    }
    // UUID v7 ids sort by creation time.
    Ok(page::fetch(
        db,
        select,
        security_event::Column::Id,
        Direction::Descending,
        page,
    )
    .await?)
}

/// Most anchors one `verifyAuditChain` call checks.
pub const MAX_ANCHORS: usize = 100;

/// A chain tail kept outside the database: an SNS anchor (`event_type` `audit_checkpoint`) or
/// a `portcullis::audit::checkpoint` log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    /// The event's id.
    pub id: i64,
    /// Its hash when the anchor was taken (64 hex digits).
    pub hash: String,
}

/// Result of [`verify_chain`].
#[derive(Debug, Clone)]
pub struct ChainVerification {
    /// No broken link in the range and every anchor matched.
    pub ok: bool,
    /// Rows verified before the first broken one (or all of them).
    pub checked: u64,
    /// The last row read (the next call's `fromId` is one more when the row limit stopped
    /// this one).
    pub last_checked_id: Option<i64>,
    /// Anchors whose event is stored with the anchored hash.
    pub anchors_matched: u64,
    /// Id of the first row that fails (a broken link or an anchor that does not match).
    pub first_broken_id: Option<i64>,
    /// What is wrong with it.
    pub problem: Option<String>,
}

/// Verifies the hash chain over ids `from_id..=to_id` (defaults: the whole table), linking
/// the first row to its predecessor's hash (or [`GENESIS`]), and checks that each anchor's
/// event is still stored with the anchored hash. The chain alone cannot reveal deleted newest
/// rows or a chain rewritten and rehashed from some row on; an anchor can.
#[tracing::instrument(skip_all)]
pub async fn verify_chain(
    db: &DatabaseConnection,
    from_id: Option<i64>,
    to_id: Option<i64>,
    anchors: &[Anchor],
) -> ApiResult<ChainVerification> {
    if let (Some(from), Some(to)) = (from_id, to_id)
        && from > to
    {
        return Err(ApiError::invalid("fromId", "must not be greater than toId"));
    }
    check_anchors_input(anchors)?;
    let mut select = audit_event::Entity::find().order_by_asc(audit_event::Column::Id);
    let expected_prev = match from_id {
        Some(from) => {
            select = select.filter(audit_event::Column::Id.gte(from));
            audit_event::Entity::find()
                .filter(audit_event::Column::Id.lt(from))
                .order_by_desc(audit_event::Column::Id)
                .one(db)
                .await?
                .map_or_else(|| GENESIS.to_owned(), |row| row.hash)
        }
        None => GENESIS.to_owned(),
    };
    if let Some(to) = to_id {
        select = select.filter(audit_event::Column::Id.lte(to));
    }
    let rows = select.limit(MAX_VERIFY_ROWS).all(db).await?;
    let mut first_problem = chain::verify_rows(&expected_prev, &rows)
        .err()
        .map(|broken| (broken.id, broken.problem.to_owned()));
    // What this call vouches for: from `from_id` to `to_id` (or the end of the chain), unless
    // the row limit stopped it earlier.
    let capped = rows.len() as u64 == MAX_VERIFY_ROWS;
    let last_checked_id = rows.last().map(|row| row.id);
    let covered = Covered {
        from: from_id.unwrap_or(i64::MIN),
        to: match last_checked_id {
            Some(last) if capped => last,
            _ => to_id.unwrap_or(i64::MAX),
        },
        capped,
    };
    let (anchors_matched, anchor_problem) = check_anchors(&rows, anchors, &covered);
    if let Some((id, problem)) = anchor_problem
        && first_problem.as_ref().is_none_or(|(first, _)| id < *first)
    {
        first_problem = Some((id, problem));
    }
    Ok(match first_problem {
        None => ChainVerification {
            ok: true,
            checked: rows.len() as u64,
            last_checked_id,
            anchors_matched,
            first_broken_id: None,
            problem: None,
        },
        Some((id, problem)) => ChainVerification {
            ok: false,
            checked: rows.iter().take_while(|r| r.id < id).count() as u64,
            last_checked_id,
            anchors_matched,
            first_broken_id: Some(id),
            problem: Some(problem),
        },
    })
}

/// The ids a verification covered: the requested range, cut at the last row read when the
/// row limit stopped it.
struct Covered {
    from: i64,
    to: i64,
    capped: bool,
}

fn check_anchors_input(anchors: &[Anchor]) -> ApiResult<()> {
    if anchors.len() > MAX_ANCHORS {
        return Err(ApiError::invalid(
            "anchors",
            format!("at most {MAX_ANCHORS} anchors per call"),
        ));
    }
    for anchor in anchors {
        let hex = anchor.hash.len() == 64
            && anchor
                .hash
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if !hex {
            return Err(ApiError::invalid(
                "anchors",
                format!(
                    "the hash of anchor {} is not 64 lowercase hex digits",
                    anchor.id
                ),
            ));
        }
    }
    Ok(())
}

/// How many anchors match, and the lowest-id anchor that does not (with what is wrong). An
/// anchor counts only inside the range verified with it: a matching hash proves nothing about
/// the rows before it unless the chain was verified through it.
fn check_anchors(
    rows: &[audit_event::Model],
    anchors: &[Anchor],
    covered: &Covered,
) -> (u64, Option<(i64, String)>) {
    let mut matched = 0;
    let mut first: Option<(i64, String)> = None;
    for anchor in anchors {
        let problem = if anchor.id < covered.from || anchor.id > covered.to {
            if covered.capped && anchor.id > covered.to {
                format!(
                    "anchored event {} is beyond the {MAX_VERIFY_ROWS} events one call verifies \
                     (the last was {}): verify again with fromId {}",
                    anchor.id,
                    covered.to,
                    covered.to.saturating_add(1)
                )
            } else {
                format!(
                    "anchored event {} is outside the verified range: verify a range that \
                     includes it",
                    anchor.id
                )
            }
        } else {
            match rows.binary_search_by_key(&anchor.id, |row| row.id) {
                Ok(at) if rows[at].hash == anchor.hash => {
                    matched += 1;
                    continue;
                }
                Ok(at) => format!(
                    "event {} has hash {}, not the anchored {} (the chain was rewritten)",
                    anchor.id, rows[at].hash, anchor.hash
                ),
                Err(_) => format!(
                    "anchored event {} is missing (the chain was truncated or events deleted)",
                    anchor.id
                ),
            }
        };
        if first.as_ref().is_none_or(|(id, _)| anchor.id < *id) {
            first = Some((anchor.id, problem));
        }
    }
    (matched, first)
}

/// Appends the audit event of one management mutation (allowed or refused) to the chain.
pub async fn record_mutation(
    db: &DatabaseConnection,
    caller: &Caller,
    mutation: &str,
    detail: Value,
    outcome: Result<(), &str>,
) {
    let (decision, reason) = match outcome {
        Ok(()) => (AuditDecision::Allow, "ok".to_owned()),
        Err(reason) => (AuditDecision::Deny, reason.to_owned()),
    };
    let mut record = AuditRecord::new(AuditEventKind::Management, reason);
    record.request_id = caller.request_id.clone();
    record.principal_id = caller.actor.as_ref().map(|a| a.principal_id);
    record.api_key_id = caller.actor.as_ref().and_then(|a| a.key_id);
    record.client_ip = Some(caller.client_ip.to_string());
    record.method = Some("mutation".into());
    record.path = Some(mutation.to_owned());
    record.decision = Some(decision);
    record.detail = detail;
    // Retried for a while, the response waiting for it; a task of its own finishes the job
    // should the caller go away meanwhile. A database down for longer gets the record in the
    // log instead, rather than a management API that hangs.
    let db = db.clone();
    let stored = tokio::spawn(async move {
        let batch = [record];
        if !chain::append_within(&db, &batch, MUTATION_AUDIT_PATIENCE).await {
            let [record] = batch;
            tracing::error!(
                ?record,
                "management mutation audit event possibly not stored; logged instead"
            );
            metrics::counter!("portcullis_management_audit_failures_total").increment(1);
        }
    });
    if let Err(error) = stored.await {
        tracing::error!(%error, mutation, "the audit of a management mutation did not finish");
        metrics::counter!("portcullis_management_audit_failures_total").increment(1);
    }
}

/// How long a management mutation's audit event is retried before it goes to the log.
const MUTATION_AUDIT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);
