//! The entities agree with the migrated schema on every backend (SQLite always, PostgreSQL when
//! `TEST_DATABASE_URL` is set): rows round-trip, relations resolve, database-assigned ids grow,
//! and unique and foreign-key constraints hold.
#![expect(clippy::expect_used, reason = "tests fail by panicking")]

use chrono::{DateTime, SubsecRound, Utc};
use entity::{
    access_review, access_review_item, api_key, audit_event, group_membership, incident_grant,
    ip_rule, managed_secret, notification_outbox, permission, policy_change, prelude::*, principal,
    rate_limit_override, remediation_playbook, remediation_run, remediation_step, role,
    role_binding, route, security_event, sns_message, usage_counter,
};
use migration::testing::TestDatabase;
use sea_orm::{
    ActiveModelTrait, ActiveValue::Set, ConnectionTrait, DatabaseConnection, DbErr, EntityTrait,
    ModelTrait, QueryFilter, QueryOrder, SqlErr, Statement, prelude::*,
};
use serde_json::json;

/// Now, at the microsecond precision both backends store.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

fn id() -> Uuid {
    Uuid::now_v7()
}

async fn insert_principal(
    conn: &DatabaseConnection,
    kind: PrincipalKind,
    name: &str,
) -> principal::Model {
    principal::ActiveModel {
        id: Set(id()),
        kind: Set(kind),
        name: Set(name.to_owned()),
        display_name: Set(name.to_uppercase()),
        email: Set(None),
        oidc_issuer: Set(None),
        oidc_subject: Set(None),
        oidc_group: Set(None),
        disabled: Set(false),
        metadata: Set(json!({})),
        created_at: Set(now()),
        updated_at: Set(now()),
    }
    .insert(conn)
    .await
    .expect("insert principal")
}

fn api_key_model(principal_id: Uuid, prefix: &str) -> api_key::ActiveModel {
    api_key::ActiveModel {
        id: Set(id()),
        principal_id: Set(principal_id),
        name: Set("ci".to_owned()),
        prefix: Set(prefix.to_owned()),
        hash: Set("ab".repeat(32)),
        environment: Set("live".to_owned()),
        scopes: Set(json!(["orders:read"])),
        expires_at: Set(Some(now())),
        revoked_at: Set(None),
        revoked_reason: Set(None),
        suspended_at: Set(None),
        suspended_reason: Set(None),
        last_used_at: Set(None),
        last_used_ip: Set(Some("2001:db8::1".to_owned())),
        rate_limit_per_minute: Set(Some(600)),
        rate_limit_burst: Set(Some(20)),
        remaining_uses: Set(Some(i64::from(i32::MAX) + 1)),
        refill_amount: Set(Some(100)),
        refill_interval_seconds: Set(Some(3600)),
        last_refill_at: Set(None),
        metadata: Set(json!({"team": "payments"})),
        rotated_from: Set(None),
        created_by: Set(None),
        created_at: Set(now()),
        updated_at: Set(now()),
    }
}

async fn insert_role(conn: &DatabaseConnection, name: &str) -> role::Model {
    role::ActiveModel {
        id: Set(id()),
        name: Set(name.to_owned()),
        description: Set("reads orders".to_owned()),
        builtin: Set(false),
        created_at: Set(now()),
        updated_at: Set(now()),
    }
    .insert(conn)
    .await
    .expect("insert role")
}

fn route_model(name: &str) -> route::ActiveModel {
    route::ActiveModel {
        id: Set(id()),
        name: Set(name.to_owned()),
        host: Set(Some("api.example.com".to_owned())),
        path_prefix: Set("/orders".to_owned()),
        methods: Set(json!(["GET", "POST"])),
        upstream_url: Set("http://127.0.0.1:8082".to_owned()),
        strip_prefix: Set(true),
        auth_methods: Set(json!(["api_key", "oidc"])),
        required_permission: Set(Some("orders:read".to_owned())),
        rate_limit_per_minute: Set(None),
        rate_limit_burst: Set(None),
        upstream_credential_secret_id: Set(None),
        upstream_credential_header: Set(None),
        timeout_ms: Set(Some(30_000)),
        enabled: Set(true),
        created_at: Set(now()),
        updated_at: Set(now()),
    }
}

