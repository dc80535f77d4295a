//! The proxy's pipeline end to end: authentication, authorization, revocation, quotas,
//! normalisation and upstream failures, against a real upstream.

use std::time::Duration;

use chrono::Utc;
use entity::{api_key, principal};
use reqwest::StatusCode;
use sea_orm::{ActiveModelTrait, EntityTrait, Set};
use serde_json::Value;

use crate::support::{TestApp, eventually, for_each_backend, raw_http};

async fn error_code(response: reqwest::Response) -> (StatusCode, String) {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    (
        status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

#[tokio::test]
async fn an_authorised_request_reaches_the_upstream_with_identity_and_without_credentials() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        let admin = app.admin_id().await;
        let response = app
            .http
            .get(format!(
                "{}/demo/./orders//42/../7?q=%2Fx",
                app.dev.proxy_url()
            ))
            .bearer_auth(app.admin_key())
            .header("x-portcullis-principal", "spoofed")
            .header("x-forwarded-for", "6.6.6.6")
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        let echo: Value = response.json().await.unwrap();
        assert_eq!(
            echo["path"], "/orders/7",
            "strip-prefix of the normalised path"
        );
        assert_eq!(echo["query"], "q=%2Fx");
        assert_eq!(echo["headers"]["x-portcullis-principal"], admin.to_string());
        assert_eq!(echo["headers"]["x-forwarded-for"], "127.0.0.1");
        assert!(echo["headers"].get("authorization").is_none());
        app.stop().await.drop_database().await;
    })
    .await;
}

#[tokio::test]
async fn every_authentication_failure_looks_the_same_to_the_client() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        let admin = app.admin_id().await;
        let unknown = proxy::keys::PlainToken::generate(
            proxy::keys::TokenKind::ApiKey,
            proxy::keys::TokenEnv::Test,
        );
        let mut typo = app.admin_key().to_owned();
        typo.pop();
        typo.push(if app.admin_key().ends_with('a') {
            'b'
        } else {
            'a'
        });
        let (suspended_id, suspended) = app.insert_key(admin).await;
        let (expired_id, expired) = app.insert_key(admin).await;
        for (id, change) in [(suspended_id, "suspend"), (expired_id, "expire")] {
            app.update_key(id, |key| {
                if change == "suspend" {
                    key.suspended_at = Set(Some(Utc::now()));
                } else {
                    key.expires_at = Set(Some(Utc::now() - chrono::Duration::seconds(1)));
                }
            })
            .await;
        }
        tokio::time::sleep(Duration::from_millis(400)).await;

        let mut bodies = Vec::new();
        for key in [
            None,
            Some(unknown.expose_secret()),
            Some(typo.as_str()),
            Some(suspended.as_str()),
            Some(expired.as_str()),
        ] {
            let response = app.proxy_get("/demo/x", key).await;
            assert_eq!(response.status(), StatusCode::UNAUTHORIZED, "{key:?}");
            assert_eq!(
                response.headers()["www-authenticate"],
                "Bearer realm=\"portcullis\""
            );
            let mut body: Value = response.json().await.unwrap();
            body["error"]["request_id"] = Value::Null;
            bodies.push(body);
        }
        assert!(bodies.windows(2).all(|w| w[0] == w[1]), "{bodies:?}");

        // ...while the audit trail records each precise reason.
        let db = app.stop().await;
        let reasons: Vec<String> = entity::audit_event::Entity::find()
            .all(&db.conn)
            .await
            .unwrap()
            .into_iter()
            .map(|e| e.reason)
            .collect();
        for reason in [
            "missing_credential",
            "unknown_key",
            "malformed_key",
            "key_suspended",
            "key_expired",
        ] {
            assert!(
                reasons.iter().any(|r| r == reason),
                "{reason} not in {reasons:?}"
            );
        }
        db.drop_database().await;
    })
    .await;
}

