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
