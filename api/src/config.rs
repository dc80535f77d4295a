//! Management API tuning, read from `PORTCULLIS_API__*` (or the `[api]` table of the config file).

use serde::Deserialize;

/// Settings of the GraphQL management API.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// Serve GraphiQL on `GET /graphql`. `portcullis dev` turns it on.
    pub graphiql: bool,
    /// Allow schema introspection queries. `portcullis dev` turns it on.
    pub introspection: bool,
    /// Portal origins allowed by CORS (exact `scheme://host[:port]`). Empty: no cross-origin access.
    pub cors_origins: Vec<String>,
    /// Peers (a load balancer, API Gateway) whose `X-Forwarded-For` names the caller, as for
    /// the proxy (`PORTCULLIS_API__TRUSTED_PROXIES`). Binding CIDR conditions are checked
    /// against that address; from any other peer the header is ignored.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Largest accepted request body, in bytes.
    pub max_request_bytes: usize,
    /// Deepest accepted GraphQL query.
    pub max_query_depth: usize,
    /// Most complex accepted GraphQL query (async-graphql's complexity units).
    pub max_query_complexity: usize,
    /// The inbound SNS webhook (`POST /webhooks/sns`), `PORTCULLIS_API__SNS__*`.
    pub sns: SnsWebhookConfig,
    /// SNS topic remediation notifications are published to (`PORTCULLIS_API__NOTIFY_TOPIC_ARN`);
    /// `None`: runs do not notify. `portcullis dev` uses its mocked topic.
    pub notify_topic_arn: Option<String>,
    /// Remediation engine tuning (`PORTCULLIS_API__REMEDIATION__*`).
    pub remediation: crate::remediation::RemediationConfig,
    /// Limits of incident grants (`PORTCULLIS_API__GRANTS__*`).
    pub grants: crate::service::grants::GrantsConfig,
}

/// Settings of the inbound SNS webhook.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SnsWebhookConfig {
    /// Topic ARNs whose messages are accepted and whose subscriptions are confirmed
    /// (`PORTCULLIS_API__SNS__ALLOWED_TOPICS`). Empty: every message is refused.
    pub allowed_topics: Vec<String>,
    /// TEST/DEV ONLY: base URL (e.g. a wiremock server) from which signing certificates are
    /// fetched instead of the allow-listed AWS URL in the message; the allow-list check still
    /// applies to the URL in the message. `PORTCULLIS_API__SNS__CERT_URL_OVERRIDE`.
    pub cert_url_override: Option<String>,
    /// TEST/DEV ONLY: base URL that receives the subscription-confirmation `GET` instead of the
    /// allow-listed AWS `SubscribeURL`. `PORTCULLIS_API__SNS__SUBSCRIBE_URL_OVERRIDE`.
    pub subscribe_url_override: Option<String>,
    /// Messages whose `Timestamp` is older than this are refused as replays.
    pub max_message_age_secs: u64,
}

impl Default for SnsWebhookConfig {
    fn default() -> Self {
        Self {
            allowed_topics: Vec::new(),
            cert_url_override: None,
            subscribe_url_override: None,
            max_message_age_secs: 3600,
        }
    }
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            graphiql: false,
            introspection: false,
            cors_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            max_request_bytes: 256 * 1024,
            max_query_depth: 12,
            max_query_complexity: 5000,
            sns: SnsWebhookConfig::default(),
            notify_topic_arn: None,
            remediation: crate::remediation::RemediationConfig::default(),
            grants: crate::service::grants::GrantsConfig::default(),
        }
    }
}

impl ApiConfig {
    /// Checks values that parse but make no sense; returns the variable and the problem.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for origin in &self.cors_origins {
            let ok = (origin.starts_with("https://") || origin.starts_with("http://"))
                && !origin.ends_with('/')
                && origin.parse::<http::HeaderValue>().is_ok();
            if !ok {
                return Err((
                    "PORTCULLIS_API__CORS_ORIGINS",
                    format!("{origin:?} is not an origin like https://portal.example.com"),
                ));
            }
        }
        if self.max_query_depth == 0 || self.max_query_complexity == 0 {
            return Err((
                "PORTCULLIS_API__MAX_QUERY_DEPTH",
                "limits must be greater than 0".into(),
            ));
        }
        let anchors = self.remediation.audit_anchor_every_secs;
        if anchors != 0 && anchors < 60 {
            return Err((
                "PORTCULLIS_API__REMEDIATION__AUDIT_ANCHOR_EVERY_SECS",
                "must be 0 (off) or at least 60: each anchor is an SNS message".into(),
            ));
        }
        self.grants.validate()?;
        self.sns.validate()
    }
}

impl SnsWebhookConfig {
    /// Checks topic ARNs, override URLs and the replay window.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        for topic in &self.allowed_topics {
            if !is_sns_topic_arn(topic) {
                return Err((
                    "PORTCULLIS_API__SNS__ALLOWED_TOPICS",
                    format!(
                        "{topic:?} is not a topic ARN like arn:aws:sns:us-east-1:123456789012:name"
                    ),
                ));
            }
        }
        for (var, url) in [
            (
                "PORTCULLIS_API__SNS__CERT_URL_OVERRIDE",
                &self.cert_url_override,
            ),
            (
                "PORTCULLIS_API__SNS__SUBSCRIBE_URL_OVERRIDE",
                &self.subscribe_url_override,
            ),
        ] {
            if let Some(url) = url
                && reqwest::Url::parse(url)
                    .map_or(true, |u| !matches!(u.scheme(), "http" | "https"))
            {
                return Err((var, format!("{url:?} is not an http(s) base URL")));
            }
        }
        if self.max_message_age_secs == 0 {
            return Err((
                "PORTCULLIS_API__SNS__MAX_MESSAGE_AGE_SECS",
                "must be greater than 0".into(),
            ));
        }
        Ok(())
    }
}

/// `arn:<partition>:sns:<region>:<12-digit account>:<topic name>` (partition `aws`, `aws-cn`,
/// `aws-us-gov`; FIFO names end in `.fifo`).
fn is_sns_topic_arn(arn: &str) -> bool {
    let parts: Vec<&str> = arn.split(':').collect();
    let [arn_tag, partition, service, region, account, name] = parts.as_slice() else {
        return false;
    };
    *arn_tag == "arn"
        && partition.starts_with("aws")
        && *service == "sns"
        && !region.is_empty()
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && account.len() == 12
        && account.bytes().all(|b| b.is_ascii_digit())
        && !name.is_empty()
        && name.len() <= 256
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
}
