//! RBAC: the policy model and its evaluator — the pure core of authorization.
//!
//! The proxy calls [`evaluate()`] on every request and the API's `simulateAccess` calls the
//! same function, so both always agree. No I/O, no async, no axum, no SeaORM: everything
//! arrives as plain data ([`model`]) from the policy cache or the database layer.
//!
//! # Layout
//! * [`glob`]: path patterns ([`PathGlob`]) and method sets ([`MethodSet`]);
//! * [`model`]: ids, permissions, roles, bindings, grants, subject and request facts;
//! * [`evaluate`](mod@evaluate): the decision and its [`Reason`].

pub mod evaluate;
pub mod glob;
pub mod model;

pub use evaluate::{Decision, Reason, evaluate};
pub use glob::{GlobError, MethodSet, MethodSetError, PathGlob};
pub use model::{
    Binding, BindingId, Grant, GrantId, MANAGEMENT_NAMESPACE, Permission, PrincipalId,
    RequestFacts, Role, RoleId, Roles, Subject,
};
