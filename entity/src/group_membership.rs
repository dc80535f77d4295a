//! `group_membership`: which principals belong to which group.

use sea_orm::entity::prelude::*;

/// One row of `group_membership`: `member_id` is a member of `group_id`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "group_membership")]
pub struct Model {
    /// The group (a principal of kind `group`).
    #[sea_orm(primary_key, auto_increment = false)]
    pub group_id: Uuid,
    /// The member (a user, a service account or a nested group).
    #[sea_orm(primary_key, auto_increment = false)]
    pub member_id: Uuid,
    /// When the membership was added.
    pub created_at: DateTimeUtc,
}

/// Foreign keys of `group_membership`.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {
    /// `group_id` → `principal.id`, ON DELETE CASCADE.
    #[sea_orm(
        belongs_to = "super::principal::Entity",
        from = "Column::GroupId",
        to = "super::principal::Column::Id",
        on_delete = "Cascade",
        fk_name = "fk_group_membership_group_id"
    )]
    Group,
    /// `member_id` → `principal.id`, ON DELETE CASCADE.
    #[sea_orm(
        belongs_to = "super::principal::Entity",
        from = "Column::MemberId",
        to = "super::principal::Column::Id",
        on_delete = "Cascade",
        fk_name = "fk_group_membership_member_id"
    )]
    Member,
}

/// Both foreign keys point at `principal`; this one follows `member_id`. Use
/// [`Relation::Group`] (or [`super::principal::GroupToMembers`]) for the group side.
impl Related<super::principal::Entity> for Entity {
    fn to() -> RelationDef {
        Relation::Member.def()
    }
}

impl ActiveModelBehavior for ActiveModel {}
