//! Micro-benchmarks of the per-request work (`cargo bench -p proxy`). Targets (issue #3):
//! decision p99 ≤ 3 µs with 1,000 roles and 10,000 bindings; key check on a cache hit ≤ 1 µs;
//! local rate-limit check ≤ 100 ns; audit enqueue ≤ 1 µs. Results are recorded in
//! BENCHMARKS.md.

#![expect(clippy::unwrap_used, reason = "benchmark setup")]

use std::{hint::black_box, net::IpAddr, str::FromStr};

use chrono::Utc;
use criterion::{Criterion, criterion_group, criterion_main};
use entity::audit_event::AuditEventKind;
use proxy::{
    audit::{AuditRecord, AuditSink},
    cache::PolicyCache,
    keys::{KeyHasher, PlainToken, TokenEnv, TokenKind},
    normalize::{NormalizeOptions, normalize_path},
    policy::{
        Binding, BindingId, MethodSet, PathGlob, Permission, PrincipalId, RequestFacts, Role,
        RoleId, Roles, Subject, evaluate,
    },
    ratelimit::{self, Limit, LocalLimiter},
};
use secrecy::SecretSlice;
use uuid::Uuid;

/// 1,000 roles of 5 permissions each; 10,000 bindings over 2,000 principals; the subject has
/// its own 3 bindings and 2 groups with 1 binding each (what the cache hands the evaluator).
fn policy_fixture() -> (Roles, Vec<Binding>, Vec<PrincipalId>, PrincipalId) {
    let roles: Vec<Role> = (0..1_000)
        .map(|r| Role {
            id: RoleId(Uuid::from_u128(r)),
            name: format!("role-{r}"),
            permissions: (0..5)
                .map(|p| Permission {
                    id: Uuid::from_u128(r * 10 + p),
                    name: format!("svc{r}:action{p}"),
                    methods: MethodSet::from_str("GET,POST").unwrap(),
                    path: PathGlob::parse(&format!("/svc{r}/p{p}/**")).unwrap(),
                    route_id: None,
                })
                .collect(),
        })
        .collect();
    let all_bindings: Vec<Binding> = (0..10_000u128)
        .map(|b| Binding {
            id: BindingId(Uuid::from_u128(1_000_000 + b)),
            role_id: RoleId(Uuid::from_u128(b % 1_000)),
            principal_id: PrincipalId(Uuid::from_u128(2_000_000 + b % 2_000)),
            expires_at: None,
            cidrs: vec![],
        })
        .collect();
    let me = PrincipalId(Uuid::from_u128(2_000_000 + 7));
    let groups = vec![
        PrincipalId(Uuid::from_u128(2_000_000 + 8)),
        PrincipalId(Uuid::from_u128(2_000_000 + 9)),
    ];
    let mine: Vec<Binding> = all_bindings
        .iter()
        .filter(|b| b.principal_id == me || groups.contains(&b.principal_id))
        .take(5)
        .cloned()
        .collect();
    (Roles::new(roles), mine, groups, me)
}

fn bench_policy(c: &mut Criterion) {
    let (roles, bindings, groups, me) = policy_fixture();
    let subject = Subject {
        principal_id: me,
        group_ids: &groups,
        bindings: &bindings,
        grants: &[],
    };
    let role = roles.get(bindings[0].role_id).unwrap();
    let allowed_path = format!("/{}/p3/orders/42", role.name.replace("role-", "svc"));
    let ip: IpAddr = [10, 0, 0, 1].into();
    let now = Utc::now();
    let method = http::Method::GET;
    let allow = RequestFacts {
        method: &method,
        path: &allowed_path,
        route_id: None,
        client_ip: ip,
        now,
        required_permission: None,
    };
    assert!(evaluate(&roles, &subject, &allow).allowed);
    c.bench_function("policy_decision_allow_1k_roles_10k_bindings", |b| {
        b.iter(|| {
            black_box(evaluate(
                black_box(&roles),
                black_box(&subject),
                black_box(&allow),
            ))
        })
    });
    let deny = RequestFacts {
        path: "/nowhere/at/all",
        ..allow
    };
    assert!(!evaluate(&roles, &subject, &deny).allowed);
    c.bench_function("policy_decision_deny_1k_roles_10k_bindings", |b| {
        b.iter(|| {
            black_box(evaluate(
                black_box(&roles),
                black_box(&subject),
                black_box(&deny),
            ))
        })
    });
}

