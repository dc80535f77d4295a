//! Scheduled playbooks: the builtin `overdue-review` closes access reviews past their deadline
//! (default decision, revocations through the change feed, notification), each period starts
//! at most one run, and a period with nothing to do records nothing.

use std::time::Duration;

use api::remediation::{self, schedule};
use chrono::Utc;
use entity::{
    access_review::{self, AccessReviewStatus, ReviewDecision},
    access_review_item::{self, ReviewSubjectKind},
    api_key, incident_grant, policy_change, remediation_playbook,
    remediation_run::{self, RemediationRunStatus},
    role_binding,
};
use sea_orm::{
    ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, PaginatorTrait, QueryFilter,
    Set,
};
use serde_json::json;
use uuid::Uuid;

use crate::{
    remediation_support::{Fixture, fast_config, insert_binding, insert_grant},
    support::for_each_backend,
};

async fn review(
    db: &DatabaseConnection,
    name: &str,
    deadline_in: chrono::Duration,
    default_action: ReviewDecision,
) -> Uuid {
    let now = Utc::now();
    access_review::ActiveModel {
        id: Set(Uuid::now_v7()),
        name: Set(name.into()),
        scope: Set(json!({})),
        status: Set(AccessReviewStatus::Open),
        deadline: Set(now + deadline_in),
        default_action: Set(default_action),
        dormant_days: Set(90),
        created_by: Set(None),
        created_at: Set(now),
        closed_at: Set(None),
    }
    .insert(db)
    .await
    .unwrap()
    .id
}

async fn item(
    db: &DatabaseConnection,
    review_id: Uuid,
    kind: ReviewSubjectKind,
    subject_id: Uuid,
    principal_id: Uuid,
    decided: Option<(ReviewDecision, Uuid)>,
) -> Uuid {
    let now = Utc::now();
    access_review_item::ActiveModel {
        id: Set(Uuid::now_v7()),
        review_id: Set(review_id),
        subject_kind: Set(kind),
        subject_id: Set(subject_id),
        principal_id: Set(principal_id),
        flags: Set(json!(["dormant"])),
        reviewer_id: Set(decided.map(|(_, by)| by)),
        decision: Set(decided.map(|(d, _)| d)),
        decided_by: Set(decided.map(|(_, by)| by)),
        decided_at: Set(decided.map(|_| now)),
        note: Set(None),
        applied_at: Set(None),
        created_at: Set(now),
    }
    .insert(db)
    .await
    .unwrap()
    .id
}

async fn items_of(db: &DatabaseConnection, review_id: Uuid) -> Vec<access_review_item::Model> {
    access_review_item::Entity::find()
        .filter(access_review_item::Column::ReviewId.eq(review_id))
        .all(db)
        .await
        .unwrap()
}

