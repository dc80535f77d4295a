//! The `Notifier` port (publish one notification) and its SNS adapter.

use std::{collections::BTreeMap, time::Duration};

use aws_sdk_sns::{
    config::{retry::RetryConfig, timeout::TimeoutConfig},
    types::MessageAttributeValue,
};

use super::error::{AwsError, BoxFuture};

/// One message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publication {
    /// Target topic ARN; a name ending in `.fifo` is a FIFO topic.
    pub topic_arn: String,
    /// `Subject`.
    pub subject: String,
    /// `Message` body.
    pub message: String,
    /// String message attributes (`event_type`, `severity`, `principal`, ...).
    pub attributes: BTreeMap<String, String>,
    /// `MessageGroupId` (sent to FIFO topics only).
    pub group_id: Option<String>,
    /// `MessageDeduplicationId` (sent to FIFO topics only).
    pub dedup_id: String,
}

/// Publishes notifications. Implemented over the AWS SDK by [`SnsNotifier`].
pub trait Notifier: Send + Sync {
    /// Publishes `publication`; returns the SNS `MessageId`. Runs once per outbox attempt.
    fn publish<'a>(
        &'a self,
        publication: &'a Publication,
    ) -> BoxFuture<'a, Result<String, AwsError>>;
}

/// Whether `topic_arn` names a FIFO topic (which needs a group and a deduplication id).
pub fn is_fifo(topic_arn: &str) -> bool {
    topic_arn.ends_with(".fifo")
}

/// [`Notifier`] over SNS `Publish`, with SDK retries off (the outbox retries durably).
#[derive(Clone, Debug)]
pub struct SnsNotifier {
    client: aws_sdk_sns::Client,
}

impl SnsNotifier {
    /// Wraps `client`, with SDK retries disabled and each call bounded by `timeout`.
    pub fn new(client: &aws_sdk_sns::Client, timeout: Duration) -> Self {
        let config = client
            .config()
            .to_builder()
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .operation_attempt_timeout(timeout)
                    .operation_timeout(timeout)
                    .build(),
            )
            .build();
        Self {
            client: aws_sdk_sns::Client::from_conf(config),
        }
    }
}

impl Notifier for SnsNotifier {
    fn publish<'a>(
        &'a self,
        publication: &'a Publication,
    ) -> BoxFuture<'a, Result<String, AwsError>> {
        Box::pin(async move {
            let mut call = self
                .client
                .publish()
                .topic_arn(&publication.topic_arn)
                .subject(&publication.subject)
                .message(&publication.message);
            for (name, value) in &publication.attributes {
                let attribute = MessageAttributeValue::builder()
                    .data_type("String")
                    .string_value(value)
                    .build()
                    .map_err(|e| {
                        AwsError::permanent("Publish", "InvalidAttribute", e.to_string())
                    })?;
                call = call.message_attributes(name, attribute);
            }
            if is_fifo(&publication.topic_arn) {
                call = call
                    .set_message_group_id(
                        publication
                            .group_id
                            .clone()
                            .or_else(|| Some("portcullis".into())),
                    )
                    .message_deduplication_id(&publication.dedup_id);
            }
            let output = call
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("Publish", &e))?;
            Ok(output.message_id().unwrap_or_default().to_owned())
        })
    }
}
