//! Detectors: turn the stream of audited requests into security events that the remediation
//! engine (in `api`) acts on. The proxy itself never remediates.
//!
//! * `failed_auth_burst` — ≥ N authentication failures from one client (an IPv4 address or an
//!   IPv6 /64, see [`client_subnet`]) within the window.
//! * `failed_auth_burst_key` — ≥ N wrong secrets presented for one existing key's prefix.
//! * `key_new_network` — a key used from a network (/24 for IPv4, /48 for IPv6) it has never
//!   been used from before (history: this instance's memory of the last 24 h, at most 256
//!   networks per key, backed by the audit trail).
//! * `traffic_spike` — a principal's requests in the current minute exceed `spike_factor` times
//!   its own moving average (and at least `spike_min_requests`).
//! * `revoked_key_used` / `expired_key_used` — a dead key presented again.
//!
//! Counting happens in memory on the request path (a mutex-guarded map, no I/O); events and the
//! history lookups for new networks go to a background task. Each event is emitted once per
//! window per subject (its `fingerprint`), so a sustained attack produces one event per window,
//! not one per request.

use std::{
    collections::{HashMap, HashSet},
    net::IpAddr,
    sync::Mutex,
    time::{Duration, Instant},
};

use chrono::Utc;
use entity::{
    audit_event::{self, AuditDecision},
    security_event::{self, SecurityEventStatus, Severity},
};
use ipnet::IpNet;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder,
    QuerySelect, Set,
};
use serde::Deserialize;
use serde_json::json;
use tokio::{sync::mpsc, task::JoinHandle};
use uuid::Uuid;

use crate::audit::AuditRecord;

/// Detector thresholds (`PORTCULLIS_PROXY__DETECTORS__*`).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DetectorConfig {
    /// Sliding window for the failure bursts, in seconds.
    pub window_secs: u64,
    /// Authentication failures from one IP within the window that make a burst.
    pub failed_auth_per_ip: u32,
    /// Wrong secrets for one key within the window that make a burst.
    pub failed_auth_per_key: u32,
    /// Report keys used from a network they never used before.
    pub new_network: bool,
    /// A minute's requests above this multiple of the principal's average is a spike.
    pub spike_factor: f64,
    /// ...and only when the minute has at least this many requests.
    pub spike_min_requests: u32,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            window_secs: 60,
            failed_auth_per_ip: 20,
            failed_auth_per_key: 10,
            new_network: true,
            spike_factor: 5.0,
            spike_min_requests: 100,
        }
    }
}

/// A security event about to be stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Detection {
    /// `failed_auth_burst`, `key_new_network`, ...
    pub kind: &'static str,
    /// How bad.
    pub severity: Severity,
    /// Subject principal.
    pub principal_id: Option<Uuid>,
    /// Subject key.
    pub api_key_id: Option<Uuid>,
    /// Client address.
    pub client_ip: Option<String>,
    /// Route involved.
    pub route_id: Option<Uuid>,
    /// Dedupe key: one event per fingerprint per window.
    pub fingerprint: String,
    /// Evidence.
    pub detail: serde_json::Value,
}

/// Occurrences in a sliding window, estimated from two fixed windows: the current one and
/// the one before it, weighted by how much of it is still less than a window ago. Counting
/// only the current fixed window would miss a burst split across its boundary: up to twice
/// the threshold, less two, in a few seconds.
#[derive(Default)]
struct Counter {
    /// Start of the current fixed window.
    window_start: Option<Instant>,
    count: u32,
    /// The count of the fixed window before the current one.
    previous: u32,
    /// When this counter last fired: at most once per window.
    reported_at: Option<Instant>,
}

