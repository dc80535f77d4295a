//! Shared state of the management API.

use std::sync::Arc;

use metrics_exporter_prometheus::PrometheusHandle;
use sea_orm::DatabaseConnection;

use crate::{ApiConfig, graphql::PortcullisSchema};

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
}

impl AppState {
    /// Builds the state and the schema over an open, migrated database.
    pub fn new(db: DatabaseConnection, config: ApiConfig) -> Self {
        let config = Arc::new(config);
        let schema = crate::graphql::build_schema(db.clone(), &config);
        Self {
            db,
            config,
            schema,
            metrics: crate::metrics::install(),
        }
    }
}
