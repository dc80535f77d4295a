//! OIDC access tokens (JWTs): provider discovery, a JWKS cache with single-flight, rate-limited
//! refresh, and token verification (DESIGN.md "Request pipeline", step 4).
//!
//! Discovery and JWKS downloads use plain `reqwest` + `serde`, not `openidconnect`: its
//! `discover_async` always downloads the JWKS into its own (RustCrypto) key types as well, which
//! we would throw away because verification runs on `jsonwebtoken` over aws-lc-rs — a second
//! JWKS download per discovery and a second key model for two small GET requests.
//!
//! Security properties (each has a test in `oidc/tests.rs`):
//! * the header `alg` must be in the configured allow-list, which can never hold `none` or an
//!   HMAC algorithm (refused at config time), AND must fit the JWK it names (key type, curve, and
//!   the JWK's own `alg` when present) — so "HS256 signed with the RSA public key" fails;
//! * `iss` must equal the configured issuer exactly, `aud` must hold one configured audience,
//!   `exp`/`nbf` are checked with `leeway_secs`; `sub` and `exp` are required;
//! * an unknown `kid` causes at most one JWKS download per `jwks_refresh_cooldown_secs`, shared
//!   by every request waiting for it (single flight), so made-up `kid`s cannot hammer the
//!   provider.
//!
//! Per request with the key cached: no network, no lock (one `ArcSwap` load), a hash lookup by
//! `kid` and the signature check; the rest is parsing a few hundred bytes.

use std::{
    borrow::Cow,
    collections::HashMap,
    fmt,
    str::FromStr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use chrono::{DateTime, Utc};
use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse},
};
use serde::{
    Deserialize,
    de::{DeserializeSeed, IgnoredAny, MapAccess, Visitor},
};
use tokio::sync::OwnedMutexGuard;

use crate::{
    authn::{AuthFailure, Authenticated, Refused},
    cache::PolicyCache,
    error::ProxyError,
    routes::AuthMethod,
};

#[cfg(any(test, feature = "test-util"))]
pub mod testing;
#[cfg(test)]
mod tests;

/// The `[proxy.oidc]` settings (`PORTCULLIS_PROXY__OIDC__*`). Absent: OIDC is off and bearer
/// JWTs are refused on every route.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The issuer URL, compared byte for byte with the discovery document's `issuer` and every
    /// token's `iss`. `https://` only (`http://` only for 127.0.0.1, ::1 and localhost).
    pub issuer: String,
    /// Accepted `aud` values; a token must name at least one.
    pub audiences: Vec<String>,
    /// Accepted signature algorithms; asymmetric only (`HS*` and `none` are refused).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    /// The claim holding the caller's IdP groups (mapped to group principals by `oidc_group`).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway_secs")]
    pub leeway_secs: u64,
    /// Minimum time between two JWKS downloads triggered by unknown `kid`s.
    #[serde(default = "default_cooldown_secs")]
    pub jwks_refresh_cooldown_secs: u64,
    /// Keys are downloaded again after this long even when every `kid` is known.
    #[serde(default = "default_max_age_secs")]
    pub jwks_max_age_secs: u64,
    /// OAuth clients whose tokens are accepted, matched against the first of `azp`,
    /// `client_id` (RFC 9068), `appid` (Entra ID v1) and `cid` (Okta) that the token carries.
    /// Empty: any client the issuer issued a token for our audience.
    #[serde(default)]
    pub authorized_parties: Vec<String>,
}

fn default_algorithms() -> Vec<String> {
    ["RS256", "ES256", "EdDSA"].map(String::from).to_vec()
}
fn default_groups_claim() -> String {
    "groups".into()
}
fn default_leeway_secs() -> u64 {
    30
}
fn default_cooldown_secs() -> u64 {
    30
}
fn default_max_age_secs() -> u64 {
    3_600
}

