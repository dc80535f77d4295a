//! `me`, `simulateAccess`, `explainPrincipal`: who am I, and what would the proxy decide.

pub mod query;
pub mod types;