#[tokio::test]
async fn a_revoked_key_is_refused_within_one_second() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        let (key_id, key) = app.insert_key(app.admin_id().await).await;
        assert_eq!(
            app.proxy_get("/demo/x", Some(&key)).await.status(),
            StatusCode::OK
        );

        app.update_key(key_id, |row| {
            row.revoked_at = Set(Some(Utc::now()));
            row.revoked_reason = Set(Some("test".into()));
        })
        .await;

        let took = app
            .proxy_status_within(
                "/demo/x",
                &key,
                StatusCode::UNAUTHORIZED,
                Duration::from_secs(1),
            )
            .await;
        assert!(took.is_some(), "revoked key still accepted after 1 s");
        // The other key is unaffected.
        assert_eq!(
            app.proxy_get("/demo/x", Some(app.admin_key()))
                .await
                .status(),
            StatusCode::OK
        );
        app.stop().await.drop_database().await;
    })
    .await;
}

/// A change the feed never announced (its transaction outlived the feed's 10 s gap watch,
/// say) still takes effect once the cache reloads, here after 1 s.
#[tokio::test]
async fn changes_the_feed_missed_apply_at_the_next_reload() {
    use entity::ip_rule::{self, IpRuleAction, IpRuleSource};
    for_each_backend(|db| async move {
        let app = TestApp::spawn_with(db, |config| config.proxy.policy_reload_secs = 1).await;
        let (key_id, key) = app.insert_key(app.admin_id().await).await;
        let status = || async { app.proxy_get("/demo/x", Some(&key)).await.status() };
        assert_eq!(status().await, StatusCode::OK);

        // A global deny rule and, later, its removal, both without a feed row.
        let rule = ip_rule::ActiveModel {
            id: Set(uuid::Uuid::now_v7()),
            route_id: Set(None),
            cidr: Set("127.0.0.0/8".into()),
            action: Set(IpRuleAction::Deny),
            expires_at: Set(None),
            reason: Set("written behind the feed's back".into()),
            source: Set(IpRuleSource::Manual),
            created_by: Set(None),
            created_at: Set(Utc::now()),
        }
        .insert(&app.db)
        .await
        .unwrap();
        let denied = eventually(Duration::from_secs(5), || async {
            status().await == StatusCode::FORBIDDEN
        })
        .await;
        assert!(denied.is_some(), "the unannounced deny rule never applied");
        ip_rule::Entity::delete_by_id(rule.id)
            .exec(&app.db)
            .await
            .unwrap();
        let allowed = eventually(Duration::from_secs(5), || async {
            status().await == StatusCode::OK
        })
        .await;
        assert!(allowed.is_some(), "the snapshot was reloaded only once");

        // A revocation without a feed row: the cached key is reloaded too.
        let mut row: api_key::ActiveModel = api_key::Entity::find_by_id(key_id)
            .one(&app.db)
            .await
            .unwrap()
            .unwrap()
            .into();
        row.revoked_at = Set(Some(Utc::now()));
        row.update(&app.db).await.unwrap();
        let refused = eventually(Duration::from_secs(5), || async {
            status().await == StatusCode::UNAUTHORIZED
        })
        .await;
        assert!(
            refused.is_some(),
            "the unannounced revocation never applied"
        );
        app.stop().await.drop_database().await;
    })
    .await;
}

#[tokio::test]
async fn a_principal_without_bindings_is_forbidden() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        let now = Utc::now();
        let nobody = principal::ActiveModel::new_principal(
            uuid::Uuid::now_v7(),
            principal::PrincipalKind::ServiceAccount,
            "nobody",
            "Nobody",
            now,
        )
        .insert(&app.db)
        .await
        .unwrap();
        let (_, key) = app.insert_key(nobody.id).await;
        let (status, code) = error_code(app.proxy_get("/demo/x", Some(&key)).await).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::FORBIDDEN, "forbidden")
        );
        let db = app.stop().await;
        let denied = entity::audit_event::Entity::find()
            .all(&db.conn)
            .await
            .unwrap();
        assert!(
            denied
                .iter()
                .any(|e| e.principal_id == Some(nobody.id) && e.reason == "no_bindings"),
            "{denied:?}"
        );
        db.drop_database().await;
    })
    .await;
}

