//! The audit trail: one event per request, flushed on shutdown, tamper-evident.

use entity::audit_event;
use proxy::audit::{GENESIS, verify_rows};
use sea_orm::{ActiveModelTrait, EntityTrait, ModelTrait, QueryOrder, Set};

use crate::support::{TestApp, for_each_backend};

#[tokio::test]
async fn every_request_is_audited_and_edits_or_deletions_break_the_chain() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        for i in 0..25 {
            let key = if i % 5 == 0 {
                None
            } else {
                Some(app.admin_key().to_owned())
            };
            app.proxy_get(&format!("/demo/{i}"), key.as_deref()).await;
        }
        // Shutdown must flush whatever is still queued.
        let db = app.stop().await;
        let rows = audit_event::Entity::find()
            .order_by_asc(audit_event::Column::Id)
            .all(&db.conn)
            .await
            .unwrap();
        assert_eq!(rows.len(), 25);
        assert_eq!(verify_rows(GENESIS, &rows), Ok(25));
        assert_eq!(
            rows.iter()
                .filter(|r| r.decision == Some(audit_event::AuditDecision::Deny))
                .count(),
            5
        );

        // Per-permission usage, counted with the batches: 20 allowed uses of `demo:call` by the key.
        let usage = entity::usage_counter::Entity::find()
            .all(&db.conn)
            .await
            .unwrap();
        assert_eq!(usage.len(), 1, "{usage:?}");
        let allowed = rows
            .iter()
            .find(|r| r.decision == Some(audit_event::AuditDecision::Allow))
            .unwrap();
        assert_eq!(usage[0].request_count, 20);
        assert_eq!(usage[0].api_key_id, allowed.api_key_id);
        let permission = entity::permission::Entity::find_by_id(usage[0].permission_id.unwrap())
            .one(&db.conn)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(permission.name, "demo:call");

        // Edit one row: detected at that row.
        let victim = rows[10].clone();
        let mut edited: audit_event::ActiveModel = victim.clone().into();
        edited.status = Set(Some(200));
        edited.reason = Set("looks fine".into());
        edited.update(&db.conn).await.unwrap();
        let rows_after_edit = audit_event::Entity::find()
            .order_by_asc(audit_event::Column::Id)
            .all(&db.conn)
            .await
            .unwrap();
        assert_eq!(
            verify_rows(GENESIS, &rows_after_edit).map_err(|b| b.id),
            Err(victim.id)
        );

        // Delete another row: detected at its successor.
        rows[20].clone().delete(&db.conn).await.unwrap();
        let rows_after_delete: Vec<_> = audit_event::Entity::find()
            .order_by_asc(audit_event::Column::Id)
            .all(&db.conn)
            .await
            .unwrap()
            .into_iter()
            .filter(|r| r.id > victim.id)
            .collect();
        assert_eq!(
            verify_rows(&victim.hash, &rows_after_delete).map_err(|b| b.id),
            Err(rows[21].id)
        );
        db.drop_database().await;
    })
    .await;
}

#[tokio::test]
async fn ten_thousand_requests_faster_than_the_writer_lose_no_audit_event() {
    use futures_util::{StreamExt, stream};
    for_each_backend(|db| async move {
        // A tiny queue: the writer falls behind at once and requests must wait for it.
        let app = TestApp::spawn_with(db, |config| {
            config.proxy.audit_queue_capacity = 8;
            // Measure audit, not the rate limiter.
            config.proxy.default_rate_limit_per_minute = 10_000_000;
            config.proxy.default_rate_limit_burst = 100_000;
        })
        .await;
        let total = 10_000;
        let url = format!("{}/demo/load", app.dev.proxy_url());
        let key = app.admin_key().to_owned();
        let statuses: Vec<u16> = stream::iter(0..total)
            .map(|i| {
                let request = app.http.get(&url);
                // Every tenth request is refused (no key): refusals are audited too.
                let request = if i % 10 == 0 {
                    request
                } else {
                    request.bearer_auth(&key)
                };
                async move {
                    request
                        .send()
                        .await
                        .map(|r| r.status().as_u16())
                        .unwrap_or(0)
                }
            })
            .buffer_unordered(32)
            .collect()
            .await;
        assert_eq!(
            statuses.iter().filter(|s| **s == 200).count(),
            total * 9 / 10
        );
        assert_eq!(statuses.iter().filter(|s| **s == 401).count(), total / 10);

        let db = app.stop().await;
        let rows = audit_event::Entity::find()
            .order_by_asc(audit_event::Column::Id)
            .all(&db.conn)
            .await
            .unwrap();
        assert_eq!(rows.len(), total, "audit events lost");
        assert_eq!(verify_rows(GENESIS, &rows), Ok(total));
        db.drop_database().await;
    })
    .await;
}
