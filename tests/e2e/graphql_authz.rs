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

#[tokio::test]
async fn oidc_tokens_of_linked_users_authenticate_and_their_idp_groups_authorize() {
    use proxy::oidc::{
        OidcConfig,
        testing::{FakeProvider, TestKey},
    };
    for_each_backend(|db| async move {
        let key = TestKey::rsa("api-rsa");
        let provider = FakeProvider::start().await;
        provider.serve(&[&key]).await;
        let issuer = provider.issuer();
        let app = TestApp::spawn_with(db, |config| {
            config.proxy.oidc = Some(OidcConfig::new(issuer.clone(), vec!["portal".into()]));
        })
        .await;
        let admin = app.admin_key().to_owned();
        let user = ok(
            &app,
            &admin,
            "mutation($i: String!) { createPrincipal(input: { kind: USER, name: \"grace\", oidcIssuer: $i, oidcSubject: \"grace-sub\" }) { id } }",
            json!({ "i": issuer }),
        )
        .await;
        let user = uuid(&user["createPrincipal"]["id"]);
        let group = ok(
            &app,
            &admin,
            "mutation { createPrincipal(input: { kind: GROUP, name: \"auditors\", oidcGroup: \"auditors\" }) { id } }",
            json!({}),
        )
        .await;
        let group = uuid(&group["createPrincipal"]["id"]);
        let auditor = crate::graphql_support::role_id(&app, "portcullis-auditor").await;
        crate::graphql_support::bind(&app, auditor, group).await;

        let with_group = key.sign(&provider.claims("grace-sub", "portal", &["auditors"]));
        let me = eventually(Duration::from_secs(3), || async {
            let response = gql(&app, Some(&with_group), "{ me { principal { id } apiKeyId permissions } }", json!({})).await;
            response["data"]["me"]["permissions"].as_array().is_some_and(|p| p.len() == 4)
                && response["data"]["me"]["principal"]["id"] == user.to_string()
                && response["data"]["me"]["apiKeyId"].is_null()
        })
        .await;
        assert!(me.is_some(), "the IdP group did not grant the auditor role");
        ok(&app, &with_group, "{ auditEvents(first: 5) { nodes { id } } }", json!({})).await;

        // Without the group claim the same user is authenticated but holds nothing.
        let without = key.sign(&provider.claims("grace-sub", "portal", &[]));
        let response = gql(&app, Some(&without), "{ auditEvents { nodes { id } } }", json!({})).await;
        assert_eq!(code(&response), "FORBIDDEN", "{response}");

        // Unknown subjects and bad tokens are unauthenticated.
        let stranger = key.sign(&provider.claims("nobody", "portal", &["auditors"]));
        for token in [stranger.as_str(), "eyJhbGciOiJub25lIn0.e30.", "garbage"] {
            let response = gql(&app, Some(token), "{ me { permissions } }", json!({})).await;
            assert_eq!(code(&response), "UNAUTHENTICATED", "{response}");
        }
        app.stop().await.drop_database().await;
    })
    .await;
}

/// Behind a trusted load balancer, binding CIDR conditions are checked against the caller
/// its `X-Forwarded-For` names, not against the balancer's own address.
#[tokio::test]
async fn cidr_conditions_see_the_caller_behind_a_trusted_proxy() {
    let app = TestApp::spawn_with(migration::testing::TestDatabase::sqlite().await, |config| {
        config.api.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let admin = app.admin_key().to_owned();
    let reader = crate::graphql_support::create_service_account(&app, "office-reader").await;
    let (_, key) = crate::graphql_support::issue_key(&app, reader).await;
    let auditor = crate::graphql_support::role_id(&app, "portcullis-auditor").await;
    ok(
        &app,
        &admin,
        "mutation($r: UUID!, $p: UUID!) { bindRole(roleId: $r, principalId: $p, cidrs: [\"10.0.0.0/8\"]) { id } }",
        json!({ "r": auditor, "p": reader }),
    )
    .await;
    let query = |forwarded_for: &'static str| {
        let app = &app;
        let key = key.clone();
        async move {
            let query = "{ apiKeys(first: 1) { nodes { id } } }";
            let response: Value =
                crate::graphql_support::gql_request(app, Some(&key), query, json!({}))
                    .header("x-forwarded-for", forwarded_for)
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
            response
        }
    };
    let inside = eventually(Duration::from_secs(2), || async {
        query("10.1.2.3").await.get("errors").is_none()
    })
    .await;
    assert!(
        inside.is_some(),
        "a caller inside the condition was refused"
    );
    assert_eq!(code(&query("192.0.2.1").await), "FORBIDDEN");
    // The left-most entry is the client's own claim; the balancer's entry is what counts.
    assert_eq!(code(&query("10.9.9.9, 192.0.2.1").await), "FORBIDDEN");
    assert_eq!(code(&query("not an address").await), "BAD_USER_INPUT");
    app.stop().await;
}
