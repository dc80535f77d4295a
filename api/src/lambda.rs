//! The remediation worker's AWS Lambda entry: which event an invocation carries and what the
//! engine does with it.
//!
//! Two AWS sources invoke the worker: Secrets Manager, for each step of a scheduled rotation
//! (`{"Step", "SecretId", "ClientRequestToken"}`), and an EventBridge schedule (a
//! `"Scheduled Event"` from `aws.events`), which stands in for the background loops' timers.
//! This module does not depend on the Lambda runtime crate: the binary's runtime loop passes
//! each payload and the time left to [`handle_worker_event`].

use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::DbErr;
use serde::Deserialize;
use serde_json::{Value, json};

use crate::remediation::{self, Engine, RotationEvent, rotation::RotationError};

/// Kept back from the invocation's time for what runs after the run budget is spent: the
/// budget is only checked between passes over the due runs, then the outbox is dispatched
/// once and the response posted, each involving AWS calls of up to `aws_timeout_ms`.
pub const SAFETY_MARGIN: Duration = Duration::from_secs(10);

/// What an invocation asks the worker to do.
#[derive(Debug, Clone)]
pub enum WorkerEvent {
    /// One step of a rotation driven by Secrets Manager.
    Rotation(RotationEvent),
    /// An EventBridge schedule fired: one pass of the worker's jobs.
    Scheduled {
        /// The EventBridge event id.
        id: String,
        /// When the schedule fired.
        time: DateTime<Utc>,
        /// The rule(s) that fired.
        resources: Vec<String>,
    },
}

/// The fields of an EventBridge event the worker reads.
#[derive(Deserialize)]
struct EventBridgeEvent {
    id: String,
    time: DateTime<Utc>,
    #[serde(default)]
    resources: Vec<String>,
}

impl WorkerEvent {
    /// Classifies a raw invocation payload. Never echoes the payload's values in an error:
    /// whatever was sent to the function may hold secrets.
    pub fn classify(event: &Value) -> Result<Self, LambdaError> {
        let Some(object) = event.as_object() else {
            return Err(LambdaError::UnrecognisedEvent(
                "the payload is not a JSON object".into(),
            ));
        };
        // Secrets Manager's event has no `source`; these keys are what identify it.
        if object.contains_key("Step") || object.contains_key("SecretId") {
            return RotationEvent::deserialize(event)
                .map(Self::Rotation)
                .map_err(|error| {
                    LambdaError::UnrecognisedEvent(format!("rotation event: {}", describe(&error)))
                });
        }
        if object.get("source").and_then(Value::as_str) == Some("aws.events") {
            if object.get("detail-type").and_then(Value::as_str) != Some("Scheduled Event") {
                return Err(LambdaError::UnrecognisedEvent(
                    "an EventBridge event other than a \"Scheduled Event\"".into(),
                ));
            }
            return EventBridgeEvent::deserialize(event)
                .map(|scheduled| Self::Scheduled {
                    id: scheduled.id,
                    time: scheduled.time,
                    resources: scheduled.resources,
                })
                .map_err(|error| {
                    LambdaError::UnrecognisedEvent(format!("scheduled event: {}", describe(&error)))
                });
        }
        Err(LambdaError::UnrecognisedEvent(
            "neither a Secrets Manager rotation event nor an EventBridge scheduled event".into(),
        ))
    }
}

/// A serde error without the offending value (serde's "invalid type" messages quote it).
fn describe(error: &serde_json::Error) -> String {
    let message = error.to_string();
    if message.starts_with("missing field") {
        message
    } else {
        "a field has the wrong type or format".to_owned()
    }
}

/// Why an invocation failed. Returned to Lambda as the invocation error, so Secrets Manager
/// retries the rotation step; no variant's message contains a secret value.
#[derive(Debug, thiserror::Error)]
pub enum LambdaError {
    /// The payload is not an event this worker handles.
    #[error("unrecognised event: {0}")]
    UnrecognisedEvent(String),
    /// A rotation step failed (its error names the AWS operation and code, never the value).
    #[error("rotation step {step} of {secret_id} failed: {source}")]
    Rotation {
        /// The step that failed.
        step: String,
        /// The secret being rotated.
        secret_id: String,
        /// What went wrong.
        #[source]
        source: RotationError,
    },
    /// The scheduled pass failed on the database.
    #[error("scheduled worker pass failed: {0}")]
    Tick(#[from] DbErr),
    /// The report could not be encoded.
    #[error("cannot encode the response: {0}")]
    Encode(#[from] serde_json::Error),
}

impl LambdaError {
    /// A stable name for the Lambda `errorType`.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::UnrecognisedEvent(_) => "UnrecognisedEvent",
            Self::Rotation { .. } => "RotationFailed",
            Self::Tick(_) => "WorkerPassFailed",
            Self::Encode(_) => "EncodeFailed",
        }
    }
}

