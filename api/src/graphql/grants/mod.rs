//! Incident grants: request (with the one-time token), approve, deny, revoke, list.

pub mod mutation;
pub mod query;
pub mod types;
