//! `portcullis dev`: the whole product on one machine.
//!
//! SQLite under the data directory (migrated on start), the management API, the proxy, an
//! echo upstream behind a seeded `/demo` route, and in-process mocks of SNS and Secrets Manager
//! with the AWS SDK pointed at them. Prints the URLs and the bootstrap admin key.

use std::{
    fs,
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::Context;
use api::aws::{
    AwsClients,
    dev_mock::{DevAws, SecretVersion},
};
use proxy::keys::{KeyHasher, PlainToken, TokenEnv, TokenKind};
use sea_orm_migration::MigratorTrait;
use secrecy::ExposeSecret;
use tokio::task::JoinHandle;
use uuid::Uuid;

use crate::{
    config::{Config, Environment},
    secrets::ServerSecrets,
    serve::{self, ShutdownTrigger},
};

/// The SNS topic `POST /webhooks/sns` accepts in development, besides the configured ones.
pub const DEV_SNS_TOPIC: &str = "arn:aws:sns:us-east-1:000000000000:portcullis-dev";

/// Where the three local servers listen (port 0 picks a free port).
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// Management API.
    pub api: SocketAddr,
    /// Proxy.
    pub proxy: SocketAddr,
    /// Demo echo upstream.
    pub demo_upstream: SocketAddr,
}

/// A running development stack; [`RunningDev::stop`] shuts it down gracefully.
pub struct RunningDev {
    /// Where the API listens.
    pub api_addr: SocketAddr,
    /// Where the proxy listens.
    pub proxy_addr: SocketAddr,
    /// Where the demo upstream listens.
    pub demo_upstream_addr: SocketAddr,
    /// The bootstrap admin key (development only: printed on purpose).
    pub admin_key: String,
    /// The mocked AWS services, with what they received.
    pub aws: DevAws,
    /// Clients pointed at the mocks.
    pub aws_clients: AwsClients,
    /// The remediation engine (over the mocked AWS), for manual triggers.
    pub remediation: api::remediation::Engine,
    /// Its background loops (security events, runs, outbox); `None` once stopped.
    remediation_worker: Option<api::remediation::Worker>,
    proxy_state: proxy::ProxyState,
    trigger: ShutdownTrigger,
    servers: Vec<JoinHandle<anyhow::Result<()>>>,
}

/// Starts everything; returns once every listener is bound and the database is ready.
pub async fn start(config: &Config, ports: Ports) -> anyhow::Result<RunningDev> {
    if config.env == Environment::Production {
        anyhow::bail!("`portcullis dev` refuses to run with PORTCULLIS_ENV=production");
    }
    // Bind first: a taken port should fail before anything is written.
    let api_listener = serve::bind(
        ports.api,
        "management API",
        "--api-addr or PORTCULLIS_API_ADDR",
    )
    .await?;
    let proxy_listener = serve::bind(
        ports.proxy,
        "proxy",
        "--proxy-addr or PORTCULLIS_PROXY_ADDR",
    )
    .await?;
    let upstream_listener = serve::bind(
        ports.demo_upstream,
        "demo upstream",
        "--demo-upstream-addr or PORTCULLIS_DEMO_UPSTREAM_ADDR",
    )
    .await?;
    let api_addr = api_listener.local_addr()?;
    let proxy_addr = proxy_listener.local_addr()?;
    let demo_upstream_addr = upstream_listener.local_addr()?;

    fs::create_dir_all(&config.data_dir).with_context(|| {
        format!(
            "failed to create the data directory {}",
            config.data_dir.display()
        )
    })?;
    let secrets = ServerSecrets::resolve(config)?;
    let db = crate::cli::open_database(config).await?;
    migration::Migrator::up(&db, None)
        .await
        .context("failed to apply migrations")?;

    let hasher = KeyHasher::new(&secrets.key_pepper).context("invalid key pepper")?;
    let admin_key = admin_key(config)?;
    let parsed = PlainToken::parse(&admin_key).context("invalid bootstrap admin key")?;
    api::bootstrap::seed_dev(
        &db,
        &hasher,
        &parsed,
        &format!("http://{demo_upstream_addr}"),
    )
    .await
    .context("failed to seed the development database")?;

    let aws = DevAws::start().await;
    let aws_clients = AwsClients::for_endpoints(&aws.sns_endpoint(), &aws.secrets_endpoint()).await;
    let remediation = api::remediation::Engine::from_aws(
        db.clone(),
        hasher.clone(),
        &aws_clients,
        config.api.remediation.clone(),
        Some(
            config
                .api
                .notify_topic_arn
                .clone()
                .unwrap_or_else(|| DEV_SNS_TOPIC.to_owned()),
        ),
    );
    api::remediation::seed_builtin_playbooks(&db)
        .await
        .context("failed to seed the builtin remediation playbooks")?;
    // The mock forgets everything when the process ends: give the demo credential a fresh
    // current value on every start.
    aws.put_secret_version(
        api::bootstrap::DEMO_UPSTREAM_SECRET,
        SecretVersion {
            version_id: Uuid::new_v4().to_string(),
            value: format!("Bearer dev-{}", hex::encode(rand::random::<[u8; 16]>())),
            stages: vec!["AWSCURRENT".into()],
        },
    );
    api::bootstrap::seed_dev_upstream_credential(&db)
        .await
        .context("failed to seed the demo upstream credential")?;
    let remediation_worker = config.api.remediation.enabled.then(|| remediation.spawn());

    let mut api_config = config.api.clone();
    api_config.graphiql = true;
    api_config.introspection = true;
    // Grant requests and approvals are announced on the topic the remediation runs use.
    api_config
        .notify_topic_arn
        .get_or_insert_with(|| DEV_SNS_TOPIC.to_owned());
    if !api_config
        .sns
        .allowed_topics
        .iter()
        .any(|t| t == DEV_SNS_TOPIC)
    {
        api_config.sns.allowed_topics.push(DEV_SNS_TOPIC.to_owned());
    }
    let api_state = api::AppState::new(
        db.clone(),
        api_config,
        &secrets.key_pepper,
        &secrets.token_signing_key,
        &config.proxy,
    )
    .await
    .context("failed to start the management API")?
    .with_remediation(remediation.clone());
    let proxy_state = proxy::ProxyState::start(
        db.clone(),
        config.proxy.clone(),
        &secrets.key_pepper,
        &secrets.token_signing_key,
        config.redis_url.as_deref(),
    )
    .await
    .context("failed to start the proxy")?;
    proxy_state.set_secret_source(std::sync::Arc::new(api::aws::SecretsManagerSource::new(
        aws_clients.secrets.clone(),
    )));

    let (trigger, shutdown) = serve::shutdown_channel();
    let servers = vec![
        tokio::spawn(serve::serve(
            api_listener,
            api::router(api_state),
            shutdown.clone(),
        )),
        serve::serve_proxy(
            proxy_listener,
            proxy_state.clone(),
            shutdown.clone(),
            &config.proxy,
        )
        .await?,
        tokio::spawn(serve::serve(
            upstream_listener,
            crate::demo_upstream::router(),
            shutdown,
        )),
    ];
    Ok(RunningDev {
        api_addr,
        proxy_addr,
        demo_upstream_addr,
        admin_key,
        aws,
        aws_clients,
        remediation,
        remediation_worker,
        proxy_state,
        trigger,
        servers,
    })
}

