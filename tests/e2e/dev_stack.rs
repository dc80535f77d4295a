//! `portcullis dev` as a whole: health, readiness, metrics, GraphQL, request ids, shutdown.

use reqwest::StatusCode;

use crate::support::{TestApp, for_each_backend};

#[tokio::test]
async fn health_readiness_metrics_and_graphql_answer_on_every_backend() {
    for_each_backend(|db| async move {
        let backend = format!("{:?}", db.backend).to_lowercase();
        let app = TestApp::spawn(db).await;
        let api = app.dev.api_url();

        let health = app.http.get(format!("{api}/healthz")).send().await.unwrap();
        assert_eq!(health.status(), StatusCode::OK);
        let ready: serde_json::Value = app
            .http
            .get(format!("{api}/readyz"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(ready["database"], "ok");

        let info = app
            .graphql("{ serverInfo { version databaseBackend } }")
            .await;
        assert_eq!(
            info["data"]["serverInfo"]["databaseBackend"],
            backend.as_str()
        );

        // A proxied request shows up in the Prometheus exposition.
        app.proxy_get("/demo/x", Some(app.admin_key())).await;
        let metrics = app
            .http
            .get(format!("{api}/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("portcullis_proxy_requests_total"),
            "{metrics}"
        );

        app.stop().await.drop_database().await;
    })
    .await;
}

#[tokio::test]
async fn graphiql_is_served_in_dev_mode() {
    let app = TestApp::spawn(migration::testing::TestDatabase::sqlite().await).await;
    let page = app
        .http
        .get(format!("{}/graphql", app.dev.api_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(
        page.text()
            .await
            .unwrap()
            .to_lowercase()
            .contains("graphiql")
    );
    app.stop().await;
}

#[tokio::test]
async fn request_ids_are_kept_when_sane_and_generated_otherwise() {
    let app = TestApp::spawn(migration::testing::TestDatabase::sqlite().await).await;
    let api = app.dev.api_url();
    let kept = app
        .http
        .get(format!("{api}/healthz"))
        .header("x-request-id", "trace-abc.123")
        .send()
        .await
        .unwrap();
    assert_eq!(kept.headers()["x-request-id"], "trace-abc.123");

    let generated = app
        .http
        .get(format!("{api}/healthz"))
        .header("x-request-id", "evil\tvalue")
        .send()
        .await
        .unwrap();
    let id = generated.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert_ne!(id, "evil\tvalue");
    assert!(uuid::Uuid::parse_str(&id).is_ok(), "{id}");

    // The proxy uses the same id on the error body and forwards it upstream.
    let refused = app
        .http
        .get(format!("{}/demo/x", app.dev.proxy_url()))
        .header("x-request-id", "rid-1")
        .send()
        .await
        .unwrap();
    assert_eq!(refused.headers()["x-request-id"], "rid-1");
    let body: serde_json::Value = refused.json().await.unwrap();
    assert_eq!(body["error"]["request_id"], "rid-1");
    let echoed: serde_json::Value = app
        .http
        .get(format!("{}/demo/x", app.dev.proxy_url()))
        .bearer_auth(app.admin_key())
        .header("x-request-id", "rid-2")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(echoed["headers"]["x-request-id"], "rid-2");
    app.stop().await;
}

#[tokio::test]
async fn the_mocked_aws_services_answer_the_real_sdk() {
    let app = TestApp::spawn(migration::testing::TestDatabase::sqlite().await).await;
    let aws = &app.dev.aws_clients;
    aws.secrets
        .create_secret()
        .name("demo/upstream")
        .secret_string("v1")
        .client_request_token("00000000-0000-0000-0000-000000000001")
        .send()
        .await
        .unwrap();
    let value = aws
        .secrets
        .get_secret_value()
        .secret_id("demo/upstream")
        .send()
        .await
        .unwrap();
    assert_eq!(value.secret_string(), Some("v1"));

    let attribute = aws_sdk_sns::types::MessageAttributeValue::builder()
        .data_type("String")
        .string_value("key_leaked")
        .build()
        .unwrap();
    let published = aws
        .sns
        .publish()
        .topic_arn("arn:aws:sns:us-east-1:000000000000:portcullis")
        .message("hello")
        .message_attributes("event_type", attribute)
        .send()
        .await
        .unwrap();
    let seen = app.dev.aws.published();
    assert_eq!(seen.len(), 1);
    assert_eq!(Some(seen[0].message_id.as_str()), published.message_id());
    assert_eq!(
        seen[0].attributes.get("event_type").map(String::as_str),
        Some("key_leaked")
    );
    app.stop().await;
}

#[tokio::test]
async fn the_demo_route_injects_a_managed_credential_that_rotate_secret_replaces() {
    use std::time::Duration;

    use api::bootstrap::{DEMO_UPSTREAM_HEADER, DEMO_UPSTREAM_SECRET};

    use crate::{graphql_support::ok, support::eventually};

    async fn seen(app: &TestApp) -> String {
        let echoed: serde_json::Value = app
            .proxy_get("/demo/x", Some(app.admin_key()))
            .await
            .json()
            .await
            .unwrap();
        echoed["headers"][DEMO_UPSTREAM_HEADER]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }

    let app =
        TestApp::spawn_with_remediation(migration::testing::TestDatabase::sqlite().await).await;
    let first = seen(&app).await;
    assert!(first.starts_with("Bearer dev-"), "{first:?}");

    ok(
        &app,
        app.admin_key(),
        "mutation($s: String!) { rotateSecret(secretId: $s) { id } }",
        serde_json::json!({ "s": DEMO_UPSTREAM_SECRET }),
    )
    .await;
    let rotated = eventually(Duration::from_secs(10), || async {
        let now = seen(&app).await;
        now.starts_with("Bearer ") && now != first
    })
    .await;
    assert!(rotated.is_some(), "the demo upstream still sees {first:?}");
    app.stop().await;
}
