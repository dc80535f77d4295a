//! The audit writer's database work for one batch (`cargo bench -p proxy --bench audit_append`):
//! 512 allowed requests, chained and stored with their keys' last use and per-permission
//! usage counters, on a real SQLite file (and PostgreSQL when `TEST_DATABASE_URL` is set).
//! One key is the load script's case; 200 keys is a proxy in front of many clients.

#![expect(clippy::unwrap_used, reason = "benchmark setup")]

use std::hint::black_box;

use chrono::{SubsecRound, Utc};
use criterion::{Criterion, criterion_group, criterion_main};
use entity::audit_event::{AuditDecision, AuditEventKind};
use migration::testing::TestDatabase;
use proxy::audit::{AuditRecord, append};
use sea_orm::{ActiveModelTrait, DatabaseConnection};
use uuid::Uuid;

const BATCH: usize = 512;

/// A principal with `keys` API keys, and a batch of allowed requests spread over them and
/// over two permissions.
async fn fixture(db: &DatabaseConnection, keys: usize) -> Vec<AuditRecord> {
    let now = Utc::now().trunc_subsecs(6);
    let owner = Uuid::now_v7();
    entity::principal::ActiveModel::new_principal(
        owner,
        entity::principal::PrincipalKind::ServiceAccount,
        &format!("bench-{owner}"),
        "bench",
        now,
    )
    .insert(db)
    .await
    .unwrap();
    let mut ids = Vec::new();
    for i in 0..keys {
        let id = Uuid::now_v7();
        entity::api_key::ActiveModel::new_key(entity::api_key::NewKey {
            id,
            principal_id: owner,
            name: "bench",
            prefix: &format!("pk_test_{}", &id.simple().to_string()[20..]),
            hash: format!("{i:064x}"),
            environment: "test",
            now,
        })
        .insert(db)
        .await
        .unwrap();
        ids.push(id);
    }
    let permissions = [Uuid::now_v7(), Uuid::now_v7()];
    (0..BATCH)
        .map(|i| {
            let mut record = AuditRecord::new(AuditEventKind::ProxyRequest, "allowed_by_binding");
            record.request_id = Some(Uuid::now_v7().to_string());
            record.method = Some("GET".into());
            record.path = Some(format!("/orders/{i}"));
            record.client_ip = Some(format!("10.0.{}.{}", i / 250, i % 250));
            record.decision = Some(AuditDecision::Allow);
            record.status = Some(200);
            record.latency_us = Some(350);
            record.principal_id = Some(owner);
            record.api_key_id = Some(ids[i % keys]);
            record.permission_id = Some(permissions[i % 2]);
            record.route_id = Some(owner);
            record
        })
        .collect()
}

fn bench_append(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let databases = runtime.block_on(async {
        let mut all = vec![("sqlite", TestDatabase::sqlite().await.migrated().await)];
        if let Some(postgres) = TestDatabase::postgres().await {
            all.push(("postgres", postgres.migrated().await));
        }
        all
    });
    let mut group = c.benchmark_group("audit_append_512_rows");
    group.sample_size(20);
    for (backend, database) in &databases {
        let db = database.conn.clone();
        for keys in [1, 200] {
            let records = runtime.block_on(fixture(&db, keys));
            group.bench_function(format!("{backend}/{keys}_keys"), |b| {
                b.to_async(&runtime)
                    .iter(|| async { append(&db, black_box(&records)).await.unwrap() })
            });
        }
    }
    group.finish();
    for (_, database) in databases {
        runtime.block_on(database.drop_database());
    }
}

criterion_group!(benches, bench_append);
criterion_main!(benches);
