//! Incident grants: time-boxed access to proxied APIs for an on-call engineer.
//!
//! The engineer asks ([`request`]) and receives the grant token at once, exactly once; the
//! proxy refuses it until another principal approves the grant ([`approve`]: four eyes, the
//! requester can never approve their own), and again after it expires, is revoked or is
//! denied. With break-glass the engineer opens the grant without an approver; a follow-up
//! access review of it opens at the same time, so every self-approved use is looked at.
//!
//! A grant lends proxied permissions only: a role or permission in the management
//! namespace (`portcullis:…`) is refused, and the management API ignores grants when it
//! authorizes its callers (`auth::held`), so a grant can never widen what someone may do to
//! Portcullis itself. Every change is on the policy change feed (under the requester, whose
//! cached entry holds the grant), and requests, break-glass openings and approvals are
//! announced on the notification topic when one is configured.

use chrono::{DateTime, Duration, Utc};
use entity::{
    access_review::{self, AccessReviewStatus, ReviewDecision},
    access_review_item::{self, ReviewSubjectKind},
    incident_grant::{self, IncidentGrantStatus},
    permission,
    policy_change::PolicyChangeOp,
    principal, role,
    security_event::Severity,
};
use proxy::{
    keys::{PlainToken, TokenEnv, TokenKind},
    policy::MANAGEMENT_NAMESPACE,
};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, Condition, ConnectionTrait, DatabaseConnection, DbErr,
    EntityTrait, QueryFilter, Set, TransactionTrait,
};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::{
    ServiceContext,
    auth::Actor,
    feed::{self, kind},
    page::{self, Direction, Page, PageRequest},
    validate,
};
use crate::{
    graphql::error::{ApiError, ApiResult, DbResultExt},
    outbox::{self, NewNotification},
};

/// Most ad-hoc permissions one grant may carry.
const MAX_PERMISSIONS: usize = 20;

/// Limits of incident grants (`PORTCULLIS_API__GRANTS__*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GrantsConfig {
    /// Longest grant, in seconds (default 4 hours).
    pub max_duration_secs: i64,
    /// How long a request waits for an approver before it lapses, in seconds (default 4
    /// hours): an old request is not approved into access by mistake.
    pub pending_secs: i64,
    /// Days after a break-glass grant ends by which its follow-up review should be decided;
    /// at that deadline an undecided review is closed with its default, `revoke`, which ends
    /// the grant only if it is somehow still open (a later grant is not touched).
    pub review_days: i64,
}

impl Default for GrantsConfig {
    fn default() -> Self {
        Self {
            max_duration_secs: 4 * 3600,
            pending_secs: 4 * 3600,
            review_days: 3,
        }
    }
}

impl GrantsConfig {
    /// Checks the limits; returns the variable and the problem.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        let a_minute_to_30_days = 60..=30 * 24 * 3600;
        if !a_minute_to_30_days.contains(&self.max_duration_secs) {
            return Err((
                "PORTCULLIS_API__GRANTS__MAX_DURATION_SECS",
                "must be between 60 (a minute) and 2592000 (30 days)".into(),
            ));
        }
        if !a_minute_to_30_days.contains(&self.pending_secs) {
            return Err((
                "PORTCULLIS_API__GRANTS__PENDING_SECS",
                "must be between 60 (a minute) and 2592000 (30 days)".into(),
            ));
        }
        if !(1..=365).contains(&self.review_days) {
            return Err((
                "PORTCULLIS_API__GRANTS__REVIEW_DAYS",
                "must be between 1 and 365".into(),
            ));
        }
        Ok(())
    }
}

/// Where a grant stands, derived from its status and `expires_at` (for a pending grant: when
/// the request lapses; once approved: when access ends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrantState {
    /// Waiting for an approver; the token does not work yet.
    Pending,
    /// Approved (or opened by break-glass) and not yet expired: the token works.
    Active,
    /// Refused by an approver.
    Denied,
    /// Ended early.
    Revoked,
    /// Ran out, or lapsed unapproved.
    Expired,
}

impl GrantState {
    /// Pending or active: not yet ended, so it can still be revoked.
    pub fn is_open(self) -> bool {
        matches!(self, Self::Pending | Self::Active)
    }

