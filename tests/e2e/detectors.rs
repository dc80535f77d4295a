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
