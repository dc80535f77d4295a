//! The GraphQL management API: schema construction, the HTTP handlers at `/graphql`, and the
//! helpers every domain module shares (context access, pagination).
//!
//! # Layout
//! * [`error`]: `ApiError` and its `extensions.code`; [`guard`]: `RequirePermission`;
//! * [`extension`]: error codes and the audit record of every mutation, in one place;
//! * [`loaders`](mod@loaders): DataLoaders against N+1 queries;
//! * one module per domain (`keys`, `grants`, `principals`, `roles`, `routes`, `ip_rules`, `access`,
//!   `audit`, `remediation`, `managed_secrets`, `notifications`), each with `query.rs`,
//!   `mutation.rs` and `types.rs`; resolvers are thin and call one `crate::service` function
//!   each.

pub mod access;
pub mod audit;
pub mod error;
pub mod extension;
pub mod grants;
pub mod guard;
pub mod ip_rules;
pub mod keys;
pub mod loaders;
pub mod managed_secrets;
pub mod notifications;
pub mod principals;
pub mod remediation;
pub mod roles;
pub mod routes;

use std::{net::SocketAddr, str::FromStr};

use async_graphql::{
    Context, EmptySubscription, MergedObject, Object, OutputType, SDLExportOptions, Schema,
    SimpleObject,
    connection::{Connection, CursorType, Edge, OpaqueCursor},
    http::GraphiQLSource,
};
use async_graphql_axum::{GraphQLRequest, GraphQLResponse};
use axum::{
    Extension,
    extract::{ConnectInfo, State},
    http::{HeaderMap, StatusCode},
    response::{Html, IntoResponse, Response},
};
use chrono::Utc;

use self::{
    error::{ApiError, ApiResult},
    extension::{ManagementExtension, RequestVariables},
};
use crate::{
    ApiConfig,
    service::{
        ServiceContext,
        auth::{self, Caller},
        page::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, Page, PageRequest},
    },
    state::AppState,
};

/// The schema type served at `/graphql`.
pub type PortcullisSchema = Schema<QueryRoot, MutationRoot, EmptySubscription>;

/// Root of every query: each domain contributes its part.
#[derive(MergedObject, Default)]
pub struct QueryRoot(
    ServerQuery,
    access::query::AccessQuery,
    keys::query::ApiKeyQuery,
    grants::query::IncidentGrantQuery,
    principals::query::PrincipalQuery,
    roles::query::RoleQuery,
    routes::query::RouteQuery,
    ip_rules::query::IpRuleQuery,
    audit::query::AuditQuery,
    remediation::query::RemediationQuery,
    managed_secrets::query::ManagedSecretQuery,
    notifications::query::NotificationQuery,
);

/// Root of every mutation: each domain contributes its part. Every field is audited.
#[derive(MergedObject, Default)]
pub struct MutationRoot(
    keys::mutation::ApiKeyMutation,
    grants::mutation::IncidentGrantMutation,
    principals::mutation::PrincipalMutation,
    roles::mutation::RoleMutation,
    routes::mutation::RouteMutation,
    ip_rules::mutation::IpRuleMutation,
    remediation::mutation::RemediationMutation,
    managed_secrets::mutation::ManagedSecretMutation,
);

/// Unauthenticated server facts.
#[derive(Default)]
pub struct ServerQuery;

/// Facts about the running server, for portals and smoke tests.
#[derive(SimpleObject)]
pub struct ServerInfo {
    /// The Portcullis version.
    version: &'static str,
    /// `sqlite` or `postgres`.
    database_backend: &'static str,
}

