//! The SNS notification outbox: what remediation told subscribers, and whether it was sent.

pub mod query;
pub mod types;
