//! The audit trail: one event per request, flushed on shutdown, tamper-evident.

use entity::audit_event;
use proxy::audit::{GENESIS, verify_rows};
use sea_orm::{ActiveModelTrait, EntityTrait, ModelTrait, QueryOrder, Set};

use crate::support::{TestApp, for_each_backend};

/// Every audit row, in chain order.
async fn rows_in_order(db: &sea_orm::DatabaseConnection) -> Vec<audit_event::Model> {
    audit_event::Entity::find()
        .order_by_asc(audit_event::Column::Id)
        .all(db)
        .await
        .unwrap()
}

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
        let rows = rows_in_order(&db.conn).await;
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

/// A batch over many keys: every key's last use is the batch's latest for it, and every
/// (key, permission) counter adds exactly its uses, across batches. The writer sends these
/// as a few multi-row statements per batch (32 rows at most each), not one per key.
#[tokio::test]
async fn a_batch_over_many_keys_touches_every_key_and_counts_every_permission() {
    use std::collections::HashMap;

    use chrono::{Duration, SubsecRound, Utc};
    use entity::audit_event::{AuditDecision, AuditEventKind};
    use proxy::audit::{AuditRecord, append};
    use uuid::Uuid;

    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        let owner = app.admin_id().await;
        let mut keys = Vec::new();
        for _ in 0..150 {
            keys.push(app.insert_key(owner).await.0);
        }
        let (read, write) = (Uuid::now_v7(), Uuid::now_v7());
        let start = Utc::now().trunc_subsecs(6);
        // Key i is used i % 3 + 1 times per batch, alternating two permissions, from a
        // different address each time; the last use in batch order is the latest.
        let batch = |round: i64| -> Vec<AuditRecord> {
            let mut records = Vec::new();
            for use_no in 0..3 {
                for (i, key) in keys.iter().enumerate() {
                    if use_no > i % 3 {
                        continue;
                    }
                    let mut record =
                        AuditRecord::new(AuditEventKind::ProxyRequest, "allowed_by_binding");
                    record.occurred_at = start
                        + Duration::seconds(round * 10 + use_no as i64)
                        + Duration::milliseconds(i as i64);
                    record.decision = Some(AuditDecision::Allow);
                    record.principal_id = Some(owner);
                    record.api_key_id = Some(*key);
                    record.permission_id = Some(if use_no % 2 == 0 { read } else { write });
                    record.client_ip = Some(format!("10.{round}.{use_no}.{}", i % 250));
                    records.push(record);
                }
            }
            records
        };
        // The second batch in reverse order: the latest use is not the last in the batch
        // (a long request finishes after newer ones). A third batch of older uses comes last,
        // as from another instance whose batch committed late: last uses never move back.
        let (first, second, older) = (
            batch(0),
            batch(1).into_iter().rev().collect::<Vec<_>>(),
            batch(-1),
        );
        append(&app.db, &first).await.unwrap();
        append(&app.db, &second).await.unwrap();
        append(&app.db, &older).await.unwrap();

        let stored = entity::api_key::Entity::find().all(&app.db).await.unwrap();
        let stored: HashMap<Uuid, _> = stored.into_iter().map(|k| (k.id, k)).collect();
        for (i, key) in keys.iter().enumerate() {
            let latest = second
                .iter()
                .filter(|r| r.api_key_id == Some(*key))
                .max_by_key(|r| r.occurred_at)
                .unwrap();
            assert_eq!(
                stored[key].last_used_at,
                Some(latest.occurred_at),
                "key {i}"
            );
            assert_eq!(stored[key].last_used_ip, latest.client_ip, "key {i}");
        }

        let counters = entity::usage_counter::Entity::find()
            .all(&app.db)
            .await
            .unwrap();
        let counted: HashMap<(Option<Uuid>, Option<Uuid>), i64> = counters
            .iter()
            .filter(|c| c.api_key_id.is_some_and(|k| keys.contains(&k)))
            .map(|c| ((c.api_key_id, c.permission_id), c.request_count))
            .collect();
        let mut expected: HashMap<(Option<Uuid>, Option<Uuid>), i64> = HashMap::new();
        for record in first.iter().chain(&second).chain(&older) {
            *expected
                .entry((record.api_key_id, record.permission_id))
                .or_default() += 1;
        }
        // 150 keys read; the 100 used twice or more also wrote.
        assert_eq!(expected.len(), 250);
        assert_eq!(counted, expected);
        let first_use = counters
            .iter()
            .find(|c| c.api_key_id == Some(keys[0]))
            .unwrap();
        // Key 0 is used once per batch, always with the first permission.
        let uses_of_key_0 = || {
            first
                .iter()
                .chain(&second)
                .chain(&older)
                .filter(|r| r.api_key_id == Some(keys[0]))
                .map(|r| r.occurred_at)
        };
        assert_eq!(Some(first_use.first_used_at), uses_of_key_0().min());
        assert_eq!(Some(first_use.last_used_at), uses_of_key_0().max());
        // The rows themselves: all stored, and the chain intact across both batches.
        let rows = audit_event::Entity::find()
            .order_by_asc(audit_event::Column::Id)
            .all(&app.db)
            .await
            .unwrap();
        let ours = rows
            .iter()
            .filter(|r| r.api_key_id.is_some_and(|k| keys.contains(&k)))
            .count();
        assert_eq!(ours, first.len() + second.len() + older.len());
        assert_eq!(verify_rows(GENESIS, &rows), Ok(rows.len()));
        app.stop().await.drop_database().await;
    })
    .await;
}

