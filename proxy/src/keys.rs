//! Credential format and hashing for API keys and incident-grant tokens.
//!
//! A token looks like `pk_live_<34 random base62><6 base62 CRC32>` — the scheme GitHub uses
//! for its tokens:
//! * the product prefix (`pk` API key, `pg` incident grant) and environment marker let secret
//!   scanners and our own log redaction recognise a leaked token offline ([`looks_like_token`]);
//! * 34 characters from a CSPRNG carry ≈ 202 bits; the first 12 are the visible lookup
//!   prefix, so the 22 that are never displayed still carry ≈ 131 bits (≥ 128);
//! * the CRC32 checksum lets [`PlainToken::parse`] refuse a mistyped token before any
//!   database work.
//!
//! Only `HMAC-SHA-256(pepper, token)` ([`TokenHash`]) and the visible
//! [`ParsedToken::lookup_prefix`] are stored; a database dump alone cannot be used to verify
//! guesses. Pure: no I/O.
//!
//! NEVER CHANGE THE FORMAT (prefixes, alphabet, lengths, checksum encoding) OF EXISTING TOKENS:
//! issued keys would stop parsing and scanners registered with GitHub would stop matching.

use std::{fmt, str::FromStr};

use aws_lc_rs::{constant_time::verify_slices_are_equal, hmac};
use rand::{Rng, distr::Alphanumeric};
use secrecy::{ExposeSecret, SecretSlice, SecretString};
use thiserror::Error;

/// Number of random base62 characters in a token (≈ 178 bits).
pub const RANDOM_LEN: usize = 34;
/// Number of base62 characters encoding the CRC32 checksum (62⁶ > 2³²).
pub const CHECKSUM_LEN: usize = 6;
/// Number of random characters included in [`ParsedToken::lookup_prefix`].
pub const LOOKUP_RANDOM_LEN: usize = 12;
/// Minimum pepper length accepted by [`KeyHasher::new`] (256 bits, the HMAC-SHA-256 block
/// strength).
pub const MIN_PEPPER_LEN: usize = 32;

/// Base62 digits in value order. `rand`'s `Alphanumeric` draws from the same 62 characters.
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
/// Characters of a `Debug`/`Display` preview after `<product>_<env>_`.
const PREVIEW_RANDOM_LEN: usize = 4;

/// What a token authenticates as; encoded as the product prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenKind {
    /// A long-lived API key, prefix `pk`.
    ApiKey,
    /// A time-boxed incident-grant token issued by the API, prefix `pg`.
    IncidentGrant,
}

/// Environment marker; lets scanners and operators tell a production key from a test key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenEnv {
    /// Production, `live`.
    Live,
    /// Test/staging, `test`.
    Test,
    /// Local development, `dev`.
    Dev,
}

/// Why a string is not a well-formed token. Carries no part of the input, so it is safe to
/// log; every variant maps to the same 401 at the edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum TokenFormatError {
    /// Not of the shape `<product>_<env>_<body>`.
    #[error("token is not of the form <product>_<env>_<secret>")]
    Malformed,
    /// The product prefix is not `pk` or `pg`.
    #[error("unknown token product prefix")]
    UnknownProduct,
    /// The environment marker is not `live`, `test` or `dev`.
    #[error("unknown token environment")]
    UnknownEnvironment,
    /// The body is not exactly [`RANDOM_LEN`] + [`CHECKSUM_LEN`] characters.
    #[error("token has the wrong length")]
    WrongLength,
    /// The body contains a character outside `[0-9A-Za-z]`.
    #[error("token contains a character outside the base62 alphabet")]
    InvalidCharacter,
    /// The CRC32 checksum does not match: a typo or a made-up token.
    #[error("token checksum does not match")]
    ChecksumMismatch,
}

/// The pepper given to [`KeyHasher::new`] is too short.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("pepper must be at least {MIN_PEPPER_LEN} bytes, got {0}")]
pub struct PepperTooShort(pub usize);

/// A stored token hash is not 64 hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("token hash must be 64 hex digits")]
pub struct InvalidTokenHash;

/// A freshly generated token, to be shown to its owner exactly once. `Debug` and `Display`
/// print only a short prefix.
pub struct PlainToken(ParsedToken);

/// A token that passed every offline check in [`PlainToken::parse`]: product, environment,
/// length, alphabet and checksum. `Debug` and `Display` print only a short prefix.
pub struct ParsedToken {
    kind: TokenKind,
    env: TokenEnv,
    secret: SecretString,
}

