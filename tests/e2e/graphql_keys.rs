//! API keys through the management API: issuance with a one-time secret, listing, rotation
//! with a grace period and revocation as seen through the proxy, suspension, pagination.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;

use crate::{
    graphql_support::{code, create_service_account, field, gql, gql_text, issue_key, ok, uuid},
    support::{TestApp, eventually, for_each_backend},
};

const KEY_FIELDS: &str = "id principalId name prefix environment state expiresAt revokedAt \
    revokedReason suspendedAt suspendedReason lastUsedAt lastUsedIp rateLimit { perMinute burst } \
    remainingUses refill { amount intervalSeconds } metadata rotatedFromId createdById createdAt \
    updatedAt principal { id name }";

#[tokio::test]
async fn an_issued_key_shows_its_secret_once_and_works_at_the_proxy() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        let admin = app.admin_id().await;
        let issued = ok(
            &app,
            app.admin_key(),
            &format!(
                "mutation($input: IssueApiKeyInput!) {{ issueApiKey(input: $input) {{ secret apiKey {{ {KEY_FIELDS} }} }} }}"
            ),
            json!({ "input": {
                "principalId": admin,
                "name": "ci deploys",
                "expiresAt": (chrono::Utc::now() + chrono::Duration::days(30)).to_rfc3339(),
                "rateLimit": { "perMinute": 600, "burst": 50 },
                "remainingUses": 1000,
                "refill": { "amount": 1000, "intervalSeconds": 86400 },
                "metadata": { "team": "payments" },
                "environment": "TEST",
            }}),
        )
        .await;
        let secret = issued["issueApiKey"]["secret"].as_str().unwrap().to_owned();
        let key = &issued["issueApiKey"]["apiKey"];
        let key_id = uuid(&key["id"]);
        assert!(secret.starts_with("pk_test_"));
        assert!(secret.starts_with(key["prefix"].as_str().unwrap()));
        assert_eq!(key["state"], "ACTIVE");
        assert_eq!(key["principal"]["name"], "admin");
        assert_eq!(key["rateLimit"], json!({ "perMinute": 600, "burst": 50 }));
        assert_eq!(key["refill"], json!({ "amount": 1000, "intervalSeconds": 86400 }));
        assert_eq!(key["metadata"], json!({ "team": "payments" }));

        // The key works through the proxy, and its use is tracked.
        let response = app.proxy_get("/demo/hello", Some(&secret)).await;
        assert_eq!(response.status(), StatusCode::OK);
        let used = eventually(Duration::from_secs(5), || async {
            let data = ok(
                &app,
                app.admin_key(),
                "query($id: UUID!) { apiKey(id: $id) { lastUsedAt remainingUses } }",
                json!({ "id": key_id }),
            )
            .await;
            !data["apiKey"]["lastUsedAt"].is_null()
        })
        .await;
        assert!(used.is_some(), "lastUsedAt was never set");

        // No later response carries the secret: lists, single reads, audit events.
        for (query, variables) in [
            (
                format!("{{ apiKeys(first: 100) {{ nodes {{ {KEY_FIELDS} }} }} }}"),
                json!({}),
            ),
            (
                format!("query($id: UUID!) {{ apiKey(id: $id) {{ {KEY_FIELDS} }} }}"),
                json!({ "id": key_id }),
            ),
            (
                "{ auditEvents(first: 100) { nodes { id path reason detail } } }".to_owned(),
                json!({}),
            ),
        ] {
            let text = gql_text(&app, Some(app.admin_key()), &query, variables).await;
            assert!(!text.contains("errors"), "{text}");
            assert!(!text.contains(&secret), "the secret leaked: {query}");
            assert!(!text.contains(&secret[8..]), "part of the secret leaked: {query}");
        }
        // The issuance itself is audited with the actor.
        let events = ok(
            &app,
            app.admin_key(),
            "{ auditEvents(first: 10, filter: { kind: MANAGEMENT }) { nodes { path method decision principalId detail } } }",
            json!({}),
        )
        .await;
        let issue = &events["auditEvents"]["nodes"][0];
        assert_eq!(issue["path"], "issueApiKey");
        assert_eq!(issue["method"], "mutation");
        assert_eq!(issue["decision"], "ALLOW");
        assert_eq!(issue["principalId"], admin.to_string());
        assert_eq!(issue["detail"]["arguments"]["input"]["name"], "ci deploys");
        app.stop().await.drop_database().await;
    })
    .await;
}

