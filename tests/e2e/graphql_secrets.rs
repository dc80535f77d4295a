//! Watching remediation through GraphQL: managed secrets (registration against the dev Secrets
//! Manager, live versions and stages, a rotation followed to the end) and the SNS notification
//! outbox; AWS failures and a server without Secrets Manager; the remediation permissions.

use std::time::Duration;

use serde_json::{Value, json};
use uuid::Uuid;
use wiremock::{Mock, matchers::header};

use crate::{
    graphql_support::{code, field, gql, gql_text, ok, principal_with_role, uuid},
    remediation_support::aws_error,
    support::{TEST_PEPPER_HEX, TestApp, eventually, for_each_backend},
};

const REGISTER: &str = "mutation($input: RegisterManagedSecretInput!) {
    registerManagedSecret(input: $input) {
        id secretId kind apiKeyId routeId rotationIntervalDays lastRotatedAt createdAt updatedAt } }";

const SECRET: &str = "query($s: String!) { managedSecret(secretId: $s) {
    secretId kind rotationIntervalDays lastRotatedAt versions { versionId stages } } }";

const SECRETS: &str = "{ managedSecrets(first: 100) {
    nodes { id secretId kind versions { versionId stages } } pageInfo { hasNextPage } } }";

const NOTIFICATIONS: &str = "query($f: NotificationFilter) { notifications(filter: $f, first: 20) {
    nodes { id topicArn messageGroup dedupId eventType severity principal subject message
            attributes status attempts lastError snsMessageId createdAt nextAttemptAt sentAt } } }";

const UPDATE: &str = "mutation($s: String!, $input: UpdateManagedSecretInput!) {
    updateManagedSecret(secretId: $s, input: $input) { secretId rotationIntervalDays } }";

const DELETE: &str =
    "mutation($s: String!) { deleteManagedSecret(secretId: $s) { secretId kind } }";

const DEV_TOPIC: &str = "arn:aws:sns:us-east-1:000000000000:portcullis-dev";

/// Every response body of a test, so it can assert no secret value ever appeared.
#[derive(Default)]
struct Transcript(Vec<String>);

impl Transcript {
    async fn call(&mut self, app: &TestApp, query: &str, variables: Value) -> Value {
        let text = gql_text(app, Some(app.admin_key()), query, variables).await;
        let response: Value = serde_json::from_str(&text).unwrap();
        self.0.push(text);
        response
    }

    async fn ok(&mut self, app: &TestApp, query: &str, variables: Value) -> Value {
        let response = self.call(app, query, variables).await;
        assert!(
            response.get("errors").is_none(),
            "unexpected errors for {query}: {response:#}"
        );
        response["data"].clone()
    }

