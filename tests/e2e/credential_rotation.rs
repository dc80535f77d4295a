//! Rotation of an upstream credential (a shared secret the proxy injects and the upstream
//! reads from the same Secrets Manager secret): the four steps with a generated value, the
//! exact AWS calls, faults, the rotation-Lambda entry, and the proxy following the rotation.

use std::time::Duration;

use api::{
    aws::dev_mock::SecretVersion,
    remediation::{self, RotationEvent, worker},
};
use entity::{
    managed_secret::{self, ManagedSecretKind},
    policy_change,
    remediation_run::RemediationRunStatus,
};
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    graphql_support::{ok, uuid},
    remediation_support::{
        Fixture, fast_config, inject_transient_faults, insert_managed_secret, secrets_calls,
        steps_of,
    },
    support::{TestApp, eventually, for_each_backend},
    upstream_credentials::{credential_seen_upstream, inject_into_demo_route},
};

const SECRET: &str = "payments/upstream-token";

async fn managed_credential(db: &DatabaseConnection, route_id: Option<Uuid>) {
    insert_managed_secret(
        db,
        SECRET,
        ManagedSecretKind::UpstreamCredential,
        None,
        route_id,
    )
    .await;
}

fn version<'a>(versions: &'a [SecretVersion], stage: &str) -> &'a SecretVersion {
    versions
        .iter()
        .find(|v| v.stages.iter().any(|s| s == stage))
        .unwrap_or_else(|| panic!("no {stage} version in {versions:?}"))
}

/// `Bearer ` + 256 random bits in base64url.
fn assert_fresh_bearer(value: &str) {
    let token = value.strip_prefix("Bearer ").expect("the scheme is kept");
    assert_eq!(token.len(), 43, "{token}");
    assert!(
        token
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
}

#[tokio::test]
async fn rotating_an_upstream_credential_stages_a_fresh_value_and_reports_it_on_the_feed() {
    for_each_backend(|db| async move {
        let fixture = Fixture::new(db).await;
        let engine = fixture.engine(fast_config()).await;
        managed_credential(&fixture.db, None).await;
        fixture.aws.put_secret_version(
            SECRET,
            SecretVersion {
                version_id: "v0".into(),
                value: "Bearer old-token".into(),
                stages: vec!["AWSCURRENT".into()],
            },
        );
        // Every write to Secrets Manager fails transiently first: still one new version.
        inject_transient_faults(&fixture.aws, "PutSecretValue").await;
        inject_transient_faults(&fixture.aws, "UpdateSecretVersionStage").await;

        let run = remediation::rotate_secret(&engine, SECRET, "req-1")
            .await
            .unwrap();
        worker::work_until_idle(&engine, Duration::from_secs(20))
            .await
            .unwrap();

        let steps = steps_of(&fixture.db, run.id).await;
        let actions: Vec<&str> = steps.iter().map(|s| s.action.as_str()).collect();
        assert_eq!(
            actions,
            [
                "rotate_secret:create_credential",
                "rotate_secret:set",
                "rotate_secret:test",
                "rotate_secret:finish",
                "notify"
            ]
        );
        let run = entity::remediation_run::Entity::find_by_id(run.id)
            .one(&fixture.db)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            run.status,
            RemediationRunStatus::Succeeded,
            "{:?}",
            run.error
        );

        let versions = fixture.aws.secret_versions(SECRET);
        assert_eq!(versions.len(), 2, "exactly one new version: {versions:?}");
        let current = version(&versions, "AWSCURRENT");
        assert_eq!(current.version_id, run.id.to_string());
        assert_fresh_bearer(&current.value);
        assert_eq!(version(&versions, "AWSPREVIOUS").value, "Bearer old-token");
        assert!(
            !versions
                .iter()
                .any(|v| v.stages.iter().any(|s| s == "AWSPENDING"))
        );

        // The AWS calls: the new value is staged under the run id, then AWSCURRENT moves.
        let calls = secrets_calls(&fixture.aws).await;
        let puts: Vec<&Value> = calls
            .iter()
            .filter(|(op, _)| op == "PutSecretValue")
            .map(|(_, body)| body)
            .collect();
        assert!(
            puts.iter()
                .all(|b| b["ClientRequestToken"] == run.id.to_string()
                    && b["VersionStages"] == json!(["AWSPENDING"])),
            "{puts:?}"
        );
        assert!(
            calls
                .iter()
                .any(|(op, body)| op == "UpdateSecretVersionStage"
                    && body["VersionStage"] == "AWSCURRENT"
                    && body["MoveToVersionId"] == run.id.to_string()
                    && body["RemoveFromVersionId"] == "v0")
        );

        // Proxies hear about it through the feed; the row records when.
        let feed = policy_change::Entity::find()
            .filter(policy_change::Column::EntityKind.eq("upstream_credential"))
            .all(&fixture.db)
            .await
            .unwrap();
        assert_eq!(feed.len(), 1);
        assert_eq!(feed[0].entity_id, SECRET);
        let managed = managed_secret::Entity::find()
            .one(&fixture.db)
            .await
            .unwrap()
            .unwrap();
        assert!(managed.last_rotated_at.is_some());
        fixture.drop().await;
    })
    .await;
}

