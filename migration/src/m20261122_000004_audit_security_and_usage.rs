//! Evidence: the hash-chained `audit_event` log, detector `security_event`s and
//! `usage_counter`s. None of them has a foreign key: they must outlive what they describe.

use sea_orm_migration::{prelude::*, schema::*};

use crate::util::{create_indexes, drop_tables, index, unique};

#[derive(DeriveMigrationName)]
pub(crate) struct Migration;

// `MigrationTrait` takes `&SchemaManager` with an elided lifetime; spelling it `<'_>` here makes
// the lifetime early-bound in the `async_trait` expansion and the impl no longer matches.
#[expect(
    elided_lifetimes_in_paths,
    reason = "must match the MigrationTrait signature exactly"
)]
#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        // `id` is the chain order; see the note on `policy_change.id` in migration 000002.
        manager
            .create_table(
                Table::create()
                    .table(AuditEvent::Table)
                    .col(big_pk_auto(AuditEvent::Id))
                    .col(timestamp_with_time_zone(AuditEvent::OccurredAt))
                    .col(string_len(AuditEvent::Kind, 32))
                    .col(string_null(AuditEvent::RequestId))
                    .col(uuid_null(AuditEvent::PrincipalId))
                    .col(uuid_null(AuditEvent::ApiKeyId))
                    .col(uuid_null(AuditEvent::GrantId))
                    .col(string_null(AuditEvent::ClientIp))
                    .col(string_null(AuditEvent::Method))
                    .col(string_null(AuditEvent::Path))
                    .col(uuid_null(AuditEvent::RouteId))
                    .col(string_len_null(AuditEvent::Decision, 32))
                    .col(string(AuditEvent::Reason))
                    .col(integer_null(AuditEvent::Status))
                    .col(big_integer_null(AuditEvent::LatencyUs))
                    .col(json(AuditEvent::Detail))
                    .col(string(AuditEvent::PrevHash))
                    .col(string(AuditEvent::Hash))
                    .to_owned(),
            )
            .await?;
        create_indexes(
            manager,
            [
                unique("uq_audit_event_hash", AuditEvent::Table, [AuditEvent::Hash]),
                index(
                    "idx_audit_event_occurred_at",
                    AuditEvent::Table,
                    [AuditEvent::OccurredAt],
                ),
                index(
                    "idx_audit_event_principal_id",
                    AuditEvent::Table,
                    [AuditEvent::PrincipalId],
                ),
                index(
                    "idx_audit_event_api_key_id",
                    AuditEvent::Table,
                    [AuditEvent::ApiKeyId],
                ),
            ],
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(SecurityEvent::Table)
                    .col(pk_uuid(SecurityEvent::Id))
                    .col(string(SecurityEvent::Kind))
                    .col(string_len(SecurityEvent::Severity, 32))
                    .col(timestamp_with_time_zone(SecurityEvent::OccurredAt))
                    .col(uuid_null(SecurityEvent::PrincipalId))
                    .col(uuid_null(SecurityEvent::ApiKeyId))
                    .col(string_null(SecurityEvent::ClientIp))
                    .col(uuid_null(SecurityEvent::RouteId))
                    .col(string(SecurityEvent::Fingerprint))
                    .col(json(SecurityEvent::Detail))
                    .col(string_len(SecurityEvent::Status, 32))
                    .col(uuid_null(SecurityEvent::HandledByRunId))
                    .col(timestamp_with_time_zone(SecurityEvent::CreatedAt))
                    .to_owned(),
            )
            .await?;
        create_indexes(
            manager,
            [
                index(
                    "idx_security_event_fingerprint",
                    SecurityEvent::Table,
                    [SecurityEvent::Fingerprint],
                ),
                index(
                    "idx_security_event_status_occurred_at",
                    SecurityEvent::Table,
                    [SecurityEvent::Status, SecurityEvent::OccurredAt],
                ),
                index(
                    "idx_security_event_kind_occurred_at",
                    SecurityEvent::Table,
                    [SecurityEvent::Kind, SecurityEvent::OccurredAt],
                ),
            ],
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(UsageCounter::Table)
                    .col(pk_uuid(UsageCounter::Id))
                    .col(string(UsageCounter::ScopeKey))
                    .col(uuid(UsageCounter::PrincipalId))
                    .col(uuid_null(UsageCounter::ApiKeyId))
                    .col(uuid_null(UsageCounter::PermissionId))
                    .col(uuid_null(UsageCounter::RouteId))
                    .col(big_integer(UsageCounter::RequestCount))
                    .col(timestamp_with_time_zone(UsageCounter::FirstUsedAt))
                    .col(timestamp_with_time_zone(UsageCounter::LastUsedAt))
                    .to_owned(),
            )
            .await?;
        create_indexes(
            manager,
            [
                unique(
                    "uq_usage_counter_scope_key",
                    UsageCounter::Table,
                    [UsageCounter::ScopeKey],
                ),
                index(
                    "idx_usage_counter_principal_id",
                    UsageCounter::Table,
                    [UsageCounter::PrincipalId],
                ),
                index(
                    "idx_usage_counter_api_key_id",
                    UsageCounter::Table,
                    [UsageCounter::ApiKeyId],
                ),
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_tables(
            manager,
            [
                UsageCounter::Table.into_iden(),
                SecurityEvent::Table.into_iden(),
                AuditEvent::Table.into_iden(),
            ],
        )
        .await
    }
}

#[derive(DeriveIden)]
enum AuditEvent {
    Table,
    Id,
    OccurredAt,
    Kind,
    RequestId,
    PrincipalId,
    ApiKeyId,
    GrantId,
    ClientIp,
    Method,
    Path,
    RouteId,
    Decision,
    Reason,
    Status,
    LatencyUs,
    Detail,
    PrevHash,
    Hash,
}

#[derive(DeriveIden)]
enum SecurityEvent {
    Table,
    Id,
    Kind,
    Severity,
    OccurredAt,
    PrincipalId,
    ApiKeyId,
    ClientIp,
    RouteId,
    Fingerprint,
    Detail,
    Status,
    HandledByRunId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum UsageCounter {
    Table,
    Id,
    ScopeKey,
    PrincipalId,
    ApiKeyId,
    PermissionId,
    RouteId,
    RequestCount,
    FirstUsedAt,
    LastUsedAt,
}
