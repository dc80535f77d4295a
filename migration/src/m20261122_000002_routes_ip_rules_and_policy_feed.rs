//! Routing and network policy: `route`, `ip_rule`, `rate_limit_override`, and the
//! `policy_change` feed proxies poll.
//!
//! Runs before the roles migration because `permission.route_id` references `route`, and
//! SQLite cannot add a foreign key to an existing table.

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
                    .table(Route::Table)
                    .col(pk_uuid(Route::Id))
                    .col(string(Route::Name))
                    .col(string_null(Route::Host))
                    .col(string(Route::PathPrefix))
                    .col(json(Route::Methods))
                    .col(string(Route::UpstreamUrl))
                    .col(boolean(Route::StripPrefix))
                    .col(json(Route::AuthMethods))
                    .col(string_null(Route::RequiredPermission))
                    .col(integer_null(Route::RateLimitPerMinute))
                    .col(integer_null(Route::RateLimitBurst))
                    .col(string_null(Route::UpstreamCredentialSecretId))
                    .col(string_null(Route::UpstreamCredentialHeader))
                    .col(integer_null(Route::TimeoutMs))
                    .col(boolean(Route::Enabled))
                    .col(timestamp_with_time_zone(Route::CreatedAt))
                    .col(timestamp_with_time_zone(Route::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        create_indexes(
            manager,
            [
                unique("uq_route_name", Route::Table, [Route::Name]),
                index(
                    "idx_route_host_path_prefix",
                    Route::Table,
                    [Route::Host, Route::PathPrefix],
                ),
            ],
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(IpRule::Table)
                    .col(pk_uuid(IpRule::Id))
                    .col(uuid_null(IpRule::RouteId))
                    .col(string(IpRule::Cidr))
                    .col(string_len(IpRule::Action, 32))
                    .col(timestamp_with_time_zone_null(IpRule::ExpiresAt))
                    .col(string(IpRule::Reason))
                    .col(string_len(IpRule::Source, 32))
                    .col(string_null(IpRule::CreatedBy))
                    .col(timestamp_with_time_zone(IpRule::CreatedAt))
                    .foreign_key(&mut foreign_key(
                        "fk_ip_rule_route_id",
                        (IpRule::Table, IpRule::RouteId),
                        (Route::Table, Route::Id),
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;
        create_indexes(
            manager,
            [
                index("idx_ip_rule_route_id", IpRule::Table, [IpRule::RouteId]),
                index("idx_ip_rule_expires_at", IpRule::Table, [IpRule::ExpiresAt]),
            ],
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(RateLimitOverride::Table)
                    .col(pk_uuid(RateLimitOverride::Id))
                    .col(uuid_null(RateLimitOverride::PrincipalId))
                    .col(uuid_null(RateLimitOverride::ApiKeyId))
                    .col(uuid_null(RateLimitOverride::RouteId))
                    .col(integer(RateLimitOverride::PerMinute))
                    .col(integer(RateLimitOverride::Burst))
                    .col(string(RateLimitOverride::Reason))
                    .col(timestamp_with_time_zone(RateLimitOverride::ExpiresAt))
                    .col(string_null(RateLimitOverride::CreatedBy))
                    .col(timestamp_with_time_zone(RateLimitOverride::CreatedAt))
                    .foreign_key(&mut foreign_key(
                        "fk_rate_limit_override_principal_id",
                        (RateLimitOverride::Table, RateLimitOverride::PrincipalId),
                        (Principal::Table, Principal::Id),
                        ForeignKeyAction::Cascade,
                    ))
                    .foreign_key(&mut foreign_key(
                        "fk_rate_limit_override_api_key_id",
                        (RateLimitOverride::Table, RateLimitOverride::ApiKeyId),
                        (ApiKey::Table, ApiKey::Id),
                        ForeignKeyAction::Cascade,
                    ))
                    .foreign_key(&mut foreign_key(
                        "fk_rate_limit_override_route_id",
                        (RateLimitOverride::Table, RateLimitOverride::RouteId),
                        (Route::Table, Route::Id),
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;
        create_indexes(
            manager,
            [
                index(
                    "idx_rate_limit_override_expires_at",
                    RateLimitOverride::Table,
                    [RateLimitOverride::ExpiresAt],
                ),
                // Foreign-key columns, so cascading deletes do not scan the table.
                index(
                    "idx_rate_limit_override_principal_id",
                    RateLimitOverride::Table,
                    [RateLimitOverride::PrincipalId],
                ),
                index(
                    "idx_rate_limit_override_api_key_id",
                    RateLimitOverride::Table,
                    [RateLimitOverride::ApiKeyId],
                ),
                index(
                    "idx_rate_limit_override_route_id",
                    RateLimitOverride::Table,
                    [RateLimitOverride::RouteId],
                ),
            ],
        )
        .await?;

        // `id` is the feed position. On SQLite `big_pk_auto` renders as
        // `integer NOT NULL PRIMARY KEY AUTOINCREMENT` (a rowid alias whose values are never
        // reused); on PostgreSQL as `bigint GENERATED BY DEFAULT AS IDENTITY`.
        manager
            .create_table(
                Table::create()
                    .table(PolicyChange::Table)
                    .col(big_pk_auto(PolicyChange::Id))
                    .col(string(PolicyChange::EntityKind))
                    .col(string(PolicyChange::EntityId))
                    .col(string_len(PolicyChange::Op, 32))
                    .col(timestamp_with_time_zone(PolicyChange::CreatedAt))
                    .to_owned(),
            )
            .await?;
        create_indexes(
            manager,
            [index(
                "idx_policy_change_created_at",
                PolicyChange::Table,
                [PolicyChange::CreatedAt],
            )],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_tables(
            manager,
            [
                PolicyChange::Table.into_iden(),
                RateLimitOverride::Table.into_iden(),
                IpRule::Table.into_iden(),
                Route::Table.into_iden(),
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
enum ApiKey {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Route {
    Table,
    Id,
    Name,
    Host,
    PathPrefix,
    Methods,
    UpstreamUrl,
    StripPrefix,
    AuthMethods,
    RequiredPermission,
    RateLimitPerMinute,
    RateLimitBurst,
    UpstreamCredentialSecretId,
    UpstreamCredentialHeader,
    TimeoutMs,
    Enabled,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum IpRule {
    Table,
    Id,
    RouteId,
    Cidr,
    Action,
    ExpiresAt,
    Reason,
    Source,
    CreatedBy,
    CreatedAt,
}

#[derive(DeriveIden)]
enum RateLimitOverride {
    Table,
    Id,
    PrincipalId,
    ApiKeyId,
    RouteId,
    PerMinute,
    Burst,
    Reason,
    ExpiresAt,
    CreatedBy,
    CreatedAt,
}

#[derive(DeriveIden)]
enum PolicyChange {
    Table,
    Id,
    EntityKind,
    EntityId,
    Op,
    CreatedAt,
}