#[tokio::test]
async fn rotation_keeps_both_keys_working_during_the_grace_period_only() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        let owner = create_service_account(&app, "rotating").await;
        let role = crate::graphql_support::role_id(&app, "demo-caller").await;
        crate::graphql_support::bind(&app, role, owner).await;
        let (old_id, old_secret) = issue_key(&app, owner).await;
        assert_eq!(
            app.proxy_get("/demo/x", Some(&old_secret)).await.status(),
            StatusCode::OK
        );

        let rotated = ok(
            &app,
            app.admin_key(),
            "mutation($id: UUID!) { rotateApiKey(id: $id, gracePeriodSeconds: 1) { secret apiKey { id rotatedFromId state } } }",
            json!({ "id": old_id }),
        )
        .await;
        let new_secret = rotated["rotateApiKey"]["secret"].as_str().unwrap().to_owned();
        assert_eq!(rotated["rotateApiKey"]["apiKey"]["rotatedFromId"], old_id.to_string());
        assert_ne!(new_secret, old_secret);

        // During the grace period both work...
        for secret in [&old_secret, &new_secret] {
            let status = app.proxy_get("/demo/x", Some(secret)).await.status();
            assert_eq!(status, StatusCode::OK);
        }
        // ...then only the successor.
        let expired = eventually(Duration::from_secs(5), || async {
            app.proxy_get("/demo/x", Some(&old_secret)).await.status()
                == StatusCode::UNAUTHORIZED
        })
        .await;
        assert!(expired.is_some(), "the old key still works after the grace period");
        assert_eq!(
            app.proxy_get("/demo/x", Some(&new_secret)).await.status(),
            StatusCode::OK
        );
        let old = ok(
            &app,
            app.admin_key(),
            "query($id: UUID!) { apiKey(id: $id) { state } }",
            json!({ "id": old_id }),
        )
        .await;
        assert_eq!(old["apiKey"]["state"], "EXPIRED");

        // Grace beyond 30 days is refused, naming the argument.
        let response = gql(
            &app,
            Some(app.admin_key()),
            "mutation($id: UUID!) { rotateApiKey(id: $id, gracePeriodSeconds: 99999999) { secret } }",
            json!({ "id": old_id }),
        )
        .await;
        assert_eq!(code(&response), "BAD_USER_INPUT");
        assert_eq!(field(&response), "gracePeriodSeconds");
        app.stop().await.drop_database().await;
    })
    .await;
}

#[tokio::test]
async fn revocation_and_suspension_take_effect_at_the_proxy_within_a_second() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        let owner = create_service_account(&app, "revoked").await;
        let role = crate::graphql_support::role_id(&app, "demo-caller").await;
        crate::graphql_support::bind(&app, role, owner).await;
        let (key_id, secret) = issue_key(&app, owner).await;
        assert_eq!(app.proxy_get("/demo/x", Some(&secret)).await.status(), StatusCode::OK);

        let suspended = ok(
            &app,
            app.admin_key(),
            "mutation($id: UUID!) { suspendApiKey(id: $id, reason: \"investigating\") { state suspendedReason } }",
            json!({ "id": key_id }),
        )
        .await;
        assert_eq!(suspended["suspendApiKey"]["state"], "SUSPENDED");
        let refused = eventually(Duration::from_secs(1), || async {
            app.proxy_get("/demo/x", Some(&secret)).await.status() == StatusCode::UNAUTHORIZED
        })
        .await;
        assert!(refused.is_some(), "suspension not applied within 1 s");

        let resumed = ok(
            &app,
            app.admin_key(),
            "mutation($id: UUID!) { resumeApiKey(id: $id) { state } }",
            json!({ "id": key_id }),
        )
        .await;
        assert_eq!(resumed["resumeApiKey"]["state"], "ACTIVE");
        let back = eventually(Duration::from_secs(1), || async {
            app.proxy_get("/demo/x", Some(&secret)).await.status() == StatusCode::OK
        })
        .await;
        assert!(back.is_some(), "resumption not applied within 1 s");

        let revoked = ok(
            &app,
            app.admin_key(),
            "mutation($id: UUID!) { revokeApiKey(id: $id, reason: \"leaked in a log\") { state revokedReason revokedAt } }",
            json!({ "id": key_id }),
        )
        .await;
        assert_eq!(revoked["revokeApiKey"]["state"], "REVOKED");
        assert_eq!(revoked["revokeApiKey"]["revokedReason"], "leaked in a log");
        let refused = eventually(Duration::from_secs(1), || async {
            app.proxy_get("/demo/x", Some(&secret)).await.status() == StatusCode::UNAUTHORIZED
        })
        .await;
        assert!(refused.is_some(), "revocation not applied within 1 s");

        // Filters by state and owner.
        let listed = ok(
            &app,
            app.admin_key(),
            "query($p: UUID!) { revoked: apiKeys(filter: { principalId: $p, state: REVOKED }) { nodes { id } } active: apiKeys(filter: { principalId: $p, state: ACTIVE }) { nodes { id } } }",
            json!({ "p": owner }),
        )
        .await;
        assert_eq!(listed["revoked"]["nodes"][0]["id"], key_id.to_string());
        assert_eq!(listed["active"]["nodes"], json!([]));

        // A revoked key cannot be resumed or rotated.
        let response = gql(
            &app,
            Some(app.admin_key()),
            "mutation($id: UUID!) { resumeApiKey(id: $id) { state } }",
            json!({ "id": key_id }),
        )
        .await;
        assert_eq!(code(&response), "CONFLICT");
        app.stop().await.drop_database().await;
    })
    .await;
}