#[tokio::test]
async fn secrets_manager_can_drive_an_upstream_credential_rotation_through_the_lambda_entry() {
    let fixture = Fixture::new(migration::testing::TestDatabase::sqlite().await).await;
    let engine = fixture.engine(fast_config()).await;
    managed_credential(&fixture.db, None).await;
    fixture.aws.put_secret_version(
        SECRET,
        SecretVersion {
            version_id: "v0".into(),
            value: "plain-token".into(),
            stages: vec!["AWSCURRENT".into()],
        },
    );
    // An abandoned rotation left AWSPENDING on another version: it must not block this one.
    fixture.aws.put_secret_version(
        SECRET,
        SecretVersion {
            version_id: "abandoned".into(),
            value: "never-used".into(),
            stages: vec!["AWSPENDING".into()],
        },
    );
    let token = Uuid::new_v4().to_string();
    let event = |step: &str| RotationEvent {
        step: step.into(),
        secret_id: SECRET.into(),
        client_request_token: token.clone(),
    };
    for step in [
        "createSecret",
        "createSecret", // Secrets Manager retries: harmless.
        "setSecret",
        "testSecret",
        "finishSecret",
        "createSecret", // A late retry after the rotation finished: nothing to do.
    ] {
        remediation::handle_rotation_event(&engine, event(step))
            .await
            .unwrap_or_else(|e| panic!("{step}: {e}"));
    }
    let versions = fixture.aws.secret_versions(SECRET);
    let current = version(&versions, "AWSCURRENT");
    assert_eq!(current.version_id, token);
    // No auth scheme before: none after; 256 bits of base64url.
    assert_eq!(current.value.len(), 43);
    assert_eq!(version(&versions, "AWSPREVIOUS").value, "plain-token");
    assert!(
        !versions
            .iter()
            .any(|v| v.stages.iter().any(|s| s == "AWSPENDING"))
    );
    assert_eq!(
        versions.len(),
        3,
        "one new version, whatever the retries: {versions:?}"
    );

    let error = remediation::handle_rotation_event(&engine, event("rotateEverything"))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("rotateEverything"));
    let unknown = RotationEvent {
        step: "createSecret".into(),
        secret_id: "not/managed".into(),
        client_request_token: token.clone(),
    };
    let error = remediation::handle_rotation_event(&engine, unknown)
        .await
        .unwrap_err();
    assert!(error.to_string().contains("not managed"), "{error}");
    fixture.drop().await;
}

#[tokio::test]
async fn rotate_secret_through_graphql_and_the_proxy_injects_the_new_credential_at_once() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn_with_remediation(db).await;
        let secrets = &app.dev.aws_clients.secrets;
        secrets
            .create_secret()
            .name(SECRET)
            .secret_string("Bearer first-token")
            .send()
            .await
            .unwrap();
        let route_id = inject_into_demo_route(&app, SECRET).await;
        managed_credential(&app.db, Some(route_id)).await;
        let injected = eventually(Duration::from_secs(2), || async {
            credential_seen_upstream(&app).await.as_deref() == Some("Bearer first-token")
        })
        .await;
        assert!(injected.is_some());

        let data = ok(
            &app,
            app.admin_key(),
            "mutation($s: String!) { rotateSecret(secretId: $s) { id triggerKind status } }",
            json!({ "s": SECRET }),
        )
        .await;
        let run_id = uuid(&data["rotateSecret"]["id"]);

        // The proxy's cache has the old value for minutes; the feed entry written with the
        // rotation's last step makes it refetch at once.
        let rotated = eventually(Duration::from_secs(10), || async {
            credential_seen_upstream(&app)
                .await
                .is_some_and(|seen| seen != "Bearer first-token")
        })
        .await;
        assert!(
            rotated.is_some(),
            "the proxy still injects the old credential"
        );
        let seen = credential_seen_upstream(&app).await.unwrap();
        assert_fresh_bearer(&seen);
        let current = version(&app.dev.aws.secret_versions(SECRET), "AWSCURRENT").clone();
        assert_eq!(current.value, seen, "the proxy injects AWSCURRENT");
        assert_eq!(current.version_id, run_id.to_string());

        let run = ok(
            &app,
            app.admin_key(),
            "query($id: UUID!) { remediationRun(id: $id) { status steps { action status } } }",
            json!({ "id": run_id }),
        )
        .await;
        let finished = eventually(Duration::from_secs(5), || async {
            ok(
                &app,
                app.admin_key(),
                "query($id: UUID!) { remediationRun(id: $id) { status } }",
                json!({ "id": run_id }),
            )
            .await["remediationRun"]["status"]
                == "SUCCEEDED"
        })
        .await;
        assert!(finished.is_some(), "{run:#}");
        app.stop().await.drop_database().await;
    })
    .await;
}
