//! The command line: `portcullis dev | api | proxy | worker | migrate | schema | keygen`.

use std::{net::SocketAddr, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand};
use sea_orm_migration::MigratorTrait;

use crate::{
    config::Config,
    dev::{self, Ports},
    secrets::ServerSecrets,
    serve,
};

/// Secure API access proxy with auto-remediation.
#[derive(Debug, Parser)]
#[command(name = "portcullis", version, about)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Everything on one machine: SQLite, API, proxy, demo upstream, mocked AWS.
    Dev(DevArgs),
    /// The management API only (GraphQL, webhooks, health, metrics).
    Api,
    /// The proxy only.
    Proxy,
    /// Background jobs only (remediation, outbox dispatch, sweeps).
    Worker,
    /// Apply, roll back or list database migrations.
    Migrate {
        /// `up` (default), `down` (roll back the last one) or `status`.
        #[arg(default_value = "up")]
        action: MigrateAction,
    },
    /// Print the GraphQL schema (SDL); `schema.graphql` is this output.
    Schema,
    /// Print a freshly generated API key (for `PORTCULLIS_BOOTSTRAP_ADMIN_KEY`).
    Keygen,
}

/// Overrides of the listening addresses for `portcullis dev`.
#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Management API address (default 127.0.0.1:8080, or PORTCULLIS_API_ADDR).
    #[arg(long)]
    pub api_addr: Option<SocketAddr>,
    /// Proxy address (default 127.0.0.1:8081, or PORTCULLIS_PROXY_ADDR).
    #[arg(long)]
    pub proxy_addr: Option<SocketAddr>,
    /// Demo upstream address (default 127.0.0.1:8082, or PORTCULLIS_DEMO_UPSTREAM_ADDR).
    #[arg(long)]
    pub demo_upstream_addr: Option<SocketAddr>,
}

/// Migration directions.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum MigrateAction {
    /// Apply every pending migration.
    Up,
    /// Roll back the most recent migration.
    Down,
    /// List applied and pending migrations.
    Status,
}

