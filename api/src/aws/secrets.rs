//! The `SecretStore` port (what rotation needs from AWS Secrets Manager) and its SDK adapter.
//!
//! Every write carries a `ClientRequestToken`, so repeating a call after a timeout is safe.

use std::{collections::BTreeMap, time::Duration};

use aws_sdk_secretsmanager::config::{retry::RetryConfig, timeout::TimeoutConfig};
use secrecy::SecretString;

use super::error::{AwsError, BoxFuture};

/// Staging label of the version in use.
pub const AWSCURRENT: &str = "AWSCURRENT";
/// Staging label of the version being rotated in.
pub const AWSPENDING: &str = "AWSPENDING";
/// Staging label of the version rotated out.
pub const AWSPREVIOUS: &str = "AWSPREVIOUS";

/// One version of a secret, with its value.
#[derive(Debug, Clone)]
pub struct SecretValue {
    /// `VersionId`.
    pub version_id: String,
    /// The value (`SecretString`); `Debug` is redacted.
    pub value: SecretString,
    /// Staging labels on this version.
    pub stages: Vec<String>,
}

/// Version id → staging labels, as `DescribeSecret` reports them.
pub type VersionStages = BTreeMap<String, Vec<String>>;

/// What the remediation engine needs from a secret store. Implemented over the AWS SDK by
/// [`SecretsManagerStore`]; tests point that SDK at wiremock rather than faking the trait.
pub trait SecretStore: Send + Sync {
    /// `PutSecretValue`: stores `value` as version `token` with `stages`. Repeating the call with
    /// the same token and value is a no-op.
    fn put_value<'a>(
        &'a self,
        secret_id: &'a str,
        token: &'a str,
        value: &'a SecretString,
        stages: &'a [&'a str],
    ) -> BoxFuture<'a, Result<(), AwsError>>;

    /// `GetSecretValue` of version `version_id`, or of the version holding `stage`.
    fn get_value<'a>(
        &'a self,
        secret_id: &'a str,
        version_id: Option<&'a str>,
        stage: Option<&'a str>,
    ) -> BoxFuture<'a, Result<SecretValue, AwsError>>;

    /// `DescribeSecret`: every version's staging labels.
    fn describe_stages<'a>(
        &'a self,
        secret_id: &'a str,
    ) -> BoxFuture<'a, Result<VersionStages, AwsError>>;

    /// `UpdateSecretVersionStage`: moves `stage` to `move_to` and/or removes it from
    /// `remove_from`.
    fn update_stage<'a>(
        &'a self,
        secret_id: &'a str,
        stage: &'a str,
        move_to: Option<&'a str>,
        remove_from: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), AwsError>>;
}

/// [`SecretStore`] over AWS Secrets Manager. The SDK's own retries are off: the remediation
/// engine retries with its own durable backoff, so every attempt is visible in the step row.
#[derive(Clone, Debug)]
pub struct SecretsManagerStore {
    client: aws_sdk_secretsmanager::Client,
}

impl SecretsManagerStore {
    /// Wraps `client`, with SDK retries disabled and each call bounded by `timeout`.
    pub fn new(client: &aws_sdk_secretsmanager::Client, timeout: Duration) -> Self {
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
            client: aws_sdk_secretsmanager::Client::from_conf(config),
        }
    }
}

impl SecretStore for SecretsManagerStore {
    fn put_value<'a>(
        &'a self,
        secret_id: &'a str,
        token: &'a str,
        value: &'a SecretString,
        stages: &'a [&'a str],
    ) -> BoxFuture<'a, Result<(), AwsError>> {
        Box::pin(async move {
            use secrecy::ExposeSecret;
            let mut call = self
                .client
                .put_secret_value()
                .secret_id(secret_id)
                .client_request_token(token)
                .secret_string(value.expose_secret());
            for stage in stages {
                call = call.version_stages(*stage);
            }
            call.send()
                .await
                .map_err(|e| AwsError::from_sdk("PutSecretValue", &e))?;
            Ok(())
        })
    }

    fn get_value<'a>(
        &'a self,
        secret_id: &'a str,
        version_id: Option<&'a str>,
        stage: Option<&'a str>,
    ) -> BoxFuture<'a, Result<SecretValue, AwsError>> {
        Box::pin(async move {
            let output = self
                .client
                .get_secret_value()
                .secret_id(secret_id)
                .set_version_id(version_id.map(str::to_owned))
                .set_version_stage(stage.map(str::to_owned))
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("GetSecretValue", &e))?;
            Ok(SecretValue {
                version_id: output.version_id().unwrap_or_default().to_owned(),
                value: SecretString::from(output.secret_string().unwrap_or_default().to_owned()),
                stages: output.version_stages().to_vec(),
            })
        })
    }

    fn describe_stages<'a>(
        &'a self,
        secret_id: &'a str,
    ) -> BoxFuture<'a, Result<VersionStages, AwsError>> {
        Box::pin(async move {
            let output = self
                .client
                .describe_secret()
                .secret_id(secret_id)
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("DescribeSecret", &e))?;
            Ok(output
                .version_ids_to_stages()
                .map(|map| {
                    map.iter()
                        .map(|(version, stages)| (version.clone(), stages.clone()))
                        .collect()
                })
                .unwrap_or_default())
        })
    }

    fn update_stage<'a>(
        &'a self,
        secret_id: &'a str,
        stage: &'a str,
        move_to: Option<&'a str>,
        remove_from: Option<&'a str>,
    ) -> BoxFuture<'a, Result<(), AwsError>> {
        Box::pin(async move {
            self.client
                .update_secret_version_stage()
                .secret_id(secret_id)
                .version_stage(stage)
                .set_move_to_version_id(move_to.map(str::to_owned))
                .set_remove_from_version_id(remove_from.map(str::to_owned))
                .send()
                .await
                .map_err(|e| AwsError::from_sdk("UpdateSecretVersionStage", &e))?;
            Ok(())
        })
    }
}
