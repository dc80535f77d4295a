//! Remediation: playbooks, runs and their steps, and the manual remediation requests.

pub mod mutation;
pub mod query;
pub mod types;
