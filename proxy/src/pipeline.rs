//! The request pipeline, in named steps (DESIGN.md "Request pipeline"):
//! normalise → route → IP rules → authenticate → authorize → rate limit → quota → forward →
//! audit.
//!
//! Every request, allowed or refused, produces exactly one audit event.

use std::{
    fmt::Write as _,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Instant,
};

use axum::{
    body::Body,
    extract::{ConnectInfo, Request, State},
    response::Response,
};
use chrono::Utc;
use entity::audit_event::{AuditDecision, AuditEventKind};
use http::{HeaderMap, Method, header};
use http_body_util::BodyExt as _;
use hyper::body::Body as _;
use ipnet::IpNet;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::{
    audit::AuditRecord,
    authn::{self, AuthFailure, Authenticated, Presented, Refused},
    body_timeout::{ClientBodyError, Detachable, IdleTimeout, Stalled},
    cache::{PrincipalEntry, Snapshot},
    error::{ProxyError, rescue, source_of},
    forward::{self, Identity},
    normalize,
    policy::{self, RequestFacts, Subject},
    ratelimit::{self, Limit, RateDecision},
    request_id,
    routes::{AuthMethod, Route, ip_permitted},
    state::ProxyState,
    tunnel,
};

/// The axum handler behind every proxied path ([`crate::router`]).
pub async fn handle(
    State(state): State<ProxyState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    request: Request,
) -> Response {
    process(&state, &Connection::from(peer), request).await
}

/// The client connection a request arrived on.
#[derive(Clone)]
pub struct Connection {
    /// The socket peer.
    pub peer: SocketAddr,
    /// What the listener holds while the connection is open; a WebSocket tunnel opened on
    /// it holds it too.
    pub slot: Option<tunnel::ConnectionSlot>,
}

impl From<SocketAddr> for Connection {
    fn from(peer: SocketAddr) -> Self {
        Self { peer, slot: None }
    }
}

/// One request from `connection` through the whole pipeline, to its response. Listeners
/// call it directly (see [`crate::service`]); [`handle`] wraps it for axum.
pub async fn process(
    state: &ProxyState,
    connection: &Connection,
    mut request: Request,
) -> Response {
    let started = Instant::now();
    let request_id_header = request_id::assign(request.headers_mut());
    let request_id = request_id_header.to_str().unwrap_or("-").to_owned();
    let span = request_id::span("proxy", &request_id, request.method(), request.uri().path());
    // Room for the event first, so that however the request ends its event is queued without
    // waiting. When the audit writer is behind, requests wait here, before anything is decided
    // or forwarded: back-pressure instead of loss, and at most the queue's capacity of events
    // (queued or in flight) in memory. A client that leaves while waiting was never served
    // and leaves no event.
    let record = AuditRecord::new(AuditEventKind::ProxyRequest, "");
    let permit = state.audit.reserve().await;
    let mut pending = PendingAudit::new(state, started, record, permit);
    let audit = pending.record();
    audit.request_id = Some(request_id.clone());
    audit.method = Some(request.method().as_str().to_owned());
    let mut rate = None;
    let outcome = run(state, connection, request, audit, &mut rate)
        .instrument(span.clone())
        .await;
    let mut response = match outcome {
        Ok(mut response) => {
            audit.decision = Some(AuditDecision::Allow);
            if let Some(rate) = &rate {
                rate.insert_headers(response.headers_mut());
            }
            response
        }
        Err(error) => {
            // Upstream failures happen after an allow decision; keep it.
            if audit.decision.is_none() {
                audit.decision = Some(AuditDecision::Deny);
            }
            if audit.reason.is_empty() || audit.decision == Some(AuditDecision::Deny) {
                audit.reason = error.audit_reason();
            } else {
                audit.reason = format!("{}; {}", audit.reason, error.code());
            }
            let mut response = rescue(&error, &request_id);
            // Refused after the rate check (quota, upstream): the budget was still spent.
            if let Some(rate) = &rate {
                rate.insert_headers(response.headers_mut());
            }
            response
        }
    };
    request_id::echo(response.headers_mut(), request_id_header);
    audit.status = Some(i32::from(response.status().as_u16()));
    audit.latency_us = Some(started.elapsed().as_micros() as i64);
    tracing::info!(
        parent: &span,
        status = response.status().as_u16(),
        latency_us = audit.latency_us,
        "finished processing request"
    );
    metrics::counter!(
        "portcullis_proxy_requests_total",
        "decision" => if audit.decision == Some(AuditDecision::Allow) { "allow" } else { "deny" },
    )
    .increment(1);
    state.detectors.observe(audit);
    pending.queue();
    response
}

