//! The JWT attack list of issue 3 against a wiremocked provider, plus JWKS caching behaviour.
//! Keys are generated per run (see `testing`); nothing secret is committed.

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

use std::{sync::Arc, time::Duration};

use aws_lc_rs::signature;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Header, jwk::AlgorithmParameters};
use serde_json::{Value, json};
use wiremock::{Mock, ResponseTemplate, matchers::method};

use super::{
    OidcConfig, OidcError, OidcVerifier,
    testing::{FakeProvider, TestKey, forge, forge_hs256},
};

const AUD: &str = "portcullis";

fn config(provider: &FakeProvider) -> OidcConfig {
    OidcConfig::new(provider.issuer(), vec![AUD.into(), "other-api".into()])
}

/// A provider serving `keys` (no call expectations) and a verifier that loaded them.
async fn primed(keys: &[&TestKey]) -> (FakeProvider, Arc<OidcVerifier>) {
    let provider = FakeProvider::start().await;
    provider.serve(keys).await;
    let verifier = Arc::new(OidcVerifier::new(&config(&provider)).unwrap());
    verifier.prime().await;
    (provider, verifier)
}

fn now() -> i64 {
    chrono::Utc::now().timestamp()
}

async fn jwks_fetches(provider: &FakeProvider) -> usize {
    provider
        .server
        .received_requests()
        .await
        .unwrap()
        .iter()
        .filter(|r| r.url.path() == super::testing::JWKS_PATH)
        .count()
}

#[tokio::test]
async fn oidc_valid_rs256_es256_and_eddsa_tokens_are_accepted() {
    let (rsa, ec, ed) = (
        TestKey::rsa("rsa-1"),
        TestKey::ec("ec-1"),
        TestKey::ed("ed-1"),
    );
    let (provider, verifier) = primed(&[&rsa, &ec, &ed]).await;
    for key in [&rsa, &ec, &ed] {
        let claims = provider.claims("alice", AUD, &["sre", "dev"]);
        let identity = verifier.verify(&key.sign(&claims)).await;
        let identity = identity.unwrap_or_else(|e| panic!("{:?} refused: {e:?}", key.alg));
        assert_eq!(identity.issuer, provider.issuer());
        assert_eq!(identity.subject, "alice");
        assert_eq!(identity.groups, ["sre", "dev"]);
        assert_eq!(
            identity.expires_at.timestamp(),
            claims["exp"].as_i64().unwrap()
        );
    }
    // Any one of the configured audiences will do, also inside an array.
    let mut claims = provider.claims("bob", "other-api", &[]);
    assert!(verifier.verify(&rsa.sign(&claims)).await.is_ok());
    claims["aud"] = json!(["someone-else", AUD]);
    let identity = verifier.verify(&rsa.sign(&claims)).await.unwrap();
    assert!(identity.groups.is_empty());
}

#[tokio::test]
async fn oidc_alg_none_is_refused() {
    let rsa = TestKey::rsa("rsa-1");
    let (provider, verifier) = primed(&[&rsa]).await;
    let claims = provider.claims("alice", AUD, &[]);
    for alg in ["none", "None", "NONE", ""] {
        let token = forge(&json!({ "alg": alg, "kid": "rsa-1" }), &claims, b"");
        assert_eq!(
            verifier.verify(&token).await,
            Err(OidcError::AlgNotAllowed),
            "{alg}"
        );
    }
    // ...and with a signature copied from a genuine token.
    let genuine = rsa.sign(&claims);
    let signature = genuine.rsplit('.').next().unwrap();
    let token = format!(
        "{}.{signature}",
        forge(&json!({ "alg": "none", "kid": "rsa-1" }), &claims, b"").trim_end_matches('.')
    );
    assert_eq!(verifier.verify(&token).await, Err(OidcError::AlgNotAllowed));
}

#[tokio::test]
async fn oidc_hs256_signed_with_the_rsa_public_key_is_refused() {
    let rsa = TestKey::rsa("rsa-1");
    let (provider, verifier) = primed(&[&rsa]).await;
    let claims = provider.claims("alice", AUD, &[]);
    let pem = rsa.public_pem.clone().unwrap();
    let jwk_json = serde_json::to_vec(&rsa.jwk).unwrap();
    for secret in [pem.as_bytes(), pem.trim_end().as_bytes(), &jwk_json] {
        for alg_kid in ["rsa-1", "no-such-kid"] {
            let token = forge_hs256(alg_kid, &claims, secret);
            assert_eq!(verifier.verify(&token).await, Err(OidcError::AlgNotAllowed));
        }
    }
}