impl OidcConfig {
    /// A configuration with the defaults for everything but issuer and audiences.
    pub fn new(issuer: impl Into<String>, audiences: Vec<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audiences,
            algorithms: default_algorithms(),
            groups_claim: default_groups_claim(),
            leeway_secs: default_leeway_secs(),
            jwks_refresh_cooldown_secs: default_cooldown_secs(),
            jwks_max_age_secs: default_max_age_secs(),
            authorized_parties: Vec::new(),
        }
    }

    /// Checks values that parse but are unsafe or meaningless; returns the variable and the
    /// problem.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        check_issuer(&self.issuer)
            .map_err(|problem| ("PORTCULLIS_PROXY__OIDC__ISSUER", problem))?;
        if self.audiences.is_empty() || self.audiences.iter().any(|a| a.trim().is_empty()) {
            return Err((
                "PORTCULLIS_PROXY__OIDC__AUDIENCES",
                "must list at least one non-empty audience".into(),
            ));
        }
        self.parsed_algorithms()
            .map_err(|problem| ("PORTCULLIS_PROXY__OIDC__ALGORITHMS", problem))?;
        if self.groups_claim.is_empty() {
            return Err((
                "PORTCULLIS_PROXY__OIDC__GROUPS_CLAIM",
                "must not be empty".into(),
            ));
        }
        // The registered claims are read as themselves first; as the groups claim they would
        // silently yield no groups.
        if ["iss", "sub", "aud", "exp", "nbf", "iat", "jti"].contains(&self.groups_claim.as_str()) {
            return Err((
                "PORTCULLIS_PROXY__OIDC__GROUPS_CLAIM",
                format!(
                    "{:?} is a registered claim, not a groups claim",
                    self.groups_claim
                ),
            ));
        }
        if self.authorized_parties.iter().any(|p| p.trim().is_empty()) {
            return Err((
                "PORTCULLIS_PROXY__OIDC__AUTHORIZED_PARTIES",
                "must not hold an empty client id".into(),
            ));
        }
        if self.leeway_secs > 300 {
            return Err((
                "PORTCULLIS_PROXY__OIDC__LEEWAY_SECS",
                "must be at most 300".into(),
            ));
        }
        if self.jwks_refresh_cooldown_secs == 0 {
            // Zero would let a flood of made-up `kid`s turn into a flood of JWKS downloads.
            return Err((
                "PORTCULLIS_PROXY__OIDC__JWKS_REFRESH_COOLDOWN_SECS",
                "must be at least 1".into(),
            ));
        }
        if self.jwks_max_age_secs < self.jwks_refresh_cooldown_secs {
            return Err((
                "PORTCULLIS_PROXY__OIDC__JWKS_MAX_AGE_SECS",
                "must be at least the refresh cooldown".into(),
            ));
        }
        Ok(())
    }

    /// The allow-list, refusing `none`, HMAC and unknown names. NEVER LET AN HMAC ALGORITHM
    /// THROUGH: with a public JWKS, HS* means "signed with a key everybody knows".
    fn parsed_algorithms(&self) -> Result<Vec<Algorithm>, String> {
        if self.algorithms.is_empty() {
            return Err("must list at least one algorithm".into());
        }
        self.algorithms
            .iter()
            .map(|name| match Algorithm::from_str(name) {
                Ok(alg) if alg.family() == jsonwebtoken::AlgorithmFamily::Hmac => Err(
                    format!("{name} is symmetric; only asymmetric algorithms are accepted"),
                ),
                Ok(alg) => Ok(alg),
                Err(_) => Err(format!(
                    "{name} is not an accepted algorithm (RS256/384/512, PS256/384/512, ES256/384, EdDSA)"
                )),
            })
            .collect()
    }
}

/// `https://` anywhere, `http://` only on the loopback (tests and local development), and
/// no user info: credentials in a provider URL would end up in logs.
fn check_provider_url(url: &str) -> Result<reqwest::Url, String> {
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("not a URL: {e}"))?;
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err("must not carry a user name or password".into());
    }
    match parsed.scheme() {
        "https" => Ok(parsed),
        "http" if matches!(parsed.host_str(), Some("127.0.0.1" | "localhost" | "[::1]")) => {
            Ok(parsed)
        }
        _ => Err("must be an https:// URL (http:// only for 127.0.0.1, ::1 or localhost)".into()),
    }
}

/// The issuer: a provider URL without query or fragment (discovery appends a path to it).
fn check_issuer(url: &str) -> Result<(), String> {
    let parsed = check_provider_url(url)?;
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err("must not carry a query or fragment".into());
    }
    Ok(())
}

/// The discovery document's `jwks_uri`: plain `http://` only when the issuer itself is a
/// loopback `http://` one, so an `https://` issuer's keys are never fetched in the clear.
fn check_jwks_uri(issuer: &str, uri: &str) -> Result<(), String> {
    let parsed = check_provider_url(uri)?;
    if parsed.scheme() == "http" && !issuer.starts_with("http://") {
        return Err("must be https:// like the issuer".into());
    }
    Ok(())
}

/// Why a token was refused. Every variant answers the client with the same 401; the code goes
/// to the audit trail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OidcError {
    /// Not three base64url parts, bad JSON, missing `sub`/`exp`, `crit` header, ...
    #[error("the token is not a well-formed JWT")]
    Malformed,
    /// `alg` is not in the allow-list or does not fit the key (`none`, HS*, key confusion).
    #[error("the token's algorithm is not allowed")]
    AlgNotAllowed,
    /// The `kid` is not in the provider's key set, even after a refresh.
    #[error("the token names an unknown key")]
    UnknownKid,
    /// The signature does not verify.
    #[error("the token's signature does not verify")]
    BadSignature,
    /// Past `exp` (+ leeway).
    #[error("the token is expired")]
    Expired,
    /// Before `nbf` (− leeway).
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `iss` is missing or not the configured issuer.
    #[error("the token is from another issuer")]
    WrongIssuer,
    /// `aud` is missing or holds none of the configured audiences.
    #[error("the token is for another audience")]
    WrongAudience,
    /// The header's `typ` names another kind of JWT (a logout token, an event, a DPoP
    /// proof, ...) that the issuer may sign for the same audience (RFC 8725 §3.11).
    #[error("the token is not an access or ID token")]
    WrongType,
    /// `authorized_parties` is set and the token's client (`azp`, `client_id`, `appid` or
    /// `cid`) is not in it.
    #[error("the token was issued to another client")]
    WrongClient,
    /// Keys were needed and the provider could not be reached (details are logged).
    #[error("the OIDC provider is unavailable")]
    ProviderUnavailable,
}