    /// Lower-case name, for messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Active => "active",
            Self::Denied => "denied",
            Self::Revoked => "revoked",
            Self::Expired => "expired",
        }
    }
}

/// The state of `grant` at `now`.
pub fn state_of(grant: &incident_grant::Model, now: DateTime<Utc>) -> GrantState {
    let before_end = grant.expires_at.is_some_and(|at| at > now);
    match grant.status {
        IncidentGrantStatus::Pending if before_end || grant.expires_at.is_none() => {
            GrantState::Pending
        }
        IncidentGrantStatus::Approved if before_end => GrantState::Active,
        IncidentGrantStatus::Pending
        | IncidentGrantStatus::Approved
        | IncidentGrantStatus::Expired => GrantState::Expired,
        IncidentGrantStatus::Denied => GrantState::Denied,
        IncidentGrantStatus::Revoked => GrantState::Revoked,
    }
}

/// One ad-hoc permission of a grant, as stored (`[{name, methods, path_glob}]`, read by the
/// proxy's cache).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantPermission {
    /// `service:action`, outside the management namespace.
    pub name: String,
    /// HTTP methods; empty = any.
    pub methods: Vec<String>,
    /// Path pattern.
    pub path_glob: String,
}

/// What [`request`] needs; validated there.
#[derive(Debug, Clone)]
pub struct NewGrant {
    /// External incident reference, e.g. `INC-1234`.
    pub incident_id: String,
    /// Why access is needed.
    pub justification: String,
    /// How long the grant lasts once approved.
    pub duration_seconds: i64,
    /// A role lent for the duration.
    pub role_id: Option<Uuid>,
    /// Ad-hoc permissions, besides or instead of the role.
    pub permissions: Vec<GrantPermission>,
    /// Open at once, without an approver (the caller's break-glass permission is checked by
    /// the resolver).
    pub break_glass: bool,
    /// Environment marker of the token.
    pub environment: TokenEnv,
}

/// Filter of [`list`].
#[derive(Debug, Clone, Default)]
pub struct GrantFilter {
    /// Only grants asked for by this principal.
    pub requester_id: Option<Uuid>,
    /// Only grants in this state.
    pub state: Option<GrantState>,
    /// Only grants for this incident.
    pub incident_id: Option<String>,
}

