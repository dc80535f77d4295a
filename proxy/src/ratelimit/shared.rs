//! The Redis limiter: the same GCRA as [`super::gcra`], run by one Lua script so that the read,
//! the decision and the write are a single atomic step however many proxies share the key.

use std::time::Duration;

use arc_swap::ArcSwap;

use redis::{
    ConnectionAddr, ConnectionInfo, IntoConnectionInfo, Script, TlsCertificates,
    aio::{ConnectionManager, ConnectionManagerConfig},
};
use rustls::pki_types::{CertificateDer, pem::PemObject};

use super::{Limit, RateDecision};

/// Bucket keys live under this prefix in Redis.
const KEY_PREFIX: &str = "portcullis:rl:";

/// GCRA in Lua. KEYS[1] = bucket; ARGV[1] = emission interval (µs); ARGV[2] = burst.
/// Returns `{allowed, remaining, reset µs, retry-after µs}`.
///
/// The clock is Redis's own `TIME`, never the caller's, so proxies with skewed clocks agree.
/// Times are microseconds since the epoch (≈ 1.8e15, exact in a Lua double). The key expires
/// when its TAT passes: an absent key and a full bucket are the same state.
/// KEEP IN STEP WITH `gcra::decide`.
const GCRA_LUA: &str = r"
if redis.replicate_commands then pcall(redis.replicate_commands) end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tolerance = interval * burst
local tat = tonumber(redis.call('GET', KEYS[1])) or now
if tat < now then tat = now end
local new_tat = tat + interval
local allow_at = new_tat - tolerance
if now < allow_at then
  return {0, 0, tat - now, allow_at - now}
end
local ttl_ms = math.ceil((new_tat - now) / 1000)
redis.call('SET', KEYS[1], string.format('%.0f', new_tat), 'PX', ttl_ms)
local remaining = math.floor((tolerance - (new_tat - now)) / interval)
return {1, remaining, new_tat - now, 0}
";

/// Why the shared budget could not be consulted (the caller falls back to local limits), or,
/// from [`RedisLimiter::new`], why the Redis settings are refused.
#[derive(Debug, thiserror::Error)]
pub enum SharedLimitError {
    /// `rediss://…#insecure`: certificate verification turned off.
    #[error(
        "rediss:// with #insecure would skip certificate verification; trust a private CA \
         with PORTCULLIS_PROXY__REDIS_CA_CERT_PATH instead"
    )]
    Unverified,
    /// A CA certificate for a plain-text `redis://` URL.
    #[error("a Redis CA certificate needs a rediss:// (TLS) URL")]
    CaWithoutTls,
    /// The CA file is not PEM.
    #[error("the Redis CA file is not valid PEM")]
    CaNotPem,
    /// The CA file is PEM without a certificate in it.
    #[error("the Redis CA file holds no certificate")]
    NoCaCertificate,
    /// Redis answered with an error or the connection failed.
    #[error("redis error")]
    Redis(#[from] redis::RedisError),
    /// Redis did not answer within the configured timeout.
    #[error("redis did not answer within {0:?}")]
    Timeout(Duration),
}

/// The bucket [`RedisLimiter::probe`] spends; no caller's bucket is named like it.
const PROBE_BUCKET: &str = "probe";

/// A GCRA limiter whose buckets live in Redis, shared by every proxy instance.
pub struct RedisLimiter {
    /// Replaced by [`Self::reconnect`]; requests clone the current one (an `Arc`).
    connection: ArcSwap<ConnectionManager>,
    /// What a new connection is made from.
    client: redis::Client,
    config: ConnectionManagerConfig,
    script: Script,
    timeout: Duration,
}

// === impl RedisLimiter ===