fn role_binding_model(role_id: Uuid, principal_id: Uuid) -> role_binding::ActiveModel {
    role_binding::ActiveModel {
        id: Set(id()),
        role_id: Set(role_id),
        principal_id: Set(principal_id),
        conditions: Set(json!({"cidrs": ["10.0.0.0/8"]})),
        expires_at: Set(None),
        reason: Set(Some("on-call".to_owned())),
        created_by: Set(None),
        created_at: Set(now()),
    }
}

fn run_model(idempotency_key: &str, playbook_id: Option<Uuid>) -> remediation_run::ActiveModel {
    remediation_run::ActiveModel {
        id: Set(id()),
        playbook_id: Set(playbook_id),
        trigger_kind: Set("security_event".to_owned()),
        trigger_ref: Set(None),
        idempotency_key: Set(idempotency_key.to_owned()),
        status: Set(RemediationRunStatus::Running),
        dry_run: Set(false),
        context: Set(json!({"ip": "203.0.113.7"})),
        error: Set(None),
        attempts: Set(1),
        next_attempt_at: Set(None),
        created_at: Set(now()),
        updated_at: Set(now()),
        finished_at: Set(None),
    }
}

fn step_model(run_id: Uuid, seq: i32, action: &str) -> remediation_step::ActiveModel {
    remediation_step::ActiveModel {
        id: Set(id()),
        run_id: Set(run_id),
        seq: Set(seq),
        action: Set(action.to_owned()),
        params: Set(json!({})),
        status: Set(RemediationStepStatus::Pending),
        attempts: Set(0),
        last_error: Set(None),
        output: Set(None),
        next_attempt_at: Set(None),
        started_at: Set(None),
        finished_at: Set(None),
        created_at: Set(now()),
    }
}

fn outbox_model(dedup_id: &str) -> notification_outbox::ActiveModel {
    notification_outbox::ActiveModel {
        id: sea_orm::ActiveValue::NotSet,
        topic_arn: Set("arn:aws:sns:eu-west-1:000000000000:portcullis".to_owned()),
        message_group: Set(None),
        dedup_id: Set(dedup_id.to_owned()),
        event_type: Set("key.revoked".to_owned()),
        severity: Set("high".to_owned()),
        principal: Set(None),
        subject: Set("Key revoked".to_owned()),
        message: Set("A leaked key was revoked.".to_owned()),
        attributes: Set(json!({"event_type": "key.revoked"})),
        status: Set(OutboxStatus::Pending),
        attempts: Set(0),
        last_error: Set(None),
        next_attempt_at: Set(now()),
        sns_message_id: Set(None),
        created_at: Set(now()),
        sent_at: Set(None),
    }
}

fn audit_model(prev_hash: &str, hash: &str) -> audit_event::ActiveModel {
    audit_event::ActiveModel {
        id: sea_orm::ActiveValue::NotSet,
        occurred_at: Set(now()),
        kind: Set(AuditEventKind::ProxyRequest),
        request_id: Set(Some("req-1".to_owned())),
        principal_id: Set(Some(id())),
        api_key_id: Set(None),
        grant_id: Set(None),
        client_ip: Set(Some("198.51.100.1".to_owned())),
        method: Set(Some("GET".to_owned())),
        path: Set(Some("/orders/1".to_owned())),
        route_id: Set(None),
        decision: Set(Some(AuditDecision::Deny)),
        reason: Set("no binding grants orders:read".to_owned()),
        status: Set(Some(403)),
        latency_us: Set(Some(1234)),
        detail: Set(json!({"b": 1, "a": [1, 2]})),
        prev_hash: Set(prev_hash.to_owned()),
        hash: Set(hash.to_owned()),
    }
}

/// The first column of the single row `sql` returns, as text.
async fn stored_text(conn: &DatabaseConnection, sql: &str) -> String {
    conn.query_one_raw(Statement::from_string(conn.get_database_backend(), sql))
        .await
        .expect("query")
        .expect("row")
        .try_get_by_index(0)
        .expect("text column")
}

fn sql_err(result: Result<impl std::fmt::Debug, DbErr>) -> SqlErr {
    let err = result.expect_err("the insert should have been rejected");
    err.sql_err()
        .unwrap_or_else(|| panic!("not a constraint violation: {err}"))
}

fn assert_unique_violation(what: &str, result: Result<impl std::fmt::Debug, DbErr>) {
    match sql_err(result) {
        SqlErr::UniqueConstraintViolation(_) => {}
        other => panic!("{what}: expected a unique violation, got {other:?}"),
    }
}