/// Whatever a record holds (quotes, escapes, control characters, non-ASCII text, absent ids,
/// extreme numbers, nested details, a whole-second timestamp) comes back exactly, chained,
/// across two batches, except U+0000, which PostgreSQL cannot store and both backends keep
/// as U+FFFD (a record that could not be stored would stall the writer); on SQLite ids and timestamps are stored as sqlx stores them for
/// SeaORM's own writes (16-byte blobs, RFC 3339 with `+00:00`), so the column sorts alike.
#[tokio::test]
async fn awkward_values_are_stored_exactly_and_chain_across_batches() {
    use chrono::{TimeZone, Utc};
    use entity::audit_event::{AuditDecision, AuditEventKind};
    use proxy::audit::{AuditRecord, append};
    use sea_orm::{ConnectionTrait, Statement};
    use uuid::Uuid;

    for_each_backend(|db| async move {
        let db = db.migrated().await;
        let mut awkward = AuditRecord::new(
            AuditEventKind::Management,
            "quote \" backslash \\ tab\t newline\n é 漢 🦀 unit-separator \u{1f} nul \u{0}",
        );
        awkward.occurred_at = Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap();
        awkward.request_id = Some("req-\"1\"".into());
        awkward.principal_id = Some(Uuid::now_v7());
        awkward.api_key_id = Some(Uuid::now_v7());
        awkward.grant_id = Some(Uuid::now_v7());
        awkward.route_id = Some(Uuid::now_v7());
        awkward.client_ip = Some("2001:db8::1".into());
        awkward.method = Some("mutation".into());
        awkward.path = Some("/a b/ü/[0]/$.x".into());
        awkward.decision = Some(AuditDecision::Deny);
        awkward.status = Some(403);
        awkward.latency_us = Some(i64::MAX);
        awkward.detail = serde_json::json!({
            "nested": {"list": [1, -2.5, 1e300, true, null, "x\"y\\z\u{0}\u{7f}"], "empty": {}},
            "unicode": "é🦀",
            "big": u64::MAX,
            "small": i64::MIN,
            "floats": [1e16, -1e16, -0.0, 1.5e17, 1e20, 0.25],
            "": [],
            "key\u{0}": "nul"
        });
        let empty = AuditRecord::new(AuditEventKind::ProxyRequest, "");
        let mut later = AuditRecord::new(AuditEventKind::Webhook, "second batch");
        later.latency_us = Some(0);
        later.status = Some(-1);
        append(&db.conn, &[awkward.clone(), empty.clone()])
            .await
            .unwrap();
        append(&db.conn, std::slice::from_ref(&later))
            .await
            .unwrap();

        let rows = audit_event::Entity::find()
            .order_by_asc(audit_event::Column::Id)
            .all(&db.conn)
            .await
            .unwrap();
        assert_eq!(verify_rows(GENESIS, &rows), Ok(3));
        let stored: Vec<AuditRecord> = rows.iter().map(AuditRecord::from_model).collect();
        let mut expected = awkward.clone();
        expected.reason = expected.reason.replace('\0', "\u{fffd}");
        expected.detail =
            serde_json::from_str(&expected.detail.to_string().replace("\\u0000", "\u{fffd}"))
                .unwrap();
        // Floats as PostgreSQL's jsonb gives them back, on both backends.
        expected.detail["floats"] = serde_json::json!([
            10_000_000_000_000_000_u64,
            -10_000_000_000_000_000_i64,
            0.0,
            150_000_000_000_000_000_u64,
            1e20,
            0.25
        ]);
        assert!(expected.reason.ends_with("nul \u{fffd}"));
        assert_eq!(stored, [expected, empty, later]);

        if db.backend == migration::testing::Backend::Sqlite {
            let row = db
                .conn
                .query_one_raw(Statement::from_string(
                    db.conn.get_database_backend(),
                    "SELECT occurred_at, typeof(principal_id), length(principal_id), \
                     typeof(grant_id), typeof(status), typeof(detail) \
                     FROM audit_event ORDER BY id LIMIT 1",
                ))
                .await
                .unwrap()
                .unwrap();
            let text = |i: usize| row.try_get_by_index::<String>(i).unwrap();
            assert_eq!(text(0), "2026-01-02T03:04:05+00:00");
            assert_eq!(text(1), "blob");
            assert_eq!(row.try_get_by_index::<i64>(2).unwrap(), 16);
            assert_eq!(text(3), "blob");
            assert_eq!(text(4), "integer");
            assert_eq!(text(5), "text");
        }
    })
    .await;
}