impl RedisLimiter {
    /// A limiter over `url`. Connects lazily (and reconnects by itself), so a Redis that is
    /// down at start-up does not stop the proxy; only bad settings are an error.
    ///
    /// `rediss://` connects over TLS and verifies the server's certificate against the
    /// system's roots, or only against `ca_pem` (PEM certificates) when given. Turning the
    /// verification off (`#insecure`) is refused, and so is a CA for a plain `redis://` URL.
    ///
    /// Must be called inside a Tokio runtime.
    pub fn new(
        url: &str,
        ca_pem: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Self, SharedLimitError> {
        let (info, tls) = Self::parse(url, ca_pem.is_some())?;
        if tls {
            crate::install_crypto_provider();
        }
        let client = match ca_pem {
            Some(pem) => {
                let certificates = CertificateDer::pem_slice_iter(pem)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| SharedLimitError::CaNotPem)?;
                if certificates.is_empty() {
                    return Err(SharedLimitError::NoCaCertificate);
                }
                let roots = TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem.to_vec()),
                };
                redis::Client::build_with_tls(info, roots)?
            }
            None => redis::Client::open(info)?,
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_min_delay(Duration::from_millis(10))
            .set_max_delay(Duration::from_millis(200));
        let connection = ConnectionManager::new_lazy_with_config(client.clone(), config.clone())?;
        Ok(Self {
            connection: ArcSwap::from_pointee(connection),
            client,
            config,
            script: Script::new(GCRA_LUA),
            timeout,
        })
    }

    /// What [`Self::new`] refuses in `url` (with a CA file or without), checked without
    /// connecting: for configuration checks when the process loads its settings.
    pub fn check_settings(url: &str, with_ca: bool) -> Result<(), SharedLimitError> {
        Self::parse(url, with_ca).map(|_| ())
    }

    /// The parsed URL and whether it is TLS; refuses verification turned off and a CA for
    /// plain text.
    fn parse(url: &str, with_ca: bool) -> Result<(ConnectionInfo, bool), SharedLimitError> {
        let info = url.into_connection_info()?;
        let tls = match info.addr() {
            ConnectionAddr::TcpTls { insecure: true, .. } => {
                return Err(SharedLimitError::Unverified);
            }
            ConnectionAddr::TcpTls { .. } => true,
            _ => false,
        };
        if with_ca && !tls {
            return Err(SharedLimitError::CaWithoutTls);
        }
        Ok((info, tls))
    }

    /// Runs the script for bucket `key` (EVALSHA; on `NOSCRIPT`, SCRIPT LOAD and again), bounded
    /// by the timeout.
    pub async fn check(&self, key: &str, limit: Limit) -> Result<RateDecision, SharedLimitError> {
        let mut connection = ConnectionManager::clone(&self.connection.load());
        let interval_us = (limit.interval_ns() / 1_000).max(1);
        let mut invocation = self.script.prepare_invoke();
        invocation
            .key(format!("{KEY_PREFIX}{key}"))
            .arg(interval_us)
            .arg(limit.burst.max(1));
        let (allowed, remaining, reset_us, retry_us): (i64, i64, i64, i64) =
            tokio::time::timeout(self.timeout, invocation.invoke_async(&mut connection))
                .await
                .map_err(|_| SharedLimitError::Timeout(self.timeout))??;
        let micros = |us: i64| Duration::from_micros(u64::try_from(us).unwrap_or(0));
        Ok(RateDecision {
            allowed: allowed == 1,
            limit: limit.burst.max(1),
            remaining: u32::try_from(remaining).unwrap_or(0),
            reset: micros(reset_us),
            retry_after: (allowed != 1).then(|| micros(retry_us)),
        })
    }

    /// Replaces the connection with a new one, resolving the server's name again. The
    /// connection manager reconnects by itself only when its connection breaks; after a
    /// failover that demotes the server behind a name (ElastiCache, Sentinel-managed DNS) the
    /// old connection stays up to a read-only replica, and the script fails on it for good.
    pub fn reconnect(&self) -> Result<(), SharedLimitError> {
        let connection =
            ConnectionManager::new_lazy_with_config(self.client.clone(), self.config.clone())?;
        self.connection.store(std::sync::Arc::new(connection));
        Ok(())
    }

    /// Whether Redis runs the rate-limit script within the timeout, on a bucket of its own.
    /// A `PING` would not do: a server that answers it may still refuse the script (a
    /// read-only replica after a failover, `maxmemory` reached), and requests would go back
    /// to it only to fail and fall back again.
    pub async fn probe(&self) -> bool {
        self.check(PROBE_BUCKET, Limit::new(60_000, 1_000))
            .await
            .is_ok()
    }
}