#[tokio::test]
async fn a_quota_limited_key_stops_at_zero_with_429() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        let (key_id, key) = app.insert_key(app.admin_id().await).await;
        app.update_key(key_id, |row| {
            row.remaining_uses = Set(Some(2));
        })
        .await;
        tokio::time::sleep(Duration::from_millis(300)).await;

        assert_eq!(
            app.proxy_get("/demo/1", Some(&key)).await.status(),
            StatusCode::OK
        );
        assert_eq!(
            app.proxy_get("/demo/2", Some(&key)).await.status(),
            StatusCode::OK
        );
        let refused = app.proxy_get("/demo/3", Some(&key)).await;
        // The rate limit was passed (and spent) before the quota refused it.
        assert!(refused.headers().contains_key("ratelimit-remaining"));
        let (status, code) = error_code(refused).await;
        assert_eq!(
            (status, code.as_str()),
            (StatusCode::TOO_MANY_REQUESTS, "quota_exhausted")
        );
        let left = api_key::Entity::find_by_id(key_id)
            .one(&app.db)
            .await
            .unwrap()
            .unwrap()
            .remaining_uses;
        assert_eq!(left, Some(0));
        app.stop().await.drop_database().await;
    })
    .await;
}

/// Both keys of a rotation work during its grace period; they spend one budget, not two.
#[tokio::test]
async fn a_rotated_key_and_its_successor_share_one_quota_and_one_rate_budget() {
    use crate::graphql_support::ok;
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        let admin = app.admin_key().to_owned();
        let rotate = |key_id: uuid::Uuid| {
            let admin = admin.clone();
            let app = &app;
            async move {
                let rotated = ok(
                    app,
                    &admin,
                    "mutation($id: UUID!) { rotateApiKey(id: $id, gracePeriodSeconds: 3600) { secret apiKey { id } } }",
                    serde_json::json!({ "id": key_id }),
                )
                .await;
                let issued = &rotated["rotateApiKey"];
                (
                    issued["secret"].as_str().unwrap().to_owned(),
                    issued["apiKey"]["id"].as_str().unwrap().parse::<uuid::Uuid>().unwrap(),
                )
            }
        };
        let code = |response| async { error_code(response).await };

        // Three uses left, then a rotation: three uses between the two keys.
        let (quota_id, old) = app.insert_key(app.admin_id().await).await;
        app.update_key(quota_id, |row| row.remaining_uses = Set(Some(3)))
            .await;
        let (new, _) = rotate(quota_id).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        for key in [&old, &new, &old] {
            assert_eq!(app.proxy_get("/demo/q", Some(key)).await.status(), StatusCode::OK);
        }
        for key in [&new, &old] {
            let (status, code) = code(app.proxy_get("/demo/q", Some(key)).await).await;
            assert_eq!((status, code.as_str()), (StatusCode::TOO_MANY_REQUESTS, "quota_exhausted"));
        }

        // The successor rotated in turn: the first key, still in its grace period, spends the
        // newest key's budget, not a copy of the second's frozen at the second rotation.
        let (chain_id, first) = app.insert_key(app.admin_id().await).await;
        app.update_key(chain_id, |row| row.remaining_uses = Set(Some(4)))
            .await;
        let (second, second_id) = rotate(chain_id).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(app.proxy_get("/demo/c", Some(&first)).await.status(), StatusCode::OK);
        let (third, _) = rotate(second_id).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        for key in [&first, &third, &second] {
            assert_eq!(app.proxy_get("/demo/c", Some(key)).await.status(), StatusCode::OK);
        }
        for key in [&first, &second, &third] {
            let (status, code) = code(app.proxy_get("/demo/c", Some(key)).await).await;
            assert_eq!((status, code.as_str()), (StatusCode::TOO_MANY_REQUESTS, "quota_exhausted"));
        }

        // A burst of two, then a rotation: the successor finds the bucket its predecessor emptied.
        let (limited_id, old) = app.insert_key(app.admin_id().await).await;
        app.update_key(limited_id, |row| {
            row.rate_limit_per_minute = Set(Some(1));
            row.rate_limit_burst = Set(Some(2));
        })
        .await;
        let (new, _) = rotate(limited_id).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        for _ in 0..2 {
            assert_eq!(app.proxy_get("/demo/r", Some(&old)).await.status(), StatusCode::OK);
        }
        let (status, code) = code(app.proxy_get("/demo/r", Some(&new)).await).await;
        assert_eq!((status, code.as_str()), (StatusCode::TOO_MANY_REQUESTS, "rate_limited"));
        app.stop().await.drop_database().await;
    })
    .await;
}