    /// Repeats `query` until `done(data)` holds (15 s at most); returns that `data`.
    async fn poll(
        &mut self,
        app: &TestApp,
        query: &str,
        variables: Value,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        loop {
            let data = self.ok(app, query, variables.clone()).await;
            if done(&data) {
                return data;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "gave up waiting: {data:#}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn assert_never_contains(&self, value: &str) {
        for body in &self.0 {
            assert!(!body.contains(value), "a response exposed a secret: {body}");
        }
    }
}

async fn create_secret(app: &TestApp, name: &str, value: &str) {
    app.dev
        .aws_clients
        .secrets
        .create_secret()
        .name(name)
        .secret_string(value)
        .send()
        .await
        .unwrap();
}

/// The next `DescribeSecret` fails with AWS error `code`.
async fn fail_next_describe(app: &TestApp, code: &str) {
    Mock::given(header("x-amz-target", "secretsmanager.DescribeSecret"))
        .respond_with(aws_error(400, code))
        .up_to_n_times(1)
        .with_priority(1)
        .mount(app.dev.aws.secrets_server())
        .await;
}

/// The node of `managedSecrets` for `secret_id` (`portcullis dev` seeds a demo secret too).
fn listed_node(data: &Value, secret_id: &str) -> Option<Value> {
    data["managedSecrets"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["secretId"] == secret_id)
        .cloned()
}

fn stages_of(secret: &Value, version: &str) -> Vec<String> {
    secret["versions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["versionId"] == version)
        .map(|v| serde_json::from_value(v["stages"].clone()).unwrap())
        .unwrap_or_default()
}

#[tokio::test]
async fn managed_secrets_are_registered_validated_and_rotated_with_notifications() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn_with_remediation(db).await;
        let mut t = Transcript::default();
        let secret_id = "orders/upstream-token";
        let original = "Bearer original-upstream-credential-value";
        create_secret(&app, secret_id, original).await;
        let original_version = app.dev.aws.secret_versions(secret_id)[0].version_id.clone();

        // Registered; the secret exists in Secrets Manager.
        let input = json!({ "secretId": secret_id, "kind": "UPSTREAM_CREDENTIAL",
            "rotationIntervalDays": 30 });
        let registered =
            t.ok(&app, REGISTER, json!({ "input": input })).await["registerManagedSecret"].clone();
        assert_eq!(registered["secretId"], secret_id);
        assert_eq!(registered["kind"], "UPSTREAM_CREDENTIAL");
        assert_eq!(registered["rotationIntervalDays"], 30);
        assert!(registered["apiKeyId"].is_null() && registered["lastRotatedAt"].is_null());

        // Refusals, each naming what is wrong; nothing is inserted.
        let refusals = [
            (
                json!({ "secretId": "no/such/secret", "kind": "UPSTREAM_CREDENTIAL" }),
                "BAD_USER_INPUT",
                "input.secretId",
            ),
            (
                json!({ "secretId": "a\u{7}b", "kind": "UPSTREAM_CREDENTIAL" }),
                "BAD_USER_INPUT",
                "input.secretId",
            ),
            (
                json!({ "secretId": "x".repeat(2049), "kind": "UPSTREAM_CREDENTIAL" }),
                "BAD_USER_INPUT",
                "input.secretId",
            ),
            (
                json!({ "secretId": secret_id, "kind": "API_KEY", "apiKeyId": Uuid::now_v7() }),
                "NOT_FOUND",
                "",
            ),
            (
                json!({ "secretId": secret_id, "kind": "API_KEY" }),
                "BAD_USER_INPUT",
                "input.apiKeyId",
            ),
            (
                json!({ "secretId": secret_id, "kind": "UPSTREAM_CREDENTIAL",
                    "apiKeyId": Uuid::now_v7() }),
                "BAD_USER_INPUT",
                "input.apiKeyId",
            ),
            (
                json!({ "secretId": secret_id, "kind": "UPSTREAM_CREDENTIAL",
                    "routeId": Uuid::now_v7() }),
                "NOT_FOUND",
                "",
            ),
            (
                json!({ "secretId": secret_id, "kind": "UPSTREAM_CREDENTIAL",
                    "rotationIntervalDays": 0 }),
                "BAD_USER_INPUT",
                "input.rotationIntervalDays",
            ),
            (input.clone(), "CONFLICT", ""),
        ];
        for (input, expected_code, expected_field) in refusals {
            let response = t.call(&app, REGISTER, json!({ "input": input })).await;
            assert_eq!(code(&response), expected_code, "{input}: {response:#}");
            assert_eq!(field(&response), expected_field, "{input}: {response:#}");
        }
        let listed = t.ok(&app, SECRETS, json!({})).await;
        let listed = listed_node(&listed, secret_id).expect("the registered secret is listed");
        assert_eq!(
            stages_of(&listed, &original_version),
            vec!["AWSCURRENT".to_owned()]
        );

        // Rotate, and watch it through the API: the run id's version becomes current.
        let run = t
            .ok(
                &app,
                "mutation($s: String!) { rotateSecret(secretId: $s) { id } }",
                json!({ "s": secret_id }),
            )
            .await;
        let run_id = uuid(&run["rotateSecret"]["id"]).to_string();
        let rotated = t
            .poll(&app, SECRET, json!({ "s": secret_id }), |data| {
                let secret = &data["managedSecret"];
                stages_of(secret, &run_id) == ["AWSCURRENT"]
                    && stages_of(secret, &original_version) == ["AWSPREVIOUS"]
                    && !secret["lastRotatedAt"].is_null()
            })
            .await;
        assert_eq!(rotated["managedSecret"]["versions"].as_array().unwrap().len(), 2);

        // The notification it sent, delivered to the dev topic.
        let filter = json!({ "f": { "eventType": "secret_rotated" } });
        let sent = t
            .poll(&app, NOTIFICATIONS, filter, |data| {
                data["notifications"]["nodes"][0]["status"] == "SENT"
            })
            .await;
        let notification = sent["notifications"]["nodes"][0].clone();
        assert_eq!(notification["topicArn"], DEV_TOPIC);
        assert_eq!(notification["eventType"], "secret_rotated");
        assert_eq!(notification["message"]["trigger"]["detail"]["secret_id"], secret_id);
        assert!(notification["snsMessageId"].is_string() && notification["sentAt"].is_string());
        assert!(notification["attempts"].as_i64().unwrap() >= 1);
        let published = app.dev.aws.published();
        assert!(
            published
                .iter()
                .any(|m| m.message_id == notification["snsMessageId"].as_str().unwrap()),
            "the SNS mock did not receive it"
        );
        // Filters narrow the list.
        for filter in [
            json!({ "status": "PENDING", "eventType": "secret_rotated" }),
            json!({ "topicArn": "arn:aws:sns:us-east-1:000000000000:other" }),
        ] {
            let data = t.ok(&app, NOTIFICATIONS, json!({ "f": filter })).await;
            assert_eq!(data["notifications"]["nodes"], json!([]), "{filter}");
        }

        // Update, then delete: only our row goes, the AWS secret stays.
        let updated = t
            .ok(&app, UPDATE, json!({ "s": secret_id, "input": { "rotationIntervalDays": null } }))
            .await;
        assert!(updated["updateManagedSecret"]["rotationIntervalDays"].is_null());
        let updated = t
            .ok(&app, UPDATE, json!({ "s": secret_id, "input": { "rotationIntervalDays": 7 } }))
            .await;
        assert_eq!(updated["updateManagedSecret"]["rotationIntervalDays"], 7);
        let deleted = t.ok(&app, DELETE, json!({ "s": secret_id })).await;
        assert_eq!(deleted["deleteManagedSecret"]["secretId"], secret_id);
        let gone = t.ok(&app, SECRET, json!({ "s": secret_id })).await;
        assert!(gone["managedSecret"].is_null());
        let again = t.call(&app, DELETE, json!({ "s": secret_id })).await;
        assert_eq!(code(&again), "NOT_FOUND", "{again:#}");
        let versions = app.dev.aws.secret_versions(secret_id);
        assert_eq!(versions.len(), 2, "the AWS secret is untouched");

        // NEVER a secret value: neither the original nor the rotated one.
        t.assert_never_contains(original);
        t.assert_never_contains("original-upstream-credential-value");
        for version in &versions {
            t.assert_never_contains(&version.value);
        }

        // Every mutation is audited with its arguments, refusals included.
        let audited = eventually(Duration::from_secs(5), || async {
            let data = ok(
                &app,
                app.admin_key(),
                "{ auditEvents(first: 100, filter: { kind: MANAGEMENT }) { nodes { path reason detail } } }",
                json!({}),
            )
            .await;
            let nodes = data["auditEvents"]["nodes"].as_array().unwrap().clone();
            let count = |path: &str| nodes.iter().filter(|n| n["path"] == path).count();
            count("registerManagedSecret") == 10
                && count("updateManagedSecret") == 2
                && count("deleteManagedSecret") == 2
                && nodes.iter().any(|n| {
                    n["path"] == "registerManagedSecret"
                        && n["detail"]["arguments"]["input"]["secretId"] == "no/such/secret"
                        && n["reason"].as_str().unwrap_or_default().contains("bad_user_input")
                })
        })
        .await;
        assert!(audited.is_some());
        app.stop().await.drop_database().await;
    })
    .await;
}

