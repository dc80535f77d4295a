//! Shared state of the management API.

use std::{sync::Arc, time::Duration};

use anyhow::Context;
use metrics_exporter_prometheus::PrometheusHandle;
use proxy::{
    ProxyConfig, cache::PolicyCache, keys::KeyHasher, normalize::NormalizeOptions,
    oidc::OidcVerifier,
};
use sea_orm::{DatabaseConnection, TransactionTrait};
use secrecy::SecretSlice;
use tokio::sync::watch;

use crate::{ApiConfig, graphql::PortcullisSchema, service::ServiceContext};

/// How often the API's policy cache polls the change feed (as the proxy's default).
const POLICY_POLL_INTERVAL: Duration = Duration::from_millis(250);
/// How long the API authorizes from cache while the database is unreachable.
const POLICY_MAX_STALENESS: Duration = Duration::from_secs(60);

/// Everything a handler or resolver needs, cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The database (SQLite or PostgreSQL).
    pub db: DatabaseConnection,
    /// Validated API settings.
    pub config: Arc<ApiConfig>,
    /// The GraphQL schema, built once.
    pub schema: PortcullisSchema,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Database, policy cache and key hasher, shared with the resolvers.
    pub services: ServiceContext,
    /// The inbound SNS webhook (verifier, certificate cache, allow-listed topics).
    pub sns: Arc<crate::webhooks::sns::SnsWebhook>,
    /// Dropping the last clone of the state stops the change-feed poller.
    _poller: Arc<watch::Sender<bool>>,
}

impl AppState {
    /// Ensures the builtin roles, loads the policy cache (and starts its change-feed poller
    /// and, on PostgreSQL, its LISTEN/NOTIFY listener), and builds the schema, over an open,
    /// migrated database. From the proxy's settings `proxy` the API shares two: with
    /// `[proxy.oidc]`, OIDC bearer tokens authenticate too (the proxy's verifier), and
    /// `simulateAccess` normalises paths with the proxy's options.
    pub async fn new(
        db: DatabaseConnection,
        config: ApiConfig,
        pepper: &SecretSlice<u8>,
        grant_key: &SecretSlice<u8>,
        proxy: &ProxyConfig,
    ) -> anyhow::Result<Self> {
        let hasher = KeyHasher::new(pepper).context("invalid key pepper")?;
        let grant_hasher = KeyHasher::new(grant_key).context("invalid token signing key")?;
        let oidc = proxy
            .oidc
            .as_ref()
            .map(|settings| OidcVerifier::new(settings).map(Arc::new))
            .transpose()
            .context("invalid OIDC configuration")?;
        if let Some(verifier) = &oidc {
            // Discovery in the background, as the proxy does: a provider that is down must
            // not stop the API; verification retries it lazily.
            let verifier = verifier.clone();
            tokio::spawn(async move { verifier.prime().await });
        }
        ensure_builtin_roles(&db).await?;
        let cache = Arc::new(
            PolicyCache::load(db.clone(), POLICY_MAX_STALENESS)
                .await
                .context("failed to load policy")?,
        );
        cache
            .sync()
            .await
            .context("failed to read the policy change feed")?;
        let (stop, stop_rx) = watch::channel(false);
        tokio::spawn(cache.clone().run_listener(stop_rx.clone()));
        tokio::spawn(cache.clone().run_sync(POLICY_POLL_INTERVAL, stop_rx));
        let services = ServiceContext {
            db: db.clone(),
            cache,
            hasher,
            grant_hasher,
            oidc,
            grants: config.grants.clone(),
            normalize: NormalizeOptions {
                allow_semicolon_params: proxy.allow_semicolon_params,
            },
            notify_topic_arn: config.notify_topic_arn.clone(),
            remediation: None,
        };
        let sns = Arc::new(
            crate::webhooks::sns::SnsWebhook::from_config(&config.sns)
                .context("failed to set up the SNS webhook")?,
        );
        let config = Arc::new(config);
        let schema = crate::graphql::build_schema(services.clone(), &config);
        Ok(Self {
            db,
            config,
            schema,
            metrics: crate::metrics::install(),
            services,
            sns,
            _poller: Arc::new(stop),
        })
    }

    /// Serves the remediation mutations (`reportLeakedKey`, `rotateSecret`,
    /// `retryRemediationRun`) through `engine`; without it they answer `UNAVAILABLE`.
    #[must_use]
    pub fn with_remediation(mut self, engine: crate::remediation::Engine) -> Self {
        self.services.remediation = Some(engine);
        self.schema = crate::graphql::build_schema(self.services.clone(), &self.config);
        self
    }
}

/// Creates or repairs the builtin roles in one transaction. Instances starting together may
/// race on the unique role names; the loser retries and then finds the roles in place.
async fn ensure_builtin_roles(db: &DatabaseConnection) -> anyhow::Result<()> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        let result = async {
            let txn = db.begin().await?;
            crate::service::management::ensure_builtin_roles(&txn).await?;
            txn.commit().await
        }
        .await;
        match result {
            Ok(()) => return Ok(()),
            Err(error) if attempt < 3 => {
                tracing::warn!(%error, attempt, "creating the builtin roles failed; retrying");
                tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
            }
            Err(error) => return Err(error).context("failed to create the builtin roles"),
        }
    }
}
