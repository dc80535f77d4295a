//! Incident grants through the management API, end to end: an engineer asks, another
//! principal approves, the one-time token opens exactly the grant's permissions at the proxy,
//! and revocation closes it within a second; break-glass opens at once with a follow-up
//! review; nothing a grant carries reaches the management API.

use std::time::Duration;

use chrono::{DateTime, Utc};
use entity::{access_review, access_review_item, audit_event, incident_grant, notification_outbox};
use migration::testing::TestDatabase;
use reqwest::StatusCode;
use sea_orm::{ActiveModelTrait, EntityTrait, QueryOrder, Set};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    graphql_support::{
        await_permissions, bind, code, create_service_account, field, gql, issue_key, ok, uuid,
    },
    support::{TestApp, change_demo_route, for_each_backend},
};

const REQUEST: &str = "mutation($input: RequestIncidentGrantInput!) {
    requestIncidentGrant(input: $input) {
        secret
        incidentGrant { id state requesterId approverId expiresAt tokenPrefix breakGlass
            followUpReviewId permissions { name methods pathGlob } roleId }
    } }";
const APPROVE: &str = "mutation($id: UUID!) { approveIncidentGrant(id: $id) {
    id state approverId decidedAt expiresAt requester { name } approver { name } } }";
const REVOKE: &str = "mutation($id: UUID!, $reason: String!) {
    revokeIncidentGrant(id: $id, reason: $reason) { id state revokedAt reason } }";
const DENY: &str = "mutation($id: UUID!, $reason: String!) {
    denyIncidentGrant(id: $id, reason: $reason) { id state reason approverId } }";
const LIST: &str = "query($filter: IncidentGrantFilter) {
    incidentGrants(filter: $filter, first: 50) { nodes { id state requesterId tokenPrefix } } }";

/// A role holding the given management permissions (any method on `/graphql`).
async fn management_role(app: &TestApp, name: &str, permissions: &[&str]) -> Uuid {
    let permissions: Vec<Value> = permissions
        .iter()
        .map(|p| json!({ "name": p, "pathGlob": "/graphql" }))
        .collect();
    let data = ok(
        app,
        app.admin_key(),
        "mutation($input: CreateRoleInput!) { createRole(input: $input) { id } }",
        json!({ "input": { "name": name, "permissions": permissions } }),
    )
    .await;
    uuid(&data["createRole"]["id"])
}

/// A new service account holding `permissions`, with a key: (principal, key).
async fn holder_of(app: &TestApp, name: &str, permissions: &[&str]) -> (Uuid, String) {
    let role = management_role(app, &format!("{name}-role"), permissions).await;
    let principal = create_service_account(app, name).await;
    bind(app, role, principal).await;
    let (_, key) = issue_key(app, principal).await;
    await_permissions(app, &key, permissions).await;
    (principal, key)
}

fn incident_logs_grant(break_glass: bool) -> Value {
    json!({ "input": {
        "incidentId": "INC-7",
        "justification": "checkout errors; need the incident logs",
        "durationSeconds": 600,
        "permissions": [{ "name": "demo:incident", "methods": ["GET"], "pathGlob": "/demo/incident/**" }],
        "breakGlass": break_glass,
        "environment": "TEST",
    } })
}

async fn accept_grants_on_demo_route(app: &TestApp) {
    change_demo_route(app, |route| {
        route.auth_methods = Set(json!(["api_key", "grant"]));
    })
    .await;
}

fn instant(value: &Value) -> DateTime<Utc> {
    value.as_str().unwrap().parse().unwrap()
}