impl Counter {
    /// Counts one occurrence; when the estimate reaches `threshold`, and the counter did not
    /// fire within the last window, returns the estimate (what the event reports).
    fn hit(&mut self, now: Instant, window: Duration, threshold: u32) -> Option<u32> {
        match self
            .window_start
            .map(|start| (start, now.duration_since(start)))
        {
            Some((_, into)) if into < window => {}
            Some((start, into)) if into < window.saturating_mul(2) => {
                self.previous = self.count;
                self.count = 0;
                self.window_start = Some(start.checked_add(window).unwrap_or(now));
            }
            _ => {
                self.previous = 0;
                self.count = 0;
                self.window_start = Some(now);
            }
        }
        self.count = self.count.saturating_add(1);
        let into = self
            .window_start
            .map_or(0.0, |start| now.duration_since(start).as_secs_f64());
        let still_recent = (1.0 - into / window.as_secs_f64()).clamp(0.0, 1.0);
        let estimate = (f64::from(self.previous) * still_recent).floor() as u32 + self.count;
        if estimate < threshold
            || self
                .reported_at
                .is_some_and(|at| now.duration_since(at) < window)
        {
            return None;
        }
        self.reported_at = Some(now);
        Some(estimate)
    }
}

#[derive(Default)]
struct Traffic {
    minute_start: Option<Instant>,
    count: u32,
    /// Exponential moving average of requests per minute (None until one full minute passed).
    average: Option<f64>,
    reported: bool,
}

#[derive(Default)]
struct State {
    /// Per [`client_subnet`]: rotating addresses inside an IPv6 /64 evades nothing.
    failures_by_ip: HashMap<IpNet, Counter>,
    failures_by_key: HashMap<Uuid, Counter>,
    dead_key_reported: HashMap<Uuid, Instant>,
    traffic: HashMap<Uuid, Traffic>,
    networks: KnownNetworks,
    last_sweep: Option<Instant>,
}

/// How long a key's network is remembered after its last use.
const NETWORK_MEMORY: Duration = Duration::from_secs(24 * 3_600);
/// The most networks remembered per key; beyond it the least recently seen half is forgotten.
const MAX_NETWORKS_PER_KEY: usize = 256;

/// The networks each key was seen from, bounded in time ([`NETWORK_MEMORY`]) and in number
/// ([`MAX_NETWORKS_PER_KEY`]). Forgetting a network costs one history lookup when it shows up
/// again (the audit trail decides whether it is new), never a false alarm; unbounded, a key
/// used from ever-new addresses (IPv6 offers plenty) grew this map for as long as the process
/// ran.
#[derive(Debug, Default)]
struct KnownNetworks(HashMap<Uuid, HashMap<IpNet, Instant>>);

impl KnownNetworks {
    /// Records that `key` was used from `net`; true when `net` was not remembered for it.
    fn saw(&mut self, key: Uuid, net: IpNet, now: Instant) -> bool {
        let nets = self.0.entry(key).or_default();
        let new = nets.insert(net, now).is_none();
        if nets.len() > MAX_NETWORKS_PER_KEY {
            // Keep the most recently seen half: one sort per MAX / 2 new networks.
            let mut recent: Vec<(IpNet, Instant)> = nets.drain().collect();
            recent.sort_unstable_by_key(|&(_, seen)| std::cmp::Reverse(seen));
            recent.truncate(MAX_NETWORKS_PER_KEY / 2);
            nets.extend(recent);
        }
        new
    }

    /// Forgets that `key` was seen from `net`.
    fn forget(&mut self, key: Uuid, net: IpNet) {
        if let Some(nets) = self.0.get_mut(&key) {
            nets.remove(&net);
        }
    }

    /// Forgets networks not seen for [`NETWORK_MEMORY`], and keys left with none.
    fn sweep(&mut self, now: Instant) {
        self.0.retain(|_, nets| {
            nets.retain(|_, seen| now.duration_since(*seen) < NETWORK_MEMORY);
            !nets.is_empty()
        });
    }
}

