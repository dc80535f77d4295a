//! The policy cache: what the proxy enforces, without a database round trip per request.
//!
//! * An immutable [`Snapshot`] (routes, roles with their permissions, global IP rules) swapped
//!   atomically when any of those change.
//! * Lazily loaded entries per API key (by lookup prefix) and per principal (groups, bindings,
//!   grants), evicted exactly when the change feed says they changed.
//!
//! The change feed (`policy_change`) is polled every `policy_poll_interval_ms` (≤ 1 s, so a
//! revocation applies on every instance within a second). Ids come from a sequence, and on
//! PostgreSQL concurrent transactions can commit out of id order; ids skipped by a poll are
//! therefore re-checked for a while (see `Gaps`) instead of being lost.
//!
//! If the database is unreachable the cache keeps serving what it holds for
//! `policy_max_staleness_secs`, then [`PolicyCache::check_fresh`] fails closed.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::{
        Arc, RwLock,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use chrono::{DateTime, Utc};
use entity::{
    api_key, group_membership, incident_grant, ip_rule, permission, policy_change, principal,
    rate_limit_override, role, role_binding, route,
};
use ipnet::IpNet;
use sea_orm::{
    ColumnTrait, Condition, DatabaseConnection, DbErr, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect,
};
use uuid::Uuid;

use crate::{
    keys::TokenHash,
    policy::{
        Binding, BindingId, Grant, GrantId, MethodSet, PathGlob, Permission, PrincipalId, Role,
        RoleId, Roles,
    },
    ratelimit::{Limit, LocalLimiter, RateDecision, RateLimitOverride},
    routes::{AuthMethod, IpRule, Route, RouteTable, UpstreamCredential, canonical_net},
};

/// Entity kinds written to the change feed. THE API AND THE PROXY MUST AGREE ON THESE.
pub mod kind {
    /// An API key (entity id = key id).
    pub const API_KEY: &str = "api_key";
    /// A principal or its group memberships (entity id = principal id).
    pub const PRINCIPAL: &str = "principal";
    /// A role binding (entity id = id of the principal it binds).
    pub const ROLE_BINDING: &str = "role_binding";
    /// An incident grant (entity id = id of the grantee principal).
    pub const INCIDENT_GRANT: &str = "incident_grant";
    /// A role or its permissions (entity id = role id).
    pub const ROLE: &str = "role";
    /// A route (entity id = route id).
    pub const ROUTE: &str = "route";
    /// An IP rule (entity id = rule id).
    pub const IP_RULE: &str = "ip_rule";
    /// A rate-limit override (entity id = override id).
    pub const RATE_LIMIT_OVERRIDE: &str = "rate_limit_override";
    /// A secret holding an upstream credential was rotated (entity id = secret id).
    pub const UPSTREAM_CREDENTIAL: &str = "upstream_credential";
}

/// PostgreSQL NOTIFY channel; MUST MATCH `migration::POLICY_CHANGE_CHANNEL` (trigger in
/// migration m20261122_000007).
pub const POLICY_CHANGE_CHANNEL: &str = "portcullis_policy_change";

/// Everything that changes rarely and is needed by every request.
#[derive(Debug, Default)]
pub struct Snapshot {
    /// Routes, most specific first.
    pub routes: RouteTable,
    /// Roles and their permissions.
    pub roles: Roles,
    /// IP rules that apply to every route.
    pub global_ip_rules: Vec<IpRule>,
    /// Rate-limit overrides not yet expired when loaded (check `expires_at` on use).
    pub rate_limit_overrides: Vec<RateLimitOverride>,
}

/// An API key as enforced.
#[derive(Debug, Clone)]
pub struct KeyEntry {
    /// Key id.
    pub id: Uuid,
    /// Owner.
    pub principal_id: Uuid,
    /// HMAC of the secret.
    pub hash: TokenHash,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// Set when revoked.
    pub revoked: bool,
    /// Set while suspended.
    pub suspended: bool,
    /// Whether each use must be counted against the `remaining_uses` of `budget_id`.
    pub has_quota: bool,
    /// Per-key rate limit (requests per minute, burst).
    pub rate_limit: Option<(u32, u32)>,
    /// The key whose rate-limit bucket and quota this key spends: itself, or, once it was
    /// rotated, its newest successor. Both keys work during the rotation's grace period,
    /// and rotating must not double the budget.
    pub budget_id: Uuid,
}

impl KeyEntry {
    /// Whether two loads of a key admit and refuse the same requests (presence, owner,
    /// revoked, suspended, expiry).
    fn decides_alike(a: &Option<Arc<Self>>, b: &Option<Arc<Self>>) -> bool {
        match (a, b) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                (a.id, a.principal_id, a.revoked, a.suspended, a.expires_at)
                    == (b.id, b.principal_id, b.revoked, b.suspended, b.expires_at)
            }
            _ => false,
        }
    }
}

/// An incident-grant token as enforced.
#[derive(Debug, Clone)]
pub struct GrantTokenEntry {
    /// The grant.
    pub grant_id: GrantId,
    /// The grantee.
    pub principal_id: Uuid,
    /// HMAC of the token.
    pub hash: TokenHash,
}

/// A principal as enforced: its groups, every binding that applies and its active grants.
#[derive(Debug, Clone)]
pub struct PrincipalEntry {
    /// Principal id.
    pub id: PrincipalId,
    /// Disabled principals authenticate nothing.
    pub disabled: bool,
    /// Enabled groups the principal belongs to.
    pub group_ids: Vec<PrincipalId>,
    /// Every group the principal belongs to, disabled ones included: a change to any of them
    /// (re-enabling one, say) evicts this entry.
    memberships: Vec<Uuid>,
    /// Own bindings and its enabled groups' bindings.
    pub bindings: Vec<Binding>,
    /// Incident grants that are approved and not yet expired or revoked.
    pub grants: Vec<Grant>,
    loaded_at: Instant,
}

impl PrincipalEntry {
    /// Whether two loads of a principal admit and refuse the same requests.
    fn decides_alike(&self, other: &Self) -> bool {
        self.disabled == other.disabled
            && self.group_ids == other.group_ids
            && self.bindings == other.bindings
            && self.grants == other.grants
    }
}

/// Everything cached is reloaded at least this often unless [`PolicyCache::with_max_age`]
/// says otherwise: a backstop to the change feed, whose gap tracking gives up on an id after
/// 10 s; a change whose transaction stayed open longer would otherwise be missed until the
/// next change to the same thing.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);

/// A key lookup's result and when it was loaded; `entry: None` = known not to exist.
struct CachedKey {
    entry: Option<Arc<KeyEntry>>,
    loaded_at: Instant,
}

/// How soon a failed periodic reload is tried again.
const RELOAD_RETRY: Duration = Duration::from_secs(5);

/// Unknown prefixes remembered (so random keys cannot make every request hit the database).
const MAX_NEGATIVE_KEYS: usize = 10_000;
/// How many unknown keys or grant tokens one client subnet (an IPv4 address, an IPv6 /64) may
/// look up in the database: anyone can make up a well-formed key (its checksum is public), and
/// each costs a query. Only lookups that find nothing are counted, so real keys behind one
/// address (a NAT) are never refused for their number; once the budget is spent, that subnet's
/// uncached lookups are refused until it refills.
pub const LOOKUPS_PER_CLIENT: Limit = Limit {
    per_minute: 1_200,
    burst: 200,
};
/// Database lookups of uncached keys and grant tokens running at once, across all clients, so
/// that a flood of made-up keys from many networks queues here instead of taking every
/// connection from the policy feed and the audit writer.
const CONCURRENT_LOOKUPS: usize = 4;
/// How long a lookup waits for one of [`CONCURRENT_LOOKUPS`] before it is refused (429): the
/// request holds its place in the audit queue meanwhile.
const LOOKUP_WAIT: Duration = Duration::from_secs(1);
/// How long an id skipped by a poll is re-checked before it is assumed rolled back.
const GAP_TIMEOUT: Duration = Duration::from_secs(10);
/// The most skipped ids watched at once; beyond, all policy is reloaded instead.
const MAX_GAPS: usize = 10_000;
/// Skipped ids asked for per query (PostgreSQL takes at most 65,535 bound values).
const GAP_QUERY_IDS: usize = 1_000;

/// A lookup refused by the budget or the wait for a slot, counted.
fn refused_lookup(decision: RateDecision) -> CacheError {
    metrics::counter!("portcullis_proxy_lookups_refused_total").increment(1);
    CacheError::LookupsLimited(decision)
}

