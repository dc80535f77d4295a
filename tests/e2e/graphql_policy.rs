//! Principals, groups, roles, bindings, routes and IP rules through the management API, with
//! their effect observed at the proxy, and validation errors that name the field.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::{
    graphql_support::{bind, code, create_service_account, field, gql, issue_key, ok, uuid},
    support::{TestApp, eventually, for_each_backend},
};

async fn status_eventually(
    app: &TestApp,
    method: reqwest::Method,
    path: &str,
    key: &str,
    want: StatusCode,
) {
    let reached = eventually(Duration::from_secs(2), || async {
        app.http
            .request(method.clone(), format!("{}{path}", app.dev.proxy_url()))
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .status()
            == want
    })
    .await;
    assert!(reached.is_some(), "{method} {path} never answered {want}");
}

#[tokio::test]
async fn principals_and_groups_are_managed_and_disabling_stops_a_principal_at_the_proxy() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        let admin = app.admin_key().to_owned();
        let created = ok(
            &app,
            &admin,
            "mutation($input: CreatePrincipalInput!) { createPrincipal(input: $input) { id kind name displayName email oidcIssuer oidcSubject disabled metadata } }",
            json!({ "input": { "kind": "USER", "name": "ada", "displayName": "Ada Lovelace",
                "email": "ada@example.com", "oidcIssuer": "https://idp.example", "oidcSubject": "u-1",
                "metadata": { "team": "analytics" } } }),
        )
        .await;
        let ada = uuid(&created["createPrincipal"]["id"]);
        assert_eq!(created["createPrincipal"]["kind"], "USER");
        assert_eq!(created["createPrincipal"]["metadata"]["team"], "analytics");
        let duplicate = gql(
            &app,
            Some(&admin),
            "mutation { createPrincipal(input: { kind: USER, name: \"ada\" }) { id } }",
            json!({}),
        )
        .await;
        assert_eq!(code(&duplicate), "CONFLICT");

        let group = ok(
            &app,
            &admin,
            "mutation { createPrincipal(input: { kind: GROUP, name: \"analysts\", oidcGroup: \"analysts\" }) { id } }",
            json!({}),
        )
        .await;
        let group = uuid(&group["createPrincipal"]["id"]);
        let added = ok(
            &app,
            &admin,
            "mutation($g: UUID!, $m: UUID!) { addGroupMember(groupId: $g, memberId: $m) { group { name } member { name } } }",
            json!({ "g": group, "m": ada }),
        )
        .await;
        assert_eq!(added["addGroupMember"]["member"]["name"], "ada");
        let again = gql(
            &app,
            Some(&admin),
            "mutation($g: UUID!, $m: UUID!) { addGroupMember(groupId: $g, memberId: $m) { group { id } } }",
            json!({ "g": group, "m": ada }),
        )
        .await;
        assert_eq!(code(&again), "CONFLICT");
        let read = ok(
            &app,
            &admin,
            "query($id: UUID!, $g: UUID!) { principal(id: $id) { groups { nodes { name } } } group: principal(id: $g) { members { nodes { name } } } users: principals(filter: { kind: USER }) { nodes { name } } }",
            json!({ "id": ada, "g": group }),
        )
        .await;
        assert_eq!(read["principal"]["groups"]["nodes"], json!([{ "name": "analysts" }]));
        assert_eq!(read["group"]["members"]["nodes"], json!([{ "name": "ada" }]));
        assert_eq!(read["users"]["nodes"], json!([{ "name": "ada" }]));

        // A group's binding applies to its members at the proxy.
        let role = crate::graphql_support::role_id(&app, "demo-caller").await;
        bind(&app, role, group).await;
        let (_, key) = issue_key(&app, ada).await;
        status_eventually(&app, reqwest::Method::GET, "/demo/x", &key, StatusCode::OK).await;
        ok(
            &app,
            &admin,
            "mutation($g: UUID!, $m: UUID!) { removeGroupMember(groupId: $g, memberId: $m) { group { id } } }",
            json!({ "g": group, "m": ada }),
        )
        .await;
        status_eventually(&app, reqwest::Method::GET, "/demo/x", &key, StatusCode::FORBIDDEN).await;

        // Disabling a principal stops its keys.
        ok(
            &app,
            &admin,
            "mutation($g: UUID!, $m: UUID!) { addGroupMember(groupId: $g, memberId: $m) { group { id } } }",
            json!({ "g": group, "m": ada }),
        )
        .await;
        status_eventually(&app, reqwest::Method::GET, "/demo/x", &key, StatusCode::OK).await;
        let updated = ok(
            &app,
            &admin,
            "mutation($id: UUID!) { updatePrincipal(id: $id, input: { displayName: \"Countess\", disabled: true }) { displayName disabled } }",
            json!({ "id": ada }),
        )
        .await;
        assert_eq!(updated["updatePrincipal"], json!({ "displayName": "Countess", "disabled": true }));
        status_eventually(&app, reqwest::Method::GET, "/demo/x", &key, StatusCode::UNAUTHORIZED).await;
        app.stop().await.drop_database().await;
    })
    .await;
}

