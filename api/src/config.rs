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
    /// Largest accepted request body, in bytes.
    pub max_request_bytes: usize,
    /// Deepest accepted GraphQL query.
    pub max_query_depth: usize,
    /// Most complex accepted GraphQL query (async-graphql's complexity units).
    pub max_query_complexity: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        Self {
            graphiql: false,
            introspection: false,
            cors_origins: Vec::new(),
            max_request_bytes: 256 * 1024,
            max_query_depth: 12,
            max_query_complexity: 5000,
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
        Ok(())
    }
}
