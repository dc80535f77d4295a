//! RBAC: `role`, its `permission`s, and `role_binding`s of roles to principals.

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
                    .table(Role::Table)
                    .col(pk_uuid(Role::Id))
                    .col(string(Role::Name))
                    .col(text(Role::Description))
                    .col(boolean(Role::Builtin))
                    .col(timestamp_with_time_zone(Role::CreatedAt))
                    .col(timestamp_with_time_zone(Role::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        create_indexes(manager, [unique("uq_role_name", Role::Table, [Role::Name])]).await?;

        manager
            .create_table(
                Table::create()
                    .table(Permission::Table)
                    .col(pk_uuid(Permission::Id))
                    .col(uuid(Permission::RoleId))
                    .col(string(Permission::Name))
                    .col(json(Permission::Methods))
                    .col(string(Permission::PathGlob))
                    .col(uuid_null(Permission::RouteId))
                    .col(timestamp_with_time_zone(Permission::CreatedAt))
                    .foreign_key(&mut foreign_key(
                        "fk_permission_role_id",
                        (Permission::Table, Permission::RoleId),
                        (Role::Table, Role::Id),
                        ForeignKeyAction::Cascade,
                    ))
                    .foreign_key(&mut foreign_key(
                        "fk_permission_route_id",
                        (Permission::Table, Permission::RouteId),
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
                    "idx_permission_role_id",
                    Permission::Table,
                    [Permission::RoleId],
                ),
                // Foreign-key column, so deleting a route does not scan the table.
                index(
                    "idx_permission_route_id",
                    Permission::Table,
                    [Permission::RouteId],
                ),
            ],
        )
        .await?;

        manager
            .create_table(
                Table::create()
                    .table(RoleBinding::Table)
                    .col(pk_uuid(RoleBinding::Id))
                    .col(uuid(RoleBinding::RoleId))
                    .col(uuid(RoleBinding::PrincipalId))
                    .col(json(RoleBinding::Conditions))
                    .col(timestamp_with_time_zone_null(RoleBinding::ExpiresAt))
                    .col(string_null(RoleBinding::Reason))
                    .col(uuid_null(RoleBinding::CreatedBy))
                    .col(timestamp_with_time_zone(RoleBinding::CreatedAt))
                    .foreign_key(&mut foreign_key(
                        "fk_role_binding_role_id",
                        (RoleBinding::Table, RoleBinding::RoleId),
                        (Role::Table, Role::Id),
                        ForeignKeyAction::Cascade,
                    ))
                    .foreign_key(&mut foreign_key(
                        "fk_role_binding_principal_id",
                        (RoleBinding::Table, RoleBinding::PrincipalId),
                        (Principal::Table, Principal::Id),
                        ForeignKeyAction::Cascade,
                    ))
                    .to_owned(),
            )
            .await?;
        create_indexes(
            manager,
            [
                index(
                    "idx_role_binding_principal_id",
                    RoleBinding::Table,
                    [RoleBinding::PrincipalId],
                ),
                index(
                    "idx_role_binding_role_id",
                    RoleBinding::Table,
                    [RoleBinding::RoleId],
                ),
            ],
        )
        .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        drop_tables(
            manager,
            [
                RoleBinding::Table.into_iden(),
                Permission::Table.into_iden(),
                Role::Table.into_iden(),
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
enum Route {
    Table,
    Id,
}

#[derive(DeriveIden)]
enum Role {
    Table,
    Id,
    Name,
    Description,
    Builtin,
    CreatedAt,
    UpdatedAt,
}

#[derive(DeriveIden)]
enum Permission {
    Table,
    Id,
    RoleId,
    Name,
    Methods,
    PathGlob,
    RouteId,
    CreatedAt,
}

#[derive(DeriveIden)]
enum RoleBinding {
    Table,
    Id,
    RoleId,
    PrincipalId,
    Conditions,
    ExpiresAt,
    Reason,
    CreatedBy,
    CreatedAt,
}