#[tokio::test]
async fn roles_routes_bindings_and_ip_rules_drive_the_proxy() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        let admin = app.admin_key().to_owned();
        let upstream = format!("http://{}", app.dev.demo_upstream_addr);
        let route = ok(
            &app,
            &admin,
            "mutation($input: CreateRouteInput!) { createRoute(input: $input) { id name pathPrefix upstreamUrl stripPrefix authMethods requiredPermission rateLimit { perMinute burst } timeoutMs enabled } }",
            json!({ "input": { "name": "orders", "pathPrefix": "/orders", "upstreamUrl": upstream,
                "stripPrefix": true, "authMethods": ["API_KEY"], "requiredPermission": "orders:read",
                "rateLimit": { "perMinute": 6000, "burst": 100 }, "timeoutMs": 5000 } }),
        )
        .await;
        let route_id = uuid(&route["createRoute"]["id"]);
        assert_eq!(route["createRoute"]["authMethods"], json!(["API_KEY"]));
        let role = ok(
            &app,
            &admin,
            "mutation($input: CreateRoleInput!) { createRole(input: $input) { id name builtin permissions { name methods pathGlob routeId } } }",
            json!({ "input": { "name": "orders-reader", "description": "reads orders", "permissions": [
                { "name": "orders:read", "methods": ["GET"], "pathGlob": "/orders/**", "routeId": route_id }
            ] } }),
        )
        .await;
        let role_id = uuid(&role["createRole"]["id"]);
        assert_eq!(role["createRole"]["permissions"][0]["methods"], json!(["GET"]));

        let caller = create_service_account(&app, "orders-client").await;
        let (_, key) = issue_key(&app, caller).await;
        let binding = bind(&app, role_id, caller).await;
        status_eventually(&app, reqwest::Method::GET, "/orders/1", &key, StatusCode::OK).await;
        status_eventually(&app, reqwest::Method::POST, "/orders/1", &key, StatusCode::FORBIDDEN).await;

        // updateRole replaces the permissions.
        ok(
            &app,
            &admin,
            "mutation($id: UUID!) { updateRole(id: $id, input: { permissions: [{ name: \"orders:read\", methods: [\"GET\", \"POST\"], pathGlob: \"/orders/**\" }] }) { permissions { methods } } }",
            json!({ "id": role_id }),
        )
        .await;
        status_eventually(&app, reqwest::Method::POST, "/orders/1", &key, StatusCode::OK).await;

        // An IP rule on the route blocks the loopback client, and its deletion unblocks it.
        let rule = ok(
            &app,
            &admin,
            "mutation($r: UUID!) { createIpRule(input: { cidr: \"127.0.0.1\", action: DENY, routeId: $r, reason: \"test\" }) { id cidr action routeId source } }",
            json!({ "r": route_id }),
        )
        .await;
        assert_eq!(rule["createIpRule"]["cidr"], "127.0.0.1/32");
        status_eventually(&app, reqwest::Method::GET, "/orders/1", &key, StatusCode::FORBIDDEN).await;
        let listed = ok(&app, &admin, "query($r: UUID!) { ipRules(filter: { routeId: $r }) { nodes { id } } }", json!({ "r": route_id })).await;
        assert_eq!(listed["ipRules"]["nodes"].as_array().unwrap().len(), 1);
        ok(
            &app,
            &admin,
            "mutation($id: UUID!) { deleteIpRule(id: $id) { id } }",
            json!({ "id": uuid(&rule["createIpRule"]["id"]) }),
        )
        .await;
        status_eventually(&app, reqwest::Method::GET, "/orders/1", &key, StatusCode::OK).await;

        // A binding limited to another network does not apply from loopback.
        ok(&app, &admin, "mutation($id: UUID!) { unbindRole(id: $id) { id } }", json!({ "id": binding })).await;
        let limited = ok(
            &app,
            &admin,
            "mutation($r: UUID!, $p: UUID!) { bindRole(roleId: $r, principalId: $p, cidrs: [\"10.0.0.0/8\"], reason: \"office only\") { cidrs reason } }",
            json!({ "r": role_id, "p": caller }),
        )
        .await;
        assert_eq!(limited["bindRole"]["cidrs"], json!(["10.0.0.0/8"]));
        status_eventually(&app, reqwest::Method::GET, "/orders/1", &key, StatusCode::FORBIDDEN).await;

        // Disabling, then deleting, the route.
        let updated = ok(
            &app,
            &admin,
            "mutation($id: UUID!) { updateRoute(id: $id, input: { enabled: false, requiredPermission: null, host: null }) { enabled requiredPermission } }",
            json!({ "id": route_id }),
        )
        .await;
        assert_eq!(updated["updateRoute"], json!({ "enabled": false, "requiredPermission": null }));
        status_eventually(&app, reqwest::Method::GET, "/orders/1", &key, StatusCode::NOT_FOUND).await;
        ok(&app, &admin, "mutation($id: UUID!) { deleteRole(id: $id) { name } }", json!({ "id": role_id })).await;
        ok(&app, &admin, "mutation($id: UUID!) { deleteRoute(id: $id) { name } }", json!({ "id": route_id })).await;
        let remaining = ok(&app, &admin, "{ routes { nodes { name } } roles(first: 100) { nodes { name builtin } } }", json!({})).await;
        assert_eq!(remaining["routes"]["nodes"], json!([{ "name": "demo" }]));
        assert!(remaining["roles"]["nodes"].as_array().unwrap().iter().all(|r| r["name"] != "orders-reader"));
        app.stop().await.drop_database().await;
    })
    .await;
}

