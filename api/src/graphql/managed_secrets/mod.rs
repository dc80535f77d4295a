//! Managed secrets: the Secrets Manager secrets Portcullis rotates, with their live versions.

pub mod mutation;
pub mod query;
pub mod types;
