//! The operations a portal uses (`tests/operations/*.graphql`) all run against the live API
//! without errors. Every named operation in those files must appear in the script below, so a
//! new operation cannot be added without being exercised.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Value, json};

use crate::{
    graphql_support::code,
    support::{TestApp, for_each_backend},
};

/// The operation documents, by file name.
fn documents() -> BTreeMap<String, String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/operations");
    let mut docs = BTreeMap::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "graphql") {
            let name = path.file_name().unwrap().to_string_lossy().into_owned();
            docs.insert(name, std::fs::read_to_string(&path).unwrap());
        }
    }
    docs
}

/// Names of the `query` and `mutation` operations a document defines.
fn operation_names(document: &str) -> Vec<String> {
    document
        .lines()
        .filter_map(|line| {
            let line = line.trim_start();
            let rest = line
                .strip_prefix("query ")
                .or_else(|| line.strip_prefix("mutation "))?;
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            (!name.is_empty()).then_some(name)
        })
        .collect()
}

/// Replaces `"${name}"` strings with the value captured under `name`.
fn substitute(value: &Value, captured: &BTreeMap<String, Value>) -> Value {
    match value {
        Value::String(s) if s.starts_with("${") && s.ends_with('}') => captured
            .get(&s[2..s.len() - 1])
            .unwrap_or_else(|| panic!("nothing captured as {s}"))
            .clone(),
        Value::Array(items) => {
            Value::Array(items.iter().map(|v| substitute(v, captured)).collect())
        }
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), substitute(v, captured)))
                .collect(),
        ),
        other => other.clone(),
    }
}

/// One scripted call: (file, operation, variables, captures as (name, JSON pointer into
/// `data`)).
type Step = (
    &'static str,
    &'static str,
    Value,
    Vec<(&'static str, &'static str)>,
);

/// A secret the dev Secrets Manager holds, for the managed-secret operations.
const OPERATIONS_SECRET: &str = "orders/upstream-token";

