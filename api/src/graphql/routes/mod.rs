//! Routes: what the proxy forwards where, and who may call it.

/// Mutations.
pub mod mutation;
/// Queries.
pub mod query;
/// Input and output types (DTOs, never entities).
pub mod types;