#[tokio::test]
async fn an_approved_grant_opens_exactly_its_permissions_until_its_requester_revokes_it() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        accept_grants_on_demo_route(&app).await;
        let (engineer, engineer_key) =
            holder_of(&app, "oncall", &["portcullis:grants:request"]).await;
        let (approver, approver_key) = holder_of(
            &app,
            "lead",
            &[
                "portcullis:grants:request",
                "portcullis:grants:approve",
                "portcullis:principals:read",
            ],
        )
        .await;

        // Asked for: pending, the token revealed once and refused by the proxy until approved.
        let requested = ok(&app, &engineer_key, REQUEST, incident_logs_grant(false)).await;
        let requested = &requested["requestIncidentGrant"];
        let token = requested["secret"].as_str().unwrap().to_owned();
        let grant = &requested["incidentGrant"];
        let grant_id = uuid(&grant["id"]);
        assert!(token.starts_with("pg_test_"), "{token}");
        assert!(token.starts_with(grant["tokenPrefix"].as_str().unwrap()));
        assert_eq!(grant["state"], "PENDING");
        assert_eq!(grant["requesterId"], engineer.to_string());
        // Unapproved, the request lapses after PORTCULLIS_API__GRANTS__PENDING_SECS (4 h).
        let lapses = instant(&grant["expiresAt"]) - Utc::now();
        assert!(lapses > chrono::Duration::minutes(239) && lapses <= chrono::Duration::hours(4));
        assert_eq!(grant["approverId"], Value::Null);
        assert_eq!(
            app.proxy_get("/demo/incident/logs", Some(&token))
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );

        // The requester cannot approve (no permission); an approver cannot approve their own.
        let refused = gql(
            &app,
            Some(&engineer_key),
            APPROVE,
            json!({ "id": grant_id }),
        )
        .await;
        assert_eq!(code(&refused), "FORBIDDEN", "{refused}");
        let (_, own) = {
            let data = ok(&app, &approver_key, REQUEST, incident_logs_grant(false)).await;
            let own = uuid(&data["requestIncidentGrant"]["incidentGrant"]["id"]);
            (data, own)
        };
        let self_denial = gql(
            &app,
            Some(&approver_key),
            DENY,
            json!({ "id": own, "reason": "mine" }),
        )
        .await;
        assert_eq!(code(&self_denial), "FORBIDDEN", "{self_denial}");
        let self_approval = gql(&app, Some(&approver_key), APPROVE, json!({ "id": own })).await;
        assert_eq!(code(&self_approval), "FORBIDDEN", "{self_approval}");
        assert!(
            self_approval["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("its requester"),
            "{self_approval}"
        );

        // Approved: active for its duration from now, and the token opens its path only.
        let before = Utc::now();
        let approved = ok(&app, &approver_key, APPROVE, json!({ "id": grant_id })).await;
        let approved = &approved["approveIncidentGrant"];
        assert_eq!(approved["state"], "ACTIVE");
        assert_eq!(approved["approverId"], approver.to_string());
        assert_eq!(approved["requester"]["name"], "oncall");
        assert_eq!(approved["approver"]["name"], "lead");
        let expires = instant(&approved["expiresAt"]);
        assert!(expires >= before + chrono::Duration::seconds(600));
        assert!(expires <= Utc::now() + chrono::Duration::seconds(600));
        let opened = app
            .proxy_status_within(
                "/demo/incident/logs",
                &token,
                StatusCode::OK,
                Duration::from_secs(2),
            )
            .await;
        assert!(opened.is_some(), "the approved grant's token is refused");
        let echo: Value = app
            .proxy_get("/demo/incident/logs", Some(&token))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            echo["headers"]["x-portcullis-grant-id"],
            grant_id.to_string()
        );
        assert_eq!(
            echo["headers"]["x-portcullis-principal"],
            engineer.to_string()
        );
        assert_eq!(echo["headers"].get("authorization"), None);
        assert_eq!(
            app.proxy_get("/demo/other", Some(&token)).await.status(),
            StatusCode::FORBIDDEN
        );
        // Approving twice is a conflict; the token never opens the management API.
        let again = gql(
            &app,
            Some(&approver_key),
            APPROVE,
            json!({ "id": grant_id }),
        )
        .await;
        assert_eq!(code(&again), "CONFLICT", "{again}");
        let with_token = gql(&app, Some(&token), LIST, json!({})).await;
        assert_eq!(code(&with_token), "UNAUTHENTICATED", "{with_token}");

        // Requesters read their own grants only; approvers read all; the token is never shown.
        let mine = ok(&app, &engineer_key, LIST, json!({})).await;
        let mine = mine["incidentGrants"]["nodes"].as_array().unwrap().clone();
        assert_eq!(mine.len(), 1, "{mine:?}");
        assert_eq!(mine[0]["id"], grant_id.to_string());
        // Who the principals are takes portcullis:principals:read, as everywhere else.
        let names = gql(
            &app,
            Some(&engineer_key),
            "{ incidentGrants { nodes { id requester { name email } } } }",
            json!({}),
        )
        .await;
        assert_eq!(code(&names), "FORBIDDEN", "{names}");
        assert_eq!(
            names["errors"][0]["extensions"]["permission"],
            "portcullis:principals:read"
        );
        let theirs = gql(
            &app,
            Some(&engineer_key),
            LIST,
            json!({ "filter": { "requesterId": approver } }),
        )
        .await;
        assert_eq!(code(&theirs), "FORBIDDEN", "{theirs}");
        let other = gql(
            &app,
            Some(&engineer_key),
            "query($id: UUID!) { incidentGrant(id: $id) { id } }",
            json!({ "id": own }),
        )
        .await;
        assert_eq!(code(&other), "FORBIDDEN", "{other}");
        let all = ok(
            &app,
            &approver_key,
            LIST,
            json!({ "filter": { "state": "ACTIVE" } }),
        )
        .await;
        let all = all["incidentGrants"]["nodes"].as_array().unwrap().clone();
        assert_eq!(all.len(), 1, "{all:?}");
        let pending = ok(
            &app,
            &approver_key,
            LIST,
            json!({ "filter": { "state": "PENDING", "incidentId": "INC-7" } }),
        )
        .await;
        assert_eq!(pending["incidentGrants"]["nodes"][0]["id"], own.to_string());
        let listed = gql(&app, Some(&approver_key), LIST, json!({}))
            .await
            .to_string();
        assert!(
            !listed.contains(&token[8..]),
            "the token leaked into a listing"
        );

        // The requester ends it: refused by the proxy within a second.
        let revoked = ok(
            &app,
            &engineer_key,
            REVOKE,
            json!({ "id": grant_id, "reason": "incident resolved" }),
        )
        .await;
        assert_eq!(revoked["revokeIncidentGrant"]["state"], "REVOKED");
        assert_eq!(
            revoked["revokeIncidentGrant"]["reason"],
            "incident resolved"
        );
        let closed = app
            .proxy_status_within(
                "/demo/incident/logs",
                &token,
                StatusCode::UNAUTHORIZED,
                Duration::from_secs(1),
            )
            .await;
        assert!(closed.is_some(), "the revoked grant still works after 1 s");
        let twice = gql(
            &app,
            Some(&engineer_key),
            REVOKE,
            json!({ "id": grant_id, "reason": "again" }),
        )
        .await;
        assert_eq!(code(&twice), "CONFLICT", "{twice}");
        // Someone else's grant needs the approve permission; another approver denies it.
        let not_mine = gql(
            &app,
            Some(&engineer_key),
            REVOKE,
            json!({ "id": own, "reason": "mine now" }),
        )
        .await;
        assert_eq!(code(&not_mine), "FORBIDDEN", "{not_mine}");
        assert_eq!(
            not_mine["errors"][0]["extensions"]["permission"],
            "portcullis:grants:approve"
        );
        let denied = ok(
            &app,
            app.admin_key(),
            DENY,
            json!({ "id": own, "reason": "not needed" }),
        )
        .await;
        assert_eq!(denied["denyIncidentGrant"]["state"], "DENIED");
        assert_eq!(denied["denyIncidentGrant"]["reason"], "not needed");

        // Requests and approvals are announced (dev's topic), never with the token; the
        // mutations' audit records do not carry it either.
        let notifications = notification_outbox::Entity::find()
            .order_by_asc(notification_outbox::Column::Id)
            .all(&app.db)
            .await
            .unwrap();
        let kinds: Vec<&str> = notifications
            .iter()
            .map(|n| n.event_type.as_str())
            .filter(|k| k.starts_with("incident_grant"))
            .collect();
        assert_eq!(
            kinds,
            [
                "incident_grant_requested",
                "incident_grant_requested",
                "incident_grant_approved"
            ]
        );
        assert!(
            notifications
                .iter()
                .all(|n| !n.message.contains(&token[8..]))
        );
        let db = app.stop().await;
        let audit = audit_event::Entity::find().all(&db.conn).await.unwrap();
        let actions: Vec<&str> = audit.iter().filter_map(|e| e.path.as_deref()).collect();
        for mutation in [
            "requestIncidentGrant",
            "approveIncidentGrant",
            "revokeIncidentGrant",
            "denyIncidentGrant",
        ] {
            assert!(
                actions.contains(&mutation),
                "{mutation} not audited: {actions:?}"
            );
        }
        assert!(
            audit
                .iter()
                .all(|e| !e.detail.to_string().contains(&token[8..]))
        );
        db.drop_database().await;
    })
    .await;
}