/// The request's audit event until it is queued. hyper drops a request's future when the
/// client goes away (an HTTP/1 connection closed, an HTTP/2 stream reset), possibly after the
/// upstream has acted on the request; the event is then queued on drop, with status 499
/// ("client closed request", as nginx logs it) and `client_closed_request` in its reason.
struct PendingAudit<'a> {
    state: &'a ProxyState,
    started: Instant,
    record: AuditRecord,
    /// Room in the audit queue, reserved before the request was processed; `None` only after
    /// the writer has shut down.
    permit: Option<mpsc::Permit<'a, AuditRecord>>,
    queued: bool,
}

impl<'a> PendingAudit<'a> {
    fn new(
        state: &'a ProxyState,
        started: Instant,
        record: AuditRecord,
        permit: Option<mpsc::Permit<'a, AuditRecord>>,
    ) -> Self {
        Self {
            state,
            started,
            record,
            permit,
            queued: false,
        }
    }

    fn record(&mut self) -> &mut AuditRecord {
        &mut self.record
    }

    /// Queues the event, without waiting; the drop then does nothing.
    fn queue(mut self) {
        self.queued = true;
        let record = std::mem::replace(
            &mut self.record,
            AuditRecord::new(AuditEventKind::ProxyRequest, ""),
        );
        send(self.permit.take(), record);
    }
}

/// Queues `record` in the room `permit` holds. Without one the writer has shut down: the event
/// then goes to the log, the only place left.
fn send(permit: Option<mpsc::Permit<'_, AuditRecord>>, record: AuditRecord) {
    match permit {
        Some(permit) => permit.send(record),
        None => tracing::error!(?record, "audit event after shutdown could not be queued"),
    }
}

impl Drop for PendingAudit<'_> {
    fn drop(&mut self) {
        if self.queued {
            return;
        }
        let mut audit = std::mem::replace(
            &mut self.record,
            AuditRecord::new(AuditEventKind::ProxyRequest, ""),
        );
        // Whatever was decided stays (an allowed request may have reached the upstream).
        audit.reason = if audit.reason.is_empty() {
            CLIENT_CLOSED.to_owned()
        } else {
            format!("{}; {CLIENT_CLOSED}", audit.reason)
        };
        audit.decision.get_or_insert(AuditDecision::Deny);
        audit.status = Some(499);
        audit.latency_us = Some(self.started.elapsed().as_micros() as i64);
        self.state.detectors.observe(&audit);
        send(self.permit.take(), audit);
    }
}

/// The audit reason for a request whose client went away before its response.
const CLIENT_CLOSED: &str = "client_closed_request";

async fn run(
    state: &ProxyState,
    connection: &Connection,
    request: Request,
    audit: &mut AuditRecord,
    rate: &mut Option<RateDecision>,
) -> Result<Response, ProxyError> {
    // Split first: the body need not be `Sync` to be held across the steps' awaits.
    let (head, body) = request.into_parts();
    let admission = admit(state, connection.peer, &head, audit).await?;

    // 6. Rate limit (after authorization, before the quota: refused requests spend nothing).
    let caller = admission.caller.as_ref();
    if let Err(error) = rate_limit(
        state,
        &admission.snapshot,
        &admission.route,
        caller,
        admission.client_ip,
        admission.now,
        rate,
    )
    .await
    {
        audit.decision = None;
        return Err(error);
    }

    // 6b. Quota (after authorization, so refused requests spend nothing).
    if let Some(caller) = caller
        && let Some(budget_id) = caller.budget_key_id
        && caller.has_quota
        && !authn::spend_quota(&state.db, budget_id, admission.now)
            .await
            .map_err(|e| ProxyError::Internal(Box::new(e)))?
    {
        audit.decision = None;
        return Err(ProxyError::QuotaExhausted);
    }

    // 7. Forward.
    forward_request(state, connection, admission, head, body, audit).await
}