fn script(upstream: &str) -> Vec<Step> {
    let future = (chrono::Utc::now() + chrono::Duration::days(7)).to_rfc3339();
    vec![
        ("me.graphql", "ServerInfo", json!({}), vec![]),
        (
            "me.graphql",
            "Me",
            json!({}),
            vec![("adminId", "/me/principal/id")],
        ),
        (
            "principals.graphql",
            "CreatePrincipal",
            json!({ "input": { "kind": "USER", "name": "portal-user", "email": "u@example.com",
                "oidcIssuer": "https://idp.example", "oidcSubject": "portal-user" } }),
            vec![("userId", "/createPrincipal/id")],
        ),
        (
            "principals.graphql",
            "CreatePrincipal",
            json!({ "input": { "kind": "GROUP", "name": "portal-group", "oidcGroup": "portal" } }),
            vec![("groupId", "/createPrincipal/id")],
        ),
        (
            "principals.graphql",
            "AddGroupMember",
            json!({ "groupId": "${groupId}", "memberId": "${userId}" }),
            vec![],
        ),
        (
            "principals.graphql",
            "UpdatePrincipal",
            json!({ "id": "${userId}", "input": { "displayName": "Portal User", "metadata": { "team": "web" } } }),
            vec![],
        ),
        (
            "principals.graphql",
            "ListPrincipals",
            json!({ "filter": { "kind": "USER" }, "first": 10 }),
            vec![],
        ),
        (
            "routes.graphql",
            "CreateRoute",
            json!({ "input": { "name": "portal-orders", "pathPrefix": "/orders", "upstreamUrl": upstream,
                "stripPrefix": true, "authMethods": ["API_KEY", "OIDC"], "requiredPermission": "orders:read",
                "rateLimit": { "perMinute": 600, "burst": 20 }, "timeoutMs": 5000,
                "upstreamCredential": { "secretId": "orders/upstream-token", "header": "authorization" } } }),
            vec![("routeId", "/createRoute/id")],
        ),
        (
            "routes.graphql",
            "UpdateRoute",
            json!({ "id": "${routeId}", "input": { "timeoutMs": 3000, "upstreamCredential": null } }),
            vec![],
        ),
        (
            "routes.graphql",
            "ListRoutes",
            json!({ "first": 10 }),
            vec![],
        ),
        (
            "routes.graphql",
            "GetRoute",
            json!({ "id": "${routeId}" }),
            vec![],
        ),
        (
            "roles.graphql",
            "CreateRole",
            json!({ "input": { "name": "orders-reader", "description": "Reads orders", "permissions": [
                { "name": "orders:read", "methods": ["GET", "HEAD"], "pathGlob": "/orders/**", "routeId": "${routeId}" }
            ] } }),
            vec![("roleId", "/createRole/id")],
        ),
        (
            "roles.graphql",
            "UpdateRole",
            json!({ "id": "${roleId}", "input": { "description": "Reads orders (all methods)", "permissions": [
                { "name": "orders:read", "pathGlob": "/orders/**" }
            ] } }),
            vec![],
        ),
        ("roles.graphql", "ListRoles", json!({ "first": 50 }), vec![]),
        (
            "roles.graphql",
            "GetRole",
            json!({ "id": "${roleId}" }),
            vec![],
        ),
        (
            "roles.graphql",
            "BindRole",
            json!({ "roleId": "${roleId}", "principalId": "${groupId}", "expiresAt": future,
                "cidrs": ["127.0.0.0/8", "10.0.0.0/8"], "reason": "portal access" }),
            vec![("bindingId", "/bindRole/id")],
        ),
        (
            "roles.graphql",
            "ListRoleBindings",
            json!({ "filter": { "principalId": "${groupId}" } }),
            vec![],
        ),
        (
            "grants.graphql",
            "RequestIncidentGrant",
            json!({ "input": { "incidentId": "INC-1234", "justification": "orders API failing",
                "durationSeconds": 1800, "roleId": "${roleId}", "breakGlass": true,
                "permissions": [{ "name": "orders:write", "methods": ["POST"], "pathGlob": "/orders/*/refund" }] } }),
            vec![("grantId", "/requestIncidentGrant/incidentGrant/id")],
        ),
        (
            "grants.graphql",
            "ListIncidentGrants",
            json!({ "filter": { "state": "ACTIVE", "incidentId": "INC-1234" }, "first": 10 }),
            vec![],
        ),
        (
            "grants.graphql",
            "GetIncidentGrant",
            json!({ "id": "${grantId}" }),
            vec![],
        ),
        (
            "grants.graphql",
            "RevokeIncidentGrant",
            json!({ "id": "${grantId}", "reason": "incident resolved" }),
            vec![],
        ),
        (
            "grants.graphql",
            "ApproveIncidentGrant",
            json!({ "id": "${engineerGrantId}" }),
            vec![],
        ),
        (
            "grants.graphql",
            "DenyIncidentGrant",
            json!({ "id": "${engineerGrant2Id}", "reason": "not needed" }),
            vec![],
        ),
        (
            "keys.graphql",
            "IssueApiKey",
            json!({ "input": { "principalId": "${userId}", "name": "portal key", "expiresAt": future,
                "rateLimit": { "perMinute": 120, "burst": 10 }, "remainingUses": 100,
                "refill": { "amount": 100, "intervalSeconds": 3600 }, "metadata": { "ticket": "OPS-1" },
                "environment": "TEST" } }),
            vec![("keyId", "/issueApiKey/apiKey/id")],
        ),
        (
            "keys.graphql",
            "ListApiKeys",
            json!({ "filter": { "principalId": "${userId}", "state": "ACTIVE" }, "first": 10 }),
            vec![],
        ),
        (
            "keys.graphql",
            "GetApiKey",
            json!({ "id": "${keyId}" }),
            vec![],
        ),
        (
            "principals.graphql",
            "GetPrincipal",
            json!({ "id": "${userId}" }),
            vec![],
        ),
        (
            "keys.graphql",
            "SuspendApiKey",
            json!({ "id": "${keyId}", "reason": "suspicious traffic" }),
            vec![],
        ),
        (
            "keys.graphql",
            "ResumeApiKey",
            json!({ "id": "${keyId}" }),
            vec![],
        ),
        (
            "keys.graphql",
            "RotateApiKey",
            json!({ "id": "${keyId}", "gracePeriodSeconds": 3600 }),
            vec![("newKeyId", "/rotateApiKey/apiKey/id")],
        ),
        (
            "keys.graphql",
            "RevokeApiKey",
            json!({ "id": "${newKeyId}", "reason": "rotated out" }),
            vec![],
        ),
        (
            "remediation.graphql",
            "ListPlaybooks",
            json!({ "first": 50 }),
            vec![],
        ),
        (
            "remediation.graphql",
            "CreatePlaybook",
            json!({ "input": { "name": "portal-playbook", "dryRun": true,
                "trigger": { "kind": "security_event", "event_kinds": ["traffic_spike"], "min_severity": "high" },
                "actions": [{ "action": "tighten_rate_limit", "factor": 0.5, "duration_secs": 600 }] } }),
            vec![("playbookId", "/createPlaybook/id")],
        ),
        (
            "remediation.graphql",
            "UpdatePlaybook",
            json!({ "id": "${playbookId}", "input": { "enabled": false } }),
            vec![],
        ),
        (
            "remediation.graphql",
            "DeletePlaybook",
            json!({ "id": "${playbookId}" }),
            vec![],
        ),
        (
            "remediation.graphql",
            "ReportLeakedKey",
            json!({ "apiKeyId": "${keyId}" }),
            vec![("runId", "/reportLeakedKey/id")],
        ),
        (
            "remediation.graphql",
            "RemediationRuns",
            json!({ "filter": { "status": "PENDING" }, "first": 10 }),
            vec![],
        ),
        (
            "remediation.graphql",
            "RemediationRun",
            json!({ "id": "${runId}" }),
            vec![],
        ),
        (
            "ip_rules.graphql",
            "CreateIpRule",
            json!({ "input": { "cidr": "203.0.113.0/24", "action": "DENY", "routeId": "${routeId}",
                "expiresAt": future, "reason": "abuse report" } }),
            vec![("ruleId", "/createIpRule/id")],
        ),
        (
            "ip_rules.graphql",
            "ListIpRules",
            json!({ "filter": { "routeId": "${routeId}" } }),
            vec![],
        ),
        (
            "ip_rules.graphql",
            "DeleteIpRule",
            json!({ "id": "${ruleId}" }),
            vec![],
        ),
        (
            "secrets.graphql",
            "RegisterManagedSecret",
            json!({ "input": { "secretId": OPERATIONS_SECRET, "kind": "UPSTREAM_CREDENTIAL",
                "routeId": "${routeId}", "rotationIntervalDays": 30 } }),
            vec![],
        ),
        (
            "secrets.graphql",
            "ListManagedSecrets",
            json!({ "first": 10 }),
            vec![],
        ),
        (
            "secrets.graphql",
            "GetManagedSecret",
            json!({ "secretId": OPERATIONS_SECRET }),
            vec![],
        ),
        (
            "secrets.graphql",
            "UpdateManagedSecret",
            json!({ "secretId": OPERATIONS_SECRET, "input": { "rotationIntervalDays": 7 } }),
            vec![],
        ),
        (
            "secrets.graphql",
            "DeleteManagedSecret",
            json!({ "secretId": OPERATIONS_SECRET }),
            vec![],
        ),
        (
            "secrets.graphql",
            "Notifications",
            json!({ "filter": { "status": "PENDING" }, "first": 10 }),
            vec![],
        ),
        (
            "access.graphql",
            "SimulateAccess",
            json!({ "input": { "principalId": "${userId}", "method": "GET", "path": "/orders/42", "sourceIp": "10.1.2.3" } }),
            vec![("simulated", "/simulateAccess/allowed")],
        ),
        (
            "access.graphql",
            "ExplainPrincipal",
            json!({ "id": "${userId}" }),
            vec![],
        ),
        (
            "audit.graphql",
            "AuditEvents",
            json!({ "filter": { "kind": "MANAGEMENT", "principalId": "${adminId}" }, "first": 50 }),
            vec![],
        ),
        (
            "audit.graphql",
            "SecurityEvents",
            json!({ "filter": { "minSeverity": "MEDIUM" } }),
            vec![],
        ),
        ("audit.graphql", "VerifyAuditChain", json!({}), vec![]),
        (
            "roles.graphql",
            "UnbindRole",
            json!({ "id": "${bindingId}" }),
            vec![],
        ),
        (
            "principals.graphql",
            "RemoveGroupMember",
            json!({ "groupId": "${groupId}", "memberId": "${userId}" }),
            vec![],
        ),
        (
            "roles.graphql",
            "DeleteRole",
            json!({ "id": "${roleId}" }),
            vec![],
        ),
        (
            "routes.graphql",
            "DeleteRoute",
            json!({ "id": "${routeId}" }),
            vec![],
        ),
    ]
}