impl OidcError {
    /// Stable code for audit records and security events.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed => "jwt_malformed",
            Self::AlgNotAllowed => "jwt_alg_not_allowed",
            Self::UnknownKid => "jwt_unknown_kid",
            Self::BadSignature => "jwt_bad_signature",
            Self::Expired => "jwt_expired",
            Self::NotYetValid => "jwt_not_yet_valid",
            Self::WrongIssuer => "jwt_wrong_issuer",
            Self::WrongAudience => "jwt_wrong_audience",
            Self::WrongType => "jwt_wrong_type",
            Self::WrongClient => "jwt_wrong_client",
            Self::ProviderUnavailable => "oidc_provider_unavailable",
        }
    }

    fn from_jwt(error: &jsonwebtoken::errors::Error) -> Self {
        match error.kind() {
            ErrorKind::ExpiredSignature => Self::Expired,
            ErrorKind::ImmatureSignature => Self::NotYetValid,
            ErrorKind::InvalidIssuer => Self::WrongIssuer,
            ErrorKind::InvalidAudience => Self::WrongAudience,
            ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => Self::WrongIssuer,
            ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => Self::WrongAudience,
            ErrorKind::InvalidAlgorithm
            | ErrorKind::UnsupportedAlgorithm
            | ErrorKind::InvalidAlgorithmName
            | ErrorKind::MissingAlgorithm => Self::AlgNotAllowed,
            ErrorKind::InvalidSignature
            | ErrorKind::InvalidEcdsaKey
            | ErrorKind::InvalidEddsaKey
            | ErrorKind::InvalidRsaKey(_)
            | ErrorKind::InvalidKeyFormat => Self::BadSignature,
            _ => Self::Malformed,
        }
    }
}

/// What a verified token proves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcIdentity {
    /// `iss` (always the configured issuer).
    pub issuer: String,
    /// `sub`.
    pub subject: String,
    /// The values of the groups claim (empty when absent).
    pub groups: Vec<String>,
    /// `exp`.
    pub expires_at: DateTime<Utc>,
}

/// Why the provider could not be used (logged; requests see [`OidcError::ProviderUnavailable`]).
#[derive(Debug, thiserror::Error)]
enum ProviderError {
    #[error("request to {url} failed")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{url} answered {status}")]
    Status {
        url: String,
        status: reqwest::StatusCode,
    },
    #[error("{url} returned more than {MAX_DOCUMENT_BYTES} bytes")]
    TooLarge { url: String },
    #[error("{url} returned invalid JSON")]
    Json {
        url: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("discovery names issuer {found:?}, configured is {expected:?}")]
    IssuerMismatch { expected: String, found: String },
    #[error("unacceptable jwks_uri {uri:?}: {problem}")]
    JwksUri { uri: String, problem: String },
}

/// Discovery documents and key sets are small; a larger answer is refused.
const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// A key from the JWKS, with the algorithms it may verify.
struct VerifyKey {
    key: DecodingKey,
    /// Allowed algorithms ∩ what the key type (and the JWK's `alg`, if any) permits.
    algorithms: Vec<Algorithm>,
}

impl fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyKey")
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

/// The one key among `keys` that may verify `alg`; `None` when none or several do.
fn only_fitting<'k>(
    keys: impl IntoIterator<Item = &'k Arc<VerifyKey>>,
    alg: Algorithm,
) -> Option<Arc<VerifyKey>> {
    let mut fitting = keys.into_iter().filter(|k| k.algorithms.contains(&alg));
    match (fitting.next(), fitting.next()) {
        (Some(key), None) => Some(key.clone()),
        _ => None,
    }
}

/// The current key set; replaced whole on every successful download.
#[derive(Debug, Default)]
struct KeySet {
    /// Usually one key per `kid`; a provider may publish several under one `kid` (an RSA
    /// and an EC key, say), and a token then needs exactly one that fits its `alg`.
    by_kid: HashMap<String, Vec<Arc<VerifyKey>>>,
    /// Keys published without a `kid` (usable only by tokens without one).
    unnamed: Vec<Arc<VerifyKey>>,
    /// `None` until the first successful download.
    fetched_at: Option<Instant>,
}

/// Serialises downloads (single flight) and remembers when the last one was tried.
#[derive(Debug, Default)]
struct RefreshState {
    jwks_uri: Option<String>,
    last_attempt: Option<Instant>,
    last_failed: bool,
}

/// A monotonic clock that tests can move forward (cooldowns without sleeping).
#[derive(Debug, Default)]
struct Clock {
    offset_ms: AtomicU64,
}

impl Clock {
    fn now(&self) -> Instant {
        Instant::now() + Duration::from_millis(self.offset_ms.load(Ordering::Relaxed))
    }
}

/// Verifies OIDC access tokens from one issuer. Shared by every request; cheap when warm.
pub struct OidcVerifier {
    issuer: String,
    groups_claim: String,
    /// See [`OidcConfig::authorized_parties`].
    authorized_parties: Vec<String>,
    algorithms: Vec<Algorithm>,
    /// Prebuilt per allowed algorithm (jsonwebtoken wants one key family per `Validation`):
    /// iss, aud, exp, nbf with leeway, required claims, and exactly that algorithm.
    validations: Vec<(Algorithm, Validation)>,
    /// How long past `exp` a token is still accepted.
    leeway: chrono::Duration,
    cooldown: Duration,
    max_age: Duration,
    http: reqwest::Client,
    keys: ArcSwap<KeySet>,
    refresh: Arc<tokio::sync::Mutex<RefreshState>>,
    /// Completed download attempts; a waiter that sees it move knows a refresh happened.
    attempts: AtomicU64,
    /// Counts key sets stored, for those who wait for it to move.
    downloaded: tokio::sync::watch::Sender<u64>,
    clock: Clock,
    /// Tokens that already verified, by SHA-256 of the token; see [`OidcVerifier::verify`].
    verified: std::sync::Mutex<HashMap<[u8; 32], VerifiedToken>>,
}

