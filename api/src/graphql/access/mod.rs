//! `me`, `simulateAccess`, `explainPrincipal`: who am I, and what would the proxy decide.

/// Queries.
pub mod query;
/// Input and output types (DTOs, never entities).
pub mod types;
