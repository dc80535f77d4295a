//! The remediation engine: security events → playbooks → runs, diagnosis, dry runs, the
//! builtin playbooks end to end through the proxy, and `reportLeakedKey`.

use std::time::Duration;

use api::remediation::{self, triggers, worker};
use chrono::Utc;
use entity::{
    api_key, ip_rule, rate_limit_override, remediation_playbook,
    remediation_run::{self, RemediationRunStatus},
    remediation_step::RemediationStepStatus,
    security_event::{self, SecurityEventStatus, Severity},
};
use reqwest::StatusCode;
use sea_orm::{ActiveModelTrait, ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter, Set};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::{
    remediation_support::{
        Fixture, fast_config, insert_binding, insert_event, insert_grant, key_in,
        seed_managed_secret, steps_of,
    },
    support::{TestApp, eventually, for_each_backend},
};

async fn event(db: &DatabaseConnection, id: Uuid) -> security_event::Model {
    security_event::Entity::find_by_id(id)
        .one(db)
        .await
        .unwrap()
        .unwrap()
}

async fn runs(db: &DatabaseConnection) -> Vec<remediation_run::Model> {
    remediation_run::Entity::find().all(db).await.unwrap()
}

#[tokio::test]
async fn a_security_event_processed_twice_starts_one_run_that_blocks_the_ip() {
    for_each_backend(|db| async move {
        let (fixture, engine) = Fixture::with_builtin_playbooks(db).await;
        assert_eq!(
            remediation::seed_builtin_playbooks(&fixture.db)
                .await
                .unwrap(),
            0,
            "idempotent"
        );
        let id = insert_event(
            &fixture.db,
            "failed_auth_burst",
            Severity::High,
            None,
            None,
            Some("203.0.113.9"),
        )
        .await;

        assert_eq!(triggers::process_security_events(&engine).await.unwrap(), 1);
        // A second worker that read the event while it was still new processes it again.
        let mut again: security_event::ActiveModel = event(&fixture.db, id).await.into();
        again.status = Set(SecurityEventStatus::New);
        again.update(&fixture.db).await.unwrap();
        assert_eq!(triggers::process_security_events(&engine).await.unwrap(), 0);

        let all = runs(&fixture.db).await;
        assert_eq!(all.len(), 1);
        let handled = event(&fixture.db, id).await;
        assert_eq!(handled.status, SecurityEventStatus::Handled);
        assert_eq!(handled.handled_by_run_id, Some(all[0].id));
        assert_eq!(
            all[0].idempotency_key,
            format!("security_event:{id}:failed-auth-burst")
        );

        worker::work_until_idle(&engine, Duration::from_secs(10))
            .await
            .unwrap();
        let steps = steps_of(&fixture.db, all[0].id).await;
        let actions: Vec<_> = steps.iter().map(|s| s.action.as_str()).collect();
        assert_eq!(actions, ["block_ip", "notify"]);
        let rules = ip_rule::Entity::find().all(&fixture.db).await.unwrap();
        assert_eq!(rules.len(), 1);
        assert_eq!(rules[0].cidr, "203.0.113.9/32");
        assert_eq!(rules[0].action, ip_rule::IpRuleAction::Deny);
        let lasts = rules[0].expires_at.unwrap() - Utc::now();
        assert!(lasts > chrono::Duration::minutes(14) && lasts <= chrono::Duration::minutes(15));
        // The block went through the change feed.
        let feed = entity::policy_change::Entity::find()
            .filter(entity::policy_change::Column::EntityKind.eq("ip_rule"))
            .all(&fixture.db)
            .await
            .unwrap();
        assert_eq!(feed.len(), 1);
        // ... and the notification through the outbox to SNS.
        engine.dispatcher().dispatch_once().await.unwrap();
        let published = fixture.aws.published();
        assert_eq!(published.len(), 1);
        assert_eq!(published[0].attributes["event_type"], "failed_auth_burst");
        assert_eq!(published[0].attributes["severity"], "high");
        fixture.drop().await;
    })
    .await;
}

#[tokio::test]
async fn an_ipv6_attacker_is_blocked_by_its_slash_64_not_one_address() {
    let (fixture, engine) =
        Fixture::with_builtin_playbooks(migration::testing::TestDatabase::sqlite().await).await;
    insert_event(
        &fixture.db,
        "failed_auth_burst",
        Severity::High,
        None,
        None,
        Some("2001:db8:1:2:aaaa:bbbb:cccc:9"),
    )
    .await;
    assert_eq!(triggers::process_security_events(&engine).await.unwrap(), 1);
    worker::work_until_idle(&engine, Duration::from_secs(10))
        .await
        .unwrap();
    let rules = ip_rule::Entity::find().all(&fixture.db).await.unwrap();
    assert_eq!(rules.len(), 1);
    // Addresses inside a /64 are the attacker's to rotate; the whole subnet is denied.
    assert_eq!(rules[0].cidr, "2001:db8:1:2::/64");
    assert_eq!(rules[0].action, ip_rule::IpRuleAction::Deny);
    fixture.drop().await;
}

