//! Remediation and notifications: `remediation_playbook`, `remediation_run` with its
//! `remediation_step`s, `managed_secret`s in Secrets Manager, the SNS `notification_outbox`,
//! and `sns_message` for inbound deduplication.

use sea_orm_migration::{prelude::*, schema::*};

use crate::util::{create_indexes, drop_tables, foreign_key, index, unique};

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
        manager
            .create_table(
                Table::create()
                    .table(RemediationPlaybook::Table)
                    .col(pk_uuid(RemediationPlaybook::Id))
                    .col(string(RemediationPlaybook::Name))
                    .col(text(RemediationPlaybook::Description))
                    .col(boolean(RemediationPlaybook::Enabled))
                    .col(boolean(RemediationPlaybook::DryRun))
                    .col(boolean(RemediationPlaybook::Builtin))
                    .col(json(RemediationPlaybook::Trigger))
                    .col(json(RemediationPlaybook::Diagnose))
                    .col(json(RemediationPlaybook::Actions))
                    .col(json(RemediationPlaybook::Notify))
                    .col(timestamp_with_time_zone(RemediationPlaybook::CreatedAt))
                    .col(timestamp_with_time_zone(RemediationPlaybook::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        create_indexes(
            manager,
            [unique(
                "uq_remediation_playbook_name",
                RemediationPlaybook::Table,
                [RemediationPlaybook::Name],
            )],
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(RemediationRun::Table)
                    .col(pk_uuid(RemediationRun::Id))
                    .col(uuid_null(RemediationRun::PlaybookId))
                    .col(string(RemediationRun::TriggerKind))
                    .col(string_null(RemediationRun::TriggerRef))
                    .col(string(RemediationRun::IdempotencyKey))
                    .col(string_len(RemediationRun::Status, 32))
                    .col(boolean(RemediationRun::DryRun))
                    .col(json(RemediationRun::Context))
                    .col(text_null(RemediationRun::Error))
                    .col(integer(RemediationRun::Attempts))
                    .col(timestamp_with_time_zone_null(RemediationRun::NextAttemptAt))
                    .col(timestamp_with_time_zone(RemediationRun::CreatedAt))
                    .col(timestamp_with_time_zone(RemediationRun::UpdatedAt))
                    .col(timestamp_with_time_zone_null(RemediationRun::FinishedAt))
                    .foreign_key(&mut foreign_key(
                        "fk_remediation_run_playbook_id",
                        (RemediationRun::Table, RemediationRun::PlaybookId),
                        (RemediationPlaybook::Table, RemediationPlaybook::Id),
                        ForeignKeyAction::SetNull,
                    ))
                    .to_owned(),
            )
            .await?;
        create_indexes(
            manager,
            [
                unique(
                    "uq_remediation_run_idempotency_key",
                    RemediationRun::Table,
                    [RemediationRun::IdempotencyKey],
                ),
                index(
                    "idx_remediation_run_status_next_attempt_at",
                    RemediationRun::Table,
                    [RemediationRun::Status, RemediationRun::NextAttemptAt],
                ),
                // Foreign-key column, so deleting a playbook does not scan the table.
                index(
                    "idx_remediation_run_playbook_id",
                    RemediationRun::Table,
                    [RemediationRun::PlaybookId],
                ),
            ],
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(RemediationStep::Table)
                    .col(pk_uuid(RemediationStep::Id))
                    .col(uuid(RemediationStep::RunId))
                    .col(integer(RemediationStep::Seq))
                    .col(string(RemediationStep::Action))
                    .col(json(RemediationStep::Params))
                    .col(string_len(RemediationStep::Status, 32))
                    .col(integer(RemediationStep::Attempts))
                    .col(text_null(RemediationStep::LastError))
                    .col(json_null(RemediationStep::Output))
                    .col(timestamp_with_time_zone_null(
                        RemediationStep::NextAttemptAt,
                    ))
                    .col(timestamp_with_time_zone_null(RemediationStep::StartedAt))
                    .col(timestamp_with_time_zone_null(RemediationStep::FinishedAt))
                    .col(timestamp_with_time_zone(RemediationStep::CreatedAt))
                    .foreign_key(&mut foreign_key(
                        "fk_remediation_step_run_id",
                        (RemediationStep::Table, RemediationStep::RunId),
                        (RemediationRun::Table, RemediationRun::Id),
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;
        // The unique index leads with `run_id`, so it also serves the foreign key.
        create_indexes(
            manager,
            [unique(
                "uq_remediation_step_run_id_seq",
                RemediationStep::Table,
                [RemediationStep::RunId, RemediationStep::Seq],
            )],
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(ManagedSecret::Table)
                    .col(pk_uuid(ManagedSecret::Id))
                    .col(string(ManagedSecret::SecretId))
                    .col(string_len(ManagedSecret::Kind, 32))
                    .col(uuid_null(ManagedSecret::ApiKeyId))
                    .col(uuid_null(ManagedSecret::RouteId))
                    .col(integer_null(ManagedSecret::RotationIntervalDays))
                    .col(timestamp_with_time_zone_null(ManagedSecret::LastRotatedAt))
                    .col(timestamp_with_time_zone(ManagedSecret::CreatedAt))
                    .col(timestamp_with_time_zone(ManagedSecret::UpdatedAt))
                    .foreign_key(&mut foreign_key(
                        "fk_managed_secret_api_key_id",
                        (ManagedSecret::Table, ManagedSecret::ApiKeyId),
                        (ApiKey::Table, ApiKey::Id),
                        ForeignKeyAction::SetNull,
                    ))
                    .foreign_key(&mut foreign_key(
                        "fk_managed_secret_route_id",
                        (ManagedSecret::Table, ManagedSecret::RouteId),
                        (Route::Table, Route::Id),
                        ForeignKeyAction::SetNull,
                    ))
                    .to_owned(),
            )
            .await?;
        create_indexes(
            manager,
            [
                unique(
                    "uq_managed_secret_secret_id",
                    ManagedSecret::Table,
                    [ManagedSecret::SecretId],
                ),
                // Foreign-key columns, so SET NULL on delete does not scan the table.
                index(
                    "idx_managed_secret_api_key_id",
                    ManagedSecret::Table,
                    [ManagedSecret::ApiKeyId],
                ),
                index(
                    "idx_managed_secret_route_id",
                    ManagedSecret::Table,
                    [ManagedSecret::RouteId],
                ),
            ],
        )
        .await?;

        // `id` is the delivery order; see the note on `policy_change.id` in migration 000002.
        manager
            .create_table(
                Table::create()
                    .table(NotificationOutbox::Table)
                    .col(big_pk_auto(NotificationOutbox::Id))
                    .col(string(NotificationOutbox::TopicArn))
                    .col(string_null(NotificationOutbox::MessageGroup))
                    .col(string(NotificationOutbox::DedupId))
                    .col(string(NotificationOutbox::EventType))
                    .col(string(NotificationOutbox::Severity))
                    .col(string_null(NotificationOutbox::Principal))
                    .col(string(NotificationOutbox::Subject))
                    .col(text(NotificationOutbox::Message))
                    .col(json(NotificationOutbox::Attributes))
                    .col(string_len(NotificationOutbox::Status, 32))
                    .col(integer(NotificationOutbox::Attempts))
                    .col(text_null(NotificationOutbox::LastError))
                    .col(timestamp_with_time_zone(NotificationOutbox::NextAttemptAt))
                    .col(string_null(NotificationOutbox::SnsMessageId))
                    .col(timestamp_with_time_zone(NotificationOutbox::CreatedAt))
                    .col(timestamp_with_time_zone_null(NotificationOutbox::SentAt))
                    .to_owned(),
            )
            .await?;
        create_indexes(
            manager,
            [
                unique(
                    "uq_notification_outbox_dedup_id",
                    NotificationOutbox::Table,
                    [NotificationOutbox::DedupId],
                ),
                index(
                    "idx_notification_outbox_status_next_attempt_at",
                    NotificationOutbox::Table,
                    [
                        NotificationOutbox::Status,
                        NotificationOutbox::NextAttemptAt,
                    ],
                ),
            ],
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(SnsMessage::Table)
                    .col(string(SnsMessage::MessageId).primary_key())
                    .col(string(SnsMessage::TopicArn))
                    .col(string(SnsMessage::MessageType))
                    .col(timestamp_with_time_zone(SnsMessage::ReceivedAt))
                    .to_owned(),
            )
            .await?;
        create_indexes(
            manager,
            [index(
                "idx_sns_message_received_at",
                SnsMessage::Table,
                [SnsMessage::ReceivedAt],
            )],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_tables(
            manager,
            [
                SnsMessage::Table.into_iden(),
                NotificationOutbox::Table.into_iden(),
                ManagedSecret::Table.into_iden(),
                RemediationStep::Table.into_iden(),
                RemediationRun::Table.into_iden(),
                RemediationPlaybook::Table.into_iden(),
            ],
        )
        .await
    }
}

#[derive(DeriveIden)]
enum ApiKey {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Route {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum RemediationPlaybook {
    Table,
    Id,
    Name,
    Description,
    Enabled,
    DryRun,
    Builtin,
    Trigger,
    Diagnose,
    Actions,
    Notify,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum RemediationRun {
    Table,
    Id,
    PlaybookId,
    TriggerKind,
    TriggerRef,
    IdempotencyKey,
    Status,
    DryRun,
    Context,
    Error,
    Attempts,
    NextAttemptAt,
    CreatedAt,
    UpdatedAt,
    FinishedAt,
}

#[derive(DeriveIden)]
enum RemediationStep {
    Table,
    Id,
    RunId,
    Seq,
    Action,
    Params,
    Status,
    Attempts,
    LastError,
    Output,
    NextAttemptAt,
    StartedAt,
    FinishedAt,
    CreatedAt,
}

#[derive(DeriveIden)]
enum ManagedSecret {
    Table,
    Id,
    SecretId,
    Kind,
    ApiKeyId,
    RouteId,
    RotationIntervalDays,
    LastRotatedAt,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum NotificationOutbox {
    Table,
    Id,
    TopicArn,
    MessageGroup,
    DedupId,
    EventType,
    Severity,
    Principal,
    Subject,
    Message,
    Attributes,
    Status,
    Attempts,
    LastError,
    NextAttemptAt,
    SnsMessageId,
    CreatedAt,
    SentAt,
}

#[derive(DeriveIden)]
enum SnsMessage {
    Table,
    MessageId,
    TopicArn,
    MessageType,
    ReceivedAt,
}
