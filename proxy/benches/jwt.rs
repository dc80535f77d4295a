//! OIDC JWT verification (`cargo bench -p proxy --features test-util --bench jwt`), RS256,
//! ES256 and EdDSA: a token seen before (the verified-token cache; target ≤ 2 µs, issue #3)
//! and a token never seen (header, key lookup, signature, claims). Keys are generated per run
//! and served by a wiremocked provider; the verifier downloads them once before measuring.

#![expect(clippy::unwrap_used, reason = "benchmark setup")]

use std::{
    hint::black_box,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use criterion::{Criterion, criterion_group, criterion_main};
use futures_util::FutureExt;
use proxy::oidc::{
    OidcConfig, OidcIdentity, OidcVerifier,
    testing::{FakeProvider, TestKey},
};
use serde_json::Value;

const AUD: &str = "portcullis";

/// Verifies on the calling thread. With the keys loaded and fresh, verification never waits
/// on I/O, so the future is ready at its first poll; `runtime` covers the case it is not.
fn verify(
    runtime: &tokio::runtime::Runtime,
    verifier: &Arc<OidcVerifier>,
    token: &str,
) -> OidcIdentity {
    match verifier.verify(token).now_or_never() {
        Some(result) => result.unwrap(),
        None => runtime.block_on(verifier.verify(token)).unwrap(),
    }
}

/// Claims unique to each call (`jti`), so no two tokens share a cache entry.
fn fresh_claims(provider: &FakeProvider) -> Value {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let mut claims = provider.claims("alice", AUD, &["sre", "dev"]);
    claims["jti"] = NEXT.fetch_add(1, Ordering::Relaxed).into();
    claims
}

fn bench_jwt(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let keys = [
        ("RS256", TestKey::rsa("rsa-1")),
        ("ES256", TestKey::ec("ec-1")),
        ("EdDSA", TestKey::ed("ed-1")),
    ];
    let (provider, verifier) = runtime.block_on(async {
        let provider = FakeProvider::start().await;
        provider
            .serve(&keys.iter().map(|(_, k)| k).collect::<Vec<_>>())
            .await;
        let verifier = Arc::new(
            OidcVerifier::new(&OidcConfig::new(provider.issuer(), vec![AUD.into()])).unwrap(),
        );
        verifier.prime().await;
        (provider, verifier)
    });

    let mut cached = c.benchmark_group("jwt_verify_cached");
    for (alg, key) in &keys {
        let token = key.sign(&fresh_claims(&provider));
        verify(&runtime, &verifier, &token);
        cached.bench_function(*alg, |b| {
            b.iter(|| verify(&runtime, &verifier, black_box(&token)))
        });
    }
    cached.finish();

    // Each iteration needs a token never verified before; signing (an RSA signature takes
    // about a millisecond) happens outside the timed part.
    let mut uncached = c.benchmark_group("jwt_verify_uncached");
    uncached
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (alg, key) in &keys {
        uncached.bench_function(*alg, |b| {
            b.iter_custom(|iters| {
                let tokens: Vec<String> = (0..iters)
                    .map(|_| key.sign(&fresh_claims(&provider)))
                    .collect();
                let started = Instant::now();
                for token in &tokens {
                    black_box(verify(&runtime, &verifier, black_box(token)));
                }
                started.elapsed()
            })
        });
    }
    uncached.finish();
}

criterion_group!(benches, bench_jwt);
criterion_main!(benches);