#[tokio::test]
async fn diagnosis_suppresses_allow_listed_ips_and_incident_grant_holders() {
    let (fixture, engine) =
        Fixture::with_builtin_playbooks(migration::testing::TestDatabase::sqlite().await).await;
    ip_rule::ActiveModel {
        id: Set(Uuid::now_v7()),
        route_id: Set(None),
        cidr: Set("10.0.0.0/8".into()),
        action: Set(ip_rule::IpRuleAction::Allow),
        expires_at: Set(None),
        reason: Set("office".into()),
        source: Set(ip_rule::IpRuleSource::Manual),
        created_by: Set(None),
        created_at: Set(Utc::now()),
    }
    .insert(&fixture.db)
    .await
    .unwrap();
    let id = insert_event(
        &fixture.db,
        "failed_auth_burst",
        Severity::High,
        None,
        None,
        Some("10.1.2.3"),
    )
    .await;

    triggers::process_security_events(&engine).await.unwrap();

    let all = runs(&fixture.db).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].status, RemediationRunStatus::Suppressed);
    assert!(
        all[0].context["suppressed"]
            .as_str()
            .unwrap()
            .contains("allow-listed")
    );
    assert_eq!(
        event(&fixture.db, id).await.status,
        SecurityEventStatus::Suppressed
    );
    worker::work_until_idle(&engine, Duration::from_secs(5))
        .await
        .unwrap();
    let denies = ip_rule::Entity::find()
        .filter(ip_rule::Column::Action.eq(ip_rule::IpRuleAction::Deny))
        .all(&fixture.db)
        .await
        .unwrap();
    assert!(denies.is_empty(), "a suppressed run does nothing");

    // A principal with an approved, unexpired incident grant is not suspended.
    let principal = fixture.principal().await;
    let (key_id, _) = fixture.key(principal).await;
    insert_grant(&fixture.db, principal).await;
    let id = insert_event(
        &fixture.db,
        "key_new_network",
        Severity::Medium,
        Some(principal),
        Some(key_id),
        Some("198.51.100.4"),
    )
    .await;
    triggers::process_security_events(&engine).await.unwrap();
    assert_eq!(
        event(&fixture.db, id).await.status,
        SecurityEventStatus::Suppressed
    );
    worker::work_until_idle(&engine, Duration::from_secs(5))
        .await
        .unwrap();
    let key = api_key::Entity::find_by_id(key_id)
        .one(&fixture.db)
        .await
        .unwrap()
        .unwrap();
    assert!(key.suspended_at.is_none());
    fixture.drop().await;
}

