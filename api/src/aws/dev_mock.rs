//! In-process stand-ins for SNS and Secrets Manager, served by wiremock, for `portcullis dev`.
//!
//! They keep just enough state for a developer to watch the product work: secrets with their
//! versions and staging labels (`AWSCURRENT`, `AWSPENDING`, `AWSPREVIOUS`), and every message
//! published to SNS. They speak the wire protocols the real SDK uses (JSON 1.1 with
//! `X-Amz-Target` for Secrets Manager, the Query protocol for SNS), so the code under test is
//! the production code path.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, MutexGuard},
};

use serde_json::{Value, json};
use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate, matchers::method};

/// A version of a mocked secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretVersion {
    /// The `VersionId` (the `ClientRequestToken` that created it).
    pub version_id: String,
    /// The secret value.
    pub value: String,
    /// Staging labels attached to this version.
    pub stages: Vec<String>,
}

/// A message the mocked SNS accepted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PublishedMessage {
    /// The SNS `MessageId` returned to the publisher.
    pub message_id: String,
    /// Target topic.
    pub topic_arn: String,
    /// Optional subject.
    pub subject: Option<String>,
    /// Body.
    pub message: String,
    /// String message attributes by name.
    pub attributes: BTreeMap<String, String>,
    /// FIFO message group, when given.
    pub message_group_id: Option<String>,
    /// FIFO deduplication id, when given.
    pub deduplication_id: Option<String>,
}

#[derive(Default)]
struct State {
    secrets: BTreeMap<String, Vec<SecretVersion>>,
    published: Vec<PublishedMessage>,
    /// Fault injection: Secrets Manager operation → (responses left to delay, delay).
    delays: BTreeMap<String, (u32, std::time::Duration)>,
}

/// Both mocked services and their shared state.
pub struct DevAws {
    sns: MockServer,
    secrets: MockServer,
    state: Arc<Mutex<State>>,
}

impl DevAws {
    /// Starts both mock servers on ephemeral loopback ports.
    pub async fn start() -> Self {
        let state = Arc::new(Mutex::new(State::default()));
        let sns = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(SnsResponder(state.clone()))
            .mount(&sns)
            .await;
        let secrets = MockServer::start().await;
        Mock::given(method("POST"))
            .respond_with(SecretsResponder(state.clone()))
            .mount(&secrets)
            .await;
        Self {
            sns,
            secrets,
            state,
        }
    }

    /// Base URL of the SNS mock.
    pub fn sns_endpoint(&self) -> String {
        self.sns.uri()
    }

    /// Base URL of the Secrets Manager mock.
    pub fn secrets_endpoint(&self) -> String {
        self.secrets.uri()
    }

    /// Every message published so far, oldest first.
    pub fn published(&self) -> Vec<PublishedMessage> {
        lock(&self.state).published.clone()
    }

    /// The SNS mock server itself, so tests can mount higher-priority fault responses
    /// (`Mock::given(..).with_priority(1).up_to_n_times(n)`) in front of the stateful one.
    pub fn sns_server(&self) -> &MockServer {
        &self.sns
    }

    /// The Secrets Manager mock server itself (see [`DevAws::sns_server`]).
    pub fn secrets_server(&self) -> &MockServer {
        &self.secrets
    }

    /// Stores a version of `secret_id` directly (creating the secret), as if an operator had
    /// put it there; labels it carries are taken off the other versions.
    pub fn put_secret_version(&self, secret_id: &str, version: SecretVersion) {
        let mut state = lock(&self.state);
        let versions = state.secrets.entry(secret_id.to_owned()).or_default();
        for stage in &version.stages {
            for v in versions.iter_mut() {
                v.stages.retain(|s| s != stage);
            }
        }
        versions.push(version);
    }

    /// Fault injection: the next `times` calls of Secrets Manager `operation` (e.g.
    /// `PutSecretValue`) take effect but answer only after `delay`, so a client with a shorter
    /// timeout sees a failure although the change happened (a lost response).
    pub fn delay_secrets_after_applying(
        &self,
        operation: &str,
        times: u32,
        delay: std::time::Duration,
    ) {
        lock(&self.state)
            .delays
            .insert(operation.to_owned(), (times, delay));
    }