/// Records a grant request by `actor` and returns the grant token (show it once, never
/// store it) with the stored row. Pending until approved, unless `break_glass`.
#[tracing::instrument(skip_all, fields(requester_id = %actor.principal_id))]
pub async fn request(
    services: &ServiceContext,
    actor: &Actor,
    input: NewGrant,
) -> ApiResult<(PlainToken, incident_grant::Model)> {
    let now = Utc::now();
    let incident_id = validate::text("input.incidentId", &input.incident_id)?;
    let justification = validate::paragraph("input.justification", &input.justification)?;
    let duration_seconds = validate::positive(
        "input.durationSeconds",
        input.duration_seconds,
        services.grants.max_duration_secs,
    )?;
    let permissions = validate_permissions(&input.permissions)?;
    if input.role_id.is_none() && permissions.is_empty() {
        return Err(ApiError::invalid(
            "input.permissions",
            "name a role or at least one permission",
        ));
    }

    let txn = services.db.begin().await?;
    let requester = principal::Entity::find_by_id(actor.principal_id)
        .one(&txn)
        .await?
        .ok_or_else(|| ApiError::not_found("principal", actor.principal_id))?;
    if let Some(role_id) = input.role_id {
        lendable_role(&txn, role_id).await?;
    }
    let token = PlainToken::generate(TokenKind::IncidentGrant, input.environment);
    let id = Uuid::now_v7();
    let decided = input.break_glass.then_some(now);
    let grant = incident_grant::ActiveModel {
        id: Set(id),
        incident_id: Set(incident_id),
        requester_id: Set(requester.id),
        approver_id: Set(input.break_glass.then_some(requester.id)),
        justification: Set(justification),
        role_id: Set(input.role_id),
        permissions: Set(stored_permissions(&permissions)),
        duration_seconds: Set(duration_seconds),
        status: Set(if input.break_glass {
            IncidentGrantStatus::Approved
        } else {
            IncidentGrantStatus::Pending
        }),
        break_glass: Set(input.break_glass),
        token_prefix: Set(Some(token.lookup_prefix().to_owned())),
        token_hash: Set(Some(services.grant_hasher.hash(token.as_parsed()).to_hex())),
        requested_at: Set(now),
        decided_at: Set(decided),
        expires_at: Set(Some(match decided {
            Some(at) => at + Duration::seconds(duration_seconds),
            None => now + Duration::seconds(services.grants.pending_secs),
        })),
        revoked_at: Set(None),
        revoked_reason: Set(None),
        follow_up_review_id: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(&txn)
    .await
    .on_conflict(|| "a grant token with this prefix exists; retry".into())?;
    let grant = if input.break_glass {
        let review_id = open_follow_up_review(&txn, services, &grant, &requester.name, now).await?;
        let mut active: incident_grant::ActiveModel = grant.into();
        active.follow_up_review_id = Set(Some(review_id));
        active.update(&txn).await?
    } else {
        grant
    };
    feed::record(
        &txn,
        kind::INCIDENT_GRANT,
        grant.requester_id,
        PolicyChangeOp::Upsert,
    )
    .await?;
    let (event, severity, what) = if grant.break_glass {
        (
            "incident_grant_break_glass",
            Severity::High,
            "opened by break-glass",
        )
    } else {
        (
            "incident_grant_requested",
            Severity::Medium,
            "waits for an approver",
        )
    };
    announce(
        &txn,
        services,
        &grant,
        &requester.name,
        event,
        severity,
        what,
    )
    .await?;
    txn.commit().await?;
    Ok((token, grant))
}

/// Approves pending grant `id` as `actor`, who must not be its requester; it is active from
/// now for its duration.
#[tracing::instrument(skip_all, fields(grant_id = %id))]
pub async fn approve(
    services: &ServiceContext,
    actor: &Actor,
    id: Uuid,
) -> ApiResult<incident_grant::Model> {
    let now = Utc::now();
    let txn = services.db.begin().await?;
    let grant = find(&txn, id).await?;
    if grant.requester_id == actor.principal_id {
        return Err(ApiError::SeparationOfDuties(
            "a grant cannot be approved by its requester; another approver must decide".into(),
        ));
    }
    expect_pending(&grant, now, "approved")?;
    // The lent role may have gained a management permission since the request.
    if let Some(role_id) = grant.role_id
        && lendable_role(&txn, role_id).await.is_err()
    {
        return Err(ApiError::Conflict(
            "the lent role now holds management permissions (or is gone); deny the request".into(),
        ));
    }
    let duration = Duration::seconds(grant.duration_seconds);
    let mut active: incident_grant::ActiveModel = grant.into();
    active.status = Set(IncidentGrantStatus::Approved);
    active.approver_id = Set(Some(actor.principal_id));
    active.decided_at = Set(Some(now));
    active.expires_at = Set(Some(now + duration));
    let grant = store(&txn, active, IncidentGrantStatus::Pending, now).await?;
    let requester = requester_name(&txn, &grant).await?;
    announce(
        &txn,
        services,
        &grant,
        &requester,
        "incident_grant_approved",
        Severity::Medium,
        "was approved",
    )
    .await?;
    txn.commit().await?;
    Ok(grant)
}

/// Refuses pending grant `id` as `actor`, who must not be its requester (requesters
/// withdraw with [`revoke`]); its token never works.
#[tracing::instrument(skip_all, fields(grant_id = %id))]
pub async fn deny(
    db: &DatabaseConnection,
    actor: &Actor,
    id: Uuid,
    reason: &str,
) -> ApiResult<incident_grant::Model> {
    let reason = validate::text("reason", reason)?;
    change(db, id, |grant, now| {
        if grant.requester_id == actor.principal_id {
            return Err(ApiError::SeparationOfDuties(
                "a grant cannot be denied by its requester; withdraw it with revokeIncidentGrant"
                    .into(),
            ));
        }
        expect_pending(grant, now, "denied")?;
        let mut active: incident_grant::ActiveModel = grant.clone().into();
        active.status = Set(IncidentGrantStatus::Denied);
        active.approver_id = Set(Some(actor.principal_id));
        active.decided_at = Set(Some(now));
        active.revoked_reason = Set(Some(reason.clone()));
        Ok(active)
    })
    .await
}

/// Ends grant `id` now, pending or active; the proxies refuse its token within a second.
#[tracing::instrument(skip_all, fields(grant_id = %id))]
pub async fn revoke(
    db: &DatabaseConnection,
    id: Uuid,
    reason: &str,
) -> ApiResult<incident_grant::Model> {
    let reason = validate::text("reason", reason)?;
    change(db, id, |grant, now| {
        let state = state_of(grant, now);
        if !state.is_open() {
            return Err(ApiError::Conflict(format!(
                "the grant has already ended: it is {}",
                state.as_str()
            )));
        }
        Ok(revoked(grant.clone(), &reason, now))
    })
    .await
}

/// `grant` revoked at `now` for `reason`.
fn revoked(
    grant: incident_grant::Model,
    reason: &str,
    now: DateTime<Utc>,
) -> incident_grant::ActiveModel {
    let mut active: incident_grant::ActiveModel = grant.into();
    active.status = Set(IncidentGrantStatus::Revoked);
    active.revoked_at = Set(Some(now));
    active.revoked_reason = Set(Some(reason.to_owned()));
    active
}

/// Revokes `grant` in the caller's transaction if it is still open (pending or active) at
/// `now` and its status is still the one read; returns whether it did. For remediation and
/// access reviews, which report the change feed themselves. A grant that already ran out is
/// left as it ended, not rewritten as revoked.
pub async fn revoke_if_open<C: ConnectionTrait>(
    db: &C,
    grant: incident_grant::Model,
    reason: &str,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    if !state_of(&grant, now).is_open() {
        return Ok(false);
    }
    let read = grant.status;
    Ok(update_if_status(db, revoked(grant, reason, now), read, now)
        .await?
        .is_some())
}

/// Grant `id`.
pub async fn get(db: &DatabaseConnection, id: Uuid) -> ApiResult<incident_grant::Model> {
    find(db, id).await
}

/// Grants matching `filter`, newest first.
pub async fn list(
    db: &DatabaseConnection,
    filter: &GrantFilter,
    page: &PageRequest<Uuid>,
) -> ApiResult<Page<incident_grant::Model>> {
    let now = Utc::now();
    let mut select = incident_grant::Entity::find();
    if let Some(requester_id) = filter.requester_id {
        select = select.filter(incident_grant::Column::RequesterId.eq(requester_id));
    }
    if let Some(incident_id) = &filter.incident_id {
        select = select.filter(incident_grant::Column::IncidentId.eq(incident_id.trim()));
    }
    // As [`state_of`]: pending and approved grants are expired from `expires_at` on.
    let status = |s: IncidentGrantStatus| incident_grant::Column::Status.eq(s);
    let open = Condition::any()
        .add(status(IncidentGrantStatus::Pending))
        .add(status(IncidentGrantStatus::Approved));
    let unexpired = Condition::any()
        .add(incident_grant::Column::ExpiresAt.is_null())
        .add(incident_grant::Column::ExpiresAt.gt(now));
    select = match filter.state {
        None => select,
        Some(GrantState::Pending) => select
            .filter(status(IncidentGrantStatus::Pending))
            .filter(unexpired),
        Some(GrantState::Denied) => {
            select.filter(incident_grant::Column::Status.eq(IncidentGrantStatus::Denied))
        }
        Some(GrantState::Revoked) => {
            select.filter(incident_grant::Column::Status.eq(IncidentGrantStatus::Revoked))
        }
        Some(GrantState::Active) => select
            .filter(status(IncidentGrantStatus::Approved))
            .filter(incident_grant::Column::ExpiresAt.gt(now)),
        Some(GrantState::Expired) => select.filter(
            Condition::any()
                .add(status(IncidentGrantStatus::Expired))
                .add(
                    Condition::all()
                        .add(open)
                        .add(incident_grant::Column::ExpiresAt.lte(now)),
                )
                // Approved without an end: never written by the API; not active either.
                .add(
                    Condition::all()
                        .add(status(IncidentGrantStatus::Approved))
                        .add(incident_grant::Column::ExpiresAt.is_null()),
                ),
        ),
    };
    Ok(page::fetch(
        db,
        select,
        incident_grant::Column::Id,
        Direction::Descending,
        page,
    )
    .await?)
}

/// The permissions of a stored grant, as [`request`] wrote them.
pub fn permissions_of(grant: &incident_grant::Model) -> Vec<GrantPermission> {
    grant
        .permissions
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|item| {
            Some(GrantPermission {
                name: item.get("name")?.as_str()?.to_owned(),
                methods: item
                    .get("methods")
                    .and_then(Value::as_array)
                    .into_iter()
                    .flatten()
                    .filter_map(|m| m.as_str().map(str::to_owned))
                    .collect(),
                path_glob: item.get("path_glob")?.as_str()?.to_owned(),
            })
        })
        .collect()
}