/// What steps 1–5 established about a request they admitted.
struct Admission {
    /// The single `Host`, or the URI's authority.
    host: Option<String>,
    /// The normalised path.
    path: String,
    query: Option<String>,
    route: Arc<Route>,
    /// `None` on an anonymous route.
    caller: Option<Authenticated>,
    /// The caller's principal as the decision saw it (with any groups its credential
    /// proves); `None` on an anonymous route.
    principal: Option<Arc<PrincipalEntry>>,
    client_ip: IpAddr,
    /// `client_ip` as text (the audit row and `X-Forwarded-For` both carry it).
    client_addr: String,
    /// Whether the socket peer is a trusted proxy (then its `X-Forwarded-Proto` counts).
    peer_trusted: bool,
    now: chrono::DateTime<Utc>,
    snapshot: arc_swap::Guard<Arc<Snapshot>>,
}

/// Steps 1–5: normalise, route, IP rules, authenticate, authorize. Reads the request's head
/// only, so a WebSocket tunnel can run them again on the head that opened it
/// ([`readmit`]). Fills in what the audit event learns on the way.
async fn admit(
    state: &ProxyState,
    peer: SocketAddr,
    request: &http::request::Parts,
    audit: &mut AuditRecord,
) -> Result<Admission, ProxyError> {
    // A dual-stack listener sees IPv4 clients as `::ffff:a.b.c.d`; every rule, bucket and
    // detector compares plain IPv4, so the address is made canonical before anything uses it.
    let peer_ip = peer.ip().to_canonical();
    let (client_ip, peer_trusted) =
        resolve_client(peer_ip, &request.headers, &state.config.trusted_proxies)?;
    // Formatted once: the audit row and `X-Forwarded-For` both carry it.
    let client_addr = address_text(client_ip);
    audit.client_ip = Some(client_addr.clone());
    state.cache.check_fresh()?;
    // TRACE: an upstream that echoes it (Apache's default) would hand the caller the
    // upstream credential injected on the way out.
    if request.method == Method::CONNECT || request.method == Method::TRACE {
        return Err(ProxyError::MethodNotSupported);
    }
    if !forward::only_chunked(&request.headers) {
        return Err(ProxyError::TransferCodingNotSupported);
    }

    // 1. Normalise the target; the rest of the pipeline and the upstream see only this.
    let host = host(request)?;
    let (path, query) =
        normalize::split_target_with(&request.uri, host.as_deref(), &state.normalize)?;
    audit.path = Some(path.clone());

    // 2. Route.
    let now = Utc::now();
    let snapshot = state.cache.snapshot();
    let host_name = host.as_deref().map(route_host);
    let route = snapshot
        .routes
        .find(host_name, &path, &request.method)
        .ok_or(ProxyError::NoRoute)?;
    audit.route_id = Some(route.id);

    // 3. IP rules, global then the route's.
    if !ip_permitted(&snapshot.global_ip_rules, client_ip, now)
        || !ip_permitted(&route.ip_rules, client_ip, now)
    {
        return Err(ProxyError::IpBlocked);
    }

    // 4. Authenticate.
    let caller = match authenticate(state, &route, &request.headers, client_ip, now).await {
        Ok(caller) => caller,
        Err(refused) => {
            audit.api_key_id = refused.key_id;
            audit.principal_id = refused.principal_id;
            return Err(refused.error);
        }
    };

    // 5. Authorize.
    let principal = match &caller {
        Some(caller) => Some(
            authorize(
                state,
                &snapshot,
                &route,
                caller,
                &request.method,
                &path,
                client_ip,
                now,
                audit,
            )
            .await?,
        ),
        None => {
            audit.reason = "anonymous_route".into();
            audit.decision = Some(AuditDecision::Allow);
            None
        }
    };
    Ok(Admission {
        host,
        path,
        query,
        route,
        caller,
        principal,
        client_ip,
        client_addr,
        peer_trusted,
        now,
        snapshot,
    })
}

/// Whether the request whose head this is would still be admitted now, on the same route
/// (steps 1–5; rate limit and quota are not spent again): a WebSocket tunnel lives only as
/// long as the request that opened it would.
pub(crate) async fn readmit(
    state: &ProxyState,
    peer: SocketAddr,
    head: &http::request::Parts,
    route_id: Option<uuid::Uuid>,
) -> Result<Readmitted, ProxyError> {
    let mut scratch = AuditRecord::new(AuditEventKind::ProxyRequest, "");
    let admission = admit(state, peer, head, &mut scratch).await?;
    // Another route now (the tunnel's was removed, and a wider one matches): its rules were
    // never the tunnel's, and neither is its upstream.
    if Some(admission.route.id) != route_id {
        return Err(ProxyError::NoRoute);
    }
    Ok(Readmitted {
        next_expiry: next_expiry(&admission),
    })
}

