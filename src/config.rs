//! Process configuration: defaults, then an optional TOML file, then environment variables.
//!
//! Loaded and validated once at start-up; a bad value stops the process with one line that
//! names the variable and the problem. Handlers never read the environment themselves.

use std::{
    fmt,
    net::SocketAddr,
    path::{Path, PathBuf},
};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

/// Environment variable naming an optional TOML configuration file.
pub const CONFIG_FILE_VAR: &str = "PORTCULLIS_CONFIG";

/// Where the process runs; production refuses development conveniences (mocks, generated secrets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Environment {
    /// A developer machine: generated secrets under the data directory are allowed.
    Dev,
    /// Anything real: every secret must be configured explicitly.
    Production,
}

/// How log lines are rendered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable, coloured when attached to a terminal.
    Text,
    /// One JSON object per line, for log shippers.
    Json,
}

/// The validated configuration of one `portcullis` process.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `DATABASE_URL`: `sqlite://…` or `postgres://…`. Defaults to a SQLite file in `data_dir`.
    pub database_url: Option<String>,
    /// `REDIS_URL`: enables rate limits shared by every proxy instance.
    pub redis_url: Option<String>,
    /// `PORTCULLIS_DATA_DIR`: local state (SQLite file, generated dev secrets).
    pub data_dir: PathBuf,
    /// `PORTCULLIS_ENV`: `dev` or `production`.
    pub env: Environment,
    /// `PORTCULLIS_LOG_FORMAT`: `text` or `json`.
    pub log_format: LogFormat,
    /// `PORTCULLIS_LOG`: a tracing filter such as `info` or `portcullis=debug,proxy=trace`.
    pub log: String,
    /// `PORTCULLIS_API_ADDR`: where the management API listens.
    pub api_addr: SocketAddr,
    /// `PORTCULLIS_PROXY_ADDR`: where the proxy listens.
    pub proxy_addr: SocketAddr,
    /// `PORTCULLIS_DEMO_UPSTREAM_ADDR`: the echo upstream started by `portcullis dev`.
    pub demo_upstream_addr: SocketAddr,
    /// `PORTCULLIS_KEY_PEPPER`: secret HMAC key for API-key hashes (≥ 32 bytes, hex).
    pub key_pepper: Option<SecretString>,
    /// `PORTCULLIS_TOKEN_SIGNING_KEY`: HMAC key of incident-grant token hashes (≥ 32 bytes,
    /// hex); the API and every proxy must share it, as they share the pepper.
    pub token_signing_key: Option<SecretString>,
    /// `PORTCULLIS_BOOTSTRAP_ADMIN_KEY`: fixes the admin key `portcullis dev` prints.
    pub bootstrap_admin_key: Option<SecretString>,
    /// `PORTCULLIS_PROXY__*`: proxy tuning.
    #[serde(default)]
    pub proxy: proxy::ProxyConfig,
    /// `PORTCULLIS_API__*`: management API tuning.
    #[serde(default)]
    pub api: api::ApiConfig,
}

/// Defaults, kept separate so they can be layered under the file and the environment.
#[derive(Serialize)]
struct Defaults {
    data_dir: PathBuf,
    env: Environment,
    log_format: LogFormat,
    log: &'static str,
    api_addr: SocketAddr,
    proxy_addr: SocketAddr,
    demo_upstream_addr: SocketAddr,
}

impl Default for Defaults {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from(".portcullis"),
            env: Environment::Dev,
            log_format: LogFormat::Text,
            log: "info",
            api_addr: SocketAddr::from(([127, 0, 0, 1], 8080)),
            proxy_addr: SocketAddr::from(([127, 0, 0, 1], 8081)),
            demo_upstream_addr: SocketAddr::from(([127, 0, 0, 1], 8082)),
        }
    }
}