#[tokio::test]
async fn oidc_a_key_is_only_used_with_its_own_algorithm() {
    let (rsa, ec) = (TestKey::rsa("rsa-1"), TestKey::ec("ec-1"));
    let (provider, verifier) = primed(&[&rsa, &ec]).await;
    let claims = provider.claims("alice", AUD, &[]);
    // RS256 signature, header naming the EC key; ES256 signature naming the RSA key.
    let mut header = Header::new(rsa.alg);
    header.kid = Some("ec-1".into());
    assert_eq!(
        verifier
            .verify(&rsa.sign_with_header(&header, &claims))
            .await,
        Err(OidcError::AlgNotAllowed)
    );
    let mut header = Header::new(ec.alg);
    header.kid = Some("rsa-1".into());
    assert_eq!(
        verifier
            .verify(&ec.sign_with_header(&header, &claims))
            .await,
        Err(OidcError::AlgNotAllowed)
    );
    // PS256 is an RSA algorithm but not in the default allow-list.
    let mut header = Header::new(jsonwebtoken::Algorithm::PS256);
    header.kid = Some("rsa-1".into());
    assert_eq!(
        verifier
            .verify(&rsa.sign_with_header(&header, &claims))
            .await,
        Err(OidcError::AlgNotAllowed)
    );
}

#[tokio::test]
async fn oidc_expired_and_not_yet_valid_tokens_are_refused_outside_the_leeway() {
    let ec = TestKey::ec("ec-1");
    let (provider, verifier) = primed(&[&ec]).await;
    let verify = |claims: Value| {
        let token = ec.sign(&claims);
        let verifier = &verifier;
        async move { verifier.verify(&token).await.map(|_| ()) }
    };
    let mut claims = provider.claims("alice", AUD, &[]);
    claims["exp"] = json!(now() - 120);
    claims["nbf"] = json!(now() - 600);
    assert_eq!(verify(claims.clone()).await, Err(OidcError::Expired));
    claims["exp"] = json!(now() - 10); // inside the 30 s leeway
    assert_eq!(verify(claims.clone()).await, Ok(()));

    let mut claims = provider.claims("alice", AUD, &[]);
    claims["nbf"] = json!(now() + 120);
    assert_eq!(verify(claims.clone()).await, Err(OidcError::NotYetValid));
    claims["nbf"] = json!(now() + 10);
    assert_eq!(verify(claims.clone()).await, Ok(()));

    let mut claims = provider.claims("alice", AUD, &[]);
    claims.as_object_mut().unwrap().remove("exp");
    assert_eq!(verify(claims).await, Err(OidcError::Malformed));
}

#[tokio::test]
async fn oidc_wrong_audience_and_wrong_issuer_are_refused() {
    let ed = TestKey::ed("ed-1");
    let (provider, verifier) = primed(&[&ed]).await;
    let verify = |claims: Value| {
        let token = ed.sign(&claims);
        let verifier = &verifier;
        async move { verifier.verify(&token).await.map(|_| ()) }
    };
    let claims = provider.claims("alice", "someone-else", &[]);
    assert_eq!(verify(claims).await, Err(OidcError::WrongAudience));
    let mut claims = provider.claims("alice", AUD, &[]);
    claims.as_object_mut().unwrap().remove("aud");
    assert_eq!(verify(claims).await, Err(OidcError::WrongAudience));

    for iss in [
        json!("https://evil.example"),
        json!(format!("{}/", provider.issuer())),
        json!([provider.issuer(), "https://evil.example"]),
        json!(null),
    ] {
        let mut claims = provider.claims("alice", AUD, &[]);
        claims["iss"] = iss.clone();
        assert!(
            matches!(
                verify(claims).await,
                Err(OidcError::WrongIssuer | OidcError::Malformed)
            ),
            "{iss}"
        );
    }
    let mut claims = provider.claims("alice", AUD, &[]);
    claims["iss"] = json!("https://evil.example");
    assert_eq!(verify(claims).await, Err(OidcError::WrongIssuer));
}