fn assert_foreign_key_violation(what: &str, result: Result<impl std::fmt::Debug, DbErr>) {
    match sql_err(result) {
        SqlErr::ForeignKeyConstraintViolation(_) => {}
        other => panic!("{what}: expected a foreign-key violation, got {other:?}"),
    }
}

#[tokio::test]
async fn every_entity_selects_from_its_table() {
    for db in TestDatabase::all().await {
        let db = db.migrated().await;
        let conn = &db.conn;
        // Selecting lists every column of the model, so a missing or misnamed column fails.
        AccessReview::find().all(conn).await.expect("access_review");
        AccessReviewItem::find()
            .all(conn)
            .await
            .expect("access_review_item");
        ApiKey::find().all(conn).await.expect("api_key");
        AuditEvent::find().all(conn).await.expect("audit_event");
        GroupMembership::find()
            .all(conn)
            .await
            .expect("group_membership");
        IncidentGrant::find()
            .all(conn)
            .await
            .expect("incident_grant");
        IpRule::find().all(conn).await.expect("ip_rule");
        ManagedSecret::find()
            .all(conn)
            .await
            .expect("managed_secret");
        NotificationOutbox::find()
            .all(conn)
            .await
            .expect("notification_outbox");
        Permission::find().all(conn).await.expect("permission");
        PolicyChange::find().all(conn).await.expect("policy_change");
        Principal::find().all(conn).await.expect("principal");
        RateLimitOverride::find()
            .all(conn)
            .await
            .expect("rate_limit_override");
        RemediationPlaybook::find()
            .all(conn)
            .await
            .expect("remediation_playbook");
        RemediationRun::find()
            .all(conn)
            .await
            .expect("remediation_run");
        RemediationStep::find()
            .all(conn)
            .await
            .expect("remediation_step");
        Role::find().all(conn).await.expect("role");
        RoleBinding::find().all(conn).await.expect("role_binding");
        Route::find().all(conn).await.expect("route");
        SecurityEvent::find()
            .all(conn)
            .await
            .expect("security_event");
        SnsMessage::find().all(conn).await.expect("sns_message");
        UsageCounter::find().all(conn).await.expect("usage_counter");
        db.drop_database().await;
    }
}