#[tokio::test]
async fn dry_run_playbooks_record_what_they_would_do_and_bad_playbooks_are_skipped() {
    let (fixture, engine) =
        Fixture::with_builtin_playbooks(migration::testing::TestDatabase::sqlite().await).await;
    let spike = remediation_playbook::Entity::find()
        .filter(remediation_playbook::Column::Name.eq("traffic-spike"))
        .one(&fixture.db)
        .await
        .unwrap()
        .unwrap();
    let mut dry: remediation_playbook::ActiveModel = spike.into();
    dry.dry_run = Set(true);
    dry.update(&fixture.db).await.unwrap();
    // A broken row matching the same events must not stop the others.
    let now = Utc::now();
    remediation_playbook::ActiveModel {
        id: Set(Uuid::now_v7()),
        name: Set("broken".into()),
        description: Set(String::new()),
        enabled: Set(true),
        dry_run: Set(false),
        builtin: Set(false),
        trigger: Set(json!({ "kind": "security_event", "event_kinds": ["traffic_spike"] })),
        diagnose: Set(json!({})),
        actions: Set(json!([{ "action": "launch_missiles" }])),
        notify: Set(json!({})),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(&fixture.db)
    .await
    .unwrap();
    let principal = fixture.principal().await;
    insert_event(
        &fixture.db,
        "traffic_spike",
        Severity::Medium,
        Some(principal),
        None,
        None,
    )
    .await;

    triggers::process_security_events(&engine).await.unwrap();

    let all = runs(&fixture.db).await;
    assert_eq!(all.len(), 1, "the broken playbook started nothing");
    assert_eq!(all[0].status, RemediationRunStatus::DryRun);
    let steps = steps_of(&fixture.db, all[0].id).await;
    assert!(
        steps
            .iter()
            .all(|s| s.status == RemediationStepStatus::Skipped)
    );
    let would = &steps[0].output.as_ref().unwrap()["would"];
    assert_eq!(would["action"], "tighten_rate_limit");
    assert_eq!(would["params"]["factor"], 0.5);
    assert!(
        rate_limit_override::Entity::find()
            .all(&fixture.db)
            .await
            .unwrap()
            .is_empty()
    );
    fixture.drop().await;
}

#[tokio::test]
async fn traffic_spikes_halve_the_limit_and_new_networks_suspend_the_key() {
    for_each_backend(|db| async move {
        let (fixture, engine) = Fixture::with_builtin_playbooks(db).await;
        let principal = fixture.principal().await;
        let (key_id, _) = fixture.key(principal).await;
        insert_event(
            &fixture.db,
            "traffic_spike",
            Severity::Medium,
            Some(principal),
            Some(key_id),
            Some("192.0.2.1"),
        )
        .await;
        insert_event(
            &fixture.db,
            "key_new_network",
            Severity::Medium,
            Some(principal),
            Some(key_id),
            Some("192.0.2.1"),
        )
        .await;

        triggers::process_security_events(&engine).await.unwrap();
        worker::work_until_idle(&engine, Duration::from_secs(10))
            .await
            .unwrap();

        assert!(
            runs(&fixture.db)
                .await
                .iter()
                .all(|r| r.status == RemediationRunStatus::Succeeded)
        );
        let overrides = rate_limit_override::Entity::find()
            .all(&fixture.db)
            .await
            .unwrap();
        assert_eq!(overrides.len(), 1);
        assert_eq!(overrides[0].principal_id, Some(principal));
        assert_eq!(
            (overrides[0].per_minute, overrides[0].burst),
            (300, 50),
            "half of 600/100"
        );
        let lasts = overrides[0].expires_at - Utc::now();
        assert!(lasts > chrono::Duration::minutes(9) && lasts <= chrono::Duration::minutes(10));
        let key = api_key::Entity::find_by_id(key_id)
            .one(&fixture.db)
            .await
            .unwrap()
            .unwrap();
        assert!(key.suspended_at.is_some());
        assert!(key.revoked_at.is_none());
        fixture.drop().await;
    })
    .await;
}

#[tokio::test]
async fn twenty_failed_logins_get_the_ip_blocked_at_the_proxy_and_subscribers_notified() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn_with_remediation(db).await;

        for _ in 0..20 {
            app.proxy_get("/demo/x", Some("pk_test_nope")).await;
        }

        let blocked = eventually(Duration::from_secs(10), || async {
            let response = app.proxy_get("/demo/x", Some(app.admin_key())).await;
            if response.status() != StatusCode::FORBIDDEN {
                return false;
            }
            let body: Value = response.json().await.unwrap();
            body["error"]["code"] == "ip_blocked"
        })
        .await;
        assert!(blocked.is_some(), "loopback was not blocked");
        let notified = eventually(Duration::from_secs(10), || async {
            app.dev.aws.published().iter().any(|m| {
                m.attributes.get("event_type").map(String::as_str) == Some("failed_auth_burst")
            })
        })
        .await;
        assert!(
            notified.is_some(),
            "no SNS notification: {:?}",
            app.dev.aws.published()
        );
        let message = app.dev.aws.published().into_iter().next().unwrap();
        assert_eq!(message.topic_arn, portcullis::dev::DEV_SNS_TOPIC);
        assert_eq!(message.attributes["severity"], "high");
        app.stop().await.drop_database().await;
    })
    .await;
}