/// A configuration problem, rendered as one line naming the variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The sources could not be read or a value has the wrong shape.
    #[error("{0}")]
    Load(String),
    /// A value parsed but is not acceptable.
    #[error("{var}: {problem}")]
    Invalid {
        /// The environment variable (or file key) at fault.
        var: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

impl Config {
    /// Loads defaults, then `$PORTCULLIS_CONFIG` (TOML) if set, then the environment.
    pub fn load() -> Result<Self, ConfigError> {
        let file = std::env::var_os(CONFIG_FILE_VAR).map(PathBuf::from);
        Self::from_figment(Self::figment(file.as_deref()))
    }

    /// The defaults alone, ignoring the environment and any file (for tests and embedding).
    pub fn defaults() -> Result<Self, ConfigError> {
        Self::from_figment(Figment::from(Serialized::defaults(Defaults::default())))
    }

    fn figment(file: Option<&Path>) -> Figment {
        let mut figment = Figment::from(Serialized::defaults(Defaults::default()));
        if let Some(file) = file {
            figment = figment.merge(Toml::file_exact(file));
        }
        figment
            .merge(
                Env::prefixed("PORTCULLIS_")
                    .ignore(&["CONFIG"])
                    .split("__")
                    .lowercase(true),
            )
            .merge(
                Env::raw()
                    .only(&["DATABASE_URL", "REDIS_URL"])
                    .lowercase(true),
            )
    }

    fn from_figment(figment: Figment) -> Result<Self, ConfigError> {
        let config: Config = figment
            .extract()
            .map_err(|e| ConfigError::Load(describe_figment_error(&e)))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let url = self.database_url();
        if !(url.starts_with("sqlite:")
            || url.starts_with("postgres://")
            || url.starts_with("postgresql://"))
        {
            return Err(ConfigError::Invalid {
                var: "DATABASE_URL",
                problem: "must start with sqlite:, postgres:// or postgresql://".into(),
            });
        }
        match &self.redis_url {
            Some(redis) if !(redis.starts_with("redis://") || redis.starts_with("rediss://")) => {
                return Err(ConfigError::Invalid {
                    var: "REDIS_URL",
                    problem: "must start with redis:// or rediss:// (TLS)".into(),
                });
            }
            Some(redis) => {
                // The same check the proxy's limiter makes when it starts, made now.
                use proxy::ratelimit::{RedisLimiter, SharedLimitError};
                let with_ca = self.proxy.redis_ca_cert_path.is_some();
                if let Err(error) = RedisLimiter::check_settings(redis, with_ca) {
                    return Err(match error {
                        SharedLimitError::CaWithoutTls => ConfigError::Invalid {
                            var: "PORTCULLIS_PROXY__REDIS_CA_CERT_PATH",
                            problem: error.to_string(),
                        },
                        // The URL may hold a password: never echo the parser's details.
                        SharedLimitError::Redis(_) => ConfigError::Invalid {
                            var: "REDIS_URL",
                            problem: "is not a valid Redis URL".into(),
                        },
                        other => ConfigError::Invalid {
                            var: "REDIS_URL",
                            problem: other.to_string(),
                        },
                    });
                }
            }
            None if self.proxy.redis_ca_cert_path.is_some() => {
                return Err(ConfigError::Invalid {
                    var: "PORTCULLIS_PROXY__REDIS_CA_CERT_PATH",
                    problem: "is set but REDIS_URL is not".into(),
                });
            }
            _ => {}
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log) {
            return Err(ConfigError::Invalid {
                var: "PORTCULLIS_LOG",
                problem: e.to_string(),
            });
        }
        for (var, secret) in [
            ("PORTCULLIS_KEY_PEPPER", &self.key_pepper),
            ("PORTCULLIS_TOKEN_SIGNING_KEY", &self.token_signing_key),
        ] {
            if let Some(secret) = secret {
                crate::secrets::decode_secret(secret)
                    .map_err(|problem| ConfigError::Invalid { var, problem })?;
            }
        }
        if let Some(key) = &self.bootstrap_admin_key {
            use secrecy::ExposeSecret;
            proxy::keys::PlainToken::parse(key.expose_secret()).map_err(|e| {
                ConfigError::Invalid {
                    var: "PORTCULLIS_BOOTSTRAP_ADMIN_KEY",
                    problem: format!(
                        "not a Portcullis API key ({e}); generate one with `portcullis keygen`"
                    ),
                }
            })?;
        }
        self.proxy
            .validate()
            .map_err(|(var, problem)| ConfigError::Invalid { var, problem })?;
        self.api
            .validate()
            .map_err(|(var, problem)| ConfigError::Invalid { var, problem })?;
        if self.env == Environment::Production
            && (self.api.sns.cert_url_override.is_some()
                || self.api.sns.subscribe_url_override.is_some())
        {
            // Fakes never run in production: the override would trust any certificate it serves.
            return Err(ConfigError::Invalid {
                var: "PORTCULLIS_API__SNS__CERT_URL_OVERRIDE",
                problem: "SNS URL overrides are for tests and development only".into(),
            });
        }
        Ok(())
    }

    /// The effective database URL (`DATABASE_URL`, or the SQLite file in the data directory).
    pub fn database_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!(
                "sqlite://{}?mode=rwc",
                self.data_dir.join("portcullis.db").display()
            ),
        }
    }
}