/// A token that verified under the key set of download attempt `generation`.
struct VerifiedToken {
    identity: OidcIdentity,
    generation: u64,
}

/// Longer tokens are refused before any decoding. Access tokens are a few KiB at most, even
/// with a long groups claim; anything larger is not worth hashing, decoding and parsing.
const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Verified tokens remembered; beyond this the expired ones are dropped, then all.
const MAX_VERIFIED_TOKENS: usize = 10_000;

impl fmt::Debug for OidcVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OidcVerifier")
            .field("issuer", &self.issuer)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

// === impl OidcVerifier ===

impl OidcVerifier {
    /// Builds the verifier. No network: keys are fetched by [`Self::prime`] or on first use.
    pub fn new(config: &OidcConfig) -> anyhow::Result<Self> {
        use anyhow::Context;
        config
            .validate()
            .map_err(|(var, problem)| anyhow::anyhow!("{var}: {problem}"))?;
        let algorithms = config
            .parsed_algorithms()
            .map_err(|problem| anyhow::anyhow!("PORTCULLIS_PROXY__OIDC__ALGORITHMS: {problem}"))?;
        let validations = algorithms
            .iter()
            .map(|alg| {
                let mut validation = Validation::new(*alg);
                validation.leeway = config.leeway_secs;
                validation.validate_exp = true;
                validation.validate_nbf = true;
                validation.validate_aud = true;
                validation.set_issuer(&[config.issuer.as_str()]);
                validation.set_audience(&config.audiences);
                validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
                (*alg, validation)
            })
            .collect();
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .timeout(Duration::from_secs(5))
            // The provider's documents are fetched from exactly the configured places.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("failed to build the OIDC HTTP client")?;
        Ok(Self {
            issuer: config.issuer.clone(),
            groups_claim: config.groups_claim.clone(),
            authorized_parties: config.authorized_parties.clone(),
            algorithms,
            validations,
            leeway: chrono::Duration::seconds(i64::try_from(config.leeway_secs).unwrap_or(300)),
            cooldown: Duration::from_secs(config.jwks_refresh_cooldown_secs),
            max_age: Duration::from_secs(config.jwks_max_age_secs),
            http,
            keys: ArcSwap::from_pointee(KeySet::default()),
            refresh: Arc::default(),
            attempts: AtomicU64::new(0),
            downloaded: tokio::sync::watch::Sender::new(0),
            clock: Clock::default(),
            verified: std::sync::Mutex::default(),
        })
    }

    /// The configured issuer.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// Runs discovery and downloads the keys. Failure is logged, not returned: the proxy
    /// starts anyway and retries when a token needs the keys (at most once per cooldown).
    pub async fn prime(self: &Arc<Self>) {
        let seen = self.attempts.load(Ordering::Acquire);
        if self.refresh(seen).await.is_ok() {
            tracing::info!(issuer = %self.issuer, "OIDC keys loaded");
        }
    }

