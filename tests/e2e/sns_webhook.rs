//! `POST /webhooks/sns` end to end: messages signed with the TEST key (see
//! `tests/fixtures/sns/README.md`), the signing certificate and the SubscribeURL served by
//! wiremock through the override settings, on both backends.

use api::webhooks::sns::{KIND_KEY_LEAKED, KIND_SNS_NOTIFICATION, testing};
use chrono::Utc;
use entity::{
    audit_event::{self, AuditDecision, AuditEventKind},
    security_event::{self, SecurityEventStatus, Severity},
};
use reqwest::StatusCode;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, QueryOrder};
use serde_json::{Value, json};
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{method, path, query_param},
};

use crate::support::{TestApp, for_each_backend};

/// A wiremock server that serves the test certificate; `expected_fetches` is verified on drop.
async fn sns_server(expected_fetches: u64) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(testing::TEST_CERT_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_string(testing::TEST_CERT_PEM))
        .expect(expected_fetches)
        .mount(&server)
        .await;
    server
}

/// The stack with the test topic allowed and SNS calls pointed at `server`.
async fn spawn(db: migration::testing::TestDatabase, server: &MockServer) -> TestApp {
    let uri = server.uri();
    TestApp::spawn_with(db, |config| {
        config.api.sns.allowed_topics = vec![testing::TEST_TOPIC.to_owned()];
        config.api.sns.cert_url_override = Some(uri.clone());
        config.api.sns.subscribe_url_override = Some(uri);
    })
    .await
}

/// Posts `body` as SNS does (`text/plain`); returns the status and the JSON answer.
async fn post(app: &TestApp, body: &str) -> (StatusCode, Value) {
    let response = app
        .http
        .post(format!("{}/webhooks/sns", app.dev.api_url()))
        .header("content-type", "text/plain; charset=UTF-8")
        .header("x-amz-sns-message-type", "Notification")
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    (response.status(), response.json().await.unwrap())
}

async fn webhook_audit(app: &TestApp) -> Vec<audit_event::Model> {
    audit_event::Entity::find()
        .filter(audit_event::Column::Kind.eq(AuditEventKind::Webhook))
        .order_by_asc(audit_event::Column::Id)
        .all(&app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_signed_notification_is_stored_once_and_audited() {
    for_each_backend(|db| async move {
        let server = sns_server(1).await;
        let app = spawn(db, &server).await;
        let message = testing::notification(
            testing::TEST_TOPIC,
            "2f1b3a4c-0000-4000-8000-000000000001",
            "deploy finished",
            Some("ci"),
            Utc::now(),
        )
        .to_string();

        let (status, body) = post(&app, &message).await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, json!({"status": "accepted"}))
        );
        // A redelivery: acknowledged, no second event, no second certificate fetch.
        let (status, body) = post(&app, &message).await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, json!({"status": "duplicate"}))
        );

        let events = security_event::Entity::find().all(&app.db).await.unwrap();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].kind, KIND_SNS_NOTIFICATION);
        assert_eq!(events[0].status, SecurityEventStatus::New);
        assert_eq!(events[0].detail["topic_arn"], testing::TEST_TOPIC);

        let audit = webhook_audit(&app).await;
        let reasons: Vec<_> = audit.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(reasons, ["accepted", "duplicate"]);
        for row in &audit {
            assert_eq!(row.decision, Some(AuditDecision::Allow));
            assert_eq!(row.path.as_deref(), Some("/webhooks/sns"));
            assert_eq!(row.detail["topic_arn"], testing::TEST_TOPIC);
            assert_eq!(row.detail["message_type"], "Notification");
            assert!(!row.detail.to_string().contains("deploy finished"));
        }
        assert_eq!(audit[0].detail["security_event_ids"], json!([events[0].id]));
        app.stop().await;
    })
    .await;
}

