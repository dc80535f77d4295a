//! Shared state of one proxy instance and its background tasks.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use sea_orm::DatabaseConnection;
use secrecy::SecretSlice;
use tokio::{sync::watch, task::JoinHandle};

use crate::{
    ProxyConfig,
    audit::{self, AuditSink, AuditWriter},
    cache::PolicyCache,
    credentials::{SecretSource, UpstreamCredentials},
    detect::Detectors,
    forward::{self, UpstreamClient},
    keys::KeyHasher,
    normalize::NormalizeOptions,
    ratelimit::RateLimiter,
};

/// Everything a request needs; cheap to clone.
#[derive(Clone)]
pub struct ProxyState(Arc<Inner>);

/// The fields behind [`ProxyState`].
pub struct Inner {
    /// Validated settings.
    pub config: ProxyConfig,
    /// The database (quota updates; the cache loads through it).
    pub db: DatabaseConnection,
    /// Cached policy.
    pub cache: Arc<PolicyCache>,
    /// Verifies API keys (the key pepper).
    pub hasher: KeyHasher,
    /// Verifies incident-grant tokens (their own key, so neither secret alone verifies
    /// guesses of the other kind of credential).
    pub grant_hasher: KeyHasher,
    /// Pooled upstream client.
    pub client: UpstreamClient,
    /// Queues audit events.
    pub audit: AuditSink,
    /// Cached upstream credentials (plug a store in with [`ProxyState::set_secret_source`]).
    pub credentials: UpstreamCredentials,
    /// Turns audited requests into security events.
    pub detectors: Detectors,
    /// Normalisation settings derived from the config.
    pub normalize: NormalizeOptions,
    /// Rate limits: in process, or shared through Redis when `REDIS_URL` is set.
    pub ratelimit: RateLimiter,
    /// Verifies OIDC bearer tokens, when `[proxy.oidc]` is configured.
    pub oidc: Option<Arc<crate::oidc::OidcVerifier>>,
    /// Open WebSocket tunnels.
    pub tunnels: crate::tunnel::Tunnels,
    background: tokio::sync::Mutex<Option<Background>>,
}

struct Background {
    stop: watch::Sender<bool>,
    sync: JoinHandle<()>,
    listen: JoinHandle<()>,
    detect: JoinHandle<()>,
    audit: AuditWriter,
}

impl std::ops::Deref for ProxyState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl ProxyState {
    /// Loads policy, starts the change-feed poller and the audit writer. API keys are hashed
    /// with `pepper`, grant tokens with `grant_key`. With `redis_url`, rate limits are shared
    /// through that Redis (connected lazily: a Redis that is down does not stop the proxy).
    pub async fn start(
        db: DatabaseConnection,
        config: ProxyConfig,
        pepper: &SecretSlice<u8>,
        grant_key: &SecretSlice<u8>,
        redis_url: Option<&str>,
    ) -> anyhow::Result<Self> {
        let hasher = KeyHasher::new(pepper).context("invalid key pepper")?;
        let grant_hasher = KeyHasher::new(grant_key).context("invalid token signing key")?;
        let cache = Arc::new(
            PolicyCache::load(
                db.clone(),
                Duration::from_secs(config.policy_max_staleness_secs),
            )
            .await
            .context("failed to load policy")?
            .with_max_age(Duration::from_secs(config.policy_reload_secs)),
        );
        cache
            .sync()
            .await
            .context("failed to read the policy change feed")?;
        let (stop, stop_rx) = watch::channel(false);
        let (detectors, detect) =
            Detectors::spawn(db.clone(), config.detectors.clone(), stop_rx.clone());
        let listen = tokio::spawn(cache.clone().run_listener(stop_rx.clone()));
        let sync = tokio::spawn(cache.clone().run_sync(
            Duration::from_millis(config.policy_poll_interval_ms),
            stop_rx,
        ));
        let (audit, audit_writer) = audit::spawn(db.clone(), config.audit_queue_capacity);
        let upstream_ca = match &config.upstream_ca_cert_path {
            Some(path) => Some(std::fs::read(path).with_context(|| {
                format!(
                    "PORTCULLIS_PROXY__UPSTREAM_CA_CERT_PATH: cannot read {}",
                    path.display()
                )
            })?),
            None => None,
        };
        let client = forward::client(config.connect_timeout(), upstream_ca.as_deref())
            .context("PORTCULLIS_PROXY__UPSTREAM_CA_CERT_PATH")?;
        let normalize = NormalizeOptions {
            allow_semicolon_params: config.allow_semicolon_params,
        };
        let ratelimit = match redis_url {
            Some(url) => {
                let ca = match &config.redis_ca_cert_path {
                    Some(path) => Some(std::fs::read(path).with_context(|| {
                        format!(
                            "PORTCULLIS_PROXY__REDIS_CA_CERT_PATH: cannot read {}",
                            path.display()
                        )
                    })?),
                    None => None,
                };
                RateLimiter::with_redis(url, ca.as_deref(), config.redis_timeout())
                    .context("invalid REDIS_URL")?
            }
            None => RateLimiter::local(),
        };
        let oidc = match &config.oidc {
            Some(settings) => {
                let verifier = Arc::new(
                    crate::oidc::OidcVerifier::new(settings)
                        .context("invalid OIDC configuration")?,
                );
                // Discovery in the background: a provider that is down must not stop the proxy;
                // requests retry it lazily (at most once per cooldown).
                tokio::spawn({
                    let verifier = verifier.clone();
                    async move { verifier.prime().await }
                });
                Some(verifier)
            }
            None => None,
        };
        Ok(Self(Arc::new(Inner {
            config,
            db,
            cache,
            hasher,
            grant_hasher,
            client,
            audit,
            detectors,
            credentials: UpstreamCredentials::default(),
            normalize,
            ratelimit,
            oidc,
            tunnels: crate::tunnel::Tunnels::default(),
            background: tokio::sync::Mutex::new(Some(Background {
                stop,
                sync,
                listen,
                detect,
                audit: audit_writer,
            })),
        })))
    }

    /// Plugs in the store that routes' upstream credentials are read from. Without one, routes
    /// that name a credential fail closed (502).
    pub fn set_secret_source(&self, source: Arc<dyn SecretSource>) {
        if !self.credentials.set_source(source) {
            tracing::warn!("secret source already set; keeping the first");
        }
    }

    /// Closes the WebSocket tunnels, stops polling and flushes every queued audit event.
    /// Call after the server stopped accepting requests; idempotent.
    pub async fn shutdown(&self) {
        let Some(background) = self.background.lock().await.take() else {
            return;
        };
        // First: each tunnel queues its closing event, which the writer below must flush.
        self.tunnels.close_all().await;
        let _ = background.stop.send(true);
        let _ = background.sync.await;
        let _ = background.listen.await;
        let _ = background.detect.await;
        background.audit.shutdown().await;
    }
}
