//! The SNS HTTP(S) message format and its canonical string-to-sign. Pure: no I/O.
//!
//! Spec: <https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html> and
//! <https://docs.aws.amazon.com/sns/latest/dg/http-notification-json.html>. The Lambda event
//! shape (`SigningCertUrl`, `UnsubscribeUrl`, `Subject: null`) is accepted too.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{Map, Value};

/// `Type` of an SNS message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    /// A published message.
    Notification,
    /// Sent once when a subscription is created; must be confirmed by fetching `SubscribeURL`.
    SubscriptionConfirmation,
    /// Sent when a subscription is deleted.
    UnsubscribeConfirmation,
}

/// A parsed, NOT YET VERIFIED SNS message.
#[derive(Debug, Clone)]
pub struct SnsMessage {
    /// `Type`.
    pub message_type: MessageType,
    /// `MessageId`: unique per message, the same on every redelivery.
    pub message_id: String,
    /// `TopicArn`.
    pub topic_arn: String,
    /// `Message`: the payload (free text, often JSON).
    pub message: String,
    /// `Subject` (notifications only, optional).
    pub subject: Option<String>,
    /// `Timestamp` exactly as sent (it is signed as text).
    pub timestamp: String,
    /// `Timestamp` parsed.
    pub sent_at: DateTime<Utc>,
    /// `SignatureVersion`: `1` (SHA1withRSA) or `2` (SHA256withRSA).
    pub signature_version: String,
    /// `Signature`, base64.
    pub signature: String,
    /// `SigningCertURL`.
    pub signing_cert_url: String,
    /// `SubscribeURL` (confirmations only).
    pub subscribe_url: Option<String>,
    /// `Token` (confirmations only).
    pub token: Option<String>,
    /// `MessageAttributes` (notifications; not signed).
    pub message_attributes: Map<String, Value>,
}

/// Why a body is not an SNS message. Never carries the body itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    /// Not a JSON object of the expected shape.
    #[error("the body is not an SNS JSON message: {0}")]
    Json(String),
    /// A field the message type requires is absent or empty.
    #[error("the SNS message has no {0}")]
    Missing(&'static str),
    /// `Type` is none of the three SNS types.
    #[error("unknown SNS message Type")]
    UnknownType,
    /// `Timestamp` is not RFC 3339.
    #[error("the SNS message Timestamp is not an RFC 3339 time")]
    BadTimestamp,
}

/// The wire shape, every field optional so that a missing one gets a precise error.
#[derive(Deserialize)]
struct Wire {
    #[serde(rename = "Type")]
    message_type: Option<String>,
    #[serde(rename = "MessageId")]
    message_id: Option<String>,
    #[serde(rename = "TopicArn")]
    topic_arn: Option<String>,
    #[serde(rename = "Message")]
    message: Option<String>,
    #[serde(rename = "Subject")]
    subject: Option<String>,
    #[serde(rename = "Timestamp")]
    timestamp: Option<String>,
    #[serde(rename = "SignatureVersion")]
    signature_version: Option<StringOrNumber>,
    #[serde(rename = "Signature")]
    signature: Option<String>,
    #[serde(rename = "SigningCertURL", alias = "SigningCertUrl")]
    signing_cert_url: Option<String>,
    #[serde(rename = "SubscribeURL", alias = "SubscribeUrl")]
    subscribe_url: Option<String>,
    #[serde(rename = "Token")]
    token: Option<String>,
    #[serde(rename = "MessageAttributes")]
    message_attributes: Option<Map<String, Value>>,
}

/// `SignatureVersion` is a string on the wire; tolerate a number.
#[derive(Deserialize)]
#[serde(untagged)]
enum StringOrNumber {
    String(String),
    Number(u64),
}

// === impl MessageType ===

impl MessageType {
    /// The `Type` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Notification => "Notification",
            Self::SubscriptionConfirmation => "SubscriptionConfirmation",
            Self::UnsubscribeConfirmation => "UnsubscribeConfirmation",
        }
    }

    fn parse(s: &str) -> Option<Self> {
        match s {
            "Notification" => Some(Self::Notification),
            "SubscriptionConfirmation" => Some(Self::SubscriptionConfirmation),
            "UnsubscribeConfirmation" => Some(Self::UnsubscribeConfirmation),
            _ => None,
        }
    }
}