    /// Verifies `token` and returns who it speaks for.
    ///
    /// Runs on every request carrying a bearer JWT. Touches the network only when the `kid`
    /// is unknown (once per cooldown) or the key set is older than `jwks_max_age_secs`.
    pub async fn verify(self: &Arc<Self>, token: &str) -> Result<OidcIdentity, OidcError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(OidcError::Malformed);
        }
        // A token seen before, under the same keys and not yet expired, verified then and
        // would verify the same way now: skip the signature check (≈ 40–90 µs) and answer from
        // memory. Any key download (rotation, refresh) invalidates every entry.
        let digest: [u8; 32] = {
            let d = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, token.as_bytes());
            let mut out = [0u8; 32];
            out.copy_from_slice(d.as_ref());
            out
        };
        let generation = self.attempts.load(Ordering::Acquire);
        let now = Utc::now();
        {
            let verified = self
                .verified
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some(hit) = verified.get(&digest)
                && hit.generation == generation
                && hit.identity.expires_at > now
            {
                return Ok(hit.identity.clone());
            }
        }
        let identity = self.verify_uncached(token).await?;
        if self.attempts.load(Ordering::Acquire) == generation {
            let mut verified = self
                .verified
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if verified.len() >= MAX_VERIFIED_TOKENS {
                verified.retain(|_, v| v.generation == generation && v.identity.expires_at > now);
                if verified.len() >= MAX_VERIFIED_TOKENS {
                    verified.clear();
                }
            }
            verified.insert(
                digest,
                VerifiedToken {
                    identity: identity.clone(),
                    generation,
                },
            );
        }
        Ok(identity)
    }

    /// Full verification: header, key lookup (with at most one rate-limited JWKS refresh),
    /// signature, registered claims.
    async fn verify_uncached(self: &Arc<Self>, token: &str) -> Result<OidcIdentity, OidcError> {
        let parts = TokenParts::split(token)?;
        let header_bytes = URL_SAFE_NO_PAD
            .decode(parts.header)
            .map_err(|_| OidcError::Malformed)?;
        let header = RawHeader::parse(&header_bytes)?;
        let alg = Algorithm::from_str(&header.alg).map_err(|_| OidcError::AlgNotAllowed)?;
        if !self.algorithms.contains(&alg) {
            return Err(OidcError::AlgNotAllowed);
        }
        let kid = header.kid.as_deref();

        self.refresh_if_old().await;
        let key = match self.find_key(kid, alg) {
            Some(key) => key,
            None => {
                let seen = self.attempts.load(Ordering::Acquire);
                // Recheck: a refresh may have completed between the lookup and `seen`.
                match self.find_key(kid, alg) {
                    Some(key) => key,
                    None => {
                        self.refresh(seen).await?;
                        self.find_key(kid, alg).ok_or(OidcError::UnknownKid)?
                    }
                }
            }
        };
        // The key type must fit the header: this is what defeats algorithm confusion.
        if !key.algorithms.contains(&alg) {
            return Err(OidcError::AlgNotAllowed);
        }

        let validation = self
            .validations
            .iter()
            .find_map(|(a, v)| (*a == alg).then_some(v))
            .ok_or(OidcError::AlgNotAllowed)?;
        jsonwebtoken::decode::<IgnoredAny>(token, &key.key, validation)
            .map_err(|e| OidcError::from_jwt(&e))?;

        // Signature and registered claims are valid; now read what we need (and re-check
        // `iss` as a single string: an array that merely contains our issuer is refused).
        let payload = URL_SAFE_NO_PAD
            .decode(parts.payload)
            .map_err(|_| OidcError::Malformed)?;
        let mut deserializer = serde_json::Deserializer::from_slice(&payload);
        let claims = ClaimsSeed {
            issuer: &self.issuer,
            groups_claim: &self.groups_claim,
            read_client: !self.authorized_parties.is_empty(),
        }
        .deserialize(&mut deserializer)
        .map_err(|_| OidcError::Malformed)?;
        if !claims.issuer_matches {
            return Err(OidcError::WrongIssuer);
        }
        // Back-channel logout tokens and security events carry `events` (RFC 8417), also
        // from issuers that type them plain `JWT`.
        if claims.has_events {
            return Err(OidcError::WrongType);
        }
        if !self.authorized_parties.is_empty() {
            let client = claims.client.first_named();
            if !client.is_some_and(|c| self.authorized_parties.iter().any(|p| p == c)) {
                return Err(OidcError::WrongClient);
            }
        }
        let subject = claims.subject.ok_or(OidcError::Malformed)?;
        let expires_at = claims
            .expires_at
            .and_then(|exp| DateTime::from_timestamp(exp as i64, 0))
            .ok_or(OidcError::Malformed)?;
        Ok(OidcIdentity {
            issuer: self.issuer.clone(),
            subject,
            groups: claims.groups,
            expires_at,
        })
    }

    fn find_key(&self, kid: Option<&str>, alg: Algorithm) -> Option<Arc<VerifyKey>> {
        let keys = self.keys.load();
        match kid {
            Some(kid) => {
                let same = keys.by_kid.get(kid)?;
                let fits = |k: &&Arc<VerifyKey>| k.algorithms.contains(&alg);
                match same.iter().filter(fits).count() {
                    // A key of another family: returned so that the caller's algorithm check
                    // refuses the token as key confusion rather than as an unknown key.
                    0 => same.first().cloned(),
                    1 => same.iter().find(fits).cloned(),
                    // One `kid` published for two keys that both fit: which one signed is
                    // anyone's guess, and picking one would depend on the document's order.
                    _ => None,
                }
            }
            // No `kid`: only unambiguous when exactly one published key fits the algorithm.
            None => only_fitting(
                keys.by_kid.values().flatten().chain(keys.unnamed.iter()),
                alg,
            ),
        }
    }

    /// Refreshes in the background when the keys are older than the maximum age, unless a
    /// download is already running or the last attempt is within the cooldown; this request
    /// goes on with the current keys.
    async fn refresh_if_old(self: &Arc<Self>) {
        let fetched_at = self.keys.load().fetched_at;
        let Some(fetched_at) = fetched_at else {
            return;
        };
        if self.clock.now().saturating_duration_since(fetched_at) < self.max_age {
            return;
        }
        let seen = self.attempts.load(Ordering::Acquire);
        if let Ok(state) = Arc::clone(&self.refresh).try_lock_owned()
            && let Ok(Some(state)) = self.claim(state, seen)
        {
            // Old keys keep working while the provider is down: a compromised key is removed
            // by publishing a new set, which needs the provider up anyway.
            drop(self.spawn_download(state));
        }
    }

    /// Downloads the keys unless another download finished while we waited (single flight)
    /// or the last attempt is more recent than the cooldown.
    async fn refresh(self: &Arc<Self>, seen: u64) -> Result<(), OidcError> {
        let state = Arc::clone(&self.refresh).lock_owned().await;
        match self.claim(state, seen)? {
            None => Ok(()),
            // A runtime shutting down cancels the task: no keys then.
            Some(state) => self
                .spawn_download(state)
                .await
                .unwrap_or(Err(OidcError::ProviderUnavailable)),
        }
    }

    /// Holding the lock, decides whether to download: `Some` (the attempt is recorded and
    /// the guard handed on), `None` when a download finished while we queued (its result is
    /// ours), an error when the last attempt is within the cooldown.
    fn claim(
        &self,
        mut state: OwnedMutexGuard<RefreshState>,
        seen: u64,
    ) -> Result<Option<OwnedMutexGuard<RefreshState>>, OidcError> {
        if self.attempts.load(Ordering::Acquire) != seen {
            return if state.last_failed {
                Err(OidcError::ProviderUnavailable)
            } else {
                Ok(None)
            };
        }
        let now = self.clock.now();
        if state
            .last_attempt
            .is_some_and(|at| now.saturating_duration_since(at) < self.cooldown)
        {
            return if state.last_failed {
                Err(OidcError::ProviderUnavailable)
            } else {
                Err(OidcError::UnknownKid)
            };
        }
        state.last_attempt = Some(now);
        Ok(Some(state))
    }

    /// Runs the claimed download in a task of its own. Inline, a request whose client went
    /// away (hyper drops its future) would abandon the download after it had used up the
    /// cooldown: a flood of such requests with made-up `kid`s could then keep the keys from
    /// ever being refreshed, retired keys included.
    fn spawn_download(
        self: &Arc<Self>,
        state: OwnedMutexGuard<RefreshState>,
    ) -> tokio::task::JoinHandle<Result<(), OidcError>> {
        let this = Arc::clone(self);
        tokio::spawn(async move { this.download_locked(state).await })
    }

    /// Moves after every key set downloaded and stored: a token verified before it moved
    /// may verify differently now (an open tunnel checks it again).
    pub fn subscribe_downloads(&self) -> tokio::sync::watch::Receiver<u64> {
        self.downloaded.subscribe()
    }

    async fn download_locked(
        &self,
        mut state: OwnedMutexGuard<RefreshState>,
    ) -> Result<(), OidcError> {
        let result = self.download(&mut state).await;
        state.last_failed = result.is_err();
        let outcome = match result {
            Ok(set) => {
                metrics::counter!("portcullis_oidc_jwks_refresh_total", "result" => "ok")
                    .increment(1);
                self.keys.store(Arc::new(set));
                // Only a new key set can change a verdict: failed attempts wake no tunnel.
                self.downloaded.send_modify(|n| *n = n.wrapping_add(1));
                Ok(())
            }
            Err(error) => {
                metrics::counter!("portcullis_oidc_jwks_refresh_total", "result" => "error")
                    .increment(1);
                tracing::warn!(
                    issuer = %self.issuer,
                    error = &error as &dyn std::error::Error,
                    "OIDC discovery or key download failed; retrying after the cooldown"
                );
                // Rediscover next time: the JWKS location may have moved.
                state.jwks_uri = None;
                Err(OidcError::ProviderUnavailable)
            }
        };
        self.attempts.fetch_add(1, Ordering::AcqRel);
        outcome
    }

    async fn download(&self, state: &mut RefreshState) -> Result<KeySet, ProviderError> {
        let jwks_uri = match &state.jwks_uri {
            Some(uri) => uri.clone(),
            None => {
                let uri = self.discover().await?;
                state.jwks_uri = Some(uri.clone());
                uri
            }
        };
        let jwks: RawJwkSet = self.get_json(&jwks_uri).await?;
        Ok(self.key_set(jwks))
    }

    /// `<issuer>/.well-known/openid-configuration`; its `issuer` must equal ours exactly
    /// (OpenID Connect Discovery 1.0, §4.3).
    async fn discover(&self) -> Result<String, ProviderError> {
        #[derive(Deserialize)]
        struct Discovery {
            issuer: String,
            jwks_uri: String,
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let document: Discovery = self.get_json(&url).await?;
        if document.issuer != self.issuer {
            return Err(ProviderError::IssuerMismatch {
                expected: self.issuer.clone(),
                found: document.issuer,
            });
        }
        check_jwks_uri(&self.issuer, &document.jwks_uri).map_err(|problem| {
            ProviderError::JwksUri {
                uri: document.jwks_uri.clone(),
                problem,
            }
        })?;
        Ok(document.jwks_uri)
    }

    async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        url: &str,
    ) -> Result<T, ProviderError> {
        let http = |source| ProviderError::Http {
            url: url.to_owned(),
            source,
        };
        let mut response = self
            .http
            .get(url)
            .header(http::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(http)?;
        if !response.status().is_success() {
            return Err(ProviderError::Status {
                url: url.to_owned(),
                status: response.status(),
            });
        }
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(http)? {
            if body.len() + chunk.len() > MAX_DOCUMENT_BYTES {
                return Err(ProviderError::TooLarge {
                    url: url.to_owned(),
                });
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|source| ProviderError::Json {
            url: url.to_owned(),
            source,
        })
    }

    /// Keeps the signing keys we can use; skips (and logs) the rest, so one odd key does not
    /// take the whole set down.
    fn key_set(&self, jwks: RawJwkSet) -> KeySet {
        let mut set = KeySet {
            fetched_at: Some(self.clock.now()),
            ..KeySet::default()
        };
        // The keys under each `kid`, with their material: a document may list one key twice
        // (with and without `x5c`, or once per `alg`), which is still one key, allowed the
        // algorithms of every listing.
        let mut named: HashMap<String, Vec<(AlgorithmParameters, VerifyKey)>> = HashMap::new();
        for raw in jwks.keys {
            let jwk: Jwk = match serde_json::from_value(raw) {
                Ok(jwk) => jwk,
                Err(error) => {
                    tracing::warn!(issuer = %self.issuer, %error, "unparseable JWK skipped");
                    continue;
                }
            };
            let kid = jwk.common.key_id.clone();
            match self.verify_key(&jwk) {
                Some(key) => match kid {
                    Some(kid) => {
                        let same_kid = named.entry(kid).or_default();
                        match same_kid
                            .iter_mut()
                            .find(|(material, _)| *material == jwk.algorithm)
                        {
                            Some((_, listed)) => {
                                for alg in key.algorithms {
                                    if !listed.algorithms.contains(&alg) {
                                        listed.algorithms.push(alg);
                                    }
                                }
                            }
                            None => {
                                if !same_kid.is_empty() {
                                    tracing::warn!(issuer = %self.issuer, kid = ?jwk.common.key_id, "JWKS publishes one kid for several keys; tokens whose alg fits more than one are refused");
                                }
                                same_kid.push((jwk.algorithm.clone(), key));
                            }
                        }
                    }
                    None => set.unnamed.push(Arc::new(key)),
                },
                None => {
                    tracing::debug!(issuer = %self.issuer, ?kid, "JWK not usable for signatures here; skipped")
                }
            }
        }
        set.by_kid = named
            .into_iter()
            .map(|(kid, keys)| {
                (
                    kid,
                    keys.into_iter().map(|(_, key)| Arc::new(key)).collect(),
                )
            })
            .collect();
        set
    }

    /// The algorithms a JWK may verify: what its key type allows, narrowed by its own `alg`,
    /// intersected with the allow-list. Symmetric (`oct`) and encryption keys get none.
    fn verify_key(&self, jwk: &Jwk) -> Option<VerifyKey> {
        if matches!(&jwk.common.public_key_use, Some(usage) if *usage != PublicKeyUse::Signature) {
            return None;
        }
        let by_type: &[Algorithm] = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => &[
                Algorithm::RS256,
                Algorithm::RS384,
                Algorithm::RS512,
                Algorithm::PS256,
                Algorithm::PS384,
                Algorithm::PS512,
            ],
            AlgorithmParameters::EllipticCurve(ec) => match ec.curve {
                EllipticCurve::P256 => &[Algorithm::ES256],
                EllipticCurve::P384 => &[Algorithm::ES384],
                _ => &[],
            },
            AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
                &[Algorithm::EdDSA]
            }
            // `oct` (HMAC secrets) and anything else: never.
            _ => &[],
        };
        let declared = match jwk.common.key_algorithm {
            None => None,
            Some(KeyAlgorithm::UNKNOWN_ALGORITHM) => return None,
            Some(alg) => Some(Algorithm::from_str(&alg.to_string()).ok()?),
        };
        let algorithms: Vec<Algorithm> = by_type
            .iter()
            .copied()
            .filter(|a| self.algorithms.contains(a))
            .filter(|a| declared.is_none_or(|d| d == *a))
            .collect();
        if algorithms.is_empty() {
            return None;
        }
        let key = DecodingKey::from_jwk(jwk).ok()?;
        if key.family() == jsonwebtoken::AlgorithmFamily::Hmac {
            return None;
        }
        Some(VerifyKey { key, algorithms })
    }

    /// Moves this verifier's clock forward (cooldown and key-age tests without sleeping).
    #[cfg(any(test, feature = "test-util"))]
    pub fn advance_clock(&self, by: Duration) {
        self.clock
            .offset_ms
            .fetch_add(by.as_millis() as u64, Ordering::Relaxed);
    }
}