/// A request that [`readmit`] admitted again.
pub(crate) struct Readmitted {
    /// The first moment after which the same check, on the same policy, could come out
    /// differently; `None` if nothing it read expires.
    pub next_expiry: Option<chrono::DateTime<Utc>>,
}

/// The earliest expiry after `admission.now` among everything the decision read that can
/// expire: the credential, the principal's bindings and grants (every one, not only the one
/// that allowed: another may take over, or stop taking over), and the IP rules (an allow
/// rule's end can block the address). Generous on purpose: an expiry that turns out not to
/// matter only costs one check more.
fn next_expiry(admission: &Admission) -> Option<chrono::DateTime<Utc>> {
    let now = admission.now;
    let credential = admission.caller.as_ref().and_then(|c| c.expires_at);
    let principal = admission.principal.iter().flat_map(|p| {
        let bindings = p.bindings.iter().filter_map(|b| b.expires_at);
        bindings.chain(p.grants.iter().map(|g| g.expires_at))
    });
    let ip_rules = admission
        .snapshot
        .global_ip_rules
        .iter()
        .chain(&admission.route.ip_rules)
        .filter_map(|rule| rule.expires_at);
    credential
        .into_iter()
        .chain(principal)
        .chain(ip_rules)
        .filter(|at| *at > now)
        .min()
}

/// Step 5 for an authenticated caller: the RBAC decision, recorded in `audit`. Returns the
/// principal as decided on.
#[expect(
    clippy::too_many_arguments,
    reason = "one call site; the pieces come from earlier steps"
)]
async fn authorize(
    state: &ProxyState,
    snapshot: &Snapshot,
    route: &Route,
    caller: &Authenticated,
    method: &Method,
    path: &str,
    client_ip: IpAddr,
    now: chrono::DateTime<Utc>,
    audit: &mut AuditRecord,
) -> Result<Arc<PrincipalEntry>, ProxyError> {
    audit.principal_id = Some(caller.principal_id);
    audit.api_key_id = caller.key_id;
    audit.grant_id = caller.grant_id;
    let principal = state
        .cache
        .principal(caller.principal_id, now)
        .await?
        .filter(|p| !p.disabled)
        .ok_or(ProxyError::Unauthenticated(AuthFailure::PrincipalDisabled))?;
    // Groups proven by the credential (OIDC groups claim) count for this request too.
    let principal = state
        .cache
        .with_extra_groups(principal, &caller.extra_group_ids, now)
        .await?;
    // A grant token carries exactly its grant's permissions, nothing else the holder has.
    let grant_only: Vec<_> = match caller.grant_id {
        Some(id) => principal
            .grants
            .iter()
            .filter(|g| g.id.0 == id)
            .cloned()
            .collect(),
        None => Vec::new(),
    };
    let subject = match caller.grant_id {
        Some(_) => Subject {
            principal_id: principal.id,
            group_ids: &[],
            bindings: &[],
            grants: &grant_only,
        },
        None => Subject {
            principal_id: principal.id,
            group_ids: &principal.group_ids,
            bindings: &principal.bindings,
            grants: &principal.grants,
        },
    };
    let facts = RequestFacts {
        method,
        path,
        route_id: Some(route.id),
        client_ip,
        now,
        required_permission: route.required_permission.as_deref(),
    };
    let decision = policy::evaluate(&snapshot.roles, &subject, &facts);
    if !decision.allowed {
        return Err(ProxyError::Forbidden(decision.reason));
    }
    // A key or JWT request that only a grant allows is incident access too: tagged with
    // the grant like a grant token's, in the audit and for the upstream.
    if let policy::Reason::Grant { grant_id, .. } = decision.reason {
        audit.grant_id = Some(grant_id.0);
    }
    // Sized for the longest allow reason (three ids and a group): `to_string` would grow
    // the text five times on the way there.
    audit.reason = String::with_capacity(160);
    let _ = write!(audit.reason, "{}", decision.reason);
    audit.permission_id = decision.reason.permission_id();
    audit.decision = Some(AuditDecision::Allow);
    Ok(principal)
}

