//! Proxy tuning, read from `PORTCULLIS_PROXY__*` (or the `[proxy]` table of the config file).

use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::ratelimit::Limit;

/// Settings of the request pipeline. Every field has a safe default.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProxyConfig {
    /// Peers whose `X-Forwarded-For` is believed (API Gateway, a load balancer). Empty: none.
    pub trusted_proxies: Vec<IpNet>,
    /// Largest request body forwarded, in bytes; larger bodies get 413.
    pub max_body_bytes: u64,
    /// Time allowed to connect to an upstream.
    pub connect_timeout_ms: u64,
    /// Time allowed for the upstream to start answering (per-route `timeout_ms` overrides it).
    pub upstream_timeout_ms: u64,
    /// Time an HTTP/1 client has to send a whole request head from the connection's start or
    /// the previous response (idle keep-alive connections close after it too); also how long
    /// an HTTP/2 connection may leave a keep-alive ping unanswered. Without it, connections
    /// that send half a head would be held forever.
    pub header_read_timeout_ms: u64,
    /// A WebSocket tunnel through which nothing passed, either way, for this long is closed.
    pub tunnel_idle_timeout_secs: u64,
    /// Connections the listener holds at once; past it, new ones wait in the kernel's accept
    /// queue until one closes.
    pub max_connections: usize,
    /// How often the policy change feed is polled.
    pub policy_poll_interval_ms: u64,
    /// How long the proxy serves from its cache while the database is unreachable.
    pub policy_max_staleness_secs: u64,
    /// Everything cached (keys, principals, OIDC identities, routes, roles, IP rules) is
    /// reloaded at least this often, a backstop for a change the feed missed.
    pub policy_reload_secs: u64,
    /// Accept `;` path parameters (rejected by default: upstreams disagree about them).
    pub allow_semicolon_params: bool,
    /// OIDC access tokens (`[proxy.oidc]`, `PORTCULLIS_PROXY__OIDC__*`); absent: refused.
    #[serde(default)]
    pub oidc: Option<crate::oidc::OidcConfig>,
    /// PEM certificate chain for TLS on the proxy listener (with `tls_key_path`).
    pub tls_cert_path: Option<std::path::PathBuf>,
    /// PEM private key for TLS on the proxy listener (with `tls_cert_path`).
    pub tls_key_path: Option<std::path::PathBuf>,
    /// Audit events buffered before requests wait for the writer (back-pressure, never loss).
    pub audit_queue_capacity: usize,
    /// Detector thresholds.
    pub detectors: crate::detect::DetectorConfig,
    /// Requests per minute for callers whose key and route set no rate limit.
    pub default_rate_limit_per_minute: u32,
    /// Burst (requests at once) for callers whose key and route set no rate limit.
    pub default_rate_limit_burst: u32,
    /// Time allowed for one Redis rate-limit call before the request is limited in process.
    pub redis_timeout_ms: u64,
    /// PEM certificates that alone are trusted for a `rediss://` Redis (a private CA);
    /// unset: the system's roots.
    pub redis_ca_cert_path: Option<std::path::PathBuf>,
    /// PEM certificates trusted for `https://` upstreams besides the system's roots (a
    /// private CA).
    pub upstream_ca_cert_path: Option<std::path::PathBuf>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            trusted_proxies: Vec::new(),
            max_body_bytes: 10 * 1024 * 1024,
            connect_timeout_ms: 2_000,
            upstream_timeout_ms: 30_000,
            header_read_timeout_ms: 30_000,
            tunnel_idle_timeout_secs: 300,
            max_connections: 10_000,
            policy_poll_interval_ms: 250,
            policy_max_staleness_secs: 60,
            policy_reload_secs: 300,
            allow_semicolon_params: false,
            oidc: None,
            tls_cert_path: None,
            tls_key_path: None,
            audit_queue_capacity: 16_384,
            detectors: crate::detect::DetectorConfig::default(),
            default_rate_limit_per_minute: 600,
            default_rate_limit_burst: 100,
            redis_timeout_ms: 50,
            redis_ca_cert_path: None,
            upstream_ca_cert_path: None,
        }
    }
}