#[tokio::test]
async fn pagination_walks_every_key_exactly_once() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        let owner = create_service_account(&app, "many-keys").await;
        let mut issued = Vec::new();
        for _ in 0..7 {
            issued.push(issue_key(&app, owner).await.0.to_string());
        }
        let mut seen = Vec::new();
        let mut after = serde_json::Value::Null;
        let mut pages = 0;
        loop {
            let data = ok(
                &app,
                app.admin_key(),
                "query($p: UUID!, $after: String) { apiKeys(filter: { principalId: $p }, first: 3, after: $after) { edges { cursor node { id } } pageInfo { hasNextPage endCursor } } }",
                json!({ "p": owner, "after": after }),
            )
            .await;
            let connection = &data["apiKeys"];
            pages += 1;
            for edge in connection["edges"].as_array().unwrap() {
                seen.push(edge["node"]["id"].as_str().unwrap().to_owned());
            }
            if connection["pageInfo"]["hasNextPage"] != true {
                break;
            }
            after = connection["pageInfo"]["endCursor"].clone();
        }
        assert_eq!(pages, 3);
        assert_eq!(seen, issued, "every key once, in issuance order");

        for (first, after) in [(json!(0), json!(null)), (json!(101), json!(null)), (json!(3), json!("garbage"))] {
            let response = gql(
                &app,
                Some(app.admin_key()),
                "query($first: Int, $after: String) { apiKeys(first: $first, after: $after) { nodes { id } } }",
                json!({ "first": first, "after": after }),
            )
            .await;
            assert_eq!(code(&response), "BAD_USER_INPUT", "{response}");
        }
        app.stop().await.drop_database().await;
    })
    .await;
}

#[tokio::test]
async fn a_quota_limited_key_spends_a_use_per_management_request_too() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        let auditor = create_service_account(&app, "quota-auditor").await;
        let role = crate::graphql_support::role_id(&app, "portcullis-auditor").await;
        crate::graphql_support::bind(&app, role, auditor).await;
        let issued = ok(
            &app,
            app.admin_key(),
            "mutation($input: IssueApiKeyInput!) { issueApiKey(input: $input) { secret apiKey { id } } }",
            json!({ "input": { "principalId": auditor, "name": "two uses", "remainingUses": 2 } }),
        )
        .await;
        let key = issued["issueApiKey"]["secret"].as_str().unwrap().to_owned();
        let key_id = uuid(&issued["issueApiKey"]["apiKey"]["id"]);

        // Two requests, each with two fields: two uses, not four.
        let query = "{ me { permissions } apiKeys { nodes { id } } }";
        for _ in 0..2 {
            ok(&app, &key, query, json!({})).await;
        }
        let spent = gql(&app, Some(&key), query, json!({})).await;
        assert_eq!(code(&spent), "QUOTA_EXHAUSTED", "{spent}");
        // A mutation is refused the same way, and its audit record says why.
        let refused = gql(
            &app,
            Some(&key),
            "mutation { createPrincipal(input: { kind: SERVICE_ACCOUNT, name: \"x\" }) { id } }",
            json!({}),
        )
        .await;
        assert_eq!(code(&refused), "QUOTA_EXHAUSTED", "{refused}");
        let remaining = ok(
            &app,
            app.admin_key(),
            "query($id: UUID!) { apiKey(id: $id) { remainingUses } }",
            json!({ "id": key_id }),
        )
        .await;
        assert_eq!(remaining["apiKey"]["remainingUses"], 0);
        let db = app.stop().await;
        use sea_orm::EntityTrait;
        let audited = entity::audit_event::Entity::find()
            .all(&db.conn)
            .await
            .unwrap()
            .into_iter()
            .find(|e| e.path.as_deref() == Some("createPrincipal") && e.api_key_id == Some(key_id))
            .expect("the refused mutation is audited");
        assert!(audited.reason.starts_with("quota_exhausted"), "{audited:?}");
        db.drop_database().await;
    })
    .await;
}
