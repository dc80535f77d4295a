//! Roles, their permissions, and role bindings.

pub mod mutation;
pub mod query;
pub mod types;
