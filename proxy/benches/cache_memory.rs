//! Memory of the policy cache with 100,000 API keys cached (`cargo bench -p proxy --bench
//! cache_memory`). Prints the process RSS before and after every key has been looked up once
//! (so every key is a cache entry), and the cost of a lookup once warm. Target (issue #3):
//! ≤ 64 MiB with 100,000 active keys cached. Results are recorded in BENCHMARKS.md.

#![expect(clippy::unwrap_used, reason = "benchmark setup")]

use std::time::{Duration, Instant};

use chrono::Utc;
use proxy::{
    cache::PolicyCache,
    keys::{KeyHasher, PlainToken, TokenEnv, TokenKind},
};
use sea_orm::{ActiveModelTrait, EntityTrait};
use secrecy::SecretSlice;
use uuid::Uuid;

const KEYS: usize = 100_000;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(f64::NAN, |kb| kb / 1024.0)
}

fn main() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let db = migration::testing::TestDatabase::sqlite()
            .await
            .migrated()
            .await;
        let hasher = KeyHasher::new(&SecretSlice::from(vec![9u8; 32])).unwrap();
        let now = Utc::now();
        let principal = Uuid::now_v7();
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
        let tokens: Vec<PlainToken> = (0..KEYS)
            .map(|_| PlainToken::generate(TokenKind::ApiKey, TokenEnv::Live))
            .collect();
        for chunk in tokens.chunks(500) {
            let rows = chunk.iter().map(|token| {
                entity::api_key::ActiveModel::new_key(entity::api_key::NewKey {
                    id: Uuid::now_v7(),
                    principal_id: principal,
                    name: "bench",
                    prefix: token.lookup_prefix(),
                    hash: hasher.hash(token.as_parsed()).to_hex(),
                    environment: "live",
                    now,
                })
            });
            entity::api_key::Entity::insert_many(rows)
                .exec_without_returning(&db.conn)
                .await
                .unwrap();
        }
        // One client loads every key: lift the per-client lookup budget.
        let cache = PolicyCache::load(db.conn.clone(), Duration::from_secs(60))
            .await
            .unwrap()
            .with_lookups_per_client(proxy::ratelimit::Limit::new(u32::MAX, u32::MAX));
        cache.sync().await.unwrap();
        let before = rss_mib();
        let started = Instant::now();
        for token in &tokens {
            proxy::authn::verify_api_key(&cache, &hasher, token.expose_secret(), CLIENT, now)
                .await
                .unwrap();
        }
        let warmup = started.elapsed();
        let after = rss_mib();
        let started = Instant::now();
        for token in &tokens {
            proxy::authn::verify_api_key(&cache, &hasher, token.expose_secret(), CLIENT, now)
                .await
                .unwrap();
        }
        let warm = started.elapsed() / KEYS as u32;
        println!("keys cached:                 {KEYS}");
        println!("RSS before warm-up:          {before:.1} MiB (SQLite page cache included)");
        println!(
            "RSS with every key cached:   {after:.1} MiB (+{:.1} MiB)",
            after - before
        );
        println!(
            "cold lookups (database):     {:.1} s total",
            warmup.as_secs_f64()
        );
        println!(
            "warm verify (cache hit):     {} ns per key",
            warm.as_nanos()
        );
        db.drop_database().await;
    });
}

/// The address every lookup comes from.
const CLIENT: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);