#[tokio::test]
async fn break_glass_opens_at_once_with_a_follow_up_review_and_needs_its_own_permission() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        accept_grants_on_demo_route(&app).await;
        let (_, requester_key) = holder_of(&app, "oncall", &["portcullis:grants:request"]).await;
        let (glass, glass_key) = holder_of(
            &app,
            "sre",
            &["portcullis:grants:request", "portcullis:grants:break_glass"],
        )
        .await;

        let refused = gql(
            &app,
            Some(&requester_key),
            REQUEST,
            incident_logs_grant(true),
        )
        .await;
        assert_eq!(code(&refused), "FORBIDDEN", "{refused}");
        assert_eq!(
            refused["errors"][0]["extensions"]["permission"],
            "portcullis:grants:break_glass"
        );
        assert!(
            incident_grant::Entity::find()
                .all(&app.db)
                .await
                .unwrap()
                .is_empty()
        );

        // A lent role (no management permission) rather than ad-hoc permissions.
        let reader = ok(
            &app,
            app.admin_key(),
            "mutation($input: CreateRoleInput!) { createRole(input: $input) { id } }",
            json!({ "input": { "name": "demo-reader", "permissions": [
                { "name": "demo:read", "methods": ["GET"], "pathGlob": "/demo/**" }] } }),
        )
        .await;
        let reader = uuid(&reader["createRole"]["id"]);
        let mut input = incident_logs_grant(true);
        input["input"]["permissions"] = json!([]);
        input["input"]["roleId"] = json!(reader);
        let before = Utc::now();
        let opened = ok(&app, &glass_key, REQUEST, input).await;
        let opened = &opened["requestIncidentGrant"];
        let token = opened["secret"].as_str().unwrap().to_owned();
        let grant = &opened["incidentGrant"];
        assert_eq!(grant["state"], "ACTIVE");
        assert_eq!(grant["breakGlass"], true);
        assert_eq!(grant["approverId"], glass.to_string());
        assert_eq!(grant["roleId"], reader.to_string());
        let grant_id = uuid(&grant["id"]);
        let expires = instant(&grant["expiresAt"]);
        assert!(expires >= before + chrono::Duration::seconds(600));
        let works = app
            .proxy_status_within(
                "/demo/anything",
                &token,
                StatusCode::OK,
                Duration::from_secs(2),
            )
            .await;
        assert!(works.is_some(), "the break-glass token is refused");

        // The follow-up review: open, due three days after the grant ends, revoking if nobody
        // decides, with the grant as its item.
        let review_id = uuid(&grant["followUpReviewId"]);
        let review = access_review::Entity::find_by_id(review_id)
            .one(&app.db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(review.status, access_review::AccessReviewStatus::Open);
        assert_eq!(review.default_action, access_review::ReviewDecision::Revoke);
        let due = expires + chrono::Duration::days(3);
        assert!(
            (review.deadline - due).num_milliseconds().abs() < 1,
            "{review:?}"
        );
        let items = access_review_item::Entity::find()
            .all(&app.db)
            .await
            .unwrap();
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].review_id, review_id);
        assert_eq!(items[0].subject_id, grant_id);
        assert_eq!(items[0].principal_id, glass);

        let announced = notification_outbox::Entity::find()
            .all(&app.db)
            .await
            .unwrap()
            .into_iter()
            .find(|n| n.event_type == "incident_grant_break_glass")
            .expect("break-glass is announced");
        assert_eq!(announced.severity, "high");
        assert!(!announced.message.contains(&token[8..]));

        // The review closes undecided after the grant ran out: the default (revoke) leaves the
        // grant as it ended, expired, rather than rewriting its history as revoked.
        let mut row: incident_grant::ActiveModel = incident_grant::Entity::find_by_id(grant_id)
            .one(&app.db)
            .await
            .unwrap()
            .unwrap()
            .into();
        row.expires_at = Set(Some(Utc::now() - chrono::Duration::seconds(1)));
        row.update(&app.db).await.unwrap();
        api::remediation::reviews::apply_defaults(&app.db, review_id)
            .await
            .unwrap();
        let after = ok(
            &app,
            app.admin_key(),
            "query($id: UUID!) { incidentGrant(id: $id) { state revokedAt } }",
            json!({ "id": grant_id }),
        )
        .await;
        assert_eq!(
            after["incidentGrant"],
            json!({ "state": "EXPIRED", "revokedAt": null })
        );
        let review = access_review::Entity::find_by_id(review_id)
            .one(&app.db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(review.status, access_review::AccessReviewStatus::Closed);
        app.stop().await.drop_database().await;
    })
    .await;
}

