//! Unit tests of the SNS webhook: the real AWS-signed fixtures, test-key-signed
//! confirmations, refusals, and the handler's effects over an in-memory SQLite.

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

use std::{sync::Arc, time::Duration};

use chrono::{DateTime, TimeZone, Utc};
use migration::MigratorTrait;
use sea_orm::{DatabaseConnection, EntityTrait};
use serde_json::{Value, json};
use wiremock::{
    Mock, MockServer, ResponseTemplate,
    matchers::{any, method, path, query_param},
};

use super::{
    testing,
    trigger::{self, Trigger},
    verify::{HttpSnsClient, SnsVerifier, UntrustedUrl, VerifyError, is_sns_host, trusted_sns_url},
    *,
};

const PHP_CERT: &str =
    "aws-php_sns-us-east-2_SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem";
const JAVA_CERT: &str = "aws-sdk-java-v2_unit-test-public-cert.pem";

fn fixture(name: &str) -> String {
    let path = format!(
        "{}/../tests/fixtures/sns/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

fn fixture_json(name: &str) -> Value {
    serde_json::from_str(&fixture(name)).unwrap()
}

fn pinned(at: DateTime<Utc>) -> Clock {
    Arc::new(move || at)
}

fn parse(value: &Value) -> SnsMessage {
    SnsMessage::parse(value.to_string().as_bytes()).unwrap()
}

/// A wiremock server serving `cert` for any `.pem` path.
async fn cert_server(cert: &str) -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(wiremock::matchers::path_regex(r"\.pem$"))
        .respond_with(ResponseTemplate::new(200).set_body_string(fixture(cert)))
        .mount(&server)
        .await;
    server
}

fn verifier(server: &MockServer, clock: Clock, max_age: Duration) -> SnsVerifier {
    let source = HttpSnsClient::new(Some(server.uri().parse().unwrap())).unwrap();
    SnsVerifier::new(Arc::new(source), clock, max_age)
}

/// Verifies `value` with the clock pinned to its own Timestamp.
async fn verify_pinned(value: &Value, cert: &str) -> Result<(), VerifyError> {
    let server = cert_server(cert).await;
    let message = parse(value);
    verifier(&server, pinned(message.sent_at), Duration::from_secs(3600))
        .verify(&message)
        .await
}

// === real AWS-signed fixtures ===

#[tokio::test]
async fn the_four_real_aws_signed_messages_verify_with_the_clock_pinned() {
    for (name, cert) in [
        ("aws-php_http_notification_sigv1.json", PHP_CERT),
        ("aws-php_http_notification_sigv2.json", PHP_CERT),
        ("aws-php_http_notification_subject_sigv1.json", PHP_CERT),
        ("aws-sdk-java-v2_sample-message.json", JAVA_CERT),
    ] {
        let result = verify_pinned(&fixture_json(name), cert).await;
        assert!(result.is_ok(), "{name}: {result:?}");
    }
}

#[tokio::test]
async fn the_lambda_event_shape_verifies_after_key_normalisation() {
    let mut value = fixture_json("aws-php_http_notification_sigv1.json");
    let object = value.as_object_mut().unwrap();
    let cert_url = object.remove("SigningCertURL").unwrap();
    let unsubscribe = object.remove("UnsubscribeURL").unwrap();
    object.insert("SigningCertUrl".into(), cert_url);
    object.insert("UnsubscribeUrl".into(), unsubscribe);
    object.insert("Subject".into(), Value::Null);
    verify_pinned(&value, PHP_CERT).await.unwrap();
}

#[test]
fn the_string_to_sign_is_the_documented_one() {
    let message = parse(&fixture_json("aws-php_http_notification_sigv1.json"));
    assert_eq!(
        message.string_to_sign(),
        "Message\nHello world\nMessageId\n792cda85-518f-5dd3-9163-81d851212f3a\n\
         Timestamp\n2022-07-28T21:23:58.317Z\nTopicArn\n\
         arn:aws:sns:us-east-2:295079676684:publish-and-verify-892f85fe-4836-424d-8188-ab85bef0f362\n\
         Type\nNotification\n"
    );
}

#[tokio::test]
async fn a_tampered_message_is_refused() {
    for name in [
        "aws-php_http_notification_sigv1.json",
        "aws-php_http_notification_sigv2.json",
    ] {
        let mut value = fixture_json(name);
        value["Message"] = json!("Hello world!");
        let result = verify_pinned(&value, PHP_CERT).await;
        assert!(
            matches!(result, Err(VerifyError::InvalidSignature)),
            "{name}: {result:?}"
        );
    }
    // Changing a signed field other than Message is caught as well.
    let mut value = fixture_json("aws-php_http_notification_subject_sigv1.json");
    value["Subject"] = json!("Hello world!");
    let result = verify_pinned(&value, PHP_CERT).await;
    assert!(matches!(result, Err(VerifyError::InvalidSignature)));
}

#[tokio::test]
async fn a_bad_signature_is_refused() {
    let mut value = fixture_json("aws-php_http_notification_sigv1.json");
    value["Signature"] = json!("bad");
    let result = verify_pinned(&value, PHP_CERT).await;
    assert!(matches!(result, Err(VerifyError::InvalidSignature)));
    // A well-formed base64 signature of the wrong message, too.
    value["Signature"] = fixture_json("aws-php_http_notification_sigv2.json")["Signature"].clone();
    let result = verify_pinned(&value, PHP_CERT).await;
    assert!(matches!(result, Err(VerifyError::InvalidSignature)));
}

#[tokio::test]
async fn a_v1_signature_does_not_pass_as_v2() {
    let mut value = fixture_json("aws-php_http_notification_sigv1.json");
    value["SignatureVersion"] = json!("2");
    let result = verify_pinned(&value, PHP_CERT).await;
    assert!(matches!(result, Err(VerifyError::InvalidSignature)));
}

#[tokio::test]
async fn signature_version_3_is_refused_before_any_fetch() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&server)
        .await;
    let mut value = fixture_json("aws-php_http_notification_sigv1.json");
    value["SignatureVersion"] = json!("3");
    let message = parse(&value);
    let result = verifier(&server, pinned(message.sent_at), Duration::from_secs(3600))
        .verify(&message)
        .await;
    assert!(matches!(
        result,
        Err(VerifyError::UnsupportedSignatureVersion)
    ));
}

