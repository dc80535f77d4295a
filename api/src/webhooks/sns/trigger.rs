//! Maps a verified SNS notification to `security_event` rows, the remediation engine's input.
//!
//! * a leaked credential (message attribute `event_type`, a JSON body
//!   `{"type":"credential_leaked","key_prefix":"pk_live_…"}`, or a Portcullis key anywhere in
//!   the text) → [`KIND_KEY_LEAKED`], critical, one event per key;
//! * a CloudWatch alarm (JSON with `AlarmName` and `NewStateValue`) → [`KIND_CLOUDWATCH_ALARM`];
//! * anything else → [`KIND_SNS_NOTIFICATION`].
//!
//! A LEAKED KEY IS NEVER STORED: only its lookup prefix (already visible in UIs) and its id.

use std::collections::BTreeSet;

use chrono::Utc;
use entity::{
    api_key,
    security_event::{self, SecurityEventStatus, Severity},
};
use proxy::keys::{LOOKUP_RANDOM_LEN, PlainToken, TokenKind};
use sea_orm::{ActiveValue::Set, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::message::SnsMessage;

/// Security event kind: a Portcullis API key was reported leaked.
pub const KIND_KEY_LEAKED: &str = "key_leaked";
/// Security event kind: a CloudWatch alarm changed state.
pub const KIND_CLOUDWATCH_ALARM: &str = "cloudwatch_alarm";
/// Security event kind: any other notification on an allow-listed topic.
pub const KIND_SNS_NOTIFICATION: &str = "sns_notification";

/// Values of `event_type` / `type` that mean "a credential leaked".
const LEAK_EVENT_TYPES: &[&str] = &["credential_leaked", "key_leaked", "leaked_key"];
/// Keys named in one message beyond this are ignored (one event each).
const MAX_KEYS_PER_MESSAGE: usize = 20;
/// Longest text copied from a message into an event's detail.
const MAX_DETAIL_TEXT: usize = 4096;

/// What a notification means.
#[derive(Debug, Clone, PartialEq)]
pub enum Trigger {
    /// Keys reported leaked, by lookup prefix (possibly none, if the report named none).
    KeyLeaked {
        /// Distinct lookup prefixes (`pk_<env>_` + 12 characters).
        prefixes: Vec<String>,
        /// How it was recognised: `attribute`, `body` or `message_text`.
        source: &'static str,
    },
    /// A CloudWatch alarm notification.
    CloudWatchAlarm {
        /// `AlarmName`.
        name: String,
        /// `NewStateValue`: `ALARM`, `OK` or `INSUFFICIENT_DATA`.
        new_state: String,
        /// `OldStateValue`, `NewStateReason`, `Region`, `AWSAccountId` when present.
        extra: Map<String, Value>,
    },
    /// Anything else.
    Notification,
}

/// Classifies a notification. Pure.
pub fn classify(message: &SnsMessage) -> Trigger {
    let body: Option<Map<String, Value>> = serde_json::from_str(&message.message).ok();
    let field = |name: &str| {
        body.as_ref()
            .and_then(|b| b.get(name))
            .and_then(Value::as_str)
    };
    let is_leak = |v: Option<&str>| v.is_some_and(|v| LEAK_EVENT_TYPES.contains(&v));

    let mut prefixes = BTreeSet::new();
    if let Some(prefix) = field("key_prefix").and_then(lookup_prefix_of) {
        prefixes.insert(prefix);
    }
    for text in [Some(message.message.as_str()), message.subject.as_deref()]
        .into_iter()
        .flatten()
    {
        prefixes.extend(tokens_in(text));
    }
    let source = if is_leak(message.attribute("event_type")) {
        Some("attribute")
    } else if is_leak(field("type")) || is_leak(field("event_type")) {
        Some("body")
    } else if !prefixes.is_empty() {
        // A live key in a message is a leak whatever the message says.
        Some("message_text")
    } else {
        None
    };
    if let Some(source) = source {
        return Trigger::KeyLeaked {
            prefixes: prefixes.into_iter().take(MAX_KEYS_PER_MESSAGE).collect(),
            source,
        };
    }
    if let (Some(name), Some(new_state)) = (field("AlarmName"), field("NewStateValue")) {
        let mut extra = Map::new();
        for key in ["OldStateValue", "NewStateReason", "Region", "AWSAccountId"] {
            if let Some(value) = field(key) {
                extra.insert(key.to_owned(), Value::String(truncate(value)));
            }
        }
        return Trigger::CloudWatchAlarm {
            name: truncate(name),
            new_state: truncate(new_state),
            extra,
        };
    }
    Trigger::Notification
}

/// The lookup prefixes of well-formed Portcullis API keys in `text` (checksum verified).
fn tokens_in(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|word| word.starts_with("pk_"))
        .filter_map(|word| PlainToken::parse(word).ok())
        .filter(|token| token.kind() == TokenKind::ApiKey)
        .map(|token| token.lookup_prefix().to_owned())
}

