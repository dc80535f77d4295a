//! End-to-end tests: the real binary or the real routers on loopback sockets, against real
//! SQLite and (when `TEST_DATABASE_URL` is set) real PostgreSQL.

#![expect(clippy::unwrap_used, reason = "tests fail loudly")]

mod audit_chain;
mod bypass;
mod cli;
mod dev_stack;
mod proxy_auth;
mod schema;
mod support;