#[tokio::test]
async fn grant_requests_are_validated_and_name_the_field() {
    let app = TestApp::spawn(TestDatabase::sqlite().await).await;
    let (_, key) = holder_of(&app, "oncall", &["portcullis:grants:request"]).await;
    let admin_role = crate::graphql_support::role_id(&app, "portcullis-admin").await;
    let unknown = Uuid::now_v7();
    let cases: Vec<(Value, &str, &str)> = vec![
        (
            json!({ "durationSeconds": 0 }),
            "BAD_USER_INPUT",
            "input.durationSeconds",
        ),
        (
            json!({ "durationSeconds": 4 * 3600 + 1 }),
            "BAD_USER_INPUT",
            "input.durationSeconds",
        ),
        (
            json!({ "justification": "  " }),
            "BAD_USER_INPUT",
            "input.justification",
        ),
        (
            json!({ "incidentId": "" }),
            "BAD_USER_INPUT",
            "input.incidentId",
        ),
        (
            json!({ "permissions": [] }),
            "BAD_USER_INPUT",
            "input.permissions",
        ),
        (
            json!({ "permissions": [{ "name": "portcullis:keys:write", "pathGlob": "/graphql" }] }),
            "BAD_USER_INPUT",
            "input.permissions.0.name",
        ),
        (
            json!({ "permissions": [{ "name": "demo:read", "pathGlob": "demo/*" }] }),
            "BAD_USER_INPUT",
            "input.permissions.0.pathGlob",
        ),
        (
            json!({ "permissions": [{ "name": "demo:read", "methods": ["get"], "pathGlob": "/demo" }] }),
            "BAD_USER_INPUT",
            "input.permissions.0.methods",
        ),
        (
            json!({ "permissions": [], "roleId": admin_role }),
            "BAD_USER_INPUT",
            "input.roleId",
        ),
        (
            json!({ "permissions": [], "roleId": unknown }),
            "NOT_FOUND",
            "",
        ),
    ];
    for (change, expected_code, expected_field) in cases {
        let mut input = incident_logs_grant(false);
        for (name, value) in change.as_object().unwrap() {
            input["input"][name] = value.clone();
        }
        let response = gql(&app, Some(&key), REQUEST, input).await;
        assert_eq!(code(&response), expected_code, "{change}: {response}");
        assert_eq!(field(&response), expected_field, "{change}: {response}");
    }
    assert!(
        incident_grant::Entity::find()
            .all(&app.db)
            .await
            .unwrap()
            .is_empty()
    );

    app.stop().await.drop_database().await;
}

