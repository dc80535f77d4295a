//! Incident-grant tokens at the proxy: time-boxed access carrying exactly the grant's
//! permissions, tagged on every request, revocable at once.

use std::time::Duration;

use chrono::Utc;
use entity::{incident_grant, policy_change::PolicyChangeOp, principal};
use proxy::keys::{PlainToken, TokenEnv, TokenKind};
use reqwest::StatusCode;
use sea_orm::{ActiveModelTrait, EntityTrait, Set};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{TestApp, for_each_backend};

async fn on_call_engineer(app: &TestApp) -> Uuid {
    let now = Utc::now();
    principal::ActiveModel::new_principal(
        Uuid::now_v7(),
        principal::PrincipalKind::User,
        "oncall",
        "On-call engineer",
        now,
    )
    .insert(&app.db)
    .await
    .unwrap()
    .id
}

/// An approved grant for `GET /demo/incident/**`, valid for an hour; returns (grant id, token).
async fn approved_grant(app: &TestApp, requester: Uuid) -> (Uuid, String) {
    insert_approved_grant(
        app,
        requester,
        None,
        json!([{ "name": "demo:incident", "methods": ["GET"], "path_glob": "/demo/incident/**" }]),
    )
    .await
}

/// An approved grant of role `role_id` and `permissions` (stored as given, unchecked), valid
/// for an hour, written to the database directly and reported on the change feed; returns
/// (grant id, token).
pub async fn insert_approved_grant(
    app: &TestApp,
    requester: Uuid,
    role_id: Option<Uuid>,
    permissions: Value,
) -> (Uuid, String) {
    let token = PlainToken::generate(TokenKind::IncidentGrant, TokenEnv::Test);
    let now = Utc::now();
    let grant = incident_grant::ActiveModel {
        id: Set(Uuid::now_v7()),
        incident_id: Set("INC-42".into()),
        requester_id: Set(requester),
        approver_id: Set(None),
        justification: Set("database on fire".into()),
        role_id: Set(role_id),
        permissions: Set(permissions),
        duration_seconds: Set(3_600),
        status: Set(incident_grant::IncidentGrantStatus::Approved),
        break_glass: Set(false),
        token_prefix: Set(Some(token.lookup_prefix().to_owned())),
        token_hash: Set(Some(app.grant_hasher.hash(token.as_parsed()).to_hex())),
        requested_at: Set(now),
        decided_at: Set(Some(now)),
        expires_at: Set(Some(now + chrono::Duration::hours(1))),
        revoked_at: Set(None),
        revoked_reason: Set(None),
        follow_up_review_id: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(&app.db)
    .await
    .unwrap();
    api::service::feed::record(
        &app.db,
        proxy::cache::kind::INCIDENT_GRANT,
        requester,
        PolicyChangeOp::Upsert,
    )
    .await
    .unwrap();
    (grant.id, token.expose_secret().to_owned())
}

/// Changes the grant row and reports it on the change feed (under its requester), as the API
/// would.
async fn change_grant(
    app: &TestApp,
    grant_id: Uuid,
    change: impl FnOnce(&mut incident_grant::ActiveModel),
) {
    let mut grant: incident_grant::ActiveModel = incident_grant::Entity::find_by_id(grant_id)
        .one(&app.db)
        .await
        .unwrap()
        .unwrap()
        .into();
    change(&mut grant);
    let grant = grant.update(&app.db).await.unwrap();
    api::service::feed::record(
        &app.db,
        proxy::cache::kind::INCIDENT_GRANT,
        grant.requester_id,
        PolicyChangeOp::Upsert,
    )
    .await
    .unwrap();
}

async fn accept_grants_on_demo_route(app: &TestApp) {
    crate::support::change_demo_route(app, |route| {
        route.auth_methods = Set(json!(["api_key", "grant"]));
    })
    .await;
}

#[tokio::test]
async fn a_grant_token_allows_exactly_its_permissions_is_tagged_and_dies_on_revocation() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        let engineer = on_call_engineer(&app).await;
        let (grant_id, token) = approved_grant(&app, engineer).await;

        // The route does not accept grants yet.
        assert_eq!(
            app.proxy_get("/demo/incident/logs", Some(&token))
                .await
                .status(),
            StatusCode::UNAUTHORIZED
        );
        accept_grants_on_demo_route(&app).await;
        let allowed = app
            .proxy_status_within(
                "/demo/incident/logs",
                &token,
                StatusCode::OK,
                Duration::from_secs(2),
            )
            .await;
        assert!(allowed.is_some());
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

        // Outside the grant's path, or another method: forbidden.
        assert_eq!(
            app.proxy_get("/demo/other", Some(&token)).await.status(),
            StatusCode::FORBIDDEN
        );
        let post = app
            .http
            .post(format!("{}/demo/incident/logs", app.dev.proxy_url()))
            .bearer_auth(&token)
            .send()
            .await
            .unwrap();
        assert_eq!(post.status(), StatusCode::FORBIDDEN);

        // Revoke: refused within a second.
        change_grant(&app, grant_id, |grant| {
            grant.status = Set(incident_grant::IncidentGrantStatus::Revoked);
            grant.revoked_at = Set(Some(Utc::now()));
        })
        .await;
        let refused = app
            .proxy_status_within(
                "/demo/incident/logs",
                &token,
                StatusCode::UNAUTHORIZED,
                Duration::from_secs(1),
            )
            .await;
        assert!(refused.is_some(), "revoked grant still works after 1 s");

        let db = app.stop().await;
        let tagged = entity::audit_event::Entity::find()
            .all(&db.conn)
            .await
            .unwrap();
        assert!(
            tagged
                .iter()
                .any(|e| e.grant_id == Some(grant_id) && e.status == Some(200))
        );
        assert!(
            tagged
                .iter()
                .any(|e| e.reason == "grant_not_active" && e.principal_id == Some(engineer))
        );
        db.drop_database().await;
    })
    .await;
}

