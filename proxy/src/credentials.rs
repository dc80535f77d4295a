//! Upstream credentials: a header value read from a secret store (AWS Secrets Manager in
//! production) and injected into requests of routes that name one, so that the upstream's
//! real credential never sits in a client, a config file or the database.
//!
//! Values are cached for [`TTL`] and refetched at once when the change feed reports that a
//! route or an upstream credential changed (remediation records one after each rotation), so
//! a rotated secret is picked up within the feed's delay. If a refetch fails, the last value
//! keeps being used (the upstream usually still accepts it during rotation) and the store is
//! asked again after [`RETRY_AFTER`], not on every request; with no value at all the request
//! fails closed with 502 `upstream_credential_unavailable`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex, OnceLock},
    time::{Duration, Instant},
};

use futures_util::future::BoxFuture;
use http::HeaderValue;

use crate::error::ProxyError;

/// How long a fetched value is used without asking the store again.
pub const TTL: Duration = Duration::from_secs(300);

/// After a failed refresh, how long the previous value is used before the store is asked
/// again.
pub const RETRY_AFTER: Duration = Duration::from_secs(5);

/// A store of secret values. Implemented over Secrets Manager in `api::aws`.
pub trait SecretSource: Send + Sync {
    /// The current (`AWSCURRENT`) value of `secret_id`. Runs on a request's path on a cache
    /// miss, so it should be bounded by a timeout. Errors must not contain the value.
    fn current_value<'a>(
        &'a self,
        secret_id: &'a str,
    ) -> BoxFuture<'a, Result<String, SecretSourceError>>;
}

/// Why a secret could not be read (the store's error code and message, never the value).
#[derive(Debug, thiserror::Error)]
#[error("secret {secret_id} could not be read: {message}")]
pub struct SecretSourceError {
    /// The secret asked for.
    pub secret_id: String,
    /// What went wrong.
    pub message: String,
}

struct Entry {
    value: HeaderValue,
    /// Until when the value is used without asking the store: [`TTL`] after a fetch,
    /// [`RETRY_AFTER`] after a failed refresh.
    fresh_until: Instant,
    epoch: u64,
}

/// The cache of upstream credential values of one proxy instance.
#[derive(Default)]
pub struct UpstreamCredentials {
    source: OnceLock<Arc<dyn SecretSource>>,
    entries: Mutex<HashMap<String, Entry>>,
}

impl UpstreamCredentials {
    fn store(&self, secret_id: &str, value: &HeaderValue, fresh_for: Duration, epoch: u64) {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(
                secret_id.to_owned(),
                Entry {
                    value: value.clone(),
                    fresh_until: Instant::now() + fresh_for,
                    epoch,
                },
            );
    }

    /// Plugs in the store; only the first call takes effect.
    pub fn set_source(&self, source: Arc<dyn SecretSource>) -> bool {
        self.source.set(source).is_ok()
    }

    /// The header value for `secret_id`. `epoch` is the policy cache's credential epoch:
    /// an entry fetched under an older epoch is refetched.
    pub async fn header_value(
        &self,
        secret_id: &str,
        epoch: u64,
    ) -> Result<HeaderValue, ProxyError> {
        let cached = {
            let entries = self
                .entries
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            entries.get(secret_id).map(|e| {
                (
                    e.value.clone(),
                    Instant::now() < e.fresh_until && e.epoch == epoch,
                )
            })
        };
        if let Some((value, true)) = cached {
            return Ok(value);
        }
        let Some(source) = self.source.get() else {
            tracing::error!(
                secret_id,
                "route needs an upstream credential but no secret store is configured"
            );
            return Err(ProxyError::UpstreamCredentialUnavailable);
        };
        match source.current_value(secret_id).await {
            Ok(text) => {
                let mut value = HeaderValue::from_str(text.trim()).map_err(|_| {
                    tracing::error!(secret_id, "upstream credential is not a valid header value");
                    ProxyError::UpstreamCredentialUnavailable
                })?;
                value.set_sensitive(true);
                self.store(secret_id, &value, TTL, epoch);
                Ok(value)
            }
            Err(error) => {
                metrics::counter!("portcullis_upstream_credential_failures_total").increment(1);
                match cached {
                    Some((stale, _)) => {
                        tracing::warn!(%error, "upstream credential refresh failed; using the previous value");
                        // While the store is down, ask it again once per `RETRY_AFTER`, not
                        // on every request (each of which would wait for its timeout).
                        self.store(secret_id, &stale, RETRY_AFTER, epoch);
                        Ok(stale)
                    }
                    None => {
                        tracing::error!(%error, "upstream credential unavailable");
                        Err(ProxyError::UpstreamCredentialUnavailable)
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    struct Counting {
        calls: AtomicUsize,
        fail: bool,
    }

    impl SecretSource for Counting {
        fn current_value<'a>(
            &'a self,
            secret_id: &'a str,
        ) -> BoxFuture<'a, Result<String, SecretSourceError>> {
            Box::pin(async move {
                let n = self.calls.fetch_add(1, Ordering::SeqCst);
                if self.fail && n > 0 {
                    return Err(SecretSourceError {
                        secret_id: secret_id.into(),
                        message: "throttled".into(),
                    });
                }
                Ok(format!("Bearer v{n}"))
            })
        }
    }

    #[tokio::test]
    async fn values_are_cached_until_the_epoch_moves_and_stale_values_survive_errors() {
        let credentials = UpstreamCredentials::default();
        let source = Arc::new(Counting {
            calls: AtomicUsize::new(0),
            fail: true,
        });
        assert!(credentials.set_source(source.clone()));
        let first = credentials.header_value("s", 0).await.ok();
        assert_eq!(
            first.as_ref().map(|v| v.as_bytes()),
            Some(&b"Bearer v0"[..])
        );
        assert!(first.is_some_and(|v| v.is_sensitive()));
        assert!(credentials.header_value("s", 0).await.is_ok());
        assert_eq!(source.calls.load(Ordering::SeqCst), 1, "cached");
        // The epoch moved (a rotation was reported) but the store fails: keep the old value.
        let stale = credentials.header_value("s", 1).await.ok();
        assert_eq!(
            stale.map(|v| v.as_bytes().to_vec()),
            Some(b"Bearer v0".to_vec())
        );
        assert_eq!(source.calls.load(Ordering::SeqCst), 2);
        // The store is not asked again on every request while it is down.
        for _ in 0..10 {
            assert!(credentials.header_value("s", 1).await.is_ok());
        }
        assert_eq!(
            source.calls.load(Ordering::SeqCst),
            2,
            "one refresh attempt per RETRY_AFTER"
        );
        // Never fetched and the store fails: fail closed.
        assert!(matches!(
            credentials.header_value("other", 1).await,
            Err(ProxyError::UpstreamCredentialUnavailable)
        ));
    }

    #[tokio::test]
    async fn without_a_store_a_credentialed_route_fails_closed() {
        let credentials = UpstreamCredentials::default();
        assert!(matches!(
            credentials.header_value("s", 0).await,
            Err(ProxyError::UpstreamCredentialUnavailable)
        ));
    }
}