async fn authenticate(
    state: &ProxyState,
    route: &Route,
    headers: &HeaderMap,
    client_ip: IpAddr,
    now: chrono::DateTime<Utc>,
) -> Result<Option<Authenticated>, Refused> {
    let accepts = |m| route.auth_methods.contains(&m);
    match authn::presented(headers)? {
        None if accepts(AuthMethod::Anonymous) => Ok(None),
        None => Err(ProxyError::Unauthenticated(AuthFailure::MissingCredential).into()),
        Some(Presented::ApiKey(_)) if !accepts(AuthMethod::ApiKey) => {
            Err(ProxyError::Unauthenticated(AuthFailure::MethodNotAccepted).into())
        }
        Some(Presented::ApiKey(raw)) => {
            let key =
                authn::verify_api_key(&state.cache, &state.hasher, raw, client_ip, now).await?;
            Ok(Some(Authenticated {
                principal_id: key.principal_id,
                key_id: Some(key.id),
                grant_id: None,
                method: AuthMethod::ApiKey,
                key_rate_limit: key.rate_limit,
                has_quota: key.has_quota,
                budget_key_id: Some(key.budget_id),
                extra_group_ids: Vec::new(),
                expires_at: key.expires_at,
            }))
        }
        Some(Presented::GrantToken(token)) if accepts(AuthMethod::Grant) => {
            authn::verify_grant_token(&state.cache, &state.grant_hasher, token, client_ip, now)
                .await
                .map(Some)
        }
        Some(Presented::Bearer(token)) => match &state.oidc {
            Some(verifier) if accepts(AuthMethod::Oidc) => {
                crate::oidc::authenticate(verifier, &state.cache, token)
                    .await
                    .map(Some)
            }
            // JWTs where OIDC is off are refused, never waved through.
            _ => Err(ProxyError::Unauthenticated(AuthFailure::MethodNotAccepted).into()),
        },
        Some(Presented::GrantToken(_)) => {
            Err(ProxyError::Unauthenticated(AuthFailure::MethodNotAccepted).into())
        }
    }
}

/// Step 6, rate limit: the key's own limit, else the route's, else the configured default,
/// tightened by any active override; counted per key (a rotated key with its successor; else
/// principal, else client address) and route. The decision is kept for the `RateLimit-*` headers of the response.
async fn rate_limit(
    state: &ProxyState,
    snapshot: &Snapshot,
    route: &Route,
    caller: Option<&Authenticated>,
    client_ip: IpAddr,
    now: chrono::DateTime<Utc>,
    rate: &mut Option<RateDecision>,
) -> Result<(), ProxyError> {
    let subject = ratelimit::Subject {
        route_id: route.id,
        principal_id: caller.map(|c| c.principal_id),
        key_id: caller.and_then(|c| c.key_id),
        client_ip,
    };
    let base = caller
        .and_then(|c| c.key_rate_limit)
        .map(Limit::from)
        .or(route.rate_limit)
        .unwrap_or_else(|| state.config.default_rate_limit());
    let limit = ratelimit::effective_limit(base, &snapshot.rate_limit_overrides, &subject, now);
    // Overrides name the key presented; the bucket is its budget's, shared with its successor
    // during a rotation's grace period.
    let bucket = ratelimit::Subject {
        key_id: caller.and_then(|c| c.budget_key_id),
        ..subject
    };
    let decision = state.ratelimit.check_subject(&bucket, limit).await;
    *rate = Some(decision);
    if decision.allowed {
        return Ok(());
    }
    Err(ProxyError::RateLimited {
        retry_after: decision.retry_after.unwrap_or_default(),
        limit: decision.limit,
        reset: decision.reset,
    })
}

