//! Routes: what the proxy forwards where, and who may call it.

pub mod mutation;
pub mod query;
pub mod types;
