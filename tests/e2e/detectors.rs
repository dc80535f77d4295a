//! Detectors: audited requests become security events for the remediation engine.

use std::time::Duration;

use chrono::Utc;
use entity::security_event;
use reqwest::StatusCode;
use sea_orm::{ColumnTrait, EntityTrait, QueryFilter, Set};

use crate::support::{TestApp, eventually, for_each_backend};

async fn events_of_kind(app: &TestApp, kind: &str) -> Vec<security_event::Model> {
    security_event::Entity::find()
        .filter(security_event::Column::Kind.eq(kind))
        .all(&app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn twenty_failed_logins_from_one_ip_raise_exactly_one_burst_event() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        for _ in 0..19 {
            assert_eq!(
                app.proxy_get("/demo/x", Some("pk_test_nope"))
                    .await
                    .status(),
                StatusCode::UNAUTHORIZED
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            events_of_kind(&app, "failed_auth_burst").await.is_empty(),
            "fired below the threshold"
        );
        for _ in 0..10 {
            app.proxy_get("/demo/x", None).await;
        }
        let found = eventually(Duration::from_secs(2), || async {
            !events_of_kind(&app, "failed_auth_burst").await.is_empty()
        })
        .await;
        assert!(found.is_some(), "no failed_auth_burst event");
        let events = events_of_kind(&app, "failed_auth_burst").await;
        assert_eq!(events.len(), 1, "one event per window, not one per request");
        assert_eq!(events[0].client_ip.as_deref(), Some("127.0.0.1"));
        assert_eq!(events[0].status, security_event::SecurityEventStatus::New);
        app.stop().await.drop_database().await;
    })
    .await;
}

#[tokio::test]
async fn a_revoked_key_presented_again_is_reported() {
    let app = TestApp::spawn(migration::testing::TestDatabase::sqlite().await).await;
    let (key_id, key) = app.insert_key(app.admin_id().await).await;
    app.update_key(key_id, |row| {
        row.revoked_at = Set(Some(Utc::now()));
    })
    .await;
    let refused = eventually(Duration::from_secs(1), || async {
        app.proxy_get("/demo/x", Some(&key)).await.status() == StatusCode::UNAUTHORIZED
    })
    .await;
    assert!(refused.is_some());
    let found = eventually(Duration::from_secs(2), || async {
        !events_of_kind(&app, "revoked_key_used").await.is_empty()
    })
    .await;
    assert!(found.is_some());
    let event = &events_of_kind(&app, "revoked_key_used").await[0];
    assert_eq!(event.api_key_id, Some(key_id));
    app.stop().await;
}

/// A database that refuses writes for longer than SQLite's busy timeout (5 s) delays the
/// security event; it is stored once writes succeed again, not dropped after one failure.
#[tokio::test]
async fn a_security_event_outlives_a_database_refusing_writes() {
    let app = TestApp::spawn(migration::testing::TestDatabase::sqlite().await).await;
    let (key_id, key) = app.insert_key(app.admin_id().await).await;
    app.update_key(key_id, |row| {
        row.revoked_at = Set(Some(Utc::now()));
    })
    .await;
    // Another connection holds SQLite's write lock; reads (the key's lookup) still work.
    let lock = app.hold_sqlite_write_lock().await;
    assert_eq!(
        app.proxy_get("/demo/x", Some(&key)).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Past the first attempt's busy timeout.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(events_of_kind(&app, "revoked_key_used").await.is_empty());
    lock.rollback().await.unwrap();
    let found = eventually(Duration::from_secs(10), || async {
        !events_of_kind(&app, "revoked_key_used").await.is_empty()
    })
    .await;
    assert!(found.is_some(), "the event was lost to the failed write");
    let events = events_of_kind(&app, "revoked_key_used").await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].api_key_id, Some(key_id));
    app.stop().await;
}

/// One proxied request with `key`, from `client_ip` as a trusted proxy reports it.
async fn call_from(app: &TestApp, key: &str, client_ip: &str) -> StatusCode {
    app.http
        .get(format!("{}/demo/x", app.dev.proxy_url()))
        .bearer_auth(key)
        .header("x-forwarded-for", client_ip)
        .send()
        .await
        .unwrap()
        .status()
}

/// Waits until the audit trail holds a request of `key_id` from `client_ip`.
async fn until_stored(app: &TestApp, key_id: uuid::Uuid, client_ip: &str) {
    let stored = eventually(Duration::from_secs(3), || async {
        !entity::audit_event::Entity::find()
            .filter(entity::audit_event::Column::ApiKeyId.eq(key_id))
            .filter(entity::audit_event::Column::ClientIp.eq(client_ip))
            .all(&app.db)
            .await
            .unwrap()
            .is_empty()
    })
    .await;
    assert!(stored.is_some(), "no audit row from {client_ip}");
}

#[tokio::test]
async fn a_key_used_from_a_network_it_never_used_is_reported_once() {
    for_each_backend(|db| async move {
        // Loopback is a trusted proxy here, so `X-Forwarded-For` names the client.
        let app = TestApp::spawn_with(db, |config| {
            config.proxy.trusted_proxies = vec!["127.0.0.1/32".parse().unwrap()];
        })
        .await;
        let (key_id, key) = app.insert_key(app.admin_id().await).await;

        // Its first use ever is not news.
        let ok = eventually(Duration::from_secs(1), || async {
            call_from(&app, &key, "198.51.100.7").await == StatusCode::OK
        })
        .await;
        assert!(ok.is_some(), "the new key never worked");
        until_stored(&app, key_id, "198.51.100.7").await;
        // Another address in the same /24 is not either.
        assert_eq!(
            call_from(&app, &key, "198.51.100.200").await,
            StatusCode::OK
        );
        until_stored(&app, key_id, "198.51.100.200").await;
        // A /24 the key never used is, once.
        assert_eq!(call_from(&app, &key, "203.0.113.9").await, StatusCode::OK);
        let found = eventually(Duration::from_secs(3), || async {
            !events_of_kind(&app, "key_new_network").await.is_empty()
        })
        .await;
        assert!(found.is_some(), "no key_new_network event");
        assert_eq!(call_from(&app, &key, "203.0.113.77").await, StatusCode::OK);
        until_stored(&app, key_id, "203.0.113.77").await;
        tokio::time::sleep(Duration::from_millis(200)).await;

        let events = events_of_kind(&app, "key_new_network").await;
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].api_key_id, Some(key_id));
        assert_eq!(events[0].client_ip.as_deref(), Some("203.0.113.9"));
        assert_eq!(events[0].detail["network"], "203.0.113.0/24");
        assert_eq!(
            events[0].detail["known_networks"],
            serde_json::json!(["198.51.100.0/24"])
        );
        app.stop().await.drop_database().await;
    })
    .await;
}
