//! `simulateAccess` agrees with what the proxy actually does; `explainPrincipal`; audit and
//! security event queries; chain verification catches an edited row; query limits.

use std::time::Duration;

use chrono::Utc;
use entity::{audit_event, security_event};
use reqwest::StatusCode;
use sea_orm::{ActiveModelTrait, EntityTrait, Set};
use serde_json::{Value, json};

use crate::{
    graphql_support::{
        bind, code, create_service_account, gql, issue_key, ok, principal_with_role, role_id, uuid,
    },
    support::{TestApp, eventually, for_each_backend},
};

const SIMULATE: &str = "query($input: SimulateAccessInput!) { simulateAccess(input: $input) { allowed reason reasonCode route { id name } bindingId grantId roleId normalizedPath } }";

#[tokio::test]
async fn simulate_access_agrees_with_the_proxy() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        let admin = app.admin_key().to_owned();
        let admin_id = app.admin_id().await;
        let nobody = create_service_account(&app, "nobody").await;
        let (_, nobody_key) = issue_key(&app, nobody).await;
        let (revoked_id, revoked_key) = issue_key(&app, admin_id).await;
        ok(
            &app,
            &admin,
            "mutation($id: UUID!) { revokeApiKey(id: $id, reason: \"test\") { id } }",
            json!({ "id": revoked_id }),
        )
        .await;
        let office = create_service_account(&app, "office-only").await;
        let (_, office_key) = issue_key(&app, office).await;
        let demo_role = role_id(&app, "demo-caller").await;
        ok(
            &app,
            &admin,
            "mutation($r: UUID!, $p: UUID!) { bindRole(roleId: $r, principalId: $p, cidrs: [\"10.0.0.0/8\"]) { id } }",
            json!({ "r": demo_role, "p": office }),
        )
        .await;
        tokio::time::sleep(Duration::from_millis(400)).await;

        // (simulation subject, key used at the proxy, path, expected code, expected status)
        let cases: Vec<(Value, &str, &str, &str, StatusCode)> = vec![
            (json!({ "principalId": admin_id }), admin.as_str(), "/demo/./a//b", "allowed_by_binding", StatusCode::OK),
            (json!({ "principalId": nobody }), nobody_key.as_str(), "/demo/x", "no_bindings", StatusCode::FORBIDDEN),
            (json!({ "principalId": admin_id }), admin.as_str(), "/nope", "no_route", StatusCode::NOT_FOUND),
            (json!({ "apiKeyId": revoked_id }), revoked_key.as_str(), "/demo/x", "key_revoked", StatusCode::UNAUTHORIZED),
            (json!({ "principalId": admin_id }), admin.as_str(), "/demo/a%2Fb", "bad_request_target", StatusCode::BAD_REQUEST),
            (json!({ "principalId": office }), office_key.as_str(), "/demo/x", "cidr_condition_not_met", StatusCode::FORBIDDEN),
        ];
        for (subject, key, path, want_code, want_status) in cases {
            let mut input = subject.clone();
            input["method"] = json!("GET");
            input["path"] = json!(path);
            input["sourceIp"] = json!("127.0.0.1");
            let decision = ok(&app, &admin, SIMULATE, json!({ "input": input })).await["simulateAccess"].clone();
            let status = crate::support::raw_http(
                app.dev.proxy_addr,
                &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"),
            )
            .await
            .0;
            assert_eq!(decision["reasonCode"], want_code, "{path}: {decision}");
            assert_eq!(status, want_status.as_u16(), "{path}");
            assert_eq!(decision["allowed"], status == 200, "{path}: {decision}");
        }
        let allowed = ok(
            &app,
            &admin,
            SIMULATE,
            json!({ "input": { "principalId": admin_id, "method": "GET", "path": "/demo/./a//b" } }),
        )
        .await;
        let allowed = &allowed["simulateAccess"];
        assert_eq!(allowed["route"]["name"], "demo");
        assert_eq!(allowed["normalizedPath"], "/demo/a/b");
        assert_eq!(allowed["roleId"], demo_role.to_string());
        assert!(!allowed["bindingId"].is_null());

        // From inside the office network the CIDR-bound binding applies.
        let inside = ok(
            &app,
            &admin,
            SIMULATE,
            json!({ "input": { "principalId": office, "method": "GET", "path": "/demo/x", "sourceIp": "10.1.2.3" } }),
        )
        .await;
        assert_eq!(inside["simulateAccess"]["allowed"], true);

        // Bad input.
        for input in [
            json!({ "method": "GET", "path": "/demo" }),
            json!({ "principalId": admin_id, "method": "get", "path": "/demo" }),
            json!({ "principalId": admin_id, "method": "GET", "path": "/demo", "sourceIp": "nope" }),
        ] {
            let response = gql(&app, Some(&admin), SIMULATE, json!({ "input": input })).await;
            assert_eq!(code(&response), "BAD_USER_INPUT", "{response}");
        }
        let unknown = gql(
            &app,
            Some(&admin),
            SIMULATE,
            json!({ "input": { "apiKeyId": uuid::Uuid::now_v7(), "method": "GET", "path": "/demo" } }),
        )
        .await;
        assert_eq!(code(&unknown), "NOT_FOUND");
        app.stop().await.drop_database().await;
    })
    .await;
}