fn validate_permissions(permissions: &[GrantPermission]) -> ApiResult<Vec<GrantPermission>> {
    if permissions.len() > MAX_PERMISSIONS {
        return Err(ApiError::invalid(
            "input.permissions",
            format!("at most {MAX_PERMISSIONS} permissions per grant"),
        ));
    }
    permissions
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let field = |name: &str| format!("input.permissions.{i}.{name}");
            let name = validate::permission_name(&field("name"), &p.name)?;
            if name.starts_with(MANAGEMENT_NAMESPACE) {
                return Err(ApiError::invalid(
                    field("name"),
                    "incident grants open proxied APIs only, never a management permission",
                ));
            }
            Ok(GrantPermission {
                name,
                methods: validate::methods(&field("methods"), &p.methods)?,
                path_glob: validate::path_glob(&field("pathGlob"), &p.path_glob)?,
            })
        })
        .collect()
}

fn stored_permissions(permissions: &[GrantPermission]) -> Value {
    Value::Array(
        permissions
            .iter()
            .map(|p| json!({ "name": p.name, "methods": p.methods, "path_glob": p.path_glob }))
            .collect(),
    )
}

/// Role `role_id` exists and holds no management permission (builtin roles all do).
async fn lendable_role<C: ConnectionTrait>(db: &C, role_id: Uuid) -> ApiResult<()> {
    let role = role::Entity::find_by_id(role_id)
        .one(db)
        .await?
        .ok_or_else(|| ApiError::not_found("role", role_id))?;
    // Compared here, not with LIKE: SQLite's LIKE ignores case, PostgreSQL's does not.
    let management = permission::Entity::find()
        .filter(permission::Column::RoleId.eq(role.id))
        .all(db)
        .await?
        .iter()
        .any(|p| p.name.starts_with(MANAGEMENT_NAMESPACE));
    if role.builtin || management {
        return Err(ApiError::invalid(
            "input.roleId",
            "incident grants open proxied APIs only; this role holds management permissions",
        ));
    }
    Ok(())
}