async fn forward_request(
    state: &ProxyState,
    connection: &Connection,
    admission: Admission,
    mut parts: http::request::Parts,
    body: Body,
    audit: &AuditRecord,
) -> Result<Response, ProxyError> {
    // WebSocket: the client's side of the upgrade, joined to the upstream's after its 101.
    // Only a GET opens one (RFC 6455 §4.1), and only with a key the upstream must answer.
    let upgrade = forward::websocket_upgrade(&parts.headers)
        .filter(|_| parts.method == Method::GET)
        .filter(|_| parts.headers.contains_key(header::SEC_WEBSOCKET_KEY));
    let websocket_key = upgrade
        .as_ref()
        .and_then(|_| parts.headers.get(header::SEC_WEBSOCKET_KEY).cloned());
    let client_upgrade = upgrade
        .as_ref()
        .and_then(|_| parts.extensions.remove::<hyper::upgrade::OnUpgrade>());
    // A tunnel's first check is due at the first expiry among what admitted it.
    let tunnel_expiry = upgrade.as_ref().and_then(|_| next_expiry(&admission));
    let Admission {
        host,
        path,
        query,
        route,
        caller,
        client_addr,
        peer_trusted,
        snapshot,
        ..
    } = admission;
    drop(snapshot);
    let max = state.config.max_body_bytes;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > max) {
        return Err(ProxyError::PayloadTooLarge);
    }
    let identity = Identity {
        principal: caller.as_ref().map(|c| c.principal_id),
        key_id: caller.as_ref().and_then(|c| c.key_id),
        // A grant token's, or the grant that allowed a key's request (see `authorize`).
        grant_id: audit.grant_id,
    };
    let uri = forward::upstream_uri(
        &route.upstream,
        &route.upstream_path(&path),
        query.as_deref(),
    )?;
    let proto = forwarded_proto(state, peer_trusted, &parts.headers);
    // A tunnel checks its request again while it is open: it keeps what of the head that
    // opened it the check reads.
    let tunnel_head = upgrade.as_ref().map(|_| tunnel::recheck_head(&parts));
    let request_id = audit.request_id.as_deref().unwrap_or("-");
    let mut headers = forward::upstream_headers(
        parts.headers,
        &client_addr,
        host.as_deref(),
        proto,
        &identity,
        request_id,
    );
    if let Some(protocol) = &upgrade {
        forward::restore_upgrade_headers(&mut headers, protocol);
    }
    if let Some(credential) = &route.upstream_credential {
        let value = state
            .credentials
            .header_value(&credential.secret_id, state.cache.credential_epoch())
            .await?;
        forward::insert_credential(&mut headers, &credential.header, value);
    }
    let timeout = route
        .timeout
        .unwrap_or_else(|| state.config.upstream_timeout());
    // A client that stops sending its body mid-way must not hold the upstream forever.
    let mut body = IdleTimeout::new(
        http_body_util::Limited::new(body.map_err(ClientBodyError), max as usize),
        timeout,
        Stalled::RequestBody,
    );
    let (body, watch) = match body.progress() {
        Some(progress) => {
            let (body, detach) = Detachable::new(body);
            (Body::new(body), Some((progress, detach)))
        }
        // Nothing to send: nothing to wait for or let go of.
        None => (Body::new(body), None),
    };
    // hyper's client sends a GET or HEAD whose body length it does not know without a body;
    // one the client did send (chunked, or HTTP/2 DATA without a length) goes on chunked.
    if (parts.method == Method::GET || parts.method == Method::HEAD)
        && !body.is_end_stream()
        && body.size_hint().exact().is_none()
    {
        headers.insert(
            header::TRANSFER_ENCODING,
            http::HeaderValue::from_static("chunked"),
        );
    }
    let mut upstream = http::Request::builder()
        .method(parts.method)
        .uri(uri)
        .body(body)
        .map_err(|e| ProxyError::Internal(Box::new(e)))?;
    *upstream.headers_mut() = headers;
    let mut response = forward::send(&state.client, upstream, watch, timeout)
        .await
        .map_err(|error| match error {
            ProxyError::UpstreamUnavailable(source)
                if source_of::<http_body_util::LengthLimitError>(source.as_ref()).is_some() =>
            {
                ProxyError::PayloadTooLarge
            }
            ProxyError::UpstreamUnavailable(source)
                if source_of::<Stalled>(source.as_ref()) == Some(&Stalled::RequestBody) =>
            {
                ProxyError::RequestBodyTimeout
            }
            ProxyError::UpstreamUnavailable(source)
                if source_of::<ClientBodyError>(source.as_ref()).is_some() =>
            {
                ProxyError::BadRequestBody
            }
            other => other,
        })?;
    if response.status() == http::StatusCode::SWITCHING_PROTOCOLS {
        let (Some(protocol), Some(client_upgrade), Some(head)) =
            (upgrade, client_upgrade, tunnel_head)
        else {
            return Err(ProxyError::UpstreamUnavailable(
                "the upstream switched protocols unasked".into(),
            ));
        };
        if !forward::accepts_websocket(websocket_key.as_ref(), response.headers()) {
            return Err(ProxyError::UpstreamUnavailable(
                "the upstream's 101 does not complete the WebSocket handshake".into(),
            ));
        }
        forward::restore_upgrade_headers(response.headers_mut(), &protocol);
        let mut opened = audit.clone();
        opened.status = Some(101);
        state.tunnels.open(
            state,
            tunnel::Opened {
                client: client_upgrade,
                upstream: hyper::upgrade::on(&mut response),
                connection: connection.clone(),
                head,
                audit: opened,
                next_expiry: tunnel_expiry,
            },
        );
    }
    Ok(response)
}

