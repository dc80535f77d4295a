//! Remediation through GraphQL: playbooks CRUD and validation, `reportLeakedKey` end to end
//! through the proxy, `remediationRuns` with steps, and the remediation permissions.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::{
    graphql_support::{code, field, gql, ok, principal_with_role, uuid},
    remediation_support::insert_managed_secret,
    support::{TestApp, eventually, for_each_backend},
};

const PLAYBOOKS: &str =
    "{ playbooks(first: 100) { nodes { id name builtin enabled trigger actions } } }";

const CREATE: &str = "mutation($input: CreatePlaybookInput!) {
    createPlaybook(input: $input) { id name enabled dryRun builtin actions notify } }";

const UPDATE: &str = "mutation($id: UUID!, $input: UpdatePlaybookInput!) {
    updatePlaybook(id: $id, input: $input) { id name enabled actions } }";

const DELETE: &str = "mutation($id: UUID!) { deletePlaybook(id: $id) { id name } }";

#[tokio::test]
async fn playbooks_are_listed_created_updated_and_deleted() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        let admin = app.admin_key();
        let data = ok(&app, admin, PLAYBOOKS, json!({})).await;
        let nodes = data["playbooks"]["nodes"].as_array().unwrap().clone();
        let leaked = nodes
            .iter()
            .find(|p| p["name"] == "leaked-key")
            .expect("the builtin leaked-key playbook is listed");
        assert_eq!(leaked["builtin"], true);
        assert!(nodes.iter().any(|p| p["name"] == "failed-auth-burst"));

        let input = json!({
            "name": "custom-block",
            "trigger": { "kind": "security_event", "event_kinds": ["traffic_spike"] },
            "actions": [{ "action": "block_ip", "duration_secs": 60 }],
            "dryRun": true,
        });
        let created =
            ok(&app, admin, CREATE, json!({ "input": input })).await["createPlaybook"].clone();
        assert_eq!(created["builtin"], false);
        assert_eq!(created["dryRun"], true);
        assert_eq!(created["notify"]["enabled"], true);
        let id = uuid(&created["id"]);

        // Same name again: conflict.
        let response = gql(&app, Some(admin), CREATE, json!({ "input": input })).await;
        assert_eq!(code(&response), "CONFLICT", "{response:#}");

        // Invalid JSON for the typed playbook structs: BAD_USER_INPUT naming the field.
        let bad = json!({
            "name": "bad",
            "trigger": { "kind": "manual" },
            "actions": [{ "action": "block_ip", "duration_secs": "soon" }],
        });
        let response = gql(&app, Some(admin), CREATE, json!({ "input": bad })).await;
        assert_eq!(code(&response), "BAD_USER_INPUT", "{response:#}");
        assert_eq!(field(&response), "input.actions");
        let response = gql(
            &app,
            Some(admin),
            UPDATE,
            json!({ "id": id, "input": { "trigger": { "kind": "nope" } } }),
        )
        .await;
        assert_eq!(code(&response), "BAD_USER_INPUT", "{response:#}");
        assert_eq!(field(&response), "input.trigger");

        // Well-formed but unworkable: a schedule cannot suspend "the event's" key, and the
        // check looks at the playbook as it would be after the update.
        let scheduled = json!({
            "name": "nightly",
            "trigger": { "kind": "schedule", "every_secs": 3600 },
            "actions": [{ "action": "suspend_key" }],
        });
        let response = gql(&app, Some(admin), CREATE, json!({ "input": scheduled })).await;
        assert_eq!(code(&response), "BAD_USER_INPUT", "{response:#}");
        assert_eq!(field(&response), "input.actions");
        let response = gql(
            &app,
            Some(admin),
            UPDATE,
            json!({ "id": id, "input": { "trigger": { "kind": "schedule", "every_secs": 3600 } } }),
        )
        .await;
        assert_eq!(field(&response), "input.actions", "{response:#}");
        let response = gql(
            &app,
            Some(admin),
            CREATE,
            json!({ "input": {
                "name": "too-often",
                "trigger": { "kind": "schedule", "every_secs": 1 },
                "actions": [{ "action": "apply_overdue_reviews" }],
            } }),
        )
        .await;
        assert_eq!(field(&response), "input.trigger", "{response:#}");
        let nightly = ok(
            &app,
            admin,
            CREATE,
            json!({ "input": {
                "name": "nightly",
                "trigger": { "kind": "schedule", "every_secs": 86400 },
                "actions": [{ "action": "apply_overdue_reviews" }],
            } }),
        )
        .await;
        assert_eq!(
            nightly["createPlaybook"]["actions"],
            json!([{ "action": "apply_overdue_reviews" }])
        );

        let updated = ok(
            &app,
            admin,
            UPDATE,
            json!({ "id": id, "input": {
                "enabled": false,
                "actions": [{ "action": "suspend_key" }],
            } }),
        )
        .await["updatePlaybook"]
            .clone();
        assert_eq!(updated["enabled"], false);
        assert_eq!(updated["actions"], json!([{ "action": "suspend_key" }]));

        let deleted = ok(&app, admin, DELETE, json!({ "id": id })).await;
        assert_eq!(deleted["deletePlaybook"]["name"], "custom-block");
        let response = gql(&app, Some(admin), DELETE, json!({ "id": id })).await;
        assert_eq!(code(&response), "NOT_FOUND", "{response:#}");

        // Builtins may be disabled, not deleted.
        let builtin = leaked["id"].clone();
        let disabled = ok(
            &app,
            admin,
            UPDATE,
            json!({ "id": builtin, "input": { "enabled": false } }),
        )
        .await;
        assert_eq!(disabled["updatePlaybook"]["enabled"], false);
        let response = gql(&app, Some(admin), DELETE, json!({ "id": builtin })).await;
        assert_eq!(code(&response), "CONFLICT", "{response:#}");

        app.stop().await.drop_database().await;
    })
    .await;
}