#[tokio::test]
async fn even_a_grant_written_by_hand_never_opens_the_management_api() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        let (engineer, key) = holder_of(&app, "oncall", &["portcullis:grants:request"]).await;
        let admin_role = crate::graphql_support::role_id(&app, "portcullis-admin").await;
        // An active grant that lends management permissions, as no API call can write it.
        crate::grants::insert_approved_grant(
            &app,
            engineer,
            Some(admin_role),
            json!([{ "name": "portcullis:keys:read", "path_glob": "/graphql" }]),
        )
        .await;
        // A binding written after it: once the API holds that, it holds the grant too (the
        // feed is applied in order, and the engineer's entry reloads whole).
        let simulate = management_role(&app, "simulator", &["portcullis:simulate"]).await;
        bind(&app, simulate, engineer).await;
        await_permissions(&app, &key, &["portcullis:simulate"]).await;

        let keys = gql(&app, Some(&key), "{ apiKeys { nodes { id } } }", json!({})).await;
        assert_eq!(code(&keys), "FORBIDDEN", "{keys}");
        let me = ok(&app, &key, "{ me { permissions } }", json!({})).await;
        assert_eq!(
            me["me"]["permissions"],
            json!(["portcullis:simulate", "portcullis:grants:request"])
        );
        app.stop().await.drop_database().await;
    })
    .await;
}