#[tokio::test]
async fn untrusted_certificate_urls_are_refused_before_any_fetch() {
    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_body_string(fixture(PHP_CERT)))
        .expect(0)
        .mount(&server)
        .await;
    let cases = [
        (
            "http://sns.us-east-2.amazonaws.com/SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem",
            UntrustedUrl::NotHttps,
        ),
        (
            "https://sns.us-east-1.amazonaws.com.evil.com/SimpleNotificationService-x.pem",
            UntrustedUrl::Host,
        ),
        (
            "https://evil.com/sns.us-east-1.amazonaws.com/SimpleNotificationService-x.pem",
            UntrustedUrl::Host,
        ),
        (
            "https://evil.com/sns.us-east-1.amazonaws.com",
            UntrustedUrl::Host,
        ),
        (
            "https://sns.us-east-2.amazonaws.com/SimpleNotificationService-x.crt",
            UntrustedUrl::NotPem,
        ),
        (
            "https://sns.us-east-2.amazonaws.com@evil.com/x.pem",
            UntrustedUrl::Authority,
        ),
        (
            "https://evil.com@sns.us-east-2.amazonaws.com/x.pem",
            UntrustedUrl::Authority,
        ),
        (
            "https://sns.us-east-2.amazonaws.com:8443/x.pem",
            UntrustedUrl::Authority,
        ),
        ("https://sns.x.amazonaws.com/x.pem", UntrustedUrl::Host),
        (
            "https://sqs.us-east-2.amazonaws.com/x.pem",
            UntrustedUrl::Host,
        ),
        ("https://1.2.3.4/x.pem", UntrustedUrl::Host),
        (
            "file:///etc/sns.us-east-2.amazonaws.com.pem",
            UntrustedUrl::NotHttps,
        ),
        ("not a url", UntrustedUrl::Unparsable),
    ];
    for (url, expected) in cases {
        let mut value = fixture_json("aws-php_http_notification_sigv1.json");
        value["SigningCertURL"] = json!(url);
        let message = parse(&value);
        let result = verifier(&server, pinned(message.sent_at), Duration::from_secs(3600))
            .verify(&message)
            .await;
        match result {
            Err(VerifyError::UntrustedCertificateUrl(reason)) => {
                assert_eq!(reason, expected, "{url}");
            }
            other => panic!("{url}: {other:?}"),
        }
    }
    // `.expect(0)` is checked when the server drops.
}

// === confirmations signed with the TEST key ===

