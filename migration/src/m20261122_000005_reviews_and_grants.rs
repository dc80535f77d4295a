//! Access governance: `access_review` campaigns with their `access_review_item`s, and
//! time-boxed `incident_grant`s (whose break-glass follow-up is an access review).

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
                    .table(AccessReview::Table)
                    .col(pk_uuid(AccessReview::Id))
                    .col(string(AccessReview::Name))
                    .col(json(AccessReview::Scope))
                    .col(string_len(AccessReview::Status, 32))
                    .col(timestamp_with_time_zone(AccessReview::Deadline))
                    .col(string_len(AccessReview::DefaultAction, 32))
                    .col(integer(AccessReview::DormantDays))
                    .col(uuid_null(AccessReview::CreatedBy))
                    .col(timestamp_with_time_zone(AccessReview::CreatedAt))
                    .col(timestamp_with_time_zone_null(AccessReview::ClosedAt))
                    .to_owned(),
            )
            .await?;
        create_indexes(
            manager,
            [index(
                "idx_access_review_status_deadline",
                AccessReview::Table,
                [AccessReview::Status, AccessReview::Deadline],
            )],
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(AccessReviewItem::Table)
                    .col(pk_uuid(AccessReviewItem::Id))
                    .col(uuid(AccessReviewItem::ReviewId))
                    .col(string_len(AccessReviewItem::SubjectKind, 32))
                    .col(uuid(AccessReviewItem::SubjectId))
                    .col(uuid(AccessReviewItem::PrincipalId))
                    .col(json(AccessReviewItem::Flags))
                    .col(uuid_null(AccessReviewItem::ReviewerId))
                    .col(string_len_null(AccessReviewItem::Decision, 32))
                    .col(uuid_null(AccessReviewItem::DecidedBy))
                    .col(timestamp_with_time_zone_null(AccessReviewItem::DecidedAt))
                    .col(string_null(AccessReviewItem::Note))
                    .col(timestamp_with_time_zone_null(AccessReviewItem::AppliedAt))
                    .col(timestamp_with_time_zone(AccessReviewItem::CreatedAt))
                    .foreign_key(&mut foreign_key(
                        "fk_access_review_item_review_id",
                        (AccessReviewItem::Table, AccessReviewItem::ReviewId),
                        (AccessReview::Table, AccessReview::Id),
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;
        // The unique index leads with `review_id`, so it also serves the foreign key.
        create_indexes(
            manager,
            [unique(
                "uq_access_review_item_review_id_subject_kind_subject_id",
                AccessReviewItem::Table,
                [
                    AccessReviewItem::ReviewId,
                    AccessReviewItem::SubjectKind,
                    AccessReviewItem::SubjectId,
                ],
            )],
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(IncidentGrant::Table)
                    .col(pk_uuid(IncidentGrant::Id))
                    .col(string(IncidentGrant::IncidentId))
                    .col(uuid(IncidentGrant::RequesterId))
                    .col(uuid_null(IncidentGrant::ApproverId))
                    .col(text(IncidentGrant::Justification))
                    .col(uuid_null(IncidentGrant::RoleId))
                    .col(json(IncidentGrant::Permissions))
                    .col(big_integer(IncidentGrant::DurationSeconds))
                    .col(string_len(IncidentGrant::Status, 32))
                    .col(boolean(IncidentGrant::BreakGlass))
                    .col(string_null(IncidentGrant::TokenPrefix))
                    .col(string_null(IncidentGrant::TokenHash))
                    .col(timestamp_with_time_zone(IncidentGrant::RequestedAt))
                    .col(timestamp_with_time_zone_null(IncidentGrant::DecidedAt))
                    .col(timestamp_with_time_zone_null(IncidentGrant::ExpiresAt))
                    .col(timestamp_with_time_zone_null(IncidentGrant::RevokedAt))
                    .col(string_null(IncidentGrant::RevokedReason))
                    .col(uuid_null(IncidentGrant::FollowUpReviewId))
                    .col(timestamp_with_time_zone(IncidentGrant::CreatedAt))
                    .col(timestamp_with_time_zone(IncidentGrant::UpdatedAt))
                    .foreign_key(&mut foreign_key(
                        "fk_incident_grant_requester_id",
                        (IncidentGrant::Table, IncidentGrant::RequesterId),
                        (Principal::Table, Principal::Id),
                        ForeignKeyAction::Cascade,
                    ))
                    .foreign_key(&mut foreign_key(
                        "fk_incident_grant_approver_id",
                        (IncidentGrant::Table, IncidentGrant::ApproverId),
                        (Principal::Table, Principal::Id),
                        ForeignKeyAction::SetNull,
                    ))
                    .foreign_key(&mut foreign_key(
                        "fk_incident_grant_role_id",
                        (IncidentGrant::Table, IncidentGrant::RoleId),
                        (Role::Table, Role::Id),
                        ForeignKeyAction::SetNull,
                    ))
                    .foreign_key(&mut foreign_key(
                        "fk_incident_grant_follow_up_review_id",
                        (IncidentGrant::Table, IncidentGrant::FollowUpReviewId),
                        (AccessReview::Table, AccessReview::Id),
                        ForeignKeyAction::SetNull,
                    ))
                    .to_owned(),
            )
            .await?;
        create_indexes(
            manager,
            [
                unique(
                    "uq_incident_grant_token_prefix",
                    IncidentGrant::Table,
                    [IncidentGrant::TokenPrefix],
                ),
                index(
                    "idx_incident_grant_requester_id",
                    IncidentGrant::Table,
                    [IncidentGrant::RequesterId],
                ),
                index(
                    "idx_incident_grant_status_expires_at",
                    IncidentGrant::Table,
                    [IncidentGrant::Status, IncidentGrant::ExpiresAt],
                ),
                // Foreign-key columns, so SET NULL on delete does not scan the table.
                index(
                    "idx_incident_grant_approver_id",
                    IncidentGrant::Table,
                    [IncidentGrant::ApproverId],
                ),
                index(
                    "idx_incident_grant_role_id",
                    IncidentGrant::Table,
                    [IncidentGrant::RoleId],
                ),
                index(
                    "idx_incident_grant_follow_up_review_id",
                    IncidentGrant::Table,
                    [IncidentGrant::FollowUpReviewId],
                ),
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_tables(
            manager,
            [
                IncidentGrant::Table.into_iden(),
                AccessReviewItem::Table.into_iden(),
                AccessReview::Table.into_iden(),
            ],
        )
        .await
    }
}

#[derive(DeriveIden)]
enum Principal {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Role {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum AccessReview {
    Table,
    Id,
    Name,
    Scope,
    Status,
    Deadline,
    DefaultAction,
    DormantDays,
    CreatedBy,
    CreatedAt,
    ClosedAt,
}

#[derive(DeriveIden)]
enum AccessReviewItem {
    Table,
    Id,
    ReviewId,
    SubjectKind,
    SubjectId,
    PrincipalId,
    Flags,
    ReviewerId,
    Decision,
    DecidedBy,
    DecidedAt,
    Note,
    AppliedAt,
    CreatedAt,
}

#[derive(DeriveIden)]
enum IncidentGrant {
    Table,
    Id,
    IncidentId,
    RequesterId,
    ApproverId,
    Justification,
    RoleId,
    Permissions,
    DurationSeconds,
    Status,
    BreakGlass,
    TokenPrefix,
    TokenHash,
    RequestedAt,
    DecidedAt,
    ExpiresAt,
    RevokedAt,
    RevokedReason,
    FollowUpReviewId,
    CreatedAt,
    UpdatedAt,
}
