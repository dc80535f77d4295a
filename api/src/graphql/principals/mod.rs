//! Principals: users, groups, service accounts, and group membership.

/// Mutations.
pub mod mutation;
/// Queries.
pub mod query;
/// Input and output types (DTOs, never entities).
pub mod types;