/// `HMAC-SHA-256(pepper, token)`: what the database stores instead of the token.
/// Equality is constant-time.
#[derive(Clone, Copy)]
pub struct TokenHash([u8; 32]);

/// Computes and verifies [`TokenHash`]es with the deployment's pepper. `Debug` is redacted.
#[derive(Clone)]
pub struct KeyHasher {
    key: hmac::Key,
}

/// Whether `s` is a well-formed Portcullis token (prefix, environment, length, alphabet and
/// checksum), for secret scanners and log redaction. Never touches a database; the checksum
/// keeps false positives on random strings to about one in four billion.
pub fn looks_like_token(s: &str) -> bool {
    PlainToken::parse(s).is_ok()
}

// === impl TokenKind ===

impl TokenKind {
    /// The product prefix, without the trailing `_`.
    pub fn prefix(self) -> &'static str {
        match self {
            Self::ApiKey => "pk",
            Self::IncidentGrant => "pg",
        }
    }

    fn from_prefix(s: &str) -> Option<Self> {
        match s {
            "pk" => Some(Self::ApiKey),
            "pg" => Some(Self::IncidentGrant),
            _ => None,
        }
    }
}

// === impl TokenEnv ===

impl TokenEnv {
    /// The lowercase marker used in tokens.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Live => "live",
            Self::Test => "test",
            Self::Dev => "dev",
        }
    }
}

impl FromStr for TokenEnv {
    type Err = TokenFormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "live" => Ok(Self::Live),
            "test" => Ok(Self::Test),
            "dev" => Ok(Self::Dev),
            _ => Err(TokenFormatError::UnknownEnvironment),
        }
    }
}

impl fmt::Display for TokenEnv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

// === impl PlainToken ===

impl PlainToken {
    /// Generates a new token from the thread-local CSPRNG (ChaCha seeded from the OS).
    pub fn generate(kind: TokenKind, env: TokenEnv) -> Self {
        let mut token = format!("{}_{}_", kind.prefix(), env.as_str());
        let mut rng = rand::rng();
        token.extend((0..RANDOM_LEN).map(|_| char::from(rng.sample(Alphanumeric))));
        let checksum = crc32fast::hash(token.as_bytes());
        token.push_str(&encode_checksum(checksum));
        Self(ParsedToken {
            kind,
            env,
            secret: SecretString::from(token),
        })
    }

    /// Checks product, environment, length, alphabet and checksum, in that order, without
    /// any database work.
    pub fn parse(s: &str) -> Result<ParsedToken, TokenFormatError> {
        let mut parts = s.splitn(3, '_');
        let (Some(product), Some(env), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenFormatError::Malformed);
        };
        let kind = TokenKind::from_prefix(product).ok_or(TokenFormatError::UnknownProduct)?;
        let env = env.parse::<TokenEnv>()?;
        if body.len() != RANDOM_LEN + CHECKSUM_LEN {
            return Err(TokenFormatError::WrongLength);
        }
        if !body.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(TokenFormatError::InvalidCharacter);
        }
        // `body` is ASCII, so this byte split is on a char boundary.
        let (signed, checksum) = s.split_at(s.len() - CHECKSUM_LEN);
        if decode_checksum(checksum) != Some(crc32fast::hash(signed.as_bytes())) {
            return Err(TokenFormatError::ChecksumMismatch);
        }
        Ok(ParsedToken {
            kind,
            env,
            secret: SecretString::from(s),
        })
    }

    /// The full token, to show to its owner once.
    pub fn expose_secret(&self) -> &str {
        self.0.expose_secret()
    }

    /// The parsed view, for hashing and for the lookup prefix.
    pub fn as_parsed(&self) -> &ParsedToken {
        &self.0
    }

    /// See [`ParsedToken::lookup_prefix`].
    pub fn lookup_prefix(&self) -> &str {
        self.0.lookup_prefix()
    }
}

impl fmt::Debug for PlainToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PlainToken({}…)", self.0.preview())
    }
}

impl fmt::Display for PlainToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}…", self.0.preview())
    }
}

// === impl ParsedToken ===

impl ParsedToken {
    /// The product the prefix names.
    pub fn kind(&self) -> TokenKind {
        self.kind
    }

    /// The environment marker.
    pub fn env(&self) -> TokenEnv {
        self.env
    }

