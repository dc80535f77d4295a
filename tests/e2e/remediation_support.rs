//! Fixtures for the remediation, rotation and outbox tests: a migrated database, the
//! wiremock-backed AWS mocks (`DevAws`) and an engine over the real AWS SDK pointed at them.

use std::{path::Path, process::Command, time::Duration};

use api::{
    aws::{
        AwsClients,
        dev_mock::{DevAws, SecretVersion},
    },
    remediation::{Engine, RemediationConfig},
};
use chrono::Utc;
use entity::{
    managed_secret::{self, ManagedSecretKind},
    principal::{self, PrincipalKind},
    remediation_step,
    security_event::{self, SecurityEventStatus, Severity},
};
use migration::testing::TestDatabase;
use proxy::keys::{KeyHasher, PlainToken, TokenEnv, TokenKind};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, QueryOrder, Set,
};
use secrecy::SecretSlice;
use serde_json::{Value, json};
use uuid::Uuid;
use wiremock::{Mock, ResponseTemplate, matchers::header};

use crate::support::TEST_PEPPER_HEX;

/// `portcullis worker` (the real binary) against `database_url` and the AWS mocks, with the
/// test pepper and [`TOPIC`] and nothing else from this process's environment; callers add
/// their own settings and spawn it.
pub fn worker_command(database_url: &str, data_dir: &Path, aws: &DevAws) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_portcullis"));
    command
        .arg("worker")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("DATABASE_URL", database_url)
        .env("PORTCULLIS_DATA_DIR", data_dir)
        .env("PORTCULLIS_KEY_PEPPER", TEST_PEPPER_HEX)
        .env("PORTCULLIS_TOKEN_SIGNING_KEY", TEST_PEPPER_HEX)
        .env("PORTCULLIS_API__NOTIFY_TOPIC_ARN", TOPIC)
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_ENDPOINT_URL_SNS", aws.sns_endpoint())
        .env("AWS_ENDPOINT_URL_SECRETS_MANAGER", aws.secrets_endpoint());
    command
}

/// A new (unhandled) security event, as a proxy's detector or the SNS webhook records it;
/// returns its id.
pub async fn insert_event(
    db: &DatabaseConnection,
    kind: &str,
    severity: Severity,
    principal_id: Option<Uuid>,
    api_key_id: Option<Uuid>,
    client_ip: Option<&str>,
) -> Uuid {
    let id = Uuid::now_v7();
    let now = Utc::now();
    security_event::ActiveModel {
        id: Set(id),
        kind: Set(kind.to_owned()),
        severity: Set(severity),
        occurred_at: Set(now),
        principal_id: Set(principal_id),
        api_key_id: Set(api_key_id),
        client_ip: Set(client_ip.map(str::to_owned)),
        route_id: Set(None),
        fingerprint: Set(format!("{kind}:{id}")),
        detail: Set(json!({})),
        status: Set(SecurityEventStatus::New),
        handled_by_run_id: Set(None),
        created_at: Set(now),
    }
    .insert(db)
    .await
    .unwrap();
    id
}

/// The topic notifications go to in these tests.
pub const TOPIC: &str = "arn:aws:sns:us-east-1:000000000000:portcullis-test";

/// A migrated database, the AWS mocks, and the pepper's hasher.
pub struct Fixture {
    pub db: DatabaseConnection,
    pub aws: DevAws,
    pub hasher: KeyHasher,
    database: TestDatabase,
}

/// Fast retries and short AWS timeouts, so fault tests finish in seconds.
pub fn fast_config() -> RemediationConfig {
    RemediationConfig {
        max_attempts: 6,
        backoff_base_ms: 5,
        backoff_cap_ms: 40,
        poll_interval_ms: 20,
        lease_secs: 30,
        aws_timeout_ms: 400,
        ..RemediationConfig::default()
    }
}

impl Fixture {
    pub async fn new(database: TestDatabase) -> Self {
        let database = database.migrated().await;
        let pepper = SecretSlice::from(hex::decode(TEST_PEPPER_HEX).unwrap());
        Self {
            db: database.conn.clone(),
            aws: DevAws::start().await,
            hasher: KeyHasher::new(&pepper).unwrap(),
            database,
        }
    }

