//! Identities and their API keys: `principal`, `group_membership`, `api_key`.

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
                    .table(Principal::Table)
                    .col(pk_uuid(Principal::Id))
                    .col(string_len(Principal::Kind, 32))
                    .col(string(Principal::Name))
                    .col(string(Principal::DisplayName))
                    .col(string_null(Principal::Email))
                    .col(string_null(Principal::OidcIssuer))
                    .col(string_null(Principal::OidcSubject))
                    .col(string_null(Principal::OidcGroup))
                    .col(boolean(Principal::Disabled).default(false))
                    .col(json(Principal::Metadata))
                    .col(timestamp_with_time_zone(Principal::CreatedAt))
                    .col(timestamp_with_time_zone(Principal::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        create_indexes(
            manager,
            [
                unique(
                    "uq_principal_kind_name",
                    Principal::Table,
                    [Principal::Kind, Principal::Name],
                ),
                unique(
                    "uq_principal_oidc_issuer_oidc_subject",
                    Principal::Table,
                    [Principal::OidcIssuer, Principal::OidcSubject],
                ),
                index(
                    "idx_principal_oidc_group",
                    Principal::Table,
                    [Principal::OidcGroup],
                ),
            ],
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(GroupMembership::Table)
                    .col(uuid(GroupMembership::GroupId))
                    .col(uuid(GroupMembership::MemberId))
                    .col(timestamp_with_time_zone(GroupMembership::CreatedAt))
                    .primary_key(
                        Index::create()
                            .name("pk_group_membership")
                            .col(GroupMembership::GroupId)
                            .col(GroupMembership::MemberId),
                    )
                    .foreign_key(&mut foreign_key(
                        "fk_group_membership_group_id",
                        (GroupMembership::Table, GroupMembership::GroupId),
                        (Principal::Table, Principal::Id),
                        ForeignKeyAction::Cascade,
                    ))
                    .foreign_key(&mut foreign_key(
                        "fk_group_membership_member_id",
                        (GroupMembership::Table, GroupMembership::MemberId),
                        (Principal::Table, Principal::Id),
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;
        create_indexes(
            manager,
            [index(
                "idx_group_membership_member_id",
                GroupMembership::Table,
                [GroupMembership::MemberId],
            )],
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(ApiKey::Table)
                    .col(pk_uuid(ApiKey::Id))
                    .col(uuid(ApiKey::PrincipalId))
                    .col(string(ApiKey::Name))
                    .col(string(ApiKey::Prefix))
                    .col(string(ApiKey::Hash))
                    .col(string(ApiKey::Environment))
                    .col(json(ApiKey::Scopes))
                    .col(timestamp_with_time_zone_null(ApiKey::ExpiresAt))
                    .col(timestamp_with_time_zone_null(ApiKey::RevokedAt))
                    .col(string_null(ApiKey::RevokedReason))
                    .col(timestamp_with_time_zone_null(ApiKey::SuspendedAt))
                    .col(string_null(ApiKey::SuspendedReason))
                    .col(timestamp_with_time_zone_null(ApiKey::LastUsedAt))
                    .col(string_null(ApiKey::LastUsedIp))
                    .col(integer_null(ApiKey::RateLimitPerMinute))
                    .col(integer_null(ApiKey::RateLimitBurst))
                    .col(big_integer_null(ApiKey::RemainingUses))
                    .col(big_integer_null(ApiKey::RefillAmount))
                    .col(big_integer_null(ApiKey::RefillIntervalSeconds))
                    .col(timestamp_with_time_zone_null(ApiKey::LastRefillAt))
                    .col(json(ApiKey::Metadata))
                    .col(uuid_null(ApiKey::RotatedFrom))
                    .col(uuid_null(ApiKey::CreatedBy))
                    .col(timestamp_with_time_zone(ApiKey::CreatedAt))
                    .col(timestamp_with_time_zone(ApiKey::UpdatedAt))
                    .foreign_key(&mut foreign_key(
                        "fk_api_key_principal_id",
                        (ApiKey::Table, ApiKey::PrincipalId),
                        (Principal::Table, Principal::Id),
                        ForeignKeyAction::Cascade,
                    ))
                    .foreign_key(&mut foreign_key(
                        "fk_api_key_rotated_from",
                        (ApiKey::Table, ApiKey::RotatedFrom),
                        (ApiKey::Table, ApiKey::Id),
                        ForeignKeyAction::SetNull,
                    ))
                    .to_owned(),
            )
            .await?;
        create_indexes(
            manager,
            [
                unique("uq_api_key_prefix", ApiKey::Table, [ApiKey::Prefix]),
                index(
                    "idx_api_key_principal_id",
                    ApiKey::Table,
                    [ApiKey::PrincipalId],
                ),
                // Lets the SET NULL on `rotated_from` find the rows to update without a scan.
                index(
                    "idx_api_key_rotated_from",
                    ApiKey::Table,
                    [ApiKey::RotatedFrom],
                ),
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_tables(
            manager,
            [
                ApiKey::Table.into_iden(),
                GroupMembership::Table.into_iden(),
                Principal::Table.into_iden(),
            ],
        )
        .await
    }
}

#[derive(DeriveIden)]
enum Principal {
    Table,
    Id,
    Kind,
    Name,
    DisplayName,
    Email,
    OidcIssuer,
    OidcSubject,
    OidcGroup,
    Disabled,
    Metadata,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum GroupMembership {
    Table,
    GroupId,
    MemberId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum ApiKey {
    Table,
    Id,
    PrincipalId,
    Name,
    Prefix,
    Hash,
    Environment,
    Scopes,
    ExpiresAt,
    RevokedAt,
    RevokedReason,
    SuspendedAt,
    SuspendedReason,
    LastUsedAt,
    LastUsedIp,
    RateLimitPerMinute,
    RateLimitBurst,
    RemainingUses,
    RefillAmount,
    RefillIntervalSeconds,
    LastRefillAt,
    Metadata,
    RotatedFrom,
    CreatedBy,
    CreatedAt,
    UpdatedAt,
}