/// A new group `callers` with `member` in it.
#[tokio::test]
async fn simulate_access_normalises_paths_with_the_proxys_options() {
    let app = TestApp::spawn_with(migration::testing::TestDatabase::sqlite().await, |config| {
        config.proxy.allow_semicolon_params = true;
    })
    .await;
    let admin = app.admin_key().to_owned();
    let admin_id = app.admin_id().await;
    let path = "/demo/a;v=1/b";
    let decision = ok(
        &app,
        &admin,
        SIMULATE,
        json!({ "input": { "principalId": admin_id, "method": "GET", "path": path } }),
    )
    .await["simulateAccess"]
        .clone();
    let status = crate::support::raw_http(
        app.dev.proxy_addr,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {admin}\r\nConnection: close\r\n\r\n"),
    )
    .await
    .0;
    assert_eq!(status, 200);
    assert_eq!(decision["reasonCode"], "allowed_by_binding", "{decision}");
    assert_eq!(decision["normalizedPath"], path, "{decision}");
    app.stop().await.drop_database().await;
}

async fn group_of(app: &TestApp, admin: &str, member: uuid::Uuid) -> uuid::Uuid {
    let group = ok(
        app,
        admin,
        "mutation { createPrincipal(input: { kind: GROUP, name: \"callers\" }) { id } }",
        json!({}),
    )
    .await;
    let group = uuid(&group["createPrincipal"]["id"]);
    ok(
        app,
        admin,
        "mutation($g: UUID!, $m: UUID!) { addGroupMember(groupId: $g, memberId: $m) { group { id } } }",
        json!({ "g": group, "m": member }),
    )
    .await;
    group
}

#[tokio::test]
async fn explain_principal_lists_effective_permissions_with_their_source() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        let admin = app.admin_key().to_owned();
        let user = create_service_account(&app, "member").await;
        let group = group_of(&app, &admin, user).await;
        let demo_role = role_id(&app, "demo-caller").await;
        let binding = bind(&app, demo_role, group).await;
        let auditor = role_id(&app, "portcullis-auditor").await;
        bind(&app, auditor, user).await;

        let explained = ok(
            &app,
            &admin,
            "query($id: UUID!) { explainPrincipal(id: $id) { principal { name } permissions { name methods pathGlob roleName bindingId viaGroupId grantId active } } }",
            json!({ "id": user }),
        )
        .await;
        let permissions = explained["explainPrincipal"]["permissions"].as_array().unwrap();
        let demo = permissions.iter().find(|p| p["name"] == "demo:call").unwrap();
        assert_eq!(demo["roleName"], "demo-caller");
        assert_eq!(demo["bindingId"], binding.to_string());
        assert_eq!(demo["viaGroupId"], group.to_string());
        assert_eq!(demo["pathGlob"], "/demo/**");
        assert_eq!(demo["active"], true);
        let mut own: Vec<&str> = permissions
            .iter()
            .filter(|p| p["roleName"] == "portcullis-auditor")
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        own.sort_unstable();
        assert_eq!(
            own,
            ["portcullis:audit:read", "portcullis:keys:read", "portcullis:principals:read", "portcullis:reviews:read"]
        );
        assert!(permissions.iter().filter(|p| p["roleName"] == "portcullis-auditor").all(|p| p["viaGroupId"].is_null()));
        app.stop().await.drop_database().await;
    })
    .await;
}

