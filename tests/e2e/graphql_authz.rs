//! Who may call the management API: unauthenticated callers, and principals holding only
//! some management permissions, are refused with the right code; refusals are audited.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    graphql_support::{code, gql, ok, principal_with_role, uuid},
    support::{TestApp, eventually, for_each_backend},
};

/// One mutation per write area, with the permission it needs.
fn write_attempts(admin: uuid::Uuid) -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "portcullis:keys:write",
            "mutation($p: UUID!) { issueApiKey(input: { principalId: $p, name: \"x\" }) { secret } }",
            json!({ "p": admin }),
        ),
        (
            "portcullis:principals:write",
            "mutation { createPrincipal(input: { kind: USER, name: \"mallory\" }) { id } }",
            json!({}),
        ),
        (
            "portcullis:roles:write",
            "mutation { createRole(input: { name: \"r\", permissions: [] }) { id } }",
            json!({}),
        ),
        (
            "portcullis:roles:write",
            "mutation($p: UUID!) { bindRole(roleId: $p, principalId: $p) { id } }",
            json!({ "p": admin }),
        ),
        (
            "portcullis:routes:write",
            "mutation { createRoute(input: { name: \"r\", pathPrefix: \"/r\", upstreamUrl: \"http://127.0.0.1:1\" }) { id } }",
            json!({}),
        ),
        (
            "portcullis:ip_rules:write",
            "mutation { createIpRule(input: { cidr: \"10.0.0.0/8\", action: DENY, reason: \"x\" }) { id } }",
            json!({}),
        ),
    ]
}

#[tokio::test]
async fn callers_without_a_valid_credential_are_unauthenticated() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        let admin = app.admin_id().await;
        let bogus = proxy::keys::PlainToken::generate(
            proxy::keys::TokenKind::ApiKey,
            proxy::keys::TokenEnv::Test,
        );
        for key in [None, Some("not-a-key"), Some(bogus.expose_secret())] {
            for (query, variables) in [
                ("{ apiKeys { nodes { id } } }", json!({})),
                ("{ me { permissions } }", json!({})),
                (write_attempts(admin)[0].1, write_attempts(admin)[0].2.clone()),
            ] {
                let response = gql(&app, key, query, variables).await;
                assert_eq!(code(&response), "UNAUTHENTICATED", "{key:?} {query}: {response}");
            }
        }
        // Server facts need no credential.
        let response = gql(&app, None, "{ serverInfo { version } }", json!({})).await;
        assert!(response.get("errors").is_none(), "{response}");

        // The refused mutation is audited, without an actor.
        let events = ok(
            &app,
            app.admin_key(),
            "{ auditEvents(filter: { kind: MANAGEMENT, decision: DENY }) { nodes { path principalId reason } } }",
            json!({}),
        )
        .await;
        let nodes = events["auditEvents"]["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), 3);
        assert!(nodes.iter().all(|n| n["path"] == "issueApiKey" && n["principalId"].is_null()));
        assert!(nodes[0]["reason"].as_str().unwrap().starts_with("unauthenticated"));
        app.stop().await.drop_database().await;
    })
    .await;
}

#[tokio::test]
async fn an_auditor_reads_but_every_write_is_forbidden_naming_the_permission() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        let admin = app.admin_id().await;
        let (auditor, key) = principal_with_role(&app, "auditor", "portcullis-auditor").await;

        let me = ok(&app, &key, "{ me { principal { id name } apiKeyId permissions } }", json!({})).await;
        assert_eq!(me["me"]["principal"]["id"], auditor.to_string());
        assert_eq!(
            me["me"]["permissions"],
            json!([
                "portcullis:keys:read",
                "portcullis:principals:read",
                "portcullis:audit:read",
                "portcullis:reviews:read"
            ])
        );
        // Reads it holds.
        ok(&app, &key, "{ apiKeys { nodes { id prefix } } principals { nodes { id } } auditEvents(first: 5) { nodes { id } } verifyAuditChain { ok } }", json!({})).await;

        // Reads and writes it does not hold.
        let mut attempts = write_attempts(admin);
        attempts.push(("portcullis:roles:read", "{ roles { nodes { id } } }", json!({})));
        attempts.push(("portcullis:routes:read", "{ routes { nodes { id } } }", json!({})));
        attempts.push((
            "portcullis:simulate",
            "query($p: UUID!) { simulateAccess(input: { principalId: $p, method: \"GET\", path: \"/demo\" }) { allowed } }",
            json!({ "p": admin }),
        ));
        for (permission, query, variables) in &attempts {
            let response = gql(&app, Some(&key), query, variables.clone()).await;
            assert_eq!(code(&response), "FORBIDDEN", "{query}: {response}");
            assert_eq!(response["errors"][0]["extensions"]["permission"], *permission);
            assert!(
                response["errors"][0]["message"].as_str().unwrap().contains(permission),
                "{response}"
            );
        }

        // Every refused mutation is audited with the actor and the missing permission.
        let events = ok(
            &app,
            app.admin_key(),
            "query($p: UUID!) { auditEvents(first: 50, filter: { principalId: $p, kind: MANAGEMENT, decision: DENY }) { nodes { path reason } } }",
            json!({ "p": auditor }),
        )
        .await;
        let nodes = events["auditEvents"]["nodes"].as_array().unwrap();
        assert_eq!(nodes.len(), write_attempts(admin).len());
        assert!(nodes.iter().any(|n| n["path"] == "createRoute"
            && n["reason"].as_str().unwrap().contains("portcullis:routes:write")));
        app.stop().await.drop_database().await;
    })
    .await;
}

#[tokio::test]
async fn an_operator_manages_keys_only_and_loses_access_when_unbound() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        let (operator, key) = principal_with_role(&app, "operator", "portcullis-operator").await;
        let issued = ok(
            &app,
            &key,
            "mutation($p: UUID!) { issueApiKey(input: { principalId: $p, name: \"own\" }) { apiKey { id createdById } } }",
            json!({ "p": operator }),
        )
        .await;
        assert_eq!(issued["issueApiKey"]["apiKey"]["createdById"], operator.to_string());
        let response = gql(
            &app,
            Some(&key),
            "mutation { createRoute(input: { name: \"r\", pathPrefix: \"/r\", upstreamUrl: \"http://127.0.0.1:1\" }) { id } }",
            json!({}),
        )
        .await;
        assert_eq!(code(&response), "FORBIDDEN");

        let bindings = ok(
            &app,
            app.admin_key(),
            "query($p: UUID!) { roleBindings(filter: { principalId: $p }) { nodes { id role { name } } } }",
            json!({ "p": operator }),
        )
        .await;
        let binding = &bindings["roleBindings"]["nodes"][0];
        assert_eq!(binding["role"]["name"], "portcullis-operator");
        ok(
            &app,
            app.admin_key(),
            "mutation($id: UUID!) { unbindRole(id: $id) { id } }",
            json!({ "id": uuid(&binding["id"]) }),
        )
        .await;
        let refused = eventually(Duration::from_secs(2), || async {
            code(&gql(&app, Some(&key), "{ apiKeys { nodes { id } } }", json!({})).await)
                == "FORBIDDEN"
        })
        .await;
        assert!(refused.is_some(), "unbinding did not revoke management access");
        app.stop().await.drop_database().await;
    })
    .await;
}