#[tokio::test]
async fn unknown_topics_bad_messages_and_forgeries_are_refused_and_audited() {
    for_each_backend(|db| async move {
        // Neither the unknown topic nor the malformed body may cost a certificate fetch;
        // the forgery needs one.
        let server = sns_server(1).await;
        let app = spawn(db, &server).await;
        let other_topic = "arn:aws:sns:us-east-1:000000000000:someone-else";
        let unknown =
            testing::notification(other_topic, "m-unknown", "hi", None, Utc::now()).to_string();
        let (status, body) = post(&app, &unknown).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["error"]["code"], "topic_not_allowed");

        let (status, body) = post(&app, "{\"Type\": \"Notification\"").await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["code"], "bad_sns_message");

        let mut forged =
            testing::notification(testing::TEST_TOPIC, "m-forged", "hi", None, Utc::now());
        forged["Message"] = json!("block nothing");
        let (status, body) = post(&app, &forged.to_string()).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["error"]["code"], "invalid_signature");

        let mut evil_cert =
            testing::notification(testing::TEST_TOPIC, "m-evil", "hi", None, Utc::now());
        evil_cert["SigningCertURL"] = json!("https://sns.us-east-1.amazonaws.com.evil.com/x.pem");
        let (status, body) = post(&app, &evil_cert.to_string()).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["error"]["code"], "untrusted_certificate_url");

        assert!(
            security_event::Entity::find()
                .all(&app.db)
                .await
                .unwrap()
                .is_empty()
        );
        let audit = webhook_audit(&app).await;
        let reasons: Vec<_> = audit.iter().map(|r| r.reason.as_str()).collect();
        assert_eq!(
            reasons,
            [
                "topic_not_allowed",
                "bad_sns_message",
                "invalid_signature",
                "untrusted_certificate_url"
            ]
        );
        assert!(
            audit
                .iter()
                .all(|r| r.decision == Some(AuditDecision::Deny))
        );
        assert_eq!(audit[0].detail["topic_arn"], other_topic);
        assert_eq!(audit[0].detail["message_id"], "m-unknown");
        assert_eq!(audit[0].status, Some(403));
        assert_eq!(audit[1].status, Some(400));
        app.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_subscription_confirmation_for_an_allowed_topic_calls_the_subscribe_url_once() {
    for_each_backend(|db| async move {
        let server = sns_server(1).await;
        Mock::given(method("GET"))
            .and(path("/"))
            .and(query_param("Action", "ConfirmSubscription"))
            .and(query_param("TopicArn", testing::TEST_TOPIC))
            .respond_with(
                ResponseTemplate::new(200).set_body_string("<ConfirmSubscriptionResponse/>"),
            )
            .expect(1)
            .mount(&server)
            .await;
        let app = spawn(db, &server).await;
        let subscribe_url = format!(
            "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription&TopicArn={}&Token=abc",
            testing::TEST_TOPIC
        );
        let message = testing::subscription_confirmation(
            testing::TEST_TOPIC,
            "m-subscribe",
            &subscribe_url,
            Utc::now(),
        )
        .to_string();
        let (status, body) = post(&app, &message).await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, json!({"status": "confirmed"}))
        );
        let (status, body) = post(&app, &message).await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, json!({"status": "duplicate"}))
        );

        // Another topic's confirmation is refused without calling anything.
        let other = testing::subscription_confirmation(
            "arn:aws:sns:us-east-1:000000000000:someone-else",
            "m-subscribe-other",
            &subscribe_url,
            Utc::now(),
        );
        let (status, body) = post(&app, &other.to_string()).await;
        assert_eq!(status, StatusCode::FORBIDDEN);
        assert_eq!(body["error"]["code"], "topic_not_allowed");
        app.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_leaked_key_report_becomes_a_key_leaked_event_without_the_secret() {
    for_each_backend(|db| async move {
        let server = sns_server(1).await;
        let app = spawn(db, &server).await;
        let secret = app.admin_key().to_owned();
        let prefix = proxy::keys::PlainToken::parse(&secret)
            .unwrap()
            .lookup_prefix()
            .to_owned();
        let admin = app.admin_id().await;
        let key = entity::api_key::Entity::find()
            .filter(entity::api_key::Column::Prefix.eq(prefix.as_str()))
            .one(&app.db)
            .await
            .unwrap()
            .unwrap();
        let report = json!({
            "type": "credential_leaked",
            "source": "secret-scanner",
            "location": "https://github.com/example/repo/blob/main/.env",
            "match": secret,
        });
        let mut message = testing::notification(
            testing::TEST_TOPIC,
            "m-leak",
            &report.to_string(),
            Some("Secret detected"),
            Utc::now(),
        );
        message["MessageAttributes"] =
            json!({"event_type": {"Type": "String", "Value": "credential_leaked"}});
        let (status, body) = post(&app, &message.to_string()).await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, json!({"status": "accepted"}))
        );

        let events = security_event::Entity::find().all(&app.db).await.unwrap();
        assert_eq!(events.len(), 1);
        let event = &events[0];
        assert_eq!(event.kind, KIND_KEY_LEAKED);
        assert_eq!(event.severity, Severity::Critical);
        assert_eq!(event.api_key_id, Some(key.id));
        assert_eq!(event.principal_id, Some(admin));
        assert_eq!(event.detail["key_prefix"], prefix);
        let stored = format!("{event:?}");
        assert!(!stored.contains(&secret), "the secret was stored: {stored}");
        let audit = webhook_audit(&app).await;
        assert!(!format!("{audit:?}").contains(&secret));
        app.stop().await;
    })
    .await;
}
