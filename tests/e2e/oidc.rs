//! OIDC bearer tokens end to end: a wiremocked provider, a user linked by issuer + subject,
//! an IdP group mapped to a group principal whose binding allows `/demo/**`.

use std::time::Duration;

use chrono::Utc;
use entity::{
    permission,
    policy_change::PolicyChangeOp,
    principal::{self, PrincipalKind},
    role, role_binding, route,
};
use proxy::{
    cache::kind,
    oidc::{
        OidcConfig,
        testing::{FakeProvider, TestKey},
    },
};
use reqwest::StatusCode;
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, Set};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::{TestApp, eventually, for_each_backend};

const AUDIENCE: &str = "portcullis-e2e";

async fn insert_principal(
    app: &TestApp,
    kind: PrincipalKind,
    name: &str,
    oidc: (Option<String>, Option<String>, Option<String>),
) -> Uuid {
    let now = Utc::now();
    let (issuer, subject, group) = oidc;
    let row = principal::ActiveModel {
        id: Set(Uuid::now_v7()),
        kind: Set(kind),
        name: Set(name.into()),
        display_name: Set(name.into()),
        email: Set(None),
        oidc_issuer: Set(issuer),
        oidc_subject: Set(subject),
        oidc_group: Set(group),
        disabled: Set(false),
        metadata: Set(json!({})),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(&app.db)
    .await
    .unwrap();
    api::service::feed::record(&app.db, kind::PRINCIPAL, row.id, PolicyChangeOp::Upsert)
        .await
        .unwrap();
    row.id
}

/// A role allowing every method under `/demo/**`, bound to `group`.
async fn bind_demo_role(app: &TestApp, group: Uuid) {
    let now = Utc::now();
    let role = role::ActiveModel {
        id: Set(Uuid::now_v7()),
        name: Set("oidc-sre".into()),
        description: Set("SREs signed in through the IdP".into()),
        builtin: Set(false),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(&app.db)
    .await
    .unwrap();
    permission::ActiveModel {
        id: Set(Uuid::now_v7()),
        role_id: Set(role.id),
        name: Set("demo:call".into()),
        methods: Set(json!([])),
        path_glob: Set("/demo/**".into()),
        route_id: Set(None),
        created_at: Set(now),
    }
    .insert(&app.db)
    .await
    .unwrap();
    role_binding::ActiveModel {
        id: Set(Uuid::now_v7()),
        role_id: Set(role.id),
        principal_id: Set(group),
        conditions: Set(json!({})),
        expires_at: Set(None),
        reason: Set(Some("e2e".into())),
        created_by: Set(None),
        created_at: Set(now),
    }
    .insert(&app.db)
    .await
    .unwrap();
    api::service::feed::record(&app.db, kind::ROLE, role.id, PolicyChangeOp::Upsert)
        .await
        .unwrap();
    api::service::feed::record(&app.db, kind::ROLE_BINDING, group, PolicyChangeOp::Upsert)
        .await
        .unwrap();
}

async fn accept_oidc_on_the_demo_route(app: &TestApp) {
    let demo = route::Entity::find()
        .filter(route::Column::Name.eq(api::bootstrap::DEMO_ROUTE))
        .one(&app.db)
        .await
        .unwrap()
        .unwrap();
    let mut active: route::ActiveModel = demo.into();
    active.auth_methods = Set(json!(["api_key", "oidc"]));
    let demo = active.update(&app.db).await.unwrap();
    api::service::feed::record(&app.db, kind::ROUTE, demo.id, PolicyChangeOp::Upsert)
        .await
        .unwrap();
}

async fn get_with_token(app: &TestApp, token: &str) -> reqwest::Response {
    app.proxy_get("/demo/orders/7", Some(token)).await
}

#[tokio::test]
async fn oidc_tokens_authenticate_linked_users_and_idp_groups_grant_group_bindings() {
    for_each_backend(|db| async move {
        // Arrange: a provider, the stack configured for it, a user and an "sre" group.
        let key = TestKey::rsa("e2e-rsa");
        let provider = FakeProvider::start().await;
        provider.serve(&[&key]).await;
        let issuer = provider.issuer();
        let app = TestApp::spawn_with(db, |config| {
            config.proxy.oidc = Some(OidcConfig::new(issuer.clone(), vec![AUDIENCE.into()]));
        })
        .await;
        let user = insert_principal(
            &app,
            PrincipalKind::User,
            "alice",
            (Some(issuer.clone()), Some("alice-sub".into()), None),
        )
        .await;
        let group = insert_principal(
            &app,
            PrincipalKind::Group,
            "sre",
            (None, None, Some("sre".into())),
        )
        .await;
        bind_demo_role(&app, group).await;
        let sre_token = key.sign(&provider.claims("alice-sub", AUDIENCE, &["sre"]));

        // The demo route accepts API keys only: a JWT is refused, however valid.
        let response = get_with_token(&app, &sre_token).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);

        accept_oidc_on_the_demo_route(&app).await;
        let took = eventually(Duration::from_secs(2), || async {
            get_with_token(&app, &sre_token).await.status() == StatusCode::OK
        })
        .await;
        assert!(took.is_some(), "the OIDC route change never applied");

        // Act + assert: the IdP group grants the group's binding; identity reaches upstream.
        let response = get_with_token(&app, &sre_token).await;
        assert_eq!(response.status(), StatusCode::OK);
        let echo: Value = response.json().await.unwrap();
        assert_eq!(echo["headers"]["x-portcullis-principal"], user.to_string());
        assert!(echo["headers"].get("authorization").is_none());
        assert!(echo["headers"].get("x-portcullis-key-id").is_none());

        // The same user without the group claim holds no binding.
        let plain = key.sign(&provider.claims("alice-sub", AUDIENCE, &[]));
        assert_eq!(
            get_with_token(&app, &plain).await.status(),
            StatusCode::FORBIDDEN
        );
        // A group name no principal maps grants nothing either.
        let other = key.sign(&provider.claims("alice-sub", AUDIENCE, &["admins"]));
        assert_eq!(
            get_with_token(&app, &other).await.status(),
            StatusCode::FORBIDDEN
        );
        // A valid token for a subject nobody is linked to: 401, never auto-provisioned.
        let stranger = key.sign(&provider.claims("mallory-sub", AUDIENCE, &["sre"]));
        let response = get_with_token(&app, &stranger).await;
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()["www-authenticate"],
            "Bearer realm=\"portcullis\""
        );
        // A token for another audience: 401.
        let elsewhere = key.sign(&provider.claims("alice-sub", "another-api", &["sre"]));
        assert_eq!(
            get_with_token(&app, &elsewhere).await.status(),
            StatusCode::UNAUTHORIZED
        );

        let db = app.stop().await;
        let reasons: Vec<(Option<Uuid>, String)> = entity::audit_event::Entity::find()
            .all(&db.conn)
            .await
            .unwrap()
            .into_iter()
            .map(|e| (e.principal_id, e.reason))
            .collect();
        for reason in [
            "auth_method_not_accepted",
            "oidc_unknown_subject",
            "jwt_wrong_audience",
        ] {
            assert!(
                reasons.iter().any(|(_, r)| r == reason),
                "{reason} not in {reasons:?}"
            );
        }
        assert!(
            reasons
                .iter()
                .any(|(p, r)| *p == Some(user) && r == "no_bindings"),
            "{reasons:?}"
        );
        db.drop_database().await;
    })
    .await;
}