/// Opens the follow-up access review of break-glass `grant`, with the grant as its one item.
async fn open_follow_up_review<C: ConnectionTrait>(
    db: &C,
    services: &ServiceContext,
    grant: &incident_grant::Model,
    requester: &str,
    now: DateTime<Utc>,
) -> ApiResult<Uuid> {
    let ends = grant.expires_at.unwrap_or(now);
    let review = access_review::ActiveModel {
        id: Set(Uuid::now_v7()),
        name: Set(format!(
            "Break-glass follow-up: {} by {requester}",
            grant.incident_id
        )),
        scope: Set(json!({ "incident_grant_id": grant.id, "incident_id": grant.incident_id })),
        status: Set(AccessReviewStatus::Open),
        deadline: Set(ends + Duration::days(services.grants.review_days)),
        default_action: Set(ReviewDecision::Revoke),
        dormant_days: Set(0),
        created_by: Set(Some(grant.requester_id)),
        created_at: Set(now),
        closed_at: Set(None),
    }
    .insert(db)
    .await?;
    access_review_item::ActiveModel {
        id: Set(Uuid::now_v7()),
        review_id: Set(review.id),
        subject_kind: Set(ReviewSubjectKind::IncidentGrant),
        subject_id: Set(grant.id),
        principal_id: Set(grant.requester_id),
        flags: Set(json!({ "break_glass": true })),
        reviewer_id: Set(None),
        decision: Set(None),
        decided_by: Set(None),
        decided_at: Set(None),
        note: Set(None),
        applied_at: Set(None),
        created_at: Set(now),
    }
    .insert(db)
    .await?;
    Ok(review.id)
}