fn bench_normalize(c: &mut Criterion) {
    let options = NormalizeOptions::default();
    c.bench_function("normalize_path_typical", |b| {
        b.iter(|| {
            black_box(normalize_path(
                black_box("/api/v1/orders/42/items/%7Eall"),
                &options,
            ))
        })
    });
}

fn bench_key_check(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let pepper = SecretSlice::from(vec![7u8; 32]);
    let hasher = KeyHasher::new(&pepper).unwrap();
    let token = PlainToken::generate(TokenKind::ApiKey, TokenEnv::Live);
    let raw = token.expose_secret().to_owned();
    // A real cache over a real (SQLite) database, warmed with the key: this is the cache-hit path.
    let cache = runtime.block_on(async {
        let db = migration::testing::TestDatabase::sqlite()
            .await
            .migrated()
            .await;
        let principal = Uuid::now_v7();
        let now = Utc::now();
        use sea_orm::ActiveModelTrait;
        entity::principal::ActiveModel::new_principal(
            principal,
            entity::principal::PrincipalKind::ServiceAccount,
            "bench",
            "bench",
            now,
        )
        .insert(&db.conn)
        .await
        .unwrap();
        entity::api_key::ActiveModel::new_key(entity::api_key::NewKey {
            id: Uuid::now_v7(),
            principal_id: principal,
            name: "bench",
            prefix: token.lookup_prefix(),
            hash: hasher.hash(token.as_parsed()).to_hex(),
            environment: "live",
            now,
        })
        .insert(&db.conn)
        .await
        .unwrap();
        let cache = PolicyCache::load(db.conn.clone(), std::time::Duration::from_secs(60))
            .await
            .unwrap();
        cache.sync().await.unwrap();
        proxy::authn::verify_api_key(&cache, &hasher, &raw, CLIENT, Utc::now())
            .await
            .unwrap();
        std::mem::forget(db);
        cache
    });
    let now = Utc::now();
    c.bench_function("api_key_verify_cache_hit", |b| {
        b.to_async(&runtime).iter(|| async {
            black_box(
                proxy::authn::verify_api_key(&cache, &hasher, black_box(&raw), CLIENT, now)
                    .await
                    .is_ok(),
            )
        })
    });
}

fn bench_audit_enqueue(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (sink, mut rx) = AuditSink::channel(65_536);
    // A consumer that keeps up, so the benchmark measures enqueueing, not back-pressure.
    runtime.spawn(async move {
        let mut buffer = Vec::with_capacity(512);
        while rx.recv_many(&mut buffer, 512).await > 0 {
            buffer.clear();
        }
    });
    let mut record = AuditRecord::new(AuditEventKind::ProxyRequest, "allowed_by_binding");
    record.path = Some("/orders/42".into());
    record.client_ip = Some("10.0.0.1".into());
    c.bench_function("audit_enqueue", |b| {
        b.to_async(&runtime).iter(|| {
            let record = record.clone();
            let sink = &sink;
            async move { sink.record(record).await }
        })
    });
}

/// The in-process GCRA check as the pipeline makes it: the subject's binary bucket key built
/// on the stack, then the check, over 1, 10,000 and 100,000 live buckets (the last one larger
/// than the CPU caches).
fn bench_rate_limit(c: &mut Criterion) {
    let route = Uuid::now_v7();
    // Never refuses during the run, so every iteration does the same work.
    let limit = Limit::new(u32::MAX, 1_000);
    let mut group = c.benchmark_group("local_rate_limit_check");
    for buckets in [1u128, 10_000, 100_000] {
        let subjects: Vec<ratelimit::Subject> = (0..buckets)
            .map(|i| ratelimit::Subject {
                route_id: route,
                principal_id: None,
                key_id: Some(Uuid::from_u128(i)),
                client_ip: IpAddr::from([10, 0, 0, 1]),
            })
            .collect();
        let limiter = LocalLimiter::new();
        for subject in &subjects {
            limiter.check(subject.local_key(), limit);
        }
        let mut next = subjects.iter().cycle();
        group.bench_function(format!("{buckets}_buckets"), |b| {
            b.iter(|| {
                let subject = next.next().unwrap_or(&subjects[0]);
                black_box(limiter.check(black_box(subject).local_key(), limit))
            })
        });
    }
    group.finish();
}

criterion_group!(
    benches,
    bench_policy,
    bench_normalize,
    bench_key_check,
    bench_rate_limit,
    bench_audit_enqueue
);
criterion_main!(benches);

/// The address every lookup comes from.
const CLIENT: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
