//! The migrations apply, roll back and re-apply cleanly on every backend: SQLite always,
//! PostgreSQL when `TEST_DATABASE_URL` is set.
//!
//! Row-level checks through the entities (foreign keys, unique constraints, auto-increment ids)
//! live in `entity/tests/roundtrip.rs`, which can depend on both crates.
#![cfg(feature = "test-util")]
#![expect(clippy::expect_used, reason = "tests fail by panicking")]

use std::collections::BTreeSet;

use migration::{
    Migrator, MigratorTrait,
    testing::{Backend, TestDatabase},
};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};

/// Every table the migrations create.
const TABLES: [&str; 22] = [
    "access_review",
    "access_review_item",
    "api_key",
    "audit_event",
    "group_membership",
    "incident_grant",
    "ip_rule",
    "managed_secret",
    "notification_outbox",
    "permission",
    "policy_change",
    "principal",
    "rate_limit_override",
    "remediation_playbook",
    "remediation_run",
    "remediation_step",
    "role",
    "role_binding",
    "route",
    "security_event",
    "sns_message",
    "usage_counter",
];

/// sea-orm-migration's bookkeeping table, which `down` leaves in place.
const BOOKKEEPING: &str = "seaql_migrations";

/// Named unique indexes the application relies on to detect conflicts.
const UNIQUE_INDEXES: [&str; 13] = [
    "uq_principal_kind_name",
    "uq_principal_oidc_issuer_oidc_subject",
    "uq_api_key_prefix",
    "uq_route_name",
    "uq_role_name",
    "uq_usage_counter_scope_key",
    "uq_access_review_item_review_id_subject_kind_subject_id",
    "uq_incident_grant_token_prefix",
    "uq_remediation_playbook_name",
    "uq_remediation_run_idempotency_key",
    "uq_remediation_step_run_id_seq",
    "uq_managed_secret_secret_id",
    "uq_notification_outbox_dedup_id",
];

async fn names(conn: &DatabaseConnection, sql: &str) -> BTreeSet<String> {
    conn.query_all_raw(Statement::from_string(conn.get_database_backend(), sql))
        .await
        .expect("catalog query failed")
        .iter()
        .map(|row| row.try_get_by_index::<String>(0).expect("name column"))
        .collect()
}

async fn tables(conn: &DatabaseConnection) -> BTreeSet<String> {
    let sql = match conn.get_database_backend() {
        DbBackend::Sqlite => {
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'"
        }
        _ => "SELECT tablename::text FROM pg_tables WHERE schemaname = current_schema()",
    };
    names(conn, sql).await
}

async fn indexes(conn: &DatabaseConnection) -> BTreeSet<String> {
    let sql = match conn.get_database_backend() {
        DbBackend::Sqlite => "SELECT name FROM sqlite_master WHERE type = 'index'",
        _ => "SELECT indexname::text FROM pg_indexes WHERE schemaname = current_schema()",
    };
    names(conn, sql).await
}

fn expected_tables(with_schema: bool) -> BTreeSet<String> {
    let mut expected: BTreeSet<String> = [BOOKKEEPING].map(String::from).into();
    if with_schema {
        expected.extend(TABLES.map(String::from));
    }
    expected
}

#[tokio::test]
async fn migrations_go_up_down_and_up_again_on_every_backend() {
    for db in TestDatabase::all().await {
        let backend = db.backend;

        Migrator::up(&db.conn, None)
            .await
            .unwrap_or_else(|err| panic!("{backend:?}: first up failed: {err}"));
        assert_eq!(
            tables(&db.conn).await,
            expected_tables(true),
            "{backend:?}: after up"
        );
        let pending = Migrator::get_pending_migrations(&db.conn)
            .await
            .expect("migration status");
        assert!(pending.is_empty(), "{backend:?}: migrations left pending");

        Migrator::down(&db.conn, None)
            .await
            .unwrap_or_else(|err| panic!("{backend:?}: down failed: {err}"));
        assert_eq!(
            tables(&db.conn).await,
            expected_tables(false),
            "{backend:?}: after down only the bookkeeping table may remain"
        );
        let leftover: Vec<_> = indexes(&db.conn)
            .await
            .into_iter()
            .filter(|name| name.starts_with("idx_") || name.starts_with("uq_"))
            .collect();
        assert!(
            leftover.is_empty(),
            "{backend:?}: indexes left after down: {leftover:?}"
        );

        Migrator::up(&db.conn, None)
            .await
            .unwrap_or_else(|err| panic!("{backend:?}: second up failed: {err}"));
        assert_eq!(
            tables(&db.conn).await,
            expected_tables(true),
            "{backend:?}: after up again"
        );

        db.drop_database().await;
    }
}

#[tokio::test]
async fn migrations_step_down_one_at_a_time_on_every_backend() {
    for db in TestDatabase::all().await.into_iter() {
        let db = db.migrated().await;
        let backend = db.backend;
        let count = Migrator::migrations().len();
        for remaining in (0..count).rev() {
            Migrator::down(&db.conn, Some(1))
                .await
                .unwrap_or_else(|err| panic!("{backend:?}: stepping down to {remaining}: {err}"));
            let applied = Migrator::get_applied_migrations(&db.conn)
                .await
                .expect("migration status");
            assert_eq!(applied.len(), remaining, "{backend:?}");
        }
        assert_eq!(
            tables(&db.conn).await,
            expected_tables(false),
            "{backend:?}"
        );
        db.drop_database().await;
    }
}

#[tokio::test]
async fn up_on_a_migrated_database_changes_nothing() {
    for db in TestDatabase::all().await {
        let db = db.migrated().await;
        Migrator::up(&db.conn, None)
            .await
            .unwrap_or_else(|err| panic!("{:?}: repeated up failed: {err}", db.backend));
        assert_eq!(tables(&db.conn).await, expected_tables(true));
        db.drop_database().await;
    }
}

#[tokio::test]
async fn unique_indexes_are_created_under_their_names() {
    for db in TestDatabase::all().await {
        let db = db.migrated().await;
        let present = indexes(&db.conn).await;
        for name in UNIQUE_INDEXES {
            assert!(present.contains(name), "{:?}: {name} missing", db.backend);
        }
        // Dropped by migration 8 (a random-value index cost a page write per audit row).
        assert!(!present.contains("uq_audit_event_hash"), "{:?}", db.backend);
        db.drop_database().await;
    }
}

#[tokio::test]
async fn sqlite_connections_enforce_foreign_keys_and_use_wal() {
    let db = TestDatabase::sqlite().await;
    assert_eq!(db.backend, Backend::Sqlite);
    let pragma = |name: &'static str| {
        let conn = db.conn.clone();
        async move {
            conn.query_one_raw(Statement::from_string(
                DbBackend::Sqlite,
                format!("PRAGMA {name}"),
            ))
            .await
            .expect("pragma query")
            .expect("pragma row")
        }
    };
    let foreign_keys: i64 = pragma("foreign_keys")
        .await
        .try_get_by_index(0)
        .expect("int");
    assert_eq!(foreign_keys, 1);
    let journal: String = pragma("journal_mode")
        .await
        .try_get_by_index(0)
        .expect("text");
    assert_eq!(journal, "wal");
    let synchronous: i64 = pragma("synchronous")
        .await
        .try_get_by_index(0)
        .expect("int");
    assert_eq!(synchronous, 1, "NORMAL");
    let busy_timeout: i64 = pragma("busy_timeout")
        .await
        .try_get_by_index(0)
        .expect("int");
    assert_eq!(busy_timeout, 5000);
}