#[Object]
impl ServerQuery {
    /// Version and database backend of this server.
    async fn server_info(&self, ctx: &Context<'_>) -> ApiResult<ServerInfo> {
        let database_backend = match services(ctx)?.db.get_database_backend() {
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

fn schema_builder() -> async_graphql::SchemaBuilder<QueryRoot, MutationRoot, EmptySubscription> {
    Schema::build(
        QueryRoot::default(),
        MutationRoot::default(),
        EmptySubscription,
    )
}

/// Builds the schema with the configured limits.
pub fn build_schema(services: ServiceContext, config: &ApiConfig) -> PortcullisSchema {
    let mut builder = schema_builder()
        .data(services)
        .extension(ManagementExtension)
        .limit_depth(config.max_query_depth)
        .limit_complexity(config.max_query_complexity);
    if !config.introspection {
        builder = builder.disable_introspection();
    }
    builder.finish()
}

/// The schema in SDL, sorted so that `schema.graphql` diffs stay readable.
pub fn sdl() -> String {
    schema_builder()
        .finish()
        .sdl_with_options(SDLExportOptions::new().sorted_fields().sorted_enum_items())
}

/// `POST /graphql`: authenticates the caller, then executes with per-request data (the
/// caller, the variables for the audit record, fresh DataLoaders).
pub async fn execute(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    request: GraphQLRequest,
) -> GraphQLResponse {
    let peer = connect.map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.0.ip());
    // Behind a load balancer the peer is the balancer: binding CIDR conditions must see the
    // caller it names, exactly as the proxy does, or a condition on the balancer's network
    // would admit everyone.
    let client_ip = match proxy::pipeline::client_ip(peer, &headers, &state.config.trusted_proxies)
    {
        Ok(ip) => ip,
        Err(error) => {
            use async_graphql::ErrorExtensions as _;
            let refused = ApiError::invalid("X-Forwarded-For", error.to_string());
            return async_graphql::Response::from_errors(vec![
                refused
                    .extend()
                    .into_server_error(async_graphql::Pos::default()),
            ])
            .into();
        }
    };
    let caller = auth::authenticate(&state.services, &headers, client_ip, Utc::now()).await;
    let request = request.into_inner();
    let variables = RequestVariables(request.variables.clone());
    let request = request
        .data(caller)
        .data(variables)
        .data(loaders::Loaders::new(&state.services.db));
    state.schema.execute(request).await.into()
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

// === context access ===

/// A piece of request or schema data that should always be there is missing (a bug).
#[derive(Debug, thiserror::Error)]
#[error("GraphQL context data {0} is missing")]
struct MissingContext(&'static str);

/// The services.
pub fn services<'a>(ctx: &Context<'a>) -> ApiResult<&'a ServiceContext> {
    ctx.data_opt::<ServiceContext>()
        .ok_or_else(|| ApiError::internal(MissingContext("ServiceContext")))
}

/// The caller, as authenticated by the handler.
pub fn caller<'a>(ctx: &Context<'a>) -> ApiResult<&'a Caller> {
    ctx.data_opt::<Caller>()
        .ok_or_else(|| ApiError::internal(MissingContext("Caller")))
}

/// The per-request DataLoaders.
pub fn loaders<'a>(ctx: &Context<'a>) -> ApiResult<&'a loaders::Loaders> {
    ctx.data_opt::<loaders::Loaders>()
        .ok_or_else(|| ApiError::internal(MissingContext("Loaders")))
}

// === pagination ===

/// Opaque cursor: base64 of the row's key.
pub type Cursor = OpaqueCursor<String>;

/// A Relay connection of `T` with opaque cursors.
pub type Conn<T> = Connection<Cursor, T>;

/// Complexity of a list field: the children count once per requested row.
pub fn list_complexity(first: Option<i32>, child_complexity: usize) -> usize {
    let rows = first.map_or(DEFAULT_PAGE_SIZE, |f| {
        f.clamp(0, MAX_PAGE_SIZE as i32) as u64
    });
    rows as usize * child_complexity + 1
}

/// Parses `first` / `after` into a page request over keys of type `K`.
pub fn page_request<K: FromStr>(
    first: Option<i32>,
    after: Option<String>,
) -> ApiResult<PageRequest<K>> {
    let first = match first {
        None => DEFAULT_PAGE_SIZE,
        Some(n) if (1..=MAX_PAGE_SIZE as i32).contains(&n) => n as u64,
        Some(_) => {
            return Err(ApiError::invalid(
                "first",
                format!("must be between 1 and {MAX_PAGE_SIZE}"),
            ));
        }
    };
    let after = after
        .map(|cursor| {
            Cursor::decode_cursor(&cursor)
                .ok()
                .and_then(|c| c.0.parse::<K>().ok())
                .ok_or_else(|| ApiError::invalid("after", "is not a cursor from this list"))
        })
        .transpose()?;
    Ok(PageRequest { first, after })
}

/// Turns a page of rows into a connection, with the cursor taken from `key`.
pub fn connection<T, O: OutputType>(
    page: Page<T>,
    key: impl Fn(&T) -> String,
    mut node: impl FnMut(T) -> O,
) -> Conn<O> {
    let mut connection = Connection::new(page.has_previous, page.has_next);
    connection.edges.extend(
        page.items
            .into_iter()
            .map(|item| Edge::new(OpaqueCursor(key(&item)), node(item))),
    );
    connection
}
