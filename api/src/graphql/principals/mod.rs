//! Principals: users, groups, service accounts, and group membership.

pub mod mutation;
pub mod query;
pub mod types;
