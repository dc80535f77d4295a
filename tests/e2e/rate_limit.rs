//! Rate limiting end to end: per-key limits with `RateLimit-*` and `Retry-After` headers,
//! remediation overrides arriving through the change feed, and one budget shared by two
//! proxies through real Redis (when `TEST_REDIS_URL` is set).

use std::{net::SocketAddr, time::Duration};

use chrono::Utc;
use entity::{policy_change::PolicyChangeOp, rate_limit_override};
use migration::testing::TestDatabase;
use reqwest::StatusCode;
use sea_orm::{ActiveModelTrait, EntityTrait, Set};
use secrecy::SecretSlice;
use serde_json::Value;
use uuid::Uuid;

use crate::support::{TEST_PEPPER_HEX, TestApp, eventually, for_each_backend};

/// A new key of the seeded admin with its own rate limit.
async fn key_with_limit(app: &TestApp, per_minute: i32, burst: i32) -> (Uuid, String) {
    let (id, key) = app.insert_key(app.admin_id().await).await;
    app.update_key(id, |row| {
        row.rate_limit_per_minute = Set(Some(per_minute));
        row.rate_limit_burst = Set(Some(burst));
    })
    .await;
    (id, key)
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("<missing>")
        .to_owned()
}

#[tokio::test]
async fn a_key_limited_to_a_burst_of_three_gets_429_on_the_fourth_request() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        let (_, key) = key_with_limit(&app, 60, 3).await;

        for remaining in ["2", "1", "0"] {
            let response = app.proxy_get("/demo/x", Some(&key)).await;
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(header(&response, "ratelimit-limit"), "3");
            assert_eq!(header(&response, "ratelimit-remaining"), remaining);
        }
        let response = app.proxy_get("/demo/x", Some(&key)).await;
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        // One request per second: the next one in at most a second, all three in three.
        assert_eq!(header(&response, "retry-after"), "1");
        assert_eq!(header(&response, "ratelimit-limit"), "3");
        assert_eq!(header(&response, "ratelimit-remaining"), "0");
        assert_eq!(header(&response, "ratelimit-reset"), "3");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "rate_limited");

        // Other keys have their own buckets (the admin key runs on the default 600/min, 100).
        let admin = app.proxy_get("/demo/x", Some(app.admin_key())).await;
        assert_eq!(admin.status(), StatusCode::OK);
        assert_eq!(header(&admin, "ratelimit-limit"), "100");

        // After a second, one more request is admitted.
        tokio::time::sleep(Duration::from_millis(1_050)).await;
        assert_eq!(
            app.proxy_get("/demo/x", Some(&key)).await.status(),
            StatusCode::OK
        );

        let db = app.stop().await;
        let reasons: Vec<String> = entity::audit_event::Entity::find()
            .all(&db.conn)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.reason)
            .collect();
        assert!(reasons.iter().any(|r| r == "rate_limited"), "{reasons:?}");
        db.drop_database().await;
    })
    .await;
}

#[tokio::test]
async fn a_remediation_override_tightens_a_key_within_a_second() {
    let app = TestApp::spawn(TestDatabase::sqlite().await).await;
    let (key_id, key) = key_with_limit(&app, 600, 100).await;
    assert_eq!(
        header(
            &app.proxy_get("/demo/x", Some(&key)).await,
            "ratelimit-limit"
        ),
        "100"
    );

    let id = Uuid::now_v7();
    rate_limit_override::ActiveModel {
        id: Set(id),
        principal_id: Set(None),
        api_key_id: Set(Some(key_id)),
        route_id: Set(None),
        per_minute: Set(1),
        burst: Set(2),
        reason: Set("test: suspected scraping".into()),
        expires_at: Set(Utc::now() + chrono::Duration::hours(1)),
        created_by: Set(Some("test".into())),
        created_at: Set(Utc::now()),
    }
    .insert(&app.db)
    .await
    .unwrap();
    api::service::feed::record(
        &app.db,
        proxy::cache::kind::RATE_LIMIT_OVERRIDE,
        id,
        PolicyChangeOp::Upsert,
    )
    .await
    .unwrap();

    let took = eventually(Duration::from_secs(1), || async {
        app.proxy_get("/demo/x", Some(&key)).await.status() == StatusCode::TOO_MANY_REQUESTS
    })
    .await;
    assert!(took.is_some(), "override not applied within 1 s");
    // The admin key is not affected.
    assert_eq!(
        app.proxy_get("/demo/x", Some(app.admin_key()))
            .await
            .status(),
        StatusCode::OK
    );
    app.stop().await;
}

/// A second proxy over the same database (and Redis), on its own socket.
struct SecondProxy {
    addr: SocketAddr,
    state: proxy::ProxyState,
    server: tokio::task::JoinHandle<()>,
}

impl SecondProxy {
    async fn start(app: &TestApp, redis_url: Option<&str>) -> Self {
        let config = proxy::ProxyConfig {
            policy_poll_interval_ms: 100,
            ..Default::default()
        };
        let pepper = SecretSlice::from(hex::decode(TEST_PEPPER_HEX).unwrap());
        let state = proxy::ProxyState::start(app.db.clone(), config, &pepper, &pepper, redis_url)
            .await
            .unwrap();
        // Like any instance, it reads upstream credentials (the demo route has one).
        state.set_secret_source(std::sync::Arc::new(api::aws::SecretsManagerSource::new(
            app.dev.aws_clients.secrets.clone(),
        )));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = proxy::router(state.clone());
        let server = tokio::spawn(async move {
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
        Self {
            addr,
            state,
            server,
        }
    }

    async fn stop(self) {
        self.server.abort();
        let _ = self.server.await;
        self.state.shutdown().await;
    }
}

#[tokio::test]
async fn two_proxies_share_one_budget_through_redis() {
    let Ok(redis_url) = std::env::var("TEST_REDIS_URL") else {
        eprintln!("skipping Redis: TEST_REDIS_URL is unset");
        return;
    };
    let app = TestApp::spawn_with(TestDatabase::sqlite().await, |config| {
        config.redis_url = Some(redis_url.clone());
    })
    .await;
    let second = SecondProxy::start(&app, Some(&redis_url)).await;
    // One request a minute, burst 3: nothing refills during the test.
    let (_, key) = key_with_limit(&app, 1, 3).await;

    let mut statuses = Vec::new();
    for _ in 0..4 {
        for base in [app.dev.proxy_url(), format!("http://{}", second.addr)] {
            let response = app
                .http
                .get(format!("{base}/demo/x"))
                .bearer_auth(&key)
                .send()
                .await
                .unwrap();
            statuses.push(response.status().as_u16());
        }
    }
    assert_eq!(
        statuses,
        [200, 200, 200, 429, 429, 429, 429, 429],
        "the two proxies spend one budget"
    );

    // A proxy without Redis has its own budget: the shared one is really in Redis.
    let alone = SecondProxy::start(&app, None).await;
    let response = app
        .http
        .get(format!("http://{}/demo/x", alone.addr))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);

    alone.stop().await;
    second.stop().await;
    app.stop().await;
}