/// Renders the first error as `VARIABLE: problem`, naming the environment variable when the
/// bad value came from the environment, or the file and key when it came from the file.
fn describe_figment_error(error: &figment::Error) -> String {
    let Some(first) = error.clone().into_iter().next() else {
        return error.to_string();
    };
    let key = first.path.join(".");
    let from_env = first
        .metadata
        .as_ref()
        .is_some_and(|m| m.name.contains("environment"));
    let place = match (&first.metadata, key.as_str()) {
        (_, "") => "configuration".to_owned(),
        (_, "database_url" | "redis_url") if from_env => key.to_uppercase(),
        _ if from_env => format!("PORTCULLIS_{}", first.path.join("__").to_uppercase()),
        (Some(metadata), _) => format!("{key} (in {})", metadata.name),
        (None, _) => key,
    };
    format!("{place}: {}", first.kind).replace('\n', " ")
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Secrets are SecretString, whose Debug is redacted; the URLs may carry passwords.
        f.debug_struct("Config")
            .field(
                "database_url",
                &self.database_url.as_deref().map(redact_url),
            )
            .field("redis_url", &self.redis_url.as_deref().map(redact_url))
            .field("data_dir", &self.data_dir)
            .field("env", &self.env)
            .field("api_addr", &self.api_addr)
            .field("proxy_addr", &self.proxy_addr)
            .finish_non_exhaustive()
    }
}

/// Replaces the password of `scheme://user:password@host/…` with `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or_default();
            if userinfo.contains(':') {
                format!("{scheme}://{user}:***@{host}")
            } else {
                url.to_owned()
            }
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
#[expect(
    clippy::result_large_err,
    reason = "figment::Jail closures return figment::Error"
)]
mod tests {
    use figment::Jail;

    use super::*;

    fn load_in(jail: &Jail) -> Result<Config, ConfigError> {
        let _ = jail;
        Config::from_figment(Config::figment(None))
    }

    #[test]
    fn defaults_are_valid_and_use_sqlite_in_the_data_dir() {
        Jail::expect_with(|jail| {
            let config = load_in(jail).map_err(|e| e.to_string())?;
            assert_eq!(
                config.database_url(),
                "sqlite://.portcullis/portcullis.db?mode=rwc"
            );
            assert_eq!(config.api_addr.port(), 8080);
            assert_eq!(config.env, Environment::Dev);
            Ok(())
        });
    }

    #[test]
    fn a_bad_port_names_the_variable() {
        Jail::expect_with(|jail| {
            jail.set_env("PORTCULLIS_API_ADDR", "localhost:http");
            let error = load_in(jail)
                .err()
                .ok_or("accepted a bad address")?
                .to_string();
            assert!(error.contains("PORTCULLIS_API_ADDR"), "{error}");
            assert!(!error.contains('\n'));
            Ok(())
        });
    }