/// Work for the background task.
enum Job {
    Store(Detection),
    /// Key used from a network not in memory: check history, maybe emit.
    CheckNetwork {
        key_id: Uuid,
        /// When the request began: only history before it counts (its own row, or a later
        /// one from the same network, may already be stored when the check runs).
        before: chrono::DateTime<Utc>,
        principal_id: Option<Uuid>,
        ip: IpAddr,
        net: IpNet,
        route_id: Option<Uuid>,
    },
}

/// The detectors of one proxy instance.
pub struct Detectors {
    config: DetectorConfig,
    state: Mutex<State>,
    jobs: mpsc::Sender<Job>,
}

/// How many detector jobs may wait; beyond that, observations are dropped and counted
/// (detection is best effort under overload; the audit trail is not).
const JOB_QUEUE: usize = 4_096;

impl Detectors {
    /// Starts the background task that stores events; it drains and ends once `stop` is set.
    pub fn spawn(
        db: DatabaseConnection,
        config: DetectorConfig,
        stop: tokio::sync::watch::Receiver<bool>,
    ) -> (Self, JoinHandle<()>) {
        Self::spawn_with_patience(db, config, stop, SHUTDOWN_PATIENCE)
    }

    /// [`Detectors::spawn`], with another [`SHUTDOWN_PATIENCE`] (tests).
    fn spawn_with_patience(
        db: DatabaseConnection,
        config: DetectorConfig,
        stop: tokio::sync::watch::Receiver<bool>,
        patience: Duration,
    ) -> (Self, JoinHandle<()>) {
        let (jobs, rx) = mpsc::channel(JOB_QUEUE);
        let task = tokio::spawn(run(db, rx, config.new_network, stop, patience));
        (
            Self {
                config,
                state: Mutex::default(),
                jobs,
            },
            task,
        )
    }

    /// Observes one finished request (its audit record). Cheap; never blocks on I/O.
    pub fn observe(&self, record: &AuditRecord) {
        let now = Instant::now();
        let window = Duration::from_secs(self.config.window_secs.max(1));
        let mut detections = Vec::new();
        let mut network_check = None;
        {
            let mut state = self
                .state
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            sweep(&mut state, now, window);
            let ip = record
                .client_ip
                .as_deref()
                .and_then(|ip| ip.parse::<IpAddr>().ok());
            let auth_failure = record.status == Some(401);
            if auth_failure && let Some(ip) = ip {
                let subnet = client_subnet(ip);
                if let Some(counter) = ip_counter(&mut state, subnet)
                    && let Some(failures) = counter.hit(now, window, self.config.failed_auth_per_ip)
                {
                    detections.push(Detection {
                        kind: "failed_auth_burst",
                        severity: Severity::High,
                        principal_id: None,
                        api_key_id: None,
                        // The address that crossed the threshold; remediation blocks its
                        // `client_subnet`, the unit counted here.
                        client_ip: Some(ip.to_string()),
                        route_id: record.route_id,
                        fingerprint: format!("failed_auth_burst:ip:{subnet}"),
                        detail: json!({
                            "failures": failures,
                            "window_secs": window.as_secs(),
                            "network": subnet.to_string(),
                        }),
                    });
                }
            }
            if let Some(key_id) = record.api_key_id {
                match record.reason.as_str() {
                    "wrong_secret" => {
                        let counter = state.failures_by_key.entry(key_id).or_default();
                        if let Some(failures) =
                            counter.hit(now, window, self.config.failed_auth_per_key)
                        {
                            detections.push(Detection {
                                kind: "failed_auth_burst_key",
                                severity: Severity::High,
                                principal_id: record.principal_id,
                                api_key_id: Some(key_id),
                                client_ip: record.client_ip.clone(),
                                route_id: record.route_id,
                                fingerprint: format!("failed_auth_burst:key:{key_id}"),
                                detail: json!({ "failures": failures, "window_secs": window.as_secs() }),
                            });
                        }
                    }
                    reason @ ("key_revoked" | "key_expired") => {
                        let recent = state
                            .dead_key_reported
                            .get(&key_id)
                            .is_some_and(|at| now.duration_since(*at) < window);
                        if !recent {
                            state.dead_key_reported.insert(key_id, now);
                            let kind = if reason == "key_revoked" {
                                "revoked_key_used"
                            } else {
                                "expired_key_used"
                            };
                            detections.push(Detection {
                                kind,
                                severity: if kind == "revoked_key_used" {
                                    Severity::High
                                } else {
                                    Severity::Medium
                                },
                                principal_id: record.principal_id,
                                api_key_id: Some(key_id),
                                client_ip: record.client_ip.clone(),
                                route_id: record.route_id,
                                fingerprint: format!("{kind}:{key_id}"),
                                detail: json!({ "reason": reason }),
                            });
                        }
                    }
                    _ => {}
                }
                if self.config.new_network
                    && record.decision == Some(AuditDecision::Allow)
                    && let Some(ip) = ip
                {
                    let net = network_of(ip);
                    if state.networks.saw(key_id, net, now) {
                        network_check = Some(Job::CheckNetwork {
                            key_id,
                            before: record.occurred_at,
                            principal_id: record.principal_id,
                            ip,
                            net,
                            route_id: record.route_id,
                        });
                    }
                }
            }
            if let Some(principal) = record.principal_id
                && record.decision == Some(AuditDecision::Allow)
                && let Some(detection) = self.count_traffic(&mut state, principal, now, record)
            {
                detections.push(detection);
            }
        }
        for job in detections.into_iter().map(Job::Store).chain(network_check) {
            if let Err(dropped) = self.jobs.try_send(job) {
                metrics::counter!("portcullis_detector_jobs_dropped_total").increment(1);
                // Unchecked, the network must not count as known: its next use checks again.
                if let Job::CheckNetwork { key_id, net, .. } = dropped.into_inner() {
                    self.state
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .networks
                        .forget(key_id, net);
                }
            }
        }
    }