#[tokio::test]
async fn an_api_key_secret_is_registered_for_an_existing_key() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn_with_remediation(db).await;
        let admin = app.admin_key().to_owned();
        let (key_id, _) = app.insert_key(app.admin_id().await).await;
        create_secret(&app, "ci/portcullis-key", "{}").await;
        let data = ok(
            &app,
            &admin,
            REGISTER,
            json!({ "input": { "secretId": "ci/portcullis-key", "kind": "API_KEY",
                "apiKeyId": key_id } }),
        )
        .await;
        assert_eq!(data["registerManagedSecret"]["kind"], "API_KEY");
        assert_eq!(uuid(&data["registerManagedSecret"]["apiKeyId"]), key_id);
        // An API-key secret belongs to no route.
        let response = gql(
            &app,
            Some(&admin),
            REGISTER,
            json!({ "input": { "secretId": "ci/other", "kind": "API_KEY", "apiKeyId": key_id,
                "routeId": Uuid::now_v7() } }),
        )
        .await;
        assert_eq!(field(&response), "input.routeId", "{response:#}");
        app.stop().await.drop_database().await;
    })
    .await;
}

#[tokio::test]
async fn aws_failures_have_their_own_code_and_insert_nothing() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn_with_remediation(db).await;
        let admin = app.admin_key().to_owned();
        let secret_id = "billing/upstream-token";
        create_secret(&app, secret_id, "Bearer billing-credential-value").await;
        fail_next_describe(&app, "AccessDeniedException").await;
        let input = json!({ "secretId": secret_id, "kind": "UPSTREAM_CREDENTIAL" });
        let response = gql(&app, Some(&admin), REGISTER, json!({ "input": input })).await;
        assert_eq!(code(&response), "AWS_ERROR", "{response:#}");
        assert_eq!(
            response["errors"][0]["extensions"]["awsCode"],
            "AccessDeniedException"
        );
        let listed = ok(&app, &admin, SECRETS, json!({})).await;
        assert!(listed_node(&listed, secret_id).is_none(), "{listed:#}");

        // Registered once AWS answers; then a failing read of the versions is an error on
        // that field alone.
        ok(&app, &admin, REGISTER, json!({ "input": input })).await;
        fail_next_describe(&app, "ThrottlingException").await;
        let response = gql(&app, Some(&admin), SECRET, json!({ "s": secret_id })).await;
        assert_eq!(code(&response), "AWS_ERROR", "{response:#}");
        assert_eq!(
            response["errors"][0]["path"],
            json!(["managedSecret", "versions"])
        );
        assert_eq!(response["data"]["managedSecret"]["secretId"], secret_id);
        assert!(response["data"]["managedSecret"]["versions"].is_null());

        // The secret deleted behind our back: NOT_FOUND on the versions.
        fail_next_describe(&app, "ResourceNotFoundException").await;
        let response = gql(&app, Some(&admin), SECRET, json!({ "s": secret_id })).await;
        assert_eq!(code(&response), "NOT_FOUND", "{response:#}");
        assert_eq!(response["data"]["managedSecret"]["secretId"], secret_id);
        app.stop().await.drop_database().await;
    })
    .await;
}