impl fmt::Display for MessageType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl SnsMessage ===

impl SnsMessage {
    /// Parses a request body. Checks shape only; the signature is [`super::verify`]'s job.
    pub fn parse(body: &[u8]) -> Result<Self, MessageError> {
        let wire: Wire = serde_json::from_slice(body).map_err(|e| {
            // serde_json errors name a position and a category, never the input itself.
            MessageError::Json(e.to_string())
        })?;
        let required = |value: Option<String>, name: &'static str| {
            value
                .filter(|v| !v.is_empty())
                .ok_or(MessageError::Missing(name))
        };
        let message_type = MessageType::parse(&required(wire.message_type, "Type")?)
            .ok_or(MessageError::UnknownType)?;
        let timestamp = required(wire.timestamp, "Timestamp")?;
        let sent_at = DateTime::parse_from_rfc3339(&timestamp)
            .map_err(|_| MessageError::BadTimestamp)?
            .with_timezone(&Utc);
        let confirmation = message_type != MessageType::Notification;
        let (subscribe_url, token) = if confirmation {
            (
                Some(required(wire.subscribe_url, "SubscribeURL")?),
                Some(required(wire.token, "Token")?),
            )
        } else {
            (wire.subscribe_url, wire.token)
        };
        let signature_version = match wire.signature_version {
            Some(StringOrNumber::String(v)) if !v.is_empty() => v,
            Some(StringOrNumber::Number(n)) => n.to_string(),
            _ => return Err(MessageError::Missing("SignatureVersion")),
        };
        Ok(Self {
            message_type,
            message_id: required(wire.message_id, "MessageId")?,
            topic_arn: required(wire.topic_arn, "TopicArn")?,
            // An empty Message is legal for a notification; it is still signed.
            message: wire.message.ok_or(MessageError::Missing("Message"))?,
            // Lambda sends `Subject: null`; the HTTP shape omits it. Both mean "no subject".
            subject: wire.subject,
            timestamp,
            sent_at,
            signature_version,
            signature: required(wire.signature, "Signature")?,
            signing_cert_url: required(wire.signing_cert_url, "SigningCertURL")?,
            subscribe_url,
            token,
            message_attributes: wire.message_attributes.unwrap_or_default(),
        })
    }

    /// The canonical string AWS signs: `Key\nValue\n` for each signed field in byte order of
    /// the key names. Notification: `Message, MessageId, Subject (if present), Timestamp,
    /// TopicArn, Type`. Confirmations: `Message, MessageId, SubscribeURL, Timestamp, Token,
    /// TopicArn, Type`. `MessageAttributes` are NOT signed.
    pub fn string_to_sign(&self) -> String {
        let mut fields: Vec<(&str, &str)> =
            vec![("Message", &self.message), ("MessageId", &self.message_id)];
        match self.message_type {
            MessageType::Notification => {
                if let Some(subject) = &self.subject {
                    fields.push(("Subject", subject));
                }
            }
            MessageType::SubscriptionConfirmation | MessageType::UnsubscribeConfirmation => {
                fields.push(("SubscribeURL", self.subscribe_url.as_deref().unwrap_or("")));
            }
        }
        fields.push(("Timestamp", &self.timestamp));
        if self.message_type != MessageType::Notification {
            fields.push(("Token", self.token.as_deref().unwrap_or("")));
        }
        fields.push(("TopicArn", &self.topic_arn));
        fields.push(("Type", self.message_type.as_str()));
        let mut out = String::with_capacity(self.message.len() + 512);
        for (key, value) in fields {
            out.push_str(key);
            out.push('\n');
            out.push_str(value);
            out.push('\n');
        }
        out
    }

    /// The `String`/`Number` value of message attribute `name` (unsigned: a hint only).
    pub fn attribute(&self, name: &str) -> Option<&str> {
        self.message_attributes.get(name)?.get("Value")?.as_str()
    }
}