impl ProxyConfig {
    /// Checks values that parse but make no sense; returns the variable and the problem.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Some(oidc) = &self.oidc {
            oidc.validate()?;
        }
        if self.connect_timeout_ms == 0 {
            return Err((
                "PORTCULLIS_PROXY__CONNECT_TIMEOUT_MS",
                "must be greater than 0".into(),
            ));
        }
        if self.header_read_timeout_ms == 0 {
            return Err((
                "PORTCULLIS_PROXY__HEADER_READ_TIMEOUT_MS",
                "must be greater than 0".into(),
            ));
        }
        if self.upstream_timeout_ms == 0 {
            return Err((
                "PORTCULLIS_PROXY__UPSTREAM_TIMEOUT_MS",
                "must be greater than 0".into(),
            ));
        }
        if self.tls_cert_path.is_some() != self.tls_key_path.is_some() {
            return Err((
                "PORTCULLIS_PROXY__TLS_CERT_PATH",
                "TLS needs both PORTCULLIS_PROXY__TLS_CERT_PATH and PORTCULLIS_PROXY__TLS_KEY_PATH"
                    .into(),
            ));
        }
        if self.audit_queue_capacity == 0 {
            return Err((
                "PORTCULLIS_PROXY__AUDIT_QUEUE_CAPACITY",
                "must be greater than 0".into(),
            ));
        }
        if self.policy_poll_interval_ms == 0 || self.policy_poll_interval_ms > 1_000 {
            // Revocation must reach every instance within a second.
            return Err((
                "PORTCULLIS_PROXY__POLICY_POLL_INTERVAL_MS",
                "must be between 1 and 1000 (revocations must apply within 1 s)".into(),
            ));
        }
        if self.policy_reload_secs == 0 || self.policy_reload_secs > 3_600 {
            return Err((
                "PORTCULLIS_PROXY__POLICY_RELOAD_SECS",
                "must be between 1 and 3600".into(),
            ));
        }
        for (var, value) in [
            (
                "PORTCULLIS_PROXY__DEFAULT_RATE_LIMIT_PER_MINUTE",
                u64::from(self.default_rate_limit_per_minute),
            ),
            (
                "PORTCULLIS_PROXY__DEFAULT_RATE_LIMIT_BURST",
                u64::from(self.default_rate_limit_burst),
            ),
            ("PORTCULLIS_PROXY__REDIS_TIMEOUT_MS", self.redis_timeout_ms),
            (
                "PORTCULLIS_PROXY__TUNNEL_IDLE_TIMEOUT_SECS",
                self.tunnel_idle_timeout_secs,
            ),
            (
                "PORTCULLIS_PROXY__MAX_CONNECTIONS",
                self.max_connections as u64,
            ),
        ] {
            if value == 0 {
                return Err((var, "must be greater than 0".into()));
            }
        }
        Ok(())
    }

    /// [`Self::connect_timeout_ms`] as a duration.
    pub fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.connect_timeout_ms)
    }

    /// [`Self::header_read_timeout_ms`] as a duration.
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    /// [`Self::tunnel_idle_timeout_secs`] as a duration.
    pub fn tunnel_idle_timeout(&self) -> Duration {
        Duration::from_secs(self.tunnel_idle_timeout_secs)
    }

    /// [`Self::upstream_timeout_ms`] as a duration.
    pub fn upstream_timeout(&self) -> Duration {
        Duration::from_millis(self.upstream_timeout_ms)
    }

    /// The rate limit applied when neither the key nor the route sets one.
    pub fn default_rate_limit(&self) -> Limit {
        Limit::new(
            self.default_rate_limit_per_minute,
            self.default_rate_limit_burst,
        )
    }

    /// [`Self::redis_timeout_ms`] as a duration.
    pub fn redis_timeout(&self) -> Duration {
        Duration::from_millis(self.redis_timeout_ms)
    }
}