#[tokio::test]
async fn oidc_tampered_and_malformed_tokens_are_refused() {
    let rsa = TestKey::rsa("rsa-1");
    let (provider, verifier) = primed(&[&rsa]).await;
    let token = rsa.sign(&provider.claims("alice", AUD, &[]));
    let (signed, signature) = token.rsplit_once('.').unwrap();
    let (header, _) = signed.split_once('.').unwrap();
    let other_payload = forge(&json!({}), &provider.claims("mallory", AUD, &[]), b"");
    let other_payload = other_payload.split('.').nth(1).unwrap();
    let tampered = format!("{header}.{other_payload}.{signature}");
    assert_eq!(
        verifier.verify(&tampered).await,
        Err(OidcError::BadSignature)
    );
    for garbage in [
        "",
        "abc",
        "a.b",
        "a.b.c.d",
        "..",
        "!!.!!.!!",
        &format!("{token}."),
    ] {
        assert_eq!(
            verifier.verify(garbage).await,
            Err(OidcError::Malformed),
            "{garbage}"
        );
    }
    let crit = json!({ "alg": "RS256", "kid": "rsa-1", "crit": ["exp"] });
    let token = forge(&crit, &provider.claims("alice", AUD, &[]), b"sig");
    assert_eq!(verifier.verify(&token).await, Err(OidcError::Malformed));
    // A validly signed token over 16 KiB is refused before it is decoded.
    let rsa = TestKey::rsa("rsa-big");
    let mut claims = provider.claims("alice", AUD, &[]);
    claims["padding"] = "x".repeat(16 * 1024).into();
    assert_eq!(
        verifier.verify(&rsa.sign(&claims)).await,
        Err(OidcError::Malformed)
    );
}

#[tokio::test]
async fn oidc_a_request_that_goes_away_mid_download_does_not_waste_the_refresh() {
    let (old, new) = (TestKey::rsa("rsa-1"), TestKey::rsa("rsa-2"));
    let provider = FakeProvider::start().await;
    provider.discovery_mock().mount(&provider.server).await;
    FakeProvider::jwks_mock(&[&old])
        .up_to_n_times(1)
        .with_priority(1)
        .mount(&provider.server)
        .await;
    // After the first download the provider has rotated in a new key, and answers slowly.
    Mock::given(method("GET"))
        .and(wiremock::matchers::path(super::testing::JWKS_PATH))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(super::testing::jwks(&[&old, &new]))
                .set_delay(Duration::from_millis(300)),
        )
        .with_priority(2)
        .mount(&provider.server)
        .await;
    let verifier = Arc::new(OidcVerifier::new(&config(&provider)).unwrap());
    verifier.prime().await;
    verifier.advance_clock(Duration::from_secs(31));
    let token = new.sign(&provider.claims("alice", AUD, &[]));

    // The client goes away 50 ms into the download its unknown `kid` started.
    let gone = tokio::time::timeout(Duration::from_millis(50), verifier.verify(&token)).await;
    assert!(gone.is_err(), "the download should still be running");
    // The download finishes without it, so the next request, still within the cooldown,
    // finds the new key instead of being refused as an unknown kid.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(verifier.verify(&token).await.is_ok());
    assert_eq!(jwks_fetches(&provider).await, 2);
}

#[tokio::test]
async fn oidc_unknown_kid_triggers_exactly_one_jwks_fetch() {
    let rsa = TestKey::rsa("rsa-1");
    let provider = FakeProvider::start().await;
    provider
        .discovery_mock()
        .expect(1)
        .mount(&provider.server)
        .await;
    // One download at start, one for the unknown kid, none for the second unknown kid.
    FakeProvider::jwks_mock(&[&rsa])
        .expect(2)
        .mount(&provider.server)
        .await;
    let verifier = Arc::new(OidcVerifier::new(&config(&provider)).unwrap());
    verifier.prime().await;
    verifier.advance_clock(Duration::from_secs(31));

    let claims = provider.claims("alice", AUD, &[]);
    let mut header = Header::new(rsa.alg);
    header.kid = Some("made-up-1".into());
    assert_eq!(
        verifier
            .verify(&rsa.sign_with_header(&header, &claims))
            .await,
        Err(OidcError::UnknownKid)
    );
    header.kid = Some("made-up-2".into());
    assert_eq!(
        verifier
            .verify(&rsa.sign_with_header(&header, &claims))
            .await,
        Err(OidcError::UnknownKid)
    );
    // Known keys keep working without any download.
    assert!(verifier.verify(&rsa.sign(&claims)).await.is_ok());
    provider.server.verify().await;
}

