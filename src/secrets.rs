//! The two server secrets: the API-key pepper and the grant-token signing key.
//!
//! Taken from the configuration when set. Otherwise, on a developer machine, they are
//! generated once and kept in `<data_dir>/secrets.json` (mode 0600) so keys issued yesterday
//! still verify today. In production they must be configured: never generated, never logged.

use std::{
    fs,
    io::Write,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use rand::RngCore;
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use serde::{Deserialize, Serialize};

use crate::config::{Config, Environment};

/// Minimum length of each secret, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// The resolved secrets, redacted in `Debug`.
pub struct ServerSecrets {
    /// HMAC key of API-key hashes.
    pub key_pepper: SecretSlice<u8>,
    /// HMAC key of incident-grant token hashes (`PORTCULLIS_TOKEN_SIGNING_KEY`), kept apart
    /// from the pepper.
    pub token_signing_key: SecretSlice<u8>,
}

#[derive(Serialize, Deserialize)]
struct SecretsFile {
    key_pepper: String,
    token_signing_key: String,
}

/// Decodes a hex secret of at least [`MIN_SECRET_BYTES`]; the error never contains the value.
pub fn decode_secret(secret: &SecretString) -> Result<SecretSlice<u8>, String> {
    let bytes = hex::decode(secret.expose_secret().trim())
        .map_err(|_| "must be hex-encoded (e.g. `openssl rand -hex 32`)".to_owned())?;
    if bytes.len() < MIN_SECRET_BYTES {
        return Err(format!(
            "must be at least {MIN_SECRET_BYTES} bytes ({} hex characters)",
            MIN_SECRET_BYTES * 2
        ));
    }
    Ok(SecretSlice::from(bytes))
}

impl ServerSecrets {
    /// Resolves the secrets from the configuration, the data directory, or (dev only) fresh randomness.
    pub fn resolve(config: &Config) -> anyhow::Result<Self> {
        let file = secrets_path(&config.data_dir);
        let stored = read_file(&file)?;
        let pick = |configured: &Option<SecretString>,
                    stored: Option<&str>,
                    var: &str|
         -> anyhow::Result<Option<SecretSlice<u8>>> {
            if let Some(secret) = configured {
                return decode_secret(secret)
                    .map(Some)
                    .map_err(|e| anyhow::anyhow!("{var}: {e}"));
            }
            match stored {
                Some(hex) => decode_secret(&SecretString::from(hex.to_owned()))
                    .map(Some)
                    .map_err(|e| anyhow::anyhow!("{}: {var} {e}", file.display())),
                None => Ok(None),
            }
        };
        let pepper = pick(
            &config.key_pepper,
            stored.as_ref().map(|s| s.key_pepper.as_str()),
            "PORTCULLIS_KEY_PEPPER",
        )?;
        let signing = pick(
            &config.token_signing_key,
            stored.as_ref().map(|s| s.token_signing_key.as_str()),
            "PORTCULLIS_TOKEN_SIGNING_KEY",
        )?;
        if let (Some(key_pepper), Some(token_signing_key)) = (pepper, signing) {
            return Ok(Self {
                key_pepper,
                token_signing_key,
            });
        }
        if config.env == Environment::Production {
            bail!(
                "PORTCULLIS_KEY_PEPPER and PORTCULLIS_TOKEN_SIGNING_KEY must be set in production"
            );
        }
        let generated = SecretsFile {
            key_pepper: random_hex(),
            token_signing_key: random_hex(),
        };
        write_file(&file, &generated)?;
        tracing::info!(path = %file.display(), "generated development secrets");
        Self::resolve(config)
    }
}

impl std::fmt::Debug for ServerSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerSecrets(<redacted>)")
    }
}

fn secrets_path(data_dir: &Path) -> PathBuf {
    data_dir.join("secrets.json")
}

fn random_hex() -> String {
    let mut bytes = [0u8; MIN_SECRET_BYTES];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

fn read_file(path: &Path) -> anyhow::Result<Option<SecretsFile>> {
    match fs::read_to_string(path) {
        Ok(text) => serde_json::from_str(&text)
            .map(Some)
            .with_context(|| format!("{} is not a valid secrets file", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("failed to read {}", path.display())),
    }
}

fn write_file(path: &Path, secrets: &SecretsFile) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    }
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("failed to create {}", path.display()))?;
    file.write_all(serde_json::to_string_pretty(secrets)?.as_bytes())
        .with_context(|| format!("failed to write {}", path.display()))?;
    Ok(())
}
