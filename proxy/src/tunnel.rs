//! WebSocket tunnels: once the upstream completed the handshake, bytes are copied both ways
//! until either side closes, the tunnel idles too long, the request that opened it would no
//! longer be admitted, or the proxy stops.
//!
//! The tunnel itself is opaque, so the request is checked again (steps 1–5 of the pipeline:
//! route, IP rules, credential, bindings): revoking the key, the binding or the grant,
//! blocking the address or the credential expiring closes the tunnel as it would refuse a
//! new request. A tunnel does not poll for that. It sleeps until the policy cache or the
//! OIDC key set reports a change, something the last check read expires (key, JWT,
//! binding, grant, IP rule), the policy would go stale, the idle limit is reached, or
//! about [`FULL_RECHECK_EVERY`] has passed, and checks at most once per [`RECHECK_EVERY`]. So
//! thousands of quiet tunnels cost almost nothing until the policy changes. Each tunnel
//! ends with an audit event of its own, with the same request id as the request that
//! opened it.

use std::{
    io,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use chrono::SubsecRound as _;
use entity::audit_event::AuditDecision;
use http::header;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use serde_json::json;
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    time::Instant,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use crate::{
    audit::AuditRecord,
    error::ProxyError,
    forward::X_API_KEY,
    pipeline::{self, Connection},
    state::ProxyState,
};

/// The shortest time between two checks of one tunnel's request, however often the policy
/// changes: bounds what a burst of changes costs with many tunnels open. Half the
/// revocation target (1 s), so a revocation still closes the tunnel within about a second.
pub const RECHECK_EVERY: Duration = Duration::from_millis(500);

/// How long a tunnel goes without a full re-check when nothing it depends on moved: a
/// backstop, should a change ever reach the cache without moving its change counter. Each
/// tunnel has its own interval within ±20 % of this, so that tunnels woken together (by a
/// policy change) do not stay in step and check all at once every time.
pub const FULL_RECHECK_EVERY: Duration = Duration::from_secs(30);

/// After a policy change, how long at most a tunnel waits (its own share of it) before
/// checking: spreads the database loads of thousands of tunnels woken together.
const CHANGE_SPREAD: Duration = Duration::from_millis(100);

/// The longest one re-check may take before the tunnel is closed for want of it.
pub const RECHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The open tunnels of one proxy.
#[derive(Default)]
pub struct Tunnels {
    tracker: TaskTracker,
    closing: CancellationToken,
}

/// Whatever a listener keeps alive while a client connection is open (a permit of its
/// connection cap). A tunnel holds a clone: the connection's socket lives on in it.
#[derive(Clone)]
pub struct ConnectionSlot {
    _held: Arc<dyn Send + Sync>,
}

impl ConnectionSlot {
    /// A slot holding `held` until the connection and any tunnel it became are closed.
    pub fn new(held: impl Send + Sync + 'static) -> Self {
        Self {
            _held: Arc::new(held),
        }
    }
}

/// A tunnel the upstream agreed to, before either side's connection is handed over.
pub(crate) struct Opened {
    /// The client's side, available once the 101 has been sent.
    pub client: OnUpgrade,
    /// The upstream's side.
    pub upstream: OnUpgrade,
    /// The client connection (its peer, and its slot, held until the tunnel closes).
    pub connection: Connection,
    /// What the re-check reads of the head that opened the tunnel ([`recheck_head`]).
    pub head: http::request::Parts,
    /// The opening request's audit event: the closing event starts as a copy.
    pub audit: AuditRecord,
    /// The first expiry among what admitted the opening request (see
    /// [`pipeline::readmit`]): the first check is due then if that comes before
    /// [`RECHECK_EVERY`].
    pub next_expiry: Option<chrono::DateTime<chrono::Utc>>,
}

/// What the re-check needs of the head that opened a tunnel: method, target, and the
/// headers that steps 1–5 read (`Host`, the credential, `X-Forwarded-For`). The rest (cookies,
/// anything else the client sent) is not kept for the tunnel's lifetime.
pub(crate) fn recheck_head(parts: &http::request::Parts) -> http::request::Parts {
    let (mut head, ()) = http::Request::new(()).into_parts();
    head.method = parts.method.clone();
    head.uri = parts.uri.clone();
    head.version = parts.version;
    for name in [
        header::HOST,
        header::AUTHORIZATION,
        X_API_KEY,
        crate::forward::X_FORWARDED_FOR,
    ] {
        for value in parts.headers.get_all(&name) {
            let mut value = value.clone();
            value.set_sensitive(name != header::HOST);
            head.headers.append(name.clone(), value);
        }
    }
    head
}

/// Why a tunnel ended: the `tunnel_closed: …` audit reason.
enum End {
    Closed,
    Failed,
    Idle,
    Shutdown,
    RecheckTimeout,
    /// The request would now be refused; the refusal's audit reason.
    Refused(String),
}

impl Tunnels {
    /// Copies between both sides of `tunnel` in a task of its own, tracked for
    /// [`Self::close_all`].
    pub(crate) fn open(&self, state: &ProxyState, tunnel: Opened) {
        let state = state.clone();
        let closing = self.closing.clone();
        self.tracker.spawn(async move {
            metrics::gauge!("portcullis_proxy_tunnels_open").increment(1.0);
            run(state, tunnel, closing).await;
            metrics::gauge!("portcullis_proxy_tunnels_open").decrement(1.0);
        });
    }

    /// Closes every tunnel and waits until each has queued its audit event. Tunnels have no
    /// natural end to drain towards: a stopping proxy closes them (clients reconnect to
    /// another instance) rather than waiting out the drain timeout for each.
    pub async fn close_all(&self) {
        self.tracker.close();
        self.closing.cancel();
        self.tracker.wait().await;
    }
}

async fn run(state: ProxyState, tunnel: Opened, closing: CancellationToken) {
    let opened = Instant::now();
    let Opened {
        client,
        upstream,
        connection,
        head,
        mut audit,
        next_expiry,
    } = tunnel;
    let route_id = audit.route_id;
    let traffic = Traffic::default();
    let end = match tokio::try_join!(client, upstream) {
        Ok((client, upstream)) => {
            let mut client = Counted {
                io: TokioIo::new(client),
                read: &traffic.from_client,
                last: &traffic.last_ms,
                opened,
            };
            let mut upstream = Counted {
                io: TokioIo::new(upstream),
                read: &traffic.from_upstream,
                last: &traffic.last_ms,
                opened,
            };
            let idle_limit = state.config.tunnel_idle_timeout();
            let copy = tokio::io::copy_bidirectional(&mut client, &mut upstream);
            // Polled alongside the copy, so a slow check (a cache miss that goes to the
            // database) never holds up the traffic.
            let watch = async {
                let mut policy = state.cache.subscribe();
                let mut keys = state.oidc.as_ref().map(|o| o.subscribe_downloads());
                let mut last_check: Option<Check> = None;
                // Where this tunnel sits among the others, for spreading their checks.
                let place = place_of(connection.peer);
                let backstop_every = FULL_RECHECK_EVERY.mul_f64(0.8 + 0.4 * place);
                let first = opened + RECHECK_EVERY;
                let mut wake_at = instant_of(next_expiry).map_or(first, |at| at.min(first));
                loop {
                    let by_change = tokio::select! {
                        () = tokio::time::sleep_until(wake_at) => false,
                        () = changed(Some(&mut policy)) => true,
                        () = changed(keys.as_mut()) => true,
                    };
                    // However often the policy changes, one check per RECHECK_EVERY at most.
                    // A deadline of the tunnel's own (an expiry, staleness) is not held back.
                    if by_change {
                        let spread = CHANGE_SPREAD.mul_f64(place);
                        let not_before = last_check.as_ref().map(|c| c.at + RECHECK_EVERY);
                        let now = Instant::now();
                        tokio::time::sleep_until(not_before.unwrap_or(now).max(now) + spread).await;
                    }
                    let last = Duration::from_millis(traffic.last_ms.load(Ordering::Relaxed));
                    // `None`: a limit too large to reach (configured as "never").
                    let idle_until = opened.checked_add(last.saturating_add(idle_limit));
                    if idle_until.is_some_and(|at| Instant::now() >= at) {
                        return End::Idle;
                    }
                    // Policy too old to trust closes the tunnel as it refuses new requests.
                    if let Err(stale) = state.cache.check_fresh() {
                        return End::Refused(ProxyError::from(stale).audit_reason());
                    }
                    // Read (and marked seen) before the check: a change that lands during it
                    // wakes the tunnel again.
                    let versions = Versions {
                        policy: *policy.borrow_and_update(),
                        oidc_keys: keys.as_mut().map_or(0, |k| *k.borrow_and_update()),
                    };
                    let started = Instant::now();
                    if !last_check
                        .as_ref()
                        .is_some_and(|c| c.still_holds(versions, started))
                    {
                        let check = pipeline::readmit(&state, connection.peer, &head, route_id);
                        match tokio::time::timeout(RECHECK_TIMEOUT, check).await {
                            Ok(Ok(admitted)) => {
                                last_check = Some(Check {
                                    versions,
                                    at: started,
                                    recheck_by: started + backstop_every,
                                    next_expiry: admitted.next_expiry,
                                });
                            }
                            Ok(Err(refused)) => return End::Refused(refused.audit_reason()),
                            // A check that cannot finish (a database that hangs) cannot vouch
                            // for the tunnel either: fail closed.
                            Err(_) => return End::RecheckTimeout,
                        }
                    }
                    // Nothing to do until the policy changes or one of these comes.
                    let Some(check) = &last_check else { continue };
                    wake_at = [
                        idle_until,
                        state.cache.stale_at().map(Instant::from_std),
                        instant_of(check.next_expiry),
                    ]
                    .into_iter()
                    .flatten()
                    .fold(check.recheck_by, Instant::min);
                }
            };
            tokio::select! {
                copied = copy => match copied {
                    Ok(_) => End::Closed,
                    Err(error) => {
                        tracing::debug!(%error, "tunnel closed with an error");
                        End::Failed
                    }
                },
                () = closing.cancelled() => End::Shutdown,
                end = watch => end,
            }
        }
        Err(error) => {
            tracing::warn!(%error, "upgrade failed");
            End::Failed
        }
    };
    let why = match &end {
        End::Closed => "closed",
        End::Failed => "failed",
        End::Idle => "idle_timeout",
        End::Shutdown => "proxy_stopping",
        End::RecheckTimeout => "recheck_timeout",
        End::Refused(reason) => reason.as_str(),
    };
    audit.occurred_at = chrono::Utc::now().trunc_subsecs(6);
    audit.reason = format!("tunnel_closed: {why}");
    audit.permission_id = None;
    if matches!(end, End::Refused(_) | End::RecheckTimeout) {
        audit.decision = Some(AuditDecision::Deny);
    }
    audit.latency_us = Some(opened.elapsed().as_micros() as i64);
    audit.detail = json!({
        "tunnel_bytes_from_client": traffic.from_client.load(Ordering::Relaxed),
        "tunnel_bytes_from_upstream": traffic.from_upstream.load(Ordering::Relaxed),
    });
    // Wait for room in the audit queue while the writer is behind, but not past a stopping
    // proxy's patience: its shutdown waits for every tunnel, and the writer is told to stop
    // only after that, so a tunnel waiting on a failing database would hold the process.
    let stopping = async {
        closing.cancelled().await;
        tokio::time::sleep(CLOSING_EVENT_PATIENCE).await;
    };
    let permit = tokio::select! {
        permit = state.audit.reserve() => permit,
        () = stopping => None,
    };
    match permit {
        Some(permit) => permit.send(audit),
        None => tracing::error!(
            ?audit,
            "tunnel's closing audit event not queued; logged instead"
        ),
    }
}

/// How long a tunnel closed by a stopping proxy waits for room for its closing audit event.
const CLOSING_EVENT_PATIENCE: Duration = Duration::from_secs(5);

/// A number in [0, 1) that differs between the tunnels of one proxy (from the client's
/// port, Fibonacci-hashed): enough to keep their checks apart, with nothing to draw or seed.
fn place_of(peer: std::net::SocketAddr) -> f64 {
    let hashed = u64::from(peer.port()).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
    hashed as f64 / (1u64 << 24) as f64
}

/// A wall-clock moment on the runtime's clock (now, if it has passed; `None` if it is too
/// far ahead to represent, or not given).
fn instant_of(at: Option<chrono::DateTime<chrono::Utc>>) -> Option<Instant> {
    let left = at? - chrono::Utc::now();
    Instant::now().checked_add(left.to_std().unwrap_or(Duration::ZERO))
}

/// Resolves when `receiver`'s value moves; never, without one (or once its sender is gone).
async fn changed(receiver: Option<&mut tokio::sync::watch::Receiver<u64>>) {
    if let Some(receiver) = receiver
        && receiver.changed().await.is_ok()
    {
        return;
    }
    std::future::pending().await
}

/// The change counters of what a re-check reads.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Versions {
    policy: u64,
    oidc_keys: u64,
}

