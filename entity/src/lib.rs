//! The Portcullis data model: one SeaORM entity per table, and nothing else of substance.
//!
//! Each module mirrors one table created by the `migration` crate: its `Model`, its enumerated
//! string columns (stored as short text on SQLite and PostgreSQL alike, never as native PostgreSQL
//! enums) and a `Relation` for every foreign key. Business rules, hashing and policy evaluation
//! live in `proxy` and `api`; this crate must not depend on either, nor do any I/O of its own.
//!
//! Conventions shared by every table:
//! * ids are UUIDs the application generates (v7, so they sort by creation time), except the
//!   append-only feeds (`policy_change`, `audit_event`, `notification_outbox`) whose `i64` ids are
//!   assigned by the database and are the feed order;
//! * timestamps are UTC ([`sea_orm::prelude::DateTimeUtc`]) and are set by the application;
//! * JSON columns hold [`serde_json::Value`]; the shape each expects is documented on the field.
//!
//! Import everything at once with `use entity::prelude::*;`.

pub mod access_review;
pub mod access_review_item;
pub mod api_key;
pub mod audit_event;
pub mod group_membership;
pub mod incident_grant;
pub mod ip_rule;
pub mod managed_secret;
pub mod notification_outbox;
pub mod permission;
pub mod policy_change;
pub mod prelude;
pub mod principal;
pub mod rate_limit_override;
pub mod remediation_playbook;
pub mod remediation_run;
pub mod remediation_step;
pub mod role;
pub mod role_binding;
pub mod route;
pub mod security_event;
pub mod sns_message;
pub mod usage_counter;
