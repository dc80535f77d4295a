//! End-to-end tests: the real binary or the real routers on loopback sockets, against real
//! SQLite and (when `TEST_DATABASE_URL` is set) real PostgreSQL.

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod audit_anchors;
mod audit_chain;
mod bypass;
mod cli;
mod credential_rotation;
mod detectors;
mod dev_stack;
mod grants;
mod graphql_access;
mod graphql_authz;
mod graphql_grants;
mod graphql_keys;
mod graphql_operations;
mod graphql_policy;
mod graphql_remediation;
mod graphql_secrets;
mod graphql_support;
mod lambda_worker;
mod oidc;
mod outbox;
mod proxy_auth;
mod rate_limit;
mod remediation;
mod remediation_support;
mod remediation_worker;
mod rotation;
mod scheduled_remediation;
mod schema;
mod slow_peers;
mod sns_webhook;
mod support;
mod tls;
mod upstream_credentials;
mod websocket;