#[tokio::test]
async fn a_row_graph_round_trips_through_the_entities() {
    for db in TestDatabase::all().await {
        let db = db.migrated().await;
        let backend = db.backend;
        let conn = &db.conn;

        // Arrange + Act: identities, a membership and a key.
        let user = insert_principal(conn, PrincipalKind::User, "alice").await;
        let group = insert_principal(conn, PrincipalKind::Group, "sre").await;
        let service = insert_principal(conn, PrincipalKind::ServiceAccount, "billing").await;
        group_membership::ActiveModel {
            group_id: Set(group.id),
            member_id: Set(user.id),
            created_at: Set(now()),
        }
        .insert(conn)
        .await
        .expect("insert membership");
        let key = api_key_model(service.id, "pk_live_AbC123xyz789")
            .insert(conn)
            .await
            .expect("insert api key");

        // RBAC and routing.
        let route = route_model("orders")
            .insert(conn)
            .await
            .expect("insert route");
        let role = insert_role(conn, "orders-reader").await;
        let permission = permission::ActiveModel {
            id: Set(id()),
            role_id: Set(role.id),
            name: Set("orders:read".to_owned()),
            methods: Set(json!(["GET"])),
            path_glob: Set("/orders/**".to_owned()),
            route_id: Set(Some(route.id)),
            created_at: Set(now()),
        }
        .insert(conn)
        .await
        .expect("insert permission");
        let binding = role_binding_model(role.id, group.id)
            .insert(conn)
            .await
            .expect("insert binding");
        let rule = ip_rule::ActiveModel {
            id: Set(id()),
            route_id: Set(Some(route.id)),
            cidr: Set("203.0.113.0/24".to_owned()),
            action: Set(IpRuleAction::Deny),
            expires_at: Set(Some(now())),
            reason: Set("brute force".to_owned()),
            source: Set(IpRuleSource::Remediation),
            created_by: Set(Some("remediation:1".to_owned())),
            created_at: Set(now()),
        }
        .insert(conn)
        .await
        .expect("insert ip rule");

        // Feeds with database-assigned ids.
        let mut change_ids = Vec::new();
        for (kind, op) in [
            ("api_key", PolicyChangeOp::Upsert),
            ("route", PolicyChangeOp::Upsert),
            ("role_binding", PolicyChangeOp::Delete),
        ] {
            let change = policy_change::ActiveModel {
                id: sea_orm::ActiveValue::NotSet,
                entity_kind: Set(kind.to_owned()),
                entity_id: Set(key.id.to_string()),
                op: Set(op),
                created_at: Set(now()),
            }
            .insert(conn)
            .await
            .expect("insert policy change");
            change_ids.push(change.id);
        }
        let mut audit_ids = Vec::new();
        let mut prev = "genesis".to_owned();
        for n in 0..3 {
            let hash = format!("hash-{n}");
            let event = audit_model(&prev, &hash)
                .insert(conn)
                .await
                .expect("insert audit");
            audit_ids.push(event.id);
            prev = hash;
        }

        // Remediation and notification.
        let playbook = remediation_playbook::ActiveModel {
            id: Set(id()),
            name: Set("brute-force".to_owned()),
            description: Set("Blocks the IP".to_owned()),
            enabled: Set(true),
            dry_run: Set(false),
            builtin: Set(true),
            trigger: Set(json!({"security_event": "failed_auth_burst"})),
            diagnose: Set(json!({})),
            actions: Set(json!([{"action": "block_ip", "minutes": 60}])),
            notify: Set(json!({"severity": "high"})),
            created_at: Set(now()),
            updated_at: Set(now()),
        }
        .insert(conn)
        .await
        .expect("insert playbook");
        let run = run_model("security_event:1", Some(playbook.id))
            .insert(conn)
            .await
            .expect("insert run");
        let mut steps = Vec::new();
        for (seq, action) in [(0, "block_ip"), (1, "notify")] {
            steps.push(
                step_model(run.id, seq, action)
                    .insert(conn)
                    .await
                    .expect("insert step"),
            );
        }
        let outbox = outbox_model("run-1:notify")
            .insert(conn)
            .await
            .expect("insert outbox");

        // Assert: rows read back equal what was written.
        assert_eq!(
            Principal::find_by_id(user.id)
                .one(conn)
                .await
                .expect("select"),
            Some(user.clone())
        );
        assert_eq!(
            ApiKey::find_by_id(key.id).one(conn).await.expect("select"),
            Some(key.clone())
        );
        assert_eq!(
            Route::find_by_id(route.id).one(conn).await.expect("select"),
            Some(route.clone())
        );
        assert_eq!(
            Permission::find_by_id(permission.id)
                .one(conn)
                .await
                .expect("select"),
            Some(permission.clone())
        );
        assert_eq!(
            RoleBinding::find_by_id(binding.id)
                .one(conn)
                .await
                .expect("select"),
            Some(binding.clone())
        );
        assert_eq!(
            IpRule::find_by_id(rule.id).one(conn).await.expect("select"),
            Some(rule)
        );
        assert_eq!(
            NotificationOutbox::find_by_id(outbox.id)
                .one(conn)
                .await
                .expect("select"),
            Some(outbox)
        );
        assert!(
            change_ids.windows(2).all(|w| w[0] < w[1]),
            "{backend:?}: policy_change ids must strictly increase: {change_ids:?}"
        );
        assert!(
            audit_ids.windows(2).all(|w| w[0] < w[1]),
            "{backend:?}: audit_event ids must increase: {audit_ids:?}"
        );
        let feed = PolicyChange::find()
            .filter(policy_change::Column::Id.gt(change_ids[0]))
            .order_by_asc(policy_change::Column::Id)
            .all(conn)
            .await
            .expect("poll feed");
        assert_eq!(
            feed.iter().map(|c| c.id).collect::<Vec<_>>(),
            change_ids[1..],
            "{backend:?}: polling after an id returns the later changes"
        );

        // Enumerations are stored as their snake_case text.
        assert_eq!(
            stored_text(conn, "SELECT kind FROM principal WHERE name = 'billing'").await,
            "service_account"
        );
        assert_eq!(
            stored_text(conn, "SELECT status FROM remediation_run").await,
            "running"
        );

        // Relations resolve in both directions.
        let members = group
            .find_linked(principal::GroupToMembers)
            .all(conn)
            .await
            .expect("members");
        assert_eq!(members, vec![user.clone()]);
        let groups = user
            .find_linked(principal::MemberToGroups)
            .all(conn)
            .await
            .expect("groups");
        assert_eq!(groups, vec![group.clone()]);
        assert_eq!(
            key.find_related(Principal).one(conn).await.expect("owner"),
            Some(service.clone())
        );
        assert_eq!(
            role.find_related(Permission)
                .all(conn)
                .await
                .expect("permissions"),
            vec![permission.clone()]
        );
        assert_eq!(
            group
                .find_related(RoleBinding)
                .all(conn)
                .await
                .expect("bindings"),
            vec![binding]
        );
        let loaded_steps = run
            .find_related(RemediationStep)
            .order_by_asc(remediation_step::Column::Seq)
            .all(conn)
            .await
            .expect("steps");
        assert_eq!(loaded_steps, steps);

        // ON DELETE: owned children cascade, references are nulled.
        let rotated = api_key::ActiveModel {
            rotated_from: Set(Some(key.id)),
            ..api_key_model(service.id, "pk_live_rotated00001")
        }
        .insert(conn)
        .await
        .expect("insert rotated key");
        key.clone().delete(conn).await.expect("delete old key");
        let rotated = ApiKey::find_by_id(rotated.id)
            .one(conn)
            .await
            .expect("select")
            .expect("rotated key survives");
        assert_eq!(
            rotated.rotated_from, None,
            "{backend:?}: rotated_from SET NULL"
        );
        playbook.delete(conn).await.expect("delete playbook");
        let run = RemediationRun::find_by_id(run.id)
            .one(conn)
            .await
            .expect("select")
            .expect("run survives its playbook");
        assert_eq!(run.playbook_id, None, "{backend:?}: playbook_id SET NULL");
        run.delete(conn).await.expect("delete run");
        assert!(
            RemediationStep::find()
                .all(conn)
                .await
                .expect("steps")
                .is_empty(),
            "{backend:?}: steps cascade with their run"
        );
        service.delete(conn).await.expect("delete service account");
        assert!(
            ApiKey::find().all(conn).await.expect("keys").is_empty(),
            "{backend:?}: keys cascade with their principal"
        );
        group.delete(conn).await.expect("delete group");
        assert!(
            GroupMembership::find()
                .all(conn)
                .await
                .expect("memberships")
                .is_empty(),
            "{backend:?}: memberships cascade with their group"
        );
        assert!(
            RoleBinding::find()
                .all(conn)
                .await
                .expect("bindings")
                .is_empty(),
            "{backend:?}: bindings cascade with their principal"
        );

        db.drop_database().await;
    }
}