#[tokio::test]
async fn oidc_a_flood_of_unknown_kids_causes_at_most_one_fetch_per_cooldown() {
    let rsa = TestKey::rsa("rsa-1");
    let (provider, verifier) = primed(&[&rsa]).await;
    assert_eq!(jwks_fetches(&provider).await, 1);
    let claims = provider.claims("alice", AUD, &[]);
    let tokens: Vec<String> = (0..50)
        .map(|i| {
            let mut header = Header::new(rsa.alg);
            header.kid = Some(format!("made-up-{i}"));
            rsa.sign_with_header(&header, &claims)
        })
        .collect();

    // Within the cooldown of the start-up download: no download at all.
    let results = futures_util::future::join_all(tokens.iter().map(|t| verifier.verify(t))).await;
    assert!(results.iter().all(|r| *r == Err(OidcError::UnknownKid)));
    assert_eq!(jwks_fetches(&provider).await, 1);

    // After it, 50 concurrent requests share one download.
    verifier.advance_clock(Duration::from_secs(31));
    let results = futures_util::future::join_all(tokens.iter().map(|t| verifier.verify(t))).await;
    assert!(results.iter().all(|r| *r == Err(OidcError::UnknownKid)));
    assert_eq!(jwks_fetches(&provider).await, 2);
}

#[tokio::test]
async fn oidc_jwks_rotation_accepts_the_new_key_and_refuses_the_removed_one() {
    let (old, new) = (TestKey::rsa("2026-old"), TestKey::ec("2026-new"));
    let (provider, verifier) = primed(&[&old]).await;
    let claims = provider.claims("alice", AUD, &[]);
    let old_token = old.sign(&claims);
    assert!(verifier.verify(&old_token).await.is_ok());
    // The second time it is answered from the verified-token cache.
    assert!(verifier.verify(&old_token).await.is_ok());

    // The provider rotates: only the new key is published from now on.
    provider.server.reset().await;
    provider
        .discovery_mock()
        .expect(0)
        .mount(&provider.server)
        .await;
    FakeProvider::jwks_mock(&[&new])
        .expect(1)
        .mount(&provider.server)
        .await;
    verifier.advance_clock(Duration::from_secs(31));

    assert!(verifier.verify(&new.sign(&claims)).await.is_ok());
    // Remembered as verified before the rotation, but the key download invalidated that.
    assert_eq!(
        verifier.verify(&old_token).await,
        Err(OidcError::UnknownKid)
    );
    provider.server.verify().await;
}

