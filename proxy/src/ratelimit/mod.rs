//! Rate limiting, step 6 of the request pipeline (DESIGN.md "Request pipeline").
//!
//! # Algorithm
//! GCRA, the generic cell rate algorithm (ITU-T I.371; the same as a token bucket, with one
//! number of state). A [`Limit`] of `per_minute` and `burst` gives an emission interval
//! `T = 60 s / per_minute` and a tolerance `τ = T × burst`. Each bucket stores only its
//! theoretical arrival time (TAT). A request at `now` is admitted when
//! `max(TAT, now) + T − τ ≤ now`, and then sets `TAT = max(TAT, now) + T`; a refused request
//! changes nothing. So `burst` requests pass at once, then one every `T`.
//!
//! # What the headers mean
//! Following draft-ietf-httpapi-ratelimit-headers, a [`RateDecision`] carries:
//! * `limit` (`RateLimit-Limit`): the bucket size, i.e. `burst`;
//! * `remaining` (`RateLimit-Remaining`): how many more requests would be admitted right now;
//! * `reset` (`RateLimit-Reset`): the time until the bucket is FULL again (the whole burst
//!   available), not the time until the next request is allowed;
//! * `retry_after` (`Retry-After`, refusals only): the time until the next request is allowed.
//!
//! # Buckets
//! One bucket per caller and route ([`bucket_key`]): per API key, else per principal, else
//! (anonymous routes) per client IP. The limit is the key's own, else the route's, else the
//! configured default, tightened by any active [`RateLimitOverride`] ([`effective_limit`]).
//!
//! # In process ([`LocalLimiter`])
//! Hand-written rather than `governor`: governor's keyed limiter has one quota per limiter,
//! while ours varies per key and route at run time (and changes when an override lands). The
//! state is one `AtomicU64` TAT per bucket in 64 shards of `RwLock<HashMap>`; a check on an
//! existing bucket is a clock read, a cheap seeded spread to pick the shard, a shard read lock,
//! the map's SipHash lookup and a compare-and-swap. The pipeline keys buckets by a 33-byte
//! binary [`LocalKey`] rather than the 76-byte text [`bucket_key`] (which Redis still uses):
//! SipHash over the text alone cost ≈ 38 ns. See BENCHMARKS.md for the measured cost
//! (`tests::local_check_cost`).
//!
//! Memory stays bounded without a background task: a bucket whose TAT has passed is full,
//! which is exactly the state of an absent bucket, so idle buckets are dropped losslessly
//! whenever a shard doubles in size (and by [`LocalLimiter::evict_idle`]).
//!
//! # Shared through Redis ([`RedisLimiter`])
//! With `REDIS_URL` set, every check runs one Lua script (EVALSHA, loaded on `NOSCRIPT`) that
//! implements the same GCRA atomically on a key with a TTL, using Redis's `TIME` so proxies
//! with skewed clocks agree. Every call is bounded by `redis_timeout_ms`. When Redis errors or
//! times out the request is decided by the in-process limiter instead (never admitted
//! unchecked, never failed because of Redis), `portcullis_ratelimit_redis_fallback_total` is
//! incremented, and a warning is logged at most every 10 s. After a failure, requests stay
//! local while a background probe runs the script on Redis every 500 ms, so a dead Redis costs one timeout,
//! not one per request. During a fallback each instance enforces the limit on its own, so the
//! fleet admits up to `instances × limit`.

mod gcra;
mod local;
mod shared;
#[cfg(test)]
mod tests;

use std::{
    net::IpAddr,
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderName, HeaderValue};
use uuid::Uuid;

use crate::detect::client_subnet;

pub use self::{
    local::LocalLimiter,
    shared::{RedisLimiter, SharedLimitError},
};

/// How often the fallback warning may be logged.
const WARN_EVERY: Duration = Duration::from_secs(10);
/// How often a failed Redis is probed before requests go back to it.
const PROBE_EVERY: Duration = Duration::from_millis(500);

/// Failed probes in a row after which the probe reconnects (see [`RedisLimiter::reconnect`]).
const RECONNECT_AFTER: u32 = 4;

/// A rate: `per_minute` requests per minute on average, at most `burst` at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Limit {
    /// Sustained rate, requests per minute (≥ 1).
    pub per_minute: u32,
    /// Requests admitted at once from a full bucket (≥ 1).
    pub burst: u32,
}