/// Two pending grants requested by a new on-call engineer (who may request grants only).
async fn engineer_grants(app: &TestApp) -> [uuid::Uuid; 2] {
    use crate::graphql_support::{
        await_permissions, bind, create_service_account, issue_key, ok, uuid,
    };
    let role = ok(
        app,
        app.admin_key(),
        "mutation { createRole(input: { name: \"on-call\", permissions: [
            { name: \"portcullis:grants:request\", pathGlob: \"/graphql\" }] }) { id } }",
        json!({}),
    )
    .await;
    let engineer = create_service_account(app, "on-call-engineer").await;
    bind(app, uuid(&role["createRole"]["id"]), engineer).await;
    let (_, key) = issue_key(app, engineer).await;
    await_permissions(app, &key, &["portcullis:grants:request"]).await;
    let request = || async {
        let requested = ok(
            app,
            &key,
            "mutation { requestIncidentGrant(input: { incidentId: \"INC-1234\",
                justification: \"orders API failing\", durationSeconds: 900,
                permissions: [{ name: \"orders:read\", pathGlob: \"/orders/**\" }] }) {
                incidentGrant { id } } }",
            json!({}),
        )
        .await;
        uuid(&requested["requestIncidentGrant"]["incidentGrant"]["id"])
    };
    [request().await, request().await]
}

#[tokio::test]
async fn every_portal_operation_runs_without_errors() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        let docs = documents();
        let defined: BTreeSet<(String, String)> = docs
            .iter()
            .flat_map(|(file, doc)| operation_names(doc).into_iter().map(move |op| (file.clone(), op)))
            .collect();
        app.dev
            .aws_clients
            .secrets
            .create_secret()
            .name(OPERATIONS_SECRET)
            .secret_string("Bearer portal-upstream-token")
            .send()
            .await
            .unwrap();
        let upstream = format!("http://{}", app.dev.demo_upstream_addr);
        let script = script(&upstream);
        let scripted: BTreeSet<(String, String)> = script
            .iter()
            .map(|(file, op, _, _)| ((*file).to_owned(), (*op).to_owned()))
            .collect();
        assert_eq!(defined, scripted, "every operation in tests/operations must be scripted");

        // Approving and denying need someone else's requests: an on-call engineer's, made
        // beforehand.
        let mut captured = BTreeMap::new();
        let [first, second] = engineer_grants(&app).await;
        captured.insert("engineerGrantId".to_owned(), json!(first));
        captured.insert("engineerGrant2Id".to_owned(), json!(second));
        for (file, operation, variables, captures) in script {
            let variables = substitute(&variables, &captured);
            let response = app
                .http
                .post(format!("{}/graphql", app.dev.api_url()))
                .bearer_auth(app.admin_key())
                .json(&json!({ "query": docs[file], "operationName": operation, "variables": variables }))
                .send()
                .await
                .unwrap();
            let body: Value = response.json().await.unwrap();
            assert!(body.get("errors").is_none(), "{file} {operation}: {body:#}");
            assert!(body["data"].is_object(), "{file} {operation}: {body:#}");
            for (name, pointer) in captures {
                let value = body["data"]
                    .pointer(pointer)
                    .unwrap_or_else(|| panic!("{file} {operation}: no {pointer} in {body}"))
                    .clone();
                captured.insert(name.to_owned(), value);
            }
        }
        // The group binding (CIDR 10/8) applies to the user after the role update.
        assert_eq!(captured["simulated"], true);
        // Without a credential the same operations are refused.
        let refused: Value = app
            .http
            .post(format!("{}/graphql", app.dev.api_url()))
            .json(&json!({ "query": docs["access.graphql"], "operationName": "ExplainPrincipal",
                "variables": { "id": captured["userId"] } }))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(code(&refused), "UNAUTHENTICATED", "{refused}");
        app.stop().await.drop_database().await;
    })
    .await;
}