/// A reported `key_prefix`: a lookup prefix as shown in UIs, or a whole key (reduced to its
/// prefix). Anything else is ignored.
fn lookup_prefix_of(reported: &str) -> Option<String> {
    if let Ok(token) = PlainToken::parse(reported) {
        return (token.kind() == TokenKind::ApiKey).then(|| token.lookup_prefix().to_owned());
    }
    let mut parts = reported.splitn(3, '_');
    let (Some("pk"), Some(env), Some(random)) = (parts.next(), parts.next(), parts.next()) else {
        return None;
    };
    let ok = matches!(env, "live" | "test" | "dev")
        && random.len() == LOOKUP_RANDOM_LEN
        && random.bytes().all(|b| b.is_ascii_alphanumeric());
    ok.then(|| reported.to_owned())
}

fn truncate(text: &str) -> String {
    match text.char_indices().nth(MAX_DETAIL_TEXT) {
        Some((end, _)) => text[..end].to_owned(),
        None => text.to_owned(),
    }
}

/// Writes the security events for `message` (inside the caller's transaction); returns
/// their ids.
pub async fn store_events<C: ConnectionTrait>(
    db: &C,
    message: &SnsMessage,
    trigger: &Trigger,
) -> Result<Vec<Uuid>, DbErr> {
    let mut base = Map::new();
    base.insert("topic_arn".into(), json!(message.topic_arn));
    base.insert("message_id".into(), json!(message.message_id));
    if let Some(subject) = &message.subject {
        base.insert("subject".into(), json!(truncate(subject)));
    }
    let mut events = Vec::new();
    match trigger {
        Trigger::KeyLeaked { prefixes, source } => {
            if prefixes.is_empty() {
                let mut detail = base.clone();
                detail.insert("source".into(), json!(source));
                detail.insert("key_prefix".into(), Value::Null);
                events.push(NewEvent {
                    kind: KIND_KEY_LEAKED,
                    severity: Severity::Critical,
                    principal_id: None,
                    api_key_id: None,
                    fingerprint: format!("{KIND_KEY_LEAKED}:sns:{}", message.message_id),
                    detail,
                });
            }
            for prefix in prefixes {
                let key = api_key::Entity::find()
                    .filter(api_key::Column::Prefix.eq(prefix.as_str()))
                    .one(db)
                    .await?;
                let mut detail = base.clone();
                detail.insert("source".into(), json!(source));
                detail.insert("key_prefix".into(), json!(prefix));
                detail.insert("key_known".into(), json!(key.is_some()));
                events.push(NewEvent {
                    kind: KIND_KEY_LEAKED,
                    severity: Severity::Critical,
                    principal_id: key.as_ref().map(|k| k.principal_id),
                    api_key_id: key.as_ref().map(|k| k.id),
                    fingerprint: match &key {
                        Some(key) => format!("{KIND_KEY_LEAKED}:{}", key.id),
                        None => format!("{KIND_KEY_LEAKED}:prefix:{prefix}"),
                    },
                    detail,
                });
            }
        }
        Trigger::CloudWatchAlarm {
            name,
            new_state,
            extra,
        } => {
            let mut detail = base;
            detail.insert("alarm_name".into(), json!(name));
            detail.insert("new_state".into(), json!(new_state));
            detail.extend(extra.clone());
            events.push(NewEvent {
                kind: KIND_CLOUDWATCH_ALARM,
                severity: if new_state == "ALARM" {
                    Severity::High
                } else {
                    Severity::Low
                },
                principal_id: None,
                api_key_id: None,
                fingerprint: format!("{KIND_CLOUDWATCH_ALARM}:{name}"),
                detail,
            });
        }
        Trigger::Notification => {
            let mut detail = base;
            detail.insert("message".into(), json!(truncate(&message.message)));
            if let Some(event_type) = message.attribute("event_type") {
                detail.insert("event_type".into(), json!(truncate(event_type)));
            }
            events.push(NewEvent {
                kind: KIND_SNS_NOTIFICATION,
                severity: Severity::Low,
                principal_id: None,
                api_key_id: None,
                fingerprint: format!(
                    "{KIND_SNS_NOTIFICATION}:{}:{}",
                    message.topic_arn, message.message_id
                ),
                detail,
            });
        }
    }
    let now = Utc::now();
    let mut ids = Vec::with_capacity(events.len());
    for event in events {
        let id = Uuid::now_v7();
        security_event::Entity::insert(security_event::ActiveModel {
            id: Set(id),
            kind: Set(event.kind.to_owned()),
            severity: Set(event.severity),
            occurred_at: Set(message.sent_at),
            principal_id: Set(event.principal_id),
            api_key_id: Set(event.api_key_id),
            client_ip: Set(None),
            route_id: Set(None),
            fingerprint: Set(event.fingerprint),
            detail: Set(Value::Object(event.detail)),
            status: Set(SecurityEventStatus::New),
            handled_by_run_id: Set(None),
            created_at: Set(now),
        })
        .exec_without_returning(db)
        .await?;
        metrics::counter!("portcullis_security_events_total", "kind" => event.kind).increment(1);
        ids.push(id);
    }
    Ok(ids)
}

struct NewEvent {
    kind: &'static str,
    severity: Severity,
    principal_id: Option<Uuid>,
    api_key_id: Option<Uuid>,
    fingerprint: String,
    detail: Map<String, Value>,
}
