//! The GraphQL management API: schema construction and the HTTP handlers at `/graphql`.

use async_graphql::{
    EmptyMutation, EmptySubscription, Object, SDLExportOptions, Schema, SimpleObject,
    http::GraphiQLSource,
};
use async_graphql_axum::{GraphQLRequest, GraphQLResponse};
use axum::{
    extract::State,
    http::StatusCode,
    response::{Html, IntoResponse, Response},
};
use sea_orm::DatabaseConnection;

use crate::{ApiConfig, state::AppState};

/// The schema type served at `/graphql`.
pub type PortcullisSchema = Schema<QueryRoot, EmptyMutation, EmptySubscription>;

/// Root of every query.
pub struct QueryRoot;

/// Facts about the running server, for portals and smoke tests.
#[derive(SimpleObject)]
pub struct ServerInfo {
    /// The Portcullis version.
    version: &'static str,
    /// `sqlite` or `postgres`.
    database_backend: &'static str,
}

#[Object]
impl QueryRoot {
    /// Version and database backend of this server.
    async fn server_info(
        &self,
        ctx: &async_graphql::Context<'_>,
    ) -> async_graphql::Result<ServerInfo> {
        let db = ctx.data::<DatabaseConnection>()?;
        let database_backend = match db.get_database_backend() {
            sea_orm::DatabaseBackend::Postgres => "postgres",
            sea_orm::DatabaseBackend::Sqlite => "sqlite",
            _ => "other",
        };
        Ok(ServerInfo {
            version: env!("CARGO_PKG_VERSION"),
            database_backend,
        })
    }
}

/// Builds the schema with the configured limits.
pub fn build_schema(db: DatabaseConnection, config: &ApiConfig) -> PortcullisSchema {
    let mut builder = Schema::build(QueryRoot, EmptyMutation, EmptySubscription)
        .data(db)
        .limit_depth(config.max_query_depth)
        .limit_complexity(config.max_query_complexity);
    if !config.introspection {
        builder = builder.disable_introspection();
    }
    builder.finish()
}

/// The schema in SDL, sorted so that `schema.graphql` diffs stay readable.
pub fn sdl() -> String {
    Schema::build(QueryRoot, EmptyMutation, EmptySubscription)
        .finish()
        .sdl_with_options(SDLExportOptions::new().sorted_fields().sorted_enum_items())
}

/// `POST /graphql`.
pub async fn execute(State(state): State<AppState>, request: GraphQLRequest) -> GraphQLResponse {
    state.schema.execute(request.into_inner()).await.into()
}

/// `GET /graphql`: GraphiQL when enabled.
pub async fn graphiql(State(state): State<AppState>) -> Response {
    if state.config.graphiql {
        Html(GraphiQLSource::build().endpoint("/graphql").finish()).into_response()
    } else {
        (
            StatusCode::METHOD_NOT_ALLOWED,
            "GraphiQL is disabled; POST GraphQL requests to /graphql",
        )
            .into_response()
    }
}
