//! Audit and security events; audit chain verification.

pub mod query;
pub mod types;