/// Pipeline step 4 for a bearer JWT: verify it, then map it to its user principal (never
/// provisioned: an unknown subject is refused) and its groups claim to group principals.
pub async fn authenticate(
    verifier: &Arc<OidcVerifier>,
    cache: &PolicyCache,
    token: &str,
) -> Result<Authenticated, Refused> {
    let refuse = |failure| Refused::from(ProxyError::Unauthenticated(failure));
    let identity = verifier
        .verify(token)
        .await
        .map_err(|e| refuse(AuthFailure::Oidc(e)))?;
    let principal = cache
        .principal_for_subject(&identity.issuer, &identity.subject)
        .await
        .map_err(ProxyError::from)?
        .ok_or_else(|| refuse(AuthFailure::OidcUnknownSubject))?;
    let groups = cache
        .groups_for_claims(&identity.groups)
        .await
        .map_err(ProxyError::from)?;
    Ok(Authenticated {
        principal_id: principal.0,
        key_id: None,
        grant_id: None,
        method: AuthMethod::Oidc,
        key_rate_limit: None,
        has_quota: false,
        budget_key_id: None,
        extra_group_ids: groups,
        // jsonwebtoken refuses a token once whole seconds past `exp` exceed the leeway.
        expires_at: Some(
            identity
                .expires_at
                .checked_add_signed(verifier.leeway + chrono::Duration::seconds(1))
                .unwrap_or(DateTime::<Utc>::MAX_UTC),
        ),
    })
}