#[tokio::test]
async fn report_leaked_key_through_graphql_kills_the_key_and_records_the_run() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn_with_remediation(db).await;
        let admin = app.admin_key().to_owned();
        let (key_id, key) = app.insert_key(app.admin_id().await).await;
        let works = eventually(Duration::from_secs(2), || async {
            app.proxy_get("/demo/x", Some(&key)).await.status() == StatusCode::OK
        })
        .await;
        assert!(works.is_some());

        let data = ok(
            &app,
            &admin,
            "mutation($k: UUID!) { reportLeakedKey(apiKeyId: $k) { id triggerKind status } }",
            json!({ "k": key_id }),
        )
        .await;
        let run_id = uuid(&data["reportLeakedKey"]["id"]);
        assert_eq!(data["reportLeakedKey"]["triggerKind"], "graphql");

        let dead = eventually(Duration::from_secs(1), || async {
            app.proxy_get("/demo/x", Some(&key)).await.status() == StatusCode::UNAUTHORIZED
        })
        .await;
        assert!(dead.is_some(), "the leaked key still works after 1 s");

        let query = "query($f: RemediationRunFilter) { remediationRuns(filter: $f, first: 10) {
            nodes { id status error steps { seq action status attempts lastError output } } } }";
        let finished = eventually(Duration::from_secs(10), || async {
            let data = ok(
                &app,
                &admin,
                query,
                json!({ "f": { "status": "SUCCEEDED" } }),
            )
            .await;
            data["remediationRuns"]["nodes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["id"] == run_id.to_string())
        })
        .await;
        assert!(finished.is_some(), "the run did not succeed");
        let run = ok(
            &app,
            &admin,
            "query($id: UUID!) { remediationRun(id: $id) {
                status error steps { seq action status attempts lastError } } }",
            json!({ "id": run_id }),
        )
        .await["remediationRun"]
            .clone();
        assert_eq!(run["status"], "SUCCEEDED");
        assert!(run["error"].is_null());
        let steps = run["steps"].as_array().unwrap();
        assert_eq!(steps[0]["seq"], 0);
        assert_eq!(steps[0]["action"], "revoke_key");
        assert!(steps.iter().all(|s| s["status"] == "SUCCEEDED"), "{run:#}");

        // Not a failed run: retrying it is a conflict; unknown ids are not found.
        let response = gql(
            &app,
            Some(&admin),
            "mutation($id: UUID!) { retryRemediationRun(id: $id) { id } }",
            json!({ "id": run_id }),
        )
        .await;
        assert_eq!(code(&response), "CONFLICT", "{response:#}");
        let response = gql(
            &app,
            Some(&admin),
            "mutation { rotateSecret(secretId: \"no/such/secret\") { id } }",
            json!({}),
        )
        .await;
        assert_eq!(code(&response), "NOT_FOUND", "{response:#}");

        app.stop().await.drop_database().await;
    })
    .await;
}