#[tokio::test]
async fn a_request_lapses_unapproved_and_racing_decisions_cannot_both_land() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        let (_, engineer_key) = holder_of(&app, "oncall", &["portcullis:grants:request"]).await;
        let request = || async {
            let data = ok(&app, &engineer_key, REQUEST, incident_logs_grant(false)).await;
            uuid(&data["requestIncidentGrant"]["incidentGrant"]["id"])
        };

        // A request nobody decided in time lapses: it cannot be approved into access later.
        let old = request().await;
        let mut row: incident_grant::ActiveModel = incident_grant::Entity::find_by_id(old)
            .one(&app.db)
            .await
            .unwrap()
            .unwrap()
            .into();
        row.expires_at = Set(Some(Utc::now() - chrono::Duration::seconds(1)));
        row.update(&app.db).await.unwrap();
        let late = gql(&app, Some(app.admin_key()), APPROVE, json!({ "id": old })).await;
        assert_eq!(code(&late), "CONFLICT", "{late}");
        assert!(late.to_string().contains("this one is expired"), "{late}");
        let expired = ok(
            &app,
            app.admin_key(),
            LIST,
            json!({ "filter": { "state": "EXPIRED" } }),
        )
        .await;
        assert_eq!(expired["incidentGrants"]["nodes"][0]["id"], old.to_string());
        let pending = ok(
            &app,
            app.admin_key(),
            LIST,
            json!({ "filter": { "state": "PENDING" } }),
        )
        .await;
        assert_eq!(pending["incidentGrants"]["nodes"], json!([]));

        // Approve and deny sent together: exactly one lands, and the row is what it says.
        for _ in 0..6 {
            let id = request().await;
            let (approved, denied) = tokio::join!(
                gql(&app, Some(app.admin_key()), APPROVE, json!({ "id": id })),
                gql(
                    &app,
                    Some(app.admin_key()),
                    DENY,
                    json!({ "id": id, "reason": "no" })
                ),
            );
            let codes = [code(&approved), code(&denied)];
            assert!(
                codes == ["", "CONFLICT"] || codes == ["CONFLICT", ""],
                "{approved} {denied}"
            );
            let row = incident_grant::Entity::find_by_id(id)
                .one(&app.db)
                .await
                .unwrap()
                .unwrap();
            let want = if codes[0].is_empty() {
                incident_grant::IncidentGrantStatus::Approved
            } else {
                incident_grant::IncidentGrantStatus::Denied
            };
            assert_eq!(row.status, want, "{row:?}");
            assert_eq!(row.revoked_reason.is_some(), codes[1].is_empty(), "{row:?}");
        }
        app.stop().await.drop_database().await;
    })
    .await;
}