    /// A fixture with the built-in playbooks seeded, and an engine with fast retries: what
    /// most playbook tests start from.
    pub async fn with_builtin_playbooks(database: TestDatabase) -> (Self, Engine) {
        let fixture = Self::new(database).await;
        let engine = fixture.engine(fast_config()).await;
        api::remediation::seed_builtin_playbooks(&fixture.db)
            .await
            .unwrap();
        (fixture, engine)
    }

    /// An engine over the real SDK pointed at the mocks.
    pub async fn engine(&self, config: RemediationConfig) -> Engine {
        let clients =
            AwsClients::for_endpoints(&self.aws.sns_endpoint(), &self.aws.secrets_endpoint()).await;
        Engine::from_aws(
            self.db.clone(),
            self.hasher.clone(),
            &clients,
            config,
            Some(TOPIC.to_owned()),
        )
    }

    pub async fn principal(&self) -> Uuid {
        let now = Utc::now();
        let id = Uuid::now_v7();
        principal::ActiveModel::new_principal(
            id,
            PrincipalKind::ServiceAccount,
            &format!("svc-{}", id.simple()),
            "test service",
            now,
        )
        .insert(&self.db)
        .await
        .unwrap();
        id
    }

    pub async fn key(&self, principal_id: Uuid) -> (Uuid, String) {
        insert_key(&self.db, &self.hasher, principal_id).await
    }

    /// A managed secret `secret_id` holding key `key` as its `AWSCURRENT` version `v0`.
    pub async fn managed_secret(&self, secret_id: &str, key_id: Uuid, key: &str) {
        seed_managed_secret(&self.db, &self.aws, secret_id, key_id, key).await;
    }

    pub async fn drop(self) {
        drop(self.aws);
        self.database.drop_database().await;
    }
}

/// Inserts an API key row for `principal_id`; returns its id and secret.
pub async fn insert_key(
    db: &DatabaseConnection,
    hasher: &KeyHasher,
    principal_id: Uuid,
) -> (Uuid, String) {
    let token = PlainToken::generate(TokenKind::ApiKey, TokenEnv::Test);
    let now = Utc::now();
    let id = Uuid::now_v7();
    entity::api_key::ActiveModel::new_key(entity::api_key::NewKey {
        id,
        principal_id,
        name: "consumer key",
        prefix: token.lookup_prefix(),
        hash: hasher.hash(token.as_parsed()).to_hex(),
        environment: "test",
        now,
    })
    .insert(db)
    .await
    .unwrap();
    api::service::feed::record(
        db,
        proxy::cache::kind::API_KEY,
        id,
        entity::policy_change::PolicyChangeOp::Upsert,
    )
    .await
    .unwrap();
    (id, token.expose_secret().to_owned())
}

/// The managed-secret row plus the secret's `AWSCURRENT` version `v0` in the mock.
pub async fn seed_managed_secret(
    db: &DatabaseConnection,
    aws: &DevAws,
    secret_id: &str,
    key_id: Uuid,
    key: &str,
) {
    insert_managed_secret(db, secret_id, ManagedSecretKind::ApiKey, Some(key_id), None).await;
    let prefix = PlainToken::parse(key).unwrap().lookup_prefix().to_owned();
    aws.put_secret_version(
        secret_id,
        SecretVersion {
            version_id: "v0".into(),
            value: json!({ "api_key": key, "key_id": key_id, "prefix": prefix }).to_string(),
            stages: vec!["AWSCURRENT".into()],
        },
    );
}