/// Disabling a group takes its bindings from every member at once; re-enabling gives them back.
#[tokio::test]
async fn a_disabled_group_grants_nothing_to_its_members() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        let admin = app.admin_key().to_owned();
        let user = create_service_account(&app, "member").await;
        let (_, key) = issue_key(&app, user).await;
        let group = group_of(&app, &admin, user).await;
        bind(&app, role_id(&app, "demo-caller").await, group).await;
        let status = || async { app.proxy_get("/demo/x", Some(&key)).await.status().as_u16() };
        let becomes = |want: u16| async move {
            eventually(Duration::from_secs(2), || async { status().await == want }).await
        };
        assert!(becomes(200).await.is_some(), "the group's binding applies");
        let set_disabled = |disabled: bool| {
            let admin = admin.clone();
            let app = &app;
            async move {
                ok(
                    app,
                    &admin,
                    "mutation($id: UUID!, $d: Boolean!) { updatePrincipal(id: $id, input: { disabled: $d }) { id } }",
                    json!({ "id": group, "d": disabled }),
                )
                .await;
            }
        };
        set_disabled(true).await;
        assert!(becomes(403).await.is_some(), "a disabled group still granted access");
        set_disabled(false).await;
        assert!(becomes(200).await.is_some(), "re-enabling the group did not reach the member");
        app.stop().await.drop_database().await;
    })
    .await;
}

/// Management permissions (any method on `/graphql`) never open a proxied route whose path
/// happens to be `/graphql`; such routes cannot require a `portcullis:` permission either.
#[tokio::test]
async fn management_roles_do_not_open_proxied_routes() {
    let app = TestApp::spawn(migration::testing::TestDatabase::sqlite().await).await;
    let admin = app.admin_key().to_owned();
    let upstream = format!("http://{}", app.dev.demo_upstream_addr);
    ok(
        &app,
        &admin,
        "mutation($u: String!) { createRoute(input: { name: \"gql\", pathPrefix: \"/graphql\", upstreamUrl: $u }) { id } }",
        json!({ "u": upstream }),
    )
    .await;
    let (_, auditor) = principal_with_role(&app, "reader", "portcullis-auditor").await;
    let refused = eventually(Duration::from_secs(2), || async {
        let response = app.proxy_get("/graphql", Some(&auditor)).await;
        response.status() == reqwest::StatusCode::FORBIDDEN
    })
    .await;
    assert!(
        refused.is_some(),
        "a management role opened a proxied route"
    );
    assert_eq!(
        app.proxy_get("/graphql", Some(&admin)).await.status(),
        reqwest::StatusCode::FORBIDDEN,
        "the bootstrap admin holds only management permissions on /graphql"
    );
    let reserved = gql(
        &app,
        Some(&admin),
        "mutation($u: String!) { createRoute(input: { name: \"mgmt\", pathPrefix: \"/m\", upstreamUrl: $u, requiredPermission: \"portcullis:keys:read\" }) { id } }",
        json!({ "u": upstream }),
    )
    .await;
    assert_eq!(code(&reserved), "BAD_USER_INPUT", "{reserved}");
    app.stop().await.drop_database().await;
}