#[tokio::test]
async fn test_signed_confirmations_verify_with_signature_versions_1_and_2() {
    for name in [
        "test-signed_subscription_confirmation_sigv1.json",
        "test-signed_subscription_confirmation_sigv2.json",
        "test-signed_unsubscribe_confirmation_sigv1.json",
        "test-signed_unsubscribe_confirmation_sigv2.json",
    ] {
        let value = fixture_json(name);
        let result = verify_pinned(&value, "test-signer.cert.pem").await;
        assert!(result.is_ok(), "{name}: {result:?}");
        // The confirmation string-to-sign covers SubscribeURL and Token.
        for field in ["SubscribeURL", "Token"] {
            let mut tampered = value.clone();
            tampered[field] = json!(format!("{}x", value[field].as_str().unwrap()));
            let result = verify_pinned(&tampered, "test-signer.cert.pem").await;
            assert!(
                matches!(result, Err(VerifyError::InvalidSignature)),
                "{name} {field}: {result:?}"
            );
        }
    }
}

#[tokio::test]
async fn a_message_signed_at_run_time_with_the_test_key_verifies() {
    let now = Utc::now();
    let value = testing::notification(testing::TEST_TOPIC, "m-1", "hello", Some("hi"), now);
    verify_pinned(&value, "test-signer.cert.pem").await.unwrap();
    // The AWS certificate does not verify a test-key signature.
    let result = verify_pinned(&value, PHP_CERT).await;
    assert!(result.is_err());
}

// === clock: validity and replay window ===

#[tokio::test]
async fn a_clock_outside_the_certificate_validity_is_refused() {
    let value = fixture_json("aws-php_http_notification_sigv1.json");
    let message = parse(&value);
    let server = cert_server(PHP_CERT).await;
    // The certificate expired on 2022-08-17; a wide replay window isolates the validity check.
    let after_expiry = Utc.with_ymd_and_hms(2023, 1, 1, 0, 0, 0).unwrap();
    let result = verifier(
        &server,
        pinned(after_expiry),
        Duration::from_secs(10 * 365 * 86400),
    )
    .verify(&message)
    .await;
    assert!(
        matches!(result, Err(VerifyError::CertificateNotValidNow)),
        "{result:?}"
    );
    // With the system clock, the real (expired) certificate is refused too.
    let result = verifier(
        &server,
        SnsVerifier::system_clock(),
        Duration::from_secs(10 * 365 * 86400),
    )
    .verify(&message)
    .await;
    assert!(
        matches!(result, Err(VerifyError::CertificateNotValidNow)),
        "{result:?}"
    );
}

#[tokio::test]
async fn a_message_older_than_the_replay_window_is_refused() {
    let value = fixture_json("aws-php_http_notification_sigv2.json");
    let message = parse(&value);
    let server = cert_server(PHP_CERT).await;
    let hour = Duration::from_secs(3600);
    let at = |minutes: i64| pinned(message.sent_at + chrono::Duration::minutes(minutes));
    verifier(&server, at(59), hour)
        .verify(&message)
        .await
        .unwrap();
    let result = verifier(&server, at(61), hour).verify(&message).await;
    assert!(matches!(result, Err(VerifyError::StaleMessage)));
    // A Timestamp far in the future is refused as well.
    let result = verifier(&server, at(-30), hour).verify(&message).await;
    assert!(matches!(result, Err(VerifyError::StaleMessage)));
}

#[tokio::test]
async fn the_certificate_is_fetched_once_and_cached() {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(
            "/SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem",
        ))
        .respond_with(ResponseTemplate::new(200).set_body_string(fixture(PHP_CERT)))
        .expect(1)
        .mount(&server)
        .await;
    let first = parse(&fixture_json("aws-php_http_notification_sigv1.json"));
    let verifier = verifier(&server, pinned(first.sent_at), Duration::from_secs(3600));
    for name in [
        "aws-php_http_notification_sigv1.json",
        "aws-php_http_notification_sigv2.json",
        "aws-php_http_notification_sigv1.json",
    ] {
        verifier.verify(&parse(&fixture_json(name))).await.unwrap();
    }
}

#[tokio::test]
async fn a_certificate_that_cannot_be_fetched_or_parsed_is_refused() {
    let server = MockServer::start().await;
    Mock::given(path(
        "/SimpleNotificationService-7ff5318490ec183fbaddaa2a969abfda.pem",
    ))
    .respond_with(ResponseTemplate::new(404))
    .mount(&server)
    .await;
    let message = parse(&fixture_json("aws-php_http_notification_sigv1.json"));
    let result = verifier(&server, pinned(message.sent_at), Duration::from_secs(3600))
        .verify(&message)
        .await;
    assert!(matches!(
        result,
        Err(VerifyError::CertificateUnavailable(_))
    ));

    let server = MockServer::start().await;
    Mock::given(any())
        .respond_with(ResponseTemplate::new(200).set_body_string("not a certificate"))
        .mount(&server)
        .await;
    let result = verifier(&server, pinned(message.sent_at), Duration::from_secs(3600))
        .verify(&message)
        .await;
    assert!(matches!(result, Err(VerifyError::InvalidCertificate(_))));
}