/// hyper drops a request's future when its client goes away; the event must still be written,
/// since the upstream may already have acted on the request.
#[tokio::test]
async fn a_request_whose_client_goes_away_is_still_audited() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let app = TestApp::spawn(migration::testing::TestDatabase::sqlite().await).await;
    // An upstream that reads the request and never answers.
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = upstream.local_addr().unwrap();
    let (arrived_tx, arrived) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let (mut conn, _) = upstream.accept().await.unwrap();
        let mut buf = [0u8; 1024];
        let _ = conn.read(&mut buf).await;
        let _ = arrived_tx.send(());
        tokio::time::sleep(std::time::Duration::from_secs(60)).await;
        drop(conn);
    });
    crate::support::change_demo_route(&app, |route| {
        route.upstream_url = Set(format!("http://{upstream_addr}"));
        route.upstream_credential_secret_id = Set(None);
    })
    .await;
    // The proxy picks the change up within its poll interval.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;

    let mut client = tokio::net::TcpStream::connect(app.dev.proxy_addr)
        .await
        .unwrap();
    let request = format!(
        "POST /demo/transfer HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nContent-Length: 0\r\n\r\n",
        app.admin_key()
    );
    client.write_all(request.as_bytes()).await.unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), arrived)
        .await
        .expect("the request reached the upstream")
        .unwrap();
    drop(client);

    let db = app.db.clone();
    let row = crate::support::eventually(std::time::Duration::from_secs(10), || {
        let db = db.clone();
        async move {
            audit_event::Entity::find()
                .all(&db)
                .await
                .unwrap()
                .iter()
                .any(|r| r.path.as_deref() == Some("/demo/transfer") && r.status == Some(499))
        }
    })
    .await;
    assert!(row.is_some(), "no audit event for the abandoned request");
    let db = app.stop().await;
    let rows = rows_in_order(&db.conn).await;
    let abandoned: Vec<_> = rows
        .iter()
        .filter(|r| r.path.as_deref() == Some("/demo/transfer"))
        .collect();
    assert_eq!(abandoned.len(), 1, "exactly one event: {abandoned:?}");
    let event = abandoned[0];
    assert_eq!(
        event.decision,
        Some(audit_event::AuditDecision::Allow),
        "it was allowed and forwarded"
    );
    assert!(
        event.reason.ends_with("; client_closed_request"),
        "{}",
        event.reason
    );
    assert_eq!(verify_rows(GENESIS, &rows), Ok(rows.len()));
}

/// When the audit writer is behind, a request waits for room in the queue before anything is
/// decided or forwarded. A client that gives up meanwhile was never served: its request never
/// reached the upstream and leaves nothing behind (before, the request was forwarded first and
/// each abandoned one left a task waiting to queue its event, without bound).
#[tokio::test]
async fn a_full_audit_queue_holds_requests_before_the_upstream() {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use futures_util::{StreamExt, stream};

    let app = TestApp::spawn_with(migration::testing::TestDatabase::sqlite().await, |config| {
        config.proxy.audit_queue_capacity = 4;
        config.proxy.default_rate_limit_per_minute = 10_000_000;
        config.proxy.default_rate_limit_burst = 100_000;
    })
    .await;
    // An upstream that counts what reaches it.
    let reached = Arc::new(AtomicUsize::new(0));
    let counter = reached.clone();
    let upstream = axum::Router::new().fallback(move || {
        let counter = counter.clone();
        async move {
            counter.fetch_add(1, Ordering::SeqCst);
            "ok"
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream_addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, upstream).await });
    crate::support::change_demo_route(&app, |route| {
        route.upstream_url = Set(format!("http://{upstream_addr}"));
        route.upstream_credential_secret_id = Set(None);
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;

    // Another connection holds SQLite's write lock: the writer's batches fail until it lets go.
    let lock = app.hold_sqlite_write_lock().await;

    // More requests than the writer's batch (512) and the queue (4) can take; the rest wait
    // until their clients give up.
    let total = 700;
    let url = format!("{}/demo/held", app.dev.proxy_url());
    let key = app.admin_key().to_owned();
    let statuses: Vec<u16> = stream::iter(0..total)
        .map(|_| {
            let request = app
                .http
                .get(&url)
                .bearer_auth(&key)
                .timeout(std::time::Duration::from_secs(2));
            async move {
                request
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                    .unwrap_or(0)
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let served = statuses.iter().filter(|s| **s == 200).count();
    let abandoned = statuses.iter().filter(|s| **s == 0).count();
    assert_eq!(served + abandoned, total, "{statuses:?}");
    assert!(abandoned > 0, "the queue never filled");
    assert_eq!(
        reached.load(Ordering::SeqCst),
        served,
        "requests reached the upstream while the audit queue was full"
    );

    lock.rollback().await.unwrap();
    let db = app.stop().await;
    let rows: Vec<_> = rows_in_order(&db.conn)
        .await
        .into_iter()
        .filter(|r| r.path.as_deref() == Some("/demo/held"))
        .collect();
    assert_eq!(rows.len(), served, "one event per request served");
    assert!(rows.iter().all(|r| r.status == Some(200)), "{rows:?}");
    let all = rows_in_order(&db.conn).await;
    assert_eq!(verify_rows(GENESIS, &all), Ok(all.len()));
}
