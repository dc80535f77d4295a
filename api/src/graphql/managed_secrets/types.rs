//! GraphQL shapes of managed secrets.

use async_graphql::{ComplexObject, Context, Enum, InputObject, MaybeUndefined, SimpleObject};
use chrono::{DateTime, Utc};
use entity::managed_secret::{self, ManagedSecretKind};
use uuid::Uuid;

use crate::{
    graphql::{error::ApiResult, services},
    service::managed_secrets,
};

/// What a managed secret holds.
#[derive(Enum, Copy, Clone, Debug, PartialEq, Eq)]
#[graphql(name = "ManagedSecretKind")]
pub enum ManagedSecretKindOut {
    /// A Portcullis API key handed to a consumer (rotation issues a new key to the same
    /// principal).
    ApiKey,
    /// A credential the proxy injects into upstream requests (rotation stages a new random
    /// value).
    UpstreamCredential,
}

impl From<ManagedSecretKind> for ManagedSecretKindOut {
    fn from(k: ManagedSecretKind) -> Self {
        match k {
            ManagedSecretKind::ApiKey => Self::ApiKey,
            ManagedSecretKind::UpstreamCredential => Self::UpstreamCredential,
        }
    }
}

impl From<ManagedSecretKindOut> for ManagedSecretKind {
    fn from(k: ManagedSecretKindOut) -> Self {
        match k {
            ManagedSecretKindOut::ApiKey => Self::ApiKey,
            ManagedSecretKindOut::UpstreamCredential => Self::UpstreamCredential,
        }
    }
}

/// A Secrets Manager secret Portcullis rotates. Its value is never exposed.
#[derive(SimpleObject, Clone, Debug)]
#[graphql(name = "ManagedSecret", complex)]
pub struct ManagedSecretOut {
    /// Row id.
    pub id: Uuid,
    /// Secrets Manager name or ARN, as registered.
    pub secret_id: String,
    /// What it holds.
    pub kind: ManagedSecretKindOut,
    /// The API key it holds (API_KEY; changes with every rotation).
    pub api_key_id: Option<Uuid>,
    /// The route whose upstream credential it is, if any.
    pub route_id: Option<Uuid>,
    /// Scheduled rotation period; null = on demand only.
    pub rotation_interval_days: Option<i32>,
    /// When the last rotation finished.
    pub last_rotated_at: Option<DateTime<Utc>>,
    /// Registered at.
    pub created_at: DateTime<Utc>,
    /// Last changed at.
    pub updated_at: DateTime<Utc>,
}

impl From<managed_secret::Model> for ManagedSecretOut {
    fn from(s: managed_secret::Model) -> Self {
        Self {
            id: s.id,
            secret_id: s.secret_id,
            kind: s.kind.into(),
            api_key_id: s.api_key_id,
            route_id: s.route_id,
            rotation_interval_days: s.rotation_interval_days,
            last_rotated_at: s.last_rotated_at,
            created_at: s.created_at,
            updated_at: s.updated_at,
        }
    }
}

/// One version of a secret and its staging labels.
#[derive(SimpleObject, Clone, Debug)]
pub struct SecretVersionStages {
    /// `VersionId` (a rotation's is its run id).
    pub version_id: String,
    /// Staging labels, e.g. `AWSCURRENT`, `AWSPENDING`, `AWSPREVIOUS`.
    pub stages: Vec<String>,
}

#[ComplexObject]
impl ManagedSecretOut {
    /// The secret's versions and their staging labels, read live from Secrets Manager
    /// (`DescribeSecret`; no value is read). `UNAVAILABLE` when this server has no Secrets
    /// Manager, `NOT_FOUND` when the secret is gone from it, `AWS_ERROR` when the call fails;
    /// nullable so that such an error leaves the rest of the secret readable.
    async fn versions(&self, ctx: &Context<'_>) -> ApiResult<Option<Vec<SecretVersionStages>>> {
        let versions = managed_secrets::versions(services(ctx)?, &self.secret_id).await?;
        Ok(Some(
            versions
                .into_iter()
                .map(|(version_id, stages)| SecretVersionStages { version_id, stages })
                .collect(),
        ))
    }
}

/// Input of `registerManagedSecret`.
#[derive(InputObject, Clone, Debug)]
pub struct RegisterManagedSecretInput {
    /// Secrets Manager name or ARN (≤ 2048 characters); the secret must exist.
    pub secret_id: String,
    /// What it holds.
    pub kind: ManagedSecretKindOut,
    /// The API key it holds: required for API_KEY, absent for UPSTREAM_CREDENTIAL.
    pub api_key_id: Option<Uuid>,
    /// The route whose upstream credential it is (UPSTREAM_CREDENTIAL only, optional).
    pub route_id: Option<Uuid>,
    /// Rotate every this many days (1–1000); absent = on demand only.
    pub rotation_interval_days: Option<i32>,
}

impl From<RegisterManagedSecretInput> for managed_secrets::NewManagedSecret {
    fn from(input: RegisterManagedSecretInput) -> Self {
        Self {
            secret_id: input.secret_id,
            kind: input.kind.into(),
            api_key_id: input.api_key_id,
            route_id: input.route_id,
            rotation_interval_days: input.rotation_interval_days,
        }
    }
}

/// Input of `updateManagedSecret`; absent fields stay unchanged.
#[derive(InputObject, Clone, Debug, Default)]
pub struct UpdateManagedSecretInput {
    /// Rotate every this many days (1–1000); null = on demand only.
    pub rotation_interval_days: MaybeUndefined<i32>,
}

impl From<UpdateManagedSecretInput> for managed_secrets::ManagedSecretPatch {
    fn from(input: UpdateManagedSecretInput) -> Self {
        Self {
            rotation_interval_days: input.rotation_interval_days.into(),
        }
    }
}