#[tokio::test]
async fn bad_input_is_refused_with_the_field_and_unknown_ids_are_not_found() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        let admin_id = app.admin_id().await;
        let admin = app.admin_key().to_owned();
        let unknown = uuid::Uuid::now_v7();
        let past = (chrono::Utc::now() - chrono::Duration::hours(1)).to_rfc3339();
        let long = "x".repeat(257);
        let role = crate::graphql_support::role_id(&app, "demo-caller").await;
        let builtin = crate::graphql_support::role_id(&app, "portcullis-admin").await;
        let cases: Vec<(&str, Value, &str, &str)> = vec![
            (
                "mutation($r: UUID!, $p: UUID!) { bindRole(roleId: $r, principalId: $p, cidrs: [\"10.0.0.0/33\"]) { id } }",
                json!({ "r": role, "p": admin_id }), "BAD_USER_INPUT", "cidrs.0",
            ),
            (
                "mutation($r: UUID!, $p: UUID!, $at: DateTime) { bindRole(roleId: $r, principalId: $p, expiresAt: $at) { id } }",
                json!({ "r": role, "p": admin_id, "at": past }), "BAD_USER_INPUT", "expiresAt",
            ),
            (
                "mutation($p: UUID!, $at: DateTime) { issueApiKey(input: { principalId: $p, name: \"k\", expiresAt: $at }) { secret } }",
                json!({ "p": admin_id, "at": past }), "BAD_USER_INPUT", "input.expiresAt",
            ),
            (
                "mutation($p: UUID!, $n: String!) { issueApiKey(input: { principalId: $p, name: $n }) { secret } }",
                json!({ "p": admin_id, "n": long }), "BAD_USER_INPUT", "input.name",
            ),
            (
                "mutation($n: String!) { createPrincipal(input: { kind: USER, name: $n }) { id } }",
                json!({ "n": long }), "BAD_USER_INPUT", "input.name",
            ),
            (
                "mutation { createRole(input: { name: \"r\", permissions: [{ name: \"a:b\", pathGlob: \"/a*b\" }] }) { id } }",
                json!({}), "BAD_USER_INPUT", "input.permissions.0.pathGlob",
            ),
            (
                "mutation { createRole(input: { name: \"r\", permissions: [{ name: \"a:b\", methods: [\"get\"], pathGlob: \"/a\" }] }) { id } }",
                json!({}), "BAD_USER_INPUT", "input.permissions.0.methods",
            ),
            (
                "mutation { createRole(input: { name: \"r\", permissions: [{ name: \"nocolon\", pathGlob: \"/a\" }] }) { id } }",
                json!({}), "BAD_USER_INPUT", "input.permissions.0.name",
            ),
            (
                "mutation { createIpRule(input: { cidr: \"300.1.1.1/8\", action: DENY, reason: \"x\" }) { id } }",
                json!({}), "BAD_USER_INPUT", "input.cidr",
            ),
            (
                "mutation { createRoute(input: { name: \"r\", pathPrefix: \"/a/../b\", upstreamUrl: \"http://127.0.0.1:1\" }) { id } }",
                json!({}), "BAD_USER_INPUT", "input.pathPrefix",
            ),
            (
                "mutation { createRoute(input: { name: \"r\", pathPrefix: \"/r\", upstreamUrl: \"ftp://files\" }) { id } }",
                json!({}), "BAD_USER_INPUT", "input.upstreamUrl",
            ),
            (
                "mutation { createRoute(input: { name: \"demo\", pathPrefix: \"/other\", upstreamUrl: \"http://127.0.0.1:1\" }) { id } }",
                json!({}), "CONFLICT", "",
            ),
            (
                "mutation($id: UUID!) { deleteRole(id: $id) { id } }",
                json!({ "id": builtin }), "BAD_USER_INPUT", "id",
            ),
            ("query($id: UUID!) { apiKey(id: $id) { id } }", json!({ "id": unknown }), "NOT_FOUND", ""),
            ("query($id: UUID!) { principal(id: $id) { id } }", json!({ "id": unknown }), "NOT_FOUND", ""),
            (
                "mutation($id: UUID!) { revokeApiKey(id: $id, reason: \"x\") { id } }",
                json!({ "id": unknown }), "NOT_FOUND", "",
            ),
            (
                "mutation($r: UUID!, $p: UUID!) { bindRole(roleId: $r, principalId: $p) { id } }",
                json!({ "r": unknown, "p": admin_id }), "NOT_FOUND", "",
            ),
            (
                "mutation($id: UUID!) { updateRoute(id: $id, input: { enabled: false }) { id } }",
                json!({ "id": unknown }), "NOT_FOUND", "",
            ),
            ("mutation($id: UUID!) { deleteIpRule(id: $id) { id } }", json!({ "id": unknown }), "NOT_FOUND", ""),
            ("mutation($id: UUID!) { unbindRole(id: $id) { id } }", json!({ "id": unknown }), "NOT_FOUND", ""),
            (
                "mutation($p: UUID!) { issueApiKey(input: { principalId: $p, name: \"k\" }) { secret } }",
                json!({ "p": unknown }), "NOT_FOUND", "",
            ),
        ];
        for (query, variables, want_code, want_field) in cases {
            let response = gql(&app, Some(&admin), query, variables).await;
            assert_eq!(code(&response), want_code, "{query}: {response}");
            assert_eq!(field(&response), want_field, "{query}: {response}");
        }
        app.stop().await.drop_database().await;
    })
    .await;
}