    fn count_traffic(
        &self,
        state: &mut State,
        principal: Uuid,
        now: Instant,
        record: &AuditRecord,
    ) -> Option<Detection> {
        let traffic = state.traffic.entry(principal).or_default();
        let minute = Duration::from_secs(60);
        match traffic.minute_start {
            Some(start) if now.duration_since(start) < minute => {}
            Some(start) => {
                // Close the finished minute(s) into the average; idle minutes count as zero.
                let idle_minutes = (now.duration_since(start).as_secs() / 60).saturating_sub(1);
                let mut average = traffic.average.map_or(f64::from(traffic.count), |a| {
                    0.8 * a + 0.2 * f64::from(traffic.count)
                });
                for _ in 0..idle_minutes.min(30) {
                    average *= 0.8;
                }
                *traffic = Traffic {
                    minute_start: Some(now),
                    count: 0,
                    average: Some(average),
                    reported: false,
                };
            }
            None => traffic.minute_start = Some(now),
        }
        traffic.count += 1;
        let average = traffic.average?;
        let threshold =
            (average * self.config.spike_factor).max(f64::from(self.config.spike_min_requests));
        if f64::from(traffic.count) > threshold && !traffic.reported {
            traffic.reported = true;
            return Some(Detection {
                kind: "traffic_spike",
                severity: Severity::Medium,
                principal_id: Some(principal),
                api_key_id: record.api_key_id,
                client_ip: record.client_ip.clone(),
                route_id: record.route_id,
                fingerprint: format!("traffic_spike:principal:{principal}"),
                detail: json!({ "requests_this_minute": traffic.count, "average_per_minute": average }),
            });
        }
        None
    }
}

/// The network a client address belongs to for "new network" purposes.
pub fn network_of(ip: IpAddr) -> IpNet {
    prefix_of(ip, 24, 48)
}

/// What one client controls: an IPv4 address, or the /64 an IPv6 address is in (one
/// subscriber's network, inside which addresses rotate freely). Failed-authentication bursts
/// are counted, and remediation blocks addresses, per subnet, so that rotating through a /64
/// evades neither.
pub fn client_subnet(ip: IpAddr) -> IpNet {
    prefix_of(ip, 32, 64)
}

