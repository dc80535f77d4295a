//! Audit and security events; audit chain verification.

/// Queries.
pub mod query;
/// Input and output types (DTOs, never entities).
pub mod types;