// === parsing ===

#[test]
fn sns_hosts_follow_the_aws_pattern() {
    for host in [
        "sns.us-east-1.amazonaws.com",
        "sns.eu-west-3.amazonaws.com",
        "sns.cn-north-1.amazonaws.com.cn",
        "sns.us-gov-west-1.amazonaws.com",
    ] {
        assert!(is_sns_host(host), "{host}");
    }
    for host in [
        "sns.amazonaws.com",
        "sns.us.amazonaws.com",
        "sns.us-east-1.amazonaws.com.evil.com",
        "evil-sns.us-east-1.amazonaws.com",
        "sns.us_east_1.amazonaws.com",
        "sns.us-east-1.evil.amazonaws.com",
        "xsns.us-east-1.amazonaws.com",
        "",
    ] {
        assert!(!is_sns_host(host), "{host}");
    }
    assert!(
        trusted_sns_url(
            "https://sns.us-east-1.amazonaws.com/?Action=ConfirmSubscription",
            false
        )
        .is_ok()
    );
}

#[test]
fn malformed_messages_are_refused_with_a_reason() {
    let valid = fixture_json("aws-php_http_notification_sigv1.json");
    assert!(matches!(
        SnsMessage::parse(b"not json"),
        Err(MessageError::Json(_))
    ));
    assert!(matches!(
        SnsMessage::parse(b"[]"),
        Err(MessageError::Json(_))
    ));
    for field in [
        "Type",
        "MessageId",
        "TopicArn",
        "Message",
        "Timestamp",
        "Signature",
        "SignatureVersion",
        "SigningCertURL",
    ] {
        let mut value = valid.clone();
        value.as_object_mut().unwrap().remove(field);
        let result = SnsMessage::parse(value.to_string().as_bytes());
        assert!(result.is_err(), "{field}");
    }
    let mut value = valid.clone();
    value["Type"] = json!("Surprise");
    assert_eq!(
        SnsMessage::parse(value.to_string().as_bytes()).unwrap_err(),
        MessageError::UnknownType
    );
    let mut value = valid;
    value["Timestamp"] = json!("yesterday");
    assert_eq!(
        SnsMessage::parse(value.to_string().as_bytes()).unwrap_err(),
        MessageError::BadTimestamp
    );
    // A confirmation needs SubscribeURL and Token.
    let mut value = fixture_json("test-signed_subscription_confirmation_sigv2.json");
    value.as_object_mut().unwrap().remove("Token");
    assert_eq!(
        SnsMessage::parse(value.to_string().as_bytes()).unwrap_err(),
        MessageError::Missing("Token")
    );
}

// === triggers ===

fn notification_with(message: &str, attributes: Value) -> SnsMessage {
    let mut value = testing::notification(testing::TEST_TOPIC, "m", message, None, Utc::now());
    value["MessageAttributes"] = attributes;
    parse(&value)
}