#[tokio::test]
async fn report_leaked_key_kills_the_key_at_once_and_rotates_a_new_one_into_the_secret() {
    for_each_backend(|db| async move {
        let app = TestApp::spawn_with_remediation(db).await;
        let (key_id, key) = app.insert_key(app.admin_id().await).await;
        let secret = "portcullis/admin-consumer";
        seed_managed_secret(&app.db, &app.dev.aws, secret, key_id, &key).await;
        let works = eventually(Duration::from_secs(2), || async {
            app.proxy_get("/demo/x", Some(&key)).await.status() == StatusCode::OK
        })
        .await;
        assert!(works.is_some());

        let run = remediation::report_leaked_key(&app.dev.remediation, key_id, "req-leak")
            .await
            .unwrap();
        // Reporting the same leak again is the same run.
        let again = remediation::report_leaked_key(&app.dev.remediation, key_id, "req-leak")
            .await
            .unwrap();
        assert_eq!(again.id, run.id);

        let dead = eventually(Duration::from_secs(3), || async {
            app.proxy_get("/demo/x", Some(&key)).await.status() == StatusCode::UNAUTHORIZED
        })
        .await;
        assert!(dead.is_some(), "the leaked key still works");
        let done = eventually(Duration::from_secs(10), || async {
            remediation_run::Entity::find_by_id(run.id)
                .one(&app.db)
                .await
                .unwrap()
                .is_some_and(|r| r.status == RemediationRunStatus::Succeeded)
        })
        .await;
        assert!(
            done.is_some(),
            "run did not finish: {:?}",
            steps_of(&app.db, run.id).await
        );

        let versions = app.dev.aws.secret_versions(secret);
        let current = versions
            .iter()
            .find(|v| v.stages.contains(&"AWSCURRENT".into()))
            .unwrap();
        assert_eq!(current.version_id, run.id.to_string());
        let new_key = key_in(current);
        assert_ne!(new_key, key);
        let new_works = eventually(Duration::from_secs(3), || async {
            app.proxy_get("/demo/x", Some(&new_key)).await.status() == StatusCode::OK
        })
        .await;
        assert!(new_works.is_some(), "the rotated key does not work");
        let notified =
            eventually(Duration::from_secs(5), || async {
                app.dev.aws.published().iter().any(|m| {
                    m.attributes.get("event_type").map(String::as_str) == Some("key_leaked")
                })
            })
            .await;
        assert!(notified.is_some());
        let leaked = app
            .dev
            .aws
            .published()
            .into_iter()
            .find(|m| m.attributes["event_type"] == "key_leaked")
            .unwrap();
        assert_eq!(leaked.attributes["severity"], "critical");
        assert!(!leaked.message.contains(&new_key), "never publish a secret");
        app.stop().await.drop_database().await;
    })
    .await;
}

#[tokio::test]
async fn a_key_leaked_event_from_the_webhook_revokes_and_rotates_the_key() {
    for_each_backend(|db| async move {
        let (fixture, engine) = Fixture::with_builtin_playbooks(db).await;
        let principal = fixture.principal().await;
        let (key_id, key) = fixture.key(principal).await;
        fixture.managed_secret("consumer/leaky", key_id, &key).await;
        // What `POST /webhooks/sns` writes for a secret scanner's "credential leaked" message.
        insert_event(
            &fixture.db,
            "key_leaked",
            Severity::Critical,
            Some(principal),
            Some(key_id),
            None,
        )
        .await;

        triggers::process_security_events(&engine).await.unwrap();
        worker::work_until_idle(&engine, Duration::from_secs(10))
            .await
            .unwrap();

        let all = runs(&fixture.db).await;
        assert_eq!(all.len(), 1);
        assert_eq!(
            all[0].status,
            RemediationRunStatus::Succeeded,
            "{:?}",
            all[0].error
        );
        let actions: Vec<_> = steps_of(&fixture.db, all[0].id)
            .await
            .into_iter()
            .map(|s| s.action)
            .collect();
        assert_eq!(
            actions,
            [
                "revoke_key",
                "rotate_secret:create",
                "rotate_secret:set",
                "rotate_secret:test",
                "rotate_secret:finish",
                "notify"
            ]
        );
        let old = api_key::Entity::find_by_id(key_id)
            .one(&fixture.db)
            .await
            .unwrap()
            .unwrap();
        assert!(old.revoked_at.is_some());
        let versions = fixture.aws.secret_versions("consumer/leaky");
        assert_eq!(versions.last().unwrap().stages, ["AWSCURRENT"]);
        fixture.drop().await;
    })
    .await;
}

