//! Rotation of a secret held in AWS Secrets Manager, following AWS's four-step protocol
//! (<https://docs.aws.amazon.com/secretsmanager/latest/userguide/rotate-secrets_lambda-functions.html>),
//! with the run id as `ClientRequestToken` (= the new `VersionId`). Two kinds of secret:
//!
//! * an **API key** handed to a consumer:
//!   1. `createSecret`: a new key for the same principal, staged `AWSPENDING`.
//!   2. `setSecret`: nothing to configure (the key is ours).
//!   3. `testSecret`: the pending key verifies (parse + constant-time hash comparison against
//!      the stored row, as the proxy's verifier does, and the key is usable).
//!   4. `finishSecret`: `AWSCURRENT` moves to the new version; the old one becomes
//!      `AWSPREVIOUS`.
//! * an **upstream credential** the proxy injects: a shared secret that the upstream reads
//!   from the same Secrets Manager secret (accepting `AWSCURRENT` and, during the switch,
//!   `AWSPREVIOUS`). `createSecret` stages 256 fresh random bits (keeping an auth scheme such
//!   as `Bearer ` in front), `testSecret` checks the value is a usable header value, and
//!   `finishSecret` also writes an `upstream_credential` entry to the change feed, so every
//!   proxy fetches the new value at once instead of after its cache TTL. Credentials issued
//!   by another system (a database password, a SaaS token) are rotated by that system's own
//!   rotation Lambda; the proxies follow them within the cache TTL.
//!
//! As in AWS's rotation template, every step first reads the version's stages: already
//! `AWSCURRENT` → nothing to do; neither `AWSPENDING` nor `AWSCURRENT` → error. A stale
//! `AWSPENDING` on another version (an abandoned rotation) is removed rather than blocking
//! every later rotation.
//!
//! EXACTLY ONE KEY PER ROTATION: the secret version is the source of truth. `createSecret`
//! generates the key id and value, stores them in the `AWSPENDING` version, and only then
//! inserts the key row (by that id, in the transaction that completes the step). A retry after
//! a lost response finds the version and reads the value back, so it inserts that same key
//! instead of issuing a second one; the plaintext key is never stored in our database.

