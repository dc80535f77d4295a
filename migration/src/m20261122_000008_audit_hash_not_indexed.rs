//! Drops the unique index on `audit_event.hash`.
//!
//! Every proxied request appends an audit row, and the hash is random: each insert wrote a
//! different leaf page of that index (about one extra write-ahead-log page per row on SQLite,
//! measured), on the proxy's own core. Nothing looks rows up by hash, and the chain's
//! integrity does not come from the index: verification walks the rows by id and checks that
//! each `prev_hash` is the previous row's `hash`, which also exposes a fork or a copied row.

use sea_orm_migration::prelude::*;

use crate::util::{create_indexes, unique};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

#[derive(DeriveIden)]
enum AuditEvent {
    Table,
    Hash,
}

const INDEX: &str = "uq_audit_event_hash";

#[expect(
    elided_lifetimes_in_paths,
    reason = "must match the MigrationTrait signature exactly"
)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name(INDEX)
                    .table(AuditEvent::Table)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        create_indexes(
            manager,
            [unique(INDEX, AuditEvent::Table, [AuditEvent::Hash])],
        )
        .await
    }
}