#[tokio::test]
async fn unnormalisable_targets_and_unknown_routes_are_refused() {
    let app = TestApp::spawn(migration::testing::TestDatabase::sqlite().await).await;
    let key = app.admin_key().to_owned();
    for (target, status, code) in [
        ("/demo/a%2Fb", StatusCode::BAD_REQUEST, "bad_request_target"),
        ("/demo/a%00", StatusCode::BAD_REQUEST, "bad_request_target"),
        (
            "/demo/%C0%AF",
            StatusCode::BAD_REQUEST,
            "bad_request_target",
        ),
        (
            "/demo/../../etc",
            StatusCode::BAD_REQUEST,
            "bad_request_target",
        ),
        ("/demo/..", StatusCode::NOT_FOUND, "no_route"),
        ("/nothing-here", StatusCode::NOT_FOUND, "no_route"),
    ] {
        let request = format!(
            "GET {target} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {key}\r\nConnection: close\r\n\r\n"
        );
        let (got_status, body) = raw_http(app.dev.proxy_addr, &request).await;
        assert_eq!(got_status, status.as_u16(), "{target}: {body}");
        assert!(
            body.contains(&format!("\"code\":\"{code}\"")),
            "{target}: {body}"
        );
    }
    app.stop().await;
}

#[tokio::test]
async fn an_unreachable_upstream_is_a_502_with_a_request_id() {
    let app = TestApp::spawn(migration::testing::TestDatabase::sqlite().await).await;
    // Point the demo route at a port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    crate::support::change_demo_route(&app, |route| {
        route.upstream_url = Set(format!("http://{closed}"));
    })
    .await;
    let took = eventually(Duration::from_secs(2), || async {
        app.proxy_get("/demo/x", Some(app.admin_key()))
            .await
            .status()
            == StatusCode::BAD_GATEWAY
    })
    .await;
    assert!(took.is_some());
    let response = app.proxy_get("/demo/x", Some(app.admin_key())).await;
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "upstream_unavailable");
    assert_eq!(body["error"]["request_id"], request_id.as_str());
    app.stop().await;
}

#[tokio::test]
async fn on_postgres_a_revocation_applies_through_listen_notify_without_waiting_for_a_poll() {
    let Some(db) = migration::testing::TestDatabase::postgres().await else {
        return;
    };
    // Polling once a minute: only NOTIFY can make the revocation visible within a second.
    let app = TestApp::spawn_with(db, |config| config.proxy.policy_poll_interval_ms = 60_000).await;
    let (key_id, key) = app.insert_key(app.admin_id().await).await;
    // The new key is unknown to the cache until first use, so this works without the feed.
    assert_eq!(
        app.proxy_get("/demo/x", Some(&key)).await.status(),
        StatusCode::OK
    );
    app.update_key(key_id, |row| {
        row.revoked_at = Set(Some(Utc::now()));
    })
    .await;
    let took = app
        .proxy_status_within(
            "/demo/x",
            &key,
            StatusCode::UNAUTHORIZED,
            Duration::from_secs(1),
        )
        .await;
    assert!(
        took.is_some(),
        "revocation not applied within 1 s with polling off: LISTEN/NOTIFY is not working"
    );
    app.stop().await.drop_database().await;
}
