//! API keys: issue, rotate, revoke, suspend, resume, list.

pub mod mutation;
pub mod query;
pub mod types;
