//! The Portcullis database schema as SeaORM migrations, and the one place the application opens
//! the database ([`connect`]).
//!
//! Migrations run unchanged on SQLite and PostgreSQL. Each is a file named
//! `mYYYYMMDD_NNNNNN_name.rs` and is NEVER EDITED ONCE LANDED: change the schema with a new
//! migration. They do not depend on the `entity` crate, so later entity changes cannot rewrite
//! history; `entity/tests/roundtrip.rs` checks that both agree on every backend.
//!
//! Conventions: enumerated columns are `varchar(32)` text (no native PostgreSQL enums, so
//! adding a variant needs no migration); unique constraints are unique indexes named
//! `uq_<table>_<cols>`, other indexes `idx_<table>_<cols>`, foreign keys `fk_<table>_<col>`.
//!
//! With the `test-util` feature, `migration::testing` creates throw-away migrated databases.

use std::time::Duration;

use sea_orm::{ConnectOptions, Database, DatabaseConnection, DbErr};
pub use sea_orm_migration::MigratorTrait;

/// PostgreSQL channel notified after every insert into `policy_change`.
pub const POLICY_CHANGE_CHANNEL: &str = m20261122_000007_policy_change_notify::CHANNEL;
use sea_orm_migration::{
    MigrationTrait,
    sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous},
};

mod m20261122_000001_identity_and_keys;
mod m20261122_000002_routes_ip_rules_and_policy_feed;
mod m20261122_000003_roles_and_bindings;
mod m20261122_000004_audit_security_and_usage;
mod m20261122_000005_reviews_and_grants;
mod m20261122_000006_remediation_outbox_and_sns;
mod m20261122_000007_policy_change_notify;
mod m20261122_000008_audit_hash_not_indexed;
#[cfg(feature = "test-util")]
pub mod testing;
mod util;

/// Every migration, in order. Apply with `Migrator::up(&conn, None)` ([`MigratorTrait`]).
#[derive(Debug, Clone, Copy)]
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(m20261122_000001_identity_and_keys::Migration),
            Box::new(m20261122_000002_routes_ip_rules_and_policy_feed::Migration),
            Box::new(m20261122_000003_roles_and_bindings::Migration),
            Box::new(m20261122_000004_audit_security_and_usage::Migration),
            Box::new(m20261122_000005_reviews_and_grants::Migration),
            Box::new(m20261122_000006_remediation_outbox_and_sns::Migration),
            Box::new(m20261122_000007_policy_change_notify::Migration),
            Box::new(m20261122_000008_audit_hash_not_indexed::Migration),
        ]
    }
}

/// How long a PostgreSQL connection attempt (or a wait for a pooled one) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a SQLite statement waits for another connection's write lock.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Pool size for PostgreSQL.
const POSTGRES_MAX_CONNECTIONS: u32 = 10;

/// Opens a connection pool to `url` (`sqlite:...` or `postgres://...`), configured the way
/// Portcullis needs it. Does not run migrations.
///
/// * SQLite: the file is created if missing (unless the URL sets its own `mode=`; its directory
///   must exist), WAL journal, `foreign_keys=ON`, `busy_timeout` 5 s, `synchronous=NORMAL`.
///   The pool holds ONE connection, kept open forever: SQLite allows a single writer, and with
///   several connections a deferred transaction that reads and then writes fails with
///   `SQLITE_BUSY` (no busy wait) when another connection wrote in between. One connection
///   also keeps a `sqlite::memory:` database alive.
/// * PostgreSQL: at most 10 connections, 5 s connect timeout.
///
/// Statement logging by sqlx is off: Portcullis logs (and redacts) its own queries.
///
/// # Errors
/// [`DbErr::Conn`] when the URL is invalid or the database cannot be reached.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(url);
    options.sqlx_logging(false);
    if url.starts_with("sqlite:") {
        let create_if_missing = !url.contains("mode=");
        options
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .map_sqlx_sqlite_opts(move |opts| {
                let opts = if create_if_missing {
                    opts.create_if_missing(true)
                } else {
                    opts
                };
                opts.journal_mode(SqliteJournalMode::Wal)
                    .foreign_keys(true)
                    .busy_timeout(SQLITE_BUSY_TIMEOUT)
                    .synchronous(SqliteSynchronous::Normal)
                    // Statement journals (multi-row inserts inside a transaction, as the audit
                    // writer does) in memory instead of a temp file created and deleted each time.
                    .pragma("temp_store", "memory")
            });
    } else {
        options
            .max_connections(POSTGRES_MAX_CONNECTIONS)
            .connect_timeout(CONNECT_TIMEOUT);
    }
    Database::connect(options).await
}