/// The outcome of one check, with what the `RateLimit-*` headers report (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateDecision {
    /// Whether the request is admitted.
    pub allowed: bool,
    /// The bucket size (`burst`).
    pub limit: u32,
    /// Requests that would still be admitted now.
    pub remaining: u32,
    /// Time until the bucket is full again.
    pub reset: Duration,
    /// For a refusal: time until the next request would be admitted.
    pub retry_after: Option<Duration>,
}

/// A temporary limit set by remediation for a principal, a key and/or a route: it applies to a
/// request when every id it names matches the request (one naming none applies to all).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitOverride {
    /// Row id.
    pub id: Uuid,
    /// Principal it applies to, if restricted.
    pub principal_id: Option<Uuid>,
    /// API key it applies to, if restricted.
    pub api_key_id: Option<Uuid>,
    /// Route it applies to, if restricted.
    pub route_id: Option<Uuid>,
    /// The limit.
    pub limit: Limit,
    /// The override lapses at this instant.
    pub expires_at: DateTime<Utc>,
}

/// Who a request is counted against, most specific first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subject {
    /// The route.
    pub route_id: Uuid,
    /// The authenticated principal, if any.
    pub principal_id: Option<Uuid>,
    /// The API key, if authenticated by one.
    pub key_id: Option<Uuid>,
    /// The client address (anonymous requests are counted per address).
    pub client_ip: IpAddr,
}

/// Checks requests against their buckets: in process, or shared through Redis with an
/// in-process fallback.
pub struct RateLimiter {
    local: LocalLimiter,
    redis: Option<Arc<RedisState>>,
}

struct RedisState {
    limiter: RedisLimiter,
    /// Set after a failure until a probe succeeds; requests stay local meanwhile.
    down: AtomicBool,
    /// Requests decided locally because Redis failed.
    fallbacks: AtomicU64,
    /// Fallbacks already reported in a log line.
    reported: AtomicU64,
    /// Milliseconds after `started` of the last warning (`u64::MAX`: never).
    last_warn_ms: AtomicU64,
    started: Instant,
}

// === impl Limit ===

impl Limit {
    /// A limit; zeros are raised to 1.
    pub fn new(per_minute: u32, burst: u32) -> Self {
        Self {
            per_minute: per_minute.max(1),
            burst: burst.max(1),
        }
    }

    /// From the nullable database columns: no limit unless `per_minute` > 0; the burst
    /// defaults to `per_minute`.
    pub fn from_columns(per_minute: Option<i32>, burst: Option<i32>) -> Option<Self> {
        let per_minute = u32::try_from(per_minute?).ok().filter(|p| *p > 0)?;
        let burst = burst
            .and_then(|b| u32::try_from(b).ok())
            .unwrap_or(per_minute);
        Some(Self::new(per_minute, burst))
    }

    /// The component-wise minimum: never looser than either.
    pub fn tightest(self, other: Self) -> Self {
        Self::new(
            self.per_minute.min(other.per_minute),
            self.burst.min(other.burst),
        )
    }

    /// The emission interval `T` in nanoseconds (≥ 1).
    pub(crate) fn interval_ns(&self) -> u64 {
        (60_000_000_000 / u64::from(self.per_minute.max(1))).max(1)
    }
}

impl From<(u32, u32)> for Limit {
    /// `(per_minute, burst)`, as `KeyEntry::rate_limit` stores it.
    fn from((per_minute, burst): (u32, u32)) -> Self {
        Self::new(per_minute, burst)
    }
}

// === impl RateDecision ===

impl RateDecision {
    /// Adds `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`.
    pub fn insert_headers(&self, headers: &mut HeaderMap) {
        insert_headers(headers, self.limit, self.remaining, self.reset);
    }
}

/// Adds `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset` (whole seconds, rounded
/// up, so a client that waits that long finds the bucket full).
pub fn insert_headers(headers: &mut HeaderMap, limit: u32, remaining: u32, reset: Duration) {
    let reset = reset.as_secs() + u64::from(reset.subsec_nanos() > 0);
    // Constant names: `from_static` outside a const context parses the name on every call.
    const LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
    const REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
    const RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
    for (name, value) in [
        (LIMIT, u64::from(limit)),
        (REMAINING, u64::from(remaining)),
        (RESET, reset),
    ] {
        headers.insert(name, HeaderValue::from(value));
    }
}