#[derive(Deserialize)]
struct RawJwkSet {
    keys: Vec<serde_json::Value>,
}

/// `header.payload.signature`, split without copying.
struct TokenParts<'a> {
    header: &'a str,
    payload: &'a str,
}

#[derive(Deserialize)]
struct RawHeader<'a> {
    #[serde(borrow)]
    alg: Cow<'a, str>,
    #[serde(borrow, default)]
    kid: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    typ: Option<Cow<'a, str>>,
    /// Critical extensions we do not implement make the token invalid (RFC 7515 §4.1.11).
    #[serde(default)]
    crit: Option<IgnoredAny>,
}

impl<'a> TokenParts<'a> {
    fn split(token: &'a str) -> Result<Self, OidcError> {
        let mut parts = token.split('.');
        match (parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some(header), Some(payload), Some(_signature), None)
                if !header.is_empty() && !payload.is_empty() =>
            {
                Ok(Self { header, payload })
            }
            _ => Err(OidcError::Malformed),
        }
    }
}

impl<'a> RawHeader<'a> {
    fn parse(bytes: &'a [u8]) -> Result<Self, OidcError> {
        let header: Self = serde_json::from_slice(bytes).map_err(|_| OidcError::Malformed)?;
        if header.crit.is_some() {
            return Err(OidcError::Malformed);
        }
        // Untyped, plain `JWT` (most access and ID tokens) or RFC 9068's `at+jwt`; the
        // `application/` prefix may be left out (RFC 7515 §4.1.9).
        if let Some(typ) = &header.typ {
            // Media types are case-insensitive.
            let typ = match typ.get(..12) {
                Some(prefix) if prefix.eq_ignore_ascii_case("application/") => &typ[12..],
                _ => typ,
            };
            if !typ.eq_ignore_ascii_case("jwt") && !typ.eq_ignore_ascii_case("at+jwt") {
                return Err(OidcError::WrongType);
            }
        }
        Ok(header)
    }
}

