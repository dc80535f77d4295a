//! AWS adapters: SNS (notifications) and Secrets Manager (credential rotation).
//!
//! Clients come from the standard AWS configuration chain, so `AWS_ENDPOINT_URL`,
//! `AWS_ENDPOINT_URL_SNS`, `AWS_ENDPOINT_URL_SECRETS_MANAGER`, `AWS_REGION` and the credential
//! variables all work; [`AwsClients::for_endpoints`] points them at explicit endpoints (the
//! in-process mocks of `portcullis dev`, or wiremock in tests) without touching the environment.

pub mod dev_mock;
pub mod error;
pub mod secrets;
pub mod sns;

use aws_config::{BehaviorVersion, Region};
use aws_sdk_secretsmanager::config::Credentials;

/// The AWS service clients the management plane uses.
#[derive(Clone, Debug)]
pub struct AwsClients {
    /// Publishes notifications.
    pub sns: aws_sdk_sns::Client,
    /// Stores and rotates credentials.
    pub secrets: aws_sdk_secretsmanager::Client,
}

impl AwsClients {
    /// Clients configured from the environment, exactly as the AWS CLI would be.
    pub async fn from_env() -> Self {
        let shared = aws_config::defaults(BehaviorVersion::latest()).load().await;
        Self {
            sns: aws_sdk_sns::Client::new(&shared),
            secrets: aws_sdk_secretsmanager::Client::new(&shared),
        }
    }

    /// Clients pointed at explicit endpoints with static throw-away credentials.
    pub async fn for_endpoints(sns_endpoint: &str, secrets_endpoint: &str) -> Self {
        let shared = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new(
                "portcullis-dev",
                "portcullis-dev",
                None,
                None,
                "portcullis-dev",
            ))
            .load()
            .await;
        let sns = aws_sdk_sns::config::Builder::from(&shared)
            .endpoint_url(sns_endpoint)
            .build();
        let secrets = aws_sdk_secretsmanager::config::Builder::from(&shared)
            .endpoint_url(secrets_endpoint)
            .build();
        Self {
            sns: aws_sdk_sns::Client::from_conf(sns),
            secrets: aws_sdk_secretsmanager::Client::from_conf(secrets),
        }
    }
}

/// Reads upstream credentials for the proxy from Secrets Manager (`AWSCURRENT`), bounded by a
/// timeout because it can run on a request's path.
#[derive(Clone, Debug)]
pub struct SecretsManagerSource {
    client: aws_sdk_secretsmanager::Client,
    timeout: std::time::Duration,
}

impl SecretsManagerSource {
    /// A source over `client`, each read bounded by 2 s.
    pub fn new(client: aws_sdk_secretsmanager::Client) -> Self {
        Self {
            client,
            timeout: std::time::Duration::from_secs(2),
        }
    }
}

impl proxy::credentials::SecretSource for SecretsManagerSource {
    fn current_value<'a>(
        &'a self,
        secret_id: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<String, proxy::credentials::SecretSourceError>>
    {
        Box::pin(async move {
            let error = |message: String| proxy::credentials::SecretSourceError {
                secret_id: secret_id.to_owned(),
                message,
            };
            let call = self
                .client
                .get_secret_value()
                .secret_id(secret_id)
                .version_stage("AWSCURRENT")
                .send();
            let output = tokio::time::timeout(self.timeout, call)
                .await
                .map_err(|_| error("timed out".into()))?
                .map_err(|e| {
                    use aws_sdk_secretsmanager::error::ProvideErrorMetadata;
                    error(format!(
                        "{}: {}",
                        e.code().unwrap_or("error"),
                        e.message().unwrap_or("no message")
                    ))
                })?;
            output
                .secret_string()
                .map(str::to_owned)
                .ok_or_else(|| error("the secret has no string value".into()))
        })
    }
}

/// A [`SecretsManagerSource`] configured from the environment on its first read, so that a
/// proxy whose routes name no upstream credential never loads the AWS configuration chain
/// (its code and TLS set-up are a measurable part of an idle proxy's memory).
#[derive(Debug, Default)]
pub struct LazySecretsManagerSource {
    source: tokio::sync::OnceCell<SecretsManagerSource>,
}

impl LazySecretsManagerSource {
    /// A source that has not touched AWS yet.
    pub fn new() -> Self {
        Self::default()
    }
}

impl proxy::credentials::SecretSource for LazySecretsManagerSource {
    fn current_value<'a>(
        &'a self,
        secret_id: &'a str,
    ) -> futures_util::future::BoxFuture<'a, Result<String, proxy::credentials::SecretSourceError>>
    {
        Box::pin(async move {
            let source = self
                .source
                .get_or_init(|| async {
                    SecretsManagerSource::new(AwsClients::from_env().await.secrets)
                })
                .await;
            source.current_value(secret_id).await
        })
    }
}