// === impl Subject ===

impl Subject {
    /// The bucket: `{route}:k:{key}`, `{route}:p:{principal}` or `{route}:ip:{address}`.
    pub fn bucket_key(&self) -> String {
        bucket_key(
            self.route_id,
            self.principal_id,
            self.key_id,
            self.client_ip,
        )
    }

    /// The in-process bucket; see [`LocalKey`].
    pub fn local_key(&self) -> LocalKey {
        let (tag, id): (u8, u128) = match (self.key_id, self.principal_id) {
            (Some(key), _) => (b'k', key.as_u128()),
            (None, Some(principal)) => (b'p', principal.as_u128()),
            // Per client subnet, as `bucket_key` counts it.
            (None, None) => match client_subnet(self.client_ip).addr() {
                IpAddr::V4(v4) => (b'4', u128::from(u32::from(v4))),
                IpAddr::V6(block) => (b'6', u128::from(block)),
            },
        };
        let mut key = [0_u8; 33];
        key[..16].copy_from_slice(self.route_id.as_bytes());
        key[16] = tag;
        key[17..].copy_from_slice(&id.to_be_bytes());
        LocalKey(key)
    }
}

/// The bucket of a [`Subject`] in the in-process limiter: the same identity as
/// [`bucket_key`] in 33 bytes on the stack (route id, a tag, then the key, principal or
/// address), so a check neither allocates nor hashes a 76-byte string.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LocalKey([u8; 33]);

impl AsRef<[u8]> for LocalKey {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// The bucket a request is counted in: per API key (or principal without a key, or client IP
/// without either) and route. Anonymous IPv6 clients are counted per /64
/// ([`client_subnet`], the same subnet the detectors count and remediation blocks), so
/// rotating addresses within it does not escape the limit.
pub fn bucket_key(
    route_id: Uuid,
    principal_id: Option<Uuid>,
    key_id: Option<Uuid>,
    client_ip: IpAddr,
) -> String {
    match (key_id, principal_id) {
        (Some(key), _) => format!("{route_id}:k:{key}"),
        (None, Some(principal)) => format!("{route_id}:p:{principal}"),
        (None, None) => match client_ip {
            IpAddr::V4(v4) => format!("{route_id}:ip:{v4}"),
            IpAddr::V6(_) => format!("{route_id}:ip:{}", client_subnet(client_ip)),
        },
    }
}

/// `base` tightened by every override that is active at `now` and matches `subject`: the
/// result is never looser than `base` or any of them, so an override can only tighten.
pub fn effective_limit(
    base: Limit,
    overrides: &[RateLimitOverride],
    subject: &Subject,
    now: DateTime<Utc>,
) -> Limit {
    overrides
        .iter()
        .filter(|o| o.expires_at > now && o.applies_to(subject))
        .fold(base, |limit, o| limit.tightest(o.limit))
}

// === impl RateLimitOverride ===

impl RateLimitOverride {
    /// From a row; `None` (and an error log) for a non-positive rate.
    pub fn from_row(row: &entity::rate_limit_override::Model) -> Option<Self> {
        let Some(limit) = Limit::from_columns(Some(row.per_minute), Some(row.burst.max(1))) else {
            tracing::error!(override_id = %row.id, "rate limit override with a non-positive rate; ignored");
            return None;
        };
        Some(Self {
            id: row.id,
            principal_id: row.principal_id,
            api_key_id: row.api_key_id,
            route_id: row.route_id,
            limit,
            expires_at: row.expires_at,
        })
    }

    /// Whether every id the override names matches the request.
    pub fn applies_to(&self, subject: &Subject) -> bool {
        let matches = |want: Option<Uuid>, have: Option<Uuid>| want.is_none_or(|w| have == Some(w));
        matches(self.route_id, Some(subject.route_id))
            && matches(self.principal_id, subject.principal_id)
            && matches(self.api_key_id, subject.key_id)
    }
}

// === impl RateLimiter ===

impl RateLimiter {
    /// In-process limits only.
    pub fn local() -> Self {
        Self {
            local: LocalLimiter::new(),
            redis: None,
        }
    }

