//! `portcullis worker` as a Lambda function, the real binary against a fake Lambda Runtime API
//! served here: Secrets Manager rotation steps, garbage, and EventBridge scheduled passes.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    path::PathBuf,
    process::{Child, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use api::aws::dev_mock::DevAws;
use axum::{
    Json, Router,
    extract::{Path, State},
    http::{HeaderMap, StatusCode},
    routing::{get, post},
};
use chrono::Utc;
use entity::{
    ip_rule, managed_secret,
    principal::{self, PrincipalKind},
    security_event::{self, SecurityEventStatus, Severity},
};
use migration::testing::TestDatabase;
use proxy::keys::KeyHasher;
use sea_orm::{ActiveModelTrait, DatabaseConnection, EntityTrait};
use secrecy::SecretSlice;
use serde_json::{Value, json};
use tokio::sync::{Notify, mpsc};
use uuid::Uuid;

use crate::{
    remediation_support::{
        insert_event, insert_key, key_in, keys_of, seed_managed_secret, worker_command,
    },
    support::{TEST_PEPPER_HEX, for_each_backend},
};

const SECRET: &str = "portcullis/lambda-consumer-key";
const GRACE_SECS: i64 = 3600;

/// What the function posted back for one invocation.
#[derive(Debug)]
struct Outcome {
    request_id: String,
    /// `response` or `error`.
    kind: String,
    body: Value,
}

#[derive(Clone)]
struct RuntimeState {
    queue: Arc<Mutex<VecDeque<(String, Value)>>>,
    queued: Arc<Notify>,
    outcomes: mpsc::UnboundedSender<Outcome>,
}

/// The Lambda Runtime API on loopback: `/next` hands out queued events and long-polls when
/// there are none, as Lambda does between invocations.
struct FakeRuntime {
    addr: SocketAddr,
    state: RuntimeState,
    outcomes: mpsc::UnboundedReceiver<Outcome>,
}

impl FakeRuntime {
    async fn start() -> Self {
        let (sender, outcomes) = mpsc::unbounded_channel();
        let state = RuntimeState {
            queue: Arc::default(),
            queued: Arc::default(),
            outcomes: sender,
        };
        let router = Router::new()
            .route("/2018-06-01/runtime/invocation/next", get(next))
            .route("/2018-06-01/runtime/invocation/{id}/{kind}", post(outcome))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Self {
            addr,
            state,
            outcomes,
        }
    }
}

async fn next(State(state): State<RuntimeState>) -> (HeaderMap, Json<Value>) {
    let (request_id, event) = loop {
        // Registered before looking, so an event queued in between still wakes us.
        let queued = state.queued.notified();
        if let Some(next) = state.queue.lock().unwrap().pop_front() {
            break next;
        }
        queued.await;
    };
    let deadline = SystemTime::now() + Duration::from_secs(60);
    let deadline_ms = deadline.duration_since(UNIX_EPOCH).unwrap().as_millis();
    let mut headers = HeaderMap::new();
    headers.insert("lambda-runtime-aws-request-id", request_id.parse().unwrap());
    headers.insert(
        "lambda-runtime-deadline-ms",
        deadline_ms.to_string().parse().unwrap(),
    );
    headers.insert(
        "lambda-runtime-invoked-function-arn",
        "arn:aws:lambda:us-east-1:000000000000:function:portcullis-worker"
            .parse()
            .unwrap(),
    );
    headers.insert(
        "lambda-runtime-trace-id",
        "Root=1-5759e988-bd862e3fe1be46a994272793;Sampled=1"
            .parse()
            .unwrap(),
    );
    (headers, Json(event))
}

async fn outcome(
    State(state): State<RuntimeState>,
    Path((request_id, kind)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> StatusCode {
    let body = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let _ = state.outcomes.send(Outcome {
        request_id,
        kind,
        body,
    });
    StatusCode::ACCEPTED
}

/// A migrated database, the AWS mocks, the fake Runtime API and the real `portcullis worker`
/// polling it with the Lambda environment; the worker is killed on drop.
struct Stack {
    database: TestDatabase,
    aws: DevAws,
    runtime: FakeRuntime,
    worker: WorkerProcess,
}

/// The worker's process and its log; killed on drop, so a failed test leaves nothing behind.
struct WorkerProcess {
    child: Child,
    log: PathBuf,
    _data: tempfile::TempDir,
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Stack {
    async fn start(database: TestDatabase) -> Self {
        let database = database.migrated().await;
        let aws = DevAws::start().await;
        let runtime = FakeRuntime::start().await;
        let data = tempfile::tempdir().unwrap();
        let log = data.path().join("worker.log");
        let child = worker_command(&database.url, data.path(), &aws)
            .env(
                "PORTCULLIS_API__REMEDIATION__ROTATION_GRACE_SECS",
                GRACE_SECS.to_string(),
            )
            .env("AWS_LAMBDA_RUNTIME_API", runtime.addr.to_string())
            .env("AWS_LAMBDA_FUNCTION_NAME", "portcullis-worker")
            .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "512")
            .env("AWS_LAMBDA_FUNCTION_VERSION", "$LATEST")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Self {
            database,
            aws,
            runtime,
            worker: WorkerProcess {
                child,
                log,
                _data: data,
            },
        }
    }

    /// Delivers `event` as the next invocation and waits for the function's answer.
    async fn invoke(&mut self, event: Value) -> Outcome {
        let request_id = Uuid::new_v4().to_string();
        let state = &self.runtime.state;
        state
            .queue
            .lock()
            .unwrap()
            .push_back((request_id.clone(), event));
        state.queued.notify_one();
        let answer =
            tokio::time::timeout(Duration::from_secs(60), self.runtime.outcomes.recv()).await;
        let Ok(Some(outcome)) = answer else {
            panic!("no answer; the worker said:\n{}", self.logs());
        };
        assert_eq!(outcome.request_id, request_id);
        outcome
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(&self.worker.log).unwrap_or_default()
    }

    /// Still serving: a failed invocation must not end the process.
    fn assert_running(&mut self) {
        assert!(
            self.worker.child.try_wait().unwrap().is_none(),
            "the worker exited:\n{}",
            self.logs()
        );
    }

    async fn stop(self) {
        drop(self.worker);
        drop(self.aws);
        self.database.drop_database().await;
    }
}

async fn service_account(db: &DatabaseConnection) -> Uuid {
    let id = Uuid::now_v7();
    principal::ActiveModel::new_principal(
        id,
        PrincipalKind::ServiceAccount,
        &format!("svc-{}", id.simple()),
        "lambda rotation test",
        Utc::now(),
    )
    .insert(db)
    .await
    .unwrap();
    id
}

fn rotation_event(step: &str, token: &str) -> Value {
    json!({ "Step": step, "SecretId": SECRET, "ClientRequestToken": token })
}

fn scheduled_event() -> Value {
    json!({
        "version": "0",
        "id": Uuid::new_v4().to_string(),
        "detail-type": "Scheduled Event",
        "source": "aws.events",
        "account": "000000000000",
        "time": Utc::now().to_rfc3339(),
        "region": "us-east-1",
        "resources": ["arn:aws:events:us-east-1:000000000000:rule/portcullis-worker"],
        "detail": {}
    })
}

#[tokio::test]
async fn secrets_manager_drives_a_rotation_through_the_lambda_worker() {
    for_each_backend(|database| async move {
        // Arrange: a key of a service account, held in a managed secret as version v0.
        let mut stack = Stack::start(database).await;
        let db = stack.database.conn.clone();
        let pepper = SecretSlice::from(hex::decode(TEST_PEPPER_HEX).unwrap());
        let hasher = KeyHasher::new(&pepper).unwrap();
        let principal = service_account(&db).await;
        let (old_id, old_key) = insert_key(&db, &hasher, principal).await;
        seed_managed_secret(&db, &stack.aws, SECRET, old_id, &old_key).await;
        let token = Uuid::new_v4().to_string();

        // Act: the four steps, createSecret delivered twice as Secrets Manager's retry would.
        for step in [
            "createSecret",
            "createSecret",
            "setSecret",
            "testSecret",
            "finishSecret",
        ] {
            let outcome = stack.invoke(rotation_event(step, &token)).await;
            assert_eq!(outcome.kind, "response", "{step}: {:?}", outcome.body);
            assert_eq!(outcome.body["step"], step);
        }
        let finished_at = Utc::now();
        // A createSecret delivered again after the rotation finished.
        let late = stack.invoke(rotation_event("createSecret", &token)).await;

        // Assert: the new version is current at the mock, the old one previous.
        assert_eq!(late.kind, "response", "{:?}", late.body);
        stack.assert_running();
        let versions = stack.aws.secret_versions(SECRET);
        assert_eq!(versions.len(), 2, "one new version");
        assert_eq!(versions[0].version_id, "v0");
        assert_eq!(versions[0].stages, ["AWSPREVIOUS"]);
        assert_eq!(versions[1].version_id, token);
        assert_eq!(versions[1].stages, ["AWSCURRENT"]);
        // Exactly one new key, of the same principal, the one in the secret.
        let keys = keys_of(&db, principal).await;
        assert_eq!(keys.len(), 2, "exactly one new key");
        assert_eq!(keys[0].id, old_id);
        assert_eq!(keys[1].rotated_from, Some(old_id));
        assert!(key_in(&versions[1]).starts_with(&keys[1].prefix));
        // The old key keeps working for the grace period, then expires.
        assert!(keys[0].revoked_at.is_none());
        let expires_in = (keys[0].expires_at.unwrap() - finished_at).num_seconds();
        assert!(
            (GRACE_SECS - 120..=GRACE_SECS).contains(&expires_in),
            "expires in {expires_in}s"
        );
        assert!(keys[1].expires_at.is_none() && keys[1].revoked_at.is_none());
        let managed = managed_secret::Entity::find()
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(managed.api_key_id, Some(keys[1].id));
        stack.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_bad_invocation_gets_an_error_response_and_the_worker_keeps_serving() {
    for_each_backend(|database| async move {
        let mut stack = Stack::start(database).await;

        let garbage = stack
            .invoke(json!({ "hello": "world", "password": "hunter2" }))
            .await;
        let unknown_secret = stack
            .invoke(rotation_event("createSecret", "token-1"))
            .await;
        let after = stack.invoke(scheduled_event()).await;

        assert_eq!(garbage.kind, "error", "{:?}", garbage.body);
        assert_eq!(garbage.body["errorType"], "UnrecognisedEvent");
        let message = garbage.body["errorMessage"].as_str().unwrap();
        assert!(message.starts_with("unrecognised event"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        // Secrets Manager sees a failed step (and retries it).
        assert_eq!(unknown_secret.kind, "error");
        assert_eq!(unknown_secret.body["errorType"], "RotationFailed");
        assert_eq!(after.kind, "response", "{:?}", after.body);
        assert_eq!(after.body["runs_triggered"], 0);
        stack.assert_running();
        stack.stop().await;
    })
    .await;
}

#[tokio::test]
async fn a_scheduled_event_runs_the_playbook_for_a_pending_security_event() {
    for_each_backend(|database| async move {
        // Arrange: a failed-auth burst recorded by a proxy, not handled yet.
        let mut stack = Stack::start(database).await;
        let db = stack.database.conn.clone();
        let id = insert_event(
            &db,
            "failed_auth_burst",
            Severity::High,
            None,
            None,
            Some("198.51.100.23"),
        )
        .await;

        // Act: EventBridge's schedule fires.
        let outcome = stack.invoke(scheduled_event()).await;

        // Assert: the report counts the run, its steps and the notification.
        assert_eq!(outcome.kind, "response", "{:?}", outcome.body);
        let report = &outcome.body;
        assert_eq!(report["runs_triggered"], 1, "{report}");
        assert!(report["steps_executed"].as_u64().unwrap() >= 2, "{report}");
        assert_eq!(report["notifications_published"], 1, "{report}");
        let rules = ip_rule::Entity::find().all(&db).await.unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].cidr, "198.51.100.23/32");
        let event = security_event::Entity::find_by_id(id)
            .one(&db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(event.status, SecurityEventStatus::Handled);
        let published = stack.aws.published();
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].attributes["event_type"], "failed_auth_burst");

        // The next schedule finds nothing new to do.
        let again = stack.invoke(scheduled_event()).await;
        assert_eq!(again.body["runs_triggered"], 0, "{:?}", again.body);
        assert_eq!(ip_rule::Entity::find().all(&db).await.unwrap().len(), 1);
        stack.stop().await;
    })
    .await;
}