fn prefix_of(ip: IpAddr, v4: u8, v6: u8) -> IpNet {
    let prefix = match ip {
        IpAddr::V4(_) => v4,
        IpAddr::V6(_) => v6,
    };
    IpNet::new(ip, prefix)
        .map(|n| n.trunc())
        .unwrap_or_else(|_| IpNet::from(ip))
}

/// The most subnets whose failed authentications are counted at once (≈ 100 bytes each).
/// Beyond that (a spray from more networks than this within two windows) new subnets are not
/// counted until old ones age out: memory stays bounded whatever the attack's rate.
const MAX_IP_COUNTERS: usize = 100_000;

/// The failure counter of `subnet`, or `None` when the table is full and it has none.
fn ip_counter(state: &mut State, subnet: IpNet) -> Option<&mut Counter> {
    let full = state.failures_by_ip.len() >= MAX_IP_COUNTERS;
    if full && !state.failures_by_ip.contains_key(&subnet) {
        metrics::counter!("portcullis_detector_ip_counters_full_total").increment(1);
        return None;
    }
    Some(state.failures_by_ip.entry(subnet).or_default())
}

/// Forgets old counters so memory stays bounded by recent activity.
fn sweep(state: &mut State, now: Instant, window: Duration) {
    if state
        .last_sweep
        .is_some_and(|at| now.duration_since(at) < window)
    {
        return;
    }
    state.last_sweep = Some(now);
    let stale = |start: Option<Instant>| start.is_none_or(|s| now.duration_since(s) >= window * 2);
    state.failures_by_ip.retain(|_, c| !stale(c.window_start));
    state.failures_by_key.retain(|_, c| !stale(c.window_start));
    state
        .dead_key_reported
        .retain(|_, at| now.duration_since(*at) < window * 2);
    state.traffic.retain(|_, t| {
        t.minute_start
            .is_some_and(|s| now.duration_since(s) < Duration::from_secs(3_600))
    });
    state.networks.sweep(now);
}

async fn run(
    db: DatabaseConnection,
    mut jobs: mpsc::Receiver<Job>,
    new_network: bool,
    mut stop: tokio::sync::watch::Receiver<bool>,
    patience: Duration,
) {
    // Once stopping, the database has until then to take what is queued; after it, what is
    // left goes to the log (a process told to stop must not wait on a failing database).
    let mut give_up_at: Option<tokio::time::Instant> = None;
    loop {
        let job = tokio::select! {
            job = jobs.recv() => job,
            () = async { let _ = stop.wait_for(|s| *s).await; } => {
                // Stop taking new work; what is queued is still stored below.
                jobs.close();
                jobs.recv().await
            }
        };
        let Some(job) = job else { return };
        if *stop.borrow() || stop.has_changed().is_err() {
            let deadline =
                *give_up_at.get_or_insert_with(|| tokio::time::Instant::now() + patience);
            if tokio::time::Instant::now() >= deadline {
                if let Job::Store(detection) = job {
                    log_unstored(&detection, "the proxy stopped before it could be stored");
                }
                continue;
            }
        }
        let detection = match job {
            Job::Store(detection) => Some(detection),
            Job::CheckNetwork {
                key_id,
                before,
                principal_id,
                ip,
                net,
                route_id,
            } if new_network => match retried(&stop, "new-network check", || {
                seen_before(&db, key_id, net, before)
            })
            .await
            {
                Ok(History::Seen) | Ok(History::FirstUse) => None,
                Ok(History::NewNetwork(known)) => Some(Detection {
                    kind: "key_new_network",
                    severity: Severity::Medium,
                    principal_id,
                    api_key_id: Some(key_id),
                    client_ip: Some(ip.to_string()),
                    route_id,
                    fingerprint: format!("key_new_network:{key_id}:{net}"),
                    detail: json!({ "network": net.to_string(), "known_networks": known }),
                }),
                Err(error) => {
                    tracing::error!(%error, %key_id, %net, "new-network check failed at shutdown");
                    None
                }
            },
            Job::CheckNetwork { .. } => None,
        };
        if let Some(detection) = detection
            && let Err(error) = retried(&stop, "security event", || store(&db, &detection)).await
        {
            // Only at shutdown, with the database still failing: the log keeps the event.
            log_unstored(&detection, &error.to_string());
        }
    }
}

