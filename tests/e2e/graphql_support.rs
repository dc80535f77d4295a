//! Helpers for the GraphQL end-to-end tests: requests as a given key, assertions on
//! `errors[].extensions.code`, and fixtures built through the API itself.

use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::TestApp;

/// The POST of `query` with `variables` to `/graphql`, as `key` (if any), for callers that
/// add headers of their own.
pub fn gql_request(
    app: &TestApp,
    key: Option<&str>,
    query: &str,
    variables: Value,
) -> reqwest::RequestBuilder {
    let request = app
        .http
        .post(format!("{}/graphql", app.dev.api_url()))
        .json(&json!({ "query": query, "variables": variables }));
    match key {
        Some(key) => request.bearer_auth(key),
        None => request,
    }
}

/// POSTs `query` with `variables` to `/graphql`, as `key` (if any); returns the raw body.
pub async fn gql_text(app: &TestApp, key: Option<&str>, query: &str, variables: Value) -> String {
    let response = gql_request(app, key, query, variables)
        .send()
        .await
        .unwrap();
    assert!(
        response.status().is_success(),
        "HTTP {} from /graphql",
        response.status()
    );
    response.text().await.unwrap()
}

/// Like [`gql_text`], parsed.
pub async fn gql(app: &TestApp, key: Option<&str>, query: &str, variables: Value) -> Value {
    serde_json::from_str(&gql_text(app, key, query, variables).await).unwrap()
}

/// Runs `query` and asserts it has no errors; returns `data`.
pub async fn ok(app: &TestApp, key: &str, query: &str, variables: Value) -> Value {
    let response = gql(app, Some(key), query, variables).await;
    assert!(
        response.get("errors").is_none(),
        "unexpected errors for {query}: {response:#}"
    );
    response["data"].clone()
}

/// `extensions.code` of the first error ("" when there is none).
pub fn code(response: &Value) -> String {
    response["errors"][0]["extensions"]["code"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// `extensions.field` of the first error.
pub fn field(response: &Value) -> String {
    response["errors"][0]["extensions"]["field"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

/// A UUID from a JSON string.
pub fn uuid(value: &Value) -> Uuid {
    value.as_str().unwrap().parse().unwrap()
}

/// Creates a service account through the API as the admin.
pub async fn create_service_account(app: &TestApp, name: &str) -> Uuid {
    let data = ok(
        app,
        app.admin_key(),
        "mutation($input: CreatePrincipalInput!) { createPrincipal(input: $input) { id } }",
        json!({ "input": { "kind": "SERVICE_ACCOUNT", "name": name } }),
    )
    .await;
    uuid(&data["createPrincipal"]["id"])
}

/// Issues a key for `principal_id` through the API as the admin; returns (key id, secret).
pub async fn issue_key(app: &TestApp, principal_id: Uuid) -> (Uuid, String) {
    let data = ok(
        app,
        app.admin_key(),
        "mutation($input: IssueApiKeyInput!) { issueApiKey(input: $input) { secret apiKey { id } } }",
        json!({ "input": { "principalId": principal_id, "name": "test", "environment": "TEST" } }),
    )
    .await;
    (
        uuid(&data["issueApiKey"]["apiKey"]["id"]),
        data["issueApiKey"]["secret"].as_str().unwrap().to_owned(),
    )
}

/// The id of the role named `name`.
pub async fn role_id(app: &TestApp, name: &str) -> Uuid {
    let data = ok(
        app,
        app.admin_key(),
        "{ roles(first: 100) { nodes { id name } } }",
        json!({}),
    )
    .await;
    let role = data["roles"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no role {name}"))
        .clone();
    uuid(&role["id"])
}

/// Binds role `role` to `principal_id` as the admin; returns the binding id.
pub async fn bind(app: &TestApp, role: Uuid, principal_id: Uuid) -> Uuid {
    let data = ok(
        app,
        app.admin_key(),
        "mutation($r: UUID!, $p: UUID!) { bindRole(roleId: $r, principalId: $p) { id } }",
        json!({ "r": role, "p": principal_id }),
    )
    .await;
    uuid(&data["bindRole"]["id"])
}

/// Waits until `key`'s caller holds every management permission in `permissions` (a role
/// created just now reaches the API's policy cache through the change feed).
pub async fn await_permissions(app: &TestApp, key: &str, permissions: &[&str]) {
    let held = crate::support::eventually(std::time::Duration::from_secs(5), || async {
        let me = gql(app, Some(key), "{ me { permissions } }", json!({})).await;
        let held = me["data"]["me"]["permissions"].as_array().cloned();
        permissions
            .iter()
            .all(|p| held.iter().flatten().any(|h| h == p))
    })
    .await;
    assert!(held.is_some(), "{permissions:?} never reached the API");
}

/// A new service account bound to the builtin role `role_name`, with a key.
pub async fn principal_with_role(app: &TestApp, name: &str, role_name: &str) -> (Uuid, String) {
    let principal = create_service_account(app, name).await;
    let role = role_id(app, role_name).await;
    bind(app, role, principal).await;
    let (_, key) = issue_key(app, principal).await;
    (principal, key)
}
