//! Signature verification of SNS messages: the signing-certificate URL allow-list, the
//! certificate fetch and cache, the validity and replay windows, and the RSA check.
//!
//! Spec: <https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html>.
//! SignatureVersion 1 is SHA1withRSA, 2 is SHA256withRSA, both PKCS#1 v1.5.
//!
//! THE URL IS CHECKED BEFORE ANYTHING IS FETCHED: https only, a host matching
//! `^sns\.[a-zA-Z0-9\-]{3,}\.amazonaws\.com(\.cn)?$`, no user info or port, a path ending in
//! `.pem`. Otherwise anyone could point us at their own certificate and sign what they like.

use std::{
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    time::Duration,
};

use aws_lc_rs::signature::{
    RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY, RSA_PKCS1_2048_8192_SHA256, UnparsedPublicKey,
};
use base64::{Engine, engine::general_purpose::STANDARD};
use chrono::{DateTime, Utc};
use reqwest::Url;

use super::message::SnsMessage;

/// Certificates kept in memory at most; SNS uses one per region, rotated rarely.
const CERT_CACHE_CAPACITY: usize = 64;
/// Largest certificate accepted (real ones are about 2 KiB).
const MAX_CERT_BYTES: usize = 64 * 1024;
/// How far in the future a `Timestamp` may be (clock skew) before it is refused.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);
/// Timeout of each outbound call to SNS.
const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// A boxed future, so that the ports below stay object-safe.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The verifier's notion of "now": the system clock in production, pinned in tests.
pub type Clock = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// Fetches signing certificates. Port to the outside world (AWS).
pub trait CertificateSource: Send + Sync {
    /// Runs on a cache miss, only for a URL that passed [`trusted_sns_url`]; returns the PEM.
    fn fetch<'a>(&'a self, url: &'a Url) -> BoxFuture<'a, Result<Vec<u8>, FetchError>>;
}

/// Confirms subscriptions. Port to the outside world (AWS).
pub trait SubscriptionConfirmer: Send + Sync {
    /// Runs for an allow-listed topic's verified `SubscriptionConfirmation`, only for a
    /// `SubscribeURL` that passed [`trusted_sns_url`]; `Ok` once SNS answered 2xx.
    fn confirm<'a>(&'a self, url: &'a Url) -> BoxFuture<'a, Result<(), FetchError>>;
}

/// An outbound call to SNS failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Connection, TLS or timeout.
    #[error("request to SNS failed")]
    Http(#[source] reqwest::Error),
    /// SNS answered with a non-2xx status.
    #[error("SNS answered {0}")]
    Status(http::StatusCode),
    /// The certificate is larger than 64 KiB.
    #[error("the certificate is larger than {MAX_CERT_BYTES} bytes")]
    TooLarge,
    /// The override base URL cannot be joined with the path.
    #[error("the override URL cannot be combined with the SNS path")]
    BadOverride,
}

/// Why a URL in a message is not an SNS URL we may call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UntrustedUrl {
    /// Not a URL.
    #[error("not a URL")]
    Unparsable,
    /// Not `https`.
    #[error("not https")]
    NotHttps,
    /// The host is not `sns.<region>.amazonaws.com[.cn]`.
    #[error("the host is not an SNS host")]
    Host,
    /// User info or an explicit port.
    #[error("user info or a port in the URL")]
    Authority,
    /// A certificate URL whose path does not end in `.pem`.
    #[error("the path does not end in .pem")]
    NotPem,
}