#[tokio::test]
async fn remediation_revokes_open_grants_and_pending_requests_but_not_ended_ones() {
    let app = TestApp::spawn(TestDatabase::sqlite().await).await;
    accept_grants_on_demo_route(&app).await;
    let (engineer, key) = holder_of(&app, "oncall", &["portcullis:grants:request"]).await;
    let request = || async {
        let data = ok(&app, &key, REQUEST, incident_logs_grant(false)).await;
        let requested = &data["requestIncidentGrant"];
        (
            uuid(&requested["incidentGrant"]["id"]),
            requested["secret"].as_str().unwrap().to_owned(),
        )
    };
    let (active, token) = request().await;
    ok(&app, app.admin_key(), APPROVE, json!({ "id": active })).await;
    let (pending, _) = request().await;
    let (ended, _) = request().await;
    ok(&app, app.admin_key(), APPROVE, json!({ "id": ended })).await;
    let mut row: incident_grant::ActiveModel = incident_grant::Entity::find_by_id(ended)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap()
        .into();
    row.expires_at = Set(Some(Utc::now() - chrono::Duration::seconds(1)));
    row.update(&app.db).await.unwrap();
    let works = app
        .proxy_status_within(
            "/demo/incident/x",
            &token,
            StatusCode::OK,
            Duration::from_secs(2),
        )
        .await;
    assert!(works.is_some());

    let txn = sea_orm::TransactionTrait::begin(&app.db).await.unwrap();
    let (skipped, output) = api::remediation::actions::apply(
        &txn,
        Uuid::now_v7(),
        0,
        &api::remediation::actions::StepAction::RevokeGrants {
            principal_id: engineer,
            reason: "locked out".into(),
        },
    )
    .await
    .unwrap();
    txn.commit().await.unwrap();
    assert!(!skipped);
    let mut revoked: Vec<Uuid> = serde_json::from_value(output["revoked"].clone()).unwrap();
    revoked.sort();
    assert_eq!(revoked, [active, pending]);
    let states = ok(
        &app,
        app.admin_key(),
        LIST,
        json!({ "filter": { "requesterId": engineer } }),
    )
    .await;
    let state_of = |id: Uuid| {
        states["incidentGrants"]["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|g| g["id"] == id.to_string())
            .unwrap()["state"]
            .clone()
    };
    assert_eq!(state_of(active), "REVOKED");
    assert_eq!(state_of(pending), "REVOKED");
    assert_eq!(state_of(ended), "EXPIRED");
    let closed = app
        .proxy_status_within(
            "/demo/incident/x",
            &token,
            StatusCode::UNAUTHORIZED,
            Duration::from_secs(1),
        )
        .await;
    assert!(closed.is_some(), "the revoked grant still works after 1 s");
    // Nobody can approve the revoked request into access afterwards.
    let late = gql(
        &app,
        Some(app.admin_key()),
        APPROVE,
        json!({ "id": pending }),
    )
    .await;
    assert_eq!(code(&late), "CONFLICT", "{late}");
    app.stop().await.drop_database().await;
}
