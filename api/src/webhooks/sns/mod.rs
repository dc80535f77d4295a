//! `POST /webhooks/sns`: the inbound Amazon SNS HTTP(S) endpoint.
//!
//! Every message is parsed ([`message`]), its topic checked against the allow-list, its
//! signature verified ([`verify`]: SignatureVersion 1 and 2, certificate only from an
//! allow-listed `sns.<region>.amazonaws.com` URL, cached, inside its validity, message inside
//! the replay window), then:
//! * `SubscriptionConfirmation` → `GET SubscribeURL` (allow-listed too), once per MessageId;
//! * `UnsubscribeConfirmation` → logged; NEVER re-subscribed automatically;
//! * `Notification` → deduplicated by `MessageId` (`sns_message`) and mapped to
//!   `security_event`s ([`trigger`]) in the same transaction.
//!
//! Every request, accepted or refused, is recorded in the audit chain (kind `webhook`) with the
//! topic, message id and type, NEVER the message body.
//!
//! The topic is checked before the signature so that messages for topics we do not serve
//! cost no certificate fetch.

pub mod message;
#[cfg(any(test, feature = "test-util"))]
pub mod testing;
pub mod trigger;
pub mod verify;

#[cfg(test)]
mod tests;

use std::{
    collections::HashSet,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Context;
use axum::{
    Extension, Json,
    body::Bytes,
    extract::{ConnectInfo, State},
    response::{IntoResponse, Response},
};
use chrono::Utc;
use entity::{
    audit_event::{AuditDecision, AuditEventKind},
    sns_message,
};
use http::{HeaderMap, StatusCode};
use proxy::audit::AuditRecord;
use reqwest::Url;
use sea_orm::{ActiveValue::Set, DatabaseConnection, DbErr, EntityTrait, TransactionTrait};
use serde_json::{Value, json};
use uuid::Uuid;

pub use self::{
    message::{MessageError, MessageType, SnsMessage},
    trigger::{KIND_CLOUDWATCH_ALARM, KIND_KEY_LEAKED, KIND_SNS_NOTIFICATION},
    verify::{
        CertificateSource, Clock, HttpSnsClient, SnsVerifier, SubscriptionConfirmer, VerifyError,
    },
};
use crate::{AppState, config::SnsWebhookConfig};

/// The route path.
pub const PATH: &str = "/webhooks/sns";
/// Largest accepted body: an SNS message at its 256 KiB maximum, even if JSON escaping
/// quadruples it, plus the envelope.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// The webhook's collaborators, built once at startup.
pub struct SnsWebhook {
    /// Signature verification with its certificate cache.
    verifier: SnsVerifier,
    /// Confirms subscriptions.
    confirmer: Arc<dyn SubscriptionConfirmer>,
    /// Allow-listed topic ARNs.
    allowed_topics: HashSet<String>,
}

/// Why a message was refused. Each variant has a stable [`SnsError::code`].
#[derive(Debug, thiserror::Error)]
pub enum SnsError {
    /// Not a well-formed SNS message.
    #[error(transparent)]
    BadMessage(#[from] MessageError),
    /// The signature, certificate or timestamp does not verify.
    #[error(transparent)]
    Verify(#[from] VerifyError),
    /// The topic is not in `allowed_topics`.
    #[error("the topic is not allowed")]
    TopicNotAllowed,
    /// `SubscribeURL` is not an https SNS URL; nothing was called.
    #[error("untrusted SubscribeURL: {0}")]
    UntrustedSubscribeUrl(#[source] verify::UntrustedUrl),
    /// SNS did not accept the confirmation.
    #[error("the subscription could not be confirmed")]
    ConfirmationFailed(#[source] verify::FetchError),
    /// The database failed.
    #[error("database error")]
    Database(#[from] DbErr),
}

/// What happened to an accepted message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A new notification, stored as these security events.
    Accepted(Vec<Uuid>),
    /// A MessageId seen before: nothing done.
    Duplicate,
    /// The subscription was confirmed.
    Confirmed,
    /// An unsubscribe confirmation was recorded.
    Unsubscribed,
}

/// What the audit record may say about a message (never its body).
#[derive(Debug, Default, Clone)]
struct Seen {
    topic_arn: Option<String>,
    message_id: Option<String>,
    message_type: Option<String>,
}

// === impl SnsWebhook ===

impl SnsWebhook {
    /// The production webhook: system clock, reqwest (or the configured overrides).
    pub fn from_config(config: &SnsWebhookConfig) -> anyhow::Result<Self> {
        let base = |url: &Option<String>| {
            url.as_deref()
                .map(Url::parse)
                .transpose()
                .context("invalid SNS override URL")
        };
        let certs = HttpSnsClient::new(base(&config.cert_url_override)?)
            .context("failed to build the SNS certificate client")?;
        let confirmer = HttpSnsClient::new(base(&config.subscribe_url_override)?)
            .context("failed to build the SNS confirmation client")?;
        if config.cert_url_override.is_some() || config.subscribe_url_override.is_some() {
            tracing::warn!("SNS webhook URL overrides are set: for tests and development only");
        }
        Ok(Self::new(
            SnsVerifier::new(
                Arc::new(certs),
                SnsVerifier::system_clock(),
                Duration::from_secs(config.max_message_age_secs),
            ),
            Arc::new(confirmer),
            config.allowed_topics.iter().cloned(),
        ))
    }

    /// A webhook over explicit collaborators (tests pin the verifier's clock).
    pub fn new(
        verifier: SnsVerifier,
        confirmer: Arc<dyn SubscriptionConfirmer>,
        allowed_topics: impl IntoIterator<Item = String>,
    ) -> Self {
        Self {
            verifier,
            confirmer,
            allowed_topics: allowed_topics.into_iter().collect(),
        }
    }

    /// Parses, checks and applies one message body.
    pub async fn handle(&self, db: &DatabaseConnection, body: &[u8]) -> Result<Outcome, SnsError> {
        self.handle_seen(db, body, &mut Seen::default()).await
    }

    #[tracing::instrument(skip_all, fields(topic_arn, message_id, message_type))]
    async fn handle_seen(
        &self,
        db: &DatabaseConnection,
        body: &[u8],
        seen: &mut Seen,
    ) -> Result<Outcome, SnsError> {
        let message = match SnsMessage::parse(body) {
            Ok(message) => message,
            Err(error) => {
                *seen = Seen::guess(body);
                return Err(error.into());
            }
        };
        // Unverified yet: bounded before it reaches the audit trail.
        *seen = Seen {
            topic_arn: Some(bounded(&message.topic_arn)),
            message_id: Some(bounded(&message.message_id)),
            message_type: Some(message.message_type.as_str().to_owned()),
        };
        let span = tracing::Span::current();
        span.record("topic_arn", message.topic_arn.as_str());
        span.record("message_id", message.message_id.as_str());
        span.record("message_type", message.message_type.as_str());
        if !self.allowed_topics.contains(&message.topic_arn) {
            return Err(SnsError::TopicNotAllowed);
        }
        self.verifier.verify(&message).await?;
        match message.message_type {
            MessageType::Notification => accept_notification(db, &message).await,
            MessageType::SubscriptionConfirmation => self.confirm(db, &message).await,
            MessageType::UnsubscribeConfirmation => {
                // Never re-subscribe on our own: an operator decides (see the README).
                tracing::warn!(topic_arn = %message.topic_arn, "SNS subscription was removed");
                Ok(if record_message(db, &message).await? {
                    Outcome::Unsubscribed
                } else {
                    Outcome::Duplicate
                })
            }
        }
    }

    /// Confirms a subscription once per MessageId.
    async fn confirm(
        &self,
        db: &DatabaseConnection,
        message: &SnsMessage,
    ) -> Result<Outcome, SnsError> {
        let url = verify::trusted_sns_url(message.subscribe_url.as_deref().unwrap_or(""), false)
            .map_err(SnsError::UntrustedSubscribeUrl)?;
        if sns_message::Entity::find_by_id(message.message_id.clone())
            .one(db)
            .await?
            .is_some()
        {
            return Ok(Outcome::Duplicate);
        }
        self.confirmer
            .confirm(&url)
            .await
            .map_err(SnsError::ConfirmationFailed)?;
        tracing::info!(topic_arn = %message.topic_arn, "SNS subscription confirmed");
        record_message(db, message).await?;
        Ok(Outcome::Confirmed)
    }
}

/// Stores the MessageId and the notification's security events in one transaction; a
/// MessageId already stored means a redelivery, and nothing is done.
async fn accept_notification(
    db: &DatabaseConnection,
    message: &SnsMessage,
) -> Result<Outcome, SnsError> {
    let trigger = trigger::classify(message);
    let txn = db.begin().await?;
    if !record_message(&txn, message).await? {
        return Ok(Outcome::Duplicate);
    }
    let ids = trigger::store_events(&txn, message, &trigger).await?;
    txn.commit().await?;
    Ok(Outcome::Accepted(ids))
}

/// Inserts the `sns_message` row; `false` if the MessageId was already there.
async fn record_message<C: sea_orm::ConnectionTrait>(
    db: &C,
    message: &SnsMessage,
) -> Result<bool, DbErr> {
    let inserted = sns_message::Entity::insert(sns_message::ActiveModel {
        message_id: Set(message.message_id.clone()),
        topic_arn: Set(message.topic_arn.clone()),
        message_type: Set(message.message_type.as_str().to_owned()),
        received_at: Set(Utc::now()),
    })
    .on_conflict_do_nothing()
    .exec_without_returning(db)
    .await?;
    Ok(matches!(inserted, sea_orm::TryInsertResult::Inserted(n) if n > 0))
}

/// `POST /webhooks/sns`. SNS sends `Content-Type: text/plain`, so any content type is read.
pub async fn receive(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let mut seen = Seen::default();
    let result = state.sns.handle_seen(&state.db, &body, &mut seen).await;
    let (status, decision, reason, extra) = match &result {
        Ok(outcome) => {
            let ids = match outcome {
                Outcome::Accepted(ids) => json!(ids),
                _ => Value::Null,
            };
            (StatusCode::OK, AuditDecision::Allow, outcome.status(), ids)
        }
        Err(error) => {
            if matches!(error, SnsError::Database(_)) {
                tracing::error!(?error, "SNS webhook failed");
            } else {
                tracing::warn!(%error, code = error.code(), "SNS message refused");
            }
            (
                error.status(),
                AuditDecision::Deny,
                error.code(),
                Value::Null,
            )
        }
    };
    let mut record = AuditRecord::new(AuditEventKind::Webhook, reason);
    record.request_id = headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    record.client_ip = connect.map(|c| c.0.0.ip().to_string());
    record.method = Some("POST".into());
    record.path = Some(PATH.into());
    record.decision = Some(decision);
    record.status = Some(i32::from(status.as_u16()));
    record.latency_us = i64::try_from(started.elapsed().as_micros()).ok();
    record.detail = json!({
        "topic_arn": seen.topic_arn,
        "message_id": seen.message_id,
        "message_type": seen.message_type,
        "security_event_ids": extra,
    });
    if let Err(error) = proxy::audit::append(&state.db, &[record]).await {
        // Unaudited is not an option: answer 500 so that SNS redelivers.
        tracing::error!(%error, "SNS webhook audit record not stored");
        return SnsError::Database(error).into_response();
    }
    match result {
        Ok(outcome) => Json(json!({ "status": outcome.status() })).into_response(),
        Err(error) => error.into_response(),
    }
}

// === impl Seen ===

impl Seen {
    /// Topic, id and type from a body that did not parse as a message, if it is JSON at all.
    fn guess(body: &[u8]) -> Self {
        let value: Value = serde_json::from_slice(body).unwrap_or(Value::Null);
        let field = |name: &str| value.get(name).and_then(Value::as_str).map(bounded);
        Self {
            topic_arn: field("TopicArn"),
            message_id: field("MessageId"),
            message_type: field("Type"),
        }
    }
}

/// At most 256 characters of a client-supplied identifier.
fn bounded(text: &str) -> String {
    text.chars().take(256).collect()
}

// === impl Outcome ===

impl Outcome {
    /// `status` of the 200 response, and the audit reason.
    pub fn status(&self) -> &'static str {
        match self {
            Self::Accepted(_) => "accepted",
            Self::Duplicate => "duplicate",
            Self::Confirmed => "confirmed",
            Self::Unsubscribed => "unsubscribed",
        }
    }
}

// === impl SnsError ===

impl SnsError {
    /// The stable error code clients and the audit trail see.
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadMessage(_) => "bad_sns_message",
            Self::Verify(VerifyError::UnsupportedSignatureVersion) => {
                "unsupported_signature_version"
            }
            Self::Verify(VerifyError::UntrustedCertificateUrl(_)) => "untrusted_certificate_url",
            Self::Verify(VerifyError::CertificateUnavailable(_)) => "certificate_unavailable",
            Self::Verify(VerifyError::InvalidCertificate(_)) => "invalid_certificate",
            Self::Verify(VerifyError::CertificateNotValidNow) => "certificate_not_valid_now",
            Self::Verify(VerifyError::StaleMessage) => "stale_message",
            Self::Verify(VerifyError::InvalidSignature) => "invalid_signature",
            Self::TopicNotAllowed => "topic_not_allowed",
            Self::UntrustedSubscribeUrl(_) => "untrusted_subscribe_url",
            Self::ConfirmationFailed(_) => "confirmation_failed",
            Self::Database(_) => "internal",
        }
    }

    /// 400 malformed, 403 refused, 502 when SNS itself failed (SNS retries 5xx), 500 ours.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadMessage(_) | Self::Verify(VerifyError::UnsupportedSignatureVersion) => {
                StatusCode::BAD_REQUEST
            }
            Self::Verify(VerifyError::CertificateUnavailable(_)) | Self::ConfirmationFailed(_) => {
                StatusCode::BAD_GATEWAY
            }
            Self::Database(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Verify(_) | Self::TopicNotAllowed | Self::UntrustedSubscribeUrl(_) => {
                StatusCode::FORBIDDEN
            }
        }
    }
}

impl IntoResponse for SnsError {
    fn into_response(self) -> Response {
        // Internal errors are opaque; the rest describe only what the client sent.
        let message = match &self {
            Self::Database(_) => "internal error".to_owned(),
            other => other.to_string(),
        };
        (
            self.status(),
            Json(json!({ "error": { "code": self.code(), "message": message } })),
        )
            .into_response()
    }
}