#[tokio::test]
async fn custom_playbooks_revoke_bindings_and_grants_through_the_change_feed() {
    let fixture = Fixture::new(migration::testing::TestDatabase::sqlite().await).await;
    let engine = fixture.engine(fast_config()).await;
    let principal = fixture.principal().await;
    let (role_id, _) = insert_binding(&fixture.db, principal).await;
    let now = Utc::now();
    remediation_playbook::ActiveModel {
        id: Set(Uuid::now_v7()),
        name: Set("lock-out".into()),
        description: Set(String::new()),
        enabled: Set(true),
        dry_run: Set(false),
        builtin: Set(false),
        trigger: Set(json!({ "kind": "security_event", "event_kinds": ["cloudwatch_alarm"], "min_severity": "high",
                             "detail": { "alarm_name": "payments-*", "new_state": "ALARM" } })),
        // The grant holder must not be spared by diagnosis here.
        diagnose: Set(json!({ "suppress_if_incident_grant": false })),
        actions: Set(json!([{ "action": "revoke_bindings", "role_id": role_id }, { "action": "revoke_grants" }])),
        notify: Set(json!({ "event_type": "principal_locked_out", "severity": "critical" })),
        created_at: Set(now),
        updated_at: Set(now),
    }
    .insert(&fixture.db)
    .await
    .unwrap();
    let alarm = |severity, name: &'static str| {
        let db = fixture.db.clone();
        async move {
            let id = insert_event(
                &db,
                "cloudwatch_alarm",
                severity,
                Some(principal),
                None,
                None,
            )
            .await;
            let mut active: security_event::ActiveModel = event(&db, id).await.into();
            active.detail = Set(json!({ "alarm_name": name, "new_state": "ALARM" }));
            active.update(&db).await.unwrap();
        }
    };
    // Below the threshold, or another alarm than the filter's: nothing.
    alarm(Severity::Medium, "payments-5xx").await;
    alarm(Severity::Critical, "search-5xx").await;
    triggers::process_security_events(&engine).await.unwrap();
    assert!(runs(&fixture.db).await.is_empty());

    alarm(Severity::High, "payments-5xx").await;
    triggers::process_security_events(&engine).await.unwrap();
    worker::work_until_idle(&engine, Duration::from_secs(10))
        .await
        .unwrap();

    let all = runs(&fixture.db).await;
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].status, RemediationRunStatus::Succeeded);
    let bindings = entity::role_binding::Entity::find()
        .filter(entity::role_binding::Column::PrincipalId.eq(principal))
        .all(&fixture.db)
        .await
        .unwrap();
    assert!(bindings.is_empty());
    let feed = entity::policy_change::Entity::find()
        .filter(entity::policy_change::Column::EntityKind.eq("role_binding"))
        .all(&fixture.db)
        .await
        .unwrap();
    assert_eq!(feed.len(), 1);
    assert_eq!(feed[0].entity_id, principal.to_string());
    let steps = steps_of(&fixture.db, all[0].id).await;
    assert_eq!(
        steps[1].status,
        RemediationStepStatus::Skipped,
        "no grants to revoke"
    );
    engine.dispatcher().dispatch_once().await.unwrap();
    let published = fixture.aws.published();
    assert_eq!(
        published[0].attributes["event_type"],
        "principal_locked_out"
    );
    assert_eq!(published[0].attributes["severity"], "critical");
    assert_eq!(published[0].attributes["principal"], principal.to_string());
    fixture.drop().await;
}

#[tokio::test]
async fn two_workers_racing_for_the_same_runs_execute_every_step_once() {
    for_each_backend(|db| async move {
        let fixture = Fixture::new(db).await;
        remediation::seed_builtin_playbooks(&fixture.db)
            .await
            .unwrap();
        let first = fixture.engine(fast_config()).await;
        let second = fixture.engine(fast_config()).await;
        for n in 1..=8 {
            insert_event(
                &fixture.db,
                "failed_auth_burst",
                Severity::High,
                None,
                None,
                Some(&format!("198.51.100.{n}")),
            )
            .await;
        }

        let (a, b) = tokio::join!(
            async {
                triggers::process_security_events(&first).await.unwrap();
                worker::work_until_idle(&first, Duration::from_secs(15))
                    .await
                    .unwrap()
            },
            async {
                triggers::process_security_events(&second).await.unwrap();
                worker::work_until_idle(&second, Duration::from_secs(15))
                    .await
                    .unwrap()
            },
        );

        assert_eq!(
            a + b,
            16,
            "8 runs × (block_ip + notify), each executed once"
        );
        let all = runs(&fixture.db).await;
        assert_eq!(all.len(), 8);
        assert!(
            all.iter()
                .all(|r| r.status == RemediationRunStatus::Succeeded)
        );
        for run in &all {
            assert!(
                steps_of(&fixture.db, run.id)
                    .await
                    .iter()
                    .all(|s| s.attempts == 1)
            );
        }
        assert_eq!(
            ip_rule::Entity::find()
                .all(&fixture.db)
                .await
                .unwrap()
                .len(),
            8
        );
        let outbox = entity::notification_outbox::Entity::find()
            .all(&fixture.db)
            .await
            .unwrap();
        assert_eq!(outbox.len(), 8);
        fixture.drop().await;
    })
    .await;
}
