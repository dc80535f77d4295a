//! `sns_message`: `MessageId`s of inbound SNS messages already processed, so redeliveries are
//! ignored.

use sea_orm::entity::prelude::*;

/// One row of `sns_message`.
#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "sns_message")]
pub struct Model {
    /// SNS `MessageId`; inserting a duplicate fails, which is the deduplication.
    #[sea_orm(primary_key, auto_increment = false)]
    pub message_id: String,
    /// `TopicArn` of the message.
    pub topic_arn: String,
    /// `Type`: `Notification`, `SubscriptionConfirmation` or `UnsubscribeConfirmation`.
    pub message_type: String,
    /// When the webhook received it.
    pub received_at: DateTimeUtc,
}

/// `sns_message` has no foreign keys.
#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