/// `https` when this listener terminates TLS; otherwise what a trusted proxy in front says
/// (`X-Forwarded-Proto`; only a trusted peer may tell us the original scheme), else `http`.
fn forwarded_proto(state: &ProxyState, peer_trusted: bool, headers: &HeaderMap) -> &'static str {
    if state.config.tls_cert_path.is_some() {
        return "https";
    }
    if !peer_trusted {
        return "http";
    }
    match headers
        .get(forward::X_FORWARDED_PROTO)
        .and_then(|v| v.to_str().ok())
    {
        Some(p) if p.trim().eq_ignore_ascii_case("https") => "https",
        _ => "http",
    }
}

/// The single `Host` (HTTP/1.1) or the URI authority (HTTP/2); two `Host` headers are refused.
fn host(request: &http::request::Parts) -> Result<Option<String>, ProxyError> {
    let mut hosts = request.headers.get_all(header::HOST).iter();
    let first = hosts.next();
    if hosts.next().is_some() {
        return Err(ProxyError::AmbiguousRequest("more than one Host header"));
    }
    let host = match first {
        Some(value) => Some(
            value
                .to_str()
                .map_err(|_| ProxyError::AmbiguousRequest("Host header is not ASCII"))?,
        ),
        // HTTP/2's `:authority`, or an absolute-form target without a `Host`.
        None => request.uri.authority().map(http::uri::Authority::as_str),
    };
    if let Some(host) = host {
        normalize::check_host(host)?;
    }
    Ok(host.map(str::to_owned))
}

/// The host name a route is matched on: without the port, and without the trailing dot of a
/// fully qualified name (`admin.example.` is `admin.example`; matched apart, it would fall
/// through to a route without a host and skip the host-bound route's rules).
pub fn route_host(host: &str) -> &str {
    if host.starts_with('[') {
        // [v6]:port
        return host.split_once(']').map_or(host, |(h, _)| &h[1..]);
    }
    let name = host.rsplit_once(':').map_or(host, |(h, _)| h);
    name.strip_suffix('.').unwrap_or(name)
}

/// `ip` as its `Display` writes it. IPv4 addresses (nearly every request) are written digit by
/// digit: going through `core::fmt` cost ≈ 1.3k instructions per request (callgrind).
fn address_text(ip: IpAddr) -> String {
    let IpAddr::V4(v4) = ip else {
        return ip.to_string();
    };
    let mut text = String::with_capacity(15);
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text.push('.');
        }
        if octet >= 100 {
            text.push(char::from(b'0' + octet / 100));
        }
        if octet >= 10 {
            text.push(char::from(b'0' + octet / 10 % 10));
        }
        text.push(char::from(b'0' + octet % 10));
    }
    text
}

