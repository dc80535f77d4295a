//! Audit chain anchors: the worker publishes the chain's tail to SNS once per period, and
//! `verifyAuditChain(anchors: …)` catches what the unkeyed chain alone cannot, a rewrite
//! rehashed to the end and a truncation of the newest events.

use std::time::Duration;

use entity::audit_event::{self, AuditEventKind};
use proxy::audit::{self as chain, AuditRecord, GENESIS};
use sea_orm::{ActiveModelTrait, ColumnTrait, EntityTrait, QueryFilter, QueryOrder, Set};
use serde_json::{Value, json};

use crate::{
    graphql_support::{code, gql, ok},
    remediation_support::{Fixture, TOPIC, fast_config},
    support::{TestApp, eventually, for_each_backend},
};

#[tokio::test]
async fn the_worker_publishes_the_chain_tail_once_per_period() {
    for_each_backend(|db| async move {
        let fixture = Fixture::new(db).await;
        // A year-long period: two ticks a moment apart fall in the same one.
        let engine = fixture
            .engine(api::remediation::RemediationConfig {
                audit_anchor_every_secs: 365 * 24 * 3600,
                ..fast_config()
            })
            .await;
        let empty = engine.tick(Duration::from_secs(1)).await.unwrap();
        assert_eq!(
            empty.audit_anchors, 0,
            "an empty chain has nothing to anchor"
        );

        let records: Vec<AuditRecord> = (0..5)
            .map(|i| AuditRecord::new(AuditEventKind::ProxyRequest, format!("request {i}")))
            .collect();
        chain::append(&fixture.db, &records).await.unwrap();
        let tail = chain::checkpoint(&fixture.db).await.unwrap().unwrap();

        let report = engine.tick(Duration::from_secs(1)).await.unwrap();
        assert_eq!(report.audit_anchors, 1, "{report:?}");
        let published = fixture.aws.published();
        assert_eq!(published.len(), 1);
        let anchor = &published[0];
        assert_eq!(anchor.topic_arn, TOPIC);
        assert_eq!(anchor.attributes["event_type"], "audit_checkpoint");
        let body: Value = serde_json::from_str(&anchor.message).unwrap();
        assert_eq!(body["id"], tail.id);
        assert_eq!(body["hash"], tail.hash.as_str());
        assert!(
            body["verify"].as_str().unwrap().contains(&tail.hash),
            "{body}"
        );

        // Another pass (or another worker) in the same period adds nothing.
        chain::append(&fixture.db, &records[..1]).await.unwrap();
        let again = engine.tick(Duration::from_secs(1)).await.unwrap();
        assert_eq!(again.audit_anchors, 0, "{again:?}");
        assert_eq!(fixture.aws.published().len(), 1);
        fixture.drop().await;
    })
    .await;
}