impl RunningDev {
    /// Base URL of the management API.
    pub fn api_url(&self) -> String {
        format!("http://{}", self.api_addr)
    }

    /// Base URL of the proxy.
    pub fn proxy_url(&self) -> String {
        format!("http://{}", self.proxy_addr)
    }

    /// What `portcullis dev` prints once it is up.
    pub fn banner(&self) -> String {
        format!(
            "\nPortcullis is running (development mode)\n\n  \
             GraphiQL        {api}/graphql\n  \
             health          {api}/healthz   readiness {api}/readyz   metrics {api}/metrics\n  \
             proxy           {proxy}   (demo route: {proxy}/demo/… → {upstream})\n  \
             demo upstream   {upstream}   (echoes what it receives)\n  \
             mocked SNS      {sns}\n  \
             mocked Secrets  {sm}\n\n  \
             bootstrap admin key (keep it secret):\n    {key}\n\n  \
             try: curl -H 'Authorization: Bearer {key}' {proxy}/demo/hello\n\n\
             Press Ctrl-C to stop.\n",
            api = self.api_url(),
            proxy = self.proxy_url(),
            upstream = format_args!("http://{}", self.demo_upstream_addr),
            sns = self.aws.sns_endpoint(),
            sm = self.aws.secrets_endpoint(),
            key = self.admin_key,
        )
    }

    /// Stops the remediation loops (security events, runs, outbox) and waits for them, leaving
    /// everything else running; tests use it to simulate a worker that went away.
    pub async fn stop_remediation(&mut self) {
        if let Some(worker) = self.remediation_worker.take() {
            worker.shutdown().await;
        }
    }

    /// Stops accepting connections, lets in-flight requests finish (up to the servers' drain
    /// timeout, after which they are cancelled and audited as such), flushes audit.
    pub async fn stop(self) -> anyhow::Result<()> {
        self.trigger.trigger();
        // Longer than the drain, so that the writer below is shut down only after every
        // request has finished or been cancelled and has queued its event.
        let patience = crate::serve::DRAIN_TIMEOUT + Duration::from_secs(5);
        // Every server is awaited and the audit queue flushed even if one failed; the first
        // failure is reported after.
        let mut outcome = Ok(());
        for server in self.servers {
            match tokio::time::timeout(patience, server).await {
                Ok(joined) => {
                    if let Err(error) = joined.context("server task panicked").and_then(|r| r)
                        && outcome.is_ok()
                    {
                        outcome = Err(error);
                    }
                }
                Err(_) => {
                    tracing::warn!("a server did not stop within its drain timeout")
                }
            }
        }
        if let Some(worker) = self.remediation_worker {
            worker.shutdown().await;
        }
        self.proxy_state.shutdown().await;
        outcome
    }
}

/// The bootstrap key: `PORTCULLIS_BOOTSTRAP_ADMIN_KEY`, else the one generated on first start.
fn admin_key(config: &Config) -> anyhow::Result<String> {
    if let Some(key) = &config.bootstrap_admin_key {
        return Ok(key.expose_secret().to_owned());
    }
    let path = admin_key_path(&config.data_dir);
    match fs::read_to_string(&path) {
        Ok(key) => return Ok(key.trim().to_owned()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("failed to read {}", path.display())),
    }
    let key = PlainToken::generate(TokenKind::ApiKey, TokenEnv::Dev);
    let key = key.expose_secret().to_owned();
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&path)
        .with_context(|| format!("failed to create {}", path.display()))?;
    file.write_all(key.as_bytes())
        .with_context(|| format!("failed to write {}", path.display()))?;
    Ok(key)
}

fn admin_key_path(data_dir: &Path) -> PathBuf {
    data_dir.join("admin-key")
}