/// The client address: the socket peer, unless the peer is a trusted proxy, in which case the
/// right-most `X-Forwarded-For` entry that is not itself a trusted proxy. Entries further left
/// are client-controlled and never believed. IPv4-mapped IPv6 addresses come back as IPv4.
pub fn client_ip(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> Result<IpAddr, ProxyError> {
    resolve_client(peer, headers, trusted).map(|(client, _)| client)
}

/// [`client_ip`], and whether the peer itself is a trusted proxy (one scan of the list).
fn resolve_client(
    peer: IpAddr,
    headers: &HeaderMap,
    trusted: &[IpNet],
) -> Result<(IpAddr, bool), ProxyError> {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    let peer = peer.to_canonical();
    if !is_trusted(&peer) {
        return Ok((peer, false));
    }
    let mut client = peer;
    let entries = headers
        .get_all(forward::X_FORWARDED_FOR)
        .iter()
        .map(|v| {
            v.to_str()
                .map_err(|_| ProxyError::AmbiguousRequest("X-Forwarded-For is not ASCII"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    for entry in entries.iter().flat_map(|v| v.split(',')).rev() {
        let ip = entry
            .trim()
            .parse::<IpAddr>()
            .map_err(|_| ProxyError::AmbiguousRequest("X-Forwarded-For holds an invalid address"))?
            .to_canonical();
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    Ok((client, true))
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
    }

    /// The trusted-proxy list of these tests.
    fn ten_slash_eight() -> Vec<IpNet> {
        vec![IpNet::new(ip("10.0.0.0"), 8).unwrap_or_else(|_| IpNet::from(ip("10.0.0.0")))]
    }

    #[test]
    fn address_text_writes_what_display_writes() {
        // Every octet value in every position, then IPv6 (which takes `Display` itself).
        for octet in 0..=255u8 {
            for v4 in [
                [octet, 0, 0, 0],
                [0, octet, 0, 0],
                [0, 0, octet, 0],
                [1, 2, 3, octet],
                [octet, octet, octet, octet],
            ] {
                let ip = IpAddr::from(v4);
                assert_eq!(address_text(ip), ip.to_string());
            }
        }
        for v6 in ["::1", "2001:db8::7", "::ffff:192.0.2.1"] {
            assert_eq!(address_text(ip(v6)), v6);
        }
    }

    #[test]
    fn x_forwarded_for_is_ignored_from_untrusted_peers() {
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("1.2.3.4"));
        let got = client_ip(ip("203.0.113.9"), &headers, &[]).ok();
        assert_eq!(got, Some(ip("203.0.113.9")));
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let trusted = ten_slash_eight();
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, 198.51.100.7, 10.1.1.1"),
        );
        let got = client_ip(ip("10.0.0.2"), &headers, &trusted).ok();
        assert_eq!(
            got,
            Some(ip("198.51.100.7")),
            "the spoofed left-most entry must not win"
        );
    }

    #[test]
    fn ipv4_mapped_addresses_are_compared_as_ipv4() {
        // A dual-stack listener reports IPv4 peers as `::ffff:a.b.c.d`.
        let trusted = ten_slash_eight();
        let none = HeaderMap::new();
        assert_eq!(
            client_ip(ip("::ffff:203.0.113.9"), &none, &[]).ok(),
            Some(ip("203.0.113.9"))
        );
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-forwarded-for",
            HeaderValue::from_static("::ffff:198.51.100.7, ::ffff:10.1.1.1"),
        );
        assert_eq!(
            client_ip(ip("::ffff:10.0.0.2"), &headers, &trusted).ok(),
            Some(ip("198.51.100.7")),
            "the mapped peer is trusted by its IPv4 network, and mapped hops are skipped the same way"
        );
    }

    #[test]
    fn garbage_in_x_forwarded_for_from_a_trusted_peer_is_refused() {
        let trusted = ten_slash_eight();
        let mut headers = HeaderMap::new();
        headers.insert("x-forwarded-for", HeaderValue::from_static("not-an-ip"));
        assert!(client_ip(ip("10.0.0.2"), &headers, &trusted).is_err());
    }

    #[test]
    fn an_http2_authority_is_held_to_the_host_rules_too() {
        // No `Host` header: the authority (HTTP/2's `:authority`) is the host, and the `http`
        // crate does not insist on a numeric port.
        let head = |uri: &str| {
            let (parts, ()) = http::Request::builder()
                .uri(uri)
                .body(())
                .unwrap_or_default()
                .into_parts();
            parts
        };
        assert_eq!(
            host(&head("https://api.example:8443/x"))
                .ok()
                .flatten()
                .as_deref(),
            Some("api.example:8443")
        );
        assert!(host(&head("https://api.example:evil/x")).is_err());
        assert!(host(&head("https://good.example,evil.example/x")).is_err());
    }

    #[test]
    fn routes_match_hosts_without_port_or_trailing_dot() {
        assert_eq!(route_host("api.example:8081"), "api.example");
        assert_eq!(route_host("api.example"), "api.example");
        assert_eq!(route_host("[::1]:8081"), "::1");
        assert_eq!(route_host("admin.example."), "admin.example");
        assert_eq!(route_host("admin.example.:443"), "admin.example");
    }
}
