#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

use std::{net::IpAddr, time::Duration};

use proptest::prelude::*;
use tokio::time::advance;

use super::*;

const SECOND: Duration = Duration::from_secs(1);

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))
}

/// 60 per minute = one per second; burst 3.
fn per_second_burst_3() -> Limit {
    Limit::new(60, 3)
}

#[tokio::test(start_paused = true)]
async fn a_full_bucket_admits_the_burst_then_refuses() {
    let limiter = LocalLimiter::new();
    let limit = per_second_burst_3();
    let decisions: Vec<_> = (0..4).map(|_| limiter.check("k", limit)).collect();
    let remaining: Vec<_> = decisions.iter().map(|d| d.remaining).collect();
    assert_eq!(
        decisions.iter().map(|d| d.allowed).collect::<Vec<_>>(),
        [true, true, true, false]
    );
    assert_eq!(remaining, [2, 1, 0, 0]);
    assert!(decisions.iter().all(|d| d.limit == 3));
    assert_eq!(decisions[0].retry_after, None);
    // Refused: the next request is one interval away; the bucket is full after three.
    assert_eq!(decisions[3].retry_after, Some(SECOND));
    assert_eq!(decisions[3].reset, 3 * SECOND);
}

#[tokio::test(start_paused = true)]
async fn remaining_and_reset_track_the_bucket() {
    let limiter = LocalLimiter::new();
    let limit = per_second_burst_3();
    let first = limiter.check("k", limit);
    assert_eq!((first.remaining, first.reset), (2, SECOND));
    let second = limiter.check("k", limit);
    assert_eq!((second.remaining, second.reset), (1, 2 * SECOND));
    advance(Duration::from_millis(1_500)).await;
    // TAT was 2 s; at 1.5 s one request refilled, half of the next one too.
    let third = limiter.check("k", limit);
    assert_eq!(third.remaining, 1);
    assert_eq!(third.reset, Duration::from_millis(1_500));
    advance(10 * SECOND).await;
    let fresh = limiter.check("k", limit);
    assert_eq!((fresh.remaining, fresh.reset), (2, SECOND));
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_exact() {
    let limiter = LocalLimiter::new();
    let limit = Limit::new(120, 2); // one per 500 ms
    assert!(limiter.check("k", limit).allowed);
    assert!(limiter.check("k", limit).allowed);
    advance(Duration::from_millis(100)).await;
    let refused = limiter.check("k", limit);
    assert!(!refused.allowed);
    let wait = refused.retry_after.unwrap_or_default();
    assert_eq!(wait, Duration::from_millis(400));
    advance(wait - Duration::from_millis(1)).await;
    assert!(
        !limiter.check("k", limit).allowed,
        "one millisecond early is still refused"
    );
    advance(Duration::from_millis(1)).await;
    assert!(limiter.check("k", limit).allowed, "on time is admitted");
    assert!(!limiter.check("k", limit).allowed);
}

#[tokio::test(start_paused = true)]
async fn after_the_burst_the_steady_rate_is_per_minute() {
    let limiter = LocalLimiter::new();
    let limit = Limit::new(60, 5);
    // Ten requests per second for a minute: the burst, then one per second.
    let mut admitted = 0;
    for _ in 0..600 {
        admitted += u32::from(limiter.check("k", limit).allowed);
        advance(Duration::from_millis(100)).await;
    }
    assert!((64..=65).contains(&admitted), "{admitted}");
    // Exactly at the rate, nothing is refused.
    let limiter = LocalLimiter::new();
    for _ in 0..120 {
        assert!(limiter.check("k", limit).allowed);
        advance(SECOND).await;
    }
}

#[tokio::test(start_paused = true)]
async fn buckets_are_independent() {
    let limiter = LocalLimiter::new();
    let limit = Limit::new(60, 1);
    assert!(limiter.check("a", limit).allowed);
    assert!(!limiter.check("a", limit).allowed);
    assert!(limiter.check("b", limit).allowed);
    assert!(limiter.check("c", Limit::new(60, 2)).allowed);
    assert!(limiter.check("c", Limit::new(60, 2)).allowed);
    assert!(!limiter.check("b", limit).allowed);
}

#[tokio::test(start_paused = true)]
async fn idle_buckets_are_evicted_without_changing_decisions() {
    let limiter = LocalLimiter::new();
    let limit = per_second_burst_3();
    for i in 0..100 {
        limiter.check(format!("k{i}"), limit);
    }
    limiter.check("busy", limit);
    limiter.check("busy", limit);
    assert_eq!(limiter.len(), 101);
    advance(Duration::from_millis(1_500)).await;
    assert_eq!(
        limiter.evict_idle(),
        100,
        "only the busy bucket is still refilling"
    );
    assert_eq!(limiter.len(), 1);
    // The kept bucket kept its state: one of two spent requests refilled.
    assert_eq!(limiter.check("busy", limit).remaining, 1);
    // An evicted bucket behaves as the full bucket it was.
    assert_eq!(limiter.check("k0", limit).remaining, 2);
}

#[tokio::test(start_paused = true)]
async fn memory_stays_bounded_without_explicit_eviction() {
    let limiter = LocalLimiter::new();
    let limit = Limit::new(60, 1);
    for i in 0..100_000 {
        limiter.check(format!("old{i}"), limit);
    }
    assert_eq!(limiter.len(), 100_000);
    advance(2 * SECOND).await;
    for i in 0..100_000 {
        limiter.check(format!("new{i}"), limit);
    }
    assert_eq!(
        limiter.len(),
        100_000,
        "growth swept every idle bucket away"
    );
}

#[test]
fn concurrent_checks_never_admit_more_than_the_burst() {
    let limiter = LocalLimiter::new();
    let limit = Limit::new(1, 10);
    let admitted = std::sync::atomic::AtomicU32::new(0);
    std::thread::scope(|s| {
        for _ in 0..8 {
            s.spawn(|| {
                for _ in 0..200 {
                    if limiter.check("shared", limit).allowed {
                        admitted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            });
        }
    });
    assert_eq!(admitted.into_inner(), 10);
}

#[test]
fn limits_from_columns_and_tightening() {
    assert_eq!(Limit::from_columns(None, Some(5)), None);
    assert_eq!(Limit::from_columns(Some(0), Some(5)), None);
    assert_eq!(Limit::from_columns(Some(-1), None), None);
    assert_eq!(
        Limit::from_columns(Some(60), None),
        Some(Limit::new(60, 60))
    );
    assert_eq!(
        Limit::from_columns(Some(60), Some(0)),
        Some(Limit::new(60, 1))
    );
    assert_eq!(
        Limit::new(600, 10).tightest(Limit::new(60, 100)),
        Limit::new(60, 10)
    );
    assert_eq!(Limit::new(0, 0), Limit::new(1, 1));
}

#[test]
fn bucket_keys_prefer_the_key_then_the_principal_then_the_address() {
    let route = Uuid::nil();
    let principal = Uuid::from_u128(1);
    let key = Uuid::from_u128(2);
    let addr = ip("2001:db8::7");
    assert_eq!(
        bucket_key(route, Some(principal), Some(key), addr),
        format!("{route}:k:{key}")
    );
    assert_eq!(
        bucket_key(route, Some(principal), None, addr),
        format!("{route}:p:{principal}")
    );
    assert_eq!(
        bucket_key(route, None, None, addr),
        format!("{route}:ip:2001:db8::/64")
    );
    // Another address in the same /64 shares the bucket; another /64 does not.
    assert_eq!(
        bucket_key(route, None, None, ip("2001:db8::ffff:1")),
        bucket_key(route, None, None, addr)
    );
    assert_ne!(
        bucket_key(route, None, None, ip("2001:db8:0:1::7")),
        bucket_key(route, None, None, addr)
    );
    assert_eq!(
        bucket_key(route, None, None, ip("10.0.0.1")),
        format!("{route}:ip:10.0.0.1")
    );
}

/// The binary in-process key separates and groups exactly what the text key does.
#[test]
fn local_keys_identify_the_same_buckets_as_text_keys() {
    let subject = |route: u128, principal: Option<u128>, key: Option<u128>, addr: &str| Subject {
        route_id: Uuid::from_u128(route),
        principal_id: principal.map(Uuid::from_u128),
        key_id: key.map(Uuid::from_u128),
        client_ip: ip(addr),
    };
    let subjects = [
        subject(0, Some(1), Some(2), "2001:db8::7"),
        subject(0, Some(9), Some(2), "10.0.0.1"),
        subject(0, Some(1), Some(3), "2001:db8::7"),
        subject(1, Some(1), Some(2), "2001:db8::7"),
        subject(0, Some(1), None, "2001:db8::7"),
        subject(0, Some(2), None, "2001:db8::7"),
        subject(0, None, None, "2001:db8::7"),
        subject(0, None, None, "2001:db8::ffff:1"),
        subject(0, None, None, "2001:db8:0:1::7"),
        subject(0, None, None, "10.0.0.1"),
        subject(0, None, None, "10.0.0.2"),
        subject(0, None, None, "::a00:1"),
        subject(0, None, None, "::ffff:10.0.0.1"),
    ];
    for a in &subjects {
        for b in &subjects {
            assert_eq!(
                a.local_key() == b.local_key(),
                a.bucket_key() == b.bucket_key(),
                "{a:?} vs {b:?}"
            );
        }
    }
}

#[tokio::test]
async fn check_subject_counts_in_one_bucket_per_subject() {
    let limiter = RateLimiter::local();
    let limit = Limit::new(1, 2);
    let a = Subject {
        route_id: Uuid::from_u128(1),
        principal_id: Some(Uuid::from_u128(2)),
        key_id: Some(Uuid::from_u128(3)),
        client_ip: ip("10.0.0.1"),
    };
    let b = Subject {
        key_id: Some(Uuid::from_u128(4)),
        ..a
    };
    assert!(limiter.check_subject(&a, limit).await.allowed);
    assert!(limiter.check_subject(&a, limit).await.allowed);
    assert!(!limiter.check_subject(&a, limit).await.allowed);
    assert!(limiter.check_subject(&b, limit).await.allowed);
}

#[test]
fn the_tightest_active_matching_override_applies() {
    let now = Utc::now();
    let route = Uuid::from_u128(10);
    let principal = Uuid::from_u128(11);
    let key = Uuid::from_u128(12);
    let subject = Subject {
        route_id: route,
        principal_id: Some(principal),
        key_id: Some(key),
        client_ip: ip("10.0.0.1"),
    };
    let row = |principal_id, api_key_id, route_id, per_minute, burst, expires_in: i64| {
        RateLimitOverride {
            id: Uuid::now_v7(),
            principal_id,
            api_key_id,
            route_id,
            limit: Limit::new(per_minute, burst),
            expires_at: now + chrono::Duration::seconds(expires_in),
        }
    };
    let base = Limit::new(600, 100);
    let overrides = [
        row(Some(principal), None, None, 60, 50, 60),
        row(None, Some(key), Some(route), 120, 5, 60),
        row(Some(principal), None, None, 1, 1, -1), // expired
        row(Some(Uuid::from_u128(99)), None, None, 1, 1, 60), // someone else
        row(None, None, Some(Uuid::from_u128(98)), 1, 1, 60), // another route
    ];
    assert_eq!(
        effective_limit(base, &overrides, &subject, now),
        Limit::new(60, 5)
    );
    assert_eq!(effective_limit(base, &[], &subject, now), base);
    // An override never loosens.
    let loose = [row(Some(principal), None, None, 10_000, 1_000, 60)];
    assert_eq!(effective_limit(base, &loose, &subject, now), base);
    // Anonymous requests match route-only overrides, not principal ones.
    let anonymous = Subject {
        principal_id: None,
        key_id: None,
        ..subject
    };
    assert_eq!(
        effective_limit(base, &overrides, &anonymous, now),
        Limit::new(600, 100)
    );
    let route_wide = [row(None, None, Some(route), 30, 3, 60)];
    assert_eq!(
        effective_limit(base, &route_wide, &anonymous, now),
        Limit::new(30, 3)
    );
}

#[test]
fn headers_round_reset_up_to_whole_seconds() {
    let mut headers = HeaderMap::new();
    RateDecision {
        allowed: true,
        limit: 3,
        remaining: 1,
        reset: Duration::from_millis(1_001),
        retry_after: None,
    }
    .insert_headers(&mut headers);
    assert_eq!(headers["ratelimit-limit"], "3");
    assert_eq!(headers["ratelimit-remaining"], "1");
    assert_eq!(headers["ratelimit-reset"], "2");
    insert_headers(&mut headers, 3, 0, 2 * SECOND);
    assert_eq!(headers["ratelimit-reset"], "2");
}

proptest! {
    /// Whatever the arrival pattern, a span of D admits at most `burst + D / T` requests.
    #[test]
    fn gcra_never_admits_more_than_burst_plus_rate(
        per_minute in 1u32..10_000,
        burst in 1u32..50,
        gaps in proptest::collection::vec(0u64..5_000_000_000, 1..200),
    ) {
        let limit = Limit::new(per_minute, burst);
        let mut tat = 0;
        let mut now = 1_000;
        let mut first = None;
        let mut last = now;
        let mut admitted = 0u64;
        for gap in gaps {
            now += gap;
            let (next, decision) = gcra::decide(tat, now, limit);
            prop_assert_eq!(decision.allowed, next.is_some());
            if let Some(next) = next {
                tat = next;
                admitted += 1;
                first.get_or_insert(now);
                last = now;
            } else {
                prop_assert!(decision.retry_after.is_some_and(|r| !r.is_zero()));
            }
        }
        let span = last - first.unwrap_or(last);
        prop_assert!(admitted <= u64::from(burst) + span / limit.interval_ns());
    }
}

/// Prints the cost of a check on an existing bucket, in wall time and in CPU time (this
/// process's user + system time from `/proc/self/stat`, which a busy machine does not inflate).
/// Run it in release:
/// `cargo test -p proxy --release --lib ratelimit::tests::local_check_cost -- --ignored --nocapture`
#[test]
#[ignore = "a measurement, not a test"]
fn local_check_cost() {
    fn cpu_time() -> Duration {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
        let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<u64> = after_name
            .split_whitespace()
            .map(|f| f.parse().unwrap_or(0))
            .collect();
        // utime and stime are fields 14 and 15 of the line, in clock ticks (100 Hz here).
        let ticks = fields.get(11).copied().unwrap_or(0) + fields.get(12).copied().unwrap_or(0);
        Duration::from_millis(ticks * 10)
    }
    let limit = Limit::new(u32::MAX, 1_000);
    for buckets in [1, 1_000, 10_000, 100_000] {
        let route = Uuid::now_v7();
        let subjects: Vec<Subject> = (0..buckets)
            .map(|i| Subject {
                route_id: route,
                principal_id: None,
                key_id: Some(Uuid::from_u128(i)),
                client_ip: ip("::1"),
            })
            .collect();
        // What the pipeline does (binary key built per check), then the old text key.
        let binary = |s: &Subject| -> Vec<u8> { s.local_key().as_ref().to_vec() };
        for (label, make) in [
            ("binary key", &binary as &dyn Fn(&Subject) -> Vec<u8>),
            ("text key", &|s: &Subject| s.bucket_key().into_bytes()),
        ] {
            let limiter = LocalLimiter::new();
            let keys: Vec<Vec<u8>> = subjects.iter().map(make).collect();
            for key in &keys {
                limiter.check(key, limit);
            }
            let checks = 10_000_000 / keys.len() * keys.len();
            let (wall, cpu) = (std::time::Instant::now(), cpu_time());
            if label == "binary key" {
                for subject in subjects.iter().cycle().take(checks) {
                    let key = std::hint::black_box(subject).local_key();
                    std::hint::black_box(limiter.check(key, limit));
                }
            } else {
                for key in keys.iter().cycle().take(checks) {
                    std::hint::black_box(limiter.check(std::hint::black_box(key), limit));
                }
            }
            let wall = wall.elapsed() / checks as u32;
            let cpu = cpu_time().saturating_sub(cpu) / checks as u32;
            println!(
                "local check on a hit, {label}, {buckets:>6} buckets: {wall:?} wall, {cpu:?} CPU"
            );
        }
    }
}

// === Redis (skipped unless TEST_REDIS_URL is set; the fallback tests need no Redis) ===

fn redis_url() -> Option<String> {
    let url = std::env::var("TEST_REDIS_URL").ok();
    if url.is_none() {
        eprintln!("skipping Redis: TEST_REDIS_URL is unset");
    }
    url
}

fn unique_bucket() -> String {
    bucket_key(Uuid::now_v7(), None, Some(Uuid::now_v7()), ip("::1"))
}

#[tokio::test]
async fn two_proxies_share_one_budget_through_redis() {
    let Some(url) = redis_url() else { return };
    let timeout = Duration::from_millis(500);
    let a = RateLimiter::with_redis(&url, None, timeout).unwrap();
    let b = RateLimiter::with_redis(&url, None, timeout).unwrap();
    let bucket = unique_bucket();
    let limit = Limit::new(1, 5); // one per minute: no refill during the test
    let mut decisions = Vec::new();
    for _ in 0..10 {
        decisions.push(a.check(&bucket, limit).await);
        decisions.push(b.check(&bucket, limit).await);
    }
    let admitted = decisions.iter().filter(|d| d.allowed).count();
    assert_eq!(admitted, 5, "{decisions:#?}");
    assert_eq!(
        decisions
            .iter()
            .take(5)
            .map(|d| d.remaining)
            .collect::<Vec<_>>(),
        [4, 3, 2, 1, 0]
    );
    let refused = decisions[5];
    assert!(!refused.allowed);
    let retry = refused.retry_after.unwrap_or_default();
    assert!(
        retry > Duration::from_secs(59) && retry <= Duration::from_secs(60),
        "{retry:?}"
    );
    assert!(refused.reset > Duration::from_secs(299) && refused.reset <= Duration::from_secs(300));
    assert_eq!(
        a.fallbacks() + b.fallbacks(),
        0,
        "Redis answered every time"
    );

    // The key expires when the bucket is full again.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("portcullis:rl:{bucket}"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(ttl > 295_000 && ttl <= 300_000, "{ttl}");
}

#[tokio::test]
async fn the_script_is_reloaded_after_a_script_flush() {
    let Some(url) = redis_url() else { return };
    let limiter = RateLimiter::with_redis(&url, None, Duration::from_millis(500)).unwrap();
    let bucket = unique_bucket();
    let limit = Limit::new(1, 2);
    assert!(limiter.check(&bucket, limit).await.allowed);
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut conn)
        .await
        .unwrap();
    // NOSCRIPT → SCRIPT LOAD → EVALSHA, invisible to the caller.
    assert!(limiter.check(&bucket, limit).await.allowed);
    assert!(!limiter.check(&bucket, limit).await.allowed);
    assert_eq!(limiter.fallbacks(), 0);
}

#[tokio::test]
async fn redis_refusing_connections_falls_back_to_local_limits() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap();
    let limiter = RateLimiter::with_redis(
        &format!("redis://{closed}"),
        None,
        Duration::from_millis(50),
    )
    .unwrap();
    let limit = Limit::new(1, 2);
    let started = std::time::Instant::now();
    let decisions = [
        limiter.check("k", limit).await,
        limiter.check("k", limit).await,
        limiter.check("k", limit).await,
    ];
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        decisions.iter().map(|d| d.allowed).collect::<Vec<_>>(),
        [true, true, false],
        "still limited, in process"
    );
    assert_eq!(limiter.fallbacks(), 3);
}