/// Runs a parsed command line; configuration errors exit with status 2 and one line.
pub fn run(cli: Cli) -> ExitCode {
    proxy::install_crypto_provider();
    match cli.command {
        Command::Schema => {
            print!("{}", api::graphql::sdl());
            return ExitCode::SUCCESS;
        }
        Command::Keygen => {
            let key = proxy::keys::PlainToken::generate(
                proxy::keys::TokenKind::ApiKey,
                proxy::keys::TokenEnv::Live,
            );
            println!("{}", key.expose_secret());
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let config = match Config::load() {
        Ok(config) => config,
        Err(error) => {
            eprintln!("portcullis: invalid configuration: {error}");
            return ExitCode::from(2);
        }
    };
    crate::telemetry::init(config.log_format, &config.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("portcullis: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the context chain on one line.
            eprintln!("portcullis: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn dispatch(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Dev(args) => {
            let ports = Ports {
                api: args.api_addr.unwrap_or(config.api_addr),
                proxy: args.proxy_addr.unwrap_or(config.proxy_addr),
                demo_upstream: args.demo_upstream_addr.unwrap_or(config.demo_upstream_addr),
            };
            let running = dev::start(&config, ports).await?;
            println!("{}", running.banner());
            serve::termination_signal().await;
            tracing::info!("shutting down");
            running.stop().await
        }
        Command::Api => {
            let db = connect(&config).await?;
            let secrets = ServerSecrets::resolve(&config)?;
            // The API records remediation runs (reportLeakedKey, rotateSecret, retries);
            // `portcullis worker` executes them.
            let hasher =
                proxy::keys::KeyHasher::new(&secrets.key_pepper).context("invalid key pepper")?;
            let aws = api::aws::AwsClients::from_env().await;
            let engine = api::remediation::Engine::from_aws(
                db.clone(),
                hasher,
                &aws,
                config.api.remediation.clone(),
                config.api.notify_topic_arn.clone(),
            );
            let state = api::AppState::new(
                db,
                config.api.clone(),
                &secrets.key_pepper,
                &secrets.token_signing_key,
                &config.proxy,
            )
            .await?
            .with_remediation(engine);
            let listener =
                serve::bind(config.api_addr, "management API", "PORTCULLIS_API_ADDR").await?;
            let (trigger, shutdown) = serve::shutdown_channel();
            let server = tokio::spawn(serve::serve(listener, api::router(state), shutdown));
            serve::termination_signal().await;
            trigger.trigger();
            server.await.context("API server task panicked")?
        }
        Command::Proxy => {
            let db = connect(&config).await?;
            let secrets = ServerSecrets::resolve(&config)?;
            let state = proxy::ProxyState::start(
                db,
                config.proxy.clone(),
                &secrets.key_pepper,
                &secrets.token_signing_key,
                config.redis_url.as_deref(),
            )
            .await?;
            // Upstream credentials come from Secrets Manager, configured by the standard AWS_*
            // variables when a route first needs one.
            state.set_secret_source(std::sync::Arc::new(
                api::aws::LazySecretsManagerSource::new(),
            ));
            let listener = serve::bind(config.proxy_addr, "proxy", "PORTCULLIS_PROXY_ADDR").await?;
            let (trigger, shutdown) = serve::shutdown_channel();
            let server =
                serve::serve_proxy(listener, state.clone(), shutdown, &config.proxy).await?;
            serve::termination_signal().await;
            trigger.trigger();
            let served = server.await.context("proxy server task panicked");
            // Flush the audit queue whatever became of the server, then report it.
            state.shutdown().await;
            served?
        }
        Command::Worker => {
            let db = connect(&config).await?;
            let secrets = ServerSecrets::resolve(&config)?;
            let hasher =
                proxy::keys::KeyHasher::new(&secrets.key_pepper).context("invalid key pepper")?;
            let aws = api::aws::AwsClients::from_env().await;
            if config.api.notify_topic_arn.is_none() {
                tracing::warn!(
                    "PORTCULLIS_API__NOTIFY_TOPIC_ARN is unset: remediation runs will not notify"
                );
            }
            let engine = api::remediation::Engine::from_aws(
                db.clone(),
                hasher,
                &aws,
                config.api.remediation.clone(),
                config.api.notify_topic_arn.clone(),
            );
            api::remediation::seed_builtin_playbooks(&db)
                .await
                .context("failed to seed the builtin remediation playbooks")?;
            // On Lambda, invocations replace the loops: rotation steps from Secrets Manager,
            // scheduled passes from EventBridge.
            if crate::lambda::on_lambda() {
                return crate::lambda::run_worker(engine).await;
            }
            if !config.api.remediation.enabled {
                tracing::warn!("PORTCULLIS_API__REMEDIATION__ENABLED is false: nothing to do");
                serve::termination_signal().await;
                return Ok(());
            }
            let worker = engine.spawn();
            tracing::info!("worker started: security-event triggers, remediation runs, SNS outbox");
            serve::termination_signal().await;
            worker.shutdown().await;
            Ok(())
        }
        Command::Migrate { action } => {
            let db = open_database(&config).await?;
            match action {
                MigrateAction::Up => migration::Migrator::up(&db, None)
                    .await
                    .context("migration failed")?,
                MigrateAction::Down => migration::Migrator::down(&db, Some(1))
                    .await
                    .context("rollback failed")?,
                MigrateAction::Status => {
                    for m in migration::Migrator::get_migration_with_status(&db).await? {
                        println!(
                            "{:<8} {}",
                            format!("{:?}", m.status()).to_lowercase(),
                            m.name()
                        );
                    }
                }
            }
            Ok(())
        }
        Command::Schema | Command::Keygen => Ok(()),
    }
}

/// Opens the database and refuses to run against a schema with pending migrations.
///
/// Production instances never migrate on their own (many may start at once); run
/// `portcullis migrate` first. `portcullis dev` migrates for you.
pub async fn connect(config: &Config) -> anyhow::Result<sea_orm::DatabaseConnection> {
    let db = open_database(config).await?;
    let pending = migration::Migrator::get_pending_migrations(&db)
        .await
        .context("failed to read the migration status")?;
    if !pending.is_empty() {
        anyhow::bail!(
            "the database has {} pending migration(s); run `portcullis migrate` first",
            pending.len()
        );
    }
    Ok(db)
}

/// Opens the database, creating the data directory for the default SQLite file.
pub async fn open_database(config: &Config) -> anyhow::Result<sea_orm::DatabaseConnection> {
    if config.database_url.is_none() {
        std::fs::create_dir_all(&config.data_dir)
            .with_context(|| format!("failed to create {}", config.data_dir.display()))?;
    }
    let url = config.database_url();
    migration::connect(&url).await.with_context(|| {
        format!(
            "failed to open the database at {}",
            crate::config::redact_url(&url)
        )
    })
}