/// A re-check that admitted the tunnel's request.
struct Check {
    /// The counters read just before it.
    versions: Versions,
    /// When it started.
    at: Instant,
    /// When the backstop wants the next full check.
    recheck_by: Instant,
    /// The first expiry after it among what it read.
    next_expiry: Option<chrono::DateTime<chrono::Utc>>,
}

impl Check {
    /// Whether a check now would read the same policy at a time when none of it has expired
    /// since, and the backstop interval has not passed.
    fn still_holds(&self, versions: Versions, now: Instant) -> bool {
        self.versions == versions
            && now < self.recheck_by
            && self.next_expiry.is_none_or(|at| chrono::Utc::now() < at)
    }
}

/// What crossed a tunnel, and when it last did.
#[derive(Default)]
struct Traffic {
    from_client: AtomicU64,
    from_upstream: AtomicU64,
    /// Milliseconds after the tunnel opened when either side last sent something.
    last_ms: AtomicU64,
}

/// One side of a tunnel, counting what is read from it.
struct Counted<'a, T> {
    io: T,
    read: &'a AtomicU64,
    last: &'a AtomicU64,
    opened: Instant,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<'_, T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let read = buf.filled().len() - before;
        if read > 0 {
            self.read.fetch_add(read as u64, Ordering::Relaxed);
            let at = self.opened.elapsed().as_millis() as u64;
            self.last.store(at, Ordering::Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<'_, T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEEN: Versions = Versions {
        policy: 7,
        oidc_keys: 2,
    };

    fn check(at: Instant, next_expiry: Option<chrono::DateTime<chrono::Utc>>) -> Check {
        Check {
            versions: SEEN,
            at,
            recheck_by: at + FULL_RECHECK_EVERY,
            next_expiry,
        }
    }

    #[test]
    fn a_check_stands_until_policy_moves_something_expires_or_the_backstop_is_due() {
        let at = Instant::now();
        let soon = at + Duration::from_secs(1);
        let later = chrono::Utc::now() + chrono::Duration::hours(1);
        assert!(check(at, None).still_holds(SEEN, soon));
        assert!(check(at, Some(later)).still_holds(SEEN, soon));
        for moved in [
            Versions { policy: 8, ..SEEN },
            Versions {
                oidc_keys: 3,
                ..SEEN
            },
        ] {
            assert!(!check(at, None).still_holds(moved, soon));
        }
        let passed = chrono::Utc::now() - chrono::Duration::milliseconds(1);
        assert!(!check(at, Some(passed)).still_holds(SEEN, soon));
        assert!(!check(at, None).still_holds(SEEN, at + FULL_RECHECK_EVERY));
    }

    #[test]
    fn expiries_in_the_past_are_due_now_and_far_ones_do_not_overflow() {
        let before = Instant::now();
        let passed = instant_of(Some(chrono::Utc::now() - chrono::Duration::hours(1)));
        assert!(passed.is_some_and(|at| at >= before && at <= Instant::now()));
        // A key that "never" expires, written as the year 262143: no panic either way.
        let _ = instant_of(Some(chrono::DateTime::<chrono::Utc>::MAX_UTC));
        assert_eq!(instant_of(None), None);
    }

    #[test]
    fn neighbouring_client_ports_are_placed_apart_within_zero_to_one() {
        let places: Vec<f64> = (40_000..40_100)
            .map(|port| place_of(std::net::SocketAddr::from(([127, 0, 0, 1], port))))
            .collect();
        assert!(places.iter().all(|p| (0.0..1.0).contains(p)));
        // Spread over the whole range: every tenth of it holds some of 100 consecutive ports.
        for tenth in 0..10 {
            let (low, high) = (f64::from(tenth) / 10.0, f64::from(tenth + 1) / 10.0);
            assert!(places.iter().any(|p| (low..high).contains(p)), "{tenth}");
        }
    }
}