#[tokio::test]
async fn audit_queries_filter_and_verification_finds_an_edited_row() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        let admin = app.admin_key().to_owned();
        for i in 0..6 {
            let key = (i % 3 != 0).then_some(admin.as_str());
            app.proxy_get(&format!("/demo/{i}"), key).await;
        }
        let flushed = eventually(Duration::from_secs(5), || async {
            let data = ok(&app, &admin, "{ auditEvents(first: 100, filter: { kind: PROXY_REQUEST }) { nodes { id } } }", json!({})).await;
            data["auditEvents"]["nodes"].as_array().unwrap().len() == 6
        })
        .await;
        assert!(flushed.is_some(), "audit events were not written");

        let denied = ok(
            &app,
            &admin,
            "{ auditEvents(filter: { kind: PROXY_REQUEST, decision: DENY }) { nodes { id decision status path } } }",
            json!({}),
        )
        .await;
        let denied = denied["auditEvents"]["nodes"].as_array().unwrap().clone();
        assert_eq!(denied.len(), 2);
        assert!(denied[0]["id"].as_i64() > denied[1]["id"].as_i64(), "newest first");
        assert_eq!(denied[0]["path"], "/demo/3");
        let since = ok(
            &app,
            &admin,
            "query($from: DateTime) { auditEvents(filter: { from: $from }) { nodes { id } } }",
            json!({ "from": (Utc::now() + chrono::Duration::hours(1)).to_rfc3339() }),
        )
        .await;
        assert_eq!(since["auditEvents"]["nodes"], json!([]));

        let verified = ok(&app, &admin, "{ verifyAuditChain { ok checked firstBrokenId problem } }", json!({})).await;
        assert_eq!(verified["verifyAuditChain"]["ok"], true);
        let checked = verified["verifyAuditChain"]["checked"].as_i64().unwrap();
        assert!(checked >= 6, "{verified}");

        // Tamper with one proxy event; verification names it, from the start or a range.
        let victim_id = denied[1]["id"].as_i64().unwrap();
        let victim = audit_event::Entity::find_by_id(victim_id).one(&app.db).await.unwrap().unwrap();
        let mut edited: audit_event::ActiveModel = victim.into();
        edited.decision = Set(Some(audit_event::AuditDecision::Allow));
        edited.update(&app.db).await.unwrap();
        for (from, to) in [(json!(null), json!(null)), (json!(victim_id), json!(victim_id + 2)), (json!(victim_id - 1), json!(null))] {
            let broken = ok(
                &app,
                &admin,
                "query($from: Int, $to: Int) { verifyAuditChain(fromId: $from, toId: $to) { ok checked firstBrokenId problem } }",
                json!({ "from": from, "to": to }),
            )
            .await;
            assert_eq!(broken["verifyAuditChain"]["ok"], false, "{broken}");
            assert_eq!(broken["verifyAuditChain"]["firstBrokenId"], victim_id);
            assert!(broken["verifyAuditChain"]["problem"].as_str().unwrap().contains("edited"));
        }
        // A range after the edit still verifies: it links to its real predecessor.
        let after = ok(
            &app,
            &admin,
            "query($from: Int) { verifyAuditChain(fromId: $from) { ok } }",
            json!({ "from": victim_id + 1 }),
        )
        .await;
        assert_eq!(after["verifyAuditChain"]["ok"], true);

        // Security events, filtered by severity.
        let now = Utc::now();
        for (kind, severity) in [("failed_auth_burst", security_event::Severity::High), ("traffic_spike", security_event::Severity::Low)] {
            security_event::ActiveModel {
                id: Set(uuid::Uuid::now_v7()),
                kind: Set(kind.into()),
                severity: Set(severity),
                occurred_at: Set(now),
                principal_id: Set(None),
                api_key_id: Set(None),
                client_ip: Set(Some("192.0.2.1".into())),
                route_id: Set(None),
                fingerprint: Set(format!("{kind}:test")),
                detail: Set(json!({ "count": 20 })),
                status: Set(security_event::SecurityEventStatus::New),
                handled_by_run_id: Set(None),
                created_at: Set(now),
            }
            .insert(&app.db)
            .await
            .unwrap();
        }
        let events = ok(
            &app,
            &admin,
            "{ high: securityEvents(filter: { minSeverity: HIGH, kind: \"failed_auth_burst\" }) { nodes { kind severity clientIp detail status } } all: securityEvents(filter: { kind: \"traffic_spike\" }) { nodes { kind } } }",
            json!({}),
        )
        .await;
        assert_eq!(events["high"]["nodes"][0]["severity"], "HIGH");
        assert_eq!(events["high"]["nodes"][0]["detail"]["count"], 20);
        assert_eq!(events["high"]["nodes"].as_array().unwrap().len(), 1);
        assert_eq!(events["all"]["nodes"].as_array().unwrap().len(), 1);
        app.stop().await.drop_database().await;
    })
    .await;
}

#[tokio::test]
async fn too_deep_or_too_complex_queries_are_refused_before_running() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        let admin = app.admin_key().to_owned();
        let deep = "{ __schema { types { fields { type { ofType { ofType { ofType { ofType { ofType { ofType { ofType { ofType { name } } } } } } } } } } } } }";
        let response = gql(&app, Some(&admin), deep, json!({})).await;
        assert_eq!(code(&response), "GRAPHQL_VALIDATION_FAILED", "{response}");
        assert!(response["errors"][0]["message"].as_str().unwrap().contains("nested too deep"));

        let complex = "{ apiKeys(first: 100) { nodes { principal { apiKeys(first: 100) { nodes { id name prefix } } } } } }";
        let response = gql(&app, Some(&admin), complex, json!({})).await;
        assert_eq!(code(&response), "GRAPHQL_VALIDATION_FAILED", "{response}");
        assert!(response["errors"][0]["message"].as_str().unwrap().contains("too complex"));
        assert!(response["data"].is_null());

        // Nothing was executed: no audit trail for a refused document, and a normal query works.
        ok(&app, &admin, "{ apiKeys(first: 100) { nodes { id principal { name } } } }", json!({})).await;
        app.stop().await.drop_database().await;
    })
    .await;
}
