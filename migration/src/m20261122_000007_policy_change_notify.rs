//! PostgreSQL only: every insert into `policy_change` sends `NOTIFY portcullis_policy_change`
//! (delivered at commit), so proxies that LISTEN apply a revocation at once instead of at their
//! next poll. A trigger rather than application code, so that every writer (API, remediation,
//! a DBA's manual fix) notifies. SQLite has no LISTEN/NOTIFY: a no-op there; polling covers it.

use sea_orm_migration::{prelude::*, sea_orm::DatabaseBackend};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

/// The channel proxies listen on.
pub const CHANNEL: &str = "portcullis_policy_change";

#[expect(
    elided_lifetimes_in_paths,
    reason = "must match the MigrationTrait signature exactly"
)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DatabaseBackend::Postgres {
            return Ok(());
        }
        let db = manager.get_connection();
        db.execute_unprepared(
            "CREATE FUNCTION portcullis_notify_policy_change() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN PERFORM pg_notify('portcullis_policy_change', ''); RETURN NULL; END $$",
        )
        .await?;
        db.execute_unprepared(
            "CREATE TRIGGER trg_policy_change_notify AFTER INSERT ON policy_change \
             FOR EACH STATEMENT EXECUTE FUNCTION portcullis_notify_policy_change()",
        )
        .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        if manager.get_database_backend() != DatabaseBackend::Postgres {
            return Ok(());
        }
        let db = manager.get_connection();
        db.execute_unprepared("DROP TRIGGER IF EXISTS trg_policy_change_notify ON policy_change")
            .await?;
        db.execute_unprepared("DROP FUNCTION IF EXISTS portcullis_notify_policy_change()")
            .await?;
        Ok(())
    }
}