/// Queues a notification about `grant` when a topic is configured. Never carries the token.
async fn announce<C: ConnectionTrait>(
    db: &C,
    services: &ServiceContext,
    grant: &incident_grant::Model,
    requester: &str,
    event_type: &str,
    severity: Severity,
    what: &str,
) -> ApiResult<()> {
    let Some(topic_arn) = &services.notify_topic_arn else {
        return Ok(());
    };
    let message = json!({
        "event_type": event_type,
        "grant_id": grant.id,
        "incident_id": grant.incident_id,
        "requester_id": grant.requester_id,
        "requester": requester,
        "approver_id": grant.approver_id,
        "justification": grant.justification,
        "duration_seconds": grant.duration_seconds,
        // Pending: when the request lapses unapproved; approved: when access ends.
        "state": state_of(grant, Utc::now()).as_str(),
        "expires_at": grant.expires_at,
        "follow_up_review_id": grant.follow_up_review_id,
    });
    outbox::enqueue(
        db,
        NewNotification {
            topic_arn: topic_arn.clone(),
            message_group: Some(format!("incident_grant:{}", grant.id)),
            dedup_id: format!("{event_type}:{}", grant.id),
            event_type: event_type.to_owned(),
            severity,
            principal: Some(grant.requester_id.to_string()),
            subject: format!(
                "Incident grant for {} {what} ({requester})",
                grant.incident_id
            ),
            message: message.to_string(),
        },
    )
    .await?;
    Ok(())
}

async fn requester_name<C: ConnectionTrait>(
    db: &C,
    grant: &incident_grant::Model,
) -> ApiResult<String> {
    Ok(principal::Entity::find_by_id(grant.requester_id)
        .one(db)
        .await?
        .map(|p| p.name)
        .unwrap_or_default())
}

/// `CONFLICT` unless `grant` still waits for a decision (not decided, not lapsed).
fn expect_pending(grant: &incident_grant::Model, now: DateTime<Utc>, verb: &str) -> ApiResult<()> {
    match state_of(grant, now) {
        GrantState::Pending => Ok(()),
        state => Err(ApiError::Conflict(format!(
            "only a pending grant can be {verb}; this one is {}",
            state.as_str()
        ))),
    }
}

async fn change(
    db: &DatabaseConnection,
    id: Uuid,
    change: impl FnOnce(&incident_grant::Model, DateTime<Utc>) -> ApiResult<incident_grant::ActiveModel>,
) -> ApiResult<incident_grant::Model> {
    let now = Utc::now();
    let txn = db.begin().await?;
    let grant = find(&txn, id).await?;
    let read = grant.status;
    let grant = store(&txn, change(&grant, now)?, read, now).await?;
    txn.commit().await?;
    Ok(grant)
}

/// Writes a changed grant, if its status is still `read` (the one the change was decided on),
/// and reports it on the change feed, under its requester. Two decisions racing on one grant
/// (approve and deny, approve and revoke) cannot both land: the later gets `CONFLICT`.
async fn store<C: ConnectionTrait>(
    db: &C,
    grant: incident_grant::ActiveModel,
    read: IncidentGrantStatus,
    now: DateTime<Utc>,
) -> ApiResult<incident_grant::Model> {
    let grant = update_if_status(db, grant, read, now)
        .await?
        .ok_or_else(|| {
            ApiError::Conflict("the grant was decided or ended meanwhile; read it again".into())
        })?;
    feed::record(
        db,
        kind::INCIDENT_GRANT,
        grant.requester_id,
        PolicyChangeOp::Upsert,
    )
    .await?;
    Ok(grant)
}

/// Writes `grant` (stamped `now`) only if its stored status is still `read`; `None` when
/// another decision landed first.
async fn update_if_status<C: ConnectionTrait>(
    db: &C,
    mut grant: incident_grant::ActiveModel,
    read: IncidentGrantStatus,
    now: DateTime<Utc>,
) -> Result<Option<incident_grant::Model>, DbErr> {
    grant.updated_at = Set(now);
    match incident_grant::Entity::update(grant)
        .validate()?
        .filter(incident_grant::Column::Status.eq(read))
        .exec(db)
        .await
    {
        Ok(grant) => Ok(Some(grant)),
        Err(DbErr::RecordNotUpdated) => Ok(None),
        Err(error) => Err(error),
    }
}