    /// The versions of one secret, oldest first.
    pub fn secret_versions(&self, secret_id: &str) -> Vec<SecretVersion> {
        lock(&self.state)
            .secrets
            .get(secret_id)
            .cloned()
            .unwrap_or_default()
    }
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    // A panic while holding the lock cannot leave the maps half-updated in a way that matters
    // for a development mock; keep serving.
    state
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

// === impl SnsResponder ===

struct SnsResponder(Arc<Mutex<State>>);

impl Respond for SnsResponder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let form: BTreeMap<String, String> =
            form_urlencoded::parse(&request.body).into_owned().collect();
        match form.get("Action").map(String::as_str) {
            Some("Publish") => {
                let message_id = uuid::Uuid::new_v4().to_string();
                let mut attributes = BTreeMap::new();
                for n in 1.. {
                    let Some(name) = form.get(&format!("MessageAttributes.entry.{n}.Name")) else {
                        break;
                    };
                    let value = form
                        .get(&format!("MessageAttributes.entry.{n}.Value.StringValue"))
                        .cloned()
                        .unwrap_or_default();
                    attributes.insert(name.clone(), value);
                }
                let published = PublishedMessage {
                    message_id: message_id.clone(),
                    topic_arn: form.get("TopicArn").cloned().unwrap_or_default(),
                    subject: form.get("Subject").cloned(),
                    message: form.get("Message").cloned().unwrap_or_default(),
                    attributes,
                    message_group_id: form.get("MessageGroupId").cloned(),
                    deduplication_id: form.get("MessageDeduplicationId").cloned(),
                };
                lock(&self.0).published.push(published);
                xml(&format!(
                    "<PublishResponse xmlns=\"http://sns.amazonaws.com/doc/2010-03-31/\"><PublishResult><MessageId>{message_id}</MessageId></PublishResult><ResponseMetadata><RequestId>{}</RequestId></ResponseMetadata></PublishResponse>",
                    uuid::Uuid::new_v4()
                ))
            }
            other => sns_error(
                400,
                "InvalidAction",
                &format!("the dev SNS mock does not implement {other:?}"),
            ),
        }
    }
}

fn xml(body: &str) -> ResponseTemplate {
    ResponseTemplate::new(200)
        .insert_header("content-type", "text/xml")
        .set_body_string(body)
}

fn sns_error(status: u16, code: &str, message: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).insert_header("content-type", "text/xml").set_body_string(format!(
        "<ErrorResponse><Error><Type>Sender</Type><Code>{code}</Code><Message>{message}</Message></Error><RequestId>dev</RequestId></ErrorResponse>"
    ))
}

// === impl SecretsResponder ===

struct SecretsResponder(Arc<Mutex<State>>);

impl Respond for SecretsResponder {
    fn respond(&self, request: &Request) -> ResponseTemplate {
        let target = request
            .headers
            .get("x-amz-target")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("secretsmanager."))
            .unwrap_or_default()
            .to_owned();
        let body: Value = serde_json::from_slice(&request.body).unwrap_or(Value::Null);
        let mut state = lock(&self.0);
        let response = match handle_secrets(&mut state, &target, &body) {
            Ok(value) => ResponseTemplate::new(200)
                .insert_header("content-type", "application/x-amz-json-1.1")
                .set_body_json(value),
            Err((code, message)) => ResponseTemplate::new(400)
                .insert_header("content-type", "application/x-amz-json-1.1")
                .set_body_json(json!({ "__type": code, "message": message })),
        };
        match state.delays.get_mut(&target) {
            Some((left, delay)) if *left > 0 => {
                *left -= 1;
                response.set_delay(*delay)
            }
            _ => response,
        }
    }
}

type SmResult = Result<Value, (&'static str, String)>;

fn str_field<'a>(body: &'a Value, name: &str) -> Option<&'a str> {
    body.get(name).and_then(Value::as_str)
}

