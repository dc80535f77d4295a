//! `createPrincipal`, `updatePrincipal`, `addGroupMember`, `removeGroupMember`.

use async_graphql::{Context, Object};
use uuid::Uuid;

use super::types::{CreatePrincipalInput, GroupMembership, PrincipalOut, UpdatePrincipalInput};
use crate::{
    graphql::{error::ApiResult, guard::RequirePermission, services},
    service::{management::PRINCIPALS_WRITE, principals},
};

/// Principal mutations.
#[derive(Default)]
pub struct PrincipalMutation;

#[Object]
impl PrincipalMutation {
    /// Creates a user, group or service account.
    #[graphql(guard = "RequirePermission(PRINCIPALS_WRITE)")]
    async fn create_principal(
        &self,
        ctx: &Context<'_>,
        input: CreatePrincipalInput,
    ) -> ApiResult<PrincipalOut> {
        Ok(principals::create(&services(ctx)?.db, input.into())
            .await?
            .into())
    }

    /// Changes a principal; disabling it stops all its keys at the proxy within a second.
    #[graphql(guard = "RequirePermission(PRINCIPALS_WRITE)")]
    async fn update_principal(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        input: UpdatePrincipalInput,
    ) -> ApiResult<PrincipalOut> {
        Ok(principals::update(&services(ctx)?.db, id, input.into())
            .await?
            .into())
    }

    /// Makes `memberId` a member of group `groupId`.
    #[graphql(guard = "RequirePermission(PRINCIPALS_WRITE)")]
    async fn add_group_member(
        &self,
        ctx: &Context<'_>,
        group_id: Uuid,
        member_id: Uuid,
    ) -> ApiResult<GroupMembership> {
        let db = &services(ctx)?.db;
        principals::add_member(db, group_id, member_id).await?;
        membership(db, group_id, member_id).await
    }

    /// Removes `memberId` from group `groupId`.
    #[graphql(guard = "RequirePermission(PRINCIPALS_WRITE)")]
    async fn remove_group_member(
        &self,
        ctx: &Context<'_>,
        group_id: Uuid,
        member_id: Uuid,
    ) -> ApiResult<GroupMembership> {
        let db = &services(ctx)?.db;
        principals::remove_member(db, group_id, member_id).await?;
        membership(db, group_id, member_id).await
    }
}

async fn membership(
    db: &sea_orm::DatabaseConnection,
    group_id: Uuid,
    member_id: Uuid,
) -> ApiResult<GroupMembership> {
    Ok(GroupMembership {
        group: principals::get(db, group_id).await?.into(),
        member: principals::get(db, member_id).await?.into(),
    })
}