    #[test]
    fn an_unknown_portcullis_variable_is_refused() {
        Jail::expect_with(|jail| {
            jail.set_env("PORTCULLIS_API_ADR", "127.0.0.1:1");
            let error = load_in(jail).err().ok_or("accepted a typo")?.to_string();
            assert!(error.contains("api_adr"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn reload_and_anchor_periods_out_of_range_name_their_variable() {
        for (var, value) in [
            ("PORTCULLIS_PROXY__POLICY_RELOAD_SECS", "0"),
            ("PORTCULLIS_PROXY__POLICY_RELOAD_SECS", "3601"),
            ("PORTCULLIS_API__REMEDIATION__AUDIT_ANCHOR_EVERY_SECS", "59"),
        ] {
            Jail::expect_with(|jail| {
                jail.set_env(var, value);
                let error = load_in(jail).err().ok_or("accepted")?.to_string();
                assert!(error.starts_with(var), "{var}={value}: {error}");
                Ok(())
            });
        }
        Jail::expect_with(|jail| {
            jail.set_env("PORTCULLIS_API__REMEDIATION__AUDIT_ANCHOR_EVERY_SECS", "0");
            jail.set_env("PORTCULLIS_PROXY__POLICY_RELOAD_SECS", "60");
            let config = load_in(jail).map_err(|e| e.to_string())?;
            assert_eq!(
                config.api.remediation.audit_anchor_every_secs, 0,
                "0 turns anchors off"
            );
            assert_eq!(config.proxy.policy_reload_secs, 60);
            Ok(())
        });
    }

    #[test]
    fn database_url_must_be_sqlite_or_postgres() {
        Jail::expect_with(|jail| {
            jail.set_env("DATABASE_URL", "mysql://root@localhost/db");
            let error = load_in(jail).err().ok_or("accepted mysql")?.to_string();
            assert!(error.starts_with("DATABASE_URL:"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn a_short_pepper_is_refused_without_echoing_it() {
        Jail::expect_with(|jail| {
            jail.set_env("PORTCULLIS_KEY_PEPPER", "abcd");
            let error = load_in(jail)
                .err()
                .ok_or("accepted a short pepper")?
                .to_string();
            assert!(error.starts_with("PORTCULLIS_KEY_PEPPER:"), "{error}");
            assert!(!error.contains("abcd"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn toml_file_is_layered_under_the_environment() {
        Jail::expect_with(|jail| {
            jail.create_file(
                "p.toml",
                "api_addr = \"127.0.0.1:9000\"\nproxy_addr = \"127.0.0.1:9001\"\n",
            )?;
            jail.set_env("PORTCULLIS_PROXY_ADDR", "127.0.0.1:9002");
            let config = Config::from_figment(Config::figment(Some(Path::new("p.toml"))))
                .map_err(|e| e.to_string())?;
            assert_eq!(config.api_addr.port(), 9000);
            assert_eq!(config.proxy_addr.port(), 9002);
            Ok(())
        });
    }

    #[test]
    fn redis_over_tls_is_accepted_and_never_without_verification() {
        Jail::expect_with(|jail| {
            jail.set_env("REDIS_URL", "rediss://:s3cret@cache.example:6379");
            jail.set_env("PORTCULLIS_PROXY__REDIS_CA_CERT_PATH", "/etc/ca.pem");
            load_in(jail).map_err(|e| e.to_string())?;

            jail.set_env("REDIS_URL", "rediss://:s3cret@cache.example:6379/#insecure");
            let error = load_in(jail).err().ok_or("accepted #insecure")?.to_string();
            assert!(error.starts_with("REDIS_URL:"), "{error}");
            assert!(!error.contains("s3cret"), "{error}");

            // A private CA only makes sense for TLS.
            jail.set_env("REDIS_URL", "redis://cache.example:6379");
            let error = load_in(jail).err().ok_or("CA for plain redis")?.to_string();
            assert!(
                error.starts_with("PORTCULLIS_PROXY__REDIS_CA_CERT_PATH:"),
                "{error}"
            );

            jail.set_env("REDIS_URL", "memcached://cache.example:11211");
            let error = load_in(jail).err().ok_or("accepted memcached")?.to_string();
            assert!(error.starts_with("REDIS_URL:"), "{error}");
            Ok(())
        });
    }

    #[test]
    fn passwords_in_urls_are_redacted() {
        assert_eq!(
            redact_url("postgres://app:hunter2@db:5432/x"),
            "postgres://app:***@db:5432/x"
        );
        assert_eq!(redact_url("sqlite://a.db"), "sqlite://a.db");
    }
}