/// The bucket of `client`'s subnet for [`LOOKUPS_PER_CLIENT`].
fn subnet_key(client: IpAddr) -> [u8; 9] {
    let mut key = [0u8; 9];
    match client {
        IpAddr::V4(v4) => key[1..5].copy_from_slice(&v4.octets()),
        IpAddr::V6(v6) => {
            key[0] = 6;
            key[1..].copy_from_slice(&v6.octets()[..8]);
        }
    }
    key
}

/// Cached keys by lookup prefix, known and unknown ones counted apart: unknown prefixes are
/// bounded by [`MAX_NEGATIVE_KEYS`], real keys only by use.
#[derive(Default)]
struct KeyMap {
    by_prefix: HashMap<String, CachedKey>,
    /// Entries saying "no such key".
    unknown: usize,
}

impl KeyMap {
    fn get(&self, prefix: &str) -> Option<&CachedKey> {
        self.by_prefix.get(prefix)
    }

    fn insert(&mut self, prefix: String, cached: CachedKey) -> Option<CachedKey> {
        if cached.entry.is_none() && self.unknown >= MAX_NEGATIVE_KEYS {
            self.retain(|_| true);
        }
        let added_unknown = cached.entry.is_none();
        let replaced = self.by_prefix.insert(prefix, cached);
        let removed_unknown = replaced.as_ref().is_some_and(|r| r.entry.is_none());
        self.unknown = self.unknown + usize::from(added_unknown) - usize::from(removed_unknown);
        replaced
    }

    /// Keeps the real keys `keep` accepts; forgets every unknown prefix.
    fn retain(&mut self, mut keep: impl FnMut(&KeyEntry) -> bool) {
        self.by_prefix
            .retain(|_, cached| cached.entry.as_deref().is_some_and(&mut keep));
        self.unknown = 0;
    }

    fn clear(&mut self) {
        self.by_prefix.clear();
        self.unknown = 0;
    }
}

/// The cache shared by every request of one proxy instance.
pub struct PolicyCache {
    db: DatabaseConnection,
    snapshot: ArcSwap<Snapshot>,
    keys: RwLock<KeyMap>,
    /// Database lookups per client subnet; see [`LOOKUPS_PER_CLIENT`].
    lookups: LocalLimiter,
    lookups_per_client: Limit,
    /// See [`CONCURRENT_LOOKUPS`].
    concurrent_lookups: tokio::sync::Semaphore,
    principals: RwLock<HashMap<Uuid, Arc<PrincipalEntry>>>,
    /// Incident-grant tokens by lookup prefix (`None` = known not to exist).
    grant_tokens: RwLock<HashMap<String, Option<Arc<GrantTokenEntry>>>>,
    /// OIDC `iss` → `sub` → user principal (`None` = no such user); see [`Self::principal_for_subject`].
    oidc_subjects: RwLock<HashMap<String, HashMap<String, Option<PrincipalId>>>>,
    /// IdP group name → group principals, loaded whole on first use; see [`Self::groups_for_claims`].
    oidc_groups: arc_swap::ArcSwapOption<HashMap<String, Vec<PrincipalId>>>,
    /// Bumped by every eviction, so a load that raced with one is not cached.
    generation: AtomicU64,
    /// Set when the feed skipped more ids than are watched: everything is reloaded at the next
    /// sync, and again until that succeeds.
    full_reload_due: AtomicBool,
    /// Bumped *after* every eviction and snapshot swap has taken effect; see [`Self::subscribe`].
    changes: tokio::sync::watch::Sender<u64>,
    cursor: AtomicI64,
    gaps: std::sync::Mutex<Gaps>,
    started: Instant,
    /// Milliseconds after `started` of the last successful sync with the database.
    last_sync_ms: AtomicU64,
    max_staleness: Duration,
    /// Set by the PostgreSQL listener: poll now rather than at the next tick.
    wake: tokio::sync::Notify,
    /// How old a cached entry or the snapshot may get before it is reloaded.
    max_age: Duration,
    /// Milliseconds after `started` when the snapshot was last loaded.
    snapshot_loaded_ms: AtomicU64,
    /// Bumped when a route or an upstream credential changes; see [`crate::credentials`].
    credential_epoch: AtomicU64,
}

/// Feed ids below the cursor that were not seen yet, with when they were first missed.
#[derive(Debug, Default)]
struct Gaps(BTreeMap<i64, Instant>);

/// How many feed ids below the cursor a starting cache checks for gaps.
const START_LOOKBACK: i64 = 1_000;

/// The gaps just below a starting cache's cursor: ids of transactions that were still open
/// when the cursor was read (a later id can commit first). Without them such a change, once
/// committed below the cursor, would never be fetched. They are watched like any other gap.
async fn start_gaps(db: &DatabaseConnection, cursor: i64) -> Result<Gaps, DbErr> {
    let first = (cursor - START_LOOKBACK + 1).max(1);
    let present: std::collections::BTreeSet<i64> = policy_change::Entity::find()
        .select_only()
        .column(policy_change::Column::Id)
        .filter(policy_change::Column::Id.between(first, cursor))
        .into_tuple::<i64>()
        .all(db)
        .await?
        .into_iter()
        .collect();
    let now = Instant::now();
    Ok(Gaps(
        (first..=cursor)
            .filter(|id| !present.contains(id))
            .map(|id| (id, now))
            .collect(),
    ))
}

/// A database failure while loading policy; the request fails closed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The database could not be reached or queried.
    #[error("policy could not be loaded")]
    Database(#[from] DbErr),
    /// Policy is older than the allowed staleness.
    #[error("policy is stale")]
    Stale,
    /// The client's subnet looked up too many uncached keys or grant tokens.
    #[error("too many lookups of unknown credentials from this network")]
    LookupsLimited(RateDecision),
}

impl PolicyCache {
    /// Loads the snapshot and positions the feed cursor at the current end of the feed.
    pub async fn load(db: DatabaseConnection, max_staleness: Duration) -> Result<Self, DbErr> {
        // Cursor first: changes made while the snapshot loads are applied again, not missed.
        let cursor = policy_change::Entity::find()
            .order_by_desc(policy_change::Column::Id)
            .one(&db)
            .await?
            .map_or(0, |c| c.id);
        let gaps = start_gaps(&db, cursor).await?;
        let snapshot = load_snapshot(&db).await?;
        Ok(Self {
            db,
            snapshot: ArcSwap::from_pointee(snapshot),
            keys: RwLock::default(),
            lookups: LocalLimiter::new(),
            lookups_per_client: LOOKUPS_PER_CLIENT,
            concurrent_lookups: tokio::sync::Semaphore::new(CONCURRENT_LOOKUPS),
            grant_tokens: RwLock::default(),
            principals: RwLock::default(),
            oidc_subjects: RwLock::default(),
            oidc_groups: arc_swap::ArcSwapOption::empty(),
            generation: AtomicU64::new(0),
            full_reload_due: AtomicBool::new(false),
            changes: tokio::sync::watch::Sender::new(0),
            cursor: AtomicI64::new(cursor),
            gaps: std::sync::Mutex::new(gaps),
            started: Instant::now(),
            last_sync_ms: AtomicU64::new(0),
            max_staleness,
            wake: tokio::sync::Notify::new(),
            max_age: DEFAULT_MAX_AGE,
            snapshot_loaded_ms: AtomicU64::new(0),
            credential_epoch: AtomicU64::new(0),
        })
    }

    /// Sets how many uncached keys and grant tokens one client subnet may look up (default
    /// [`LOOKUPS_PER_CLIENT`]); benchmarks that load many keys from one address raise it.
    pub fn with_lookups_per_client(mut self, limit: Limit) -> Self {
        self.lookups_per_client = limit;
        self
    }

    /// Reloads cached keys, principals, OIDC identities and the snapshot once they are
    /// `max_age` old, even without a change in the feed (default [`DEFAULT_MAX_AGE`]).
    pub fn with_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    fn since_start_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Reloads the snapshot and forgets the OIDC identity maps once the snapshot is
    /// `max_age` old.
    /// A failure is logged and retried after [`RELOAD_RETRY`] rather than failing the sync:
    /// the feed, applied already, is what keeps the cache fresh.
    async fn reload_if_old(&self) {
        let loaded = self.snapshot_loaded_ms.load(Ordering::Relaxed);
        let now = self.since_start_ms();
        if Duration::from_millis(now.saturating_sub(loaded)) < self.max_age {
            return;
        }
        match self.reload_snapshot().await {
            // Forgetting moves the change counter too, after the new snapshot is in place.
            Ok(()) => self.forget_oidc_identities(),
            Err(error) => {
                tracing::warn!(%error, "periodic policy reload failed; retrying shortly");
                metrics::counter!("portcullis_policy_reload_failures_total").increment(1);
                let retry = RELOAD_RETRY.min(self.max_age).as_millis() as u64;
                let max_age = self.max_age.as_millis() as u64;
                // As if loaded `retry` before the age limit.
                let as_if = now.saturating_add(retry).saturating_sub(max_age);
                self.snapshot_loaded_ms.store(as_if, Ordering::Relaxed);
            }
        }
    }