#[tokio::test]
async fn an_overdue_review_gets_its_default_decision_and_revocations_go_through_the_feed() {
    for_each_backend(|db| async move {
        let fixture = Fixture::new(db).await;
        remediation::seed_builtin_playbooks(&fixture.db)
            .await
            .unwrap();
        let engine = fixture.engine(fast_config()).await;
        let db = &fixture.db;
        let holder = fixture.principal().await;
        let reviewer = fixture.principal().await;
        let (undecided_key, _) = fixture.key(holder).await;
        let (revoked_by_reviewer, _) = fixture.key(holder).await;
        let (_, kept_binding) = insert_binding(db, holder).await;
        let undecided_grant = insert_grant(db, holder).await;
        let (not_yet_due_key, _) = fixture.key(holder).await;

        let overdue = review(
            db,
            "Q3 payments",
            -chrono::Duration::minutes(1),
            ReviewDecision::Revoke,
        )
        .await;
        item(
            db,
            overdue,
            ReviewSubjectKind::ApiKey,
            undecided_key,
            holder,
            None,
        )
        .await;
        item(
            db,
            overdue,
            ReviewSubjectKind::ApiKey,
            revoked_by_reviewer,
            holder,
            Some((ReviewDecision::Revoke, reviewer)),
        )
        .await;
        item(
            db,
            overdue,
            ReviewSubjectKind::RoleBinding,
            kept_binding,
            holder,
            Some((ReviewDecision::Keep, reviewer)),
        )
        .await;
        item(
            db,
            overdue,
            ReviewSubjectKind::IncidentGrant,
            undecided_grant,
            holder,
            None,
        )
        .await;
        let running = review(
            db,
            "Q4 payments",
            chrono::Duration::days(3),
            ReviewDecision::Revoke,
        )
        .await;
        item(
            db,
            running,
            ReviewSubjectKind::ApiKey,
            not_yet_due_key,
            holder,
            None,
        )
        .await;
        let feed_before = policy_change::Entity::find().count(db).await.unwrap();

        let report = engine.tick(Duration::from_secs(20)).await.unwrap();
        assert_eq!(report.scheduled_runs, 1, "{report:?}");

        // The campaign is closed; its undecided items carry the default, with no decider.
        let closed = access_review::Entity::find_by_id(overdue)
            .one(db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(closed.status, AccessReviewStatus::Closed);
        assert!(closed.closed_at.is_some());
        for item in items_of(db, overdue).await {
            match item.subject_id {
                id if id == undecided_key || id == undecided_grant => {
                    assert_eq!(item.decision, Some(ReviewDecision::Revoke));
                    assert_eq!(item.decided_by, None, "defaulted, not decided by anyone");
                    assert!(item.applied_at.is_some());
                }
                id if id == revoked_by_reviewer => {
                    assert_eq!(item.decided_by, Some(reviewer));
                    assert!(item.applied_at.is_some());
                }
                _ => {
                    assert_eq!(item.decision, Some(ReviewDecision::Keep));
                    assert!(item.applied_at.is_none(), "nothing to apply for keep");
                }
            }
        }
        // The effects: both keys revoked, the grant revoked, the kept binding still there.
        for key_id in [undecided_key, revoked_by_reviewer] {
            let key = api_key::Entity::find_by_id(key_id)
                .one(db)
                .await
                .unwrap()
                .unwrap();
            assert!(key.revoked_at.is_some(), "key {key_id} still active");
            assert!(key.revoked_reason.unwrap().contains("Q3 payments"));
        }
        let grant = incident_grant::Entity::find_by_id(undecided_grant)
            .one(db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(grant.status, incident_grant::IncidentGrantStatus::Revoked);
        assert!(
            role_binding::Entity::find_by_id(kept_binding)
                .one(db)
                .await
                .unwrap()
                .is_some()
        );
        // Every effect reached the change feed, so proxies drop them within a second.
        let feed: Vec<(String, String)> = policy_change::Entity::find()
            .all(db)
            .await
            .unwrap()
            .into_iter()
            .skip(usize::try_from(feed_before).unwrap())
            .map(|c| (c.entity_kind, c.entity_id))
            .collect();
        for expected in [
            ("api_key".to_owned(), undecided_key.to_string()),
            ("api_key".to_owned(), revoked_by_reviewer.to_string()),
            ("incident_grant".to_owned(), holder.to_string()),
        ] {
            assert!(feed.contains(&expected), "{expected:?} not in {feed:?}");
        }
        // The campaign still running is untouched.
        let untouched = access_review::Entity::find_by_id(running)
            .one(db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(untouched.status, AccessReviewStatus::Open);
        assert!(items_of(db, running).await[0].decision.is_none());

        // Subscribers hear about it.
        let published = fixture.aws.published();
        assert_eq!(published.len(), 1, "{published:?}");
        assert_eq!(
            published[0].attributes["event_type"],
            "access_review_overdue"
        );

        // Another pass in the same period, or with nothing overdue, starts nothing.
        let report = engine.tick(Duration::from_secs(5)).await.unwrap();
        assert_eq!(report.scheduled_runs, 0, "{report:?}");
        let runs = remediation_run::Entity::find().all(db).await.unwrap();
        assert_eq!(runs.len(), 1);
        assert_eq!(runs[0].status, RemediationRunStatus::Succeeded);
        assert_eq!(runs[0].trigger_kind, "schedule");
        fixture.drop().await;
    })
    .await;
}

#[tokio::test]
async fn each_schedule_period_starts_one_run_however_many_workers_look() {
    let fixture = Fixture::new(migration::testing::TestDatabase::sqlite().await).await;
    let db = &fixture.db;
    let now = Utc::now();
    remediation_playbook::ActiveModel {
        id: Set(Uuid::now_v7()),
        name: Set("hourly-review-sweep".into()),
        description: Set(String::new()),
        enabled: Set(true),
        dry_run: Set(true),
        builtin: Set(false),
        trigger: Set(json!({ "kind": "schedule", "every_secs": 3600 })),
        diagnose: Set(json!({})),
        actions: Set(json!([{ "action": "apply_overdue_reviews" }])),
        notify: Set(json!({ "enabled": false })),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(db)
    .await
    .unwrap();
    let first = fixture.engine(fast_config()).await;
    let second = fixture.engine(fast_config()).await;

    // Nothing overdue: no run is recorded.
    let mut planned = schedule::Planned::default();
    assert_eq!(schedule::fire_due(&first, &mut planned).await.unwrap(), 0);
    assert_eq!(remediation_run::Entity::find().count(db).await.unwrap(), 0);

    let overdue = review(
        db,
        "stale",
        -chrono::Duration::hours(1),
        ReviewDecision::Keep,
    )
    .await;
    // Two workers, each with its own memory of what it planned: one run between them.
    let mut a = schedule::Planned::default();
    let mut b = schedule::Planned::default();
    let created = schedule::fire_due(&first, &mut a).await.unwrap()
        + schedule::fire_due(&second, &mut b).await.unwrap()
        + schedule::fire_due(&second, &mut schedule::Planned::default())
            .await
            .unwrap();
    assert_eq!(created, 1);
    let runs = remediation_run::Entity::find().all(db).await.unwrap();
    assert_eq!(runs.len(), 1);
    // A dry run records what it would do and changes nothing.
    assert_eq!(runs[0].status, RemediationRunStatus::DryRun);
    let review = access_review::Entity::find_by_id(overdue)
        .one(db)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(review.status, AccessReviewStatus::Open);
    fixture.drop().await;
}