#[test]
fn notifications_map_to_triggers() {
    let key = proxy::keys::PlainToken::generate(
        proxy::keys::TokenKind::ApiKey,
        proxy::keys::TokenEnv::Live,
    );
    let prefix = key.lookup_prefix().to_owned();

    let body = json!({"type": "credential_leaked", "key_prefix": prefix}).to_string();
    assert_eq!(
        trigger::classify(&notification_with(&body, json!({}))),
        Trigger::KeyLeaked {
            prefixes: vec![prefix.clone()],
            source: "body"
        }
    );
    let text = format!("found {} in a public gist", key.expose_secret());
    assert_eq!(
        trigger::classify(&notification_with(&text, json!({}))),
        Trigger::KeyLeaked {
            prefixes: vec![prefix.clone()],
            source: "message_text"
        }
    );
    let attributes = json!({"event_type": {"Type": "String", "Value": "key_leaked"}});
    assert_eq!(
        trigger::classify(&notification_with(&text, attributes)),
        Trigger::KeyLeaked {
            prefixes: vec![prefix],
            source: "attribute"
        }
    );
    // A token-shaped string with a bad checksum is not a key.
    let mut fake = key.expose_secret().to_owned();
    fake.pop();
    fake.push(if key.expose_secret().ends_with('A') {
        'B'
    } else {
        'A'
    });
    assert_eq!(
        trigger::classify(&notification_with(&fake, json!({}))),
        Trigger::Notification
    );

    let alarm = json!({"AlarmName": "5xx-high", "NewStateValue": "ALARM", "OldStateValue": "OK"});
    match trigger::classify(&notification_with(&alarm.to_string(), json!({}))) {
        Trigger::CloudWatchAlarm {
            name,
            new_state,
            extra,
        } => {
            assert_eq!((name.as_str(), new_state.as_str()), ("5xx-high", "ALARM"));
            assert_eq!(extra["OldStateValue"], "OK");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        trigger::classify(&notification_with("hello", json!({}))),
        Trigger::Notification
    );
}

// === the handler over SQLite ===

async fn database() -> DatabaseConnection {
    let db = sea_orm::Database::connect("sqlite::memory:").await.unwrap();
    migration::Migrator::up(&db, None).await.unwrap();
    db
}

/// A webhook over the test key's certificate and a confirmation endpoint, both on `server`,
/// with the clock pinned to `now`.
fn webhook(server: &MockServer, now: DateTime<Utc>, topics: &[&str]) -> SnsWebhook {
    let client = Arc::new(HttpSnsClient::new(Some(server.uri().parse().unwrap())).unwrap());
    SnsWebhook::new(
        SnsVerifier::new(client.clone(), pinned(now), Duration::from_secs(3600)),
        client,
        topics.iter().map(|t| (*t).to_owned()),
    )
}

async fn test_cert_server() -> MockServer {
    let server = MockServer::start().await;
    Mock::given(method("GET"))
        .and(path(testing::TEST_CERT_PATH))
        .respond_with(ResponseTemplate::new(200).set_body_string(testing::TEST_CERT_PEM))
        .mount(&server)
        .await;
    server
}

#[tokio::test]
async fn a_subscription_is_confirmed_once_for_an_allowed_topic_only() {
    let db = database().await;
    let value = fixture_json("test-signed_subscription_confirmation_sigv1.json");
    let message = parse(&value);
    let body = value.to_string();

    let server = test_cert_server().await;
    Mock::given(method("GET"))
        .and(path("/"))
        .and(query_param("Action", "ConfirmSubscription"))
        .and(query_param("Token", message.token.clone().unwrap()))
        .respond_with(ResponseTemplate::new(200))
        .expect(1)
        .mount(&server)
        .await;

    let refusing = webhook(
        &server,
        message.sent_at,
        &["arn:aws:sns:us-east-1:000000000000:other"],
    );
    let result = refusing.handle(&db, body.as_bytes()).await;
    assert_eq!(result.unwrap_err().code(), "topic_not_allowed");

    let allowing = webhook(&server, message.sent_at, &[testing::TEST_TOPIC]);
    assert_eq!(
        allowing.handle(&db, body.as_bytes()).await.unwrap(),
        Outcome::Confirmed
    );
    // A redelivery does not confirm again.
    assert_eq!(
        allowing.handle(&db, body.as_bytes()).await.unwrap(),
        Outcome::Duplicate
    );
}

#[tokio::test]
async fn an_unsubscribe_confirmation_is_recorded_and_never_resubscribed() {
    let db = database().await;
    let value = fixture_json("test-signed_unsubscribe_confirmation_sigv2.json");
    let message = parse(&value);
    let server = test_cert_server().await;
    Mock::given(path("/"))
        .respond_with(ResponseTemplate::new(200))
        .expect(0)
        .mount(&server)
        .await;
    let webhook = webhook(&server, message.sent_at, &[testing::TEST_TOPIC]);
    let outcome = webhook
        .handle(&db, value.to_string().as_bytes())
        .await
        .unwrap();
    assert_eq!(outcome, Outcome::Unsubscribed);
    let stored = entity::sns_message::Entity::find_by_id(message.message_id)
        .one(&db)
        .await
        .unwrap();
    assert_eq!(stored.unwrap().message_type, "UnsubscribeConfirmation");
}

#[tokio::test]
async fn a_notification_is_stored_once_as_a_security_event() {
    let db = database().await;
    let now = Utc::now();
    let value = testing::notification(testing::TEST_TOPIC, "n-1", "hello", Some("greeting"), now);
    let server = test_cert_server().await;
    let webhook = webhook(&server, now, &[testing::TEST_TOPIC]);
    let body = value.to_string();
    let Outcome::Accepted(ids) = webhook.handle(&db, body.as_bytes()).await.unwrap() else {
        panic!("not accepted");
    };
    assert_eq!(ids.len(), 1);
    assert_eq!(
        webhook.handle(&db, body.as_bytes()).await.unwrap(),
        Outcome::Duplicate
    );
    let events = entity::security_event::Entity::find()
        .all(&db)
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, KIND_SNS_NOTIFICATION);
    assert_eq!(
        events[0].status,
        entity::security_event::SecurityEventStatus::New
    );
    assert_eq!(events[0].detail["subject"], "greeting");

    // A tampered copy with a fresh MessageId is refused and stores nothing.
    let mut tampered = value;
    tampered["MessageId"] = json!("n-2");
    let error = webhook
        .handle(&db, tampered.to_string().as_bytes())
        .await
        .unwrap_err();
    assert_eq!(
        (error.code(), error.status()),
        ("invalid_signature", http::StatusCode::FORBIDDEN)
    );
    assert_eq!(
        entity::security_event::Entity::find()
            .all(&db)
            .await
            .unwrap()
            .len(),
        1
    );
}