/// Why a message does not verify.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    /// `SignatureVersion` other than 1 or 2.
    #[error("unsupported SignatureVersion")]
    UnsupportedSignatureVersion,
    /// `SigningCertURL` fails the allow-list; nothing was fetched.
    #[error("untrusted SigningCertURL: {0}")]
    UntrustedCertificateUrl(#[source] UntrustedUrl),
    /// The certificate could not be fetched.
    #[error("the signing certificate could not be fetched")]
    CertificateUnavailable(#[source] FetchError),
    /// The certificate is not a PEM X.509 certificate with an RSA key.
    #[error("the signing certificate is invalid: {0}")]
    InvalidCertificate(&'static str),
    /// Now is outside the certificate's notBefore..notAfter.
    #[error("the signing certificate is not valid now")]
    CertificateNotValidNow,
    /// `Timestamp` is older than the replay window or too far in the future.
    #[error("the message Timestamp is outside the accepted window")]
    StaleMessage,
    /// The signature does not match.
    #[error("the signature does not verify")]
    InvalidSignature,
}

/// The public part of a signing certificate, as cached.
#[derive(Debug)]
struct SigningCert {
    /// PKCS#1 `RSAPublicKey` DER.
    public_key: Vec<u8>,
    not_before: DateTime<Utc>,
    not_after: DateTime<Utc>,
}

/// Verifies SNS messages; shares its certificate cache across requests.
pub struct SnsVerifier {
    source: Arc<dyn CertificateSource>,
    clock: Clock,
    max_age: Duration,
    /// By certificate URL; bounded by [`CERT_CACHE_CAPACITY`]. A std mutex: never held across
    /// an `.await`.
    cache: Mutex<HashMap<String, Arc<SigningCert>>>,
}

/// The real [`CertificateSource`] and [`SubscriptionConfirmer`]: reqwest, no redirects, a
/// timeout, https only unless an override base URL (tests, dev) replaces scheme and host.
pub struct HttpSnsClient {
    http: reqwest::Client,
    base_override: Option<Url>,
}

/// Whether `host` matches `^sns\.[a-zA-Z0-9\-]{3,}\.amazonaws\.com(\.cn)?$`.
pub fn is_sns_host(host: &str) -> bool {
    let Some(rest) = host.strip_prefix("sns.") else {
        return false;
    };
    let region = rest
        .strip_suffix(".amazonaws.com")
        .or_else(|| rest.strip_suffix(".amazonaws.com.cn"));
    region
        .is_some_and(|r| r.len() >= 3 && r.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-'))
}

/// Parses `raw` and checks it is an https URL on an SNS host (and, with `pem`, a path ending
/// in `.pem`). Runs BEFORE any request to it.
pub fn trusted_sns_url(raw: &str, pem: bool) -> Result<Url, UntrustedUrl> {
    let url = Url::parse(raw).map_err(|_| UntrustedUrl::Unparsable)?;
    if url.scheme() != "https" {
        return Err(UntrustedUrl::NotHttps);
    }
    if !url.username().is_empty() || url.password().is_some() || url.port().is_some() {
        return Err(UntrustedUrl::Authority);
    }
    // `domain()` is `None` for IP addresses.
    if !url.domain().is_some_and(is_sns_host) {
        return Err(UntrustedUrl::Host);
    }
    if pem && !url.path().ends_with(".pem") {
        return Err(UntrustedUrl::NotPem);
    }
    Ok(url)
}

// === impl SnsVerifier ===

impl SnsVerifier {
    /// A verifier over `source`, refusing messages older than `max_age` by `clock`.
    pub fn new(source: Arc<dyn CertificateSource>, clock: Clock, max_age: Duration) -> Self {
        Self {
            source,
            clock,
            max_age,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The system clock.
    pub fn system_clock() -> Clock {
        Arc::new(Utc::now)
    }

    /// Checks, in this order (cheap and local first, the fetch last): signature version,
    /// certificate URL, timestamp window, then certificate (cached or fetched), its validity
    /// and the signature over [`SnsMessage::string_to_sign`].
    pub async fn verify(&self, message: &SnsMessage) -> Result<(), VerifyError> {
        let algorithm = match message.signature_version.as_str() {
            "1" => &RSA_PKCS1_2048_8192_SHA1_FOR_LEGACY_USE_ONLY,
            "2" => &RSA_PKCS1_2048_8192_SHA256,
            _ => return Err(VerifyError::UnsupportedSignatureVersion),
        };
        let cert_url = trusted_sns_url(&message.signing_cert_url, true)
            .map_err(VerifyError::UntrustedCertificateUrl)?;
        let now = (self.clock)();
        let age = now.signed_duration_since(message.sent_at);
        let too_old = age.to_std().is_ok_and(|age| age > self.max_age);
        let too_new = (-age).to_std().is_ok_and(|ahead| ahead > MAX_CLOCK_SKEW);
        if too_old || too_new {
            return Err(VerifyError::StaleMessage);
        }
        let signature = STANDARD
            .decode(message.signature.as_bytes())
            .map_err(|_| VerifyError::InvalidSignature)?;
        let cert = self.certificate(&cert_url).await?;
        if now < cert.not_before || now > cert.not_after {
            return Err(VerifyError::CertificateNotValidNow);
        }
        UnparsedPublicKey::new(algorithm, &cert.public_key)
            .verify(message.string_to_sign().as_bytes(), &signature)
            .map_err(|_| VerifyError::InvalidSignature)
    }

    /// From the cache, or fetched and parsed (and then cached).
    async fn certificate(&self, url: &Url) -> Result<Arc<SigningCert>, VerifyError> {
        if let Some(cert) = self.cache_lock().get(url.as_str()) {
            return Ok(cert.clone());
        }
        let pem = self
            .source
            .fetch(url)
            .await
            .map_err(VerifyError::CertificateUnavailable)?;
        let cert = Arc::new(parse_certificate(&pem)?);
        let mut cache = self.cache_lock();
        if cache.len() >= CERT_CACHE_CAPACITY {
            // Real SNS uses a handful of URLs; a full cache means churn, so start over.
            cache.clear();
        }
        cache.insert(url.as_str().to_owned(), cert.clone());
        Ok(cert)
    }

    fn cache_lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<SigningCert>>> {
        // A panic while holding the lock cannot leave the map half-updated; keep using it.
        self.cache
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The RSA public key and validity of a PEM X.509 certificate.
fn parse_certificate(pem: &[u8]) -> Result<SigningCert, VerifyError> {
    use x509_parser::{oid_registry::OID_PKCS1_RSAENCRYPTION, pem::parse_x509_pem};
    let (_, pem) =
        parse_x509_pem(pem).map_err(|_| VerifyError::InvalidCertificate("not a PEM document"))?;
    let cert = pem
        .parse_x509()
        .map_err(|_| VerifyError::InvalidCertificate("not an X.509 certificate"))?;
    let spki = cert.public_key();
    if spki.algorithm.algorithm != OID_PKCS1_RSAENCRYPTION {
        return Err(VerifyError::InvalidCertificate("not an RSA key"));
    }
    let time = |t: x509_parser::time::ASN1Time| {
        DateTime::from_timestamp(t.timestamp(), 0)
            .ok_or(VerifyError::InvalidCertificate("validity out of range"))
    };
    Ok(SigningCert {
        public_key: spki.subject_public_key.data.to_vec(),
        not_before: time(cert.validity().not_before)?,
        not_after: time(cert.validity().not_after)?,
    })
}

// === impl HttpSnsClient ===

impl HttpSnsClient {
    /// A client that calls the URLs in messages, or `base_override` with their path and query.
    pub fn new(base_override: Option<Url>) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .https_only(base_override.is_none())
            .build()?;
        Ok(Self {
            http,
            base_override,
        })
    }

    /// The URL actually requested for the (already allow-listed) `url`.
    fn target(&self, url: &Url) -> Result<Url, FetchError> {
        let Some(base) = &self.base_override else {
            return Ok(url.clone());
        };
        let mut path_and_query = url.path().to_owned();
        if let Some(query) = url.query() {
            path_and_query.push('?');
            path_and_query.push_str(query);
        }
        base.join(&path_and_query)
            .map_err(|_| FetchError::BadOverride)
    }

    async fn get(&self, url: &Url) -> Result<reqwest::Response, FetchError> {
        let response = self
            .http
            .get(self.target(url)?)
            .send()
            .await
            .map_err(FetchError::Http)?;
        if !response.status().is_success() {
            return Err(FetchError::Status(response.status()));
        }
        Ok(response)
    }
}

impl CertificateSource for HttpSnsClient {
    fn fetch<'a>(&'a self, url: &'a Url) -> BoxFuture<'a, Result<Vec<u8>, FetchError>> {
        Box::pin(async move {
            let mut response = self.get(url).await?;
            let mut body = Vec::new();
            while let Some(chunk) = response.chunk().await.map_err(FetchError::Http)? {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_CERT_BYTES {
                    return Err(FetchError::TooLarge);
                }
            }
            Ok(body)
        })
    }
}

impl SubscriptionConfirmer for HttpSnsClient {
    fn confirm<'a>(&'a self, url: &'a Url) -> BoxFuture<'a, Result<(), FetchError>> {
        Box::pin(async move {
            self.get(url).await?;
            Ok(())
        })
    }
}