/// How long a stopping detector task keeps storing what is queued before it logs the rest.
const SHUTDOWN_PATIENCE: Duration = Duration::from_secs(10);

fn log_unstored(detection: &Detection, why: &str) {
    tracing::error!(
        why,
        kind = detection.kind,
        fingerprint = %detection.fingerprint,
        detail = %detection.detail,
        "security event not stored; logged instead"
    );
}

/// Runs `attempt` until it succeeds, backing off from 100 ms to 5 s, so that a database
/// outage delays detections instead of losing them (meanwhile new jobs queue, and beyond
/// [`JOB_QUEUE`] are dropped and counted). Once `stop` is set, a failure is final.
async fn retried<T, Fut>(
    stop: &tokio::sync::watch::Receiver<bool>,
    what: &'static str,
    mut attempt: impl FnMut() -> Fut,
) -> Result<T, sea_orm::DbErr>
where
    Fut: Future<Output = Result<T, sea_orm::DbErr>>,
{
    let mut delay = Duration::from_millis(100);
    loop {
        match attempt().await {
            Ok(done) => return Ok(done),
            Err(error) if *stop.borrow() || stop.has_changed().is_err() => return Err(error),
            Err(error) => {
                tracing::warn!(%error, what, "detector database work failed; retrying");
                metrics::counter!("portcullis_detector_retries_total").increment(1);
                let mut stop = stop.clone();
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    gone = async { stop.wait_for(|stopped| *stopped).await.is_err() } => {
                        // A dropped sender reads as stopped too, but must not turn this
                        // into a loop without a pause.
                        if gone {
                            tokio::time::sleep(delay).await;
                        }
                    }
                }
                delay = (delay * 2).min(Duration::from_secs(5));
            }
        }
    }
}

enum History {
    Seen,
    FirstUse,
    NewNetwork(Vec<String>),
}

/// Looks at the key's recent allowed requests that began before `before` for the network.
async fn seen_before(
    db: &DatabaseConnection,
    key_id: Uuid,
    net: IpNet,
    before: chrono::DateTime<Utc>,
) -> Result<History, sea_orm::DbErr> {
    let recent: Vec<Option<String>> = audit_event::Entity::find()
        .select_only()
        .column(audit_event::Column::ClientIp)
        .filter(audit_event::Column::ApiKeyId.eq(key_id))
        .filter(audit_event::Column::Decision.eq(AuditDecision::Allow))
        .filter(audit_event::Column::OccurredAt.lt(before))
        .order_by_desc(audit_event::Column::Id)
        .limit(1_000)
        .into_tuple()
        .all(db)
        .await?;
    let networks: HashSet<IpNet> = recent
        .iter()
        .flatten()
        .filter_map(|ip| ip.parse::<IpAddr>().ok())
        .map(network_of)
        .collect();
    Ok(if networks.is_empty() {
        History::FirstUse
    } else if networks.contains(&net) {
        History::Seen
    } else {
        History::NewNetwork(networks.iter().map(ToString::to_string).collect())
    })
}