#[tokio::test]
async fn oidc_keys_older_than_the_maximum_age_are_downloaded_again() {
    let (old, new) = (TestKey::rsa("old"), TestKey::rsa("new"));
    let (provider, verifier) = primed(&[&old]).await;
    provider.server.reset().await;
    provider.serve(&[&new]).await;
    verifier.advance_clock(Duration::from_secs(3_601));
    let claims = provider.claims("alice", AUD, &[]);
    // The first request after the maximum age starts a download in the background and is
    // checked against the keys at hand; once the download lands, the old key is gone even
    // though its kid was known.
    let old_token = old.sign(&claims);
    let mut refused = None;
    for _ in 0..100 {
        let result = verifier.verify(&old_token).await;
        if result.is_err() {
            refused = Some(result);
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(refused, Some(Err(OidcError::UnknownKid)));
    assert!(verifier.verify(&new.sign(&claims)).await.is_ok());
    assert_eq!(
        jwks_fetches(&provider).await,
        1,
        "one download since the reset"
    );
}

#[tokio::test]
async fn oidc_a_provider_that_is_down_at_start_is_retried_lazily_after_the_cooldown() {
    let rsa = TestKey::rsa("rsa-1");
    let provider = FakeProvider::start().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(503))
        .expect(1)
        .mount(&provider.server)
        .await;
    let verifier = Arc::new(OidcVerifier::new(&config(&provider)).unwrap());
    verifier.prime().await;
    let token = rsa.sign(&provider.claims("alice", AUD, &[]));
    // Within the cooldown: refused without asking the provider again.
    assert_eq!(
        verifier.verify(&token).await,
        Err(OidcError::ProviderUnavailable)
    );
    provider.server.verify().await;

    provider.server.reset().await;
    provider.serve(&[&rsa]).await;
    verifier.advance_clock(Duration::from_secs(31));
    assert!(verifier.verify(&token).await.is_ok());
}

#[tokio::test]
async fn oidc_discovery_naming_another_issuer_is_not_trusted() {
    let rsa = TestKey::rsa("rsa-1");
    let provider = FakeProvider::start().await;
    Mock::given(method("GET"))
        .and(wiremock::matchers::path(super::testing::DISCOVERY_PATH))
        .respond_with(
            ResponseTemplate::new(200)
                .set_body_json(provider.discovery_document("https://evil.example")),
        )
        .mount(&provider.server)
        .await;
    FakeProvider::jwks_mock(&[&rsa])
        .expect(0)
        .mount(&provider.server)
        .await;
    let verifier = Arc::new(OidcVerifier::new(&config(&provider)).unwrap());
    verifier.prime().await;
    let token = rsa.sign(&provider.claims("alice", AUD, &[]));
    assert_eq!(
        verifier.verify(&token).await,
        Err(OidcError::ProviderUnavailable)
    );
}

#[test]
fn an_https_issuers_keys_are_never_fetched_over_plain_http() {
    let https = "https://idp.example";
    assert!(super::check_jwks_uri(https, "https://keys.idp.example/jwks").is_ok());
    assert!(super::check_jwks_uri(https, "http://127.0.0.1:8080/jwks").is_err());
    assert!(super::check_jwks_uri(https, "http://keys.idp.example/jwks").is_err());
    let local = "http://127.0.0.1:9000";
    assert!(super::check_jwks_uri(local, "http://127.0.0.1:9000/keys").is_ok());
    assert!(super::check_jwks_uri(local, "http://keys.idp.example/jwks").is_err());
}

#[test]
fn oidc_config_refuses_symmetric_algorithms_none_and_plain_http() {
    let ok = OidcConfig::new("https://idp.example", vec![AUD.into()]);
    assert!(ok.validate().is_ok());
    for issuer in ["http://127.0.0.1:8080", "http://localhost:9000/realms/x"] {
        assert!(OidcConfig::new(issuer, vec![AUD.into()]).validate().is_ok());
    }
    for issuer in [
        "http://idp.example",
        "ftp://idp.example",
        "idp.example",
        "",
        "https://user:secret@idp.example",
        "https://idp.example/?tenant=x",
        "https://idp.example/#x",
    ] {
        let bad = OidcConfig::new(issuer, vec![AUD.into()]);
        assert_eq!(
            bad.validate().map_err(|e| e.0),
            Err("PORTCULLIS_PROXY__OIDC__ISSUER"),
            "{issuer}"
        );
    }
    for algorithms in [
        vec!["HS256"],
        vec!["RS256", "HS512"],
        vec!["none"],
        vec![],
        vec!["RS1"],
    ] {
        let mut bad = ok.clone();
        bad.algorithms = algorithms.iter().map(|a| a.to_string()).collect();
        assert_eq!(
            bad.validate().map_err(|e| e.0),
            Err("PORTCULLIS_PROXY__OIDC__ALGORITHMS"),
            "{algorithms:?}"
        );
    }
    let mut bad = ok.clone();
    bad.audiences.clear();
    assert!(bad.validate().is_err());
    let mut bad = ok.clone();
    bad.groups_claim = "sub".into();
    assert_eq!(
        bad.validate().map_err(|e| e.0),
        Err("PORTCULLIS_PROXY__OIDC__GROUPS_CLAIM")
    );
    let mut bad = ok;
    bad.jwks_refresh_cooldown_secs = 0;
    assert!(bad.validate().is_err());
}

#[test]
fn oidc_config_defaults_apply_when_only_issuer_and_audiences_are_set() {
    let parsed: OidcConfig = serde_json::from_value(json!({
        "issuer": "https://idp.example",
        "audiences": [AUD],
    }))
    .unwrap();
    assert_eq!(parsed.algorithms, ["RS256", "ES256", "EdDSA"]);
    assert_eq!(parsed.groups_claim, "groups");
    assert_eq!(
        (
            parsed.leeway_secs,
            parsed.jwks_refresh_cooldown_secs,
            parsed.jwks_max_age_secs
        ),
        (30, 30, 3_600)
    );
}

/// Prints the per-request cost with the key cached (no network, no lock). A measurement, not
/// a timed assertion: `cargo test -p proxy --lib --release oidc_cached -- --ignored --nocapture`.
#[tokio::test]
#[ignore = "measurement; run in release"]
async fn oidc_cached_verification_cost() {
    let (rsa, ec, ed) = (
        TestKey::rsa("rsa-1"),
        TestKey::ec("ec-1"),
        TestKey::ed("ed-1"),
    );
    let (provider, verifier) = primed(&[&rsa, &ec, &ed]).await;
    let fetched = jwks_fetches(&provider).await;
    for key in [&rsa, &ec, &ed] {
        let token = key.sign(&provider.claims("alice", AUD, &["sre", "dev"]));
        for _ in 0..200 {
            verifier.verify(&token).await.unwrap();
        }
        let rounds = 5_000;
        let started = std::time::Instant::now();
        for _ in 0..rounds {
            std::hint::black_box(verifier.verify(std::hint::black_box(&token)).await.unwrap());
        }
        let per = started.elapsed() / rounds;
        // The signature check alone, straight on aws-lc-rs, for comparison.
        let (signed, signature) = token.rsplit_once('.').unwrap();
        let signature = URL_SAFE_NO_PAD.decode(signature).unwrap();
        let b64 = |s: &str| URL_SAFE_NO_PAD.decode(s).unwrap();
        let started = std::time::Instant::now();
        for _ in 0..rounds {
            let ok = match &key.jwk.algorithm {
                AlgorithmParameters::RSA(rsa) => signature::RsaPublicKeyComponents {
                    n: b64(&rsa.n),
                    e: b64(&rsa.e),
                }
                .verify(
                    &signature::RSA_PKCS1_2048_8192_SHA256,
                    signed.as_bytes(),
                    &signature,
                )
                .is_ok(),
                AlgorithmParameters::EllipticCurve(ec) => {
                    let point = [vec![4], b64(&ec.x), b64(&ec.y)].concat();
                    signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                        .verify(signed.as_bytes(), &signature)
                        .is_ok()
                }
                AlgorithmParameters::OctetKeyPair(ed) => {
                    signature::UnparsedPublicKey::new(&signature::ED25519, b64(&ed.x))
                        .verify(signed.as_bytes(), &signature)
                        .is_ok()
                }
                _ => false,
            };
            assert!(std::hint::black_box(ok));
        }
        let raw = started.elapsed() / rounds;
        eprintln!(
            "{:?}: {per:?} per cached verification; the signature alone: {raw:?}",
            key.alg
        );
    }
    assert_eq!(
        jwks_fetches(&provider).await,
        fetched,
        "no download when warm"
    );
}

#[tokio::test]
async fn oidc_tokens_typed_as_another_kind_of_jwt_are_refused() {
    let rsa = TestKey::rsa("rsa-1");
    let (provider, verifier) = primed(&[&rsa]).await;
    let claims = provider.claims("alice", AUD, &[]);
    let typed = |typ: Option<&str>| {
        let mut header = Header::new(rsa.alg);
        header.kid = Some(rsa.kid.clone());
        header.typ = typ.map(str::to_owned);
        rsa.sign_with_header(&header, &claims)
    };
    for accepted in [
        None,
        Some("JWT"),
        Some("jwt"),
        Some("at+jwt"),
        Some("application/at+jwt"),
    ] {
        assert!(
            verifier.verify(&typed(accepted)).await.is_ok(),
            "{accepted:?} refused"
        );
    }
    // Signed by the same issuer for the same audience, but not meant as credentials.
    for refused in [
        "logout+jwt",
        "secevent+jwt",
        "dpop+jwt",
        "application/example+jwt",
    ] {
        assert_eq!(
            verifier.verify(&typed(Some(refused))).await.err(),
            Some(OidcError::WrongType),
            "{refused}"
        );
    }
    // A logout token typed plain `JWT` is still told apart by its `events` claim.
    let mut logout = provider.claims("alice", AUD, &[]);
    logout["events"] = json!({ "http://schemas.openid.net/event/backchannel-logout": {} });
    assert_eq!(
        verifier.verify(&rsa.sign(&logout)).await.err(),
        Some(OidcError::WrongType)
    );
    // Client claims of any shape are nobody's business while no client list is set.
    let mut odd = provider.claims("alice", AUD, &[]);
    odd["azp"] = json!(["portal"]);
    odd["client_id"] = json!(7);
    assert!(verifier.verify(&rsa.sign(&odd)).await.is_ok());
}

#[tokio::test]
async fn oidc_authorized_parties_limit_the_clients_whose_tokens_count() {
    let rsa = TestKey::rsa("rsa-1");
    let provider = FakeProvider::start().await;
    provider.serve(&[&rsa]).await;
    let mut settings = config(&provider);
    settings.authorized_parties = vec!["portal".into()];
    let verifier = Arc::new(OidcVerifier::new(&settings).unwrap());
    let with = |extra: Value| {
        let mut claims = provider.claims("alice", AUD, &[]);
        if let (Some(claims), Some(extra)) = (claims.as_object_mut(), extra.as_object()) {
            claims.extend(extra.clone());
        }
        rsa.sign(&claims)
    };
    assert!(
        verifier
            .verify(&with(json!({ "azp": "portal" })))
            .await
            .is_ok()
    );
    assert!(
        verifier
            .verify(&with(json!({ "client_id": "portal" })))
            .await
            .is_ok(),
        "RFC 9068 access tokens name the client in client_id"
    );
    for provider_habit in [json!({ "appid": "portal" }), json!({ "cid": "portal" })] {
        assert!(
            verifier.verify(&with(provider_habit.clone())).await.is_ok(),
            "{provider_habit}"
        );
    }
    for other in [
        json!({ "azp": "other-app" }),
        json!({ "cid": "other-app" }),
        json!({ "azp": "other-app", "client_id": "portal" }),
        json!({}),
    ] {
        assert_eq!(
            verifier.verify(&with(other.clone())).await.err(),
            Some(OidcError::WrongClient),
            "{other}"
        );
    }
}

#[tokio::test]
async fn oidc_one_kid_on_two_keys_is_used_only_where_the_alg_tells_them_apart() {
    let (rsa, ec) = (TestKey::rsa("shared"), TestKey::ec("shared"));
    let (provider, verifier) = primed(&[&rsa, &ec]).await;
    let claims = provider.claims("alice", AUD, &[]);
    assert!(verifier.verify(&rsa.sign(&claims)).await.is_ok());
    assert!(verifier.verify(&ec.sign(&claims)).await.is_ok());

    // One key listed twice under its kid is still one key.
    let (provider, verifier) = primed(&[&rsa, &rsa]).await;
    let claims = provider.claims("alice", AUD, &[]);
    assert!(verifier.verify(&rsa.sign(&claims)).await.is_ok());

    // Two RSA keys under one kid: which one signed is anyone's guess, so neither is used
    // (whichever came last in the document used to win silently).
    let (first, second) = (TestKey::rsa("twin"), TestKey::rsa("twin"));
    let (provider, verifier) = primed(&[&first, &second]).await;
    let claims = provider.claims("alice", AUD, &[]);
    for key in [&first, &second] {
        assert_eq!(
            verifier.verify(&key.sign(&claims)).await.err(),
            Some(OidcError::UnknownKid)
        );
    }
}

#[tokio::test]
async fn oidc_one_key_listed_once_per_alg_verifies_with_each_listed_alg() {
    let rsa = TestKey::rsa("rsa-1");
    let mut as_pss = rsa.jwk.clone();
    as_pss.common.key_algorithm = Some(jsonwebtoken::jwk::KeyAlgorithm::PS256);
    let provider = FakeProvider::start().await;
    provider.discovery_mock().mount(&provider.server).await;
    Mock::given(method("GET"))
        .and(wiremock::matchers::path(super::testing::JWKS_PATH))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(json!({ "keys": [&rsa.jwk, &as_pss] })),
        )
        .mount(&provider.server)
        .await;
    let mut settings = config(&provider);
    settings.algorithms = vec!["RS256".into(), "PS256".into()];
    let verifier = Arc::new(OidcVerifier::new(&settings).unwrap());
    let claims = provider.claims("alice", AUD, &[]);
    for alg in [
        jsonwebtoken::Algorithm::RS256,
        jsonwebtoken::Algorithm::PS256,
    ] {
        let mut header = Header::new(alg);
        header.kid = Some(rsa.kid.clone());
        assert!(
            verifier
                .verify(&rsa.sign_with_header(&header, &claims))
                .await
                .is_ok(),
            "{alg:?} refused"
        );
    }
}