/// Handles one invocation; `deadline` is the time left before Lambda stops the invocation.
///
/// A rotation event runs that step ([`remediation::handle_rotation_event`]; the steps are
/// idempotent, so Secrets Manager's retries are safe). A scheduled event runs
/// [`Engine::tick`] with the time left minus [`SAFETY_MARGIN`] and returns its report.
pub async fn handle_worker_event(
    engine: &Engine,
    event: Value,
    deadline: Duration,
) -> Result<Value, LambdaError> {
    match WorkerEvent::classify(&event)? {
        WorkerEvent::Rotation(rotation) => {
            let step = rotation.step.clone();
            let secret_id = rotation.secret_id.clone();
            tracing::info!(%step, %secret_id, "rotation step");
            remediation::handle_rotation_event(engine, rotation)
                .await
                .map_err(|source| LambdaError::Rotation {
                    step: step.clone(),
                    secret_id: secret_id.clone(),
                    source,
                })?;
            Ok(json!({ "step": step, "secret_id": secret_id }))
        }
        WorkerEvent::Scheduled { id, time, .. } => {
            // Same switch as the background loops: disabled means nothing reacts to events.
            if !engine.config().enabled {
                tracing::warn!(%id, "scheduled event ignored: remediation is disabled");
                return Ok(json!({ "skipped": "remediation is disabled" }));
            }
            let budget = deadline.saturating_sub(SAFETY_MARGIN);
            tracing::info!(%id, %time, budget_ms = budget.as_millis(), "scheduled worker pass");
            let report = engine.tick(budget).await?;
            Ok(serde_json::to_value(report)?)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn scheduled() -> Value {
        json!({
            "version": "0",
            "id": "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa",
            "detail-type": "Scheduled Event",
            "source": "aws.events",
            "account": "123456789012",
            "time": "2026-11-22T20:00:00Z",
            "region": "us-east-1",
            "resources": ["arn:aws:events:us-east-1:123456789012:rule/portcullis-worker"],
            "detail": {}
        })
    }

    fn unrecognised(event: &Value) -> String {
        match WorkerEvent::classify(event) {
            Err(LambdaError::UnrecognisedEvent(reason)) => reason,
            other => panic!("expected UnrecognisedEvent, got {other:?}"),
        }
    }

    #[test]
    fn a_secrets_manager_rotation_event_is_a_rotation() {
        let event = json!({
            "Step": "createSecret",
            "SecretId": "arn:aws:secretsmanager:us-east-1:123456789012:secret:k-AbCdEf",
            "ClientRequestToken": "2f7c1a8e-7b0e-4d55-9c38-2d1a0c6f4b11",
            "RotationToken": "extra fields are ignored"
        });
        let Ok(WorkerEvent::Rotation(rotation)) = WorkerEvent::classify(&event) else {
            panic!("not a rotation");
        };
        assert_eq!(rotation.step, "createSecret");
        assert!(rotation.secret_id.ends_with(":secret:k-AbCdEf"));
        assert_eq!(
            rotation.client_request_token,
            "2f7c1a8e-7b0e-4d55-9c38-2d1a0c6f4b11"
        );
    }

    #[test]
    fn an_eventbridge_scheduled_event_is_scheduled() {
        let Ok(WorkerEvent::Scheduled {
            id,
            time,
            resources,
        }) = WorkerEvent::classify(&scheduled())
        else {
            panic!("not scheduled");
        };
        assert_eq!(id, "53dc4d37-cffa-4f76-80c9-8b7d4a4d2eaa");
        assert_eq!(time.to_rfc3339(), "2026-11-22T20:00:00+00:00");
        assert_eq!(resources.len(), 1);
    }

    #[test]
    fn garbage_is_an_unrecognised_event() {
        for event in [
            json!(null),
            json!("createSecret"),
            json!([1, 2, 3]),
            json!({}),
            json!({ "hello": "world" }),
            json!({ "source": "aws.s3", "detail-type": "Object Created" }),
        ] {
            unrecognised(&event);
        }
        let other = unrecognised(&json!({
            "source": "aws.events", "detail-type": "EC2 Instance State-change Notification",
            "id": "x", "time": "2026-11-22T20:00:00Z"
        }));
        assert!(other.contains("Scheduled Event"), "{other}");
    }

    #[test]
    fn missing_fields_are_named_and_values_are_not_echoed() {
        let missing = unrecognised(&json!({ "Step": "createSecret", "SecretId": "s" }));
        assert!(missing.contains("ClientRequestToken"), "{missing}");

        let mut no_time = scheduled();
        if let Some(event) = no_time.as_object_mut() {
            event.remove("time");
        }
        let missing = unrecognised(&no_time);
        assert!(missing.contains("`time`"), "{missing}");

        let wrong = unrecognised(&json!({
            "Step": "createSecret", "SecretId": "s", "ClientRequestToken": 4242424242_u64
        }));
        assert!(!wrong.contains("4242424242"), "{wrong}");
        let mut bad_time = scheduled();
        bad_time["time"] = json!("s3cr3t-not-a-time");
        assert!(!unrecognised(&bad_time).contains("s3cr3t"));
    }

    #[test]
    fn error_kinds_are_stable_names() {
        let error = LambdaError::UnrecognisedEvent("x".into());
        assert_eq!(error.kind(), "UnrecognisedEvent");
        assert_eq!(error.to_string(), "unrecognised event: x");
    }
}
