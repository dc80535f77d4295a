//! TEST-ONLY helpers: SNS messages signed with the committed throw-away test key
//! (`tests/fixtures/sns/test-signer.*`, see the README there). Compiled for this crate's tests
//! and, through the `test-util` feature, for the workspace's end-to-end tests; never in the
//! product.

#![expect(clippy::unwrap_used, reason = "test helpers fail loudly")]

use aws_lc_rs::{
    rand::SystemRandom,
    signature::{RSA_PKCS1_SHA256, RsaKeyPair},
};
use base64::{Engine, engine::general_purpose::STANDARD};
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use super::message::SnsMessage;

/// The topic of the committed test-signed confirmations.
pub const TEST_TOPIC: &str = "arn:aws:sns:us-east-1:000000000000:portcullis-test";
/// Path of the test certificate under any SNS host.
pub const TEST_CERT_PATH: &str = "/SimpleNotificationService-portcullis-test.pem";
/// The (allow-listed) URL test messages name as `SigningCertURL`.
pub const TEST_CERT_URL: &str =
    "https://sns.us-east-1.amazonaws.com/SimpleNotificationService-portcullis-test.pem";
/// The self-signed TEST certificate (valid 2026-11-22 → 2126-10-29).
pub const TEST_CERT_PEM: &str = include_str!("../../../../tests/fixtures/sns/test-signer.cert.pem");
/// Its private key. PUBLIC ON PURPOSE; signs test messages only.
const TEST_KEY_PEM: &str = include_str!("../../../../tests/fixtures/sns/test-signer.key.pem");

/// A notification signed (SignatureVersion 2) with the test key.
pub fn notification(
    topic_arn: &str,
    message_id: &str,
    message: &str,
    subject: Option<&str>,
    timestamp: DateTime<Utc>,
) -> Value {
    let mut value = json!({
        "Type": "Notification",
        "MessageId": message_id,
        "TopicArn": topic_arn,
        "Message": message,
        "Timestamp": timestamp.to_rfc3339_opts(SecondsFormat::Millis, true),
        "SignatureVersion": "2",
        "SigningCertURL": TEST_CERT_URL,
        "UnsubscribeURL": format!("https://sns.us-east-1.amazonaws.com/?Action=Unsubscribe&SubscriptionArn={topic_arn}:0"),
    });
    if let Some(subject) = subject {
        value["Subject"] = json!(subject);
    }
    sign(value)
}

/// A `SubscriptionConfirmation` signed (SignatureVersion 2) with the test key.
pub fn subscription_confirmation(
    topic_arn: &str,
    message_id: &str,
    subscribe_url: &str,
    timestamp: DateTime<Utc>,
) -> Value {
    sign(json!({
        "Type": "SubscriptionConfirmation",
        "MessageId": message_id,
        "Token": "2336412f37fb687f5d51e6e2425c464de12884b5c7a1b0b5f3b4b9d1d7a1e2f3",
        "TopicArn": topic_arn,
        "Message": format!("You have chosen to subscribe to the topic {topic_arn}.\nTo confirm the subscription, visit the SubscribeURL included in this message."),
        "SubscribeURL": subscribe_url,
        "Timestamp": timestamp.to_rfc3339_opts(SecondsFormat::Millis, true),
        "SignatureVersion": "2",
        "SigningCertURL": TEST_CERT_URL,
    }))
}

/// Adds `Signature` (SHA256withRSA over the canonical string) to an unsigned message.
pub fn sign(mut value: Value) -> Value {
    value["Signature"] = json!("unsigned");
    let parsed = SnsMessage::parse(value.to_string().as_bytes()).unwrap();
    value["Signature"] = json!(sign_v2(&parsed.string_to_sign()));
    value
}

/// Base64 SHA256withRSA (PKCS#1 v1.5) signature of `text` with the test key.
pub fn sign_v2(text: &str) -> String {
    let (_, pem) = x509_parser::pem::parse_x509_pem(TEST_KEY_PEM.as_bytes()).unwrap();
    let key = RsaKeyPair::from_pkcs8(&pem.contents).unwrap();
    let mut signature = vec![0; key.public_modulus_len()];
    key.sign(
        &RSA_PKCS1_SHA256,
        &SystemRandom::new(),
        text.as_bytes(),
        &mut signature,
    )
    .unwrap();
    STANDARD.encode(signature)
}