use base64::Engine as _;
use chrono::Utc;
use entity::{
    api_key,
    managed_secret::{self, ManagedSecretKind},
    policy_change::PolicyChangeOp,
    remediation_step,
};
use proxy::keys::{PlainToken, TokenEnv, TokenHash, TokenKind};
use rand::RngCore;
use sea_orm::{
    ActiveModelTrait, ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter, Set, TransactionTrait,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

use super::{Engine, StepError, actions::StepAction, worker::complete_step};
use crate::{
    aws::secrets::{AWSCURRENT, AWSPENDING, VersionStages},
    service::feed::{self, kind},
};

/// The JSON document stored in the secret.
#[derive(Serialize, Deserialize)]
struct KeySecret {
    /// The full API key.
    api_key: String,
    /// Its row id.
    key_id: Uuid,
    /// Its visible prefix.
    prefix: String,
}

/// A Secrets Manager rotation-Lambda event.
#[derive(Debug, Clone, Deserialize)]
pub struct RotationEvent {
    /// `createSecret`, `setSecret`, `testSecret` or `finishSecret`.
    #[serde(rename = "Step")]
    pub step: String,
    /// The secret's ARN or name.
    #[serde(rename = "SecretId")]
    pub secret_id: String,
    /// The new version's id.
    #[serde(rename = "ClientRequestToken")]
    pub client_request_token: String,
}

/// Executes a rotation step of a run and completes it; `Ok(false)` if the step was taken
/// over by another worker.
pub(crate) async fn execute(
    engine: &Engine,
    run_id: Uuid,
    step: &remediation_step::Model,
    attempt: i32,
    action: &StepAction,
) -> Result<bool, StepError> {
    let token = run_id.to_string();
    let db = engine.db();
    match action {
        StepAction::RotateCreate {
            secret_id,
            old_key_id,
        } => {
            let staged = create_secret(engine, secret_id, &token).await?;
            let txn = db.begin().await?;
            let output = match staged {
                Staged::AlreadyCurrent => json!({ "already": AWSCURRENT }),
                Staged::Pending(secret) => {
                    let (key_id, inserted) =
                        ensure_key_row(&txn, engine, &secret, *old_key_id).await?;
                    json!({ "new_key_id": key_id, "version_id": token, "issued": inserted })
                }
            };
            finish(txn, step.id, attempt, output).await
        }
        StepAction::RotateCreateCredential { secret_id } => {
            let output = match create_credential(engine, secret_id, &token).await? {
                true => json!({ "already": AWSCURRENT }),
                false => json!({ "version_id": token, "staged": AWSPENDING }),
            };
            complete(db, step.id, attempt, output).await
        }
        StepAction::RotateSet { secret_id } => {
            let already = check_stages(engine, secret_id, &token).await?;
            complete(
                db,
                step.id,
                attempt,
                json!({ "version_id": token, "already_current": already }),
            )
            .await
        }
        StepAction::RotateTest { secret_id } => {
            let output = match kind_of(engine, secret_id).await? {
                ManagedSecretKind::ApiKey => {
                    let key_id = test_secret(engine, secret_id, &token).await?;
                    json!({ "version_id": token, "verified_key_id": key_id })
                }
                ManagedSecretKind::UpstreamCredential => {
                    test_credential(engine, secret_id, &token).await?;
                    json!({ "version_id": token, "verified": true })
                }
            };
            complete(db, step.id, attempt, output).await
        }
        StepAction::RotateFinish { secret_id } => match kind_of(engine, secret_id).await? {
            ManagedSecretKind::ApiKey => {
                let new_key_id = finish_secret(engine, secret_id, &token).await?;
                let txn = db.begin().await?;
                record_rotation(&txn, secret_id, Some(new_key_id)).await?;
                finish(
                    txn,
                    step.id,
                    attempt,
                    json!({ "version_id": token, "current_key_id": new_key_id }),
                )
                .await
            }
            ManagedSecretKind::UpstreamCredential => {
                promote(engine, secret_id, &token).await?;
                let txn = db.begin().await?;
                record_rotation(&txn, secret_id, None).await?;
                finish(
                    txn,
                    step.id,
                    attempt,
                    json!({ "version_id": token, "current": true }),
                )
                .await
            }
        },
        _ => Err(StepError::permanent("not a rotation step")),
    }
}

async fn complete<C: ConnectionTrait>(
    db: &C,
    step_id: Uuid,
    attempt: i32,
    output: Value,
) -> Result<bool, StepError> {
    Ok(complete_step(db, step_id, attempt, false, output).await?)
}

async fn finish(
    txn: sea_orm::DatabaseTransaction,
    step_id: Uuid,
    attempt: i32,
    output: Value,
) -> Result<bool, StepError> {
    if complete_step(&txn, step_id, attempt, false, output).await? {
        txn.commit().await?;
        Ok(true)
    } else {
        txn.rollback().await?;
        Ok(false)
    }
}

/// What `createSecret` left in the secret.
enum Staged {
    /// The token's version is already current: the rotation finished earlier.
    AlreadyCurrent,
    /// The token's version holds this pending key.
    Pending(KeySecret),
}

/// Every version's staging labels (`DescribeSecret`).
async fn stages(engine: &Engine, secret_id: &str) -> Result<VersionStages, StepError> {
    Ok(engine.secrets().describe_stages(secret_id).await?)
}

fn has(versions: &VersionStages, version: &str, stage: &str) -> bool {
    versions
        .get(version)
        .is_some_and(|stages| stages.iter().any(|s| s == stage))
}

/// Step 1. Returns the pending key (read back from the secret when it was staged before).
async fn create_secret(engine: &Engine, secret_id: &str, token: &str) -> Result<Staged, StepError> {
    let store = engine.secrets();
    let versions = stages(engine, secret_id).await?;
    if has(&versions, token, AWSCURRENT) {
        return Ok(Staged::AlreadyCurrent);
    }
    clear_stale_pending(engine, secret_id, token, &versions).await?;
    if versions.contains_key(token) {
        if !has(&versions, token, AWSPENDING) {
            // Our version lost its label (an operator moved it): put it back.
            store
                .update_stage(secret_id, AWSPENDING, Some(token), None)
                .await?;
        }
        let value = store.get_value(secret_id, Some(token), None).await?;
        return Ok(Staged::Pending(parse_secret(&value.value)?));
    }
    // Which environment the new key is for: the old key's (read from the secret, when it
    // holds one, else live).
    let env = match store.get_value(secret_id, None, Some(AWSCURRENT)).await {
        Ok(current) => parse_secret(&current.value)
            .ok()
            .and_then(|s| PlainToken::parse(&s.api_key).ok())
            .map_or(TokenEnv::Live, |t| t.env()),
        Err(error) if error.code == "ResourceNotFoundException" => TokenEnv::Live,
        Err(error) => return Err(error.into()),
    };
    let token_value = PlainToken::generate(TokenKind::ApiKey, env);
    let secret = KeySecret {
        api_key: token_value.expose_secret().to_owned(),
        key_id: Uuid::now_v7(),
        prefix: token_value.lookup_prefix().to_owned(),
    };
    let document = SecretString::from(
        serde_json::to_string(&secret)
            .map_err(|e| StepError::permanent(format!("cannot encode the secret: {e}")))?,
    );
    store
        .put_value(secret_id, token, &document, &[AWSPENDING])
        .await?;
    Ok(Staged::Pending(secret))
}

fn parse_secret(value: &SecretString) -> Result<KeySecret, StepError> {
    serde_json::from_str(value.expose_secret()).map_err(|_| {
        // Never echo the value: it is a credential.
        StepError::permanent("the secret value is not a Portcullis API key document")
    })
}

/// Inserts the key row of `secret` (same owner and settings as `old_key_id`) unless it
/// exists; returns its id and whether it was inserted.
async fn ensure_key_row<C: ConnectionTrait>(
    db: &C,
    engine: &Engine,
    secret: &KeySecret,
    old_key_id: Uuid,
) -> Result<(Uuid, bool), StepError> {
    if api_key::Entity::find_by_id(secret.key_id)
        .one(db)
        .await?
        .is_some()
    {
        return Ok((secret.key_id, false));
    }
    let old = api_key::Entity::find_by_id(old_key_id)
        .one(db)
        .await?
        .ok_or_else(|| StepError::permanent(format!("api key {old_key_id} does not exist")))?;
    let token = PlainToken::parse(&secret.api_key)
        .map_err(|_| StepError::permanent("the pending secret holds a malformed key"))?;
    let now = Utc::now();
    api_key::ActiveModel::successor_of(
        &old,
        api_key::NewKey {
            id: secret.key_id,
            principal_id: old.principal_id,
            name: &old.name,
            prefix: token.lookup_prefix(),
            hash: engine.hasher().hash(&token).to_hex(),
            environment: token.env().as_str(),
            now,
        },
    )
    .insert(db)
    .await?;
    feed::record(db, kind::API_KEY, secret.key_id, PolicyChangeOp::Upsert).await?;
    Ok((secret.key_id, true))
}

/// The stage check of steps 2–4: `true` if the token's version is already current; an error
/// if it is neither pending nor current.
async fn check_stages(engine: &Engine, secret_id: &str, token: &str) -> Result<bool, StepError> {
    let versions = stages(engine, secret_id).await?;
    if has(&versions, token, AWSCURRENT) {
        return Ok(true);
    }
    if !has(&versions, token, AWSPENDING) {
        return Err(StepError::permanent(format!(
            "version {token} of secret {secret_id} is neither AWSPENDING nor AWSCURRENT"
        )));
    }
    Ok(false)
}

/// Step 3: the pending key parses, matches its stored hash and is usable.
async fn test_secret(engine: &Engine, secret_id: &str, token: &str) -> Result<Uuid, StepError> {
    check_stages(engine, secret_id, token).await?;
    let value = engine
        .secrets()
        .get_value(secret_id, Some(token), None)
        .await?;
    let secret = parse_secret(&value.value)?;
    let parsed = PlainToken::parse(&secret.api_key)
        .map_err(|_| StepError::permanent("the pending secret holds a malformed key"))?;
    let row = api_key::Entity::find()
        .filter(api_key::Column::Prefix.eq(parsed.lookup_prefix()))
        .one(engine.db())
        .await?
        .ok_or_else(|| StepError::permanent("the pending key has no key row"))?;
    let stored = TokenHash::from_hex(&row.hash)
        .map_err(|_| StepError::permanent("the pending key's stored hash is malformed"))?;
    let now = Utc::now();
    let usable = row.revoked_at.is_none()
        && row.suspended_at.is_none()
        && row.expires_at.is_none_or(|at| at > now);
    if parsed.kind() != TokenKind::ApiKey || !engine.hasher().verify(&parsed, &stored) || !usable {
        return Err(StepError::permanent("the pending key does not verify"));
    }
    Ok(row.id)
}

/// Step 4 of an API key: [`promote`], then the new key's id.
async fn finish_secret(engine: &Engine, secret_id: &str, token: &str) -> Result<Uuid, StepError> {
    promote(engine, secret_id, token).await?;
    let value = engine
        .secrets()
        .get_value(secret_id, Some(token), None)
        .await?;
    Ok(parse_secret(&value.value)?.key_id)
}

/// Step 4: moves `AWSCURRENT` to the token's version and drops its `AWSPENDING`.
async fn promote(engine: &Engine, secret_id: &str, token: &str) -> Result<(), StepError> {
    let store = engine.secrets();
    let versions = stages(engine, secret_id).await?;
    if !has(&versions, token, AWSCURRENT) {
        if !has(&versions, token, AWSPENDING) {
            return Err(StepError::permanent(format!(
                "version {token} of secret {secret_id} is neither AWSPENDING nor AWSCURRENT"
            )));
        }
        let current = versions
            .iter()
            .find(|(_, labels)| labels.iter().any(|s| s == AWSCURRENT))
            .map(|(version, _)| version.as_str());
        store
            .update_stage(secret_id, AWSCURRENT, Some(token), current)
            .await?;
    }
    if has(&versions, token, AWSPENDING) {
        store
            .update_stage(secret_id, AWSPENDING, None, Some(token))
            .await?;
    }
    Ok(())
}

/// Records a finished rotation: the time, the new key (API-key secrets), and for an upstream
/// credential a change-feed entry so every proxy refetches the value now.
async fn record_rotation<C: ConnectionTrait>(
    db: &C,
    secret_id: &str,
    new_key_id: Option<Uuid>,
) -> Result<(), StepError> {
    if let Some(secret) = managed_secret::Entity::find()
        .filter(managed_secret::Column::SecretId.eq(secret_id))
        .one(db)
        .await?
    {
        let upstream = secret.kind == ManagedSecretKind::UpstreamCredential;
        let now = Utc::now();
        let mut active: managed_secret::ActiveModel = secret.into();
        if let Some(key_id) = new_key_id {
            active.api_key_id = Set(Some(key_id));
        }
        active.last_rotated_at = Set(Some(now));
        active.updated_at = Set(now);
        active.update(db).await?;
        if upstream {
            feed::record(
                db,
                kind::UPSTREAM_CREDENTIAL,
                secret_id,
                PolicyChangeOp::Upsert,
            )
            .await?;
        }
    }
    Ok(())
}

/// What managed secret `secret_id` holds.
async fn kind_of(engine: &Engine, secret_id: &str) -> Result<ManagedSecretKind, StepError> {
    Ok(managed_secret::Entity::find()
        .filter(managed_secret::Column::SecretId.eq(secret_id))
        .one(engine.db())
        .await?
        .ok_or_else(|| StepError::permanent(format!("secret {secret_id} is not managed")))?
        .kind)
}

/// Step 1 of an upstream credential: stages a new random value as `AWSPENDING` under the
/// token's version, unless that version exists; `true` if it is already current.
async fn create_credential(
    engine: &Engine,
    secret_id: &str,
    token: &str,
) -> Result<bool, StepError> {
    let store = engine.secrets();
    let versions = stages(engine, secret_id).await?;
    if has(&versions, token, AWSCURRENT) {
        return Ok(true);
    }
    clear_stale_pending(engine, secret_id, token, &versions).await?;
    if versions.contains_key(token) {
        if !has(&versions, token, AWSPENDING) {
            store
                .update_stage(secret_id, AWSPENDING, Some(token), None)
                .await?;
        }
        return Ok(false);
    }
    let current = match store.get_value(secret_id, None, Some(AWSCURRENT)).await {
        Ok(current) => Some(current.value),
        Err(error) if error.code == "ResourceNotFoundException" => None,
        Err(error) => return Err(error.into()),
    };
    let value = next_credential(current.as_ref().map(ExposeSecret::expose_secret));
    store
        .put_value(secret_id, token, &value, &[AWSPENDING])
        .await?;
    Ok(false)
}

/// A new credential: 256 random bits, base64url, after the current value's auth scheme
/// (everything up to its last space, e.g. `Bearer `), so the header keeps its form.
fn next_credential(current: Option<&str>) -> SecretString {
    let scheme = current
        .and_then(|value| value.rfind(' ').map(|at| &value[..=at]))
        .unwrap_or("");
    let mut random = [0u8; 32];
    rand::rng().fill_bytes(&mut random);
    SecretString::from(format!(
        "{scheme}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random)
    ))
}

/// Step 3 of an upstream credential: the pending value is a non-empty, valid header value
/// that differs from the current one.
async fn test_credential(engine: &Engine, secret_id: &str, token: &str) -> Result<(), StepError> {
    if check_stages(engine, secret_id, token).await? {
        return Ok(());
    }
    let store = engine.secrets();
    let pending = store.get_value(secret_id, Some(token), None).await?;
    let pending = pending.value.expose_secret();
    // Never echo the value: it is a credential.
    if pending.trim().is_empty() || http::HeaderValue::from_str(pending).is_err() {
        return Err(StepError::permanent(
            "the pending credential is not a valid header value",
        ));
    }
    match store.get_value(secret_id, None, Some(AWSCURRENT)).await {
        Ok(current) if current.value.expose_secret() == pending => Err(StepError::permanent(
            "the pending credential equals the current one",
        )),
        Ok(_) => Ok(()),
        Err(error) if error.code == "ResourceNotFoundException" => Ok(()),
        Err(error) => Err(error.into()),
    }
}

/// Removes `AWSPENDING` from every version but the token's (an abandoned rotation must not
/// block every later one).
async fn clear_stale_pending(
    engine: &Engine,
    secret_id: &str,
    token: &str,
    versions: &VersionStages,
) -> Result<(), StepError> {
    for (version, labels) in versions {
        if version != token && labels.iter().any(|s| s == AWSPENDING) {
            tracing::warn!(secret_id, version, "removing a stale AWSPENDING label");
            engine
                .secrets()
                .update_stage(secret_id, AWSPENDING, None, Some(version))
                .await?;
        }
    }
    Ok(())
}

/// Why a rotation-Lambda event failed (Secrets Manager retries the step).
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// Unknown step name.
    #[error("unknown rotation step {0:?}")]
    UnknownStep(String),
    /// No managed secret with this id.
    #[error("secret {0} is not managed by Portcullis")]
    UnknownSecret(String),
    /// A step failed.
    #[error(transparent)]
    Step(#[from] StepError),
}

/// The rotation-Lambda entry: runs one step of a rotation that Secrets Manager drives (for
/// scheduled rotation). The same idempotent step functions as the engine's, so Secrets
/// Manager's own retries are safe. After `finishSecret` the old key expires after the
/// configured grace period.
pub async fn handle_rotation_event(
    engine: &Engine,
    event: RotationEvent,
) -> Result<(), RotationError> {
    let db = engine.db();
    let managed = managed_secret::Entity::find()
        .filter(managed_secret::Column::SecretId.eq(event.secret_id.as_str()))
        .one(db)
        .await
        .map_err(StepError::from)?
        .ok_or_else(|| RotationError::UnknownSecret(event.secret_id.clone()))?;
    let secret_id = managed.secret_id.as_str();
    let token = event.client_request_token.as_str();
    let upstream = managed.kind == ManagedSecretKind::UpstreamCredential;
    match event.step.as_str() {
        "createSecret" if upstream => {
            create_credential(engine, secret_id, token).await?;
        }
        "createSecret" => {
            let old_key_id = managed.api_key_id.ok_or_else(|| {
                StepError::permanent(format!("secret {secret_id} holds no API key"))
            })?;
            if let Staged::Pending(secret) = create_secret(engine, secret_id, token).await? {
                let txn = db.begin().await.map_err(StepError::from)?;
                ensure_key_row(&txn, engine, &secret, old_key_id).await?;
                txn.commit().await.map_err(StepError::from)?;
            }
        }
        "setSecret" => {
            check_stages(engine, secret_id, token).await?;
        }
        "testSecret" if upstream => {
            test_credential(engine, secret_id, token).await?;
        }
        "testSecret" => {
            test_secret(engine, secret_id, token).await?;
        }
        "finishSecret" if upstream => {
            promote(engine, secret_id, token).await?;
            let txn = db.begin().await.map_err(StepError::from)?;
            record_rotation(&txn, secret_id, None).await?;
            txn.commit().await.map_err(StepError::from)?;
        }
        "finishSecret" => {
            let old_key_id = managed.api_key_id;
            let new_key_id = finish_secret(engine, secret_id, token).await?;
            let txn = db.begin().await.map_err(StepError::from)?;
            if let Some(old_key_id) = old_key_id.filter(|old| *old != new_key_id) {
                super::actions::apply(
                    &txn,
                    Uuid::nil(),
                    0,
                    &StepAction::ExpireKey {
                        key_id: old_key_id,
                        grace_secs: engine.config().rotation_grace_secs,
                    },
                )
                .await?;
            }
            record_rotation(&txn, secret_id, Some(new_key_id)).await?;
            txn.commit().await.map_err(StepError::from)?;
        }
        other => return Err(RotationError::UnknownStep(other.to_owned())),
    }
    Ok(())
}