    /// The visible part stored in the database (unique index) and shown in UIs:
    /// `<product>_<env>_` plus the first [`LOOKUP_RANDOM_LEN`] random characters.
    pub fn lookup_prefix(&self) -> &str {
        let len = self.header_len() + LOOKUP_RANDOM_LEN;
        // Parsed tokens are ASCII and longer than `len`; `get` keeps this panic-free anyway.
        let secret = self.secret.expose_secret();
        secret.get(..len).unwrap_or(secret)
    }

    /// The full token, for hashing or for handing to the owner.
    pub fn expose_secret(&self) -> &str {
        self.secret.expose_secret()
    }

    /// Length of `<product>_<env>_`.
    fn header_len(&self) -> usize {
        self.kind.prefix().len() + self.env.as_str().len() + 2
    }

    /// What `Debug`/`Display` may print: the header and a few random characters.
    fn preview(&self) -> &str {
        let len = self.header_len() + PREVIEW_RANDOM_LEN;
        let secret = self.secret.expose_secret();
        secret.get(..len).unwrap_or_default()
    }
}

impl fmt::Debug for ParsedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ParsedToken({}…)", self.preview())
    }
}

impl fmt::Display for ParsedToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}…", self.preview())
    }
}

// === impl TokenHash ===

impl TokenHash {
    /// Wraps raw HMAC output.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The raw 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Lowercase hex, as stored in the database.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits (either case).
    pub fn from_hex(s: &str) -> Result<Self, InvalidTokenHash> {
        let mut bytes = [0_u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| InvalidTokenHash)?;
        Ok(Self(bytes))
    }
}

impl PartialEq for TokenHash {
    /// Constant-time, so comparing a computed hash with a stored one leaks nothing.
    fn eq(&self, other: &Self) -> bool {
        verify_slices_are_equal(&self.0, &other.0).is_ok()
    }
}

impl Eq for TokenHash {}

impl fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not a secret (the database holds it), but printing it whole helps nobody.
        write!(f, "TokenHash({}…)", hex::encode(&self.0[..4]))
    }
}

// === impl KeyHasher ===

impl KeyHasher {
    /// Builds a hasher from the deployment's pepper (at least [`MIN_PEPPER_LEN`] bytes).
    pub fn new(pepper: &SecretSlice<u8>) -> Result<Self, PepperTooShort> {
        let pepper = pepper.expose_secret();
        if pepper.len() < MIN_PEPPER_LEN {
            return Err(PepperTooShort(pepper.len()));
        }
        Ok(Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, pepper),
        })
    }

    /// `HMAC-SHA-256(pepper, full token)`.
    pub fn hash(&self, token: &ParsedToken) -> TokenHash {
        let tag = hmac::sign(&self.key, token.expose_secret().as_bytes());
        let mut bytes = [0_u8; 32];
        // SHA-256 tags are always 32 bytes; copying via zip keeps this panic-free.
        for (dst, src) in bytes.iter_mut().zip(tag.as_ref()) {
            *dst = *src;
        }
        TokenHash(bytes)
    }

    /// Whether `token` hashes to `stored`, compared in constant time.
    pub fn verify(&self, token: &ParsedToken, stored: &TokenHash) -> bool {
        hmac::verify(
            &self.key,
            token.expose_secret().as_bytes(),
            stored.as_bytes(),
        )
        .is_ok()
    }
}

impl fmt::Debug for KeyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("KeyHasher([REDACTED])")
    }
}

// === checksum encoding ===

/// Fixed-width base62, most significant digit first, left-padded with `0`.
fn encode_checksum(mut value: u32) -> String {
    let mut digits = [b'0'; CHECKSUM_LEN];
    for digit in digits.iter_mut().rev() {
        *digit = BASE62[(value % 62) as usize];
        value /= 62;
    }
    digits.iter().map(|&b| char::from(b)).collect()
}

/// Inverse of [`encode_checksum`]; `None` for non-base62 input or values above `u32::MAX`.
fn decode_checksum(s: &str) -> Option<u32> {
    s.bytes().try_fold(0_u32, |acc, b| {
        let digit = match b {
            b'0'..=b'9' => b - b'0',
            b'A'..=b'Z' => b - b'A' + 10,
            b'a'..=b'z' => b - b'a' + 36,
            _ => return None,
        };
        acc.checked_mul(62)?.checked_add(u32::from(digit))
    })
}

#[cfg(test)]
mod tests;