#[tokio::test]
async fn the_remaining_tables_round_trip() {
    for db in TestDatabase::all().await {
        let db = db.migrated().await;
        let conn = &db.conn;
        let requester = insert_principal(conn, PrincipalKind::User, "bob").await;
        let approver = insert_principal(conn, PrincipalKind::User, "carol").await;
        let role = insert_role(conn, "incident-responder").await;
        let route = route_model("billing").insert(conn).await.expect("route");
        let key = api_key_model(requester.id, "pk_test_remaining0001")
            .insert(conn)
            .await
            .expect("key");

        let review = access_review::ActiveModel {
            id: Set(id()),
            name: Set("Q4".to_owned()),
            scope: Set(json!({"roles": [role.id]})),
            status: Set(AccessReviewStatus::Open),
            deadline: Set(now()),
            default_action: Set(ReviewDecision::Revoke),
            dormant_days: Set(90),
            created_by: Set(Some(approver.id)),
            created_at: Set(now()),
            closed_at: Set(None),
        }
        .insert(conn)
        .await
        .expect("review");
        let item = access_review_item::ActiveModel {
            id: Set(id()),
            review_id: Set(review.id),
            subject_kind: Set(ReviewSubjectKind::ApiKey),
            subject_id: Set(key.id),
            principal_id: Set(requester.id),
            flags: Set(json!(["dormant"])),
            reviewer_id: Set(Some(approver.id)),
            decision: Set(Some(ReviewDecision::Keep)),
            decided_by: Set(Some(approver.id)),
            decided_at: Set(Some(now())),
            note: Set(None),
            applied_at: Set(None),
            created_at: Set(now()),
        }
        .insert(conn)
        .await
        .expect("item");
        let grant = incident_grant::ActiveModel {
            id: Set(id()),
            incident_id: Set("INC-1".to_owned()),
            requester_id: Set(requester.id),
            approver_id: Set(Some(approver.id)),
            justification: Set("db on fire".to_owned()),
            role_id: Set(Some(role.id)),
            permissions: Set(
                json!([{"name": "orders:write", "methods": ["POST"], "path_glob": "/orders/**"}]),
            ),
            duration_seconds: Set(3600),
            status: Set(IncidentGrantStatus::Approved),
            break_glass: Set(false),
            token_prefix: Set(Some("pg_AbC".to_owned())),
            token_hash: Set(Some("cd".repeat(32))),
            requested_at: Set(now()),
            decided_at: Set(Some(now())),
            expires_at: Set(Some(now())),
            revoked_at: Set(None),
            revoked_reason: Set(None),
            follow_up_review_id: Set(Some(review.id)),
            created_at: Set(now()),
            updated_at: Set(now()),
        }
        .insert(conn)
        .await
        .expect("grant");
        let over = rate_limit_override::ActiveModel {
            id: Set(id()),
            principal_id: Set(Some(requester.id)),
            api_key_id: Set(Some(key.id)),
            route_id: Set(Some(route.id)),
            per_minute: Set(10),
            burst: Set(2),
            reason: Set("spike".to_owned()),
            expires_at: Set(now()),
            created_by: Set(None),
            created_at: Set(now()),
        }
        .insert(conn)
        .await
        .expect("override");
        let event = security_event::ActiveModel {
            id: Set(id()),
            kind: Set("failed_auth_burst".to_owned()),
            severity: Set(Severity::Critical),
            occurred_at: Set(now()),
            principal_id: Set(None),
            api_key_id: Set(Some(key.id)),
            client_ip: Set(Some("203.0.113.7".to_owned())),
            route_id: Set(None),
            fingerprint: Set("failed_auth_burst:203.0.113.7".to_owned()),
            detail: Set(json!({"count": 50})),
            status: Set(SecurityEventStatus::New),
            handled_by_run_id: Set(None),
            created_at: Set(now()),
        }
        .insert(conn)
        .await
        .expect("security event");
        let counter = usage_counter::ActiveModel {
            id: Set(id()),
            scope_key: Set(format!("key:{}", key.id)),
            principal_id: Set(requester.id),
            api_key_id: Set(Some(key.id)),
            permission_id: Set(None),
            route_id: Set(Some(route.id)),
            request_count: Set(1),
            first_used_at: Set(now()),
            last_used_at: Set(now()),
        }
        .insert(conn)
        .await
        .expect("usage counter");
        let secret = managed_secret::ActiveModel {
            id: Set(id()),
            secret_id: Set("arn:aws:secretsmanager:eu-west-1:000000000000:secret:x".to_owned()),
            kind: Set(ManagedSecretKind::UpstreamCredential),
            api_key_id: Set(Some(key.id)),
            route_id: Set(Some(route.id)),
            rotation_interval_days: Set(Some(30)),
            last_rotated_at: Set(None),
            created_at: Set(now()),
            updated_at: Set(now()),
        }
        .insert(conn)
        .await
        .expect("managed secret");
        let message = sns_message::ActiveModel {
            message_id: Set("8f6a-1".to_owned()),
            topic_arn: Set("arn:aws:sns:eu-west-1:000000000000:alerts".to_owned()),
            message_type: Set("Notification".to_owned()),
            received_at: Set(now()),
        }
        .insert(conn)
        .await
        .expect("sns message");

        assert_eq!(
            AccessReviewItem::find_by_id(item.id)
                .one(conn)
                .await
                .expect("select"),
            Some(item)
        );
        assert_eq!(
            IncidentGrant::find_by_id(grant.id)
                .one(conn)
                .await
                .expect("select"),
            Some(grant.clone())
        );
        assert_eq!(
            RateLimitOverride::find_by_id(over.id)
                .one(conn)
                .await
                .expect("select"),
            Some(over)
        );
        assert_eq!(
            SecurityEvent::find_by_id(event.id)
                .one(conn)
                .await
                .expect("select"),
            Some(event)
        );
        assert_eq!(
            UsageCounter::find_by_id(counter.id)
                .one(conn)
                .await
                .expect("select"),
            Some(counter)
        );
        assert_eq!(
            ManagedSecret::find_by_id(secret.id)
                .one(conn)
                .await
                .expect("select"),
            Some(secret.clone())
        );
        assert_eq!(
            SnsMessage::find_by_id(message.message_id.clone())
                .one(conn)
                .await
                .expect("select"),
            Some(message.clone())
        );
        assert_unique_violation(
            "sns_message.message_id",
            sns_message::ActiveModel::from(message).insert(conn).await,
        );

        // Deleting the approver, role and review keeps the grant with nulled references;
        // deleting the key keeps its secret record.
        approver.delete(conn).await.expect("delete approver");
        role.delete(conn).await.expect("delete role");
        review.delete(conn).await.expect("delete review");
        key.delete(conn).await.expect("delete key");
        let grant = IncidentGrant::find_by_id(grant.id)
            .one(conn)
            .await
            .expect("select")
            .expect("grant survives");
        assert_eq!(
            (grant.approver_id, grant.role_id, grant.follow_up_review_id),
            (None, None, None)
        );
        let secret = ManagedSecret::find_by_id(secret.id)
            .one(conn)
            .await
            .expect("select")
            .expect("secret survives");
        assert_eq!(secret.api_key_id, None);
        assert!(
            AccessReviewItem::find()
                .all(conn)
                .await
                .expect("items")
                .is_empty()
        );
        assert!(
            RateLimitOverride::find()
                .all(conn)
                .await
                .expect("overrides")
                .is_empty()
        );

        db.drop_database().await;
    }
}