async fn run_status(app: &TestApp, run_id: uuid::Uuid) -> serde_json::Value {
    let query = "query($id: UUID!) { remediationRun(id: $id) {
        status error steps { seq action status attempts lastError } } }";
    ok(app, app.admin_key(), query, json!({ "id": run_id })).await["remediationRun"].clone()
}

#[tokio::test]
async fn a_failed_run_is_retried_through_graphql_once_the_cause_is_fixed() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn_with_remediation(db).await;
        let admin = app.admin_key().to_owned();
        let secret_id = "billing/upstream-token";
        insert_managed_secret(
            &app.db,
            secret_id,
            entity::managed_secret::ManagedSecretKind::UpstreamCredential,
            None,
            None,
        )
        .await;

        // The secret does not exist in Secrets Manager yet: a permanent error parks the run.
        let data = ok(
            &app,
            &admin,
            "mutation($s: String!) { rotateSecret(secretId: $s) { id } }",
            json!({ "s": secret_id }),
        )
        .await;
        let run_id = uuid(&data["rotateSecret"]["id"]);
        let failed = eventually(Duration::from_secs(10), || async {
            run_status(&app, run_id).await["status"] == "FAILED"
        })
        .await;
        assert!(failed.is_some(), "{:#}", run_status(&app, run_id).await);
        let run = run_status(&app, run_id).await;
        assert!(
            run["error"]
                .as_str()
                .unwrap()
                .contains("ResourceNotFoundException"),
            "{run:#}"
        );
        assert_eq!(run["steps"][0]["status"], "FAILED");
        assert!(run["steps"][0]["lastError"].as_str().is_some());

        // The operator fixes the cause, then retries.
        app.dev
            .aws_clients
            .secrets
            .create_secret()
            .name(secret_id)
            .secret_string("Bearer first")
            .send()
            .await
            .unwrap();
        let retried = ok(
            &app,
            &admin,
            "mutation($id: UUID!) { retryRemediationRun(id: $id) { id status } }",
            json!({ "id": run_id }),
        )
        .await;
        assert_eq!(retried["retryRemediationRun"]["status"], "PENDING");
        let succeeded = eventually(Duration::from_secs(10), || async {
            run_status(&app, run_id).await["status"] == "SUCCEEDED"
        })
        .await;
        assert!(succeeded.is_some(), "{:#}", run_status(&app, run_id).await);
        let run = run_status(&app, run_id).await;
        assert!(run["error"].is_null());
        assert!(
            run["steps"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["status"] == "SUCCEEDED"),
            "{run:#}"
        );
        let versions = app.dev.aws.secret_versions(secret_id);
        let current = versions
            .iter()
            .find(|v| v.stages.iter().any(|s| s == "AWSCURRENT"))
            .unwrap();
        assert_eq!(current.version_id, run_id.to_string());
        app.stop().await.drop_database().await;
    })
    .await;
}

#[tokio::test]
async fn remediation_needs_its_permissions() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        let (_, auditor) = principal_with_role(&app, "auditor", "portcullis-auditor").await;
        let response = gql(&app, Some(&auditor), PLAYBOOKS, json!({})).await;
        assert_eq!(code(&response), "FORBIDDEN", "{response:#}");
        assert_eq!(
            response["errors"][0]["extensions"]["permission"],
            "portcullis:remediation:read"
        );
        let (_, operator) = principal_with_role(&app, "operator", "portcullis-operator").await;
        ok(&app, &operator, PLAYBOOKS, json!({})).await;
        let response = gql(
            &app,
            Some(&operator),
            "mutation($k: UUID!) { reportLeakedKey(apiKeyId: $k) { id } }",
            json!({ "k": uuid::Uuid::now_v7() }),
        )
        .await;
        assert_eq!(code(&response), "FORBIDDEN", "{response:#}");
        assert_eq!(
            response["errors"][0]["extensions"]["permission"],
            "portcullis:remediation:write"
        );
        app.stop().await.drop_database().await;
    })
    .await;
}
