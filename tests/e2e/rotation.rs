//! Secrets Manager rotation of an API key: the exact AWS calls, fault tolerance (throttling,
//! 500s, timeouts, lost responses, permanent errors), resumption, and the Lambda entry.

use std::time::Duration;

use api::remediation::{self, RotationEvent, worker};
use entity::{remediation_run::RemediationRunStatus, remediation_step::RemediationStepStatus};
use serde_json::json;

use crate::{
    remediation_support::{
        Fixture, aws_error, fast_config, inject_transient_faults, key_in, keys_of, secrets_calls,
        steps_of,
    },
    support::for_each_backend,
};

const SECRET: &str = "portcullis/consumer-key";

async fn run_status(fixture: &Fixture, run_id: uuid::Uuid) -> entity::remediation_run::Model {
    use sea_orm::EntityTrait;
    entity::remediation_run::Entity::find_by_id(run_id)
        .one(&fixture.db)
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn rotation_makes_the_four_step_calls_and_the_new_key_becomes_current() {
    for_each_backend(|db| async move {
        // Arrange
        let fixture = Fixture::new(db).await;
        let engine = fixture.engine(fast_config()).await;
        let principal = fixture.principal().await;
        let (old_id, old_key) = fixture.key(principal).await;
        fixture.managed_secret(SECRET, old_id, &old_key).await;

        // Act
        let run = remediation::rotate_secret(&engine, SECRET, "req-1").await.unwrap();
        worker::work_until_idle(&engine, Duration::from_secs(10)).await.unwrap();

        // Assert: the run and every step succeeded, each on its first attempt.
        assert_eq!(run_status(&fixture, run.id).await.status, RemediationRunStatus::Succeeded);
        let steps = steps_of(&fixture.db, run.id).await;
        let actions: Vec<_> = steps.iter().map(|s| s.action.as_str()).collect();
        assert_eq!(
            actions,
            [
                "rotate_secret:create",
                "rotate_secret:set",
                "rotate_secret:test",
                "rotate_secret:finish",
                "expire_key",
                "notify"
            ]
        );
        assert!(steps.iter().all(|s| s.status == RemediationStepStatus::Succeeded && s.attempts == 1));

        // The exact Secrets Manager calls, with the run id as ClientRequestToken.
        let token = run.id.to_string();
        let calls = secrets_calls(&fixture.aws).await;
        let ops: Vec<_> = calls.iter().map(|(op, _)| op.as_str()).collect();
        assert_eq!(
            ops,
            [
                // createSecret
                "DescribeSecret",
                "GetSecretValue",
                "PutSecretValue",
                // setSecret
                "DescribeSecret",
                // testSecret
                "DescribeSecret",
                "GetSecretValue",
                // finishSecret
                "DescribeSecret",
                "UpdateSecretVersionStage",
                "UpdateSecretVersionStage",
                "GetSecretValue",
            ]
        );
        assert_eq!(calls[1].1, json!({ "SecretId": SECRET, "VersionStage": "AWSCURRENT" }));
        let put = &calls[2].1;
        assert_eq!(put["SecretId"], SECRET);
        assert_eq!(put["ClientRequestToken"], token.as_str());
        assert_eq!(put["VersionStages"], json!(["AWSPENDING"]));
        assert_eq!(calls[5].1, json!({ "SecretId": SECRET, "VersionId": token }));
        assert_eq!(
            calls[7].1,
            json!({
                "SecretId": SECRET, "VersionStage": "AWSCURRENT",
                "MoveToVersionId": token, "RemoveFromVersionId": "v0"
            })
        );
        assert_eq!(
            calls[8].1,
            json!({ "SecretId": SECRET, "VersionStage": "AWSPENDING", "RemoveFromVersionId": token })
        );

        // The secret: new version current, old one previous; the new key is a real key of
        // the same principal, rotated from the old one, which now expires after the grace.
        let versions = fixture.aws.secret_versions(SECRET);
        assert_eq!(versions.len(), 2);
        assert_eq!(versions[0].stages, ["AWSPREVIOUS"]);
        assert_eq!(versions[1].version_id, token);
        assert_eq!(versions[1].stages, ["AWSCURRENT"]);
        let keys = keys_of(&fixture.db, principal).await;
        assert_eq!(keys.len(), 2, "exactly one new key");
        assert_eq!(keys[1].rotated_from, Some(old_id));
        let new_key = key_in(&versions[1]);
        assert!(new_key.starts_with(&keys[1].prefix));
        assert!(keys[0].expires_at.is_some() && keys[0].revoked_at.is_none());
        fixture.drop().await;
    })
    .await;
}

#[tokio::test]
async fn throttling_500s_and_timeouts_at_every_call_are_retried_and_one_key_is_issued() {
    for_each_backend(|db| async move {
        let fixture = Fixture::new(db).await;
        let mut config = fast_config();
        config.max_attempts = 12;
        let engine = fixture.engine(config).await;
        let principal = fixture.principal().await;
        let (old_id, old_key) = fixture.key(principal).await;
        fixture.managed_secret(SECRET, old_id, &old_key).await;
        for operation in [
            "DescribeSecret",
            "GetSecretValue",
            "PutSecretValue",
            "UpdateSecretVersionStage",
        ] {
            inject_transient_faults(&fixture.aws, operation).await;
        }

        let run = remediation::rotate_secret(&engine, SECRET, "req-faults")
            .await
            .unwrap();
        worker::work_until_idle(&engine, Duration::from_secs(30))
            .await
            .unwrap();

        let finished = run_status(&fixture, run.id).await;
        assert_eq!(
            finished.status,
            RemediationRunStatus::Succeeded,
            "{:?}",
            finished.error
        );
        let steps = steps_of(&fixture.db, run.id).await;
        assert!(
            steps
                .iter()
                .all(|s| s.status == RemediationStepStatus::Succeeded)
        );
        // The faults hit the first steps; the ones after them succeeded at the first try,
        // and no step ran again after it succeeded (a repeat would have added attempts).
        let attempts: Vec<_> = steps.iter().map(|s| s.attempts).collect();
        assert!(attempts[0] > 1, "createSecret saw the faults: {attempts:?}");
        assert_eq!(&attempts[4..], [1, 1], "{attempts:?}");
        let versions = fixture.aws.secret_versions(SECRET);
        assert_eq!(versions.len(), 2, "one new version");
        assert_eq!(versions[1].stages, ["AWSCURRENT"]);
        assert_eq!(
            keys_of(&fixture.db, principal).await.len(),
            2,
            "exactly one new key"
        );
        fixture.drop().await;
    })
    .await;
}

#[tokio::test]
async fn a_lost_put_response_does_not_issue_a_second_key() {
    for_each_backend(|db| async move {
        let fixture = Fixture::new(db).await;
        let engine = fixture.engine(fast_config()).await;
        let principal = fixture.principal().await;
        let (old_id, old_key) = fixture.key(principal).await;
        fixture.managed_secret(SECRET, old_id, &old_key).await;
        // The put is stored, but its response arrives after the client gave up.
        fixture
            .aws
            .delay_secrets_after_applying("PutSecretValue", 1, Duration::from_secs(2));

        let run = remediation::rotate_secret(&engine, SECRET, "req-lost")
            .await
            .unwrap();
        worker::work_until_idle(&engine, Duration::from_secs(15))
            .await
            .unwrap();

        assert_eq!(
            run_status(&fixture, run.id).await.status,
            RemediationRunStatus::Succeeded
        );
        let create = &steps_of(&fixture.db, run.id).await[0];
        assert_eq!(create.attempts, 2);
        assert!(create.last_error.as_deref().unwrap().contains("Timeout"));
        let puts = secrets_calls(&fixture.aws)
            .await
            .into_iter()
            .filter(|(op, _)| op == "PutSecretValue")
            .count();
        assert_eq!(
            puts, 1,
            "the retry read the staged version back instead of putting again"
        );
        let keys = keys_of(&fixture.db, principal).await;
        assert_eq!(keys.len(), 2, "exactly one new key");
        let versions = fixture.aws.secret_versions(SECRET);
        assert!(key_in(&versions[1]).starts_with(&keys[1].prefix));
        fixture.drop().await;
    })
    .await;
}

#[tokio::test]
async fn a_permanent_aws_error_parks_the_run_and_retry_completes_it() {
    for_each_backend(|db| async move {
        use wiremock::{Mock, matchers::header};
        let fixture = Fixture::new(db).await;
        let engine = fixture.engine(fast_config()).await;
        let principal = fixture.principal().await;
        let (old_id, old_key) = fixture.key(principal).await;
        fixture.managed_secret(SECRET, old_id, &old_key).await;
        Mock::given(header("x-amz-target", "secretsmanager.PutSecretValue"))
            .respond_with(aws_error(400, "AccessDeniedException"))
            .up_to_n_times(1)
            .with_priority(1)
            .mount(fixture.aws.secrets_server())
            .await;

        let run = remediation::rotate_secret(&engine, SECRET, "req-denied")
            .await
            .unwrap();
        worker::work_until_idle(&engine, Duration::from_secs(10))
            .await
            .unwrap();

        let parked = run_status(&fixture, run.id).await;
        assert_eq!(parked.status, RemediationRunStatus::Failed);
        let error = parked.error.unwrap();
        assert!(error.contains("AccessDeniedException"), "{error}");
        assert!(error.contains("PutSecretValue"), "{error}");
        let steps = steps_of(&fixture.db, run.id).await;
        assert_eq!(steps[0].status, RemediationStepStatus::Failed);
        assert_eq!(steps[0].attempts, 1, "a permanent error is not retried");
        assert!(
            steps[1..]
                .iter()
                .all(|s| s.status == RemediationStepStatus::Pending)
        );
        assert_eq!(
            keys_of(&fixture.db, principal).await.len(),
            1,
            "no key issued"
        );

        // The operator fixed the permission: retry picks up at the failed step.
        remediation::retry_run(&engine, run.id).await.unwrap();
        worker::work_until_idle(&engine, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(
            run_status(&fixture, run.id).await.status,
            RemediationRunStatus::Succeeded
        );
        assert_eq!(keys_of(&fixture.db, principal).await.len(), 2);
        fixture.drop().await;
    })
    .await;
}

#[tokio::test]
async fn a_run_interrupted_between_steps_resumes_on_a_fresh_worker_without_repeats() {
    for_each_backend(|db| async move {
        let fixture = Fixture::new(db).await;
        let principal = fixture.principal().await;
        let (old_id, old_key) = fixture.key(principal).await;
        fixture.managed_secret(SECRET, old_id, &old_key).await;
        let first = fixture.engine(fast_config()).await;
        let run = remediation::rotate_secret(&first, SECRET, "req-resume")
            .await
            .unwrap();

        // The first worker executes two steps, then goes away.
        assert_eq!(worker::work_once(&first, 2, None).await.unwrap(), 2);
        drop(first);
        let steps = steps_of(&fixture.db, run.id).await;
        assert_eq!(steps[0].status, RemediationStepStatus::Succeeded);
        assert_eq!(steps[1].status, RemediationStepStatus::Succeeded);
        assert_eq!(steps[2].status, RemediationStepStatus::Pending);

        // A fresh worker (new process) finishes the run.
        let second = fixture.engine(fast_config()).await;
        worker::work_until_idle(&second, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(
            run_status(&fixture, run.id).await.status,
            RemediationRunStatus::Succeeded
        );
        let steps = steps_of(&fixture.db, run.id).await;
        assert!(steps.iter().all(|s| s.attempts == 1), "no step repeated");
        let puts = secrets_calls(&fixture.aws)
            .await
            .into_iter()
            .filter(|(op, _)| op == "PutSecretValue")
            .count();
        assert_eq!(puts, 1);
        assert_eq!(keys_of(&fixture.db, principal).await.len(), 2);
        fixture.drop().await;
    })
    .await;
}

#[tokio::test]
async fn a_worker_that_died_mid_run_is_taken_over_after_its_lease() {
    let fixture = Fixture::new(migration::testing::TestDatabase::sqlite().await).await;
    let principal = fixture.principal().await;
    let (old_id, old_key) = fixture.key(principal).await;
    fixture.managed_secret(SECRET, old_id, &old_key).await;
    let mut config = fast_config();
    config.lease_secs = 1;
    let engine = fixture.engine(config).await;
    let run = remediation::rotate_secret(&engine, SECRET, "req-crash")
        .await
        .unwrap();
    // Simulate a crash right after claiming: the run is `running` with a lease, nobody works.
    {
        use sea_orm::{ActiveModelTrait, Set};
        let mut active: entity::remediation_run::ActiveModel = run.clone().into();
        active.status = Set(RemediationRunStatus::Running);
        active.attempts = Set(1);
        active.next_attempt_at = Set(Some(chrono::Utc::now() + chrono::Duration::seconds(1)));
        active.update(&fixture.db).await.unwrap();
    }
    assert_eq!(
        worker::work_once(&engine, usize::MAX, None).await.unwrap(),
        0,
        "leased"
    );
    tokio::time::sleep(Duration::from_millis(1100)).await;
    worker::work_until_idle(&engine, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        run_status(&fixture, run.id).await.status,
        RemediationRunStatus::Succeeded
    );
    fixture.drop().await;
}

#[tokio::test]
async fn a_stale_pending_version_is_cleaned_up_instead_of_blocking_rotation() {
    let fixture = Fixture::new(migration::testing::TestDatabase::sqlite().await).await;
    let engine = fixture.engine(fast_config()).await;
    let principal = fixture.principal().await;
    let (old_id, old_key) = fixture.key(principal).await;
    fixture.managed_secret(SECRET, old_id, &old_key).await;
    fixture.aws.put_secret_version(
        SECRET,
        api::aws::dev_mock::SecretVersion {
            version_id: "abandoned".into(),
            value: "{}".into(),
            stages: vec!["AWSPENDING".into()],
        },
    );

    let run = remediation::rotate_secret(&engine, SECRET, "req-stale")
        .await
        .unwrap();
    worker::work_until_idle(&engine, Duration::from_secs(10))
        .await
        .unwrap();

    assert_eq!(
        run_status(&fixture, run.id).await.status,
        RemediationRunStatus::Succeeded
    );
    let versions = fixture.aws.secret_versions(SECRET);
    let abandoned = versions
        .iter()
        .find(|v| v.version_id == "abandoned")
        .unwrap();
    assert!(abandoned.stages.is_empty(), "{:?}", abandoned.stages);
    let current = versions
        .iter()
        .find(|v| v.stages.contains(&"AWSCURRENT".into()))
        .unwrap();
    assert_eq!(current.version_id, run.id.to_string());
    fixture.drop().await;
}

#[tokio::test]
async fn the_rotation_lambda_event_drives_the_same_idempotent_steps() {
    let fixture = Fixture::new(migration::testing::TestDatabase::sqlite().await).await;
    let engine = fixture.engine(fast_config()).await;
    let principal = fixture.principal().await;
    let (old_id, old_key) = fixture.key(principal).await;
    fixture.managed_secret(SECRET, old_id, &old_key).await;
    let token = uuid::Uuid::new_v4().to_string();
    let event = |step: &str| RotationEvent {
        step: step.to_owned(),
        secret_id: SECRET.to_owned(),
        client_request_token: token.clone(),
    };

    // Secrets Manager retries steps: every one is delivered twice here.
    for step in [
        "createSecret",
        "createSecret",
        "setSecret",
        "testSecret",
        "finishSecret",
        "finishSecret",
    ] {
        remediation::handle_rotation_event(&engine, event(step))
            .await
            .unwrap();
    }

    let versions = fixture.aws.secret_versions(SECRET);
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[1].version_id, token);
    assert_eq!(versions[1].stages, ["AWSCURRENT"]);
    let keys = keys_of(&fixture.db, principal).await;
    assert_eq!(keys.len(), 2, "exactly one new key");
    assert!(
        keys[0].expires_at.is_some(),
        "the old key expires after the grace period"
    );
    assert!(
        remediation::handle_rotation_event(&engine, event("bogusSecret"))
            .await
            .is_err()
    );
    fixture.drop().await;
}

#[tokio::test]
async fn secrets_due_for_scheduled_rotation_are_rotated_once_per_period() {
    use sea_orm::{ActiveModelTrait, EntityTrait, Set};
    let fixture = Fixture::new(migration::testing::TestDatabase::sqlite().await).await;
    let engine = fixture.engine(fast_config()).await;
    let principal = fixture.principal().await;
    let (old_id, old_key) = fixture.key(principal).await;
    fixture.managed_secret(SECRET, old_id, &old_key).await;
    let row = entity::managed_secret::Entity::find()
        .one(&fixture.db)
        .await
        .unwrap()
        .unwrap();
    let mut active: entity::managed_secret::ActiveModel = row.into();
    active.rotation_interval_days = Set(Some(30));
    active.created_at = Set(chrono::Utc::now() - chrono::Duration::days(31));
    active.update(&fixture.db).await.unwrap();

    assert_eq!(
        remediation::runs::sweep_scheduled_rotations(&engine)
            .await
            .unwrap(),
        1
    );
    // A second sweep (another worker) in the same period starts nothing new.
    remediation::runs::sweep_scheduled_rotations(&engine)
        .await
        .unwrap();
    worker::work_until_idle(&engine, Duration::from_secs(10))
        .await
        .unwrap();
    let runs = entity::remediation_run::Entity::find()
        .all(&fixture.db)
        .await
        .unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].status, RemediationRunStatus::Succeeded);
    // Rotated: not due again until the next period.
    assert_eq!(
        remediation::runs::sweep_scheduled_rotations(&engine)
            .await
            .unwrap(),
        0
    );
    assert_eq!(keys_of(&fixture.db, principal).await.len(), 2);
    fixture.drop().await;
}