// === configuration ===

#[test]
fn configuration_accepts_topic_arns_only() {
    use crate::config::SnsWebhookConfig;
    let ok = SnsWebhookConfig {
        allowed_topics: vec![
            "arn:aws:sns:us-east-1:000000000000:portcullis-dev".into(),
            "arn:aws-cn:sns:cn-north-1:123456789012:alerts.fifo".into(),
        ],
        cert_url_override: Some("http://127.0.0.1:9999".into()),
        ..SnsWebhookConfig::default()
    };
    assert!(ok.validate().is_ok());
    for topic in [
        "portcullis-dev",
        "arn:aws:sqs:us-east-1:000000000000:queue",
        "arn:aws:sns:us-east-1:0000:short-account",
        "arn:aws:sns:us-east-1:000000000000:",
        "arn:aws:sns:us-east-1:000000000000:a:b",
    ] {
        let bad = SnsWebhookConfig {
            allowed_topics: vec![topic.into()],
            ..SnsWebhookConfig::default()
        };
        let (var, _) = bad.validate().unwrap_err();
        assert_eq!(var, "PORTCULLIS_API__SNS__ALLOWED_TOPICS", "{topic}");
    }
    let bad = SnsWebhookConfig {
        cert_url_override: Some("ftp://x".into()),
        ..SnsWebhookConfig::default()
    };
    assert!(bad.validate().is_err());
}

#[tokio::test]
async fn a_cloudwatch_alarm_and_an_unknown_leaked_prefix_become_their_events() {
    let db = database().await;
    let now = Utc::now();
    let server = test_cert_server().await;
    let webhook = webhook(&server, now, &[testing::TEST_TOPIC]);
    let alarm = json!({
        "AlarmName": "portcullis-5xx",
        "NewStateValue": "ALARM",
        "OldStateValue": "OK",
        "NewStateReason": "Threshold Crossed",
        "Region": "US East (N. Virginia)",
    });
    let value = testing::notification(testing::TEST_TOPIC, "a-1", &alarm.to_string(), None, now);
    webhook
        .handle(&db, value.to_string().as_bytes())
        .await
        .unwrap();
    let leak = json!({"type": "credential_leaked", "key_prefix": "pk_live_AAAAAAAAAAAA"});
    let value = testing::notification(testing::TEST_TOPIC, "l-1", &leak.to_string(), None, now);
    webhook
        .handle(&db, value.to_string().as_bytes())
        .await
        .unwrap();

    let events = entity::security_event::Entity::find()
        .all(&db)
        .await
        .unwrap();
    let alarm = events
        .iter()
        .find(|e| e.kind == KIND_CLOUDWATCH_ALARM)
        .unwrap();
    assert_eq!(alarm.severity, entity::security_event::Severity::High);
    assert_eq!(alarm.detail["alarm_name"], "portcullis-5xx");
    assert_eq!(alarm.detail["new_state"], "ALARM");
    let leak = events.iter().find(|e| e.kind == KIND_KEY_LEAKED).unwrap();
    assert_eq!(leak.severity, entity::security_event::Severity::Critical);
    assert_eq!(
        (leak.api_key_id, leak.detail["key_known"].as_bool()),
        (None, Some(false))
    );
    assert_eq!(leak.detail["key_prefix"], "pk_live_AAAAAAAAAAAA");
}