#[tokio::test]
async fn a_silent_redis_costs_at_most_the_timeout_once() {
    // Accepts connections (the kernel does) but never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let limiter =
        RateLimiter::with_redis(&format!("redis://{addr}"), None, Duration::from_millis(50))
            .unwrap();
    let limit = Limit::new(1, 1);
    let started = std::time::Instant::now();
    assert!(limiter.check("k", limit).await.allowed);
    let first = started.elapsed();
    assert!(first < Duration::from_millis(300), "{first:?}");
    let started = std::time::Instant::now();
    assert!(!limiter.check("k", limit).await.allowed);
    assert!(
        started.elapsed() < Duration::from_millis(5),
        "later requests do not wait while Redis is down: {:?}",
        started.elapsed()
    );
    assert_eq!(limiter.fallbacks(), 2);
    drop(silent);
}

// === Redis over TLS (`rediss://`) ===

/// A throw-away `redis-server` that speaks only TLS, with a self-signed certificate for
/// `localhost` made by the `openssl` CLI. Needs both binaries on `PATH`; like every Redis test
/// it runs when `TEST_REDIS_URL` is set (CI has both).
struct TlsRedis {
    _child: RedisProcess,
    port: u16,
    /// The server's certificate, PEM: the one root a client must trust.
    cert: Vec<u8>,
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    fn start() -> Self {
        use std::process::Command;
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let made = Command::new("openssl")
            .args([
                "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            ])
            .args(["-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=DNS:localhost"])
            .args(["-addext", "basicConstraints=critical,CA:FALSE"])
            .args(["-addext", "extendedKeyUsage=serverAuth"])
            .arg("-keyout")
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .output()
            .expect("the openssl CLI makes the test certificate");
        assert!(made.status.success(), "{made:?}");
        let port = free_port();
        let child = redis_server(port, |command| {
            command
                .args(["--port", "0", "--tls-port", &port.to_string()])
                .arg("--tls-cert-file")
                .arg(&cert)
                .arg("--tls-key-file")
                .arg(&key)
                .arg("--tls-ca-cert-file")
                .arg(&cert)
                .args(["--tls-auth-clients", "no"]);
        });
        let cert = std::fs::read(&cert).unwrap();
        Self {
            _child: child,
            port,
            cert,
            _dir: dir,
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port()
}

/// Starts `redis-server` (set up by `configure`, without persistence) and waits until it
/// listens on `port`.
fn redis_server(port: u16, configure: impl FnOnce(&mut std::process::Command)) -> RedisProcess {
    use std::process::{Command, Stdio};
    let mut command = Command::new("redis-server");
    configure(&mut command);
    let child = command
        .args(["--save", "", "--appendonly", "no", "--bind", "127.0.0.1"])
        .stdout(Stdio::null())
        .spawn()
        .expect("redis-server (with TLS support) is on PATH");
    let started = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "redis-server on port {port} never listened"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    RedisProcess(child)
}

/// A `redis-server` that is a replica of a primary that does not exist, and its port: it
/// answers PING but refuses the script's writes, like a node a failover left behind.
fn read_only_replica() -> (RedisProcess, u16) {
    let port = free_port();
    let replica = redis_server(port, |command| {
        command.args(["--port", &port.to_string()]).args([
            "--replicaof",
            "127.0.0.1",
            &free_port().to_string(),
        ]);
    });
    (replica, port)
}

/// A `redis-server` child, stopped when dropped (also when a test fails).
struct RedisProcess(std::process::Child);

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn two_proxies_share_one_budget_through_redis_over_tls() {
    if redis_url().is_none() {
        return;
    }
    let server = TlsRedis::start();
    let url = format!("rediss://localhost:{}", server.port);
    // Generous: the first call includes the TLS handshake.
    let timeout = Duration::from_secs(2);
    let a = RateLimiter::with_redis(&url, Some(&server.cert), timeout).unwrap();
    let b = RateLimiter::with_redis(&url, Some(&server.cert), timeout).unwrap();
    let bucket = unique_bucket();
    let limit = Limit::new(1, 3);
    let mut admitted = Vec::new();
    for _ in 0..3 {
        admitted.push(a.check(&bucket, limit).await.allowed);
        admitted.push(b.check(&bucket, limit).await.allowed);
    }
    assert_eq!(admitted, [true, true, true, false, false, false]);
    assert_eq!(a.fallbacks() + b.fallbacks(), 0, "Redis answered over TLS");

    // A client that does not trust the server's certificate (system roots only) never gets
    // through the handshake: it limits in process instead, and never waves requests through.
    let untrusting = RateLimiter::with_redis(&url, None, timeout).unwrap();
    let fresh = unique_bucket();
    let one = Limit::new(1, 1);
    assert!(untrusting.check(&fresh, one).await.allowed);
    assert!(!untrusting.check(&fresh, one).await.allowed);
    assert_eq!(untrusting.fallbacks(), 2);

    // Plain text to the TLS port does not work either.
    let plain = RateLimiter::with_redis(
        &format!("redis://127.0.0.1:{}", server.port),
        None,
        Duration::from_millis(300),
    )
    .unwrap();
    plain.check(&unique_bucket(), one).await;
    assert_eq!(plain.fallbacks(), 1);
}

#[test]
fn unverified_or_mismatched_redis_tls_settings_are_refused() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = runtime.enter();
    let timeout = Duration::from_millis(50);
    let refused = |url: &str, ca: Option<&[u8]>| {
        RateLimiter::with_redis(url, ca, timeout)
            .err()
            .map(|e| e.to_string())
    };
    let insecure = refused("rediss://localhost:6379/#insecure", None).unwrap();
    assert!(insecure.contains("certificate verification"), "{insecure}");
    let pem = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    let plain = refused("redis://localhost:6379", Some(pem)).unwrap();
    assert!(plain.contains("rediss://"), "{plain}");
    let empty = refused("rediss://localhost:6379", Some(b"not a certificate")).unwrap();
    assert!(empty.contains("no certificate"), "{empty}");
    // Well-formed settings are accepted without connecting (the connection is lazy).
    assert!(refused("rediss://localhost:6379", None).is_none());
}

#[tokio::test]
async fn the_recovery_probe_runs_the_script_so_a_read_only_replica_stays_down() {
    let Some(url) = redis_url() else {
        return;
    };
    let (_replica, port) = read_only_replica();
    let timeout = Duration::from_secs(1);
    let replica_url = format!("redis://127.0.0.1:{port}");
    let read_only = RedisLimiter::new(&replica_url, None, timeout).unwrap();
    let healthy = RedisLimiter::new(&url, None, timeout).unwrap();
    let mut connection = redis::Client::open(replica_url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let pinged: String = redis::cmd("PING")
        .query_async(&mut connection)
        .await
        .unwrap();
    assert_eq!(pinged, "PONG", "the replica answers PING");
    assert!(
        !read_only.probe().await,
        "a replica that refuses the script is not back"
    );
    assert!(healthy.probe().await);
}

/// A TCP forwarder to whichever address `target` holds when a connection arrives; earlier
/// connections stay where they went, like clients of a DNS name after a failover.
async fn switchable_forwarder(
    target: std::sync::Arc<std::sync::Mutex<std::net::SocketAddr>>,
) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let to = *target.lock().unwrap();
            tokio::spawn(async move {
                if let Ok(mut server) = tokio::net::TcpStream::connect(to).await {
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                }
            });
        }
    });
    addr
}

#[tokio::test]
async fn after_a_failover_behind_one_address_the_probe_reconnects_to_the_new_primary() {
    let Some(url) = redis_url() else {
        return;
    };
    let primary: std::net::SocketAddr = url
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .parse()
        .expect("TEST_REDIS_URL is redis://<ip>:<port>");
    // The demoted node.
    let (_replica, port) = read_only_replica();
    let target = std::sync::Arc::new(std::sync::Mutex::new(std::net::SocketAddr::from((
        [127, 0, 0, 1],
        port,
    ))));
    let name = switchable_forwarder(target.clone()).await;
    let limiter =
        RateLimiter::with_redis(&format!("redis://{name}"), None, Duration::from_millis(500))
            .unwrap();
    let bucket = unique_bucket();
    let limit = Limit::new(60_000, 1_000);
    limiter.check(&bucket, limit).await;
    assert_eq!(limiter.fallbacks(), 1, "the replica refused the script");

    // The name now leads to the primary; the open connection still leads to the replica.
    *target.lock().unwrap() = primary;
    let started = std::time::Instant::now();
    loop {
        let before = limiter.fallbacks();
        limiter.check(&bucket, limit).await;
        if limiter.fallbacks() == before {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "still limiting in process: the probe never left the demoted node"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