/// A `managed_secret` row (no rotation interval, never rotated).
pub async fn insert_managed_secret(
    db: &DatabaseConnection,
    secret_id: &str,
    kind: ManagedSecretKind,
    api_key_id: Option<Uuid>,
    route_id: Option<Uuid>,
) {
    let now = Utc::now();
    managed_secret::ActiveModel {
        id: Set(Uuid::now_v7()),
        secret_id: Set(secret_id.to_owned()),
        kind: Set(kind),
        api_key_id: Set(api_key_id),
        route_id: Set(route_id),
        rotation_interval_days: Set(None),
        last_rotated_at: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(db)
    .await
    .unwrap();
}

/// An approved, unexpired (1 h) break-glass-free incident grant of `principal`, without a
/// token; returns its id.
pub async fn insert_grant(db: &DatabaseConnection, principal: Uuid) -> Uuid {
    let now = Utc::now();
    entity::incident_grant::ActiveModel {
        id: Set(Uuid::now_v7()),
        incident_id: Set("INC-1".into()),
        requester_id: Set(principal),
        approver_id: Set(None),
        justification: Set("outage".into()),
        role_id: Set(None),
        permissions: Set(json!([])),
        duration_seconds: Set(3600),
        status: Set(entity::incident_grant::IncidentGrantStatus::Approved),
        break_glass: Set(false),
        token_prefix: Set(None),
        token_hash: Set(None),
        requested_at: Set(now),
        decided_at: Set(Some(now)),
        expires_at: Set(Some(now + chrono::Duration::hours(1))),
        revoked_at: Set(None),
        revoked_reason: Set(None),
        follow_up_review_id: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(db)
    .await
    .unwrap()
    .id
}

/// A new role (no permissions) bound to `principal`; returns `(role id, binding id)`.
pub async fn insert_binding(db: &DatabaseConnection, principal: Uuid) -> (Uuid, Uuid) {
    let now = Utc::now();
    let role = entity::role::ActiveModel {
        id: Set(Uuid::now_v7()),
        name: Set(format!("role-{}", Uuid::now_v7().simple())),
        description: Set(String::new()),
        builtin: Set(false),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(db)
    .await
    .unwrap();
    let binding = entity::role_binding::ActiveModel {
        id: Set(Uuid::now_v7()),
        role_id: Set(role.id),
        principal_id: Set(principal),
        conditions: Set(json!({})),
        expires_at: Set(None),
        reason: Set(None),
        created_by: Set(None),
        created_at: Set(now),
    }
    .insert(db)
    .await
    .unwrap();
    (role.id, binding.id)
}

/// The API key stored in `version`'s value.
pub fn key_in(version: &SecretVersion) -> String {
    let value: Value = serde_json::from_str(&version.value).unwrap();
    value["api_key"].as_str().unwrap().to_owned()
}

/// `(operation, JSON body)` of every Secrets Manager call the mock received, in order.
pub async fn secrets_calls(aws: &DevAws) -> Vec<(String, Value)> {
    aws.secrets_server()
        .received_requests()
        .await
        .unwrap()
        .iter()
        .map(|request| {
            let target = request
                .headers
                .get("x-amz-target")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .trim_start_matches("secretsmanager.")
                .to_owned();
            (
                target,
                serde_json::from_slice(&request.body).unwrap_or(Value::Null),
            )
        })
        .collect()
}

/// An AWS JSON-protocol error response.
pub fn aws_error(status: u16, code: &str) -> ResponseTemplate {
    ResponseTemplate::new(status)
        .insert_header("content-type", "application/x-amz-json-1.1")
        .set_body_json(json!({ "__type": code, "message": format!("injected {code}") }))
}

/// Makes the next calls of Secrets Manager `operation` fail once each with throttling, a 500
/// and a timeout (a response slower than the client's timeout), in that order.
pub async fn inject_transient_faults(aws: &DevAws, operation: &str) {
    let target = format!("secretsmanager.{operation}");
    for (priority, response) in [
        (1, aws_error(400, "ThrottlingException")),
        (2, aws_error(500, "InternalServiceError")),
        (
            3,
            aws_error(500, "InternalServiceError").set_delay(Duration::from_secs(2)),
        ),
    ] {
        Mock::given(header("x-amz-target", target.as_str()))
            .respond_with(response)
            .up_to_n_times(1)
            .with_priority(priority)
            .mount(aws.secrets_server())
            .await;
    }
}

/// The steps of run `run_id`, in order.
pub async fn steps_of(db: &DatabaseConnection, run_id: Uuid) -> Vec<remediation_step::Model> {
    remediation_step::Entity::find()
        .filter(remediation_step::Column::RunId.eq(run_id))
        .order_by_asc(remediation_step::Column::Seq)
        .all(db)
        .await
        .unwrap()
}

/// Keys of `principal_id`.
pub async fn keys_of(db: &DatabaseConnection, principal_id: Uuid) -> Vec<entity::api_key::Model> {
    entity::api_key::Entity::find()
        .filter(entity::api_key::Column::PrincipalId.eq(principal_id))
        .order_by_asc(entity::api_key::Column::CreatedAt)
        .all(db)
        .await
        .unwrap()
}