#[tokio::test]
async fn unique_keys_reject_duplicates() {
    for db in TestDatabase::all().await {
        let db = db.migrated().await;
        let conn = &db.conn;
        let owner = insert_principal(conn, PrincipalKind::ServiceAccount, "svc").await;

        api_key_model(owner.id, "pk_live_dup")
            .insert(conn)
            .await
            .expect("first key");
        assert_unique_violation(
            "api_key.prefix",
            api_key_model(owner.id, "pk_live_dup").insert(conn).await,
        );

        // Same name under another kind is fine; under the same kind it is not.
        insert_principal(conn, PrincipalKind::Group, "svc").await;
        assert_unique_violation(
            "principal (kind, name)",
            principal::ActiveModel {
                id: Set(id()),
                ..principal::ActiveModel::from(owner.clone())
            }
            .insert(conn)
            .await,
        );

        insert_role(conn, "dup").await;
        assert_unique_violation(
            "role.name",
            role::ActiveModel {
                id: Set(id()),
                name: Set("dup".to_owned()),
                description: Set(String::new()),
                builtin: Set(false),
                created_at: Set(now()),
                updated_at: Set(now()),
            }
            .insert(conn)
            .await,
        );

        route_model("dup").insert(conn).await.expect("first route");
        assert_unique_violation("route.name", route_model("dup").insert(conn).await);

        let run = run_model("dup", None)
            .insert(conn)
            .await
            .expect("first run");
        assert_unique_violation(
            "remediation_run.idempotency_key",
            run_model("dup", None).insert(conn).await,
        );
        step_model(run.id, 0, "a")
            .insert(conn)
            .await
            .expect("first step");
        assert_unique_violation(
            "remediation_step (run_id, seq)",
            step_model(run.id, 0, "b").insert(conn).await,
        );

        outbox_model("dup")
            .insert(conn)
            .await
            .expect("first outbox row");
        assert_unique_violation(
            "notification_outbox.dedup_id",
            outbox_model("dup").insert(conn).await,
        );

        // `audit_event.hash` is deliberately not unique (migration 8): the chain is checked by
        // walking the `prev_hash` links, not by an index.

        db.drop_database().await;
    }
}

#[tokio::test]
async fn foreign_keys_are_enforced_on_every_backend() {
    for db in TestDatabase::all().await {
        let db = db.migrated().await;
        let conn = &db.conn;
        let user = insert_principal(conn, PrincipalKind::User, "dave").await;

        assert_foreign_key_violation(
            "role_binding.role_id",
            role_binding_model(id(), user.id).insert(conn).await,
        );
        assert_foreign_key_violation(
            "api_key.principal_id",
            api_key_model(id(), "pk_live_orphan").insert(conn).await,
        );
        assert_foreign_key_violation(
            "remediation_step.run_id",
            step_model(id(), 0, "orphan").insert(conn).await,
        );

        db.drop_database().await;
    }
}
