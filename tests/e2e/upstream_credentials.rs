//! A route's upstream credential comes from Secrets Manager (the dev mock, through the real
//! SDK), is injected on the way out, and follows a rotation.

use std::time::Duration;

use entity::{policy_change::PolicyChangeOp, route};
use reqwest::StatusCode;
use sea_orm::{ActiveModelTrait, EntityTrait, Set};
use serde_json::Value;

use crate::support::{TestApp, eventually, for_each_backend};

/// The credential the demo upstream received, when the proxied call succeeded (a forged
/// client header must never win).
pub async fn credential_seen_upstream(app: &TestApp) -> Option<String> {
    let response = app
        .http
        .get(format!("{}/demo/x", app.dev.proxy_url()))
        .header("x-api-key", app.admin_key())
        .header("x-upstream-token", "forged-by-client")
        .send()
        .await
        .unwrap();
    if response.status() != StatusCode::OK {
        return None;
    }
    let echo: Value = response.json().await.unwrap();
    echo["headers"]["x-upstream-token"]
        .as_str()
        .map(str::to_owned)
}

/// Makes the demo route inject secret `secret_id` as `x-upstream-token`, through the feed;
/// returns the route's id.
pub async fn inject_into_demo_route(app: &TestApp, secret_id: &str) -> uuid::Uuid {
    crate::support::change_demo_route(app, |route| {
        route.upstream_credential_secret_id = Set(Some(secret_id.into()));
        route.upstream_credential_header = Set(Some("x-upstream-token".into()));
    })
    .await
}

#[tokio::test]
async fn the_upstream_credential_is_injected_and_follows_rotation() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        let secrets = &app.dev.aws_clients.secrets;
        secrets
            .create_secret()
            .name("demo/upstream-token")
            .secret_string("token-v1")
            .send()
            .await
            .unwrap();

        inject_into_demo_route(&app, "demo/upstream-token").await;

        let injected = eventually(Duration::from_secs(2), || async {
            credential_seen_upstream(&app).await.as_deref() == Some("token-v1")
        })
        .await;
        assert!(
            injected.is_some(),
            "credential not injected (or the client's forged one won)"
        );

        // Rotate: a new AWSCURRENT version, reported through the feed.
        secrets
            .put_secret_value()
            .secret_id("demo/upstream-token")
            .secret_string("token-v2")
            .client_request_token("11111111-1111-1111-1111-111111111111")
            .send()
            .await
            .unwrap();
        api::service::feed::record(
            &app.db,
            proxy::cache::kind::UPSTREAM_CREDENTIAL,
            "demo/upstream-token",
            PolicyChangeOp::Upsert,
        )
        .await
        .unwrap();
        let rotated = eventually(Duration::from_secs(2), || async {
            credential_seen_upstream(&app).await.as_deref() == Some("token-v2")
        })
        .await;
        assert!(rotated.is_some(), "rotation not picked up");
        app.stop().await.drop_database().await;
    })
    .await;
}

#[tokio::test]
async fn a_missing_upstream_credential_fails_closed_with_502() {
    let app = TestApp::spawn(migration::testing::TestDatabase::sqlite().await).await;
    let demo = route::Entity::find().one(&app.db).await.unwrap().unwrap();
    let mut active: route::ActiveModel = demo.clone().into();
    active.upstream_credential_secret_id = Set(Some("does/not/exist".into()));
    active.update(&app.db).await.unwrap();
    api::service::feed::record(
        &app.db,
        proxy::cache::kind::ROUTE,
        demo.id,
        PolicyChangeOp::Upsert,
    )
    .await
    .unwrap();
    let refused = eventually(Duration::from_secs(2), || async {
        app.proxy_get("/demo/x", Some(app.admin_key()))
            .await
            .status()
            == StatusCode::BAD_GATEWAY
    })
    .await;
    assert!(refused.is_some());
    let body: Value = app
        .proxy_get("/demo/x", Some(app.admin_key()))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(body["error"]["code"], "upstream_credential_unavailable");
    app.stop().await;
}