/// An API server built without a remediation engine (so without Secrets Manager) over the
/// app's database: registration cannot check AWS and goes ahead; `versions` is `UNAVAILABLE`.
#[tokio::test]
async fn without_secrets_manager_versions_are_unavailable() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        let pepper = secrecy::SecretSlice::from(hex::decode(TEST_PEPPER_HEX).unwrap());
        let proxy = proxy::ProxyConfig::default();
        let state = api::AppState::new(
            app.db.clone(),
            api::ApiConfig::default(),
            &pepper,
            &pepper,
            &proxy,
        )
        .await
        .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, api::router(state)).await.unwrap();
        });
        let call = |query: &'static str, variables: Value| {
            let http = app.http.clone();
            let key = app.admin_key().to_owned();
            async move {
                http.post(format!("http://{addr}/graphql"))
                    .bearer_auth(key)
                    .json(&json!({ "query": query, "variables": variables }))
                    .send()
                    .await
                    .unwrap()
                    .json::<Value>()
                    .await
                    .unwrap()
            }
        };
        let input = json!({ "secretId": "elsewhere/token", "kind": "UPSTREAM_CREDENTIAL" });
        let response = call(REGISTER, json!({ "input": input })).await;
        assert!(response.get("errors").is_none(), "{response:#}");
        let response = call(SECRET, json!({ "s": "elsewhere/token" })).await;
        assert_eq!(code(&response), "UNAVAILABLE", "{response:#}");
        assert_eq!(
            response["data"]["managedSecret"]["secretId"],
            "elsewhere/token"
        );
        server.abort();
        app.stop().await.drop_database().await;
    })
    .await;
}

#[tokio::test]
async fn secrets_and_notifications_need_the_remediation_permissions() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        let (_, auditor) = principal_with_role(&app, "auditor", "portcullis-auditor").await;
        for query in [SECRETS, "{ notifications { nodes { id } } }"] {
            let response = gql(&app, Some(&auditor), query, json!({})).await;
            assert_eq!(code(&response), "FORBIDDEN", "{response:#}");
            assert_eq!(
                response["errors"][0]["extensions"]["permission"],
                "portcullis:remediation:read"
            );
        }
        let (_, operator) = principal_with_role(&app, "operator", "portcullis-operator").await;
        ok(&app, &operator, SECRETS, json!({})).await;
        ok(
            &app,
            &operator,
            "{ notifications { nodes { id } } }",
            json!({}),
        )
        .await;
        let mutations = [
            (
                REGISTER,
                json!({ "input": { "secretId": "x", "kind": "UPSTREAM_CREDENTIAL" } }),
            ),
            (UPDATE, json!({ "s": "x", "input": {} })),
            (DELETE, json!({ "s": "x" })),
        ];
        for (mutation, variables) in mutations {
            let response = gql(&app, Some(&operator), mutation, variables).await;
            assert_eq!(code(&response), "FORBIDDEN", "{response:#}");
            assert_eq!(
                response["errors"][0]["extensions"]["permission"],
                "portcullis:remediation:write"
            );
        }
        app.stop().await.drop_database().await;
    })
    .await;
}