async fn find<C: ConnectionTrait>(db: &C, id: Uuid) -> ApiResult<incident_grant::Model> {
    incident_grant::Entity::find_by_id(id)
        .one(db)
        .await?
        .ok_or_else(|| ApiError::not_found("incident grant", id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(
        status: IncidentGrantStatus,
        expires_at: Option<DateTime<Utc>>,
    ) -> incident_grant::Model {
        let now = Utc::now();
        incident_grant::Model {
            id: Uuid::now_v7(),
            incident_id: "INC-1".into(),
            requester_id: Uuid::now_v7(),
            approver_id: None,
            justification: "test".into(),
            role_id: None,
            permissions: json!([]),
            duration_seconds: 60,
            status,
            break_glass: false,
            token_prefix: None,
            token_hash: None,
            requested_at: now,
            decided_at: None,
            expires_at,
            revoked_at: None,
            revoked_reason: None,
            follow_up_review_id: None,
            created_at: now,
            updated_at: now,
        }
    }

    #[test]
    fn an_approved_grant_is_active_only_before_its_end() {
        let now = Utc::now();
        let later = Some(now + Duration::seconds(1));
        use IncidentGrantStatus as S;
        assert_eq!(
            state_of(&grant(S::Approved, later), now),
            GrantState::Active
        );
        assert_eq!(
            state_of(&grant(S::Approved, Some(now)), now),
            GrantState::Expired
        );
        // Approved without an end never happens through the API; it is not active.
        assert_eq!(
            state_of(&grant(S::Approved, None), now),
            GrantState::Expired
        );
        assert_eq!(state_of(&grant(S::Pending, None), now), GrantState::Pending);
        // A request lapses unapproved at its `expires_at`.
        assert_eq!(
            state_of(&grant(S::Pending, later), now),
            GrantState::Pending
        );
        assert_eq!(
            state_of(&grant(S::Pending, Some(now)), now),
            GrantState::Expired
        );
        assert_eq!(
            state_of(&grant(S::Revoked, later), now),
            GrantState::Revoked
        );
        assert_eq!(state_of(&grant(S::Denied, None), now), GrantState::Denied);
        assert_eq!(
            state_of(&grant(S::Expired, later), now),
            GrantState::Expired
        );
    }

    #[test]
    fn stored_permissions_read_back_as_written() {
        let permissions = vec![
            GrantPermission {
                name: "orders:read".into(),
                methods: vec!["GET".into(), "HEAD".into()],
                path_glob: "/orders/**".into(),
            },
            GrantPermission {
                name: "orders:any".into(),
                methods: vec![],
                path_glob: "/orders/*".into(),
            },
        ];
        let mut stored = grant(IncidentGrantStatus::Pending, None);
        stored.permissions = stored_permissions(&permissions);
        assert_eq!(permissions_of(&stored), permissions);
    }

    #[test]
    fn limits_outside_their_range_name_the_variable() {
        assert!(GrantsConfig::default().validate().is_ok());
        for (config, variable) in [
            (
                GrantsConfig {
                    max_duration_secs: 59,
                    ..GrantsConfig::default()
                },
                "PORTCULLIS_API__GRANTS__MAX_DURATION_SECS",
            ),
            (
                GrantsConfig {
                    max_duration_secs: 30 * 24 * 3600 + 1,
                    ..GrantsConfig::default()
                },
                "PORTCULLIS_API__GRANTS__MAX_DURATION_SECS",
            ),
            (
                GrantsConfig {
                    pending_secs: 0,
                    ..GrantsConfig::default()
                },
                "PORTCULLIS_API__GRANTS__PENDING_SECS",
            ),
            (
                GrantsConfig {
                    review_days: 0,
                    ..GrantsConfig::default()
                },
                "PORTCULLIS_API__GRANTS__REVIEW_DAYS",
            ),
        ] {
            assert_eq!(config.validate().expect_err("out of range").0, variable);
        }
    }

    #[test]
    fn management_permissions_are_never_lent() {
        let error = validate_permissions(&[GrantPermission {
            name: "portcullis:keys:write".into(),
            methods: vec![],
            path_glob: "/graphql".into(),
        }])
        .expect_err("a management permission");
        assert!(
            matches!(&error, ApiError::BadUserInput { field, .. } if field == "input.permissions.0.name"),
            "{error:?}"
        );
    }
}