/// The claims we read after verification: `sub`, `exp`, the groups claim, and whether `iss`
/// is exactly our issuer. Everything else is skipped without allocating.
struct ClaimsSeed<'c> {
    issuer: &'c str,
    groups_claim: &'c str,
    /// Read the client claims (only when `authorized_parties` is set: otherwise their
    /// shape does not matter).
    read_client: bool,
}

#[derive(Default)]
struct Claims {
    issuer_matches: bool,
    subject: Option<String>,
    expires_at: Option<f64>,
    groups: Vec<String>,
    /// The `events` claim is present.
    has_events: bool,
    client: ClientClaims,
}

/// The claims that name the OAuth client a token was issued to, by provider habit.
#[derive(Default)]
struct ClientClaims {
    /// `azp` (OIDC Core).
    azp: Option<String>,
    /// `client_id` (RFC 9068, Keycloak, Auth0 access tokens).
    client_id: Option<String>,
    /// `appid` (Entra ID v1 access tokens).
    appid: Option<String>,
    /// `cid` (Okta access tokens).
    cid: Option<String>,
}

impl ClientClaims {
    /// The first present, in the order above.
    fn first_named(&self) -> Option<&str> {
        [&self.azp, &self.client_id, &self.appid, &self.cid]
            .into_iter()
            .find_map(|claim| claim.as_deref())
    }
}

/// A string or an array of strings (IdPs differ).
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl<'de> DeserializeSeed<'de> for ClaimsSeed<'_> {
    type Value = Claims;

    fn deserialize<D: serde::Deserializer<'de>>(self, deserializer: D) -> Result<Claims, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ClaimsSeed<'_> {
    type Value = Claims;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JWT claims object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Claims, A::Error> {
        let mut claims = Claims::default();
        while let Some(ClaimName(key)) = map.next_key::<ClaimName<'de>>()? {
            if key == "iss" {
                let iss: OneOrMany = map.next_value()?;
                claims.issuer_matches = matches!(iss, OneOrMany::One(iss) if iss == self.issuer);
            } else if key == "sub" {
                claims.subject = Some(map.next_value()?);
            } else if key == "exp" {
                claims.expires_at = Some(map.next_value()?);
            } else if key == "events" {
                claims.has_events = true;
                map.next_value::<IgnoredAny>()?;
            } else if self.read_client
                && let Some(slot) = match key.as_ref() {
                    "azp" => Some(&mut claims.client.azp),
                    "client_id" => Some(&mut claims.client.client_id),
                    "appid" => Some(&mut claims.client.appid),
                    "cid" => Some(&mut claims.client.cid),
                    _ => None,
                }
            {
                *slot = map.next_value()?;
            } else if key == self.groups_claim {
                claims.groups = match map.next_value::<Option<OneOrMany>>()? {
                    None => Vec::new(),
                    Some(OneOrMany::One(group)) => vec![group],
                    Some(OneOrMany::Many(groups)) => groups,
                };
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(claims)
    }
}

/// A claim name, borrowed from the payload unless it contains escapes.
struct ClaimName<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for ClaimName<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct NameVisitor;
        impl<'de> Visitor<'de> for NameVisitor {
            type Value = ClaimName<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a claim name")
            }
            fn visit_borrowed_str<E: serde::de::Error>(
                self,
                v: &'de str,
            ) -> Result<Self::Value, E> {
                Ok(ClaimName(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(ClaimName(Cow::Owned(v.to_owned())))
            }
        }
        deserializer.deserialize_str(NameVisitor)
    }
}