#[tokio::test]
async fn anchors_catch_a_rehashed_rewrite_and_a_truncation_that_the_chain_alone_misses() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn(db).await;
        let admin = app.admin_key().to_owned();
        for i in 0..6 {
            app.proxy_get(&format!("/demo/{i}"), Some(&admin)).await;
        }
        let written = eventually(Duration::from_secs(5), || async {
            audit_event::Entity::find()
                .filter(audit_event::Column::Kind.eq(AuditEventKind::ProxyRequest))
                .all(&app.db)
                .await
                .unwrap()
                .len()
                == 6
        })
        .await;
        assert!(written.is_some(), "audit events were not written");
        // The anchor an auditor kept: the tail, as the checkpoint log line or SNS names it.
        let tail = chain::checkpoint(&app.db).await.unwrap().unwrap();
        let verify = "query($anchors: [AuditAnchorInput!]!) { verifyAuditChain(anchors: $anchors) { ok checked lastCheckedId anchorsMatched firstBrokenId problem } }";
        let anchors = json!({ "anchors": [{ "id": tail.id, "hash": tail.hash }] });
        let intact = ok(&app, &admin, verify, anchors.clone()).await;
        assert_eq!(intact["verifyAuditChain"]["ok"], true, "{intact}");
        assert_eq!(intact["verifyAuditChain"]["anchorsMatched"], 1);
        assert_eq!(intact["verifyAuditChain"]["lastCheckedId"], tail.id);
        // The query an SNS anchor carries runs as it is.
        let message = api::remediation::anchors::anchor_message(&tail, chrono::Utc::now());
        let carried = ok(&app, &admin, message["verify"].as_str().unwrap(), json!({})).await;
        assert_eq!(carried["verifyAuditChain"]["ok"], true, "{carried}");
        assert_eq!(carried["verifyAuditChain"]["anchorsMatched"], 1);
        // A range that stops before the anchor does not vouch for it.
        let short = ok(
            &app,
            &admin,
            "query($to: Int, $anchors: [AuditAnchorInput!]!) { verifyAuditChain(toId: $to, anchors: $anchors) { ok anchorsMatched firstBrokenId problem } }",
            json!({ "to": tail.id - 1, "anchors": anchors["anchors"] }),
        )
        .await;
        let result = &short["verifyAuditChain"];
        assert_eq!(result["ok"], false, "{short}");
        assert_eq!(result["anchorsMatched"], 0);
        assert!(result["problem"].as_str().unwrap().contains("outside the verified range"), "{short}");

        // Someone with write access edits an older event and recomputes every hash after it:
        // the chain verifies, the anchor does not.
        let rows = audit_event::Entity::find()
            .order_by_asc(audit_event::Column::Id)
            .all(&app.db)
            .await
            .unwrap();
        let victim = rows.len() - 3;
        let mut prev = if victim == 0 {
            GENESIS.to_owned()
        } else {
            rows[victim - 1].hash.clone()
        };
        for (i, row) in rows.iter().enumerate().skip(victim) {
            let mut record = AuditRecord::from_model(row);
            if i == victim {
                record.reason = "rewritten".into();
            }
            let hash = chain::chain_hash(&prev, &record);
            let mut edited: audit_event::ActiveModel = row.clone().into();
            edited.reason = Set(record.reason.clone());
            edited.prev_hash = Set(prev.clone());
            edited.hash = Set(hash.clone());
            edited.update(&app.db).await.unwrap();
            prev = hash;
        }
        let plain = ok(&app, &admin, "{ verifyAuditChain { ok } }", json!({})).await;
        assert_eq!(plain["verifyAuditChain"]["ok"], true, "the rehashed chain verifies");
        let rewritten = ok(&app, &admin, verify, anchors.clone()).await;
        let result = &rewritten["verifyAuditChain"];
        assert_eq!(result["ok"], false, "{rewritten}");
        assert_eq!(result["anchorsMatched"], 0);
        assert_eq!(result["firstBrokenId"], tail.id);
        assert!(result["problem"].as_str().unwrap().contains("rewritten"), "{rewritten}");

        // Deleting the newest events (the anchored one among them) leaves a valid chain too.
        audit_event::Entity::delete_many()
            .filter(audit_event::Column::Id.gte(rows[victim].id))
            .exec(&app.db)
            .await
            .unwrap();
        let plain = ok(&app, &admin, "{ verifyAuditChain { ok } }", json!({})).await;
        assert_eq!(plain["verifyAuditChain"]["ok"], true, "the truncated chain verifies");
        let truncated = ok(&app, &admin, verify, anchors).await;
        let result = &truncated["verifyAuditChain"];
        assert_eq!(result["ok"], false, "{truncated}");
        assert_eq!(result["firstBrokenId"], tail.id);
        assert!(result["problem"].as_str().unwrap().contains("missing"), "{truncated}");

        // A malformed anchor is refused, not treated as a mismatch.
        let bad = gql(
            &app,
            Some(&admin),
            verify,
            json!({ "anchors": [{ "id": tail.id, "hash": "not-a-hash" }] }),
        )
        .await;
        assert_eq!(code(&bad), "BAD_USER_INPUT", "{bad}");
        app.stop().await.drop_database().await;
    })
    .await;
}