async fn store(db: &DatabaseConnection, detection: &Detection) -> Result<(), sea_orm::DbErr> {
    let now = Utc::now();
    security_event::ActiveModel {
        id: Set(Uuid::now_v7()),
        kind: Set(detection.kind.to_owned()),
        severity: Set(detection.severity),
        occurred_at: Set(now),
        principal_id: Set(detection.principal_id),
        api_key_id: Set(detection.api_key_id),
        client_ip: Set(detection.client_ip.clone()),
        route_id: Set(detection.route_id),
        fingerprint: Set(detection.fingerprint.clone()),
        detail: Set(detection.detail.clone()),
        status: Set(SecurityEventStatus::New),
        handled_by_run_id: Set(None),
        created_at: Set(now),
    }
    .insert(db)
    .await?;
    metrics::counter!("portcullis_security_events_total", "kind" => detection.kind).increment(1);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Once stopping, the task stores what is queued only within its patience: against a
    /// database that keeps every write waiting, the rest is logged instead, so the process
    /// exits after one write's wait, not after one per queued event.
    #[tokio::test]
    async fn a_stopping_detector_task_logs_what_it_cannot_store_within_its_patience() {
        let db = migration::testing::TestDatabase::sqlite()
            .await
            .migrated()
            .await;
        // Every write now waits out SQLite's busy timeout, then fails.
        let lock = db.hold_write_lock().await;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let config = DetectorConfig {
            failed_auth_per_ip: 1,
            ..DetectorConfig::default()
        };
        let (detectors, task) = Detectors::spawn_with_patience(
            db.conn.clone(),
            config,
            stop_rx,
            Duration::from_millis(200),
        );
        // Five addresses, one failure each: five bursts queued before the task first runs.
        for last in 1..=5u8 {
            let mut record =
                AuditRecord::new(audit_event::AuditEventKind::ProxyRequest, "unknown_key");
            record.status = Some(401);
            record.client_ip = Some(format!("192.0.2.{last}"));
            detectors.observe(&record);
        }
        let _ = stop_tx.send(true);
        let started = tokio::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .unwrap_or_else(|_| panic!("the task did not end"))
            .unwrap_or_else(|error| panic!("task: {error}"));
        let took = started.elapsed();
        // One write waited out the busy timeout (5 s); five would have taken 25 s.
        assert!(took < Duration::from_secs(12), "stopping took {took:?}");
        drop(lock);
        let stored = entity::security_event::Entity::find()
            .all(&db.conn)
            .await
            .unwrap_or_else(|error| panic!("read: {error}"));
        assert!(stored.is_empty(), "{stored:?}");
    }

    #[test]
    fn a_counter_fires_once_per_window_at_the_threshold() {
        let start = Instant::now();
        let window = Duration::from_secs(60);
        let mut counter = Counter::default();
        let fired: Vec<Option<u32>> = (0..25).map(|_| counter.hit(start, window, 20)).collect();
        assert_eq!(fired.iter().flatten().count(), 1);
        assert_eq!(fired[19], Some(20));
        // Two windows later the old failures no longer count.
        assert_eq!(counter.hit(start + window * 2, window, 20), None);
        assert_eq!((counter.count, counter.previous), (1, 0));
    }

    #[test]
    fn a_burst_split_across_the_boundary_of_two_windows_is_one_burst() {
        let start = Instant::now();
        let window = Duration::from_secs(60);
        let mut counter = Counter::default();
        // The window starts with an unrelated failure; the burst comes at its very end.
        assert_eq!(counter.hit(start, window, 20), None);
        let late = start + Duration::from_secs(59);
        for _ in 0..10 {
            assert_eq!(counter.hit(late, window, 20), None);
        }
        // Ten more two seconds later, in the next fixed window: 20 within two seconds.
        let next = start + Duration::from_secs(61);
        let fired: Vec<Option<u32>> = (0..10).map(|_| counter.hit(next, window, 20)).collect();
        assert!(fired.iter().flatten().count() == 1, "{fired:?}");
        // A steady trickle below the threshold never fires.
        let mut trickle = Counter::default();
        for second in 0..600 {
            let at = start + Duration::from_secs(second);
            assert_eq!(trickle.hit(at, window, 120), None, "at {second} s");
        }
    }

    #[test]
    fn known_networks_are_bounded_per_key_and_in_time() {
        let start = Instant::now();
        let key = Uuid::now_v7();
        let mut known = KnownNetworks::default();
        let net = |i: u32| network_of(IpAddr::from(std::net::Ipv4Addr::from(i << 8)));
        assert!(known.saw(key, net(1), start));
        assert!(!known.saw(key, net(1), start), "remembered");
        // A key used from ever-new networks: memory stays bounded, the newest are kept.
        for i in 2..=10_000u32 {
            let at = start + Duration::from_millis(u64::from(i));
            assert!(known.saw(key, net(i), at));
            assert!(known.0[&key].len() <= MAX_NETWORKS_PER_KEY);
        }
        assert!(known.0[&key].contains_key(&net(10_000)));
        assert!(
            known.saw(key, net(1), start + Duration::from_secs(11)),
            "a forgotten network is checked against the history again"
        );
        // Networks not seen for a day are forgotten, and so is a key left with none.
        let other = Uuid::now_v7();
        known.saw(other, net(7), start + Duration::from_secs(20));
        known.sweep(start + NETWORK_MEMORY + Duration::from_secs(12));
        assert!(known.0.contains_key(&other));
        assert!(!known.0.contains_key(&key));
        known.sweep(start + NETWORK_MEMORY + Duration::from_secs(21));
        assert!(known.0.is_empty());
    }

    #[test]
    fn failure_counters_per_subnet_are_bounded_but_known_subnets_keep_counting() {
        let mut state = State::default();
        let subnet = |i: u32| client_subnet(IpAddr::from(std::net::Ipv4Addr::from(i)));
        for i in 0..MAX_IP_COUNTERS as u32 {
            assert!(ip_counter(&mut state, subnet(i)).is_some());
        }
        assert!(
            ip_counter(&mut state, subnet(u32::MAX)).is_none(),
            "a new subnet beyond the bound is not counted"
        );
        assert_eq!(state.failures_by_ip.len(), MAX_IP_COUNTERS);
        assert!(
            ip_counter(&mut state, subnet(7)).is_some(),
            "one already counted still is"
        );
    }

    #[test]
    fn failed_logins_rotating_through_an_ipv6_slash_64_are_one_burst() {
        let (jobs, mut rx) = mpsc::channel(16);
        let detectors = Detectors {
            config: DetectorConfig::default(),
            state: Mutex::default(),
            jobs,
        };
        let threshold = detectors.config.failed_auth_per_ip;
        for i in 0..threshold {
            let mut record = AuditRecord::new(
                entity::audit_event::AuditEventKind::ProxyRequest,
                "missing_credential",
            );
            record.status = Some(401);
            record.client_ip = Some(format!("2001:db8:1:2:{i:x}::1"));
            detectors.observe(&record);
        }
        let Ok(Job::Store(burst)) = rx.try_recv() else {
            panic!("no burst for {threshold} failures from one /64");
        };
        assert_eq!(burst.kind, "failed_auth_burst");
        assert_eq!(burst.detail["network"], "2001:db8:1:2::/64");
        assert!(rx.try_recv().is_err(), "one event per window");
    }

    #[test]
    fn client_subnets_are_the_ipv4_address_or_the_ipv6_slash_64() {
        let v4: IpAddr = [10, 1, 2, 3].into();
        assert_eq!(client_subnet(v4).to_string(), "10.1.2.3/32");
        let v6: IpAddr = "2001:db8:1:2:3:4:5:6".parse().unwrap_or(v4);
        assert_eq!(client_subnet(v6).to_string(), "2001:db8:1:2::/64");
    }

    #[test]
    fn networks_are_slash_24_and_slash_48() {
        let v4: IpAddr = [10, 1, 2, 3].into();
        assert_eq!(network_of(v4).to_string(), "10.1.2.0/24");
        let v6: IpAddr = "2001:db8:1:2::5".parse().unwrap_or(v4);
        assert_eq!(network_of(v6).to_string(), "2001:db8:1::/48");
    }
}