    async fn reload_snapshot(&self) -> Result<(), DbErr> {
        let loaded_ms = self.since_start_ms();
        let snapshot = load_snapshot(&self.db).await?;
        self.snapshot.store(Arc::new(snapshot));
        self.snapshot_loaded_ms.store(loaded_ms, Ordering::Relaxed);
        Ok(())
    }

    /// A counter that moves whenever anything a decision reads from this cache may have
    /// changed: an entry evicted, the snapshot replaced (also by the periodic reload),
    /// everything cleared. It moves after the change took effect, so a caller that reads it,
    /// then decides, and later sees the same value knows the decision still stands as far as
    /// the cache goes (time is the caller's to watch: expiries do not move it). Open WebSocket
    /// tunnels wait on it instead of re-checking on a timer.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.snapshot.load()
    }

    /// Changes whenever cached upstream credentials must be refetched.
    pub fn credential_epoch(&self) -> u64 {
        self.credential_epoch.load(Ordering::Acquire)
    }

    /// The first moment [`Self::check_fresh`] fails, unless the database is reached before
    /// (`None`: a staleness limit too large to reach).
    pub fn stale_at(&self) -> Option<Instant> {
        let last = Duration::from_millis(self.last_sync_ms.load(Ordering::Relaxed));
        // `check_fresh` counts whole milliseconds and fails only past the limit.
        let after = last
            .saturating_add(self.max_staleness)
            .saturating_add(Duration::from_millis(1));
        self.started.checked_add(after)
    }

    /// Fails when the database has not been reachable for longer than the allowed staleness.
    pub fn check_fresh(&self) -> Result<(), CacheError> {
        let since_start = self.started.elapsed().as_millis() as u64;
        let last = self.last_sync_ms.load(Ordering::Relaxed);
        if Duration::from_millis(since_start.saturating_sub(last)) > self.max_staleness {
            return Err(CacheError::Stale);
        }
        Ok(())
    }

    /// When a reload fails: the entry it was to replace (reloaded only for its age), as long
    /// as the feed, which evicts changed entries, is within the allowed staleness. That keeps
    /// the promise of serving from cache through a database outage; a miss fails closed.
    fn aged_or<T>(&self, aged: Option<T>, error: DbErr) -> Result<T, CacheError> {
        match aged {
            Some(entry) if self.check_fresh().is_ok() => Ok(entry),
            _ => Err(CacheError::Database(error)),
        }
    }

    /// Admits one database lookup of something `client` presented that is not cached: while
    /// its subnet has budget left, then one of [`CONCURRENT_LOOKUPS`] within [`LOOKUP_WAIT`].
    async fn lookup_for(
        &self,
        client: IpAddr,
    ) -> Result<tokio::sync::SemaphorePermit<'_>, CacheError> {
        self.budget_left(client)?;
        // The semaphore is never closed; waiting too long is the refusal.
        let Ok(Ok(permit)) =
            tokio::time::timeout(LOOKUP_WAIT, self.concurrent_lookups.acquire()).await
        else {
            return Err(refused_lookup(RateDecision {
                allowed: false,
                limit: CONCURRENT_LOOKUPS as u32,
                remaining: 0,
                reset: LOOKUP_WAIT,
                retry_after: Some(LOOKUP_WAIT),
            }));
        };
        // Again, now that it is this lookup's turn: many made up at once all passed the check
        // above before any of them was charged. Refused here, they leave the queue at once,
        // and a subnet overspends by at most the lookups running.
        self.budget_left(client)?;
        Ok(permit)
    }

    /// Whether `client`'s subnet may still look up unknown credentials (nothing is spent).
    fn budget_left(&self, client: IpAddr) -> Result<(), CacheError> {
        let decision = self
            .lookups
            .peek(subnet_key(client), self.lookups_per_client);
        if decision.allowed {
            Ok(())
        } else {
            Err(refused_lookup(decision))
        }
    }

    /// Spends `client`'s budget for one lookup that found nothing.
    fn found_nothing_for(&self, client: IpAddr) {
        self.lookups
            .check(subnet_key(client), self.lookups_per_client);
    }

    /// The key with this lookup prefix, loading it on a miss or once it is `max_age` old. A
    /// prefix not cached at all is looked up within `client`'s budget ([`LOOKUPS_PER_CLIENT`]).
    pub async fn key(
        &self,
        prefix: &str,
        client: IpAddr,
    ) -> Result<Option<Arc<KeyEntry>>, CacheError> {
        let fresh = |keys: &KeyMap| {
            keys.get(prefix)
                .map(|c| (c.loaded_at.elapsed() < self.max_age, c.entry.clone()))
        };
        let cached = fresh(&read(&self.keys));
        let lookup = match cached {
            Some((true, entry)) => return Ok(entry),
            // Reloaded for its age: a known prefix, at most once per `max_age`.
            Some((false, _)) => None,
            None => {
                let permit = self.lookup_for(client).await?;
                // Another request may have loaded it while this one waited.
                if let Some((true, entry)) = fresh(&read(&self.keys)) {
                    return Ok(entry);
                }
                Some(permit)
            }
        };
        let generation = self.generation.load(Ordering::Acquire);
        let entry = match load_key(&self.db, prefix).await {
            Ok(entry) => entry,
            Err(error) => {
                let aged = read(&self.keys).get(prefix).map(|c| c.entry.clone());
                return self.aged_or(aged, error);
            }
        };
        let entry = entry.map(Arc::new);
        if lookup.is_some() && entry.is_none() {
            self.found_nothing_for(client);
        }
        drop(lookup);
        let mut keys = write(&self.keys);
        if self.generation.load(Ordering::Acquire) == generation {
            let replaced = keys.insert(
                prefix.to_owned(),
                CachedKey {
                    entry: entry.clone(),
                    loaded_at: Instant::now(),
                },
            );
            drop(keys);
            // Reloaded for its age and found different: a change the feed never reported.
            if replaced.is_some_and(|old| !KeyEntry::decides_alike(&old.entry, &entry)) {
                self.changed();
            }
        }
        Ok(entry)
    }

    /// The incident grant whose token has this lookup prefix, loading it on a miss. Only the
    /// token's hash and owner are cached; whether the grant is active comes from the owner's
    /// [`PrincipalEntry`], which is evicted on every grant change.
    pub async fn grant_token(
        &self,
        prefix: &str,
        client: IpAddr,
    ) -> Result<Option<Arc<GrantTokenEntry>>, CacheError> {
        if let Some(entry) = read(&self.grant_tokens).get(prefix) {
            return Ok(entry.clone());
        }
        let lookup = self.lookup_for(client).await?;
        if let Some(entry) = read(&self.grant_tokens).get(prefix) {
            return Ok(entry.clone());
        }
        let generation = self.generation.load(Ordering::Acquire);
        let row = incident_grant::Entity::find()
            .filter(incident_grant::Column::TokenPrefix.eq(prefix))
            .one(&self.db)
            .await?;
        let entry = row.and_then(|row| {
            let hash = TokenHash::from_hex(row.token_hash.as_deref()?).ok()?;
            Some(Arc::new(GrantTokenEntry {
                grant_id: GrantId(row.id),
                principal_id: row.requester_id,
                hash,
            }))
        });
        if entry.is_none() {
            self.found_nothing_for(client);
        }
        drop(lookup);
        let mut tokens = write(&self.grant_tokens);
        if self.generation.load(Ordering::Acquire) == generation {
            if entry.is_none() && tokens.len() >= MAX_NEGATIVE_KEYS {
                tokens.retain(|_, e| e.is_some());
            }
            tokens.insert(prefix.to_owned(), entry.clone());
        }
        Ok(entry)
    }

    /// The principal with its bindings and grants, loading it on a miss.
    pub async fn principal(
        &self,
        id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<Arc<PrincipalEntry>>, CacheError> {
        if let Some(entry) = read(&self.principals).get(&id)
            && entry.loaded_at.elapsed() < self.max_age
        {
            return Ok(Some(entry.clone()));
        }
        let generation = self.generation.load(Ordering::Acquire);
        let loaded = match load_principal(&self.db, id, now).await {
            Ok(loaded) => loaded,
            Err(error) => {
                let aged = read(&self.principals).get(&id).cloned().map(Some);
                return self.aged_or(aged, error);
            }
        };
        let Some(entry) = loaded else {
            return Ok(None);
        };
        let entry = Arc::new(entry);
        // The generation is checked under the lock `apply` evicts under: checked before it,
        // an eviction could land between the check and the insert and be undone by this
        // stale entry.
        let mut principals = write(&self.principals);
        if self.generation.load(Ordering::Acquire) == generation {
            let replaced = principals.insert(id, entry.clone());
            drop(principals);
            // Reloaded for its age and found different: a change the feed never reported.
            if replaced.is_some_and(|old| !old.decides_alike(&entry)) {
                self.changed();
            }
        }
        Ok(Some(entry))
    }

    /// Applies new feed entries. Returns how many were applied.
    pub async fn sync(&self) -> Result<usize, DbErr> {
        // Fresh as of this read of the feed, not of the end of this sync: a snapshot reload
        // that hangs after it must not make policy read minutes ago count as fresh.
        let read_at = self.since_start_ms();
        let cursor = self.cursor.load(Ordering::Acquire);
        let pending_gaps: Vec<i64> = {
            let mut gaps = lock(&self.gaps);
            gaps.0.retain(|_, since| since.elapsed() < GAP_TIMEOUT);
            gaps.0.keys().copied().collect()
        };
        let mut changes = policy_change::Entity::find()
            .filter(policy_change::Column::Id.gt(cursor))
            .order_by_asc(policy_change::Column::Id)
            .limit(1_000)
            .all(&self.db)
            .await?;
        for ids in pending_gaps.chunks(GAP_QUERY_IDS) {
            let late = policy_change::Entity::find()
                .filter(policy_change::Column::Id.is_in(ids.iter().copied()))
                .all(&self.db)
                .await?;
            changes.extend(late);
        }
        let applied = changes.len();
        if applied > 0 {
            self.apply(&changes).await?;
            if let Some(max) = changes.iter().map(|c| c.id).max() {
                self.cursor.fetch_max(max, Ordering::AcqRel);
            }
        }
        // Only once applied: recorded before, a failed apply would have struck late entries
        // (below the cursor, so never fetched again) off the gap list unapplied.
        if self.record_gaps(cursor, &changes) {
            // More ids skipped than are watched (a sequence moved far ahead, a huge rollback):
            // a change among the unwatched ones would go unseen, so start over from the
            // database instead, until that succeeds.
            tracing::warn!(
                watched = MAX_GAPS,
                "the policy feed skipped more ids than are watched; reloading all policy"
            );
            self.full_reload_due.store(true, Ordering::Release);
        }
        if self.full_reload_due.load(Ordering::Acquire) {
            self.reload_snapshot().await?;
            self.age_all();
            self.full_reload_due.store(false, Ordering::Release);
        }
        self.reload_if_old().await;
        self.last_sync_ms.fetch_max(read_at, Ordering::Relaxed);
        Ok(applied)
    }

    /// Strikes `changes` off the gaps and adds the ids they skipped; true when more were
    /// skipped than [`MAX_GAPS`] can hold. Then the newest half are kept (an id still in
    /// flight is likelier among them), leaving room for the gaps of the polls after.
    fn record_gaps(&self, cursor: i64, changes: &[policy_change::Model]) -> bool {
        let mut gaps = lock(&self.gaps);
        let now = Instant::now();
        for change in changes {
            gaps.0.remove(&change.id);
        }
        gaps.0.retain(|_, since| since.elapsed() < GAP_TIMEOUT);
        let mut fresh: Vec<i64> = changes
            .iter()
            .map(|c| c.id)
            .filter(|id| *id > cursor)
            .collect();
        fresh.sort_unstable();
        fresh.dedup();
        // The runs of skipped ids between them, newest first, until the watch list is full:
        // a jump of millions, or many runs in one poll, adds no more than it holds.
        let mut overflow = false;
        let mut above = None;
        'runs: for id in fresh.iter().rev().copied().chain([cursor]) {
            if let Some(above) = above {
                for missing in (id + 1..above).rev() {
                    if gaps.0.len() >= MAX_GAPS {
                        overflow = true;
                        break 'runs;
                    }
                    gaps.0.entry(missing).or_insert(now);
                }
            }
            above = Some(id);
        }
        if overflow {
            // Room for the gaps of the polls after; the newest are the likelier still in flight.
            while gaps.0.len() > MAX_GAPS / 2 {
                gaps.0.pop_first();
            }
        }
        overflow
    }

    async fn apply(&self, changes: &[policy_change::Model]) -> Result<(), DbErr> {
        let mut reload_snapshot = false;
        let mut keys_changed = Vec::new();
        let mut principals_changed = Vec::new();
        for change in changes {
            let id = Uuid::parse_str(&change.entity_id).ok();
            match change.entity_kind.as_str() {
                kind::API_KEY => keys_changed.extend(id),
                kind::PRINCIPAL | kind::ROLE_BINDING | kind::INCIDENT_GRANT => {
                    principals_changed.extend(id)
                }
                kind::ROLE | kind::ROUTE | kind::IP_RULE | kind::RATE_LIMIT_OVERRIDE => {
                    reload_snapshot = true
                }
                kind::UPSTREAM_CREDENTIAL => {}
                other => tracing::warn!(
                    kind = other,
                    "unknown entity kind in the policy change feed"
                ),
            }
        }
        if !keys_changed.is_empty() {
            self.generation.fetch_add(1, Ordering::AcqRel);
            let mut keys = write(&self.keys);
            // Forget negative entries too: a changed key may be a new one. A key spending a
            // changed key's budget (rotated into it) goes too: the budget may have moved.
            keys.retain(|entry| {
                !keys_changed.contains(&entry.id) && !keys_changed.contains(&entry.budget_id)
            });
        }
        if changes
            .iter()
            .any(|c| c.entity_kind == kind::INCIDENT_GRANT)
        {
            // Grants are few and change rarely: forget every token entry.
            self.generation.fetch_add(1, Ordering::AcqRel);
            write(&self.grant_tokens).clear();
        }
        if !principals_changed.is_empty() {
            self.generation.fetch_add(1, Ordering::AcqRel);
            let mut principals = write(&self.principals);
            // A change to a group changes every member's effective bindings.
            principals.retain(|id, entry| {
                !principals_changed.contains(id)
                    && !entry
                        .memberships
                        .iter()
                        .any(|g| principals_changed.contains(g))
            });
        }
        if changes.iter().any(|c| c.entity_kind == kind::PRINCIPAL) {
            // Any principal may have gained or lost an OIDC subject or group name.
            self.forget_oidc_identities();
        }
        if changes
            .iter()
            .any(|c| c.entity_kind == kind::UPSTREAM_CREDENTIAL || c.entity_kind == kind::ROUTE)
        {
            self.credential_epoch.fetch_add(1, Ordering::AcqRel);
        }
        let reloaded = if reload_snapshot {
            self.reload_snapshot().await
        } else {
            Ok(())
        };
        // Once, after everything above took effect (and also when the reload failed: the
        // evictions stand).
        self.changed();
        reloaded
    }

    /// Polls the feed until `stop` resolves.
    pub async fn run_sync(
        self: Arc<Self>,
        interval: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                () = self.wake.notified() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if let Err(error) = self.sync().await {
                tracing::warn!(%error, "policy change feed poll failed; serving from cache");
                metrics::counter!("portcullis_policy_sync_failures_total").increment(1);
            }
        }
    }

    /// On PostgreSQL, LISTENs for `NOTIFY portcullis_policy_change` (sent by a trigger on
    /// every feed insert) and wakes the poller, so changes apply in milliseconds; polling stays
    /// as the safety net (and is all SQLite has). Reconnects after errors until `stop`.
    pub async fn run_listener(self: Arc<Self>, mut stop: tokio::sync::watch::Receiver<bool>) {
        if self.db.get_database_backend() != sea_orm::DatabaseBackend::Postgres {
            return;
        }
        let pool = self.db.get_postgres_connection_pool().clone();
        loop {
            let listened = async {
                let mut listener = sea_orm::sqlx::postgres::PgListener::connect_with(&pool).await?;
                listener.listen(POLICY_CHANGE_CHANNEL).await?;
                // Anything committed while we were not listening is caught up now.
                self.wake.notify_one();
                loop {
                    listener.recv().await?;
                    self.wake.notify_one();
                }
                #[expect(unreachable_code, reason = "gives the async block its error type")]
                Ok::<(), sea_orm::sqlx::Error>(())
            };
            tokio::select! {
                result = listened => {
                    if let Err(error) = result {
                        tracing::warn!(%error, "policy change LISTEN failed; relying on polling, retrying in 1 s");
                    }
                }
                _ = stop.wait_for(|s| *s) => return,
            }
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// Makes every lazily loaded entry due for reload: after the feed may have missed changes.
    /// Cached keys stay, to be reloaded on their next use the way entries that reached their
    /// age are (that reload takes no lookup slot: after a restart-sized wave of misses, real
    /// keys and open tunnels would otherwise queue for the four); everything else is dropped.
    fn age_all(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        {
            let aged = Instant::now().checked_sub(self.max_age + Duration::from_secs(1));
            let mut keys = write(&self.keys);
            keys.retain(|_| aged.is_some());
            if let Some(aged) = aged {
                for cached in keys.by_prefix.values_mut() {
                    cached.loaded_at = aged;
                }
            }
        }
        write(&self.principals).clear();
        write(&self.grant_tokens).clear();
        self.forget_oidc_identities();
    }

    /// Forgets every lazily loaded entry (tests and emergency use).
    pub fn clear(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        write(&self.keys).clear();
        write(&self.principals).clear();
        write(&self.grant_tokens).clear();
        self.forget_oidc_identities();
    }
}

// === impl PolicyCache: OIDC identities ===

impl PolicyCache {
    /// The user principal linked to an OIDC identity (`principal.oidc_issuer`/`oidc_subject`,
    /// kind user), loading it on a miss. `None`: no such user — the caller must refuse, never
    /// provision. Misses are cached too (bounded), so unknown subjects cost one query each.
    pub async fn principal_for_subject(
        &self,
        issuer: &str,
        subject: &str,
    ) -> Result<Option<PrincipalId>, CacheError> {
        if let Some(hit) = read(&self.oidc_subjects)
            .get(issuer)
            .and_then(|subjects| subjects.get(subject))
        {
            return Ok(*hit);
        }
        let generation = self.generation.load(Ordering::Acquire);
        let found = principal::Entity::find()
            .filter(principal::Column::OidcIssuer.eq(issuer))
            .filter(principal::Column::OidcSubject.eq(subject))
            .filter(principal::Column::Kind.eq(principal::PrincipalKind::User))
            .one(&self.db)
            .await?
            .map(|row| PrincipalId(row.id));
        let mut subjects = write(&self.oidc_subjects);
        if self.generation.load(Ordering::Acquire) == generation {
            let known = subjects.entry(issuer.to_owned()).or_default();
            if found.is_none() && known.len() >= MAX_NEGATIVE_KEYS {
                known.retain(|_, id| id.is_some());
            }
            known.insert(subject.to_owned(), found);
        }
        Ok(found)
    }

    /// The group principals whose `oidc_group` is one of `claims` (a token's groups claim).
    /// The name → group map is loaded whole on first use and dropped on any principal change.
    pub async fn groups_for_claims(
        &self,
        claims: &[String],
    ) -> Result<Vec<PrincipalId>, CacheError> {
        if claims.is_empty() {
            return Ok(Vec::new());
        }
        let groups = match self.oidc_groups.load_full() {
            Some(groups) => groups,
            None => {
                let generation = self.generation.load(Ordering::Acquire);
                let mut groups: HashMap<String, Vec<PrincipalId>> = HashMap::new();
                for row in principal::Entity::find()
                    .filter(principal::Column::Kind.eq(principal::PrincipalKind::Group))
                    .filter(principal::Column::OidcGroup.is_not_null())
                    .all(&self.db)
                    .await?
                {
                    if let Some(name) = row.oidc_group {
                        groups.entry(name).or_default().push(PrincipalId(row.id));
                    }
                }
                let groups = Arc::new(groups);
                // Under the lock `forget_oidc_identities` clears under (see `principal`).
                let _subjects = write(&self.oidc_subjects);
                if self.generation.load(Ordering::Acquire) == generation {
                    self.oidc_groups.store(Some(groups.clone()));
                }
                groups
            }
        };
        let mut ids: Vec<PrincipalId> = claims
            .iter()
            .filter_map(|claim| groups.get(claim))
            .flatten()
            .copied()
            .collect();
        ids.sort_unstable();
        ids.dedup();
        Ok(ids)
    }

    /// The bindings held directly by each of `groups` (disabled or missing groups hold none),
    /// from the same cached entries members' lookups use, so they are evicted the same way.
    pub async fn bindings_for_groups(
        &self,
        groups: &[PrincipalId],
        now: DateTime<Utc>,
    ) -> Result<Vec<Binding>, CacheError> {
        let mut bindings = Vec::new();
        for group in groups {
            let Some(entry) = self.principal(group.0, now).await? else {
                continue;
            };
            if entry.disabled {
                continue;
            }
            bindings.extend(
                entry
                    .bindings
                    .iter()
                    .filter(|b| b.principal_id == *group)
                    .cloned(),
            );
        }
        Ok(bindings)
    }

    /// `entry` as it applies to one request whose credential proves membership of `extra`
    /// groups too (OIDC groups claim): their ids are added to `group_ids` and their bindings to
    /// `bindings`. Returns `entry` itself when that adds nothing. Never cached: the groups are
    /// the token's, not the principal's.
    pub async fn with_extra_groups(
        &self,
        entry: Arc<PrincipalEntry>,
        extra: &[PrincipalId],
        now: DateTime<Utc>,
    ) -> Result<Arc<PrincipalEntry>, CacheError> {
        let new: Vec<PrincipalId> = extra
            .iter()
            .copied()
            .filter(|g| *g != entry.id && !entry.group_ids.contains(g))
            .collect();
        if new.is_empty() {
            return Ok(entry);
        }
        let bindings = self.bindings_for_groups(&new, now).await?;
        let mut merged = (*entry).clone();
        merged.group_ids.extend(new);
        merged.bindings.extend(bindings);
        Ok(Arc::new(merged))
    }

    fn forget_oidc_identities(&self) {
        self.generation.fetch_add(1, Ordering::AcqRel);
        write(&self.oidc_subjects).clear();
        self.oidc_groups.store(None);
        self.changed();
    }
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    // Writers never panic while holding these locks; recover rather than fail every request.
    lock.read()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn lock<T>(lock: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    lock.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn key_entry(row: &api_key::Model) -> Option<KeyEntry> {
    let Ok(hash) = TokenHash::from_hex(&row.hash) else {
        tracing::error!(key_id = %row.id, "stored key hash is malformed; the key cannot authenticate");
        return None;
    };
    let rate_limit = match (row.rate_limit_per_minute, row.rate_limit_burst) {
        (Some(rate), burst) if rate > 0 => Some((rate as u32, burst.unwrap_or(rate).max(1) as u32)),
        _ => None,
    };
    Some(KeyEntry {
        id: row.id,
        principal_id: row.principal_id,
        hash,
        expires_at: row.expires_at,
        revoked: row.revoked_at.is_some(),
        suspended: row.suspended_at.is_some(),
        has_quota: row.remaining_uses.is_some(),
        rate_limit,
        budget_id: row.id,
    })
}

/// The key with lookup prefix `prefix` as enforced, its budget resolved.
async fn load_key(db: &DatabaseConnection, prefix: &str) -> Result<Option<KeyEntry>, DbErr> {
    let row = api_key::Entity::find()
        .filter(api_key::Column::Prefix.eq(prefix))
        .one(db)
        .await?;
    let mut entry = row.as_ref().and_then(key_entry);
    if let Some(key) = entry.as_mut().filter(|key| !key.revoked) {
        // Only a rotation sets a successor, so for most keys this finds nothing.
        if let Some(successor) = newest_successor(db, key.id).await? {
            key.budget_id = successor.id;
            key.has_quota = successor.remaining_uses.is_some();
        }
    }
    Ok(entry)
}

/// Rotations chained beyond this are not followed (each is one more query on a cache miss).
const MAX_ROTATION_HOPS: usize = 8;

/// The newest successor of key `id` in its rotation chain, if any: the key whose budget a
/// rotated key spends during its grace period. A revoked successor counts: its budget is what
/// the chain has left (skipping it would hand the old key its own, unspent, counter again).
async fn newest_successor(
    db: &DatabaseConnection,
    id: Uuid,
) -> Result<Option<api_key::Model>, DbErr> {
    let mut newest = None;
    let mut current = id;
    for _ in 0..MAX_ROTATION_HOPS {
        let next = api_key::Entity::find()
            .filter(api_key::Column::RotatedFrom.eq(current))
            .order_by_desc(api_key::Column::CreatedAt)
            .one(db)
            .await?;
        match next {
            Some(row) => {
                current = row.id;
                newest = Some(row);
            }
            None => break,
        }
    }
    Ok(newest)
}

/// The strings of a JSON array (`null` reads as none). `None` when `value` holds anything
/// else: in these lists an empty one means "no restriction", so dropping what cannot be read
/// would widen a method or CIDR condition to everything. Callers ignore the row instead.
fn json_strings(value: &serde_json::Value) -> Option<Vec<&str>> {
    match value {
        serde_json::Value::Null => Some(Vec::new()),
        serde_json::Value::Array(items) => items.iter().map(serde_json::Value::as_str).collect(),
        _ => None,
    }
}

/// A stored method list; `None` if any entry is not a method (see [`json_strings`]).
fn methods(value: &serde_json::Value) -> Option<Vec<http::Method>> {
    json_strings(value)?
        .iter()
        .map(|m| http::Method::from_bytes(m.as_bytes()).ok())
        .collect()
}

/// A binding's CIDR condition (`conditions.cidrs`; none: any address); `None` if it cannot
/// be read in full, and then the binding grants nothing (see [`json_strings`]).
fn binding_cidrs(conditions: &serde_json::Value) -> Option<Vec<ipnet::IpNet>> {
    let Some(cidrs) = conditions.get("cidrs") else {
        return Some(Vec::new());
    };
    json_strings(cidrs)?
        .iter()
        .map(|cidr| cidr.parse().ok().map(canonical_net))
        .collect()
}

fn compile_permission(row: &permission::Model) -> Option<Permission> {
    let path = match PathGlob::parse(&row.path_glob) {
        Ok(glob) => glob,
        Err(error) => {
            // Fail closed: a permission we cannot understand grants nothing.
            tracing::error!(permission_id = %row.id, %error, "invalid path glob; permission ignored");
            return None;
        }
    };
    let Some(methods) = methods(&row.methods) else {
        tracing::error!(permission_id = %row.id, "invalid method list; permission ignored");
        return None;
    };
    Some(Permission {
        id: row.id,
        name: row.name.clone(),
        methods: MethodSet::from_methods(methods),
        path,
        route_id: row.route_id,
    })
}

fn parse_ip_rule(row: &ip_rule::Model) -> Option<IpRule> {
    match row
        .cidr
        .parse::<IpNet>()
        .or_else(|_| row.cidr.parse::<IpAddr>().map(IpNet::from))
    {
        Ok(net) => Some(IpRule {
            id: row.id,
            net: canonical_net(net),
            allow: row.action == ip_rule::IpRuleAction::Allow,
            expires_at: row.expires_at,
        }),
        Err(_) => {
            tracing::error!(rule_id = %row.id, "invalid CIDR in IP rule; rule ignored");
            None
        }
    }
}

/// Loads routes, roles with their permissions and IP rules from the database, exactly as the
/// cache does (the API's `simulateAccess` reuses it so simulation and enforcement agree).
pub async fn load_snapshot(db: &DatabaseConnection) -> Result<Snapshot, DbErr> {
    let roles = role::Entity::find().all(db).await?;
    let mut permissions: HashMap<Uuid, Vec<Permission>> = HashMap::new();
    for row in permission::Entity::find().all(db).await? {
        if let Some(p) = compile_permission(&row) {
            permissions.entry(row.role_id).or_default().push(p);
        }
    }
    let roles = Roles::new(roles.into_iter().map(|r| Role {
        id: RoleId(r.id),
        name: r.name,
        permissions: permissions.remove(&r.id).unwrap_or_default(),
    }));

    let mut route_rules: HashMap<Uuid, Vec<IpRule>> = HashMap::new();
    let mut global_ip_rules = Vec::new();
    // Expired rules decide nothing (remediation leaves a row per blocked network behind).
    let now = Utc::now();
    for row in ip_rule::Entity::find()
        .filter(
            Condition::any()
                .add(ip_rule::Column::ExpiresAt.is_null())
                .add(ip_rule::Column::ExpiresAt.gt(now)),
        )
        .all(db)
        .await?
    {
        let Some(rule) = parse_ip_rule(&row) else {
            continue;
        };
        match row.route_id {
            Some(route_id) => route_rules.entry(route_id).or_default().push(rule),
            None => global_ip_rules.push(rule),
        }
    }

    let mut routes = Vec::new();
    for row in route::Entity::find()
        .filter(route::Column::Enabled.eq(true))
        .all(db)
        .await?
    {
        let upstream: http::Uri = match row.upstream_url.parse() {
            Ok(uri) => uri,
            Err(_) => {
                tracing::error!(route = %row.name, "invalid upstream URL; route disabled");
                continue;
            }
        };
        // An unknown method is simply not accepted (an empty list accepts nothing).
        let auth_methods = json_strings(&row.auth_methods)
            .unwrap_or_default()
            .iter()
            .filter_map(|m| AuthMethod::parse(m))
            .collect();
        let Some(methods) = methods(&row.methods) else {
            tracing::error!(route = %row.name, "invalid method list; route disabled");
            continue;
        };
        let upstream_credential = match (
            &row.upstream_credential_secret_id,
            &row.upstream_credential_header,
        ) {
            (Some(secret_id), header) => {
                match http::HeaderName::from_bytes(
                    header.as_deref().unwrap_or("authorization").as_bytes(),
                ) {
                    Ok(header) => Some(UpstreamCredential {
                        secret_id: secret_id.clone(),
                        header,
                    }),
                    Err(_) => {
                        // Fail closed: never forward without the credential the route asks for.
                        tracing::error!(route = %row.name, "invalid upstream credential header; route disabled");
                        continue;
                    }
                }
            }
            (None, _) => None,
        };
        routes.push(Route {
            id: row.id,
            name: row.name.clone(),
            host: row.host.as_ref().map(|h| h.to_ascii_lowercase()),
            path_prefix: row.path_prefix.trim_end_matches('/').to_owned(),
            methods,
            upstream,
            strip_prefix: row.strip_prefix,
            auth_methods,
            required_permission: row.required_permission.clone(),
            timeout: row
                .timeout_ms
                .filter(|ms| *ms > 0)
                .map(|ms| Duration::from_millis(ms as u64)),
            ip_rules: route_rules.remove(&row.id).unwrap_or_default(),
            upstream_credential,
            rate_limit: Limit::from_columns(row.rate_limit_per_minute, row.rate_limit_burst),
        });
    }
    let rate_limit_overrides = rate_limit_override::Entity::find()
        .filter(rate_limit_override::Column::ExpiresAt.gt(Utc::now()))
        .all(db)
        .await?
        .iter()
        .filter_map(RateLimitOverride::from_row)
        .collect();
    Ok(Snapshot {
        routes: RouteTable::new(routes),
        roles,
        global_ip_rules,
        rate_limit_overrides,
    })
}

/// Loads a principal with its groups, bindings and active grants, exactly as the cache does;
/// `None` if it does not exist.
pub async fn load_principal(
    db: &DatabaseConnection,
    id: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<PrincipalEntry>, DbErr> {
    let Some(principal) = principal::Entity::find_by_id(id).one(db).await? else {
        return Ok(None);
    };
    let memberships: Vec<Uuid> = group_membership::Entity::find()
        .filter(group_membership::Column::MemberId.eq(id))
        .all(db)
        .await?
        .into_iter()
        .map(|m| m.group_id)
        .collect();
    // A disabled group grants nothing to its members, as for OIDC groups claims.
    let group_ids: Vec<Uuid> = if memberships.is_empty() {
        Vec::new()
    } else {
        principal::Entity::find()
            .filter(principal::Column::Id.is_in(memberships.iter().copied()))
            .filter(principal::Column::Disabled.eq(false))
            .all(db)
            .await?
            .into_iter()
            .map(|group| group.id)
            .collect()
    };
    let mut subjects = group_ids.clone();
    subjects.push(id);
    let bindings = role_binding::Entity::find()
        .filter(role_binding::Column::PrincipalId.is_in(subjects))
        .all(db)
        .await?
        .into_iter()
        .filter_map(|b| {
            let Some(cidrs) = binding_cidrs(&b.conditions) else {
                tracing::error!(binding_id = %b.id, "invalid CIDR condition; binding ignored");
                return None;
            };
            Some(Binding {
                id: BindingId(b.id),
                role_id: RoleId(b.role_id),
                principal_id: PrincipalId(b.principal_id),
                expires_at: b.expires_at,
                cidrs,
            })
        })
        .collect();
    let grants = incident_grant::Entity::find()
        .filter(incident_grant::Column::RequesterId.eq(id))
        .filter(incident_grant::Column::Status.eq(incident_grant::IncidentGrantStatus::Approved))
        .filter(incident_grant::Column::ExpiresAt.gt(now))
        .all(db)
        .await?
        .into_iter()
        .filter_map(|g| {
            Some(Grant {
                id: GrantId(g.id),
                principal_id: PrincipalId(g.requester_id),
                role_id: g.role_id.map(RoleId),
                permissions: grant_permissions(&g.permissions),
                expires_at: g.expires_at?,
                revoked: g.revoked_at.is_some(),
            })
        })
        .collect();
    Ok(Some(PrincipalEntry {
        id: PrincipalId(principal.id),
        disabled: principal.disabled,
        group_ids: group_ids.into_iter().map(PrincipalId).collect(),
        memberships,
        bindings,
        grants,
        loaded_at: Instant::now(),
    }))
}

/// Grant permissions are stored as `[{name, methods, path_glob}]`.
fn grant_permissions(value: &serde_json::Value) -> Vec<Permission> {
    value
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|item| {
                    let path = PathGlob::parse(item.get("path_glob")?.as_str()?).ok()?;
                    Some(Permission {
                        id: Uuid::nil(),
                        name: item.get("name")?.as_str()?.to_owned(),
                        // Absent: any method; unreadable: the permission is dropped.
                        methods: MethodSet::from_methods(match item.get("methods") {
                            Some(listed) => methods(listed)?,
                            None => Vec::new(),
                        }),
                        path,
                        route_id: None,
                    })
                })
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

    #[test]
    fn unreadable_method_lists_are_refused_instead_of_widened_to_any() {
        assert_eq!(
            methods(&json!(["GET", "HEAD"])),
            Some(vec![http::Method::GET, http::Method::HEAD])
        );
        assert_eq!(methods(&json!([])), Some(vec![]), "empty: any method");
        assert_eq!(methods(&serde_json::Value::Null), Some(vec![]));
        // Each of these used to lose its bad entry and, with it, every restriction.
        assert_eq!(methods(&json!(["DELETE "])), None);
        assert_eq!(methods(&json!(["GET", 7])), None);
        assert_eq!(methods(&json!("GET")), None);
    }

    #[test]
    fn unreadable_cidr_conditions_are_refused_instead_of_widened_to_any() {
        let net = |s: &str| s.parse::<ipnet::IpNet>().ok();
        assert_eq!(binding_cidrs(&json!({})), Some(vec![]), "no condition");
        assert_eq!(
            binding_cidrs(&json!({"cidrs": ["10.0.0.0/8", "2001:db8::/32"]})),
            [net("10.0.0.0/8"), net("2001:db8::/32")]
                .into_iter()
                .collect::<Option<Vec<_>>>()
        );
        assert_eq!(binding_cidrs(&json!({"cidrs": ["10.0.0.0/33"]})), None);
        assert_eq!(
            binding_cidrs(&json!({"cidrs": ["10.0.0.0/8", "lan"]})),
            None
        );
        assert_eq!(binding_cidrs(&json!({"cidrs": "10.0.0.0/8"})), None);
    }

    /// A feed row with this id (the id given, as a transaction that took it earlier would).
    async fn feed_row(db: &DatabaseConnection, id: i64) {
        use sea_orm::{ActiveModelTrait, Set};
        policy_change::ActiveModel {
            id: Set(id),
            entity_kind: Set(kind::API_KEY.to_owned()),
            entity_id: Set(Uuid::now_v7().to_string()),
            op: Set(entity::policy_change::PolicyChangeOp::Upsert),
            created_at: Set(Utc::now()),
        }
        .insert(db)
        .await
        .unwrap_or_else(|error| panic!("feed row {id}: {error}"));
    }

    #[tokio::test]
    async fn a_change_committed_below_the_start_cursor_is_still_applied() {
        let db = migration::testing::TestDatabase::sqlite()
            .await
            .migrated()
            .await;
        // Ids 1, 2 and 4 are committed when the cache starts; 3 is still in flight.
        for id in [1, 2, 4] {
            feed_row(&db.conn, id).await;
        }
        let cache = PolicyCache::load(db.conn.clone(), Duration::from_secs(60))
            .await
            .unwrap_or_else(|error| panic!("load: {error}"));
        assert_eq!(cache.sync().await.ok(), Some(0), "nothing new yet");
        feed_row(&db.conn, 3).await;
        assert_eq!(
            cache.sync().await.ok(),
            Some(1),
            "the late change below the cursor is fetched"
        );
        assert_eq!(cache.sync().await.ok(), Some(0), "and applied once");
    }

    /// A feed whose ids jump far ahead (a sequence set forward, a huge rollback) is watched
    /// for at most [`MAX_GAPS`] skipped ids; the rest is covered by reloading all policy. Each
    /// skipped id watched was a bound value of one query, which both databases refuse past
    /// some tens of thousands: the feed stopped for good, and policy went stale.
    #[tokio::test]
    async fn a_jump_in_feed_ids_reloads_policy_instead_of_stopping_the_feed() {
        let db = migration::testing::TestDatabase::sqlite()
            .await
            .migrated()
            .await;
        feed_row(&db.conn, 1).await;
        let cache = PolicyCache::load(db.conn.clone(), Duration::from_secs(60))
            .await
            .unwrap_or_else(|error| panic!("load: {error}"));
        assert!(matches!(
            cache.key("pcl_test_cached", LOOPBACK).await,
            Ok(None)
        ));
        {
            use sea_orm::ActiveModelTrait;
            crate::test_rows::service_account_key(&db.conn, "pcl_test_real", Utc::now())
                .await
                .insert(&db.conn)
                .await
                .unwrap_or_else(|error| panic!("key: {error}"));
        }
        assert!(matches!(
            cache.key("pcl_test_real", LOOPBACK).await,
            Ok(Some(_))
        ));
        // A change that evicts nothing by itself: only the full reload forgets the key above.
        {
            use sea_orm::{ActiveModelTrait, Set};
            policy_change::ActiveModel {
                id: Set(100_000),
                entity_kind: Set(kind::UPSTREAM_CREDENTIAL.to_owned()),
                entity_id: Set(Uuid::now_v7().to_string()),
                op: Set(entity::policy_change::PolicyChangeOp::Upsert),
                created_at: Set(Utc::now()),
            }
            .insert(&db.conn)
            .await
            .unwrap_or_else(|error| panic!("feed row: {error}"));
        }
        assert_eq!(cache.sync().await.ok(), Some(1));
        assert!(lock(&cache.gaps).0.len() <= MAX_GAPS);
        assert!(
            read(&cache.keys).get("pcl_test_cached").is_none(),
            "unknown prefixes are forgotten"
        );
        // A real key stays, due for reload on its next use (which takes no lookup slot).
        let real = read(&cache.keys)
            .get("pcl_test_real")
            .map(|cached| cached.loaded_at.elapsed() >= cache.max_age);
        assert_eq!(real, Some(true));
        feed_row(&db.conn, 100_001).await;
        assert_eq!(cache.sync().await.ok(), Some(1), "the feed goes on");
        assert_eq!(cache.sync().await.ok(), Some(0));
    }

    #[tokio::test]
    async fn an_entry_due_for_reload_is_served_through_an_outage_until_policy_is_stale() {
        let db = migration::testing::TestDatabase::sqlite()
            .await
            .migrated()
            .await;
        async fn load(db: &DatabaseConnection, staleness: Duration) -> PolicyCache {
            let cache = PolicyCache::load(db.clone(), staleness)
                .await
                .unwrap_or_else(|error| panic!("load: {error}"))
                .with_max_age(Duration::from_millis(1));
            assert!(cache.sync().await.is_ok());
            cache
        }
        let within = load(&db.conn, Duration::from_secs(60)).await;
        let stale = load(&db.conn, Duration::ZERO).await;
        for cache in [&within, &stale] {
            assert!(matches!(
                cache.key("pcl_test_known", LOOPBACK).await,
                Ok(None)
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        db.conn.get_sqlite_connection_pool().close().await;
        // Due for reload, the database gone: the cached answer stands while the feed is fresh.
        assert!(matches!(
            within.key("pcl_test_known", LOOPBACK).await,
            Ok(None)
        ));
        // Never cached: fails closed.
        assert!(matches!(
            within.key("pcl_test_unknown", LOOPBACK).await,
            Err(CacheError::Database(_))
        ));
        // Past the allowed staleness: fails closed too.
        assert!(matches!(
            stale.key("pcl_test_known", LOOPBACK).await,
            Err(CacheError::Database(_))
        ));
    }

    /// A cache over a fresh SQLite database whose client subnets may each look up `budget`
    /// unknown credentials.
    async fn budgeted_cache(budget: u32) -> (migration::testing::TestDatabase, PolicyCache) {
        let db = migration::testing::TestDatabase::sqlite()
            .await
            .migrated()
            .await;
        let cache = PolicyCache::load(db.conn.clone(), Duration::from_secs(60))
            .await
            .unwrap_or_else(|error| panic!("load: {error}"))
            .with_lookups_per_client(Limit::new(1, budget));
        (db, cache)
    }

    /// Made-up keys (well formed: the checksum is public) cost a query each, so each client
    /// subnet has a budget of lookups; prefixes already cached, known or not, cost nothing.
    #[tokio::test]
    async fn uncached_lookups_are_budgeted_per_client_subnet() {
        let (db, cache) = budgeted_cache(3).await;
        let v6 =
            |last: u16| IpAddr::V6(std::net::Ipv6Addr::new(0x2001, 0xdb8, 0, 1, 0, 0, 0, last));
        for i in 0..3 {
            let prefix = format!("pcl_test_made_up_{i}");
            assert!(matches!(cache.key(&prefix, v6(1)).await, Ok(None)));
        }
        // Another address of the same /64 shares the budget; a grant token counts too.
        assert!(matches!(
            cache.key("pcl_test_made_up_3", v6(2)).await,
            Err(CacheError::LookupsLimited(decision)) if !decision.allowed
        ));
        assert!(matches!(
            cache.grant_token("pig_test_made_up", v6(3)).await,
            Err(CacheError::LookupsLimited(_))
        ));
        // A prefix already looked up is answered from the cache.
        assert!(matches!(
            cache.key("pcl_test_made_up_0", v6(1)).await,
            Ok(None)
        ));
        // Real keys found do not spend it: a NAT with many services is never refused.
        use sea_orm::ActiveModelTrait;
        let nat = IpAddr::V4(std::net::Ipv4Addr::new(198, 51, 100, 7));
        for i in 0..5 {
            let prefix = format!("pcl_test_real_{i}");
            crate::test_rows::service_account_key(&db.conn, &prefix, Utc::now())
                .await
                .insert(&db.conn)
                .await
                .unwrap_or_else(|error| panic!("key: {error}"));
            assert!(
                matches!(cache.key(&prefix, nat).await, Ok(Some(_))),
                "{prefix}"
            );
        }
        // Many made up at once from one subnet: all pass the first check before any is
        // charged, but each is checked again when its turn comes, so only the lookups already
        // running can overspend.
        let burst = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 50));
        let lookups = (0..50).map(|i| {
            let prefix = format!("pcl_test_burst_{i}");
            let cache = &cache;
            async move { cache.key(&prefix, burst).await }
        });
        let answered = futures_util::future::join_all(lookups)
            .await
            .into_iter()
            .filter(|answer| matches!(answer, Ok(None)))
            .count();
        assert!(
            (3..=3 + CONCURRENT_LOOKUPS).contains(&answered),
            "{answered} lookups ran for a budget of 3"
        );
        // Other networks have budgets of their own.
        assert!(matches!(
            cache.key("pcl_test_made_up_3", LOOPBACK).await,
            Ok(None)
        ));
    }

    /// With every lookup slot taken, an uncached key waits [`LOOKUP_WAIT`] for one and is then
    /// refused (429 with `Retry-After`), without spending its subnet's budget; a slot freed
    /// within the wait is used.
    #[tokio::test]
    async fn an_uncached_lookup_waits_for_a_slot_then_is_refused() {
        let (_db, cache) = budgeted_cache(1).await;
        let busy = cache
            .concurrent_lookups
            .acquire_many(CONCURRENT_LOOKUPS as u32)
            .await
            .unwrap_or_else(|error| panic!("slots: {error}"));
        let started = tokio::time::Instant::now();
        match cache.key("pcl_test_waited_0", LOOPBACK).await {
            Err(CacheError::LookupsLimited(decision)) => {
                assert!(!decision.allowed);
                assert_eq!(decision.retry_after, Some(LOOKUP_WAIT));
                assert_eq!(decision.limit, CONCURRENT_LOOKUPS as u32);
            }
            other => panic!("expected a refusal after the wait, got {other:?}"),
        }
        assert!(started.elapsed() >= LOOKUP_WAIT, "refused before the wait");
        // A slot freed while a lookup waits is taken, and the refusal above spent nothing: the
        // subnet's budget of one lookup is still there for it.
        let (answer, ()) = tokio::join!(cache.key("pcl_test_waited_1", LOOPBACK), async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            drop(busy);
        });
        assert!(matches!(answer, Ok(None)), "{answer:?}");
        // That one did find nothing, so now the budget is spent.
        assert!(matches!(
            cache.key("pcl_test_waited_2", LOOPBACK).await,
            Err(CacheError::LookupsLimited(_))
        ));
    }

    /// Unknown prefixes are bounded on their own: real keys cached do not count against them,
    /// and making room forgets unknown prefixes only.
    #[test]
    fn unknown_prefixes_are_counted_apart_from_real_keys() {
        let hash = TokenHash::from_hex(&"00".repeat(32)).unwrap_or_else(|_| panic!("hash"));
        let cached = |known: bool| CachedKey {
            entry: known.then(|| {
                let id = Uuid::now_v7();
                Arc::new(KeyEntry {
                    id,
                    principal_id: id,
                    hash,
                    expires_at: None,
                    revoked: false,
                    suspended: false,
                    has_quota: false,
                    rate_limit: None,
                    budget_id: id,
                })
            }),
            loaded_at: Instant::now(),
        };
        let mut keys = KeyMap::default();
        for i in 0..MAX_NEGATIVE_KEYS + 10 {
            keys.insert(format!("real_{i}"), cached(true));
        }
        for i in 0..MAX_NEGATIVE_KEYS {
            keys.insert(format!("unknown_{i}"), cached(false));
        }
        assert_eq!(keys.unknown, MAX_NEGATIVE_KEYS);
        assert_eq!(
            keys.by_prefix.len(),
            2 * MAX_NEGATIVE_KEYS + 10,
            "all remembered"
        );
        // Replacing an unknown prefix by a real key, or by another answer, keeps the count.
        keys.insert("unknown_0".into(), cached(true));
        keys.insert("unknown_1".into(), cached(false));
        assert_eq!(keys.unknown, MAX_NEGATIVE_KEYS - 1);
        keys.insert("one_more".into(), cached(false));
        assert_eq!(keys.unknown, MAX_NEGATIVE_KEYS);
        // Full: the next unknown prefix makes room by forgetting unknown ones, not real keys.
        keys.insert("over".into(), cached(false));
        assert_eq!(keys.unknown, 1);
        assert_eq!(keys.by_prefix.len(), MAX_NEGATIVE_KEYS + 10 + 1 + 1);
    }

    /// The feed is the usual way changes arrive; an entry reloaded for its age is the
    /// backstop. When that reload finds the key different, open tunnels must hear of it.
    #[tokio::test]
    async fn a_key_reloaded_for_its_age_moves_the_change_counter_only_when_it_changed() {
        use sea_orm::{ActiveModelTrait, Set};
        let db = migration::testing::TestDatabase::sqlite()
            .await
            .migrated()
            .await;
        let now = Utc::now();
        let key = crate::test_rows::service_account_key(&db.conn, "pcl_test_aged", now)
            .await
            .insert(&db.conn)
            .await
            .expect("key");
        let cache = PolicyCache::load(db.conn.clone(), Duration::from_secs(60))
            .await
            .expect("load")
            .with_max_age(Duration::from_millis(1));
        let changes = cache.subscribe();
        let revoked = |entry: Option<Arc<KeyEntry>>| entry.map(|e| e.revoked);
        assert_eq!(
            revoked(cache.key("pcl_test_aged", LOOPBACK).await.ok().flatten()),
            Some(false)
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(
            revoked(cache.key("pcl_test_aged", LOOPBACK).await.ok().flatten()),
            Some(false)
        );
        assert!(!changes.has_changed().unwrap_or(true), "reloaded the same");

        // Revoked behind the feed's back.
        let mut row: entity::api_key::ActiveModel = key.into();
        row.revoked_at = Set(Some(now));
        row.update(&db.conn).await.expect("revoke");
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert_eq!(
            revoked(cache.key("pcl_test_aged", LOOPBACK).await.ok().flatten()),
            Some(true)
        );
        assert!(
            changes.has_changed().unwrap_or(false),
            "the revocation went unheard"
        );
    }

    #[test]
    fn grant_permissions_with_unreadable_methods_are_dropped() {
        let permissions = grant_permissions(&json!([
            {"name": "read", "methods": ["GET"], "path_glob": "/a/**"},
            {"name": "any", "path_glob": "/b/**"},
            {"name": "broken", "methods": ["GET", "NOT A METHOD"], "path_glob": "/**"},
        ]));
        let names: Vec<&str> = permissions.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["read", "any"]);
    }
}