fn handle_secrets(state: &mut State, target: &str, body: &Value) -> SmResult {
    let secret_id = str_field(body, "SecretId")
        .or_else(|| str_field(body, "Name"))
        .unwrap_or_default()
        .to_owned();
    let arn = format!("arn:aws:secretsmanager:us-east-1:000000000000:secret:{secret_id}");
    match target {
        "CreateSecret" => {
            if state.secrets.contains_key(&secret_id) {
                return Err((
                    "ResourceExistsException",
                    format!("secret {secret_id} already exists"),
                ));
            }
            let version_id = str_field(body, "ClientRequestToken")
                .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
            let value = str_field(body, "SecretString")
                .unwrap_or_default()
                .to_owned();
            state.secrets.insert(
                secret_id.clone(),
                vec![SecretVersion {
                    version_id: version_id.clone(),
                    value,
                    stages: vec!["AWSCURRENT".into()],
                }],
            );
            Ok(json!({ "ARN": arn, "Name": secret_id, "VersionId": version_id }))
        }
        "GetSecretValue" => {
            let versions = state
                .secrets
                .get(&secret_id)
                .ok_or_else(|| not_found(&secret_id))?;
            let wanted_version = str_field(body, "VersionId");
            let wanted_stage = str_field(body, "VersionStage").unwrap_or("AWSCURRENT");
            let version = versions
                .iter()
                .find(|v| match wanted_version {
                    Some(id) => v.version_id == id,
                    None => v.stages.iter().any(|s| s == wanted_stage),
                })
                .ok_or_else(|| {
                    (
                        "ResourceNotFoundException",
                        format!("no such version of {secret_id}"),
                    )
                })?;
            Ok(json!({
                "ARN": arn, "Name": secret_id, "VersionId": version.version_id,
                "SecretString": version.value, "VersionStages": version.stages,
                "CreatedDate": 0,
            }))
        }
        "PutSecretValue" => {
            let versions = state.secrets.entry(secret_id.clone()).or_default();
            let version_id = str_field(body, "ClientRequestToken")
                .map_or_else(|| uuid::Uuid::new_v4().to_string(), str::to_owned);
            let value = str_field(body, "SecretString")
                .unwrap_or_default()
                .to_owned();
            if let Some(existing) = versions.iter().find(|v| v.version_id == version_id) {
                // Idempotent on the token, as in AWS: the same token with the same value is a no-op.
                if existing.value != value {
                    return Err((
                        "ResourceExistsException",
                        "a version with this token has another value".into(),
                    ));
                }
                return Ok(
                    json!({ "ARN": arn, "Name": secret_id, "VersionId": version_id, "VersionStages": existing.stages }),
                );
            }
            let stages: Vec<String> = body
                .get("VersionStages")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_else(|| vec!["AWSCURRENT".into()]);
            for stage in &stages {
                for v in versions.iter_mut() {
                    v.stages.retain(|s| s != stage);
                }
            }
            versions.push(SecretVersion {
                version_id: version_id.clone(),
                value,
                stages: stages.clone(),
            });
            Ok(
                json!({ "ARN": arn, "Name": secret_id, "VersionId": version_id, "VersionStages": stages }),
            )
        }
        "DescribeSecret" => {
            let versions = state
                .secrets
                .get(&secret_id)
                .ok_or_else(|| not_found(&secret_id))?;
            let map: serde_json::Map<String, Value> = versions
                .iter()
                .map(|v| (v.version_id.clone(), json!(v.stages)))
                .collect();
            Ok(
                json!({ "ARN": arn, "Name": secret_id, "VersionIdsToStages": map, "RotationEnabled": false }),
            )
        }
        "UpdateSecretVersionStage" => {
            let versions = state
                .secrets
                .get_mut(&secret_id)
                .ok_or_else(|| not_found(&secret_id))?;
            let stage = str_field(body, "VersionStage")
                .unwrap_or_default()
                .to_owned();
            let move_to = str_field(body, "MoveToVersionId");
            let remove_from = str_field(body, "RemoveFromVersionId");
            if let Some(from) = remove_from {
                let holder = versions.iter_mut().find(|v| v.version_id == from);
                match holder {
                    Some(v) if v.stages.contains(&stage) => v.stages.retain(|s| *s != stage),
                    _ => {
                        return Err((
                            "InvalidParameterException",
                            format!("{stage} is not on version {from}"),
                        ));
                    }
                }
                // AWS moves AWSPREVIOUS automatically when AWSCURRENT moves.
                if stage == "AWSCURRENT" {
                    for v in versions.iter_mut() {
                        v.stages.retain(|s| s != "AWSPREVIOUS");
                    }
                    if let Some(v) = versions.iter_mut().find(|v| v.version_id == from) {
                        v.stages.push("AWSPREVIOUS".into());
                    }
                }
            }
            if let Some(to) = move_to {
                let Some(target) = versions.iter_mut().find(|v| v.version_id == to) else {
                    return Err(("ResourceNotFoundException", format!("no version {to}")));
                };
                if !target.stages.contains(&stage) {
                    target.stages.push(stage);
                }
            }
            Ok(json!({ "ARN": arn, "Name": secret_id }))
        }
        other => Err((
            "InvalidRequestException",
            format!("the dev Secrets Manager mock does not implement {other:?}"),
        )),
    }
}

fn not_found(secret_id: &str) -> (&'static str, String) {
    (
        "ResourceNotFoundException",
        format!("Secrets Manager can't find the specified secret {secret_id}"),
    )
}