#[tokio::test]
async fn a_key_request_that_only_a_grant_allows_is_tagged_and_its_denial_names_the_grant() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        let engineer = on_call_engineer(&app).await;
        let (key_id, key) = app.insert_key(engineer).await;
        let (grant_id, _token) = approved_grant(&app, engineer).await;

        // The engineer has no binding: the key reaches the incident path only through the
        // grant, so the request is incident access and carries the grant like a token would.
        let echo: Value = app
            .proxy_get("/demo/incident/logs", Some(&key))
            .await
            .json()
            .await
            .unwrap();
        assert_eq!(
            echo["headers"]["x-portcullis-grant-id"],
            grant_id.to_string()
        );
        assert_eq!(echo["headers"]["x-portcullis-key-id"], key_id.to_string());

        // The grant runs out while cached (the proxy reloads it with its new end, which is
        // still ahead): the 403's audit reason names the grant that would have allowed.
        change_grant(&app, grant_id, |grant| {
            grant.expires_at = Set(Some(Utc::now() + chrono::Duration::milliseconds(1_500)));
        })
        .await;
        let refused = app
            .proxy_status_within(
                "/demo/incident/logs",
                &key,
                StatusCode::FORBIDDEN,
                Duration::from_secs(4),
            )
            .await;
        assert!(refused.is_some(), "the expired grant still allows the key");

        let db = app.stop().await;
        let events = entity::audit_event::Entity::find()
            .all(&db.conn)
            .await
            .unwrap();
        let mine: Vec<_> = events
            .iter()
            .filter(|e| e.api_key_id == Some(key_id))
            .collect();
        assert!(
            mine.iter()
                .any(|e| e.status == Some(200) && e.grant_id == Some(grant_id)),
            "{mine:?}"
        );
        let expired =
            format!("grant_expired: incident grant {grant_id} would allow but has expired");
        assert!(
            mine.iter()
                .any(|e| e.status == Some(403) && e.reason == expired),
            "{mine:?}"
        );
        db.drop_database().await;
    })
    .await;
}