    /// Limits shared through Redis at `url` (TLS for `rediss://`, trusting only `ca_pem` when
    /// given; see [`RedisLimiter::new`]), each call bounded by `timeout`. Connects lazily;
    /// fails only for bad settings. Must be called inside a Tokio runtime.
    pub fn with_redis(
        url: &str,
        ca_pem: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Self, SharedLimitError> {
        Ok(Self {
            local: LocalLimiter::new(),
            redis: Some(Arc::new(RedisState {
                limiter: RedisLimiter::new(url, ca_pem, timeout)?,
                down: AtomicBool::new(false),
                fallbacks: AtomicU64::new(0),
                reported: AtomicU64::new(0),
                last_warn_ms: AtomicU64::new(u64::MAX),
                started: Instant::now(),
            })),
        })
    }

    /// Admits or refuses one request in bucket `key` under `limit`. Never fails: when Redis
    /// cannot answer, the in-process limiter decides.
    pub async fn check(&self, key: &str, limit: Limit) -> RateDecision {
        let Some(redis) = &self.redis else {
            return self.local.check(key, limit);
        };
        let mut failure = None;
        if !redis.down.load(Ordering::Acquire) {
            match redis.limiter.check(key, limit).await {
                Ok(decision) => return decision,
                Err(error) => {
                    if !redis.down.swap(true, Ordering::AcqRel) {
                        tokio::spawn(probe(Arc::downgrade(redis)));
                    }
                    failure = Some(error);
                }
            }
        }
        redis.fallbacks.fetch_add(1, Ordering::Relaxed);
        // After counting, so the warning's count includes this request.
        if let Some(error) = failure {
            redis.warn(&error);
        }
        metrics::counter!("portcullis_ratelimit_redis_fallback_total").increment(1);
        self.local.check(key, limit)
    }

    /// [`Self::check`] for `subject`'s bucket. Without Redis the bucket is its compact
    /// [`LocalKey`]; with Redis it is the text [`bucket_key`] (also for the local fallback, so
    /// both use one key space).
    pub async fn check_subject(&self, subject: &Subject, limit: Limit) -> RateDecision {
        match &self.redis {
            None => self.local.check(subject.local_key(), limit),
            Some(_) => self.check(&subject.bucket_key(), limit).await,
        }
    }

    /// Whether budgets are shared through Redis.
    pub fn is_shared(&self) -> bool {
        self.redis.is_some()
    }

    /// Requests decided in process because Redis failed, since start.
    pub fn fallbacks(&self) -> u64 {
        self.redis
            .as_ref()
            .map_or(0, |r| r.fallbacks.load(Ordering::Relaxed))
    }

    /// The in-process limiter (the only one without Redis; the fallback with it).
    pub fn local_limiter(&self) -> &LocalLimiter {
        &self.local
    }
}

impl RedisState {
    /// Logs the failure unless a warning went out less than [`WARN_EVERY`] ago.
    fn warn(&self, error: &SharedLimitError) {
        let now = self.started.elapsed().as_millis() as u64;
        let last = self.last_warn_ms.load(Ordering::Relaxed);
        let due = last == u64::MAX || now.saturating_sub(last) >= WARN_EVERY.as_millis() as u64;
        if due
            && self
                .last_warn_ms
                .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
        {
            let total = self.fallbacks.load(Ordering::Relaxed);
            let since = total - self.reported.swap(total, Ordering::Relaxed);
            tracing::warn!(
                error = %error,
                source = ?std::error::Error::source(error),
                fallbacks_since_last_warning = since,
                "Redis rate limiting unavailable; limiting in process (per instance) until it answers"
            );
        }
    }
}

/// Probes Redis until it runs the script again, then sends requests back to it; every
/// [`RECONNECT_AFTER`] failed probes in a row, starts over on a new connection. Ends when the
/// limiter is gone.
async fn probe(redis: Weak<RedisState>) {
    let mut failed = 0u32;
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let Some(state) = redis.upgrade() else {
            return;
        };
        if state.limiter.probe().await {
            state.down.store(false, Ordering::Release);
            tracing::info!("Redis rate limiting available again");
            return;
        }
        failed += 1;
        if failed.is_multiple_of(RECONNECT_AFTER) {
            match state.limiter.reconnect() {
                Ok(()) => tracing::info!("Redis still refuses the rate-limit script; reconnecting"),
                Err(error) => tracing::warn!(%error, "cannot reconnect to Redis"),
            }
        }
    }
}
